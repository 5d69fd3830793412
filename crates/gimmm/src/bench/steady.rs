//! The default mode of `gimmm bench` (SPEC §7): steady load. Start (or
//! find) an emulator and a gateway, log every session on, run the senders
//! and receivers until every message has its result, then report.

use super::child::{
    fsync_probe_ms, gateway_config, proc_cpu_secs, proc_status, spawn_gateway, write_config, Gw,
    GwSetup, StoreSampler,
};
use super::load::{
    count, histogram, logon_all, receiver, sender, start_clock, wait_done, EmuCtl, Shared, Window,
};
use super::plan::Plan;
use super::report::{emu_delta, load_report, LoadReport};
use super::{finish, rand_u32, session_list, BenchArgs, Restart};
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
            retention_hours: a.retention_hours,
        };
        let cfg = gateway_config(&setup)?;
        let (gw, addr) = if a.in_process {
            let g = gateway::Gateway::start(cfg, CancellationToken::new()).await?;
            let addr = g.bal_addr;
            (Gw::InProcess(g), addr)
        } else {
            let cfg_path = dir.path().join("gimmm.toml");
            write_config(&cfg, &cfg_path)?;
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
    // The store's files over the run (only when the bench started the
    // gateway and so knows where its store is).
    let sampler = (a.gateway.is_none() && a.store_sample_secs > 0.0)
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
