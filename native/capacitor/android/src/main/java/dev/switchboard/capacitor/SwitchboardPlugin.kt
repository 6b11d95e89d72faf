// The Capacitor bridge on Android: JS calls to SwitchboardCalls (which owns
// the core, Core-Telecom and the notifications), its events to JS. The JS
// API is src/definitions.ts, the same on every platform.

package dev.switchboard.capacitor

import android.Manifest
import android.content.Intent
import android.net.Uri
import android.os.PowerManager
import android.provider.Settings
import com.getcapacitor.JSArray
import com.getcapacitor.JSObject
import com.getcapacitor.PermissionState
import com.getcapacitor.Plugin
import com.getcapacitor.PluginCall
import com.getcapacitor.PluginMethod
import com.getcapacitor.annotation.CapacitorPlugin
import com.getcapacitor.annotation.Permission
import com.getcapacitor.annotation.PermissionCallback
import dev.switchboard.capacitor.core.jsActiveCall
import dev.switchboard.capacitor.core.jsAudioRoutes
import dev.switchboard.core.ClientConfig
import dev.switchboard.core.ClientException
import dev.switchboard.core.Platform

@CapacitorPlugin(
    name = "Switchboard",
    permissions = [
        Permission(alias = "microphone", strings = [Manifest.permission.RECORD_AUDIO]),
        Permission(alias = "camera", strings = [Manifest.permission.CAMERA]),
        Permission(alias = "notifications", strings = [Manifest.permission.POST_NOTIFICATIONS]),
        Permission(alias = "bluetooth", strings = [Manifest.permission.BLUETOOTH_CONNECT]),
    ],
)
class SwitchboardPlugin : Plugin() {
    private lateinit var videoViews: VideoViews

    override fun load() {
        SwitchboardCalls.init(context)
        videoViews = VideoViews(bridge)
        // Events from before JS listened (a cold start into a call) now.
        SwitchboardCalls.onEvent = { name, data ->
            bridge.executeOnMainThread { videoViews.dropAfter(name, data) }
            notifyListeners(name, toJs(data), true)
        }
    }

    /** On Android the FCM token comes from the native side, not from JS. */
    @PluginMethod
    fun registerDevice(call: PluginCall) {
        val serverUrl = call.getString("serverUrl")
        val userToken = call.getString("userToken")
        val deviceId = call.getString("deviceId")
        if (serverUrl == null || userToken == null || deviceId == null) {
            call.reject("serverUrl, userToken and deviceId are required", "invalid_request")
            return
        }
        val config = ClientConfig(
            serverUrl, userToken, deviceId, Platform.ANDROID, true, null, null, call.getString("trustedCaPem"),
            dataChannels = call.getBoolean("dataChannels", false) ?: false,
        )
        SwitchboardCalls.register(context, config)
        call.resolve()
    }

    @PluginMethod
    fun startCall(call: PluginCall) {
        val callee = call.getString("calleeUserId") ?: return call.reject("calleeUserId is required", "invalid_request")
        val client = SwitchboardCalls.currentClient() ?: return call.reject("registerDevice first", "not_registered")
        val video = call.getBoolean("video", false) ?: false
        // The core's startCall blocks until the server answered.
        Thread {
            try {
                val callUuid = java.util.UUID.randomUUID().toString()
                TelecomCalls.addOutgoing(context, callUuid, callee, video)
                CallForegroundService.start(context, callUuid, video)
                client.audioSessionActivated()
                // The server's id: JS names calls by it on every platform.
                val callId = client.startCall(callee, video, callUuid)
                call.resolve(JSObject().put("callId", callId))
            } catch (e: Exception) {
                call.reject(e.message, "refused")
            }
        }.start()
    }

    @PluginMethod
    fun answer(call: PluginCall) = withCall(call) { _, uuid ->
        SwitchboardCalls.answered(context, uuid, fromTelecom = false)
    }

    @PluginMethod
    fun decline(call: PluginCall) = withCall(call) { client, id -> client.end(id) }

    @PluginMethod
    fun end(call: PluginCall) = withCall(call) { client, id -> client.end(id) }

    @PluginMethod
    fun setMuted(call: PluginCall) = withCall(call) { client, id -> client.setMuted(id, call.getBoolean("muted", false) ?: false) }

    @PluginMethod
    fun setHeld(call: PluginCall) = withCall(call) { client, id -> client.setHeld(id, call.getBoolean("held", false) ?: false) }

    @PluginMethod
    fun setCamera(call: PluginCall) = withCall(call) { client, id -> client.setCameraEnabled(id, call.getBoolean("enabled", true) ?: true) }

    @PluginMethod
    fun switchCamera(call: PluginCall) = withCall(call) { client, uuid ->
        client.callId(uuid)?.let { WebRtcMedia.switchCamera(it) }
    }

    @PluginMethod
    fun showVideo(call: PluginCall) {
        val callId = call.getString("callId") ?: return call.reject("callId is required", "invalid_request")
        val trackId = call.getString("trackId") ?: return call.reject("trackId is required", "invalid_request")
        bridge.executeOnMainThread { videoViews.show(call, callId, trackId) }
    }

    @PluginMethod
    fun hideVideo(call: PluginCall) {
        val callId = call.getString("callId") ?: return call.reject("callId is required", "invalid_request")
        val trackId = call.getString("trackId") ?: return call.reject("trackId is required", "invalid_request")
        bridge.executeOnMainThread {
            videoViews.hide { it == "$callId/$trackId" }
            call.resolve()
        }
    }

    /** For a UI that loads during a call (a cold start from a push). */
    @PluginMethod
    fun getActiveCalls(call: PluginCall) {
        val calls = SwitchboardCalls.currentClient()?.activeCalls().orEmpty().map(::jsActiveCall)
        call.resolve(toJs(mapOf("calls" to calls)))
    }

    /** The server's feature flags for this device (empty before it said). */
    @PluginMethod
    fun getFlags(call: PluginCall) {
        val flags = SwitchboardCalls.currentClient()?.flags().orEmpty()
        call.resolve(toJs(mapOf("flags" to flags)))
    }

    @PluginMethod
    fun getAudioRoutes(call: PluginCall) {
        call.resolve(toJs(jsAudioRoutes(SwitchboardCalls.currentClient()?.audioRoutes())))
    }

    @PluginMethod
    fun selectAudioRoute(call: PluginCall) {
        val id = call.getString("id") ?: return call.reject("id is required", "invalid_request")
        try {
            SwitchboardCalls.currentClient()?.selectAudioRoute(id)
            call.resolve()
        } catch (e: Exception) {
            call.reject(e.message, "unknown_route")
        }
    }

    /** The answer to `tokenRequested`. */
    @PluginMethod
    fun setUserToken(call: PluginCall) {
        val token = call.getString("token")
        val client = SwitchboardCalls.currentClient()
        if (token == null) client?.userTokenFailed("the app had no token") else client?.setUserToken(token)
        call.resolve()
    }

    @PluginMethod
    fun canUseFullScreenIntent(call: PluginCall) {
        call.resolve(JSObject().put("value", CallNotifications.canUseFullScreenIntent(context)))
    }

    @PluginMethod
    fun openFullScreenIntentSettings(call: PluginCall) {
        CallNotifications.openFullScreenIntentSettings(context)
        call.resolve()
    }

    /** Whether the system may stop the app in the background (OEMs differ: ANDROID.md). */
    @PluginMethod
    fun getBatteryOptimization(call: PluginCall) {
        val power = context.getSystemService(PowerManager::class.java)
        call.resolve(JSObject().put("ignoring", power.isIgnoringBatteryOptimizations(context.packageName)))
    }

    @PluginMethod
    fun openBatteryOptimizationSettings(call: PluginCall) {
        val intent = Intent(Settings.ACTION_REQUEST_IGNORE_BATTERY_OPTIMIZATIONS)
            .setData(Uri.fromParts("package", context.packageName, null))
            .addFlags(Intent.FLAG_ACTIVITY_NEW_TASK)
        context.startActivity(intent)
        call.resolve()
    }

    @PluginMethod
    override fun checkPermissions(call: PluginCall) {
        permissionsAnswered(call)
    }

    @PluginMethod
    override fun requestPermissions(call: PluginCall) {
        requestAllPermissions(call, "permissionsAnswered")
    }

    @PermissionCallback
    private fun permissionsAnswered(call: PluginCall) {
        val answer = JSObject()
        for (alias in listOf("microphone", "camera", "notifications", "bluetooth")) {
            answer.put(alias, getPermissionState(alias)?.toString() ?: PermissionState.PROMPT.toString())
        }
        call.resolve(answer)
    }

    /** JS names calls by the server's id; the core and Telecom by UUID. */
    /**
     * On the call's data channels; refused with the server's codes
     * (`permission_denied`, `message_too_large`, `bad_message`) or
     * `not_connected` (PROTOCOL.md "Data channels").
     */
    @PluginMethod
    fun sendData(call: PluginCall) {
        val id = call.getString("callId") ?: return call.reject("callId is required", "invalid_request")
        val payload = call.getString("payload") ?: return call.reject("payload is required", "invalid_request")
        val client = SwitchboardCalls.currentClient() ?: return call.reject("registerDevice first", "not_registered")
        val to = call.getArray("to", null)?.toList<String>()
        try {
            client.sendData(SwitchboardCalls.callUuid(id), payload, call.getBoolean("reliable", true) ?: true, to)
            call.resolve()
        } catch (e: ClientException.Refused) {
            call.reject(e.detail, e.code)
        } catch (e: Exception) {
            call.reject(e.message, "not_connected")
        }
    }

    private fun withCall(call: PluginCall, action: (dev.switchboard.core.Client, String) -> Unit) {
        val id = call.getString("callId") ?: return call.reject("callId is required", "invalid_request")
        val client = SwitchboardCalls.currentClient() ?: return call.reject("registerDevice first", "not_registered")
        action(client, SwitchboardCalls.callUuid(id))
        call.resolve()
    }

    private fun toJs(data: Map<String, Any?>): JSObject {
        val js = JSObject()
        for ((key, value) in data) {
            when (value) {
                is Map<*, *> -> js.put(key, toJs(value.entries.associate { it.key.toString() to it.value }))
                is List<*> -> js.put(key, JSArray(value.map { if (it is Map<*, *>) toJs(it.entries.associate { e -> e.key.toString() to e.value }) else it }))
                else -> js.put(key, value)
            }
        }
        return js
    }
}
