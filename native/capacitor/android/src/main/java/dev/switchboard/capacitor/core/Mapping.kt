// The Android adapter's translations, kept free of android.* so they
// compile and run on a plain JVM against the core's generated bindings
// (native/tests/bindings.rs does, with JetBrains' compiler). The
// Android-facing files (Telecom, Firebase, notifications) only move values
// through these. The numbers are the platform's published constants,
// spelled here because the JVM has no android.jar: android.telecom.
// DisconnectCause, androidx.core.telecom's CallEndpointCompat and
// CallAttributesCompat.

package dev.switchboard.capacitor.core

import dev.switchboard.core.ActiveCall
import dev.switchboard.core.ActiveCallState
import dev.switchboard.core.AudioEndpoint
import dev.switchboard.core.AudioRouteKind
import dev.switchboard.core.AudioRouteState
import dev.switchboard.core.EndedReason
import dev.switchboard.core.IncomingCall
import dev.switchboard.core.PushDecision
import dev.switchboard.core.TelecomDisconnectCause
import dev.switchboard.core.telecomDisconnectCause

/** android.telecom.DisconnectCause codes Core-Telecom's `disconnect` accepts. */
object DisconnectCodes {
    const val LOCAL = 2
    const val REMOTE = 3
    const val MISSED = 5
    const val REJECTED = 6

    /** The core decides the cause; this only spells it for Telecom. */
    fun of(reason: EndedReason): Int = when (telecomDisconnectCause(reason)) {
        TelecomDisconnectCause.LOCAL -> LOCAL
        TelecomDisconnectCause.REMOTE -> REMOTE
        TelecomDisconnectCause.REJECTED -> REJECTED
        TelecomDisconnectCause.MISSED -> MISSED
    }
}

/** androidx.core.telecom.CallEndpointCompat endpoint types. */
object EndpointTypes {
    const val UNKNOWN = -1
    const val EARPIECE = 1
    const val BLUETOOTH = 2
    const val WIRED_HEADSET = 3
    const val SPEAKER = 4
    const val STREAMING = 5

    fun kind(type: Int): AudioRouteKind = when (type) {
        EARPIECE -> AudioRouteKind.EARPIECE
        SPEAKER -> AudioRouteKind.SPEAKER
        WIRED_HEADSET -> AudioRouteKind.WIRED_HEADSET
        BLUETOOTH -> AudioRouteKind.BLUETOOTH
        else -> AudioRouteKind.OTHER
    }
}

/** One Core-Telecom endpoint as the adapter sees it (type, name, identifier). */
data class Endpoint(val type: Int, val name: String, val id: String)

/** Core-Telecom's endpoints as the core's. */
fun endpoints(available: List<Endpoint>): List<AudioEndpoint> =
    available.map { AudioEndpoint(it.id, EndpointTypes.kind(it.type), it.name) }

/** androidx.core.telecom.CallAttributesCompat values. */
object CallAttributes {
    const val DIRECTION_INCOMING = 1
    const val DIRECTION_OUTGOING = 2
    const val CALL_TYPE_AUDIO_CALL = 1
    const val CALL_TYPE_VIDEO_CALL = 2
    const val SUPPORTS_SET_INACTIVE = 1 shl 1
    const val SUPPORTS_STREAM = 1 shl 2
    const val SUPPORTS_TRANSFER = 1 shl 3

    fun callType(video: Boolean) = if (video) CALL_TYPE_VIDEO_CALL else CALL_TYPE_AUDIO_CALL

    /** Hold is supported (the core keeps hold apart from mute). */
    const val CAPABILITIES = SUPPORTS_SET_INACTIVE
}

/** What the FCM service does with a push, from the core's decision. */
sealed class IncomingAction {
    /** `CallsManager.addCall` (incoming), then `incomingCallDisplayed`. */
    data class AddCall(val call: IncomingCall) : IncomingAction()

    /**
     * Stale, expired or over: a missed-call notification, no ringing UI
     * (Android, unlike iOS, does not require the report).
     */
    data class MissedNotice(val call: IncomingCall, val disconnectCode: Int) : IncomingAction()

    object Nothing : IncomingAction()
}

fun incomingAction(decision: PushDecision): IncomingAction = when (decision) {
    is PushDecision.Report -> IncomingAction.AddCall(decision.call)
    is PushDecision.ReportAndEnd -> IncomingAction.MissedNotice(decision.call, DisconnectCodes.of(decision.reason))
    is PushDecision.NotACall -> IncomingAction.Nothing
}

/** The JS `callEnded` reason for the core's end reason (definitions.ts `EndReason`). */
fun jsEndReason(reason: EndedReason, wasConnected: Boolean): String = when (reason) {
    EndedReason.LOCAL_ENDED, EndedReason.REMOTE_ENDED ->
        if (wasConnected) "completed" else if (reason == EndedReason.REMOTE_ENDED) "remote_ended" else "completed"
    EndedReason.DECLINED -> "declined"
    EndedReason.CALLER_CANCELLED, EndedReason.UNANSWERED -> "missed"
    EndedReason.ANSWERED_ELSEWHERE -> "answered_elsewhere"
    EndedReason.DECLINED_ELSEWHERE -> "declined_elsewhere"
    EndedReason.FAILED -> "failed"
}

/** The `incomingCall` event JS receives (the same shape on every platform). */
fun incomingCallEvent(call: IncomingCall): Map<String, Any?> = mapOf(
    "callId" to call.callId,
    "fromUserId" to call.handle,
    "callerName" to call.callerName,
    "video" to call.video,
    "avatarUrl" to call.avatarUrl,
)

/**
 * JS names calls by the server's id on every platform; Telecom and the
 * core by UUID. An incoming call's UUID is its server id; an outgoing
 * call's is the app's own until the server names it, and `callEnded`
 * comes after the core has forgotten it: so the adapter keeps the pairs
 * it was told, until the call ends.
 */
class CallIds {
    private val serverIds = mutableMapOf<String, String>()
    private val connected = mutableSetOf<String>()

    @Synchronized
    fun remember(callUuid: String, callId: String) {
        serverIds[callUuid.lowercase()] = callId
    }

    @Synchronized
    fun jsCallId(callUuid: String): String = serverIds[callUuid.lowercase()] ?: callUuid.lowercase()

    @Synchronized
    fun connected(callUuid: String) {
        connected.add(callUuid.lowercase())
    }

    /** The call is over: its JS id and whether it had connected. */
    @Synchronized
    fun ended(callUuid: String): Pair<String, Boolean> {
        val uuid = callUuid.lowercase()
        val id = serverIds.remove(uuid) ?: uuid
        return id to connected.remove(uuid)
    }
}

/** definitions.ts `AudioRouteKind`. */
fun jsRouteKind(kind: AudioRouteKind): String = when (kind) {
    AudioRouteKind.EARPIECE -> "earpiece"
    AudioRouteKind.SPEAKER -> "speaker"
    AudioRouteKind.WIRED_HEADSET -> "wired"
    AudioRouteKind.BLUETOOTH -> "bluetooth"
    AudioRouteKind.OTHER -> "other"
}

/** definitions.ts `AudioRoutes` (the `audioRouteChanged` event and `getAudioRoutes`). */
fun jsAudioRoutes(state: AudioRouteState?): Map<String, Any?> = mapOf(
    "routes" to (state?.endpoints ?: emptyList()).map {
        mapOf("id" to it.id, "kind" to jsRouteKind(it.kind), "name" to it.name)
    },
    "currentId" to state?.currentId,
)

/** definitions.ts `ActiveCall`. */
fun jsActiveCall(call: ActiveCall): Map<String, Any?> = mapOf(
    "callId" to (call.callId ?: call.callUuid),
    "state" to when (call.state) {
        ActiveCallState.RINGING -> "ringing"
        ActiveCallState.OUTGOING -> "outgoing"
        ActiveCallState.CONNECTING -> "connecting"
        ActiveCallState.CONNECTED -> "connected"
        ActiveCallState.RECONNECTING -> "reconnecting"
    },
    "video" to call.video,
    "outgoing" to call.outgoing,
    "remoteUserId" to call.remoteUserId,
    "muted" to call.muted,
    "held" to call.held,
)
