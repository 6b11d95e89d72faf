// The Capacitor web implementation: the plugin API over SwitchboardWebClient.

import { WebPlugin } from "@capacitor/core";

import type {
  CallIdOptions,
  RegisterDeviceOptions,
  SetCameraOptions,
  SetMutedOptions,
  StartCallOptions,
  SwitchboardEvents,
  SwitchboardPlugin,
} from "./definitions.js";
import { SwitchboardWebClient } from "./web-client.js";

export class SwitchboardWeb extends WebPlugin implements SwitchboardPlugin {
  private client = new SwitchboardWebClient();

  constructor() {
    super();
    const events: (keyof SwitchboardEvents)[] = ["incomingCall", "callStateChanged", "callEnded", "remoteTrack"];
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
}
