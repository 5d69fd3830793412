//! The results of `gimmm bench` (SPEC §7): latency histograms in
//! milliseconds, emulator counters over the run, and the load mode's
//! printed report and JSON (`messages`, `elapsed_secs`,
//! `throughput_msgs_per_sec`, `latency_ms`, `gateway_peak_rss_bytes`,
//! `lost`, `duplicated`, `api`, and the emulator's counters: the CCS
//! emulator's, or with `--api http-v1` the HTTP v1 emulator's).

use super::child::StoreSample;
use super::plan::Plan;
use super::v1::V1Delta;
use super::{BenchApi, BenchArgs};
use emulator::v1::DEFAULT_MAX_CONCURRENT_STREAMS;
use hdrhistogram::Histogram;

pub(super) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return 0.0;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(super) fn lat_json(h: &Histogram<u64>) -> serde_json::Value {
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

pub(super) fn mib(b: Option<u64>) -> String {
    match b {
        Some(b) => format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0)),
        None => "n/a".into(),
    }
}

/// Emulator counters that moved during the run.
#[derive(Default, Clone, Copy)]
pub(super) struct EmuDelta {
    pub(super) downstream_received: u64,
    pub(super) acks_sent: u64,
    pub(super) nacks_sent: u64,
    pub(super) duplicates: u64,
    pub(super) upstream_acked: u64,
    pub(super) upstream_resent: u64,
    pub(super) receipts_acked: u64,
    pub(super) window_violations: u64,
    pub(super) pending_high_water: u64,
}

pub(super) fn emu_delta(
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

/// The emulator's counters over a run, by link.
#[derive(Clone, Copy)]
pub(super) enum EmuFigures {
    Ccs(EmuDelta),
    V1(V1Delta),
}

/// Everything the load mode reports.
pub(super) struct LoadReport<'a> {
    pub(super) a: &'a BenchArgs,
    pub(super) plan: &'a Plan,
    pub(super) elapsed: f64,
    pub(super) fsync_ms: Option<f64>,
    pub(super) throughput: f64,
    pub(super) down: &'a Histogram<u64>,
    pub(super) up: &'a Histogram<u64>,
    pub(super) lag: &'a Histogram<u64>,
    pub(super) peak_rss: Option<u64>,
    pub(super) rss_sampled: Option<u64>,
    pub(super) rss_scope: &'static str,
    pub(super) gw_cpu: Option<f64>,
    pub(super) bench_cpu: Option<f64>,
    /// The gateway is a process of its own (child or external).
    pub(super) gw_pid_known: bool,
    pub(super) lost: u64,
    pub(super) duplicated: u64,
    pub(super) rejected: u64,
    pub(super) protocol_errors: u64,
    pub(super) accepted: u64,
    pub(super) delta: Option<EmuFigures>,
    /// The store's file sizes over the run (when known).
    pub(super) store_files: Option<&'a [StoreSample]>,
}

/// The store's file sizes over the run: printed as the largest, the last
/// and the size at each tenth of the run; in the JSON every sample.
fn store_files_report(a: &BenchArgs, samples: &[StoreSample]) -> serde_json::Value {
    let total = |s: &StoreSample| s.db + s.wal;
    let max = samples.iter().map(total).max().unwrap_or(0);
    let last = samples.last().copied();
    let n = samples.len();
    let tenths: Vec<String> = (1..=10)
        .filter_map(|k| samples.get((k * n / 10).saturating_sub(1)))
        .map(|s| format!("{:.1}", total(s) as f64 / (1024.0 * 1024.0)))
        .collect();
    if let Some(l) = last {
        println!(
            "  store files      db+wal max {}, at the end {} (db {} + wal {}); each tenth of the run (MiB): {}",
            mib(Some(max)),
            mib(Some(total(&l))),
            mib(Some(l.db)),
            mib(Some(l.wal)),
            tenths.join(" ")
        );
    }
    serde_json::json!({
        "sample_secs": a.store_sample_secs,
        "retention_hours": a.retention_hours,
        "max_bytes": max,
        "last_bytes": last.map(|l| total(&l)),
        "samples": samples.iter().map(|s| serde_json::json!({
            "t": s.t, "db": s.db, "wal": s.wal,
        })).collect::<Vec<_>>(),
    })
}

/// Prints the load mode's report; returns its JSON.
pub(super) fn load_report(r: LoadReport<'_>) -> serde_json::Value {
    let LoadReport {
        a,
        plan: p,
        elapsed,
        fsync_ms,
        throughput,
        down,
        up,
        lag,
        peak_rss,
        rss_sampled,
        rss_scope,
        gw_cpu,
        bench_cpu,
        gw_pid_known,
        lost,
        duplicated,
        rejected,
        protocol_errors,
        accepted,
        delta,
        store_files,
    } = r;
    let rate = if a.rate > 0.0 {
        format!("{} msg/s offered", a.rate)
    } else {
        "max".into()
    };

    match a.api {
        BenchApi::Xmpp => println!(
            "gimmm bench: {} messages ({} downstream, {} upstream{}), {} link(s), {} session(s){}, rate {rate}{}",
            p.n,
            p.downstream,
            p.upstream,
            if p.receipts { format!(", {} receipts", p.downstream) } else { String::new() },
            a.links,
            a.sessions,
            if a.tls { " over TLS" } else { "" },
            if a.ack_delay_ms > 0 { format!(", ack delay {} ms", a.ack_delay_ms) } else { String::new() },
        ),
        BenchApi::HttpV1 => println!(
            "gimmm bench: HTTP v1, {} messages, {} HTTP/2 connection(s) x {} streams, {} session(s){}, rate {rate}, emulator latency {} ms",
            p.n,
            a.links,
            a.max_streams.unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS),
            a.sessions,
            if a.tls { " over TLS" } else { "" },
            a.latency_ms,
        ),
    }
    println!("  elapsed          {elapsed:.3} s");
    if let Some(f) = fsync_ms {
        println!("  store fsync      {f:.3} ms (median fdatasync in the store directory, measured before the run)");
    }
    println!("  throughput       {throughput:.0} msg/s");
    println!(
        "  latency (ms)     p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}   (BAL send -> DOWNSTREAM_ACK, {} samples)",
        ms(down, 0.5),
        ms(down, 0.9),
        ms(down, 0.99),
        ms(down, 0.999),
        down.max() as f64 / 1000.0,
        down.len()
    );
    if p.upstream > 0 {
        println!(
            "  upstream (ms)    p50 {:.3}  p99 {:.3}  p99.9 {:.3}   (send_upstream -> UPSTREAM at the BAL)",
            ms(up, 0.5),
            ms(up, 0.99),
            ms(up, 0.999)
        );
    }
    if a.rate > 0.0 {
        println!(
            "  sender lag (ms)  p99 {:.3}  max {:.3}   (bench behind its own timeline)",
            ms(lag, 0.99),
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
        if gw_pid_known {
            "bench + emulator"
        } else {
            "whole process"
        },
        per_msg(bench_cpu)
    );
    println!(
        "  lost {lost}, duplicated {duplicated}, rejected {rejected}, protocol errors {}",
        protocol_errors
    );
    match &delta {
        Some(EmuFigures::Ccs(d)) => println!(
            "  emulator         received {} acked {} nacked {} duplicates {} upstream acked {} (resent {}) receipts acked {} window violations {} pending high-water {}",
            d.downstream_received, d.acks_sent, d.nacks_sent, d.duplicates, d.upstream_acked, d.upstream_resent, d.receipts_acked, d.window_violations, d.pending_high_water
        ),
        Some(EmuFigures::V1(d)) => d.print(),
        None => {}
    }
    let store_files = store_files.map(|s| store_files_report(a, s));
    let mut json = serde_json::json!({
        "mode": "load",
        "api": a.api.json_name(),
        "store_files": store_files,
        "messages": p.n,
        "downstream": p.downstream,
        "upstream": p.upstream,
        "receipts": if p.receipts { p.downstream } else { 0 },
        "links": a.links,
        "sessions": a.sessions,
        "bal_tls": a.tls,
        "rate": a.rate,
        "ack_delay_ms": a.ack_delay_ms,
        "grouped_fraction": p.group_fraction,
        "elapsed_secs": elapsed,
        "throughput_msgs_per_sec": throughput,
        "latency_ms": lat_json(down),
        "upstream_latency_ms": lat_json(up),
        "sender_lag_ms": lat_json(lag),
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
        "protocol_errors": protocol_errors,
        "accepted": accepted,
        "emulator": delta.map(|d| match d {
            EmuFigures::Ccs(d) => serde_json::json!({
                "downstream_received": d.downstream_received,
                "acks_sent": d.acks_sent,
                "nacks_sent": d.nacks_sent,
                "duplicates": d.duplicates,
                "upstream_acked": d.upstream_acked,
                "upstream_resent": d.upstream_resent,
                "receipts_acked": d.receipts_acked,
                "window_violations": d.window_violations,
                "pending_high_water": d.pending_high_water,
            }),
            EmuFigures::V1(d) => d.json(),
        }),
    });
    if a.api == BenchApi::HttpV1 {
        json["emulator_latency_ms"] = a.latency_ms.into();
        json["max_streams"] = a
            .max_streams
            .unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS)
            .into();
        json["max_messages_per_minute"] = a.max_messages_per_minute.into();
    }
    json
}
