//! A TCP listener whose connections can be cut from a handler, for the `drop` fault.

use std::{
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    extract::connect_info::Connected,
    serve::{IncomingStream, Listener},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
};

/// Wraps a [`TcpListener`]; every accepted stream carries a kill switch.
pub(crate) struct EmuListener {
    inner: TcpListener,
}

impl EmuListener {
    pub(crate) fn new(inner: TcpListener) -> Self {
        Self { inner }
    }
}

/// What a handler learns about its connection: the peer and the kill switch.
#[derive(Clone, Debug)]
pub(crate) struct ConnInfo {
    pub(crate) remote: SocketAddr,
    kill: Arc<AtomicBool>,
}

impl ConnInfo {
    /// Makes every later read see end-of-stream and every write fail, so the connection
    /// closes without another byte.
    pub(crate) fn kill(&self) {
        self.kill.store(true, Ordering::SeqCst);
    }
}

/// A TCP stream that stops working once its kill switch is set.
pub(crate) struct EmuStream {
    inner: TcpStream,
    kill: Arc<AtomicBool>,
}

impl EmuStream {
    fn killed(&self) -> bool {
        self.kill.load(Ordering::SeqCst)
    }
}

fn aborted() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection dropped by an injected fault")
}

impl AsyncRead for EmuStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for EmuStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.killed() {
            return Poll::Ready(Err(aborted()));
        }
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl Listener for EmuListener {
    type Io = EmuStream;
    type Addr = ConnInfo;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((stream, remote)) => {
                    let kill = Arc::new(AtomicBool::new(false));
                    let _ = stream.set_nodelay(true);
                    let info = ConnInfo { remote, kill: Arc::clone(&kill) };
                    return (EmuStream { inner: stream, kill }, info);
                }
                Err(error) => {
                    tracing::debug!(%error, "emulator accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(ConnInfo { remote: self.inner.local_addr()?, kill: Arc::new(AtomicBool::new(false)) })
    }
}

impl Connected<IncomingStream<'_, EmuListener>> for ConnInfo {
    fn connect_info(stream: IncomingStream<'_, EmuListener>) -> Self {
        stream.remote_addr().clone()
    }
}
