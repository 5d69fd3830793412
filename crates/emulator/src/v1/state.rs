//! Shared state of one HTTP v1 emulator: counters, connections, the token
//! registry, quota windows (SPEC §9). Everything here is synchronous, with
//! short critical sections never held across an `.await`; a request takes
//! the stats lock three times (start, admission, answer).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::auth::{ServiceAccount, Tokens};
use super::errors::V1ErrorCode;
use super::faults::V1Faults;
use super::stats::{V1ConnStats, V1MsgStats, V1Stats};

/// Settings fixed at start.
#[derive(Debug, Clone)]
pub(crate) struct Fixed {
    pub(crate) project_id: String,
    pub(crate) project_number: String,
    pub(crate) token_lifetime: Duration,
    pub(crate) track_messages: bool,
    pub(crate) handshake_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) max_body_bytes: usize,
}

/// The fault settings one request works with (read once per request).
#[derive(Clone, Copy, Debug)]
pub(crate) struct View {
    pub(crate) latency: Duration,
    pub(crate) error_fraction: f64,
    pub(crate) error_code: V1ErrorCode,
    pub(crate) retry_after_secs: Option<u64>,
    pub(crate) gateway_error_fraction: f64,
    pub(crate) gateway_error_status: u16,
    pub(crate) quota_per_minute: Option<u64>,
    pub(crate) device_rate_per_minute: Option<u64>,
    pub(crate) goaway_after: Option<u64>,
    pub(crate) drop_after: Option<u64>,
    pub(crate) legacy_token_violation: bool,
    pub(crate) send_auth_error: Option<u16>,
}

/// One connection's handles, shared by its serving task and its requests.
#[derive(Debug)]
pub(crate) struct ConnCtx {
    pub(crate) id: u64,
    /// Cancelled to drop the connection abruptly.
    pub(crate) kill: CancellationToken,
    /// Cancelled to start a graceful shutdown (GOAWAY).
    pub(crate) goaway: CancellationToken,
    /// Cancelled by the serving task once the connection is gone.
    pub(crate) closed: CancellationToken,
    /// Speaks HTTP/1.x (known from ALPN, or from its first request).
    pub(crate) http1: std::sync::atomic::AtomicBool,
}

/// A fixed one-minute window.
#[derive(Clone, Copy, Debug)]
struct Window {
    start: Instant,
    count: u64,
}

const MINUTE: Duration = Duration::from_secs(60);

impl Window {
    /// Count one send against `limit`; `Err(seconds left)` when over.
    fn take(slot: &mut Option<Window>, limit: u64, now: Instant) -> Result<(), u64> {
        let w = match slot {
            Some(w) if now < w.start + MINUTE => w,
            _ => slot.insert(Window {
                start: now,
                count: 0,
            }),
        };
        if w.count >= limit {
            let left = (w.start + MINUTE).saturating_duration_since(now);
            return Err(left.as_secs() + u64::from(left.subsec_nanos() > 0));
        }
        w.count += 1;
        Ok(())
    }
}

/// Why admission refused a send.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum QuotaHit {
    /// Project quota; seconds until the window ends.
    Project(u64),
    /// Device rate; seconds until the device's window ends.
    Device(u64),
}

#[derive(Default)]
struct Counters {
    connections_opened: u64,
    tls_failures: u64,
    requests: u64,
    unauthenticated: u64,
    permission_denied: u64,
    ok: u64,
    delivered: u64,
    validated_only: u64,
    duplicates: u64,
    injected_errors: u64,
    quota_rejections: u64,
    goaways_sent: u64,
    http1_closes: u64,
    drops: u64,
    dropped_requests: u64,
    over_limit: u64,
    not_found: u64,
    token_requests: u64,
    tokens_issued: u64,
    tokens_refused: u64,
}

struct LiveConn {
    ctx: Arc<ConnCtx>,
    limit: u32,
}

#[derive(Default)]
pub(crate) struct State {
    c: Counters,
    by_status: BTreeMap<u16, u64>,
    by_error_code: BTreeMap<String, u64>,
    token_refusals: BTreeMap<String, u64>,
    msgs: HashMap<Box<str>, V1MsgStats>,
    conns: Vec<V1ConnStats>,
    live: HashMap<u64, LiveConn>,
    project_window: Option<Window>,
    device_windows: HashMap<Box<str>, Window>,
}

impl State {
    fn conn_mut(&mut self, id: u64) -> Option<&mut V1ConnStats> {
        let idx = usize::try_from(id).ok()?.checked_sub(1)?;
        self.conns.get_mut(idx)
    }
}

/// Lock guard that wakes `wait_until` callers when it is released.
pub(crate) struct Guard<'a> {
    inner: Option<MutexGuard<'a, State>>,
    shared: &'a Shared,
}

impl Deref for Guard<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        match &self.inner {
            Some(g) => g,
            None => unreachable!("guard used after drop"),
        }
    }
}

impl DerefMut for Guard<'_> {
    fn deref_mut(&mut self) -> &mut State {
        match &mut self.inner {
            Some(g) => g,
            None => unreachable!("guard used after drop"),
        }
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        // Read the waiter count under the lock: a waiter registering later
        // takes the lock afterwards and sees this change.
        let wake = self.shared.waiters.load(Ordering::SeqCst) > 0;
        self.inner = None;
        if wake {
            self.shared.changed.notify_waiters();
        }
    }
}

/// What [`Shared::request_started`] decided for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    Serve,
    /// Drop the connection; leave the request unanswered.
    Drop,
}

/// The outcome of one answered `messages:send`, for the counters.
pub(crate) struct Answer<'a> {
    pub(crate) key: Option<&'a str>,
    pub(crate) status: u16,
    pub(crate) code: Option<V1ErrorCode>,
    pub(crate) validate_only: bool,
    pub(crate) injected: bool,
    pub(crate) quota: bool,
    pub(crate) unauthenticated: bool,
    pub(crate) permission_denied: bool,
}

/// Everything the tasks of one emulator share.
pub(crate) struct Shared {
    pub(crate) fixed: Fixed,
    pub(crate) sa: ServiceAccount,
    pub(crate) tokens: Tokens,
    pub(crate) faults: watch::Sender<V1Faults>,
    unregistered: RwLock<HashSet<String>>,
    state: Mutex<State>,
    pub(crate) changed: Notify,
    pub(crate) waiters: AtomicUsize,
    /// Cancelled at the very end: kills every task and connection.
    pub(crate) root: CancellationToken,
    /// Cancelled first on shutdown: stops the listeners.
    pub(crate) stop_accept: CancellationToken,
    pub(crate) tracker: TaskTracker,
    /// `{"name": "projects/P/messages/` (pretty-printed like Google), built
    /// once.
    pub(crate) name_head: String,
    /// Unique per emulator, so message names never repeat across restarts.
    id_prefix: String,
    next_id: AtomicU64,
}

impl Shared {
    pub(crate) fn new(fixed: Fixed, sa: ServiceAccount, faults: V1Faults) -> Shared {
        let root = CancellationToken::new();
        let project_json =
            serde_json::to_string(&format!("projects/{}/messages/", fixed.project_id))
                .unwrap_or_else(|_| "\"projects/p/messages/\"".to_owned());
        // Drop the closing quote: the id and `"` follow per message.
        let name_head = format!(
            "{{\n  \"name\": {}",
            &project_json[..project_json.len().saturating_sub(1)]
        );
        Shared {
            fixed,
            sa,
            tokens: Tokens::default(),
            faults: watch::Sender::new(faults),
            unregistered: RwLock::new(HashSet::new()),
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            waiters: AtomicUsize::new(0),
            stop_accept: root.child_token(),
            root,
            tracker: TaskTracker::new(),
            name_head,
            id_prefix: format!("{:08x}", rand::random::<u32>()),
            next_id: AtomicU64::new(1),
        }
    }

    /// Lock for a change (wakes waiters on release).
    pub(crate) fn lock(&self) -> Guard<'_> {
        Guard {
            inner: Some(self.state.lock().unwrap_or_else(|e| e.into_inner())),
            shared: self,
        }
    }

    fn lock_ro(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Fault settings for one request.
    pub(crate) fn view(&self) -> View {
        let f = self.faults.borrow();
        View {
            latency: f.latency,
            error_fraction: f.error_fraction,
            error_code: f.effective_error_code(),
            retry_after_secs: f.retry_after_secs,
            gateway_error_fraction: f.gateway_error_fraction,
            gateway_error_status: f.effective_gateway_status(),
            quota_per_minute: f.quota_per_minute,
            device_rate_per_minute: f.device_rate_per_minute,
            goaway_after: f.goaway_after,
            drop_after: f.drop_after,
            legacy_token_violation: f.legacy_token_violation,
            send_auth_error: f.send_auth_error,
        }
    }

    /// Replace the faults. A changed quota starts a fresh window.
    pub(crate) fn set_faults(&self, f: V1Faults) {
        let (quota_changed, device_changed) = {
            let old = self.faults.borrow();
            (
                old.quota_per_minute != f.quota_per_minute,
                old.device_rate_per_minute != f.device_rate_per_minute,
            )
        };
        {
            let mut st = self.lock();
            if quota_changed {
                st.project_window = None;
            }
            if device_changed {
                st.device_windows.clear();
            }
        }
        self.faults.send_replace(f);
    }

    /// Lifetime of the access tokens issued now.
    pub(crate) fn token_lifetime(&self) -> Duration {
        self.faults
            .borrow()
            .token_lifetime_secs
            .map(Duration::from_secs)
            .unwrap_or(self.fixed.token_lifetime)
    }

    /// A unique message id in Google's form (`0:<micros>%<hex>`).
    pub(crate) fn next_message_id(&self, out: &mut String) {
        use std::fmt::Write as _;
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0);
        let _ = write!(out, "0:{micros}%{}{n:08x}", self.id_prefix);
    }

    // ----------------------------------------------------------------
    // token registry

    pub(crate) fn mark_unregistered(&self, token: &str) {
        self.unregistered
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token.to_owned());
    }

    pub(crate) fn is_marked_unregistered(&self, token: &str) -> bool {
        let set = self.unregistered.read().unwrap_or_else(|e| e.into_inner());
        !set.is_empty() && set.contains(token)
    }

    // ----------------------------------------------------------------
    // connections

    pub(crate) fn tls_failed(&self) {
        self.lock().c.tls_failures += 1;
    }

    /// A TLS connection is up; `limit` is the stream limit advertised on it.
    pub(crate) fn conn_opened(&self, alpn: &str, limit: u32) -> Arc<ConnCtx> {
        let mut st = self.lock();
        let id = st.conns.len() as u64 + 1;
        let ctx = Arc::new(ConnCtx {
            id,
            kill: self.root.child_token(),
            goaway: CancellationToken::new(),
            closed: CancellationToken::new(),
            http1: std::sync::atomic::AtomicBool::new(alpn == "http/1.1"),
        });
        st.c.connections_opened += 1;
        st.conns.push(V1ConnStats {
            id,
            open: true,
            alpn: alpn.to_owned(),
            max_concurrent_streams: limit,
            ..V1ConnStats::default()
        });
        st.live.insert(
            id,
            LiveConn {
                ctx: Arc::clone(&ctx),
                limit,
            },
        );
        ctx
    }

    pub(crate) fn conn_closed(&self, id: u64) {
        let mut st = self.lock();
        st.live.remove(&id);
        if let Some(c) = st.conn_mut(id) {
            c.open = false;
            c.in_flight = 0;
        }
    }

    /// The serving task started a graceful shutdown of a connection.
    pub(crate) fn goaway_started(&self, id: u64, http2: bool) {
        let mut st = self.lock();
        if http2 {
            st.c.goaways_sent += 1;
        } else {
            st.c.http1_closes += 1;
        }
        if let Some(c) = st.conn_mut(id) {
            c.goaway_sent = true;
        }
    }

    fn drop_conn(st: &mut State, id: u64) -> bool {
        let Some(l) = st.live.get(&id) else {
            return false;
        };
        if l.ctx.kill.is_cancelled() {
            return false;
        }
        l.ctx.kill.cancel();
        st.c.drops += 1;
        if let Some(c) = st.conn_mut(id) {
            c.dropped = true;
        }
        true
    }

    pub(crate) fn drop_all(&self) {
        let mut st = self.lock();
        let ids: Vec<u64> = st.live.keys().copied().collect();
        for id in ids {
            Shared::drop_conn(&mut st, id);
        }
    }

    pub(crate) fn goaway_all(&self) {
        let st = self.lock_ro();
        for l in st.live.values() {
            l.ctx.goaway.cancel();
        }
    }

    pub(crate) fn live_count(&self) -> usize {
        self.lock_ro().live.len()
    }

    // ----------------------------------------------------------------
    // requests

    /// A request arrived on `conn` (any path). Counts it and its stream,
    /// and applies the connection faults.
    pub(crate) fn request_started(&self, conn: &ConnCtx, send: bool, view: &View) -> Start {
        let mut st = self.lock();
        if send {
            st.c.requests += 1;
        }
        let limit = st.live.get(&conn.id).map_or(u32::MAX, |l| l.limit);
        let mut over = false;
        let mut n = 0;
        if let Some(c) = st.conn_mut(conn.id) {
            c.requests += 1;
            n = c.requests;
            if c.in_flight >= u64::from(limit) {
                c.over_limit += 1;
                over = true;
            }
            c.in_flight += 1;
            c.streams_high_water = c.streams_high_water.max(c.in_flight);
        }
        if over {
            st.c.over_limit += 1;
        }
        if view.drop_after.is_some_and(|d| n >= d) {
            Shared::drop_conn(&mut st, conn.id);
            if send {
                st.c.dropped_requests += 1;
            }
            return Start::Drop;
        }
        if view.goaway_after.is_some_and(|g| n >= g) {
            conn.goaway.cancel();
        }
        Start::Serve
    }

    /// A request is done (answered or abandoned).
    pub(crate) fn request_finished(&self, conn: u64) {
        let mut st = self.lock();
        if let Some(c) = st.conn_mut(conn) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }

    /// An authenticated, parsed send: count it as received under `key`, and
    /// when `eligible` (it would succeed) take it from the quotas.
    pub(crate) fn admit(
        &self,
        key: Option<&str>,
        device: Option<&str>,
        eligible: bool,
        view: &View,
    ) -> Result<(), QuotaHit> {
        let mut st = self.lock();
        if let Some(k) = key.filter(|_| self.fixed.track_messages) {
            match st.msgs.get_mut(k) {
                Some(m) => m.received += 1,
                None => {
                    st.msgs.insert(
                        k.into(),
                        V1MsgStats {
                            received: 1,
                            ..V1MsgStats::default()
                        },
                    );
                }
            }
        }
        if !eligible {
            return Ok(());
        }
        let now = Instant::now();
        if let (Some(limit), Some(token)) = (view.device_rate_per_minute, device) {
            if st.device_windows.len() > 100_000 {
                st.device_windows.retain(|_, w| now < w.start + MINUTE);
            }
            let mut slot = st.device_windows.get(token).copied();
            let r = Window::take(&mut slot, limit, now);
            if let Some(w) = slot {
                st.device_windows.insert(token.into(), w);
            }
            if let Err(left) = r {
                return Err(QuotaHit::Device(left));
            }
        }
        if let Some(limit) = view.quota_per_minute {
            let mut slot = st.project_window;
            let r = Window::take(&mut slot, limit, now);
            st.project_window = slot;
            if let Err(left) = r {
                return Err(QuotaHit::Project(left));
            }
        }
        Ok(())
    }

    /// Count an answered send and end its stream.
    pub(crate) fn answered(&self, conn: u64, a: &Answer<'_>) {
        let mut st = self.lock();
        if let Some(c) = st.conn_mut(conn) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        *st.by_status.entry(a.status).or_insert(0) += 1;
        if let Some(code) = a.code {
            match st.by_error_code.get_mut(code.as_str()) {
                Some(n) => *n += 1,
                None => {
                    st.by_error_code.insert(code.as_str().to_owned(), 1);
                }
            }
        }
        let ok = a.status == 200;
        let delivered = ok && !a.validate_only;
        if ok {
            st.c.ok += 1;
            if a.validate_only {
                st.c.validated_only += 1;
            } else {
                st.c.delivered += 1;
            }
        }
        st.c.injected_errors += u64::from(a.injected);
        st.c.quota_rejections += u64::from(a.quota);
        st.c.unauthenticated += u64::from(a.unauthenticated);
        st.c.permission_denied += u64::from(a.permission_denied);
        if let Some(k) = a.key.filter(|_| self.fixed.track_messages) {
            let mut dup = false;
            if let Some(m) = st.msgs.get_mut(k) {
                m.last_status = a.status;
                if ok {
                    m.ok += 1;
                    if delivered {
                        dup = m.delivered > 0;
                        m.delivered += 1;
                    }
                } else {
                    m.errors += 1;
                    m.last_error = Some(match a.code {
                        Some(c) => c.as_str().to_owned(),
                        None => format!("HTTP_{}", a.status),
                    });
                }
            }
            st.c.duplicates += u64::from(dup);
        }
    }

    /// A request to an unknown path was answered 404.
    pub(crate) fn not_found(&self, conn: u64) {
        let mut st = self.lock();
        st.c.not_found += 1;
        if let Some(c) = st.conn_mut(conn) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
    }

    /// A token request was answered; `refusal` = the reason when refused.
    pub(crate) fn token_answered(&self, conn: u64, refusal: Option<&'static str>) {
        let mut st = self.lock();
        if let Some(c) = st.conn_mut(conn) {
            c.in_flight = c.in_flight.saturating_sub(1);
        }
        st.c.token_requests += 1;
        match refusal {
            None => st.c.tokens_issued += 1,
            Some(r) => {
                st.c.tokens_refused += 1;
                *st.token_refusals.entry(r.to_owned()).or_insert(0) += 1;
            }
        }
    }

    // ----------------------------------------------------------------
    // snapshots

    pub(crate) fn stats(&self, full: bool) -> V1Stats {
        let st = self.lock_ro();
        let c = &st.c;
        V1Stats {
            messages: if full {
                st.msgs
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
            } else {
                BTreeMap::new()
            },
            connections: st.conns.clone(),
            connections_opened: c.connections_opened,
            tls_failures: c.tls_failures,
            requests: c.requests,
            by_status: st.by_status.clone(),
            by_error_code: st.by_error_code.clone(),
            unauthenticated: c.unauthenticated,
            permission_denied: c.permission_denied,
            ok: c.ok,
            delivered: c.delivered,
            validated_only: c.validated_only,
            duplicates: c.duplicates,
            injected_errors: c.injected_errors,
            quota_rejections: c.quota_rejections,
            goaways_sent: c.goaways_sent,
            http1_closes: c.http1_closes,
            drops: c.drops,
            dropped_requests: c.dropped_requests,
            over_limit: c.over_limit,
            not_found: c.not_found,
            token_requests: c.token_requests,
            tokens_issued: c.tokens_issued,
            tokens_refused: c.tokens_refused,
            token_refusals: st.token_refusals.clone(),
        }
    }

    /// Zero the counters and forget per-message stats. Connections stay
    /// listed (their ids index the list); their counters are zeroed.
    pub(crate) fn reset_stats(&self) {
        let mut st = self.lock();
        st.c = Counters::default();
        st.by_status.clear();
        st.by_error_code.clear();
        st.token_refusals.clear();
        st.msgs.clear();
        for c in &mut st.conns {
            c.requests = 0;
            c.streams_high_water = c.in_flight;
            c.over_limit = 0;
        }
    }
}
