//! What bounds one accepted connection, whoever is on the other end, and the accept loop:
//!
//! - a handshake deadline: a connection that has made no call within it of being accepted (a
//!   TLS handshake that never ends, an HTTP/2 preface that never comes, a socket opened and
//!   left idle) is closed;
//! - a write deadline: a connection whose peer reads nothing of what the server writes for that
//!   long is closed, and the responses queued for it freed;
//! - accept errors (out of descriptors, of memory) pause the accept loop, longer each time,
//!   rather than spin on an error that repeats until a connection closes.
//!
//! The cap on concurrent streams of a connection is HTTP/2's own (the server's SETTINGS), and
//! the size of what each stream may buffer is bounded by the message limits and flow control.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use futures_util::Stream;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::{Instant, Sleep},
};
use tonic::transport::server::{Connected, TcpConnectInfo, TlsConnectInfo};

use crate::metrics::Metrics;

/// The deadlines of every connection.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadlines {
    /// From accept to the first call.
    pub(crate) handshake: Duration,
    /// The longest a write may wait for the peer to read.
    pub(crate) write: Duration,
}

/// What the server knows of a connection, in the extensions of each request made on it.
#[derive(Debug, Clone)]
pub(crate) struct Peer {
    tcp: TcpConnectInfo,
    called: Arc<AtomicBool>,
}

impl Peer {
    /// The peer's address.
    pub(crate) fn address(&self) -> Option<SocketAddr> {
        self.tcp.remote_addr()
    }

    /// The connection of a request (with or without TLS), if it came through [`Bounded`].
    pub(crate) fn of(extensions: &http::Extensions) -> Option<&Peer> {
        extensions.get::<Peer>().or_else(|| {
            extensions
                .get::<TlsConnectInfo<Peer>>()
                .map(TlsConnectInfo::get_ref)
        })
    }

    /// The client certificates of a request's TLS connection.
    pub(crate) fn certificates(
        extensions: &http::Extensions,
    ) -> Option<Arc<Vec<tonic::transport::CertificateDer<'static>>>> {
        extensions
            .get::<TlsConnectInfo<Peer>>()
            .and_then(TlsConnectInfo::peer_certs)
    }

    /// Marks the connection as having made a call: its handshake deadline no longer applies.
    pub(crate) fn called(extensions: &http::Extensions) {
        if let Some(peer) = Self::of(extensions) {
            peer.called.store(true, Ordering::Relaxed);
        }
    }
}

/// An accepted connection under the [`Deadlines`].
pub(crate) struct Bounded<T> {
    inner: T,
    peer: Peer,
    /// Until the first call; `None` after it.
    handshake: Option<Pin<Box<Sleep>>>,
    /// Armed while a write waits for the peer.
    stalled: Option<Pin<Box<Sleep>>>,
    write_deadline: Duration,
    metrics: Arc<Metrics>,
}

impl<T: Connected<ConnectInfo = TcpConnectInfo>> Bounded<T> {
    pub(crate) fn new(inner: T, deadlines: Deadlines, metrics: &Arc<Metrics>) -> Self {
        let peer = Peer {
            tcp: inner.connect_info(),
            called: Arc::default(),
        };
        Self {
            inner,
            peer,
            handshake: Some(Box::pin(tokio::time::sleep(deadlines.handshake))),
            stalled: None,
            write_deadline: deadlines.write,
            metrics: metrics.clone(),
        }
    }
}

impl<T> Bounded<T> {
    /// Ready with an error once the handshake deadline passed without a call.
    fn poll_handshake(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        let Some(deadline) = &mut self.handshake else {
            return Poll::Pending;
        };
        if self.peer.called.load(Ordering::Relaxed) {
            self.handshake = None;
            return Poll::Pending;
        }
        ready!(deadline.as_mut().poll(cx));
        self.handshake = None;
        self.metrics.connection_closed("handshake_timeout");
        tracing::debug!(peer = ?self.peer.address(), "closing a connection that made no call in time");
        Poll::Ready(io::Error::new(
            io::ErrorKind::TimedOut,
            "no call within the handshake deadline",
        ))
    }

    /// After a write: clears the stall on progress, arms it on a wait, and fails the write
    /// once the peer has read nothing for the write deadline.
    fn after_write<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        match polled {
            Poll::Pending => {
                let deadline = self.write_deadline;
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(deadline)));
                if stalled.as_mut().poll(cx).is_ready() {
                    self.stalled = None;
                    self.metrics.connection_closed("write_timeout");
                    tracing::debug!(peer = ?self.peer.address(), "closing a connection whose peer reads nothing");
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "the peer read nothing within the write deadline",
                    )));
                }
                Poll::Pending
            }
            ready => {
                self.stalled = None;
                ready
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Bounded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(error) = self.poll_handshake(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Bounded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.after_write(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.after_write(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.after_write(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T> Connected for Bounded<T> {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.peer.clone()
    }
}

/// The first pause after an accept error; it doubles up to [`ACCEPT_PAUSE_MAX`].
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(5);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Accepted connections, pausing after an error (EMFILE, ENFILE, ENOBUFS, ENOMEM repeat until
/// something closes; the accept loop would otherwise spin on them).
pub(crate) struct Backoff<S> {
    inner: S,
    pause: Option<Pin<Box<Sleep>>>,
    next: Duration,
    metrics: Arc<Metrics>,
}

impl<S> Backoff<S> {
    pub(crate) fn new(inner: S, metrics: &Arc<Metrics>) -> Self {
        Self {
            inner,
            pause: None,
            next: ACCEPT_PAUSE_MIN,
            metrics: metrics.clone(),
        }
    }
}

impl<S, T> Stream for Backoff<S>
where
    S: Stream<Item = io::Result<T>> + Unpin,
{
    type Item = io::Result<T>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        loop {
            if let Some(pause) = &mut this.pause {
                ready!(pause.as_mut().poll(cx));
                this.pause = None;
            }
            match ready!(Pin::new(&mut this.inner).poll_next(cx)) {
                Some(Ok(accepted)) => {
                    this.next = ACCEPT_PAUSE_MIN;
                    return Poll::Ready(Some(Ok(accepted)));
                }
                Some(Err(error)) => {
                    this.metrics.accept_error();
                    tracing::warn!(%error, pause = ?this.next, "cannot accept a connection; pausing");
                    this.pause = Some(Box::pin(tokio::time::sleep_until(
                        Instant::now() + this.next,
                    )));
                    this.next = (this.next * 2).min(ACCEPT_PAUSE_MAX);
                }
                None => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accept_errors_pause_longer_each_time_and_a_success_resets_the_pause() {
        use futures_util::StreamExt as _;
        let error = || Err(io::Error::from_raw_os_error(24)); // EMFILE
        let accepted = futures_util::stream::iter(vec![error(), error(), error(), Ok(1), Ok(2)]);
        let metrics = Arc::new(Metrics::new());
        let mut backoff = Backoff::new(accepted, &metrics);
        let started = Instant::now();
        assert_eq!(backoff.next().await.unwrap().unwrap(), 1);
        // 5 + 10 + 20 ms of pauses for three errors in a row, each counted.
        assert!(started.elapsed() >= Duration::from_millis(35));
        assert_eq!(backoff.next, ACCEPT_PAUSE_MIN, "a success resets the pause");
        assert_eq!(backoff.next().await.unwrap().unwrap(), 2);
        assert!(backoff.next().await.is_none());
        assert!(
            metrics
                .prometheus()
                .contains("pipeline_control_accept_errors_total 3")
        );
    }
}
