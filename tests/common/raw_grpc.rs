//! A gRPC client made of the `h2` crate alone: a client that is not tonic's, as grpcio or a
//! proxy are. Like grpcio, which sends BDP pings as data flows, it sends an HTTP/2 PING with
//! each call: the server answers the PING at once and the call a little later, two small
//! writes, and that is the pattern in which Nagle's algorithm on the server's socket holds
//! the second write until the client's delayed ACK (tonic's client happens not to trip it).
//! Shared by the tests and the benchmark harness (`benches/service/` includes this file by
//! path).
#![allow(dead_code)]

use std::net::SocketAddr;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

/// A TCP connection with `TCP_NODELAY` on the client's side, so any wait measured is the
/// server's.
pub async fn nodelay_tcp(addr: SocketAddr) -> TcpStream {
    let tcp = TcpStream::connect(addr).await.expect("connects");
    tcp.set_nodelay(true).expect("TCP_NODELAY on the client socket");
    tcp
}

/// One HTTP/2 connection to a gRPC server.
pub struct RawGrpc {
    send: h2::client::SendRequest<Bytes>,
    pings: h2::PingPong,
    authority: String,
}

/// What a unary call got back.
#[derive(Debug)]
pub struct RawReply {
    /// `grpc-status`, from the trailers (or the headers of a trailers-only answer).
    pub status: Option<i32>,
    /// The response message, without its 5-byte gRPC frame prefix.
    pub message: Bytes,
}

impl RawGrpc {
    /// Connects over plain TCP (see [`nodelay_tcp`]).
    pub async fn connect(addr: SocketAddr) -> Self {
        Self::over(nodelay_tcp(addr).await, &addr.to_string()).await
    }

    /// Speaks HTTP/2 over an established connection (TLS, say) to `authority`.
    pub async fn over<T>(io: T, authority: &str) -> Self
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (send, mut connection) = h2::client::handshake(io).await.expect("HTTP/2 handshake");
        let pings = connection.ping_pong().expect("the connection's ping handle");
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Self { send, pings, authority: authority.to_owned() }
    }

    /// Calls `path` (`/package.Service/Method`) with one encoded request message, with a PING
    /// alongside, and reads the whole answer and the PING's.
    pub async fn unary(&mut self, path: &str, message: &[u8]) -> RawReply {
        let (pong, reply) =
            tokio::join!(self.pings.ping(h2::Ping::opaque()), call(&self.send, &self.authority, path, message));
        pong.expect("the PING is answered");
        reply
    }
}

/// One unary call: the request message, then the whole answer.
async fn call(send: &h2::client::SendRequest<Bytes>, authority: &str, path: &str, message: &[u8]) -> RawReply {
    let request = http::Request::post(format!("http://{authority}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("a valid request");
    let mut send = send.clone().ready().await.expect("the connection takes a stream");
    let (response, mut stream) = send.send_request(request, false).expect("the request is sent");
    stream.send_data(frame(message), true).expect("the message is sent");
    let (head, mut body) = response.await.expect("a response").into_parts();
    let mut data = BytesMut::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.expect("a body chunk");
        let _ = body.flow_control().release_capacity(chunk.len());
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.expect("trailers");
    let status = trailers
        .as_ref()
        .and_then(|trailers| trailers.get("grpc-status"))
        .or_else(|| head.headers.get("grpc-status"))
        .and_then(|value| value.to_str().ok()?.parse().ok());
    let message = if data.len() >= 5 { data.freeze().slice(5..) } else { Bytes::new() };
    RawReply { status, message }
}

/// A message in gRPC's length-prefixed framing, uncompressed.
fn frame(message: &[u8]) -> Bytes {
    let mut framed = BytesMut::with_capacity(5 + message.len());
    framed.put_u8(0);
    framed.put_u32(u32::try_from(message.len()).expect("a small message"));
    framed.put_slice(message);
    framed.freeze()
}
