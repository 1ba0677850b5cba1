//! permessage-deflate (RFC 7692) without context takeover: the handshake, the one compressed
//! frame per event that every socket which negotiated it shares, and bounded inflation of what
//! clients send.
//!
//! With `server_no_context_takeover` each message is compressed on its own, so an event's
//! compressed frame is the same bytes for every subscriber and is built once, beside the plain
//! one. With `client_no_context_takeover` each client message inflates on its own too, so a
//! connection keeps no inflation window between messages.
use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use http::HeaderMap;

/// Why a compressed message was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum InflateError {
    /// It inflates past the message limit (close with 1009).
    TooBig,
    /// It is not deflate data (close with 1007).
    Corrupt,
}

/// What the server answers when it accepts an offer.
pub const ACCEPTED: &str =
    "permessage-deflate; server_no_context_takeover; client_no_context_takeover";

/// The tail every compressed message ends with, removed by the sender (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// Whether one of the client's `Sec-WebSocket-Extensions` offers is a permessage-deflate this
/// server can accept. An offer is declined when it has a parameter RFC 7692 does not define, one
/// twice, a bad value, or `server_max_window_bits` below 15 (the compressor's window is 15 bits).
pub fn accepts(headers: &HeaderMap) -> bool {
    headers
        .get_all(http::header::SEC_WEBSOCKET_EXTENSIONS)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(acceptable)
}

fn acceptable(offer: &str) -> bool {
    let mut parts = offer.split(';').map(str::trim);
    if !parts
        .next()
        .is_some_and(|n| n.eq_ignore_ascii_case("permessage-deflate"))
    {
        return false;
    }
    let mut seen = Vec::new();
    for p in parts {
        let (name, value) = match p.split_once('=') {
            Some((n, v)) => (n.trim(), Some(v.trim().trim_matches('"'))),
            None => (p, None),
        };
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return false;
        }
        let bits = |v: &str| v.parse::<u8>().ok().filter(|b| (8..=15).contains(b));
        let ok = match (name.as_str(), value) {
            ("server_no_context_takeover" | "client_no_context_takeover", None) => true,
            ("client_max_window_bits", None) => true,
            ("client_max_window_bits", Some(v)) => bits(v).is_some(),
            ("server_max_window_bits", Some(v)) => bits(v) == Some(15),
            _ => false,
        };
        if !ok {
            return false;
        }
        seen.push(name);
    }
    true
}

/// Builds compressed text frames, each message on its own (no context kept between them).
pub struct Compressor {
    c: Compress,
    out: Vec<u8>,
}

impl Default for Compressor {
    fn default() -> Self {
        Compressor {
            c: Compress::new(Compression::default(), false),
            out: Vec::new(),
        }
    }
}

impl Compressor {
    /// The complete compressed text frame (RSV1 set) of `payload`, or `None` when compressing
    /// would not make it smaller.
    pub fn frame(&mut self, payload: &[u8]) -> Option<Bytes> {
        self.c.reset();
        self.out.clear();
        self.out.reserve(payload.len() / 2 + 64);
        loop {
            let read = self.c.total_in() as usize;
            let before = self.out.len();
            self.c
                .compress_vec(&payload[read..], &mut self.out, FlushCompress::Sync)
                .ok()?;
            let done = self.c.total_in() as usize == payload.len();
            // Done when all input is in and the flush fitted (output space was left over).
            if done && self.out.len() < self.out.capacity() {
                break;
            }
            if self.out.len() == before && done {
                break;
            }
            self.out.reserve(self.out.capacity().max(64));
        }
        let body = self.out.strip_suffix(&TAIL).unwrap_or(&self.out);
        (body.len() < payload.len()).then(|| super::frame::compressed_text_frame(body))
    }
}

/// Inflates a client's compressed messages, each on its own, refusing any that inflates past
/// the message limit (a small frame that inflates to megabytes closes with 1009, having used no
/// more than a chunk of memory).
pub struct Inflater {
    d: Decompress,
    /// Bytes this message has inflated to so far.
    size: usize,
}

impl Default for Inflater {
    fn default() -> Self {
        Inflater {
            d: Decompress::new(false),
            size: 0,
        }
    }
}

/// Inflated bytes are handed on in chunks of this size.
const CHUNK: usize = 1024;

impl Inflater {
    /// Inflates one frame's (unmasked) compressed payload, the message's last when `fin`, and
    /// hands what comes out to `sink` in chunks.
    ///
    /// # Errors
    /// The message inflates past `max` bytes, or is not deflate data, or `sink` failed.
    pub fn feed<E: From<InflateError>>(
        &mut self,
        input: &[u8],
        fin: bool,
        max: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<(), E> {
        let ended = self.run(input, max, sink)?;
        if fin {
            if !ended {
                self.run(&TAIL, max, sink)?;
            }
            self.d.reset(false);
            self.size = 0;
        }
        Ok(())
    }

    /// Inflates `input` whole; `true` when the deflate stream ended (a final block).
    fn run<E: From<InflateError>>(
        &mut self,
        mut input: &[u8],
        max: usize,
        sink: &mut dyn FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<bool, E> {
        let mut buf = [0u8; CHUNK];
        loop {
            let (i, o) = (self.d.total_in(), self.d.total_out());
            let status = self
                .d
                .decompress(input, &mut buf, FlushDecompress::None)
                .map_err(|_| InflateError::Corrupt)?;
            let used = (self.d.total_in() - i) as usize;
            let made = (self.d.total_out() - o) as usize;
            input = &input[used..];
            self.size += made;
            if self.size > max {
                return Err(InflateError::TooBig.into());
            }
            sink(&buf[..made])?;
            if status == Status::StreamEnd {
                return Ok(true);
            }
            if made < CHUNK && (input.is_empty() || used == 0) {
                return Ok(false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn offered(values: &[&str]) -> bool {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        accepts(&h)
    }

    #[test]
    fn offers_are_accepted_only_when_this_server_can_honour_them() {
        // What Chromium and Firefox send.
        assert!(offered(&["permessage-deflate; client_max_window_bits"]));
        assert!(offered(&["permessage-deflate"]));
        assert!(offered(&[
            "permessage-deflate; server_no_context_takeover; client_no_context_takeover"
        ]));
        assert!(offered(&["permessage-deflate; server_max_window_bits=15"]));
        assert!(offered(&[
            "permessage-deflate; client_max_window_bits=\"10\""
        ]));
        // The first offer cannot be honoured, the second can.
        assert!(offered(&[
            "permessage-deflate; server_max_window_bits=10, permessage-deflate"
        ]));
        assert!(offered(&["x-webkit-deflate-frame", "permessage-deflate"]));
        for bad in [
            "",
            "x-webkit-deflate-frame",
            "permessage-deflate; server_max_window_bits=10",
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; client_max_window_bits=16",
            "permessage-deflate; server_no_context_takeover=1",
            "permessage-deflate; client_no_context_takeover; client_no_context_takeover",
            "permessage-deflate; unknown",
        ] {
            assert!(!offered(&[bad]), "{bad:?}");
        }
        assert!(!accepts(&HeaderMap::new()));
    }

    /// What a client does with a compressed frame: append the tail and inflate.
    fn client_inflate(frame: &[u8]) -> Vec<u8> {
        assert_eq!(frame[0], 0xC1, "FIN, RSV1, text");
        let (len, at) = match frame[1] {
            126 => (u16::from_be_bytes([frame[2], frame[3]]) as usize, 4),
            n => (n as usize, 2),
        };
        assert_eq!(frame.len(), at + len);
        let mut data = frame[at..].to_vec();
        data.extend_from_slice(&TAIL);
        let mut d = Decompress::new(false);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&data, &mut out, FlushDecompress::Sync)
            .unwrap();
        out
    }

    #[test]
    fn each_frame_inflates_on_its_own_to_its_payload() {
        let mut c = Compressor::default();
        let event = br#"{"type":"created","task_id":12,"board_id":3,"title":"Write the release notes","completed":false,"seq":7}"#;
        let first = c.frame(event).expect("it compresses");
        assert!(first.len() < event.len() + 2, "{} bytes", first.len());
        assert_eq!(client_inflate(&first), event);
        // No context is kept: the same event gives the same bytes again.
        assert_eq!(c.frame(event).unwrap(), first);
        let big: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{i},").into_bytes())
            .collect();
        assert!(
            client_inflate(&c.frame(&big).unwrap()) == big,
            "a large event"
        );
        assert_eq!(c.frame(b"{}"), None, "too small to gain");
    }

    fn deflated(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::best(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        out.strip_suffix(&TAIL).unwrap().to_vec()
    }

    fn inflate(i: &mut Inflater, parts: &[&[u8]], max: usize) -> Result<Vec<u8>, InflateError> {
        let mut out = Vec::new();
        for (n, p) in parts.iter().enumerate() {
            i.feed(p, n == parts.len() - 1, max, &mut |c| {
                out.extend_from_slice(c);
                Ok(())
            })?;
        }
        Ok(out)
    }

    #[test]
    fn inflation_is_bounded_by_the_message_limit_and_keeps_no_context() {
        let mut i = Inflater::default();
        let msg = br#"{"type":"auth","token":"abc"}"#;
        let d = deflated(msg);
        assert_eq!(inflate(&mut i, &[&d], 4096).unwrap(), msg);
        // Split across fragments anywhere.
        assert_eq!(inflate(&mut i, &[&d[..3], &d[3..]], 4096).unwrap(), msg);
        assert_eq!(
            inflate(&mut i, &[&d], 4096).unwrap(),
            msg,
            "fresh each time"
        );
        // A bomb: about a kilobyte that inflates to 1 MiB.
        let bomb = deflated(&vec![b'a'; 1 << 20]);
        assert!(bomb.len() <= 1100, "{} bytes", bomb.len());
        assert_eq!(inflate(&mut i, &[&bomb], 4096), Err(InflateError::TooBig));
        let mut i = Inflater::default();
        assert_eq!(
            inflate(&mut i, &[&[0xff, 0xff, 0xff, 0xff]], 4096),
            Err(InflateError::Corrupt)
        );
    }
}
