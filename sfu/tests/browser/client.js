// A minimal browser client for Switchboard signaling protocol v1: one
// WebSocket, a publisher RTCPeerConnection (we offer) and a subscriber one
// (the server offers). The Capacitor plugin's web implementation grows from
// this; the browser tests drive it.

export class SwitchboardClient extends EventTarget {
  // `rtcConfig`: extra RTCPeerConnection settings (iceServers from the join
  // info, iceTransportPolicy).
  constructor(url, token, rtcConfig = {}) {
    super();
    this.url = url;
    this.token = token;
    this.rtcConfig = rtcConfig;
    this.participants = new Map(); // participantId -> info
    this.trackOwner = new Map(); // trackId -> participantId
    this.midTrack = new Map(); // subscriber mid -> trackId
    this.dataChannels = new Map(); // label -> RTCDataChannel (the server's two)
    this.remote = new Map(); // trackId -> { track, participantId, kind, stream }
    this.waiters = [];
    this.log = [];
    this.timeline = []; // [what, ms since page load], for time-to-first-frame reports
  }

  async open() {
    this.ws = new WebSocket(this.url);
    await new Promise((resolve, reject) => {
      this.ws.onopen = resolve;
      this.ws.onerror = () => reject(new Error("websocket failed"));
    });
    this.ws.onmessage = (e) => this.onMessage(JSON.parse(e.data));
    this.ws.onclose = () => this.dispatchEvent(new Event("closed"));
  }

  async join() {
    await this.open();
    this.pub = this.newPc("publisher");
    this.sub = this.newPc("subscriber");
    this.sub.ontrack = (e) => this.onTrack(e);
    this.sub.ondatachannel = (e) => this.onDataChannel(e.channel);
    for (const [name, pc] of [["publisher", this.pub], ["subscriber", this.sub]]) {
      pc.onconnectionstatechange = () => this.timeline.push([`${name}:${pc.connectionState}`, Math.round(performance.now())]);
    }
    this.watchFirstMedia();
    // The call's room may be on another node: `wrong_node` says which, and
    // the join goes there (at most three times: nodes must not ping-pong).
    let joined;
    for (let moves = 0; !joined; moves++) {
      this.send({ type: "join", protocolVersion: 1, token: this.token });
      const answer = await Promise.race([this.next("joined"), this.next("error")]);
      if (answer.type === "joined") {
        joined = answer;
      } else if (answer.code === "wrong_node" && /^wss?:\/\//.test(answer.rtcUrl ?? "") && moves < 3) {
        this.ws.onclose = null;
        this.ws.close();
        this.url = answer.rtcUrl;
        await this.open();
      } else {
        throw new Error(`join refused: ${answer.code}: ${answer.message}`);
      }
    }
    this.participantId = joined.participantId;
    for (const p of joined.participants) this.learnParticipant(p);
    return joined;
  }

  // Notes in the timeline when the first video packet, keyframe and decoded
  // frame arrive on the subscriber connection (polled every 50 ms, 20 s max).
  watchFirstMedia() {
    const seen = new Set();
    const started = performance.now();
    const timer = setInterval(async () => {
      if (performance.now() - started > 20000 || seen.size === 3) return clearInterval(timer);
      const stats = await this.sub.getStats();
      stats.forEach((s) => {
        if (s.type !== "inbound-rtp" || s.kind !== "video") return;
        for (const [field, name] of [["packetsReceived", "firstVideoPacket"], ["keyFramesDecoded", "firstKeyframe"], ["framesDecoded", "firstFrameDecoded"]]) {
          if (s[field] > 0 && !seen.has(name)) {
            seen.add(name);
            this.timeline.push([name, Math.round(performance.now())]);
          }
        }
      });
    }, 50);
  }

  newPc(target) {
    const pc = new RTCPeerConnection({ bundlePolicy: "max-bundle", ...this.rtcConfig });
    pc.onicecandidate = (e) => {
      if (e.candidate) {
        this.send({ type: "trickle", target, candidate: e.candidate.toJSON() });
      }
    };
    return pc;
  }

  send(message) {
    if (this.ws && this.ws.readyState === WebSocket.OPEN) {
      this.ws.send(JSON.stringify(message));
    }
  }

  // Resolves with the next message of `type` (or rejects on an error reply).
  next(type, timeoutMs = 15000) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no ${type} in ${timeoutMs} ms`)), timeoutMs);
      this.waiters.push({ type, resolve: (m) => { clearTimeout(timer); resolve(m); }, reject });
    });
  }

  learnParticipant(p) {
    this.participants.set(p.participantId, p);
    for (const t of p.tracks) this.trackOwner.set(t.trackId, p.participantId);
  }

  async onMessage(m) {
    this.log.push(m.type);
    this.timeline.push([m.type, Math.round(performance.now())]);
    const i = this.waiters.findIndex((w) => w.type === m.type);
    if (i >= 0) this.waiters.splice(i, 1)[0].resolve(m);
    switch (m.type) {
      case "participantJoined":
        this.learnParticipant(m.participant);
        break;
      case "participantLeft":
        this.participants.delete(m.participantId);
        break;
      case "trackPublished":
        this.trackOwner.set(m.track.trackId, m.track.participantId);
        break;
      case "trackUnpublished":
        this.remote.delete(m.trackId);
        this.dispatchEvent(new CustomEvent("trackremoved", { detail: m }));
        break;
      case "subscriberOffer":
        for (const t of m.tracks) this.midTrack.set(t.mid, t.trackId);
        await this.sub.setRemoteDescription({ type: "offer", sdp: m.sdp });
        await this.sub.setLocalDescription(await this.sub.createAnswer());
        this.send({ type: "subscriberAnswer", sdp: this.sub.localDescription.sdp });
        break;
      case "qualityUpdate":
        this.applyWantedQualities(m.mid, m.qualities);
        break;
      case "error":
        console.warn("switchboard error", m.code, m.message);
        this.dispatchEvent(new CustomEvent("servererror", { detail: m }));
        break;
    }
    this.dispatchEvent(new CustomEvent(m.type, { detail: m }));
  }

  onTrack(e) {
    const mid = e.transceiver.mid;
    const trackId = this.midTrack.get(mid);
    const participantId = this.trackOwner.get(trackId);
    const entry = { track: e.track, participantId, kind: e.track.kind, trackId, mid, stream: new MediaStream([e.track]) };
    this.remote.set(trackId, entry);
    this.dispatchEvent(new CustomEvent("remotetrack", { detail: entry }));
  }

  // The server opens `switchboard` (reliable) and `switchboard-lossy` on
  // the subscriber connection; what arrives is `{from, payload}`, `from`
  // being the sender as the server knows it.
  onDataChannel(channel) {
    this.dataChannels.set(channel.label, channel);
    const reliable = channel.label === "switchboard";
    channel.onmessage = (e) => {
      const { from, payload } = JSON.parse(e.data);
      this.dispatchEvent(new CustomEvent("data", { detail: { from, payload, reliable } }));
    };
  }

  // Sends `payload` (a string) to the room, or to the participants in `to`.
  // `frame` overrides the whole message, to send what the client would not.
  sendData(payload, { to, reliable = true, frame } = {}) {
    const channel = this.dataChannels.get(reliable ? "switchboard" : "switchboard-lossy");
    if (channel?.readyState !== "open") throw new Error("data channel not open");
    channel.send(frame ?? JSON.stringify(to ? { to, payload } : { payload }));
  }

  // Publishes the given tracks; `videoCodec` ("VP8" | "H264") is forced with
  // setCodecPreferences when given. `simulcast`: video in three layers
  // (quarter, half and full resolution, lowest first), each kept at its
  // resolution when the CPU is short (maintain-resolution), so a layer's
  // width stays what subscribers asked for.
  async publish(tracks, videoCodec, { simulcast = false } = {}) {
    for (const track of tracks) {
      const sendEncodings = track.kind === "video" && simulcast
        ? [{ rid: "q", scaleResolutionDownBy: 4, maxBitrate: 100_000 }, { rid: "h", scaleResolutionDownBy: 2, maxBitrate: 400_000 }, { rid: "f", scaleResolutionDownBy: 1, maxBitrate: 1_200_000 }]
        : undefined;
      const tr = this.pub.addTransceiver(track, { direction: "sendonly", sendEncodings });
      if (track.kind === "video" && videoCodec) {
        const codecs = RTCRtpSender.getCapabilities("video").codecs.filter(
          (c) => c.mimeType.toLowerCase() === `video/${videoCodec.toLowerCase()}`,
        );
        if (codecs.length === 0) throw new Error(`this browser cannot send ${videoCodec}`);
        tr.setCodecPreferences(codecs);
      }
    }
    await this.pub.setLocalDescription(await this.pub.createOffer());
    this.send({ type: "publish", sdp: this.pub.localDescription.sdp });
    const answer = await this.next("publishAnswer");
    await this.pub.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    if (simulcast) {
      for (const sender of this.pub.getSenders()) {
        if (sender.track?.kind !== "video") continue;
        const params = sender.getParameters();
        params.degradationPreference = "maintain-resolution";
        await sender.setParameters(params);
      }
    }
    return answer.tracks;
  }

  // Dynacast: only the encodings subscribers want stay on (the same
  // arithmetic as the plugin's web client, native/capacitor/src/media.ts).
  // One setParameters at a time: each needs the previous one's transaction.
  applyWantedQualities(mid, qualities) {
    const sender = this.pub.getTransceivers().find((t) => t.mid === mid)?.sender;
    if (!sender) return;
    this.encodingsChain = (this.encodingsChain ?? Promise.resolve()).then(async () => {
      const params = sender.getParameters();
      const top = Math.max(0, params.encodings.length - 1);
      const index = { low: 0, medium: Math.ceil(top / 2), high: top };
      const wanted = new Set(qualities.map((q) => index[q]));
      params.encodings.forEach((e, i) => (e.active = wanted.has(i)));
      await sender.setParameters(params);
    }).catch((e) => console.warn("could not apply the wanted layers", String(e)));
  }

  // Which layer of a simulcast track to receive: "low" | "medium" |
  // "high", or {width, height} and/or {fps} (PROTOCOL.md).
  updateSubscription(trackId, quality, more = {}) {
    this.send({ type: "updateSubscription", trackId, ...(quality ? { quality } : {}), ...more });
  }

  leave() {
    this.send({ type: "leave" });
    this.pub.close();
    this.sub.close();
  }
}
