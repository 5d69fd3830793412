//! Transports behind a trait: how a link gets a byte stream to the server.
//!
//! CCS uses "direct TLS" (TLS from the first byte, the XEP-0368 / RFC 6120
//! §5.3 alternative to STARTTLS). The [`Connector`] trait lets tests and the
//! emulator inject a TLS config that trusts a private CA, or plain TCP.
//! rustls is used with the aws-lc-rs provider, selected explicitly so that no
//! process-wide default provider is needed.

use std::future::Future;
use std::io;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::XmppError;

/// A bidirectional async byte stream we can box.
pub trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncStream for T {}

/// A boxed transport, what a [`Connector`] yields.
pub type BoxStream = Box<dyn AsyncStream>;

/// The future returned by [`Connector::connect`].
pub type ConnectFuture<'a> =
    Pin<Box<dyn Future<Output = Result<BoxStream, XmppError>> + Send + 'a>>;

/// Opens transports to an XMPP server. Object-safe: links hold an
/// `Arc<dyn Connector>`.
pub trait Connector: Send + Sync + 'static {
    /// Connect to `host:port`; for TLS connectors `host` is also the name the
    /// certificate is checked against (SNI).
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> ConnectFuture<'a>;
}

/// The crypto provider used everywhere in this crate.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn tls_err(context: &str, e: impl std::fmt::Display) -> XmppError {
    XmppError::Tls(format!("{context}: {e}"))
}

/// Parse all certificates in a PEM blob (at least one).
pub fn pem_certs(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, XmppError> {
    let certs = rustls_pemfile::certs(&mut &pem[..])
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err("parsing PEM certificates", e))?;
    if certs.is_empty() {
        return Err(XmppError::Tls("no certificate found in PEM".to_owned()));
    }
    Ok(certs)
}

/// The operating system's trust roots; load errors are logged and skipped.
pub fn system_roots() -> RootCertStore {
    let mut roots = RootCertStore::empty();
    let loaded = rustls_native_certs::load_native_certs();
    for e in &loaded.errors {
        tracing::warn!(error = %e, "could not load some system root certificates");
    }
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    tracing::debug!(added, ignored, "loaded system root certificates");
    roots
}

/// Add every certificate of a PEM blob to `roots`.
pub fn add_pem_roots(roots: &mut RootCertStore, pem: &[u8]) -> Result<(), XmppError> {
    for cert in pem_certs(pem)? {
        roots
            .add(cert)
            .map_err(|e| tls_err("adding CA certificate", e))?;
    }
    Ok(())
}

/// A client config trusting `roots`, aws-lc-rs provider, TLS 1.2 and 1.3.
pub fn client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, XmppError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("building client config", e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM blob. The error
/// says what is wrong without quoting the blob: no key material in messages.
pub fn pem_private_key(pem: &[u8]) -> Result<PrivateKeyDer<'static>, XmppError> {
    rustls_pemfile::private_key(&mut &pem[..])
        .map_err(|_| {
            XmppError::Tls("not valid PEM (a damaged header, footer or base64 body)".to_owned())
        })?
        .ok_or_else(|| {
            XmppError::Tls("no private key (PKCS#8, PKCS#1 or SEC1) found in PEM".to_owned())
        })
}

/// A server config from a PEM certificate chain and a PEM private key
/// (PKCS#8, PKCS#1 or SEC1), aws-lc-rs provider, no client auth.
pub fn server_config(
    cert_chain_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, XmppError> {
    let certs = pem_certs(cert_chain_pem)?;
    let key = pem_private_key(key_pem)?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err("building server config", e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| tls_err("loading server certificate", e))?;
    Ok(Arc::new(config))
}

/// Open a TCP connection with `TCP_NODELAY` (stanzas are small and latency
/// matters more than packet count).
async fn tcp(host: &str, port: u16) -> Result<TcpStream, XmppError> {
    let stream = TcpStream::connect((host, port)).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// TLS from the first byte, as CCS requires. The server certificate is
/// verified for `host`.
#[derive(Clone)]
pub struct DirectTls {
    config: Arc<ClientConfig>,
}

impl std::fmt::Debug for DirectTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectTls").finish_non_exhaustive()
    }
}

impl DirectTls {
    /// Trust the system roots plus, optionally, the certificates in a PEM
    /// CA file (SPEC §2 `ca_file`).
    pub fn new(ca_file: Option<&Path>) -> Result<Self, XmppError> {
        let mut roots = system_roots();
        if let Some(path) = ca_file {
            let pem = std::fs::read(path)
                .map_err(|e| tls_err(&format!("reading CA file {}", path.display()), e))?;
            add_pem_roots(&mut roots, &pem)?;
        }
        Ok(Self::from_config(client_config(roots)?))
    }

    /// Trust only the certificates in `pem` (tests, the emulator's CA).
    pub fn with_ca_pem(pem: &[u8]) -> Result<Self, XmppError> {
        let mut roots = RootCertStore::empty();
        add_pem_roots(&mut roots, pem)?;
        Ok(Self::from_config(client_config(roots)?))
    }

    /// Use a ready-made rustls client config.
    pub fn from_config(config: Arc<ClientConfig>) -> Self {
        DirectTls { config }
    }

    /// The rustls config in use.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// TLS over an already-connected stream (the part of
    /// [`Connector::connect`] after TCP), verifying the certificate for `host`.
    pub async fn handshake<S>(
        &self,
        host: &str,
        io: S,
    ) -> Result<tokio_rustls::client::TlsStream<S>, XmppError>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| tls_err(&format!("invalid server name {host:?}"), e))?;
        TlsConnector::from(self.config.clone())
            .connect(name, io)
            .await
            .map_err(|e| handshake_err(host, e))
    }
}

fn handshake_err(host: &str, e: io::Error) -> XmppError {
    XmppError::Tls(format!("TLS handshake with {host} failed: {e}"))
}

impl Connector for DirectTls {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> ConnectFuture<'a> {
        Box::pin(async move {
            let stream = tcp(host, port).await?;
            let tls = self.handshake(host, stream).await?;
            Ok(Box::new(tls) as BoxStream)
        })
    }
}

/// Plain TCP, no TLS (tests, local tools). Never for CCS.
#[derive(Debug, Clone, Copy, Default)]
pub struct PlainTcp;

impl Connector for PlainTcp {
    fn connect<'a>(&'a self, host: &'a str, port: u16) -> ConnectFuture<'a> {
        Box::pin(async move { Ok(Box::new(tcp(host, port).await?) as BoxStream) })
    }
}
