//! The results document (JSON) and its Markdown rendering.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::Serialize;

use crate::apimetrics::VerbResource;
use crate::chaos::Chaos;
use crate::operator::QueueTotals;
use crate::procfs::Machine;
use crate::stats::{Duplicates, Summary};

#[derive(Clone, Debug, Default, Serialize)]
pub struct RunConfig {
    /// The kind of source object (`--source`): `ingress` or `httproute`.
    pub source: crate::workload::Source,
    /// Number of source objects, whatever their kind (`--ingresses`).
    pub ingresses: usize,
    pub namespaces: usize,
    pub ingresses_per_host: usize,
    pub create_concurrency: usize,
    pub max_concurrent: u32,
    /// JOB_RATE_LIMIT (per minute) of the first operator process.
    pub job_rate_per_minute: u32,
    /// JOB_RATE_LIMIT of the restarted operator (0 = unlimited).
    pub restart_job_rate_per_minute: u32,
    pub rate_window_secs: u64,
    pub concurrency_window_secs: u64,
    /// Chaos mode: kill -9 this many times (0: the single restart).
    pub kills: usize,
    /// Chaos mode: seconds between kills (`--kill-every`); unset: by progress.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kill_every_secs: Option<f64>,
    /// Extra operator environment (`--operator-env`).
    pub operator_env: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Ceiling {
    pub creates: usize,
    pub failed: usize,
    pub secs: f64,
    pub per_sec: f64,
    pub latency_ms: Summary,
    /// The operator's minimum writes for the same objects (NucleiScan
    /// server-side apply + status patch each) from the same tight loop.
    pub scan_writes: usize,
    pub scan_writes_failed: usize,
    pub scan_writes_secs: f64,
    pub scan_writes_latency_ms: Summary,
    /// Deleting them again (delete-collection per namespace), not part of the ceiling.
    pub delete_secs: f64,
}

/// The `ingress_*` fields count the source objects of either kind (the
/// names stay, so that results of earlier runs compare).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ingest {
    pub ingress_creates: usize,
    pub ingress_failed: usize,
    pub ingress_create_secs: f64,
    pub ingress_create_latency_ms: Summary,
    pub expected_scans: usize,
    pub scans_seen: usize,
    pub missing_scans: usize,
    pub unexpected_scans: usize,
    /// First source create sent → last expected NucleiScan seen.
    pub all_scans_secs: Option<f64>,
    pub all_scans_ratio_to_ceiling: Option<f64>,
    /// all_scans_secs / (ceiling secs + scan-writes secs): against the least
    /// API work the ingest needs.
    pub all_scans_ratio_to_minimum_work: Option<f64>,
    /// Last source object created → last expected NucleiScan seen.
    pub lag_after_last_ingress_secs: Option<f64>,
    /// Source create returned → NucleiScan seen by the watch, ms.
    pub latency_ms: Summary,
    /// latency_ms percentiles divided by the ceiling's per-create percentiles.
    pub latency_ratio_to_ceiling_create: BTreeMap<String, f64>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct DispatchRate {
    pub configured_per_minute: u32,
    pub window_secs: f64,
    pub jobs: usize,
    /// Least-squares slope of Job index over creation time.
    pub measured_per_minute: Option<f64>,
    /// (Jobs − 1) / (last − first creation).
    pub first_to_last_per_minute: Option<f64>,
    pub deviation_pct: Option<f64>,
    pub max_jobs_in_any_60s: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Concurrency {
    pub max_concurrent: u32,
    /// Over the whole run (both operator processes).
    pub max_unfinished_observed: usize,
    pub observations_above_limit: usize,
    /// When they happened, seconds after the restarted operator was spawned
    /// (negative: before the restart).
    pub above_limit_secs_after_restart: Vec<f64>,
    pub max_unfinished_rate_phase: usize,
    pub max_unfinished_restart_and_after: usize,
    /// Concurrency-bound phase (no rate limit): Job finished → next Job created, ms.
    pub handover_ms: Summary,
    pub jobs_in_concurrency_window: usize,
    pub concurrency_window_secs: f64,
    /// Job created → finished (watch), seconds.
    pub job_duration_secs: Summary,
    pub jobs_total: usize,
    pub jobs_failed: usize,
    pub jobs_listed_at_end: usize,
}

/// Every scanner Job the watch saw (times in seconds since the run's epoch).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Timeline {
    pub operator_1_spawned: f64,
    pub operator_1_killed: f64,
    pub operator_2_spawned: f64,
    /// Not in chaos mode, which has no concurrency window.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_window_start: Option<f64>,
    pub jobs: Vec<crate::stats::JobObs>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct OperatorRun {
    pub label: String,
    pub ready_secs: f64,
    pub wall_secs: f64,
    pub peak_rss_mib: f64,
    pub rss_mib_at_end: f64,
    pub cpu_secs: f64,
    /// Peaks sampled every 100 ms (sockets ≈ API connections; when RSS peaked).
    pub sampled: crate::operator::Sampled,
    /// Selected lines of its /metrics at the end.
    pub metrics: Vec<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Restart {
    pub scans_present: usize,
    pub unfinished_jobs_at_kill: usize,
    pub queue_before_kill: Option<QueueTotals>,
    pub ready_secs: Option<f64>,
    pub queue_rebuilt_secs: Option<f64>,
    pub queue_at_rebuild: Option<QueueTotals>,
    pub first_new_job_secs: Option<f64>,
    pub duplicates: Duplicates,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Phase {
    pub name: String,
    pub secs: f64,
    pub machine_busy_pct: f64,
    /// CPU seconds per process (apiserver, etcd, controller-manager, operator,
    /// harness incl. the process kubelet).
    pub cpu_secs: BTreeMap<String, f64>,
    pub requests_total: u64,
    pub requests_by_verb: BTreeMap<String, u64>,
    pub top_requests: Vec<VerbResource>,
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetRow {
    pub target: String,
    pub goal: String,
    pub measured: String,
    pub met: Option<bool>,
    pub note: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Results {
    pub started_at: String,
    pub machine: Machine,
    pub load_avg_end: String,
    pub operator_build: String,
    pub command: String,
    pub cluster: String,
    pub fixture: String,
    pub workload: String,
    pub config: RunConfig,
    pub ceiling: Ceiling,
    pub ingest: Ingest,
    /// The rate window, concurrency window and single restart (not in chaos mode).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dispatch_rate: Option<DispatchRate>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
    pub operator: Vec<OperatorRun>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub restart: Option<Restart>,
    /// Chaos mode (`--kills`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<Chaos>,
    pub phases: Vec<Phase>,
    pub targets: Vec<TargetRow>,
    pub notes: Vec<String>,
    pub total_secs: f64,
    pub timeline: Timeline,
}

fn opt(v: Option<f64>, unit: &str) -> String {
    v.map(|v| format!("{v:.2} {unit}"))
        .unwrap_or_else(|| "not reached".into())
}

fn ms3(s: &Summary) -> String {
    format!("{:.0} / {:.0} / {:.0} ms", s.p50, s.p95, s.p99)
}

/// Evaluates the targets (at N = 5,000 they are binding; at other N
/// they are reported the same way).
pub fn targets(r: &Results) -> Vec<TargetRow> {
    let mut t = Vec::new();
    let ratio = r.ingest.all_scans_ratio_to_ceiling;
    t.push(TargetRow {
        target: "All NucleiScans created".into(),
        goal: "≤ 1.5× ceiling time".into(),
        measured: match (r.ingest.all_scans_secs, ratio) {
            (Some(s), Some(x)) => format!("{s:.1} s = {x:.2}× ({:.1} s ceiling)", r.ceiling.secs),
            _ => format!(
                "{} of {} scans",
                r.ingest.scans_seen, r.ingest.expected_scans
            ),
        },
        met: Some(ratio.is_some_and(|x| x <= 1.5)),
        note: match ratio {
            Some(x) if x > 1.5 => format!("missed by {:.0}%", (x / 1.5 - 1.0) * 100.0),
            _ => String::new(),
        },
    });
    if let (Some(cc), Some(dr)) = (&r.concurrency, &r.dispatch_rate) {
        t.push(TargetRow {
            target: "Unfinished scan Jobs vs MaxConcurrent".into(),
            goal: format!("0 observations above {}", cc.max_concurrent),
            measured: format!(
                "max {}; {} observations above",
                cc.max_unfinished_observed, cc.observations_above_limit
            ),
            met: Some(cc.observations_above_limit == 0 && cc.jobs_total > 0),
            note: String::new(),
        });
        let dev = dr.deviation_pct;
        t.push(TargetRow {
            target: "Job rate".into(),
            goal: format!("within 5% of {}/min", dr.configured_per_minute),
            measured: match (dr.measured_per_minute, dev) {
                (Some(m), Some(d)) => format!("{m:.1}/min ({d:+.1}%)"),
                _ => "too few Jobs".into(),
            },
            met: Some(dev.is_some_and(|d| d.abs() <= 5.0)),
            note: String::new(),
        });
        let h = &cc.handover_ms;
        t.push(TargetRow {
            target: "Job finished → next Job created".into(),
            goal: "p99 < 500 ms".into(),
            measured: format!("p50 {:.0} ms, p99 {:.0} ms (n={})", h.p50, h.p99, h.count),
            met: Some(h.count > 0 && h.p99 < 500.0),
            note: if h.p99 >= 500.0 {
                format!("missed by {:.0} ms", h.p99 - 500.0)
            } else {
                String::new()
            },
        });
    }
    let rss = r
        .operator
        .iter()
        .map(|o| o.peak_rss_mib)
        .fold(0.0, f64::max);
    t.push(TargetRow {
        target: "Operator peak RSS".into(),
        goal: "< 100 MiB".into(),
        measured: format!("{rss:.1} MiB"),
        met: Some(rss > 0.0 && rss < 100.0),
        note: String::new(),
    });
    if let Some(rs) = &r.restart {
        let worst = match (rs.queue_rebuilt_secs, rs.first_new_job_secs) {
            (Some(a), Some(b)) => Some(a.max(b)),
            _ => None,
        };
        t.push(TargetRow {
            target: "Restart: queue rebuilt and dispatching".into(),
            goal: "≤ 5 s after start-up".into(),
            measured: format!(
                "rebuilt {}, first new Job {}",
                opt(rs.queue_rebuilt_secs, "s"),
                opt(rs.first_new_job_secs, "s")
            ),
            met: Some(worst.is_some_and(|w| w <= 5.0)),
            note: match worst {
                Some(w) if w > 5.0 => format!("missed by {:.1} s", w - 5.0),
                _ => String::new(),
            },
        });
        let d = &rs.duplicates;
        t.push(TargetRow {
            target: "No duplicate Jobs".into(),
            goal: "0".into(),
            measured: format!(
                "{} runs with 2+ Jobs, {} scans with overlapping Jobs, {} scans re-run (of {} with Jobs)",
                d.duplicate_runs.len(),
                d.overlapping_scans.len(),
                d.scans_with_several_jobs,
                d.scans_with_jobs
            ),
            met: Some(
                d.duplicate_runs.is_empty()
                    && d.overlapping_scans.is_empty()
                    && d.scans_with_jobs > 0,
            ),
            note: String::new(),
        });
    }
    if let Some(c) = &r.chaos {
        let row = |target: &str, goal: String, measured: String, met: bool| TargetRow {
            target: target.into(),
            goal,
            measured,
            met: Some(met),
            note: String::new(),
        };
        t.push(row(
            "Chaos: kills made",
            c.kills_requested.to_string(),
            c.kills.len().to_string(),
            c.kills.len() >= c.kills_requested,
        ));
        t.push(row(
            "Chaos: no scan lost",
            format!("{} of {} Completed", c.scans_expected, c.scans_expected),
            format!("{} lost", c.lost.len()),
            c.lost.is_empty() && c.scans_expected > 0,
        ));
        t.push(row(
            "Chaos: no duplicate Jobs",
            "0".into(),
            format!(
                "{} runs with 2+ Jobs, {} scans with 2 Jobs unfinished at once, {} scans with several Jobs",
                c.duplicate_runs.len(),
                c.overlapping_scans.len(),
                c.several_jobs.len()
            ),
            c.duplicate_runs.is_empty() && c.overlapping_scans.is_empty(),
        ));
        t.push(row(
            "Chaos: unfinished scan Jobs vs MaxConcurrent",
            format!("0 above {}", c.max_concurrent),
            format!("max {}; {} above", c.max_unfinished, c.above_limit_at.len()),
            c.above_limit_at.is_empty() && c.jobs_total > 0,
        ));
    }
    t
}

/// The target row named `target` (rows exist only for the measures the run made).
fn find<'a>(t: &'a [TargetRow], target: &str) -> Option<&'a TargetRow> {
    t.iter().find(|r| r.target == target)
}

fn mark(m: Option<bool>) -> &'static str {
    match m {
        Some(true) => "✅ met",
        Some(false) => "❌ missed",
        None => "—",
    }
}

/// The Markdown report.
pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let m = &r.machine;
    let _ = writeln!(
        s,
        "### N = {} {} — {} — {} CPUs, {:.1} GiB\n",
        r.config.ingresses,
        r.config.source.nouns(),
        r.started_at,
        m.nproc,
        m.memory_gib
    );
    let _ = writeln!(s, "- Command: `{}`", r.command);
    let _ = writeln!(
        s,
        "- Machine: {} × {}, {:.1} GiB RAM, Linux {}; load average {} at start, {} at end \
         (the machine is shared: other builds and tests may run at the same time)",
        m.nproc, m.cpu_model, m.memory_gib, m.kernel, m.load_avg_start, r.load_avg_end
    );
    let _ = writeln!(s, "- Cluster: {}", r.cluster);
    let _ = writeln!(s, "- Operator: {}", r.operator_build);
    let _ = writeln!(s, "- {}", r.fixture);
    let _ = writeln!(s, "- Workload: {}", r.workload);
    let c = &r.config;
    let env = if c.operator_env.is_empty() {
        String::new()
    } else {
        format!(", {}", c.operator_env.join(", "))
    };
    if let Some(ch) = &r.chaos {
        let _ = writeln!(
            s,
            "- Operator settings: MAX_CONCURRENT_SCANS={}; JOB_RATE_LIMIT={}/min for every process; TARGET_CHECK_TIMEOUT=0, \
             LEADER_ELECTION=false{env}. Chaos mode: kill -9 {} times, {} (each kill once the \
             process answers /readyz), each time restarted with the same settings; every scan is dispatched, and the run \
             ends {:.0} s after every scan is Completed with no Job unfinished.",
            c.max_concurrent,
            c.job_rate_per_minute,
            ch.kills_requested,
            crate::chaos::when(ch),
            crate::chaos::SETTLE_SECS,
        );
    } else {
        let _ = writeln!(
            s,
            "- Operator settings: MAX_CONCURRENT_SCANS={}; JOB_RATE_LIMIT={}/min for the first process \
             (rate window {} s), {} after the restart (concurrency window {} s, from the end of the restart measurement); TARGET_CHECK_TIMEOUT=0, \
             LEADER_ELECTION=false{env}. Only the scans dispatched inside these windows run; the rest stay queued.",
            c.max_concurrent,
            c.job_rate_per_minute,
            c.rate_window_secs,
            if c.restart_job_rate_per_minute == 0 {
                "unlimited (0)".to_string()
            } else {
                format!("{}/min", c.restart_job_rate_per_minute)
            },
            c.concurrency_window_secs,
        );
    }
    let _ = writeln!(s, "- Total run time: {:.0} s\n", r.total_secs);

    let _ = writeln!(s, "| Measure | Result | Target | |\n|---|---|---|---|");
    let ce = &r.ceiling;
    let kind = c.source.noun();
    let _ = writeln!(
        s,
        "| API create ceiling: {} {kind} creates{}, {} in flight, operator not running | {:.1} s = {:.0}/s; per create p50/p95/p99 {} | — | |",
        ce.creates,
        match c.source {
            crate::workload::Source::Ingress => "",
            crate::workload::Source::HttpRoute => " (each with its Accepted status write)",
        },
        c.create_concurrency,
        ce.secs,
        ce.per_sec,
        ms3(&ce.latency_ms)
    );
    let _ = writeln!(
        s,
        "| The operator's minimum writes from the same loop: {} NucleiScan applies + status patches | {:.1} s ({} failed); per scan p50/p95/p99 {} | — | |",
        ce.scan_writes,
        ce.scan_writes_secs,
        ce.scan_writes_failed,
        ms3(&ce.scan_writes_latency_ms)
    );
    let ig = &r.ingest;
    let _ = writeln!(
        s,
        "| The same creates with the operator running | {:.1} s ({} failed); per create {} | — | |",
        ig.ingress_create_secs,
        ig.ingress_failed,
        ms3(&ig.ingress_create_latency_ms)
    );
    let t = targets(r);
    let t0 = &t[0];
    let _ = writeln!(
        s,
        "| Every {kind} has its NucleiScan ({} expected, {} seen, {} unexpected) | {} after the first create ({} the ceiling creates + minimum writes); last scan {} after the last {kind} | {} | {} |",
        ig.expected_scans,
        ig.scans_seen,
        ig.unexpected_scans,
        t0.measured,
        ig.all_scans_ratio_to_minimum_work
            .map(|x| format!("{x:.2}×"))
            .unwrap_or_else(|| "—".into()),
        opt(ig.lag_after_last_ingress_secs, "s"),
        t0.goal,
        mark(t0.met)
    );
    let ratio = |k: &str| {
        ig.latency_ratio_to_ceiling_create
            .get(k)
            .map(|v| format!("{v:.0}×"))
            .unwrap_or_default()
    };
    let _ = writeln!(
        s,
        "| {kind} created → NucleiScan created, p50 / p95 / p99 | {} ({} / {} / {} a ceiling create) | — | |",
        ms3(&ig.latency_ms),
        ratio("p50"),
        ratio("p95"),
        ratio("p99")
    );
    if let (Some(dr), Some(tr)) = (&r.dispatch_rate, find(&t, "Job rate")) {
        let _ = writeln!(
            s,
            "| Jobs created per minute, rate-limited phase ({} Jobs over {:.0} s) | {}; busiest 60 s: {} Jobs | {} | {} |",
            dr.jobs,
            dr.window_secs,
            tr.measured,
            dr.max_jobs_in_any_60s,
            tr.goal,
            mark(tr.met)
        );
    }
    if let (Some(cc), Some(tc), Some(th)) = (
        &r.concurrency,
        find(&t, "Unfinished scan Jobs vs MaxConcurrent"),
        find(&t, "Job finished → next Job created"),
    ) {
        let _ = writeln!(
            s,
            "| Unfinished scan Jobs (Job watch, whole run) | {}{} (rate phase max {}, restart and after max {}) | {} | {} |",
            tc.measured,
            if cc.above_limit_secs_after_restart.is_empty() {
                String::new()
            } else {
                let at: Vec<String> = cc
                    .above_limit_secs_after_restart
                    .iter()
                    .map(|t| format!("{t:+.2} s"))
                    .collect();
                format!(" at {} from the restart", at.join(", "))
            },
            cc.max_unfinished_rate_phase,
            cc.max_unfinished_restart_and_after,
            tc.goal,
            mark(tc.met)
        );
        let _ = writeln!(
            s,
            "| Job finished → next Job created, concurrency-bound phase ({} Jobs in {:.0} s) | {} | {} | {} |",
            cc.jobs_in_concurrency_window,
            cc.concurrency_window_secs,
            th.measured,
            th.goal,
            mark(th.met)
        );
        let _ = writeln!(
            s,
            "| Scan Job duration (created → finished), p50 / p99 | {:.2} / {:.2} s ({} Jobs, {} failed) | — | |",
            cc.job_duration_secs.p50, cc.job_duration_secs.p99, cc.jobs_total, cc.jobs_failed
        );
    }
    if let Some(ch) = &r.chaos {
        s.push_str(&crate::chaos::rows(ch));
        let peak = r
            .operator
            .iter()
            .enumerate()
            .max_by(|a, b| a.1.peak_rss_mib.total_cmp(&b.1.peak_rss_mib));
        if let Some((i, o)) = peak {
            let _ = writeln!(
                s,
                "| Operator, {} processes: peak RSS (VmHWM), CPU | highest {:.1} MiB (process {}); {:.1} CPU s over {:.0} s wall in all; up to {} open sockets | < 100 MiB | {} |",
                r.operator.len(),
                o.peak_rss_mib,
                i + 1,
                r.operator.iter().map(|o| o.cpu_secs).sum::<f64>(),
                r.operator.iter().map(|o| o.wall_secs).sum::<f64>(),
                r.operator
                    .iter()
                    .map(|o| o.sampled.max_sockets)
                    .max()
                    .unwrap_or(0),
                mark(Some(o.peak_rss_mib > 0.0 && o.peak_rss_mib < 100.0))
            );
        }
    }
    for o in r.operator.iter().filter(|_| r.chaos.is_none()) {
        let _ = writeln!(
            s,
            "| Operator {}: peak RSS (VmHWM), CPU | {:.1} MiB (highest sample {:.1} s after start); {:.1} CPU s over {:.0} s wall; up to {} open sockets (at {:.1} s) | < 100 MiB | {} |",
            o.label,
            o.peak_rss_mib,
            o.sampled.max_rss_at,
            o.cpu_secs,
            o.wall_secs,
            o.sampled.max_sockets,
            o.sampled.max_sockets_at,
            mark(Some(o.peak_rss_mib > 0.0 && o.peak_rss_mib < 100.0))
        );
    }
    if let (Some(rs), Some(tr), Some(td)) = (
        &r.restart,
        find(&t, "Restart: queue rebuilt and dispatching"),
        find(&t, "No duplicate Jobs"),
    ) {
        let _ = writeln!(
            s,
            "| Restart after kill -9 with {} scans ({} Jobs unfinished): ready / queue rebuilt / first new Job | {} / {} / {} | ≤ 5 s | {} |",
            rs.scans_present,
            rs.unfinished_jobs_at_kill,
            opt(rs.ready_secs, "s"),
            opt(rs.queue_rebuilt_secs, "s"),
            opt(rs.first_new_job_secs, "s"),
            mark(tr.met)
        );
        let _ = writeln!(
            s,
            "| Duplicate Jobs (by scan and `{}` label) | {} | 0 | {} |",
            nuclei_operator::api::labels::RUN_LABEL,
            td.measured,
            mark(td.met)
        );
    }

    let _ = writeln!(
        s,
        "\nAPI requests by verb (API server `apiserver_request_total`, every client: operator, scanner pods, \
         controller-manager, process kubelet, harness) and CPU seconds per phase:\n"
    );
    let mut verbs: Vec<String> = r
        .phases
        .iter()
        .flat_map(|p| p.requests_by_verb.keys().cloned())
        .collect();
    verbs.sort();
    verbs.dedup();
    let _ = write!(s, "| Phase | wall s | machine busy | requests |");
    for v in &verbs {
        let _ = write!(s, " {v} |");
    }
    let mut procs: Vec<String> = r
        .phases
        .iter()
        .flat_map(|p| p.cpu_secs.keys().cloned())
        .collect();
    procs.sort();
    procs.dedup();
    for p in &procs {
        let _ = write!(s, " CPU {p} |");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "|{}", "---|".repeat(4 + verbs.len() + procs.len()));
    for p in &r.phases {
        let _ = write!(
            s,
            "| {} | {:.1} | {:.0}% | {} |",
            p.name, p.secs, p.machine_busy_pct, p.requests_total
        );
        for v in &verbs {
            let _ = write!(s, " {} |", p.requests_by_verb.get(v).copied().unwrap_or(0));
        }
        for pr in &procs {
            let _ = write!(s, " {:.1} |", p.cpu_secs.get(pr).copied().unwrap_or(0.0));
        }
        let _ = writeln!(s);
    }
    for p in &r.phases {
        if p.top_requests.is_empty() {
            continue;
        }
        let rows: Vec<String> = p
            .top_requests
            .iter()
            .map(|v| format!("{} {} {}", v.verb, v.resource, v.count))
            .collect();
        let _ = writeln!(s, "\nTop requests, {}: {}", p.name, rows.join(", "));
    }
    if let Some(ch) = &r.chaos {
        s.push_str(&crate::chaos::details(ch));
    }
    if !r.notes.is_empty() {
        let _ = writeln!(s);
        for n in &r.notes {
            let _ = writeln!(s, "- {n}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_result_renders_with_every_target_missed() {
        let r = Results {
            dispatch_rate: Some(DispatchRate::default()),
            concurrency: Some(Concurrency::default()),
            restart: Some(Restart::default()),
            ..Results::default()
        };
        let t = targets(&r);
        assert_eq!(t.len(), 7);
        assert!(
            t.iter()
                .filter(|t| t.target != "No duplicate Jobs")
                .all(|t| t.met == Some(false))
        );
        let md = markdown(&r);
        assert!(md.contains("| Measure | Result | Target | |"), "{md}");
    }

    #[test]
    fn a_route_run_names_its_kind_where_an_ingress_run_says_ingress() {
        let mut r = Results::default();
        r.config.source = crate::workload::Source::HttpRoute;
        let md = markdown(&r);
        assert!(md.contains("Every HTTPRoute has its NucleiScan"), "{md}");
        assert!(
            md.contains("| HTTPRoute created → NucleiScan created"),
            "{md}"
        );
        assert!(!md.contains("Ingress"), "{md}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["config"]["source"], "httproute");
    }

    #[test]
    fn a_missed_ratio_says_by_how_much() {
        let mut r = Results::default();
        r.ceiling.secs = 10.0;
        r.ingest.all_scans_secs = Some(30.0);
        r.ingest.all_scans_ratio_to_ceiling = Some(3.0);
        let t = &targets(&r)[0];
        assert_eq!(t.met, Some(false));
        assert_eq!(t.note, "missed by 100%");
    }

    #[test]
    fn a_chaos_run_reports_its_checks_instead_of_the_windows() {
        let r = Results {
            chaos: Some(Chaos {
                kills_requested: 2,
                ..Chaos::default()
            }),
            ..Results::default()
        };
        let t = targets(&r);
        assert!(find(&t, "Job rate").is_none());
        assert_eq!(
            find(&t, "Chaos: kills made").map(|t| (t.measured.as_str(), t.met)),
            Some(("0", Some(false)))
        );
        let md = markdown(&r);
        assert!(md.contains("| Chaos: kill -9 of the operator"), "{md}");
        assert!(!md.contains("rate-limited phase"), "{md}");
    }
}
