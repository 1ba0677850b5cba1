//! The writing side of a session: pre-built frames to the socket, several per vectored write, each
//! write under a deadline; after a timeout it remembers where it stopped, so the half-written frame
//! can be finished before a close frame.
use std::io::IoSlice;
use std::time::Duration;

use fastwebsockets::Frame;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// Why a write failed.
#[derive(Debug)]
pub enum WriteError {
    /// The socket took nothing for the whole deadline (a client that does not read).
    TimedOut,
    Io(String),
}

/// What a writer writes: frames as they are, or an event in the form its socket negotiated.
pub trait Wire {
    fn wire(&self, deflate: bool) -> &[u8];
}

impl<T: AsRef<[u8]>> Wire for T {
    fn wire(&self, _: bool) -> &[u8] {
        self.as_ref()
    }
}

impl Wire for crate::fanout::delivery::Delivery {
    fn wire(&self, deflate: bool) -> &[u8] {
        Self::wire(self, deflate)
    }
}

/// The writing side: raw frames to the socket, with a deadline on every write.
pub struct Writer<W> {
    pub io: W,
    /// The socket negotiated permessage-deflate: events go out as their compressed frames.
    pub deflate: bool,
    timeout: Duration,
    /// Scratch space for control frames.
    scratch: Vec<u8>,
    /// After a write timed out: the rest of the frame it left half-written (the client must get
    /// it whole before a close frame can follow), and how many frames of that write were whole.
    pub unfinished: Vec<u8>,
    pub whole: usize,
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub fn new(io: W, timeout: Duration) -> Self {
        Writer {
            io,
            deflate: false,
            timeout,
            scratch: Vec::new(),
            unfinished: Vec::new(),
            whole: 0,
        }
    }

    pub async fn bytes(&mut self, b: &[u8]) -> Result<(), WriteError> {
        self.frames(&[b]).await
    }

    /// Writes several frames with as few syscalls as the socket allows. On a timeout, `whole` and
    /// `unfinished` say where it stopped.
    pub async fn frames<F: Wire>(&mut self, frames: &[F]) -> Result<(), WriteError> {
        let mut first = 0; // first frame not completely written
        let mut offset = 0; // bytes of it already written
        let deflate = self.deflate;
        let frame = |i: usize| frames[i].wire(deflate);
        let io = &mut self.io;
        let write_all = async {
            while first < frames.len() {
                let mut slices: Vec<IoSlice<'_>> = Vec::with_capacity(frames.len() - first);
                slices.push(IoSlice::new(&frame(first)[offset..]));
                slices.extend((first + 1..frames.len()).map(|i| IoSlice::new(frame(i))));
                let mut n = io.write_vectored(&slices).await?;
                if n == 0 {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero));
                }
                while first < frames.len() && n > 0 {
                    let left = frame(first).len() - offset;
                    if n >= left {
                        n -= left;
                        first += 1;
                        offset = 0;
                    } else {
                        offset += n;
                        n = 0;
                    }
                }
            }
            Ok::<(), std::io::Error>(())
        };
        match tokio::time::timeout(self.timeout, write_all).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WriteError::Io(e.to_string())),
            Err(_) => {
                self.whole = first;
                self.unfinished.clear();
                if offset > 0 {
                    self.unfinished.extend_from_slice(&frame(first)[offset..]);
                    // The half-written frame will be finished before the close: count it.
                    self.whole += 1;
                }
                Err(WriteError::TimedOut)
            }
        }
    }

    /// Writes the rest of a frame whose start went out elsewhere (the hub's direct write). On a
    /// timeout, all that is still unwritten of it is in `unfinished`, even when none of it went
    /// out here: the client must get the frame whole before a close frame can follow.
    pub async fn finish(&mut self, rest: &[u8]) -> Result<(), WriteError> {
        let r = self.bytes(rest).await;
        if matches!(r, Err(WriteError::TimedOut)) && self.unfinished.is_empty() {
            self.unfinished = rest.to_vec();
        }
        r
    }

    pub async fn control(&mut self, mut frame: Frame<'_>) -> Result<(), WriteError> {
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = self.bytes(frame.write(&mut scratch)).await;
        self.scratch = scratch;
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::frame::text_frame;
    use bytes::Bytes;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn a_timed_out_write_keeps_the_rest_of_its_half_written_frame() {
        let (a, mut b) = tokio::io::duplex(10);
        let mut wr = Writer::new(a, Duration::from_millis(50));
        let frames = [
            text_frame(b"0123"),
            text_frame(b"abcdefghij"),
            text_frame(b"z"),
        ];
        assert!(matches!(
            wr.frames(&frames).await,
            Err(WriteError::TimedOut)
        ));
        // 10 bytes went out: frame 0 (6 bytes) whole, 4 bytes of frame 1.
        assert_eq!(wr.whole, 2, "the half-written frame counts as sent");
        assert_eq!(wr.unfinished, frames[1][4..].to_vec());
        let mut got = vec![0u8; 10];
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..6], &frames[0][..]);
    }

    #[tokio::test]
    async fn the_rest_of_a_frame_begun_elsewhere_is_kept_whole_when_nothing_of_it_goes_out() {
        let (a, mut b) = tokio::io::duplex(4);
        let mut wr = Writer::new(a, Duration::from_millis(50));
        wr.bytes(b"head").await.unwrap();
        assert!(matches!(
            wr.finish(b"tail").await,
            Err(WriteError::TimedOut)
        ));
        assert_eq!(wr.unfinished, b"tail", "nothing of it went out");
        let mut got = [0u8; 4];
        b.read_exact(&mut got).await.unwrap();
        let (a, mut b) = tokio::io::duplex(4);
        let mut wr = Writer::new(a, Duration::from_millis(50));
        assert!(matches!(
            wr.finish(b"0123456789").await,
            Err(WriteError::TimedOut)
        ));
        assert_eq!(wr.unfinished, b"456789", "four bytes went out");
        b.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"0123");
    }

    #[tokio::test]
    async fn batched_frames_arrive_whole_and_in_order_through_partial_writes() {
        // A pipe with a tiny buffer forces many partial vectored writes.
        let (a, mut b) = tokio::io::duplex(7);
        let mut wr = Writer::new(a, Duration::from_secs(5));
        let frames: Vec<Bytes> = (0..20)
            .map(|i| text_frame(format!("event number {i}").as_bytes()))
            .collect();
        let expected: Vec<u8> = frames.iter().flat_map(|f| f.to_vec()).collect();
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; expected.len()];
            tokio::io::AsyncReadExt::read_exact(&mut b, &mut got)
                .await
                .unwrap();
            assert_eq!(got, expected);
        });
        wr.frames(&frames).await.unwrap();
        reader.await.unwrap();
    }
}
