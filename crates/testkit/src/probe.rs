//! A BAL for tests (SPEC §3): log on, send DOWNSTREAMs, receive and ACK
//! the sequenced messages (§3.3), reconnect after the gateway restarts, and
//! keep a [`Ledger`] of everything received.
//!
//! A [`BalProbe`] owns one connection at a time, served by two tasks: a
//! reader that records every line in the ledger, ACKs sequenced messages
//! (per the [`AckPolicy`]) and queues the direct answers (ACCEPTED, ERROR,
//! PONG) for [`BalProbe::next_reply`]; and a writer that sends what the test
//! and the reader queue, flushing when nothing more is queued. The ledger
//! lives across connections; [`LedgerWatch`] waits on it (every recorded
//! line wakes the waiters) with a deadline.
//!
//! [`recv`] and [`recv_until`] are the same waits for tests that drive a
//! plain [`BalClient`] line by line.

use crate::child::Ports;
use crate::ledger::Ledger;
use bal::client::{BalReader, BalWriter};
use bal::{BalClient, ClientError, FromBal, ToBal};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long a connect plus LOGON may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A connect that failed at an unchanged address is retried this soon.
const RECONNECT_RETRY: Duration = Duration::from_millis(20);

/// Which sequenced messages the probe ACKs.
#[derive(Clone, Default)]
pub enum AckPolicy {
    /// Every one, as soon as it is recorded.
    #[default]
    All,
    /// None: they stay in gimmm's outbox and come back after a reconnect.
    None,
    /// Those for which the function says `true`.
    Decide(Arc<dyn Fn(&ToBal) -> bool + Send + Sync>),
}

impl std::fmt::Debug for AckPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AckPolicy::All => "All",
            AckPolicy::None => "None",
            AckPolicy::Decide(_) => "Decide(..)",
        })
    }
}

impl AckPolicy {
    fn acks(&self, m: &ToBal) -> bool {
        match self {
            AckPolicy::All => true,
            AckPolicy::None => false,
            AckPolicy::Decide(f) => f(m),
        }
    }
}

/// A probe or wait that did not work out.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// Connecting or logging on failed.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: ClientError,
    },
    /// Connect plus LOGON took too long.
    #[error("connecting to {0}: no LOGON_RESPONSE within {CONNECT_TIMEOUT:?}")]
    ConnectTimeout(SocketAddr),
    /// No connection (never connected, or it closed).
    #[error("not connected to gimmm")]
    NotConnected,
    /// A wait ran out.
    #[error("timed out after {waited:?} waiting for {what}; ledger: {summary}")]
    TimedOut {
        /// What was waited for.
        what: String,
        /// How long.
        waited: Duration,
        /// The ledger (or last error) at that moment.
        summary: String,
    },
    /// What was followed is gone (the gateway handle was dropped).
    #[error("the gateway being followed is gone")]
    Gone,
    /// The connection failed while reading.
    #[error("reading from gimmm: {0}")]
    Read(#[from] ClientError),
}

/// Read access to a probe's ledger, and waits on it; cheap to clone and
/// usable from other tasks (and after the probe is gone).
#[derive(Clone)]
pub struct LedgerWatch {
    rx: watch::Receiver<Ledger>,
}

impl LedgerWatch {
    /// A copy of the ledger now.
    pub fn snapshot(&self) -> Ledger {
        self.rx.borrow().clone()
    }

    /// Runs `f` on the ledger. Do not wait for anything inside `f`: the
    /// probe's reader cannot record while it runs.
    pub fn with<R>(&self, f: impl FnOnce(&Ledger) -> R) -> R {
        f(&self.rx.borrow())
    }

    /// Waits until `pred` holds (it is checked now and after every recorded
    /// line), at most `timeout`.
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl FnMut(&Ledger) -> bool,
    ) -> Result<(), ProbeError> {
        let mut rx = self.rx.clone();
        let started = Instant::now();
        let outcome = tokio::time::timeout(timeout, rx.wait_for(pred))
            .await
            .map(|r| r.is_ok());
        match outcome {
            Ok(true) => Ok(()),
            // The probe is gone: nothing more will be recorded.
            Ok(false) => Err(ProbeError::TimedOut {
                what: format!("{what} (the probe is gone)"),
                waited: started.elapsed(),
                summary: self.with(Ledger::summary),
            }),
            Err(_) => Err(ProbeError::TimedOut {
                what: what.to_string(),
                waited: timeout,
                summary: self.with(Ledger::summary),
            }),
        }
    }
}

/// One connection: the queue to its writer, and its two tasks.
struct Conn {
    out: mpsc::UnboundedSender<FromBal>,
    replies: mpsc::UnboundedReceiver<ToBal>,
    closed: CancellationToken,
    addr: SocketAddr,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for Conn {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A test BAL with a ledger (see the module docs).
pub struct BalProbe {
    session: String,
    token: String,
    ledger: Arc<watch::Sender<Ledger>>,
    watch: LedgerWatch,
    ack: Arc<Mutex<AckPolicy>>,
    conn: Option<Conn>,
    connects: u64,
}

impl BalProbe {
    /// A probe for `session` / `token`, not connected, ACKing everything.
    pub fn new(session: impl Into<String>, token: impl Into<String>) -> BalProbe {
        let (tx, rx) = watch::channel(Ledger::default());
        BalProbe {
            session: session.into(),
            token: token.into(),
            ledger: Arc::new(tx),
            watch: LedgerWatch { rx },
            ack: Arc::new(Mutex::new(AckPolicy::All)),
            conn: None,
            connects: 0,
        }
    }

    /// With this ACK policy.
    pub fn with_ack(self, policy: AckPolicy) -> BalProbe {
        self.set_ack(policy);
        self
    }

    /// Changes the ACK policy (for messages received from now on).
    pub fn set_ack(&self, policy: AckPolicy) {
        *self.ack.lock().unwrap_or_else(|p| p.into_inner()) = policy;
    }

    /// The session id.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// Successful connects so far.
    pub fn connects(&self) -> u64 {
        self.connects
    }

    /// The address of the current connection.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.conn.as_ref().map(|c| c.addr)
    }

    /// Connects to `addr` and logs on (one attempt), replacing any current
    /// connection.
    pub async fn connect(&mut self, addr: SocketAddr) -> Result<(), ProbeError> {
        self.disconnect();
        let client = tokio::time::timeout(
            CONNECT_TIMEOUT,
            BalClient::connect_logon(addr, &self.session, &self.token),
        )
        .await
        .map_err(|_| ProbeError::ConnectTimeout(addr))?
        .map_err(|source| ProbeError::Connect { addr, source })?;
        let (rd, wr) = client.into_split();
        let (out, out_rx) = mpsc::unbounded_channel();
        let (replies_tx, replies) = mpsc::unbounded_channel();
        let closed = CancellationToken::new();
        let reader = tokio::spawn(read_loop(
            rd,
            self.ledger.clone(),
            self.ack.clone(),
            out.clone(),
            replies_tx,
            closed.clone(),
        ));
        let writer = tokio::spawn(write_loop(wr, out_rx, closed.clone()));
        self.conn = Some(Conn {
            out,
            replies,
            closed,
            addr,
            tasks: [reader, writer],
        });
        self.connects += 1;
        Ok(())
    }

    /// Connects to the gateway `ports` names, following it while it is
    /// stopped or restarted (a failed attempt is retried when the address
    /// changes, or shortly); gives up after `timeout`. Returns the address.
    pub async fn follow(
        &mut self,
        ports: &mut watch::Receiver<Option<Ports>>,
        timeout: Duration,
    ) -> Result<SocketAddr, ProbeError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("the gateway is not running");
        loop {
            let current = *ports.borrow_and_update();
            if let Some(p) = current {
                match self.connect(p.bal).await {
                    Ok(()) => return Ok(p.bal),
                    Err(e) => last = e.to_string(),
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ProbeError::TimedOut {
                    what: "a gateway to connect to".into(),
                    waited: timeout,
                    summary: last,
                });
            }
            let wait = if current.is_some() {
                left.min(RECONNECT_RETRY)
            } else {
                left
            };
            if let Ok(Err(_)) = tokio::time::timeout(wait, ports.changed()).await {
                return Err(ProbeError::Gone);
            }
        }
    }

    /// Drops the current connection (the gateway sees the BAL go away).
    pub fn disconnect(&mut self) {
        self.conn = None;
    }

    /// True while connected (the connection did not close).
    pub fn is_connected(&self) -> bool {
        self.conn.as_ref().is_some_and(|c| !c.closed.is_cancelled())
    }

    /// Resolves when the current connection closed (at once when there is
    /// none). Owns what it needs: usable in a `select!` next to sends.
    pub fn closed(&self) -> impl Future<Output = ()> + Send + 'static {
        let token = self.conn.as_ref().map(|c| c.closed.clone());
        async move {
            if let Some(t) = token {
                t.cancelled().await;
            }
        }
    }

    /// Queues one message for the writer.
    pub fn send(&self, m: FromBal) -> Result<(), ProbeError> {
        let c = self.conn.as_ref().ok_or(ProbeError::NotConnected)?;
        if c.closed.is_cancelled() {
            return Err(ProbeError::NotConnected);
        }
        c.out.send(m).map_err(|_| ProbeError::NotConnected)
    }

    /// Queues a DOWNSTREAM.
    pub fn downstream(
        &self,
        group_id: Option<String>,
        fcm_data: serde_json::Value,
    ) -> Result<(), ProbeError> {
        self.send(FromBal::Downstream { group_id, fcm_data })
    }

    /// Queues a PING.
    pub fn ping(&self) -> Result<(), ProbeError> {
        self.send(FromBal::Ping)
    }

    /// The next direct answer on this connection (DOWNSTREAM_ACCEPTED,
    /// ERROR, PONG), in order, within `timeout`.
    pub async fn next_reply(&mut self, timeout: Duration) -> Result<ToBal, ProbeError> {
        let c = self.conn.as_mut().ok_or(ProbeError::NotConnected)?;
        match tokio::time::timeout(timeout, c.replies.recv()).await {
            Ok(Some(m)) => Ok(m),
            Ok(None) => Err(ProbeError::NotConnected),
            Err(_) => Err(ProbeError::TimedOut {
                what: "a reply from gimmm".into(),
                waited: timeout,
                summary: self.watch.with(Ledger::summary),
            }),
        }
    }

    /// Sends a DOWNSTREAM and returns its answer: the next
    /// DOWNSTREAM_ACCEPTED or ERROR (PONGs are skipped), within `timeout`.
    pub async fn send_and_answer(
        &mut self,
        group_id: Option<String>,
        fcm_data: serde_json::Value,
        timeout: Duration,
    ) -> Result<ToBal, ProbeError> {
        self.downstream(group_id, fcm_data)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = self.next_reply(left).await?;
            if matches!(m, ToBal::DownstreamAccepted { .. } | ToBal::Error { .. }) {
                return Ok(m);
            }
        }
    }

    /// The ledger, for other tasks and for waits.
    pub fn ledger(&self) -> LedgerWatch {
        self.watch.clone()
    }

    /// A copy of the ledger now.
    pub fn snapshot(&self) -> Ledger {
        self.watch.snapshot()
    }

    /// See [`LedgerWatch::wait_until`].
    pub async fn wait_until(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl FnMut(&Ledger) -> bool,
    ) -> Result<(), ProbeError> {
        self.watch.wait_until(what, timeout, pred).await
    }

    /// Waits until `n` messages have a final result.
    pub async fn wait_finals(&self, n: usize, timeout: Duration) -> Result<(), ProbeError> {
        self.wait_until(&format!("{n} final results"), timeout, |l| {
            l.finals.len() >= n
        })
        .await
    }

    /// Waits until `n` messages were answered DOWNSTREAM_ACCEPTED.
    pub async fn wait_accepted(&self, n: usize, timeout: Duration) -> Result<(), ProbeError> {
        self.wait_until(&format!("{n} accepted"), timeout, |l| l.accepted.len() >= n)
            .await
    }

    /// Waits until each of `ids` has a final result.
    pub async fn wait_finals_for<'a, I>(&self, ids: I, timeout: Duration) -> Result<(), ProbeError>
    where
        I: IntoIterator<Item = &'a String>,
        I::IntoIter: Clone,
    {
        let ids = ids.into_iter();
        let all = ids.clone().count();
        self.wait_until(&format!("final results for {all} messages"), timeout, |l| {
            ids.clone().all(|id| l.finals.contains_key(id))
        })
        .await
    }
}

async fn read_loop(
    mut rd: BalReader,
    ledger: Arc<watch::Sender<Ledger>>,
    ack: Arc<Mutex<AckPolicy>>,
    out: mpsc::UnboundedSender<FromBal>,
    replies: mpsc::UnboundedSender<ToBal>,
    closed: CancellationToken,
) {
    loop {
        let m = match rd.recv().await {
            Ok(m) => m,
            Err(ClientError::BadLine(line)) => {
                ledger.send_modify(|l| l.bad_lines.push(line));
                continue;
            }
            Err(_) => break,
        };
        ledger.send_modify(|l| l.note(&m));
        match m.sequence_id() {
            Some(sequence_id) => {
                // The policy is cloned out so a `Decide` runs unlocked.
                let policy = ack.lock().unwrap_or_else(|p| p.into_inner()).clone();
                if policy.acks(&m) && out.send(FromBal::Ack { sequence_id }).is_err() {
                    break;
                }
            }
            None => {
                let _ = replies.send(m);
            }
        }
    }
    closed.cancel();
}

async fn write_loop(
    mut wr: BalWriter,
    mut rx: mpsc::UnboundedReceiver<FromBal>,
    closed: CancellationToken,
) {
    'run: loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = closed.cancelled() => None,
        };
        let Some(first) = first else { break };
        if wr.send(&first).await.is_err() {
            break;
        }
        // Everything already queued goes out in one flush.
        while let Ok(m) = rx.try_recv() {
            if wr.send(&m).await.is_err() {
                break 'run;
            }
        }
        if wr.flush().await.is_err() {
            break;
        }
    }
    closed.cancel();
}

/// The next message on a plain client, within `within`.
pub async fn recv(c: &mut BalClient, within: Duration) -> Result<ToBal, ProbeError> {
    match tokio::time::timeout(within, c.recv()).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ProbeError::TimedOut {
            what: "a message from gimmm".into(),
            waited: within,
            summary: "(plain client)".into(),
        }),
    }
}

/// Receives on a plain client until `pred` matches (each message within
/// `within`), ACKing sequenced messages on the way (the matching one too).
pub async fn recv_until(
    c: &mut BalClient,
    within: Duration,
    mut pred: impl FnMut(&ToBal) -> bool,
) -> Result<ToBal, ProbeError> {
    loop {
        let m = recv(c, within).await?;
        if let Some(seq) = m.sequence_id() {
            c.ack(seq).await?;
        }
        if pred(&m) {
            return Ok(m);
        }
    }
}
