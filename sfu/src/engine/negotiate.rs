//! Tracks, subscriptions and the subscriber connection's negotiation (the
//! server is the only offerer there: one offer per input at most, carrying
//! every change the input made; one offer outstanding at a time, changes
//! made meanwhile wait for the answer).

use super::*;

impl Engine {
    pub(super) fn subscriber_answer(
        &mut self,
        conn: ConnId,
        key: ParticipantKey,
        sdp: &str,
        now: Instant,
    ) {
        let Some(sdp) = self.screen_remote_sdp(conn, key, PeerTarget::Subscriber, sdp) else {
            return;
        };
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.pending_offer.is_none() {
            self.error(
                conn,
                ErrorCode::InvalidSdp,
                "no subscriber offer is awaiting an answer",
            );
            return;
        }
        let answer = match SdpAnswer::from_sdp_string(&sdp) {
            Ok(a) => a,
            Err(e) => {
                self.error(
                    conn,
                    ErrorCode::InvalidSdp,
                    format!("answer does not parse: {}", sdp_error_text(e)),
                );
                return;
            }
        };
        let Some(pending) = p.pending_offer.take() else {
            return;
        };
        p.pending_offer_message = None;
        let Ok(result) = p
            .subscriber
            .guard(|rtc| rtc.sdp_api().accept_answer(pending, answer))
        else {
            self.fail_participant(key);
            return;
        };
        let mut opened = Vec::new();
        match result {
            Ok(()) => {
                for d in &mut p.down {
                    if let DownState::Negotiating(mid) = d.state {
                        d.state = DownState::Open(mid);
                        opened.push(d.track_key);
                    }
                }
                // Stopped m-lines are done; str0m may recycle them later.
                p.down
                    .retain(|d| !matches!(d.state, DownState::Stopping(_)));
            }
            Err(e) => {
                // The offer is gone; what it carried goes into the next one.
                for d in &mut p.down {
                    d.state = match d.state {
                        DownState::Negotiating(_) => DownState::ToOpen,
                        DownState::Stopping(m) => DownState::ToStop(m),
                        s => s,
                    };
                }
                self.error(conn, ErrorCode::InvalidSdp, format!("answer refused: {e}"));
            }
        }
        self.dirty.push((key, PeerTarget::Subscriber));
        // An ICE restart's new local credentials take effect with the
        // answer (str0m keeps the old ones until then): STUN from the
        // client's new candidates names the new ufrag.
        self.refresh_ufrag(key, PeerTarget::Subscriber);
        // New subscribers need a keyframe to start decoding. Before the
        // connection is up a keyframe would be wasted: that waits for
        // `Connected` instead.
        let connected = self
            .participants
            .get(&key)
            .is_some_and(|p| p.subscriber.rtc.is_connected());
        if connected {
            for track_key in opened {
                let layer = self.subscriber_layer(key, track_key, now);
                self.request_keyframe(key, track_key, layer, KeyframeRequestKind::Pli, now);
            }
        }
        self.offer_due(key);
    }

    /// `codec`: the negotiated one when known (else the first packet says).
    pub(super) fn add_track(
        &mut self,
        owner: ParticipantKey,
        mid: Mid,
        kind: MediaKind,
        codec: Option<String>,
    ) {
        if self.published_track(owner, mid).is_some() {
            return;
        }
        let Some(p) = self.participants.get(&owner) else {
            return;
        };
        let kind = match kind {
            MediaKind::Audio => TrackKind::Audio,
            MediaKind::Video => TrackKind::Video,
        };
        // Checked again here, where str0m says what it actually receives:
        // the offer check reads SDP as we understand it, str0m as it does.
        let owned = self.rooms.get(&p.room).map_or(0, |r| {
            r.tracks.values().filter(|t| t.owner == owner).count()
        });
        let refused = if !p.permissions.may_publish(kind) {
            Some((
                ErrorCode::PermissionDenied,
                format!("the call token does not allow publishing {kind:?}"),
            ))
        } else if owned >= self.config.max_tracks_per_participant {
            Some((
                ErrorCode::Capacity,
                format!(
                    "at most {} published tracks",
                    self.config.max_tracks_per_participant
                ),
            ))
        } else {
            None
        };
        if let Some((code, message)) = refused {
            tracing::warn!(participant = %p.id, user_id = %p.user_id, device_id = %p.device.device_id, platform = %p.device.platform, call_id = %p.room, ?kind, "media not published: {message}");
            if let Some(conn) = p.conn {
                self.error(conn, code, message);
            }
            return;
        }
        let track_key = self.next_track;
        self.next_track += 1;
        let track = Track {
            key: track_key,
            id: format!("TR_{}_{track_key}", self.config.shard),
            owner,
            mid,
            kind,
            muted: false,
            codec,
            subscribers: Vec::new(),
            layers: Layers::default(),
            last_keyframe_request: Vec::new(),
            told_qualities: None,
            last_packet_at: None,
            keyframe_pending: false,
            direct: None,
            remb_lift: None,
        };
        let info = track_info(&track, &p.id);
        let room_id = p.room.clone();
        tracing::info!(participant = %p.id, user_id = %p.user_id, device_id = %p.device.device_id, platform = %p.device.platform, call_id = %room_id, track = %track.id, ?kind, "track published");
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        room.tracks.insert(track_key, track);
        let auto: Vec<ParticipantKey> = room
            .members
            .iter()
            .copied()
            .filter(|m| *m != owner)
            .filter(|m| {
                self.participants
                    .get(m)
                    .is_some_and(|p| p.auto_subscribe && p.permissions.subscribe)
            })
            .collect();
        self.broadcast(
            &room_id,
            Some(owner),
            ServerMessage::TrackPublished { track: info },
        );
        for sub in &auto {
            self.add_subscription(*sub, track_key);
        }
        self.subscriptions_changed(&room_id);
        for sub in auto {
            self.offer_due(sub);
        }
    }

    pub(super) fn remove_track(&mut self, owner: ParticipantKey, track_key: u64) {
        let Some(p) = self.participants.get(&owner) else {
            return;
        };
        let (room_id, participant_id) = (p.room.clone(), p.id.clone());
        let (user_id, device) = (p.user_id.clone(), p.device.clone());
        let Some(track) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.tracks.remove(&track_key))
        else {
            return;
        };
        tracing::info!(participant = %participant_id, user_id = %user_id, device_id = %device.device_id, platform = %device.platform, call_id = %room_id, track = %track.id, "track unpublished");
        for sub in &track.subscribers {
            self.drop_subscription(*sub, track_key);
            self.offer_due(*sub);
        }
        self.broadcast(
            &room_id,
            Some(owner),
            ServerMessage::TrackUnpublished {
                track_id: track.id,
                participant_id,
            },
        );
    }

    pub(super) fn add_subscription(&mut self, subscriber: ParticipantKey, track_key: u64) {
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&p.room) else {
            return;
        };
        let Some(track) = room.tracks.get_mut(&track_key) else {
            return;
        };
        if track.owner == subscriber || track.subscribers.contains(&subscriber) {
            return;
        }
        track.subscribers.push(subscriber);
        let publisher_id = self
            .participants
            .get(&track.owner)
            .map(|o| o.id.clone())
            .unwrap_or_default();
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        p.down.push(DownTrack {
            track_key,
            track_id: track.id.clone(),
            publisher_id,
            kind: track.kind,
            state: DownState::ToOpen,
            stream: DownStream::default(),
            pts: Default::default(),
            cap: None,
            paused: false,
        });
    }

    pub(super) fn drop_subscription(&mut self, subscriber: ParticipantKey, track_key: u64) {
        let Some(p) = self.participants.get_mut(&subscriber) else {
            return;
        };
        if let Some(track) = self
            .rooms
            .get_mut(&p.room)
            .and_then(|r| r.tracks.get_mut(&track_key))
        {
            track.subscribers.retain(|s| *s != subscriber);
        }
        if let Some(down) = p.down_by_track(track_key) {
            down.state = match down.state {
                DownState::ToOpen => {
                    p.down.retain(|d| d.track_key != track_key);
                    return;
                }
                DownState::Negotiating(m) | DownState::Open(m) => DownState::ToStop(m),
                s => s,
            };
        }
    }

    /// Asks for a subscriber offer at the end of this input: every change
    /// made until then goes into that one offer.
    pub(super) fn offer_due(&mut self, key: ParticipantKey) {
        if !self.offers_due.contains(&key) {
            self.offers_due.push(key);
        }
    }

    /// Sends the next subscriber offer if something changed and no offer is
    /// outstanding (one offer at a time; changes made meanwhile wait for it).
    pub(super) fn negotiate_subscriber(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        // A poisoned connection is never touched again (its participant is
        // on its way out).
        if p.pending_offer.is_some() || p.subscriber.poisoned {
            return;
        }
        let first = !p.subscriber.was_offered;
        let mut api = p.subscriber.rtc.sdp_api();
        if first {
            // Also brings the connection up with nothing to receive yet.
            p.data.add_to_offer(&mut api);
        }
        for d in &mut p.down {
            match d.state {
                DownState::ToOpen => {
                    let kind = match d.kind {
                        TrackKind::Audio => MediaKind::Audio,
                        TrackKind::Video => MediaKind::Video,
                    };
                    let mid = api.add_media(
                        kind,
                        Direction::SendOnly,
                        Some(d.publisher_id.clone()),
                        Some(d.track_id.clone()),
                        None,
                    );
                    d.state = DownState::Negotiating(mid);
                }
                DownState::ToStop(mid) => {
                    api.stop_media(mid);
                    d.state = DownState::Stopping(mid);
                    // Its stream on the own egress ends (its SSRC is never
                    // sealed under again).
                    if let Some(egress) = p
                        .subscriber
                        .own
                        .as_mut()
                        .and_then(|own| own.egress.as_deref_mut())
                    {
                        egress.retire_mid(mid);
                    }
                }
                _ => {}
            }
        }
        let restart = std::mem::take(&mut p.ice_restart);
        if restart {
            api.ice_restart(true);
        }
        let Some((offer, pending)) = api.apply() else {
            return;
        };
        p.subscriber.was_offered = true;
        let tracks = p
            .down
            .iter()
            .filter_map(|d| match d.state {
                DownState::Negotiating(mid) | DownState::Open(mid) => Some(TrackMid {
                    mid: mid.to_string(),
                    track_id: d.track_id.clone(),
                }),
                _ => None,
            })
            .collect();
        let message = ServerMessage::SubscriberOffer {
            sdp: offer.to_sdp_string(),
            tracks,
        };
        p.pending_offer = Some(pending);
        p.pending_offer_message = Some(message.clone());
        if let Some(conn) = p.conn {
            self.send(conn, message);
        }
        self.dirty.push((key, PeerTarget::Subscriber));
    }
}

/// str0m's SDP parse errors quote the parser's position as a pointer into
/// our memory (`at PointerOffset(0x7f..)`): clients get what was wrong
/// (expected and found tokens, on one line), never the address.
pub(super) fn sdp_error_text(error: impl std::fmt::Display) -> String {
    let text = error.to_string();
    let mut kept = String::with_capacity(text.len());
    let mut rest = text.as_str();
    while let Some(at) = rest.find(" at PointerOffset(") {
        kept.push_str(&rest[..at]);
        rest = rest[at..].split_once(')').map_or("", |(_, after)| after);
    }
    kept.push_str(rest);
    let lines: Vec<&str> = kept
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    lines.join("; ")
}

#[cfg(test)]
mod sdp_error_tests {
    use super::sdp_error_text;

    #[test]
    fn parse_errors_lose_the_pointer_and_keep_what_was_expected() {
        let e = "SDP parse: Parse error at PointerOffset(0x7fab04033935)\nUnexpected `n`\nExpected `o`\nsdp line\n";
        assert_eq!(
            sdp_error_text(e),
            "SDP parse: Parse error; Unexpected `n`; Expected `o`; sdp line"
        );
        assert_eq!(sdp_error_text("no media"), "no media");
    }
}
