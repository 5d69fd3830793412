//! The async driver: an I/O object plus a [`StanzaReader`], and the loops that
//! run the negotiation state machines over it (RFC 6120 §4.3 stream
//! negotiation, §6.4.6 restart handled via [`Action::RestartStream`]).
//!
//! After negotiation, [`XmppStream::into_parts`] hands out the transport and
//! the reader (with any bytes already read), so a link can split the
//! transport into read and write halves.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::negotiate::{Action, ClientNegotiator, ClientParams, ServerNegotiator, ServerParams};
use crate::reader::{Event, StanzaReader};
use crate::XmppError;

/// Bytes requested from the transport per read.
const READ_CHUNK: usize = 16 * 1024;

/// An XMPP stream over any async byte stream.
#[derive(Debug)]
pub struct XmppStream<S> {
    io: S,
    reader: StanzaReader,
    buf: Vec<u8>,
}

impl<S> XmppStream<S> {
    /// Wrap `io`; stanzas above `max_stanza_bytes` are errors.
    pub fn new(io: S, max_stanza_bytes: usize) -> Self {
        Self::from_parts(io, StanzaReader::new(max_stanza_bytes))
    }

    /// Reassemble from [`into_parts`](Self::into_parts).
    pub fn from_parts(io: S, reader: StanzaReader) -> Self {
        XmppStream {
            io,
            reader,
            buf: vec![0; READ_CHUNK],
        }
    }

    /// Split into the transport and the reader; the reader keeps any bytes
    /// already read but not yet returned as events.
    pub fn into_parts(self) -> (S, StanzaReader) {
        (self.io, self.reader)
    }

    /// The transport.
    pub fn get_ref(&self) -> &S {
        &self.io
    }

    /// The transport, mutably (writing directly bypasses nothing: there is no
    /// write buffer here).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }

    /// The reader (e.g. to call `reset` by hand).
    pub fn reader_mut(&mut self) -> &mut StanzaReader {
        &mut self.reader
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> XmppStream<S> {
    /// The next event, reading from the transport as needed. EOF is
    /// `Err(Closed)`.
    ///
    /// Cancel-safe: the only await point is a read, whose bytes are fed to the
    /// reader before anything else can happen, so it can sit in `select!`.
    pub async fn next_event(&mut self) -> Result<Event, XmppError> {
        loop {
            if let Some(ev) = self.reader.next_event()? {
                return Ok(ev);
            }
            let n = self.io.read(&mut self.buf).await?;
            if n == 0 {
                return Err(XmppError::Closed);
            }
            self.reader.feed(&self.buf[..n]);
        }
    }

    /// Write all of `bytes` and flush.
    pub async fn send(&mut self, bytes: &[u8]) -> Result<(), XmppError> {
        self.io.write_all(bytes).await?;
        self.io.flush().await?;
        Ok(())
    }

    /// Carry out actions; `Some(jid)` once ready.
    async fn run_actions(&mut self, actions: Vec<Action>) -> Result<Option<String>, XmppError> {
        for action in actions {
            match action {
                Action::Send(bytes) => self.send(&bytes).await?,
                Action::RestartStream => self.reader.reset(),
                Action::Ready { jid } => return Ok(Some(jid)),
            }
        }
        Ok(None)
    }

    /// Log in as a client (header, SASL PLAIN, restart, bind); the bound JID.
    /// Wrap in a timeout: a silent server makes this wait forever.
    pub async fn negotiate_client(&mut self, params: ClientParams) -> Result<String, XmppError> {
        let mut neg = ClientNegotiator::new(params);
        let header = neg.start();
        self.send(&header).await?;
        loop {
            let ev = self.next_event().await?;
            let actions = neg.handle(ev)?;
            if let Some(jid) = self.run_actions(actions).await? {
                return Ok(jid);
            }
        }
    }

    /// Accept a client (features, SASL PLAIN checked by `check(authcid,
    /// password)`, restart, bind); the JID bound for it. Wrong credentials:
    /// the `<failure>` is sent, then `Err(AuthFailed)`.
    pub async fn negotiate_server(
        &mut self,
        params: ServerParams,
        check: impl Fn(&str, &str) -> bool + Send + 'static,
    ) -> Result<String, XmppError> {
        let mut neg = ServerNegotiator::new(params, check);
        loop {
            let ev = self.next_event().await?;
            let actions = neg.handle(ev)?;
            if let Some(jid) = self.run_actions(actions).await? {
                return Ok(jid);
            }
            if let Some(condition) = neg.failed() {
                return Err(XmppError::AuthFailed(condition.to_owned()));
            }
        }
    }
}
