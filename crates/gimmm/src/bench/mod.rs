//! `gimmm bench` (SPEC §7): the load generator behind every performance
//! figure in BENCHMARKS.md.
//!
//! It starts an emulator (in this process, as a library: the CCS emulator,
//! or with `--api http-v1` the FCM HTTP v1 emulator of SPEC §9) and a
//! gateway configured for that link —
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
//! With `--api http-v1` the same messages go through the gateway's HTTP v1
//! link (SPEC §8): `--links` HTTP/2 connections, `--max-streams` concurrent
//! streams on each (the emulator's SETTINGS_MAX_CONCURRENT_STREAMS and the
//! gateway's `max_pending_per_connection`), `--latency-ms` before every
//! answer. v1 has neither upstream messages nor receipts, so those flags
//! are refused; the client-side quota (`fcm.max_messages_per_minute`) is off
//! unless `--max-messages-per-minute` sets it.
//!
//! `--queue-while-down` measures the backlog case instead: FCM is
//! unreachable while `--messages` are accepted (RSS of the gateway with the
//! backlog on disk), the gateway is restarted (time until it serves BALs
//! again), then the emulator comes up and the backlog drains (throughput).
//!
//! Modules: [`plan`] what is sent, [`load`] the sender and receiver loop,
//! [`steady`] the load mode, [`queue_down`] the backlog mode, [`child`] the
//! gateway under test (child process, `/proc`), [`report`] histograms,
//! printing and JSON, [`http`] the emulator's stats endpoint, [`v1`] the
//! HTTP v1 emulator and its counters.
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
mod v1;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use std::path::PathBuf;

/// Which FCM link the gateway under test uses.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum BenchApi {
    /// XMPP to the CCS emulator (`fcm.api = "xmpp"`).
    Xmpp,
    /// FCM HTTP v1 to the HTTP v1 emulator (`fcm.api = "http_v1"`).
    #[value(name = "http-v1")]
    HttpV1,
}

impl BenchApi {
    /// The name in the JSON report (as in `fcm.api`).
    pub(crate) fn json_name(self) -> &'static str {
        match self {
            BenchApi::Xmpp => "xmpp",
            BenchApi::HttpV1 => "http_v1",
        }
    }
}

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
    /// Which FCM link to measure: xmpp (CCS) or http-v1.
    #[arg(long, value_enum, default_value_t = BenchApi::Xmpp)]
    api: BenchApi,
    /// Messages to drive (downstream plus upstream).
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Offered load in messages per second on a fixed timeline; 0 = as fast
    /// as the gateway takes them (bounded by --max-in-flight).
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// FCM connections of the gateway (fcm.connections): CCS connections, or
    /// HTTP/2 connections with --api http-v1.
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
    /// Emulator fault: delay every ack by this many milliseconds (xmpp).
    #[arg(long, default_value_t = 0)]
    ack_delay_ms: u64,
    /// HTTP v1 emulator: delay every answer by this many milliseconds
    /// (http-v1; the analogue of --ack-delay-ms).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// HTTP v1: concurrent streams per connection, advertised by the
    /// emulator as SETTINGS_MAX_CONCURRENT_STREAMS and set as the gateway's
    /// fcm.max_pending_per_connection (http-v1; default: both at 100).
    #[arg(long)]
    max_streams: Option<u32>,
    /// HTTP v1: the gateway's client-side quota,
    /// fcm.max_messages_per_minute (http-v1; 0 = off, the bench's default,
    /// so that the quota does not cap the figures at 10,000 msg/s).
    #[arg(long, default_value_t = 0)]
    max_messages_per_minute: u64,
    /// HTTP v1: keep the emulator's per-message stats (duplicate deliveries
    /// seen by FCM). Off by default: lost and duplicated messages are decided
    /// by the bench's own ledger and the emulator's delivered count either
    /// way (http-v1).
    #[arg(long)]
    track_messages: bool,
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
    /// (e.g. http://127.0.0.1:5237, or http://127.0.0.1:5239 for
    /// `gimmm emulator --api http-v1`), to inject upstream and check counters.
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
    /// Run the bench's gateway on the PostgreSQL store at this URL
    /// (store.url, SPEC §12) instead of SQLite. Use a database of its own:
    /// what a previous run left queued there is sent too. Give the password
    /// in PGPASSWORD rather than here, where `ps` shows it.
    #[arg(long, value_name = "URL", conflicts_with_all = ["store_dir", "gateway"])]
    store_url: Option<String>,
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
    /// BAL connections over TLS (SPEC §11). The gateway the bench starts
    /// gets a generated CA and a certificate for localhost / 127.0.0.1;
    /// with --gateway, its certificate must be trusted (the system roots,
    /// --ca-file) and name the host of the address.
    #[arg(long)]
    tls: bool,
    /// With --tls --gateway: a CA certificate (PEM) to trust besides the
    /// system roots.
    #[arg(long, value_name = "PATH", requires = "tls")]
    ca_file: Option<PathBuf>,
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
    if a.ca_file.is_some() && a.gateway.is_none() {
        bail!(
            "--ca-file is for --gateway: the bench's own gateway uses a certificate it generates"
        );
    }
    check_api_flags(&a)?;
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

/// Refuses flags that do not apply to the chosen link, naming them.
fn check_api_flags(a: &BenchArgs) -> Result<()> {
    match a.api {
        BenchApi::Xmpp => {
            let mut v1_only = Vec::new();
            if a.latency_ms > 0 {
                v1_only.push("--latency-ms");
            }
            if a.max_streams.is_some() {
                v1_only.push("--max-streams");
            }
            if a.max_messages_per_minute > 0 {
                v1_only.push("--max-messages-per-minute");
            }
            if a.track_messages {
                v1_only.push("--track-messages");
            }
            if !v1_only.is_empty() {
                bail!(
                    "{} only apply to --api http-v1 (with xmpp, --ack-delay-ms delays the emulator's acks)",
                    v1_only.join(", ")
                );
            }
        }
        BenchApi::HttpV1 => {
            if a.upstream_fraction > 0.0 {
                bail!("--upstream-fraction does not apply to --api http-v1: FCM HTTP v1 has no upstream messages");
            }
            if a.receipts {
                bail!("--receipts does not apply to --api http-v1: FCM HTTP v1 has no delivery receipts");
            }
            if a.ack_delay_ms > 0 {
                bail!("--ack-delay-ms is the CCS emulator's; with --api http-v1 use --latency-ms");
            }
            if a.queue_while_down {
                bail!("--queue-while-down is not available with --api http-v1 (the HTTP v1 emulator generates its service account when it starts, so it cannot come up later on a key the gateway already has)");
            }
            if a.max_streams == Some(0) {
                bail!("--max-streams must be at least 1");
            }
        }
    }
    Ok(())
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
