// Video views over the web view: `showVideo` places a SurfaceViewRenderer
// at the frame JS gives (CSS pixels of the web view, times the screen
// density), above the web view, fed by the call's track; `hideVideo`, the
// track's removal and the call's end take it away. The same API renders a
// <video> on the web.

package dev.switchboard.capacitor

import android.view.ViewGroup
import android.widget.FrameLayout
import com.getcapacitor.Bridge
import com.getcapacitor.PluginCall
import livekit.org.webrtc.RendererCommon
import livekit.org.webrtc.SurfaceViewRenderer
import livekit.org.webrtc.VideoTrack

class VideoViews(private val bridge: Bridge) {
    private val views = mutableMapOf<String, Pair<SurfaceViewRenderer, VideoTrack>>()

    /** On the UI thread. */
    fun show(call: PluginCall, callId: String, trackId: String) {
        val frame = call.getObject("frame")
        // optDouble: a missing or non-numeric field is NaN, never a throw on the UI thread.
        val box = listOf("x", "y", "width", "height").map { frame?.optDouble(it) ?: Double.NaN }
        if (box.any { it.isNaN() } || box[2] <= 0 || box[3] <= 0) {
            return call.reject("frame {x, y, width, height} is required", "invalid_request")
        }
        val (x, y, width, height) = box
        val track = WebRtcMedia.videoTrack(callId, trackId, SwitchboardCalls.trackMid(callId, trackId))
        if (track == null) return call.reject("no video track $trackId in call $callId", "track_not_found")
        val webView = bridge.webView
        val container = webView.parent as? ViewGroup ?: return call.reject("no web view to place the video over", "unavailable")
        val key = "$callId/$trackId"
        val (view, _) = views.getOrPut(key) {
            val renderer = SurfaceViewRenderer(bridge.context)
            renderer.init(WebRtcMedia.egl.eglBaseContext, null)
            renderer.setZOrderMediaOverlay(true)
            container.addView(renderer)
            track.addSink(renderer)
            renderer to track
        }
        val density = bridge.context.resources.displayMetrics.density
        view.layoutParams = FrameLayout.LayoutParams((width * density).toInt(), (height * density).toInt())
        view.x = webView.x + (x * density).toFloat()
        view.y = webView.y + (y * density).toFloat()
        view.setScalingType(
            if (call.getString("fit") == "contain") RendererCommon.ScalingType.SCALE_ASPECT_FIT
            else RendererCommon.ScalingType.SCALE_ASPECT_FILL,
        )
        view.setMirror(call.getBoolean("mirror", false) ?: false)
        if (trackId != "local") {
            // The layer that fits the view: no more pixels than it shows.
            val pixels = { v: Double -> (v * density).toInt().coerceIn(1, 16384).toUInt() }
            SwitchboardCalls.currentClient()?.setVideoSize(SwitchboardCalls.callUuid(callId), trackId, pixels(width), pixels(height))
        }
        call.resolve()
    }

    /** On the UI thread. */
    fun hide(matches: (String) -> Boolean) {
        for (key in views.keys.filter(matches)) {
            val (view, track) = views.remove(key) ?: continue
            track.removeSink(view)
            (view.parent as? ViewGroup)?.removeView(view)
            view.release()
        }
    }

    /** Views whose track or call is gone (from the events JS also gets). */
    fun dropAfter(event: String, data: Map<String, Any?>) {
        val callId = data["callId"] as? String ?: return
        when (event) {
            "remoteTrackRemoved" -> hide { it == "$callId/${data["trackId"]}" }
            "callEnded" -> hide { it.startsWith("$callId/") }
        }
    }
}
