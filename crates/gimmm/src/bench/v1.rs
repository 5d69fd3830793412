//! The HTTP v1 side of `gimmm bench --api http-v1` (SPEC §7, run over the
//! link of §8 against the emulator of §9): the emulator in this process,
//! with its service-account key and CA written for the gateway, or one that
//! already runs (through its stats endpoint); and what its counters say
//! about a run.

use super::http::http;
use super::BenchArgs;
use anyhow::{bail, Context, Result};
use emulator::v1::{V1Config, V1Emulator, V1Faults, V1Stats};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Where the HTTP v1 emulator's counters come from.
#[derive(Clone)]
pub(super) enum V1Ctl {
    Local(Arc<V1Emulator>),
    /// `--emulator-stats URL` of `gimmm emulator --api http-v1`.
    Remote(String),
    None,
}

impl V1Ctl {
    pub(super) async fn stats(&self) -> Option<V1Stats> {
        match self {
            V1Ctl::Local(e) => Some(e.stats_summary()),
            V1Ctl::Remote(url) => {
                let body = http(url, "GET", "/stats?summary=true", None).await.ok()?;
                serde_json::from_str(&body).ok()
            }
            V1Ctl::None => None,
        }
    }
}

/// The emulator the bench starts, and the files the gateway reads.
pub(super) struct LocalV1 {
    pub(super) emu: V1Emulator,
    /// The service-account key file (it holds the emulator's private key:
    /// a file in the bench's temporary directory, never printed).
    pub(super) service_account: PathBuf,
    pub(super) ca: PathBuf,
}

/// Starts the emulator with the run's latency and stream limit, writing its
/// key file and CA into `dir`.
pub(super) async fn start(a: &BenchArgs, dir: &Path) -> Result<LocalV1> {
    let service_account = dir.join("emulator-sa.json");
    let ca = dir.join("emulator-ca.pem");
    let emu = V1Emulator::start(V1Config {
        service_account_out: Some(service_account.clone()),
        ca_out: Some(ca.clone()),
        faults: V1Faults {
            latency: Duration::from_millis(a.latency_ms),
            max_concurrent_streams: a.max_streams,
            ..V1Faults::default()
        },
        // Per-message stats cost a map entry (and a lock hold) per message;
        // the bench's own ledger decides lost and duplicated without them.
        track_messages: a.track_messages,
        ..V1Config::default()
    })
    .await
    .context("starting the FCM HTTP v1 emulator")?;
    Ok(LocalV1 {
        emu,
        service_account,
        ca,
    })
}

/// HTTP/2 connections open at the emulator (the gateway's token requests
/// use HTTP/1.1 and are not counted).
fn h2_open(s: &V1Stats) -> usize {
    s.connections
        .iter()
        .filter(|c| c.open && c.alpn == "h2")
        .count()
}

/// Waits until the gateway holds `links` HTTP/2 connections.
pub(super) async fn wait_connected(emu: &V1Emulator, links: usize) -> Result<()> {
    if emu
        .wait_until_summary(Duration::from_secs(30), |s| h2_open(s) >= links)
        .await
        .is_err()
    {
        bail!("the gateway did not open {links} HTTP/2 connection(s) within 30 s");
    }
    Ok(())
}

/// HTTP v1 emulator counters that moved during the run, and the stream
/// figures of every connection it accepted.
#[derive(Default, Clone, Copy)]
pub(super) struct V1Delta {
    /// `messages:send` requests (every outcome).
    pub(super) requests: u64,
    /// Answered 200 and not `validate_only`, duplicates included.
    pub(super) delivered: u64,
    /// Answered with anything but 200.
    pub(super) errors: u64,
    /// Deliveries of a message delivered before; `None` when the emulator
    /// does not keep per-message stats (`--track-messages`).
    pub(super) duplicates: Option<u64>,
    /// 401 answers (an access token missing, unknown or expired).
    pub(super) unauthenticated: u64,
    /// Requests over a connection's advertised stream limit.
    pub(super) over_limit: u64,
    /// Highest concurrent streams seen on one connection (this and the
    /// stream figures below: over the emulator's life, set-up included).
    pub(super) streams_high_water: u64,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised (highest over the HTTP/2
    /// connections).
    pub(super) max_concurrent_streams: u32,
    /// HTTP/2 connections whose high-water mark passed what they advertised.
    pub(super) conns_over_limit: u64,
    /// TLS connections accepted (over the emulator's life).
    pub(super) connections_opened: u64,
    pub(super) goaways_sent: u64,
    pub(super) drops: u64,
    /// Access tokens issued (over the emulator's life).
    pub(super) tokens_issued: u64,
    /// Whether per-message stats were on (the duplicates figure is known).
    tracked: bool,
}

pub(super) fn v1_delta(
    before: &Option<V1Stats>,
    after: &Option<V1Stats>,
    tracked: bool,
) -> Option<V1Delta> {
    let a = after.as_ref()?;
    let zero = V1Stats::default();
    let b = before.as_ref().unwrap_or(&zero);
    let answered = a.answered().saturating_sub(b.answered());
    let ok = a.ok.saturating_sub(b.ok);
    let h2 = || a.connections.iter().filter(|c| c.alpn == "h2");
    Some(V1Delta {
        requests: a.requests.saturating_sub(b.requests),
        delivered: a.delivered.saturating_sub(b.delivered),
        errors: answered.saturating_sub(ok),
        duplicates: tracked.then(|| a.duplicates.saturating_sub(b.duplicates)),
        unauthenticated: a.unauthenticated.saturating_sub(b.unauthenticated),
        over_limit: a.over_limit.saturating_sub(b.over_limit),
        streams_high_water: a.max_streams_high_water(),
        max_concurrent_streams: h2().map(|c| c.max_concurrent_streams).max().unwrap_or(0),
        conns_over_limit: h2()
            .filter(|c| c.streams_high_water > u64::from(c.max_concurrent_streams))
            .count() as u64,
        connections_opened: a.connections_opened,
        goaways_sent: a.goaways_sent.saturating_sub(b.goaways_sent),
        drops: a.drops.saturating_sub(b.drops),
        tokens_issued: a.tokens_issued,
        tracked,
    })
}

impl V1Delta {
    /// (lost, duplicated) as the emulator sees them: every downstream
    /// message must have been delivered exactly once. Without per-message
    /// stats only the total can disagree.
    pub(super) fn lost_duplicated(&self, downstream: u64) -> (u64, u64) {
        let dups = self.duplicates.unwrap_or(0);
        let distinct = self.delivered.saturating_sub(dups);
        (
            downstream.saturating_sub(distinct),
            dups + distinct.saturating_sub(downstream),
        )
    }

    pub(super) fn print(&self) {
        println!(
            "  emulator         requests {} delivered {} errors {} duplicates {} unauthenticated {} over limit {} streams high-water {} (advertised {}, connections over it {}) connections {} GOAWAYs {} drops {} tokens {}",
            self.requests,
            self.delivered,
            self.errors,
            self.duplicates
                .map_or("n/a (--track-messages)".to_string(), |d| d.to_string()),
            self.unauthenticated,
            self.over_limit,
            self.streams_high_water,
            self.max_concurrent_streams,
            self.conns_over_limit,
            self.connections_opened,
            self.goaways_sent,
            self.drops,
            self.tokens_issued,
        );
    }

    pub(super) fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "requests": self.requests,
            "delivered": self.delivered,
            "errors": self.errors,
            "duplicates": self.duplicates,
            "track_messages": self.tracked,
            "unauthenticated": self.unauthenticated,
            "over_limit": self.over_limit,
            "streams_high_water": self.streams_high_water,
            "max_concurrent_streams": self.max_concurrent_streams,
            "connections_over_stream_limit": self.conns_over_limit,
            "connections_opened": self.connections_opened,
            "goaways_sent": self.goaways_sent,
            "drops": self.drops,
            "tokens_issued": self.tokens_issued,
        })
    }
}
