// The Android adapter's pure translations, run on the JVM against the core
// (native/tests/bindings.rs compiles this with the generated bindings and
// runs it with libnative on JNA's path). Exits non-zero on any failure.

package dev.switchboard.capacitor.core

import dev.switchboard.core.ActiveCall
import dev.switchboard.core.ActiveCallState
import dev.switchboard.core.AudioEndpoint
import dev.switchboard.core.AudioRouteKind
import dev.switchboard.core.AudioRouteState
import dev.switchboard.core.EndedReason
import dev.switchboard.core.IncomingCall
import dev.switchboard.core.PushDecision
import dev.switchboard.core.classifyPushData
import kotlin.system.exitProcess

private var failures = 0

private fun expect(what: String, actual: Any?, expected: Any?) {
    if (actual != expected) {
        System.err.println("android mapping: $what: expected $expected, got $actual")
        failures++
    }
}

fun main() {
    // Every end reason reaches Telecom as the cause the core chose (the
    // README's table), spelled as android.telecom.DisconnectCause.
    val causes = mapOf(
        EndedReason.LOCAL_ENDED to DisconnectCodes.LOCAL,
        EndedReason.DECLINED to DisconnectCodes.REJECTED,
        EndedReason.REMOTE_ENDED to DisconnectCodes.REMOTE,
        EndedReason.CALLER_CANCELLED to DisconnectCodes.MISSED,
        EndedReason.UNANSWERED to DisconnectCodes.MISSED,
        EndedReason.ANSWERED_ELSEWHERE to DisconnectCodes.REMOTE,
        EndedReason.DECLINED_ELSEWHERE to DisconnectCodes.REJECTED,
        EndedReason.FAILED to DisconnectCodes.LOCAL,
    )
    expect("every end reason is mapped", causes.keys, EndedReason.entries.toSet())
    for ((reason, code) in causes) expect("disconnect cause of $reason", DisconnectCodes.of(reason), code)

    // Core-Telecom endpoints become the core's routes.
    val routes = endpoints(listOf(
        Endpoint(EndpointTypes.EARPIECE, "Phone", "e"),
        Endpoint(EndpointTypes.SPEAKER, "Speaker", "s"),
        Endpoint(EndpointTypes.BLUETOOTH, "Pixel Buds", "b"),
        Endpoint(EndpointTypes.WIRED_HEADSET, "Headset", "w"),
        Endpoint(EndpointTypes.STREAMING, "Cast", "c"),
    ))
    expect("route kinds", routes.map { it.kind }, listOf(
        AudioRouteKind.EARPIECE, AudioRouteKind.SPEAKER, AudioRouteKind.BLUETOOTH,
        AudioRouteKind.WIRED_HEADSET, AudioRouteKind.OTHER,
    ))
    expect("route ids", routes.map { it.id }, listOf("e", "s", "b", "w", "c"))

    // An FCM ring (every value a string) becomes Telecom's addCall; a stale
    // one a missed-call notice; a cancel nothing.
    val now = System.currentTimeMillis()
    val ring = mapOf(
        "event" to "incoming_call", "callId" to "0b9f5c3e-1d2a-4c8b-9e7f-6a5b4c3d2e1f",
        "fromUserId" to "alice", "type" to "video", "timestamp" to "$now",
        "ttlSeconds" to "40", "ringEpoch" to "$now", "expiresAt" to "${now + 40_000}",
        "callerDisplayName" to "Alice A.",
    )
    val added = incomingAction(classifyPushData(ring, now.toULong(), 0L))
    expect("a fresh ring is added to Telecom", (added as? IncomingAction.AddCall)?.call?.callerName, "Alice A.")
    expect("the JS event", incomingCallEvent((added as IncomingAction.AddCall).call)["fromUserId"], "alice")
    // Past its deadline by more than the core's clock-skew tolerance.
    val stale = ring + mapOf("expiresAt" to "${now - 60_000}")
    val missed = incomingAction(classifyPushData(stale, now.toULong(), 0L))
    expect("a stale ring is a missed call", (missed as? IncomingAction.MissedNotice)?.disconnectCode, DisconnectCodes.MISSED)
    val cancel = mapOf("event" to "call_cancelled", "callId" to "x", "reason" to "caller_cancelled")
    expect("a cancel adds nothing", incomingAction(classifyPushData(cancel, now.toULong(), 0L)), IncomingAction.Nothing)

    expect("video calls", CallAttributes.callType(true), CallAttributes.CALL_TYPE_VIDEO_CALL)
    expect("a hang-up after talking", jsEndReason(EndedReason.REMOTE_ENDED, wasConnected = true), "completed")
    expect("a caller who gave up", jsEndReason(EndedReason.CALLER_CANCELLED, wasConnected = false), "missed")

    // JS sees the server's call id from start to end, also for an outgoing
    // call the core knew by the app's UUID, and "completed" only after it
    // connected.
    val ids = CallIds()
    val local = "F00DF00D-0000-4000-8000-000000000001"
    expect("before the server named it", ids.jsCallId(local), local.lowercase())
    ids.remember(local, "c9")
    expect("named", ids.jsCallId(local.lowercase()), "c9")
    ids.connected(local)
    expect("ended after connecting", ids.ended(local), "c9" to true)
    expect("forgotten once ended", ids.jsCallId(local), local.lowercase())
    expect("an unconnected end", ids.ended("0b9f5c3e-1d2a-4c8b-9e7f-6a5b4c3d2e1f").second, false)

    val jsRoutes = jsAudioRoutes(AudioRouteState(
        listOf(AudioEndpoint("w", AudioRouteKind.WIRED_HEADSET, "Headset"), AudioEndpoint("s", AudioRouteKind.SPEAKER, "Speaker")),
        "w",
    ))
    expect("JS route kinds", (jsRoutes["routes"] as List<*>).map { (it as Map<*, *>)["kind"] }, listOf("wired", "speaker"))
    expect("JS current route", jsRoutes["currentId"], "w")
    expect("no routes yet", jsAudioRoutes(null), mapOf("routes" to emptyList<Any>(), "currentId" to null))
    expect("every route kind is spelled", AudioRouteKind.entries.map(::jsRouteKind).toSet().size, AudioRouteKind.entries.size)

    val creating = ActiveCall(local.lowercase(), null, "bob", true, false, ActiveCallState.OUTGOING, true, false)
    expect("an outgoing call not yet named", jsActiveCall(creating)["callId"], local.lowercase())
    expect("JS active call", jsActiveCall(creating.copy(callId = "c9", state = ActiveCallState.RECONNECTING)), mapOf(
        "callId" to "c9", "state" to "reconnecting", "video" to false, "outgoing" to true,
        "remoteUserId" to "bob", "muted" to true, "held" to false,
    ))

    if (failures > 0) exitProcess(1)
    println("android mappings ok")
}
