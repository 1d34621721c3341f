//! Scanner mode: run nuclei for one `NucleiScan` and write the result into
//! its status. The same code runs in the scanner Job's pod and, in sync mode,
//! inside the operator.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use kube::api::Api;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;
use tracing::{info, warn};

use super::command::{Outcome, ScanOptions, classify_exit, nuclei_args, nuclei_env};
use super::jsonl::read_findings;
use super::report::{Report, ReportLimits};
use crate::api::{NucleiScan, ScanPhase, Severity};
use crate::scan::status::{patch_status, time};

/// Defaults the scanner applies where the scan's spec is silent.
#[derive(Clone, Debug)]
pub struct ScannerDefaults {
    /// Built-in templates (`NUCLEI_TEMPLATES_PATH`).
    pub templates_path: PathBuf,
    /// ConfigMap-mounted and git-cloned template directories.
    pub extra_template_dirs: Vec<PathBuf>,
    /// Scan timeout when the spec sets none.
    pub timeout: Duration,
    /// Templates when the spec lists none (empty: the whole templates path).
    pub templates: Vec<String>,
    /// Severities when the spec lists none (empty: all).
    pub severity: Vec<Severity>,
    /// The nuclei binary.
    pub nuclei: PathBuf,
    /// This pod's name, recorded in `status.jobRef.podName`.
    pub pod_name: Option<String>,
}

/// How a scan run ended, as recorded in the status.
#[derive(Clone, Debug, PartialEq)]
pub enum RunResult {
    Completed { findings: i64 },
    Failed { message: String },
}

/// The effective nuclei options for `scan`: defaults < spec.
pub fn scan_options(
    scan: &NucleiScan,
    d: &ScannerDefaults,
    targets_file: PathBuf,
) -> Result<ScanOptions, String> {
    let spec = &scan.spec;
    let timeout = spec
        .scanner_config
        .as_ref()
        .map(|c| c.parsed_timeout())
        .transpose()?
        .flatten()
        .unwrap_or(d.timeout);
    let mut template_dirs = vec![d.templates_path.clone()];
    template_dirs.extend(d.extra_template_dirs.iter().cloned());
    Ok(ScanOptions {
        targets_file,
        templates: if spec.templates.is_empty() {
            d.templates.clone()
        } else {
            spec.templates.clone()
        },
        template_dirs,
        templates_root: Some(d.templates_path.clone()),
        tags: spec.tags.clone(),
        exclude_tags: spec.exclude_tags.clone(),
        exclude_templates: spec.exclude_templates.clone(),
        severity: if spec.severity.is_empty() {
            d.severity.clone()
        } else {
            spec.severity.clone()
        },
        rate_limit: spec.rate_limit.map(|r| r.max(1) as u32),
        timeout: Some(timeout),
        request_timeout: None,
    })
}

const STDERR_TAIL_BYTES: usize = 8 * 1024;

/// Runs the scan `namespace/name` and records the result. Errors only when
/// the scan could not be read or its result not written.
pub async fn run(
    client: kube::Client,
    namespace: &str,
    name: &str,
    d: &ScannerDefaults,
) -> Result<RunResult> {
    let api: Api<NucleiScan> = Api::namespaced(client, namespace);
    let scan = api
        .get(name)
        .await
        .with_context(|| format!("reading NucleiScan {namespace}/{name}"))?;
    let started = Utc::now();
    let mut start = json!({"scanStartTime": time(started)});
    // jobRef's name and uid are required: add the pod only to an existing one.
    if let Some(pod) = &d.pod_name
        && scan.status.as_ref().is_some_and(|s| s.job_ref.is_some())
    {
        start["jobRef"] = json!({"podName": pod});
    }
    with_retries(|| patch_status(&api, name, None, start.clone())).await?;

    let dir = tempfile::Builder::new()
        .prefix("nuclei-scan-")
        .tempdir()
        .context("creating a work directory")?;
    let targets_file = dir.path().join("targets.txt");
    std::fs::write(&targets_file, scan.spec.targets.join("\n") + "\n")?;
    let clock = Instant::now();
    let result = match scan_options(&scan, d, targets_file) {
        Err(e) => Err(format!("invalid scanner configuration: {e}")),
        Ok(opts) => execute(&opts, d).await,
    };
    let duration = clock.elapsed().as_secs() as i64;
    let now = Utc::now();
    let retries = scan
        .status
        .as_ref()
        .and_then(|s| s.retry_count)
        .unwrap_or(0);
    let (patch, outcome) = match result {
        Ok((report, stats_note)) => {
            let total = report.total();
            let summary = json!({
                "totalFindings": total,
                "findingsBySeverity": report.by_severity(),
                "targetsScanned": scan.spec.targets.len(),
                "durationSeconds": duration,
                "findingsTruncated": report.truncated(),
                "storedFindings": report.stored(),
            });
            if let Some(note) = stats_note {
                warn!("{note}");
            }
            (
                json!({
                    "phase": ScanPhase::Completed,
                    "findings": report.into_findings(),
                    "summary": summary,
                    "completionTime": time(now),
                    "lastError": null,
                    "retryCount": 0,
                }),
                RunResult::Completed { findings: total },
            )
        }
        Err(message) => (
            json!({
                "phase": ScanPhase::Failed,
                "lastError": message,
                "completionTime": time(now),
                "retryCount": retries + 1,
            }),
            RunResult::Failed { message },
        ),
    };
    with_retries(|| patch_status(&api, name, None, patch.clone()))
        .await
        .context("writing the scan result")?;
    info!(scan = %format!("{namespace}/{name}"), ?outcome, duration, "scan finished");
    Ok(outcome)
}

async fn with_retries<T, F, Fut>(mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, kube::Error>>,
{
    let mut delay = Duration::from_millis(200);
    for attempt in 1.. {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if attempt < 6 => {
                warn!("status write failed (attempt {attempt}): {e}");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            Err(e) => return Err(e.into()),
        }
    }
    unreachable!()
}

/// Runs nuclei, streaming its output into a [`Report`]; `Err` is the
/// message for a failed scan.
async fn execute(
    opts: &ScanOptions,
    d: &ScannerDefaults,
) -> Result<(Report, Option<String>), String> {
    let mut child = Command::new(&d.nuclei)
        .args(nuclei_args(opts))
        .envs(nuclei_env(opts))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start nuclei ({}): {e}", d.nuclei.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let stderr = child.stderr.take().expect("piped stderr");
    let tail = tokio::spawn(async move {
        let mut lines = BufReader::new(stderr).lines();
        let mut tail: VecDeque<String> = VecDeque::new();
        let mut bytes = 0;
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("nuclei: {line}");
            bytes += line.len();
            tail.push_back(line);
            while bytes > STDERR_TAIL_BYTES {
                bytes -= tail.pop_front().map(|l| l.len()).unwrap_or(0);
            }
        }
        Vec::from(tail).join("\n")
    });
    let mut report = Report::new(ReportLimits::default());
    let timeout = opts.timeout.unwrap_or(Duration::from_secs(30 * 60));
    let run = async {
        let stats = read_findings(stdout, |f| report.push(f)).await;
        let status = child.wait().await;
        (stats, status)
    };
    let (stats, status) = match tokio::time::timeout(timeout, run).await {
        Ok(r) => r,
        Err(_) => {
            let _ = child.kill().await;
            return Err(format!(
                "scan timed out after {}: nuclei was stopped",
                crate::duration::format_duration(timeout)
            ));
        }
    };
    let stderr_tail = tail.await.unwrap_or_default();
    let code = status
        .map_err(|e| format!("waiting for nuclei: {e}"))?
        .code();
    let note = (stats.malformed + stats.oversized > 0).then(|| {
        format!(
            "nuclei output: {} malformed and {} oversized lines skipped (first: {:?})",
            stats.malformed, stats.oversized, stats.first_errors
        )
    });
    match classify_exit(code, &stderr_tail) {
        Outcome::Completed => Ok((report, note)),
        Outcome::NoTemplates => Err(format!(
            "nuclei loaded no templates (check templates, tags and severity filters): {}",
            last_lines(&stderr_tail, 3)
        )),
        Outcome::Failed { code, reason } => Err(format!("nuclei failed (exit {code}): {reason}")),
        Outcome::Killed => Err("nuclei was killed by a signal".into()),
    }
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}
