//! An async BAL client: connect, LOGON, send DOWNSTREAM, receive and ACK the
//! sequenced messages. Used by `gimmm send` / `listen` / `bench` and the tests.

use crate::proto::{FromBal, ToBal};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
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
}

/// Reading half of a BAL connection.
pub struct BalReader {
    inner: BufReader<OwnedReadHalf>,
    line: String,
}

/// Writing half of a BAL connection (buffered: call [`BalWriter::flush`]).
pub struct BalWriter {
    inner: BufWriter<OwnedWriteHalf>,
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
            return serde_json::from_str(t).map_err(|e| ClientError::BadLine(format!("{e}: {t}")));
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
    /// Opens a TCP connection to gimmm's BAL listener.
    pub async fn connect(addr: impl ToSocketAddrs) -> Result<BalClient, ClientError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let (r, w) = stream.into_split();
        Ok(BalClient {
            reader: BalReader {
                inner: BufReader::with_capacity(64 * 1024, r),
                line: String::new(),
            },
            writer: BalWriter {
                inner: BufWriter::with_capacity(64 * 1024, w),
            },
        })
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
