// Stand-in for android.net.Uri (see Android.kt).

@file:Suppress("unused", "UNUSED_PARAMETER")

package android.net

abstract class Uri {
    companion object {
        @JvmStatic fun fromParts(scheme: String, ssp: String, fragment: String?): Uri = throw NotImplementedError()
    }
}
