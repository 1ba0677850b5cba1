//! A session's TCP socket shared with the hub: a reading and a writing side over one
//! `Arc<TcpStream>`, so that the hub can write a frame to it directly while the session is parked.
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The reading side.
pub struct ReadSide(pub Arc<TcpStream>);

/// The writing side; dropping it shuts the socket's write direction down (as tokio's
/// `OwnedWriteHalf` does), so the client sees the end after everything written.
pub struct WriteSide(pub Arc<TcpStream>);

/// Splits `io` into its two sides and the handle the hub writes through.
pub fn share(io: TcpStream) -> (ReadSide, WriteSide, Arc<TcpStream>) {
    let io = Arc::new(io);
    (ReadSide(io.clone()), WriteSide(io.clone()), io)
}

impl AsyncRead for ReadSide {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            ready!(self.0.poll_read_ready(cx))?;
            match self.0.try_read_buf(buf) {
                Ok(_) => return Poll::Ready(Ok(())),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl WriteSide {
    fn poll_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        loop {
            ready!(self.0.poll_write_ready(cx))?;
            match write(&self.0) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return Poll::Ready(r),
            }
        }
    }
}

impl AsyncWrite for WriteSide {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write))
    }
}

impl Drop for WriteSide {
    fn drop(&mut self) {
        let _ = socket2::SockRef::from(&*self.0).shutdown(std::net::Shutdown::Write);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn both_sides_carry_bytes_and_dropping_the_writer_ends_the_stream() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (server, _) = l.accept().await.unwrap();
        let (mut r, mut w, shared) = share(server);
        // Far more than a socket buffer: the writer must wait for the reader, not fail.
        let big = vec![7u8; 8 << 20];
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            w.write_all(&sent).await.unwrap();
            drop(w);
        });
        client.write_all(b"ping").await.unwrap();
        let mut got = [0u8; 4];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        let mut all = Vec::new();
        client.read_to_end(&mut all).await.unwrap();
        writer.await.unwrap();
        assert_eq!(all.len(), big.len(), "the end came after every byte");
        assert!(
            Arc::strong_count(&shared) >= 2,
            "the hub's handle stays usable"
        );
    }
}
