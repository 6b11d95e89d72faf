// rustls-platform-verifier checks certificates with Android's trust store
// through JNI: it needs the app Context once, before the core opens its
// first https:// or wss:// connection, and its Kotlin component on the
// classpath at the crate's exact version (android/build.gradle). The native
// side is `Java_dev_switchboard_capacitor_PlatformVerifier_initWithContext`
// in native/src/android.rs.

package dev.switchboard.capacitor

import android.content.Context

object PlatformVerifier {
    private var done = false

    @Synchronized
    fun init(context: Context) {
        if (done) return
        System.loadLibrary("native")
        initWithContext(context.applicationContext)
        done = true
    }

    @JvmStatic
    private external fun initWithContext(context: Context)
}
