//! Which remote tracks a call shows, from its media signaling: a track is
//! shown once the server published it (with its participant's user id)
//! *and* a subscriber offer mapped it to a transceiver `mid` (so the
//! platform's `onTrack` for that mid can be matched to a participant). The
//! server's messages change this piecewise; after a resume `joined` states
//! the whole room again. Sans-IO: server messages in, changes out.

use std::collections::{BTreeMap, HashMap};

use signaling::{ParticipantInfo, ServerMessage, StreamState, TrackInfo, TrackKind};

use crate::ports::RemoteTrack;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrackChange {
    Added(RemoteTrack),
    Removed {
        track_id: String,
    },
    Muted {
        track_id: String,
        muted: bool,
    },
    /// The server stopped (or started again) forwarding a video track the
    /// device's downlink cannot carry (`streamStateChanged`).
    Paused {
        track_id: String,
        paused: bool,
    },
}

#[derive(Debug, Default)]
pub struct RemoteTracks {
    /// participant id -> user id
    users: HashMap<String, String>,
    /// By track id: what the server published.
    published: HashMap<String, TrackInfo>,
    /// track id -> mid, from the latest subscriber offer.
    mids: HashMap<String, String>,
    /// What the app was told, by track id.
    shown: BTreeMap<String, RemoteTrack>,
}

impl RemoteTracks {
    pub fn on_message(&mut self, message: &ServerMessage) -> Vec<TrackChange> {
        match message {
            ServerMessage::Joined { participants, .. } => {
                // The whole room (again, after a resume).
                self.users.clear();
                self.published.clear();
                for participant in participants {
                    self.add_participant(participant);
                }
            }
            ServerMessage::ParticipantJoined { participant } => self.add_participant(participant),
            ServerMessage::ParticipantLeft { participant_id, .. } => {
                self.users.remove(participant_id);
                self.published
                    .retain(|_, t| &t.participant_id != participant_id);
            }
            ServerMessage::TrackPublished { track } => {
                self.published.insert(track.track_id.clone(), track.clone());
            }
            ServerMessage::TrackUnpublished { track_id, .. } => {
                self.published.remove(track_id);
            }
            ServerMessage::TrackMuted {
                track_id, muted, ..
            } => {
                if let Some(track) = self.published.get_mut(track_id) {
                    track.muted = *muted;
                }
            }
            ServerMessage::StreamStateChanged { track_id, state } => {
                let paused = match state {
                    StreamState::Paused => true,
                    StreamState::Active => false,
                    StreamState::Unknown => return Vec::new(),
                };
                if !self.shown.contains_key(track_id) {
                    return Vec::new();
                }
                return vec![TrackChange::Paused {
                    track_id: track_id.clone(),
                    paused,
                }];
            }
            ServerMessage::SubscriberOffer { tracks, .. } => {
                self.mids = tracks
                    .iter()
                    .map(|t| (t.track_id.clone(), t.mid.clone()))
                    .collect();
            }
            _ => return Vec::new(),
        }
        self.reconcile()
    }

    /// The user of a participant in the room (not this device's own).
    pub fn user_of(&self, participant_id: &str) -> Option<String> {
        self.users.get(participant_id).cloned()
    }

    fn add_participant(&mut self, participant: &ParticipantInfo) {
        self.users.insert(
            participant.participant_id.clone(),
            participant.user_id.clone(),
        );
        for track in &participant.tracks {
            self.published.insert(track.track_id.clone(), track.clone());
        }
    }

    /// What should be shown now against what was: removals first (a track
    /// that moved to another mid is removed, then added again).
    fn reconcile(&mut self) -> Vec<TrackChange> {
        let mut wanted: BTreeMap<String, RemoteTrack> = BTreeMap::new();
        for (track_id, track) in &self.published {
            let (Some(mid), Some(user_id)) = (
                self.mids.get(track_id),
                self.users.get(&track.participant_id),
            ) else {
                continue;
            };
            wanted.insert(
                track_id.clone(),
                RemoteTrack {
                    track_id: track_id.clone(),
                    participant_id: track.participant_id.clone(),
                    user_id: user_id.clone(),
                    video: track.kind == TrackKind::Video,
                    mid: mid.clone(),
                    muted: track.muted,
                },
            );
        }
        let mut changes = Vec::new();
        let mut added = Vec::new();
        for (track_id, old) in &self.shown {
            match wanted.get(track_id) {
                None => changes.push(TrackChange::Removed {
                    track_id: track_id.clone(),
                }),
                Some(new) if new.mid != old.mid || new.participant_id != old.participant_id => {
                    changes.push(TrackChange::Removed {
                        track_id: track_id.clone(),
                    });
                    added.push(TrackChange::Added(new.clone()));
                }
                Some(new) if new.muted != old.muted => changes.push(TrackChange::Muted {
                    track_id: track_id.clone(),
                    muted: new.muted,
                }),
                Some(_) => {}
            }
        }
        for (track_id, new) in &wanted {
            if !self.shown.contains_key(track_id) {
                added.push(TrackChange::Added(new.clone()));
            }
        }
        changes.extend(added);
        self.shown = wanted;
        changes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use signaling::{LeaveReason, ParticipantState, Permissions, TrackMid};

    fn track(id: &str, participant: &str, kind: TrackKind) -> TrackInfo {
        TrackInfo {
            track_id: id.into(),
            participant_id: participant.into(),
            kind,
            muted: false,
            codec: None,
        }
    }

    fn offer(mids: &[(&str, &str)]) -> ServerMessage {
        ServerMessage::SubscriberOffer {
            sdp: String::new(),
            tracks: mids
                .iter()
                .map(|(track_id, mid)| TrackMid {
                    mid: (*mid).into(),
                    track_id: (*track_id).into(),
                })
                .collect(),
        }
    }

    fn joined(participants: Vec<ParticipantInfo>) -> ServerMessage {
        ServerMessage::Joined {
            protocol_version: 1,
            room_id: "r".into(),
            participant_id: "me".into(),
            user_id: "bob".into(),
            permissions: Permissions {
                publish_audio: true,
                publish_video: true,
                subscribe: true,
                publish_data: false,
            },
            participants,
            reconnect_grace_seconds: 15,
        }
    }

    fn alice(tracks: Vec<TrackInfo>) -> ParticipantInfo {
        ParticipantInfo {
            participant_id: "PA".into(),
            user_id: "alice".into(),
            state: ParticipantState::Active,
            tracks,
        }
    }

    fn added(changes: &[TrackChange]) -> Vec<(String, String, bool)> {
        changes
            .iter()
            .filter_map(|c| match c {
                TrackChange::Added(t) => Some((t.track_id.clone(), t.user_id.clone(), t.video)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_track_is_shown_once_published_and_mapped_to_a_mid() {
        let mut room = RemoteTracks::default();
        let audio = track("TA", "PA", TrackKind::Audio);
        assert!(room.on_message(&joined(vec![alice(vec![])])).is_empty());
        assert!(
            room.on_message(&ServerMessage::TrackPublished {
                track: audio.clone()
            })
            .is_empty(),
            "no mid yet"
        );
        let changes = room.on_message(&offer(&[("TA", "0")]));
        assert_eq!(added(&changes), [("TA".into(), "alice".into(), false)]);
        // The same offer again (an ICE restart) changes nothing.
        assert!(room.on_message(&offer(&[("TA", "0")])).is_empty());
        let muted = room.on_message(&ServerMessage::TrackMuted {
            track_id: "TA".into(),
            participant_id: "PA".into(),
            muted: true,
        });
        assert_eq!(
            muted,
            [TrackChange::Muted {
                track_id: "TA".into(),
                muted: true
            }]
        );
        let paused = room.on_message(&ServerMessage::StreamStateChanged {
            track_id: "TA".into(),
            state: signaling::StreamState::Paused,
        });
        assert_eq!(
            paused,
            [TrackChange::Paused {
                track_id: "TA".into(),
                paused: true
            }]
        );
        let unknown_track = ServerMessage::StreamStateChanged {
            track_id: "TX".into(),
            state: signaling::StreamState::Active,
        };
        assert!(room.on_message(&unknown_track).is_empty());
    }

    #[test]
    fn tracks_go_when_unpublished_or_their_participant_leaves() {
        let mut room = RemoteTracks::default();
        let tracks = vec![
            track("TA", "PA", TrackKind::Audio),
            track("TV", "PA", TrackKind::Video),
        ];
        room.on_message(&joined(vec![alice(tracks)]));
        assert_eq!(
            added(&room.on_message(&offer(&[("TA", "0"), ("TV", "1")]))).len(),
            2
        );
        let gone = room.on_message(&ServerMessage::TrackUnpublished {
            track_id: "TV".into(),
            participant_id: "PA".into(),
        });
        assert_eq!(
            gone,
            [TrackChange::Removed {
                track_id: "TV".into()
            }]
        );
        let left = room.on_message(&ServerMessage::ParticipantLeft {
            participant_id: "PA".into(),
            reason: LeaveReason::Left,
        });
        assert_eq!(
            left,
            [TrackChange::Removed {
                track_id: "TA".into()
            }]
        );
    }

    #[test]
    fn a_resume_restates_the_room_and_only_differences_are_reported() {
        let mut room = RemoteTracks::default();
        room.on_message(&joined(vec![alice(vec![track(
            "TA",
            "PA",
            TrackKind::Audio,
        )])]));
        room.on_message(&offer(&[("TA", "0")]));
        // Resumed: alice is still there; carol joined meanwhile.
        let carol = ParticipantInfo {
            participant_id: "PC".into(),
            user_id: "carol".into(),
            state: ParticipantState::Active,
            tracks: vec![track("TC", "PC", TrackKind::Audio)],
        };
        let again = joined(vec![
            alice(vec![track("TA", "PA", TrackKind::Audio)]),
            carol,
        ]);
        assert!(room.on_message(&again).is_empty(), "carol has no mid yet");
        let changes = room.on_message(&offer(&[("TA", "0"), ("TC", "1")]));
        assert_eq!(added(&changes), [("TC".into(), "carol".into(), false)]);
        // A track moved to another mid is removed, then added again.
        let moved = room.on_message(&offer(&[("TA", "2"), ("TC", "1")]));
        assert_eq!(moved.len(), 2);
        assert_eq!(
            moved[0],
            TrackChange::Removed {
                track_id: "TA".into()
            }
        );
        assert!(matches!(&moved[1], TrackChange::Added(t) if t.mid == "2"));
    }
}
