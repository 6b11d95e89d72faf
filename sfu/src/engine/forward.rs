//! Forwarding: a publisher's RTP packet to each subscriber (or, on the 1:1
//! fast path, to the one peer), keyframe requests back to publishers, and the
//! 1:1 bandwidth-estimate feedback.

use std::cmp::Ordering;

use str0m::format::Codec;
use str0m::media::Rids;
use str0m::rtp::Vp8Descriptor;

use super::egress::{OwnCopy, OwnSent};
use super::keyframe::starts_keyframe;
use super::room::{REMB_LIFT_INTERVAL, RembLift, Sample};
use super::simulcast::{Incoming, Level, LiveLayers};
use super::vp8;
use super::*;

impl Engine {
    pub(super) fn forward(
        &mut self,
        publisher: ParticipantKey,
        mid: Mid,
        rid: Option<Rid>,
        params: Option<PayloadParams>,
        pkt: &RtpPacket,
        now: Instant,
    ) {
        let Some(track_key) = self.published_track(publisher, mid) else {
            return;
        };
        let is_vp8 = params.is_some_and(|p| p.spec().codec == Codec::Vp8);
        let temporal = is_vp8.then(|| vp8::temporal(&pkt.payload)).flatten();
        let sample = Sample {
            bytes: pkt.payload.len(),
            timestamp: pkt.header.timestamp,
            temporal: temporal.map(|t| t.id),
            size: is_vp8.then(|| vp8::keyframe_size(&pkt.payload)).flatten(),
        };
        let Some((layer, layers, keyframe_pending)) =
            self.observe_layer(publisher, track_key, mid, rid, sample, now)
        else {
            return;
        };
        if keyframe_pending {
            // The stream exists now: ask for what subscribers waited for.
            self.request_keyframe(publisher, track_key, layer, KeyframeRequestKind::Pli, now);
        }
        let Some(p) = self.participants.get(&publisher) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&p.room) else {
            return;
        };
        let Some(track) = room.tracks.get_mut(&track_key) else {
            return;
        };
        if track.codec.is_none() {
            track.codec = params.map(|c| c.spec().codec.to_string());
        }
        if let Some(last) = track.last_packet_at.replace(now) {
            let gap = now.saturating_duration_since(last);
            let paused = track.told_qualities.as_ref().is_some_and(Vec::is_empty);
            if gap >= STREAM_GAP
                && !track.muted
                && !paused
                && self.stream_gaps.len() < MAX_HELD_GAPS
            {
                self.stream_gaps.push(StreamGap {
                    call_id: p.room.clone(),
                    participant_id: p.id.clone(),
                    track_id: track.id.clone(),
                    kind: track.kind,
                    gap,
                });
            }
        }
        // An unmuted voice's level: who is speaking (RFC 6464; absent when
        // the client did not negotiate it). Told to the room in place: the
        // room and publisher stay borrowed for the forwarding below.
        if let (TrackKind::Audio, Some(dbov), false) =
            (track.kind, pkt.header.ext_vals.audio_level, track.muted)
            && let Some(order) = room.speakers.observe(publisher, &p.id, dbov, now)
        {
            let speakers: Vec<SpeakerInfo> = order
                .into_iter()
                .map(|(participant_id, level)| SpeakerInfo {
                    participant_id,
                    level,
                })
                .collect();
            for member in &room.members {
                if let Some(conn) = self.participants.get(member).and_then(|m| m.conn) {
                    let message = ServerMessage::SpeakersChanged {
                        speakers: speakers.clone(),
                    };
                    self.outputs
                        .push_back(Output::Event(Event::Message { conn, message }));
                }
            }
        }
        let Some(params) = params else { return };
        let kind = track.kind;
        let spec = params.spec();
        let vp8 = match spec.codec {
            Codec::Vp8 => Vp8Descriptor::parse(&pkt.payload).ok(),
            _ => None,
        };
        let keyframe = match &vp8 {
            Some(descriptor) => Some(descriptor.starts_keyframe(&pkt.payload)),
            None => starts_keyframe(spec.codec, &pkt.payload),
        };
        let incoming = Incoming {
            layer,
            seq: pkt.seq_no,
            timestamp: pkt.header.timestamp,
            keyframe,
            vp8: vp8.as_ref(),
            temporal,
            clock_rate: spec.clock_rate.get(),
        };
        let packet = Packet {
            track_key,
            kind,
            params,
            pkt,
            incoming,
            layers,
        };
        if let Some(direct) = track.direct {
            self.write_down(direct, &packet, now);
            return;
        }
        // Take the list out so subscribers can be borrowed mutably; put back after.
        let subscribers = std::mem::take(&mut track.subscribers);
        for sub in &subscribers {
            self.write_down(*sub, &packet, now);
        }
        if let Some(track) = self
            .participants
            .get(&publisher)
            .and_then(|p| self.rooms.get_mut(&p.room))
            .and_then(|r| r.tracks.get_mut(&track_key))
        {
            track.subscribers = subscribers;
        }
    }

    /// Notes a packet of `rid` on a published track: its layer index, the
    /// track's layers as they stand, and whether a keyframe was wanted before
    /// the stream existed (taken: asked for now). `None`: no layer (a RID
    /// past the third, or none on a simulcast track).
    fn observe_layer(
        &mut self,
        publisher: ParticipantKey,
        track_key: u64,
        mid: Mid,
        rid: Option<Rid>,
        sample: Sample,
        now: Instant,
    ) -> Option<(usize, LiveLayers, bool)> {
        let p = self.participants.get(&publisher)?;
        let track = self.rooms.get_mut(&p.room)?.tracks.get_mut(&track_key)?;
        let listed = || match p.publisher.rtc.media(mid).map(|m| m.rids_rx()) {
            Some(Rids::Specific(rids)) => rids.clone(),
            _ => Vec::new(),
        };
        let before = (track.layers.last_seen.count, track.layers.last_seen.size);
        let layer = track.layers.observe(rid, listed, sample, now)?;
        let pending = std::mem::take(&mut track.keyframe_pending);
        let live = track.layers.last_seen;
        if before != (live.count, live.size) && track.kind == TrackKind::Video {
            // A new layer, or a layer's new size: what subscribers asking
            // by quality or size need of the publisher may differ now.
            let room_id = p.room.clone();
            self.subscriptions_changed(&room_id);
        }
        Some((layer, live, pending))
    }

    fn write_down(&mut self, subscriber: ParticipantKey, packet: &Packet, now: Instant) {
        let Packet {
            track_key,
            kind,
            params,
            pkt,
            incoming,
            layers,
        } = *packet;
        let Some(sub) = self.participants.get_mut(&subscriber) else {
            return;
        };
        let Some((down, mid)) = sub.down.iter_mut().find_map(|d| match d.state {
            DownState::Open(mid) if d.track_key == track_key => Some((d, mid)),
            _ => None,
        }) else {
            return;
        };
        let rtc = &mut sub.subscriber.rtc;
        let mut unmatched = false;
        let pt = down.pts.map(pkt.header.payload_type, || {
            let accepted = rtc.media(mid)?.remote_pts().to_vec();
            let pt = resolve_pt(rtc.codec_config(), &accepted, params);
            unmatched = pt.is_none();
            pt
        });
        let Some(pt) = pt else {
            if unmatched && let Some(conn) = sub.conn {
                // Said once (the map remembers the miss), not per packet.
                self.unsupported_codec(conn, subscriber, track_key, params);
            }
            return;
        };
        if down.paused {
            return;
        }
        if let Some(own) = &sub.subscriber.own
            && (own.egress.is_none() || own.route.is_none())
        {
            // Nothing can be sent yet: the stream does not move on (its
            // first packet is still a keyframe when it can).
            return;
        }
        let target = layers
            .target(down.stream.request, down.cap, now)
            .unwrap_or(Level::full(incoming.layer));
        let (was_on, was_temporal) = (down.stream.current(), down.stream.temporal());
        let forwarded = down.stream.on_packet(incoming, target, now);
        match (was_on, down.stream.current()) {
            (Some(from), Some(to)) if to > from => self.stats.layer_switches_up += 1,
            (Some(from), Some(to)) if to < from => self.stats.layer_switches_down += 1,
            (Some(from), Some(to)) if from == to && incoming.temporal.is_some() => {
                match down.stream.temporal().cmp(&was_temporal) {
                    Ordering::Greater => self.stats.temporal_switches_up += 1,
                    Ordering::Less => self.stats.temporal_switches_down += 1,
                    Ordering::Equal => {}
                }
            }
            _ => {}
        }
        let Some(out) = forwarded else {
            if down.stream.current() != Some(target.spatial) {
                // Waiting for the target layer's keyframe: ask (again, rate
                // limited per layer, in case the one asked for was lost).
                let layer = target.spatial;
                self.request_keyframe(subscriber, track_key, layer, KeyframeRequestKind::Pli, now);
            }
            return;
        };
        if sub.subscriber.own.is_some() {
            let mut patched = None;
            if let Some(d) = incoming.vp8
                && (out.picture_id.is_some_and(|p| Some(p) != d.picture_id())
                    || out.tl0_pic_idx.is_some_and(|t| Some(t) != d.tl0_pic_idx()))
            {
                let mut copy = pkt.payload.to_vec();
                vp8::rewrite(&mut copy, out.picture_id, out.tl0_pic_idx);
                patched = Some(copy);
            }
            let copy = OwnCopy {
                mid,
                pt: *pt,
                seq: *out.seq,
                timestamp: out.timestamp,
                kind,
                params,
                pkt,
                payload: patched.as_deref().unwrap_or(&pkt.payload),
            };
            match self.send_own(subscriber, copy, now) {
                OwnSent::Sent => self.stats.own_sent += 1,
                OwnSent::Dropped => {
                    self.stats.own_dropped += 1;
                    return;
                }
            }
            self.count_forwarded(subscriber, pkt.payload.len(), now);
            return;
        }
        let mut ext = pkt.header.ext_vals.clone();
        // These name the publisher's m-line and transport; str0m writes the subscriber's.
        ext.mid = None;
        ext.rid = None;
        ext.rid_repair = None;
        ext.transport_cc = None;
        let written = sub.subscriber.guard(|rtc| {
            let mut api = rtc.direct_api();
            let tx = api.stream_tx_by_mid(mid, None)?;
            let mut write = RtpWrite::new(
                pt,
                out.seq,
                out.timestamp,
                pkt.timestamp,
                pkt.payload.clone(),
            )
            .marker(pkt.header.marker)
            .ext_vals(ext)
            .nackable(kind == TrackKind::Video);
            if let Some(patch) = incoming.vp8.and_then(|d| out.vp8_patch(d)) {
                write = write.vp8_patch(patch);
            }
            tx.write_rtp(write);
            Some(())
        });
        match written {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(RtcPanicked) => {
                self.fail_participant(subscriber);
                return;
            }
        }
        self.count_forwarded(subscriber, pkt.payload.len(), now);
        self.dirty.push((subscriber, PeerTarget::Subscriber));
    }

    fn count_forwarded(&mut self, subscriber: ParticipantKey, bytes: usize, now: Instant) {
        self.stats.rtp_forwarded += 1;
        self.stats.rtp_forwarded_bytes += bytes as u64;
        let Some(sub) = self.participants.get_mut(&subscriber) else {
            return;
        };
        if !sub.first_forward_recorded {
            sub.first_forward_recorded = true;
            let elapsed = now.saturating_duration_since(sub.joined_at);
            self.outputs
                .push_back(Output::Event(Event::FirstForward(elapsed)));
        }
    }

    /// Tells a subscriber that a track cannot be forwarded to it.
    fn unsupported_codec(
        &mut self,
        conn: ConnId,
        subscriber: ParticipantKey,
        track_key: u64,
        params: PayloadParams,
    ) {
        let Some(p) = self.participants.get(&subscriber) else {
            return;
        };
        let track_id = self
            .rooms
            .get(&p.room)
            .and_then(|r| r.tracks.get(&track_key))
            .map_or_else(String::new, |t| t.id.clone());
        let codec = params.spec().codec;
        tracing::info!(participant = %p.id, user_id = %p.user_id, device_id = %p.device.device_id, platform = %p.device.platform, call_id = %p.room, track = %track_id, %codec, "no codec in common: track not forwarded");
        self.error(
            conn,
            ErrorCode::UnsupportedCodec,
            format!("track {track_id} ({codec}) has no codec in common with your subscriber connection: it is not forwarded"),
        );
    }

    pub(super) fn published_track(&self, publisher: ParticipantKey, mid: Mid) -> Option<u64> {
        let p = self.participants.get(&publisher)?;
        let room = self.rooms.get(&p.room)?;
        room.tracks
            .values()
            .find(|t| t.owner == publisher && t.mid == mid)
            .map(|t| t.key)
    }

    /// The layer of a track a subscriber is on, or should be on when it is
    /// on none yet (0 for a track without simulcast).
    pub(super) fn subscriber_layer(
        &self,
        subscriber: ParticipantKey,
        track_key: u64,
        now: Instant,
    ) -> usize {
        let Some(p) = self.participants.get(&subscriber) else {
            return 0;
        };
        let Some(down) = p.down.iter().find(|d| d.track_key == track_key) else {
            return 0;
        };
        let layers = self
            .rooms
            .get(&p.room)
            .and_then(|r| r.tracks.get(&track_key))
            .map(|t| t.layers.last_seen)
            .unwrap_or_default();
        down.stream
            .current()
            .or_else(|| {
                let target = layers.target(down.stream.request, down.cap, now);
                target.map(|t| t.spatial)
            })
            .unwrap_or(0)
    }

    /// Asks the publisher of a track for a keyframe of one layer, at most
    /// once per interval per layer.
    pub(super) fn request_keyframe(
        &mut self,
        requester: ParticipantKey,
        track_key: u64,
        layer: usize,
        kind: KeyframeRequestKind,
        now: Instant,
    ) {
        let Some(room_id) = self.participants.get(&requester).map(|p| p.room.clone()) else {
            return;
        };
        let Some(track) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.tracks.get_mut(&track_key))
        else {
            return;
        };
        if track.kind != TrackKind::Video {
            return;
        }
        let last = track.last_keyframe_request.get(layer).copied().flatten();
        if last.is_some_and(|t| {
            now.saturating_duration_since(t) < self.config.keyframe_request_interval
        }) {
            tracing::debug!(call_id = %room_id, track = %track.id, "keyframe request suppressed (rate limit)");
            return;
        }
        let (owner, mid, rid) = (track.owner, track.mid, track.layers.rid(layer));
        let Some(publisher) = self.participants.get_mut(&owner) else {
            return;
        };
        // The publisher's media is not up yet (tracks exist from its
        // publish on; str0m would not send the request before DTLS is up):
        // nothing is asked, so nothing is rate-limited; its first forwarded
        // packet asks (`forward`).
        let connected = publisher.publisher.rtc.is_connected();
        let mut api = publisher.publisher.rtc.direct_api();
        let Some(rx) = api.stream_rx_by_mid(mid, rid).filter(|_| connected) else {
            if let Some(track) = self
                .rooms
                .get_mut(&room_id)
                .and_then(|r| r.tracks.get_mut(&track_key))
            {
                track.keyframe_pending = true;
            }
            return;
        };
        rx.request_keyframe(kind);
        self.stats.keyframe_requests += 1;
        self.dirty.push((owner, PeerTarget::Publisher));
        if let Some(track) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.tracks.get_mut(&track_key))
        {
            tracing::debug!(call_id = %room_id, track = %track.id, layer, ?kind, "keyframe request to publisher");
            if track.last_keyframe_request.len() <= layer {
                track.last_keyframe_request.resize(layer + 1, None);
            }
            track.last_keyframe_request[layer] = Some(now);
        }
    }

    /// 1:1 fast path: what the receiver estimates its connection can take
    /// (its REMB) is what the publisher should send, as if the call were
    /// direct.
    ///
    /// Its receivers' estimates are also when a room's owed REMB lifts go
    /// out ([`Engine::lift_remb_caps`]): they arrive about every second
    /// from each subscriber.
    pub(super) fn feed_back_estimate(&mut self, subscriber: ParticipantKey, estimate: Bitrate) {
        let Some(room_id) = self.participants.get(&subscriber).map(|p| p.room.clone()) else {
            return;
        };
        self.lift_remb_caps(&room_id, self.now);
        let Some(room) = self.rooms.get(&room_id) else {
            return;
        };
        if !self.config.fast_path {
            return;
        }
        let Some(other) = room.peer_of(subscriber) else {
            return;
        };
        let mids: Vec<Mid> = room
            .tracks
            .values()
            .filter(|t| {
                t.owner == other && t.kind == TrackKind::Video && t.direct == Some(subscriber)
            })
            .map(|t| t.mid)
            .collect();
        let Some(publisher) = self.participants.get_mut(&other) else {
            return;
        };
        for mid in mids {
            if let Some(rx) = publisher
                .publisher
                .rtc
                .direct_api()
                .stream_rx_by_mid(mid, None)
            {
                rx.request_remb(estimate);
                self.stats.remb_relayed += 1;
            }
        }
        self.dirty.push((other, PeerTarget::Publisher));
    }

    /// Tells the publishers of a room's tracks that left the 1:1 fast path
    /// that their receiver limit is gone, as owed by `Track::remb_lift`: a
    /// REMB of 0, which libwebrtc takes for "no limit" (any other value
    /// would be a new cap, and a high one would let its start phase jump
    /// to it).
    pub(super) fn lift_remb_caps(&mut self, room_id: &str, now: Instant) {
        let Some(room) = self.rooms.get_mut(room_id) else {
            return;
        };
        let mut due = Vec::new();
        for track in room.tracks.values_mut() {
            let Some(lift) = track.remb_lift.filter(|l| l.due <= now) else {
                continue;
            };
            due.push((track.owner, track.mid));
            track.remb_lift = (lift.left > 1).then(|| RembLift {
                due: now + REMB_LIFT_INTERVAL,
                left: lift.left - 1,
            });
        }
        for (owner, mid) in due {
            let Some(publisher) = self.participants.get_mut(&owner) else {
                continue;
            };
            if let Some(rx) = publisher
                .publisher
                .rtc
                .direct_api()
                .stream_rx_by_mid(mid, None)
            {
                rx.request_remb(Bitrate::ZERO);
            }
            self.dirty.push((owner, PeerTarget::Publisher));
        }
    }
}

/// One published packet as every subscriber's copy is made from it: parsed
/// once, rewritten per subscriber.
#[derive(Clone, Copy)]
struct Packet<'a> {
    track_key: u64,
    kind: TrackKind,
    params: PayloadParams,
    pkt: &'a RtpPacket,
    incoming: Incoming<'a>,
    layers: LiveLayers,
}
