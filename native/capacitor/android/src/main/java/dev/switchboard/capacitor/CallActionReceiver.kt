// The ringing notification's Decline button (Answer opens
// IncomingCallActivity directly: see CallNotifications.action).

package dev.switchboard.capacitor

import android.content.BroadcastReceiver
import android.content.Context
import android.content.Intent

class CallActionReceiver : BroadcastReceiver() {
    companion object {
        const val ANSWER = "dev.switchboard.capacitor.ANSWER"
        const val DECLINE = "dev.switchboard.capacitor.DECLINE"
    }

    override fun onReceive(context: Context, intent: Intent) {
        val callUuid = intent.getStringExtra(IncomingCallActivity.CALL_UUID) ?: return
        if (intent.action == DECLINE) SwitchboardCalls.ensureClient(context)?.end(callUuid)
    }
}
