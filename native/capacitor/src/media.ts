// A call's media in the browser: the /v1/rtc signaling socket (protocol
// v1) with two RTCPeerConnections, the publisher (we offer our microphone
// and camera) and the subscriber (the server offers the others' tracks).
// After the socket drops it reconnects and resumes the same participant
// (`resumeParticipantId`) with an ICE restart, within the server's grace.

export interface TrackOwner {
  participantId: string;
  userId?: string;
}

export interface MediaCallbacks {
  connected(): void;
  failed(reason: string): void;
  remoteTrack(track: MediaStreamTrack, trackId: string, stream: MediaStream, owner?: TrackOwner): void;
  remoteTrackRemoved(trackId: string): void;
  remoteTrackMuted(trackId: string, muted: boolean): void;
}

type Message = Record<string, any>;

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

  private applyLocalTracks(): void {
    for (const t of this.local.getAudioTracks()) t.enabled = !this.muted && !this.held;
    for (const t of this.local.getVideoTracks()) t.enabled = !this.cameraOff && !this.held;
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
        case "left":
          this.fail(`removed from the call: ${m.reason}`);
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
          if (this.joinedWaiter) this.fail(`join refused: ${m.code}`);
          break;
      }
    } catch (e) {
      this.fail(String(e));
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
