//! What `/proc` tells about a process and the machine.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

/// Memory and CPU of one process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct ProcStats {
    /// Peak resident set (`VmHWM`), MiB.
    pub peak_rss_mib: f64,
    /// Current resident set (`VmRSS`), MiB.
    pub rss_mib: f64,
    /// utime + stime, seconds.
    pub cpu_secs: f64,
}

fn clock_ticks() -> f64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|t| *t > 0)
        .unwrap_or(100) as f64
}

/// utime + stime (fields 14 and 15) and, when `children`, cutime + cstime, in
/// seconds, from a `/proc/<pid>/stat` line.
pub fn parse_stat_cpu(stat: &str, children: bool) -> Option<f64> {
    // The command name may hold spaces and parentheses: fields start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest[0] is field 3 (state): field k is f[k - 3].
    let get = |k: usize| f.get(k - 3).and_then(|v| v.parse::<u64>().ok());
    let mut ticks = get(14)? + get(15)?;
    if children {
        ticks += get(16)? + get(17)?;
    }
    Some(ticks as f64 / clock_ticks())
}

fn kib_field(status: &str, name: &str) -> Option<f64> {
    status.lines().find_map(|l| {
        let v = l.strip_prefix(name)?.strip_prefix(':')?;
        v.split_whitespace().next()?.parse::<f64>().ok()
    })
}

/// Peak and current RSS and CPU of `pid`.
pub fn proc_stats(pid: u32) -> Result<ProcStats> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    Ok(ProcStats {
        peak_rss_mib: kib_field(&status, "VmHWM").unwrap_or(0.0) / 1024.0,
        rss_mib: kib_field(&status, "VmRSS").unwrap_or(0.0) / 1024.0,
        cpu_secs: parse_stat_cpu(&stat, false).unwrap_or(0.0),
    })
}

/// CPU seconds of this process (self only).
pub fn self_cpu() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| parse_stat_cpu(&s, false))
        .unwrap_or(0.0)
}

/// Direct children of this process with the given command names (`comm`,
/// at most 15 characters): the devcluster control plane.
pub fn children_named(names: &[&str]) -> Vec<(String, u32)> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let comm = head.split_once('(').map(|x| x.1).unwrap_or("");
        let ppid = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(me) && names.contains(&comm) {
            out.push((comm.to_string(), pid));
        }
    }
    out.sort();
    out
}

/// Busy and total jiffies of all CPUs (`/proc/stat` first line).
pub fn cpu_jiffies() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().next() else {
        return (0, 0);
    };
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// The machine the run is on.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub memory_gib: f64,
    pub cpu_model: String,
    pub kernel: String,
    pub load_avg_start: String,
}

pub fn machine() -> Machine {
    let read = |p: &str| std::fs::read_to_string(Path::new(p)).unwrap_or_default();
    let meminfo = read("/proc/meminfo");
    Machine {
        nproc: std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        memory_gib: kib_field(&meminfo, "MemTotal").unwrap_or(0.0) / 1024.0 / 1024.0,
        cpu_model: read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|x| x.1))
            .unwrap_or("")
            .trim()
            .to_string(),
        kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
        load_avg_start: load_avg(),
    }
}

/// The 1, 5 and 15 minute load averages.
pub fn load_avg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_is_read_after_the_command_name() {
        let stat = "1234 (my (odd) prog) S 1 2 3 4 5 6 7 8 9 10 200 100 30 20 20 0 1";
        let tck = clock_ticks();
        assert_eq!(parse_stat_cpu(stat, false), Some(300.0 / tck));
        assert_eq!(parse_stat_cpu(stat, true), Some(350.0 / tck));
    }

    #[test]
    fn this_process_has_stats() {
        let s = proc_stats(std::process::id()).unwrap();
        assert!(s.peak_rss_mib > 0.0 && s.rss_mib > 0.0);
        assert!(machine().nproc >= 1);
    }
}
