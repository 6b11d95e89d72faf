// A call's media in the browser: the /v1/rtc signaling socket (protocol
// v1) with two RTCPeerConnections, the publisher (we offer our microphone
// and camera) and the subscriber (the server offers the others' tracks).
// After the socket drops it reconnects and resumes the same participant
// (`resumeParticipantId`) with an ICE restart, within the server's grace.

export interface MediaCallbacks {
  connected(): void;
  failed(reason: string): void;
  remoteTrack(track: MediaStreamTrack, trackId: string, stream: MediaStream): void;
}

type Message = Record<string, any>;

export class WebMedia {
  private ws?: WebSocket;
  private pub: RTCPeerConnection;
  private sub: RTCPeerConnection;
  private participantId?: string;
  private graceMs = 15000;
  private midTrack = new Map<string, string>();
  private closed = false;
  private reportedConnected = false;
  private offerPending = false;
  private restartQueued = false;

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
      this.callbacks.remoteTrack(e.track, trackId, e.streams[0] ?? new MediaStream([e.track]));
    };
    for (const track of local.getTracks()) this.pub.addTransceiver(track, { direction: "sendonly" });
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
    for (const t of this.local.getAudioTracks()) t.enabled = !muted;
  }

  setCamera(enabled: boolean): void {
    for (const t of this.local.getVideoTracks()) t.enabled = enabled;
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
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
        case "left":
          this.fail(`removed from the call: ${m.reason}`);
          break;
        case "error":
          if (this.joinedWaiter) this.fail(`join refused: ${m.code}`);
          break;
      }
    } catch (e) {
      this.fail(String(e));
    }
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
    if (states.includes("failed")) this.fail("a peer connection failed");
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
    this.fail("could not resume within the grace period");
  }

  private fail(reason: string): void {
    if (this.closed) return;
    this.close();
    this.callbacks.failed(reason);
  }

  private send(message: Message): void {
    if (this.ws?.readyState === WebSocket.OPEN) this.ws.send(JSON.stringify(message));
  }
}
