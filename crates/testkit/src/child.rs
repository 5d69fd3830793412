//! `gimmm serve` as a child process (SPEC §1), the way an operator runs it.
//!
//! The config is written as TOML from a typed value; the child is started
//! with `--ports-file`, and [`ChildGateway::spawn`] returns once that file
//! names the ports it bound (listeners are `127.0.0.1:0`: nothing guesses a
//! free port). Its stdout and stderr go to files in its directory, appended
//! across restarts, so tests can grep the logs. [`ChildGateway::kill`]
//! (SIGKILL) and [`ChildGateway::term`] (SIGTERM) stop it;
//! [`ChildGateway::restart`] starts it again on the same config and store,
//! on new ports: clients reconnect to [`ChildGateway::bal_addr`] or follow
//! [`ChildGateway::follow`].

use gateway::config::Config;
use serde::Deserialize;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

/// How often the ports file is looked for while the child starts.
const READY_POLL: Duration = Duration::from_millis(5);

/// Numbers the children of this test process (file names).
static NEXT: AtomicU32 = AtomicU32::new(1);

/// The addresses a child bound, as `--ports-file` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Ports {
    /// The BAL listener.
    pub bal: SocketAddr,
    /// The admin HTTP listener (`None` when `admin.listen` is empty).
    pub admin: Option<SocketAddr>,
    /// The upstream ingress (`None` when `ingress.listen` is empty).
    #[serde(default)]
    pub ingress: Option<SocketAddr>,
}

/// How to run the child. Its `Debug` shows environment variable names only
/// (their values may be secrets, e.g. `GIMMM_ADMIN__TOKEN`).
#[derive(Clone)]
pub struct ChildOpts {
    /// The `gimmm` binary: `env!("CARGO_BIN_EXE_gimmm")` in gimmm's tests.
    pub exe: PathBuf,
    /// Directory for the config, ports and log files (default: a new
    /// temporary directory owned by the [`ChildGateway`]).
    pub dir: Option<PathBuf>,
    /// `RUST_LOG` of the child (default `warn`).
    pub rust_log: String,
    /// Arguments before `serve` (global flags such as `--log-format json`).
    pub args: Vec<OsString>,
    /// Extra environment.
    pub env: Vec<(OsString, OsString)>,
    /// Environment variables to remove.
    pub env_remove: Vec<OsString>,
    /// How long the child has to report its ports (default 60 s).
    pub ready_timeout: Duration,
    /// How long SIGKILL / SIGTERM may take to end it (default 30 s).
    pub stop_timeout: Duration,
}

impl std::fmt::Debug for ChildOpts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChildOpts")
            .field("exe", &self.exe)
            .field("dir", &self.dir)
            .field("rust_log", &self.rust_log)
            .field("args", &self.args)
            .field("env", &self.env.iter().map(|(k, _)| k).collect::<Vec<_>>())
            .field("env_remove", &self.env_remove)
            .field("ready_timeout", &self.ready_timeout)
            .field("stop_timeout", &self.stop_timeout)
            .finish()
    }
}

impl ChildOpts {
    /// Defaults for the binary `exe`.
    pub fn new(exe: impl Into<PathBuf>) -> ChildOpts {
        ChildOpts {
            exe: exe.into(),
            dir: None,
            rust_log: "warn".into(),
            args: Vec::new(),
            env: Vec::new(),
            env_remove: Vec::new(),
            ready_timeout: Duration::from_secs(60),
            stop_timeout: Duration::from_secs(30),
        }
    }

    /// Puts the config, ports and log files in `dir`.
    pub fn dir(mut self, dir: impl Into<PathBuf>) -> ChildOpts {
        self.dir = Some(dir.into());
        self
    }

    /// Sets `RUST_LOG`.
    pub fn rust_log(mut self, filter: impl Into<String>) -> ChildOpts {
        self.rust_log = filter.into();
        self
    }

    /// Adds an argument before `serve`.
    pub fn arg(mut self, arg: impl Into<OsString>) -> ChildOpts {
        self.args.push(arg.into());
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> ChildOpts {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes an environment variable.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> ChildOpts {
        self.env_remove.push(key.into());
        self
    }
}

/// A child that could not be started, stopped or observed.
#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    /// A file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// Why it failed.
        source: std::io::Error,
    },
    /// The config could not be written.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The child exited before reporting its ports.
    #[error("gimmm serve exited with {status} before reporting its ports; its stderr:\n{stderr}")]
    ExitedEarly {
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr during this start.
        stderr: String,
    },
    /// The child did not report its ports in time (it was killed).
    #[error("gimmm serve did not report its ports within {waited:?}; its stderr:\n{stderr}")]
    NotReady {
        /// How long it had.
        waited: Duration,
        /// What it wrote to stderr during this start.
        stderr: String,
    },
    /// The ports file is not what `--ports-file` writes.
    #[error("bad ports file {path}: {problem}")]
    BadPortsFile {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// `restart` while the child still runs.
    #[error("the child is still running: kill() or term() it first")]
    StillRunning,
    /// `kill` / `term` while no child runs.
    #[error("no child is running")]
    NotRunning,
    /// The child did not end within the stop timeout (it was then killed).
    #[error("gimmm serve did not exit within {0:?} of the signal")]
    StopTimeout(Duration),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ChildError {
    let what = what.into();
    move |source| ChildError::Io { what, source }
}

/// A running (or stopped, between restarts) `gimmm serve` child process.
pub struct ChildGateway {
    opts: ChildOpts,
    _tmp: Option<tempfile::TempDir>,
    dir: PathBuf,
    name: String,
    config_path: PathBuf,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    child: Option<Child>,
    ports: Ports,
    starts: u32,
    follow: watch::Sender<Option<Ports>>,
}

impl ChildGateway {
    /// Writes `config` as TOML and starts `gimmm serve` on it; returns once
    /// the child reported its ports. Fails with [`ChildError::ExitedEarly`]
    /// (status and stderr) when it refuses to start.
    pub async fn spawn(config: &Config, opts: ChildOpts) -> Result<ChildGateway, ChildError> {
        let (tmp, dir) = match &opts.dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir().map_err(io("creating a temporary directory"))?;
                let d = t.path().to_path_buf();
                (Some(t), d)
            }
        };
        let name = format!("gimmm-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let config_path = dir.join(format!("{name}.toml"));
        crate::config::write_config(config, &config_path)?;
        let (follow, _) = watch::channel(None);
        let mut gw = ChildGateway {
            stdout_path: dir.join(format!("{name}.stdout.log")),
            stderr_path: dir.join(format!("{name}.stderr.log")),
            opts,
            _tmp: tmp,
            dir,
            name,
            config_path,
            child: None,
            ports: Ports {
                bal: SocketAddr::from(([127, 0, 0, 1], 0)),
                admin: None,
                ingress: None,
            },
            starts: 0,
            follow,
        };
        gw.start().await?;
        Ok(gw)
    }

    async fn start(&mut self) -> Result<Ports, ChildError> {
        self.starts += 1;
        let ports_path = self
            .dir
            .join(format!("{}.ports-{}.json", self.name, self.starts));
        match std::fs::remove_file(&ports_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("removing {}", ports_path.display()))(e)),
        }
        let append = |p: &Path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(io(format!("opening {}", p.display())))
        };
        let stdout = append(&self.stdout_path)?;
        let stderr = append(&self.stderr_path)?;
        // This start's stderr begins here (the file is appended to).
        let stderr_from = stderr.metadata().map(|m| m.len()).unwrap_or(0);
        let mut cmd = Command::new(&self.opts.exe);
        cmd.args(&self.opts.args)
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .arg("--ports-file")
            .arg(&ports_path)
            .env("RUST_LOG", &self.opts.rust_log);
        for (k, v) in &self.opts.env {
            cmd.env(k, v);
        }
        for k in &self.opts.env_remove {
            cmd.env_remove(k);
        }
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .map_err(io(format!("starting {}", self.opts.exe.display())))?;
        let deadline = Instant::now() + self.opts.ready_timeout;
        // A readiness wait on a file written once (temp + rename), with a
        // deadline and an early exit when the child dies.
        let ports = loop {
            match std::fs::read(&ports_path) {
                Ok(bytes) => {
                    break serde_json::from_slice::<Ports>(&bytes).map_err(|e| {
                        ChildError::BadPortsFile {
                            path: ports_path.clone(),
                            problem: e.to_string(),
                        }
                    })?
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(format!("reading {}", ports_path.display()))(e)),
            }
            if let Some(status) = child.try_wait().map_err(io("waiting for gimmm serve"))? {
                return Err(ChildError::ExitedEarly {
                    status,
                    stderr: self.stderr_since(stderr_from),
                });
            }
            if Instant::now() >= deadline {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(self.opts.stop_timeout, child.wait()).await;
                return Err(ChildError::NotReady {
                    waited: self.opts.ready_timeout,
                    stderr: self.stderr_since(stderr_from),
                });
            }
            tokio::time::sleep(READY_POLL).await;
        };
        self.child = Some(child);
        self.ports = ports;
        self.follow.send_replace(Some(ports));
        Ok(ports)
    }

    fn stderr_since(&self, offset: u64) -> String {
        let all = std::fs::read(&self.stderr_path).unwrap_or_default();
        let from = usize::try_from(offset).unwrap_or(0).min(all.len());
        String::from_utf8_lossy(&all[from..]).into_owned()
    }

    /// The BAL address of the current (or last) start.
    pub fn bal_addr(&self) -> SocketAddr {
        self.ports.bal
    }

    /// The admin address of the current (or last) start.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.ports.admin
    }

    /// The ingress address of the current (or last) start.
    pub fn ingress_addr(&self) -> Option<SocketAddr> {
        self.ports.ingress
    }

    /// All addresses of the current (or last) start.
    pub fn ports(&self) -> Ports {
        self.ports
    }

    /// The current ports, `None` while stopped: for tasks that must find
    /// the gateway again after a restart.
    pub fn follow(&self) -> watch::Receiver<Option<Ports>> {
        self.follow.subscribe()
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// The config file it runs on.
    pub fn config_path(&self) -> &Path {
        &self.config_path
    }

    /// The file its stderr (its log) is appended to.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything it wrote to stderr (all starts).
    pub fn stderr(&self) -> String {
        self.stderr_since(0)
    }

    /// Everything it wrote to stdout (all starts).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stdout_path).unwrap_or_default()).into_owned()
    }

    /// The last `n` lines of its stderr.
    pub fn log_tail(&self, n: usize) -> String {
        let text = self.stderr();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// `Some(status)` when the child has exited (on its own or not).
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>, ChildError> {
        match &mut self.child {
            Some(c) => c.try_wait().map_err(io("waiting for gimmm serve")),
            None => Err(ChildError::NotRunning),
        }
    }

    /// Waits for the child to exit on its own (no signal is sent): to
    /// notice, next to other waits, a gateway that dies.
    pub async fn wait(&mut self) -> Result<ExitStatus, ChildError> {
        match &mut self.child {
            Some(c) => c.wait().await.map_err(io("waiting for gimmm serve")),
            None => Err(ChildError::NotRunning),
        }
    }

    /// SIGKILL; waits for the exit and returns its status.
    pub async fn kill(&mut self) -> Result<ExitStatus, ChildError> {
        let mut child = self.child.take().ok_or(ChildError::NotRunning)?;
        self.follow.send_replace(None);
        child.start_kill().map_err(io("sending SIGKILL"))?;
        self.reap(child).await
    }

    /// SIGTERM; waits (up to the stop timeout, then SIGKILL and an error)
    /// and returns the exit status.
    pub async fn term(&mut self) -> Result<ExitStatus, ChildError> {
        let child = self.child.take().ok_or(ChildError::NotRunning)?;
        self.follow.send_replace(None);
        let pid = child.id().ok_or(ChildError::NotRunning)?;
        // No libc (unsafe is forbidden in this workspace): kill(1).
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .map_err(io("running kill -TERM"))?;
        if !st.success() {
            return Err(ChildError::Io {
                what: format!("kill -TERM {pid}"),
                source: std::io::Error::other(st.to_string()),
            });
        }
        self.reap(child).await
    }

    /// Sends SIGTERM and returns at once (the gateway drains; see
    /// [`ChildGateway::wait`]). Sent twice, the second cuts the drain short.
    pub async fn signal_term(&self) -> Result<(), ChildError> {
        let pid = self.pid().ok_or(ChildError::NotRunning)?;
        let st = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .await
            .map_err(io("running kill -TERM"))?;
        if st.success() {
            Ok(())
        } else {
            Err(ChildError::Io {
                what: format!("kill -TERM {pid}"),
                source: std::io::Error::other(st.to_string()),
            })
        }
    }

    async fn reap(&mut self, mut child: Child) -> Result<ExitStatus, ChildError> {
        match tokio::time::timeout(self.opts.stop_timeout, child.wait()).await {
            Ok(r) => r.map_err(io("waiting for gimmm serve")),
            Err(_) => {
                let _ = child.start_kill();
                let _ = tokio::time::timeout(self.opts.stop_timeout, child.wait()).await;
                Err(ChildError::StopTimeout(self.opts.stop_timeout))
            }
        }
    }

    /// Starts it again (after [`ChildGateway::kill`] / [`ChildGateway::term`])
    /// on the same config and store; returns the new ports.
    pub async fn restart(&mut self) -> Result<Ports, ChildError> {
        if let Some(c) = &mut self.child {
            match c.try_wait().map_err(io("waiting for gimmm serve"))? {
                Some(_) => self.child = None,
                None => return Err(ChildError::StillRunning),
            }
        }
        self.start().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_shows_no_environment_values() {
        let o = ChildOpts::new("/bin/gimmm").env("GIMMM_ADMIN__TOKEN", "s3cret-value");
        let d = format!("{o:?}");
        assert!(
            d.contains("GIMMM_ADMIN__TOKEN") && !d.contains("s3cret-value"),
            "{d}"
        );
    }
}
