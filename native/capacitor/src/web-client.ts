// The plugin's web implementation without Capacitor: a React app (or the
// demo page) can use it directly. Device events over the /v1/events socket
// (auth, rings, acknowledgements, reconnect with backoff), calls through the
// HTTP API, media through WebMedia; the call state machine is `Calls`.

import { CallApi, SwitchboardError } from "./api.js";
import type { JoinInfo } from "./api.js";
import { Calls } from "./calls.js";
import type { Effect } from "./calls.js";
import type {
  ActiveCall,
  AudioRoutes,
  CallIdOptions,
  PermissionState,
  PermissionStatus,
  RegisterDeviceOptions,
  SelectAudioRouteOptions,
  SendDataOptions,
  SetCameraOptions,
  SetHeldOptions,
  SetMutedOptions,
  SetUserTokenOptions,
  StartCallOptions,
  SwitchboardEvents,
  VideoTrackOptions,
  VideoViewOptions,
} from "./definitions.js";
import { WebMedia } from "./media.js";
import { VideoViews } from "./video-views.js";
import { parseEvent, parseFlags } from "./protocol.js";
import type { Flags } from "./protocol.js";

export { SwitchboardError };

/** Auth errors a fresh user token fixes (control/API.md). */
const TOKEN_REFUSED = new Set(["unauthorized", "token_expired"]);

type Listener<E extends keyof SwitchboardEvents> = (data: SwitchboardEvents[E]) => void;

export class SwitchboardWebClient {
  private api?: CallApi;
  private token = "";
  private events?: WebSocket;
  private stopped = false;
  /** Set while the events socket waits for `setUserToken`. */
  private awaitingToken?: () => void;
  private calls = new Calls();
  private media = new Map<string, WebMedia>();
  /** Each call's remote streams by track id, for `showVideo`. */
  private remoteStreams = new Map<string, Map<string, MediaStream>>();
  private views = new VideoViews();
  /** Each call's time to first audio and video, reported once each. */
  private firstMedia = new Map<string, FirstMediaClock>();
  private listeners = new Map<keyof SwitchboardEvents, Set<Listener<any>>>();
  /** The server's flags for this device; empty until it says. */
  private flags: Flags = {};
  /** The local camera / microphone stream of the current call (for a preview). */
  localStream?: MediaStream;

  on<E extends keyof SwitchboardEvents>(event: E, listener: Listener<E>): () => void {
    let set = this.listeners.get(event);
    if (!set) this.listeners.set(event, (set = new Set()));
    set.add(listener);
    return () => set.delete(listener);
  }

  removeAllListeners(): void {
    this.listeners.clear();
  }

  async registerDevice(options: RegisterDeviceOptions): Promise<void> {
    this.token = options.userToken;
    this.events?.close(); // registering again replaces the connection
    this.api = new CallApi(options.serverUrl, () => this.token, options.deviceId, undefined, options.dataChannels ?? false);
    const registered = await this.api.registerDevice({ platform: "web", push: {}, capabilities: { video: true } });
    this.setFlags(parseFlags((registered as { flags?: unknown } | null)?.flags));
    this.stopped = false;
    await this.connectEvents(options.deviceId);
  }

  async startCall({ calleeUserId, video }: StartCallOptions): Promise<{ callId: string }> {
    const api = this.requireApi();
    // Video off for this device: the call goes out as audio.
    video = video && this.featureOn("video_calls");
    const local = await this.localMedia(video);
    let info: JoinInfo;
    try {
      info = await api.createCall(calleeUserId, video);
    } catch (e) {
      for (const t of local.getTracks()) t.stop();
      throw e;
    }
    this.apply(this.calls.started(info.callId, video, calleeUserId));
    this.join(info, local);
    return { callId: info.callId };
  }

  async answer({ callId }: CallIdOptions): Promise<void> {
    const api = this.requireApi();
    const { accept, effects } = this.calls.answer(callId);
    if (!accept) return;
    this.firstMediaClock(callId).accepted(performance.now());
    this.apply(effects);
    try {
      const local = await this.localMedia(this.calls.video(callId));
      this.join(await api.accept(callId), local);
    } catch (e) {
      const reason = e instanceof SwitchboardError && e.code === "answered_elsewhere" ? "answered_elsewhere" : "failed";
      this.apply(this.calls.end(callId, reason));
      throw e;
    }
  }

  async decline({ callId }: CallIdOptions): Promise<void> {
    if (this.calls.state(callId) !== "ringing") return;
    this.apply(this.calls.end(callId, "declined"));
    await this.requireApi().decline(callId);
  }

  async end({ callId }: CallIdOptions): Promise<void> {
    if (this.calls.state(callId) === "ringing") return this.decline({ callId });
    this.leaveMedia(callId);
    this.apply(this.calls.end(callId, "completed"));
    await this.requireApi().end(callId);
  }

  async setMuted({ callId, muted }: SetMutedOptions): Promise<void> {
    this.requireCall(callId);
    this.calls.setMuted(callId, muted);
    this.media.get(callId)?.setMuted(muted);
  }

  async setCamera({ callId, enabled }: SetCameraOptions): Promise<void> {
    this.requireCall(callId);
    this.media.get(callId)?.setCamera(enabled);
  }

  async setHeld({ callId, held }: SetHeldOptions): Promise<void> {
    this.requireCall(callId);
    this.calls.setHeld(callId, held);
    this.media.get(callId)?.setHeld(held);
  }

  async switchCamera({ callId }: CallIdOptions): Promise<void> {
    this.requireCall(callId);
    await this.media.get(callId)?.switchCamera();
  }

  async showVideo(options: VideoViewOptions): Promise<void> {
    const { callId, trackId, frame } = options;
    const box = [frame?.x, frame?.y, frame?.width, frame?.height];
    if (!box.every((v) => typeof v === "number" && Number.isFinite(v)) || frame.width <= 0 || frame.height <= 0) {
      throw new SwitchboardError(0, "invalid_request", "frame {x, y, width, height} is required");
    }
    this.requireCall(callId);
    const stream = trackId === "local" ? this.localStream : this.remoteStreams.get(callId)?.get(trackId);
    if (!stream) throw new SwitchboardError(0, "track_not_found", `no video track ${trackId} in call ${callId}`);
    this.views.show(options, stream);
    if (trackId !== "local") {
      // The layer that fits the view: no more pixels than it shows.
      const ratio = globalThis.devicePixelRatio || 1;
      this.media.get(callId)?.setVideoSize(trackId, frame.width * ratio, frame.height * ratio);
    }
  }

  async sendData({ callId, payload, reliable, to }: SendDataOptions): Promise<void> {
    this.requireCall(callId);
    const media = this.media.get(callId);
    if (!media) throw new SwitchboardError(0, "not_connected", `call ${callId} has no media yet`);
    media.sendData(payload, { reliable, to });
  }

  async hideVideo({ callId, trackId }: VideoTrackOptions): Promise<void> {
    this.views.hide(callId, trackId);
  }

  async getActiveCalls(): Promise<{ calls: ActiveCall[] }> {
    return { calls: this.calls.active() };
  }

  async getFlags(): Promise<{ flags: Flags }> {
    return { flags: { ...this.flags } };
  }

  /** A built-in flag is on until the server says otherwise (an older server says nothing). */
  private featureOn(name: string): boolean {
    return this.flags[name] !== false;
  }

  /** Takes the server's flags; `flagsChanged` when they differ. */
  private setFlags(flags: Flags | undefined): void {
    if (!flags) return;
    const same = (a: Flags, b: Flags) =>
      Object.keys(a).length === Object.keys(b).length && Object.keys(a).every((k) => a[k] === b[k]);
    if (same(flags, this.flags)) return;
    this.flags = flags;
    this.emit("flagsChanged", { flags: { ...flags } });
  }

  /** The browser plays call audio where the page's elements play: no routes here. */
  async getAudioRoutes(): Promise<AudioRoutes> {
    return { routes: [], currentId: null };
  }

  async selectAudioRoute({ id }: SelectAudioRouteOptions): Promise<void> {
    throw new SwitchboardError(0, "unknown_route", `no audio route ${JSON.stringify(id)} in this browser`);
  }

  /**
   * A new user token: used from the next request on, and it resumes an
   * events socket that stopped on an expired token (`tokenRequested`).
   */
  async setUserToken({ token }: SetUserTokenOptions): Promise<void> {
    const resume = this.awaitingToken;
    this.awaitingToken = undefined;
    if (!token) return;
    this.token = token;
    resume?.();
  }

  async checkPermissions(): Promise<PermissionStatus> {
    const query = async (name: string): Promise<PermissionState> => {
      try {
        const status = await navigator.permissions.query({ name } as unknown as PermissionDescriptor);
        return status.state;
      } catch {
        return "prompt"; // a browser that cannot say
      }
    };
    return { microphone: await query("microphone"), camera: await query("camera"), notifications: "granted" };
  }

  /** Asks by opening (and at once stopping) the microphone and camera. */
  async requestPermissions(): Promise<PermissionStatus> {
    for (const constraints of [{ audio: true, video: true }, { audio: true }]) {
      try {
        const stream = await navigator.mediaDevices.getUserMedia(constraints);
        for (const t of stream.getTracks()) t.stop();
        break;
      } catch {
        // No camera or refused: ask for the microphone alone next.
      }
    }
    return this.checkPermissions();
  }

  private requireCall(callId: string): void {
    if (!this.calls.state(callId)) throw new SwitchboardError(0, "call_not_found", `no call ${callId} here`);
  }

  /** Closes the events socket and leaves every call. */
  close(): void {
    this.stopped = true;
    this.events?.close();
    for (const callId of [...this.media.keys()]) this.leaveMedia(callId);
  }

  private requireApi(): CallApi {
    if (!this.api) throw new SwitchboardError(0, "not_registered", "call registerDevice first");
    return this.api;
  }

  private async localMedia(video: boolean): Promise<MediaStream> {
    this.localStream = await navigator.mediaDevices.getUserMedia({ audio: true, video });
    return this.localStream;
  }

  private join(info: JoinInfo, local: MediaStream): void {
    const { callId } = info;
    const wsBase = this.requireApi().base.replace(/^http/, "ws");
    const media = new WebMedia(info.rtcUrl ?? `${wsBase}${info.rtcPath}`, info.callToken, info.iceServers, local, {
      connected: () => this.apply(this.calls.mediaConnected(callId)),
      firstMedia: (kind) => this.firstMediaClock(callId).played(kind, performance.now()),
      quality: (q) => this.report(callId, { type: "quality", ...q }),
      failed: (reason, detail) => {
        console.warn(`switchboard: call ${callId} media failed: ${detail}`);
        this.report(callId, { type: "media_failed", reason });
        this.media.delete(callId);
        this.apply(this.calls.end(callId, "failed"));
        void this.api?.end(callId).catch(() => undefined);
      },
      remoteTrack: (track, trackId, stream, owner) => {
        let streams = this.remoteStreams.get(callId);
        if (!streams) this.remoteStreams.set(callId, (streams = new Map()));
        streams.set(trackId, stream);
        this.emit("remoteTrack", { callId, kind: track.kind as "audio" | "video", trackId, stream, ...owner });
      },
      remoteTrackRemoved: (trackId) => {
        this.remoteStreams.get(callId)?.delete(trackId);
        this.views.hide(callId, trackId);
        this.emit("remoteTrackRemoved", { callId, trackId });
      },
      remoteTrackMuted: (trackId, muted) => this.emit("remoteTrackMuted", { callId, trackId, muted }),
      remoteTrackPaused: (trackId, paused) => this.emit("remoteTrackPaused", { callId, trackId, paused }),
      activeSpeakers: (speakers) => this.emit("activeSpeakers", { callId, speakers }),
      dataReceived: (message) => this.emit("dataReceived", { callId, ...message }),
    });
    this.media.set(callId, media);
    media.start().catch((e) => {
      this.media.delete(callId);
      media.close();
      this.apply(this.calls.end(callId, "failed"));
      console.warn(`switchboard: call ${callId} media did not start: ${String(e)}`);
    });
  }

  /** Telemetry for operations: a lost report is not worth a retry or an error. */
  private report(callId: string, report: Record<string, unknown>): void {
    void this.api?.report(callId, [report]).catch(() => undefined);
  }

  private firstMediaClock(callId: string): FirstMediaClock {
    let clock = this.firstMedia.get(callId);
    if (!clock) {
      clock = new FirstMediaClock((kind, afterAcceptMs) => this.report(callId, { type: `first_${kind}`, afterAcceptMs }));
      this.firstMedia.set(callId, clock);
    }
    return clock;
  }

  private leaveMedia(callId: string): void {
    this.firstMedia.delete(callId);
    this.media.get(callId)?.close();
    this.media.delete(callId);
    this.remoteStreams.delete(callId);
    this.views.hideCall(callId);
  }

  private async connectEvents(deviceId: string): Promise<void> {
    const url = `${this.requireApi().base.replace(/^http/, "ws")}/v1/events`;
    let delay = 250;
    const open = () =>
      new Promise<void>((resolve, reject) => {
        const ws = new WebSocket(url);
        this.events = ws;
        let authenticated = false;
        ws.onopen = () => ws.send(JSON.stringify({ type: "auth", token: this.token, deviceId }));
        ws.onmessage = (e) => {
          const event = parseEvent(String(e.data));
          if (!event) return;
          if (event.type === "authenticated") {
            authenticated = true;
            delay = 250;
            this.setFlags(event.flags);
            return resolve();
          }
          if (event.type === "flags") return this.setFlags(event.flags);
          // Calling or its UI off here: a ring that crossed the change is not shown.
          if (event.type === "ringing" && !(this.featureOn("calling") && this.featureOn("incoming_call_ui"))) return;
          if (event.type === "error") return reject(new SwitchboardError(401, event.code, event.message));
          // The caller's accept is the callee's answer.
          if (event.type === "accepted" && this.media.has(event.callId)) {
            this.firstMediaClock(event.callId).accepted(performance.now());
          }
          this.apply(this.calls.onServerEvent(event, Date.now()));
          if (event.type === "cancelled" || event.type === "ended") this.leaveMedia(event.callId);
        };
        ws.onerror = () => reject(new SwitchboardError(0, "unreachable", "events socket failed"));
        ws.onclose = () => {
          // A socket replaced by a newer registration is not reconnected.
          if (!authenticated || this.stopped || ws !== this.events) {
            return reject(new SwitchboardError(0, "closed", "events socket closed"));
          }
          // Reconnect with backoff (the server replays a ringing call). A
          // token the server no longer takes is asked of the app once;
          // the socket resumes when it answers (`setUserToken`).
          const retry = () => {
            if (this.stopped) return;
            open().catch((e: unknown) => {
              if (e instanceof SwitchboardError && TOKEN_REFUSED.has(e.code)) {
                this.awaitingToken = retry;
                this.emit("tokenRequested", { reason: e.code === "token_expired" ? "expired" : "refused" });
                return;
              }
              delay = Math.min(delay * 2, 30000);
              setTimeout(retry, delay * (0.5 + Math.random() / 2));
            });
          };
          setTimeout(retry, delay);
        };
      });
    await open();
  }

  private apply(effects: Effect[]): void {
    for (const effect of effects) {
      if (effect.kind === "ack") {
        this.events?.send(JSON.stringify({ type: "ack", callId: effect.callId }));
      } else {
        if (effect.kind === "callEnded") this.leaveMedia(effect.data.callId);
        this.emit(effect.kind, effect.data as never);
      }
    }
  }

  private emit<E extends keyof SwitchboardEvents>(event: E, data: SwitchboardEvents[E]): void {
    for (const listener of this.listeners.get(event) ?? []) {
      try {
        listener(data);
      } catch (e) {
        console.error(`switchboard: a ${event} listener threw`, e);
      }
    }
  }
}

/**
 * Time to first audio and video on the page's monotonic clock: from the
 * accept (the user's answer here, or the callee's answer to our call) to
 * the first decoded frame. Media may decode before a caller hears of the
 * answer: then it counts as at once.
 */
class FirstMediaClock {
  private acceptedAt?: number;
  private playedAt: { audio?: number; video?: number } = {};
  private reported = new Set<"audio" | "video">();

  constructor(private send: (kind: "audio" | "video", afterAcceptMs: number) => void) {}

  accepted(at: number): void {
    this.acceptedAt ??= at;
    this.flush();
  }

  played(kind: "audio" | "video", at: number): void {
    this.playedAt[kind] ??= at;
    this.flush();
  }

  private flush(): void {
    if (this.acceptedAt === undefined) return;
    for (const kind of ["audio", "video"] as const) {
      const at = this.playedAt[kind];
      if (at === undefined || this.reported.has(kind)) continue;
      this.reported.add(kind);
      this.send(kind, Math.max(0, Math.round(at - this.acceptedAt)));
    }
  }
}
