//! A participant: its two peer connections, the tracks it receives, and the
//! subscriber-side negotiation (the server is the only offerer there).

use std::time::Instant;

use signaling::{ParticipantState, Permissions, TrackKind};
use str0m::change::SdpPendingOffer;
use str0m::media::Mid;

use super::peer::Peer;
use super::rewrite::PtMap;
use super::simulcast::DownStream;
use super::{ConnId, ParticipantKey};

/// Where one room track stands on a subscriber connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DownState {
    /// Wanted; not yet in an offer.
    ToOpen,
    /// In the offer awaiting an answer.
    Negotiating(Mid),
    Open(Mid),
    /// Unsubscribed or unpublished; the m-line must be stopped in the next offer.
    ToStop(Mid),
    Stopping(Mid),
}

impl DownState {
    pub fn mid(self) -> Option<Mid> {
        match self {
            DownState::ToOpen => None,
            DownState::Negotiating(m)
            | DownState::Open(m)
            | DownState::ToStop(m)
            | DownState::Stopping(m) => Some(m),
        }
    }
}

/// A room track as sent to one subscriber.
pub struct DownTrack {
    pub track_key: u64,
    pub track_id: String,
    pub publisher_id: String,
    pub kind: TrackKind,
    pub state: DownState,
    /// The layer it receives and the rewriting of its numbers; video is
    /// held back until a keyframe starts.
    pub stream: DownStream,
    pub pts: PtMap,
    /// The highest layer the subscriber's downlink carries (`downlink.rs`);
    /// `None`: no limit.
    pub cap: Option<super::simulcast::Level>,
    /// Video the downlink cannot carry at all: nothing is forwarded.
    pub paused: bool,
}

pub struct Participant {
    pub key: ParticipantKey,
    pub id: String,
    pub user_id: String,
    pub room: String,
    /// Where it joined from, for log lines.
    pub device: super::DeviceLabel,
    pub permissions: Permissions,
    pub auto_subscribe: bool,
    /// Its subscriber connection's latest bandwidth estimate (with
    /// `downlink_estimation`).
    pub downlink: Option<super::Bitrate>,
    /// When its video was last lowered for the downlink (nothing moves up
    /// for a while after).
    pub downlink_lowered_at: Option<Instant>,
    /// Its data channels and send budget.
    pub data: super::data::DataChannels,
    /// The WebSocket that speaks for it; `None` while detached.
    pub conn: Option<ConnId>,
    pub publisher: Peer,
    pub subscriber: Peer,
    pub down: Vec<DownTrack>,
    /// The subscriber offer awaiting the client's answer.
    pub pending_offer: Option<SdpPendingOffer>,
    /// That offer as sent, to send again to a resumed WebSocket.
    pub pending_offer_message: Option<signaling::ServerMessage>,
    /// Set when a restart of the subscriber connection's ICE was asked for.
    pub ice_restart: bool,
    pub state: ParticipantState,
    /// When a reconnecting participant is removed.
    pub grace_deadline: Option<Instant>,
    /// Until either connection first connects: when the participant is
    /// removed if none has (a joined socket that never brings up media
    /// must not hold its place, and a socket, forever).
    pub media_deadline: Option<Instant>,
    pub joined_at: Instant,
    /// Whether the join-to-first-forwarded-packet time was recorded.
    pub first_forward_recorded: bool,
}

impl Participant {
    /// Who it is, as call control knows it.
    pub fn member(&self) -> super::Member {
        super::Member {
            call_id: self.room.clone(),
            user_id: self.user_id.clone(),
            device: self.device.clone(),
        }
    }

    pub fn peer_mut(&mut self, target: signaling::PeerTarget) -> &mut Peer {
        match target {
            signaling::PeerTarget::Publisher => &mut self.publisher,
            signaling::PeerTarget::Subscriber => &mut self.subscriber,
        }
    }

    /// Broken path (either connection) or no WebSocket.
    pub fn is_reconnecting(&self) -> bool {
        self.conn.is_none() || self.publisher.is_broken() || self.subscriber.is_broken()
    }

    /// The live (not stopping) down track for a room track.
    pub fn down_by_track(&mut self, track_key: u64) -> Option<&mut DownTrack> {
        self.down.iter_mut().find(|d| {
            d.track_key == track_key
                && matches!(
                    d.state,
                    DownState::ToOpen | DownState::Negotiating(_) | DownState::Open(_)
                )
        })
    }

    pub fn down_by_mid(&self, mid: Mid) -> Option<&DownTrack> {
        self.down.iter().find(|d| d.state.mid() == Some(mid))
    }
}
