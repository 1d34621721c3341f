//! Scanner mode: run nuclei for one `NucleiScan` and write the result into
//! its status. The same code runs in the scanner Job's pod and, in sync mode,
//! inside the operator.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;
use kube::api::Api;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command;
use tracing::{info, warn};

use super::command::{Outcome, ScanOptions, classify_exit, nuclei_args, nuclei_env};
use super::history::{self, Changes, Previous};
use super::jsonl::{ParseStats, read_findings};
use super::report::{Report, ReportLimits};
use crate::api::{NucleiScan, ScanKey, Severity, TemplateSource};
use crate::git::GitSource;
use crate::jobs::RunToken;
use crate::scan::fence::{RunCheck, check_run, write_if};
use crate::scan::phase::{next_retry_count, retries};
use crate::scan::status::{Transition, time};
use crate::target_policy::TargetPolicy;

/// Defaults the scanner applies where the scan's spec is silent.
#[derive(Clone, Debug)]
pub struct ScannerDefaults {
    /// Built-in templates (`NUCLEI_TEMPLATES_PATH`).
    pub templates_path: PathBuf,
    /// ConfigMap-mounted and git-cloned template directories.
    pub extra_template_dirs: Vec<PathBuf>,
    /// The git sources cloned into `/templates/git/<i>`, in that order.
    pub git_sources: Vec<GitSource>,
    /// Which of them the operator's template cache holds: unpacked into
    /// `/templates/git/<i>` by the scanner instead of cloned.
    pub template_cache: Option<crate::template_cache::CacheEnv>,
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
    /// INTERACTSH_URL: the interactsh server for OAST templates; `None`
    /// turns interactsh off.
    pub interactsh_url: Option<String>,
    /// MAX_RATE_LIMIT: most requests per second a scan may send; `None`
    /// leaves nuclei's own default and the scan's setting.
    pub max_rate_limit: Option<u32>,
    /// Which hosts and addresses the scan may reach.
    pub target_policy: TargetPolicy,
}

/// How a scan run ended.
#[derive(Clone, Debug, PartialEq)]
pub enum RunResult {
    /// Recorded as Completed.
    Completed { findings: i64 },
    /// Recorded as Failed.
    Failed { message: String },
    /// Nothing recorded: the scan no longer expects this run (deleted,
    /// re-created, its spec changed, or the run was ended by the operator).
    MovedOn { why: String },
}

/// The run a scanner works for: the scan's uid and the run's token. Every
/// status write is fenced on them ([`check_run`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunId {
    /// `metadata.uid` of the scan.
    pub uid: String,
    /// The run's token.
    pub token: RunToken,
}

/// How long the scanner waits for the launcher's Running write to land
/// before it gives up on a run nobody recorded.
const RUNNING_WRITE_WAIT: Duration = Duration::from_secs(120);
/// The scanner stops retrying its final write this long before its Job's
/// deadline would kill it, so it can still say why it gave up.
const DEADLINE_SLACK: Duration = Duration::from_secs(10);

/// The effective nuclei options for `scan`: defaults < spec.
pub fn scan_options(
    scan: &NucleiScan,
    d: &ScannerDefaults,
    targets_file: PathBuf,
) -> Result<ScanOptions, String> {
    let spec = &scan.spec;
    // The CRD refuses these; a scan stored before that rule must not read
    // files outside the templates either.
    if let Some(bad) = spec
        .templates
        .iter()
        .chain(&spec.exclude_templates)
        .find(|t| !crate::api::is_template_path(t))
    {
        return Err(format!(
            "template {bad:?}: {}",
            crate::api::TEMPLATE_PATH_RULE_MESSAGE
        ));
    }
    let timeout = spec
        .scanner_config
        .as_ref()
        .map(|c| c.parsed_timeout())
        .transpose()?
        .flatten()
        .unwrap_or(d.timeout);
    Ok(ScanOptions {
        targets_file,
        templates: if spec.templates.is_empty() {
            d.templates.clone()
        } else {
            spec.templates.clone()
        },
        template_dirs: vec![d.templates_path.clone()],
        extra_template_dirs: cloned_dirs(
            &d.extra_template_dirs,
            Path::new(crate::jobs::GIT_TEMPLATES_DIR),
        ),
        templates_root: Some(d.templates_path.clone()),
        tags: spec.tags.clone(),
        exclude_tags: spec.exclude_tags.clone(),
        exclude_templates: spec.exclude_templates.clone(),
        severity: if spec.severity.is_empty() {
            d.severity.clone()
        } else {
            spec.severity.clone()
        },
        // The operator's cap (MAX_RATE_LIMIT) bounds what a scan may ask.
        rate_limit: match (spec.rate_limit.map(|r| r.max(1) as u32), d.max_rate_limit) {
            (Some(asked), Some(cap)) => Some(asked.min(cap)),
            (asked, cap) => asked.or(cap),
        },
        interactsh_url: d.interactsh_url.clone(),
        timeout: Some(timeout),
        request_timeout: None,
    })
}

/// How much of the end of nuclei's stderr is kept for the failure message.
const STDERR_TAIL_BYTES: usize = 8 * 1024;
/// Longest stderr line kept (and echoed); the rest of a longer line is
/// dropped unread, so one line without a newline cannot exhaust memory.
const STDERR_MAX_LINE_BYTES: usize = 4 * 1024;

/// Most bytes the whole serialized `status` of a NucleiScan may take: far
/// below etcd's ~1.5 MiB object limit, with room for spec and metadata.
pub const STATUS_BUDGET_BYTES: usize = 512 * 1024;
/// Room kept free in [`STATUS_BUDGET_BYTES`] for what the final write adds
/// besides the findings (summary, times) and for conditions the reconciler
/// writes while the scan runs.
pub const STATUS_HEADROOM_BYTES: usize = 16 * 1024;

/// Byte budget of `status.findings` for a run of `scan`: the status budget
/// minus everything else the status already holds, the most the run's
/// fingerprints take and the headroom, so the status as a whole stays under
/// [`STATUS_BUDGET_BYTES`].
pub fn findings_budget(scan: &NucleiScan) -> usize {
    let others = scan.status.as_ref().map_or(0, |status| {
        let mut status = status.clone();
        status.findings.clear();
        status.fingerprints = None;
        serde_json::to_vec(&status).map_or(0, |v| v.len())
    });
    let reserved = STATUS_HEADROOM_BYTES + history::MAX_FINGERPRINT_BYTES;
    STATUS_BUDGET_BYTES.saturating_sub(others.saturating_add(reserved))
}

/// The most memory (resident set, bytes) any finished child of this process
/// used: in a scanner pod, whose only child is nuclei, nuclei's peak.
pub fn children_peak_rss_bytes() -> Option<u64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let usage = getrusage(UsageWho::RUSAGE_CHILDREN).ok()?;
    // Linux reports kibibytes.
    u64::try_from(usage.max_rss()).ok().map(|kib| kib * 1024)
}

/// Runs the scan `namespace/name` for run `id` and records the result.
///
/// Waits for the scan to name the run as Running (the launcher writes that
/// right after creating the Job), and records nothing if the scan moves on.
/// The final write is retried with backoff until shortly before the run's
/// deadline (its timeout plus the Job's margin), so an API server outage
/// shorter than that loses no findings. Errors only when the scan could not
/// be read or its result not written in time.
pub async fn run(
    client: kube::Client,
    namespace: &str,
    name: &str,
    d: &ScannerDefaults,
    id: &RunId,
) -> Result<RunResult> {
    let api: Api<NucleiScan> = Api::namespaced(client.clone(), namespace);
    let begun = Instant::now();
    let scan = match wait_until_running(&api, name, id, begun + RUNNING_WRITE_WAIT).await? {
        Ok(scan) => scan,
        Err(why) => return Ok(moved_on(namespace, name, why)),
    };
    let timeout = scan_timeout(&scan, d);
    let deadline = begun + timeout + crate::jobs::DEADLINE_MARGIN - DEADLINE_SLACK;
    let started = Utc::now();
    let mut start = json!({"scanStartTime": time(started)});
    // jobRef's name and uid are required: add the pod only to an existing one.
    if let Some(pod) = &d.pod_name
        && scan.status.as_ref().is_some_and(|s| s.job_ref.is_some())
    {
        start["jobRef"] = json!({"podName": pod});
    }
    // A merge patch: null clears the sources of a run before this one.
    let root = Path::new(crate::jobs::GIT_TEMPLATES_DIR);
    let unpacked = match &d.template_cache {
        Some(cache) => super::cached::unpack_all(client, cache, root).await,
        None => Vec::new(),
    };
    let sources = used_sources(&d.git_sources, root, &unpacked);
    start["templateSources"] = if sources.is_empty() {
        Value::Null
    } else {
        json!(sources)
    };
    // Only informative: a failure here must not cost the scan. The scan as
    // written (or read) is where the final write starts from.
    let last = match write_if(
        &api,
        name,
        &id.uid,
        &id.token,
        &RunCheck::Current,
        Some(&scan),
        |_| start.clone(),
    )
    .await
    {
        Ok(Ok(written)) => written,
        Ok(Err(check)) => return Ok(moved_on(namespace, name, why_not(check))),
        Err(e) => {
            warn!("recording the scan's start failed: {e}");
            scan.clone()
        }
    };

    let dir = tempfile::Builder::new()
        .prefix("nuclei-scan-")
        .tempdir()
        .context("creating a work directory")?;
    let targets_file = dir.path().join("targets.txt");
    let (allowed, refused) = check_targets(&d.target_policy, &scan.spec.targets).await;
    std::fs::write(&targets_file, allowed.join("\n") + "\n")?;
    let clock = Instant::now();
    let result = match scan_options(&scan, d, targets_file) {
        Err(e) => Err(format!("invalid scanner configuration: {e}")),
        Ok(_) if allowed.is_empty() => Err(crate::events::note(&format!(
            "every target ({}) was refused by the target policy: {}",
            refused.len(),
            listed_refusals(&refused).join("; ")
        ))),
        Ok(opts) => {
            let changes = Changes::new(Previous::of(scan.status.as_ref()));
            execute(&opts, d, findings_budget(&scan), changes).await
        }
    };
    let duration = clock.elapsed().as_secs() as i64;
    let now = Utc::now();
    let retries = retries(&scan);
    let (transition, outcome) = match result {
        Ok((report, changes, stats_note)) => {
            let total = report.total();
            let mut summary = json!({
                "totalFindings": total,
                "findingsBySeverity": report.by_severity(),
                "targetsScanned": allowed.len(),
                "refusedTargets": listed_refusals(&refused),
                "durationSeconds": duration,
                "findingsTruncated": report.truncated(),
                "storedFindings": report.stored(),
                // A merge patch keeps what it does not name: the last run's
                // counts would outlive it.
                "newFindings": null,
                "unchangedFindings": null,
                "resolvedFindings": null,
                "suppressedFindings": null,
                "suppressedBySeverity": null,
                "suppressedRun": null,
            });
            if let Some(note) = stats_note {
                warn!("{note}");
            }
            let mut findings = report.into_findings();
            let status = scan.status.as_ref();
            history::first_seen(&mut findings, status, changes.previous(), time(started));
            let (counts, fingerprints) = changes.finish();
            if let Some(c) = counts {
                summary["newFindings"] = json!(c.new);
                summary["unchangedFindings"] = json!(c.unchanged);
                summary["resolvedFindings"] = json!(c.resolved);
            }
            (
                Transition::Completed {
                    findings: json!(findings),
                    summary,
                    fingerprints,
                    at: now,
                },
                RunResult::Completed { findings: total },
            )
        }
        Err(message) => (
            Transition::Failed {
                message: message.clone(),
                retry_count: next_retry_count(retries),
                at: now,
                attempt: None,
            },
            RunResult::Failed { message },
        ),
    };
    let patch = Value::Object(transition.patch());
    match write_result(&api, name, id, &patch, last, deadline).await? {
        Ok(()) => {}
        Err(why) => return Ok(moved_on(namespace, name, why)),
    }
    match &outcome {
        RunResult::Completed { findings } => {
            info!(
                namespace,
                name,
                findings,
                duration_seconds = duration,
                "scan completed"
            );
        }
        RunResult::Failed { message } => {
            warn!(namespace, name, error = %message, duration_seconds = duration, "scan failed");
        }
        RunResult::MovedOn { .. } => {}
    }
    Ok(outcome)
}

/// `sources` with the commit each clone below `root` (`<root>/<i>`) checked
/// out, or each source read from the template cache (`unpacked`, aligned
/// with `sources`) holds, for `status.templateSources`. A clone that is not
/// there failed (only the operator's repositories may, see
/// [`crate::jobs::build_job`]), and git's words say why.
fn used_sources(
    sources: &[GitSource],
    root: &Path,
    unpacked: &[Option<super::cached::Unpacked>],
) -> Vec<TemplateSource> {
    sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            if let Some(Some(got)) = unpacked.get(i) {
                return TemplateSource {
                    source: source.clone(),
                    commit: got.commit.clone(),
                    error: got.error.clone(),
                };
            }
            let dir = root.join(i.to_string());
            TemplateSource {
                source: source.clone(),
                commit: crate::git::head_commit(&dir),
                error: (!dir.exists())
                    .then(|| crate::template_cache::publish::clone_error(root, i)),
            }
        })
        .collect()
}

/// `dirs` without those inside a clone below `root` that is not there (a
/// repository of the operator's that could not be cloned); nuclei would
/// refuse to start on a missing directory.
fn cloned_dirs(dirs: &[PathBuf], root: &Path) -> Vec<PathBuf> {
    dirs.iter()
        .filter(|dir| match dir.strip_prefix(root) {
            Ok(inside) => inside
                .components()
                .next()
                .is_some_and(|clone| root.join(clone).exists()),
            Err(_) => true,
        })
        .cloned()
        .collect()
}

/// Splits `targets` into those the policy lets the scan reach and the
/// reasons for the others, resolving each host here, where nuclei runs.
async fn check_targets(policy: &TargetPolicy, targets: &[String]) -> (Vec<String>, Vec<String>) {
    // The search list of this pod's resolver, which nuclei's may use too.
    let search = std::fs::read_to_string("/etc/resolv.conf")
        .map(|conf| crate::target_policy::search_domains(&conf))
        .unwrap_or_default();
    let checks =
        futures::future::join_all(targets.iter().map(|t| policy.check_target(t, &search))).await;
    let mut allowed = Vec::new();
    let mut refused = Vec::new();
    for (target, check) in targets.iter().zip(checks) {
        match check {
            Ok(()) => allowed.push(target.clone()),
            Err(why) => {
                warn!(target, "target refused: {why}");
                refused.push(format!("{target}: {why}"));
            }
        }
    }
    (allowed, refused)
}

/// `summary.refusedTargets`: the first few refusals, each cut to fit.
fn listed_refusals(refused: &[String]) -> Vec<String> {
    refused
        .iter()
        .take(crate::api::MAX_REFUSED_LISTED)
        .map(|r| crate::events::note(r))
        .collect()
}

fn moved_on(namespace: &str, name: &str, why: String) -> RunResult {
    info!(scan = %ScanKey::new(namespace, name), why, "the scan no longer expects this run: nothing recorded");
    RunResult::MovedOn { why }
}

fn why_not(check: RunCheck) -> String {
    match check {
        RunCheck::MovedOn(why) => why,
        RunCheck::NotStarted => "the run was never recorded as Running".into(),
        RunCheck::Current => "the run is current".into(),
    }
}

/// The scan's timeout: its own, else the scanner's default.
fn scan_timeout(scan: &NucleiScan, d: &ScannerDefaults) -> Duration {
    scan.spec
        .scanner_config
        .as_ref()
        .and_then(|c| c.parsed_timeout().ok().flatten())
        .unwrap_or(d.timeout)
}

/// Delay after failed attempt `attempt` of a status read or write: doubling
/// from 0.5 s up to 10 s.
fn retry_delay(attempt: u32) -> Duration {
    crate::duration::doubling(Duration::from_millis(500), attempt, Duration::from_secs(10))
}

/// Reads the scan until it names run `id` as Running. `Ok(Err(why))` when
/// it has moved on, or still does not name the run at `wait_until`.
async fn wait_until_running(
    api: &Api<NucleiScan>,
    name: &str,
    id: &RunId,
    wait_until: Instant,
) -> Result<Result<NucleiScan, String>> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let delay = retry_delay(attempt);
        let check = match api.get_opt(name).await {
            Ok(None) => return Ok(Err("the scan was deleted".into())),
            Ok(Some(scan)) => match check_run(&scan, &id.uid, &id.token) {
                RunCheck::Current => return Ok(Ok(scan)),
                check => check,
            },
            Err(e) if Instant::now() + delay < wait_until => {
                warn!("reading the scan failed: {e}");
                RunCheck::NotStarted
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("reading NucleiScan {name}")));
            }
        };
        match check {
            RunCheck::NotStarted if Instant::now() + delay < wait_until => {}
            check => return Ok(Err(why_not(check))),
        }
        tokio::time::sleep(delay).await;
    }
}

/// Writes the result, retrying with backoff until `deadline`. `Ok(Err(why))`
/// when the scan no longer expects the run (nothing written).
async fn write_result(
    api: &Api<NucleiScan>,
    name: &str,
    id: &RunId,
    patch: &Value,
    last: NucleiScan,
    deadline: Instant,
) -> Result<Result<(), String>> {
    let mut attempt = 0;
    let mut known = Some(last);
    loop {
        attempt += 1;
        let delay = retry_delay(attempt);
        let error = match write_if(
            api,
            name,
            &id.uid,
            &id.token,
            &RunCheck::Current,
            known.take().as_ref(),
            |_| patch.clone(),
        )
        .await
        {
            Ok(Ok(_)) => return Ok(Ok(())),
            Ok(Err(RunCheck::MovedOn(why))) => return Ok(Err(why)),
            // Not Running this run (yet): only the launcher can change that.
            Ok(Err(check)) => anyhow::anyhow!("{}", why_not(check)),
            Err(e) => anyhow::Error::new(e),
        };
        if Instant::now() + delay >= deadline {
            return Err(error.context(format!(
                "writing the scan result: gave up after {attempt} attempts, before the run's deadline"
            )));
        }
        warn!(
            "writing the scan result failed (attempt {attempt}; retrying in {delay:?}): {error:#}"
        );
        tokio::time::sleep(delay).await;
    }
}

/// Runs nuclei, streaming its output into a [`Report`] whose findings take
/// at most `budget_bytes`; `Err` is the message for a failed scan.
async fn execute(
    opts: &ScanOptions,
    d: &ScannerDefaults,
    budget_bytes: usize,
    mut changes: Changes,
) -> Result<(Report, Changes, Option<String>), String> {
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
    let tail = tokio::spawn(stderr_tail(
        stderr,
        STDERR_MAX_LINE_BYTES,
        STDERR_TAIL_BYTES,
        |line| eprintln!("nuclei: {line}"),
    ));
    let mut report = Report::new(ReportLimits {
        budget_bytes,
        ..ReportLimits::default()
    });
    let timeout = opts.timeout.unwrap_or(Duration::from_secs(30 * 60));
    let run = async {
        let stats = read_findings(stdout, |f| {
            changes.see(&f.fingerprint);
            report.push(f);
        })
        .await;
        if stats.io_error.is_some() {
            // Its output is lost from here on: stop nuclei rather than wait
            // for a scan whose result could not be complete.
            let _ = child.start_kill();
        }
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
    let note = judge(code, &stderr_tail, &stats)?;
    Ok((report, changes, note))
}

/// Whether a finished nuclei run is a complete scan: `Ok` with an optional
/// note for the log about skipped lines, or `Err` with the failure message.
///
/// Reading nuclei's output failing part-way is a failed scan whatever the
/// exit code: the findings after the error are lost, and a clean exit would
/// otherwise pass the partial list off as complete.
fn judge(
    code: Option<i32>,
    stderr_tail: &str,
    stats: &ParseStats,
) -> Result<Option<String>, String> {
    if let Some(e) = &stats.io_error {
        return Err(format!(
            "reading nuclei's output failed after {} lines ({e}): the findings would be incomplete",
            stats.lines
        ));
    }
    let note = (stats.malformed + stats.oversized > 0).then(|| {
        format!(
            "nuclei output: {} malformed and {} oversized lines skipped (first: {:?})",
            stats.malformed, stats.oversized, stats.first_errors
        )
    });
    match classify_exit(code, stderr_tail) {
        Outcome::Completed => Ok(note),
        Outcome::NoTemplates => Err(format!(
            "nuclei loaded no templates (check templates, tags and severity filters): {}",
            last_lines(stderr_tail, 3)
        )),
        Outcome::Failed { code, reason } => Err(format!("nuclei failed (exit {code}): {reason}")),
        Outcome::Killed => Err("nuclei was killed by a signal".into()),
    }
}

/// Reads `reader` (nuclei's stderr) to its end, hands each line to `echo`,
/// and returns the last lines, at most `max_tail` bytes, joined by newlines.
///
/// A line longer than `max_line` bytes is cut there (marked with `…`) and
/// the rest of it is read and dropped, so memory stays bounded by `max_line`
/// plus `max_tail` whatever nuclei writes. Invalid UTF-8 is decoded lossily.
/// A read error ends the stream like its end does.
async fn stderr_tail<R: AsyncRead + Unpin>(
    reader: R,
    max_line: usize,
    max_tail: usize,
    mut echo: impl FnMut(&str),
) -> String {
    let mut reader = BufReader::new(reader);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut tail_bytes = 0;
    let mut line: Vec<u8> = Vec::new();
    let mut cut = false;
    let mut finish = |line: &mut Vec<u8>, cut: &mut bool| {
        let mut text = String::from_utf8_lossy(line).into_owned();
        if *cut {
            text.push('…');
        }
        line.clear();
        *cut = false;
        echo(&text);
        tail_bytes += text.len();
        tail.push_back(text);
        while tail_bytes > max_tail && tail.len() > 1 {
            tail_bytes -= tail.pop_front().map_or(0, |l| l.len());
        }
    };
    loop {
        let (used, complete) = {
            let chunk = match reader.fill_buf().await {
                Ok([]) | Err(_) => break,
                Ok(chunk) => chunk,
            };
            let newline = chunk.iter().position(|&b| b == b'\n');
            let body = &chunk[..newline.unwrap_or(chunk.len())];
            let room = max_line.saturating_sub(line.len());
            if body.len() > room {
                cut = true;
            }
            line.extend_from_slice(&body[..body.len().min(room)]);
            match newline {
                Some(i) => (i + 1, true),
                None => (chunk.len(), false),
            }
        };
        reader.consume(used);
        if complete {
            finish(&mut line, &mut cut);
        }
    }
    if !line.is_empty() || cut {
        finish(&mut line, &mut cut);
    }
    Vec::from(tail).join("\n")
}

fn last_lines(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NucleiScanStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
    use tokio::io::AsyncReadExt;

    #[test]
    fn a_read_error_on_nucleis_output_fails_the_scan_even_after_exit_zero() {
        let stats = ParseStats {
            lines: 42,
            io_error: Some("Input/output error (os error 5)".into()),
            ..ParseStats::default()
        };
        let e = judge(Some(0), "", &stats).unwrap_err();
        assert!(
            e.contains("reading nuclei's output failed after 42 lines"),
            "{e}"
        );
        assert!(e.contains("os error 5"), "{e}");
        assert!(e.contains("incomplete"), "{e}");
        // Whatever nuclei's own outcome, the lost output is what is reported.
        assert!(
            judge(None, "", &stats)
                .unwrap_err()
                .contains("reading nuclei's output")
        );
    }

    #[test]
    fn a_clean_read_and_exit_zero_is_a_completed_scan_with_a_note_on_skipped_lines() {
        assert_eq!(judge(Some(0), "", &ParseStats::default()), Ok(None));
        let stats = ParseStats {
            malformed: 2,
            ..ParseStats::default()
        };
        let note = judge(Some(0), "", &stats).unwrap().unwrap();
        assert!(note.contains("2 malformed"), "{note}");
        let e = judge(
            Some(1),
            "[FTL] Could not run nuclei: bad flag\n",
            &ParseStats::default(),
        )
        .unwrap_err();
        assert!(e.starts_with("nuclei failed (exit 1)"), "{e}");
    }

    async fn tail_of(
        input: impl AsyncRead + Unpin,
        max_line: usize,
        max_tail: usize,
    ) -> (String, Vec<String>) {
        let mut echoed = Vec::new();
        let tail = stderr_tail(input, max_line, max_tail, |l| echoed.push(l.to_owned())).await;
        (tail, echoed)
    }

    #[tokio::test]
    async fn the_stderr_tail_keeps_the_last_lines_within_its_budget() {
        let text: String = (0..100).map(|i| format!("line {i}\n")).collect();
        let (tail, echoed) = tail_of(text.as_bytes(), 64, 40).await;
        assert_eq!(echoed.len(), 100);
        assert_eq!(tail, "line 95\nline 96\nline 97\nline 98\nline 99");
        let (tail, _) = tail_of(&b"no newline at the end"[..], 64, 40).await;
        assert_eq!(tail, "no newline at the end");
    }

    #[tokio::test]
    async fn a_huge_stderr_line_is_cut_without_being_held_in_memory() {
        // 64 MiB without a newline, then a normal last line.
        let huge = tokio::io::repeat(b'x').take(64 << 20);
        let input = huge.chain(&b"\n[FTL] the reason\n"[..]);
        let (tail, echoed) = tail_of(input, 4096, 8192).await;
        assert_eq!(echoed.len(), 2);
        assert_eq!(echoed[0].len(), 4096 + '…'.len_utf8());
        assert!(echoed[0].ends_with('…'));
        assert!(tail.len() <= 8192 + 8, "{}", tail.len());
        assert!(tail.ends_with("[FTL] the reason"), "{tail:.60}");
    }

    #[test]
    fn the_operators_rate_limit_caps_what_a_scan_asks_and_applies_where_it_asks_nothing() {
        let defaults = |cap: Option<u32>| ScannerDefaults {
            git_sources: Vec::new(),
            template_cache: None,
            templates_path: "/t".into(),
            extra_template_dirs: vec![],
            timeout: Duration::from_secs(60),
            templates: vec![],
            severity: vec![],
            nuclei: "nuclei".into(),
            pod_name: None,
            interactsh_url: None,
            max_rate_limit: cap,
            target_policy: TargetPolicy::default(),
        };
        let rate = |asked: Option<i32>, cap: Option<u32>| {
            let mut scan = NucleiScan::new("s", Default::default());
            scan.spec.rate_limit = asked;
            scan_options(&scan, &defaults(cap), "/tmp/t".into())
                .unwrap()
                .rate_limit
        };
        assert_eq!(rate(Some(5000), Some(150)), Some(150));
        assert_eq!(rate(Some(20), Some(150)), Some(20));
        assert_eq!(rate(None, Some(150)), Some(150));
        assert_eq!(rate(Some(5000), None), Some(5000));
        assert_eq!(rate(None, None), None);
    }

    #[test]
    fn each_source_is_recorded_with_the_commit_its_clone_checked_out() {
        let root = tempfile::tempdir().unwrap();
        let sha = "0123456789abcdef0123456789abcdef01234567";
        std::fs::create_dir_all(root.path().join("0/.git")).unwrap();
        std::fs::write(root.path().join("0/.git/HEAD"), format!("{sha}\n")).unwrap();
        std::fs::create_dir_all(root.path().join("2/.git")).unwrap();
        let sources: Vec<GitSource> = [
            "https://h/a.git#v1:cves",
            "https://h/b.git",
            "https://h/c.git",
        ]
        .iter()
        .map(|e| GitSource::parse(e).unwrap())
        .collect();
        let used = used_sources(&sources, root.path(), &[]);
        assert_eq!(
            serde_json::to_value(&used).unwrap(),
            json!([
                {"url": "https://h/a.git", "ref": "v1", "path": "cves", "commit": sha},
                {"url": "https://h/b.git", "error": "not cloned (the log of init container git-clone-1 says why)"},
                // Cloned, but its commit cannot be read: none rather than a guess.
                {"url": "https://h/c.git"},
            ])
        );
        // The optional clone's wrapper keeps git's words: they are the error.
        std::fs::write(
            root.path().join("1.failed"),
            "Cloning into '/templates/git/1'...\nfatal: could not read from remote repository\n",
        )
        .unwrap();
        // A source read from the template cache is recorded as the cache had it.
        let cached = [
            None,
            None,
            Some(super::super::cached::Unpacked {
                commit: Some("c".repeat(40)),
                error: None,
            }),
        ];
        let used = used_sources(&sources, root.path(), &cached);
        assert_eq!(
            used[1].error.as_deref(),
            Some("not cloned: fatal: could not read from remote repository")
        );
        assert_eq!(used[2].commit, Some("c".repeat(40)));
        // Directories of the missing clone are left out, all others kept.
        let dirs: Vec<PathBuf> = [
            root.path().join("0/cves"),
            root.path().join("1"),
            root.path().join("1/http"),
            root.path().join("2"),
            PathBuf::from("/templates/configmaps/team"),
        ]
        .into();
        assert_eq!(
            cloned_dirs(&dirs, root.path()),
            [
                root.path().join("0/cves"),
                root.path().join("2"),
                PathBuf::from("/templates/configmaps/team"),
            ]
        );
    }

    #[test]
    fn the_findings_budget_leaves_room_for_the_rest_of_the_status() {
        let mut scan = NucleiScan::new("s", Default::default());
        let free = STATUS_BUDGET_BYTES - STATUS_HEADROOM_BYTES - history::MAX_FINGERPRINT_BYTES;
        assert_eq!(findings_budget(&scan), free);
        // Existing findings and fingerprints are replaced, so they do not
        // count; a large condition message does.
        let status = NucleiScanStatus {
            findings: vec![Default::default(); 1000],
            fingerprints: Some("0".repeat(history::MAX_FINGERPRINT_BYTES - 2)),
            conditions: vec![Condition {
                type_: crate::api::conditions::ANNOTATIONS_VALID.into(),
                status: "False".into(),
                reason: "InvalidAnnotation".into(),
                message: "x".repeat(100_000),
                observed_generation: None,
                last_transition_time: crate::scan::status::time(Utc::now()),
            }],
            ..NucleiScanStatus::default()
        };
        scan.status = Some(status);
        let budget = findings_budget(&scan);
        assert!(budget < free - 100_000);
        assert!(budget > free - 101_000);
    }
}
