#![forbid(unsafe_code)]
//! Load-test harness (issue #7): creates N Ingresses (or, with `--source
//! httproute`, Gateway API HTTPRoutes accepted by one Gateway per namespace)
//! across namespaces against a devcluster (or any cluster from a kubeconfig),
//! runs the operator as a host process, and measures it against the API
//! server's own create ceiling.
//!
//! Phases: ceiling (N raw creates, operator not running) → ingest (operator
//! running, N objects created, until every one has its NucleiScan) →
//! rate-limited dispatch → kill -9 and restart (queue rebuild, no duplicate
//! Jobs) → concurrency-bound dispatch (no rate limit). Prints a Markdown table
//! and JSON.
//!
//! Chaos mode (`--kills K`) replaces the phases after ingest: every scan is
//! dispatched while the operator is killed with kill -9 K times, and the run
//! fails if a scan is lost, a run has two Jobs or MaxConcurrent is exceeded
//! (see [`chaos`]).

mod apimetrics;
mod chaos;
mod cluster;
mod operator;
mod procfs;
mod report;
mod stats;
mod watch;
mod workload;

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams};

use crate::apimetrics::Requests;
use crate::cluster::{Cluster, CreateRec};
use crate::operator::Operator;
use crate::report::*;
use crate::stats::{concurrency, duplicates, handover_latencies, max_in_window, summarize};
use crate::watch::Recorder;
use crate::workload::{Shape, Source};

#[derive(Parser, Debug, Clone)]
#[command(
    about = "Load-test the nuclei-operator: N Ingresses (or HTTPRoutes), measured against the API server's create ceiling"
)]
struct Args {
    /// The kind of source object: `ingress`, or `httproute` (Gateway API
    /// HTTPRoutes; the harness installs the Gateway API CRDs, which on a
    /// `--kubeconfig` cluster needs the permission to write CRDs, creates a
    /// Gateway per namespace and writes each route's Accepted status).
    #[arg(long, value_enum, default_value_t = Source::Ingress)]
    source: Source,
    /// Number of source objects, Ingresses or HTTPRoutes (and of ceiling creates).
    #[arg(long, default_value_t = 1000)]
    ingresses: usize,
    /// Namespaces the objects are spread over.
    #[arg(long, default_value_t = 10)]
    namespaces: usize,
    /// About how many objects share one host name.
    #[arg(long, default_value_t = 4)]
    ingresses_per_host: usize,
    /// Create requests in flight in the tight create loops (ceiling and ingest).
    #[arg(long, default_value_t = 16)]
    create_concurrency: usize,
    /// MAX_CONCURRENT_SCANS of the operator.
    #[arg(long, default_value_t = 8)]
    max_concurrent: u32,
    /// JOB_RATE_LIMIT (Jobs per minute) of the first operator process.
    #[arg(long, default_value_t = 120)]
    job_rate: u32,
    /// JOB_RATE_LIMIT of the restarted operator (0 = unlimited, so that
    /// MaxConcurrent binds and slot hand-over is measured).
    #[arg(long, default_value_t = 0)]
    restart_job_rate: u32,
    /// Seconds of rate-limited dispatch, from the first Job (at least until
    /// every NucleiScan exists).
    #[arg(long, default_value_t = 90)]
    rate_window: u64,
    /// Seconds of dispatch after the restart.
    #[arg(long, default_value_t = 60)]
    concurrency_window: u64,
    /// Use the cluster of this kubeconfig instead of starting a devcluster
    /// (needs an admin: it reads the API server's /metrics).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Scanner image for `--kubeconfig` clusters (a devcluster maps its own fixture image).
    #[arg(long)]
    scanner_image: Option<String>,
    /// Operator binary; by default `target/release/nuclei-operator`, built first.
    #[arg(long)]
    operator_bin: Option<PathBuf>,
    /// Extra environment for both operator processes, `NAME=VALUE` (repeatable).
    #[arg(long = "operator-env", value_parser = parse_env)]
    operator_env: Vec<(String, String)>,
    /// Do not build the operator binary.
    #[arg(long)]
    no_build: bool,
    /// Directory for the cluster state, logs and results (a fresh temporary one by default).
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Keep the temporary state directory (logs) after the run.
    #[arg(long)]
    keep_state: bool,
    /// Write the JSON results here too.
    #[arg(long)]
    json_out: Option<PathBuf>,
    /// Append the Markdown section to this file (e.g. loadtest/RESULTS.md).
    #[arg(long)]
    results_md: Option<PathBuf>,
    /// Upper bound of every wait, seconds.
    #[arg(long, default_value_t = 900)]
    phase_timeout: u64,
    /// Chaos mode: kill -9 the operator this many times while it dispatches
    /// every scan, restarting it each time with the same settings
    /// (`--job-rate` for every process; the windows and `--restart-job-rate`
    /// do not apply). Exits non-zero if a scan is lost, a run has two Jobs or
    /// MaxConcurrent is exceeded. 0: the single restart.
    #[arg(long, default_value_t = 0)]
    kills: usize,
    /// Chaos mode: kill every this many seconds from the first Job, instead
    /// of each time another 1/(kills + 1) of the scans is done.
    #[arg(long)]
    kill_every: Option<f64>,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not NAME=VALUE"))
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn log(epoch: Instant, msg: impl AsRef<str>) {
    eprintln!(
        "[loadtest {:>7.1}s] {}",
        epoch.elapsed().as_secs_f64(),
        msg.as_ref()
    );
}

fn operator_binary(args: &Args) -> Result<PathBuf> {
    if let Some(p) = &args.operator_bin {
        return Ok(p.clone());
    }
    let root = workspace_root();
    let bin = root.join("target/release/nuclei-operator");
    if !args.no_build {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        eprintln!(
            "[loadtest] building the operator: cargo build --release -p nuclei-operator --bin nuclei-operator"
        );
        let st = std::process::Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "--release",
                "-p",
                "nuclei-operator",
                "--bin",
                "nuclei-operator",
            ])
            .status()
            .context("running cargo build")?;
        if !st.success() {
            bail!("building the operator failed ({st})");
        }
    }
    if !bin.is_file() {
        bail!(
            "{} missing (build it, or pass --operator-bin)",
            bin.display()
        );
    }
    Ok(bin)
}

fn git_describe() -> String {
    let root = workspace_root();
    let out = |args: &[&str]| {
        std::process::Command::new("git")
            .current_dir(&root)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    };
    let commit = out(&["rev-parse", "--short", "HEAD"]);
    let dirty = out(&[
        "diff",
        "--name-only",
        "HEAD",
        "--",
        "src",
        "dispatcher/src",
        "Cargo.toml",
    ]);
    let dirty: Vec<&str> = dirty.lines().map(str::trim).collect();
    if dirty.is_empty() {
        format!("git {commit}, release build")
    } else {
        format!(
            "git {commit} plus uncommitted changes in {} (work of other sessions in the same tree), release build",
            dirty.join(", ")
        )
    }
}

/// A reading taken at a phase boundary.
struct Probe {
    at: Instant,
    jiffies: (u64, u64),
    cpu: BTreeMap<String, f64>,
    requests: Requests,
}

struct Probes {
    components: Vec<(String, u32)>,
}

impl Probes {
    async fn take(&self, cluster: &Cluster, op: Option<&mut Operator>) -> Probe {
        let mut cpu = BTreeMap::new();
        for (name, pid) in &self.components {
            if let Ok(s) = procfs::proc_stats(*pid) {
                let name = match name.as_str() {
                    "kube-apiserver" => "apiserver",
                    "kube-controller" => "controller-manager",
                    other => other,
                };
                cpu.insert(name.to_string(), s.cpu_secs);
            }
        }
        if let Some(op) = op {
            cpu.insert("operator".into(), op.stats().cpu_secs);
        }
        cpu.insert("harness+kubelet".into(), procfs::self_cpu());
        Probe {
            at: Instant::now(),
            jiffies: procfs::cpu_jiffies(),
            cpu,
            requests: apimetrics::scrape(&cluster.client)
                .await
                .unwrap_or_default(),
        }
    }
}

fn phase(name: &str, a: &Probe, b: &Probe, top: usize) -> Phase {
    let reqs = b.requests.since(&a.requests);
    let busy = b.jiffies.0.saturating_sub(a.jiffies.0) as f64;
    let total = b.jiffies.1.saturating_sub(a.jiffies.1).max(1) as f64;
    let cpu = b
        .cpu
        .iter()
        .map(|(k, v)| {
            // The operator of phase b may be a new process: count from 0 then.
            let before = a.cpu.get(k).copied().unwrap_or(0.0);
            let d = if *v >= before { v - before } else { *v };
            (k.clone(), (d * 10.0).round() / 10.0)
        })
        .collect();
    Phase {
        name: name.into(),
        secs: (b.at - a.at).as_secs_f64(),
        machine_busy_pct: busy / total * 100.0,
        cpu_secs: cpu,
        requests_total: reqs.total(),
        requests_by_verb: reqs.by_verb(),
        top_requests: reqs.top(top),
    }
}

fn create_summary(recs: &[CreateRec]) -> (usize, f64, stats::Summary) {
    let failed = recs.iter().filter(|r| !r.ok).count();
    let first = recs.iter().map(|r| r.start).fold(f64::INFINITY, f64::min);
    let last = recs.iter().map(|r| r.end).fold(0.0, f64::max);
    let lat: Vec<f64> = recs.iter().map(|r| (r.end - r.start) * 1000.0).collect();
    (failed, (last - first).max(0.0), summarize(&lat))
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

#[tokio::main]
async fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,kube_client=off,kube_runtime=off".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    if args.ingresses == 0 || args.max_concurrent == 0 {
        bail!("--ingresses and --max-concurrent must be at least 1");
    }
    let command = format!(
        "cargo run -p loadtest --release -- {}",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    );
    let machine = procfs::machine();
    let operator_bin = operator_binary(&args)?;
    let operator_build = match &args.operator_bin {
        Some(p) => format!("{} (given with --operator-bin)", p.display()),
        None => git_describe(),
    };
    let started_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);

    let (_temp, dir) = match &args.state_dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            (None, d.clone())
        }
        None => {
            let t = tempfile::Builder::new()
                .prefix("nuclei-loadtest-")
                .tempdir()?;
            let d = t.path().to_owned();
            (Some(t), d)
        }
    };
    let epoch = Instant::now();
    log(epoch, format!("state directory {}", dir.display()));
    let (cluster, scanner_image, cluster_desc) = match &args.kubeconfig {
        None => {
            log(epoch, "starting the devcluster");
            let c = Cluster::start_dev(&dir, &operator_bin).await?;
            let desc = format!(
                "devcluster (etcd, kube-apiserver, kube-controller-manager {}; process kubelet) on loopback",
                "v1.37"
            );
            (c, cluster::FIXTURE_IMAGE.to_string(), desc)
        }
        Some(kc) => {
            let image = args
                .scanner_image
                .clone()
                .context("--kubeconfig needs --scanner-image (a fast scan fixture image)")?;
            let c = Cluster::external(kc).await?;
            (c, image, format!("external cluster from {}", kc.display()))
        }
    };
    let fixture = if args.kubeconfig.is_none() {
        cluster::FIXTURE.to_string()
    } else {
        format!("fixture: scanner image {scanner_image} as given (--scanner-image)")
    };
    log(epoch, "installing the NucleiScan CRD");
    cluster.install_crd().await?;
    if args.source == Source::HttpRoute {
        log(epoch, "installing the Gateway API CRDs");
        cluster.install_gateway_crds().await?;
    }
    let probes = Probes {
        components: procfs::children_named(&["etcd", "kube-apiserver", "kube-controller"]),
    };
    let run_id = format!("r{}", std::process::id());
    let shape = Shape {
        source: args.source,
        count: args.ingresses,
        namespaces: args.namespaces,
        per_host: args.ingresses_per_host,
    };
    let items = workload::plan(&shape, "lt-");
    let ceiling_items = workload::plan(&shape, "lt-ceiling-");
    let namespaces = workload::namespaces(&items);
    let ceiling_namespaces = workload::namespaces(&ceiling_items);
    let all_namespaces = [ceiling_namespaces.clone(), namespaces.clone()].concat();
    let timeout = Duration::from_secs(args.phase_timeout);
    let mut notes = Vec::new();
    let mut phases = Vec::new();
    let kinds = args.source.nouns();

    // --- Ceiling: the same N creates, operator not running.
    cluster.create_namespaces(&all_namespaces).await?;
    if args.source == Source::HttpRoute {
        cluster.create_gateways(&all_namespaces).await?;
    }
    let p0 = probes.take(&cluster, None).await;
    log(
        epoch,
        format!(
            "ceiling: creating {} {kinds} ({} in flight)",
            ceiling_items.len(),
            args.create_concurrency
        ),
    );
    let recs = cluster::create_sources(
        &cluster.client,
        &ceiling_items,
        &run_id,
        args.create_concurrency,
        epoch,
        Instant::now() + timeout,
    )
    .await;
    let p1 = probes.take(&cluster, None).await;
    phases.push(phase("ceiling (raw creates)", &p0, &p1, 6));
    let (failed, secs, latency_ms) = create_summary(&recs);
    // The operator's own minimum per object, from the same tight loop.
    let uids: std::collections::HashMap<String, String> = recs
        .iter()
        .filter(|r| r.ok)
        .map(|r| (r.key.clone(), r.uid.clone()))
        .collect();
    log(
        epoch,
        "ceiling: the operator's minimum writes (NucleiScan apply + status patch) from the same loop",
    );
    let scan_recs = cluster::apply_scans(
        &cluster.client,
        &ceiling_items,
        &uids,
        args.create_concurrency,
        epoch,
    )
    .await;
    let p1b = probes.take(&cluster, None).await;
    phases.push(phase("ceiling (scan apply + status patch)", &p1, &p1b, 6));
    let (scan_failed, scan_secs, scan_latency_ms) = create_summary(&scan_recs);
    let t_del = Instant::now();
    cluster::delete_scans(&cluster.client, &ceiling_namespaces).await?;
    cluster
        .delete_sources(args.source, &ceiling_namespaces, &run_id)
        .await?;
    let mut ceiling = Ceiling {
        creates: recs.len(),
        failed,
        secs: round2(secs),
        per_sec: (recs.len() - failed) as f64 / secs.max(1e-9),
        latency_ms,
        scan_writes: scan_recs.len(),
        scan_writes_failed: scan_failed,
        scan_writes_secs: round2(scan_secs),
        scan_writes_latency_ms: scan_latency_ms,
        delete_secs: round2(t_del.elapsed().as_secs_f64()),
    };
    ceiling.per_sec = ceiling.per_sec.round();
    log(
        epoch,
        format!(
            "ceiling: {:.1} s ({:.0}/s), {} failed",
            ceiling.secs, ceiling.per_sec, failed
        ),
    );
    cluster.check()?;

    // --- Watches, then the operator.
    let rec = Recorder::new(epoch);
    let watches = [
        rec.watch_scans(cluster.client.clone()),
        rec.watch_jobs(cluster.client.clone()),
    ];
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base_env = |rate: u32| -> Vec<(String, String)> {
        let mut env = vec![
            ("SCANNER_IMAGE".into(), scanner_image.clone()),
            (
                "MAX_CONCURRENT_SCANS".into(),
                args.max_concurrent.to_string(),
            ),
            ("JOB_RATE_LIMIT".into(), rate.to_string()),
            ("JOB_TTL_AFTER_FINISHED".into(), "3600".into()),
            // The generated hosts resolve nowhere: allowing every address
            // spares the scanners a DNS lookup per target, so the fixture
            // sends no traffic beyond the cluster.
            ("TARGET_ALLOW_CIDRS".into(), "0.0.0.0/0,::/0".into()),
        ];
        env.extend(args.operator_env.iter().cloned());
        env
    };
    let p2 = probes.take(&cluster, None).await;
    let op1_spawn_t = rec.now();
    let mut op1 = Operator::spawn(
        &operator_bin,
        &cluster.kubeconfig,
        &base_env(args.job_rate),
        &dir.join("operator-1.log"),
    )?;
    let op1_ready = op1.wait_ready(Duration::from_secs(60)).await?;
    log(
        epoch,
        format!(
            "operator 1 ready after {:.2} s (log {})",
            op1_ready.as_secs_f64(),
            op1.log.display()
        ),
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // --- Ingest.
    log(epoch, format!("ingest: creating {} {kinds}", items.len()));
    let recs = cluster::create_sources(
        &cluster.client,
        &items,
        &run_id,
        args.create_concurrency,
        epoch,
        Instant::now() + timeout,
    )
    .await;
    let (ing_failed, ing_secs, ing_lat) = create_summary(&recs);
    log(
        epoch,
        format!("ingest: {kinds} created in {ing_secs:.1} s ({ing_failed} failed)"),
    );
    let created: BTreeMap<String, f64> = recs
        .iter()
        .filter(|r| r.ok)
        .map(|r| (r.key.clone(), r.end))
        .collect();
    let first_create = recs.iter().map(|r| r.start).fold(f64::INFINITY, f64::min);
    let last_create = recs.iter().map(|r| r.end).fold(0.0, f64::max);
    let expected: Vec<&workload::Item> = items
        .iter()
        .filter(|i| i.expect_scan && created.contains_key(&i.key()))
        .collect();
    let expected_keys: HashSet<String> = expected.iter().map(|i| i.scan_key()).collect();
    let deadline = Instant::now() + timeout;
    let mut last_report = Instant::now();
    loop {
        let n = {
            let seen = rec.lock();
            expected_keys
                .iter()
                .filter(|k| seen.scans.contains_key(*k))
                .count()
        };
        if n == expected_keys.len() {
            break;
        }
        if Instant::now() > deadline {
            notes.push(format!(
                "ingest: only {n} of {} NucleiScans appeared within {}s",
                expected_keys.len(),
                args.phase_timeout
            ));
            break;
        }
        if last_report.elapsed() > Duration::from_secs(10) {
            log(
                epoch,
                format!("ingest: {n}/{} NucleiScans", expected_keys.len()),
            );
            last_report = Instant::now();
        }
        op1.check_alive()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let p3 = probes.take(&cluster, Some(&mut op1)).await;
    phases.push(phase("ingest (operator start → every scan)", &p2, &p3, 12));
    let ingest = {
        let seen = rec.lock();
        let mut lat = Vec::new();
        let mut last_scan: f64 = 0.0;
        for i in &expected {
            if let (Some(s), Some(c)) = (seen.scans.get(&i.scan_key()), created.get(&i.key())) {
                lat.push((s - c) * 1000.0);
                last_scan = last_scan.max(*s);
            }
        }
        let seen_n = lat.len();
        let unexpected = seen
            .scans
            .keys()
            .filter(|k| !expected_keys.contains(*k))
            .count();
        let latency_ms = summarize(&lat);
        let all = (seen_n == expected_keys.len()).then(|| round2(last_scan - first_create));
        let mut ratio = BTreeMap::new();
        for (k, a, b) in [
            ("p50", latency_ms.p50, ceiling.latency_ms.p50),
            ("p95", latency_ms.p95, ceiling.latency_ms.p95),
            ("p99", latency_ms.p99, ceiling.latency_ms.p99),
        ] {
            if b > 0.0 {
                ratio.insert(k.to_string(), round2(a / b));
            }
        }
        Ingest {
            ingress_creates: recs.len(),
            ingress_failed: ing_failed,
            ingress_create_secs: round2(ing_secs),
            ingress_create_latency_ms: ing_lat,
            expected_scans: expected_keys.len(),
            scans_seen: seen_n,
            missing_scans: expected_keys.len() - seen_n,
            unexpected_scans: unexpected,
            all_scans_secs: all,
            all_scans_ratio_to_ceiling: all.map(|a| round2(a / ceiling.secs.max(1e-9))),
            all_scans_ratio_to_minimum_work: all
                .map(|a| round2(a / (ceiling.secs + ceiling.scan_writes_secs).max(1e-9))),
            lag_after_last_ingress_secs: all.map(|_| round2(last_scan - last_create)),
            latency_ms,
            latency_ratio_to_ceiling_create: ratio,
        }
    };
    log(
        epoch,
        format!(
            "ingest: every NucleiScan after {} ({}× ceiling)",
            opt_s(ingest.all_scans_secs),
            ingest
                .all_scans_ratio_to_ceiling
                .map(|r| format!("{r:.2}"))
                .unwrap_or_default()
        ),
    );

    if args.kills > 0 {
        log(
            epoch,
            format!(
                "chaos: dispatching every scan, kill -9 {} times {}",
                args.kills,
                match args.kill_every {
                    Some(s) => format!("every {s:.1} s from the first Job"),
                    None => format!("at every 1/{} of the scans done", args.kills + 1),
                }
            ),
        );
        let env = base_env(args.job_rate);
        let setup = chaos::Setup {
            cluster: &cluster,
            rec: &rec,
            operator_bin: &operator_bin,
            env: &env,
            dir: &dir,
            expected: &expected_keys,
            kills: args.kills,
            kill_every: args.kill_every,
            max_concurrent: args.max_concurrent,
            label: format!("rate {}/min", args.job_rate),
            deadline: Instant::now() + timeout,
            epoch,
        };
        let (ch, operators) = chaos::run(setup, op1, round2(op1_ready.as_secs_f64())).await?;
        let p4 = probes.take(&cluster, None).await;
        let name = format!(
            "chaos dispatch ({} × kill -9 → every scan Completed)",
            ch.kills.len()
        );
        let mut dispatch = phase(&name, &p3, &p4, 8);
        // Several processes: their CPU adds up, less what the first had used at p3.
        let before = p3.cpu.get("operator").copied().unwrap_or(0.0);
        let cpu: f64 = operators.iter().map(|o| o.cpu_secs).sum::<f64>() - before;
        dispatch
            .cpu_secs
            .insert("operator".into(), (cpu * 10.0).round() / 10.0);
        phases.push(dispatch);
        for w in &watches {
            w.abort();
        }
        let errors = rec.lock().errors;
        if errors > 0 {
            notes.push(format!("{errors} watch errors (the watches retried)"));
        }
        let first = ch.kills.first();
        let results = Results {
            started_at,
            machine,
            load_avg_end: procfs::load_avg(),
            operator_build,
            command,
            cluster: cluster_desc,
            fixture,
            workload: workload::describe_mix(&shape),
            config: run_config(&args),
            ceiling,
            ingest,
            operator: operators,
            phases,
            notes,
            total_secs: round2(epoch.elapsed().as_secs_f64()),
            timeline: Timeline {
                operator_1_spawned: round2(op1_spawn_t),
                operator_1_killed: first.map_or(0.0, |k| k.at),
                operator_2_spawned: first.map_or(0.0, |k| round2(k.at + k.spawn_secs)),
                concurrency_window_start: None,
                jobs: rec.jobs(),
            },
            chaos: Some(ch),
            ..Results::default()
        };
        return finish(&args, results, &dir, cluster, _temp, all_namespaces, epoch).await;
    }

    // --- Rate-limited dispatch until the window from the first Job is over.
    let deadline = Instant::now() + timeout;
    loop {
        let first_job = rec.jobs().first().map(|j| j.added).unwrap_or(op1_spawn_t);
        if rec.now() >= first_job + args.rate_window as f64 || Instant::now() > deadline {
            break;
        }
        op1.check_alive()?;
        cluster.check()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let queue_before_kill = op1.queue().await;
    let op1_metrics = op1
        .metric_lines(&[
            "nuclei_scan_jobs_created_total",
            "nuclei_reconcile_errors_total",
            "nuclei_active_scan_jobs",
        ])
        .await;
    let p4 = probes.take(&cluster, Some(&mut op1)).await;
    phases.push(phase("dispatch, rate-limited", &p3, &p4, 8));

    // --- Restart: kill -9 with the scans present, start again.
    let scans_present = rec.lock().scans.len();
    let kill_t = rec.now();
    let unfinished_at_kill = rec.jobs().iter().filter(|j| j.finished.is_none()).count();
    let op1_wall = op1.spawned.elapsed().as_secs_f64();
    let op1_sampled = op1.sampled();
    let op1_stats = op1.kill9().await;
    log(
        epoch,
        format!(
            "restart: killed operator 1 (kill -9) with {scans_present} scans, {unfinished_at_kill} Jobs unfinished"
        ),
    );
    let spawn_t = rec.now();
    let mut op2 = Operator::spawn(
        &operator_bin,
        &cluster.kubeconfig,
        &base_env(args.restart_job_rate),
        &dir.join("operator-2.log"),
    )?;
    let (mut ready, mut rebuilt, mut at_rebuild, mut first_job) = (None, None, None, None);
    let deadline = Instant::now() + Duration::from_secs(120).min(timeout);
    while Instant::now() < deadline {
        let t = op2.spawned.elapsed().as_secs_f64();
        if ready.is_none() && op2.ready().await {
            ready = Some(round2(t));
        }
        if ready.is_some()
            && rebuilt.is_none()
            && let Some(q) = op2.queue().await
            && q.sum() as usize >= scans_present
        {
            rebuilt = Some(round2(op2.spawned.elapsed().as_secs_f64()));
            at_rebuild = Some(q);
        }
        if first_job.is_none() {
            first_job = rec
                .jobs()
                .iter()
                .find(|j| j.added > spawn_t)
                .map(|j| round2(j.added - spawn_t));
        }
        if rebuilt.is_some() && first_job.is_some() {
            break;
        }
        op2.check_alive()?;
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let op2_ready = ready.unwrap_or(0.0);
    log(
        epoch,
        format!(
            "restart: ready {} / queue rebuilt {} / first new Job {}",
            opt_s(ready),
            opt_s(rebuilt),
            opt_s(first_job)
        ),
    );
    let p5 = probes.take(&cluster, Some(&mut op2)).await;
    phases.push(phase(
        "restart (kill -9 → rebuilt and dispatching)",
        &p4,
        &p5,
        8,
    ));

    // --- Concurrency-bound dispatch, from the end of the restart measurement.
    let window_t = rec.now();
    let end_t = window_t + args.concurrency_window as f64;
    while rec.now() < end_t {
        op2.check_alive()?;
        cluster.check()?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let op2_metrics = op2
        .metric_lines(&[
            "nuclei_scan_jobs_created_total",
            "nuclei_reconcile_errors_total",
            "nuclei_active_scan_jobs",
        ])
        .await;
    let p6 = probes.take(&cluster, Some(&mut op2)).await;
    phases.push(phase("dispatch after restart", &p5, &p6, 8));
    let op2_wall = op2.spawned.elapsed().as_secs_f64();
    let op2_sampled = op2.sampled();
    let op2_stats = op2.stop(Duration::from_secs(10)).await;
    let stop_t = rec.now();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for w in &watches {
        w.abort();
    }
    let listed = Api::<Job>::all(cluster.client.clone())
        .list(&ListParams::default().labels(&format!(
            "{}={}",
            nuclei_operator::api::labels::MANAGED_BY_LABEL,
            nuclei_operator::api::labels::MANAGED_BY
        )))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);

    // --- Analysis.
    let jobs = rec.jobs();
    let rate_jobs: Vec<f64> = jobs
        .iter()
        .filter(|j| j.added >= op1_spawn_t && j.added <= kill_t)
        .map(|j| j.added)
        .collect();
    let measured = stats::slope_per_minute(&rate_jobs);
    let window = match (rate_jobs.first(), rate_jobs.last()) {
        (Some(a), Some(b)) => b - a,
        _ => 0.0,
    };
    let dispatch_rate = DispatchRate {
        configured_per_minute: args.job_rate,
        window_secs: round2(window),
        jobs: rate_jobs.len(),
        measured_per_minute: measured.map(round2),
        first_to_last_per_minute: stats::rate_per_minute(&rate_jobs).map(round2),
        deviation_pct: if args.job_rate > 0 {
            measured.map(|m| round2((m / f64::from(args.job_rate) - 1.0) * 100.0))
        } else {
            None
        },
        max_jobs_in_any_60s: max_in_window(&rate_jobs, 60.0),
    };
    let limit = args.max_concurrent as usize;
    let (max_all, over_at) = stats::concurrency_detail(&jobs, limit, 0.0, f64::INFINITY);
    let (max_rate, _) = concurrency(&jobs, limit, op1_spawn_t, kill_t);
    let (max_after, _) = concurrency(&jobs, limit, spawn_t, f64::INFINITY);
    let finishes: Vec<f64> = jobs
        .iter()
        .filter_map(|j| j.finished)
        .filter(|f| *f >= window_t && *f <= end_t)
        .collect();
    let creations: Vec<f64> = jobs
        .iter()
        .map(|j| j.added)
        .filter(|a| *a >= window_t && *a <= stop_t)
        .collect();
    let handover: Vec<f64> = handover_latencies(&finishes, &creations)
        .into_iter()
        .map(|d| d * 1000.0)
        .collect();
    let durations: Vec<f64> = jobs
        .iter()
        .filter_map(|j| j.finished.map(|f| f - j.added))
        .collect();
    let concurrency = Concurrency {
        max_concurrent: args.max_concurrent,
        max_unfinished_observed: max_all,
        observations_above_limit: over_at.len(),
        above_limit_secs_after_restart: over_at.iter().map(|t| round2(t - spawn_t)).collect(),
        max_unfinished_rate_phase: max_rate,
        max_unfinished_restart_and_after: max_after,
        handover_ms: summarize(&handover),
        jobs_in_concurrency_window: jobs
            .iter()
            .filter(|j| j.added >= window_t && j.added <= end_t)
            .count(),
        concurrency_window_secs: args.concurrency_window as f64,
        job_duration_secs: summarize(&durations),
        jobs_total: jobs.len(),
        jobs_failed: jobs
            .iter()
            .filter(|j| j.outcome.as_deref().is_some_and(|o| o != "Complete"))
            .count(),
        jobs_listed_at_end: listed,
    };
    if listed != jobs.len() {
        notes.push(format!(
            "the Job watch saw {} Jobs, a list at the end found {listed}",
            jobs.len()
        ));
    }
    let errors = rec.lock().errors;
    if errors > 0 {
        notes.push(format!("{errors} watch errors (the watches retried)"));
    }
    let restart = Restart {
        scans_present,
        unfinished_jobs_at_kill: unfinished_at_kill,
        queue_before_kill,
        ready_secs: ready,
        queue_rebuilt_secs: rebuilt,
        queue_at_rebuild: at_rebuild,
        first_new_job_secs: first_job,
        duplicates: duplicates(&jobs),
    };
    let operator = vec![
        OperatorRun {
            label: format!("process 1 (rate {}/min)", args.job_rate),
            ready_secs: round2(op1_ready.as_secs_f64()),
            wall_secs: round2(op1_wall),
            peak_rss_mib: round2(op1_stats.peak_rss_mib),
            rss_mib_at_end: round2(op1_stats.rss_mib),
            cpu_secs: round2(op1_stats.cpu_secs),
            sampled: op1_sampled,
            metrics: op1_metrics,
        },
        OperatorRun {
            label: format!(
                "process 2 (after kill -9, rate {})",
                if args.restart_job_rate == 0 {
                    "unlimited".to_string()
                } else {
                    format!("{}/min", args.restart_job_rate)
                }
            ),
            ready_secs: op2_ready,
            wall_secs: round2(op2_wall),
            peak_rss_mib: round2(op2_stats.peak_rss_mib),
            rss_mib_at_end: round2(op2_stats.rss_mib),
            cpu_secs: round2(op2_stats.cpu_secs),
            sampled: op2_sampled,
            metrics: op2_metrics,
        },
    ];
    let results = Results {
        started_at,
        machine,
        load_avg_end: procfs::load_avg(),
        operator_build,
        command,
        cluster: cluster_desc,
        fixture,
        workload: workload::describe_mix(&shape),
        config: run_config(&args),
        ceiling,
        ingest,
        dispatch_rate: Some(dispatch_rate),
        concurrency: Some(concurrency),
        operator,
        restart: Some(restart),
        chaos: None,
        phases,
        targets: Vec::new(),
        notes,
        total_secs: round2(epoch.elapsed().as_secs_f64()),
        timeline: Timeline {
            operator_1_spawned: round2(op1_spawn_t),
            operator_1_killed: round2(kill_t),
            operator_2_spawned: round2(spawn_t),
            concurrency_window_start: Some(round2(window_t)),
            jobs: jobs.clone(),
        },
    };
    finish(&args, results, &dir, cluster, _temp, all_namespaces, epoch).await
}

fn run_config(args: &Args) -> RunConfig {
    RunConfig {
        source: args.source,
        ingresses: args.ingresses,
        namespaces: args.namespaces,
        ingresses_per_host: args.ingresses_per_host,
        create_concurrency: args.create_concurrency,
        max_concurrent: args.max_concurrent,
        job_rate_per_minute: args.job_rate,
        restart_job_rate_per_minute: args.restart_job_rate,
        rate_window_secs: args.rate_window,
        concurrency_window_secs: args.concurrency_window,
        kills: args.kills,
        kill_every_secs: args.kill_every,
        operator_env: args
            .operator_env
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect(),
    }
}

/// Prints and writes the results, cleans up, and fails when a chaos check failed.
async fn finish(
    args: &Args,
    mut results: Results,
    dir: &Path,
    cluster: Cluster,
    temp: Option<tempfile::TempDir>,
    namespaces: Vec<String>,
    epoch: Instant,
) -> Result<()> {
    results.targets = report::targets(&results);
    let md = report::markdown(&results);
    let json = serde_json::to_string_pretty(&results)?;
    println!("{md}");
    println!("```json\n{json}\n```");
    let json_path = args
        .json_out
        .clone()
        .unwrap_or_else(|| dir.join("results.json"));
    std::fs::write(&json_path, &json)?;
    std::fs::write(dir.join("results.md"), &md)?;
    if let Some(p) = &args.results_md {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("opening {}", p.display()))?;
        writeln!(f, "\n{md}")?;
    }
    log(epoch, format!("results: {}", json_path.display()));

    if args.kubeconfig.is_some() {
        cluster.delete_namespaces(&namespaces).await;
    }
    drop(cluster);
    let failed = results.chaos.as_ref().filter(|c| !c.failures.is_empty());
    // A failed check keeps the operator logs for whoever looks into it.
    if (args.keep_state || failed.is_some())
        && let Some(t) = temp
    {
        let kept = t.keep();
        eprintln!("[loadtest] state kept in {}", kept.display());
    }
    if let Some(c) = failed {
        for f in &c.failures {
            eprintln!("[loadtest] chaos check failed: {f}");
        }
        bail!(
            "chaos check failed ({} problems, above); results in {}",
            c.failures.len(),
            json_path.display()
        );
    }
    Ok(())
}

fn opt_s(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.2} s"))
        .unwrap_or_else(|| "not reached".into())
}
