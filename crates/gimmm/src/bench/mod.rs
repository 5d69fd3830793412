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
//! [`bal::BalClient::into_split`] connection. Message `i` belongs to session
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
//!
//! Modules: [`plan`] what is sent, [`load`] the sender and receiver loop,
//! [`steady`] the load mode, [`queue_down`] the backlog mode, [`child`] the
//! gateway under test (child process, `/proc`), [`report`] histograms,
//! printing and JSON, [`http`] the emulator's stats endpoint.
// The bench measures real elapsed time between real processes: it uses
// std's clock on purpose (nothing here runs under paused tokio time).
#![allow(clippy::disallowed_methods)]

mod child;
mod http;
mod load;
mod plan;
mod queue_down;
mod report;
mod steady;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

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
    /// store.retention_hours of the gateway started by the bench (default:
    /// the gateway's default, 24; 0 keeps everything). A fraction is
    /// allowed: 0.001 is 3.6 s.
    #[arg(long)]
    retention_hours: Option<f64>,
    /// How often the size of the store's files (database + WAL) is sampled
    /// for the report (`store_files` in the JSON); 0 = not sampled.
    #[arg(long, default_value_t = 1.0)]
    store_sample_secs: f64,
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

/// A run id: store file names and message id prefixes differ between runs.
fn rand_u32() -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() ^ (d.as_secs() as u32))
        .unwrap_or(0);
    t ^ std::process::id().rotate_left(16)
}

/// Checks the flags and runs the mode they ask for.
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
    if !(a.store_sample_secs >= 0.0 && a.store_sample_secs.is_finite()) {
        bail!("--store-sample-secs must be >= 0");
    }
    if a.retention_hours.is_some() && a.gateway.is_some() {
        bail!("--retention-hours configures the bench's own gateway (not with --gateway)");
    }
    if a.queue_while_down {
        if a.gateway.is_some() || a.in_process {
            bail!("--queue-while-down starts its own gateway child process (no --gateway / --in-process)");
        }
        if a.upstream_fraction > 0.0 {
            bail!("--queue-while-down drives downstream messages only");
        }
        return queue_down::queue_while_down(a).await;
    }
    steady::load(a).await
}

/// (session id, token) of each BAL session.
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

/// Writes the JSON (with --json); fails when anything was lost or duplicated.
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
