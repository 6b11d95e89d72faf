// The Capacitor web implementation: the plugin API over SwitchboardWebClient.

import { WebPlugin } from "@capacitor/core";

import type {
  ActiveCall,
  AudioRoutes,
  CallIdOptions,
  PermissionStatus,
  RegisterDeviceOptions,
  SelectAudioRouteOptions,
  SetCameraOptions,
  SetHeldOptions,
  SetMutedOptions,
  SetUserTokenOptions,
  StartCallOptions,
  SwitchboardEvents,
  SwitchboardPlugin,
  VideoTrackOptions,
  SendDataOptions,
  VideoViewOptions,
} from "./definitions.js";
import { SwitchboardWebClient } from "./web-client.js";

export class SwitchboardWeb extends WebPlugin implements SwitchboardPlugin {
  private client = new SwitchboardWebClient();

  constructor() {
    super();
    const events: (keyof SwitchboardEvents)[] = [
      "incomingCall",
      "callStateChanged",
      "callEnded",
      "remoteTrack",
      "remoteTrackRemoved",
      "remoteTrackMuted",
      "remoteTrackPaused",
      "muteChanged",
      "audioRouteChanged",
      "tokenRequested",
      "flagsChanged",
      "activeSpeakers",
      "dataReceived",
    ];
    for (const event of events) this.client.on(event, (data) => this.notifyListeners(event, data));
  }

  registerDevice(options: RegisterDeviceOptions): Promise<void> {
    return this.client.registerDevice(options);
  }

  startCall(options: StartCallOptions): Promise<{ callId: string }> {
    return this.client.startCall(options);
  }

  answer(options: CallIdOptions): Promise<void> {
    return this.client.answer(options);
  }

  decline(options: CallIdOptions): Promise<void> {
    return this.client.decline(options);
  }

  end(options: CallIdOptions): Promise<void> {
    return this.client.end(options);
  }

  setMuted(options: SetMutedOptions): Promise<void> {
    return this.client.setMuted(options);
  }

  setCamera(options: SetCameraOptions): Promise<void> {
    return this.client.setCamera(options);
  }

  setHeld(options: SetHeldOptions): Promise<void> {
    return this.client.setHeld(options);
  }

  switchCamera(options: CallIdOptions): Promise<void> {
    return this.client.switchCamera(options);
  }

  showVideo(options: VideoViewOptions): Promise<void> {
    return this.client.showVideo(options);
  }

  sendData(options: SendDataOptions): Promise<void> {
    return this.client.sendData(options);
  }

  hideVideo(options: VideoTrackOptions): Promise<void> {
    return this.client.hideVideo(options);
  }

  getActiveCalls(): Promise<{ calls: ActiveCall[] }> {
    return this.client.getActiveCalls();
  }

  getFlags(): Promise<{ flags: Record<string, boolean> }> {
    return this.client.getFlags();
  }

  getAudioRoutes(): Promise<AudioRoutes> {
    return this.client.getAudioRoutes();
  }

  selectAudioRoute(options: SelectAudioRouteOptions): Promise<void> {
    return this.client.selectAudioRoute(options);
  }

  setUserToken(options: SetUserTokenOptions): Promise<void> {
    return this.client.setUserToken(options);
  }

  checkPermissions(): Promise<PermissionStatus> {
    return this.client.checkPermissions();
  }

  requestPermissions(): Promise<PermissionStatus> {
    return this.client.requestPermissions();
  }

  /** A browser has no full-screen-intent switch. */
  async canUseFullScreenIntent(): Promise<{ value: boolean }> {
    return { value: true };
  }

  async openFullScreenIntentSettings(): Promise<void> {}

  /** A browser has no battery optimisation to be exempt from. */
  async getBatteryOptimization(): Promise<{ ignoring: boolean }> {
    return { ignoring: true };
  }

  async openBatteryOptimizationSettings(): Promise<void> {}
}
