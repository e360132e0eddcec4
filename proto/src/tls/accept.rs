//! The server side: accepted sockets become connections that know who is on the other end.
//! The TLS handshake runs here (not in tonic), per connection in its own task with a timeout,
//! with the server config of the moment: a rotation applies to the next connection.
//!
//! A TLS port also accepts a *plaintext* HTTP/2 connection, only to answer each of its calls
//! `UNAUTHENTICATED` with a message saying the server requires TLS (a client started with
//! `--insecure` against a TLS server learns exactly that), and to let gRPC health probes that
//! carry no certificate see the serving status. Every service checks the caller per RPC.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::server::Connected;

use super::identity::PeerIdentity;
use super::io::MaybeTls;
use super::material::identity_of;
use super::Security;

/// A client that has not finished its handshake (or sent its first byte) by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The first byte of every TLS connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// Accepted connections waiting for the server to pick them up.
const ACCEPT_QUEUE: usize = 128;

/// Who is on the other end of an accepted connection, as far as the transport can tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    /// The server runs `--insecure`: nobody is authenticated and every caller may do anything.
    Unchecked,
    /// A plaintext connection to a server that requires TLS.
    Plaintext,
    /// A certificate that chains to the cluster CA but carries no Fenceflake SPIFFE ID.
    Unrecognized(String),
    Verified(PeerIdentity),
}

/// Put into every request's extensions by tonic (as the connection's `ConnectInfo`).
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    pub peer: Peer,
}

/// An accepted connection, in plaintext or TLS.
pub struct Conn {
    io: MaybeTls<TlsStream<TcpStream>>,
    info: ConnInfo,
}

impl Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The connections `listener` accepts, for `serve_with_incoming`. Sockets get TCP_NODELAY
/// (the server builder's setting does not reach sockets of a caller's listener, and Nagle
/// holds small replies back). `port` names the listener in logs.
pub fn incoming(listener: TcpListener, security: Security, port: &'static str) -> ReceiverStream<io::Result<Conn>> {
    let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = tx.closed() => return,
            };
            match accepted {
                Ok((tcp, remote)) => {
                    let _ = tcp.set_nodelay(true);
                    tokio::spawn(admit(tcp, remote, security.clone(), port, tx.clone()));
                }
                // Out of file descriptors and the like: back off instead of spinning.
                Err(error) => {
                    tracing::warn!(port, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

async fn admit(
    tcp: TcpStream,
    remote: SocketAddr,
    security: Security,
    port: &'static str,
    tx: mpsc::Sender<io::Result<Conn>>,
) {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(tcp, remote, &security)).await {
        Ok(Ok(Some(conn))) => {
            let _ = tx.send(Ok(conn)).await;
        }
        Ok(Ok(None)) => {}
        Ok(Err(error)) => tracing::debug!(port, %remote, %error, "connection refused during the TLS handshake"),
        Err(_) => tracing::debug!(port, %remote, "TLS handshake timed out"),
    }
}

async fn handshake(tcp: TcpStream, remote: SocketAddr, security: &Security) -> io::Result<Option<Conn>> {
    let mut first = [0u8; 1];
    if tcp.peek(&mut first).await? == 0 {
        return Ok(None);
    }
    let speaks_tls = first[0] == TLS_HANDSHAKE_RECORD;
    let remote_addr = Some(remote);
    let state = match security {
        Security::Insecure if speaks_tls => {
            tracing::warn!(%remote, "a TLS client connected to this --insecure (plaintext) server; dropped. Start the server with TLS or the client with --insecure");
            return Ok(None);
        }
        Security::Insecure => {
            return Ok(Some(Conn { io: MaybeTls::Plain(tcp), info: ConnInfo { remote_addr, peer: Peer::Unchecked } }))
        }
        Security::Tls(state) if !speaks_tls => {
            // During a move from plaintext (`--tls-transitional`) a plaintext caller is let in
            // unchecked, as before the move; otherwise it only learns that TLS is required.
            let peer = if state.transitional() { Peer::Unchecked } else { Peer::Plaintext };
            return Ok(Some(Conn { io: MaybeTls::Plain(tcp), info: ConnInfo { remote_addr, peer } }));
        }
        Security::Tls(state) => state,
        // A real socket into a process of the simulator's transport authenticates nobody.
        #[cfg(feature = "sim-transport")]
        Security::Transport(_) => {
            return Ok(Some(Conn { io: MaybeTls::Plain(tcp), info: ConnInfo { remote_addr, peer: Peer::Plaintext } }))
        }
    };
    let tls = TlsAcceptor::from(state.server_config()).accept(tcp).await?;
    let peer = match tls.get_ref().1.peer_certificates().and_then(|c| c.first()) {
        Some(leaf) => match identity_of(leaf) {
            // One CA may sign for several trust domains (a shared cert-manager issuer): only
            // this process's own trust domain is its cluster.
            Ok(identity) if identity.trust_domain != state.identity().trust_domain => Peer::Unrecognized(format!(
                "{identity} is of another trust domain than this cluster's ({})",
                state.identity().trust_domain
            )),
            Ok(identity) => Peer::Verified(identity),
            Err(why) => Peer::Unrecognized(why),
        },
        // Unreachable with a verifier that requires client certificates; refused regardless.
        None => Peer::Unrecognized("no client certificate".into()),
    };
    Ok(Some(Conn { io: MaybeTls::Tls(Box::new(tls)), info: ConnInfo { remote_addr, peer } }))
}
