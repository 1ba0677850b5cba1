//! Frames from a WebSocket client, read with a buffer that costs nothing while the client is
//! silent. Clients of `/ws` send pongs, pings, close and now and then a text message (a token
//! refresh; binary messages are skipped), so
//! a connection should not pin a general-purpose 8 KiB read buffer for its whole life: at 100k
//! idle connections that alone is 800 MiB (measured: 15 KiB per connection before, see
//! BENCHMARKS.md). This reader grows its buffer only when bytes arrive and frees it when a large
//! frame has been consumed.
use tokio::io::{AsyncRead, AsyncReadExt};

use super::deflate::{InflateError, Inflater};

/// RFC 6455 opcodes the session acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Pong,
    Close,
    /// A whole text message (after its last fragment, inflated): its payload is the text.
    Text,
    /// Any other data frame (binary, or a text fragment before the last): skipped.
    Data,
}

/// One complete (unmasked) frame from the client.
#[derive(Debug, PartialEq, Eq)]
pub struct Inbound {
    pub kind: Kind,
    pub payload: Vec<u8>,
}

/// Why reading stopped; `close_code` is what to tell the client, if anything.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    Eof,
    Io(String),
    /// A protocol violation (1002) or an oversized message (1009).
    Protocol {
        close_code: u16,
        reason: &'static str,
    },
}

/// Reads client frames from `io`.
pub struct Reader<R> {
    io: R,
    buf: Vec<u8>,
    max: usize,
    /// The message in progress: `None` between messages, else whether it is text (whose UTF-8
    /// is checked as it arrives) and whether it is compressed.
    message: Option<Message>,
    /// The start of a UTF-8 character cut by a fragment boundary (at most 3 bytes).
    partial: Vec<u8>,
    /// With permessage-deflate negotiated: compressed messages (RSV1 on their first frame) are
    /// inflated, within `max`, so that their text can be checked like any other.
    inflater: Option<Box<Inflater>>,
    /// The text message in progress (at most `max` bytes in all its fragments).
    text: Vec<u8>,
}

/// A data message in progress.
#[derive(Clone, Copy, Debug)]
struct Message {
    text: bool,
    compressed: bool,
}

/// Buffers above this are released once drained, so one large frame does not pin memory.
const KEEP: usize = 256;

impl<R: AsyncRead + Unpin> Reader<R> {
    /// A reader of frames up to `max_payload` bytes (and, with `deflate`, of compressed messages
    /// that inflate to no more than that).
    pub fn new(io: R, max_payload: usize, deflate: bool) -> Self {
        Reader {
            io,
            buf: Vec::new(),
            max: max_payload,
            message: None,
            partial: Vec::new(),
            inflater: deflate.then(Box::default),
            text: Vec::new(),
        }
    }

    /// The next frame. Cancel-safe between frames: partial input stays in the buffer.
    pub async fn next(&mut self) -> Result<Inbound, ReadError> {
        loop {
            let deflate = self.inflater.is_some();
            if let Some((parsed, used)) = parse(&self.buf, self.max, deflate)? {
                let mut frame = parsed.inbound;
                if let Some(data) = parsed.data {
                    if let Some(text) = self.check_message(used, data)? {
                        frame = Inbound {
                            kind: Kind::Text,
                            payload: text,
                        };
                    }
                }
                self.buf.drain(..used);
                if self.buf.is_empty() && self.buf.capacity() > KEEP {
                    self.buf = Vec::new();
                }
                return Ok(frame);
            }
            self.buf.reserve(KEEP.min(self.max + 14));
            match self.io.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ReadError::Eof),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e.to_string())),
            }
        }
    }
}

impl<R> Reader<R> {
    /// Follows data frames across fragments: continuations only inside a message, no new
    /// message inside one, and text that is valid UTF-8 (RFC 6455 §8.1: else close with 1007),
    /// after inflation for a compressed message. The frame is the first `used` bytes of `buf`.
    /// Returns the whole text of a text message its last fragment completes.
    fn check_message(&mut self, used: usize, d: DataFrame) -> Result<Option<Vec<u8>>, ReadError> {
        let m = match (d.opcode, self.message) {
            (0x0, Some(m)) if !d.compressed => m,
            (0x0, Some(_)) => return Err(protocol("RSV1 set on a continuation frame")),
            (0x0, None) => return Err(protocol("continuation frame outside a message")),
            (_, Some(_)) => return Err(protocol("new message inside a fragmented one")),
            (op, None) => Message {
                text: op == 0x1,
                compressed: d.compressed,
            },
        };
        self.message = (!d.fin).then_some(m);
        if !m.text && !m.compressed {
            return Ok(None);
        }
        let payload: Vec<u8> = self.buf[..used][d.payload.clone()]
            .iter()
            .enumerate()
            .map(|(i, v)| v ^ d.mask[i % 4])
            .collect();
        let (partial, text, max) = (&mut self.partial, &mut self.text, self.max);
        // Text is kept (binary is only inflated, to check the stream) up to `max` in all.
        let mut keep = |chunk: &[u8]| {
            if m.text {
                if text.len() + chunk.len() > max {
                    return Err(too_big());
                }
                text.extend_from_slice(chunk);
            }
            Ok(())
        };
        match self.inflater.as_deref_mut() {
            Some(inflater) if m.compressed => {
                let mut check = |chunk: &[u8]| match m.text {
                    true => utf8(partial, chunk, true).and_then(|()| keep(chunk)),
                    false => Ok(()),
                };
                inflater.feed(&payload, d.fin, self.max, &mut check)?;
                if m.text {
                    utf8(partial, &[], !d.fin)?;
                }
            }
            _ => {
                utf8(partial, &payload, !d.fin)?;
                keep(&payload)?;
            }
        }
        Ok((m.text && d.fin).then(|| std::mem::take(&mut self.text)))
    }
}

fn too_big() -> ReadError {
    ReadError::Protocol {
        close_code: 1009,
        reason: "message too big",
    }
}

/// Checks that `chunk`, after the cut character in `partial`, is UTF-8; with `more` to come, a
/// character cut at its end is kept in `partial` for the next chunk.
fn utf8(partial: &mut Vec<u8>, chunk: &[u8], more: bool) -> Result<(), ReadError> {
    let mut bytes = std::mem::take(partial);
    bytes.extend_from_slice(chunk);
    match std::str::from_utf8(&bytes) {
        Ok(_) => Ok(()),
        Err(e) if e.error_len().is_none() && more => {
            *partial = bytes[e.valid_up_to()..].to_vec();
            Ok(())
        }
        Err(_) => Err(ReadError::Protocol {
            close_code: 1007,
            reason: "invalid UTF-8 in a text message",
        }),
    }
}

impl From<InflateError> for ReadError {
    fn from(e: InflateError) -> Self {
        match e {
            InflateError::TooBig => ReadError::Protocol {
                close_code: 1009,
                reason: "message too big once inflated",
            },
            InflateError::Corrupt => ReadError::Protocol {
                close_code: 1007,
                reason: "invalid compressed data",
            },
        }
    }
}

fn protocol(reason: &'static str) -> ReadError {
    ReadError::Protocol {
        close_code: 1002,
        reason,
    }
}

/// Where a data frame's (still masked) payload lies in the buffer.
#[derive(Debug)]
struct DataFrame {
    opcode: u8,
    fin: bool,
    /// RSV1: the first frame of a compressed message.
    compressed: bool,
    mask: [u8; 4],
    payload: std::ops::Range<usize>,
}

/// A parsed frame: what the session sees, and for data frames what the message check needs.
#[derive(Debug)]
struct Parsed {
    inbound: Inbound,
    data: Option<DataFrame>,
}

/// Parses one frame from the front of `b`: `None` if more bytes are needed. RSV1 is allowed on
/// data frames when compression was negotiated (`deflate`).
fn parse(b: &[u8], max: usize, deflate: bool) -> Result<Option<(Parsed, usize)>, ReadError> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    let compressed = b[0] & 0x40 != 0;
    let rsv1_allowed = deflate && b[0] & 0x0f < 0x8;
    if b[0] & 0x30 != 0 || (compressed && !rsv1_allowed) {
        return Err(protocol("reserved bits set"));
    }
    let kind = match b[0] & 0x0f {
        0x0..=0x2 => Kind::Data,
        0x8 => Kind::Close,
        0x9 => Kind::Ping,
        0xA => Kind::Pong,
        _ => return Err(protocol("unknown opcode")),
    };
    if b[1] & 0x80 == 0 {
        return Err(protocol("client frames must be masked"));
    }
    let (len, mut at) = match b[1] & 0x7f {
        126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as u64, 4),
        127 if b.len() >= 10 => (
            u64::from_be_bytes(b[2..10].try_into().unwrap_or_default()),
            10,
        ),
        126 | 127 => return Ok(None),
        n => (n as u64, 2),
    };
    if kind != Kind::Data && (len > 125 || !fin) {
        return Err(protocol("invalid control frame"));
    }
    if len > max as u64 {
        return Err(too_big());
    }
    let len = len as usize;
    if b.len() < at + 4 + len {
        return Ok(None);
    }
    let mask = [b[at], b[at + 1], b[at + 2], b[at + 3]];
    at += 4;
    let (payload, data) = if kind == Kind::Data {
        let data = DataFrame {
            opcode: b[0] & 0x0f,
            fin,
            compressed,
            mask,
            payload: at..at + len,
        };
        (Vec::new(), Some(data))
    } else {
        let p = b[at..at + len]
            .iter()
            .enumerate()
            .map(|(i, v)| v ^ mask[i % 4])
            .collect();
        (p, None)
    };
    Ok(Some((
        Parsed {
            inbound: Inbound { kind, payload },
            data,
        },
        at + len,
    )))
}

#[cfg(test)]
mod tests;
