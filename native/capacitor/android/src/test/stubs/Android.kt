// Hand-written stand-ins for the few Android SDK types the compiled
// adapter files use, with the SDK's names and signatures (as documented on
// developer.android.com), so JetBrains' compiler checks those files on a
// plain JVM (native/tests/bindings.rs). Compile-only: nothing here runs.
// Which files compile against these, and which are only parsed: the
// plugin's README, "What is checked here".

@file:Suppress("unused", "UNUSED_PARAMETER")

package android.content

open class Context {
    open val applicationContext: Context get() = this
    open val packageName: String get() = ""
    open fun getSharedPreferences(name: String, mode: Int): SharedPreferences = throw NotImplementedError()

    companion object {
        const val MODE_PRIVATE = 0
    }
}

interface SharedPreferences {
    fun getString(key: String, defValue: String?): String?
    fun edit(): Editor

    interface Editor {
        fun putString(key: String, value: String?): Editor
        fun remove(key: String): Editor
        fun apply()
    }
}

open class Intent {
    open val action: String? get() = null
    open fun getStringExtra(name: String): String? = null
}

abstract class BroadcastReceiver {
    abstract fun onReceive(context: Context, intent: Intent)
}
