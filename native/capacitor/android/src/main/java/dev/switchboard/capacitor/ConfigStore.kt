// The core's saved configuration (server, device, user token) in the app's
// private storage, excluded from backups (res/xml rules in ANDROID.md), so
// an FCM wake of a killed app can rebuild the core. Readable before the
// first unlock is not needed: FCM does not deliver to credential-encrypted
// apps before it either.

package dev.switchboard.capacitor

import android.content.Context

object ConfigStore {
    private const val FILE = "switchboard"
    private const val KEY = "client-config"

    fun load(context: Context): String? =
        context.getSharedPreferences(FILE, Context.MODE_PRIVATE).getString(KEY, null)

    fun save(context: Context, json: String) {
        context.getSharedPreferences(FILE, Context.MODE_PRIVATE).edit().putString(KEY, json).apply()
    }

    fun clear(context: Context) {
        context.getSharedPreferences(FILE, Context.MODE_PRIVATE).edit().remove(KEY).apply()
    }
}
