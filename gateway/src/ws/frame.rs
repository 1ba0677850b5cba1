//! Server-to-client WebSocket frames, encoded once per event and shared by every recipient.
use bytes::Bytes;

/// A final, unmasked WebSocket text frame (server to client) carrying `payload`.
pub fn text_frame(payload: &[u8]) -> Bytes {
    frame(0x81, payload) // FIN + text
}

/// A final, unmasked text frame whose payload is a compressed message (permessage-deflate).
pub fn compressed_text_frame(deflated: &[u8]) -> Bytes {
    frame(0xC1, deflated) // FIN + RSV1 + text
}

/// The payload of a frame built here.
pub fn payload(frame: &[u8]) -> &[u8] {
    match frame.get(1).map(|b| b & 0x7f) {
        None => &[],
        Some(126) => &frame[4..],
        Some(127) => &frame[10..],
        Some(_) => &frame[2..],
    }
}

fn frame(first: u8, payload: &[u8]) -> Bytes {
    let len = payload.len();
    let mut f = Vec::with_capacity(len + 10);
    f.push(first);
    if len < 126 {
        f.push(len as u8);
    } else if len <= u16::MAX as usize {
        f.push(126);
        f.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        f.push(127);
        f.extend_from_slice(&(len as u64).to_be_bytes());
    }
    f.extend_from_slice(payload);
    Bytes::from(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_have_the_right_length_encoding() {
        assert_eq!(&text_frame(b"hi")[..], b"\x81\x02hi");
        let mid = text_frame(&[b'a'; 300]);
        assert_eq!(&mid[..4], &[0x81, 126, 1, 44]);
        assert_eq!(mid.len(), 304);
        let big = text_frame(&vec![b'a'; 70_000]);
        assert_eq!(big[1], 127);
        assert_eq!(u64::from_be_bytes(big[2..10].try_into().unwrap()), 70_000);
        assert_eq!(payload(&text_frame(b"hi")), b"hi");
        assert_eq!(payload(&mid), &[b'a'; 300][..]);
        assert_eq!(payload(&big).len(), 70_000);
        assert_eq!(&compressed_text_frame(b"z")[..], b"\xc1\x01z");
        assert_eq!(payload(b""), b"");
    }
}
