// Keeps the process alive for a call in progress. Android 14+ requires the
// type at startForeground: phoneCall always (the app manages its own calls
// through Core-Telecom: MANAGE_OWN_CALLS), microphone and camera only when
// those permissions are granted (asking for a type without its permission
// throws SecurityException). Started within Android's 5 s of
// startForegroundService.

package dev.switchboard.capacitor

import android.Manifest
import android.app.Service
import android.content.Context
import android.content.Intent
import android.content.pm.PackageManager
import android.content.pm.ServiceInfo
import android.os.IBinder
import androidx.core.app.NotificationCompat
import androidx.core.app.ServiceCompat
import androidx.core.content.ContextCompat

class CallForegroundService : Service() {
    companion object {
        private const val NOTIFICATION_ID = 0x5b0a
        private const val CALL_UUID = "callUuid"
        private const val VIDEO = "video"

        fun start(context: Context, callUuid: String, video: Boolean = false) {
            val intent = Intent(context, CallForegroundService::class.java)
                .putExtra(CALL_UUID, callUuid).putExtra(VIDEO, video)
            ContextCompat.startForegroundService(context, intent)
        }

        fun stop(context: Context) {
            context.stopService(Intent(context, CallForegroundService::class.java))
        }

        /** The types this start may claim, by what is granted now. */
        fun types(context: Context, video: Boolean): Int {
            fun granted(permission: String) =
                ContextCompat.checkSelfPermission(context, permission) == PackageManager.PERMISSION_GRANTED
            var types = ServiceInfo.FOREGROUND_SERVICE_TYPE_PHONE_CALL
            if (granted(Manifest.permission.RECORD_AUDIO)) types = types or ServiceInfo.FOREGROUND_SERVICE_TYPE_MICROPHONE
            if (video && granted(Manifest.permission.CAMERA)) types = types or ServiceInfo.FOREGROUND_SERVICE_TYPE_CAMERA
            return types
        }
    }

    override fun onStartCommand(intent: Intent?, flags: Int, startId: Int): Int {
        val video = intent?.getBooleanExtra(VIDEO, false) ?: false
        val notification = NotificationCompat.Builder(this, CallNotifications.ONGOING)
            .setSmallIcon(android.R.drawable.sym_action_call)
            .setContentTitle("Call in progress")
            .setCategory(NotificationCompat.CATEGORY_CALL)
            .setOngoing(true)
            .build()
        ServiceCompat.startForeground(this, NOTIFICATION_ID, notification, types(this, video))
        return START_NOT_STICKY
    }

    override fun onBind(intent: Intent?): IBinder? = null
}
