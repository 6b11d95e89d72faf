//! The engine's side of the own SRTP egress (`crate::srtp::egress`): when
//! a subscriber connection's egress starts, where it sends, the copies
//! `forward.rs` hands it, and the RTCP that asks it for packets again.

use str0m::rtp::rtcp::Rtcp;
use str0m::rtp::{RawPacket, VideoOrientation};

use crate::srtp::egress::{ExtensionIds, OwnEgress, PublisherSync, RtpCopy, StreamSpec};

use super::*;

/// A datagram is STUN when its first byte is 0-3 (RFC 7983).
pub(super) fn is_stun(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| *b < 4)
}

/// One forwarded copy, as `forward.rs` made it for a subscriber.
pub(super) struct OwnCopy<'a> {
    pub mid: Mid,
    pub pt: u8,
    pub seq: u64,
    pub timestamp: u32,
    pub kind: TrackKind,
    pub params: PayloadParams,
    pub pkt: &'a RtpPacket,
    pub payload: &'a [u8],
}

/// What the own egress did with a copy.
pub(super) enum OwnSent {
    /// Sealed and queued.
    Sent,
    /// Not sendable now (no keys or route yet, or a
    /// stream it refuses): dropped.
    Dropped,
}

impl Engine {
    /// Builds a subscriber connection's egress from the keys its handshake
    /// just gave (on `Connected`). Keys that cannot be used leave the
    /// connection without forwarded media, said in the log and the
    /// `none` key count.
    pub(super) fn start_own_egress(&mut self, key: ParticipantKey) {
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let peer = &mut p.subscriber;
        let Some(own) = &mut peer.own else { return };
        if own.egress.is_some() || own.unusable {
            return;
        }
        let captured = peer.srtp_keys.as_ref().and_then(|slot| slot.get());
        // An SSRC str0m does not use on this connection, to lead our RTCP.
        let rtcp_ssrc = *peer.rtc.direct_api().new_ssrc();
        let built = captured
            .ok_or_else(|| "no keys captured".to_string())
            .and_then(|c| {
                OwnEgress::new(&self.subscriber_crypto, &c, rtcp_ssrc).map_err(|e| e.to_string())
            });
        match built {
            Ok(egress) => own.egress = Some(Box::new(egress)),
            Err(error) => {
                own.unusable = true;
                tracing::warn!(participant = %p.id, user_id = %p.user_id, device_id = %p.device.device_id, platform = %p.device.platform, call_id = %p.room, %error, "own egress cannot start: no media forwarded to this participant");
            }
        }
    }

    /// Seals a copy on a subscriber's own egress, and any sender reports
    /// now due.
    pub(super) fn send_own(
        &mut self,
        subscriber: ParticipantKey,
        copy: OwnCopy<'_>,
        now: Instant,
    ) -> OwnSent {
        let Some(sub) = self.participants.get_mut(&subscriber) else {
            return OwnSent::Dropped;
        };
        let peer = &mut sub.subscriber;
        let Some(own) = &mut peer.own else {
            return OwnSent::Dropped;
        };
        let (Some(egress), Some(route)) = (own.egress.as_deref_mut(), own.route) else {
            return OwnSent::Dropped;
        };
        // str0m finds a stream by m-line with a linear search: asked once
        // per stream, not per copy.
        let ssrc = match egress.ssrc_of(copy.mid) {
            Some(ssrc) => ssrc,
            None => match declare_stream(&mut peer.rtc, egress, &copy) {
                Some(ssrc) => ssrc,
                None => return OwnSent::Dropped,
            },
        };
        let ext = &copy.pkt.header.ext_vals;
        let sync = copy.pkt.last_sender_info.map(|info| PublisherSync {
            report_ntp: info.ntp_time,
            report_rtp: info.rtp_time.numer() as u32,
            packet_rtp: copy.pkt.header.timestamp,
        });
        let rtp = RtpCopy {
            ssrc,
            payload_type: copy.pt,
            seq: copy.seq,
            timestamp: copy.timestamp,
            marker: copy.pkt.header.marker,
            audio_level: ext.audio_level.zip(ext.voice_activity).map(|(l, v)| (v, l)),
            video_orientation: ext
                .video_orientation
                .filter(|o| *o != VideoOrientation::Deg0),
            payload: copy.payload,
            sync,
        };
        let buffer = self
            .spare_buffers
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RECYCLED_CAPACITY));
        let Some(transmit) = egress.send(route, &rtp, now, buffer) else {
            return OwnSent::Dropped;
        };
        self.outputs.push_back(Output::Transmit(transmit));
        let mut reports = Vec::new();
        egress.poll_reports(route, now, &mut reports);
        self.stats.own_sender_reports += reports.len() as u64;
        self.outputs
            .extend(reports.into_iter().map(Output::Transmit));
        OwnSent::Sent
    }

    /// RTCP a subscriber connection received (str0m authenticated it):
    /// the client's selected pair sent it, and a NACK asks our packets
    /// again.
    pub(super) fn own_egress_rtcp(&mut self, key: ParticipantKey, raw: RawPacket, now: Instant) {
        let RawPacket::RtcpRx(rtcp) = raw else {
            return;
        };
        let Some(p) = self.participants.get_mut(&key) else {
            return;
        };
        let peer = &mut p.subscriber;
        let Some(own) = &mut peer.own else { return };
        if let Some(from) = peer.receiving_from {
            own.route = Some(from);
        }
        let (Some(egress), Some(route)) = (own.egress.as_deref_mut(), own.route) else {
            return;
        };
        let nack = match rtcp {
            Rtcp::Nack(nack) => nack,
            Rtcp::ReceiverReport(rr) => {
                // str0m sent nothing on these streams, so its egress stats
                // have no loss to give: the receiver's reports do.
                let interval = self.config.stats_interval;
                let due: Vec<_> = rr
                    .reports
                    .iter()
                    .filter_map(|r| {
                        let video = egress.quality_due(*r.ssrc, now, interval)?;
                        Some((video, r.fraction_lost, r.jitter))
                    })
                    .collect();
                for (video, fraction_lost, jitter) in due {
                    let kind = if video {
                        TrackKind::Video
                    } else {
                        TrackKind::Audio
                    };
                    let loss = f32::from(fraction_lost) / 256.0;
                    self.stream_quality(Link::Downlink, kind, loss, jitter);
                }
                return;
            }
            _ => return,
        };
        let mut resent = Vec::new();
        egress.resend(route, *nack.ssrc, nack.reports, now, &mut resent);
        self.stats.own_resent += resent.len() as u64;
        self.outputs
            .extend(resent.into_iter().map(Output::Transmit));
    }
}

/// Declares the stream of a copy's m-line on the egress: str0m's SSRC for
/// it (as its SDP announced), the extensions the subscriber negotiated.
/// `None` when the m-line has no stream or its SSRC ended before.
fn declare_stream(rtc: &mut Rtc, egress: &mut OwnEgress, copy: &OwnCopy<'_>) -> Option<u32> {
    let ssrc = *rtc.direct_api().stream_tx_by_mid(copy.mid, None)?.ssrc();
    let media = rtc.media(copy.mid)?;
    let spec = StreamSpec {
        ssrc,
        mid: copy.mid,
        extensions: ExtensionIds::of(media.remote_extmap()),
        clock_rate: copy.params.spec().clock_rate.get(),
        nackable: copy.kind == TrackKind::Video,
        cname: media.cname().to_string(),
    };
    egress.add_stream(spec).then_some(ssrc)
}
