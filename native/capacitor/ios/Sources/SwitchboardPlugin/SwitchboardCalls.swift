// The iOS adapter: PushKit + CallKit mapped onto the Rust client core.
// Every decision (which push is a call, what to report, when to join media,
// which audio route) is the core's; this file only translates platform
// callbacks into core calls and core reports into CallKit calls.
//
// Start it from the app delegate, before anything else, so the PushKit
// registry exists when iOS relaunches a killed app for a VoIP push:
//
//     func application(_ application: UIApplication,
//                      didFinishLaunchingWithOptions launchOptions: ...) -> Bool {
//         SwitchboardCalls.shared.start()
//         return true
//     }
//
// Not compiled here (no Swift toolchain where the suite runs): the rules
// this file must keep are checked by native/capacitor/scripts/check_adapters.py.

import AVFoundation
import CallKit
import Foundation
import Intents
import PushKit
#if canImport(SwitchboardCore)
    import SwitchboardCore  // its own module with SwiftPM; one module with CocoaPods
#endif
import WebRTC

public final class SwitchboardCalls: NSObject, @unchecked Sendable {
    public static let shared = SwitchboardCalls()

    /// Optional: fetches a fresh user token from the app's backend without
    /// the web view (a VoIP wake of a killed app may come before JS runs).
    /// Without it the plugin asks JS (`tokenRequested`).
    public var tokenProvider: ((@escaping (String?) -> Void) -> Void)?

    /// Events for the JS side (the plugin forwards them; kept until JS
    /// listens, so a cold start into a call loses nothing).
    var onEvent: ((String, [String: Any]) -> Void)? {
        didSet { flushPendingEvents() }
    }

    /// Made on first use, so an install without CallKit never creates one.
    private lazy var provider: CXProvider = {
        let configuration = CXProviderConfiguration()
        configuration.supportsVideo = true
        configuration.maximumCallGroups = 1
        configuration.maximumCallsPerCallGroup = 1
        configuration.supportedHandleTypes = [.generic]
        configuration.includesCallsInRecents = true
        let provider = CXProvider(configuration: configuration)
        provider.setDelegate(self, queue: nil)
        return provider
    }()
    private let callController = CXCallController()
    private var voipRegistry: PKPushRegistry?
    private var client: Client?
    private let store = ConfigStore()
    private let media = WebRTCMediaFactory()
    private var pendingEvents: [(String, [String: Any])] = []
    private var voipToken: String?
    private var alertToken: String?
    /// Mute as CallKit last told us, per call: our own `CXSetMutedCallAction`
    /// echoes back, and a tap in the system UI must reach the app's UI.
    private var mutedByCall: [UUID: Bool] = [:]
    /// The server's id of each call by UUID, kept past the core's end of
    /// it (JS names calls by the server's id; `callEnded` comes after the
    /// core forgot an outgoing call's UUID).
    private var serverIds: [String: String] = [:]
    /// Calls that connected, so an ending reads "completed".
    private var connectedCalls: Set<String> = []
    /// Each remote track's subscriber mid, by "callId/trackId" (video views).
    private var trackMids: [String: String] = [:]
    private let lock = NSLock()

    override private init() {
        super.init()
    }

    /// Whether this install uses CallKit: as registered (`useCallKit`),
    /// else not in the China mainland storefront. Read from the Keychain
    /// once, and again only when the app registers.
    var usesCallKit: Bool {
        lock.lock()
        defer { lock.unlock() }
        if let known = callKitDecision { return known }
        let decided = savedConfig()?.systemCallUi ?? SwitchboardCalls.callKitAllowedByStorefront()
        callKitDecision = decided
        return decided
    }

    private var callKitDecision: Bool?

    private func savedConfig() -> ClientConfig? {
        store.load().flatMap { try? clientConfigFromJson(json: $0) }
    }

    /// Creates the PushKit registry and, if the app registered a device
    /// before, the core client from the Keychain.
    public func start() {
        observeRouteChanges()
        registerIncomingCategory()
        _ = ensureClient()
        updatePushKit()
    }

    /// Without CallKit no VoIP push may arrive (each must be reported to
    /// CallKit): no registry, and the server rings by alert push.
    private func updatePushKit() {
        if usesCallKit, voipRegistry == nil {
            let registry = PKPushRegistry(queue: .main)
            registry.delegate = self
            registry.desiredPushTypes = [.voIP]
            voipRegistry = registry
        } else if !usesCallKit, let registry = voipRegistry {
            registry.desiredPushTypes = []
            voipRegistry = nil
            voipToken = nil
        }
    }

    // MARK: - The core client

    /// The core client, rebuilt from the saved configuration when the app
    /// was killed (a VoIP wake runs this inside the PushKit callback).
    @discardableResult
    func ensureClient() -> Client? {
        lock.lock()
        defer { lock.unlock() }
        if let client { return client }
        guard let config = savedConfig() else { return nil }
        client = try? Client(
            config: config, ui: self, media: media, audio: self, push: self,
            credentials: self, events: self)
        return client
    }

    /// `registerDevice` from JS: saves the configuration for cold starts
    /// and (re)starts the core with it.
    func register(config: ClientConfig) throws {
        store.save(clientConfigToJson(config: config))
        lock.lock()
        callKitDecision = config.systemCallUi
        let old = client
        client = nil
        lock.unlock()
        old?.shutdown()
        guard ensureClient() != nil else {
            throw ClientError.Config(detail: "the configuration could not be used")
        }
        DispatchQueue.main.async { self.updatePushKit() }
    }

    func currentClient() -> Client? {
        lock.lock()
        defer { lock.unlock() }
        return client
    }

    // MARK: - Outgoing calls

    /// A call the app starts: CallKit first (it must know the UUID before
    /// the server answers), then the core with the same UUID.
    func startCall(callee: String, video: Bool, completion: @escaping (Result<String, Error>) -> Void) {
        let uuid = UUID()
        guard usesCallKit else {
            DispatchQueue.global().async {
                guard let client = self.currentClient() else {
                    completion(.failure(ClientError.ShutDown))
                    return
                }
                self.activateAudioWithoutCallKit(callUuid: uuid.uuidString, video: video, core: client)
                completion(Result {
                    try client.startCall(calleeUserId: callee, video: video, callUuid: uuid.uuidString)
                })
            }
            return
        }
        let handle = CXHandle(type: .generic, value: callee)
        let action = CXStartCallAction(call: uuid, handle: handle)
        action.isVideo = video
        callController.request(CXTransaction(action: action)) { error in
            if let error {
                completion(.failure(error))
                return
            }
            // The core reports the call started (or ended) through the
            // SystemCallUi port; this answers the JS promise.
            DispatchQueue.global().async {
                guard let client = self.currentClient() else {
                    completion(.failure(ClientError.ShutDown))
                    return
                }
                do {
                    completion(.success(try client.startCall(
                        calleeUserId: callee, video: video, callUuid: uuid.uuidString)))
                } catch {
                    completion(.failure(error))
                }
            }
        }
    }

    /// A call started from Recents, Siri or a car (`INStartCallIntent`
    /// reaches the app delegate's `application(_:continue:restorationHandler:)`).
    public func handle(intent: INStartCallIntent) -> Bool {
        guard let handle = intent.contacts?.first?.personHandle?.value else { return false }
        let video = intent.callCapability == .videoCall
        let uuid = UUID()
        let action = CXStartCallAction(call: uuid, handle: CXHandle(type: .generic, value: handle))
        action.isVideo = video
        callController.request(CXTransaction(action: action)) { _ in }
        return true
    }

    /// The app's own buttons go through CallKit, so the system UI and the
    /// core stay in step (the actions come back through the delegate).
    func requestEnd(callUuid: UUID) {
        callController.request(CXTransaction(action: CXEndCallAction(call: callUuid))) { _ in }
    }

    func requestAnswer(callUuid: UUID) {
        callController.request(CXTransaction(action: CXAnswerCallAction(call: callUuid))) { _ in }
    }

    func requestMute(callUuid: UUID, muted: Bool) {
        let action = CXSetMutedCallAction(call: callUuid, muted: muted)
        callController.request(CXTransaction(action: action)) { _ in }
    }

    func requestHold(callUuid: UUID, held: Bool) {
        let action = CXSetHeldCallAction(call: callUuid, onHold: held)
        callController.request(CXTransaction(action: action)) { _ in }
    }

    /// A call's video track for a view: `"local"` is the camera.
    func videoTrack(callId: String, trackId: String) -> RTCVideoTrack? {
        guard let session = media.sessions[callId] else { return nil }
        if trackId == "local" { return session.videoTrack }
        lock.lock()
        let mid = trackMids["\(callId)/\(trackId)"]
        lock.unlock()
        return mid.flatMap { session.remoteVideo[$0] }
    }

    func switchCamera(callUuid: UUID) {
        media.sessions[jsCallId(callUuid.uuidString)]?.switchCamera()
    }

    // MARK: - Events to JS

    /// The name JS knows a call by: the server's id (an incoming call's UUID
    /// is that id; an outgoing call's is the app's own until the server
    /// named it).
    func jsCallId(_ callUuid: String) -> String {
        let uuid = callUuid.lowercased()
        lock.lock()
        defer { lock.unlock() }
        return serverIds[uuid] ?? uuid
    }

    /// The UUID CallKit knows the call by, from the id JS passed.
    func callUuid(forJsCallId callId: String) -> UUID? {
        let uuid = currentClient()?.callUuid(callId: callId) ?? callId
        return UUID(uuidString: uuid)
    }

    private func remember(callUuid: String, callId: String) {
        lock.lock()
        serverIds[callUuid.lowercased()] = callId
        lock.unlock()
    }

    /// The JS `callEnded` reason (definitions.ts `EndReason`), as the
    /// Android adapter's `jsEndReason` spells it.
    static func jsEndReason(_ reason: EndedReason, wasConnected: Bool) -> String {
        switch reason {
        case .localEnded: return "completed"
        case .remoteEnded: return wasConnected ? "completed" : "remote_ended"
        case .declined: return "declined"
        case .callerCancelled, .unanswered: return "missed"
        case .answeredElsewhere: return "answered_elsewhere"
        case .declinedElsewhere: return "declined_elsewhere"
        case .failed: return "failed"
        }
    }

    func emit(_ name: String, _ data: [String: Any]) {
        DispatchQueue.main.async {
            if let onEvent = self.onEvent {
                onEvent(name, data)
            } else {
                self.pendingEvents.append((name, data))
            }
        }
    }

    private func flushPendingEvents() {
        DispatchQueue.main.async {
            guard let onEvent = self.onEvent else { return }
            let events = self.pendingEvents
            self.pendingEvents.removeAll()
            for (name, data) in events { onEvent(name, data) }
        }
    }

    /// Audio for a call: category and mode set before CallKit is told of
    /// the call; CallKit activates the session (never `setActive` here).
    private func configureAudioSession(video: Bool) {
        let rtc = RTCAudioSession.sharedInstance()
        rtc.useManualAudio = true
        rtc.isAudioEnabled = false
        rtc.lockForConfiguration()
        defer { rtc.unlockForConfiguration() }
        try? rtc.setCategory(
            .playAndRecord,
            mode: video ? .videoChat : .voiceChat,
            options: [.allowBluetooth, .allowBluetoothA2DP])
    }

    func emitIncoming(_ call: IncomingCall) {
        remember(callUuid: call.callUuid, callId: call.callId)
        emit("incomingCall", [
            "callId": call.callId, "fromUserId": call.handle, "callerName": call.callerName,
            "video": call.video, "avatarUrl": call.avatarUrl ?? NSNull(),
        ])
        emit("callStateChanged", ["callId": call.callId, "state": "ringing"])
    }

    /// CallKit's refusal as the snake-case code the server counts
    /// (`callkit_error` reports; `control/src/reports.rs` lists the codes).
    static func callKitCode(_ error: Error) -> String {
        guard let error = error as? CXErrorCodeIncomingCallError else { return "unknown" }
        switch error.code {
        case .unentitled: return "unentitled"
        case .callUUIDAlreadyExists: return "call_uuid_already_exists"
        case .filteredByDoNotDisturb: return "filtered_by_do_not_disturb"
        case .filteredByBlockList: return "filtered_by_block_list"
        default: return "unknown"
        }
    }

    private static func update(for call: IncomingCall) -> CXCallUpdate {
        let update = CXCallUpdate()
        update.remoteHandle = CXHandle(type: .generic, value: call.handle)
        update.localizedCallerName = call.callerName
        update.hasVideo = call.video
        update.supportsHolding = true
        update.supportsGrouping = false
        update.supportsUngrouping = false
        update.supportsDTMF = false
        return update
    }
}

// MARK: - PushKit

extension SwitchboardCalls: PKPushRegistryDelegate {
    public func pushRegistry(
        _ registry: PKPushRegistry, didUpdate pushCredentials: PKPushCredentials, for type: PKPushType
    ) {
        voipToken = pushCredentials.token.map { String(format: "%02x", $0) }.joined()
        currentClient()?.pushTokensChanged()
    }

    public func pushRegistry(_ registry: PKPushRegistry, didInvalidatePushTokenFor type: PKPushType) {
        voipToken = nil
        currentClient()?.pushTokensChanged()
    }

    /// Apple's rule: every VoIP push is reported to CallKit before this
    /// returns (or the app is killed and VoIP pushes stop). So: decide at
    /// once, report with no dispatch or Task in between, complete PushKit
    /// from the report's completion.
    public func pushRegistry(
        _ registry: PKPushRegistry, didReceiveIncomingPushWith payload: PKPushPayload,
        for type: PKPushType, completion: @escaping () -> Void
    ) {
        let json = (try? JSONSerialization.data(withJSONObject: payload.dictionaryPayload))
            .flatMap { String(data: $0, encoding: .utf8) } ?? "{}"
        let core = ensureClient()
        let nowMs = UInt64(Date().timeIntervalSince1970 * 1000)
        let decision = core?.handlePush(payload: json)
            ?? classifyPush(payload: json, deviceNowMs: nowMs, serverClockOffsetMs: nil)
        switch decision {
        case .report(let call):
            configureAudioSession(video: call.video)
            let uuid = UUID(uuidString: call.callUuid) ?? UUID()
            provider.reportNewIncomingCall(with: uuid, update: SwitchboardCalls.update(for: call)) { error in
                if let error = error as? CXErrorCodeIncomingCallError, error.code == .callUUIDAlreadyExists {
                    core?.incomingCallDisplayed(callUuid: call.callUuid)
                } else if let error {
                    // Do Not Disturb, a blocked caller, too many calls: this
                    // device only; the user's other devices keep ringing.
                    core?.incomingCallFailed(callUuid: call.callUuid, reason: SwitchboardCalls.callKitCode(error))
                } else {
                    core?.incomingCallDisplayed(callUuid: call.callUuid)
                    self.emitIncoming(call)
                }
                completion()
            }
        case .reportAndEnd(let call, let reason):
            let uuid = UUID(uuidString: call.callUuid) ?? UUID()
            provider.reportNewIncomingCall(with: uuid, update: SwitchboardCalls.update(for: call)) { _ in
                self.provider.reportCall(
                    with: uuid, endedAt: Date(),
                    reason: SwitchboardCalls.endedReason(reason) ?? .failed)
                completion()
            }
        case .notACall:
            // A cancel (the core ended the call) or another feature's push:
            // nothing to report. VoIP pushes are never sent for these.
            completion()
        }
    }
}

// MARK: - CallKit

extension SwitchboardCalls: CXProviderDelegate {
    public func providerDidReset(_ provider: CXProvider) {
        currentClient()?.systemReset()
    }

    public func provider(_ provider: CXProvider, perform action: CXAnswerCallAction) {
        // Fulfilled at once: the core joins media after `didActivate`.
        currentClient()?.answer(callUuid: action.callUUID.uuidString)
        action.fulfill()
    }

    public func provider(_ provider: CXProvider, perform action: CXEndCallAction) {
        currentClient()?.end(callUuid: action.callUUID.uuidString)
        mutedByCall[action.callUUID] = nil
        action.fulfill()
    }

    public func provider(_ provider: CXProvider, perform action: CXSetMutedCallAction) {
        guard let client = currentClient() else {
            action.fail()
            return
        }
        if mutedByCall[action.callUUID] != action.isMuted {
            mutedByCall[action.callUUID] = action.isMuted
            client.setMuted(callUuid: action.callUUID.uuidString, muted: action.isMuted)
            emit("muteChanged", ["callId": jsCallId(action.callUUID.uuidString), "muted": action.isMuted])
        }
        action.fulfill()
    }

    public func provider(_ provider: CXProvider, perform action: CXSetHeldCallAction) {
        guard let client = currentClient() else {
            action.fail()
            return
        }
        client.setHeld(callUuid: action.callUUID.uuidString, held: action.isOnHold)
        action.fulfill()
    }

    public func provider(_ provider: CXProvider, perform action: CXStartCallAction) {
        guard let client = currentClient() else {
            action.fail()
            return
        }
        configureAudioSession(video: action.isVideo)
        // From Recents / Siri the app has no promise waiting; a start from
        // the app calls `startCall` itself (same UUID: the core makes it once).
        client.systemStartCall(
            handle: action.handle.value, video: action.isVideo, callUuid: action.callUUID.uuidString)
        provider.reportOutgoingCall(with: action.callUUID, startedConnectingAt: nil)
        action.fulfill()
    }

    public func provider(_ provider: CXProvider, timedOutPerforming action: CXAction) {
        action.fail()
    }

    public func provider(_ provider: CXProvider, didActivate audioSession: AVAudioSession) {
        RTCAudioSession.sharedInstance().audioSessionDidActivate(audioSession)
        RTCAudioSession.sharedInstance().isAudioEnabled = true
        currentClient()?.audioSessionActivated()
        reportAudioRoutes()
    }

    public func provider(_ provider: CXProvider, didDeactivate audioSession: AVAudioSession) {
        RTCAudioSession.sharedInstance().isAudioEnabled = false
        RTCAudioSession.sharedInstance().audioSessionDidDeactivate(audioSession)
        currentClient()?.audioSessionDeactivated()
    }

    static func endedReason(_ reason: EndedReason) -> CXCallEndedReason? {
        guard let mapped = callkitEndedReason(reason: reason) else { return nil }
        switch mapped {
        case .failed: return .failed
        case .remoteEnded: return .remoteEnded
        case .unanswered: return .unanswered
        case .answeredElsewhere: return .answeredElsewhere
        case .declinedElsewhere: return .declinedElsewhere
        }
    }
}

// MARK: - Core ports

extension SwitchboardCalls: SystemCallUi {
    /// A ring that came over the events socket (the app was running).
    public func reportIncomingCall(call: IncomingCall) throws {
        guard usesCallKit else {
            showIncomingNotification(call, core: currentClient())
            return
        }
        configureAudioSession(video: call.video)
        guard let uuid = UUID(uuidString: call.callUuid) else {
            throw PortError.Failed(detail: "not a UUID: \(call.callUuid)")
        }
        let core = currentClient()
        provider.reportNewIncomingCall(with: uuid, update: SwitchboardCalls.update(for: call)) { error in
            if let error {
                core?.incomingCallFailed(callUuid: call.callUuid, reason: SwitchboardCalls.callKitCode(error))
            } else {
                core?.incomingCallDisplayed(callUuid: call.callUuid)
                self.emitIncoming(call)
            }
        }
    }

    public func reportOutgoingCallStarted(callUuid: String, callId: String) throws {
        remember(callUuid: callUuid, callId: callId)
        emit("callStateChanged", ["callId": callId, "state": "outgoing"])
    }

    public func reportCallConnected(callUuid: String) throws {
        guard let uuid = UUID(uuidString: callUuid) else { return }
        if usesCallKit { provider.reportOutgoingCall(with: uuid, connectedAt: Date()) }
        lock.lock()
        connectedCalls.insert(callUuid.lowercased())
        lock.unlock()
        emit("callStateChanged", ["callId": jsCallId(callUuid), "state": "connected"])
    }

    public func reportCallEnded(callUuid: String, reason: EndedReason) throws {
        guard let uuid = UUID(uuidString: callUuid) else { return }
        if !usesCallKit {
            removeIncomingNotification(callUuid: callUuid)
        } else if let mapped = SwitchboardCalls.endedReason(reason) {
            // Ended on this device: CallKit knows (its action was fulfilled).
            provider.reportCall(with: uuid, endedAt: Date(), reason: mapped)
        }
        mutedByCall[uuid] = nil
        let callId = jsCallId(callUuid)
        lock.lock()
        let wasConnected = connectedCalls.remove(callUuid.lowercased()) != nil
        serverIds[callUuid.lowercased()] = nil
        trackMids = trackMids.filter { !$0.key.hasPrefix("\(callId)/") }
        lock.unlock()
        emit("callStateChanged", ["callId": callId, "state": "ended"])
        emit("callEnded", [
            "callId": callId, "reason": SwitchboardCalls.jsEndReason(reason, wasConnected: wasConnected),
        ])
    }
}

extension SwitchboardCalls: PushTokens {
    public func current() throws -> DevicePushTokens {
        DevicePushTokens(apnsVoip: voipToken, apnsAlert: alertToken, fcm: nil)
    }

    /// A background (content-available) push from the app delegate's
    /// `didReceiveRemoteNotification`: the server's cancels (answered or
    /// declined elsewhere, the caller gave up) end a ringing call here. The
    /// core decides, as for every push; false when it was not about calls.
    public func handleRemoteNotification(_ userInfo: [AnyHashable: Any]) -> Bool {
        guard userInfo["event"] as? String == "call_cancelled", let core = ensureClient() else { return false }
        _ = core.handlePush(payload: SwitchboardCalls.pushJson(userInfo))
        return true
    }

    /// The regular (alert) token from `didRegisterForRemoteNotificationsWithDeviceToken`:
    /// cancels and missed calls, and rings when CallKit is unavailable.
    public func alertTokenChanged(_ deviceToken: Data) {
        alertToken = deviceToken.map { String(format: "%02x", $0) }.joined()
        currentClient()?.pushTokensChanged()
    }
}

extension SwitchboardCalls: Credentials {
    public func refreshUserToken() throws {
        if let tokenProvider {
            tokenProvider { token in
                if let token {
                    self.currentClient()?.setUserToken(token: token)
                    if let saved = self.store.load(), var config = try? clientConfigFromJson(json: saved) {
                        config.userToken = token
                        self.store.save(clientConfigToJson(config: config))
                    }
                } else {
                    self.currentClient()?.userTokenFailed(detail: "the app's backend gave no token")
                }
            }
        } else {
            emit("tokenRequested", ["reason": "expired"])
        }
    }
}

extension SwitchboardCalls: CallEvents {
    public func remoteTrackAdded(callUuid: String, track: RemoteTrack) throws {
        let key = "\(jsCallId(callUuid))/\(track.trackId)"  // jsCallId takes the lock itself
        lock.lock()
        trackMids[key] = track.mid
        lock.unlock()
        emit("remoteTrack", [
            "callId": jsCallId(callUuid), "trackId": track.trackId, "participantId": track.participantId,
            "userId": track.userId, "kind": track.video ? "video" : "audio", "mid": track.mid,
            "muted": track.muted,
        ])
    }

    public func remoteTrackRemoved(callUuid: String, trackId: String) throws {
        emit("remoteTrackRemoved", ["callId": jsCallId(callUuid), "trackId": trackId])
    }

    public func remoteTrackMuted(callUuid: String, trackId: String, muted: Bool) throws {
        emit("remoteTrackMuted", ["callId": jsCallId(callUuid), "trackId": trackId, "muted": muted])
    }

    public func remoteTrackPaused(callUuid: String, trackId: String, paused: Bool) throws {
        emit("remoteTrackPaused", ["callId": jsCallId(callUuid), "trackId": trackId, "paused": paused])
    }

    public func callReconnecting(callUuid: String) throws {
        emit("callStateChanged", ["callId": jsCallId(callUuid), "state": "reconnecting"])
    }

    public func callReconnected(callUuid: String) throws {
        emit("callStateChanged", ["callId": jsCallId(callUuid), "state": "connected"])
    }

    public func flagsChanged(flags: [String: Bool]) throws {
        emit("flagsChanged", ["flags": flags])
    }

    public func activeSpeakersChanged(callUuid: String, speakers: [ActiveSpeaker]) throws {
        emit("activeSpeakers", [
            "callId": jsCallId(callUuid),
            "speakers": speakers.map { s -> [String: Any] in
                var speaker: [String: Any] = ["participantId": s.participantId, "level": s.level]
                if let userId = s.userId { speaker["userId"] = userId }
                return speaker
            },
        ])
    }

    public func dataReceived(callUuid: String, message: DataMessage) throws {
        var event: [String: Any] = [
            "callId": jsCallId(callUuid), "from": message.from, "payload": message.payload,
            "reliable": message.reliable,
        ]
        if let userId = message.userId { event["userId"] = userId }
        emit("dataReceived", event)
    }
}
