// Stand-ins for the plugin's own Android files that are only parsed (they
// need much more of the SDK: notifications, services, org.webrtc), with
// the signatures the compiled files call. If one of those files changes a
// signature, change it here too; the compiled files then show whether
// they still fit.

@file:Suppress("unused", "UNUSED_PARAMETER")

package dev.switchboard.capacitor

import android.content.Context
import dev.switchboard.core.IncomingCall
import dev.switchboard.core.MediaFactory

object CallNotifications {
    fun createChannels(context: Context) {}
    fun incoming(context: Context, call: IncomingCall) {}
    fun missed(context: Context, call: IncomingCall) {}
    fun missedById(context: Context, callUuid: String) {}
    fun cancel(context: Context, callUuid: String) {}
}

class CallForegroundService {
    companion object {
        fun start(context: Context, callUuid: String, video: Boolean = false) {}
        fun stop(context: Context) {}
    }
}

object WebRtcMedia {
    fun factory(context: Context): MediaFactory = throw NotImplementedError()
}

class IncomingCallActivity {
    companion object {
        const val CALL_UUID = "dev.switchboard.capacitor.CALL_UUID"
    }
}
