//! What a publisher's SDP offer asks to send, read before the offer reaches
//! str0m, so a refused offer changes no state.
//!
//! str0m parses the offer too, but keeps its parsed form crate-private; this
//! only reads the `m=` lines and their direction attributes.

use signaling::TrackKind;

/// One m-section of an offer that would send media to us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OfferedSend {
    pub kind: TrackKind,
}

/// The media sections of `sdp` that send audio or video (direction sendrecv
/// or sendonly; port not zero, or zero with `a=bundle-only`, which RFC 8843
/// uses for m-lines that share the BUNDLE transport and are very much in
/// use). Application and unknown sections are skipped.
pub fn offered_sends(sdp: &str) -> Vec<OfferedSend> {
    let mut sends = Vec::new();
    let sections = sdp.split("\nm=").skip(1);
    if sdp.starts_with("m=") {
        // An offer with no session part is not valid SDP; str0m will refuse it.
        return sends;
    }
    for section in sections {
        let mut lines = section.lines();
        let Some(m_line) = lines.next() else { continue };
        let mut fields = m_line.split_whitespace();
        let kind = match fields.next() {
            Some("audio") => TrackKind::Audio,
            Some("video") => TrackKind::Video,
            _ => continue,
        };
        let port_zero = fields.next() == Some("0");
        let mut sending = true; // sendrecv is the SDP default
        let mut bundle_only = false;
        for line in lines {
            match line.trim_end() {
                "a=recvonly" | "a=inactive" => sending = false,
                "a=sendonly" | "a=sendrecv" => sending = true,
                "a=bundle-only" => bundle_only = true,
                _ => {}
            }
        }
        if sending && (!port_zero || bundle_only) {
            sends.push(OfferedSend { kind });
        }
    }
    sends
}

#[cfg(test)]
mod tests {
    use super::*;

    const SESSION: &str = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";

    #[test]
    fn sendonly_audio_and_video_are_sends() {
        let sdp = format!(
            "{SESSION}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=sendrecv\r\n"
        );
        let kinds: Vec<_> = offered_sends(&sdp).into_iter().map(|s| s.kind).collect();
        assert_eq!(kinds, vec![TrackKind::Audio, TrackKind::Video]);
    }

    #[test]
    fn recvonly_inactive_rejected_and_data_are_not_sends() {
        let sdp = format!(
            "{SESSION}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=inactive\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=sendonly\r\nm=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\n"
        );
        assert!(offered_sends(&sdp).is_empty());
    }

    #[test]
    fn bundle_only_sections_with_port_zero_are_sends() {
        let sdp = format!(
            "{SESSION}m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=sendonly\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=bundle-only\r\na=sendonly\r\n"
        );
        let kinds: Vec<_> = offered_sends(&sdp).into_iter().map(|s| s.kind).collect();
        assert_eq!(kinds, vec![TrackKind::Audio, TrackKind::Video]);
    }

    #[test]
    fn missing_direction_means_sendrecv() {
        let sdp = format!("{SESSION}m=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
        assert_eq!(offered_sends(&sdp).len(), 1);
    }
}
