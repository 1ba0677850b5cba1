//! The reader against frames as browsers send them, split anywhere, and against bad ones.
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
    read_all_with(bytes, false).await
}

/// Reads every frame of `bytes`, with compression negotiated or not.
async fn read_all_with(bytes: Vec<u8>, deflate: bool) -> Result<Vec<Kind>, ReadError> {
    Ok(messages(bytes, deflate)
        .await?
        .into_iter()
        .map(|m| m.kind)
        .collect())
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
        vec![Kind::Data, Kind::Ping, Kind::Text]
    );
}

/// Every message of `bytes`, with its payload.
async fn messages(bytes: Vec<u8>, deflate: bool) -> Result<Vec<Inbound>, ReadError> {
    let mut io = tokio_test_io(bytes);
    let mut r = Reader::new(&mut io, 4096, deflate);
    let mut all = Vec::new();
    loop {
        match r.next().await {
            Ok(f) => all.push(f),
            Err(ReadError::Eof) => return Ok(all),
            Err(e) => return Err(e),
        }
    }
}

#[tokio::test]
async fn text_messages_arrive_whole_across_fragments_within_the_limit() {
    let mut split = fragment(false, 0x1, b"{\"type\":");
    split.extend(client_frame(0x9, b"p"));
    split.extend(fragment(false, 0x0, b"\"auth\","));
    split.extend(fragment(true, 0x0, b"\"token\":\"t\"}"));
    split.extend(client_frame(0x2, b"binary is skipped"));
    split.extend(client_frame(0x1, b"next"));
    let got = messages(split, false).await.unwrap();
    let texts: Vec<&[u8]> = got
        .iter()
        .filter(|m| m.kind == Kind::Text)
        .map(|m| &m.payload[..])
        .collect();
    assert_eq!(
        texts,
        [&b"{\"type\":\"auth\",\"token\":\"t\"}"[..], b"next"]
    );
    assert_eq!(got[1].kind, Kind::Ping, "a control frame between fragments");
    assert_eq!(got[4].kind, Kind::Data);
    // Fragments each under the limit, together over it.
    let mut long = fragment(false, 0x1, &[b'a'; 3000]);
    long.extend(fragment(true, 0x0, &[b'a'; 3000]));
    assert_eq!(messages(long, false).await.unwrap_err(), too_big());
}

#[tokio::test]
async fn reads_frames_split_anywhere() {
    let mut bytes = client_frame(0x1, b"hello, ignored");
    bytes.extend(client_frame(0xA, b"pong-data"));
    bytes.extend(client_frame(0x8, &[0x03, 0xe8, b'b', b'y', b'e']));
    // Deliver one byte at a time: every split point must work.
    let mut builder = tokio_test_io(bytes);
    let mut r = Reader::new(&mut builder, 4096, false);
    assert_eq!(r.next().await.unwrap().payload, b"hello, ignored");
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
        parse(&[0x89, 0x00], 4096, false).unwrap_err(),
        protocol("client frames must be masked")
    );
    let big = client_frame(0x2, &vec![0; 5000]);
    assert!(matches!(
        parse(&big, 4096, false),
        Err(ReadError::Protocol {
            close_code: 1009,
            ..
        })
    ));
    let long_ping = client_frame(0x9, &[0; 126]);
    assert_eq!(
        parse(&long_ping, 4096, false).unwrap_err(),
        protocol("invalid control frame")
    );
    assert_eq!(
        parse(&[0xC9, 0x80], 4096, false).unwrap_err(),
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
        let mut r = Reader::new(&f[..], 4096, false);
        r.next().await.unwrap();
        assert_eq!(r.buf.capacity(), 0);
    });
}

/// A message compressed as a browser does (raw deflate, sync flush, tail removed).
fn compress(data: &[u8]) -> Vec<u8> {
    let mut c = flate2::Compress::new(flate2::Compression::best(), false);
    let mut out = Vec::with_capacity(data.len() + 64);
    c.compress_vec(data, &mut out, flate2::FlushCompress::Sync)
        .unwrap();
    out.truncate(out.len() - 4);
    out
}

/// A masked frame with RSV1 set (the first frame of a compressed message).
fn compressed(fin: bool, op: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = fragment(fin, op, payload);
    f[0] |= 0x40;
    f
}

#[tokio::test]
async fn compressed_messages_are_inflated_within_the_limit_once_negotiated() {
    let text = compress("{\"type\":\"auth\",\"token\":\"caf\u{e9}\"}".as_bytes());
    let mut two = compressed(true, 0x1, &text);
    two.extend(compressed(true, 0x1, &text));
    two.extend(client_frame(0x9, b"ping"));
    assert_eq!(
        read_all_with(two.clone(), true).await.unwrap(),
        [Kind::Text, Kind::Text, Kind::Ping]
    );
    let whole = messages(two.clone(), true).await.unwrap();
    assert_eq!(
        whole[1].payload,
        "{\"type\":\"auth\",\"token\":\"caf\u{e9}\"}".as_bytes(),
        "the second message, inflated"
    );
    // Not negotiated: RSV1 is a protocol error.
    assert_eq!(
        read_all_with(two, false).await.unwrap_err(),
        ReadError::Protocol {
            close_code: 1002,
            reason: "reserved bits set"
        }
    );
    // Fragmented: RSV1 on the first frame only.
    let mut split = compressed(false, 0x1, &text[..5]);
    split.extend(fragment(true, 0x0, &text[5..]));
    assert_eq!(read_all_with(split, true).await.unwrap().len(), 2);
    let mut bad = compressed(false, 0x1, &text[..5]);
    bad.extend(compressed(true, 0x0, &text[5..]));
    assert!(
        read_all_with(bad, true).await.is_err(),
        "RSV1 on a continuation"
    );
    let mut ping = client_frame(0x9, b"");
    ping[0] |= 0x40;
    assert!(
        read_all_with(ping, true).await.is_err(),
        "RSV1 on a control frame"
    );
    // Text is still checked, after inflation.
    let invalid = compressed(true, 0x1, &compress(b"ok \xff"));
    assert_eq!(
        read_all_with(invalid, true).await.unwrap_err(),
        ReadError::Protocol {
            close_code: 1007,
            reason: "invalid UTF-8 in a text message"
        }
    );
    let garbage = compressed(true, 0x2, &[0xff; 8]);
    assert!(matches!(
        read_all_with(garbage, true).await.unwrap_err(),
        ReadError::Protocol {
            close_code: 1007,
            ..
        }
    ));
}

#[tokio::test]
async fn a_kilobyte_that_inflates_past_the_message_limit_closes_with_1009() {
    let bomb = compress(&vec![b' '; 1 << 20]);
    assert!(bomb.len() <= 1100, "{} bytes", bomb.len());
    for op in [0x1, 0x2] {
        assert_eq!(
            read_all_with(compressed(true, op, &bomb), true)
                .await
                .unwrap_err(),
            ReadError::Protocol {
                close_code: 1009,
                reason: "message too big once inflated"
            }
        );
    }
    // Just under the limit is fine.
    let fits = compress(&[b' '; 4096]);
    assert!(read_all_with(compressed(true, 0x1, &fits), true)
        .await
        .is_ok());
}
