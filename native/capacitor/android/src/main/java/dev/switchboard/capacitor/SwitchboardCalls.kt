// The Android adapter's app-level object: it owns the Rust core's Client
// (rebuilt from saved configuration when FCM wakes a killed app), and
// implements the core's ports over Core-Telecom (TelecomCalls), the
// notifications (CallNotifications), org.webrtc (WebRtcMedia) and the
// plugin's JS events. Every decision is the core's; this file moves values.
//
// Not compiled here (no Android SDK where the suite runs): parsed and
// rule-checked by native/capacitor/scripts/check_adapters.py; its
// android.*-free translations (core/Mapping.kt) are compiled and run.

package dev.switchboard.capacitor

import android.content.Context
import dev.switchboard.capacitor.core.CallIds
import dev.switchboard.capacitor.core.IncomingAction
import dev.switchboard.capacitor.core.incomingAction
import dev.switchboard.capacitor.core.incomingCallEvent
import dev.switchboard.capacitor.core.jsAudioRoutes
import dev.switchboard.capacitor.core.jsEndReason
import dev.switchboard.core.ActiveSpeaker
import dev.switchboard.core.AudioEndpoint
import dev.switchboard.core.AudioRouteState
import dev.switchboard.core.AudioRoutes
import dev.switchboard.core.CallEvents
import dev.switchboard.core.DataMessage
import dev.switchboard.core.Client
import dev.switchboard.core.ClientConfig
import dev.switchboard.core.Credentials
import dev.switchboard.core.DevicePushTokens
import dev.switchboard.core.EndedReason
import dev.switchboard.core.IncomingCall
import dev.switchboard.core.PushTokens
import dev.switchboard.core.RemoteTrack
import dev.switchboard.core.SystemCallUi
import dev.switchboard.core.clientConfigFromJson
import dev.switchboard.core.clientConfigToJson

object SwitchboardCalls : SystemCallUi, AudioRoutes, PushTokens, Credentials, CallEvents {
    private lateinit var app: Context
    private var client: Client? = null
    private var fcmToken: String? = null
    /** JS names calls by the server's id (core/Mapping.kt). */
    val ids = CallIds()
    /** Each remote track's subscriber mid, by "callId/trackId" (video views). */
    private val trackMids = java.util.concurrent.ConcurrentHashMap<String, String>()

    fun trackMid(callId: String, trackId: String): String? = trackMids["$callId/$trackId"]
    private val pending = mutableListOf<Pair<String, Map<String, Any?>>>()

    /** Set by the plugin when JS listens; events before that are kept. */
    var onEvent: ((String, Map<String, Any?>) -> Unit)? = null
        set(value) {
            field = value
            if (value != null) synchronized(pending) {
                pending.forEach { (name, data) -> value(name, data) }
                pending.clear()
            }
        }

    /** Optional: a fresh user token from the app's backend without JS
     * (an FCM wake may come before the web view runs). */
    var tokenProvider: ((callback: (String?) -> Unit) -> Unit)? = null

    fun init(context: Context) {
        app = context.applicationContext
        // rustls-platform-verifier reads the system trust store through JNI.
        PlatformVerifier.init(app)
        TelecomCalls.init(app)
        CallNotifications.createChannels(app)
    }

    @Synchronized
    fun ensureClient(context: Context): Client? {
        if (!::app.isInitialized) init(context)
        client?.let { return it }
        val saved = ConfigStore.load(app) ?: return null
        val config = runCatching { clientConfigFromJson(saved) }.getOrNull() ?: return null
        client = runCatching {
            Client(config, this, WebRtcMedia.factory(app), this, this, this, this)
        }.getOrNull()
        return client
    }

    fun register(context: Context, config: ClientConfig) {
        if (!::app.isInitialized) init(context)
        ConfigStore.save(app, clientConfigToJson(config))
        val old = synchronized(this) { client.also { client = null } }
        old?.shutdown()
        ensureClient(app)
    }

    fun currentClient(): Client? = synchronized(this) { client }

    /** The UUID the core and Telecom know the call by, from the id JS passed. */
    fun callUuid(jsCallId: String): String = currentClient()?.callUuid(jsCallId) ?: jsCallId

    /** Core-Telecom's endpoints changed: to the core, and to JS. */
    fun audioRoutesChanged(endpoints: List<AudioEndpoint>, currentId: String?) {
        currentClient()?.audioRoutesChanged(endpoints, currentId)
        emit("audioRouteChanged", jsAudioRoutes(AudioRouteState(endpoints, currentId)))
    }

    /**
     * An FCM data message. Apps with their own FirebaseMessagingService
     * call this from its onMessageReceived (only one service receives
     * FCM): true when it was a call push.
     */
    fun handleFcm(context: Context, data: Map<String, String>): Boolean {
        val core = ensureClient(context) ?: return false
        return when (val action = incomingAction(core.handlePushData(data))) {
            is IncomingAction.AddCall -> {
                TelecomCalls.addIncoming(app, action.call)
                true
            }
            is IncomingAction.MissedNotice -> {
                CallNotifications.missed(app, action.call)
                true
            }
            IncomingAction.Nothing -> data["event"] == "call_cancelled"
        }
    }

    /**
     * The user answered: from the app, the notification or the lock-screen
     * activity (Telecom is told), or from Telecom's own UI (it knows). The
     * core joins; the foreground service keeps the call alive; a
     * self-managed call owns its audio, so audio may start at once.
     */
    fun answered(context: Context, callUuid: String, fromTelecom: Boolean) {
        val client = ensureClient(context) ?: return
        val video = client.activeCalls().firstOrNull { it.callUuid == callUuid }?.video ?: false
        client.answer(callUuid)
        if (!fromTelecom) TelecomCalls.answer(callUuid)
        CallNotifications.cancel(app, callUuid)
        CallForegroundService.start(app, callUuid, video)
        client.audioSessionActivated()
    }

    fun fcmTokenChanged(token: String) {
        fcmToken = token
        currentClient()?.pushTokensChanged()
    }

    fun emit(name: String, data: Map<String, Any?>) {
        val listener = onEvent
        if (listener != null) listener(name, data) else synchronized(pending) { pending.add(name to data) }
    }

    // -- SystemCallUi -------------------------------------------------------

    /** A ring over the events socket (the app was running). */
    override fun reportIncomingCall(call: IncomingCall) {
        TelecomCalls.addIncoming(app, call)
    }

    override fun reportOutgoingCallStarted(callUuid: String, callId: String) {
        ids.remember(callUuid, callId)
        emit("callStateChanged", mapOf("callId" to callId, "state" to "outgoing"))
    }

    override fun reportCallConnected(callUuid: String) {
        ids.connected(callUuid)
        TelecomCalls.setActive(callUuid)
        emit("callStateChanged", mapOf("callId" to ids.jsCallId(callUuid), "state" to "connected"))
    }

    override fun reportCallEnded(callUuid: String, reason: EndedReason) {
        TelecomCalls.disconnect(callUuid, reason)
        CallNotifications.cancel(app, callUuid)
        // The last call is over: nothing to keep the process alive for.
        if (currentClient()?.activeCalls().isNullOrEmpty()) CallForegroundService.stop(app)
        if (reason == EndedReason.CALLER_CANCELLED || reason == EndedReason.UNANSWERED) {
            CallNotifications.missedById(app, callUuid)
        }
        val (callId, wasConnected) = ids.ended(callUuid)
        trackMids.keys.removeAll { it.startsWith("$callId/") }
        emit("callStateChanged", mapOf("callId" to callId, "state" to "ended"))
        emit("callEnded", mapOf("callId" to callId, "reason" to jsEndReason(reason, wasConnected)))
    }

    fun incomingShown(call: IncomingCall) {
        currentClient()?.incomingCallDisplayed(call.callUuid)
        ids.remember(call.callUuid, call.callId)
        emit("incomingCall", incomingCallEvent(call))
        emit("callStateChanged", mapOf("callId" to call.callId, "state" to "ringing"))
    }

    // -- AudioRoutes ----------------------------------------------------------

    override fun selectRoute(endpointId: String) {
        TelecomCalls.requestEndpoint(endpointId)
    }

    // -- PushTokens -------------------------------------------------------------

    override fun current(): DevicePushTokens = DevicePushTokens(null, null, fcmToken)

    // -- Credentials ------------------------------------------------------------

    override fun refreshUserToken() {
        val provider = tokenProvider
        if (provider == null) {
            emit("tokenRequested", mapOf("reason" to "expired"))
            return
        }
        provider { token ->
            val core = currentClient()
            if (token == null) {
                core?.userTokenFailed("the app's backend gave no token")
            } else {
                core?.setUserToken(token)
                ConfigStore.load(app)?.let { saved ->
                    runCatching { clientConfigFromJson(saved) }.getOrNull()?.let {
                        ConfigStore.save(app, clientConfigToJson(it.copy(userToken = token)))
                    }
                }
            }
        }
    }

    // -- CallEvents -------------------------------------------------------------

    override fun remoteTrackAdded(callUuid: String, track: RemoteTrack) {
        trackMids["${ids.jsCallId(callUuid)}/${track.trackId}"] = track.mid
        emit("remoteTrack", mapOf(
            "callId" to ids.jsCallId(callUuid), "trackId" to track.trackId,
            "participantId" to track.participantId, "userId" to track.userId,
            "kind" to if (track.video) "video" else "audio", "mid" to track.mid, "muted" to track.muted,
        ))
    }

    override fun remoteTrackRemoved(callUuid: String, trackId: String) {
        emit("remoteTrackRemoved", mapOf("callId" to ids.jsCallId(callUuid), "trackId" to trackId))
    }

    override fun remoteTrackMuted(callUuid: String, trackId: String, muted: Boolean) {
        emit("remoteTrackMuted", mapOf("callId" to ids.jsCallId(callUuid), "trackId" to trackId, "muted" to muted))
    }

    override fun remoteTrackPaused(callUuid: String, trackId: String, paused: Boolean) {
        emit("remoteTrackPaused", mapOf("callId" to ids.jsCallId(callUuid), "trackId" to trackId, "paused" to paused))
    }

    override fun callReconnecting(callUuid: String) {
        emit("callStateChanged", mapOf("callId" to ids.jsCallId(callUuid), "state" to "reconnecting"))
    }

    override fun callReconnected(callUuid: String) {
        emit("callStateChanged", mapOf("callId" to ids.jsCallId(callUuid), "state" to "connected"))
    }

    override fun flagsChanged(flags: Map<String, Boolean>) {
        emit("flagsChanged", mapOf("flags" to flags))
    }

    override fun activeSpeakersChanged(callUuid: String, speakers: List<ActiveSpeaker>) {
        emit("activeSpeakers", mapOf(
            "callId" to ids.jsCallId(callUuid),
            "speakers" to speakers.map { s ->
                listOfNotNull("participantId" to s.participantId, "level" to s.level, s.userId?.let { "userId" to it }).toMap()
            },
        ))
    }

    override fun dataReceived(callUuid: String, message: DataMessage) {
        emit("dataReceived", listOfNotNull(
            "callId" to ids.jsCallId(callUuid),
            "from" to message.from,
            "payload" to message.payload,
            "reliable" to message.reliable,
            message.userId?.let { "userId" to it },
        ).toMap())
    }
}
