//! Does an RTP payload start a keyframe? A new subscriber's video is held
//! back until one arrives: frames before it cannot be decoded, and waiting
//! is what makes a late joiner's first frame fast rather than lucky.

use str0m::format::Codec;
use str0m::rtp::Vp8Descriptor;

/// `Some(true)` for the first packet of a keyframe, `Some(false)` for any
/// other packet, `None` for codecs this does not judge (those are never held).
pub fn starts_keyframe(codec: Codec, payload: &[u8]) -> Option<bool> {
    match codec {
        Codec::Vp8 => Some(
            Vp8Descriptor::parse(payload)
                .map(|d| d.starts_keyframe(payload))
                .unwrap_or(false),
        ),
        Codec::H264 => Some(h264_starts_keyframe(payload)),
        _ => None,
    }
}

const NAL_IDR: u8 = 5;
const NAL_SPS: u8 = 7;
const NAL_STAP_A: u8 = 24;
const NAL_FU_A: u8 = 28;

/// RFC 6184: an IDR slice or SPS, alone, aggregated (STAP-A) or as the first
/// fragment (FU-A with the S bit).
fn h264_starts_keyframe(payload: &[u8]) -> bool {
    let Some(&header) = payload.first() else {
        return false;
    };
    let starts = |nal_type: u8| nal_type == NAL_IDR || nal_type == NAL_SPS;
    match header & 0x1f {
        NAL_STAP_A => {
            let mut rest = &payload[1..];
            while rest.len() > 2 {
                let size = usize::from(u16::from_be_bytes([rest[0], rest[1]]));
                let Some(nal) = rest.get(2..2 + size) else {
                    return false;
                };
                if nal.first().is_some_and(|h| starts(h & 0x1f)) {
                    return true;
                }
                rest = &rest[2 + size..];
            }
            false
        }
        NAL_FU_A => payload
            .get(1)
            .is_some_and(|fu| fu & 0x80 != 0 && starts(fu & 0x1f)),
        nal_type => starts(nal_type),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vp8_keyframe_start_is_recognised() {
        // Descriptor S=1 PID=0, then a VP8 header with P=0 (key frame).
        assert_eq!(
            starts_keyframe(Codec::Vp8, &[0x10, 0x00, 0x9d, 0x01, 0x2a]),
            Some(true)
        );
        // P=1: an interframe.
        assert_eq!(
            starts_keyframe(Codec::Vp8, &[0x10, 0x01, 0x00]),
            Some(false)
        );
        // Not the start of a partition.
        assert_eq!(
            starts_keyframe(Codec::Vp8, &[0x00, 0x00, 0x9d]),
            Some(false)
        );
        assert_eq!(starts_keyframe(Codec::Vp8, &[]), Some(false));
    }

    #[test]
    fn h264_idr_sps_stap_and_fu_are_recognised() {
        assert_eq!(starts_keyframe(Codec::H264, &[0x65, 0x88]), Some(true)); // IDR
        assert_eq!(starts_keyframe(Codec::H264, &[0x67, 0x42]), Some(true)); // SPS
        assert_eq!(starts_keyframe(Codec::H264, &[0x41, 0x9a]), Some(false)); // non-IDR slice
        // STAP-A holding SPS (2 bytes) then PPS.
        assert_eq!(
            starts_keyframe(
                Codec::H264,
                &[0x78, 0x00, 0x02, 0x67, 0x42, 0x00, 0x02, 0x68, 0xce]
            ),
            Some(true)
        );
        // FU-A start of an IDR, then a continuation.
        assert_eq!(
            starts_keyframe(Codec::H264, &[0x7c, 0x85, 0x00]),
            Some(true)
        );
        assert_eq!(
            starts_keyframe(Codec::H264, &[0x7c, 0x05, 0x00]),
            Some(false)
        );
        // A STAP-A whose size runs past the end.
        assert_eq!(
            starts_keyframe(Codec::H264, &[0x78, 0x00, 0x09, 0x67]),
            Some(false)
        );
    }

    #[test]
    fn audio_is_never_held() {
        assert_eq!(starts_keyframe(Codec::Opus, &[1, 2, 3]), None);
    }
}
