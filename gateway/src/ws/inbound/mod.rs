//! Frames from a WebSocket client, read with a buffer that costs nothing while the client is
//! silent. Clients of `/ws` only ever send pongs, pings and close (anything else is skipped), so
//! a connection should not pin a general-purpose 8 KiB read buffer for its whole life: at 100k
//! idle connections that alone is 800 MiB (measured: 15 KiB per connection before, see
//! BENCHMARKS.md). This reader grows its buffer only when bytes arrive and frees it when a large
//! frame has been consumed.
use tokio::io::{AsyncRead, AsyncReadExt};

/// RFC 6455 opcodes the session acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ping,
    Pong,
    Close,
    /// Text, binary or continuation: ignored by the session.
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
    /// The message in progress: `None` between messages, `Some(true)` inside a text message
    /// (whose UTF-8 is checked as it arrives), `Some(false)` inside a binary one.
    message: Option<bool>,
    /// The start of a UTF-8 character cut by a fragment boundary (at most 3 bytes).
    partial: Vec<u8>,
}

/// Buffers above this are released once drained, so one large frame does not pin memory.
const KEEP: usize = 256;

impl<R: AsyncRead + Unpin> Reader<R> {
    pub fn new(io: R, max_payload: usize) -> Self {
        Reader {
            io,
            buf: Vec::new(),
            max: max_payload,
            message: None,
            partial: Vec::new(),
        }
    }

    /// The next frame. Cancel-safe between frames: partial input stays in the buffer.
    pub async fn next(&mut self) -> Result<Inbound, ReadError> {
        loop {
            if let Some((frame, used)) = parse(&self.buf, self.max)? {
                if let Some(data) = frame.data {
                    check_message(
                        &mut self.message,
                        &mut self.partial,
                        &self.buf[..used],
                        data,
                    )?;
                }
                let frame = frame.inbound;
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

/// Follows data frames across fragments: continuations only inside a message, no new message
/// inside one, and text that is valid UTF-8 (RFC 6455 §8.1: else close with 1007). `message` and
/// `partial` are the reader's state (see [`Reader`]).
fn check_message(
    message: &mut Option<bool>,
    partial: &mut Vec<u8>,
    raw: &[u8],
    d: DataFrame,
) -> Result<(), ReadError> {
    let text = match (d.opcode, *message) {
        (0x0, Some(text)) => text,
        (0x0, None) => return Err(protocol("continuation frame outside a message")),
        (_, Some(_)) => return Err(protocol("new message inside a fragmented one")),
        (op, None) => op == 0x1,
    };
    *message = (!d.fin).then_some(text);
    if !text {
        return Ok(());
    }
    let mut bytes = std::mem::take(partial);
    bytes.extend(
        raw[d.payload.clone()]
            .iter()
            .enumerate()
            .map(|(i, v)| v ^ d.mask[i % 4]),
    );
    match std::str::from_utf8(&bytes) {
        Ok(_) => Ok(()),
        // A character cut at the end of a fragment that is not the last: wait for the rest.
        Err(e) if e.error_len().is_none() && !d.fin => {
            *partial = bytes[e.valid_up_to()..].to_vec();
            Ok(())
        }
        Err(_) => Err(ReadError::Protocol {
            close_code: 1007,
            reason: "invalid UTF-8 in a text message",
        }),
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
    mask: [u8; 4],
    payload: std::ops::Range<usize>,
}

/// A parsed frame: what the session sees, and for data frames what the message check needs.
#[derive(Debug)]
struct Parsed {
    inbound: Inbound,
    data: Option<DataFrame>,
}

/// Parses one frame from the front of `b`: `None` if more bytes are needed.
fn parse(b: &[u8], max: usize) -> Result<Option<(Parsed, usize)>, ReadError> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    if b[0] & 0x70 != 0 {
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
        return Err(ReadError::Protocol {
            close_code: 1009,
            reason: "message too big",
        });
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
mod tests {
    use super::*;

    /// A masked client frame, as a browser sends it.
    fn client_frame(op: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x11, 0x22, 0x33, 0x44];
        let mut f = vec![0x80 | op];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xffff => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, v)| v ^ mask[i % 4]));
        f
    }

    /// A frame with `fin` and `op` as given (client-masked).
    fn fragment(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = client_frame(op, payload);
        if !fin {
            f[0] &= 0x7f;
        }
        f
    }

    async fn read_all(bytes: Vec<u8>) -> Result<Vec<Kind>, ReadError> {
        let mut io = tokio_test_io(bytes);
        let mut r = Reader::new(&mut io, 4096);
        let mut kinds = Vec::new();
        loop {
            match r.next().await {
                Ok(f) => kinds.push(f.kind),
                Err(ReadError::Eof) => return Ok(kinds),
                Err(e) => return Err(e),
            }
        }
    }

    #[tokio::test]
    async fn text_must_be_utf8_even_when_a_character_spans_fragments() {
        let e = read_all(client_frame(0x1, b"ok \xff")).await.unwrap_err();
        assert_eq!(
            e,
            ReadError::Protocol {
                close_code: 1007,
                reason: "invalid UTF-8 in a text message"
            }
        );
        // "é" = C3 A9, cut between two fragments: fine.
        let mut split = fragment(false, 0x1, b"caf\xc3");
        split.extend(fragment(true, 0x0, b"\xa9!"));
        assert_eq!(read_all(split).await.unwrap().len(), 2);
        // A cut character never completed.
        let mut cut = fragment(false, 0x1, b"caf\xc3");
        cut.extend(fragment(true, 0x0, b"!"));
        assert!(matches!(
            read_all(cut).await,
            Err(ReadError::Protocol {
                close_code: 1007,
                ..
            })
        ));
        let mut trailing = fragment(false, 0x1, b"a");
        trailing.extend(fragment(true, 0x0, b"\xc3"));
        assert!(read_all(trailing).await.is_err());
        // Binary data is not text.
        assert!(read_all(client_frame(0x2, b"\xff\xfe")).await.is_ok());
    }

    #[tokio::test]
    async fn fragments_must_belong_to_a_message() {
        let stray = read_all(client_frame(0x0, b"x")).await.unwrap_err();
        assert!(matches!(
            stray,
            ReadError::Protocol {
                close_code: 1002,
                ..
            }
        ));
        let mut nested = fragment(false, 0x1, b"a");
        nested.extend(client_frame(0x1, b"b"));
        assert!(matches!(
            read_all(nested).await,
            Err(ReadError::Protocol {
                close_code: 1002,
                ..
            })
        ));
        // A control frame may come between fragments.
        let mut ok = fragment(false, 0x1, b"a");
        ok.extend(client_frame(0x9, b"p"));
        ok.extend(fragment(true, 0x0, b"b"));
        assert_eq!(
            read_all(ok).await.unwrap(),
            vec![Kind::Data, Kind::Ping, Kind::Data]
        );
    }

    #[tokio::test]
    async fn reads_control_frames_split_anywhere_and_skips_data() {
        let mut bytes = client_frame(0x1, b"hello, ignored");
        bytes.extend(client_frame(0xA, b"pong-data"));
        bytes.extend(client_frame(0x8, &[0x03, 0xe8, b'b', b'y', b'e']));
        // Deliver one byte at a time: every split point must work.
        let mut builder = tokio_test_io(bytes);
        let mut r = Reader::new(&mut builder, 4096);
        assert_eq!(r.next().await.unwrap().kind, Kind::Data);
        assert_eq!(
            r.next().await.unwrap(),
            Inbound {
                kind: Kind::Pong,
                payload: b"pong-data".to_vec()
            }
        );
        let close = r.next().await.unwrap();
        assert_eq!(close.kind, Kind::Close);
        assert_eq!(close.payload, [0x03, 0xe8, b'b', b'y', b'e']);
        assert_eq!(r.next().await.unwrap_err(), ReadError::Eof);
    }

    /// A reader that yields one byte per read.
    fn tokio_test_io(bytes: Vec<u8>) -> impl AsyncRead + Unpin {
        struct OneByte(std::collections::VecDeque<u8>);
        impl AsyncRead for OneByte {
            fn poll_read(
                mut self: std::pin::Pin<&mut Self>,
                _: &mut std::task::Context<'_>,
                buf: &mut tokio::io::ReadBuf<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                if let Some(b) = self.0.pop_front() {
                    buf.put_slice(&[b]);
                }
                std::task::Poll::Ready(Ok(()))
            }
        }
        OneByte(bytes.into())
    }

    #[test]
    fn unmasked_oversized_and_bad_control_frames_are_refused() {
        assert_eq!(
            parse(&[0x89, 0x00], 4096).unwrap_err(),
            protocol("client frames must be masked")
        );
        let big = client_frame(0x2, &vec![0; 5000]);
        assert!(matches!(
            parse(&big, 4096),
            Err(ReadError::Protocol {
                close_code: 1009,
                ..
            })
        ));
        let long_ping = client_frame(0x9, &[0; 126]);
        assert_eq!(
            parse(&long_ping, 4096).unwrap_err(),
            protocol("invalid control frame")
        );
        assert_eq!(
            parse(&[0xC9, 0x80], 4096).unwrap_err(),
            protocol("reserved bits set")
        );
    }

    #[test]
    fn a_large_frame_does_not_keep_its_buffer() {
        let f = client_frame(0x2, &vec![7; 3000]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        rt.block_on(async {
            let mut r = Reader::new(&f[..], 4096);
            r.next().await.unwrap();
            assert_eq!(r.buf.capacity(), 0);
        });
    }
}
