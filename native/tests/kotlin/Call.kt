// Alice (an iPhone) calls Bob (an Android phone) through the generated
// Kotlin bindings of the client core, on the JVM with JNA: what the Android
// adapter does, minus android.* (no Android SDK is reachable here). Bob's
// ring arrives as FCM delivers it, a data map of strings (the exact map the
// server's FCM sender builds, handed over by the Rust test), and goes
// through handlePushData -> report -> incomingCallDisplayed -> answer ->
// media (the core's str0m media port) -> end.
//
// Run by native/tests/bindings.rs with SWITCHBOARD_URL, ALICE_TOKEN,
// BOB_TOKEN and FCM_RING (the data map, one "key<TAB>value" per line, the
// call id as CALL_ID) set. Exits non-zero on any failure.

import dev.switchboard.core.*
import java.net.URI
import java.net.http.HttpClient
import java.net.http.HttpRequest
import java.net.http.HttpResponse
import kotlin.system.exitProcess

class FakeTelecom(private val routeThrows: Boolean) : SystemCallUi, AudioRoutes, Credentials, CallEvents {
    val reports = java.util.Collections.synchronizedList(mutableListOf<String>())

    override fun reportIncomingCall(call: IncomingCall) {
        reports.add("incoming ${call.callUuid} ${call.handle}")
    }

    override fun reportOutgoingCallStarted(callUuid: String, callId: String) {
        reports.add("outgoing $callUuid")
    }

    override fun reportCallConnected(callUuid: String) {
        reports.add("connected $callUuid")
    }

    override fun reportCallEnded(callUuid: String, reason: EndedReason) {
        reports.add("ended $callUuid $reason")
    }

    override fun selectRoute(endpointId: String) {
        reports.add("route $endpointId")
        // An exception in a port reaches the core as PortException: logged,
        // and the call goes on.
        if (routeThrows) throw PortException.Failed("requestEndpointChange refused the route")
    }

    // The app's backend: the tokens here outlive the test, so being asked
    // is recorded (and checked) and answered with a failure.
    override fun refreshUserToken() {
        reports.add("token asked")
        throw PortException.Failed("no app backend in this test")
    }

    override fun remoteTrackAdded(callUuid: String, track: RemoteTrack) {
        reports.add("track ${track.userId} ${if (track.video) "video" else "audio"}")
    }

    override fun remoteTrackRemoved(callUuid: String, trackId: String) {
        reports.add("track removed $trackId")
    }

    override fun remoteTrackMuted(callUuid: String, trackId: String, muted: Boolean) {}

    override fun remoteTrackPaused(callUuid: String, trackId: String, paused: Boolean) {}

    override fun callReconnecting(callUuid: String) {
        reports.add("reconnecting $callUuid")
    }

    override fun callReconnected(callUuid: String) {
        reports.add("reconnected $callUuid")
    }

    override fun flagsChanged(flags: Map<String, Boolean>) {
        reports.add("flags video_calls=${flags["video_calls"]}")
    }

    override fun activeSpeakersChanged(callUuid: String, speakers: List<ActiveSpeaker>) {
        reports.add("speakers $callUuid ${speakers.joinToString(",") { it.participantId }}")
    }

    override fun dataReceived(callUuid: String, message: DataMessage) {
        reports.add("data $callUuid ${message.userId} ${message.payload}")
    }

    fun has(report: String) = synchronized(reports) { reports.contains(report) }
}

class Tokens(private val tokens: DevicePushTokens) : PushTokens {
    override fun current() = tokens
}

fun check(ok: Boolean, what: () -> String) {
    if (!ok) {
        System.err.println("kotlin call failed: ${what()}")
        exitProcess(1)
    }
}

// Every fake system UI made, so a timeout can say what each had seen.
val systems = java.util.Collections.synchronizedList(mutableListOf<FakeTelecom>())

fun waitFor(what: String, limitMs: Long = 15_000, ready: () -> Boolean) {
    val deadline = System.currentTimeMillis() + limitMs
    while (!ready()) {
        check(System.currentTimeMillis() < deadline) {
            "timed out waiting for $what; reports: ${systems.map { it.reports.toList() }}"
        }
        Thread.sleep(20)
    }
}

fun env(name: String) = System.getenv(name) ?: run { check(false) { "$name is not set" }; "" }

fun devices(token: String): String {
    val request = HttpRequest.newBuilder(URI.create(env("SWITCHBOARD_URL") + "/v1/devices"))
        .header("Authorization", "Bearer $token").build()
    return HttpClient.newHttpClient().send(request, HttpResponse.BodyHandlers.ofString()).body()
}

fun client(token: String, deviceId: String, platform: Platform, tokens: DevicePushTokens, routeThrows: Boolean): Pair<Client, FakeTelecom> {
    val telecom = FakeTelecom(routeThrows)
    systems.add(telecom)
    val config = ClientConfig(
        serverUrl = env("SWITCHBOARD_URL"),
        userToken = token,
        deviceId = deviceId,
        platform = platform,
        video = false,
        bundleId = if (platform == Platform.IOS) "app.example.calls" else null,
        apnsEnvironment = if (platform == Platform.IOS) "sandbox" else null,
        trustedCaPem = null,
    )
    // The record the app keeps for a cold start reads back the same.
    check(clientConfigFromJson(clientConfigToJson(config)) == config) { "config record" }
    return Pair(Client(config, telecom, str0mMediaFactory("127.0.0.1"), telecom, Tokens(tokens), telecom, telecom), telecom)
}

// Core-Telecom's endpoints: the earpiece and the speaker, one of them current.
fun phoneRoutes(client: Client, current: String) {
    client.audioRoutesChanged(
        listOf(
            AudioEndpoint("earpiece", AudioRouteKind.EARPIECE, "Phone"),
            AudioEndpoint("speaker", AudioRouteKind.SPEAKER, "Speaker"),
        ),
        current,
    )
}

fun received(client: Client, callUuid: String): ULong = client.mediaStats(callUuid)?.packetsReceived ?: 0UL

fun main() {
    val (alice, aliceUi) = client(env("ALICE_TOKEN"), "a-iphone", Platform.IOS,
        DevicePushTokens(apnsVoip = "aa".repeat(32), apnsAlert = "bb".repeat(32), fcm = null), routeThrows = false)
    val bobTokens = DevicePushTokens(apnsVoip = null, apnsAlert = null, fcm = "f".repeat(40))
    // Bob's app ran once (it registered his phone), then was killed.
    val (firstRun, firstRunUi) = client(env("BOB_TOKEN"), "b-pixel", Platform.ANDROID, bobTokens, routeThrows = true)
    waitFor("bob's device registration") { devices(env("BOB_TOKEN")).contains("b-pixel") }
    // The server's flags reach the app through the CallEvents port.
    waitFor("bob's flags") { firstRunUi.has("flags video_calls=true") }
    firstRun.shutdown()

    // Alice's app reports the call to CallKit under its own UUID first.
    val aliceUuid = java.util.UUID.randomUUID().toString()
    val callId = alice.startCall("bob", false, aliceUuid)
    check(aliceUi.has("outgoing $aliceUuid")) { "alice: ${aliceUi.reports}" }
    phoneRoutes(alice, "earpiece")
    alice.audioSessionActivated()

    // FCM wakes Bob's killed app with the ring, every value a string: the
    // app builds its core in onMessageReceived and asks what to show.
    val data = env("FCM_RING").lines().filter { it.isNotBlank() }.associate {
        val (key, value) = it.split("\t", limit = 2)
        key to value.replace("CALL_ID", callId)
    }
    check(data["ringEpoch"]?.toLongOrNull() != null) { "not an FCM map: $data" }
    val (bob, bobUi) = client(env("BOB_TOKEN"), "b-pixel", Platform.ANDROID, bobTokens, routeThrows = true)
    val decision = bob.handlePushData(data)
    // Telecom started Bob's call on the speaker; his port throws when asked
    // to change it.
    phoneRoutes(bob, "speaker")
    check(decision is PushDecision.Report) { "bob's push decision: $decision" }
    val call = (decision as PushDecision.Report).call
    check(call.callUuid == callId && call.handle == "alice" && !call.video) { "reported $call" }
    // Telecom added the call: the server hears it is shown, then the user answers.
    bob.incomingCallDisplayed(call.callUuid)
    bob.answer(call.callUuid)
    bob.audioSessionActivated()

    waitFor("both connected") { aliceUi.has("connected $aliceUuid") && bobUi.has("connected $callId") }
    waitFor("audio both ways") { received(alice, aliceUuid) >= 100UL && received(bob, callId) >= 100UL }
    // The server replays the ring over the events socket when the woken
    // core connects: the core never reports it as a second call. (On a
    // busy machine the socket can deliver it before the push is handled:
    // then the port sees the same call once, and the adapter holds one
    // call per UUID.)
    val bobIncoming = bobUi.reports.filter { it.startsWith("incoming") }
    check(bobIncoming.isEmpty() || bobIncoming == listOf("incoming $callId alice")) { "bob: ${bobUi.reports}" }
    val aliceReceived = received(alice, aliceUuid)

    bob.end(callId)
    waitFor("alice's call to end") { aliceUi.has("ended $aliceUuid ${EndedReason.REMOTE_ENDED}") }
    // Bob's own report comes from his core's driver, in its own time.
    waitFor("bob's call to end") { bobUi.has("ended $callId ${EndedReason.LOCAL_ENDED}") }
    check(telecomDisconnectCause(EndedReason.LOCAL_ENDED) == TelecomDisconnectCause.LOCAL) { "mapping" }
    // An audio call goes to the ear, asked once (the port threw; the call
    // went on); bob heard alice's audio track, and nobody's token ran out.
    check(bobUi.reports.filter { it.startsWith("route") } == listOf("route earpiece")) { "bob: ${bobUi.reports}" }
    check(bobUi.has("track alice audio")) { "bob: ${bobUi.reports}" }
    check(systems.none { it.has("token asked") }) { "a token was refreshed" }

    println("kotlin call ok: $callId: alice received $aliceReceived packets")
    alice.shutdown()
    bob.shutdown()
    exitProcess(0)
}
