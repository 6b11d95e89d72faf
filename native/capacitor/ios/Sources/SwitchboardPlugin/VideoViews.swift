// Video views over the web view: `showVideo` places a Metal renderer at
// the frame JS gives (CSS pixels of the web view are points), above the
// web view, fed by the call's track; `hideVideo`, the track's removal and
// the call's end take it away. The same API renders a <video> on the web.

import Capacitor
import Foundation
import UIKit
import WebRTC

extension SwitchboardPlugin {
    @objc func showVideo(_ call: CAPPluginCall) {
        guard let callId = call.getString("callId"), let trackId = call.getString("trackId"),
              let frame = call.getObject("frame"),
              let x = frame["x"] as? Double, let y = frame["y"] as? Double,
              let width = frame["width"] as? Double, let height = frame["height"] as? Double,
              width > 0, height > 0
        else {
            call.reject("callId, trackId and frame {x, y, width, height} are required", "invalid_request")
            return
        }
        let fit = call.getString("fit") ?? "cover"
        let mirror = call.getBool("mirror") ?? false
        DispatchQueue.main.async {
            guard let track = self.calls.videoTrack(callId: callId, trackId: trackId) else {
                call.reject("no video track \(trackId) in call \(callId)", "track_not_found")
                return
            }
            guard let webView = self.bridge?.webView, let container = webView.superview else {
                call.reject("no web view to place the video over", "unavailable")
                return
            }
            let key = "\(callId)/\(trackId)"
            let view = self.videoViews[key] ?? {
                let view = RTCMTLVideoView(frame: .zero)
                view.isUserInteractionEnabled = false
                container.insertSubview(view, aboveSubview: webView)
                track.add(view)
                self.videoViews[key] = (view, track)
                return (view, track)
            }()
            view.0.frame = webView.convert(CGRect(x: x, y: y, width: width, height: height), to: container)
            view.0.videoContentMode = fit == "contain" ? .scaleAspectFit : .scaleAspectFill
            view.0.transform = mirror ? CGAffineTransform(scaleX: -1, y: 1) : .identity
            if trackId != "local", let uuid = self.calls.callUuid(forJsCallId: callId),
               let client = self.calls.currentClient() {
                // The layer that fits the view: no more pixels than it shows.
                let scale = webView.window?.screen.scale ?? UIScreen.main.scale
                client.setVideoSize(
                    callUuid: uuid.uuidString, trackId: trackId,
                    width: UInt32(min(16384, max(1, (width * scale).rounded()))),
                    height: UInt32(min(16384, max(1, (height * scale).rounded()))))
            }
            call.resolve()
        }
    }

    @objc func hideVideo(_ call: CAPPluginCall) {
        guard let callId = call.getString("callId"), let trackId = call.getString("trackId") else {
            call.reject("callId and trackId are required", "invalid_request")
            return
        }
        DispatchQueue.main.async {
            self.removeVideoViews { $0 == "\(callId)/\(trackId)" }
            call.resolve()
        }
    }

    /// Views whose track or call is gone (from the events JS also gets).
    func dropVideoViews(after event: String, _ data: [String: Any]) {
        guard let callId = data["callId"] as? String else { return }
        switch event {
        case "remoteTrackRemoved":
            let trackId = data["trackId"] as? String ?? ""
            removeVideoViews { $0 == "\(callId)/\(trackId)" }
        case "callEnded":
            removeVideoViews { $0.hasPrefix("\(callId)/") }
        default:
            break
        }
    }

    private func removeVideoViews(where matches: (String) -> Bool) {
        for (key, (view, track)) in videoViews where matches(key) {
            track.remove(view)
            view.removeFromSuperview()
            videoViews[key] = nil
        }
    }
}
