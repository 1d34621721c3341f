//! Chaos mode (`--kills K`): while the operator dispatches every scan, it is
//! killed with `kill -9` K times and restarted each time with the same
//! settings; the run goes on until every NucleiScan is Completed. Checked
//! from the harness's own Job watch and a list of the NucleiScans: no scan
//! lost, no run with two Jobs, no two unfinished Jobs of one scan, never more
//! unfinished scan Jobs than MAX_CONCURRENT_SCANS.
//!
//! Kill moments follow progress by default: kill i comes once i/(K + 1) of
//! the expected scans have a Complete Job ([`kill_due`]), so the K kills
//! spread evenly over the dispatch whatever its pace, and 1/(K + 1) of the
//! scans are still to run after the last. With `--kill-every S` they lie on a
//! time grid instead, S, 2S, … seconds after the first Job. Either way a kill
//! waits until the current process answers `/readyz`, and none is made once
//! every scan is Completed (the check then fails: fewer kills than asked).

use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use nuclei_operator::api::NucleiScan;
use serde::Serialize;

use crate::cluster::Cluster;
use crate::operator::{Operator, QueueTotals};
use crate::report::OperatorRun;
use crate::stats::{JobObs, Summary, concurrency_detail, slope_per_minute, summarize};
use crate::watch::Recorder;
use crate::{log, round2};

/// The run ends this long after the last Job event with every scan Completed
/// and no Job unfinished (and at least this long after the last restart was
/// ready), so that a late duplicate is still seen.
pub const SETTLE_SECS: f64 = 5.0;
/// "Right after a restart": this long from the restarted process's spawn.
const AFTER_RESTART_SECS: f64 = 10.0;
const METRICS: &[&str] = &[
    "nuclei_scan_jobs_created_total",
    "nuclei_reconcile_errors_total",
    "nuclei_active_scan_jobs",
];

/// One kill -9 and the restart after it. Times in seconds.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Kill {
    /// Since the run's epoch, when SIGKILL was sent.
    pub at: f64,
    /// Expected scans with a Complete Job at the kill (Job watch).
    pub scans_done_at_kill: usize,
    pub unfinished_jobs_at_kill: usize,
    /// `/queue` totals of the killed process just before.
    pub queue_at_kill: Option<QueueTotals>,
    /// Kill → the new process spawned (reaping the old one and listing the
    /// Jobs it left).
    pub spawn_secs: f64,
    /// Kill → the new process answers `/readyz`.
    pub ready_secs: Option<f64>,
    /// Kill → the first Job (watch) that was not in the list taken after the
    /// kill, i.e. created by a process started after it.
    pub first_new_job_secs: Option<f64>,
    /// Most unfinished scan Jobs in the first 10 s after the spawn.
    pub max_unfinished_after_restart: usize,
    /// Most unfinished scan Jobs from the spawn to the next kill (or the end).
    pub max_unfinished_until_next_kill: usize,
    /// Uids of the Jobs that existed once the killed process was reaped.
    #[serde(skip)]
    pub listed: HashSet<String>,
}

/// An expected scan that did not end Completed.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Lost {
    pub scan: String,
    /// `status.phase`; `none` when unset, `missing` when the NucleiScan is gone.
    pub phase: String,
    pub last_error: Option<String>,
    pub jobs: usize,
}

/// One Job of a scan that had several.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobBrief {
    pub name: String,
    pub run: String,
    pub created: f64,
    pub finished: Option<f64>,
    pub outcome: Option<String>,
    /// The operator process (1-based) that created it.
    pub process: usize,
}

/// A scan with more than one Job, and why, as far as the Jobs tell.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SeveralJobs {
    pub scan: String,
    pub why: String,
    pub jobs: Vec<JobBrief>,
}

/// The chaos figures of a run.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Chaos {
    pub kills_requested: usize,
    /// Seconds between kills (`--kill-every`); unset: kills follow progress.
    pub kill_every_secs: Option<f64>,
    pub kills: Vec<Kill>,
    pub scans_expected: usize,
    pub scans_completed: usize,
    pub lost: Vec<Lost>,
    /// Runs (namespace, scan label, run label) with more than one Job.
    pub duplicate_runs: Vec<String>,
    /// Scans that had two Jobs unfinished at once.
    pub overlapping_scans: Vec<String>,
    pub several_jobs: Vec<SeveralJobs>,
    pub jobs_total: usize,
    pub jobs_failed: usize,
    /// Job created → finished (watch), seconds.
    pub job_duration_secs: Summary,
    pub max_concurrent: u32,
    /// Over the whole run (Job watch).
    pub max_unfinished: usize,
    /// Job creations (seconds since the epoch) that took the unfinished
    /// count above MAX_CONCURRENT_SCANS.
    pub above_limit_at: Vec<f64>,
    /// First Job → every scan seen Completed.
    pub dispatch_secs: Option<f64>,
    /// Least-squares slope of Job creations over the whole dispatch.
    pub jobs_per_minute: Option<f64>,
    /// Why the check failed; empty when it passed.
    pub failures: Vec<String>,
}

/// What a chaos run needs from the harness.
pub struct Setup<'a> {
    pub cluster: &'a Cluster,
    pub rec: &'a Recorder,
    pub operator_bin: &'a Path,
    /// Environment of every operator process (the same for each restart).
    pub env: &'a [(String, String)],
    /// Operator logs go to `operator-<process>.log` here.
    pub dir: &'a Path,
    /// `namespace/name` of every NucleiScan that must end Completed.
    pub expected: &'a HashSet<String>,
    pub kills: usize,
    /// Seconds between kills from the first Job; `None`: by progress.
    pub kill_every: Option<f64>,
    pub max_concurrent: u32,
    /// Label suffix of each process's figures, e.g. `rate 120/min`.
    pub label: String,
    pub deadline: Instant,
    pub epoch: Instant,
}

/// Whether kill `n` (1-based) of `kills` is due: by time, `n × every`
/// seconds after the first Job; by progress, once `n / (kills + 1)` of the
/// `expected` scans are `done`.
pub fn kill_due(
    n: usize,
    kills: usize,
    every: Option<f64>,
    since_first_job: f64,
    done: usize,
    expected: usize,
) -> bool {
    match every {
        Some(every) => since_first_job >= every * n as f64,
        None => done * (kills + 1) >= n * expected,
    }
}

/// The operator process (1-based) that created the Job `uid`: the first
/// whose kill left it listed, or the one running now.
pub fn process_of(uid: &str, kills: &[Kill]) -> usize {
    kills
        .iter()
        .position(|k| k.listed.contains(uid))
        .map_or(kills.len() + 1, |i| i + 1)
}

/// Most unfinished Jobs at any moment of `[from, to]`, counting those live at `from`.
pub fn max_unfinished(jobs: &[JobObs], from: f64, to: f64) -> usize {
    let at_from = jobs
        .iter()
        .filter(|j| j.added <= from && j.finished.is_none_or(|f| f > from))
        .count();
    at_from.max(concurrency_detail(jobs, usize::MAX, from, to).0)
}

fn by_scan(jobs: &[JobObs]) -> BTreeMap<(String, String), Vec<&JobObs>> {
    let mut m: BTreeMap<(String, String), Vec<&JobObs>> = BTreeMap::new();
    for j in jobs {
        m.entry((j.namespace.clone(), j.scan_label.clone()))
            .or_default()
            .push(j);
    }
    for js in m.values_mut() {
        js.sort_by(|a, b| a.added.total_cmp(&b.added));
    }
    m
}

/// Why a scan's Jobs (by creation) are more than one, one reason per
/// consecutive pair, distinct reasons joined.
fn why(js: &[&JobObs]) -> String {
    let mut reasons: Vec<&str> = Vec::new();
    for w in js.windows(2) {
        let (a, b) = (w[0], w[1]);
        let r = if a.run == b.run {
            "the same run twice"
        } else if a.finished.is_none_or(|f| b.added < f) {
            "a new run while the previous Job was unfinished"
        } else if a.outcome.as_deref() == Some("Complete") {
            "a new run after a Complete Job"
        } else {
            "a retry after a failed Job"
        };
        if !reasons.contains(&r) {
            reasons.push(r);
        }
    }
    reasons.join("; ")
}

/// Duplicate runs, overlapping scans and scans with several Jobs. A run is
/// the Job's namespace, scan label and run label.
pub fn analyse_jobs(
    jobs: &[JobObs],
    kills: &[Kill],
) -> (Vec<String>, Vec<String>, Vec<SeveralJobs>) {
    let (mut dup, mut overlap, mut several) = (Vec::new(), Vec::new(), Vec::new());
    for ((ns, scan), js) in by_scan(jobs) {
        if js.len() < 2 {
            continue;
        }
        let brief = |j: &JobObs| JobBrief {
            name: j.name.clone(),
            run: j.run.clone(),
            created: round2(j.added),
            finished: j.finished.map(round2),
            outcome: j.outcome.clone(),
            process: process_of(&j.uid, kills),
        };
        let mut runs: BTreeMap<&str, Vec<&JobObs>> = BTreeMap::new();
        for j in &js {
            runs.entry(j.run.as_str()).or_default().push(j);
        }
        for (run, rj) in runs.iter().filter(|(_, rj)| rj.len() > 1) {
            let names: Vec<String> = rj
                .iter()
                .map(|j| format!("{} (process {})", j.name, process_of(&j.uid, kills)))
                .collect();
            dup.push(format!("{ns}/{scan} run {run}: {}", names.join(", ")));
        }
        if js
            .windows(2)
            .any(|w| w[0].finished.is_none_or(|f| w[1].added < f))
        {
            overlap.push(format!("{ns}/{scan}"));
        }
        several.push(SeveralJobs {
            scan: format!("{ns}/{scan}"),
            why: why(&js),
            jobs: js.iter().map(|j| brief(j)).collect(),
        });
    }
    (dup, overlap, several)
}

/// Fills in the figures derived from the Job timeline: per kill, the first
/// new Job and the unfinished maxima; the duplicate checks; the limit.
pub fn analyse(c: &mut Chaos, jobs: &[JobObs], end: f64) {
    let limit = c.max_concurrent as usize;
    let nexts: Vec<f64> = c.kills.iter().skip(1).map(|k| k.at).chain([end]).collect();
    for (k, next) in c.kills.iter_mut().zip(nexts) {
        let spawn = k.at + k.spawn_secs;
        k.first_new_job_secs = jobs
            .iter()
            .find(|j| j.added >= k.at && !k.listed.contains(&j.uid))
            .map(|j| round2(j.added - k.at));
        k.max_unfinished_after_restart =
            max_unfinished(jobs, spawn, (spawn + AFTER_RESTART_SECS).min(next));
        k.max_unfinished_until_next_kill = max_unfinished(jobs, spawn, next);
    }
    let (dup, overlap, several) = analyse_jobs(jobs, &c.kills);
    c.duplicate_runs = dup;
    c.overlapping_scans = overlap;
    c.several_jobs = several;
    let (max, over) = concurrency_detail(jobs, limit, 0.0, f64::INFINITY);
    c.max_unfinished = max;
    c.above_limit_at = over.into_iter().map(round2).collect();
    c.jobs_total = jobs.len();
    c.jobs_failed = jobs
        .iter()
        .filter(|j| j.outcome.as_deref().is_some_and(|o| o != "Complete"))
        .count();
    let durations: Vec<f64> = jobs
        .iter()
        .filter_map(|j| j.finished.map(|f| f - j.added))
        .collect();
    c.job_duration_secs = summarize(&durations);
    let times: Vec<f64> = jobs.iter().map(|j| j.added).collect();
    c.jobs_per_minute = slope_per_minute(&times).map(round2);
    c.failures = failures(c);
}

/// Why the chaos check fails; empty when it passes.
pub fn failures(c: &Chaos) -> Vec<String> {
    let mut f = Vec::new();
    if !c.lost.is_empty() {
        let some: Vec<String> = c
            .lost
            .iter()
            .take(5)
            .map(|l| {
                format!(
                    "{} ({}{}, {} Jobs)",
                    l.scan,
                    l.phase,
                    l.last_error
                        .as_deref()
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default(),
                    l.jobs
                )
            })
            .collect();
        f.push(format!(
            "{} of {} scans did not end Completed: {}{}",
            c.lost.len(),
            c.scans_expected,
            some.join(", "),
            if c.lost.len() > 5 { ", …" } else { "" }
        ));
    }
    if !c.duplicate_runs.is_empty() {
        f.push(format!(
            "{} runs have two or more Jobs: {}",
            c.duplicate_runs.len(),
            c.duplicate_runs.join("; ")
        ));
    }
    if !c.overlapping_scans.is_empty() {
        f.push(format!(
            "{} scans had two Jobs unfinished at once: {}",
            c.overlapping_scans.len(),
            c.overlapping_scans.join(", ")
        ));
    }
    if !c.above_limit_at.is_empty() {
        f.push(format!(
            "unfinished scan Jobs went above MAX_CONCURRENT_SCANS={} {} times (max {})",
            c.max_concurrent,
            c.above_limit_at.len(),
            c.max_unfinished
        ));
    }
    if c.kills.len() < c.kills_requested {
        f.push(format!(
            "only {} of {} kills were made before the run ended (every scan Completed, or the deadline; with --kill-every: lower it)",
            c.kills.len(),
            c.kills_requested
        ));
    }
    f
}

/// Every expected scan that is not Completed now, with its phase and
/// `status.lastError` (read as plain JSON, so that one status the harness's
/// types do not know cannot fail the list).
async fn not_completed(
    client: &kube::Client,
    expected: &HashSet<String>,
    jobs: &[JobObs],
) -> Result<Vec<Lost>> {
    let ar = ApiResource::erase::<NucleiScan>(&());
    let namespaces: HashSet<&str> = expected
        .iter()
        .filter_map(|k| k.split('/').next())
        .collect();
    let mut status = BTreeMap::new();
    for ns in namespaces {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &ar);
        for o in api
            .list(&ListParams::default())
            .await
            .with_context(|| format!("listing the NucleiScans in {ns}"))?
        {
            let key = format!("{ns}/{}", o.metadata.name.clone().unwrap_or_default());
            status.insert(key, o.data.get("status").cloned().unwrap_or_default());
        }
    }
    let mut lost: Vec<Lost> = expected
        .iter()
        .filter_map(|key| {
            let s = status.get(key);
            let phase = match s {
                None => "missing".to_string(),
                Some(s) => s["phase"].as_str().unwrap_or("none").to_string(),
            };
            (phase != "Completed").then(|| Lost {
                scan: key.clone(),
                phase,
                last_error: s.and_then(|s| s["lastError"].as_str()).map(str::to_string),
                jobs: jobs.iter().filter(|j| &j.scan == key).count(),
            })
        })
        .collect();
    lost.sort_by(|a, b| a.scan.cmp(&b.scan));
    Ok(lost)
}

async fn job_uids(client: &kube::Client) -> Result<HashSet<String>> {
    let api: Api<Job> = Api::all(client.clone());
    let lp = ListParams::default().labels(&format!(
        "{}={}",
        nuclei_operator::api::labels::MANAGED_BY_LABEL,
        nuclei_operator::api::labels::MANAGED_BY
    ));
    Ok(api
        .list(&lp)
        .await
        .context("listing the scan Jobs after a kill")?
        .items
        .into_iter()
        .filter_map(|j| j.metadata.uid)
        .collect())
}

async fn figures(op: &mut Operator, label: String, ready: Option<f64>, kill: bool) -> OperatorRun {
    let metrics = op.metric_lines(METRICS).await;
    let wall = op.spawned.elapsed().as_secs_f64();
    let sampled = op.sampled();
    let stats = if kill {
        op.kill9().await
    } else {
        op.stop(Duration::from_secs(10)).await
    };
    OperatorRun {
        label,
        ready_secs: ready.unwrap_or(0.0),
        wall_secs: round2(wall),
        peak_rss_mib: round2(stats.peak_rss_mib),
        rss_mib_at_end: round2(stats.rss_mib),
        cpu_secs: round2(stats.cpu_secs),
        sampled,
        metrics,
    }
}

/// Runs the dispatch with the kills, from `first` (ready, `first_ready`
/// seconds after its spawn) until every scan is Completed or the deadline;
/// stops the last process. Returns the figures and each process's run.
pub async fn run(
    s: Setup<'_>,
    first: Operator,
    first_ready: f64,
) -> Result<(Chaos, Vec<OperatorRun>)> {
    let mut c = Chaos {
        kills_requested: s.kills,
        kill_every_secs: s.kill_every.map(round2),
        scans_expected: s.expected.len(),
        max_concurrent: s.max_concurrent,
        ..Chaos::default()
    };
    let mut op = first;
    let mut operators = Vec::new();
    let (mut ready_at, mut ready_secs) = (Some(s.rec.now()), Some(first_ready));
    let mut first_job = None;
    let mut lost: Option<Vec<Lost>> = None;
    let mut last_list: Option<Instant> = None;
    let mut last_log = Instant::now();
    let mut all_done_at = None;
    loop {
        op.check_alive()?;
        s.cluster.check()?;
        let now = s.rec.now();
        if ready_at.is_none() && op.ready().await {
            ready_at = Some(now);
            if let Some(k) = c.kills.last_mut() {
                k.ready_secs = Some(round2(now - k.at));
                ready_secs = Some(round2(now - k.at - k.spawn_secs));
            }
        }
        let (done_by_jobs, unfinished, last_event, first) = {
            let seen = s.rec.lock();
            let done: HashSet<&str> = seen
                .jobs
                .values()
                .filter(|j| j.outcome.as_deref() == Some("Complete"))
                .map(|j| j.scan.as_str())
                .collect();
            (
                s.expected
                    .iter()
                    .filter(|k| done.contains(k.as_str()))
                    .count(),
                seen.jobs.values().filter(|j| j.finished.is_none()).count(),
                seen.jobs
                    .values()
                    .map(|j| j.finished.unwrap_or(j.added))
                    .fold(0.0, f64::max),
                seen.jobs.values().map(|j| j.added).reduce(f64::min),
            )
        };
        first_job = first_job.or(first);
        let list_after = if done_by_jobs >= s.expected.len() {
            1
        } else {
            5
        };
        if last_list.is_none_or(|t| t.elapsed() >= Duration::from_secs(list_after)) {
            let jobs = s.rec.jobs();
            let l = not_completed(&s.cluster.client, s.expected, &jobs).await?;
            if l.is_empty() && all_done_at.is_none() {
                all_done_at = Some(s.rec.now());
            }
            lost = Some(l);
            last_list = Some(Instant::now());
        }
        let pending = lost.as_ref().is_none_or(|l| !l.is_empty());
        let quiet_since = last_event.max(ready_at.unwrap_or(f64::INFINITY));
        if !pending && unfinished == 0 && now - quiet_since >= SETTLE_SECS {
            break;
        }
        if let Some(fj) = first_job {
            let n = c.kills.len() + 1;
            let due = kill_due(
                n,
                s.kills,
                s.kill_every,
                now - fj,
                done_by_jobs,
                s.expected.len(),
            );
            if n <= s.kills && pending && ready_at.is_some() && due {
                let queue = op.queue().await;
                let at = s.rec.now();
                let label = format!("process {n} ({})", s.label);
                operators.push(figures(&mut op, label, ready_secs, true).await);
                // Every Job the dead process created is in this list, so a
                // Job missing from it was created after the restart.
                let listed = job_uids(&s.cluster.client).await?;
                let spawned = s.rec.now();
                let log_path = s.dir.join(format!("operator-{}.log", n + 1));
                op = Operator::spawn(s.operator_bin, &s.cluster.kubeconfig, s.env, &log_path)?;
                (ready_at, ready_secs) = (None, None);
                c.kills.push(Kill {
                    at: round2(at),
                    scans_done_at_kill: done_by_jobs,
                    unfinished_jobs_at_kill: unfinished,
                    queue_at_kill: queue,
                    spawn_secs: round2(spawned - at),
                    listed,
                    ..Kill::default()
                });
                log(
                    s.epoch,
                    format!(
                        "chaos: kill {n}/{}: kill -9 with {done_by_jobs} scans done, {unfinished} Jobs unfinished; process {} logs to {}",
                        s.kills,
                        n + 1,
                        log_path.display()
                    ),
                );
            }
        }
        if Instant::now() > s.deadline {
            log(
                s.epoch,
                "chaos: deadline reached before every scan was Completed",
            );
            break;
        }
        if last_log.elapsed() >= Duration::from_secs(15) {
            log(
                s.epoch,
                format!(
                    "chaos: {done_by_jobs}/{} scans with a Complete Job, {unfinished} Jobs unfinished, {} kills",
                    s.expected.len(),
                    c.kills.len()
                ),
            );
            last_log = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let label = format!("process {} ({})", c.kills.len() + 1, s.label);
    operators.push(figures(&mut op, label, ready_secs, false).await);
    let end = s.rec.now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let jobs = s.rec.jobs();
    c.lost = not_completed(&s.cluster.client, s.expected, &jobs).await?;
    c.scans_completed = c.scans_expected - c.lost.len();
    c.dispatch_secs = match (first_job, all_done_at) {
        (Some(a), Some(b)) => Some(round2(b - a)),
        _ => None,
    };
    analyse(&mut c, &jobs, end);
    Ok((c, operators))
}

/// The chaos rows of the results table.
pub fn rows(c: &Chaos) -> String {
    let mut s = String::new();
    let ok = |b: bool| if b { "✅ met" } else { "❌ missed" };
    let firsts: Vec<f64> = c
        .kills
        .iter()
        .filter_map(|k| k.first_new_job_secs)
        .collect();
    let f = summarize(&firsts);
    let readies: Vec<f64> = c.kills.iter().filter_map(|k| k.ready_secs).collect();
    let r = summarize(&readies);
    let _ = writeln!(
        s,
        "| Chaos: kill -9 of the operator {}, restarted with the same settings | {} of {} kills | {} | {} |",
        when(c),
        c.kills.len(),
        c.kills_requested,
        c.kills_requested,
        ok(c.kills.len() >= c.kills_requested)
    );
    let _ = writeln!(
        s,
        "| Scans lost (not Completed at the end) | {} of {} ({} Completed); dispatch first Job → all Completed {}, {} Jobs/min | 0 | {} |",
        c.lost.len(),
        c.scans_expected,
        c.scans_completed,
        c.dispatch_secs
            .map(|d| format!("{d:.1} s"))
            .unwrap_or_else(|| "not reached".into()),
        c.jobs_per_minute
            .map(|m| format!("{m:.1}"))
            .unwrap_or_else(|| "—".into()),
        ok(c.lost.is_empty() && c.scans_expected > 0)
    );
    let _ = writeln!(
        s,
        "| Runs with 2+ Jobs (namespace + `{}` + `{}` labels); scans with 2 Jobs unfinished at once | {} runs; {} scans; {} scans had several Jobs (of {} Jobs) | 0 | {} |",
        nuclei_operator::api::labels::SCAN_LABEL,
        nuclei_operator::api::labels::RUN_LABEL,
        c.duplicate_runs.len(),
        c.overlapping_scans.len(),
        c.several_jobs.len(),
        c.jobs_total,
        ok(c.duplicate_runs.is_empty() && c.overlapping_scans.is_empty())
    );
    let after = c
        .kills
        .iter()
        .map(|k| k.max_unfinished_after_restart)
        .max()
        .unwrap_or(0);
    let _ = writeln!(
        s,
        "| Unfinished scan Jobs (Job watch, whole run) | max {}; {} creations above; max {} in the first {:.0} s after a restart | ≤ {} | {} |",
        c.max_unfinished,
        c.above_limit_at.len(),
        after,
        AFTER_RESTART_SECS,
        c.max_concurrent,
        ok(c.above_limit_at.is_empty())
    );
    let _ = writeln!(
        s,
        "| Kill → restarted process ready / first new Job, p50 / max | {:.2} / {:.2} s; {:.2} / {:.2} s ({} of {} restarts made a Job) | — | |",
        r.p50,
        r.max,
        f.p50,
        f.max,
        firsts.len(),
        c.kills.len()
    );
    let _ = writeln!(
        s,
        "| Scan Job duration (created → finished), p50 / p99 | {:.2} / {:.2} s ({} Jobs, {} failed) | — | |",
        c.job_duration_secs.p50, c.job_duration_secs.p99, c.jobs_total, c.jobs_failed
    );
    s
}

/// When the kills came, in words.
pub fn when(c: &Chaos) -> String {
    match c.kill_every_secs {
        Some(s) => format!("every {s:.1} s from the first Job"),
        None => format!(
            "each time another 1/{} of the scans was done",
            c.kills_requested + 1
        ),
    }
}

/// The per-kill table and the lists of lost scans and scans with several Jobs.
pub fn details(c: &Chaos) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nKills (seconds; `at` since the run's start; the rest from the kill; unfinished maxima from the restart):\n"
    );
    let _ = writeln!(
        s,
        "| # | at | scans done | Jobs unfinished | queue pending / scheduled / running | spawned | ready | first new Job | max unfinished first {:.0} s / until next kill |\n|---|---|---|---|---|---|---|---|---|",
        AFTER_RESTART_SECS
    );
    let o = |v: Option<f64>| v.map(|v| format!("{v:.2}")).unwrap_or_else(|| "—".into());
    for (i, k) in c.kills.iter().enumerate() {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {} | {} | {} | {:.2} | {} | {} | {} / {} |",
            i + 1,
            k.at,
            k.scans_done_at_kill,
            k.unfinished_jobs_at_kill,
            k.queue_at_kill
                .map(|q| format!("{} / {} / {}", q.pending, q.scheduled, q.running))
                .unwrap_or_else(|| "—".into()),
            k.spawn_secs,
            o(k.ready_secs),
            o(k.first_new_job_secs),
            k.max_unfinished_after_restart,
            k.max_unfinished_until_next_kill
        );
    }
    if !c.lost.is_empty() {
        let _ = writeln!(s, "\nScans not Completed:\n");
        for l in &c.lost {
            let _ = writeln!(
                s,
                "- {}: {} ({} Jobs){}",
                l.scan,
                l.phase,
                l.jobs,
                l.last_error
                    .as_deref()
                    .map(|e| format!(", lastError: {e}"))
                    .unwrap_or_default()
            );
        }
    }
    if !c.several_jobs.is_empty() {
        let _ = writeln!(s, "\nScans with several Jobs:\n");
        for sj in &c.several_jobs {
            let jobs: Vec<String> = sj
                .jobs
                .iter()
                .map(|j| {
                    format!(
                        "{} run {} by process {} at {:.1} s → {}",
                        j.name,
                        j.run,
                        j.process,
                        j.created,
                        j.outcome.as_deref().unwrap_or("unfinished")
                    )
                })
                .collect();
            let _ = writeln!(s, "- {}: {} — {}", sj.scan, sj.why, jobs.join("; "));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(scan: &str, run: &str, uid: &str, added: f64, finished: Option<f64>) -> JobObs {
        JobObs {
            namespace: "ns".into(),
            name: format!("{scan}-{uid}"),
            scan: format!("ns/{scan}"),
            scan_label: scan.into(),
            run: run.into(),
            uid: uid.into(),
            added,
            finished,
            outcome: finished.map(|_| "Complete".into()),
        }
    }

    fn kill(at: f64, listed: &[&str]) -> Kill {
        Kill {
            at,
            spawn_secs: 0.1,
            listed: listed.iter().map(|u| u.to_string()).collect(),
            ..Kill::default()
        }
    }

    #[test]
    fn kills_follow_progress_unless_an_interval_is_given() {
        // 3 kills over 100 scans: at 25, 50 and 75 done.
        assert!(!kill_due(1, 3, None, 0.0, 24, 100));
        assert!(kill_due(1, 3, None, 0.0, 25, 100));
        assert!(!kill_due(3, 3, None, 0.0, 74, 100));
        assert!(kill_due(3, 3, None, 0.0, 75, 100));
        assert!(!kill_due(2, 3, Some(10.0), 19.9, 100, 100));
        assert!(kill_due(2, 3, Some(10.0), 20.0, 0, 100));
    }

    #[test]
    fn a_job_belongs_to_the_first_process_whose_kill_left_it_listed() {
        let kills = [kill(10.0, &["a"]), kill(20.0, &["a", "b"])];
        assert_eq!(process_of("a", &kills), 1);
        assert_eq!(process_of("b", &kills), 2);
        assert_eq!(process_of("c", &kills), 3);
    }

    #[test]
    fn two_jobs_of_one_run_are_a_duplicate_and_a_later_run_is_only_reported() {
        let jobs = [
            job("a", "r1", "1", 1.0, Some(3.0)),
            job("a", "r1", "2", 11.0, Some(13.0)),
            job("b", "r1", "3", 1.0, None),
            job("b", "r2", "4", 2.0, Some(4.0)),
            job("c", "r1", "5", 1.0, Some(2.0)),
            job("c", "r2", "6", 5.0, Some(6.0)),
            job("d", "r1", "7", 1.0, Some(2.0)),
        ];
        let kills = [kill(10.0, &["1", "3", "4", "5", "7"])];
        let (dup, overlap, several) = analyse_jobs(&jobs, &kills);
        assert_eq!(dup, ["ns/a run r1: a-1 (process 1), a-2 (process 2)"]);
        assert_eq!(overlap, ["ns/b"]);
        let why: Vec<(&str, &str)> = several
            .iter()
            .map(|s| (s.scan.as_str(), s.why.as_str()))
            .collect();
        assert_eq!(
            why,
            [
                ("ns/a", "the same run twice"),
                ("ns/b", "a new run while the previous Job was unfinished"),
                ("ns/c", "a new run after a Complete Job"),
            ]
        );
    }

    #[test]
    fn the_first_new_job_is_the_first_one_the_kill_did_not_leave_behind() {
        // Job 2 was created by the killed process but seen only after the kill.
        let jobs = [
            job("a", "r", "1", 1.0, Some(3.0)),
            job("b", "r", "2", 10.05, Some(12.0)),
            job("c", "r", "3", 10.8, Some(13.0)),
            job("d", "r", "4", 10.9, None),
        ];
        let mut c = Chaos {
            kills_requested: 1,
            scans_expected: 4,
            max_concurrent: 2,
            kills: vec![kill(10.0, &["1", "2"])],
            ..Chaos::default()
        };
        analyse(&mut c, &jobs, 20.0);
        let k = &c.kills[0];
        assert_eq!(k.first_new_job_secs, Some(0.8));
        assert_eq!(k.max_unfinished_after_restart, 3);
        assert_eq!(c.above_limit_at, [10.9]);
        assert_eq!(c.failures.len(), 1, "{:?}", c.failures);
        assert!(c.failures[0].contains("above MAX_CONCURRENT_SCANS=2"));
    }

    #[test]
    fn lost_scans_and_missing_kills_fail_the_check() {
        let c = Chaos {
            kills_requested: 3,
            kills: vec![Kill::default()],
            scans_expected: 2,
            lost: vec![Lost {
                scan: "ns/a".into(),
                phase: "Failed".into(),
                last_error: Some("boom".into()),
                jobs: 1,
            }],
            ..Chaos::default()
        };
        let f = failures(&c);
        assert_eq!(f.len(), 2);
        assert_eq!(
            f[0],
            "1 of 2 scans did not end Completed: ns/a (Failed: boom, 1 Jobs)"
        );
        assert!(f[1].starts_with("only 1 of 3 kills were made"));
        assert!(failures(&Chaos::default()).is_empty());
    }
}
