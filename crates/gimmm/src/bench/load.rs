//! The sender and receiver loop of `gimmm bench` (SPEC §7): one BAL
//! connection per session, a sender task writing DOWNSTREAMs (or injecting
//! upstream messages at the emulator) within a window or on a fixed
//! timeline, and a receiver task that ACKs every sequenced message and
//! records latency and exactly-once per message index in [`Shared`].

use super::child::proc_status;
use super::http::http;
use super::plan::Plan;
use anyhow::{bail, Context, Result};
use bal::{BalClient, ClientError};
use emulator::Emulator;
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// State shared by the sender and receiver tasks.
pub(super) struct Shared {
    pub(super) plan: Plan,
    pub(super) t0: Instant,
    /// Nanoseconds since `t0` (+1, so 0 means "not sent") when message `i`
    /// was sent (or scheduled, with --rate).
    pub(super) sent_ns: Vec<AtomicU64>,
    /// Final results (or UPSTREAM deliveries) seen per index.
    pub(super) seen: Vec<AtomicU8>,
    /// DOWNSTREAM_RECEIPTs seen per index.
    pub(super) receipts: Vec<AtomicU8>,
    /// First-time events so far (finals + upstream + receipts).
    pub(super) done: AtomicU64,
    /// When the last first-time event arrived (ns since `t0`).
    pub(super) last_ns: AtomicU64,
    /// When the first final result arrived (ns since `t0`), 0 = none yet.
    pub(super) first_ns: AtomicU64,
    pub(super) accepted: AtomicU64,
    pub(super) dup_accepted: AtomicU64,
    pub(super) rejected: AtomicU64,
    pub(super) errors: AtomicU64,
    /// ns per message on the timeline; 0 = as fast as possible.
    pub(super) interval_ns: f64,
    /// Time origin of the timeline (ns since `t0`).
    pub(super) start_ns: AtomicU64,
}

impl Shared {
    pub(super) fn new(plan: Plan, rate: f64) -> Shared {
        let n = plan.n as usize;
        Shared {
            plan,
            t0: Instant::now(),
            sent_ns: (0..n).map(|_| AtomicU64::new(0)).collect(),
            seen: (0..n).map(|_| AtomicU8::new(0)).collect(),
            receipts: (0..n).map(|_| AtomicU8::new(0)).collect(),
            done: AtomicU64::new(0),
            last_ns: AtomicU64::new(0),
            first_ns: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            dup_accepted: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            interval_ns: if rate > 0.0 { 1e9 / rate } else { 0.0 },
            start_ns: AtomicU64::new(0),
        }
    }

    pub(super) fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    pub(super) fn scheduled_ns(&self, i: u64) -> u64 {
        self.start_ns.load(Ordering::Relaxed) + (i as f64 * self.interval_ns) as u64
    }

    pub(super) fn event(&self, now: u64) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
    }
}

/// One BAL session: its writer is shared by the sender (DOWNSTREAMs) and
/// the receiver (ACKs).
pub(super) struct Sess {
    pub(super) id: String,
    pub(super) writer: Mutex<bal::client::BalWriter>,
    /// Downstream messages written.
    pub(super) sent: AtomicU64,
    /// Final results received.
    pub(super) finals: AtomicU64,
    /// DOWNSTREAM_ACCEPTED received.
    pub(super) accepted: AtomicU64,
    /// Woken when `finals` / `accepted` move (window space).
    pub(super) space: Notify,
}

#[derive(Copy, Clone, PartialEq, Eq)]
pub(super) enum Window {
    /// Bound messages without a final result (normal load).
    Finals,
    /// Bound messages not yet accepted (backlog fill: no finals come).
    Accepted,
    /// Fixed timeline, no window.
    Timeline,
}

/// Where upstream messages are injected.
#[derive(Clone)]
pub(super) enum EmuCtl {
    Local(Arc<Emulator>),
    Remote(String),
    None,
}

impl EmuCtl {
    pub(super) async fn upstream(&self, from: &str, category: &str, i: u64) -> Result<()> {
        let mut data = serde_json::Map::new();
        data.insert("bench_i".into(), serde_json::Value::String(i.to_string()));
        match self {
            EmuCtl::Local(e) => {
                e.send_upstream(from, category, data);
                Ok(())
            }
            EmuCtl::Remote(url) => {
                let body = serde_json::json!({"from": from, "category": category, "data": data});
                http(url, "POST", "/upstream", Some(&body.to_string())).await?;
                Ok(())
            }
            EmuCtl::None => bail!("upstream traffic needs an emulator (--emulator-stats)"),
        }
    }

    pub(super) async fn stats(&self) -> Option<emulator::Stats> {
        match self {
            EmuCtl::Local(e) => Some(e.stats_summary()),
            EmuCtl::Remote(url) => {
                let body = http(url, "GET", "/stats?summary=true", None).await.ok()?;
                serde_json::from_str(&body).ok()
            }
            EmuCtl::None => None,
        }
    }
}

pub(super) async fn sender(
    sh: Arc<Shared>,
    s: Arc<Sess>,
    first: u64,
    window: Window,
    max_in_flight: u64,
    clock: Arc<Notify>,
    emu: EmuCtl,
) -> Result<Histogram<u64>> {
    let plan = &sh.plan;
    let step = plan.sessions;
    let device = |i: u64| format!("bench-device-{}", i % 1000);
    // How late the sender itself was against the timeline (µs).
    let mut lag = Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?;
    let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut i = first;
    while i < plan.n {
        let tick = clock.notified();
        tokio::pin!(tick);
        tick.as_mut().enable();
        let space = s.space.notified();
        tokio::pin!(space);
        space.as_mut().enable();

        let now = sh.now_ns();
        buf.clear();
        let mut count = 0;
        while i < plan.n && count < 256 {
            let t = match window {
                Window::Timeline => {
                    let due = sh.scheduled_ns(i);
                    if due > now {
                        break;
                    }
                    let _ = lag.record(((now - due) / 1000).max(1));
                    due
                }
                Window::Finals | Window::Accepted => {
                    let sent = s.sent.load(Ordering::Relaxed);
                    let answered = if window == Window::Finals {
                        s.finals.load(Ordering::Relaxed)
                    } else {
                        s.accepted.load(Ordering::Relaxed)
                    };
                    if max_in_flight > 0 && sent.saturating_sub(answered) >= max_in_flight {
                        break;
                    }
                    now
                }
            };
            sh.sent_ns[i as usize].store(t + 1, Ordering::Relaxed);
            if plan.is_up(i) {
                emu.upstream(&device(i), &s.id, i).await?;
            } else {
                plan.downstream_line(&mut buf, i);
                s.sent.fetch_add(1, Ordering::Relaxed);
            }
            i += step;
            count += 1;
        }
        if !buf.is_empty() {
            let mut w = s.writer.lock().await;
            w.write_lines(&buf).await?;
            w.flush().await?;
        }
        if count == 0 {
            match window {
                Window::Timeline => tick.await,
                _ => space.await,
            }
        } else if window != Window::Timeline {
            tokio::task::yield_now().await;
        }
    }
    Ok(lag)
}

#[derive(Deserialize)]
struct InLine<'a> {
    #[serde(borrow)]
    message_type: Cow<'a, str>,
    #[serde(default)]
    sequence_id: Option<u64>,
    #[serde(default, borrow)]
    message_id: Option<Cow<'a, str>>,
    #[serde(default)]
    duplicate: bool,
    #[serde(default, borrow)]
    fcm_data: Option<&'a RawValue>,
    #[serde(default, borrow)]
    error: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    error_description: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct UpData<'a> {
    #[serde(default, borrow)]
    data: Option<UpIndex<'a>>,
}

#[derive(Deserialize)]
struct UpIndex<'a> {
    #[serde(default, borrow)]
    bench_i: Option<Cow<'a, str>>,
}

pub(super) struct Latencies {
    pub(super) downstream: Histogram<u64>,
    pub(super) upstream: Histogram<u64>,
}

pub(super) fn histogram() -> Histogram<u64> {
    // µs, up to an hour, 3 significant digits.
    match Histogram::new_with_bounds(1, 3_600_000_000, 3) {
        Ok(h) => h,
        Err(_) => Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits are valid")),
    }
}

pub(super) async fn receiver(
    sh: Arc<Shared>,
    s: Arc<Sess>,
    mut rd: bal::client::BalReader,
    stop: CancellationToken,
) -> Result<Latencies> {
    let plan = &sh.plan;
    let mut lat = Latencies {
        downstream: histogram(),
        upstream: histogram(),
    };
    let mut acks: Vec<u8> = Vec::with_capacity(8 * 1024);
    loop {
        let line = tokio::select! {
            biased;
            r = rd.recv_line() => r,
            _ = stop.cancelled() => break,
        };
        let line = match line {
            Ok(l) => l,
            Err(ClientError::Closed) => break,
            Err(e) => return Err(e.into()),
        };
        let now = sh.now_ns();
        let m: InLine<'_> = match serde_json::from_str(line) {
            Ok(m) => m,
            Err(e) => bail!("bad line from gimmm ({e}): {line}"),
        };
        if let Some(seq) = m.sequence_id {
            let _ = writeln!(acks, "{{\"message_type\":\"ACK\",\"sequence_id\":{seq}}}");
        }
        match &*m.message_type {
            "DOWNSTREAM_ACCEPTED" => {
                sh.accepted.fetch_add(1, Ordering::Relaxed);
                s.accepted.fetch_add(1, Ordering::Relaxed);
                if m.duplicate {
                    sh.dup_accepted.fetch_add(1, Ordering::Relaxed);
                }
                s.space.notify_one();
            }
            t @ ("DOWNSTREAM_ACK" | "DOWNSTREAM_REJECT") => {
                let Some(i) = m.message_id.as_deref().and_then(|id| plan.index_of(id)) else {
                    continue;
                };
                if t == "DOWNSTREAM_REJECT" && sh.rejected.fetch_add(1, Ordering::Relaxed) < 5 {
                    eprintln!(
                        "gimmm bench: message {i} rejected: {} {}",
                        m.error.as_deref().unwrap_or(""),
                        m.error_description.as_deref().unwrap_or("")
                    );
                }
                if let Some(slot) = sh.seen.get(i as usize) {
                    if slot.fetch_add(1, Ordering::Relaxed) == 0 {
                        let sent = sh.sent_ns[i as usize].load(Ordering::Relaxed);
                        if sent > 0 {
                            let _ = lat
                                .downstream
                                .record((now.saturating_sub(sent - 1) / 1000).max(1));
                        }
                        let _ = sh.first_ns.compare_exchange(
                            0,
                            now,
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        sh.event(now);
                        s.finals.fetch_add(1, Ordering::Relaxed);
                        s.space.notify_one();
                    }
                }
            }
            "DOWNSTREAM_RECEIPT" => {
                let Some(i) = m.message_id.as_deref().and_then(|id| plan.index_of(id)) else {
                    continue;
                };
                if let Some(slot) = sh.receipts.get(i as usize) {
                    if slot.fetch_add(1, Ordering::Relaxed) == 0 {
                        sh.event(now);
                    }
                }
            }
            "UPSTREAM" => {
                let idx = m
                    .fcm_data
                    .and_then(|raw| serde_json::from_str::<UpData<'_>>(raw.get()).ok())
                    .and_then(|u| u.data)
                    .and_then(|d| d.bench_i)
                    .and_then(|i| i.parse::<u64>().ok());
                if let Some(i) = idx {
                    if let Some(slot) = sh.seen.get(i as usize) {
                        if slot.fetch_add(1, Ordering::Relaxed) == 0 {
                            let sent = sh.sent_ns[i as usize].load(Ordering::Relaxed);
                            if sent > 0 {
                                let _ = lat
                                    .upstream
                                    .record((now.saturating_sub(sent - 1) / 1000).max(1));
                            }
                            sh.event(now);
                        }
                    }
                }
            }
            "ERROR" if sh.errors.fetch_add(1, Ordering::Relaxed) < 5 => {
                eprintln!("gimmm bench: ERROR from gimmm: {line}");
            }
            _ => {}
        }
        // ACK in batches: when nothing more is buffered, or plenty queued.
        if !acks.is_empty() && (rd.buffered() == 0 || acks.len() >= 8 * 1024) {
            let mut w = s.writer.lock().await;
            w.write_lines(&acks).await?;
            w.flush().await?;
            drop(w);
            acks.clear();
        }
    }
    Ok(lat)
}

pub(super) async fn logon_all(
    addr: &str,
    tls: Option<&bal::ClientTls>,
    sessions: &[(String, String)],
) -> Result<Vec<(Arc<Sess>, bal::client::BalReader)>> {
    let mut out = Vec::new();
    for (id, token) in sessions {
        let c = BalClient::connect_logon_to(addr, tls, id, token)
            .await
            .with_context(|| format!("logging on to {addr} as {id}"))?;
        let (rd, wr) = c.into_split();
        out.push((
            Arc::new(Sess {
                id: id.clone(),
                writer: Mutex::new(wr),
                sent: AtomicU64::new(0),
                finals: AtomicU64::new(0),
                accepted: AtomicU64::new(0),
                space: Notify::new(),
            }),
            rd,
        ));
    }
    Ok(out)
}

/// A thread that ticks every 200 µs while the timeline runs (tokio's timer
/// has 1 ms resolution, too coarse for sub-millisecond latencies).
pub(super) fn start_clock(stop: Arc<AtomicBool>) -> Arc<Notify> {
    let n = Arc::new(Notify::new());
    let n2 = n.clone();
    std::thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_micros(200));
            n2.notify_waiters();
        }
    });
    n
}

/// Waits until every first-time event arrived (or nothing moved for
/// `timeout`), sampling the gateway's RSS; returns the highest VmRSS seen.
pub(super) async fn wait_done(
    sh: &Shared,
    expected: u64,
    pid: Option<u32>,
    timeout: Duration,
) -> Option<u64> {
    let mut rss_max: Option<u64> = None;
    let mut last = sh.done.load(Ordering::Relaxed);
    let mut last_move = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    loop {
        tick.tick().await;
        if let Some(r) = pid.and_then(|p| proc_status(p, "VmRSS")) {
            rss_max = Some(rss_max.map_or(r, |m| m.max(r)));
        }
        let d = sh.done.load(Ordering::Relaxed);
        if d >= expected {
            return rss_max;
        }
        if d != last {
            last = d;
            last_move = Instant::now();
        } else if last_move.elapsed() > timeout {
            eprintln!(
                "gimmm bench: no progress for {timeout:?}: {d} of {expected} results; giving up"
            );
            return rss_max;
        }
    }
}

/// Message indices without a result, or with more than one.
#[derive(Default)]
pub(super) struct Counts {
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    pub(super) receipts_lost: u64,
    pub(super) receipts_duplicated: u64,
}

pub(super) fn count(sh: &Shared) -> Counts {
    let mut c = Counts::default();
    for (i, slot) in sh.seen.iter().enumerate() {
        match slot.load(Ordering::Relaxed) {
            0 => c.lost += 1,
            1 => {}
            k => c.duplicated += u64::from(k) - 1,
        }
        if sh.plan.receipts && !sh.plan.is_up(i as u64) {
            match sh.receipts[i].load(Ordering::Relaxed) {
                0 => c.receipts_lost += 1,
                1 => {}
                k => c.receipts_duplicated += u64::from(k) - 1,
            }
        }
    }
    c
}
