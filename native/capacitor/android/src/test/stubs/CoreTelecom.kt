// Stand-ins for androidx.core:core-telecom 1.0, with the signatures of its
// published API (core/core-telecom/api/current.txt in androidx): addCall's
// callbacks are suspend functions, its block is not, and the call scope is
// a CoroutineScope whose endpoints and mute are Flows (kotlinx-coroutines
// from the Kotlin compiler's own lib/). See Android.kt.

@file:Suppress("unused", "UNUSED_PARAMETER")

package androidx.core.telecom

import android.content.Context
import android.net.Uri
import android.os.ParcelUuid
import android.telecom.DisconnectCause
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.flow.Flow

class CallAttributesCompat(
    val displayName: CharSequence,
    val address: Uri,
    val direction: Int,
    val callType: Int = CALL_TYPE_AUDIO_CALL,
    val callCapabilities: Int = SUPPORTS_SET_INACTIVE,
    val preferredStartingCallEndpoint: CallEndpointCompat? = null,
) {
    companion object {
        const val CALL_TYPE_AUDIO_CALL = 1
        const val CALL_TYPE_VIDEO_CALL = 2
        const val DIRECTION_INCOMING = 1
        const val DIRECTION_OUTGOING = 2
        const val SUPPORTS_SET_INACTIVE = 2
        const val SUPPORTS_STREAM = 4
        const val SUPPORTS_TRANSFER = 8
    }
}

sealed class CallControlResult {
    class Success : CallControlResult()
    class Error(val errorCode: Int) : CallControlResult()
}

interface CallControlScope : CoroutineScope {
    val availableEndpoints: Flow<List<CallEndpointCompat>>
    val currentCallEndpoint: Flow<CallEndpointCompat>
    val isMuted: Flow<Boolean>
    fun getCallId(): ParcelUuid
    suspend fun setActive(): CallControlResult
    suspend fun setInactive(): CallControlResult
    suspend fun answer(callType: Int): CallControlResult
    suspend fun disconnect(disconnectCause: DisconnectCause): CallControlResult
    suspend fun requestEndpointChange(endpoint: CallEndpointCompat): CallControlResult
}

class CallEndpointCompat(val name: CharSequence, val type: Int, val identifier: ParcelUuid)

class CallsManager(context: Context) {
    suspend fun addCall(
        callAttributes: CallAttributesCompat,
        onAnswer: suspend (callType: Int) -> Unit,
        onDisconnect: suspend (disconnectCause: DisconnectCause) -> Unit,
        onSetActive: suspend () -> Unit,
        onSetInactive: suspend () -> Unit,
        block: CallControlScope.() -> Unit,
    ): Unit = throw NotImplementedError()

    fun registerAppWithTelecom(capabilities: Int): Unit = throw NotImplementedError()

    companion object {
        const val CAPABILITY_BASELINE = 1
        const val CAPABILITY_SUPPORTS_VIDEO_CALLING = 2
        const val CAPABILITY_SUPPORTS_CALL_STREAMING = 4
    }
}

class CallException(val code: Int) : RuntimeException() {
    companion object {
        const val ERROR_UNKNOWN = 1
        const val ERROR_CANNOT_HOLD_CURRENT_ACTIVE_CALL = 2
        const val ERROR_CALL_IS_NOT_BEING_TRACKED = 3
        const val ERROR_CALL_CANNOT_BE_SET_TO_ACTIVE = 4
        const val ERROR_CALL_NOT_PERMITTED_AT_PRESENT_TIME = 5
        const val ERROR_OPERATION_TIMED_OUT = 6
        const val ERROR_CALL_DOES_NOT_SUPPORT_HOLD = 7
        const val ERROR_BLUETOOTH_DEVICE_IS_NULL = 8
    }
}
