//! The operator under test, run as a host process with the cluster's
//! kubeconfig, as the end-to-end tests run it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Serialize;

use crate::procfs::{ProcStats, proc_stats};

/// A running operator process.
pub struct Operator {
    child: tokio::process::Child,
    pub pid: u32,
    /// HTTP_ADDR: /metrics and /queue, open (HTTP_AUTH=none).
    pub port: u16,
    /// HEALTH_ADDR: /healthz and /readyz.
    pub health_port: u16,
    pub log: PathBuf,
    /// When it was spawned.
    pub spawned: Instant,
    last_stats: ProcStats,
    sampled: std::sync::Arc<std::sync::Mutex<Sampled>>,
    sampler: tokio::task::JoinHandle<()>,
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.sampler.abort();
    }
}

/// Peaks sampled every 100 ms while the operator runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Sampled {
    /// Most open sockets at once (≈ connections to the API server).
    pub max_sockets: usize,
    /// Seconds after spawn when the most sockets were open.
    pub max_sockets_at: f64,
    /// Seconds after spawn when VmRSS was highest.
    pub max_rss_at: f64,
    pub max_rss_mib: f64,
    pub samples: usize,
}

fn socket_count(pid: u32) -> Option<usize> {
    let dir = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?;
    Some(
        dir.flatten()
            .filter(|e| {
                std::fs::read_link(e.path())
                    .map(|l| l.to_string_lossy().starts_with("socket:"))
                    .unwrap_or(false)
            })
            .count(),
    )
}

/// The totals of `/queue`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct QueueTotals {
    pub pending: u64,
    pub scheduled: u64,
    pub running: u64,
}

impl QueueTotals {
    pub fn sum(&self) -> u64 {
        self.pending + self.scheduled + self.running
    }
}

/// Parses the totals out of a `/queue` document.
pub fn queue_totals(body: &str) -> Option<QueueTotals> {
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    Some(QueueTotals {
        pending: v["pendingTotal"].as_u64()?,
        scheduled: v["scheduledTotal"].as_u64()?,
        running: v["running"].as_array()?.len() as u64,
    })
}

/// Two distinct free ports on 127.0.0.1 (both held while asking).
fn two_free_ports() -> Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

impl Operator {
    /// Starts `binary` (controller mode) against `kubeconfig` with `env` on top
    /// of the harness defaults; its output goes to `log`.
    pub fn spawn(
        binary: &Path,
        kubeconfig: &Path,
        env: &[(String, String)],
        log: &Path,
    ) -> Result<Operator> {
        let (port, health_port) = two_free_ports()?;
        let out =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut cmd = tokio::process::Command::new(binary);
        cmd.env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("KUBECONFIG", kubeconfig)
            .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
            .env("HEALTH_ADDR", format!("127.0.0.1:{health_port}"))
            // The harness polls /queue and reads /metrics; token reviews
            // would add API requests to what it measures.
            .env("HTTP_AUTH", "none")
            .env("LEADER_ELECTION", "false")
            // The operator runs on the host, where the generated host names do
            // not resolve; the fixture scan does not connect anywhere.
            .env("TARGET_CHECK_TIMEOUT", "0")
            .env("RUST_LOG", "info,kube_runtime=warn,kube_client=warn")
            .env("NO_COLOR", "1");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let pid = child.id().context("operator pid")?;
        let spawned = Instant::now();
        let sampled = std::sync::Arc::new(std::sync::Mutex::new(Sampled::default()));
        let sampler = {
            let sampled = sampled.clone();
            tokio::spawn(async move {
                // Bounded: ends with the process (or when aborted on drop).
                while let (Ok(st), Some(sockets)) = (proc_stats(pid), socket_count(pid)) {
                    let t = spawned.elapsed().as_secs_f64();
                    {
                        let mut s = sampled.lock().unwrap_or_else(|e| e.into_inner());
                        s.samples += 1;
                        if sockets > s.max_sockets {
                            s.max_sockets = sockets;
                            s.max_sockets_at = t;
                        }
                        if st.rss_mib > s.max_rss_mib {
                            s.max_rss_mib = st.rss_mib;
                            s.max_rss_at = t;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Ok(Operator {
            child,
            pid,
            port,
            health_port,
            log: log.to_owned(),
            spawned,
            last_stats: ProcStats::default(),
            sampled,
            sampler,
        })
    }

    /// GET a data path (/queue, /metrics); the body on 200.
    pub async fn get(&self, path: &str) -> Option<String> {
        devcluster::http_get(self.port, path).await
    }

    /// Whether `/readyz` (on the health port) answers 200.
    pub async fn ready(&self) -> bool {
        devcluster::http_get(self.health_port, "/readyz")
            .await
            .is_some()
    }

    /// `/queue` totals.
    pub async fn queue(&self) -> Option<QueueTotals> {
        queue_totals(&self.get("/queue?limit=1").await?)
    }

    /// Waits until `/readyz` answers 200; errors if the process exits first.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.ready().await {
                return Ok(self.spawned.elapsed());
            }
            if let Some(st) = self.child.try_wait()? {
                bail!(
                    "the operator exited ({st}) during start-up; log: {}",
                    self.log.display()
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "the operator was not ready within {timeout:?}; log: {}",
                    self.log.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Peak/current RSS and CPU (the last reading once it has exited).
    pub fn stats(&mut self) -> ProcStats {
        if let Ok(s) = proc_stats(self.pid) {
            self.last_stats = s;
        }
        self.last_stats
    }

    /// Peaks sampled so far.
    pub fn sampled(&self) -> Sampled {
        *self.sampled.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Errors if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(st) = self.child.try_wait()? {
            bail!("the operator exited ({st}); log: {}", self.log.display());
        }
        Ok(())
    }

    /// SIGKILL, and reap it. Returns the stats read just before.
    pub async fn kill9(&mut self) -> ProcStats {
        let stats = self.stats();
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        stats
    }

    /// SIGTERM, then SIGKILL after `grace`. Returns the stats read just before.
    pub async fn stop(&mut self, grace: Duration) -> ProcStats {
        let stats = self.stats();
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        }
        stats
    }

    /// Lines of the operator's `/metrics` whose name starts with one of `names`.
    pub async fn metric_lines(&self, names: &[&str]) -> Vec<String> {
        self.get("/metrics")
            .await
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.starts_with('#') && names.iter().any(|n| l.starts_with(n)))
            .map(str::to_string)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_totals_count_pending_scheduled_and_running() {
        let body = r#"{"pendingTotal": 5, "pending": [{}], "scheduledTotal": 7,
            "scheduled": [{}], "running": [{"scan": "a"}, {"scan": "b"}]}"#;
        let t = queue_totals(body).unwrap();
        assert_eq!((t.pending, t.scheduled, t.running, t.sum()), (5, 7, 2, 14));
        assert_eq!(queue_totals("nope"), None);
    }
}
