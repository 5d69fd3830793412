//! `gimmm`: a gateway between application backends (BALs) and Firebase
//! Cloud Messaging's XMPP Connection Server, with a built-in CCS emulator.

mod bench;
mod clients;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use gateway::config::{Config, Secret};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// gimmm — a durable gateway between your backends and FCM's XMPP connection server (CCS).
///
/// Backends ("BALs") speak newline-delimited JSON over TCP to gimmm; gimmm owns the
/// XMPP session with FCM, stores every message in SQLite before it says "accepted",
/// and delivers every result exactly once per sequence id. Without FCM credentials
/// it runs against its built-in CCS emulator.
#[derive(Parser, Debug)]
#[command(name = "gimmm", version, propagate_version = true)]
struct Cli {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "GIMMM_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    cmd: Command,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the gateway daemon (with no --config: embedded defaults and the in-process emulator).
    Serve(ServeArgs),
    /// Run the CCS emulator alone (a stand-in for fcm-xmpp.googleapis.com).
    Emulator(EmulatorArgs),
    /// Send one downstream message as a BAL and, with --wait, print its final result.
    Send(clients::SendArgs),
    /// Log on as a BAL and print every message gimmm sends, ACKing each one.
    Listen(clients::ListenArgs),
    /// Load generator: drive an emulator and a gateway and report throughput and latency.
    Bench(bench::BenchArgs),
    /// Validate a config file and exit (non-zero on any problem).
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
}

#[derive(Args, Debug)]
struct ServeArgs {
    /// Config file (TOML, see examples/gimmm.toml). Without it: embedded defaults.
    #[arg(long, short, env = "GIMMM_CONFIG")]
    config: Option<PathBuf>,
    /// Once the listeners are bound, write their addresses to this file as
    /// `{"bal":"IP:PORT","admin":"IP:PORT"}` (admin `null` when disabled),
    /// atomically (a temporary file renamed into place): how a supervisor or
    /// a test learns the ports of `listen = "127.0.0.1:0"`.
    #[arg(long, value_name = "PATH")]
    ports_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct EmulatorArgs {
    /// Address of the XMPP (direct TLS) listener.
    #[arg(long, default_value = emulator::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Sender id accepted in SASL PLAIN (`<sender_id>@fcm.googleapis.com`).
    #[arg(long, default_value = emulator::DEFAULT_SENDER_ID)]
    sender_id: String,
    /// Server key accepted as the SASL PLAIN password.
    #[arg(long, default_value = emulator::DEFAULT_SERVER_KEY)]
    server_key: String,
    /// Where to write the CA certificate clients must trust (PEM).
    #[arg(long, default_value = emulator::DEFAULT_CA_OUT)]
    ca_out: PathBuf,
    /// Address of the HTTP/JSON stats endpoint (GET /stats).
    #[arg(long, default_value = emulator::DEFAULT_STATS_LISTEN)]
    stats_listen: SocketAddr,
    /// Category of the delivery receipts it sends.
    #[arg(long, default_value = emulator::DEFAULT_RECEIPT_CATEGORY)]
    receipt_category: String,
    #[command(flatten)]
    faults: FaultArgs,
}

/// Fault injection knobs of the emulator.
#[derive(Args, Debug, Clone, Default)]
pub(crate) struct FaultArgs {
    /// Nack this fraction (0.0..=1.0) of valid downstream messages.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) nack_fraction: f64,
    /// Error code of those nacks.
    #[arg(long, default_value = "SERVICE_UNAVAILABLE")]
    pub(crate) nack_code: String,
    /// Delay every ack/nack by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) ack_delay_ms: u64,
    /// Send CONNECTION_DRAINING after this many downstream messages on a connection.
    #[arg(long)]
    pub(crate) drain_after: Option<u64>,
    /// Send CONNECTION_DRAINING on every connection every this many milliseconds.
    #[arg(long)]
    pub(crate) drain_every_ms: Option<u64>,
    /// Drop the TCP connection abruptly after this many downstream messages.
    #[arg(long)]
    pub(crate) drop_after: Option<u64>,
    /// Write stanzas in chunks of this many bytes.
    #[arg(long)]
    pub(crate) chunk_size: Option<usize>,
    /// Use the prefixed `<data:gcm xmlns:data="google:mobile:data">` form.
    #[arg(long)]
    pub(crate) prefixed: bool,
    /// Send a whitespace keepalive every this many milliseconds.
    #[arg(long)]
    pub(crate) keepalive_ms: Option<u64>,
    /// Delay delivery receipts by this many milliseconds.
    #[arg(long, default_value_t = 0)]
    pub(crate) receipt_delay_ms: u64,
}

impl FaultArgs {
    pub(crate) fn to_faults(&self) -> Result<emulator::Faults> {
        if !(0.0..=1.0).contains(&self.nack_fraction) {
            bail!("--nack-fraction must be within 0.0..=1.0");
        }
        Ok(emulator::Faults {
            nack_fraction: self.nack_fraction,
            nack_code: Some(fcm::ErrorCode::parse(&self.nack_code)),
            ack_delay: Duration::from_millis(self.ack_delay_ms),
            drain_after: self.drain_after,
            drain_every: self.drain_every_ms.map(Duration::from_millis),
            drop_after: self.drop_after,
            chunk_size: self.chunk_size,
            prefixed: self.prefixed,
            keepalive_every: self.keepalive_ms.map(Duration::from_millis),
            receipt_delay: Duration::from_millis(self.receipt_delay_ms),
        })
    }
}

fn init_logs(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    use std::io::IsTerminal;
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => b.init(),
        LogFormat::Json => b.json().init(),
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let quiet = matches!(
        cli.cmd,
        Command::Send(_) | Command::Listen(_) | Command::CheckConfig { .. } | Command::Bench(_)
    );
    if !quiet || std::env::var_os("RUST_LOG").is_some() {
        init_logs(cli.log_format);
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("gimmm: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let res = rt.block_on(async move {
        match cli.cmd {
            Command::Serve(a) => serve(a).await.map(|_| 0),
            Command::Emulator(a) => run_emulator(a).await.map(|_| 0),
            Command::Send(a) => clients::send(a).await,
            Command::Listen(a) => clients::listen(a).await.map(|_| 0),
            Command::Bench(a) => bench::run(a).await.map(|_| 0),
            Command::CheckConfig { file } => check_config(file).map(|_| 0),
        }
    });
    match res {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("gimmm: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn check_config(file: PathBuf) -> Result<()> {
    let cfg = Config::load(Some(&file))?;
    println!(
        "{}: ok ({} session(s), FCM {}, store {})",
        file.display(),
        cfg.bal.sessions.len(),
        if cfg.fcm.has_credentials() {
            format!(
                "{}:{} as sender {}",
                cfg.fcm.host, cfg.fcm.port, cfg.fcm.sender_id
            )
        } else {
            "not configured: in-process emulator".to_string()
        },
        cfg.store.path.display()
    );
    Ok(())
}

/// Resolves when SIGTERM or Ctrl-C arrives. The handlers are installed when
/// this is called, not when the future is first polled: a signal that
/// arrives while the gateway is still starting is then not lost, and does
/// not kill the process with the default action (an unclean exit).
fn terminate() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        );
        async move {
            match handlers {
                (Ok(mut term), Ok(mut int)) => {
                    tokio::select! {
                        _ = term.recv() => {}
                        _ = int.recv() => {}
                    }
                }
                _ => {
                    let _ = tokio::signal::ctrl_c().await;
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn serve(a: ServeArgs) -> Result<()> {
    let stop = terminate();
    let mut cfg = Config::load(a.config.as_deref())?;
    let shutdown = CancellationToken::new();
    let mut emu = None;
    let connector: Arc<dyn xmpp::connect::Connector> = if cfg.fcm.has_credentials() {
        Arc::new(
            xmpp::connect::DirectTls::new(cfg.fcm.ca_file.as_deref())
                .context("setting up TLS for FCM")?,
        )
    } else {
        let e = emulator::Emulator::start(emulator::EmulatorConfig::default())
            .await
            .context("starting the in-process CCS emulator")?;
        tracing::warn!(
            "no FCM credentials configured (fcm.sender_id / fcm.server_key): using the IN-PROCESS CCS EMULATOR at {} — nothing reaches real devices",
            e.addr()
        );
        cfg.fcm.host = e.addr().ip().to_string();
        cfg.fcm.port = e.addr().port();
        cfg.fcm.sender_id = e.sender_id().to_string();
        cfg.fcm.server_key = Secret::new(e.server_key());
        let c = xmpp::connect::DirectTls::with_ca_pem(e.ca_pem().as_bytes())
            .context("trusting the emulator's CA")?;
        emu = Some(e);
        Arc::new(c)
    };
    let gw = gateway::Gateway::start_with_connector(cfg, connector, shutdown.clone()).await?;
    if let Some(path) = &a.ports_file {
        if let Err(e) = write_ports_file(path, gw.bal_addr, gw.admin_addr) {
            gw.stop().await;
            return Err(e);
        }
    }
    println!("gimmm serving BALs on {}", gw.bal_addr);
    if let Some(a) = gw.admin_addr {
        println!("admin http on http://{a} (/healthz /readyz /metrics /api/v1/...)");
    }
    stop.await;
    tracing::info!("shutting down: stop accepting, close CCS streams, commit");
    gw.stop().await;
    if let Some(e) = emu {
        e.shutdown().await;
    }
    tracing::info!("bye");
    Ok(())
}

/// Writes `{"bal":..,"admin":..}` next to `path` and renames it into place,
/// so a reader polling for `path` never sees a partial file.
fn write_ports_file(
    path: &std::path::Path,
    bal: SocketAddr,
    admin: Option<SocketAddr>,
) -> Result<()> {
    let body = serde_json::json!({
        "bal": bal.to_string(),
        "admin": admin.map(|a| a.to_string()),
    });
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, format!("{body}\n"))
        .with_context(|| format!("writing the ports file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    Ok(())
}

async fn run_emulator(a: EmulatorArgs) -> Result<()> {
    let stop = terminate();
    let cfg = emulator::EmulatorConfig {
        listen: a.listen,
        sender_id: a.sender_id,
        server_key: a.server_key,
        stats_listen: Some(a.stats_listen),
        ca_out: Some(a.ca_out),
        faults: a.faults.to_faults()?,
        receipt_category: a.receipt_category,
        ..emulator::EmulatorConfig::default()
    };
    let e = emulator::Emulator::start(cfg)
        .await
        .context("starting the emulator")?;
    for line in e.describe() {
        println!("{line}");
    }
    stop.await;
    e.shutdown().await;
    Ok(())
}
