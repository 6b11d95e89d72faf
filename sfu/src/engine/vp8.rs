//! What forwarding reads of a VP8 payload beyond str0m's `Vp8Descriptor`
//! (which exposes the picture ID and TL0PICIDX but not these): the
//! temporal layer a frame belongs to, and the size a keyframe announces.
//!
//! RFC 7741 section 4.2: after the required byte, an extension byte (X)
//! says which of picture ID (I, 7 or 15 bits), TL0PICIDX (L) and the
//! TID/Y/KEYIDX byte (T or K) follow. The VP8 payload header of a
//! keyframe (RFC 6386 section 9.1) carries the start code and the frame's
//! width and height in its first ten bytes.

/// A packet's temporal layer: `id` 0 is the base (every frame of it is
/// decodable from base frames alone); a frame of layer `id` refers only to
/// layers at or below it. `sync` (Y): this frame refers to the base layer
/// only, so forwarding of layer `id` may start here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Temporal {
    pub id: u8,
    pub sync: bool,
}

/// The temporal layer of a VP8 packet; `None` when the descriptor has no
/// TID (a stream without temporal layers) or is malformed.
pub fn temporal(payload: &[u8]) -> Option<Temporal> {
    let (tid_byte, _) = descriptor_tail(payload)?;
    let byte = tid_byte?;
    Some(Temporal {
        id: byte >> 6,
        sync: byte & 0x20 != 0,
    })
}

/// The width and height of the keyframe this packet starts (14 bits each);
/// `None` for any other packet.
pub fn keyframe_size(payload: &[u8]) -> Option<(u16, u16)> {
    let first = *payload.first()?;
    // S=1 and partition 0: the frame's first packet.
    if first & 0x10 == 0 || first & 0x07 != 0 {
        return None;
    }
    let (_, header_at) = descriptor_tail(payload)?;
    let header = payload.get(header_at..header_at + 10)?;
    // P=0 is a keyframe; bytes 3..6 are its start code.
    if header[0] & 0x01 != 0 || header[3..6] != [0x9d, 0x01, 0x2a] {
        return None;
    }
    let width = u16::from_le_bytes([header[6], header[7]]) & 0x3fff;
    let height = u16::from_le_bytes([header[8], header[9]]) & 0x3fff;
    Some((width, height))
}

/// Writes a rewritten picture ID and TL0PICIDX into a copy of a VP8
/// payload, in the fields its descriptor has (a 7-bit picture ID takes
/// the low 7 bits); a field the descriptor lacks is left out. What
/// str0m's `Vp8Patch` does on its write path, for the own egress.
pub fn rewrite(payload: &mut [u8], picture_id: Option<u16>, tl0_pic_idx: Option<u8>) {
    let Some(&first) = payload.first() else {
        return;
    };
    if first & 0x80 == 0 {
        return;
    }
    let Some(&extension) = payload.get(1) else {
        return;
    };
    let mut at = 2;
    if extension & 0x80 != 0 {
        let Some(&high) = payload.get(at) else { return };
        let long = high & 0x80 != 0;
        if let Some(pid) = picture_id {
            if long {
                if at + 1 >= payload.len() {
                    return;
                }
                let [hi, lo] = (pid & 0x7fff).to_be_bytes();
                payload[at] = 0x80 | hi;
                payload[at + 1] = lo;
            } else {
                payload[at] = (pid & 0x7f) as u8;
            }
        }
        at += if long { 2 } else { 1 };
    }
    if extension & 0x40 != 0
        && let (Some(tl0), Some(byte)) = (tl0_pic_idx, payload.get_mut(at))
    {
        *byte = tl0;
    }
}

/// The TID/Y/KEYIDX byte (when T is set) and where the VP8 payload header
/// starts.
fn descriptor_tail(payload: &[u8]) -> Option<(Option<u8>, usize)> {
    let first = *payload.first()?;
    if first & 0x80 == 0 {
        return Some((None, 1));
    }
    let extension = *payload.get(1)?;
    let mut at = 2;
    if extension & 0x80 != 0 {
        let long = *payload.get(at)? & 0x80 != 0;
        at += if long { 2 } else { 1 };
    }
    if extension & 0x40 != 0 {
        at += 1;
    }
    let mut tid_byte = None;
    if extension & 0x30 != 0 {
        let byte = *payload.get(at)?;
        if extension & 0x20 != 0 {
            tid_byte = Some(byte);
        }
        at += 1;
    }
    (at < payload.len()).then_some((tid_byte, at))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Extended descriptor with a 15-bit picture ID, TL0PICIDX and TID byte.
    fn descriptor(start: bool, tid: u8, sync: bool) -> Vec<u8> {
        let first = if start { 0x90 } else { 0x80 };
        let tid_byte = (tid << 6) | if sync { 0x20 } else { 0 };
        vec![first, 0xe0, 0x81, 0x23, 7, tid_byte]
    }

    #[test]
    fn reads_the_temporal_layer_and_sync_bit() {
        let mut payload = descriptor(false, 2, true);
        payload.push(0x01);
        assert_eq!(temporal(&payload), Some(Temporal { id: 2, sync: true }));
        let mut base = descriptor(true, 0, false);
        base.push(0x00);
        assert_eq!(temporal(&base), Some(Temporal { id: 0, sync: false }));
        // No T bit (KEYIDX only), no extension, or cut short: no layer.
        assert_eq!(temporal(&[0x80, 0x10, 0x05, 0x01]), None);
        assert_eq!(temporal(&[0x10, 0x00]), None);
        assert_eq!(temporal(&[0x80, 0xe0, 0x81]), None);
    }

    #[test]
    fn rewrites_picture_id_and_tl0picidx_in_place() {
        let mut long = descriptor(true, 1, false);
        long.push(0x00);
        rewrite(&mut long, Some(0x1234), Some(9));
        assert_eq!(&long[2..5], &[0x92, 0x34, 9]);
        assert_eq!(long[5], descriptor(true, 1, false)[5], "TID byte untouched");
        // A 7-bit picture ID gets the low bits; no L: no TL0PICIDX written.
        let mut short = vec![0x90, 0x80, 0x05, 0x00];
        rewrite(&mut short, Some(0x1ff), Some(3));
        assert_eq!(short, [0x90, 0x80, 0x7f, 0x00]);
        // No extension: nothing to write; cut short: nothing panics.
        let mut plain = vec![0x10, 0x00];
        rewrite(&mut plain, Some(1), Some(1));
        assert_eq!(plain, [0x10, 0x00]);
        rewrite(&mut [0x80, 0x80, 0x81], Some(5), None);
    }

    #[test]
    fn reads_a_keyframes_size_and_nothing_else() {
        let mut key = descriptor(true, 0, false);
        // Frame tag (P=0), start code, 960 x 540 (no scaling bits).
        key.extend_from_slice(&[0x00, 0x00, 0x00, 0x9d, 0x01, 0x2a]);
        key.extend_from_slice(&960u16.to_le_bytes());
        key.extend_from_slice(&(540u16 | 0x4000).to_le_bytes());
        assert_eq!(keyframe_size(&key), Some((960, 540)));
        let mut inter = key.clone();
        inter[6] = 0x01;
        assert_eq!(keyframe_size(&inter), None, "P=1: an interframe");
        let mut middle = key.clone();
        middle[0] = 0x80;
        assert_eq!(keyframe_size(&middle), None, "not the frame's first packet");
        assert_eq!(keyframe_size(&key[..12]), None, "cut short");
    }
}
