//! `gimmm bench` (SPEC §7): the load generator behind every performance
//! figure in BENCHMARKS.md.
//!
//! It starts a CCS emulator (in this process, as a library) and a gateway —
//! by default `gimmm serve` as a **child process**, so that the gateway's
//! own peak RSS can be read from `/proc/<pid>/status` (`VmHWM`); with
//! `--in-process` inside this process — or drives ones that already run
//! (`--gateway ADDR`, optionally `--emulator-stats URL`).
//!
//! Each BAL session has a sender task and a receiver task on one
//! [`BalClient::into_split`] connection. Message `i` belongs to session
//! `i % sessions`; it is an upstream message (injected at the emulator with
//! `send_upstream`) for a fraction `--upstream-fraction` of the indices and a
//! DOWNSTREAM otherwise. Latency is measured from the moment a message was
//! sent (with `--rate`: from the moment it was *scheduled* on a fixed
//! timeline, so a stalled gateway cannot hide its stall: no coordinated
//! omission) to the moment its DOWNSTREAM_ACK (or UPSTREAM) arrives at the
//! BAL. Every message index must get exactly one final result; anything else
//! is reported as lost or duplicated and makes the command fail, as do
//! emulator counters that disagree.
//!
//! `--queue-while-down` measures the backlog case instead: FCM is
//! unreachable while `--messages` are accepted (RSS of the gateway with the
//! backlog on disk), the gateway is restarted (time until it serves BALs
//! again), then the emulator comes up and the backlog drains (throughput).

use anyhow::{bail, Context, Result};
use bal::{BalClient, ClientError};
use clap::{Args, ValueEnum};
use emulator::{Emulator, EmulatorConfig, Faults, TlsIdentity};
use hdrhistogram::Histogram;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// What to do to the gateway between filling the backlog and draining it.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Restart {
    /// Keep the gateway running.
    None,
    /// SIGTERM (clean shutdown), then start it again.
    Term,
    /// SIGKILL (crash), then start it again.
    Kill,
}

#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Messages to drive (downstream plus upstream).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Offered load in messages per second on a fixed timeline; 0 = as fast
    /// as the gateway takes them (bounded by --max-in-flight).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// CCS connections of the gateway (fcm.connections).
    #[arg(long, default_value_t = 4)]
    links: usize,
    /// BAL sessions, one connection each.
    #[arg(long, default_value_t = 1)]
    sessions: usize,
    /// Grouped downstream messages: a fraction (0..=1) of the messages, or a
    /// count (> 1). They are spread over --group-ids groups per session.
    #[arg(long, default_value_t = 0.0)]
    groups: f64,
    /// Distinct group ids per session for grouped messages.
    #[arg(long, default_value_t = 100)]
    group_ids: u64,
    /// Fraction (0..1) of the messages that are upstream, injected through
    /// the emulator's send_upstream.
    #[arg(long, default_value_t = 0.0)]
    upstream_fraction: f64,
    /// Ask for a delivery receipt on every downstream message (and wait for
    /// every DOWNSTREAM_RECEIPT).
    #[arg(long)]
    receipts: bool,
    /// Emulator fault: delay every ack by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    ack_delay_ms: u64,
    /// With --rate 0: most downstream messages per session sent and without
    /// a final result (a BAL with bounded concurrency).
    #[arg(long, default_value_t = 5_000)]
    max_in_flight: u64,
    /// bal.max_unacked of the gateway started by the bench (default: the
    /// gateway's default, 100).
    #[arg(long)]
    max_unacked: Option<usize>,
    /// Write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Run the gateway inside this process instead of as a child process
    /// (its RSS then cannot be told apart from the bench's).
    #[arg(long)]
    in_process: bool,
    /// Drive an existing gateway at this BAL address instead of starting one.
    #[arg(long)]
    gateway: Option<String>,
    /// With --gateway: its process id, to read its peak RSS.
    #[arg(long)]
    gateway_pid: Option<u32>,
    /// With --gateway: the stats URL of the emulator it uses
    /// (e.g. http://127.0.0.1:5237), to inject upstream and check counters.
    #[arg(long)]
    emulator_stats: Option<String>,
    /// With --gateway: the session ids to log on to (comma separated;
    /// default com.example.app).
    #[arg(long, value_delimiter = ',')]
    session_ids: Vec<String>,
    /// With --gateway: the token of those sessions.
    #[arg(long, default_value = "dev-token", hide_default_value = true)]
    token: String,
    /// Directory for the gateway's store (default: a temporary directory).
    /// Put it on the disk you want to measure.
    #[arg(long)]
    store_dir: Option<PathBuf>,
    /// Give up when no result arrived for this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout_secs: u64,
    /// Backlog mode: accept --messages while FCM is unreachable, optionally
    /// restart the gateway, then bring the emulator up and drain.
    #[arg(long)]
    queue_while_down: bool,
    /// With --queue-while-down: how to restart the gateway once the backlog
    /// is stored.
    #[arg(long, value_enum, default_value_t = Restart::Term)]
    restart: Restart,
}

// ---------------------------------------------------------------------------
// The message plan: which index is what.

struct Plan {
    n: u64,
    sessions: u64,
    up_fraction: f64,
    group_fraction: f64,
    group_ids: u64,
    receipts: bool,
    /// Message ids are `<prefix><index>`.
    prefix: String,
    downstream: u64,
    upstream: u64,
}

/// Spreads a fraction evenly over the indices (Bresenham): exactly
/// `round_down(n * f)` of the first `n` indices are picked.
fn pick(f: f64, i: u64) -> bool {
    f > 0.0 && ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
}

impl Plan {
    fn new(a: &BenchArgs) -> Plan {
        let group_fraction = if a.groups > 1.0 {
            (a.groups / a.messages.max(1) as f64).min(1.0)
        } else {
            a.groups.max(0.0)
        };
        let mut p = Plan {
            n: a.messages,
            sessions: a.sessions.max(1) as u64,
            up_fraction: a.upstream_fraction,
            group_fraction,
            group_ids: a.group_ids.max(1),
            receipts: a.receipts,
            prefix: format!("bench-{:08x}-", rand_u32()),
            downstream: 0,
            upstream: 0,
        };
        p.upstream = (0..p.n).filter(|i| p.is_up(*i)).count() as u64;
        p.downstream = p.n - p.upstream;
        p
    }

    fn is_up(&self, i: u64) -> bool {
        pick(self.up_fraction, i)
    }

    fn group(&self, i: u64) -> Option<u64> {
        pick(self.group_fraction, i).then(|| (i / self.sessions) % self.group_ids)
    }

    /// Final results the BALs must see: one per message, plus a receipt per
    /// downstream message when asked for.
    fn expected_events(&self) -> u64 {
        self.n + if self.receipts { self.downstream } else { 0 }
    }

    fn index_of(&self, message_id: &str) -> Option<u64> {
        message_id.strip_prefix(self.prefix.as_str())?.parse().ok()
    }

    /// Appends the DOWNSTREAM line of message `i`.
    fn downstream_line(&self, out: &mut Vec<u8>, i: u64) {
        let _ = write!(out, "{{\"message_type\":\"DOWNSTREAM\",");
        if let Some(g) = self.group(i) {
            let _ = write!(out, "\"group_id\":\"g{g}\",");
        }
        let _ = writeln!(
            out,
            "\"fcm_data\":{{\"to\":\"bench-device-{}\",\"message_id\":\"{}{i}\",\"time_to_live\":3600,\
             \"data\":{{\"score\":\"3x1\",\"bench_i\":\"{i}\"}}{}}}}}",
            i % 1000,
            self.prefix,
            if self.receipts {
                ",\"delivery_receipt_requested\":true"
            } else {
                ""
            }
        );
    }
}

fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

// ---------------------------------------------------------------------------
// State shared by the sender and receiver tasks.

struct Shared {
    plan: Plan,
    t0: Instant,
    /// Nanoseconds since `t0` (+1, so 0 means "not sent") when message `i`
    /// was sent (or scheduled, with --rate).
    sent_ns: Vec<AtomicU64>,
    /// Final results (or UPSTREAM deliveries) seen per index.
    seen: Vec<AtomicU8>,
    /// DOWNSTREAM_RECEIPTs seen per index.
    receipts: Vec<AtomicU8>,
    /// First-time events so far (finals + upstream + receipts).
    done: AtomicU64,
    /// When the last first-time event arrived (ns since `t0`).
    last_ns: AtomicU64,
    /// When the first final result arrived (ns since `t0`), 0 = none yet.
    first_ns: AtomicU64,
    accepted: AtomicU64,
    dup_accepted: AtomicU64,
    rejected: AtomicU64,
    errors: AtomicU64,
    /// ns per message on the timeline; 0 = as fast as possible.
    interval_ns: f64,
    /// Time origin of the timeline (ns since `t0`).
    start_ns: AtomicU64,
}

impl Shared {
    fn new(plan: Plan, rate: f64) -> Shared {
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

    fn now_ns(&self) -> u64 {
        self.t0.elapsed().as_nanos() as u64
    }

    fn scheduled_ns(&self, i: u64) -> u64 {
        self.start_ns.load(Ordering::Relaxed) + (i as f64 * self.interval_ns) as u64
    }

    fn event(&self, now: u64) {
        self.done.fetch_add(1, Ordering::Relaxed);
        self.last_ns.fetch_max(now, Ordering::Relaxed);
    }
}

/// One BAL session: its writer is shared by the sender (DOWNSTREAMs) and
/// the receiver (ACKs).
struct Sess {
    id: String,
    writer: Mutex<bal::client::BalWriter>,
    /// Downstream messages written.
    sent: AtomicU64,
    /// Final results received.
    finals: AtomicU64,
    /// DOWNSTREAM_ACCEPTED received.
    accepted: AtomicU64,
    /// Woken when `finals` / `accepted` move (window space).
    space: Notify,
}

#[derive(Copy, Clone, PartialEq, Eq)]
enum Window {
    /// Bound messages without a final result (normal load).
    Finals,
    /// Bound messages not yet accepted (backlog fill: no finals come).
    Accepted,
    /// Fixed timeline, no window.
    Timeline,
}

/// Where upstream messages are injected.
#[derive(Clone)]
enum EmuCtl {
    Local(Arc<Emulator>),
    Remote(String),
    None,
}

impl EmuCtl {
    async fn upstream(&self, from: &str, category: &str, i: u64) -> Result<()> {
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

    async fn stats(&self) -> Option<emulator::Stats> {
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

// ---------------------------------------------------------------------------
// Sender and receiver.

async fn sender(
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

struct Latencies {
    downstream: Histogram<u64>,
    upstream: Histogram<u64>,
}

fn histogram() -> Histogram<u64> {
    // µs, up to an hour, 3 significant digits.
    match Histogram::new_with_bounds(1, 3_600_000_000, 3) {
        Ok(h) => h,
        Err(_) => Histogram::new(3).unwrap_or_else(|_| unreachable!("3 digits are valid")),
    }
}

async fn receiver(
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

// ---------------------------------------------------------------------------
// Gateway and emulator set-up.

enum Gw {
    Child { child: Child, pid: u32 },
    InProcess(gateway::Gateway),
    External { pid: Option<u32> },
}

impl Gw {
    fn pid(&self) -> Option<u32> {
        match self {
            Gw::Child { pid, .. } => Some(*pid),
            Gw::InProcess(_) => Some(std::process::id()),
            Gw::External { pid } => *pid,
        }
    }

    fn rss_scope(&self) -> &'static str {
        match self {
            Gw::Child { .. } => "gateway child process",
            Gw::InProcess(_) => "whole bench process (gateway, emulator and load generator)",
            Gw::External { pid: Some(_) } => "external gateway process",
            Gw::External { pid: None } => "unknown (pass --gateway-pid)",
        }
    }

    async fn stop(self, how: Restart) -> Result<()> {
        match self {
            Gw::Child { mut child, pid } => {
                if how == Restart::Kill {
                    let _ = child.kill().await;
                    return Ok(());
                }
                signal_term(pid);
                match tokio::time::timeout(Duration::from_secs(30), child.wait()).await {
                    Ok(Ok(st)) if st.success() => Ok(()),
                    Ok(Ok(st)) => bail!("gateway exited with {st}"),
                    Ok(Err(e)) => Err(e.into()),
                    Err(_) => {
                        let _ = child.kill().await;
                        bail!("gateway did not stop within 30 s of SIGTERM")
                    }
                }
            }
            Gw::InProcess(g) => {
                g.stop().await;
                Ok(())
            }
            Gw::External { .. } => Ok(()),
        }
    }
}

fn signal_term(pid: u32) {
    // No libc (unsafe is forbidden in this workspace): use kill(1).
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// `VmHWM` / `VmRSS` of a process, in bytes.
fn proc_status(pid: u32, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(key))?;
    let kb: u64 = line[key.len()..]
        .trim_start_matches(':')
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Median latency of `fdatasync` after a 4 KiB append in `dir`, in ms: the
/// floor under every durable commit, and on a shared VM the figure that
/// moves the most between runs.
fn fsync_probe_ms(dir: &Path) -> Option<f64> {
    use std::io::Write as _;
    let path = dir.join(format!("fsync-probe-{}", rand_u32()));
    let mut f = std::fs::File::create(&path).ok()?;
    let block = [0u8; 4096];
    let mut times = Vec::with_capacity(20);
    for _ in 0..20 {
        f.write_all(&block).ok()?;
        let t = Instant::now();
        f.sync_data().ok()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    times.get(times.len() / 2).copied()
}

/// CPU time (user + system) a process used so far, in seconds.
fn proc_cpu_secs(pid: u32) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at ")".
    let rest = text.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 here.
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks_per_sec())
}

fn clock_ticks_per_sec() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

struct GwSetup<'a> {
    fcm_port: u16,
    sender_id: &'a str,
    server_key: &'a str,
    ca_file: &'a Path,
    links: usize,
    sessions: &'a [(String, String)],
    store: &'a Path,
    max_unacked: Option<usize>,
    retry_fast: bool,
}

fn config_toml(g: &GwSetup<'_>) -> String {
    let mut s = format!(
        "[fcm]\nhost = \"127.0.0.1\"\nport = {}\nsender_id = \"{}\"\nserver_key = \"{}\"\n\
         ca_file = \"{}\"\nconnections = {}\n\n",
        g.fcm_port,
        g.sender_id,
        g.server_key,
        g.ca_file.display(),
        g.links
    );
    if g.retry_fast {
        s.push_str("[retry]\ninitial_ms = 100\nmax_ms = 1000\n\n");
    }
    s.push_str("[bal]\nlisten = \"127.0.0.1:0\"\n");
    if let Some(m) = g.max_unacked {
        s.push_str(&format!("max_unacked = {m}\n"));
    }
    for (id, token) in g.sessions {
        s.push_str(&format!(
            "\n[[bal.sessions]]\nsession_id = \"{id}\"\ntoken = \"{token}\"\n"
        ));
    }
    s.push_str(&format!(
        "\n[store]\npath = \"{}\"\n\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        g.store.display()
    ));
    s
}

/// Starts `gimmm serve --config FILE` and waits for its BAL address. Its
/// log level is `$GIMMM_BENCH_GATEWAY_LOG`, else `default_log`.
async fn spawn_gateway(config: &Path, default_log: &str) -> Result<(Gw, SocketAddr)> {
    let exe = std::env::current_exe().context("locating the gimmm binary")?;
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .env(
            "RUST_LOG",
            std::env::var("GIMMM_BENCH_GATEWAY_LOG").unwrap_or_else(|_| default_log.into()),
        )
        .stdout(std::process::Stdio::piped())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the gateway child process")?;
    let pid = child.id().context("gateway child has no pid")?;
    let stdout = child.stdout.take().context("gateway stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let addr = tokio::time::timeout(Duration::from_secs(60), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(a) = l.strip_prefix("gimmm serving BALs on ") {
                return a.trim().parse::<SocketAddr>().ok();
            }
        }
        None
    })
    .await
    .ok()
    .flatten();
    let Some(addr) = addr else {
        let _ = child.kill().await;
        bail!("the gateway child did not report its BAL address (see its log above)");
    };
    // Keep draining its stdout so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((Gw::Child { child, pid }, addr))
}

fn gateway_config(g: &GwSetup<'_>) -> Result<gateway::config::Config> {
    use gateway::config::{Config, Secret, SessionConfig};
    let mut cfg = Config::default();
    cfg.fcm.host = "127.0.0.1".into();
    cfg.fcm.port = g.fcm_port;
    cfg.fcm.sender_id = g.sender_id.into();
    cfg.fcm.server_key = Secret::new(g.server_key);
    cfg.fcm.ca_file = Some(g.ca_file.to_path_buf());
    cfg.fcm.connections = g.links;
    cfg.bal.listen = "127.0.0.1:0".into();
    if let Some(m) = g.max_unacked {
        cfg.bal.max_unacked = m;
    }
    cfg.bal.sessions = g
        .sessions
        .iter()
        .map(|(id, t)| SessionConfig {
            session_id: id.clone(),
            token: Secret::new(t.as_str()),
        })
        .collect();
    cfg.store.path = g.store.to_path_buf();
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.validate()?;
    Ok(cfg)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Minimal HTTP/1.1 client for the emulator's stats endpoint.
async fn http(base: &str, method: &str, path: &str, body: Option<&str>) -> Result<String> {
    let hostport = base
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .split('/')
        .next()
        .unwrap_or_default()
        .to_string();
    let mut s = tokio::net::TcpStream::connect(&hostport)
        .await
        .with_context(|| format!("connecting to {hostport}"))?;
    let body = body.unwrap_or("");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {hostport}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp).into_owned();
    let Some((head, rest)) = text.split_once("\r\n\r\n") else {
        bail!("bad HTTP answer from {hostport}");
    };
    if !head.starts_with("HTTP/1.1 2") {
        bail!(
            "{method} {path}: {}",
            head.lines().next().unwrap_or_default()
        );
    }
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut r = rest;
        while let Some((size, after)) = r.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 || after.len() < n {
                break;
            }
            out.push_str(&after[..n]);
            r = after[n..].trim_start_matches("\r\n");
        }
        return Ok(out);
    }
    Ok(rest.to_string())
}

async fn logon_all(
    addr: &str,
    sessions: &[(String, String)],
) -> Result<Vec<(Arc<Sess>, bal::client::BalReader)>> {
    let mut out = Vec::new();
    for (id, token) in sessions {
        let c = BalClient::connect_logon(addr, id, token)
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
fn start_clock(stop: Arc<AtomicBool>) -> Arc<Notify> {
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

// ---------------------------------------------------------------------------
// Results.

#[derive(Default)]
struct Counts {
    lost: u64,
    duplicated: u64,
    receipts_lost: u64,
    receipts_duplicated: u64,
}

fn count(sh: &Shared) -> Counts {
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

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

fn lat_json(h: &Histogram<u64>) -> serde_json::Value {
    serde_json::json!({
        "count": h.len(),
        "p50": ms(h, 0.5),
        "p90": ms(h, 0.9),
        "p99": ms(h, 0.99),
        "p999": ms(h, 0.999),
        "max": if h.is_empty() { 0.0 } else { h.max() as f64 / 1000.0 },
        "mean": h.mean() / 1000.0,
    })
}

fn mib(b: Option<u64>) -> String {
    match b {
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => "n/a".into(),
    }
}

/// Emulator counters that moved during the run.
#[derive(Default, Clone, Copy)]
struct EmuDelta {
    downstream_received: u64,
    acks_sent: u64,
    nacks_sent: u64,
    duplicates: u64,
    upstream_acked: u64,
    upstream_resent: u64,
    receipts_acked: u64,
    window_violations: u64,
    pending_high_water: u64,
}

fn emu_delta(
    before: &Option<emulator::Stats>,
    after: &Option<emulator::Stats>,
) -> Option<EmuDelta> {
    let a = after.as_ref()?;
    let zero = emulator::Stats::default();
    let b = before.as_ref().unwrap_or(&zero);
    Some(EmuDelta {
        downstream_received: a.downstream_received
            - b.downstream_received.min(a.downstream_received),
        acks_sent: a.acks_sent.saturating_sub(b.acks_sent),
        nacks_sent: a.nacks_sent.saturating_sub(b.nacks_sent),
        duplicates: a.duplicates.saturating_sub(b.duplicates),
        upstream_acked: a.upstream_acked.saturating_sub(b.upstream_acked),
        upstream_resent: a.upstream_resent.saturating_sub(b.upstream_resent),
        receipts_acked: a.receipts_acked.saturating_sub(b.receipts_acked),
        window_violations: a.window_violations.saturating_sub(b.window_violations),
        pending_high_water: a.max_pending_high_water(),
    })
}

// ---------------------------------------------------------------------------
// Entry point.

pub(crate) async fn run(a: BenchArgs) -> Result<()> {
    if a.messages == 0 {
        bail!("--messages must be at least 1");
    }
    if !(0.0..1.0).contains(&a.upstream_fraction) {
        bail!("--upstream-fraction must be within 0.0..1.0");
    }
    if a.rate < 0.0 || !a.rate.is_finite() {
        bail!("--rate must be >= 0");
    }
    if a.links == 0 || a.sessions == 0 {
        bail!("--links and --sessions must be at least 1");
    }
    if a.queue_while_down {
        if a.gateway.is_some() || a.in_process {
            bail!("--queue-while-down starts its own gateway child process (no --gateway / --in-process)");
        }
        if a.upstream_fraction > 0.0 {
            bail!("--queue-while-down drives downstream messages only");
        }
        return queue_while_down(a).await;
    }
    load(a).await
}

fn session_list(a: &BenchArgs) -> Vec<(String, String)> {
    if a.gateway.is_some() {
        let ids = if a.session_ids.is_empty() {
            vec!["com.example.app".to_string()]
        } else {
            a.session_ids.clone()
        };
        (0..a.sessions)
            .map(|i| (ids[i % ids.len()].clone(), a.token.clone()))
            .collect()
    } else {
        (0..a.sessions)
            .map(|i| (format!("bench.s{i}"), format!("bench-token-{i}")))
            .collect()
    }
}

/// Waits until every first-time event arrived (or nothing moved for
/// `timeout`), sampling the gateway's RSS; returns the highest VmRSS seen.
async fn wait_done(sh: &Shared, expected: u64, pid: Option<u32>, timeout: Duration) -> Option<u64> {
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

async fn load(a: BenchArgs) -> Result<()> {
    let plan = Plan::new(&a);
    let sessions = session_list(&a);
    let dir = tempfile::tempdir()?;
    let store_dir = a
        .store_dir
        .clone()
        .unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&store_dir)?;
    let store = store_dir.join(format!("bench-{}.db", rand_u32()));
    let fsync_ms = fsync_probe_ms(&store_dir);

    // Emulator and gateway.
    let (gw, bal_addr, emu) = if let Some(addr) = &a.gateway {
        let emu = match &a.emulator_stats {
            Some(u) => EmuCtl::Remote(u.clone()),
            None => EmuCtl::None,
        };
        if plan.upstream > 0 && matches!(emu, EmuCtl::None) {
            bail!("--upstream-fraction with --gateway needs --emulator-stats");
        }
        if a.ack_delay_ms > 0 {
            bail!("--ack-delay-ms needs the bench's own emulator");
        }
        (Gw::External { pid: a.gateway_pid }, addr.clone(), emu)
    } else {
        let e = Emulator::start(EmulatorConfig {
            faults: Faults {
                ack_delay: Duration::from_millis(a.ack_delay_ms),
                ..Faults::default()
            },
            receipt_category: sessions[0].0.clone(),
            ..EmulatorConfig::default()
        })
        .await
        .context("starting the emulator")?;
        let ca = dir.path().join("emulator-ca.pem");
        std::fs::write(&ca, e.ca_pem())?;
        let setup = GwSetup {
            fcm_port: e.addr().port(),
            sender_id: e.sender_id(),
            server_key: e.server_key(),
            ca_file: &ca,
            links: a.links,
            sessions: &sessions,
            store: &store,
            max_unacked: a.max_unacked,
            retry_fast: false,
        };
        let (gw, addr) = if a.in_process {
            let cfg = gateway_config(&setup)?;
            let g = gateway::Gateway::start(cfg, CancellationToken::new()).await?;
            let addr = g.bal_addr;
            (Gw::InProcess(g), addr)
        } else {
            let cfg_path = dir.path().join("gimmm.toml");
            std::fs::write(&cfg_path, config_toml(&setup))?;
            spawn_gateway(&cfg_path, "warn").await?
        };
        let links = a.links;
        if e.wait_until_summary(Duration::from_secs(30), |s| s.ready_connections() >= links)
            .await
            .is_err()
        {
            bail!("the gateway did not open {links} CCS connection(s) within 30 s");
        }
        (gw, addr.to_string(), EmuCtl::Local(Arc::new(e)))
    };

    let emu_before = emu.stats().await;
    let own_pid = std::process::id();
    let gw_pid = match &gw {
        Gw::Child { pid, .. } => Some(*pid),
        Gw::External { pid } => *pid,
        Gw::InProcess(_) => None,
    };
    let cpu0 = (gw_pid.and_then(proc_cpu_secs), proc_cpu_secs(own_pid));
    let conns = logon_all(&bal_addr, &sessions).await?;
    let sh = Arc::new(Shared::new(plan, a.rate));
    let stop = CancellationToken::new();
    let clock_stop = Arc::new(AtomicBool::new(false));
    let clock = if a.rate > 0.0 {
        start_clock(clock_stop.clone())
    } else {
        Arc::new(Notify::new())
    };
    let window = if a.rate > 0.0 {
        Window::Timeline
    } else {
        Window::Finals
    };
    sh.start_ns.store(sh.now_ns(), Ordering::Relaxed);
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (k, (s, rd)) in conns.into_iter().enumerate() {
        receivers.push(tokio::spawn(receiver(
            sh.clone(),
            s.clone(),
            rd,
            stop.clone(),
        )));
        senders.push(tokio::spawn(sender(
            sh.clone(),
            s,
            k as u64,
            window,
            a.max_in_flight,
            clock.clone(),
            emu.clone(),
        )));
    }
    let expected = sh.plan.expected_events();
    let rss_sampled = wait_done(&sh, expected, gw.pid(), Duration::from_secs(a.timeout_secs)).await;
    clock_stop.store(true, Ordering::Relaxed);
    let start_ns = sh.start_ns.load(Ordering::Relaxed);
    let end_ns = sh.last_ns.load(Ordering::Relaxed).max(start_ns + 1);
    // Late duplicates would show up now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peak_rss = gw.pid().and_then(|p| proc_status(p, "VmHWM"));
    let cpu1 = (gw_pid.and_then(proc_cpu_secs), proc_cpu_secs(own_pid));
    let gw_cpu = cpu1.0.zip(cpu0.0).map(|(b, a)| b - a);
    let bench_cpu = cpu1.1.zip(cpu0.1).map(|(b, a)| b - a);

    let mut lag = histogram();
    for s in senders {
        match s.await {
            Ok(Ok(h)) => {
                let _ = lag.add(&h);
            }
            Ok(Err(e)) => eprintln!("gimmm bench: sender failed: {e:#}"),
            Err(e) => eprintln!("gimmm bench: sender panicked: {e}"),
        }
    }
    let emu_after = emu.stats().await;
    stop.cancel();
    let mut down = histogram();
    let mut up = histogram();
    for r in receivers {
        match r.await {
            Ok(Ok(l)) => {
                let _ = down.add(&l.downstream);
                let _ = up.add(&l.upstream);
            }
            Ok(Err(e)) => eprintln!("gimmm bench: receiver failed: {e:#}"),
            Err(e) => eprintln!("gimmm bench: receiver panicked: {e}"),
        }
    }
    let rss_scope = gw.rss_scope();
    if let Err(e) = gw.stop(Restart::Term).await {
        eprintln!("gimmm bench: stopping the gateway: {e:#}");
    }
    if let EmuCtl::Local(e) = emu {
        if let Ok(e) = Arc::try_unwrap(e) {
            e.shutdown().await;
        }
    }

    let elapsed = (end_ns - start_ns) as f64 / 1e9;
    let p = &sh.plan;
    let c = count(&sh);
    let delta = emu_delta(&emu_before, &emu_after);
    let mut lost = c.lost + c.receipts_lost;
    let mut duplicated =
        c.duplicated + c.receipts_duplicated + sh.dup_accepted.load(Ordering::Relaxed);
    if let Some(d) = &delta {
        // The emulator must have acked every downstream message exactly once.
        lost += p.downstream.saturating_sub(d.acks_sent);
        duplicated += d.duplicates + d.acks_sent.saturating_sub(p.downstream);
        lost += p.upstream.saturating_sub(d.upstream_acked);
    }
    let throughput = p.n as f64 / elapsed;
    let rejected = sh.rejected.load(Ordering::Relaxed);
    let rate = if a.rate > 0.0 {
        format!("{} msg/s offered", a.rate)
    } else {
        "max".into()
    };

    println!(
        "gimmm bench: {} messages ({} downstream, {} upstream{}), {} link(s), {} session(s), rate {rate}{}",
        p.n,
        p.downstream,
        p.upstream,
        if p.receipts { format!(", {} receipts", p.downstream) } else { String::new() },
        a.links,
        a.sessions,
        if a.ack_delay_ms > 0 { format!(", ack delay {} ms", a.ack_delay_ms) } else { String::new() },
    );
    println!("  elapsed          {elapsed:.3} s");
    if let Some(f) = fsync_ms {
        println!("  store fsync      {f:.3} ms (median fdatasync in the store directory, measured before the run)");
    }
    println!("  throughput       {throughput:.0} msg/s");
    println!(
        "  latency (ms)     p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}   (BAL send -> DOWNSTREAM_ACK, {} samples)",
        ms(&down, 0.5),
        ms(&down, 0.9),
        ms(&down, 0.99),
        ms(&down, 0.999),
        down.max() as f64 / 1000.0,
        down.len()
    );
    if p.upstream > 0 {
        println!(
            "  upstream (ms)    p50 {:.3}  p99 {:.3}  p99.9 {:.3}   (send_upstream -> UPSTREAM at the BAL)",
            ms(&up, 0.5),
            ms(&up, 0.99),
            ms(&up, 0.999)
        );
    }
    if a.rate > 0.0 {
        println!(
            "  sender lag (ms)  p99 {:.3}  max {:.3}   (bench behind its own timeline)",
            ms(&lag, 0.99),
            lag.max() as f64 / 1000.0
        );
    }
    println!(
        "  gateway peak RSS {} (VmHWM; {rss_scope}), highest sampled VmRSS {}",
        mib(peak_rss),
        mib(rss_sampled)
    );
    let per_msg = |c: Option<f64>| {
        c.map_or("n/a".to_string(), |c| {
            format!("{:.1} µs/msg ({c:.2} s)", c * 1e6 / p.n as f64)
        })
    };
    println!(
        "  CPU              gateway {}, {} {}",
        per_msg(gw_cpu),
        if gw_pid.is_some() {
            "bench + emulator"
        } else {
            "whole process"
        },
        per_msg(bench_cpu)
    );
    println!(
        "  lost {lost}, duplicated {duplicated}, rejected {rejected}, protocol errors {}",
        sh.errors.load(Ordering::Relaxed)
    );
    if let Some(d) = &delta {
        println!(
            "  emulator         received {} acked {} nacked {} duplicates {} upstream acked {} (resent {}) receipts acked {} window violations {} pending high-water {}",
            d.downstream_received, d.acks_sent, d.nacks_sent, d.duplicates, d.upstream_acked, d.upstream_resent, d.receipts_acked, d.window_violations, d.pending_high_water
        );
    }
    let json = serde_json::json!({
        "mode": "load",
        "messages": p.n,
        "downstream": p.downstream,
        "upstream": p.upstream,
        "receipts": if p.receipts { p.downstream } else { 0 },
        "links": a.links,
        "sessions": a.sessions,
        "rate": a.rate,
        "ack_delay_ms": a.ack_delay_ms,
        "grouped_fraction": p.group_fraction,
        "elapsed_secs": elapsed,
        "throughput_msgs_per_sec": throughput,
        "latency_ms": lat_json(&down),
        "upstream_latency_ms": lat_json(&up),
        "sender_lag_ms": lat_json(&lag),
        "gateway_peak_rss_bytes": peak_rss,
        "gateway_max_sampled_rss_bytes": rss_sampled,
        "rss_scope": rss_scope,
        "store_fsync_ms": fsync_ms,
        "gateway_cpu_secs": gw_cpu,
        "bench_process_cpu_secs": bench_cpu,
        "gateway_cpu_us_per_msg": gw_cpu.map(|c| c * 1e6 / p.n as f64),
        "lost": lost,
        "duplicated": duplicated,
        "rejected": rejected,
        "protocol_errors": sh.errors.load(Ordering::Relaxed),
        "accepted": sh.accepted.load(Ordering::Relaxed),
        "emulator": delta.map(|d| serde_json::json!({
            "downstream_received": d.downstream_received,
            "acks_sent": d.acks_sent,
            "nacks_sent": d.nacks_sent,
            "duplicates": d.duplicates,
            "upstream_acked": d.upstream_acked,
            "upstream_resent": d.upstream_resent,
            "receipts_acked": d.receipts_acked,
            "window_violations": d.window_violations,
            "pending_high_water": d.pending_high_water,
        })),
    });
    finish(&a, json, lost, duplicated)
}

fn finish(a: &BenchArgs, json: serde_json::Value, lost: u64, duplicated: u64) -> Result<()> {
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if lost > 0 || duplicated > 0 {
        bail!("{lost} message(s) lost, {duplicated} duplicated");
    }
    Ok(())
}

/// Backlog mode (see the module docs).
async fn queue_while_down(a: BenchArgs) -> Result<()> {
    let plan = Plan::new(&a);
    let sessions = session_list(&a);
    let dir = tempfile::tempdir()?;
    let store_dir = a
        .store_dir
        .clone()
        .unwrap_or_else(|| dir.path().to_path_buf());
    std::fs::create_dir_all(&store_dir)?;
    let store = store_dir.join(format!("bench-{}.db", rand_u32()));
    let fsync_ms = fsync_probe_ms(&store_dir);
    let identity = TlsIdentity::generate(&["localhost".to_string(), "127.0.0.1".to_string()])?;
    let ca = dir.path().join("emulator-ca.pem");
    std::fs::write(&ca, &identity.ca_pem)?;
    let fcm_port = free_port()?;
    let key = emulator::DEFAULT_SERVER_KEY;
    let setup = GwSetup {
        fcm_port,
        sender_id: emulator::DEFAULT_SENDER_ID,
        server_key: key,
        ca_file: &ca,
        links: a.links,
        sessions: &sessions,
        store: &store,
        max_unacked: a.max_unacked,
        retry_fast: true,
    };
    let cfg_path = dir.path().join("gimmm.toml");
    std::fs::write(&cfg_path, config_toml(&setup))?;

    // Phase 1: FCM is unreachable; fill the backlog.
    // Connection refused while FCM is down is the point: log errors only.
    let (gw, addr) = spawn_gateway(&cfg_path, "error").await?;
    let addr = addr.to_string();
    let sh = Arc::new(Shared::new(plan, 0.0));
    let conns = logon_all(&addr, &sessions).await?;
    let stop1 = CancellationToken::new();
    let clock = Arc::new(Notify::new());
    sh.start_ns.store(sh.now_ns(), Ordering::Relaxed);
    let fill_start = Instant::now();
    let mut receivers = Vec::new();
    let mut senders = Vec::new();
    for (k, (s, rd)) in conns.into_iter().enumerate() {
        receivers.push(tokio::spawn(receiver(
            sh.clone(),
            s.clone(),
            rd,
            stop1.clone(),
        )));
        senders.push(tokio::spawn(sender(
            sh.clone(),
            s,
            k as u64,
            Window::Accepted,
            a.max_in_flight,
            clock.clone(),
            EmuCtl::None,
        )));
    }
    let pid1 = gw.pid();
    let mut rss_fill: Option<u64> = None;
    let mut last = 0;
    let mut last_move = Instant::now();
    let total = sh.plan.downstream;
    let mut next_report = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(r) = pid1.and_then(|p| proc_status(p, "VmRSS")) {
            rss_fill = Some(rss_fill.map_or(r, |m| m.max(r)));
        }
        let acc = sh.accepted.load(Ordering::Relaxed);
        if acc >= total {
            break;
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(5);
            eprintln!(
                "gimmm bench: {acc} of {total} accepted, VmRSS {}",
                mib(rss_fill)
            );
        }
        if acc != last {
            last = acc;
            last_move = Instant::now();
        } else if last_move.elapsed() > Duration::from_secs(a.timeout_secs) {
            bail!("backlog fill stalled at {acc} of {total} accepted");
        }
    }
    let fill_secs = fill_start.elapsed().as_secs_f64();
    for s in senders {
        s.await??;
    }
    let peak_fill = pid1.and_then(|p| proc_status(p, "VmHWM"));
    let rss_backlog = pid1.and_then(|p| proc_status(p, "VmRSS"));
    println!(
        "gimmm bench: backlog of {total} accepted in {fill_secs:.2} s ({:.0} msg/s) while FCM was unreachable; gateway VmHWM {}, VmRSS now {}",
        total as f64 / fill_secs,
        mib(peak_fill),
        mib(rss_backlog)
    );

    // Phase 2: restart.
    let (gw, addr, restart_secs, restart_listen_secs, conns) = if a.restart == Restart::None {
        (gw, addr, None, None, None)
    } else {
        stop1.cancel();
        for r in receivers.drain(..) {
            let _ = r.await;
        }
        let t = Instant::now();
        gw.stop(a.restart).await?;
        let stop_secs = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let (gw, addr) = spawn_gateway(&cfg_path, "error").await?;
        let listen = t.elapsed().as_secs_f64();
        let addr = addr.to_string();
        let conns = logon_all(&addr, &sessions).await?;
        let serving = t.elapsed().as_secs_f64();
        println!(
            "gimmm bench: gateway stopped ({:?}) in {stop_secs:.2} s; restarted with {total} queued: listening after {listen:.3} s, BAL logon answered after {serving:.3} s",
            a.restart
        );
        (gw, addr, Some(serving), Some(listen), Some(conns))
    };
    let _ = addr;
    let stop2 = CancellationToken::new();
    if let Some(conns) = conns {
        for (s, rd) in conns {
            receivers.push(tokio::spawn(receiver(sh.clone(), s, rd, stop2.clone())));
        }
    }

    // Phase 3: FCM comes back; drain.
    let emu = Emulator::start(EmulatorConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], fcm_port)),
        tls_identity: Some(identity),
        receipt_category: sessions[0].0.clone(),
        ..EmulatorConfig::default()
    })
    .await
    .context("starting the emulator")?;
    let drain_from = sh.now_ns();
    let expected = sh.plan.expected_events();
    let rss_drain = wait_done(&sh, expected, gw.pid(), Duration::from_secs(a.timeout_secs)).await;
    let end_ns = sh.last_ns.load(Ordering::Relaxed).max(drain_from + 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let peak_drain = gw.pid().and_then(|p| proc_status(p, "VmHWM"));
    let stats = emu.stats_summary();
    stop1.cancel();
    stop2.cancel();
    for r in receivers {
        let _ = r.await;
    }
    let _ = gw.stop(Restart::Term).await;
    emu.shutdown().await;

    let first = sh.first_ns.load(Ordering::Relaxed).max(drain_from);
    let drain_secs = (end_ns - drain_from) as f64 / 1e9;
    let drain_active_secs = (end_ns.saturating_sub(first)).max(1) as f64 / 1e9;
    let c = count(&sh);
    let lost = c.lost + c.receipts_lost + total.saturating_sub(stats.acks_sent);
    let duplicated = c.duplicated
        + c.receipts_duplicated
        + stats.duplicates
        + stats.acks_sent.saturating_sub(total)
        + sh.dup_accepted.load(Ordering::Relaxed);
    let throughput = total as f64 / drain_active_secs;
    println!(
        "gimmm bench: drained {total} in {drain_secs:.2} s after FCM came back ({:.2} s from the first ack: {throughput:.0} msg/s); gateway VmHWM {}, highest sampled VmRSS {}",
        drain_active_secs,
        mib(peak_drain),
        mib(rss_drain)
    );
    println!(
        "  lost {lost}, duplicated {duplicated}, rejected {}, emulator acked {} (duplicates {}, window violations {})",
        sh.rejected.load(Ordering::Relaxed),
        stats.acks_sent,
        stats.duplicates,
        stats.window_violations
    );
    let json = serde_json::json!({
        "mode": "queue_while_down",
        "messages": total,
        "links": a.links,
        "sessions": a.sessions,
        "restart": format!("{:?}", a.restart).to_lowercase(),
        "store_fsync_ms": fsync_ms,
        "fill_secs": fill_secs,
        "fill_msgs_per_sec": total as f64 / fill_secs,
        "backlog_peak_rss_bytes": peak_fill,
        "backlog_rss_bytes": rss_backlog,
        "restart_listen_secs": restart_listen_secs,
        "restart_serving_secs": restart_secs,
        "drain_secs": drain_secs,
        "elapsed_secs": drain_active_secs,
        "throughput_msgs_per_sec": throughput,
        "latency_ms": serde_json::json!({"p50": null, "p99": null, "p999": null}),
        "gateway_peak_rss_bytes": peak_fill.max(peak_drain),
        "drain_peak_rss_bytes": peak_drain,
        "lost": lost,
        "duplicated": duplicated,
        "rejected": sh.rejected.load(Ordering::Relaxed),
    });
    finish(&a, json, lost, duplicated)
}
