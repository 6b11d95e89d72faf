//! Data channels: members' messages to the room, over SCTP on each member's
//! subscriber connection.
//!
//! The server opens two channels with a subscriber connection's first offer:
//! `switchboard` (reliable, ordered) and `switchboard-lossy` (unordered,
//! never retransmitted). A member writes a [`DataSend`] on either; the
//! server checks it (the token's `publishData`, size, rate), attaches the
//! sender's participant id and writes one [`DataReceived`] on the same kind
//! of channel of each recipient. Nothing is stored: a member whose channel is
//! not open yet misses the message, and so does one whose connection already
//! has 128 KiB waiting unacknowledged (str0m's SCTP send buffer per
//! connection, both channels together: a slow reader cannot make the server
//! hold a room's messages for it, nor slow the sender down).

use std::time::Instant;

use signaling::{
    DATA_CHANNEL_LOSSY, DATA_CHANNEL_RELIABLE, DataReceived, DataSend, ErrorCode,
    MAX_DATA_PAYLOAD_BYTES,
};
use str0m::change::SdpApi;
use str0m::channel::{ChannelConfig, ChannelData, ChannelId, Reliability};

use super::token_bucket::TokenBucket;
use super::{Engine, ParticipantKey, PeerTarget};

/// Messages a member may send per second, after a burst of twice that.
pub const MESSAGES_PER_SECOND: f64 = 50.0;
/// Payload bytes a member may send per second, after a burst of twice that.
pub const BYTES_PER_SECOND: f64 = 128.0 * 1024.0;
/// A frame longer than this is refused unread: the largest payload plus
/// room for a full `to` list of long ids and JSON escaping.
const MAX_FRAME_BYTES: usize = MAX_DATA_PAYLOAD_BYTES + 8 * 1024;
/// Refusals told per second (after a burst of twice that): a flood of bad
/// frames must not become a flood of signaling errors.
const REFUSALS_PER_SECOND: f64 = 5.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Reliable,
    Lossy,
}

/// One member's channels and what it may still send.
#[derive(Debug)]
pub struct DataChannels {
    /// As created with the first offer; `None` until then.
    reliable: Option<ChannelId>,
    lossy: Option<ChannelId>,
    messages: TokenBucket,
    bytes: TokenBucket,
    refusals: TokenBucket,
}

impl DataChannels {
    pub fn new(now: Instant) -> DataChannels {
        DataChannels {
            reliable: None,
            lossy: None,
            messages: TokenBucket::new(MESSAGES_PER_SECOND, 2.0 * MESSAGES_PER_SECOND, now),
            bytes: TokenBucket::new(BYTES_PER_SECOND, 2.0 * BYTES_PER_SECOND, now),
            refusals: TokenBucket::new(REFUSALS_PER_SECOND, 2.0 * REFUSALS_PER_SECOND, now),
        }
    }

    /// Adds both channels to a subscriber connection's first offer.
    pub fn add_to_offer(&mut self, api: &mut SdpApi<'_>) {
        self.reliable = Some(api.add_channel(DATA_CHANNEL_RELIABLE.to_string()));
        self.lossy = Some(api.add_channel_with_config(ChannelConfig {
            label: DATA_CHANNEL_LOSSY.to_string(),
            ordered: false,
            reliability: Reliability::MaxRetransmits { retransmits: 0 },
            ..Default::default()
        }));
    }

    fn delivery_of(&self, id: ChannelId) -> Option<Delivery> {
        if self.reliable == Some(id) {
            Some(Delivery::Reliable)
        } else if self.lossy == Some(id) {
            Some(Delivery::Lossy)
        } else {
            None
        }
    }

    fn channel(&self, delivery: Delivery) -> Option<ChannelId> {
        match delivery {
            Delivery::Reliable => self.reliable,
            Delivery::Lossy => self.lossy,
        }
    }
}

/// Why a message did not reach one recipient (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataDrop {
    /// The recipient's channel is not open (its connection is not up yet).
    NotOpen,
    /// The recipient's SCTP send buffer is full (str0m's 128 KiB).
    ReceiverSlow,
}

impl DataDrop {
    pub const ALL: [DataDrop; 2] = [DataDrop::NotOpen, DataDrop::ReceiverSlow];

    pub fn label(self) -> &'static str {
        match self {
            DataDrop::NotOpen => "not_open",
            DataDrop::ReceiverSlow => "receiver_slow",
        }
    }
}

/// A checked message, ready to relay.
struct Relay {
    delivery: Delivery,
    to: Option<Vec<String>>,
    frame: String,
}

impl Engine {
    /// A message a member wrote on a channel of its subscriber connection.
    pub(super) fn on_channel_data(&mut self, key: ParticipantKey, data: ChannelData, now: Instant) {
        match self.check_data(key, &data, now) {
            Ok(Some(relay)) => self.relay_data(key, relay),
            Ok(None) => {}
            Err((code, message)) => self.refuse_data(key, code, message, now),
        }
    }

    /// The message as it will be relayed, `None` for a channel that is not
    /// ours (a client may open its own; nothing it writes there is relayed),
    /// or why it is refused.
    fn check_data(
        &mut self,
        key: ParticipantKey,
        data: &ChannelData,
        now: Instant,
    ) -> Result<Option<Relay>, (ErrorCode, &'static str)> {
        let Some(p) = self.participants.get_mut(&key) else {
            return Ok(None);
        };
        let Some(delivery) = p.data.delivery_of(data.id) else {
            return Ok(None);
        };
        self.stats.data_messages_in += 1;
        // Everything written counts against the rate, refused or not.
        let len = data.data.len();
        let within_rate = p.data.messages.take(1.0, now);
        if !within_rate || !p.data.bytes.take(len as f64, now) {
            return Err((ErrorCode::RateLimited, "too many data messages; slow down"));
        }
        if !p.permissions.publish_data {
            return Err((
                ErrorCode::PermissionDenied,
                "the call token does not allow sending data",
            ));
        }
        if data.binary {
            return Err((ErrorCode::BadMessage, "data messages are JSON text"));
        }
        if len > MAX_FRAME_BYTES {
            return Err((
                ErrorCode::MessageTooLarge,
                "data message payload exceeds 16384 bytes",
            ));
        }
        let send: DataSend = serde_json::from_slice(&data.data)
            .map_err(|_| (ErrorCode::BadMessage, "not a data message: {to?, payload}"))?;
        send.check()?;
        let frame = signaling::encode(&DataReceived {
            from: p.id.clone(),
            payload: send.payload,
        });
        Ok(Some(Relay {
            delivery,
            to: send.to,
            frame,
        }))
    }

    fn relay_data(&mut self, sender: ParticipantKey, relay: Relay) {
        let Some(room) = self
            .participants
            .get(&sender)
            .and_then(|p| self.rooms.get(&p.room))
        else {
            return;
        };
        let recipients: Vec<ParticipantKey> = room
            .members
            .iter()
            .copied()
            .filter(|m| *m != sender)
            .collect();
        for recipient in recipients {
            let Some(p) = self.participants.get_mut(&recipient) else {
                continue;
            };
            if relay.to.as_ref().is_some_and(|to| !to.contains(&p.id)) {
                continue;
            }
            let Some(id) = p.data.channel(relay.delivery) else {
                self.stats.data_dropped[DataDrop::NotOpen as usize] += 1;
                continue;
            };
            let bytes = relay.frame.as_bytes();
            // The payload is a client's: str0m's SCTP must not take the
            // shard down with it.
            let written = p.subscriber.guard(|rtc| {
                // `write` takes nothing past the send buffer (`Ok(false)`).
                match rtc.channel(id)?.write(false, bytes) {
                    Ok(true) => Some(Ok(())),
                    Ok(false) | Err(_) => Some(Err(DataDrop::ReceiverSlow)),
                }
            });
            match written {
                Ok(Some(Ok(()))) => {
                    self.stats.data_messages_out += 1;
                    self.dirty.push((recipient, PeerTarget::Subscriber));
                }
                Ok(Some(Err(drop))) => self.stats.data_dropped[drop as usize] += 1,
                Ok(None) => self.stats.data_dropped[DataDrop::NotOpen as usize] += 1,
                Err(_) => self.fail_participant(recipient),
            }
        }
    }

    /// Tells the sender why its message went nowhere (at most
    /// [`REFUSALS_PER_SECOND`]; the rest are dropped unsaid).
    fn refuse_data(
        &mut self,
        key: ParticipantKey,
        code: ErrorCode,
        message: &'static str,
        now: Instant,
    ) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        self.stats.data_refused += 1;
        if let Some(conn) = p.conn
            && p.data.refusals.take(1.0, now)
        {
            self.error(conn, code, message);
        }
    }
}
