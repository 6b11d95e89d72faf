// Audio routes on iOS: AVAudioSession's outputs and inputs as the core's
// endpoints. The core picks each call's default once (a headset first, the
// speaker for video, the receiver for voice) and asks for it here.

import AVFoundation
#if canImport(SwitchboardCore)
    import SwitchboardCore  // its own module with SwiftPM; one module with CocoaPods
#endif

extension SwitchboardCalls: AudioRoutes {
    static let speakerId = "speaker"
    static let receiverId = "receiver"

    /// Tells the core what can play call audio now. Called when the audio
    /// session activates and on every route change.
    func reportAudioRoutes() {
        let session = AVAudioSession.sharedInstance()
        var endpoints = [
            AudioEndpoint(id: SwitchboardCalls.receiverId, kind: .earpiece, name: "iPhone"),
            AudioEndpoint(id: SwitchboardCalls.speakerId, kind: .speaker, name: "Speaker"),
        ]
        for input in session.availableInputs ?? [] where input.portType != .builtInMic {
            endpoints.append(AudioEndpoint(id: input.uid, kind: SwitchboardCalls.kind(of: input.portType), name: input.portName))
        }
        let output = session.currentRoute.outputs.first
        let current: String?
        switch output?.portType {
        case .some(.builtInSpeaker): current = SwitchboardCalls.speakerId
        case .some(.builtInReceiver): current = SwitchboardCalls.receiverId
        case .some: current = session.currentRoute.inputs.first?.uid ?? output?.uid
        case .none: current = nil
        }
        currentClient()?.audioRoutesChanged(endpoints: endpoints, currentId: current)
        emit("audioRouteChanged", SwitchboardCalls.jsAudioRoutes(endpoints, currentId: current))
    }

    /// definitions.ts `AudioRoutes`.
    static func jsAudioRoutes(_ endpoints: [AudioEndpoint], currentId: String?) -> [String: Any] {
        [
            "routes": endpoints.map { ["id": $0.id, "kind": jsKind($0.kind), "name": $0.name] },
            "currentId": currentId ?? NSNull(),
        ]
    }

    static func jsKind(_ kind: AudioRouteKind) -> String {
        switch kind {
        case .earpiece: return "earpiece"
        case .speaker: return "speaker"
        case .wiredHeadset: return "wired"
        case .bluetooth: return "bluetooth"
        case .other: return "other"
        }
    }

    static func kind(of port: AVAudioSession.Port) -> AudioRouteKind {
        switch port {
        case .builtInReceiver: return .earpiece
        case .builtInSpeaker: return .speaker
        case .headphones, .headsetMic, .usbAudio: return .wiredHeadset
        case .bluetoothHFP, .bluetoothA2DP, .bluetoothLE: return .bluetooth
        default: return .other
        }
    }

    public func selectRoute(endpointId: String) throws {
        let session = AVAudioSession.sharedInstance()
        do {
            switch endpointId {
            case SwitchboardCalls.speakerId:
                try session.overrideOutputAudioPort(.speaker)
            case SwitchboardCalls.receiverId:
                try session.overrideOutputAudioPort(.none)
                let builtIn = session.availableInputs?.first { $0.portType == .builtInMic }
                try session.setPreferredInput(builtIn)
            default:
                guard let input = session.availableInputs?.first(where: { $0.uid == endpointId }) else {
                    throw PortError.Failed(detail: "no audio input \(endpointId)")
                }
                try session.overrideOutputAudioPort(.none)
                try session.setPreferredInput(input)
            }
        } catch let error as PortError {
            throw error
        } catch {
            throw PortError.Failed(detail: error.localizedDescription)
        }
    }

    /// Observed from `start()`: route changes (a headset plugged in, the
    /// user's choice in Control Center) reach the core and JS.
    func observeRouteChanges() {
        NotificationCenter.default.addObserver(
            forName: AVAudioSession.routeChangeNotification, object: nil, queue: nil
        ) { [weak self] _ in
            self?.reportAudioRoutes()
        }
    }
}
