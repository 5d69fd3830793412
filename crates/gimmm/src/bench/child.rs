//! The gateway under test (SPEC §7): `gimmm serve` as a child process
//! (by default, so its own peak RSS and CPU can be read from `/proc`),
//! inside this process (`--in-process`), or one that already runs
//! (`--gateway`). The child's config is a typed [`Config`] written as TOML;
//! it reports its ports through `--ports-file`. Also what `/proc` says about
//! a process, and the store disk's fsync latency.

use super::{rand_u32, BenchArgs, Restart};
use anyhow::{bail, Context, Result};
use bal::ClientTls;
use gateway::config::{Api, Config, Secret, SessionConfig};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// How often the ports file is looked for while the child starts: finely,
/// since the time until it appears is reported as the restart time.
const PORTS_POLL: Duration = Duration::from_millis(1);

/// A running gateway.
pub(super) enum Gw {
    Child { child: Child, pid: u32 },
    InProcess(gateway::Gateway),
    External { pid: Option<u32> },
}

impl Gw {
    pub(super) fn pid(&self) -> Option<u32> {
        match self {
            Gw::Child { pid, .. } => Some(*pid),
            Gw::InProcess(_) => Some(std::process::id()),
            Gw::External { pid } => *pid,
        }
    }

    pub(super) fn rss_scope(&self) -> &'static str {
        match self {
            Gw::Child { .. } => "gateway child process",
            Gw::InProcess(_) => "whole bench process (gateway, emulator and load generator)",
            Gw::External { pid: Some(_) } => "external gateway process",
            Gw::External { pid: None } => "unknown (pass --gateway-pid)",
        }
    }

    pub(super) async fn stop(self, how: Restart) -> Result<()> {
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
pub(super) fn proc_status(pid: u32, key: &str) -> Option<u64> {
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
pub(super) fn fsync_probe_ms(dir: &Path) -> Option<f64> {
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
pub(super) fn proc_cpu_secs(pid: u32) -> Option<f64> {
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

/// The FCM side of the gateway the bench starts.
pub(super) enum FcmSetup<'a> {
    /// XMPP to the CCS emulator on 127.0.0.1.
    Ccs {
        port: u16,
        sender_id: &'a str,
        server_key: &'a str,
    },
    /// FCM HTTP v1 to the HTTP v1 emulator.
    V1 {
        /// `fcm.endpoint` (the emulator's base URL).
        endpoint: &'a str,
        /// The emulator's service-account key file.
        service_account_file: &'a Path,
        /// `fcm.max_pending_per_connection`; `None` = the default (100).
        max_streams: Option<u32>,
        /// `fcm.max_messages_per_minute` (0 = off).
        max_messages_per_minute: u64,
    },
}

/// What the gateway the bench starts is configured with.
pub(super) struct GwSetup<'a> {
    pub(super) fcm: FcmSetup<'a>,
    /// The emulator's CA (`fcm.ca_file`).
    pub(super) ca_file: &'a Path,
    pub(super) links: usize,
    pub(super) sessions: &'a [(String, String)],
    pub(super) store: &'a Path,
    /// store.url: PostgreSQL instead of the SQLite file `store`.
    pub(super) store_url: Option<&'a str>,
    pub(super) max_unacked: Option<usize>,
    /// Retry after 100 ms doubling up to 1 s (FCM is down on purpose).
    pub(super) retry_fast: bool,
    /// store.retention_hours (default: the gateway's).
    pub(super) retention_hours: Option<f64>,
    /// TLS on the BAL listener: (certificate chain, key) files.
    pub(super) bal_tls: Option<(&'a Path, &'a Path)>,
}

/// TLS on the bench's BAL connections (`--tls`).
pub(super) struct BenchTls {
    /// What the BAL connections trust.
    pub(super) client: ClientTls,
    /// For the gateway the bench starts: its generated certificate chain
    /// and key, in the run's temporary directory.
    pub(super) files: Option<(PathBuf, PathBuf)>,
}

impl BenchTls {
    /// With --tls: for --gateway, trust the system roots and --ca-file; for
    /// the bench's own gateway, generate a CA and a certificate for
    /// localhost / 127.0.0.1 into `dir` and trust that CA only.
    pub(super) fn new(a: &BenchArgs, dir: &Path) -> Result<Option<BenchTls>> {
        if !a.tls {
            return Ok(None);
        }
        if a.gateway.is_some() {
            let client = ClientTls::new(a.ca_file.as_deref()).context("setting up TLS")?;
            return Ok(Some(BenchTls {
                client,
                files: None,
            }));
        }
        let id =
            emulator::TlsIdentity::generate(&["localhost".to_string(), "127.0.0.1".to_string()])
                .context("generating the BAL listener's certificate")?;
        let (cert, key) = (dir.join("bal-cert.pem"), dir.join("bal-key.pem"));
        std::fs::write(&cert, &id.cert_chain_pem)
            .with_context(|| format!("writing {}", cert.display()))?;
        std::fs::write(&key, &id.key_pem).with_context(|| format!("writing {}", key.display()))?;
        let client = ClientTls::with_ca_pem(id.ca_pem.as_bytes()).context("setting up TLS")?;
        Ok(Some(BenchTls {
            client,
            files: Some((cert, key)),
        }))
    }

    /// The files for [`GwSetup::bal_tls`].
    pub(super) fn files(t: Option<&BenchTls>) -> Option<(&Path, &Path)> {
        t.and_then(|t| t.files.as_ref())
            .map(|(c, k)| (c.as_path(), k.as_path()))
    }

    /// The client side for [`super::load::logon_all`].
    pub(super) fn client(t: Option<&BenchTls>) -> Option<&ClientTls> {
        t.map(|t| &t.client)
    }
}

/// The gateway's configuration: the BAL and admin listeners on
/// `127.0.0.1:0`, everything not named here at its default.
pub(super) fn gateway_config(g: &GwSetup<'_>) -> Result<Config> {
    let mut cfg = Config::default();
    match g.fcm {
        FcmSetup::Ccs {
            port,
            sender_id,
            server_key,
        } => {
            cfg.fcm.host = "127.0.0.1".into();
            cfg.fcm.port = port;
            cfg.fcm.sender_id = sender_id.into();
            cfg.fcm.server_key = Secret::new(server_key);
        }
        FcmSetup::V1 {
            endpoint,
            service_account_file,
            max_streams,
            max_messages_per_minute,
        } => {
            cfg.fcm.api = Api::HttpV1;
            cfg.fcm.endpoint = endpoint.into();
            cfg.fcm.service_account_file = Some(service_account_file.to_path_buf());
            if let Some(n) = max_streams {
                cfg.fcm.max_pending_per_connection = n as usize;
            }
            cfg.fcm.max_messages_per_minute = max_messages_per_minute;
        }
    }
    cfg.fcm.ca_file = Some(g.ca_file.to_path_buf());
    cfg.fcm.connections = g.links;
    if g.retry_fast {
        cfg.retry.initial_ms = 100;
        cfg.retry.max_ms = 1000;
    }
    cfg.bal.listen = "127.0.0.1:0".into();
    if let Some((cert, key)) = g.bal_tls {
        cfg.bal.tls_cert_file = Some(cert.to_path_buf());
        cfg.bal.tls_key_file = Some(key.to_path_buf());
    }
    if let Some(m) = g.max_unacked {
        cfg.bal.max_unacked = m;
    }
    cfg.bal.sessions = g
        .sessions
        .iter()
        .map(|(id, t)| SessionConfig::new(id.as_str(), t.as_str()))
        .collect();
    cfg.store.path = g.store.to_path_buf();
    if let Some(url) = g.store_url {
        cfg.store.url = Secret::new(url);
    }
    if let Some(h) = g.retention_hours {
        cfg.store.retention_hours = h;
    }
    cfg.admin.listen = "127.0.0.1:0".into();
    cfg.validate()?;
    Ok(cfg)
}

/// Writes `cfg` as TOML to `path` (it holds the secrets: a file for the
/// child, never the output).
pub(super) fn write_config(cfg: &Config, path: &Path) -> Result<()> {
    let text = toml::to_string(cfg).context("writing the gateway config as TOML")?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

#[derive(serde::Deserialize)]
struct Ports {
    bal: SocketAddr,
}

/// Starts `gimmm serve --config FILE --ports-file ...` and waits for its
/// BAL address. Its log level is `$GIMMM_BENCH_GATEWAY_LOG`, else
/// `default_log`; its log goes to the bench's stderr.
pub(super) async fn spawn_gateway(config: &Path, default_log: &str) -> Result<(Gw, SocketAddr)> {
    let exe = std::env::current_exe().context("locating the gimmm binary")?;
    let ports_file = ports_file_for(config);
    match std::fs::remove_file(&ports_file) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", ports_file.display())),
    }
    let mut child = Command::new(exe)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--ports-file")
        .arg(&ports_file)
        .env(
            "RUST_LOG",
            std::env::var("GIMMM_BENCH_GATEWAY_LOG").unwrap_or_else(|_| default_log.into()),
        )
        .stdout(std::process::Stdio::null())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting the gateway child process")?;
    let pid = child.id().context("gateway child has no pid")?;
    // A readiness wait on a file written once (temp + rename), with a
    // deadline and an early exit when the child dies.
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        if let Ok(bytes) = std::fs::read(&ports_file) {
            let p: Ports = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", ports_file.display()))?;
            break p.bal;
        }
        let exited = child.try_wait().context("waiting for the gateway child")?;
        if exited.is_some() || Instant::now() >= deadline {
            let _ = child.kill().await;
            bail!("the gateway child did not report its BAL address (see its log above)");
        }
        tokio::time::sleep(PORTS_POLL).await;
    };
    Ok((Gw::Child { child, pid }, addr))
}

fn ports_file_for(config: &Path) -> PathBuf {
    let mut p = config.as_os_str().to_owned();
    p.push(".ports.json");
    PathBuf::from(p)
}

/// One sample of the store's file sizes: seconds since the run started,
/// bytes of the database and of its WAL.
#[derive(Clone, Copy, Debug)]
pub(super) struct StoreSample {
    pub(super) t: f64,
    pub(super) db: u64,
    pub(super) wal: u64,
}

/// Samples the sizes of the store's files every `every` until stopped
/// (for the retention figures: does the store stop growing?).
pub(super) struct StoreSampler {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<Vec<StoreSample>>,
}

impl StoreSampler {
    pub(super) fn start(db: &Path, every: Duration) -> StoreSampler {
        let mut wal = db.as_os_str().to_owned();
        wal.push("-wal");
        let (db, wal) = (db.to_path_buf(), PathBuf::from(wal));
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let size = |p: &Path| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0);
            let t0 = Instant::now();
            let mut out = Vec::new();
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = s.cancelled() => break,
                }
                out.push(StoreSample {
                    t: t0.elapsed().as_secs_f64(),
                    db: size(&db),
                    wal: size(&wal),
                });
            }
            // And the state at the end.
            out.push(StoreSample {
                t: t0.elapsed().as_secs_f64(),
                db: size(&db),
                wal: size(&wal),
            });
            out
        });
        StoreSampler { stop, task }
    }

    pub(super) async fn finish(self) -> Vec<StoreSample> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// A loopback port reserved for an emulator that starts later: bound, never
/// listening, so connecting to it is refused (FCM down) and nothing else can
/// take it until [`PortReservation::release`].
pub(super) struct PortReservation {
    socket: tokio::net::TcpSocket,
    port: u16,
}

impl PortReservation {
    pub(super) fn new() -> Result<PortReservation> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let port = socket.local_addr()?.port();
        Ok(PortReservation { socket, port })
    }

    pub(super) fn port(&self) -> u16 {
        self.port
    }

    /// Frees the port, for the emulator to bind it at once.
    pub(super) fn release(self) -> u16 {
        drop(self.socket);
        self.port
    }
}
