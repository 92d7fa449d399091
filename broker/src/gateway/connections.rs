//! The connections the gateway accepts: at most `limits.max_connections` at once, with Nagle's
//! algorithm off.
//!
//! tonic takes any stream of connections, spawns a TLS handshake for each and holds it until the
//! handshake ends; without a limit, sockets that never send a certificate pile up until the
//! process runs out of file descriptors, and then no agency can connect. Here a connection over
//! the limit is closed as soon as it is accepted, and one that does not finish its handshake is
//! closed after `limits.handshake_timeout_ms` (set on the TLS configuration), which gives its
//! place back. An accept that fails (out of descriptors, say) is retried after a pause instead of
//! ending the server.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tonic::transport::server::{Connected, TcpConnectInfo};

/// How long to wait before accepting again after an accept failed.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// An accepted connection holding one of the limited places until it is dropped.
pub struct Limited {
    stream: TcpStream,
    _place: OwnedSemaphorePermit,
}

/// The connections `listener` accepts, at most `max` open at once.
pub fn limited(
    listener: TcpListener,
    max: usize,
) -> impl Stream<Item = Result<Limited, io::Error>> + Send + 'static {
    let places = Arc::new(Semaphore::new(max));
    futures::stream::unfold((listener, places), |(listener, places)| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => match places.clone().try_acquire_owned() {
                    Ok(place) => {
                        // With Nagle on, an answer written in two parts (headers, then body and
                        // trailers) waits some 40 ms for the client's delayed ACK.
                        let _ = stream.set_nodelay(true);
                        let connection = Limited {
                            stream,
                            _place: place,
                        };
                        return Some((Ok(connection), (listener, places)));
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "connection limit reached; closing a new connection");
                        drop(stream);
                    }
                },
                Err(error) => {
                    tracing::warn!(%error, "cannot accept a connection; trying again");
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                }
            }
        }
    })
}

impl Connected for Limited {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Limited {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for Limited {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(limited(listener, 4));
        let _client = TcpStream::connect(addr).await.unwrap();
        let accepted = incoming.next().await.unwrap().unwrap();
        assert!(accepted.stream.nodelay().unwrap());
    }

    /// One over the limit is closed at once; closing one gives its place back.
    #[tokio::test]
    async fn a_connection_over_the_limit_is_closed_and_a_closed_one_frees_its_place() {
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut incoming = Box::pin(limited(listener, 1));
        let _first_client = TcpStream::connect(addr).await.unwrap();
        let first = incoming.next().await.unwrap().unwrap();
        let mut over = TcpStream::connect(addr).await.unwrap();
        let mut third = TcpStream::connect(addr).await.unwrap();
        let accepted = tokio::time::timeout(Duration::from_millis(300), incoming.next()).await;
        assert!(
            accepted.is_err(),
            "a connection over the limit was handed on"
        );
        let mut byte = [0u8; 1];
        assert_eq!(over.read(&mut byte).await.unwrap(), 0, "not closed");
        assert_eq!(third.read(&mut byte).await.unwrap(), 0, "not closed");
        drop(first);
        let _fourth_client = TcpStream::connect(addr).await.unwrap();
        let fourth = tokio::time::timeout(Duration::from_secs(5), incoming.next()).await;
        assert!(
            matches!(fourth, Ok(Some(Ok(_)))),
            "the freed place was not given"
        );
    }
}
