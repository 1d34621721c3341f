//! Child processes of the control plane: spawned so that they die with us, logged
//! to a file, and reported by name with their log when they fail.

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// One supervised control-plane process (etcd, kube-apiserver, …).
pub struct Component {
    pub name: &'static str,
    pub log: PathBuf,
    program: PathBuf,
    args: Vec<String>,
    /// `None` while deliberately stopped ([`Component::stop`]).
    child: Option<Child>,
}

impl Component {
    /// Starts `program args…` with stdout and stderr written to `log` (truncated
    /// first). The child gets SIGKILL when the thread that started it exits
    /// (`setpriv --pdeathsig`), so a crashed test never leaves a control plane behind.
    pub fn spawn(name: &'static str, program: &Path, args: &[String], log: &Path) -> Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let child = start(name, program, args, out)?;
        Ok(Component {
            name,
            log: log.to_owned(),
            program: program.to_owned(),
            args: args.to_vec(),
            child: Some(child),
        })
    }

    /// Starts a stopped (or dead) component again with the same program and
    /// arguments, appending to its log.
    pub fn restart(&mut self) -> Result<()> {
        if self.is_running() {
            bail!("{} is already running", self.name);
        }
        let out = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        self.child = Some(start(self.name, &self.program, &self.args, out)?);
        Ok(())
    }

    /// Whether the process is alive (not stopped, not exited).
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Errors, naming the component and its log, if it has exited. A component
    /// stopped on purpose is not an error.
    pub fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Ok(());
        };
        if let Some(status) = child.try_wait()? {
            bail!(
                "{} exited ({status}); log: {}\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log, 15)
            );
        }
        Ok(())
    }

    /// Whether the component's log says its port was taken (worth a retry).
    pub fn port_conflict(&self) -> bool {
        std::fs::read_to_string(&self.log)
            .map(|s| s.contains("address already in use"))
            .unwrap_or(false)
    }

    /// SIGTERM, then SIGKILL after `grace`; waits for the exit. Errors, leaving
    /// the component as it was, unless it was running: one that died on its own
    /// stays dead so the supervisor still reports it.
    pub async fn stop(&mut self, grace: Duration) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            bail!("{} is already stopped", self.name);
        };
        if let Some(status) = child.try_wait()? {
            bail!("{} is not running: it exited ({status})", self.name);
        }
        if let Some(pid) = child.id() {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            if tokio::time::timeout(grace, child.wait()).await.is_ok() {
                self.child = None;
                return Ok(());
            }
        }
        let _ = child.kill().await;
        self.child = None;
        Ok(())
    }
}

fn start(name: &str, program: &Path, args: &[String], out: File) -> Result<Child> {
    let err = out.try_clone()?;
    Command::new("setpriv")
        .arg("--pdeathsig")
        .arg("KILL")
        .arg("--")
        .arg(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))
}

/// The last `lines` lines of a log file, for error messages.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
