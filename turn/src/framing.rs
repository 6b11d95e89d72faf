//! Splitting a TURN stream (TCP, TLS) into messages: STUN messages (20-byte
//! header, length in bytes 2..4) and ChannelData (4-byte header, length in
//! bytes 2..4, padded to a multiple of 4 on streams, RFC 8656 12.5). The
//! padding is stripped here; `turn-server-proto` wants bare messages.

/// Largest message accepted: a STUN header plus a 16-bit length.
pub const MAX_MESSAGE: usize = 20 + 0xFFFF;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a STUN or ChannelData stream")]
pub struct NotTurn;

#[derive(Debug, Default)]
pub struct Framer {
    buf: Vec<u8>,
}

impl Framer {
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole message (without padding), `Ok(None)` if more bytes
    /// are needed, or an error: the stream is garbage and must be closed.
    pub fn next_message(&mut self) -> Result<Option<Vec<u8>>, NotTurn> {
        let Some(&first) = self.buf.first() else {
            return Ok(None);
        };
        if self.buf.len() < 4 {
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([self.buf[2], self.buf[3]]));
        let (message, consumed) = match first >> 6 {
            0 => (20 + len, 20 + len),
            // Channel numbers: 0x4000..=0x7FFF (RFC 5766; RFC 8656 narrowed
            // it to 0x4FFF, but clients of the older range exist).
            1 => (4 + len, (4 + len).next_multiple_of(4)),
            _ => return Err(NotTurn),
        };
        if first >> 6 == 0 {
            // STUN: a length that is a multiple of 4, then the magic cookie.
            if len % 4 != 0 {
                return Err(NotTurn);
            }
            if self.buf.len() < 8 {
                return Ok(None);
            }
            if self.buf[4..8] != [0x21, 0x12, 0xA4, 0x42] {
                return Err(NotTurn);
            }
        }
        if self.buf.len() < consumed {
            return Ok(None);
        }
        let rest = self.buf.split_off(consumed);
        let mut whole = std::mem::replace(&mut self.buf, rest);
        whole.truncate(message);
        Ok(Some(whole))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_stun_and_padded_channel_data_across_arbitrary_reads() {
        let mut stream = Vec::new();
        let mut stun = vec![0x00, 0x01, 0x00, 0x04];
        stun.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        stun.extend_from_slice(&[7; 12]);
        stun.extend_from_slice(&[1, 2, 3, 4]);
        let channel = vec![0x40, 0x00, 0x00, 0x05, 9, 9, 9, 9, 9];
        stream.extend_from_slice(&stun);
        stream.extend_from_slice(&channel);
        stream.extend_from_slice(&[0, 0, 0]); // padding to 12
        stream.extend_from_slice(&stun);
        for chunk in [1, 3, 7, 64] {
            let mut f = Framer::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                f.push(piece);
                while let Some(m) = f.next_message().unwrap() {
                    got.push(m);
                }
            }
            assert_eq!(
                got,
                vec![stun.clone(), channel.clone(), stun.clone()],
                "chunk {chunk}"
            );
        }
    }

    #[test]
    fn garbage_is_refused() {
        // A TLS ClientHello on the plain port: STUN-shaped, no magic cookie.
        let mut f = Framer::default();
        f.push(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0x03, 0x03]);
        assert_eq!(f.next_message(), Err(NotTurn));
        let mut f = Framer::default();
        f.push(&[0x80, 0x01, 0x00, 0x04]);
        assert_eq!(f.next_message(), Err(NotTurn));
        let mut f = Framer::default();
        f.push(&[0x00, 0x01, 0x00, 0x03, 0x21, 0x12, 0xA4, 0x42]);
        assert_eq!(f.next_message(), Err(NotTurn));
    }
}
