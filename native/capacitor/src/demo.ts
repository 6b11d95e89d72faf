// The demo page's logic (demo/index.html): sign in with the development
// token endpoint, register this tab as a web device, call or answer, show
// local and remote video. The browser end-to-end test drives this page.

import type { CallState, EndReason } from "./definitions.js";
import { SwitchboardError, SwitchboardWebClient } from "./web-client.js";

const $ = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;

const client = new SwitchboardWebClient();
// For the browser end-to-end test (and a developer's console).
(window as unknown as { switchboard: SwitchboardWebClient }).switchboard = client;
let currentCall: string | undefined;
let muted = false;

function status(text: string): void {
  $("status").textContent = text;
}

function inCall(callId: string | undefined): void {
  currentCall = callId;
  $("hangup").hidden = callId === undefined;
  $("mute").hidden = callId === undefined;
  $("call").hidden = callId !== undefined;
}

client.on("incomingCall", ({ callId, fromUserId, video }) => {
  currentCall = callId;
  $("caller").textContent = fromUserId;
  $("incoming-kind").textContent = video ? "video" : "audio";
  $("incoming").hidden = false;
});

client.on("callStateChanged", ({ callId, state }: { callId: string; state: CallState }) => {
  status(state);
  if (state !== "ringing") $("incoming").hidden = true;
  if (state === "outgoing" || state === "connecting" || state === "connected") inCall(callId);
  if (state === "connecting" || state === "outgoing") {
    $<HTMLVideoElement>("local").srcObject = client.localStream ?? null;
  }
});

client.on("callEnded", ({ reason }: { reason: EndReason }) => {
  status(`ended: ${reason}`);
  $("incoming").hidden = true;
  $<HTMLVideoElement>("remote").srcObject = null;
  $<HTMLVideoElement>("local").srcObject = null;
  inCall(undefined);
});

// The server's feature flags for this tab: no video choice with video off
// (it changes live, over the events socket).
client.on("flagsChanged", ({ flags }) => {
  $("video-option").hidden = flags.video_calls === false;
});

client.on("remoteTrack", ({ kind, stream, userId, trackId }) => {
  if (kind === "video" && stream) {
    $<HTMLVideoElement>("remote").srcObject = stream;
    $("remote").dataset.userId = userId ?? "";
    $("remote").dataset.trackId = trackId;
  }
  if (kind === "audio" && stream) {
    const audio = new Audio();
    audio.srcObject = stream;
    void audio.play().catch(() => undefined);
  }
});

async function signIn(): Promise<void> {
  const userId = $<HTMLInputElement>("user").value.trim();
  const response = await fetch("/dev/user-token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ userId }),
  });
  if (!response.ok) throw new Error(`sign-in refused: ${await response.text()}`);
  const { token } = (await response.json()) as { token: string };
  const deviceId = `web-${userId}-${Math.random().toString(36).slice(2, 8)}`;
  // Calls from here carry data channels (the browser test sends on them).
  await client.registerDevice({ serverUrl: location.origin, userToken: token, deviceId, dataChannels: true });
  $("me").textContent = userId;
  $("signin-panel").hidden = true;
  $("call-panel").hidden = false;
  status("ready");
}

function act(id: string, action: () => Promise<unknown>): void {
  $(id).addEventListener("click", () => {
    action().catch((e: unknown) => status(`error: ${e instanceof Error ? e.message : String(e)}`));
  });
}

act("signin", signIn);
act("call", async () => {
  const calleeUserId = $<HTMLInputElement>("callee").value.trim();
  const video = $<HTMLInputElement>("video").checked && !$("video-option").hidden;
  try {
    await client.startCall({ calleeUserId, video });
  } catch (e) {
    // Calling is off (feature flags) on every device they have.
    if (e instanceof SwitchboardError && e.code === "unsupported") return status(`${calleeUserId} cannot be called`);
    throw e;
  }
});
act("answer", async () => currentCall && client.answer({ callId: currentCall }));
act("decline", async () => currentCall && client.decline({ callId: currentCall }));
act("hangup", async () => currentCall && client.end({ callId: currentCall }));
act("mute", async () => {
  if (!currentCall) return;
  muted = !muted;
  $("mute").textContent = muted ? "Unmute" : "Mute";
  await client.setMuted({ callId: currentCall, muted });
});
