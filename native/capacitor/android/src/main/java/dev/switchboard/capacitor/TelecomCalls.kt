// Core-Telecom (androidx.core:core-telecom): each call the core reports is
// added to Telecom as a self-managed call; Telecom's answer, disconnect,
// active/inactive callbacks and its endpoint and mute flows go back to the
// core. When Telecom refuses or is missing (OEM bugs exist, and below
// API 26 Core-Telecom does not run: the manifest's overrideLibrary lets
// the plugin keep minSdk 24), the call still rings through
// CallNotifications alone.

package dev.switchboard.capacitor

import android.content.Context
import android.net.Uri
import android.os.Build
import android.telecom.DisconnectCause
import androidx.core.telecom.CallAttributesCompat
import androidx.core.telecom.CallControlScope
import androidx.core.telecom.CallEndpointCompat
import androidx.core.telecom.CallException
import androidx.core.telecom.CallsManager
import dev.switchboard.capacitor.core.CallAttributes
import dev.switchboard.capacitor.core.DisconnectCodes
import dev.switchboard.capacitor.core.Endpoint
import dev.switchboard.capacitor.core.endpoints
import dev.switchboard.core.EndedReason
import dev.switchboard.core.IncomingCall
import kotlinx.coroutines.CoroutineScope
import kotlinx.coroutines.Dispatchers
import kotlinx.coroutines.SupervisorJob
import kotlinx.coroutines.channels.Channel
import kotlinx.coroutines.flow.combine
import kotlinx.coroutines.launch

object TelecomCalls {
    private val scope = CoroutineScope(SupervisorJob() + Dispatchers.Default)
    private lateinit var manager: CallsManager

    /** What the core asks of a call Telecom holds, in order. */
    private sealed class Command {
        /** The user answered in the app's UI or the notification: Telecom must know. */
        data class Answer(val callType: Int) : Command()
        object Active : Command()
        data class Disconnect(val code: Int) : Command()
        data class Endpoint(val id: String) : Command()
    }

    private val commands = mutableMapOf<String, Channel<Command>>()
    private val available = java.util.concurrent.ConcurrentHashMap<String, List<CallEndpointCompat>>()
    private val callTypes = mutableMapOf<String, Int>()

    fun init(context: Context) {
        if (Build.VERSION.SDK_INT < Build.VERSION_CODES.O) return
        manager = CallsManager(context)
        manager.registerAppWithTelecom(
            CallsManager.CAPABILITY_BASELINE or CallsManager.CAPABILITY_SUPPORTS_VIDEO_CALLING,
        )
    }

    fun addIncoming(context: Context, call: IncomingCall) {
        // The ringing notification goes up first: it is the UI whether or
        // not Telecom takes the call.
        CallNotifications.incoming(context, call)
        val added = add(
            context, call.callUuid, call.callerName, call.handle, CallAttributes.DIRECTION_INCOMING, call.video,
            shown = { SwitchboardCalls.incomingShown(call) },
        )
        // Without Telecom (below API 26) the notification is the UI.
        if (!added) SwitchboardCalls.incomingShown(call)
    }

    /**
     * A call the app places: Telecom holds it too, so audio focus, the
     * audio endpoints (the core's routes) and Bluetooth / car controls
     * work as for an incoming one.
     */
    fun addOutgoing(context: Context, callUuid: String, callee: String, video: Boolean) {
        add(context, callUuid, callee, callee, CallAttributes.DIRECTION_OUTGOING, video, shown = {})
    }

    /** False when there is no Telecom to add to. */
    private fun add(
        context: Context,
        callUuid: String,
        name: String,
        handle: String,
        direction: Int,
        video: Boolean,
        shown: () -> Unit,
    ): Boolean {
        if (!::manager.isInitialized) return false
        val callType = CallAttributes.callType(video)
        val attributes = CallAttributesCompat(
            name, Uri.fromParts("switchboard", handle, null), direction, callType, CallAttributes.CAPABILITIES,
        )
        val inbox = Channel<Command>(Channel.UNLIMITED)
        synchronized(commands) {
            // One call, reported twice: its ring came over the events
            // socket, then FCM delivered the push too (the core reports
            // both: CallKit requires it). Telecom holds it once.
            if (callUuid in commands) return true
            commands[callUuid] = inbox
            callTypes[callUuid] = callType
        }
        scope.launch {
            try {
                manager.addCall(
                    attributes,
                    // Answered in the system's UI (a headset button, a watch).
                    onAnswer = { SwitchboardCalls.answered(context, callUuid, fromTelecom = true) },
                    onDisconnect = { SwitchboardCalls.currentClient()?.end(callUuid) },
                    onSetActive = { SwitchboardCalls.currentClient()?.setHeld(callUuid, false) },
                    onSetInactive = { SwitchboardCalls.currentClient()?.setHeld(callUuid, true) },
                ) {
                    shown()
                    follow(this, callUuid, inbox)
                }
            } catch (e: Exception) {
                // Telecom refused (or is broken on this OEM): the
                // notification rings on its own; the core is told it shows,
                // and the server's metrics hear why Telecom refused.
                SwitchboardCalls.currentClient()?.callUiError(callUuid, telecomCode(e))
                shown()
            }
        }
        return true
    }

    /**
     * Inside Telecom's call scope (its coroutines end with the call): its
     * flows to the core, the core's commands to Telecom.
     */
    private fun follow(call: CallControlScope, callUuid: String, inbox: Channel<Command>) {
        call.launch {
            call.availableEndpoints.combine(call.currentCallEndpoint) { all, current -> all to current }
                .collect { (all, current) ->
                    available[callUuid] = all
                    val routes = endpoints(all.map { Endpoint(it.type, it.name.toString(), it.identifier.toString()) })
                    SwitchboardCalls.audioRoutesChanged(routes, current.identifier.toString())
                }
        }
        call.launch {
            // Telecom's mute (a headset button, the system UI) to the core
            // and to the app's UI.
            call.isMuted.collect { muted ->
                SwitchboardCalls.currentClient()?.setMuted(callUuid, muted)
                SwitchboardCalls.emit("muteChanged", mapOf("callId" to SwitchboardCalls.ids.jsCallId(callUuid), "muted" to muted))
            }
        }
        call.launch {
            for (command in inbox) {
                when (command) {
                    is Command.Answer -> call.answer(command.callType)
                    Command.Active -> call.setActive()
                    is Command.Endpoint -> available[callUuid]
                        ?.firstOrNull { it.identifier.toString() == command.id }
                        ?.let { call.requestEndpointChange(it) }
                    is Command.Disconnect -> {
                        call.disconnect(DisconnectCause(command.code))
                        break
                    }
                }
            }
        }
    }

    /** Answered outside Telecom's UI: Telecom makes the call active. */
    fun answer(callUuid: String) {
        val (inbox, type) = synchronized(commands) { commands[callUuid] to callTypes[callUuid] }
        if (type != null) inbox?.trySend(Command.Answer(type))
    }

    fun setActive(callUuid: String) {
        synchronized(commands) { commands[callUuid] }?.trySend(Command.Active)
    }

    fun disconnect(callUuid: String, reason: EndedReason) {
        val inbox = synchronized(commands) {
            callTypes.remove(callUuid)
            commands.remove(callUuid)
        }
        available.remove(callUuid)
        inbox?.trySend(Command.Disconnect(DisconnectCodes.of(reason)))
    }

    fun requestEndpoint(id: String) {
        val inboxes = synchronized(commands) { commands.values.toList() }
        inboxes.forEach { it.trySend(Command.Endpoint(id)) }
    }
}

/** Telecom's refusal as the snake-case code the server counts (`telecom_error` reports). */
internal fun telecomCode(e: Exception): String = when (e) {
    is SecurityException -> "permission_denied"
    is CallException -> when (e.code) {
        CallException.ERROR_CANNOT_HOLD_CURRENT_ACTIVE_CALL -> "error_cannot_hold_current_active_call"
        CallException.ERROR_CALL_IS_NOT_BEING_TRACKED -> "error_call_is_not_being_tracked"
        CallException.ERROR_CALL_CANNOT_BE_SET_TO_ACTIVE -> "error_call_cannot_be_set_to_active"
        CallException.ERROR_CALL_NOT_PERMITTED_AT_PRESENT_TIME -> "error_call_not_permitted_at_present_time"
        CallException.ERROR_OPERATION_TIMED_OUT -> "error_operation_timed_out"
        CallException.ERROR_CALL_DOES_NOT_SUPPORT_HOLD -> "error_call_does_not_support_hold"
        CallException.ERROR_BLUETOOTH_DEVICE_IS_NULL -> "error_bluetooth_device_is_null"
        else -> "error_unknown"
    }
    else -> "error_unknown"
}
