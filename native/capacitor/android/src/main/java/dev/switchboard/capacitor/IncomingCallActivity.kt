// The full-screen incoming call over the lock screen (the notification's
// full-screen intent): shows when locked and turns the screen on. Its
// buttons are the notification's actions; the app's own UI takes over
// once answered.

package dev.switchboard.capacitor

import android.app.Activity
import android.app.KeyguardManager
import android.os.Build
import android.os.Bundle
import android.view.WindowManager
import android.widget.Button
import android.widget.LinearLayout
import android.widget.TextView

class IncomingCallActivity : Activity() {
    companion object {
        const val CALL_UUID = "dev.switchboard.capacitor.CALL_UUID"
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O_MR1) {
            setShowWhenLocked(true)
            setTurnScreenOn(true)
        } else {
            @Suppress("DEPRECATION")
            window.addFlags(WindowManager.LayoutParams.FLAG_SHOW_WHEN_LOCKED or WindowManager.LayoutParams.FLAG_TURN_SCREEN_ON)
        }
        if (Build.VERSION.SDK_INT >= Build.VERSION_CODES.O) {
            getSystemService(KeyguardManager::class.java)?.requestDismissKeyguard(this, null)
        }
        val callUuid = intent.getStringExtra(CALL_UUID) ?: return finish()
        if (intent.action == CallActionReceiver.ANSWER) return answer(callUuid)
        val layout = LinearLayout(this).apply { orientation = LinearLayout.VERTICAL }
        layout.addView(TextView(this).apply { text = "Incoming call" })
        layout.addView(Button(this).apply {
            text = "Answer"
            setOnClickListener { answer(callUuid) }
        })
        layout.addView(Button(this).apply {
            text = "Decline"
            setOnClickListener { decline(callUuid) }
        })
        setContentView(layout)
    }

    /** Answered from this screen or the notification: the core joins, the app comes forward. */
    private fun answer(callUuid: String) {
        SwitchboardCalls.answered(this, callUuid, fromTelecom = false)
        packageManager.getLaunchIntentForPackage(packageName)?.let { startActivity(it) }
        finish()
    }

    private fun decline(callUuid: String) {
        SwitchboardCalls.ensureClient(this)?.end(callUuid)
        finish()
    }
}
