//! An async BAL client (SPEC §3): connect, LOGON, send DOWNSTREAM, receive
//! and ACK the sequenced messages; over plain TCP or, for a gateway with
//! `bal.tls_cert_file`, over TLS (SPEC §11, [`ClientTls`]). Used by
//! `gimmm send` / `listen` / `bench` and the tests.

use crate::proto::{FromBal, ToBal};
use std::path::Path;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpStream, ToSocketAddrs};

/// Errors of the BAL client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket failed.
    #[error("connection error: {0}")]
    Io(#[from] std::io::Error),
    /// gimmm closed the connection.
    #[error("connection closed by gimmm")]
    Closed,
    /// gimmm sent a line that is not a valid protocol message.
    #[error("bad line from gimmm: {0}")]
    BadLine(String),
    /// LOGON was refused.
    #[error("logon refused: {0}")]
    LogonRefused(String),
    /// TLS could not be set up (a CA file) or the handshake failed (e.g.
    /// gimmm's certificate is not trusted or not for this host name).
    #[error("{0}")]
    Tls(String),
}

/// The reading side of the transport: a TCP socket's half or a TLS
/// stream's. Boxed so one client type serves both (one indirect call per
/// 64 KiB read; nothing is copied).
type ReadSide = Box<dyn AsyncRead + Send + Sync + Unpin>;
/// The writing side of the transport.
type WriteSide = Box<dyn AsyncWrite + Send + Sync + Unpin>;

/// How a [`BalClient`] checks gimmm's TLS certificate: the system's trust
/// roots plus, optionally, a CA file (a private CA is fine). The name the
/// client connects to is sent as SNI and must be in the certificate.
/// rustls with the aws-lc-rs provider, TLS 1.2 and 1.3.
#[derive(Clone)]
pub struct ClientTls {
    inner: xmpp::connect::DirectTls,
}

impl std::fmt::Debug for ClientTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientTls").finish_non_exhaustive()
    }
}

fn tls_error(e: xmpp::XmppError) -> ClientError {
    match e {
        xmpp::XmppError::Tls(s) => ClientError::Tls(s),
        other => ClientError::Tls(other.to_string()),
    }
}

impl ClientTls {
    /// Trust the system roots and, when given, the certificates in the PEM
    /// file `ca_file`.
    pub fn new(ca_file: Option<&Path>) -> Result<ClientTls, ClientError> {
        Ok(ClientTls {
            inner: xmpp::connect::DirectTls::new(ca_file).map_err(tls_error)?,
        })
    }

    /// Trust only the certificates in `pem` (tests, a private CA).
    pub fn with_ca_pem(pem: &[u8]) -> Result<ClientTls, ClientError> {
        Ok(ClientTls {
            inner: xmpp::connect::DirectTls::with_ca_pem(pem).map_err(tls_error)?,
        })
    }
}

/// The host part of `host:port` (`[v6]:port` too): the name a TLS client
/// checks gimmm's certificate against.
pub fn host_of(addr: &str) -> &str {
    if let Some(rest) = addr.strip_prefix('[') {
        if let Some((host, _)) = rest.split_once(']') {
            return host;
        }
    }
    match addr.rsplit_once(':') {
        Some((host, _)) if !host.contains(':') => host,
        _ => addr,
    }
}

/// Reading half of a BAL connection.
pub struct BalReader {
    inner: BufReader<ReadSide>,
    line: String,
}

/// Writing half of a BAL connection (buffered: call [`BalWriter::flush`]).
pub struct BalWriter {
    inner: BufWriter<WriteSide>,
}

/// A logged-on (or not yet logged-on) BAL connection.
pub struct BalClient {
    reader: BalReader,
    writer: BalWriter,
}

impl BalReader {
    /// The next message from gimmm; `Err(Closed)` at end of stream.
    pub async fn recv(&mut self) -> Result<ToBal, ClientError> {
        loop {
            self.line.clear();
            let n = self.inner.read_line(&mut self.line).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            let t = self.line.trim();
            if t.is_empty() {
                continue;
            }
            return serde_json::from_str(t).map_err(|e| bad_line(e, t));
        }
    }

    /// The next non-empty line from gimmm, without its line ending and
    /// without decoding it (for load generators that parse only the fields
    /// they need). `Err(Closed)` at end of stream.
    pub async fn recv_line(&mut self) -> Result<&str, ClientError> {
        loop {
            self.line.clear();
            let n = self.inner.read_line(&mut self.line).await?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            if !self.line.trim().is_empty() {
                return Ok(self.line.trim());
            }
        }
    }

    /// Bytes already read from the socket and not yet returned: when 0, the
    /// next `recv` will wait for the network (a good moment to flush ACKs).
    pub fn buffered(&self) -> usize {
        self.inner.buffer().len()
    }
}

/// A line that does not decode; a TLS alert (a plain client on a TLS
/// listener) is named as such.
fn bad_line(e: serde_json::Error, line: &str) -> ClientError {
    // Record type 21 (alert), protocol version 3.x.
    if line.as_bytes().starts_with(&[0x15, 0x03]) {
        return ClientError::BadLine(
            "gimmm answered with a TLS alert: its BAL listener speaks TLS (connect with TLS, e.g. --tls)".into(),
        );
    }
    ClientError::BadLine(format!("{e}: {line}"))
}

impl BalWriter {
    /// Queues one message (buffered).
    pub async fn send(&mut self, msg: &FromBal) -> Result<(), ClientError> {
        let mut line = serde_json::to_vec(msg).map_err(|e| ClientError::BadLine(e.to_string()))?;
        line.push(b'\n');
        self.inner.write_all(&line).await?;
        Ok(())
    }

    /// Queues a raw line (a `\n` is appended).
    pub async fn send_raw(&mut self, line: &[u8]) -> Result<(), ClientError> {
        self.inner.write_all(line).await?;
        self.inner.write_all(b"\n").await?;
        Ok(())
    }

    /// Queues raw bytes: complete lines, each ending in `\n` (load
    /// generators that format lines themselves).
    pub async fn write_lines(&mut self, lines: &[u8]) -> Result<(), ClientError> {
        self.inner.write_all(lines).await?;
        Ok(())
    }

    /// Sends what is buffered.
    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.inner.flush().await?;
        Ok(())
    }
}

impl BalClient {
    fn from_halves(r: ReadSide, w: WriteSide) -> BalClient {
        BalClient {
            reader: BalReader {
                inner: BufReader::with_capacity(64 * 1024, r),
                line: String::new(),
            },
            writer: BalWriter {
                inner: BufWriter::with_capacity(64 * 1024, w),
            },
        }
    }

    /// Opens a TCP connection to gimmm's BAL listener.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<BalClient, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(BalClient::from_halves(Box::new(r), Box::new(w)))
    }

    /// Opens a TLS connection to a gimmm whose BAL listener has TLS (SPEC
    /// §11): TCP to `addr`, then a handshake that checks gimmm's
    /// certificate against `tls`'s roots and `server_name` (sent as SNI; a
    /// DNS name or an IP address).
    pub async fn connect_tls(
        addr: impl ToSocketAddrs,
        server_name: &str,
        tls: &ClientTls,
    ) -> Result<BalClient, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let stream = tls
            .inner
            .handshake(server_name, stream)
            .await
            .map_err(tls_error)?;
        let (r, w) = tokio::io::split(stream);
        Ok(BalClient::from_halves(Box::new(r), Box::new(w)))
    }

    /// [`BalClient::connect_tls`] with `tls`, checking the host part of
    /// `addr` (`host:port`, see [`host_of`]); plain TCP without.
    pub async fn connect_to(addr: &str, tls: Option<&ClientTls>) -> Result<BalClient, ClientError> {
        match tls {
            Some(tls) => BalClient::connect_tls(addr, host_of(addr), tls).await,
            None => BalClient::connect(addr).await,
        }
    }

    /// [`BalClient::connect_to`], then LOGON.
    pub async fn connect_logon_to(
        addr: &str,
        tls: Option<&ClientTls>,
        session_id: &str,
        token: &str,
    ) -> Result<BalClient, ClientError> {
        let mut c = BalClient::connect_to(addr, tls).await?;
        c.logon(session_id, token).await?;
        Ok(c)
    }

    /// Connects and logs on; fails with [`ClientError::LogonRefused`] on FAILURE.
    pub async fn connect_logon(
        addr: impl ToSocketAddrs,
        session_id: &str,
        token: &str,
    ) -> Result<BalClient, ClientError> {
        let mut c = BalClient::connect(addr).await?;
        c.logon(session_id, token).await?;
        Ok(c)
    }

    /// Sends LOGON and waits for LOGON_RESPONSE.
    pub async fn logon(&mut self, session_id: &str, token: &str) -> Result<(), ClientError> {
        self.send(&FromBal::Logon {
            session_id: session_id.to_string(),
            token: token.to_string(),
        })
        .await?;
        match self.recv().await? {
            ToBal::LogonResponse {
                status,
                error_description,
                ..
            } if status == "SUCCESS" => {
                let _ = error_description;
                Ok(())
            }
            ToBal::LogonResponse {
                error_description, ..
            } => Err(ClientError::LogonRefused(
                error_description.unwrap_or_else(|| "FAILURE".into()),
            )),
            other => Err(ClientError::BadLine(format!(
                "expected LOGON_RESPONSE, got {other:?}"
            ))),
        }
    }

    /// Sends one message and flushes.
    pub async fn send(&mut self, msg: &FromBal) -> Result<(), ClientError> {
        self.writer.send(msg).await?;
        self.writer.flush().await
    }

    /// Sends a DOWNSTREAM and flushes.
    pub async fn downstream(
        &mut self,
        group_id: Option<&str>,
        fcm_data: serde_json::Value,
    ) -> Result<(), ClientError> {
        self.send(&FromBal::Downstream {
            group_id: group_id.map(str::to_string),
            fcm_data,
        })
        .await
    }

    /// ACKs one sequenced message and flushes.
    pub async fn ack(&mut self, sequence_id: u64) -> Result<(), ClientError> {
        self.send(&FromBal::Ack { sequence_id }).await
    }

    /// The next message from gimmm.
    pub async fn recv(&mut self) -> Result<ToBal, ClientError> {
        self.reader.recv().await
    }

    /// Splits into halves that can be used from two tasks.
    pub fn into_split(self) -> (BalReader, BalWriter) {
        (self.reader, self.writer)
    }

    /// Mutable access to the writing half.
    pub fn writer(&mut self) -> &mut BalWriter {
        &mut self.writer
    }
}

#[cfg(test)]
mod tests {
    use super::host_of;

    #[test]
    fn host_of_addresses() {
        assert_eq!(host_of("gw.example.com:5001"), "gw.example.com");
        assert_eq!(host_of("127.0.0.1:5001"), "127.0.0.1");
        assert_eq!(host_of("[::1]:5001"), "::1");
        assert_eq!(host_of("localhost"), "localhost");
        assert_eq!(host_of("::1"), "::1");
    }
}
