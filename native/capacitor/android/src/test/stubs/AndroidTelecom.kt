// Stand-in for android.telecom.DisconnectCause (see Android.kt).

@file:Suppress("unused", "UNUSED_PARAMETER")

package android.telecom

class DisconnectCause(val code: Int)
