//! The connections a server accepts, held to its [`ConnectionLimits`]:
//! how many may be open at once, how long one may take to finish its TLS
//! handshake, and how long one may sit silent.
//!
//! - A server at `max_connections` stops accepting: further connections
//!   wait in the kernel's listen queue until one closes (or their client
//!   gives up), so a flood of idle sockets cannot exhaust the process.
//! - A connection that has not completed its TLS handshake within
//!   `handshake_timeout_ms` is closed (tonic's TLS acceptor enforces it,
//!   see `tls::server_config`).
//! - A connection with no traffic either way for `idle_timeout_ms` is
//!   closed. Clients reconnect by themselves on their next call; the
//!   timeout must exceed the statement timeout, so that a statement that
//!   works a long time before its first row keeps its connection.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tokio_stream::StreamExt;
use tonic::transport::server::{Connected, TcpConnectInfo, TcpIncoming};

use crate::config::ConnectionLimits;

/// The connections accepted on `listener` within `limits`, with Nagle's
/// algorithm off (requests and replies are small and latency-bound).
pub fn incoming(listener: TcpListener, limits: &ConnectionLimits) -> impl Stream<Item = io::Result<Connection>> {
    let accepted = TcpIncoming::from(listener).with_nodelay(Some(true));
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let idle = Duration::from_millis(limits.idle_timeout_ms);
    futures::stream::unfold((accepted, permits), move |(mut accepted, permits)| async move {
        // Waits for a free place before accepting the next connection.
        let permit = permits.clone().acquire_owned().await.ok()?;
        let next = accepted.next().await?;
        let connection = next.map(|stream| Connection::new(stream, permit, idle));
        Some((connection, (accepted, permits)))
    })
}

/// An accepted connection: it holds one of the server's places until it
/// closes, and fails once it has been silent for the idle timeout.
pub struct Connection {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
    idle: Duration,
    silent_until: Pin<Box<Sleep>>,
}

impl Connection {
    fn new(stream: TcpStream, place: OwnedSemaphorePermit, idle: Duration) -> Connection {
        Connection { stream, _place: place, idle, silent_until: Box::pin(tokio::time::sleep(idle)) }
    }

    /// Traffic: the idle clock starts again.
    fn heard(&mut self) {
        let until = Instant::now() + self.idle;
        self.silent_until.as_mut().reset(until);
    }

    /// `Ready` with an error once the connection has been silent too long.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.silent_until
            .as_mut()
            .poll(cx)
            .map(|()| io::Error::new(io::ErrorKind::TimedOut, "connection closed after sitting idle (idle_timeout_ms)"))
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.heard();
                }
                Poll::Ready(r)
            }
            Poll::Pending => self.poll_idle(cx).map(Err),
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 {
                self.heard();
            }
        }
        written
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = written {
            if n > 0 {
                self.heard();
            }
        }
        written
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[tokio::test]
    async fn places_are_limited_and_silent_connections_close() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = ConnectionLimits { max_connections: 1, handshake_timeout_ms: 1_000, idle_timeout_ms: 200 };
        let mut accepted = Box::pin(incoming(listener, &limits));
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let mut first = accepted.next().await.unwrap().unwrap();
        // The only place is taken: the second connection waits.
        let _second_client = TcpStream::connect(addr).await.unwrap();
        let waiting = tokio::time::timeout(Duration::from_millis(100), accepted.next()).await;
        assert!(waiting.is_err(), "a second connection was accepted beyond max_connections");
        // The first, silent, is closed after the idle timeout...
        let mut buf = [0u8; 8];
        let e = first.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        drop(first);
        // ...which frees its place for the second.
        let second = tokio::time::timeout(Duration::from_secs(5), accepted.next()).await;
        assert!(matches!(second, Ok(Some(Ok(_)))), "the freed place was not given to the waiting connection");
    }
}
