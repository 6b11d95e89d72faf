// Incoming calls without CallKit: the China mainland storefront, where
// Apple does not allow CallKit, or an app that opts out (`useCallKit:
// false`). The device registers with `systemCallUi: false`, so the server
// rings it by a visible alert push (category INCOMING_CALL, time-sensitive;
// control/src/push/apns.rs), never VoIP, and no PushKit registry is made.
// The ring is a notification with Answer and Decline; a ring over the events
// socket while the app runs is shown the same way, as a local notification.
// Every decision stays the core's: the push payload goes through
// `handlePush` exactly as a VoIP one would.
//
// The app's UNUserNotificationCenterDelegate forwards two callbacks:
//
//     func userNotificationCenter(_ center: UNUserNotificationCenter,
//         didReceive response: UNNotificationResponse,
//         withCompletionHandler completion: @escaping () -> Void) {
//         _ = SwitchboardCalls.shared.handleNotificationResponse(response)
//         completion()
//     }
//     func userNotificationCenter(_ center: UNUserNotificationCenter,
//         willPresent notification: UNNotification,
//         withCompletionHandler completion: @escaping (UNNotificationPresentationOptions) -> Void) {
//         completion(SwitchboardCalls.shared.presentationOptions(for: notification) ?? [.banner, .sound])
//     }

import AVFoundation
import Foundation
import StoreKit
import UserNotifications
#if canImport(SwitchboardCore)
    import SwitchboardCore  // its own module with SwiftPM; one module with CocoaPods
#endif
import WebRTC

extension SwitchboardCalls {
    /// The category the server's alert ring carries (control's APNs sender).
    static let incomingCategory = "INCOMING_CALL"
    static let answerAction = "ANSWER"
    static let declineAction = "DECLINE"

    /// CallKit is not allowed for apps sold in the China mainland
    /// storefront (App Review guideline 5.0); elsewhere it is used.
    static func callKitAllowedByStorefront() -> Bool {
        SKPaymentQueue.default().storefront?.countryCode != "CHN"
    }

    func registerIncomingCategory() {
        let answer = UNNotificationAction(
            identifier: SwitchboardCalls.answerAction, title: "Answer", options: [.foreground])
        let decline = UNNotificationAction(
            identifier: SwitchboardCalls.declineAction, title: "Decline", options: [.destructive])
        let category = UNNotificationCategory(
            identifier: SwitchboardCalls.incomingCategory, actions: [answer, decline],
            intentIdentifiers: [], options: [.customDismissAction])
        UNUserNotificationCenter.current().setNotificationCategories([category])
    }

    /// A ring over the events socket while CallKit is off: a local
    /// notification, and the core hears "shown" once iOS accepted it.
    func showIncomingNotification(_ call: IncomingCall, core: Client?) {
        let content = UNMutableNotificationContent()
        content.title = call.callerName
        content.body = call.video ? "Incoming video call" : "Incoming call"
        content.categoryIdentifier = SwitchboardCalls.incomingCategory
        content.sound = .default
        content.interruptionLevel = .timeSensitive
        content.userInfo = ["callUuid": call.callUuid]
        let request = UNNotificationRequest(identifier: call.callUuid, content: content, trigger: nil)
        UNUserNotificationCenter.current().add(request) { error in
            if let error {
                core?.incomingCallFailed(callUuid: call.callUuid, reason: "notification_not_added")
            } else {
                core?.incomingCallDisplayed(callUuid: call.callUuid)
                self.emitIncoming(call)
            }
        }
    }

    /// The notification of a call that ended (answered elsewhere, missed)
    /// goes away.
    func removeIncomingNotification(callUuid: String) {
        let center = UNUserNotificationCenter.current()
        center.removeDeliveredNotifications(withIdentifiers: [callUuid])
        center.removePendingNotificationRequests(withIdentifiers: [callUuid])
    }

    /// Answer, Decline or a tap on a ring notification. False when the
    /// notification is not a Switchboard ring (the app handles it).
    public func handleNotificationResponse(_ response: UNNotificationResponse) -> Bool {
        let content = response.notification.request.content
        guard content.categoryIdentifier == SwitchboardCalls.incomingCategory else { return false }
        guard let core = ensureClient() else { return true }
        let callUuid: String
        if let shown = content.userInfo["callUuid"] as? String {
            callUuid = shown  // our local notification: the core knows the call
        } else {
            // The server's alert push: the core has not seen this ring (an
            // alert push does not run the app). It decides as for any push.
            switch core.handlePush(payload: SwitchboardCalls.pushJson(content.userInfo)) {
            case .report(let call):
                core.incomingCallDisplayed(callUuid: call.callUuid)
                emitIncoming(call)
                callUuid = call.callUuid
            case .reportAndEnd(let call, let reason):
                // Over (missed, answered elsewhere) before the user acted.
                emit("callEnded", [
                    "callId": call.callId,
                    "reason": SwitchboardCalls.jsEndReason(reason, wasConnected: false),
                ])
                return true
            case .notACall:
                return true
            }
        }
        switch response.actionIdentifier {
        case SwitchboardCalls.declineAction, UNNotificationDismissActionIdentifier:
            core.end(callUuid: callUuid)
        case SwitchboardCalls.answerAction:
            core.answer(callUuid: callUuid)
            let video = core.activeCalls().first { $0.callUuid == callUuid }?.video ?? false
            activateAudioWithoutCallKit(callUuid: callUuid, video: video, core: core)
        default:
            break  // a tap opens the app, which shows the ringing call (getActiveCalls)
        }
        return true
    }

    /// The app is in the foreground when the alert ring arrives: the core
    /// decides, JS shows the call, and the banner stays (Answer / Decline).
    /// Nil for notifications that are not Switchboard rings.
    public func presentationOptions(for notification: UNNotification) -> UNNotificationPresentationOptions? {
        let content = notification.request.content
        guard content.categoryIdentifier == SwitchboardCalls.incomingCategory else { return nil }
        if content.userInfo["callUuid"] == nil, let core = ensureClient(),
           case .report(let call) = core.handlePush(payload: SwitchboardCalls.pushJson(content.userInfo)) {
            core.incomingCallDisplayed(callUuid: call.callUuid)
            emitIncoming(call)
        }
        return [.banner, .sound, .list]
    }

    /// Without CallKit nobody else activates the audio session: the only
    /// place the plugin does (the adapter rules allow `setActive` here
    /// alone). The core joins media once told it is active.
    func activateAudioWithoutCallKit(callUuid: String, video: Bool, core: Client) {
        let rtc = RTCAudioSession.sharedInstance()
        rtc.lockForConfiguration()
        defer { rtc.unlockForConfiguration() }
        do {
            try rtc.setCategory(
                .playAndRecord, mode: video ? .videoChat : .voiceChat,
                options: [.allowBluetooth, .allowBluetoothA2DP])
            try rtc.setActive(true)
            rtc.isAudioEnabled = true
            core.audioSessionActivated()
            reportAudioRoutes()
        } catch {
            // No audio: the call cannot go on (another app holds the session).
            NSLog("switchboard: call \(callUuid): the audio session could not start: \(error.localizedDescription)")
            core.end(callUuid: callUuid)
        }
    }

    /// A notification's payload as the core reads pushes: the server's
    /// fields, without Apple's `aps`.
    static func pushJson(_ info: [AnyHashable: Any]) -> String {
        var payload: [String: Any] = [:]
        for (key, value) in info {
            if let key = key as? String, key != "aps" { payload[key] = value }
        }
        return (try? JSONSerialization.data(withJSONObject: payload))
            .flatMap { String(data: $0, encoding: .utf8) } ?? "{}"
    }
}
