//! The shutdown protocol's parts: the signals that start it, and connections that can be cut
//! off when its grace period runs out.
//!
//! tonic serves each connection on a task of its own, so ending the server's future does not
//! end them: a stream that never finishes (a health watch, say) would outlive the server.
//! [`CutOffIo`] wraps each accepted connection so that cancelling one token fails every read
//! and write at once, and the connection tasks end.

use std::{
    future::Future,
    io,
    pin::Pin,
    task::{Context, Poll},
};

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::transport::server::Connected;

/// Listens for SIGTERM and Ctrl-C (SIGINT) from now on, and returns a future that completes
/// when either arrives. The handlers are installed before this returns, so a signal sent as
/// soon as the service says it is serving is never lost (nor kills the process outright).
pub fn signal() -> anyhow::Result<impl Future<Output = ()> + Send + 'static> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("cannot listen for SIGTERM")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot listen for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = terminate.recv() => tracing::info!("received SIGTERM"),
            _ = interrupt.recv() => tracing::info!("received Ctrl-C"),
        }
    })
}

/// A connection that fails every read and write once its token is cancelled.
pub(crate) struct CutOffIo<T> {
    inner: T,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl<T> CutOffIo<T> {
    pub(crate) fn new(inner: T, token: &CancellationToken) -> Self {
        Self {
            inner,
            cut: Box::pin(token.clone().cancelled_owned()),
        }
    }

    /// Ready with an error once cut; registers the task to be woken when that happens.
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        self.cut.as_mut().poll(cx).map(|()| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "cut off: the shutdown grace period ran out",
            )
        })
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CutOffIo<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Poll::Ready(error) = self.poll_cut(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CutOffIo<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(error) = self.poll_cut(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if let Poll::Ready(error) = self.poll_cut(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if let Poll::Ready(error) = self.poll_cut(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl<T: Connected> Connected for CutOffIo<T> {
    type ConnectInfo = T::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_blocked_read_fails_as_soon_as_the_token_is_cancelled() {
        let (client, server) = tokio::io::duplex(64);
        let token = CancellationToken::new();
        let mut io = CutOffIo::new(server, &token);
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            io.read(&mut buf).await
        });
        tokio::task::yield_now().await;
        token.cancel();
        let error = reader.await.unwrap().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
        drop(client);
    }

    #[tokio::test]
    async fn io_passes_through_until_cancelled() {
        let (mut client, server) = tokio::io::duplex(64);
        let token = CancellationToken::new();
        let mut io = CutOffIo::new(server, &token);
        client.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        io.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
        token.cancel();
        let error = io.write_all(b"pong").await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::ConnectionAborted);
    }
}
