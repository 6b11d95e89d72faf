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
  /** When the ring stops (Unix ms). */
  expiresAt: number;
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
  /** Web only: attach to a <video> / <audio> element. */
  stream?: MediaStream;
}

export interface SwitchboardEvents {
  incomingCall: IncomingCallEvent;
  callStateChanged: CallStateChangedEvent;
  callEnded: CallEndedEvent;
  remoteTrack: RemoteTrackEvent;
}

export interface SwitchboardPlugin {
  /** Registers this device and connects its events (rings arrive). */
  registerDevice(options: RegisterDeviceOptions): Promise<void>;
  startCall(options: StartCallOptions): Promise<{ callId: string }>;
  answer(options: CallIdOptions): Promise<void>;
  decline(options: CallIdOptions): Promise<void>;
  end(options: CallIdOptions): Promise<void>;
  setMuted(options: SetMutedOptions): Promise<void>;
  setCamera(options: SetCameraOptions): Promise<void>;
  addListener<E extends keyof SwitchboardEvents>(
    event: E,
    listener: (data: SwitchboardEvents[E]) => void,
  ): Promise<PluginListenerHandle>;
  removeAllListeners(): Promise<void>;
}
