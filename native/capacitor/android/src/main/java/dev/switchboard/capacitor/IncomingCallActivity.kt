// The full-screen incoming call over the lock screen (the notification's
// full-screen intent): shows when locked and turns the screen on. Its
// buttons are the notification's actions; the app's own UI takes over
// once answered.

package dev.switchboard.capacitor

import android.app.Activity
import android.app.KeyguardManager
import android.content.Intent
import android.os.Bundle
import android.widget.Button
import android.widget.LinearLayout
import android.widget.TextView

class IncomingCallActivity : Activity() {
    companion object {
        const val CALL_UUID = "dev.switchboard.capacitor.CALL_UUID"
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setShowWhenLocked(true)
        setTurnScreenOn(true)
        getSystemService(KeyguardManager::class.java)?.requestDismissKeyguard(this, null)
        val callUuid = intent.getStringExtra(CALL_UUID) ?: return finish()
        val layout = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL }
        layout.addView(TextView(this).apply { text = "Incoming call" })
        layout.addView(Button(this).apply {
            text = "Answer"
            setOnClickListener { send(CallActionReceiver.ANSWER, callUuid) }
        })
        layout.addView(Button(this).apply {
            text = "Decline"
            setOnClickListener { send(CallActionReceiver.DECLINE, callUuid) }
        })
        setContentView(layout)
    }

    private fun send(action: String, callUuid: String) {
        sendBroadcast(
            Intent(this, CallActionReceiver::class.java).setAction(action).putExtra(CALL_UUID, callUuid),
        )
        finish()
    }
}
