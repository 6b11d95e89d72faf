//! Commands from signaling sessions: join, resume, publish and the rest.
//! Each validates fully before it changes anything, so bad input gets a typed
//! error and leaves the room as it was.

use super::*;

impl Engine {
    pub(super) fn handle_command(&mut self, conn: ConnId, command: Command, now: Instant) {
        let key = self.conns.get(&conn).copied();
        match (command, key) {
            (Command::Join(request), None) => self.join(conn, request, now),
            (
                Command::Resume {
                    room,
                    user_id,
                    participant_id,
                },
                None,
            ) => self.resume(conn, &room, &user_id, &participant_id, now),
            (Command::Join(_) | Command::Resume { .. }, Some(_)) => self.error(
                conn,
                ErrorCode::AlreadyJoined,
                "this connection already joined",
            ),
            (Command::Detach, None) => {}
            (_, None) => self.error(conn, ErrorCode::NotJoined, "join first"),
            (Command::Publish { sdp }, Some(key)) => self.publish(conn, key, &sdp, now),
            (Command::Unpublish { track_id }, Some(key)) => self.unpublish(conn, key, &track_id),
            (Command::SubscriberAnswer { sdp }, Some(key)) => {
                self.subscriber_answer(conn, key, &sdp, now)
            }
            (Command::Trickle { target, candidate }, Some(key)) => {
                self.trickle(conn, key, target, &candidate)
            }
            (Command::Subscribe { track_ids }, Some(key)) => self.subscribe(conn, key, &track_ids),
            (Command::Unsubscribe { track_ids }, Some(key)) => {
                self.unsubscribe(conn, key, &track_ids)
            }
            (Command::Mute { track_id, muted }, Some(key)) => {
                self.mute(conn, key, &track_id, muted)
            }
            (
                Command::UpdateSubscription {
                    request: Err(why), ..
                },
                Some(_),
            ) => self.error(conn, ErrorCode::BadMessage, why),
            (
                Command::UpdateSubscription {
                    track_id,
                    request: Ok(request),
                },
                Some(key),
            ) => self.update_subscription(conn, key, &track_id, request, now),
            (Command::RestartIce, Some(key)) => {
                if let Some(p) = self.participants.get_mut(&key) {
                    p.ice_restart = true;
                }
                self.offer_due(key);
            }
            (Command::Leave, Some(key)) => self.remove_participant(key, LeaveReason::Left, now),
            (Command::Detach, Some(key)) => {
                self.conns.remove(&conn);
                if let Some(p) = self.participants.get_mut(&key)
                    && p.conn == Some(conn)
                {
                    p.conn = None;
                }
                self.update_presence(key, now);
            }
        }
    }

    pub(super) fn join(&mut self, conn: ConnId, request: JoinRequest, now: Instant) {
        let JoinRequest {
            room: room_id,
            user_id,
            participant_id,
            permissions,
            auto_subscribe,
            device,
        } = request;
        let (device_id, platform) = (device.device_id.clone(), device.platform.clone());
        // The same participant joining again replaces its old session.
        let existing = self.find_participant(&room_id, &participant_id);
        if self.draining && !self.rooms.contains_key(&room_id) {
            // A call already carried here (its callee answering, a member
            // rejoining) still joins; a new one goes to another node.
            self.error(
                conn,
                ErrorCode::Draining,
                "this server is shutting down and opens no new rooms",
            );
            return;
        }
        let members = self.rooms.get(&room_id).map_or(0, |r| r.members.len());
        if existing.is_none() && members >= self.config.max_participants_per_room {
            self.error(conn, ErrorCode::Capacity, "the room is full");
            return;
        }
        if let Some(old) = existing {
            self.remove_participant(old, LeaveReason::Replaced, now);
        }

        let key = ParticipantKey(self.next_key);
        self.next_key += 1;
        let publisher = self.new_peer(key, PeerTarget::Publisher, now);
        let subscriber = self.new_peer(key, PeerTarget::Subscriber, now);
        let participant = Participant {
            key,
            id: participant_id.clone(),
            user_id: user_id.clone(),
            room: room_id.clone(),
            device,
            permissions,
            auto_subscribe,
            downlink: None,
            downlink_lowered_at: None,
            data: super::data::DataChannels::new(now),
            conn: Some(conn),
            publisher,
            subscriber,
            down: Vec::new(),
            pending_offer: None,
            pending_offer_message: None,
            ice_restart: false,
            state: ParticipantState::Active,
            grace_deadline: None,
            media_deadline: Some(now + self.config.media_deadline),
            joined_at: now,
            first_forward_recorded: false,
        };
        let info = participant_info(&participant, &[]);
        self.participants.insert(key, participant);
        self.timers.schedule(
            now + self.config.media_deadline,
            key,
            TimerKind::MediaDeadline,
        );
        self.conns.insert(conn, key);
        let room = self.rooms.entry(room_id.clone()).or_insert_with(Room::new);
        let others: Vec<ParticipantInfo> = room
            .members
            .iter()
            .filter_map(|m| self.participants.get(m))
            .map(|p| participant_info(p, &room_tracks_of(room, p)))
            .collect();
        room.members.push(key);
        tracing::info!(participant = %participant_id, user_id = %user_id, device_id = %device_id, platform = %platform, call_id = %room_id, "joined");

        self.send(
            conn,
            ServerMessage::Joined {
                protocol_version: signaling::PROTOCOL_VERSION,
                room_id: room_id.clone(),
                participant_id,
                user_id,
                permissions,
                participants: others,
                reconnect_grace_seconds: self.config.reconnect_grace.as_secs() as u32,
            },
        );
        self.broadcast(
            &room_id,
            Some(key),
            ServerMessage::ParticipantJoined { participant: info },
        );
        if auto_subscribe && permissions.subscribe {
            let existing: Vec<u64> = self
                .rooms
                .get(&room_id)
                .map(|r| r.tracks.keys().copied().collect())
                .unwrap_or_default();
            for track_key in existing {
                self.add_subscription(key, track_key);
            }
        }
        self.subscriptions_changed(&room_id);
        // Always offer at join: the subscriber connection comes up now (with
        // a data channel if there is nothing to receive yet), so tracks
        // published later start flowing without waiting for ICE and DTLS.
        self.offer_due(key);
    }

    pub(super) fn resume(
        &mut self,
        conn: ConnId,
        room_id: &str,
        user_id: &str,
        participant_id: &str,
        now: Instant,
    ) {
        let Some(key) = self.find_participant(room_id, participant_id) else {
            self.error(conn, ErrorCode::NotJoined, "no such participant to resume");
            return;
        };
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        if p.user_id != user_id {
            self.error(
                conn,
                ErrorCode::PermissionDenied,
                "participant belongs to another user",
            );
            return;
        }
        let old = p.conn.replace(conn);
        let permissions = p.permissions;
        let device = p.device.clone();
        let resend = p.pending_offer_message.clone();
        self.conns.insert(conn, key);
        if let Some(old) = old.filter(|o| *o != conn) {
            self.conns.remove(&old);
            self.send(
                old,
                ServerMessage::Left {
                    reason: LeaveReason::Replaced,
                },
            );
            self.outputs
                .push_back(Output::Event(Event::ConnClosed { conn: old }));
        }
        // find_participant found it in this room, so the room exists.
        let Some(room) = self.rooms.get(room_id) else {
            return;
        };
        let others: Vec<ParticipantInfo> = room
            .members
            .iter()
            .filter(|m| **m != key)
            .filter_map(|m| self.participants.get(m))
            .map(|p| participant_info(p, &room_tracks_of(room, p)))
            .collect();
        self.send(
            conn,
            ServerMessage::Joined {
                protocol_version: signaling::PROTOCOL_VERSION,
                room_id: room_id.to_string(),
                participant_id: participant_id.to_string(),
                user_id: user_id.to_string(),
                permissions,
                participants: others,
                reconnect_grace_seconds: self.config.reconnect_grace.as_secs() as u32,
            },
        );
        // An offer sent to the old socket may never have been seen.
        if let Some(offer) = resend {
            self.send(conn, offer);
        }
        // Nor what was wanted of its video (dynacast): said again.
        if let Some(room) = self.rooms.get_mut(room_id) {
            for track in room.tracks.values_mut().filter(|t| t.owner == key) {
                track.told_qualities = None;
            }
        }
        self.subscriptions_changed(room_id);
        tracing::info!(participant = %participant_id, user_id = %user_id, device_id = %device.device_id, platform = %device.platform, call_id = %room_id, "resumed");
        self.update_presence(key, now);
    }

    pub(super) fn publish(&mut self, conn: ConnId, key: ParticipantKey, sdp: &str, now: Instant) {
        let Some(sdp) = self.screen_remote_sdp(conn, key, PeerTarget::Publisher, sdp) else {
            return;
        };
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let sends = offered_sends(&sdp);
        if let Some(refused) = sends.iter().find(|s| !p.permissions.may_publish(s.kind)) {
            let message = format!(
                "the call token does not allow publishing {:?}",
                refused.kind
            );
            self.error(conn, ErrorCode::PermissionDenied, message);
            return;
        }
        if sends.len() > self.config.max_tracks_per_participant {
            let message = format!(
                "at most {} published tracks",
                self.config.max_tracks_per_participant
            );
            self.error(conn, ErrorCode::Capacity, message);
            return;
        }
        let offer = match SdpOffer::from_sdp_string(&sdp) {
            Ok(offer) => offer,
            Err(e) => {
                self.error(
                    conn,
                    ErrorCode::InvalidSdp,
                    format!("offer does not parse: {}", negotiate::sdp_error_text(e)),
                );
                return;
            }
        };
        let answer = match p.publisher.guard(|rtc| rtc.sdp_api().accept_offer(offer)) {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => {
                self.error(conn, ErrorCode::InvalidSdp, format!("offer refused: {e}"));
                return;
            }
            Err(RtcPanicked) => {
                self.fail_participant(key);
                return;
            }
        };
        // The tracks the answer accepts exist now, so the answer lists them
        // (the client needs their ids to mute or unpublish): str0m says
        // MediaAdded only once media can flow, which for a first publish is
        // after this answer has reached the client. Its later MediaAdded
        // finds them made.
        for line in answer.media_lines.iter() {
            let receives = matches!(line.direction(), Direction::RecvOnly | Direction::SendRecv);
            if line.disabled || !line.typ.is_media() || !receives {
                continue;
            }
            // The first format is the one the client will send.
            let Some(format) = line.rtp_params().into_iter().next() else {
                continue;
            };
            let codec = format.spec().codec;
            let kind = if codec.is_audio() {
                MediaKind::Audio
            } else {
                MediaKind::Video
            };
            self.add_track(key, line.mid(), kind, Some(codec.to_string()));
        }
        self.dirty.push((key, PeerTarget::Publisher));
        // An offer that restarts ICE gives our side new credentials too.
        self.refresh_ufrag(key, PeerTarget::Publisher);
        // Drain now: MediaAdded creates any track the lines above did not.
        self.settle(now);
        let tracks = self.tracks_of(key);
        self.send(
            conn,
            ServerMessage::PublishAnswer {
                sdp: answer.to_sdp_string(),
                tracks,
            },
        );
    }

    pub(super) fn unpublish(&mut self, conn: ConnId, key: ParticipantKey, track_id: &str) {
        match self.owned_track(key, track_id) {
            Some(track_key) => self.remove_track(key, track_key),
            None => self.error(
                conn,
                ErrorCode::UnknownTrack,
                format!("you publish no track {track_id}"),
            ),
        }
    }

    pub(super) fn trickle(
        &mut self,
        conn: ConnId,
        key: ParticipantKey,
        target: PeerTarget,
        candidate: &str,
    ) {
        let candidate = candidate.trim();
        if candidate.is_empty() {
            return; // end-of-candidates
        }
        let max_ufrag = self.max_remote_ufrag(key, target);
        let bare = candidate.strip_prefix("a=").unwrap_or(candidate);
        if let Err(e) = ice_credentials::check_candidate(bare, max_ufrag) {
            self.error(conn, ErrorCode::InvalidCandidate, e);
            return;
        }
        let parsed = match Candidate::from_sdp_string(candidate) {
            Ok(c) => c,
            Err(e) => {
                self.error(conn, ErrorCode::InvalidCandidate, format!("{e}"));
                return;
            }
        };
        if let Some(p) = self.participants.get_mut(&key) {
            let peer = p.peer_mut(target);
            match peer
                .remote_candidates
                .admit(candidate, self.config.deny_private_candidates)
            {
                Ok(true) => {}
                Ok(false) => return, // an address never checked: dropped
                Err(e) => {
                    self.error(conn, ErrorCode::InvalidCandidate, e);
                    return;
                }
            }
            let added = peer.guard(|rtc| rtc.add_remote_candidate(parsed));
            if added.is_err() {
                self.fail_participant(key);
            }
            self.dirty.push((key, target));
        }
    }

    pub(super) fn subscribe(&mut self, conn: ConnId, key: ParticipantKey, track_ids: &[String]) {
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        if !p.permissions.subscribe {
            self.error(
                conn,
                ErrorCode::PermissionDenied,
                "the call token does not allow subscribing",
            );
            return;
        }
        let Some(keys) = self.room_tracks_by_id(key, track_ids, conn) else {
            return;
        };
        for track_key in keys {
            self.add_subscription(key, track_key);
        }
        self.subscriptions_changed_for(key);
        self.offer_due(key);
    }

    pub(super) fn unsubscribe(&mut self, conn: ConnId, key: ParticipantKey, track_ids: &[String]) {
        let Some(keys) = self.room_tracks_by_id(key, track_ids, conn) else {
            return;
        };
        for track_key in keys {
            self.drop_subscription(key, track_key);
        }
        self.subscriptions_changed_for(key);
        self.offer_due(key);
    }

    /// The layer a subscriber wants of a track it receives; the switch
    /// happens at that layer's next keyframe (asked for with the next packet).
    pub(super) fn update_subscription(
        &mut self,
        conn: ConnId,
        key: ParticipantKey,
        track_id: &str,
        request: LayerRequest,
        now: Instant,
    ) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let down = p.down.iter_mut().find(|d| {
            d.track_id == track_id
                && matches!(
                    d.state,
                    DownState::ToOpen | DownState::Negotiating(_) | DownState::Open(_)
                )
        });
        let Some(down) = down else {
            self.error(
                conn,
                ErrorCode::UnknownTrack,
                format!("you are not subscribed to track {track_id}"),
            );
            return;
        };
        if down.stream.request != request {
            tracing::debug!(participant = %p.id, user_id = %p.user_id, call_id = %p.room, track = %track_id, ?request, "subscription quality changed");
            down.stream.request = request;
            let room_id = p.room.clone();
            self.subscriptions_changed(&room_id);
            self.allocate_downlink(key, now);
        }
    }

    pub(super) fn mute(&mut self, conn: ConnId, key: ParticipantKey, track_id: &str, muted: bool) {
        let Some(track_key) = self.owned_track(key, track_id) else {
            self.error(
                conn,
                ErrorCode::UnknownTrack,
                format!("you publish no track {track_id}"),
            );
            return;
        };
        let Some(p) = self.participants.get(&key) else {
            return;
        };
        let (room_id, participant_id) = (p.room.clone(), p.id.clone());
        if let Some(track) = self
            .rooms
            .get_mut(&room_id)
            .and_then(|r| r.tracks.get_mut(&track_key))
        {
            track.muted = muted;
            // The muted stretch is no gap in the stream.
            track.last_packet_at = None;
        }
        self.broadcast(
            &room_id,
            Some(key),
            ServerMessage::TrackMuted {
                track_id: track_id.to_string(),
                participant_id,
                muted,
            },
        );
    }
}
