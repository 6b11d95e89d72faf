// FCM delivery. An app that already has its own FirebaseMessagingService
// (only one receives messages) leaves this one out of its manifest and
// calls SwitchboardCalls.handleFcm from its own onMessageReceived and
// SwitchboardCalls.fcmTokenChanged from its onNewToken.

package dev.switchboard.capacitor

import com.google.firebase.messaging.FirebaseMessagingService
import com.google.firebase.messaging.RemoteMessage

class SwitchboardMessagingService : FirebaseMessagingService() {
    override fun onMessageReceived(message: RemoteMessage) {
        // High-priority data messages give ~10 s of execution: the core
        // decides at once and Telecom / the notification show the call.
        SwitchboardCalls.handleFcm(applicationContext, message.data)
    }

    override fun onNewToken(token: String) {
        SwitchboardCalls.ensureClient(applicationContext)
        SwitchboardCalls.fcmTokenChanged(token)
    }
}
