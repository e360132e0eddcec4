//! The client side: channels whose connections run TLS with the process's current client
//! config (a rotated certificate is presented on the next connection) and check that the
//! server holds one of the roles the caller expects (peers are checked by chain and role,
//! never by host name).

use std::io;

use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint, Uri};

use super::identity::Role;
use super::io::MaybeTls;
use super::material::identity_of;
use super::Security;

/// `addr` (`host:port`, or a URL with any scheme) as the URL an [`Endpoint`] is built from.
/// Always `http://`: TLS, when on, is done by the connector below, not by tonic.
pub fn endpoint_url(addr: &str) -> String {
    let bare = addr.split_once("://").map_or(addr, |(_, rest)| rest);
    format!("http://{}", bare.trim_end_matches('/'))
}

/// Who the server must be (checked on its certificate after the handshake).
#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Any identity with one of these roles.
    Roles(&'static [Role]),
    /// Exactly registry node `id` (peer calls: a node certificate cannot answer for another).
    Node(u64),
}

/// A channel that connects on first use (and reconnects) through `security`; under TLS the
/// server must present a certificate of one of the `expect` roles.
pub fn connect_lazy(endpoint: Endpoint, security: &Security, expect: &'static [Role]) -> Channel {
    lazy(endpoint, security, Expect::Roles(expect))
}

/// Like [`connect_lazy`], for a peer call to registry node `node_id`: the server must present
/// `node/<node_id>`.
pub fn connect_lazy_to_node(endpoint: Endpoint, security: &Security, node_id: u64) -> Channel {
    lazy(endpoint, security, Expect::Node(node_id))
}

fn lazy(endpoint: Endpoint, security: &Security, expect: Expect) -> Channel {
    match security {
        Security::Insecure => endpoint.connect_lazy(),
        Security::Tls(_) => endpoint.connect_with_connector_lazy(connector(security.clone(), expect)),
        // The simulator hands its processes their channels; a socket from one carries no
        // identity, and a server requiring one refuses it.
        #[cfg(feature = "sim-transport")]
        Security::Transport(_) => endpoint.connect_lazy(),
    }
}

/// Like [`connect_lazy`], but connects now and reports a failure.
pub async fn connect(
    endpoint: Endpoint,
    security: &Security,
    expect: &'static [Role],
) -> Result<Channel, tonic::transport::Error> {
    match security {
        Security::Insecure => endpoint.connect().await,
        Security::Tls(_) => endpoint.connect_with_connector(connector(security.clone(), Expect::Roles(expect))).await,
        #[cfg(feature = "sim-transport")]
        Security::Transport(_) => endpoint.connect().await,
    }
}

type ClientIo = TokioIo<MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>>;
type Connecting = std::pin::Pin<Box<dyn std::future::Future<Output = io::Result<ClientIo>> + Send>>;

fn connector(
    security: Security,
    expect: Expect,
) -> impl tower::Service<Uri, Response = ClientIo, Error = io::Error, Future = Connecting> + Clone {
    tower::service_fn(move |uri: Uri| -> Connecting {
        let security = security.clone();
        Box::pin(async move { connect_tls(&uri, &security, expect).await.map(TokioIo::new) })
    })
}

async fn tcp(host: &str, port: u16) -> io::Result<TcpStream> {
    let tcp = TcpStream::connect((host, port)).await?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

async fn connect_tls(
    uri: &Uri,
    security: &Security,
    expect: Expect,
) -> io::Result<MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>> {
    let Security::Tls(state) = security else { unreachable!("the TLS connector is only built for TLS") };
    let host = uri.host().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{uri}: no host")))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let name = ServerName::try_from(host.to_string())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{host}: {e}")))?;
    let tls = match TlsConnector::from(state.client_config()).connect(name, tcp(host, port).await?).await {
        Ok(tls) => tls,
        // During a move from plaintext, a server not yet moved is spoken to as before.
        Err(error) if state.transitional() && looks_plaintext(&error) => {
            tracing::info!(server = %format!("{host}:{port}"), "--tls-transitional: the server speaks plaintext; connecting without TLS");
            return Ok(MaybeTls::Plain(tcp(host, port).await?));
        }
        Err(error) => {
            return Err(io::Error::new(
                error.kind(),
                format!("TLS handshake with {host}:{port} failed: {error}{}", hint(&error)),
            ))
        }
    };
    let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or_else(|| {
        io::Error::new(io::ErrorKind::PermissionDenied, format!("{host}:{port} presented no certificate"))
    })?;
    let identity = identity_of(leaf)
        .map_err(|why| io::Error::new(io::ErrorKind::PermissionDenied, format!("{host}:{port}: {why}")))?;
    let (fits, wanted) = match expect {
        Expect::Roles(roles) => {
            let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            (roles.contains(&identity.role), format!("a {}", names.join(" or ")))
        }
        Expect::Node(id) => (identity.node_id() == Some(id), format!("registry node {id}")),
    };
    if !fits || identity.trust_domain != state.identity().trust_domain {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{host}:{port} presented {identity}, but {wanted} of trust domain {} was expected there",
                state.identity().trust_domain
            ),
        ));
    }
    Ok(MaybeTls::Tls(Box::new(tls)))
}

/// Whether a failed handshake looks like a plaintext server: it hung up on the ClientHello,
/// or answered with something that is not TLS.
fn looks_plaintext(error: &io::Error) -> bool {
    let text = error.to_string();
    matches!(error.kind(), io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset)
        || text.contains("InvalidContentType")
        || text.contains("corrupt message")
}

/// What a handshake error most likely means, for the operator reading it.
fn hint(error: &io::Error) -> &'static str {
    let text = error.to_string();
    if looks_plaintext(error) {
        " (is the server plaintext, started with --insecure?)"
    } else if text.contains("UnknownIssuer") || text.contains("UnknownCA") {
        " (the server and this client trust different CAs: check --tls-ca on both)"
    } else if text.contains("Expired") {
        " (a certificate expired: reissue it with `fenceflake certs issue`)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_address_form_becomes_a_plain_http_url() {
        assert_eq!(endpoint_url("127.0.0.1:7000"), "http://127.0.0.1:7000");
        assert_eq!(endpoint_url("https://reg-0.reg:7000/"), "http://reg-0.reg:7000");
        assert_eq!(endpoint_url("http://[::1]:7000"), "http://[::1]:7000");
    }
}
