// rustls-platform-verifier checks certificates with Android's trust store
// through JNI: it needs the app Context once, before the core opens its
// first https:// or wss:// connection, and its Kotlin component on the
// classpath (android/build.gradle adds the Maven repository the crate ships
// in its source). The native side is `Java_..._init` in the core.

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
