//! A client of gimmm's upstream ingress (SPEC §10) for tests: one
//! `POST /v1/upstream` per connection (`Connection: close`), over plain
//! TCP or TLS trusting a given CA, or any raw bytes (for hostile input).
//! [`ingress_config`] turns the ingress on in a test configuration, with
//! a certificate chain from a fresh CA ([`TestCa`]).

use crate::http::{parse_full, HttpResponse};
use gateway::config::{Config, Secret};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long one exchange may take, connect to last byte.
pub const TIMEOUT: Duration = Duration::from_secs(30);

/// A failed exchange.
#[derive(Debug, thiserror::Error)]
pub enum IngressClientError {
    /// Connecting, the handshake, writing or reading failed.
    #[error("ingress {addr}: {what}: {source}")]
    Io {
        /// Server.
        addr: SocketAddr,
        /// Step.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// No complete answer within [`TIMEOUT`].
    #[error("ingress {0}: no answer within {TIMEOUT:?}")]
    Timeout(SocketAddr),
    /// Not an HTTP/1.x response.
    #[error("ingress {addr}: bad answer: {problem}")]
    Bad {
        /// Server.
        addr: SocketAddr,
        /// What is wrong.
        problem: String,
    },
    /// A TLS setting cannot be built.
    #[error("TLS: {0}")]
    Tls(String),
}

/// Where and how to reach the ingress.
#[derive(Clone)]
pub struct IngressClient {
    addr: SocketAddr,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

impl std::fmt::Debug for IngressClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IngressClient")
            .field("addr", &self.addr)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl IngressClient {
    /// Plain HTTP.
    pub fn plain(addr: SocketAddr) -> IngressClient {
        IngressClient { addr, tls: None }
    }

    /// HTTPS trusting only `ca_pem`, verifying the certificate for
    /// `server_name` (an IP address or DNS name).
    pub fn tls(
        addr: SocketAddr,
        ca_pem: &[u8],
        server_name: &str,
    ) -> Result<IngressClient, IngressClientError> {
        let mut roots = rustls::RootCertStore::empty();
        xmpp::connect::add_pem_roots(&mut roots, ca_pem)
            .map_err(|e| IngressClientError::Tls(e.to_string()))?;
        let mut cfg = (*xmpp::connect::client_config(roots)
            .map_err(|e| IngressClientError::Tls(e.to_string()))?)
        .clone();
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| IngressClientError::Tls(e.to_string()))?;
        Ok(IngressClient {
            addr,
            tls: Some((tokio_rustls::TlsConnector::from(Arc::new(cfg)), name)),
        })
    }

    /// The server's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `POST /v1/upstream` with `body` (and `Authorization: Bearer
    /// <bearer>` when given).
    pub async fn post(
        &self,
        bearer: Option<&str>,
        body: &[u8],
    ) -> Result<HttpResponse, IngressClientError> {
        let auth = bearer
            .map(|t| format!("Authorization: Bearer {t}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "POST /v1/upstream HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n{auth}Content-Length: {}\r\nConnection: close\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut raw = head.into_bytes();
        raw.extend_from_slice(body);
        self.raw(&raw).await
    }

    /// `POST /v1/upstream` of a JSON value with a bearer credential.
    pub async fn post_json(
        &self,
        bearer: Option<&str>,
        body: &serde_json::Value,
    ) -> Result<HttpResponse, IngressClientError> {
        self.post(bearer, body.to_string().as_bytes()).await
    }

    /// A connection (TLS handshake done when HTTPS), to write and read by
    /// hand: for slow and hostile clients.
    pub async fn open(&self) -> Result<Box<dyn Io>, IngressClientError> {
        let addr = self.addr;
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| IngressClientError::Io {
                addr,
                what: "connect",
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &self.tls {
            None => Ok(Box::new(tcp)),
            Some((c, name)) => {
                let s = c.connect(name.clone(), tcp).await.map_err(|source| {
                    IngressClientError::Io {
                        addr,
                        what: "TLS handshake",
                        source,
                    }
                })?;
                Ok(Box::new(s))
            }
        }
    }

    /// Sends `request` as it is and reads the answer until the server
    /// closes.
    pub async fn raw(&self, request: &[u8]) -> Result<HttpResponse, IngressClientError> {
        let addr = self.addr;
        let exchange = async { exchange(addr, self.open().await?, request).await };
        tokio::time::timeout(TIMEOUT, exchange)
            .await
            .map_err(|_| IngressClientError::Timeout(addr))?
    }
}

/// A client connection, plain or TLS.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}

impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(
    addr: SocketAddr,
    mut s: S,
    request: &[u8],
) -> Result<HttpResponse, IngressClientError> {
    let io = |what| move |source| IngressClientError::Io { addr, what, source };
    // A server may answer before it has read the whole request (a 413 on
    // the announced length) and close: the write then fails, but the answer
    // is already on its way, so read it as any HTTP client would.
    let written = match s.write_all(request).await {
        Ok(()) => s.flush().await.map_err(|e| ("flush", e)),
        Err(e) => Err(("write", e)),
    };
    if let Err((what, e)) = written {
        if !peer_gone(&e) {
            return Err(io(what)(e));
        }
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw).await;
        if raw.is_empty() {
            return Err(io(what)(e));
        }
        return parse_full(&raw).map_err(|problem| IngressClientError::Bad { addr, problem });
    }
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw).await {
        Ok(_) => {}
        // A TLS peer that closes without close_notify, after its answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(io("read")(e)),
    }
    parse_full(&raw).map_err(|problem| IngressClientError::Bad { addr, problem })
}

/// The server closed (or reset) the connection under a write.
fn peer_gone(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
    )
}

/// A throw-away CA and a server certificate for `127.0.0.1` / `localhost`
/// signed by it, written as PEM files.
pub struct TestCa {
    /// The CA certificate clients trust (PEM).
    pub ca_pem: String,
    /// The server's chain file (leaf first, then the CA).
    pub cert_file: std::path::PathBuf,
    /// The server's private key file.
    pub key_file: std::path::PathBuf,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

impl TestCa {
    /// Generates the CA and the server certificate, writes them to `dir`.
    pub fn generate(dir: &Path) -> Result<TestCa, IngressClientError> {
        let id = emulator::TlsIdentity::generate(&["127.0.0.1".into(), "localhost".into()])
            .map_err(|e| IngressClientError::Tls(e.to_string()))?;
        let cert_file = dir.join("ingress-chain.pem");
        let key_file = dir.join("ingress-key.pem");
        let write = |p: &Path, s: &str| {
            std::fs::write(p, s)
                .map_err(|e| IngressClientError::Tls(format!("{}: {e}", p.display())))
        };
        write(&cert_file, &id.cert_chain_pem)?;
        write(&key_file, &id.key_pem)?;
        Ok(TestCa {
            ca_pem: id.ca_pem,
            cert_file,
            key_file,
        })
    }
}

/// Turns the ingress on in `cfg`: listening on `127.0.0.1:0`, HTTPS with
/// `ca`'s certificate when given, and `keys` as the `ingress_keys` of
/// every session.
pub fn ingress_config(cfg: &mut Config, ca: Option<&TestCa>, keys: &[&str]) {
    cfg.ingress.listen = "127.0.0.1:0".into();
    if let Some(ca) = ca {
        cfg.ingress.tls_cert_file = Some(ca.cert_file.clone());
        cfg.ingress.tls_key_file = Some(ca.key_file.clone());
    }
    for s in &mut cfg.bal.sessions {
        s.ingress_keys = keys.iter().map(|k| Secret::new(*k)).collect();
    }
}

/// The usual upstream body.
pub fn upstream_body(category: &str, message_id: &str, from: &str) -> serde_json::Value {
    serde_json::json!({
        "category": category,
        "message_id": message_id,
        "from": from,
        "data": {"text": format!("hello from {from}"), "n": message_id},
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A server that answers 413 on the head and closes without reading
    /// the body (so the kernel resets the connection under the client's
    /// write): the client still reports the 413, as in CI once.
    #[tokio::test]
    async fn an_answer_before_the_body_is_read_is_reported() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let mut head = Vec::new();
                let mut buf = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if s.read(&mut buf).await.unwrap() == 0 {
                        break;
                    }
                    head.push(buf[0]);
                }
                let _ = s
                    .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large")
                    .await;
                drop(s);
            }
        });
        let c = IngressClient::plain(addr);
        for _ in 0..20 {
            let r = c.post(None, &vec![b'['; 8 << 20]).await.unwrap();
            assert_eq!((r.status, r.body.as_str()), (413, "too large"));
        }
    }
}
