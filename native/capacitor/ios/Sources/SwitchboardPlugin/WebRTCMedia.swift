// The core's media port on WebRTC.framework (stasel/WebRTC): two peer
// connections as signaling/PROTOCOL.md has them (the device offers on the
// publisher, the server offers on the subscriber), the microphone and the
// camera, remote tracks by transceiver mid (the core tells JS which
// participant each mid carries). Audio runs in manual mode: CallKit owns
// the audio session (SwitchboardCalls forwards didActivate).
//
// The core calls these methods on its own threads and expects answers, so
// the WebRTC completion handlers are awaited with a bounded wait.

import Foundation
#if canImport(SwitchboardCore)
    import SwitchboardCore  // its own module with SwiftPM; one module with CocoaPods
#endif
import WebRTC

final class WebRTCMediaFactory: MediaFactory, @unchecked Sendable {
    private static let factory: RTCPeerConnectionFactory = {
        RTCInitializeSSL()
        return RTCPeerConnectionFactory(
            encoderFactory: RTCDefaultVideoEncoderFactory(),
            decoderFactory: RTCDefaultVideoDecoderFactory())
    }()

    /// The session of each call, for native video views.
    private(set) var sessions: [String: WebRTCMediaSession] = [:]

    func createSession(callId: String, video: Bool, iceServers: [IceServer], events: MediaEvents) throws -> MediaSession {
        let session = try WebRTCMediaSession(
            factory: WebRTCMediaFactory.factory, video: video, iceServers: iceServers, events: events)
        sessions = sessions.filter { !$0.value.ended }
        sessions[callId] = session
        return session
    }
}

final class WebRTCMediaSession: NSObject, MediaSession, @unchecked Sendable {
    private let factory: RTCPeerConnectionFactory
    private let events: MediaEvents
    private var publisher: RTCPeerConnection!
    private var subscriber: RTCPeerConnection!
    private let audioTrack: RTCAudioTrack
    /// The camera's track (the local preview of a video view).
    private(set) var videoTrack: RTCVideoTrack?
    private var capturer: RTCCameraVideoCapturer?
    private var userMuted = false
    private var held = false
    private var connected: Set<ObjectIdentifier> = []
    private var frontCamera = true
    private(set) var ended = false
    /// Stats reads for the core's call reports run here, one at a time.
    private let statsQueue = DispatchQueue(label: "switchboard.media.stats")

    /// Remote video by subscriber mid (a native view renders one).
    private(set) var remoteVideo: [String: RTCVideoTrack] = [:]
    /// The server's data channels on the subscriber connection, by label
    /// (WebRTC's signaling thread adds them; the core's threads send).
    private var dataChannels: [String: RTCDataChannel] = [:]
    private let dataLock = NSLock()

    init(factory: RTCPeerConnectionFactory, video: Bool, iceServers: [IceServer], events: MediaEvents) throws {
        self.factory = factory
        self.events = events
        let constraints = RTCMediaConstraints(mandatoryConstraints: nil, optionalConstraints: nil)
        audioTrack = factory.audioTrack(with: factory.audioSource(with: constraints), trackId: "audio")
        super.init()
        let config = RTCConfiguration()
        config.iceServers = iceServers.map {
            RTCIceServer(urlStrings: $0.urls, username: $0.username, credential: $0.credential)
        }
        config.sdpSemantics = .unifiedPlan
        config.bundlePolicy = .maxBundle
        config.rtcpMuxPolicy = .require
        config.continualGatheringPolicy = .gatherContinually
        guard let publisher = factory.peerConnection(with: config, constraints: constraints, delegate: self),
              let subscriber = factory.peerConnection(with: config, constraints: constraints, delegate: self)
        else {
            throw PortError.Failed(detail: "no peer connection")
        }
        self.publisher = publisher
        self.subscriber = subscriber
        publisher.add(audioTrack, streamIds: ["local"])
        if video {
            let source = factory.videoSource()
            let track = factory.videoTrack(with: source, trackId: "video")
            // Simulcast, as the web client sends it: the server forwards
            // each subscriber the layer that fits it.
            let transceiverInit = RTCRtpTransceiverInit()
            transceiverInit.direction = .sendOnly
            transceiverInit.streamIds = ["local"]
            transceiverInit.sendEncodings = WebRTCMediaSession.simulcast.map { rid, scale, maxBitrate in
                let encoding = RTCRtpEncodingParameters()
                encoding.rid = rid
                encoding.isActive = true
                encoding.scaleResolutionDownBy = NSNumber(value: scale)
                encoding.maxBitrateBps = NSNumber(value: maxBitrate)
                return encoding
            }
            publisher.addTransceiver(with: track, init: transceiverInit)
            videoTrack = track
            capturer = RTCCameraVideoCapturer(delegate: source)
            startCamera(front: true)
        }
        readStats(after: 250)
    }

    // MARK: Inbound stats (time to first audio, quality)

    /// Reads the subscriber's stats and hands the totals to the core, which
    /// says when to read again (often until the first audio and video
    /// decode, then every 10 s).
    private func readStats(after milliseconds: UInt32) {
        statsQueue.asyncAfter(deadline: .now() + .milliseconds(Int(milliseconds))) { [weak self] in
            guard let self, !self.ended else { return }
            self.subscriber.statistics { report in
                self.statsQueue.async {
                    guard !self.ended else { return }
                    let next = self.events.inboundStats(stats: WebRTCMediaSession.totals(of: report))
                    self.readStats(after: next)
                }
            }
        }
    }

    private static func totals(of report: RTCStatisticsReport) -> InboundStats {
        var totals = InboundStats(
            audioSamplesReceived: 0, videoFramesDecoded: 0, videoInbound: false,
            packetsLost: 0, packetsReceived: 0, jitterMs: 0, rttMs: nil)
        for stats in report.statistics.values {
            let number = { (key: String) in (stats.values[key] as? NSNumber) }
            switch stats.type {
            case "inbound-rtp":
                if (stats.values["kind"] as? String) == "video" {
                    totals.videoInbound = true
                    totals.videoFramesDecoded += number("framesDecoded")?.uint64Value ?? 0
                } else {
                    totals.audioSamplesReceived += number("totalSamplesReceived")?.uint64Value ?? 0
                }
                totals.packetsLost += number("packetsLost")?.int64Value ?? 0
                totals.packetsReceived += number("packetsReceived")?.uint64Value ?? 0
                totals.jitterMs = max(totals.jitterMs, (number("jitter")?.doubleValue ?? 0) * 1000)
            case "candidate-pair":
                if number("nominated")?.boolValue == true, let rtt = number("currentRoundTripTime") {
                    totals.rttMs = rtt.doubleValue * 1000
                }
            default:
                break
            }
        }
        return totals
    }

    // MARK: MediaSession

    func createPublisherOffer(iceRestart: Bool) throws -> String {
        let constraints = RTCMediaConstraints(
            mandatoryConstraints: iceRestart ? ["IceRestart": "true"] : nil, optionalConstraints: nil)
        let offer: RTCSessionDescription = try wait { done in
            self.publisher.offer(for: constraints) { sdp, error in done(sdp, error) }
        }
        try waitFor { done in self.publisher.setLocalDescription(offer) { done($0) } }
        return offer.sdp
    }

    func applyPublisherAnswer(sdp: String) throws {
        let answer = RTCSessionDescription(type: .answer, sdp: sdp)
        try waitFor { done in self.publisher.setRemoteDescription(answer) { done($0) } }
    }

    func answerSubscriberOffer(sdp: String) throws -> String {
        let offer = RTCSessionDescription(type: .offer, sdp: sdp)
        try waitFor { done in self.subscriber.setRemoteDescription(offer) { done($0) } }
        let constraints = RTCMediaConstraints(mandatoryConstraints: nil, optionalConstraints: nil)
        let answer: RTCSessionDescription = try wait { done in
            self.subscriber.answer(for: constraints) { sdp, error in done(sdp, error) }
        }
        try waitFor { done in self.subscriber.setLocalDescription(answer) { done($0) } }
        return answer.sdp
    }

    func addRemoteCandidate(connection: PeerConnection, candidate: String) throws {
        let pc = connection == .publisher ? publisher! : subscriber!
        let ice = RTCIceCandidate(sdp: candidate, sdpMLineIndex: 0, sdpMid: nil)
        try waitFor { done in pc.add(ice) { done($0) } }
    }

    func setMuted(muted: Bool) throws {
        userMuted = muted
        audioTrack.isEnabled = !muted && !held
    }

    func setHeld(held: Bool) throws {
        self.held = held
        audioTrack.isEnabled = !userMuted && !held
        for transceiver in subscriber.transceivers where transceiver.mediaType == .audio {
            transceiver.receiver.track?.isEnabled = !held
        }
    }

    func setCameraEnabled(enabled: Bool) throws {
        videoTrack?.isEnabled = enabled
        if enabled { startCamera(front: true) } else { capturer?.stopCapture() }
    }

    /// The camera's simulcast encodings, lowest first: RID, scale-down,
    /// max bits per second (as the web client's).
    static let simulcast: [(String, Double, Int)] = [("q", 4, 100_000), ("h", 2, 400_000), ("f", 1, 1_200_000)]

    /// The encoding a layer names among `count`, lowest first
    /// (PROTOCOL.md `qualityUpdate`).
    static func encodingIndex(_ layer: VideoLayer, count: Int) -> Int {
        let top = max(0, count - 1)
        switch layer {
        case .low: return 0
        case .medium: return (top + 1) / 2
        case .high: return top
        }
    }

    /// Dynacast: only the encodings someone receives stay on (none: the
    /// camera sends nothing); layers keep their resolution when the CPU is
    /// short, so a layer stays what a subscriber asked for.
    func setVideoLayers(layers: [VideoLayer]) throws {
        guard let sender = publisher.transceivers.first(where: { $0.mediaType == .video })?.sender else { return }
        let parameters = sender.parameters
        let wanted = Set(layers.map { WebRTCMediaSession.encodingIndex($0, count: parameters.encodings.count) })
        for (index, encoding) in parameters.encodings.enumerated() {
            encoding.isActive = wanted.contains(index)
        }
        parameters.degradationPreference = NSNumber(value: RTCDegradationPreference.maintainResolution.rawValue)
        sender.parameters = parameters
    }

    func sendData(reliable: Bool, frame: String) throws {
        let label = reliable ? "switchboard" : "switchboard-lossy"
        dataLock.lock()
        let channel = dataChannels[label]
        dataLock.unlock()
        guard let channel, channel.readyState == .open else {
            throw PortError.Failed(detail: "data channel \(label) is not open")
        }
        guard channel.sendData(RTCDataBuffer(data: Data(frame.utf8), isBinary: false)) else {
            throw PortError.Failed(detail: "data channel \(label) refused the message")
        }
    }

    func stats() throws -> MediaStats {
        MediaStats(
            connected: connected.count == 2, packetsSent: 0, packetsReceived: 0,
            remoteTracks: UInt32(subscriber.transceivers.filter { $0.receiver.track != nil }.count))
    }

    func endSession() throws {
        ended = true
        capturer?.stopCapture()
        publisher.close()
        subscriber.close()
    }

    // MARK: Camera

    /// Front to back and back; the sent track stays, its source changes.
    func switchCamera() {
        frontCamera.toggle()
        startCamera(front: frontCamera)
    }

    func startCamera(front: Bool) {
        guard let capturer else { return }
        let position: AVCaptureDevice.Position = front ? .front : .back
        guard let device = RTCCameraVideoCapturer.captureDevices().first(where: { $0.position == position }),
              let format = RTCCameraVideoCapturer.supportedFormats(for: device).last(where: {
                  CMVideoFormatDescriptionGetDimensions($0.formatDescription).width <= 1280
              })
        else { return }
        capturer.startCapture(with: device, format: format, fps: 30)
    }

    // MARK: Waiting for WebRTC's completion handlers

    private static let answerWithin: DispatchTimeInterval = .seconds(10)

    private func wait<T>(_ start: (@escaping (T?, Error?) -> Void) -> Void) throws -> T {
        let done = DispatchSemaphore(value: 0)
        var value: T?
        var failure: Error?
        start { result, error in
            value = result
            failure = error
            done.signal()
        }
        guard done.wait(timeout: .now() + WebRTCMediaSession.answerWithin) == .success else {
            throw PortError.Failed(detail: "WebRTC did not answer in time")
        }
        if let failure { throw PortError.Failed(detail: failure.localizedDescription) }
        guard let value else { throw PortError.Failed(detail: "WebRTC gave nothing") }
        return value
    }

    private func waitFor(_ start: (@escaping (Error?) -> Void) -> Void) throws {
        let _: Bool = try wait { done in start { error in done(true, error) } }
    }
}

extension WebRTCMediaSession: RTCPeerConnectionDelegate {
    func peerConnection(_ pc: RTCPeerConnection, didChange newState: RTCIceConnectionState) {
        switch newState {
        case .connected, .completed:
            connected.insert(ObjectIdentifier(pc))
            if connected.count == 2 { events.connected() }
        case .disconnected:
            connected.remove(ObjectIdentifier(pc))
            events.disconnected()
        case .failed:
            connected.remove(ObjectIdentifier(pc))
            events.failed()
        default:
            break
        }
    }

    func peerConnection(_ pc: RTCPeerConnection, didGenerate candidate: RTCIceCandidate) {
        events.localCandidate(connection: pc === publisher ? .publisher : .subscriber, candidate: candidate.sdp)
    }

    func peerConnection(_ pc: RTCPeerConnection, didStartReceivingOn transceiver: RTCRtpTransceiver) {
        if let track = transceiver.receiver.track as? RTCVideoTrack {
            remoteVideo[transceiver.mid] = track
        }
    }

    func peerConnection(_ pc: RTCPeerConnection, didChange stateChanged: RTCSignalingState) {}
    func peerConnection(_ pc: RTCPeerConnection, didAdd stream: RTCMediaStream) {}
    func peerConnection(_ pc: RTCPeerConnection, didRemove stream: RTCMediaStream) {}
    func peerConnectionShouldNegotiate(_ pc: RTCPeerConnection) {}
    func peerConnection(_ pc: RTCPeerConnection, didChange newState: RTCIceGatheringState) {}
    func peerConnection(_ pc: RTCPeerConnection, didRemove candidates: [RTCIceCandidate]) {}
    /// The server opens `switchboard` and `switchboard-lossy` with its
    /// first subscriber offer (signaling PROTOCOL.md "Data channels").
    func peerConnection(_ pc: RTCPeerConnection, didOpen dataChannel: RTCDataChannel) {
        guard pc === subscriber else { return }
        dataChannel.delegate = self
        dataLock.lock()
        dataChannels[dataChannel.label] = dataChannel
        dataLock.unlock()
    }
}

extension WebRTCMediaSession: RTCDataChannelDelegate {
    func dataChannelDidChangeState(_ dataChannel: RTCDataChannel) {}

    /// The core reads the server's `{from, payload}` and tells the app.
    func dataChannel(_ dataChannel: RTCDataChannel, didReceiveMessageWith buffer: RTCDataBuffer) {
        guard !buffer.isBinary, let frame = String(data: buffer.data, encoding: .utf8) else { return }
        events.dataReceived(label: dataChannel.label, frame: frame)
    }
}
