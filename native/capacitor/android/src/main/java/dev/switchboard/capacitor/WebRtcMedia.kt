// The core's media port on libwebrtc for Android (io.github.webrtc-sdk:
// android-prefixed, package livekit.org.webrtc, so it cannot clash with
// another WebRTC in the app): two peer connections as signaling/PROTOCOL.md
// has them, the microphone and the camera. The core calls these methods on
// its own threads and expects answers, so WebRTC's observers are awaited
// with a bounded wait.

package dev.switchboard.capacitor

import android.content.Context
import dev.switchboard.core.IceServer
import dev.switchboard.core.InboundStats
import dev.switchboard.core.MediaEvents
import dev.switchboard.core.MediaFactory
import dev.switchboard.core.MediaSession
import dev.switchboard.core.MediaStats
import dev.switchboard.core.PeerConnection as CorePeer
import dev.switchboard.core.PortException
import dev.switchboard.core.VideoLayer
import java.util.concurrent.CompletableFuture
import java.util.concurrent.Executors
import java.util.concurrent.TimeUnit
import livekit.org.webrtc.AudioTrack
import livekit.org.webrtc.Camera2Enumerator
import livekit.org.webrtc.CameraVideoCapturer
import livekit.org.webrtc.DataChannel
import livekit.org.webrtc.DefaultVideoDecoderFactory
import livekit.org.webrtc.DefaultVideoEncoderFactory
import livekit.org.webrtc.EglBase
import livekit.org.webrtc.IceCandidate
import livekit.org.webrtc.MediaConstraints
import livekit.org.webrtc.MediaStream
import livekit.org.webrtc.PeerConnection
import livekit.org.webrtc.PeerConnectionFactory
import livekit.org.webrtc.RTCStatsReport
import livekit.org.webrtc.RtpParameters
import livekit.org.webrtc.RtpReceiver
import livekit.org.webrtc.RtpTransceiver
import livekit.org.webrtc.SdpObserver
import livekit.org.webrtc.SessionDescription
import livekit.org.webrtc.SurfaceTextureHelper
import livekit.org.webrtc.VideoTrack

object WebRtcMedia {
    val egl: EglBase by lazy { EglBase.create() }
    private var factory: PeerConnectionFactory? = null
    /** Each call's session by server call id (camera switching, video views). */
    private val sessions = mutableMapOf<String, Session>()

    /** Front to back and back; the sent track stays, its camera changes. */
    fun switchCamera(callId: String) {
        synchronized(sessions) { sessions[callId] }?.switchCamera()
    }

    /** A call's video track for a view: `"local"` is the camera; a remote one by its subscriber mid. */
    fun videoTrack(callId: String, trackId: String, mid: String?): VideoTrack? {
        val session = synchronized(sessions) { sessions[callId] } ?: return null
        return if (trackId == "local") session.videoTrack else mid?.let { session.remoteVideo[it] }
    }

    internal fun opened(callId: String, session: Session) = synchronized(sessions) {
        sessions.values.removeAll { it.ended }
        sessions[callId] = session
    }

    @Synchronized
    fun factory(context: Context): MediaFactory {
        val pcFactory = factory ?: run {
            PeerConnectionFactory.initialize(
                PeerConnectionFactory.InitializationOptions.builder(context.applicationContext).createInitializationOptions(),
            )
            PeerConnectionFactory.builder()
                .setVideoEncoderFactory(DefaultVideoEncoderFactory(egl.eglBaseContext, true, true))
                .setVideoDecoderFactory(DefaultVideoDecoderFactory(egl.eglBaseContext))
                .createPeerConnectionFactory()
                .also { factory = it }
        }
        return Factory(context.applicationContext, pcFactory)
    }

    private class Factory(val context: Context, val factory: PeerConnectionFactory) : MediaFactory {
        override fun createSession(callId: String, video: Boolean, iceServers: List<IceServer>, events: MediaEvents): MediaSession =
            Session(context, factory, video, iceServers, events).also { WebRtcMedia.opened(callId, it) }
    }
}

/** The camera's simulcast encodings, lowest first: RID, scale-down, max bits/s (as the web client's). */
private val SIMULCAST = listOf(
    Triple("q", 4.0, 100_000),
    Triple("h", 2.0, 400_000),
    Triple("f", 1.0, 1_200_000),
)

/** The encoding a layer names among `count`, lowest first (PROTOCOL.md `qualityUpdate`). */
internal fun encodingIndex(layer: VideoLayer, count: Int): Int {
    val top = maxOf(0, count - 1)
    return when (layer) {
        VideoLayer.LOW -> 0
        VideoLayer.MEDIUM -> (top + 1) / 2
        VideoLayer.HIGH -> top
    }
}

internal class Session(
    context: Context,
    private val factory: PeerConnectionFactory,
    video: Boolean,
    iceServers: List<IceServer>,
    private val events: MediaEvents,
) : MediaSession {
    private val audio: AudioTrack = factory.createAudioTrack("audio", factory.createAudioSource(MediaConstraints()))
    /** The camera's track (the local preview of a video view). */
    var videoTrack: VideoTrack? = null
        private set
    private var capturer: CameraVideoCapturer? = null
    private val up = mutableSetOf<PeerConnection>()
    private var userMuted = false
    private var held = false
    /** Stats reads for the core's call reports, one at a time. */
    private val statsReader = Executors.newSingleThreadScheduledExecutor()
    @Volatile
    var ended = false
        private set
    private val publisher: PeerConnection
    private val subscriber: PeerConnection

    /** Remote video by subscriber mid, for a native renderer. */
    val remoteVideo = mutableMapOf<String, VideoTrack>()
    /** The server's data channels on the subscriber connection, by label. */
    private val dataChannels = java.util.concurrent.ConcurrentHashMap<String, DataChannel>()

    init {
        val config = PeerConnection.RTCConfiguration(
            iceServers.map { server ->
                PeerConnection.IceServer.builder(server.urls)
                    .setUsername(server.username ?: "")
                    .setPassword(server.credential ?: "")
                    .createIceServer()
            },
        ).apply {
            sdpSemantics = PeerConnection.SdpSemantics.UNIFIED_PLAN
            bundlePolicy = PeerConnection.BundlePolicy.MAXBUNDLE
            rtcpMuxPolicy = PeerConnection.RtcpMuxPolicy.REQUIRE
            continualGatheringPolicy = PeerConnection.ContinualGatheringPolicy.GATHER_CONTINUALLY
        }
        publisher = factory.createPeerConnection(config, Observer(CorePeer.PUBLISHER))
            ?: throw PortException.Failed("no publisher peer connection")
        subscriber = factory.createPeerConnection(config, Observer(CorePeer.SUBSCRIBER))
            ?: throw PortException.Failed("no subscriber peer connection")
        publisher.addTrack(audio, listOf("local"))
        if (video) {
            val enumerator = Camera2Enumerator(context)
            val front = enumerator.deviceNames.firstOrNull { enumerator.isFrontFacing(it) }
            if (front != null) {
                val source = factory.createVideoSource(false)
                val camera = enumerator.createCapturer(front, null)
                camera.initialize(SurfaceTextureHelper.create("camera", WebRtcMedia.egl.eglBaseContext), context, source.capturerObserver)
                camera.startCapture(1280, 720, 30)
                capturer = camera
                videoTrack = factory.createVideoTrack("video", source).also { track ->
                    // Simulcast, as the web client sends it: the server
                    // forwards each subscriber the layer that fits it.
                    val encodings = SIMULCAST.map { (rid, scale, maxBitrate) ->
                        RtpParameters.Encoding(rid, true, scale).apply { maxBitrateBps = maxBitrate }
                    }
                    val init = RtpTransceiver.RtpTransceiverInit(
                        RtpTransceiver.RtpTransceiverDirection.SEND_ONLY, listOf("local"), encodings,
                    )
                    publisher.addTransceiver(track, init)
                }
            }
        }
        readStats(afterMs = 250)
    }

    override fun createPublisherOffer(iceRestart: Boolean): String {
        val constraints = MediaConstraints().apply {
            if (iceRestart) mandatory.add(MediaConstraints.KeyValuePair("IceRestart", "true"))
        }
        val offer = await<SessionDescription> { done -> publisher.createOffer(Sdp(done), constraints) }
        await<Unit> { done -> publisher.setLocalDescription(Sdp(done), offer) }
        return offer.description
    }

    override fun applyPublisherAnswer(sdp: String) {
        val answer = SessionDescription(SessionDescription.Type.ANSWER, sdp)
        await<Unit> { done -> publisher.setRemoteDescription(Sdp(done), answer) }
    }

    override fun answerSubscriberOffer(sdp: String): String {
        val offer = SessionDescription(SessionDescription.Type.OFFER, sdp)
        await<Unit> { done -> subscriber.setRemoteDescription(Sdp(done), offer) }
        val answer = await<SessionDescription> { done -> subscriber.createAnswer(Sdp(done), MediaConstraints()) }
        await<Unit> { done -> subscriber.setLocalDescription(Sdp(done), answer) }
        return answer.description
    }

    override fun addRemoteCandidate(connection: CorePeer, candidate: String) {
        val pc = if (connection == CorePeer.PUBLISHER) publisher else subscriber
        pc.addIceCandidate(IceCandidate("0", 0, candidate))
    }

    override fun setMuted(muted: Boolean) {
        userMuted = muted
        audio.setEnabled(!userMuted && !held)
    }

    override fun setHeld(held: Boolean) {
        this.held = held
        audio.setEnabled(!userMuted && !held)
        subscriber.transceivers
            .filter { it.mediaType == livekit.org.webrtc.MediaStreamTrack.MediaType.MEDIA_TYPE_AUDIO }
            .forEach { it.receiver.track()?.setEnabled(!held) }
    }

    override fun setCameraEnabled(enabled: Boolean) {
        videoTrack?.setEnabled(enabled)
        if (enabled) capturer?.startCapture(1280, 720, 30) else capturer?.stopCapture()
    }

    /**
     * Dynacast: only the encodings someone receives stay on (none: the
     * camera sends nothing); layers keep their resolution when the CPU is
     * short, so a layer stays what a subscriber asked for.
     */
    override fun setVideoLayers(layers: List<VideoLayer>) {
        val sender = publisher.transceivers
            .firstOrNull { it.mediaType == livekit.org.webrtc.MediaStreamTrack.MediaType.MEDIA_TYPE_VIDEO }
            ?.sender ?: return
        val params = sender.parameters
        val wanted = layers.map { encodingIndex(it, params.encodings.size) }.toSet()
        params.encodings.forEachIndexed { i, encoding -> encoding.active = i in wanted }
        params.degradationPreference = RtpParameters.DegradationPreference.MAINTAIN_RESOLUTION
        if (!sender.setParameters(params)) throw PortException.Failed("the camera's encodings were not changed")
    }

    override fun sendData(reliable: Boolean, frame: String) {
        val label = if (reliable) "switchboard" else "switchboard-lossy"
        val channel = dataChannels[label]
        if (channel == null || channel.state() != DataChannel.State.OPEN) {
            throw PortException.Failed("data channel $label is not open")
        }
        val bytes = java.nio.ByteBuffer.wrap(frame.toByteArray(Charsets.UTF_8))
        if (!channel.send(DataChannel.Buffer(bytes, false))) {
            throw PortException.Failed("data channel $label refused the message")
        }
    }

    override fun stats(): MediaStats = MediaStats(
        up.size == 2, 0UL, 0UL, subscriber.receivers.count { it.track() != null }.toUInt(),
    )

    fun switchCamera() {
        capturer?.switchCamera(null)
    }

    /**
     * Reads the subscriber's stats and hands the totals to the core, which
     * says when to read again (often until the first audio and video
     * decode, then every 10 s): time to first audio and quality reports.
     */
    private fun readStats(afterMs: Long) {
        val read = Runnable {
            synchronized(this) {
                if (ended) return@Runnable
                subscriber.getStats { report ->
                    if (!ended) readStats(events.inboundStats(inboundTotals(report)).toLong())
                }
            }
        }
        statsReader.schedule(read, afterMs, TimeUnit.MILLISECONDS)
    }

    override fun endSession() {
        synchronized(this) { ended = true }
        statsReader.shutdownNow()
        capturer?.stopCapture()
        capturer?.dispose()
        publisher.dispose()
        subscriber.dispose()
    }

    private fun <T> await(start: ((Result<T>) -> Unit) -> Unit): T {
        val future = CompletableFuture<Result<T>>()
        start { future.complete(it) }
        val result = runCatching { future.get(10, TimeUnit.SECONDS) }
            .getOrElse { throw PortException.Failed("WebRTC did not answer in time") }
        return result.getOrElse { throw PortException.Failed(it.message ?: "WebRTC failed") }
    }

    private inner class Observer(val which: CorePeer) : PeerConnection.Observer {
        private fun pc() = if (which == CorePeer.PUBLISHER) publisher else subscriber

        override fun onIceConnectionChange(state: PeerConnection.IceConnectionState) {
            when (state) {
                PeerConnection.IceConnectionState.CONNECTED, PeerConnection.IceConnectionState.COMPLETED -> {
                    up.add(pc())
                    if (up.size == 2) events.connected()
                }
                PeerConnection.IceConnectionState.DISCONNECTED -> {
                    up.remove(pc())
                    events.disconnected()
                }
                PeerConnection.IceConnectionState.FAILED -> {
                    up.remove(pc())
                    events.failed()
                }
                else -> {}
            }
        }

        override fun onIceCandidate(candidate: IceCandidate) {
            events.localCandidate(which, candidate.sdp)
        }

        override fun onTrack(transceiver: RtpTransceiver) {
            val track = transceiver.receiver.track()
            if (track is VideoTrack) remoteVideo[transceiver.mid] = track
        }

        override fun onSignalingChange(state: PeerConnection.SignalingState) {}
        override fun onIceConnectionReceivingChange(receiving: Boolean) {}
        override fun onIceGatheringChange(state: PeerConnection.IceGatheringState) {}
        override fun onIceCandidatesRemoved(candidates: Array<out IceCandidate>) {}
        override fun onAddStream(stream: MediaStream) {}
        override fun onRemoveStream(stream: MediaStream) {}
        /** The server opens `switchboard` and `switchboard-lossy` (PROTOCOL.md "Data channels"). */
        override fun onDataChannel(channel: DataChannel) {
            if (which != CorePeer.SUBSCRIBER) return
            val label = channel.label()
            dataChannels[label] = channel
            channel.registerObserver(object : DataChannel.Observer {
                override fun onBufferedAmountChange(previousAmount: Long) {}
                override fun onStateChange() {}
                override fun onMessage(buffer: DataChannel.Buffer) {
                    if (buffer.binary) return
                    val bytes = ByteArray(buffer.data.remaining())
                    buffer.data.get(bytes)
                    // The core reads the server's {from, payload} and tells the app.
                    events.dataReceived(label, String(bytes, Charsets.UTF_8))
                }
            })
        }
        override fun onRenegotiationNeeded() {}
        override fun onAddTrack(receiver: RtpReceiver, streams: Array<out MediaStream>) {}
    }
}

/** One SDP callback as a Result. */
private class Sdp<T>(private val done: (Result<T>) -> Unit) : SdpObserver {
    @Suppress("UNCHECKED_CAST")
    override fun onCreateSuccess(description: SessionDescription) = done(Result.success(description as T))
    override fun onSetSuccess() = done(Result.success(Unit as T))
    override fun onCreateFailure(error: String) = done(Result.failure(IllegalStateException(error)))
    override fun onSetFailure(error: String) = done(Result.failure(IllegalStateException(error)))
}

/** The subscriber's inbound totals as the core reads them (`MediaEvents.inboundStats`). */
internal fun inboundTotals(report: RTCStatsReport): InboundStats {
    var totals = InboundStats(0uL, 0uL, false, 0L, 0uL, 0.0, null)
    for (stats in report.statsMap.values) {
        val number = { key: String -> stats.members[key] as? Number }
        when (stats.type) {
            "inbound-rtp" -> {
                val video = stats.members["kind"] == "video"
                totals = totals.copy(
                    audioSamplesReceived = totals.audioSamplesReceived +
                        (if (video) 0uL else (number("totalSamplesReceived")?.toLong() ?: 0L).toULong()),
                    videoFramesDecoded = totals.videoFramesDecoded +
                        (if (video) (number("framesDecoded")?.toLong() ?: 0L).toULong() else 0uL),
                    videoInbound = totals.videoInbound || video,
                    packetsLost = totals.packetsLost + (number("packetsLost")?.toLong() ?: 0L),
                    packetsReceived = totals.packetsReceived + (number("packetsReceived")?.toLong() ?: 0L).toULong(),
                    jitterMs = maxOf(totals.jitterMs, (number("jitter")?.toDouble() ?: 0.0) * 1000),
                )
            }
            "candidate-pair" -> if (stats.members["nominated"] == true) {
                number("currentRoundTripTime")?.let { totals = totals.copy(rttMs = it.toDouble() * 1000) }
            }
        }
    }
    return totals
}
