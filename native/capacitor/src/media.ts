// A call's media in the browser: the /v1/rtc signaling socket (protocol
// v1) with two RTCPeerConnections, the publisher (we offer our microphone
// and camera) and the subscriber (the server offers the others' tracks).
// After the socket drops it reconnects and resumes the same participant
// (`resumeParticipantId`) with an ICE restart, within the server's grace.

import { SwitchboardError } from "./api.js";

export interface TrackOwner {
  participantId: string;
  userId?: string;
}

/** Inbound media since the last quality sample (`control/API.md` "Call reports"). */
export interface MediaQuality {
  lossRatio: number;
  jitterMs: number;
  rttMs?: number;
}

export interface MediaCallbacks {
  connected(): void;
  /** `reason`: `ice_failed`, `signaling_lost` or `join_refused`; `detail` says more. */
  failed(reason: string, detail: string): void;
  /** The first decoded frame of a kind (once each). */
  firstMedia(kind: "audio" | "video"): void;
  quality(quality: MediaQuality): void;
  remoteTrack(track: MediaStreamTrack, trackId: string, stream: MediaStream, owner?: TrackOwner): void;
  remoteTrackRemoved(trackId: string): void;
  remoteTrackMuted(trackId: string, muted: boolean): void;
  /** The server paused (or resumed) a video track for this downlink (`streamStateChanged`). */
  remoteTrackPaused(trackId: string, paused: boolean): void;
  /** Who is speaking, loudest first (`speakersChanged`). */
  activeSpeakers(speakers: ActiveSpeaker[]): void;
  /** A member's message on the room's data channels. */
  dataReceived(message: DataMessage): void;
}

/** A message from another member; `from` as the server attached it. */
export interface DataMessage {
  from: string;
  userId?: string;
  payload: string;
  reliable: boolean;
}

/** Data channel labels and limits (signaling PROTOCOL.md "Data channels"). */
const DATA_RELIABLE = "switchboard";
const DATA_LOSSY = "switchboard-lossy";
const MAX_DATA_PAYLOAD_BYTES = 16 * 1024;
const MAX_DATA_RECIPIENTS = 64;

/**
 * The frame `sendData` writes, or a `SwitchboardError` for what the server
 * would refuse (over 16 KiB; `to` empty or over 64).
 */
export function dataFrame(payload: string, to?: string[]): string {
  if (new TextEncoder().encode(payload).length > MAX_DATA_PAYLOAD_BYTES) {
    throw new SwitchboardError(0, "message_too_large", `payload over ${MAX_DATA_PAYLOAD_BYTES} bytes`);
  }
  if (to && (to.length === 0 || to.length > MAX_DATA_RECIPIENTS)) {
    throw new SwitchboardError(0, "bad_message", `to names 1 to ${MAX_DATA_RECIPIENTS} participants`);
  }
  return JSON.stringify(to ? { to, payload } : { payload });
}

/** What the server wrote, or `undefined` for anything else. */
export function parseDataFrame(text: unknown): { from: string; payload: string } | undefined {
  if (typeof text !== "string") return undefined;
  try {
    const m = JSON.parse(text);
    return typeof m?.from === "string" && typeof m.payload === "string" ? { from: m.from, payload: m.payload } : undefined;
  } catch {
    return undefined;
  }
}

/** One of a call's active speakers: level 0 (silence) to 1. */
export interface ActiveSpeaker {
  participantId: string;
  userId?: string;
  level: number;
}

type Message = Record<string, any>;

export type VideoQuality = "low" | "medium" | "high";

/**
 * Camera video goes out in up to three layers (simulcast), lowest first:
 * quarter, half and full resolution. Chromium sends as many as the capture
 * allows (three from 960x540); the server forwards each subscriber the one
 * that fits, and asks (`qualityUpdate`) that layers nobody receives be
 * turned off. Each layer is capped (100 kbit/s, 400 kbit/s, 1.2 Mbit/s):
 * the low layer must fit a poor downlink beside the audio.
 */
const SIMULCAST: RTCRtpEncodingParameters[] = [
  { rid: "q", scaleResolutionDownBy: 4, maxBitrate: 100_000 },
  { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 400_000 },
  { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_200_000 },
];

/** The encoding a quality names among `count`, lowest first (PROTOCOL.md `qualityUpdate`). */
export function encodingFor(quality: VideoQuality, count: number): number {
  const top = Math.max(0, count - 1);
  return quality === "low" ? 0 : quality === "high" ? top : Math.ceil(top / 2);
}

/**
 * The size to ask of a remote video shown in a view this large (device
 * pixels): whole pixels within the server's bounds (PROTOCOL.md
 * `updateSubscription`), which picks the smallest layer that covers it.
 */
export function subscriptionSize(width: number, height: number): { width: number; height: number } {
  const bound = (v: number) => Math.min(16384, Math.max(1, Math.round(v)));
  return { width: bound(width), height: bound(height) };
}

/** Stats are read this often until the first audio and video decode... */
const FIRST_MEDIA_POLL_MS = 250;
/** ...for at most this long... */
const FIRST_MEDIA_WATCH_MS = 30000;
/** ...then this often, for quality. */
const QUALITY_EVERY_MS = 10000;

/** Redirects (`wrong_node`) a join follows before it gives up. */
const MAX_MOVES = 3;

export class WebMedia {
  private ws?: WebSocket;
  private pub: RTCPeerConnection;
  private sub: RTCPeerConnection;
  private participantId?: string;
  private graceMs = 15000;
  /** `wrong_node` redirects followed (at most [MAX_MOVES]). */
  private moves = 0;
  private midTrack = new Map<string, string>();
  /** Who published each remote track, from `joined` and `trackPublished`. */
  private trackOwners = new Map<string, TrackOwner>();
  private userIds = new Map<string, string>();
  /** The user's choices, applied over hold. */
  private muted = false;
  private cameraOff = false;
  private held = false;
  private closed = false;
  private reportedConnected = false;
  private offerPending = false;
  private restartQueued = false;
  private statsTimer?: ReturnType<typeof setTimeout>;
  private readonly startedAt = performance.now();
  private firstSeen = { audio: false, video: false };
  /** Inbound totals at the last quality sample. */
  private inbound = { lost: 0, received: 0 };
  /** What was asked of each remote video track (`updateSubscription`). */
  private asked = new Map<string, string>();
  /** The server's two data channels on the subscriber connection, by label. */
  private dataChannels = new Map<string, RTCDataChannel>();
  /** The call token's `publishData`, from `joined`. */
  private mayPublishData = false;
  /** `setParameters` calls, one at a time (each needs the last one's transaction). */
  private encodingsChain: Promise<void> = Promise.resolve();

  constructor(
    private url: string,
    private token: string,
    iceServers: RTCIceServer[],
    private local: MediaStream,
    private callbacks: MediaCallbacks,
  ) {
    const config: RTCConfiguration = { bundlePolicy: "max-bundle", iceServers };
    this.pub = new RTCPeerConnection(config);
    this.sub = new RTCPeerConnection(config);
    for (const [pc, target] of [[this.pub, "publisher"], [this.sub, "subscriber"]] as const) {
      pc.onicecandidate = (e) => {
        if (e.candidate) this.send({ type: "trickle", target, candidate: e.candidate.toJSON() });
      };
      pc.onconnectionstatechange = () => this.onConnectionState();
    }
    this.sub.ontrack = (e) => {
      const trackId = this.midTrack.get(e.transceiver.mid ?? "") ?? e.track.id;
      const owner = this.trackOwners.get(trackId);
      this.callbacks.remoteTrack(e.track, trackId, e.streams[0] ?? new MediaStream([e.track]), owner);
    };
    this.sub.ondatachannel = (e) => this.onDataChannel(e.channel);
    for (const track of local.getTracks()) {
      const sendEncodings = track.kind === "video" ? SIMULCAST.map((e) => ({ ...e })) : undefined;
      this.pub.addTransceiver(track, { direction: "sendonly", sendEncodings });
    }
    this.scheduleStats(FIRST_MEDIA_POLL_MS);
  }

  private scheduleStats(delayMs: number): void {
    if (this.closed) return;
    this.statsTimer = setTimeout(() => {
      void this.sampleStats().then(
        (next) => this.scheduleStats(next),
        () => this.scheduleStats(QUALITY_EVERY_MS),
      );
    }, delayMs);
  }

  /**
   * One read of the subscriber's stats: the first decoded audio
   * (`totalSamplesReceived`) and video (`framesDecoded`), and inbound loss,
   * jitter and the round-trip time. Returns when to read again.
   */
  private async sampleStats(): Promise<number> {
    const stats = await this.sub.getStats();
    let lost = 0;
    let received = 0;
    let jitter = 0;
    let rttMs: number | undefined;
    let videoInbound = false;
    stats.forEach((s: Message) => {
      if (s.type === "inbound-rtp") {
        if (s.kind === "audio" && (s.totalSamplesReceived ?? 0) > 0) this.sawFirst("audio");
        if (s.kind === "video") {
          videoInbound = true;
          if ((s.framesDecoded ?? 0) > 0) this.sawFirst("video");
        }
        lost += s.packetsLost ?? 0; // may dip below 0 (duplicates); the delta is clamped
        received += s.packetsReceived ?? 0;
        jitter = Math.max(jitter, s.jitter ?? 0);
      }
      if (s.type === "candidate-pair" && s.nominated && typeof s.currentRoundTripTime === "number") {
        rttMs = s.currentRoundTripTime * 1000;
      }
    });
    const watching = performance.now() - this.startedAt < FIRST_MEDIA_WATCH_MS;
    if (watching && (!this.firstSeen.audio || (videoInbound && !this.firstSeen.video))) {
      return FIRST_MEDIA_POLL_MS;
    }
    const newLost = Math.max(0, lost - this.inbound.lost);
    const newReceived = Math.max(0, received - this.inbound.received);
    this.inbound = { lost, received };
    if (newLost + newReceived > 0) {
      this.callbacks.quality({ lossRatio: newLost / (newLost + newReceived), jitterMs: jitter * 1000, rttMs });
    }
    return QUALITY_EVERY_MS;
  }

  private sawFirst(kind: "audio" | "video"): void {
    if (this.firstSeen[kind]) return;
    this.firstSeen[kind] = true;
    this.callbacks.firstMedia(kind);
  }

  async start(): Promise<void> {
    await this.connect();
  }

  /** The network changed: new ICE credentials on both connections. */
  async restartIce(): Promise<void> {
    if (this.offerPending) {
      this.restartQueued = true;
      return;
    }
    await this.offer(true);
    this.send({ type: "restartIce" });
  }

  setMuted(muted: boolean): void {
    this.muted = muted;
    this.applyLocalTracks();
  }

  setCamera(enabled: boolean): void {
    this.cameraOff = !enabled;
    this.applyLocalTracks();
  }

  /** Hold sends nothing; unhold restores the user's mute and camera. */
  setHeld(held: boolean): void {
    this.held = held;
    this.applyLocalTracks();
  }

  /**
   * The next camera (front to back on a phone's browser): a new capture
   * replaces the sent track without renegotiation. False when there is
   * no other camera.
   */
  async switchCamera(): Promise<boolean> {
    const current = this.local.getVideoTracks()[0];
    if (!current) return false;
    const cameras = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === "videoinput");
    const currentId = current.getSettings().deviceId;
    const index = cameras.findIndex((c) => c.deviceId === currentId);
    const next = cameras[(index + 1) % cameras.length];
    if (!next || next.deviceId === currentId) return false;
    const stream = await navigator.mediaDevices.getUserMedia({ video: { deviceId: { exact: next.deviceId } } });
    const replacement = stream.getVideoTracks()[0];
    const sender = this.pub.getSenders().find((s) => s.track === current);
    await sender?.replaceTrack(replacement);
    this.local.removeTrack(current);
    current.stop();
    this.local.addTrack(replacement);
    this.applyLocalTracks();
    return true;
  }

  private onDataChannel(channel: RTCDataChannel): void {
    if (channel.label !== DATA_RELIABLE && channel.label !== DATA_LOSSY) return;
    this.dataChannels.set(channel.label, channel);
    const reliable = channel.label === DATA_RELIABLE;
    channel.onmessage = (e) => {
      const m = parseDataFrame(e.data);
      if (m) this.callbacks.dataReceived({ ...m, userId: this.userIds.get(m.from), reliable });
    };
  }

  /**
   * Sends `payload` to the room, or to the participants in `to`. Refused
   * here when the server would refuse it; the server also limits the rate
   * (PROTOCOL.md "Data channels").
   */
  sendData(payload: string, { to, reliable = true }: { to?: string[]; reliable?: boolean } = {}): void {
    if (!this.mayPublishData) {
      throw new SwitchboardError(0, "permission_denied", "this call does not allow sending data (dataChannels)");
    }
    const frame = dataFrame(payload, to);
    const channel = this.dataChannels.get(reliable ? DATA_RELIABLE : DATA_LOSSY);
    if (channel?.readyState !== "open") throw new SwitchboardError(0, "not_connected", "the call's data channel is not open");
    channel.send(frame);
  }

  /**
   * Which layer of a remote video track to receive: the smallest that
   * covers a view this many device pixels large. Said once per change.
   */
  setVideoSize(trackId: string, width: number, height: number): void {
    const size = subscriptionSize(width, height);
    const key = `${size.width}x${size.height}`;
    if (this.asked.get(trackId) === key) return;
    this.asked.set(trackId, key);
    this.send({ type: "updateSubscription", trackId, ...size });
  }

  /**
   * Dynacast: only the encodings subscribers want stay on (none: the
   * track is paused). Layers keep their resolution when the CPU is short
   * (`maintain-resolution`): a layer that shrank would no longer be what a
   * subscriber asked for.
   */
  private applyWantedQualities(mid: string, qualities: VideoQuality[]): void {
    const sender = this.pub.getTransceivers().find((t) => t.mid === mid)?.sender;
    if (!sender) return;
    this.encodingsChain = this.encodingsChain
      .then(async () => {
        const params = sender.getParameters();
        const wanted = new Set(qualities.map((q) => encodingFor(q, params.encodings.length)));
        params.encodings.forEach((e, i) => (e.active = wanted.has(i)));
        params.degradationPreference = "maintain-resolution";
        await sender.setParameters(params);
      })
      .catch((e) => console.warn(`switchboard: could not apply the wanted layers: ${String(e)}`));
  }

  private applyLocalTracks(): void {
    for (const t of this.local.getAudioTracks()) t.enabled = !this.muted && !this.held;
    for (const t of this.local.getVideoTracks()) t.enabled = !this.cameraOff && !this.held;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    clearTimeout(this.statsTimer);
    this.send({ type: "leave" });
    this.ws?.close();
    this.pub.close();
    this.sub.close();
    for (const t of this.local.getTracks()) t.stop();
  }

  private async connect(): Promise<void> {
    const resuming = this.participantId !== undefined;
    const ws = new WebSocket(this.url);
    this.ws = ws;
    await new Promise<void>((resolve, reject) => {
      ws.onopen = () => resolve();
      ws.onerror = () => reject(new Error("media signaling unreachable"));
    });
    ws.onmessage = (e) => {
      // A frame this version cannot read (a newer server's) is skipped, not
      // a failure: apps in the stores must survive new messages.
      let message: Message;
      try {
        message = JSON.parse(String(e.data)) as Message;
      } catch {
        return;
      }
      void this.onMessage(message);
    };
    ws.onclose = () => void this.onDropped();
    this.send({ type: "join", protocolVersion: 1, token: this.token, resumeParticipantId: this.participantId });
    this.joinedWaiter = { resuming };
  }

  private joinedWaiter?: { resuming: boolean };

  private async onMessage(m: Message): Promise<void> {
    try {
      switch (m.type) {
        case "joined": {
          const resuming = this.joinedWaiter?.resuming ?? false;
          this.joinedWaiter = undefined;
          this.participantId = m.participantId;
          this.mayPublishData = m.permissions?.publishData === true;
          for (const p of m.participants ?? []) this.learnParticipant(p);
          this.graceMs = (m.reconnectGraceSeconds ?? 15) * 1000;
          this.offerPending = false;
          await this.offer(resuming);
          if (resuming) this.send({ type: "restartIce" });
          break;
        }
        case "publishAnswer":
          await this.pub.setRemoteDescription({ type: "answer", sdp: m.sdp });
          this.offerPending = false;
          if (this.restartQueued) {
            this.restartQueued = false;
            await this.restartIce();
          }
          break;
        case "subscriberOffer":
          for (const t of m.tracks ?? []) this.midTrack.set(t.mid, t.trackId);
          await this.sub.setRemoteDescription({ type: "offer", sdp: m.sdp });
          await this.sub.setLocalDescription(await this.sub.createAnswer());
          this.send({ type: "subscriberAnswer", sdp: this.sub.localDescription?.sdp });
          break;
        case "trickle": {
          const pc = m.target === "publisher" ? this.pub : this.sub;
          await pc.addIceCandidate(m.candidate);
          break;
        }
        case "participantJoined":
          this.learnParticipant(m.participant ?? {});
          break;
        case "trackPublished":
          this.learnTrack(m.track ?? {});
          break;
        case "trackUnpublished":
          if (typeof m.trackId === "string") {
            this.trackOwners.delete(m.trackId);
            this.callbacks.remoteTrackRemoved(m.trackId);
          }
          break;
        case "trackMuted":
          if (typeof m.trackId === "string") this.callbacks.remoteTrackMuted(m.trackId, m.muted === true);
          break;
        case "streamStateChanged":
          // A state this build does not know is skipped.
          if (typeof m.trackId === "string" && (m.state === "paused" || m.state === "active")) {
            this.callbacks.remoteTrackPaused(m.trackId, m.state === "paused");
          }
          break;
        case "qualityUpdate":
          if (typeof m.mid === "string" && Array.isArray(m.qualities)) {
            const qualities = m.qualities.filter((q: unknown): q is VideoQuality => q === "low" || q === "medium" || q === "high");
            this.applyWantedQualities(m.mid, qualities);
          }
          break;
        case "speakersChanged": {
          const speakers: ActiveSpeaker[] = [];
          for (const s of Array.isArray(m.speakers) ? m.speakers : []) {
            if (typeof s?.participantId !== "string" || typeof s.level !== "number") continue;
            speakers.push({ participantId: s.participantId, userId: this.userIds.get(s.participantId), level: s.level });
          }
          this.callbacks.activeSpeakers(speakers);
          break;
        }
        case "left":
          this.fail("signaling_lost", `removed from the call: ${m.reason}`);
          break;
        case "error":
          if (this.joinedWaiter && m.code === "wrong_node" && /^wss?:\/\//.test(String(m.rtcUrl ?? "")) && this.moves < MAX_MOVES) {
            // The call's room is on another node: join there.
            this.moves += 1;
            this.url = String(m.rtcUrl);
            const old = this.ws;
            if (old) {
              old.onclose = null;
              old.close();
            }
            await this.connect();
            break;
          }
          if (this.joinedWaiter) this.fail("join_refused", `join refused: ${m.code}`);
          break;
      }
    } catch (e) {
      this.fail("signaling_lost", String(e));
    }
  }

  private learnParticipant(p: Message): void {
    if (typeof p.participantId !== "string") return;
    if (typeof p.userId === "string") this.userIds.set(p.participantId, p.userId);
    for (const t of p.tracks ?? []) this.learnTrack(t);
  }

  private learnTrack(t: Message): void {
    if (typeof t.trackId !== "string" || typeof t.participantId !== "string") return;
    if (t.participantId === this.participantId) return; // our own
    this.trackOwners.set(t.trackId, { participantId: t.participantId, userId: this.userIds.get(t.participantId) });
  }

  private async offer(iceRestart: boolean): Promise<void> {
    this.offerPending = true;
    await this.pub.setLocalDescription(await this.pub.createOffer({ iceRestart }));
    this.send({ type: "publish", sdp: this.pub.localDescription?.sdp });
  }

  private onConnectionState(): void {
    const states = [this.pub.connectionState, this.sub.connectionState];
    if (states.every((s) => s === "connected") && !this.reportedConnected) {
      this.reportedConnected = true;
      this.callbacks.connected();
    }
    if (states.includes("failed")) this.fail("ice_failed", "a peer connection failed");
  }

  /** The socket closed without `leave`: resume within the grace period. */
  private async onDropped(): Promise<void> {
    if (this.closed) return;
    const deadline = Date.now() + this.graceMs;
    for (let delay = 200; Date.now() < deadline && !this.closed; delay = Math.min(delay * 2, 5000)) {
      await new Promise((r) => setTimeout(r, delay));
      try {
        await this.connect();
        return;
      } catch {
        // Still down: try again until the grace period ends.
      }
    }
    this.fail("signaling_lost", "could not resume within the grace period");
  }

  private fail(reason: string, detail: string): void {
    if (this.closed) return;
    this.close();
    this.callbacks.failed(reason, detail);
  }

  private send(message: Message): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }
}
