//! The default mode of `gimmm bench` (SPEC §7): steady load. Start (or
//! find) an emulator and a gateway — on the XMPP link, or with `--api
//! http-v1` on the HTTP v1 link (SPEC §8) — log every session on, run the
//! senders and receivers until every message has its result, then report.

use super::child::{
    fsync_probe_ms, gateway_config, proc_cpu_secs, proc_status, spawn_gateway, write_config,
    BenchTls, FcmSetup, Gw, GwSetup, StoreSampler,
};
use super::load::{
    count, histogram, logon_all, receiver, sender, start_clock, wait_done, EmuCtl, Shared, Window,
};
use super::plan::Plan;
use super::report::{emu_delta, load_report, EmuFigures, LoadReport};
use super::v1::{self, V1Ctl};
use super::{finish, rand_u32, session_list, BenchApi, BenchArgs, Restart};
use anyhow::{bail, Context, Result};
use emulator::{Emulator, EmulatorConfig, Faults};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The load mode (see the module docs of [`super`]).
pub(super) async fn load(a: BenchArgs) -> Result<()> {
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
    let tls = BenchTls::new(&a, dir.path())?;

    // Emulator and gateway.
    let (gw, bal_addr, fcm) = match (&a.gateway, a.api) {
        (Some(addr), api) => {
            if a.ack_delay_ms > 0 {
                bail!("--ack-delay-ms needs the bench's own emulator");
            }
            if a.latency_ms > 0 || a.max_streams.is_some() || a.track_messages {
                bail!("--latency-ms, --max-streams and --track-messages need the bench's own emulator");
            }
            let fcm = match (api, &a.emulator_stats) {
                (BenchApi::Xmpp, Some(u)) => Fcm::Ccs(EmuCtl::Remote(u.clone())),
                (BenchApi::Xmpp, None) => Fcm::Ccs(EmuCtl::None),
                (BenchApi::HttpV1, Some(u)) => Fcm::V1(V1Ctl::Remote(u.clone())),
                (BenchApi::HttpV1, None) => Fcm::V1(V1Ctl::None),
            };
            if plan.upstream > 0 && matches!(fcm, Fcm::Ccs(EmuCtl::None)) {
                bail!("--upstream-fraction with --gateway needs --emulator-stats");
            }
            (Gw::External { pid: a.gateway_pid }, addr.clone(), fcm)
        }
        (None, BenchApi::Xmpp) => {
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
            let fcm = FcmSetup::Ccs {
                port: e.addr().port(),
                sender_id: e.sender_id(),
                server_key: e.server_key(),
            };
            let (gw, addr) =
                start_gateway(&a, fcm, &ca, &sessions, &store, dir.path(), tls.as_ref()).await?;
            let links = a.links;
            if e.wait_until_summary(Duration::from_secs(30), |s| s.ready_connections() >= links)
                .await
                .is_err()
            {
                bail!("the gateway did not open {links} CCS connection(s) within 30 s");
            }
            (gw, addr, Fcm::Ccs(EmuCtl::Local(Arc::new(e))))
        }
        (None, BenchApi::HttpV1) => {
            let l = v1::start(&a, dir.path()).await?;
            let fcm = FcmSetup::V1 {
                endpoint: l.emu.endpoint(),
                service_account_file: &l.service_account,
                max_streams: a.max_streams,
                max_messages_per_minute: a.max_messages_per_minute,
            };
            let (gw, addr) =
                start_gateway(&a, fcm, &l.ca, &sessions, &store, dir.path(), tls.as_ref()).await?;
            v1::wait_connected(&l.emu, a.links).await?;
            (gw, addr, Fcm::V1(V1Ctl::Local(Arc::new(l.emu))))
        }
    };
    let emu = fcm.upstream_ctl();

    let emu_before = fcm.snapshot().await;
    let own_pid = std::process::id();
    let gw_pid = match &gw {
        Gw::Child { pid, .. } => Some(*pid),
        Gw::External { pid } => *pid,
        Gw::InProcess(_) => None,
    };
    let cpu0 = (gw_pid.and_then(proc_cpu_secs), proc_cpu_secs(own_pid));
    let conns = logon_all(&bal_addr, BenchTls::client(tls.as_ref()), &sessions).await?;
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
    // The store's files over the run (only when the bench started the
    // gateway and so knows where its store is).
    let sampler = (a.gateway.is_none() && a.store_url.is_none() && a.store_sample_secs > 0.0)
        .then(|| StoreSampler::start(&store, Duration::from_secs_f64(a.store_sample_secs)));
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
    let store_files = match sampler {
        Some(s) => Some(s.finish().await),
        None => None,
    };
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
    let emu_after = fcm.snapshot().await;
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
    drop(emu);
    fcm.shutdown().await;

    let elapsed = (end_ns - start_ns) as f64 / 1e9;
    let p = &sh.plan;
    let c = count(&sh);
    let delta = match (emu_before, emu_after) {
        (Snap::Ccs(b), Snap::Ccs(a)) => emu_delta(&b, &a).map(EmuFigures::Ccs),
        (Snap::V1(b), Snap::V1(af)) => v1::v1_delta(&b, &af, a.track_messages).map(EmuFigures::V1),
        _ => None,
    };
    let mut lost = c.lost + c.receipts_lost;
    let mut duplicated =
        c.duplicated + c.receipts_duplicated + sh.dup_accepted.load(Ordering::Relaxed);
    match &delta {
        Some(EmuFigures::Ccs(d)) => {
            // The emulator must have acked every downstream message exactly once.
            lost += p.downstream.saturating_sub(d.acks_sent);
            duplicated += d.duplicates + d.acks_sent.saturating_sub(p.downstream);
            lost += p.upstream.saturating_sub(d.upstream_acked);
        }
        Some(EmuFigures::V1(d)) => {
            // The emulator must have delivered every downstream message
            // exactly once.
            let (l, dup) = d.lost_duplicated(p.downstream);
            lost += l;
            duplicated += dup;
        }
        None => {}
    }
    let throughput = p.n as f64 / elapsed;
    let rejected = sh.rejected.load(Ordering::Relaxed);
    let json = load_report(LoadReport {
        a: &a,
        plan: p,
        elapsed,
        fsync_ms,
        throughput,
        down: &down,
        up: &up,
        lag: &lag,
        peak_rss,
        rss_sampled,
        rss_scope,
        gw_cpu,
        bench_cpu,
        gw_pid_known: gw_pid.is_some(),
        lost,
        duplicated,
        rejected,
        protocol_errors: sh.errors.load(Ordering::Relaxed),
        accepted: sh.accepted.load(Ordering::Relaxed),
        delta,
        store_files: store_files.as_deref(),
    });
    finish(&a, json, lost, duplicated)
}

/// The emulator of the run, by link.
enum Fcm {
    Ccs(EmuCtl),
    V1(V1Ctl),
}

/// A snapshot of its counters.
enum Snap {
    Ccs(Option<emulator::Stats>),
    V1(Option<emulator::v1::V1Stats>),
}

impl Fcm {
    /// Where the senders inject upstream messages (none on HTTP v1).
    fn upstream_ctl(&self) -> EmuCtl {
        match self {
            Fcm::Ccs(e) => e.clone(),
            Fcm::V1(_) => EmuCtl::None,
        }
    }

    async fn snapshot(&self) -> Snap {
        match self {
            Fcm::Ccs(e) => Snap::Ccs(e.stats().await),
            Fcm::V1(e) => Snap::V1(e.stats().await),
        }
    }

    /// Shuts an emulator of this process down (once the senders, which hold
    /// clones, are gone).
    async fn shutdown(self) {
        match self {
            Fcm::Ccs(EmuCtl::Local(e)) => {
                if let Ok(e) = Arc::try_unwrap(e) {
                    e.shutdown().await;
                }
            }
            Fcm::V1(V1Ctl::Local(e)) => {
                if let Ok(e) = Arc::try_unwrap(e) {
                    e.shutdown().await;
                }
            }
            _ => {}
        }
    }
}

/// Starts the gateway under test against `fcm` (a child process, or with
/// `--in-process` in this one); returns it and its BAL address.
async fn start_gateway(
    a: &BenchArgs,
    fcm: FcmSetup<'_>,
    ca: &std::path::Path,
    sessions: &[(String, String)],
    store: &std::path::Path,
    dir: &std::path::Path,
    tls: Option<&BenchTls>,
) -> Result<(Gw, String)> {
    let setup = GwSetup {
        fcm,
        ca_file: ca,
        links: a.links,
        sessions,
        store,
        store_url: a.store_url.as_deref(),
        max_unacked: a.max_unacked,
        retry_fast: false,
        bal_tls: BenchTls::files(tls),
        retention_hours: a.retention_hours,
    };
    let cfg = gateway_config(&setup)?;
    let (gw, addr) = if a.in_process {
        let g = gateway::Gateway::start(cfg, CancellationToken::new()).await?;
        let addr = g.bal_addr;
        (Gw::InProcess(g), addr)
    } else {
        let cfg_path = dir.join("gimmm.toml");
        write_config(&cfg, &cfg_path)?;
        spawn_gateway(&cfg_path, "warn").await?
    };
    Ok((gw, addr.to_string()))
}
