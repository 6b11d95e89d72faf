// The ringing notification's Answer and Decline buttons.

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
        val client = SwitchboardCalls.ensureClient(context) ?: return
        when (intent.action) {
            ANSWER -> {
                client.answer(callUuid)
                CallForegroundService.start(context, callUuid)
                // Self-managed calls own their audio: it is active now.
                client.audioSessionActivated()
                context.startActivity(
                    context.packageManager.getLaunchIntentForPackage(context.packageName)
                        ?.addFlags(Intent.FLAG_ACTIVITY_NEW_TASK),
                )
            }
            DECLINE -> client.end(callUuid)
        }
    }
}
