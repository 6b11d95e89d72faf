// The plugin's API: the same on iOS (CallKit + PushKit over the Rust core),
// Android (Telecom + FCM over the Rust core) and the web (this package's
// browser WebRTC implementation).

import type { PluginListenerHandle } from "@capacitor/core";

export type CallType = "audio" | "video";

/** Where a call is, as the UI shows it. */
export type CallState =
  | "ringing" // incoming, waiting for the user
  | "outgoing" // we called; the callee's devices ring
  | "connecting" // answered; media is being set up
  | "connected"
  | "reconnecting" // was connected; media is being restored (phones)
  | "ended";

/** Why a call ended (mirrors the core's `EndedReason`). */
export type EndReason =
  | "completed" // hung up after talking, on either side
  | "remote_ended" // the other side ended it before it connected
  | "answered_elsewhere"
  | "declined_elsewhere"
  | "declined" // declined here
  | "missed"
  | "failed";

export interface RegisterDeviceOptions {
  /** `https://calls.example.com` (the switchboard server). */
  serverUrl: string;
  /** A user token from the app's backend. */
  userToken: string;
  /** Stable per install. */
  deviceId: string;
  /** Push tokens (native platforms; the web has none). */
  push?: { apnsVoip?: string; apnsAlert?: string; fcm?: string };
  /** iOS: the app's bundle id and APNs environment. */
  bundleId?: string;
  apnsEnvironment?: "sandbox" | "production";
  /**
   * iOS: ring through CallKit (default, except in the China mainland
   * storefront, where Apple does not allow it). Without it the server rings
   * by a visible alert push and the call is a notification (IOS.md).
   */
  useCallKit?: boolean;
  /** Phones: PEM of a private CA the server's certificate chains to. */
  trustedCaPem?: string;
  /**
   * Calls this device starts let their members send on the call's data
   * channels (`sendData`, `dataReceived`). Default false.
   */
  dataChannels?: boolean;
}

export interface StartCallOptions {
  calleeUserId: string;
  video: boolean;
}

export interface CallIdOptions {
  callId: string;
}

export interface SetMutedOptions extends CallIdOptions {
  muted: boolean;
}

export interface SetCameraOptions extends CallIdOptions {
  enabled: boolean;
}

export interface IncomingCallEvent {
  callId: string;
  fromUserId: string;
  video: boolean;
  /** When the ring stops (Unix ms); on phones the system call UI keeps the time. */
  expiresAt?: number;
  /** Phones: the name and picture the push carried. */
  callerName?: string;
  avatarUrl?: string | null;
}

export interface CallStateChangedEvent {
  callId: string;
  state: CallState;
}

export interface CallEndedEvent {
  callId: string;
  reason: EndReason;
}

export interface RemoteTrackEvent {
  callId: string;
  kind: "audio" | "video";
  trackId: string;
  /** Whose track it is, when the server said (phones; the web from signaling). */
  participantId?: string;
  userId?: string;
  /** Web only: attach to a <video> / <audio> element. */
  stream?: MediaStream;
}

export interface RemoteTrackRemovedEvent {
  callId: string;
  trackId: string;
}

export interface RemoteTrackMutedEvent {
  callId: string;
  trackId: string;
  muted: boolean;
}

/**
 * The server stopped forwarding a remote video track because this device's
 * downlink cannot carry even its lowest layer (`paused`), or started again
 * (servers with downlink estimation): show a placeholder, not the frozen
 * last frame.
 */
export interface RemoteTrackPausedEvent {
  callId: string;
  trackId: string;
  paused: boolean;
}

/** The call's mute changed outside the app's UI (the CallKit screen, a headset button). */
export interface MuteChangedEvent {
  callId: string;
  muted: boolean;
}

export type PermissionState = "prompt" | "prompt-with-rationale" | "granted" | "denied";

export interface PermissionStatus {
  microphone: PermissionState;
  camera: PermissionState;
  /** Android 13+: the ringing notification needs it. Elsewhere "granted". */
  notifications: PermissionState;
}

export type AudioRouteKind = "earpiece" | "speaker" | "wired" | "bluetooth" | "other";

export interface AudioRoute {
  /** The platform's id (a port UID on iOS, an endpoint id on Android). */
  id: string;
  kind: AudioRouteKind;
  /** What the user sees ("AirPods Pro", "Speaker"). */
  name: string;
}

/**
 * Where call audio can play and where it plays now. On phones the core
 * picks each call's default (a connected headset first, else the speaker
 * for video and the earpiece for voice); the web leaves output to the
 * browser and lists none.
 */
export interface AudioRoutes {
  routes: AudioRoute[];
  currentId: string | null;
}

/** One call this device is in (`getActiveCalls`). */
export interface ActiveCall {
  callId: string;
  state: Exclude<CallState, "ended">;
  video: boolean;
  outgoing: boolean;
  /** The caller of an incoming call, the callee of an outgoing one. */
  remoteUserId: string;
  muted: boolean;
  held: boolean;
}

/**
 * The user token was refused or is about to expire and the native side
 * cannot reach the app's backend itself: answer with `setUserToken`.
 */
export interface TokenRequestedEvent {
  reason: "expired" | "refused";
}

/**
 * The server's feature flags for this device changed (also the first time
 * it says them). Hide what is off: no video button with `video_calls` off.
 */
export interface FlagsChangedEvent {
  flags: Record<string, boolean>;
}

/**
 * Who in a call is speaking, loudest first (empty: nobody), from the audio
 * levels the server reads; sent when the order changes, at most every
 * 300 ms. `userId` when known (not for your own participant).
 */
export interface ActiveSpeakersEvent extends CallIdOptions {
  speakers: { participantId: string; userId?: string; level: number }[];
}

export interface SendDataOptions extends CallIdOptions {
  /** At most 16 KiB (UTF-8); send JSON as a string. */
  payload: string;
  /** Ordered and retransmitted (default); `false`: unordered, may be lost. */
  reliable?: boolean;
  /** Only these participants (1 to 64); left out: the whole room. */
  to?: string[];
}

/** A member's message (`sendData`); `from` as the server attached it. */
export interface DataReceivedEvent extends CallIdOptions {
  from: string;
  /** When known (from the room's participant list). */
  userId?: string;
  payload: string;
  reliable: boolean;
}

export interface SwitchboardEvents {
  incomingCall: IncomingCallEvent;
  callStateChanged: CallStateChangedEvent;
  callEnded: CallEndedEvent;
  remoteTrack: RemoteTrackEvent;
  remoteTrackRemoved: RemoteTrackRemovedEvent;
  remoteTrackMuted: RemoteTrackMutedEvent;
  remoteTrackPaused: RemoteTrackPausedEvent;
  muteChanged: MuteChangedEvent;
  audioRouteChanged: AudioRoutes;
  tokenRequested: TokenRequestedEvent;
  flagsChanged: FlagsChangedEvent;
  activeSpeakers: ActiveSpeakersEvent;
  dataReceived: DataReceivedEvent;
}

/** A rectangle in CSS pixels of the web view (from `getBoundingClientRect`). */
export interface VideoFrame {
  x: number;
  y: number;
  width: number;
  height: number;
}

export interface VideoViewOptions extends CallIdOptions {
  /** A remote track (`remoteTrack`'s `trackId`), or `"local"` for the camera preview. */
  trackId: string;
  frame: VideoFrame;
  /** `cover` (default) fills the frame and crops; `contain` fits inside it. */
  fit?: "cover" | "contain";
  /** Mirror horizontally (the usual front-camera preview). */
  mirror?: boolean;
}

export interface VideoTrackOptions extends CallIdOptions {
  trackId: string;
}

export interface SetHeldOptions extends CallIdOptions {
  held: boolean;
}

export interface SelectAudioRouteOptions {
  id: string;
}

export interface SetUserTokenOptions {
  /** Absent when the app could not get one: the core then stops retrying. */
  token?: string;
}

/**
 * Calls are named by the server's call id on every platform (phones map it
 * to their CallKit / Telecom UUID). Events that happen before JS listens (a
 * cold start from a push) are kept and delivered to the first listener.
 */
export interface SwitchboardPlugin {
  /**
   * Registers this device and connects its events (rings arrive). On phones
   * the push tokens come from the native side (PushKit, FCM), not from
   * `push`, and the configuration is saved for cold starts.
   */
  registerDevice(options: RegisterDeviceOptions): Promise<void>;
  startCall(options: StartCallOptions): Promise<{ callId: string }>;
  answer(options: CallIdOptions): Promise<void>;
  decline(options: CallIdOptions): Promise<void>;
  end(options: CallIdOptions): Promise<void>;
  setMuted(options: SetMutedOptions): Promise<void>;
  setCamera(options: SetCameraOptions): Promise<void>;
  /** Hold is not mute: the user's mute is kept and restored on unhold. */
  setHeld(options: SetHeldOptions): Promise<void>;
  /** Front to back camera and back (the next camera on the web). */
  switchCamera(options: CallIdOptions): Promise<void>;
  /**
   * Renders a call's video at a frame over the web view (phones: a native
   * view above it, so leave that area of the page empty; the web: a
   * positioned <video>). Called again, the view moves. Views go away with
   * their track or call. Rejects with `track_not_found`.
   */
  showVideo(options: VideoViewOptions): Promise<void>;
  hideVideo(options: VideoTrackOptions): Promise<void>;
  /**
   * Sends a message on the call's data channels (calls created with
   * `dataChannels: true`). Rejects with `permission_denied`,
   * `message_too_large`, `bad_message` or `not_connected`; the server also
   * limits the rate (50 messages, 128 KiB per second) and drops the rest.
   * Web only for now: phones reject with `unimplemented`.
   */
  sendData(options: SendDataOptions): Promise<void>;
  /** The calls in progress: what a UI that loads during a call shows first. */
  getActiveCalls(): Promise<{ calls: ActiveCall[] }>;
  /**
   * The server's feature flags for this device (`calling`,
   * `incoming_call_ui`, `audio_calls`, `video_calls` and the operator's
   * own); empty before the server first said. `flagsChanged` follows.
   */
  getFlags(): Promise<{ flags: Record<string, boolean> }>;
  getAudioRoutes(): Promise<AudioRoutes>;
  /** Rejects with code `unknown_route` for an id not in `getAudioRoutes`. */
  selectAudioRoute(options: SelectAudioRouteOptions): Promise<void>;
  /** The answer to `tokenRequested`. */
  setUserToken(options: SetUserTokenOptions): Promise<void>;
  checkPermissions(): Promise<PermissionStatus>;
  /** Asks for the microphone and camera (and notifications on Android 13+). */
  requestPermissions(): Promise<PermissionStatus>;
  /**
   * Android 14+: whether the ringing notification may take the full screen
   * (elsewhere always true: CallKit and browsers have no such switch).
   */
  canUseFullScreenIntent(): Promise<{ value: boolean }>;
  /** Android 14+: the settings page that grants it (elsewhere nothing to open). */
  openFullScreenIntentSettings(): Promise<void>;
  /** Android: whether the app is exempt from battery optimisation (ANDROID.md, OEMs). */
  getBatteryOptimization(): Promise<{ ignoring: boolean }>;
  openBatteryOptimizationSettings(): Promise<void>;
  addListener<E extends keyof SwitchboardEvents>(
    event: E,
    listener: (data: SwitchboardEvents[E]) => void,
  ): Promise<PluginListenerHandle>;
  removeAllListeners(): Promise<void>;
}
