//! Per-subscriber rewriting of a forwarded stream: sequence numbers and
//! payload types. SSRCs are rewritten by str0m: each subscriber m-line has its
//! own send stream.

use str0m::format::{CodecConfig, PayloadParams};
use str0m::media::Pt;
use str0m::rtp::SeqNo;

/// Maps the publisher's extended sequence numbers into the subscriber's.
///
/// A subscriber that joins late must see a stream that starts near zero (a
/// first sequence number with a non-zero rollover counter needs out-of-band
/// signalling, RFC 3711 3.3.1), and gaps must stay gaps so NACKs line up.
#[derive(Debug, Clone, Default)]
pub struct SeqRewriter {
    /// Publisher sequence number that maps to `START`.
    base: Option<u64>,
}

impl SeqRewriter {
    /// The first forwarded packet gets this number (small, ROC 0).
    const START: u64 = 1;

    /// `None` for packets older than the first one forwarded: the subscriber
    /// never saw that part of the stream.
    pub fn rewrite(&mut self, publisher_seq: SeqNo) -> Option<SeqNo> {
        let seq = *publisher_seq;
        let base = *self.base.get_or_insert(seq);
        seq.checked_sub(base).map(|d| SeqNo::from(d + Self::START))
    }
}

/// The publisher's payload type for a codec, mapped to the subscriber's.
#[derive(Debug, Clone, Default)]
pub struct PtMap {
    entries: Vec<(Pt, Option<Pt>)>,
}

impl PtMap {
    /// Looks `publisher_pt` up, resolving it once with `resolve` (the
    /// subscriber's codec config and what it accepted in SDP).
    pub fn map(&mut self, publisher_pt: Pt, resolve: impl FnOnce() -> Option<Pt>) -> Option<Pt> {
        if let Some((_, mapped)) = self.entries.iter().find(|(p, _)| *p == publisher_pt) {
            return *mapped;
        }
        let mapped = resolve();
        self.entries.push((publisher_pt, mapped));
        mapped
    }
}

/// The subscriber PT for the publisher's `params`: the best match among the
/// subscriber's codecs that it also accepted for this m-line.
pub fn resolve_pt(subscriber: &CodecConfig, accepted: &[Pt], params: PayloadParams) -> Option<Pt> {
    let candidates: Vec<PayloadParams> = subscriber
        .params()
        .iter()
        .filter(|p| accepted.contains(&p.pt()))
        .cloned()
        .collect();
    CodecConfig::new_from_payload_params(candidates)
        .match_params(params)
        .map(|p| p.pt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn late_subscriber_starts_at_one_and_keeps_gaps() {
        let mut r = SeqRewriter::default();
        assert_eq!(r.rewrite(70_000.into()), Some(1.into()));
        assert_eq!(r.rewrite(70_001.into()), Some(2.into()));
        assert_eq!(r.rewrite(70_005.into()), Some(6.into()));
    }

    #[test]
    fn packets_before_the_first_are_dropped() {
        let mut r = SeqRewriter::default();
        r.rewrite(500.into());
        assert_eq!(r.rewrite(499.into()), None);
    }

    #[test]
    fn pt_map_resolves_once() {
        let mut m = PtMap::default();
        let mut calls = 0;
        for _ in 0..3 {
            let got = m.map(96.into(), || {
                calls += 1;
                Some(100.into())
            });
            assert_eq!(got, Some(100.into()));
        }
        assert_eq!(calls, 1);
    }
}
