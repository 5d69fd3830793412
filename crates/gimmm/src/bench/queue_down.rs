//! `gimmm bench --queue-while-down` (SPEC §7, the backlog case): FCM is
//! unreachable while `--messages` are accepted (RSS of the gateway with the
//! backlog on disk), the gateway is restarted (time until it serves BALs
//! again), then the emulator comes up on the port the gateway was
//! configured with and the backlog drains (throughput).

use super::child::{
    fsync_probe_ms, gateway_config, proc_status, spawn_gateway, write_config, BenchTls, FcmSetup,
    GwSetup, PortReservation,
};
use super::load::{count, logon_all, receiver, sender, wait_done, EmuCtl, Shared, Window};
use super::plan::Plan;
use super::report::mib;
use super::{finish, rand_u32, session_list, BenchArgs, Restart};
use anyhow::{bail, Context, Result};
use emulator::{Emulator, EmulatorConfig, TlsIdentity};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Backlog mode (see the module docs).
pub(super) async fn queue_while_down(a: BenchArgs) -> Result<()> {
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
    let identity = TlsIdentity::generate(&["localhost".to_string(), "127.0.0.1".to_string()])?;
    let ca = dir.path().join("emulator-ca.pem");
    std::fs::write(&ca, &identity.ca_pem)?;
    // FCM is down until phase 3: its port refuses connections meanwhile.
    let fcm = PortReservation::new()?;
    let fcm_port = fcm.port();
    let key = emulator::DEFAULT_SERVER_KEY;
    let setup = GwSetup {
        fcm: FcmSetup::Ccs {
            port: fcm_port,
            sender_id: emulator::DEFAULT_SENDER_ID,
            server_key: key,
        },
        ca_file: &ca,
        links: a.links,
        sessions: &sessions,
        store: &store,
        store_url: a.store_url.as_deref(),
        max_unacked: a.max_unacked,
        retry_fast: true,
        bal_tls: BenchTls::files(tls.as_ref()),
        retention_hours: a.retention_hours,
    };
    let cfg_path = dir.path().join("gimmm.toml");
    write_config(&gateway_config(&setup)?, &cfg_path)?;

    // Phase 1: FCM is unreachable; fill the backlog.
    // Connection refused while FCM is down is the point: log errors only.
    let (gw, addr) = spawn_gateway(&cfg_path, "error").await?;
    let addr = addr.to_string();
    let sh = Arc::new(Shared::new(plan, 0.0));
    let conns = logon_all(&addr, BenchTls::client(tls.as_ref()), &sessions).await?;
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
        let conns = logon_all(&addr, BenchTls::client(tls.as_ref()), &sessions).await?;
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
        listen: SocketAddr::from(([127, 0, 0, 1], fcm.release())),
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
        "bal_tls": a.tls,
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
