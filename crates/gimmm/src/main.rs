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
    /// Run an FCM emulator alone: CCS (XMPP, default) or the HTTP v1 API (--api http-v1).
    Emulator(Box<EmulatorArgs>),
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

/// Which FCM API `gimmm emulator` speaks.
#[derive(Copy, Clone, Debug, PartialEq, Eq, ValueEnum)]
enum EmulatorApi {
    /// The XMPP Connection Server (CCS).
    Xmpp,
    /// The FCM HTTP v1 API (projects.messages.send plus an OAuth 2 token endpoint).
    #[value(name = "http-v1")]
    HttpV1,
}

#[derive(Args, Debug)]
struct EmulatorArgs {
    /// Which FCM API to emulate.
    #[arg(long, value_enum, default_value_t = EmulatorApi::Xmpp)]
    api: EmulatorApi,
    /// Listen address [default: 127.0.0.1:5236 for xmpp, 127.0.0.1:5238 for http-v1].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Sender id accepted in SASL PLAIN (`<sender_id>@fcm.googleapis.com`) (xmpp).
    #[arg(long, default_value = emulator::DEFAULT_SENDER_ID)]
    sender_id: String,
    /// Server key accepted as the SASL PLAIN password (xmpp).
    #[arg(long, default_value = emulator::DEFAULT_SERVER_KEY)]
    server_key: String,
    /// Where to write the CA certificate clients must trust (PEM).
    #[arg(long, default_value = emulator::DEFAULT_CA_OUT)]
    ca_out: PathBuf,
    /// Address of the HTTP/JSON stats endpoint (GET /stats)
    /// [default: 127.0.0.1:5237 for xmpp, 127.0.0.1:5239 for http-v1].
    #[arg(long)]
    stats_listen: Option<SocketAddr>,
    /// Category of the delivery receipts it sends (xmpp).
    #[arg(long, default_value = emulator::DEFAULT_RECEIPT_CATEGORY)]
    receipt_category: String,
    /// Project id served at /v1/projects/{id}/messages:send (http-v1).
    #[arg(long, default_value = emulator::v1::V1_DEFAULT_PROJECT_ID)]
    project_id: String,
    /// Where to write the generated service-account JSON key (http-v1; holds a private key).
    #[arg(long, default_value = emulator::v1::V1_DEFAULT_SERVICE_ACCOUNT_OUT)]
    service_account_out: PathBuf,
    #[command(flatten)]
    faults: FaultArgs,
    #[command(flatten)]
    v1_faults: V1FaultArgs,
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

/// Fault injection knobs of the HTTP v1 emulator (`--api http-v1`; `--drop-after`
/// is shared with the CCS emulator's knobs).
#[derive(Args, Debug, Clone, Default)]
struct V1FaultArgs {
    /// Delay every send answer by this many milliseconds (http-v1).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// Answer this fraction (0.0..=1.0) of valid sends with --error-code (http-v1).
    #[arg(long, default_value_t = 0.0)]
    error_fraction: f64,
    /// errorCode of those answers: UNAVAILABLE, INTERNAL, QUOTA_EXCEEDED, ... (http-v1).
    #[arg(long, default_value = "UNAVAILABLE")]
    error_code: String,
    /// Retry-After (seconds) on those answers (http-v1).
    #[arg(long)]
    retry_after_secs: Option<u64>,
    /// Answer this fraction of valid sends with a bare 502/504 and an HTML body (http-v1).
    #[arg(long, default_value_t = 0.0)]
    gateway_error_fraction: f64,
    /// Status of those answers: 502 or 504 (http-v1).
    #[arg(long, default_value_t = 502)]
    gateway_error_status: u16,
    /// Project quota: sends per minute before 429 QUOTA_EXCEEDED (http-v1).
    #[arg(long)]
    quota_per_minute: Option<u64>,
    /// Per-device rate: sends per minute to one token before 429 QUOTA_EXCEEDED (http-v1).
    #[arg(long)]
    device_rate_per_minute: Option<u64>,
    /// Send GOAWAY after this many requests on a connection (http-v1).
    #[arg(long)]
    goaway_after: Option<u64>,
    /// Lifetime (seconds) of the access tokens it issues (http-v1; default 3600).
    #[arg(long)]
    token_lifetime_secs: Option<u64>,
    /// Make the token endpoint answer this status: 500 or 400 (http-v1).
    #[arg(long)]
    token_endpoint_error: Option<u16>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on HTTP/2 connections (http-v1; default 100).
    #[arg(long)]
    max_concurrent_streams: Option<u32>,
    /// Add the older field violation on message.token to invalid-token answers (http-v1).
    #[arg(long)]
    legacy_token_violation: bool,
    /// Answer every send with this status without FcmError: 401 or 403 (http-v1).
    #[arg(long)]
    send_auth_error: Option<u16>,
}

impl V1FaultArgs {
    fn to_faults(&self, drop_after: Option<u64>) -> Result<emulator::v1::V1Faults> {
        let error_code = emulator::v1::V1ErrorCode::parse(&self.error_code).with_context(|| {
            format!("--error-code {}: not an FCM v1 errorCode", self.error_code)
        })?;
        let f = emulator::v1::V1Faults {
            latency: Duration::from_millis(self.latency_ms),
            error_fraction: self.error_fraction,
            error_code: Some(error_code),
            retry_after_secs: self.retry_after_secs,
            gateway_error_fraction: self.gateway_error_fraction,
            gateway_error_status: Some(self.gateway_error_status),
            quota_per_minute: self.quota_per_minute,
            device_rate_per_minute: self.device_rate_per_minute,
            goaway_after: self.goaway_after,
            drop_after,
            token_lifetime_secs: self.token_lifetime_secs,
            token_endpoint_error: self.token_endpoint_error,
            max_concurrent_streams: self.max_concurrent_streams,
            legacy_token_violation: self.legacy_token_violation,
            send_auth_error: self.send_auth_error,
        };
        if let Err(e) = f.check() {
            bail!("{e}");
        }
        Ok(f)
    }

    /// The flags set away from their defaults (refused with `--api xmpp`).
    fn set_flags(&self) -> Vec<&'static str> {
        let d = V1FaultArgs {
            error_code: "UNAVAILABLE".into(),
            gateway_error_status: 502,
            ..V1FaultArgs::default()
        };
        let mut out = Vec::new();
        let mut check = |set: bool, name| {
            if set {
                out.push(name);
            }
        };
        check(self.latency_ms != d.latency_ms, "--latency-ms");
        check(self.error_fraction != d.error_fraction, "--error-fraction");
        check(
            !self.error_code.eq_ignore_ascii_case(&d.error_code),
            "--error-code",
        );
        check(self.retry_after_secs.is_some(), "--retry-after-secs");
        check(
            self.gateway_error_fraction != 0.0,
            "--gateway-error-fraction",
        );
        check(
            self.gateway_error_status != d.gateway_error_status,
            "--gateway-error-status",
        );
        check(self.quota_per_minute.is_some(), "--quota-per-minute");
        check(
            self.device_rate_per_minute.is_some(),
            "--device-rate-per-minute",
        );
        check(self.goaway_after.is_some(), "--goaway-after");
        check(self.token_lifetime_secs.is_some(), "--token-lifetime-secs");
        check(
            self.token_endpoint_error.is_some(),
            "--token-endpoint-error",
        );
        check(
            self.max_concurrent_streams.is_some(),
            "--max-concurrent-streams",
        );
        check(self.legacy_token_violation, "--legacy-token-violation");
        check(self.send_auth_error.is_some(), "--send-auth-error");
        out
    }
}

impl FaultArgs {
    /// The CCS-only flags set away from their defaults (refused with `--api http-v1`).
    fn ccs_only_flags(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        let mut check = |set: bool, name| {
            if set {
                out.push(name);
            }
        };
        check(self.nack_fraction != 0.0, "--nack-fraction");
        check(
            !self.nack_code.eq_ignore_ascii_case("SERVICE_UNAVAILABLE"),
            "--nack-code",
        );
        check(self.ack_delay_ms != 0, "--ack-delay-ms");
        check(self.drain_after.is_some(), "--drain-after");
        check(self.drain_every_ms.is_some(), "--drain-every-ms");
        check(self.chunk_size.is_some(), "--chunk-size");
        check(self.prefixed, "--prefixed");
        check(self.keepalive_ms.is_some(), "--keepalive-ms");
        check(self.receipt_delay_ms != 0, "--receipt-delay-ms");
        out
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
            Command::Emulator(a) => run_emulator(*a).await.map(|_| 0),
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
        "{}: ok ({} session(s), BAL listener {}{}, {}, store {})",
        file.display(),
        cfg.bal.sessions.len(),
        cfg.bal.listen,
        if cfg.bal.tls_files().is_some() {
            " over TLS"
        } else {
            " (plain TCP)"
        },
        describe_link(&cfg)?,
        cfg.store.describe()
    );
    Ok(())
}

/// Which link and which project or sender `cfg` will use (SPEC §8.1),
/// without a secret.
fn describe_link(cfg: &Config) -> Result<String> {
    use gateway::config::LinkChoice;
    Ok(match cfg.link()? {
        LinkChoice::Xmpp { emulator: false } => format!(
            "FCM XMPP (CCS) at {}:{} as sender {}",
            cfg.fcm.host, cfg.fcm.port, cfg.fcm.sender_id
        ),
        LinkChoice::Xmpp { emulator: true } => {
            "FCM XMPP: not configured, in-process CCS emulator".to_string()
        }
        LinkChoice::HttpV1 { emulator: true } => {
            "FCM HTTP v1: no service account, in-process HTTP v1 emulator".to_string()
        }
        LinkChoice::HttpV1 { emulator: false } => {
            let sa = cfg
                .fcm
                .load_service_account()?
                .context("no service account")?;
            let (project, from) = if cfg.fcm.project_id.is_empty() {
                (
                    sa.project_id
                        .clone()
                        .context("the service account names no project_id; set fcm.project_id")?,
                    "from the key file",
                )
            } else {
                (cfg.fcm.project_id.clone(), "fcm.project_id")
            };
            let key_file = cfg
                .fcm
                .service_account_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            format!(
                "FCM HTTP v1 at {} for project {project} ({from}) as {} (key {key_file} via {})",
                cfg.fcm.endpoint,
                sa.client_email,
                cfg.fcm.service_account_key()
            )
        }
    })
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

/// SIGTERM and Ctrl-C, as a stream: the gateway drains on the first and
/// exits at once on the second. Installed at once, like [`terminate`].
struct Signals {
    #[cfg(unix)]
    handlers: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl Signals {
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            let handlers = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(t), Ok(i)) => Some((t, i)),
                _ => None,
            };
            Signals { handlers }
        }
        #[cfg(not(unix))]
        {
            Signals {}
        }
    }

    async fn recv(&mut self) {
        #[cfg(unix)]
        if let Some((term, int)) = &mut self.handlers {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// An in-process emulator `gimmm serve` runs when no credentials are
/// configured.
enum InProcess {
    Ccs(emulator::Emulator),
    V1(emulator::v1::V1Emulator),
}

async fn serve(a: ServeArgs) -> Result<()> {
    let mut signals = Signals::install();
    let mut cfg = Config::load(a.config.as_deref())?;
    let shutdown = CancellationToken::new();
    let mut emu = None;
    let mut opts = gateway::StartOptions::default();
    match cfg.link()? {
        gateway::config::LinkChoice::Xmpp { emulator: false } => {}
        gateway::config::LinkChoice::HttpV1 { emulator: false } => {}
        gateway::config::LinkChoice::Xmpp { emulator: true } => {
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
            opts.xmpp_connector = Some(Arc::new(c));
            emu = Some(InProcess::Ccs(e));
        }
        gateway::config::LinkChoice::HttpV1 { emulator: true } => {
            let e = emulator::v1::V1Emulator::start(emulator::v1::V1Config::default())
                .await
                .context("starting the in-process FCM HTTP v1 emulator")?;
            tracing::warn!(
                "fcm.api = http_v1 and no service account configured (fcm.service_account_file / GOOGLE_APPLICATION_CREDENTIALS): using the IN-PROCESS FCM HTTP v1 EMULATOR at {} (project {}) — nothing reaches real devices",
                e.endpoint(),
                e.project_id()
            );
            cfg.fcm.endpoint = e.endpoint().to_string();
            cfg.fcm.project_id = e.project_id().to_string();
            opts.service_account = Some(
                gateway::link::http_v1::ServiceAccount::from_json(e.service_account_json())
                    .context("reading the emulator's service account")?,
            );
            opts.extra_ca_pem = Some(e.ca_pem().as_bytes().to_vec());
            emu = Some(InProcess::V1(e));
        }
    }
    // On PostgreSQL a standby waits in start_with until it holds the
    // writer lease (SPEC §12); a signal meanwhile just ends it.
    let gw = tokio::select! {
        gw = gateway::Gateway::start_with(cfg, opts, shutdown.clone()) => gw?,
        _ = signals.recv() => {
            tracing::info!("signal before the gateway started (a standby waiting for the writer lease): exiting");
            return Ok(());
        }
    };
    if let Some(path) = &a.ports_file {
        if let Err(e) = write_ports_file(path, gw.bal_addr, gw.admin_addr, gw.ingress_addr) {
            gw.stop().await;
            return Err(e);
        }
    }
    println!("gimmm serving BALs on {}", gw.bal_addr);
    if let Some(a) = gw.admin_addr {
        println!("admin http on http://{a} (/healthz /readyz /metrics /api/v1/...)");
    }
    if let Some(a) = gw.ingress_addr {
        println!("upstream ingress on {a} (POST /v1/upstream)");
    }
    tokio::select! {
        _ = signals.recv() => {}
        reason = gw.fatal() => {
            tracing::error!(%reason, "stopping: another node writes now");
            gw.wait().await;
            anyhow::bail!("{reason}");
        }
    }
    tracing::info!(
        "shutting down: taking nothing new, waiting for FCM's answers to what is in flight (a second signal exits at once)"
    );
    gw.shutdown();
    let abort = gw.abort_handle();
    let drained = gw.wait();
    tokio::pin!(drained);
    tokio::select! {
        _ = &mut drained => {}
        _ = signals.recv() => {
            // Nothing accepted is lost: it is stored; what was in flight is
            // resent after the restart.
            abort.cancel();
            tracing::warn!("second signal: exiting at once");
            std::process::exit(0);
        }
    }
    match emu {
        Some(InProcess::Ccs(e)) => e.shutdown().await,
        Some(InProcess::V1(e)) => e.shutdown().await,
        None => {}
    }
    tracing::info!("bye");
    Ok(())
}

/// Writes `{"bal":..,"admin":..,"ingress":..}` next to `path` and renames
/// it into place, so a reader polling for `path` never sees a partial file.
fn write_ports_file(
    path: &std::path::Path,
    bal: SocketAddr,
    admin: Option<SocketAddr>,
    ingress: Option<SocketAddr>,
) -> Result<()> {
    let body = serde_json::json!({
        "bal": bal.to_string(),
        "admin": admin.map(|a| a.to_string()),
        "ingress": ingress.map(|a| a.to_string()),
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
    match a.api {
        EmulatorApi::Xmpp => {
            let v1_only = a.v1_faults.set_flags();
            if !v1_only.is_empty() {
                bail!("{} only apply to --api http-v1", v1_only.join(", "));
            }
            let cfg = emulator::EmulatorConfig {
                listen: a
                    .listen
                    .unwrap_or_else(|| addr_or_loopback(emulator::DEFAULT_LISTEN)),
                sender_id: a.sender_id,
                server_key: a.server_key,
                stats_listen: Some(
                    a.stats_listen
                        .unwrap_or_else(|| addr_or_loopback(emulator::DEFAULT_STATS_LISTEN)),
                ),
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
        }
        EmulatorApi::HttpV1 => {
            let ccs_only = a.faults.ccs_only_flags();
            if !ccs_only.is_empty() {
                bail!("{} only apply to --api xmpp", ccs_only.join(", "));
            }
            let cfg = emulator::v1::V1Config {
                listen: a
                    .listen
                    .unwrap_or_else(|| addr_or_loopback(emulator::v1::V1_DEFAULT_LISTEN)),
                project_id: a.project_id,
                service_account_out: Some(a.service_account_out),
                ca_out: Some(a.ca_out),
                stats_listen: Some(
                    a.stats_listen
                        .unwrap_or_else(|| addr_or_loopback(emulator::v1::V1_DEFAULT_STATS_LISTEN)),
                ),
                faults: a.v1_faults.to_faults(a.faults.drop_after)?,
                ..emulator::v1::V1Config::default()
            };
            let e = emulator::v1::V1Emulator::start(cfg)
                .await
                .context("starting the FCM HTTP v1 emulator")?;
            for line in e.describe() {
                println!("{line}");
            }
            stop.await;
            e.shutdown().await;
        }
    }
    Ok(())
}

/// A default address constant; they all parse.
fn addr_or_loopback(s: &str) -> SocketAddr {
    s.parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
}
