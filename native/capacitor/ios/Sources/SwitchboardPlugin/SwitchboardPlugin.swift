// The Capacitor bridge: JS calls to SwitchboardCalls (which owns PushKit,
// CallKit and the core), and SwitchboardCalls' events to JS. The JS API is
// `src/definitions.ts`, the same on every platform.

import AVFoundation
import Capacitor
import Foundation
import UserNotifications
import WebRTC
#if canImport(SwitchboardCore)
    import SwitchboardCore  // its own module with SwiftPM; one module with CocoaPods
#endif

@objc(SwitchboardPlugin)
public class SwitchboardPlugin: CAPPlugin, CAPBridgedPlugin {
    public let identifier = "SwitchboardPlugin"
    public let jsName = "Switchboard"
    public let pluginMethods: [CAPPluginMethod] = [
        CAPPluginMethod(name: "registerDevice", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "startCall", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "answer", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "decline", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "end", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "setMuted", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "setHeld", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "setCamera", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "getAudioRoutes", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "selectAudioRoute", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "setUserToken", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "switchCamera", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "showVideo", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "hideVideo", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "sendData", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "getActiveCalls", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "getFlags", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "checkPermissions", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "requestPermissions", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "canUseFullScreenIntent", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "openFullScreenIntentSettings", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "getBatteryOptimization", returnType: CAPPluginReturnPromise),
        CAPPluginMethod(name: "openBatteryOptimizationSettings", returnType: CAPPluginReturnPromise),
    ]

    let calls = SwitchboardCalls.shared
    /// Native video views by "callId/trackId", with the track feeding each
    /// (main thread only: VideoViews.swift).
    var videoViews: [String: (RTCMTLVideoView, RTCVideoTrack)] = [:]

    override public func load() {
        // Events that happened before JS listened (a cold start from a
        // push) are delivered now.
        calls.onEvent = { [weak self] name, data in
            self?.dropVideoViews(after: name, data)
            self?.notifyListeners(name, data: data, retainUntilConsumed: true)
        }
    }

    /// On iOS the push tokens come from PushKit and the app delegate, not
    /// from JS; the rest of the configuration is saved for cold starts.
    @objc func registerDevice(_ call: CAPPluginCall) {
        guard let serverUrl = call.getString("serverUrl"),
              let userToken = call.getString("userToken"),
              let deviceId = call.getString("deviceId")
        else {
            call.reject("serverUrl, userToken and deviceId are required", "invalid_request")
            return
        }
        // CallKit unless the app says otherwise or the storefront forbids it.
        let useCallKit = call.getBool("useCallKit") ?? SwitchboardCalls.callKitAllowedByStorefront()
        let config = ClientConfig(
            serverUrl: serverUrl, userToken: userToken, deviceId: deviceId, platform: .ios,
            video: true, bundleId: call.getString("bundleId") ?? Bundle.main.bundleIdentifier,
            apnsEnvironment: call.getString("apnsEnvironment") ?? "production",
            trustedCaPem: call.getString("trustedCaPem"), systemCallUi: useCallKit,
            dataChannels: call.getBool("dataChannels") ?? false)
        // A ring answered on a locked phone cannot ask for the microphone:
        // ask now, while the user is in the app. Refused, calls still ring
        // and connect, and the other side hears nothing (IOS.md).
        AVCaptureDevice.requestAccess(for: .audio) { _ in
            do {
                try self.calls.register(config: config)
                call.resolve()
            } catch {
                call.reject("\(error)", "config")
            }
        }
    }

    @objc func startCall(_ call: CAPPluginCall) {
        guard let callee = call.getString("calleeUserId") else {
            call.reject("calleeUserId is required", "invalid_request")
            return
        }
        calls.startCall(callee: callee, video: call.getBool("video") ?? false) { result in
            switch result {
            case .success(let callId): call.resolve(["callId": callId])  // the server's id
            case .failure(let error): call.reject("\(error)", "refused")
            }
        }
    }

    @objc func answer(_ call: CAPPluginCall) {
        withCall(call) { uuid in self.calls.requestAnswer(callUuid: uuid) }
    }

    /// Declining and ending are one CallKit action (the core tells them apart).
    @objc func decline(_ call: CAPPluginCall) {
        withCall(call) { uuid in self.calls.requestEnd(callUuid: uuid) }
    }

    @objc func end(_ call: CAPPluginCall) {
        withCall(call) { uuid in self.calls.requestEnd(callUuid: uuid) }
    }

    @objc func setMuted(_ call: CAPPluginCall) {
        let muted = call.getBool("muted") ?? false
        withCall(call) { uuid in self.calls.requestMute(callUuid: uuid, muted: muted) }
    }

    @objc func setHeld(_ call: CAPPluginCall) {
        let held = call.getBool("held") ?? false
        withCall(call) { uuid in self.calls.requestHold(callUuid: uuid, held: held) }
    }

    @objc func setCamera(_ call: CAPPluginCall) {
        let enabled = call.getBool("enabled") ?? true
        withCall(call) { uuid in
            self.calls.currentClient()?.setCameraEnabled(callUuid: uuid.uuidString, enabled: enabled)
        }
    }

    @objc func switchCamera(_ call: CAPPluginCall) {
        withCall(call) { uuid in self.calls.switchCamera(callUuid: uuid) }
    }

    /// For a UI that loads during a call (a cold start from a push).
    @objc func getActiveCalls(_ call: CAPPluginCall) {
        let active = calls.currentClient()?.activeCalls() ?? []
        call.resolve(["calls": active.map { c -> [String: Any] in
            [
                "callId": c.callId ?? c.callUuid, "state": SwitchboardPlugin.jsState(c.state),
                "video": c.video, "outgoing": c.outgoing, "remoteUserId": c.remoteUserId,
                "muted": c.muted, "held": c.held,
            ]
        }])
    }

    /// The server's feature flags for this device (empty before it said).
    @objc func getFlags(_ call: CAPPluginCall) {
        call.resolve(["flags": calls.currentClient()?.flags() ?? [:]])
    }

    static func jsState(_ state: ActiveCallState) -> String {
        switch state {
        case .ringing: return "ringing"
        case .outgoing: return "outgoing"
        case .connecting: return "connecting"
        case .connected: return "connected"
        case .reconnecting: return "reconnecting"
        }
    }

    @objc func getAudioRoutes(_ call: CAPPluginCall) {
        let state = calls.currentClient()?.audioRoutes()
        call.resolve(SwitchboardCalls.jsAudioRoutes(state?.endpoints ?? [], currentId: state?.currentId))
    }

    @objc func selectAudioRoute(_ call: CAPPluginCall) {
        guard let id = call.getString("id"), let client = calls.currentClient() else {
            call.reject("id is required", "invalid_request")
            return
        }
        do {
            try client.selectAudioRoute(endpointId: id)
            call.resolve()
        } catch {
            call.reject("\(error)", "unknown_route")
        }
    }

    /// The answer to `tokenRequested`.
    @objc func setUserToken(_ call: CAPPluginCall) {
        guard let token = call.getString("token") else {
            calls.currentClient()?.userTokenFailed(detail: "the app had no token")
            call.resolve()
            return
        }
        calls.currentClient()?.setUserToken(token: token)
        call.resolve()
    }

    @objc override public func checkPermissions(_ call: CAPPluginCall) {
        permissions { call.resolve($0) }
    }

    /// Microphone, camera, and notifications (the missed-call notice and,
    /// where CallKit is unavailable, the ring itself).
    @objc override public func requestPermissions(_ call: CAPPluginCall) {
        AVCaptureDevice.requestAccess(for: .audio) { _ in
            AVCaptureDevice.requestAccess(for: .video) { _ in
                UNUserNotificationCenter.current().requestAuthorization(options: [.alert, .sound, .badge]) { _, _ in
                    self.permissions { call.resolve($0) }
                }
            }
        }
    }

    private func permissions(_ done: @escaping ([String: String]) -> Void) {
        func state(_ media: AVMediaType) -> String {
            switch AVCaptureDevice.authorizationStatus(for: media) {
            case .authorized: return "granted"
            case .denied, .restricted: return "denied"
            default: return "prompt"
            }
        }
        UNUserNotificationCenter.current().getNotificationSettings { settings in
            let notifications: String
            switch settings.authorizationStatus {
            case .authorized, .provisional, .ephemeral: notifications = "granted"
            case .denied: notifications = "denied"
            default: notifications = "prompt"
            }
            done(["microphone": state(.audio), "camera": state(.video), "notifications": notifications])
        }
    }

    /// CallKit always shows an incoming call full screen on a locked phone.
    @objc func canUseFullScreenIntent(_ call: CAPPluginCall) {
        call.resolve(["value": true])
    }

    @objc func openFullScreenIntentSettings(_ call: CAPPluginCall) {
        call.resolve()
    }

    /// iOS has no per-app battery optimisation that stops VoIP pushes.
    @objc func getBatteryOptimization(_ call: CAPPluginCall) {
        call.resolve(["ignoring": true])
    }

    @objc func openBatteryOptimizationSettings(_ call: CAPPluginCall) {
        call.resolve()
    }

    /// JS names calls by the server's id; CallKit by UUID.
    /// On the call's data channels; refused with the server's codes
    /// (`permission_denied`, `message_too_large`, `bad_message`) or
    /// `not_connected` (PROTOCOL.md "Data channels").
    @objc func sendData(_ call: CAPPluginCall) {
        guard let id = call.getString("callId"), let payload = call.getString("payload") else {
            call.reject("callId and payload are required", "invalid_request")
            return
        }
        guard let uuid = calls.callUuid(forJsCallId: id), let client = calls.currentClient() else {
            call.reject("no call \(id) on this device", "call_not_found")
            return
        }
        do {
            try client.sendData(
                callUuid: uuid.uuidString, payload: payload, reliable: call.getBool("reliable") ?? true,
                to: call.getArray("to", String.self))
            call.resolve()
        } catch let ClientError.Refused(code, detail) {
            call.reject(detail, code)
        } catch {
            call.reject("\(error)", "not_connected")
        }
    }

    private func withCall(_ call: CAPPluginCall, _ action: @escaping (UUID) -> Void) {
        guard let id = call.getString("callId") else {
            call.reject("callId is required", "invalid_request")
            return
        }
        guard let uuid = calls.callUuid(forJsCallId: id) else {
            call.reject("no call \(id) on this device", "call_not_found")
            return
        }
        action(uuid)
        call.resolve()
    }
}
