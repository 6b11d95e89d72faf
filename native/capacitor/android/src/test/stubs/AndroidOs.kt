// Stand-ins for android.os, android.net and android.telecom (see Android.kt).

@file:Suppress("unused", "UNUSED_PARAMETER")

package android.os

object Build {
    object VERSION {
        @JvmField var SDK_INT: Int = 36
    }

    object VERSION_CODES {
        const val O = 26
        const val O_MR1 = 27
    }
}

class ParcelUuid(private val uuid: java.util.UUID) {
    override fun toString(): String = uuid.toString()
}
