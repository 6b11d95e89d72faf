// The ringing notification (CallStyle, a full-screen intent to the
// lock-screen call activity), and missed calls. Android 14+ grants
// USE_FULL_SCREEN_INTENT only to calling and alarm apps: when it is not
// granted the call still rings as a heads-up notification, and
// `openFullScreenIntentSettings` lets the app send the user to grant it.

package dev.switchboard.capacitor

import android.app.Notification
import android.app.NotificationChannel
import android.app.NotificationManager
import android.app.PendingIntent
import android.content.Context
import android.content.Intent
import android.net.Uri
import android.os.Build
import android.provider.Settings
import androidx.core.app.NotificationCompat
import androidx.core.app.NotificationManagerCompat
import androidx.core.app.Person
import dev.switchboard.core.IncomingCall

object CallNotifications {
    const val RINGING = "switchboard.ringing"
    const val MISSED = "switchboard.missed"
    const val ONGOING = "switchboard.ongoing"

    /** Channels exist from API 26; below it the builder's priority rules. */
    fun createChannels(context: Context) {
        if (Build.VERSION.SDK_INT < Build.VERSION_CODES.O) return
        val manager = context.getSystemService(NotificationManager::class.java)
        manager.createNotificationChannel(
            NotificationChannel(RINGING, "Incoming calls", NotificationManager.IMPORTANCE_HIGH),
        )
        manager.createNotificationChannel(
            NotificationChannel(MISSED, "Missed calls", NotificationManager.IMPORTANCE_DEFAULT),
        )
        manager.createNotificationChannel(
            NotificationChannel(ONGOING, "Calls in progress", NotificationManager.IMPORTANCE_LOW),
        )
    }

    fun canUseFullScreenIntent(context: Context): Boolean =
        Build.VERSION.SDK_INT < 34 ||
            context.getSystemService(NotificationManager::class.java).canUseFullScreenIntent()

    /** Android 14+: the settings page where the user grants full-screen calls. */
    fun openFullScreenIntentSettings(context: Context) {
        if (Build.VERSION.SDK_INT >= 34) {
            val intent = Intent(Settings.ACTION_MANAGE_APP_USE_FULL_SCREEN_INTENT)
                .setData(Uri.fromParts("package", context.packageName, null))
                .addFlags(Intent.FLAG_ACTIVITY_NEW_TASK)
            context.startActivity(intent)
        }
    }

    fun incoming(context: Context, call: IncomingCall) {
        val caller = Person.Builder().setName(call.callerName).setImportant(true).build()
        val answer = action(context, call.callUuid, CallActionReceiver.ANSWER)
        val decline = action(context, call.callUuid, CallActionReceiver.DECLINE)
        val fullScreen = PendingIntent.getActivity(
            context, call.callUuid.hashCode(),
            Intent(context, IncomingCallActivity::class.java)
                .putExtra(IncomingCallActivity.CALL_UUID, call.callUuid)
                .addFlags(Intent.FLAG_ACTIVITY_NEW_TASK),
            PendingIntent.FLAG_IMMUTABLE or PendingIntent.FLAG_UPDATE_CURRENT,
        )
        val builder = NotificationCompat.Builder(context, RINGING)
            .setSmallIcon(android.R.drawable.sym_call_incoming)
            .setStyle(NotificationCompat.CallStyle.forIncomingCall(caller, decline, answer))
            .setCategory(NotificationCompat.CATEGORY_CALL)
            .setPriority(NotificationCompat.PRIORITY_MAX)
            .setOngoing(true)
            .setContentIntent(fullScreen)
        if (canUseFullScreenIntent(context)) builder.setFullScreenIntent(fullScreen, true)
        notify(context, call.callUuid.hashCode(), builder.build())
    }

    fun missed(context: Context, call: IncomingCall) {
        val builder = NotificationCompat.Builder(context, MISSED)
            .setSmallIcon(android.R.drawable.sym_call_missed)
            .setContentTitle(call.callerName)
            .setContentText("Missed call")
            .setCategory(NotificationCompat.CATEGORY_MISSED_CALL)
            .setAutoCancel(true)
        notify(context, call.callUuid.hashCode() + 1, builder.build())
    }

    fun missedById(context: Context, callUuid: String) {
        val builder = NotificationCompat.Builder(context, MISSED)
            .setSmallIcon(android.R.drawable.sym_call_missed)
            .setContentTitle("Missed call")
            .setCategory(NotificationCompat.CATEGORY_MISSED_CALL)
            .setAutoCancel(true)
        notify(context, callUuid.hashCode() + 1, builder.build())
    }

    fun cancel(context: Context, callUuid: String) {
        NotificationManagerCompat.from(context).cancel(callUuid.hashCode())
    }

    private fun notify(context: Context, id: Int, notification: Notification) {
        val manager = NotificationManagerCompat.from(context)
        // POST_NOTIFICATIONS (Android 13+) may be denied: nothing to show then.
        if (manager.areNotificationsEnabled()) {
            try {
                manager.notify(id, notification)
            } catch (e: SecurityException) {
                // Revoked between the check and the call.
            }
        }
    }

    /**
     * Answer opens an activity directly (Android 12+ blocks activities
     * started from a receiver a notification triggered, and an answered
     * call brings the app forward); Decline is a broadcast (nothing opens).
     */
    private fun action(context: Context, callUuid: String, what: String): PendingIntent {
        val code = (callUuid + what).hashCode()
        val flags = PendingIntent.FLAG_IMMUTABLE or PendingIntent.FLAG_UPDATE_CURRENT
        return if (what == CallActionReceiver.ANSWER) {
            val answer = Intent(context, IncomingCallActivity::class.java).setAction(what)
                .putExtra(IncomingCallActivity.CALL_UUID, callUuid).addFlags(Intent.FLAG_ACTIVITY_NEW_TASK)
            PendingIntent.getActivity(context, code, answer, flags)
        } else {
            val decline = Intent(context, CallActionReceiver::class.java).setAction(what)
                .putExtra(IncomingCallActivity.CALL_UUID, callUuid)
            PendingIntent.getBroadcast(context, code, decline, flags)
        }
    }
}
