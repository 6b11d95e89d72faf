//! Per-subscriber payload types of a forwarded stream. Sequence numbers,
//! timestamps and VP8 picture IDs are rewritten by [`super::simulcast`];
//! SSRCs by str0m (each subscriber m-line has its own send stream).

use str0m::format::{CodecConfig, PayloadParams};
use str0m::media::Pt;

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
