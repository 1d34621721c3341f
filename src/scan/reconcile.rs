//! The NucleiScan reconciler: the phase machine of DESIGN §4. It never creates
//! Jobs; it decides whether, why and when the scan should run next and hands
//! that intent to the dispatcher.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatcher::{DispatcherHandle, Intent, Reason};
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{debug, info, instrument, warn};

use super::schedule::{Schedule, backoff_delay, next_run};
use super::status::{
    ANNOTATIONS_VALID, POD_NOT_STARTED, chrono, patch_status, remove_condition, set_condition, time,
};
use crate::annotations;
use crate::api::{NucleiScan, ScanPhase};
use crate::cache;
use crate::error::{Error, Result};
use crate::jobs::{self, JobOutcome};
use crate::metrics::{ErrorLabel, Metrics, OutcomeLabel, SeverityLabel};
use crate::settings::Settings;
use crate::sources::apply::ANNOTATION_ERRORS;

/// Shared by the scan reconciler and the launchers.
pub struct ScanCtx {
    pub client: kube::Client,
    pub settings: Settings,
    pub dispatch: DispatcherHandle<String>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// The operator's scan Jobs (without their pod template), filled by the
    /// scan controller's watch.
    pub jobs: Store<Job>,
    /// Finished runs already reported (events, metrics): scan key → run marker.
    reported: Mutex<HashMap<String, String>>,
}

impl ScanCtx {
    /// A context for the controllers and launchers.
    pub fn new(
        client: kube::Client,
        settings: Settings,
        dispatch: DispatcherHandle<String>,
        metrics: Arc<Metrics>,
        recorder: Recorder,
        jobs: Store<Job>,
    ) -> Self {
        ScanCtx {
            client,
            settings,
            dispatch,
            metrics,
            recorder,
            jobs,
            reported: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes an Event on the scan; failures are logged, never fatal.
    pub async fn event(&self, scan: &NucleiScan, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: "Scan".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &scan.object_ref(&())).await {
            debug!("event {reason} not recorded: {e}");
        }
    }
}

/// The dispatcher key of a scan.
pub fn scan_key(scan: &NucleiScan) -> String {
    format!(
        "{}/{}",
        scan.namespace().unwrap_or_default(),
        scan.name_any()
    )
}

/// Host names of a scan's targets (for per-host exclusivity).
pub fn target_hosts(scan: &NucleiScan) -> Vec<String> {
    let mut hosts: Vec<String> = scan
        .spec
        .targets
        .iter()
        .filter_map(|t| {
            let rest = t.split_once("://")?.1;
            let host = rest.split(['/', '?', '#']).next()?;
            // The port does not make it another host.
            let host = match host.rsplit_once(':') {
                Some((h, port)) if port.chars().all(|c| c.is_ascii_digit()) => h,
                _ => host,
            };
            Some(host.to_ascii_lowercase())
        })
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The NucleiScan controller (at most `concurrency` reconciles at once) and
/// the cache of the operator's Jobs its watch fills. Its scan store, shared
/// with the source reconcilers, holds scans without `status.findings`
/// (up to 512 KiB each; no reconciler reads them).
pub fn controller(client: kube::Client, concurrency: u16) -> (Controller<NucleiScan>, Store<Job>) {
    let (scans, scan_events) = cache::reflect(
        Api::<NucleiScan>::all(client.clone()),
        watcher::Config::default().any_semantic(),
        |scan| {
            if let Some(status) = scan.status.as_mut() {
                status.findings = Vec::new();
            }
        },
    );
    let (jobs, job_events) = cache::reflect(
        Api::<Job>::all(client),
        watcher::Config::default()
            .labels(&format!("{}={}", jobs::MANAGED_BY_LABEL, jobs::MANAGED_BY))
            .any_semantic(),
        |job| job.spec = None,
    );
    let controller = Controller::for_stream(scan_events.applied_objects(), scans)
        .owns_stream(job_events.touched_objects())
        .with_config(ControllerConfig::default().concurrency(concurrency));
    (controller, jobs)
}

/// Gives the dispatcher a slot for every unfinished scan Job left by an
/// earlier operator process, before it admits anything: otherwise a new
/// process would start up to MaxConcurrent Jobs next to the old ones before
/// the reconciler reaches their scans. Waits for both caches; returns how
/// many were adopted.
pub async fn adopt_live_jobs(ctx: &ScanCtx, scans: &Store<NucleiScan>) -> usize {
    if !(cache::ready(scans).await && cache::ready(&ctx.jobs).await) {
        return 0;
    }
    let mut adopted = 0;
    for job in ctx.jobs.state() {
        if jobs::job_finished(&job).is_some() {
            continue;
        }
        let Some(key) = job.annotations().get(jobs::SCAN_KEY_ANNOTATION) else {
            continue;
        };
        let Some((namespace, name)) = key.split_once('/') else {
            continue;
        };
        // A Job whose scan is gone is the garbage collector's: no slot.
        let Some(scan) = scans.get(&ObjectRef::new(name).within(namespace)) else {
            continue;
        };
        let run = job
            .labels()
            .get(jobs::RUN_LABEL)
            .cloned()
            .unwrap_or_default();
        if ctx
            .dispatch
            .adopt_running(key.clone(), target_hosts(&scan), run)
        {
            info!(scan = %key, job = job.name_any(), "adopted a running scan Job");
            adopted += 1;
        }
    }
    adopted
}

/// Drives `controller` with the scan reconciler.
pub async fn run(
    controller: Controller<NucleiScan>,
    ctx: Arc<ScanCtx>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    controller
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

fn error_policy(scan: Arc<NucleiScan>, err: &Error, ctx: Arc<ScanCtx>) -> Action {
    ctx.metrics
        .reconcile_errors
        .get_or_create(&ErrorLabel {
            controller: "nucleiscan".into(),
            error: err.metric_label().into(),
        })
        .inc();
    let conflict = matches!(err, Error::Kube(e) if crate::error::is_conflict(e));
    if !conflict {
        warn!(scan = %scan_key(&scan), error = %err, "scan reconcile failed; retrying");
    }
    Action::requeue(if conflict {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    })
}

/// How a Job referenced by a scan stands; `run` is the Job's run token (the
/// dispatcher payload of the run), so only that run's slot is ever freed.
enum JobState {
    Missing,
    Active(Arc<Job>),
    Finished { outcome: JobOutcome, run: String },
}

/// From the Job cache; a Job it has not seen (just created, or its watch
/// lags) is read from the API server, so a new Job is never taken for a lost
/// one. A cached Job that has finished since is reconciled again when the
/// watch delivers the change.
async fn job_state(ctx: &ScanCtx, namespace: &str, name: &str) -> Result<JobState> {
    let job = match ctx.jobs.get(&ObjectRef::new(name).within(namespace)) {
        Some(job) => Some(job),
        None => Api::<Job>::namespaced(ctx.client.clone(), namespace)
            .get_opt(name)
            .await?
            .map(Arc::new),
    };
    Ok(match job {
        None => JobState::Missing,
        Some(job) => match jobs::job_finished(&job) {
            Some(outcome) => JobState::Finished {
                outcome,
                run: job
                    .labels()
                    .get(jobs::RUN_LABEL)
                    .cloned()
                    .unwrap_or_default(),
            },
            None => JobState::Active(job),
        },
    })
}

#[instrument(skip_all, fields(scan = %scan_key(&scan)))]
async fn reconcile(scan: Arc<NucleiScan>, ctx: Arc<ScanCtx>) -> Result<Action> {
    let key = scan_key(&scan);
    let namespace = scan.namespace().unwrap_or_default();
    let name = scan.name_any();
    let api: Api<NucleiScan> = Api::namespaced(ctx.client.clone(), &namespace);
    if scan.meta().deletion_timestamp.is_some() {
        ctx.dispatch.remove(&key);
        return Ok(Action::await_change());
    }
    let now = Utc::now();
    let generation = scan.metadata.generation;
    let status = scan.status.clone().unwrap_or_default();
    let mut conditions = status.conditions.clone();
    let mut patch = serde_json::Map::new();

    // Annotation errors found by the source reconciler become a condition.
    let annotation_errors = scan.annotations().get(ANNOTATION_ERRORS).cloned();
    let changed = match &annotation_errors {
        Some(msg) => set_condition(
            &mut conditions,
            ANNOTATIONS_VALID,
            false,
            "InvalidAnnotation",
            msg,
            generation,
            now,
        ),
        None => set_condition(
            &mut conditions,
            ANNOTATIONS_VALID,
            true,
            "Valid",
            "all annotations parsed",
            generation,
            now,
        ),
    };
    let mut conditions_changed = changed;

    let spec_changed =
        status.observed_generation.is_some() && status.observed_generation != generation;
    let rescan = annotations::rescan_request(scan.annotations()).map(str::to_string);
    let new_rescan = rescan.is_some() && rescan != status.last_rescan_request;
    let token = jobs::run_token(&scan);
    let hosts = target_hosts(&scan);
    let intent = |reason| Intent::new(key.clone(), reason, token.clone()).with_hosts(hosts.clone());
    let mut requeue = None;

    // The slot of the last run frees when its Job has ended (not when the
    // status says so: the pod may still be running), whatever phase the scan
    // has moved on to meanwhile (a rescan request or spec change sets Pending
    // while the Job winds down). Only that run's slot: a reconcile of an older
    // status never frees a run admitted since.
    if status.phase != Some(ScanPhase::Running)
        && let Some(job) = &status.job_ref
        && let JobState::Finished { run, .. } = job_state(&ctx, &namespace, &job.name).await?
    {
        ctx.dispatch.finished_run(&key, &run);
    }

    if scan.spec.suspend {
        ctx.dispatch.remove(&key);
        if status.next_scheduled_time.is_some() {
            patch.insert("nextScheduledTime".into(), json!(null));
        }
    } else {
        match status.phase {
            None => {
                patch.insert("phase".into(), json!(ScanPhase::Pending));
                ctx.dispatch.enqueue(intent(if new_rescan {
                    Reason::ManualRescan
                } else {
                    Reason::NewScan
                }));
            }
            Some(ScanPhase::Pending) => {
                let reason = if new_rescan {
                    Reason::ManualRescan
                } else if spec_changed {
                    Reason::SpecChanged
                } else if status.last_scan_time.is_none() {
                    Reason::NewScan
                } else {
                    Reason::Recovered
                };
                ctx.dispatch.enqueue(intent(reason));
            }
            Some(ScanPhase::Running) if status.job_ref.is_none() => {
                // Sync mode runs scans in-process: a Running scan this process
                // does not hold was cut off by a restart.
                if ctx
                    .dispatch
                    .adopt_running(key.clone(), hosts.clone(), token.clone())
                {
                    ctx.dispatch.finished(&key);
                    patch.insert("phase".into(), json!(ScanPhase::Pending));
                    patch.insert("lastError".into(), json!("the in-process scan was interrupted by an operator restart; scanning again"));
                    ctx.dispatch.enqueue(intent(Reason::Recovered));
                }
            }
            Some(ScanPhase::Running) => {
                let job_name = status
                    .job_ref
                    .as_ref()
                    .map(|j| j.name.clone())
                    .unwrap_or_default();
                match job_state(&ctx, &namespace, &job_name).await? {
                    JobState::Missing => {
                        // Recovery: the run's Job is gone (deleted, or never created).
                        ctx.dispatch.finished(&key);
                        patch.insert("phase".into(), json!(ScanPhase::Pending));
                        patch.insert(
                            "lastError".into(),
                            json!(format!(
                                "Job {job_name:?} of the running scan is gone; scanning again"
                            )),
                        );
                        ctx.dispatch.enqueue(intent(Reason::Recovered));
                        info!("running scan lost its Job; re-queued");
                    }
                    JobState::Active(job) => {
                        let run = job
                            .labels()
                            .get(jobs::RUN_LABEL)
                            .cloned()
                            .unwrap_or_default();
                        if ctx.dispatch.adopt_running(key.clone(), hosts.clone(), run) {
                            info!(job = job_name, "adopted running scan Job");
                        }
                        conditions_changed |=
                            check_pod_started(&ctx, &scan, &job, &mut conditions, now).await;
                        requeue = Some(Duration::from_secs(30));
                    }
                    JobState::Finished { outcome, run } => {
                        ctx.dispatch.finished_run(&key, &run);
                        let message = match outcome {
                            JobOutcome::Complete => {
                                "the scanner exited without reporting a result".to_string()
                            }
                            JobOutcome::Failed { reason, message } => {
                                format!("Job {job_name} failed ({reason}): {message}")
                            }
                        };
                        patch.insert("phase".into(), json!(ScanPhase::Failed));
                        patch.insert("lastError".into(), json!(message));
                        patch.insert("completionTime".into(), json!(time(now)));
                        patch.insert(
                            "retryCount".into(),
                            json!(status.retry_count.unwrap_or(0) + 1),
                        );
                    }
                }
            }
            Some(phase @ (ScanPhase::Completed | ScanPhase::Failed)) => {
                // The slot frees when the Job has ended, not when the status says
                // so: the pod may still be running for a moment.
                report_once(&ctx, &scan, phase).await;
                remove_condition(&mut conditions, POD_NOT_STARTED)
                    .then(|| conditions_changed = true);
                let retries = status.retry_count.unwrap_or(0).max(0) as u32;
                if new_rescan || spec_changed {
                    patch.insert("phase".into(), json!(ScanPhase::Pending));
                    patch.insert("nextScheduledTime".into(), json!(null));
                    ctx.dispatch.enqueue(intent(if new_rescan {
                        Reason::ManualRescan
                    } else {
                        Reason::SpecChanged
                    }));
                } else {
                    let last = status.last_scan_time.as_ref().map(chrono);
                    let (due, reason) = if phase == ScanPhase::Failed
                        && retries <= ctx.settings.max_retries
                        && retries > 0
                    {
                        let finished = status.completion_time.as_ref().map(chrono).unwrap_or(now);
                        let delay = backoff_delay(
                            retries - 1,
                            ctx.settings.backoff_initial,
                            ctx.settings.backoff_max,
                            ctx.settings.backoff_multiplier,
                            super::schedule::DEFAULT_JITTER_FRACTION,
                            &mut rand::rng(),
                        );
                        // Keep a due time already chosen, so jitter does not move it on every reconcile.
                        let due = status
                            .next_scheduled_time
                            .as_ref()
                            .map(chrono)
                            .filter(|d| *d >= finished)
                            .unwrap_or(
                                finished + chrono::Duration::from_std(delay).unwrap_or_default(),
                            );
                        (Some(due), Reason::Retry)
                    } else {
                        let schedule = match scan.spec.schedule.as_deref().map(Schedule::parse) {
                            Some(Ok(s)) => Some(s),
                            Some(Err(e)) => {
                                conditions_changed |= set_condition(
                                    &mut conditions,
                                    "ScheduleValid",
                                    false,
                                    "InvalidSchedule",
                                    &e,
                                    generation,
                                    now,
                                );
                                None
                            }
                            None => None,
                        };
                        if schedule.is_some() || scan.spec.schedule.is_none() {
                            conditions_changed |=
                                remove_condition(&mut conditions, "ScheduleValid");
                        }
                        (
                            next_run(
                                schedule.as_ref(),
                                ctx.settings.effective_rescan_age(),
                                last,
                                now,
                            ),
                            Reason::Scheduled,
                        )
                    };
                    match due {
                        Some(due) => {
                            ctx.dispatch
                                .enqueue_at(intent(reason), instant_at(due, now));
                            if status.next_scheduled_time.as_ref().map(chrono) != Some(due) {
                                patch.insert("nextScheduledTime".into(), json!(time(due)));
                            }
                        }
                        None => {
                            ctx.dispatch.remove(&key);
                            if status.next_scheduled_time.is_some() {
                                patch.insert("nextScheduledTime".into(), json!(null));
                            }
                        }
                    }
                }
            }
        }
    }

    if conditions_changed {
        patch.insert(
            "conditions".into(),
            serde_json::to_value(&conditions).expect("conditions serialize"),
        );
    }
    if !patch.is_empty() {
        let rv = scan.resource_version();
        patch_status(&api, &name, rv.as_deref(), serde_json::Value::Object(patch)).await?;
    }
    Ok(requeue
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

/// A tokio instant for a wall-clock due time.
fn instant_at(due: DateTime<Utc>, now: DateTime<Utc>) -> tokio::time::Instant {
    let delay = (due - now).to_std().unwrap_or_default();
    tokio::time::Instant::now() + delay
}

/// Events and metrics for a finished run, once per run.
async fn report_once(ctx: &ScanCtx, scan: &NucleiScan, phase: ScanPhase) {
    let status = scan.status.clone().unwrap_or_default();
    let marker = format!(
        "{}/{:?}",
        status
            .job_ref
            .as_ref()
            .map(|j| j.name.as_str())
            .unwrap_or(""),
        status.completion_time.as_ref().map(chrono)
    );
    let key = scan_key(scan);
    {
        let mut reported = ctx.reported.lock().expect("reported lock");
        if reported.get(&key) == Some(&marker) {
            return;
        }
        let first = !reported.contains_key(&key);
        reported.insert(key.clone(), marker);
        // After a restart the last run was reported by the previous process.
        if first && ctx.finished_before_start(&status) {
            return;
        }
    }
    let outcome = if phase == ScanPhase::Completed {
        "completed"
    } else {
        "failed"
    };
    ctx.metrics
        .outcomes
        .get_or_create(&OutcomeLabel {
            outcome: outcome.into(),
        })
        .inc();
    let summary = status.summary.clone().unwrap_or_default();
    if let (Some(start), Some(end)) = (
        status.last_scan_time.as_ref(),
        status.completion_time.as_ref(),
    ) {
        let secs = (chrono(end) - chrono(start)).num_milliseconds().max(0) as f64 / 1000.0;
        ctx.metrics.job_duration.observe(secs);
    }
    if phase == ScanPhase::Completed {
        for (severity, n) in &summary.findings_by_severity {
            ctx.metrics
                .findings
                .get_or_create(&SeverityLabel {
                    severity: severity.clone(),
                })
                .inc_by((*n).max(0) as u64);
        }
        let note = format!(
            "scan completed: {} findings ({})",
            summary.total_findings,
            summary
                .findings_by_severity
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        ctx.event(scan, EventType::Normal, "ScanCompleted", note)
            .await;
    } else {
        let note = format!(
            "scan failed: {}",
            status.last_error.clone().unwrap_or_default()
        );
        ctx.event(scan, EventType::Warning, "ScanFailed", note)
            .await;
    }
}

impl ScanCtx {
    /// Whether the run in `status` finished before this process started (its
    /// events were then published by the previous leader).
    fn finished_before_start(&self, status: &crate::api::NucleiScanStatus) -> bool {
        status
            .completion_time
            .as_ref()
            .is_some_and(|t| chrono(t) < *PROCESS_START)
    }
}

static PROCESS_START: std::sync::LazyLock<DateTime<Utc>> = std::sync::LazyLock::new(Utc::now);

/// Records when this process started (call once at start-up).
pub fn mark_process_start() {
    std::sync::LazyLock::force(&PROCESS_START);
}

/// Reports a scanner pod that has not started (image pull errors, bad config)
/// as a condition and an Event. Its Job ends by its deadline.
async fn check_pod_started(
    ctx: &ScanCtx,
    scan: &NucleiScan,
    job: &Job,
    conditions: &mut Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>,
    now: DateTime<Utc>,
) -> bool {
    let Some(ns) = job.namespace() else {
        return false;
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    let lp = ListParams::default().labels(&format!("job-name={}", job.name_any()));
    let Ok(list) = pods.list(&lp).await else {
        return false;
    };
    let waiting = list.items.iter().find_map(|p| {
        let st = p.status.as_ref()?;
        st.init_container_statuses
            .iter()
            .flatten()
            .chain(st.container_statuses.iter().flatten())
            .find_map(|c| {
                let w = c.state.as_ref()?.waiting.as_ref()?;
                let reason = w.reason.clone().unwrap_or_default();
                matches!(
                    reason.as_str(),
                    "ErrImagePull"
                        | "ImagePullBackOff"
                        | "InvalidImageName"
                        | "CreateContainerConfigError"
                        | "CreateContainerError"
                        | "RunContainerError"
                )
                .then(|| (reason, w.message.clone().unwrap_or_default()))
            })
    });
    match waiting {
        Some((reason, message)) => {
            let changed = set_condition(
                conditions,
                POD_NOT_STARTED,
                true,
                &reason,
                &message,
                scan.metadata.generation,
                now,
            );
            if changed {
                ctx.event(
                    scan,
                    EventType::Warning,
                    "ScanPodNotStarted",
                    format!("{reason}: {message}"),
                )
                .await;
            }
            changed
        }
        None => remove_condition(conditions, POD_NOT_STARTED),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_hosts_are_lowercase_distinct_and_ignore_ports() {
        let scan = NucleiScan::new(
            "s",
            serde_json::from_value(json!({
                "sourceRef": {"apiVersion": "v1", "kind": "Ingress", "name": "a", "namespace": "b", "uid": "c"},
                "targets": ["https://A.example.com/x", "http://a.example.com:8080/", "https://a.example.com?q"]
            }))
            .unwrap(),
        );
        assert_eq!(target_hosts(&scan), ["a.example.com"]);
    }
}
