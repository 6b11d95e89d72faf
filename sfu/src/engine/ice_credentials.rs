//! Remote ICE credentials, checked before str0m sees them.
//!
//! str0m's ICE agent (crate `is` 0.12) builds every connectivity check's
//! USERNAME as `remote_ufrag:local_ufrag` and writes it with an `.expect`:
//! a USERNAME over 128 bytes panics the thread that owns the `Rtc`
//! (`is-0.12.0/src/agent.rs:1761`, "too long str len"). RFC 8839 lets a
//! ufrag be 256 characters, so a valid-looking offer could kill an engine
//! shard. Every path that hands str0m a remote ufrag (offer, subscriber
//! answer, trickled candidate, STUN from a new address) goes through here.

/// STUN's USERNAME limit as `is` enforces it (RFC 8489: under 128 characters;
/// ICE usernames are ASCII, so characters are bytes).
const MAX_STUN_USERNAME: usize = 128;

/// RFC 8839 section 5.4: ice-ufrag is 4-256 ice-chars, ice-pwd 22-256.
const UFRAG_MIN: usize = 4;
const PWD_MIN: usize = 22;
const PWD_MAX: usize = 256;

/// The longest remote ufrag a peer whose local ufrag is `local_ufrag_len`
/// long can take: `remote:local` must fit in one STUN USERNAME.
pub fn max_remote_ufrag(local_ufrag_len: usize) -> usize {
    MAX_STUN_USERNAME.saturating_sub(local_ufrag_len + 1)
}

/// RFC 8839 ice-char: ALPHA / DIGIT / "+" / "/".
fn is_ice_chars(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'/')
}

/// A remote ufrag (from SDP, a candidate's `ufrag` extension or a STUN
/// USERNAME) that str0m may be given.
pub fn check_ufrag(ufrag: &str, max_len: usize) -> Result<(), String> {
    if !is_ice_chars(ufrag) {
        return Err("ice-ufrag holds characters outside RFC 8839's ice-char".into());
    }
    if ufrag.len() < UFRAG_MIN || ufrag.len() > max_len {
        return Err(format!(
            "ice-ufrag is {} characters; this server takes {UFRAG_MIN}-{max_len}",
            ufrag.len()
        ));
    }
    Ok(())
}

fn check_pwd(pwd: &str) -> Result<(), String> {
    if !is_ice_chars(pwd) || pwd.len() < PWD_MIN || pwd.len() > PWD_MAX {
        return Err(format!(
            "ice-pwd must be {PWD_MIN}-{PWD_MAX} RFC 8839 ice-chars"
        ));
    }
    Ok(())
}

/// Every `a=ice-ufrag`, `a=ice-pwd` and candidate `ufrag` in `sdp`, at
/// session or media level.
pub fn check_sdp(sdp: &str, max_ufrag: usize) -> Result<(), String> {
    for line in sdp.lines() {
        let line = line.trim_end();
        if let Some(ufrag) = line.strip_prefix("a=ice-ufrag:") {
            check_ufrag(ufrag, max_ufrag)?;
        } else if let Some(pwd) = line.strip_prefix("a=ice-pwd:") {
            check_pwd(pwd)?;
        } else if let Some(candidate) = line.strip_prefix("a=") {
            check_candidate(candidate, max_ufrag)?;
        }
    }
    Ok(())
}

/// The `ufrag` extension of a candidate line (`candidate:... ufrag X`), if
/// it has one. Lines that are not candidates pass.
pub fn check_candidate(candidate: &str, max_ufrag: usize) -> Result<(), String> {
    if !candidate.starts_with("candidate:") {
        return Ok(());
    }
    let mut fields = candidate.split_ascii_whitespace();
    while let Some(field) = fields.next() {
        if field == "ufrag" {
            let ufrag = fields.next().unwrap_or("");
            check_ufrag(ufrag, max_ufrag)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PWD: &str = "a=ice-pwd:0123456789abcdefghijkl";

    #[test]
    fn browser_credentials_pass() {
        // Chromium: 4-character ufrag, 24-character password.
        let sdp = format!("v=0\r\na=ice-ufrag:X7k/\r\n{PWD}+/\r\n");
        assert_eq!(check_sdp(&sdp, max_remote_ufrag(16)), Ok(()));
    }

    #[test]
    fn a_ufrag_that_would_overflow_the_stun_username_is_refused() {
        let max = max_remote_ufrag(16);
        assert_eq!(max, 111);
        let fits = format!("a=ice-ufrag:{}\r\n{PWD}\r\n", "u".repeat(max));
        assert!(check_sdp(&fits, max).is_ok());
        let over = format!("a=ice-ufrag:{}\r\n{PWD}\r\n", "u".repeat(max + 1));
        assert!(check_sdp(&over, max).is_err());
    }

    #[test]
    fn characters_outside_ice_char_are_refused() {
        for bad in ["abc:d", "abcd efg", "abcdé", "ab\u{0}cd", "abc"] {
            assert!(check_ufrag(bad, 111).is_err(), "{bad:?}");
        }
        let short_pwd = "v=0\r\na=ice-ufrag:abcd\r\na=ice-pwd:short\r\n";
        assert!(check_sdp(short_pwd, 111).is_err());
    }

    #[test]
    fn candidate_ufrag_extensions_are_checked() {
        let ok = "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host ufrag abcd";
        assert!(check_candidate(ok, 111).is_ok());
        let long = format!(
            "candidate:1 1 udp 2130706431 192.0.2.1 5000 typ host ufrag {}",
            "u".repeat(200)
        );
        assert!(check_candidate(&long, 111).is_err());
        let sdp = format!("v=0\r\na={long}\r\n");
        assert!(check_sdp(&sdp, 111).is_err());
    }
}
