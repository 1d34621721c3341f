//! Running one container as a local process in its own mount namespace, with a
//! private root assembled from the host's read-only `/usr` and `/etc`, the pod's
//! volumes at their mount paths, a private `/etc/hosts` and `/dev/termination-log`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};

/// A bind mount into the container's root.
#[derive(Clone, Debug)]
pub struct Mount {
    pub host: PathBuf,
    pub container: String,
    pub read_only: bool,
}

/// Everything needed to start one container.
#[derive(Clone, Debug)]
pub struct ContainerRun {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
    pub mounts: Vec<Mount>,
    pub uid: i64,
    pub gid: i64,
    pub groups: Vec<i64>,
    pub rootfs: PathBuf,
    pub hosts_file: PathBuf,
    pub termination_file: PathBuf,
    pub termination_path: String,
    pub log_file: PathBuf,
}

/// Host directories shared read-only with every container.
const SHARED_DIRS: [&str; 2] = ["/usr", "/etc"];

fn q(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn qp(p: &Path) -> String {
    q(&p.to_string_lossy())
}

/// The shell script run inside `unshare -m` that assembles the root and execs
/// the container's command as its user.
pub fn script(run: &ContainerRun) -> Result<String, String> {
    for m in &run.mounts {
        if !m.container.starts_with('/') {
            return Err(format!("mount path {:?} is not absolute", m.container));
        }
        if SHARED_DIRS
            .iter()
            .any(|d| m.container == *d || m.container.starts_with(&format!("{d}/")))
        {
            return Err(format!(
                "mount path {:?} lies under {:?}, which devcluster shares read-only from the host",
                m.container, SHARED_DIRS
            ));
        }
    }
    let r = qp(&run.rootfs);
    let mut s = String::from("set -eu\nexport PATH=/usr/sbin:/usr/bin:/sbin:/bin\n");
    let _ = writeln!(s, "R={r}");
    s.push_str("mount -t tmpfs -o mode=755 devcluster-root \"$R\"\n");
    for d in SHARED_DIRS {
        let _ = writeln!(
            s,
            "mkdir \"$R{d}\" && mount --rbind {d} \"$R{d}\" && mount -o remount,bind,ro \"$R{d}\""
        );
    }
    // Merged-/usr layout: /bin, /lib, … are links into /usr on the host.
    for d in ["/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"] {
        let _ = writeln!(
            s,
            "if [ -L {d} ]; then ln -s \"$(readlink {d})\" \"$R{d}\"; elif [ -d {d} ]; then mkdir \"$R{d}\" && mount --rbind {d} \"$R{d}\" && mount -o remount,bind,ro \"$R{d}\"; fi"
        );
    }
    s.push_str(concat!(
        "mkdir \"$R/proc\" \"$R/sys\" \"$R/dev\" \"$R/run\" \"$R/var\" \"$R/root\"\n",
        "mkdir -m 1777 \"$R/tmp\" \"$R/dev/shm\"\n",
        "ln -s ../run \"$R/var/run\"\n",
        "mount --rbind /proc \"$R/proc\"\n",
        "mount --rbind /sys \"$R/sys\" && mount -o remount,bind,ro \"$R/sys\"\n",
        "for n in null zero full random urandom tty; do touch \"$R/dev/$n\"; mount --bind \"/dev/$n\" \"$R/dev/$n\"; done\n",
        "ln -s /proc/self/fd \"$R/dev/fd\"; ln -s /proc/self/fd/0 \"$R/dev/stdin\"\n",
        "ln -s /proc/self/fd/1 \"$R/dev/stdout\"; ln -s /proc/self/fd/2 \"$R/dev/stderr\"\n",
    ));
    let _ = writeln!(s, "mount --bind {} \"$R/etc/hosts\"", qp(&run.hosts_file));
    let mut mounts = run.mounts.clone();
    mounts.push(Mount {
        host: run.termination_file.clone(),
        container: run.termination_path.clone(),
        read_only: false,
    });
    for m in &mounts {
        let host = qp(&m.host);
        let target = format!("\"$R\"{}", q(&m.container));
        let _ = writeln!(
            s,
            "if [ -d {host} ]; then mkdir -p {target}; else mkdir -p \"$(dirname {target})\"; [ -e {target} ] || touch {target}; fi"
        );
        let _ = writeln!(s, "mount --bind {host} {target}");
        if m.read_only {
            let _ = writeln!(s, "mount -o remount,bind,ro {target}");
        }
    }
    let groups = if run.groups.is_empty() {
        String::new()
    } else {
        let g: Vec<String> = run.groups.iter().map(|g| g.to_string()).collect();
        format!(" --groups={}", g.join(","))
    };
    let _ = write!(
        s,
        "exec chroot --userspec={}:{}{groups} \"$R\" /usr/bin/setpriv --pdeathsig KILL -- /usr/bin/env -i -C {} --",
        run.uid,
        run.gid,
        q(&run.working_dir)
    );
    for (k, v) in &run.env {
        let _ = write!(s, " {}", q(&format!("{k}={v}")));
    }
    for a in &run.argv {
        let _ = write!(s, " {}", q(a));
    }
    s.push('\n');
    Ok(s)
}

/// A started container process (its own process group).
pub struct Running {
    child: Child,
    pgid: i32,
}

/// Starts the container. Its output goes to `run.log_file`.
pub fn start(run: &ContainerRun, script_file: &Path) -> Result<Running> {
    let text = script(run).map_err(anyhow::Error::msg)?;
    std::fs::write(script_file, text)?;
    std::fs::create_dir_all(&run.rootfs)?;
    std::fs::write(&run.termination_file, b"")?;
    // Any container user may write its termination message, as with a real kubelet.
    std::fs::set_permissions(
        &run.termination_file,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&run.log_file)
        .with_context(|| format!("opening {}", run.log_file.display()))?;
    let child = Command::new("setpriv")
        .args([
            "--pdeathsig",
            "KILL",
            "--",
            "unshare",
            "-m",
            "--propagation",
            "private",
            "--",
            "sh",
        ])
        .arg(script_file)
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("spawning unshare")?;
    let pgid = child.id().map(|p| p as i32).unwrap_or(0);
    Ok(Running { child, pgid })
}

impl Running {
    /// Waits for the process; the exit code as a kubelet reports it
    /// (128 + signal for a killed process).
    pub async fn wait(&mut self) -> i32 {
        use std::os::unix::process::ExitStatusExt;
        match self.child.wait().await {
            Ok(st) => st.code().unwrap_or_else(|| 128 + st.signal().unwrap_or(9)),
            Err(_) => 255,
        }
    }

    /// SIGTERM to the whole process group, SIGKILL after `grace`.
    pub async fn terminate(&mut self, grace: Duration) -> i32 {
        if self.pgid > 0 {
            let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGTERM);
        }
        match tokio::time::timeout(grace, self.wait()).await {
            Ok(code) => code,
            Err(_) => {
                if self.pgid > 0 {
                    let _ = killpg(Pid::from_raw(self.pgid), Signal::SIGKILL);
                }
                self.wait().await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run() -> ContainerRun {
        ContainerRun {
            argv: vec!["echo".into(), "it's".into()],
            env: vec![("A".into(), "x y".into())],
            working_dir: "/".into(),
            mounts: vec![],
            uid: 65532,
            gid: 65532,
            groups: vec![],
            rootfs: "/tmp/r".into(),
            hosts_file: "/tmp/hosts".into(),
            termination_file: "/tmp/term".into(),
            termination_path: "/dev/termination-log".into(),
            log_file: "/tmp/log".into(),
        }
    }

    #[test]
    fn script_quotes_arguments_and_env_values() {
        let s = script(&run()).unwrap();
        assert!(s.contains(r"'echo' 'it'\''s'"), "{s}");
        assert!(s.contains("'A=x y'"), "{s}");
        assert!(s.contains("--userspec=65532:65532"), "{s}");
    }

    #[test]
    fn mounts_under_shared_host_directories_are_refused() {
        let mut r = run();
        r.mounts.push(Mount {
            host: "/tmp".into(),
            container: "/usr/local/bin/x".into(),
            read_only: true,
        });
        assert!(script(&r).unwrap_err().contains("/usr/local/bin/x"));
        r.mounts[0].container = "relative".into();
        assert!(script(&r).is_err());
    }
}
