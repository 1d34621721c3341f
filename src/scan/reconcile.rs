//! The NucleiScan reconciler: gathers what is known of a scan's run (its
//! Job and the Job's pod), asks the pure phase machine ([`super::phase`])
//! what to do, and does it. It never creates Jobs and never frees dispatcher
//! slots: it hands intents to the dispatcher, writes status transitions,
//! deletes the Job of a pod that never started, and publishes Events.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatcher::{DispatcherHandle, Intent};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::controller::{Action, Config as ControllerConfig, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{debug, info, instrument, warn};

use super::phase::{JobView, Observed, Plan, PodView, Policy, QueueOp, decide};
use super::status::{Transition, chrono, patch_status};
use crate::api::{JobRef, NucleiScan, ScanKey, ScanPhase};
use crate::cache;
use crate::error::{Error, Result, is_not_found};
use crate::jobs;
use crate::jobs::RunToken;
use crate::metrics::{Metrics, OutcomeLabel};
use crate::settings::{ScannerMode, Settings};
use crate::sources::triggers::Triggers;

/// Shared by the scan reconciler and the launchers.
pub struct ScanCtx {
    pub client: kube::Client,
    pub settings: Settings,
    /// The phase machine's share of the settings.
    pub policy: Policy,
    pub dispatch: DispatcherHandle<RunToken>,
    pub metrics: Arc<Metrics>,
    pub recorder: Recorder,
    /// The operator's scan Jobs (without their pod template), filled by the
    /// scan controller's watch.
    pub jobs: Store<Job>,
    /// Finished runs already reported (events, metrics): scan key → run
    /// marker, empty for a scan seen unfinished and not reported since.
    reported: Mutex<HashMap<ScanKey, String>>,
    /// Events on source objects (one per distinct note).
    source_events: crate::events::NotedEvents,
    /// Announces what runs found new (Events, notifiers).
    pub notify: Arc<crate::notify::Notifications>,
    /// The template cache scanner Jobs read TEMPLATE_REPOSITORIES from,
    /// when [`Settings::template_cache_enabled`].
    pub templates: Option<Arc<crate::template_cache::TemplateCache>>,
}

impl ScanCtx {
    /// A context for the controllers and launchers.
    pub fn new(
        client: kube::Client,
        settings: Settings,
        dispatch: DispatcherHandle<RunToken>,
        metrics: Arc<Metrics>,
        reporter: Reporter,
        jobs: Store<Job>,
        notify: Arc<crate::notify::Notifications>,
    ) -> Self {
        let templates = settings.template_cache_enabled().then(|| {
            Arc::new(crate::template_cache::TemplateCache::new(
                settings.lease_namespace(),
            ))
        });
        ScanCtx {
            recorder: Recorder::new(client.clone(), reporter.clone()),
            source_events: crate::events::NotedEvents::new(client.clone(), reporter),
            client,
            policy: Policy::from_settings(&settings),
            settings,
            dispatch,
            metrics,
            jobs,
            reported: Mutex::new(HashMap::new()),
            notify,
            templates,
        }
    }

    /// Publishes an Event on the scan; failures are logged, never fatal.
    pub async fn event(&self, scan: &NucleiScan, type_: EventType, reason: &str, note: String) {
        let ev = Event {
            type_,
            reason: reason.into(),
            note: Some(crate::events::note(&note)),
            action: "Scan".into(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&ev, &scan.object_ref(&())).await {
            debug!("event {reason} not recorded: {e}");
        }
    }
}

/// Host names of a scan's targets (for per-host exclusivity).
pub fn target_hosts(scan: &NucleiScan) -> Vec<String> {
    let mut hosts: Vec<String> = scan
        .spec
        .targets
        .iter()
        .map(|t| crate::url::parse(t))
        .filter(|p| p.scheme.is_some())
        // The port does not make it another host.
        .map(|p| p.host.to_ascii_lowercase())
        .collect();
    hosts.sort();
    hosts.dedup();
    hosts
}

/// The NucleiScan controller (at most `concurrency` reconciles at once) and
/// the cache of the operator's Jobs its watch fills. Its scan store, shared
/// with the source reconcilers, holds scans without `status.findings`
/// (up to 512 KiB each; no reconciler reads them).
///
/// Every Job event also goes to [`super::slots::on_job_event`], which frees
/// the slot of a run whose Job finished or vanished.
///
/// Every scan event, once in the cache, also asks the scan's source to be
/// reconciled (see [`Triggers`]).
pub fn controller(
    client: kube::Client,
    concurrency: u16,
    dispatch: DispatcherHandle<RunToken>,
    triggers: Triggers,
) -> (Controller<NucleiScan>, Store<Job>) {
    let (scans, scan_events) = cache::reflect_each(
        client.clone(),
        watcher::Config::default().any_semantic(),
        |scan: &mut NucleiScan| {
            if let Some(status) = scan.status.as_mut() {
                status.findings = Vec::new();
            }
        },
        |metadata| NucleiScan {
            metadata,
            spec: Default::default(),
            status: None,
        },
    );
    let (jobs, job_events) = cache::reflect(
        Api::<Job>::all(client),
        watcher::Config::default()
            .labels(&format!(
                "{}={}",
                crate::api::labels::MANAGED_BY_LABEL,
                crate::api::labels::MANAGED_BY
            ))
            .any_semantic(),
        |job| job.spec = None,
    );
    let job_events =
        job_events.inspect_ok(move |event| super::slots::on_job_event(&dispatch, event));
    let scan_events = scan_events.inspect_ok(move |event| triggers.notify(event));
    let controller = Controller::for_stream(scan_events.applied_objects(), scans)
        .owns_stream(job_events.touched_objects())
        .with_config(ControllerConfig::default().concurrency(concurrency));
    (controller, jobs)
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
    ctx.metrics.reconcile_failed("nucleiscan", err);
    let conflict = err.kube().is_some_and(crate::error::is_conflict);
    if !conflict {
        warn!(scan = %ScanKey::of(scan.as_ref()), error = %err, "scan reconcile failed; retrying");
    }
    Action::requeue(if conflict {
        Duration::from_millis(200)
    } else {
        Duration::from_secs(5)
    })
}

/// What is known of the Job of the scan's run ([`JobView`]): from the Job
/// cache, and for a Running scan, from the API server when the cache has not
/// seen it (just created, or its watch lags), so a new Job is never taken
/// for a lost one. Only Jobs the scan controls count. The pod is looked at
/// only while the Job has no ready pod.
async fn observe(ctx: &ScanCtx, scan: &NucleiScan) -> Result<Observed> {
    let key = ScanKey::of(scan).to_string();
    let status = scan.status.as_ref();
    let in_process =
        ctx.settings.scanner_mode == ScannerMode::Sync && ctx.dispatch.is_running(&key);
    let unseen = Observed {
        job: JobView::NotLooked,
        in_process,
    };
    let phase = status.and_then(|s| s.phase);
    if scan.spec.suspend || scan.metadata.deletion_timestamp.is_some() {
        return Ok(unseen);
    }
    let (job_name, from_api) = match phase {
        // The Job the launcher may have created for the run it waits for.
        Some(ScanPhase::Pending) => (
            jobs::job_name(&scan.name_any(), &jobs::run_token(scan)),
            false,
        ),
        Some(phase) => match status.and_then(|s| s.job_ref.as_ref()) {
            Some(j) => (j.name.clone(), phase == ScanPhase::Running),
            None => return Ok(unseen),
        },
        None => return Ok(unseen),
    };
    let namespace = scan.namespace().unwrap_or_default();
    let job = match ctx.jobs.get(&ObjectRef::new(&job_name).within(&namespace)) {
        Some(job) => Some(job),
        None if from_api => Api::<Job>::namespaced(ctx.client.clone(), &namespace)
            .get_opt(&job_name)
            .await
            .map_err(Error::ObserveJob)?
            .map(Arc::new),
        None => None,
    };
    let job = job.filter(|j| {
        j.owner_references()
            .iter()
            .any(|o| o.controller == Some(true) && Some(&o.uid) == scan.metadata.uid.as_ref())
    });
    let job = match job {
        None if from_api => JobView::Missing,
        None => JobView::NotLooked,
        Some(job) => match jobs::job_finished(&job) {
            Some(jobs::JobOutcome::Failed { reason, message })
                if phase == Some(ScanPhase::Running) =>
            {
                // The Job's own message is generic ("reached the specified
                // backoff limit"); its pod says what failed. Only when the
                // failure is news: a Failed scan's old Job is not looked into.
                let message = match failure_of_pods(ctx, &job).await {
                    Some(cause) if message.is_empty() => cause,
                    Some(cause) => format!("{message}; {cause}"),
                    None => message,
                };
                JobView::Finished(jobs::JobOutcome::Failed { reason, message })
            }
            Some(outcome) => JobView::Finished(outcome),
            None => JobView::Active {
                job: JobRef {
                    name: job.name_any(),
                    uid: job.uid().unwrap_or_default(),
                    pod_name: None,
                    start_time: job.metadata.creation_timestamp.clone(),
                },
                run: jobs::run_of(&job).unwrap_or_default().to_owned(),
                created: job.metadata.creation_timestamp.as_ref().map(chrono),
                pod: pod_of(ctx, &job).await?,
            },
        },
    };
    Ok(Observed { job, in_process })
}

/// A Job younger than this whose pod is not ready yet is taken to be
/// starting, without listing its pods: most pods start within seconds, and
/// the reconciler looks again after [`super::phase`]'s check interval.
const POD_LIST_AFTER: Duration = Duration::from_secs(10);

/// Why the pods of the failed `job` failed ([`jobs::pod_failure`]); `None`
/// when they do not say or cannot be listed (the Job's own message stands).
async fn failure_of_pods(ctx: &ScanCtx, job: &Job) -> Option<String> {
    match pods_of(ctx, job).await {
        Ok(pods) => jobs::pod_failure(&pods),
        Err(e) => {
            debug!("listing the pods of failed Job {}: {e}", job.name_any());
            None
        }
    }
}

/// Whether the pod of an active Job has started: the Job's `ready` count
/// says so without a request; a young Job's pod is taken to be starting;
/// otherwise its pods are listed.
async fn pod_of(ctx: &ScanCtx, job: &Job) -> Result<PodView> {
    if job.status.as_ref().and_then(|s| s.ready).unwrap_or(0) > 0 {
        return Ok(PodView::Started);
    }
    let age = job
        .metadata
        .creation_timestamp
        .as_ref()
        .and_then(|t| (Utc::now() - chrono(t)).to_std().ok())
        .unwrap_or(POD_LIST_AFTER);
    if age < POD_LIST_AFTER {
        return Ok(PodView::NotStarted {
            reason: "Starting".into(),
            message: "the scanner pod is starting".into(),
            stuck: false,
        });
    }
    let pods = pods_of(ctx, job).await.map_err(Error::ObserveJob)?;
    Ok(PodView::of(&pods))
}

/// The pods of `job` (by the `job-name` label the Job controller sets).
async fn pods_of(ctx: &ScanCtx, job: &Job) -> kube::Result<Vec<Pod>> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
    let lp = ListParams::default().labels(&format!("job-name={}", job.name_any()));
    Ok(pods.list(&lp).await?.items)
}

#[instrument(skip_all, fields(scan = %ScanKey::of(scan.as_ref())))]
async fn reconcile(scan: Arc<NucleiScan>, ctx: Arc<ScanCtx>) -> Result<Action> {
    ctx.metrics.reconciled("nucleiscan");
    if cache::unreadable(scan.as_ref()).is_some() {
        // Logged by the cache; nothing can be decided without its status.
        return Ok(Action::await_change());
    }
    let finished = matches!(
        scan.status.as_ref().and_then(|s| s.phase),
        Some(ScanPhase::Completed | ScanPhase::Failed)
    );
    if !finished {
        ctx.seen_unfinished(&scan);
    }
    let observed = observe(&ctx, &scan).await?;
    let now = Utc::now();
    let plan = decide(&scan, &observed, &ctx.policy, now);
    let action = apply(&ctx, &scan, plan, now).await?;
    // After the scan's own writes, so that telling of a run never delays
    // scheduling the next.
    announce(&ctx, &scan).await;
    ctx.notify.exceptions.seen(&scan);
    Ok(action)
}

/// Tells of the last run's new findings, once: the `NewFindings` Event on
/// the scan and its source, and the notifiers (see [`crate::notify`]).
async fn announce(ctx: &ScanCtx, scan: &NucleiScan) {
    let Some(news) = ctx.notify.due(scan).await else {
        return;
    };
    let note = news.event_note(scan, ctx.settings.new_findings_severity);
    if let Some(note) = &note {
        ctx.event(scan, EventType::Warning, "NewFindings", note.clone())
            .await;
        ctx.event_on_source(scan, "NewFindings", note.clone()).await;
    }
    ctx.notify.send(scan, news, note.is_some()).await;
}

/// Carries out a [`Plan`]: the status first (written against the version
/// decided on, so a stale decision fails with a conflict and is made again),
/// then the Job deletion, the queue and the Events.
async fn apply(ctx: &ScanCtx, scan: &NucleiScan, plan: Plan, now: DateTime<Utc>) -> Result<Action> {
    let key = ScanKey::of(scan).to_string();
    let name = scan.name_any();
    let namespace = scan.namespace().unwrap_or_default();
    if plan.writes_status() {
        let mut patch = plan
            .transition
            .as_ref()
            .map(Transition::patch)
            .unwrap_or_default();
        if let Some(conditions) = &plan.conditions {
            patch.insert(
                "conditions".into(),
                serde_json::to_value(conditions).expect("conditions serialize"),
            );
        }
        let api: Api<NucleiScan> = Api::namespaced(ctx.client.clone(), &namespace);
        let rv = scan.resource_version();
        patch_status(&api, &name, rv.as_deref(), serde_json::Value::Object(patch))
            .await
            .map_err(Error::WriteStatus)?;
        if let Some(Transition::Failed { message, .. }) = &plan.transition {
            info!(error = %message, "scan run failed");
        }
    }
    if let Some(job) = &plan.delete_job {
        let jobs: Api<Job> = Api::namespaced(ctx.client.clone(), &namespace);
        match jobs.delete(job, &DeleteParams::background()).await {
            Ok(_) => info!(job, "deleted the Job of a scanner pod that never started"),
            Err(e) if is_not_found(&e) => {}
            Err(e) => return Err(Error::DeleteJob(e)),
        }
    }
    // Still running as the cache has it now: a Job that finished while this
    // reconcile ran has had its slot freed, which must not be taken again.
    if let Some(run) = &plan.hold_slot
        && ctx
            .jobs
            .get(&ObjectRef::new(&jobs::job_name(&name, run)).within(&namespace))
            .is_some_and(|j| jobs::job_finished(&j).is_none())
        && ctx
            .dispatch
            .adopt_running(key.clone(), target_hosts(scan), run.as_str().into())
    {
        info!(run, "adopted a running scan Job");
    }
    let token = jobs::run_token(scan);
    let intent =
        |reason| Intent::new(key.clone(), reason, token.clone()).with_hosts(target_hosts(scan));
    match plan.queue {
        QueueOp::Keep => {}
        QueueOp::Now(reason) => {
            ctx.dispatch.enqueue(intent(reason));
        }
        QueueOp::At(reason, due) => {
            ctx.dispatch
                .enqueue_at(intent(reason), instant_at(due, now));
        }
        QueueOp::Remove => {
            ctx.dispatch.remove(&key);
        }
    }
    if let Some((reason, message)) = plan.pod_not_started {
        ctx.event(
            scan,
            EventType::Warning,
            "ScanPodNotStarted",
            format!("{reason}: {message}"),
        )
        .await;
    }
    if plan.report {
        report_once(ctx, scan).await;
    }
    Ok(plan
        .requeue_after
        .map(Action::requeue)
        .unwrap_or_else(Action::await_change))
}

/// A tokio instant for a wall-clock due time.
fn instant_at(due: DateTime<Utc>, now: DateTime<Utc>) -> tokio::time::Instant {
    let delay = (due - now).to_std().unwrap_or_default();
    tokio::time::Instant::now() + delay
}

/// Events and metrics for a finished run, once per run.
async fn report_once(ctx: &ScanCtx, scan: &NucleiScan) {
    let status = scan.status.clone().unwrap_or_default();
    let Some(phase) = status.phase else { return };
    let marker = format!(
        "{}/{:?}",
        status
            .job_ref
            .as_ref()
            .map(|j| j.name.as_str())
            .unwrap_or(""),
        status.completion_time.as_ref().map(chrono)
    );
    let key = ScanKey::of(scan);
    {
        let mut reported = ctx.reported.lock().expect("reported lock");
        let previous = reported.insert(key, marker.clone());
        match previous.as_deref() {
            // This run is reported already.
            Some(m) if m == marker => return,
            // First sight, and finished: the run ended before this process
            // (or this leadership) watched it, and the previous leader
            // reported it. (Not judged by completionTime, which the API
            // keeps to the second: a run that ended in the second this
            // process started went uncounted.)
            None => return,
            // Seen unfinished (or an earlier run): this run ended here.
            Some(_) => {}
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
        ctx.event(
            scan,
            EventType::Normal,
            "ScanCompleted",
            completed_note(&summary),
        )
        .await;
        for source in status.template_sources.iter().filter(|s| s.error.is_some()) {
            let note = format!(
                "the run went without the templates of {}: {}",
                source.source,
                source.error.as_deref().unwrap_or_default()
            );
            ctx.event(scan, EventType::Warning, "TemplatesUnavailable", note)
                .await;
        }
    } else {
        let note = format!(
            "scan failed: {}",
            status.last_error.clone().unwrap_or_default()
        );
        ctx.event(scan, EventType::Warning, "ScanFailed", note)
            .await;
    }
}

/// "Scan completed: 3 findings (1 critical, 2 high)." Only the severities
/// that occurred, most severe first.
fn completed_note(summary: &crate::api::ScanSummary) -> String {
    let n = summary.total_findings;
    let counts: Vec<String> = crate::api::Severity::ALL
        .iter()
        .filter_map(|s| {
            let count = *summary.findings_by_severity.get(s.as_str())?;
            (count > 0).then(|| format!("{count} {}", s.as_str()))
        })
        .collect();
    let findings = if n == 1 { "finding" } else { "findings" };
    if counts.is_empty() {
        format!("Scan completed: {n} {findings}.")
    } else {
        format!("Scan completed: {n} {findings} ({}).", counts.join(", "))
    }
}

impl ScanCtx {
    /// Publishes a Warning Event on the scan's source object (Ingress,
    /// VirtualService, HTTPRoute); failures are logged, never fatal.
    async fn event_on_source(&self, scan: &NucleiScan, reason: &str, note: String) {
        let source = &scan.spec.source_ref;
        let reference = k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some(source.api_version.clone()),
            kind: Some(source.kind.as_str().into()),
            name: Some(source.name.clone()),
            namespace: Some(source.namespace.clone()),
            uid: Some(source.uid.clone()).filter(|u| !u.is_empty()),
            ..Default::default()
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(crate::events::note(&note)),
            action: "Scan".into(),
            secondary: Some(scan.object_ref(&())),
        };
        if let Err(e) = self.source_events.publish(&ev, &reference).await {
            debug!("event {reason} on the source not recorded: {e}");
        }
    }

    /// Notes that `scan` is seen unfinished (new, pending or running), so
    /// that its finish is reported by this process.
    fn seen_unfinished(&self, scan: &NucleiScan) {
        let mut reported = self.reported.lock().expect("reported lock");
        reported.entry(ScanKey::of(scan)).or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use serde_json::json;

    #[test]
    fn the_completed_event_reads_as_a_sentence_naming_only_severities_that_occurred() {
        let summary = |total: i64, counts: &[(&str, i64)]| crate::api::ScanSummary {
            total_findings: total,
            findings_by_severity: counts.iter().map(|(k, v)| (k.to_string(), *v)).collect(),
            ..Default::default()
        };
        assert_eq!(
            completed_note(&summary(1, &[("high", 1), ("low", 0)])),
            "Scan completed: 1 finding (1 high)."
        );
        assert_eq!(
            completed_note(&summary(3, &[("info", 2), ("critical", 1)])),
            "Scan completed: 3 findings (1 critical, 2 info)."
        );
        assert_eq!(
            completed_note(&summary(0, &[])),
            "Scan completed: 0 findings."
        );
    }

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
