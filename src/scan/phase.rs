//! The phase machine of a scan, as a pure function.
//!
//! [`decide`] takes a scan, what was observed of its current run (its Job and
//! the Job's pod), the operator's [`Policy`] and the time, and returns a
//! [`Plan`]: what to hand the dispatcher, which status [`Transition`] to
//! write, which conditions change, which Job to delete and when to look
//! again. `reconcile.rs` gathers the observations and applies the plan; it
//! decides nothing itself.
//!
//! Phases (`status.phase`):
//!
//! | phase | the scan is | leaves when |
//! |---|---|---|
//! | (none) | new | at once: Pending |
//! | Pending | queued, or waiting until `nextScheduledTime` for its targets to answer | the launcher starts its run: Running |
//! | Running | being scanned by the run in `runToken` | the scanner records Completed or Failed; the Job fails, disappears, or its pod never starts: Failed |
//! | Completed | done; the next run is scheduled | it falls due, its spec changes, or a rescan is requested |
//! | Failed | retried with backoff up to MAX_RETRIES, then left until its spec changes or a rescan is requested | likewise |
//!
//! Dispatcher slots are not decided here: a slot belongs to a run and is
//! freed when that run's Job finishes or disappears (see `slots.rs`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use dispatcher::Reason;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;

use super::schedule::{DEFAULT_JITTER_FRACTION, Schedule, backoff_delay, next_run};
use super::status::{
    ANNOTATIONS_VALID, Attempt, POD_NOT_STARTED, SCHEDULE_VALID, TEMPLATES_UNAVAILABLE, Transition,
    WAITING_FOR_TARGETS, chrono, remove_condition, set_condition,
};
use crate::api::labels::ANNOTATION_ERRORS;
use crate::api::{JobRef, NucleiScan, ScanPhase};
use crate::jobs::JobOutcome;

/// How old the Job of a Pending scan's run must be before the reconciler
/// records the run itself: a younger one is the launcher's to record (both
/// writing would only make one of them conflict).
const ADOPT_AFTER: Duration = Duration::from_secs(5);

/// How often a Running scan whose pod has not started is looked at again.
const POD_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// Exponential backoff with jitter (BACKOFF_INITIAL, BACKOFF_MAX,
/// BACKOFF_MULTIPLIER).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Backoff {
    /// First delay.
    pub initial: Duration,
    /// Longest delay.
    pub max: Duration,
    /// Growth per attempt.
    pub multiplier: f64,
}

impl Backoff {
    /// The delay before attempt `attempt + 1` (0 before the first retry).
    /// The jitter is drawn from `seed`, so the same attempt of the same scan
    /// always gets the same delay: deciding again never moves a due time.
    pub fn delay(&self, attempt: u32, seed: &str) -> Duration {
        use rand::SeedableRng;
        let seed = u64::from_str_radix(&crate::hash::fnv1a_64_hex(seed.as_bytes()), 16)
            .unwrap_or_default();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        backoff_delay(
            attempt,
            self.initial,
            self.max,
            self.multiplier,
            DEFAULT_JITTER_FRACTION,
            &mut rng,
        )
    }
}

impl Backoff {
    /// The delay before checking again something that has failed for
    /// `failing_for` (targets that do not answer): the same growth as
    /// [`delay`](Self::delay) without counting attempts, since the delay
    /// after each check is `initial + (multiplier - 1) × time failed so far`.
    pub fn while_waiting(&self, failing_for: Duration, seed: &str) -> Duration {
        let grown = self.initial.as_secs_f64()
            + (self.multiplier - 1.0).max(0.0) * failing_for.as_secs_f64();
        let undisturbed = Duration::try_from_secs_f64(grown)
            .unwrap_or(self.max)
            .clamp(self.initial.min(self.max), self.max);
        Backoff {
            initial: undisturbed,
            max: undisturbed,
            multiplier: 1.0,
        }
        .delay(0, seed)
    }
}

/// The operator settings the phase machine follows.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// MAX_RETRIES: retries of a failed scan before it waits for a spec
    /// change or a rescan request.
    pub max_retries: u32,
    /// Delays between retries.
    pub backoff: Backoff,
    /// RESCAN_AGE (`None`: off): rescan a scan without a schedule when its
    /// last result is this old.
    pub rescan_age: Option<Duration>,
    /// POD_START_TIMEOUT: how long a scanner pod may take to start before
    /// its run is ended as Failed and its Job deleted.
    pub pod_start_timeout: Duration,
}

impl Policy {
    /// The policy of the operator's settings.
    pub fn from_settings(s: &crate::settings::Settings) -> Self {
        Policy {
            max_retries: s.max_retries,
            backoff: Backoff {
                initial: s.backoff_initial,
                max: s.backoff_max,
                multiplier: s.backoff_multiplier,
            },
            rescan_age: s.effective_rescan_age(),
            pod_start_timeout: s.pod_start_timeout,
        }
    }
}

/// Whether the pod of an active Job has started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PodView {
    /// A container of it runs or has run.
    Started,
    /// Nothing of it has run yet (no pod, unschedulable, image not pulled…).
    NotStarted {
        /// Short reason, e.g. `ErrImagePull`, `Unschedulable`, `NoPod`.
        reason: String,
        /// What Kubernetes says about it.
        message: String,
        /// A reason that will not go away by waiting (bad image, bad
        /// configuration): reported at once as a condition and Event.
        stuck: bool,
    },
}

impl PodView {
    /// How the pods of one Job stand: started when a container of any of
    /// them runs or has run.
    pub fn of(pods: &[Pod]) -> PodView {
        const STUCK: [&str; 6] = [
            "ErrImagePull",
            "ImagePullBackOff",
            "InvalidImageName",
            "CreateContainerConfigError",
            "CreateContainerError",
            "RunContainerError",
        ];
        let mut not_started = PodView::NotStarted {
            reason: "NoPod".into(),
            message: "the Job has not created a pod yet".into(),
            stuck: false,
        };
        for pod in pods {
            let Some(status) = &pod.status else { continue };
            let containers = || {
                status
                    .init_container_statuses
                    .iter()
                    .flatten()
                    .chain(status.container_statuses.iter().flatten())
            };
            let ran = containers().any(|c| {
                c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
                    || c.last_state
                        .as_ref()
                        .is_some_and(|s| s.terminated.is_some())
            });
            if ran {
                return PodView::Started;
            }
            let waiting = containers().find_map(|c| c.state.as_ref()?.waiting.clone());
            let unschedulable = status.conditions.iter().flatten().find(|c| {
                c.type_ == "PodScheduled"
                    && c.status == "False"
                    && c.reason.as_deref() == Some("Unschedulable")
            });
            not_started = match (waiting, unschedulable) {
                (Some(w), _) if w.reason.as_deref().is_some_and(|r| STUCK.contains(&r)) => {
                    PodView::NotStarted {
                        reason: w.reason.unwrap_or_default(),
                        message: w.message.unwrap_or_default(),
                        stuck: true,
                    }
                }
                (_, Some(c)) => PodView::NotStarted {
                    reason: "Unschedulable".into(),
                    message: c.message.clone().unwrap_or_default(),
                    stuck: true,
                },
                (Some(w), None) => PodView::NotStarted {
                    reason: w.reason.unwrap_or_else(|| "Waiting".into()),
                    message: w.message.unwrap_or_default(),
                    stuck: false,
                },
                (None, None) => PodView::NotStarted {
                    reason: "Pending".into(),
                    message: status.message.clone().unwrap_or_default(),
                    stuck: false,
                },
            };
        }
        not_started
    }
}

/// The Job of the scan's run, as observed: for a Pending scan the Job of
/// the run it waits for (one exists when the launcher created it but could
/// not record Running), otherwise the Job of `status.jobRef`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobView {
    /// Not looked up, or (for a Pending scan) there is none.
    NotLooked,
    /// The API server does not have it.
    Missing,
    /// It runs.
    Active {
        /// Its name and uid.
        job: JobRef,
        /// The run it belongs to (its run label).
        run: String,
        /// Its `creationTimestamp`.
        created: Option<DateTime<Utc>>,
        /// Its pod.
        pod: PodView,
    },
    /// It has finished.
    Finished(JobOutcome),
}

/// What was observed of the scan's run besides the scan itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// The Job of `status.jobRef`.
    pub job: JobView,
    /// This process runs the scan in-process right now (sync mode).
    pub in_process: bool,
}

/// What to do with the scan's intent in the dispatcher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum QueueOp {
    /// Leave the queue as it is.
    Keep,
    /// Queue it to run as soon as admission allows.
    Now(Reason),
    /// Queue it to become ready at the given time.
    At(Reason, DateTime<Utc>),
    /// Drop any queued intent.
    Remove,
}

/// What [`decide`] wants done.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The dispatcher.
    pub queue: QueueOp,
    /// The status transition to write.
    pub transition: Option<Transition>,
    /// The whole new `status.conditions`, when they changed.
    pub conditions: Option<Vec<Condition>>,
    /// A Job of the scan to delete (its pod never started).
    pub delete_job: Option<String>,
    /// Publish the finished run's Events and metrics (once per run).
    pub report: bool,
    /// The scanner pod just became known as not starting: reason, message
    /// (for a Warning Event).
    pub pod_not_started: Option<(String, String)>,
    /// A run whose Job is active: it holds a dispatcher slot (adopted if it
    /// does not yet, e.g. after a restart).
    pub hold_slot: Option<String>,
    /// Look at the scan again after this long even if nothing changes.
    pub requeue_after: Option<Duration>,
}

impl Plan {
    fn new() -> Self {
        Plan {
            queue: QueueOp::Keep,
            transition: None,
            conditions: None,
            delete_job: None,
            report: false,
            pod_not_started: None,
            hold_slot: None,
            requeue_after: None,
        }
    }

    /// Whether applying the plan writes the scan's status.
    pub fn writes_status(&self) -> bool {
        self.transition.is_some() || self.conditions.is_some()
    }
}

/// Decides what to do about `scan` (see the module documentation).
pub fn decide(scan: &NucleiScan, seen: &Observed, policy: &Policy, now: DateTime<Utc>) -> Plan {
    let mut plan = Plan::new();
    if scan.metadata.deletion_timestamp.is_some() {
        plan.queue = QueueOp::Remove;
        return plan;
    }
    let status = scan.status.clone().unwrap_or_default();
    let generation = scan.metadata.generation;
    let mut conditions = status.conditions.clone();
    let mut conditions_changed = match scan.annotations().get(ANNOTATION_ERRORS) {
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
    // Template repositories the current or last run went without (the
    // scanner records them when the run starts): at most one write per run.
    let unavailable: Vec<&str> = status
        .template_sources
        .iter()
        .filter(|s| s.error.is_some())
        .map(|s| s.source.url.as_str())
        .collect();
    conditions_changed |= if unavailable.is_empty() {
        remove_condition(&mut conditions, TEMPLATES_UNAVAILABLE)
    } else {
        set_condition(
            &mut conditions,
            TEMPLATES_UNAVAILABLE,
            true,
            "CloneFailed",
            &format!(
                "the run went without the templates of {} (could not be cloned; see status.templateSources)",
                unavailable.join(", ")
            ),
            generation,
            now,
        )
    };

    let spec_changed =
        status.observed_generation.is_some() && status.observed_generation != generation;
    let rescan = crate::api::labels::rescan_request(scan.annotations());
    let new_rescan = rescan.is_some() && rescan != status.last_rescan_request.as_deref();
    let retries = retries(scan);
    let uid = scan.metadata.uid.as_deref().unwrap_or("");
    let job_name = status.job_ref.as_ref().map(|j| j.name.clone());
    let next_scheduled = status.next_scheduled_time.as_ref().map(chrono);

    if scan.spec.suspend {
        plan.queue = QueueOp::Remove;
        if next_scheduled.is_some() {
            plan.transition = Some(Transition::Scheduled { next: None });
        }
    } else {
        match status.phase {
            None => {
                plan.transition = Some(Transition::Pending { last_error: None });
                plan.queue = QueueOp::Now(if new_rescan {
                    Reason::ManualRescan
                } else {
                    Reason::NewScan
                });
            }
            Some(ScanPhase::Pending) if matches!(seen.job, JobView::Active { .. }) => {
                let JobView::Active {
                    job, run, created, ..
                } = &seen.job
                else {
                    unreachable!()
                };
                let age = created
                    .and_then(|c| (now - c).to_std().ok())
                    .unwrap_or(ADOPT_AFTER);
                if age < ADOPT_AFTER {
                    // Just created: the launcher is recording it.
                    plan.requeue_after = Some(ADOPT_AFTER - age);
                } else {
                    // The launcher created the run's Job but could not
                    // record it (a crash, a failed write).
                    plan.hold_slot = Some(run.clone());
                    plan.queue = QueueOp::Remove;
                    plan.transition = Some(Transition::Running {
                        run: run.clone(),
                        job: Some(job.clone()),
                        at: created.unwrap_or(now),
                        attempt: Attempt::of(scan),
                    });
                }
            }
            Some(ScanPhase::Pending) if matches!(seen.job, JobView::Finished(_)) => {
                plan.transition = Some(Transition::Failed {
                    message:
                        "the scan's Job ended before its run was recorded; nothing was scanned"
                            .into(),
                    retry_count: next_retry_count(retries),
                    at: now,
                    attempt: Some(Attempt::of(scan)),
                });
            }
            Some(ScanPhase::Pending) => {
                plan.queue = if new_rescan {
                    QueueOp::Now(Reason::ManualRescan)
                } else if spec_changed {
                    QueueOp::Now(Reason::SpecChanged)
                } else if let Some(due) = next_scheduled.filter(|due| *due > now) {
                    // Its targets did not answer, or its launch failed: the
                    // launcher set when to try again.
                    QueueOp::At(Reason::Retry, due)
                } else if status.last_scan_time.is_none() {
                    QueueOp::Now(Reason::NewScan)
                } else {
                    QueueOp::Now(Reason::Recovered)
                };
            }
            Some(ScanPhase::Running) if job_name.is_none() => {
                // Sync mode runs scans in-process: a Running scan this process
                // does not run was cut off by a restart.
                if !seen.in_process {
                    plan.transition = Some(Transition::Pending {
                        last_error: Some(
                            "the in-process scan was interrupted by an operator restart; scanning again"
                                .into(),
                        ),
                    });
                    plan.queue = QueueOp::Now(Reason::Recovered);
                }
            }
            Some(ScanPhase::Running) => {
                let job = job_name.unwrap_or_default();
                let failed = |message: String| Transition::Failed {
                    message,
                    retry_count: next_retry_count(retries),
                    at: now,
                    attempt: None,
                };
                match &seen.job {
                    JobView::NotLooked => {}
                    JobView::Missing => {
                        plan.transition = Some(failed(format!(
                            "Job {job} of the running scan is gone before the scanner reported a result"
                        )));
                    }
                    JobView::Finished(JobOutcome::Complete) => {
                        plan.transition = Some(failed(format!(
                            "Job {job} ended without the scanner reporting a result"
                        )));
                    }
                    JobView::Finished(JobOutcome::Failed { reason, message }) => {
                        plan.transition =
                            Some(failed(format!("Job {job} failed ({reason}): {message}")));
                    }
                    JobView::Active {
                        pod, created, run, ..
                    } => {
                        plan.hold_slot = Some(run.clone());
                        match pod_verdict(pod, *created, policy, now) {
                            PodVerdict::Started => {
                                conditions_changed |=
                                    remove_condition(&mut conditions, POD_NOT_STARTED);
                            }
                            PodVerdict::Waiting {
                                report,
                                check_again,
                            } => {
                                if let Some((reason, message)) = report
                                    && set_condition(
                                        &mut conditions,
                                        POD_NOT_STARTED,
                                        true,
                                        &reason,
                                        &message,
                                        generation,
                                        now,
                                    )
                                {
                                    conditions_changed = true;
                                    plan.pod_not_started = Some((reason, message));
                                }
                                plan.requeue_after = Some(check_again);
                            }
                            PodVerdict::GiveUp(why) => {
                                plan.transition = Some(failed(why));
                                plan.delete_job = Some(job);
                            }
                        }
                    }
                }
            }
            Some(phase @ (ScanPhase::Completed | ScanPhase::Failed)) => {
                plan.report = true;
                conditions_changed |= remove_condition(&mut conditions, POD_NOT_STARTED);
                conditions_changed |= remove_condition(&mut conditions, WAITING_FOR_TARGETS);
                // The Failed write went through but the Job's deletion did not.
                if let (JobView::Active { pod, created, .. }, Some(job)) = (&seen.job, job_name)
                    && matches!(
                        pod_verdict(pod, *created, policy, now),
                        PodVerdict::GiveUp(_)
                    )
                {
                    plan.delete_job = Some(job);
                }
                if new_rescan || spec_changed {
                    plan.transition = Some(Transition::Pending { last_error: None });
                    plan.queue = QueueOp::Now(if new_rescan {
                        Reason::ManualRescan
                    } else {
                        Reason::SpecChanged
                    });
                } else {
                    let due = if phase == ScanPhase::Failed && retries > 0 {
                        if retries <= policy.max_retries {
                            let finished = status.completion_time.as_ref().map_or(now, chrono);
                            let delay = policy
                                .backoff
                                .delay(retries - 1, &format!("{uid}/{retries}"));
                            Some((Reason::Retry, whole_second(after(finished, delay))))
                        } else {
                            // Retries spent: wait for a spec change or a rescan.
                            None
                        }
                    } else {
                        let (schedule, changed) = schedule_of(scan, &mut conditions, now);
                        conditions_changed |= changed;
                        let last = status.last_scan_time.as_ref().map(chrono);
                        next_run(schedule.as_ref(), policy.rescan_age, last, now)
                            .map(|due| (Reason::Scheduled, due))
                    };
                    match due {
                        Some((reason, due)) => {
                            plan.queue = QueueOp::At(reason, due);
                            if next_scheduled != Some(due) {
                                plan.transition = Some(Transition::Scheduled { next: Some(due) });
                            }
                        }
                        None => {
                            plan.queue = QueueOp::Remove;
                            if next_scheduled.is_some() {
                                plan.transition = Some(Transition::Scheduled { next: None });
                            }
                        }
                    }
                }
            }
        }
    }
    if conditions_changed {
        plan.conditions = Some(conditions);
    }
    plan
}

/// The scan's `retryCount` (unset or negative counts as 0).
pub fn retries(scan: &NucleiScan) -> u32 {
    scan.status
        .as_ref()
        .and_then(|s| s.retry_count)
        .unwrap_or(0)
        .max(0) as u32
}

/// `retryCount` after one more failed attempt (saturating at the CRD's
/// maximum).
pub fn next_retry_count(retries: u32) -> i32 {
    i32::try_from(retries.saturating_add(1))
        .unwrap_or(i32::MAX)
        .min(crate::api::MAX_RETRY_COUNT)
}

enum PodVerdict {
    Started,
    Waiting {
        report: Option<(String, String)>,
        check_again: Duration,
    },
    GiveUp(String),
}

fn pod_verdict(
    pod: &PodView,
    created: Option<DateTime<Utc>>,
    policy: &Policy,
    now: DateTime<Utc>,
) -> PodVerdict {
    let PodView::NotStarted {
        reason,
        message,
        stuck,
    } = pod
    else {
        return PodVerdict::Started;
    };
    let waited = created
        .and_then(|c| (now - c).to_std().ok())
        .unwrap_or_default();
    if waited >= policy.pod_start_timeout {
        return PodVerdict::GiveUp(format!(
            "the scanner pod did not start within {} ({reason}: {message}); its Job was deleted",
            crate::duration::format_duration(policy.pod_start_timeout)
        ));
    }
    PodVerdict::Waiting {
        report: stuck.then(|| (reason.clone(), message.clone())),
        check_again: (policy.pod_start_timeout - waited).min(POD_CHECK_INTERVAL),
    }
}

/// The scan's schedule, keeping its `ScheduleValid` condition up to date;
/// `true` when the conditions changed.
fn schedule_of(
    scan: &NucleiScan,
    conditions: &mut Vec<Condition>,
    now: DateTime<Utc>,
) -> (Option<Schedule>, bool) {
    match scan.spec.schedule.as_deref().map(Schedule::parse) {
        Some(Ok(s)) => (Some(s), remove_condition(conditions, SCHEDULE_VALID)),
        Some(Err(e)) => {
            let changed = set_condition(
                conditions,
                SCHEDULE_VALID,
                false,
                "InvalidSchedule",
                &e,
                scan.metadata.generation,
                now,
            );
            (None, changed)
        }
        None => (None, remove_condition(conditions, SCHEDULE_VALID)),
    }
}

/// `t` rounded up to a whole second: the API server keeps times to the
/// second, so a due time written with a fraction would read back different
/// and be written again on every reconcile.
pub fn whole_second(t: DateTime<Utc>) -> DateTime<Utc> {
    if t.timestamp_subsec_nanos() == 0 {
        return t;
    }
    DateTime::from_timestamp(t.timestamp().saturating_add(1), 0).unwrap_or(t)
}

/// `t + d`, or `t` itself where that would overflow (durations come from
/// settings and are far below the limit).
pub fn after(t: DateTime<Utc>, d: Duration) -> DateTime<Utc> {
    chrono::Duration::from_std(d)
        .ok()
        .and_then(|d| t.checked_add_signed(d))
        .unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{JobRef, NucleiScanStatus};
    use crate::scan::status::time;
    use chrono::TimeZone;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    fn t(secs: i64) -> Option<Time> {
        Some(time(at(secs)))
    }

    use crate::scan::testing::policy;

    /// A scan at generation 1 with the given status.
    fn scan(status: NucleiScanStatus) -> NucleiScan {
        let mut s: NucleiScan = serde_json::from_value(serde_json::json!({
            "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
            "kind": "NucleiScan",
            "metadata": {"name": "web-ingress", "namespace": "team", "uid": "u1", "generation": 1},
            "spec": {
                "sourceRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress", "name": "web", "namespace": "team", "uid": "i1"},
                "targets": ["https://web.example.com"]
            }
        }))
        .unwrap();
        s.status = Some(status);
        s
    }

    /// A status as the reconciler leaves it: annotations valid.
    fn status(phase: ScanPhase) -> NucleiScanStatus {
        let mut conditions = Vec::new();
        set_condition(
            &mut conditions,
            ANNOTATIONS_VALID,
            true,
            "Valid",
            "all annotations parsed",
            Some(1),
            at(-1000),
        );
        NucleiScanStatus {
            phase: Some(phase),
            observed_generation: Some(1),
            conditions,
            ..Default::default()
        }
    }

    fn running(job: JobView) -> (NucleiScan, Observed) {
        let s = scan(NucleiScanStatus {
            job_ref: Some(JobRef {
                name: "web-ingress-abc".into(),
                uid: "j1".into(),
                ..Default::default()
            }),
            last_scan_time: t(0),
            run_token: Some("r1".into()),
            ..status(ScanPhase::Running)
        });
        (
            s,
            Observed {
                job,
                in_process: false,
            },
        )
    }

    fn active(pod: PodView) -> JobView {
        JobView::Active {
            job: JobRef {
                name: "web-ingress-abc".into(),
                uid: "j1".into(),
                ..Default::default()
            },
            run: "r1".into(),
            created: Some(at(0)),
            pod,
        }
    }

    fn unseen() -> Observed {
        Observed {
            job: JobView::NotLooked,
            in_process: false,
        }
    }

    fn not_started(reason: &str, stuck: bool) -> PodView {
        PodView::NotStarted {
            reason: reason.into(),
            message: "m".into(),
            stuck,
        }
    }

    fn failed_message(plan: &Plan) -> String {
        match &plan.transition {
            Some(Transition::Failed {
                message,
                retry_count,
                ..
            }) => {
                assert_eq!(*retry_count, 1, "one failed attempt more");
                message.clone()
            }
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    #[test]
    fn a_new_scan_becomes_pending_and_is_queued_as_new_or_as_a_rescan_request() {
        let mut s = scan(NucleiScanStatus::default());
        s.status = None;
        let plan = decide(&s, &unseen(), &policy(), at(0));
        assert_eq!(
            plan.transition,
            Some(Transition::Pending { last_error: None })
        );
        assert_eq!(plan.queue, QueueOp::Now(Reason::NewScan));
        s.metadata.annotations =
            Some([(crate::api::labels::RESCAN.to_string(), "1".to_string())].into());
        let plan = decide(&s, &unseen(), &policy(), at(0));
        assert_eq!(plan.queue, QueueOp::Now(Reason::ManualRescan));
    }

    #[test]
    fn a_pending_scans_job_is_left_to_the_launcher_at_first_then_recorded_as_the_run() {
        let s = scan(status(ScanPhase::Pending));
        let seen = Observed {
            job: active(PodView::Started),
            in_process: false,
        };
        // Created at 0: at 2 s the launcher is still recording it.
        let plan = decide(&s, &seen, &policy(), at(2));
        assert!(plan.transition.is_none() && plan.hold_slot.is_none());
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(3)));
        // Past the grace: the reconciler records it and holds its slot.
        let plan = decide(&s, &seen, &policy(), at(6));
        assert!(matches!(&plan.transition, Some(Transition::Running { run, .. }) if run == "r1"));
        assert_eq!(plan.hold_slot.as_deref(), Some("r1"));
        assert_eq!(plan.queue, QueueOp::Remove);
    }

    #[test]
    fn a_pending_scan_is_queued_by_why_it_waits_without_writing() {
        let never = scan(status(ScanPhase::Pending));
        let plan = decide(&never, &unseen(), &policy(), at(0));
        assert_eq!(plan.queue, QueueOp::Now(Reason::NewScan));
        assert!(plan.transition.is_none());

        let before = scan(NucleiScanStatus {
            last_scan_time: t(-100),
            ..status(ScanPhase::Pending)
        });
        let plan = decide(&before, &unseen(), &policy(), at(0));
        assert_eq!(plan.queue, QueueOp::Now(Reason::Recovered));

        let mut changed = before.clone();
        changed.metadata.generation = Some(2);
        let plan = decide(&changed, &unseen(), &policy(), at(0));
        assert_eq!(plan.queue, QueueOp::Now(Reason::SpecChanged));
    }

    #[test]
    fn a_scan_waiting_for_its_targets_waits_until_its_next_check_as_a_retry() {
        let waiting = scan(NucleiScanStatus {
            next_scheduled_time: t(60),
            ..status(ScanPhase::Pending)
        });
        let plan = decide(&waiting, &unseen(), &policy(), at(0));
        assert_eq!(plan.queue, QueueOp::At(Reason::Retry, at(60)));
        assert!(!plan.writes_status(), "{plan:?}");
        // Once due, it goes now.
        let plan = decide(&waiting, &unseen(), &policy(), at(61));
        assert_eq!(plan.queue, QueueOp::Now(Reason::NewScan));
        // A spec change or a rescan request does not wait.
        let mut fixed = waiting.clone();
        fixed.metadata.generation = Some(2);
        assert_eq!(
            decide(&fixed, &unseen(), &policy(), at(0)).queue,
            QueueOp::Now(Reason::SpecChanged)
        );
    }

    #[test]
    fn a_running_scan_whose_job_is_gone_or_ended_without_a_result_fails_and_counts_a_retry() {
        let (s, seen) = running(JobView::Missing);
        let plan = decide(&s, &seen, &policy(), at(10));
        assert!(failed_message(&plan).contains("is gone"));
        assert_eq!(plan.queue, QueueOp::Keep);

        let (s, seen) = running(JobView::Finished(JobOutcome::Complete));
        let plan = decide(&s, &seen, &policy(), at(10));
        assert!(failed_message(&plan).contains("without the scanner reporting"));

        let (s, seen) = running(JobView::Finished(JobOutcome::Failed {
            reason: "DeadlineExceeded".into(),
            message: "Job was active longer than specified deadline".into(),
        }));
        let plan = decide(&s, &seen, &policy(), at(10));
        let message = failed_message(&plan);
        assert!(message.contains("DeadlineExceeded"), "{message}");
        assert!(
            message.contains("longer than specified deadline"),
            "{message}"
        );
    }

    #[test]
    fn a_running_scan_with_a_started_pod_waits_for_its_result() {
        let (s, seen) = running(active(PodView::Started));
        let plan = decide(&s, &seen, &policy(), at(10));
        assert_eq!(plan.queue, QueueOp::Keep);
        assert!(!plan.writes_status());
        assert_eq!(plan.requeue_after, None);
    }

    #[test]
    fn a_pod_that_cannot_start_is_reported_once_then_its_run_fails_at_the_timeout() {
        let (mut s, seen) = running(active(not_started("ErrImagePull", true)));
        let plan = decide(&s, &seen, &policy(), at(10));
        assert_eq!(
            plan.pod_not_started,
            Some(("ErrImagePull".into(), "m".into()))
        );
        assert!(plan.transition.is_none());
        assert_eq!(plan.requeue_after, Some(POD_CHECK_INTERVAL));
        // Reported: the next look writes nothing and reports nothing.
        s.status.as_mut().unwrap().conditions = plan.conditions.unwrap();
        let plan = decide(&s, &seen, &policy(), at(40));
        assert!(!plan.writes_status() && plan.pod_not_started.is_none());
        // Close to the timeout, it looks again exactly at the timeout.
        let plan = decide(&s, &seen, &policy(), at(290));
        assert_eq!(plan.requeue_after, Some(Duration::from_secs(10)));
        // At the timeout: Failed, the Job deleted (which frees the slot).
        let plan = decide(&s, &seen, &policy(), at(300));
        assert!(failed_message(&plan).contains("did not start within 5m"));
        assert_eq!(plan.delete_job.as_deref(), Some("web-ingress-abc"));
    }

    #[test]
    fn a_pod_merely_pending_is_not_reported_but_still_times_out() {
        let (s, seen) = running(active(not_started("NoPod", false)));
        let plan = decide(&s, &seen, &policy(), at(10));
        assert!(plan.pod_not_started.is_none() && !plan.writes_status());
        let plan = decide(&s, &seen, &policy(), at(301));
        assert!(plan.delete_job.is_some());
    }

    #[test]
    fn a_completed_scan_is_scheduled_once_and_then_left_alone() {
        let mut s = scan(NucleiScanStatus {
            last_scan_time: t(0),
            completion_time: t(30),
            ..status(ScanPhase::Completed)
        });
        s.spec.schedule = Some("0 * * * *".into());
        let plan = decide(&s, &unseen(), &policy(), at(40));
        let QueueOp::At(Reason::Scheduled, due) = plan.queue else {
            panic!("{plan:?}")
        };
        assert!(due > at(30) && due <= at(3600 + 30), "{due}");
        assert!(plan.report);
        assert_eq!(
            plan.transition,
            Some(Transition::Scheduled { next: Some(due) })
        );
        s.status.as_mut().unwrap().next_scheduled_time = Some(time(due));
        let plan = decide(&s, &unseen(), &policy(), at(50));
        assert_eq!(plan.queue, QueueOp::At(Reason::Scheduled, due));
        assert!(!plan.writes_status());
    }

    #[test]
    fn a_failed_scan_retries_with_backoff_that_holds_still_then_gives_up_after_max_retries() {
        let failed = |retries: i32| {
            scan(NucleiScanStatus {
                last_scan_time: t(0),
                completion_time: t(100),
                retry_count: Some(retries),
                ..status(ScanPhase::Failed)
            })
        };
        let mut last = at(100);
        for retries in 1..=3 {
            let s = failed(retries);
            let plan = decide(&s, &unseen(), &policy(), at(100));
            let QueueOp::At(Reason::Retry, due) = plan.queue else {
                panic!("{plan:?}")
            };
            // 10 s, 20 s, 40 s, each shortened by at most 20% of jitter.
            let full = 10 * 2i64.pow(retries as u32 - 1);
            assert!(
                due <= at(100 + full)
                    && due >= at(100) + chrono::Duration::milliseconds(full * 800),
                "{retries}: {due}"
            );
            assert!(due >= last || retries == 1);
            last = due;
            // Deciding again, later, gives the same due time.
            assert_eq!(decide(&s, &unseen(), &policy(), at(105)).queue, plan.queue);
        }
        // Retries spent: no retry and no schedule, even with a schedule.
        let mut s = failed(4);
        s.spec.schedule = Some("@hourly".into());
        s.status.as_mut().unwrap().next_scheduled_time = t(200);
        let plan = decide(&s, &unseen(), &policy(), at(100));
        assert_eq!(plan.queue, QueueOp::Remove);
        assert_eq!(plan.transition, Some(Transition::Scheduled { next: None }));
        // …until a rescan is requested or the spec changes.
        s.metadata.annotations =
            Some([(crate::api::labels::RESCAN.to_string(), "now".to_string())].into());
        let plan = decide(&s, &unseen(), &policy(), at(100));
        assert_eq!(plan.queue, QueueOp::Now(Reason::ManualRescan));
        assert_eq!(
            plan.transition,
            Some(Transition::Pending { last_error: None })
        );
    }

    #[test]
    fn a_finished_scan_whose_spec_changed_is_queued_again_at_once() {
        let mut s = scan(NucleiScanStatus {
            last_scan_time: t(0),
            completion_time: t(30),
            ..status(ScanPhase::Completed)
        });
        s.metadata.generation = Some(2);
        let plan = decide(&s, &unseen(), &policy(), at(40));
        assert_eq!(plan.queue, QueueOp::Now(Reason::SpecChanged));
        assert_eq!(
            plan.transition,
            Some(Transition::Pending { last_error: None })
        );
    }

    #[test]
    fn a_failed_attempt_whose_pod_never_started_has_its_leftover_job_deleted() {
        let (mut s, _) = running(JobView::NotLooked);
        let st = s.status.as_mut().unwrap();
        st.phase = Some(ScanPhase::Failed);
        st.retry_count = Some(1);
        st.completion_time = t(300);
        let seen = Observed {
            job: active(not_started("ErrImagePull", true)),
            in_process: false,
        };
        let plan = decide(&s, &seen, &policy(), at(301));
        assert_eq!(plan.delete_job.as_deref(), Some("web-ingress-abc"));
        assert!(matches!(plan.queue, QueueOp::At(Reason::Retry, _)));
    }

    #[test]
    fn a_suspended_scan_leaves_the_queue_and_a_deleted_one_writes_nothing() {
        let mut s = scan(NucleiScanStatus {
            next_scheduled_time: t(60),
            ..status(ScanPhase::Completed)
        });
        s.spec.suspend = true;
        let plan = decide(&s, &unseen(), &policy(), at(0));
        assert_eq!(plan.queue, QueueOp::Remove);
        assert_eq!(plan.transition, Some(Transition::Scheduled { next: None }));

        let mut gone = scan(status(ScanPhase::Running));
        gone.metadata.deletion_timestamp = t(0);
        let plan = decide(&gone, &unseen(), &policy(), at(0));
        assert_eq!(plan.queue, QueueOp::Remove);
        assert!(!plan.writes_status() && plan.delete_job.is_none());
    }

    #[test]
    fn an_in_process_scan_cut_off_by_a_restart_is_queued_again_but_not_one_running_here() {
        let s = scan(status(ScanPhase::Running));
        let plan = decide(&s, &unseen(), &policy(), at(0));
        assert!(matches!(
            plan.transition,
            Some(Transition::Pending {
                last_error: Some(_)
            })
        ));
        assert_eq!(plan.queue, QueueOp::Now(Reason::Recovered));
        let here = Observed {
            job: JobView::NotLooked,
            in_process: true,
        };
        let plan = decide(&s, &here, &policy(), at(0));
        assert_eq!(plan.queue, QueueOp::Keep);
        assert!(plan.transition.is_none());
    }

    #[test]
    fn bad_annotations_and_a_bad_schedule_become_conditions_and_the_rescan_age_applies() {
        let mut s = scan(NucleiScanStatus {
            last_scan_time: t(0),
            ..status(ScanPhase::Completed)
        });
        s.spec.schedule = Some("every tuesday".into());
        s.metadata.annotations = Some(
            [(
                ANNOTATION_ERRORS.to_string(),
                "timeout: not a duration".to_string(),
            )]
            .into(),
        );
        let plan = decide(&s, &unseen(), &policy(), at(10));
        let conditions = plan.conditions.clone().unwrap();
        let cond = |t: &str| conditions.iter().find(|c| c.type_ == t).unwrap().clone();
        assert_eq!(cond(ANNOTATIONS_VALID).status, "False");
        assert_eq!(cond(SCHEDULE_VALID).status, "False");
        assert_eq!(plan.queue, QueueOp::At(Reason::Scheduled, at(3600)));
    }

    #[test]
    fn a_run_without_a_repositorys_templates_sets_a_condition_once_and_the_next_full_run_clears_it()
    {
        let source = |error: Option<&str>| crate::api::TemplateSource {
            source: crate::git::GitSource::parse("https://h/shared.git").unwrap(),
            commit: None,
            error: error.map(str::to_owned),
        };
        let mut st = NucleiScanStatus {
            last_scan_time: t(0),
            template_sources: vec![source(Some("not cloned"))],
            ..status(ScanPhase::Completed)
        };
        let plan = decide(&scan(st.clone()), &unseen(), &policy(), at(10));
        let conditions = plan.conditions.clone().expect("a condition write");
        let c = conditions
            .iter()
            .find(|c| c.type_ == TEMPLATES_UNAVAILABLE)
            .unwrap();
        assert_eq!(
            (c.status.as_str(), c.reason.as_str()),
            ("True", "CloneFailed")
        );
        assert!(c.message.contains("https://h/shared.git"), "{}", c.message);
        // Written: the next decision writes nothing.
        st.conditions = conditions;
        let again = decide(&scan(st.clone()), &unseen(), &policy(), at(20));
        assert_eq!(again.conditions, None);
        // A run with every repository: the condition goes.
        st.template_sources = vec![source(None)];
        let plan = decide(&scan(st), &unseen(), &policy(), at(30));
        let conditions = plan.conditions.expect("a condition write");
        assert!(conditions.iter().all(|c| c.type_ != TEMPLATES_UNAVAILABLE));
    }

    #[test]
    fn the_waiting_backoff_grows_with_the_time_the_targets_have_been_silent() {
        let b = policy().backoff;
        let no_jitter = |d: Duration, s: &str| {
            let got = b.while_waiting(d, s);
            assert!(got <= Duration::from_secs(600));
            got
        };
        assert!(no_jitter(Duration::ZERO, "a") <= Duration::from_secs(10));
        assert!(no_jitter(Duration::ZERO, "a") >= Duration::from_secs(8));
        // Silent for 70 s (checks at 0, 10, 30, 70): the next waits ~80 s.
        let d = no_jitter(Duration::from_secs(70), "b");
        assert!(
            d <= Duration::from_secs(80) && d >= Duration::from_secs(64),
            "{d:?}"
        );
        assert_eq!(
            no_jitter(Duration::from_secs(86_400), "c").max(Duration::from_secs(480)),
            no_jitter(Duration::from_secs(86_400), "c")
        );
    }
}

/// Invariants of [`decide`] over arbitrary scans, observations and times.
#[cfg(test)]
mod properties {
    use super::*;
    use crate::api::{JobRef, NucleiScanStatus};
    use crate::scan::status::time;
    use chrono::TimeZone;
    use proptest::prelude::*;
    use serde_json::json;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_800_000_000 + secs, 0).unwrap()
    }

    use crate::scan::testing::policy;

    fn phase() -> impl Strategy<Value = Option<ScanPhase>> {
        prop_oneof![
            Just(None),
            Just(Some(ScanPhase::Pending)),
            Just(Some(ScanPhase::Running)),
            Just(Some(ScanPhase::Completed)),
            Just(Some(ScanPhase::Failed)),
        ]
    }

    fn time_opt() -> impl Strategy<Value = Option<i64>> {
        prop::option::of(-5000i64..5000)
    }

    prop_compose! {
        fn scan()(
            phase in phase(),
            generation in 1i64..4,
            observed in prop::option::of(1i64..4),
            retries in prop::option::of(0i32..6),
            last_scan in time_opt(),
            completion in time_opt(),
            next in time_opt(),
            job in any::<bool>(),
            schedule in prop::option::of(prop_oneof![
                Just("*/5 * * * *".to_string()),
                Just("@daily".to_string()),
                Just("not a schedule".to_string()),
            ]),
            suspend in prop::bool::weighted(0.1),
            rescan in prop::option::of(prop_oneof![Just("a"), Just("b")]),
            last_rescan in prop::option::of(prop_oneof![Just("a"), Just("b")]),
            annotation_error in prop::bool::weighted(0.2),
        ) -> NucleiScan {
            let mut annotations = serde_json::Map::new();
            if let Some(r) = rescan {
                annotations.insert(crate::api::labels::RESCAN.into(), json!(r));
            }
            if annotation_error {
                annotations.insert(ANNOTATION_ERRORS.into(), json!("timeout: bad"));
            }
            let mut s: NucleiScan = serde_json::from_value(json!({
                "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
                "kind": "NucleiScan",
                "metadata": {"name": "web", "namespace": "team", "uid": "u1",
                             "generation": generation, "annotations": annotations},
                "spec": {
                    "sourceRef": {"apiVersion": "v1", "kind": "Ingress", "name": "a", "namespace": "team", "uid": "i"},
                    "targets": ["https://a.example.com"],
                    "suspend": suspend
                }
            }))
            .unwrap();
            s.spec.schedule = schedule;
            s.status = Some(NucleiScanStatus {
                phase,
                observed_generation: observed,
                retry_count: retries,
                last_scan_time: last_scan.map(|t| time(at(t))),
                completion_time: completion.map(|t| time(at(t))),
                next_scheduled_time: next.map(|t| time(at(t))),
                job_ref: job.then(|| JobRef { name: "web-abc".into(), uid: "j".into(), ..Default::default() }),
                last_rescan_request: last_rescan.map(str::to_owned),
                ..Default::default()
            });
            s
        }
    }

    fn job_view() -> impl Strategy<Value = JobView> {
        let pod = prop_oneof![
            Just(PodView::Started),
            Just(PodView::NotStarted {
                reason: "ErrImagePull".into(),
                message: "m".into(),
                stuck: true
            }),
            Just(PodView::NotStarted {
                reason: "NoPod".into(),
                message: "m".into(),
                stuck: false
            }),
        ];
        prop_oneof![
            Just(JobView::NotLooked),
            Just(JobView::Missing),
            Just(JobView::Finished(JobOutcome::Complete)),
            Just(JobView::Finished(JobOutcome::Failed {
                reason: "DeadlineExceeded".into(),
                message: "m".into()
            })),
            (pod, -1000i64..1000).prop_map(|(pod, created)| JobView::Active {
                job: JobRef {
                    name: "web-abc".into(),
                    uid: "j".into(),
                    ..Default::default()
                },
                run: "r".into(),
                created: Some(at(created)),
                pod,
            }),
        ]
    }

    /// What the API server makes of a status merge patch.
    fn write(scan: &mut NucleiScan, plan: &Plan) {
        let mut patch = plan
            .transition
            .as_ref()
            .map(Transition::patch)
            .unwrap_or_default();
        if let Some(c) = &plan.conditions {
            patch.insert("conditions".into(), serde_json::to_value(c).unwrap());
        }
        crate::scan::testing::merge_status(scan, patch);
    }

    /// A finished Job after a Failed write: the observation a scan that left
    /// Running gets (its run's Job is no longer what decides).
    fn after_write(seen: &Observed, scan: &NucleiScan, before: Option<ScanPhase>) -> Observed {
        let phase = scan.status.as_ref().and_then(|s| s.phase);
        let job = match (&seen.job, before, phase) {
            // Deleting the Job of a pod that never started takes it away.
            (JobView::Active { .. }, Some(ScanPhase::Running), Some(ScanPhase::Failed)) => {
                JobView::Missing
            }
            (JobView::Active { .. }, Some(ScanPhase::Pending), Some(ScanPhase::Running)) => {
                seen.job.clone()
            }
            (job, _, Some(ScanPhase::Pending)) if !matches!(job, JobView::Active { .. }) => {
                JobView::NotLooked
            }
            (job, _, _) => job.clone(),
        };
        Observed {
            job,
            in_process: seen.in_process,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// Bounded writes: whatever the scan and what is observed of it,
        /// deciding again on what was written settles within four writes at
        /// the same moment (no write loop, whatever the target does). Four:
        /// a rescan request (Pending), a Job already made for it (Running),
        /// its pod past the start timeout (Failed), the retry (its due time).
        #[test]
        fn deciding_again_on_the_written_status_settles_within_four_writes(
            scan in scan(), seen in job_view(), in_process in any::<bool>(), now in -5000i64..5000
        ) {
            let (mut scan, now) = (scan, at(now));
            let mut seen = Observed { job: seen, in_process };
            let mut writes = 0;
            loop {
                let plan = decide(&scan, &seen, &policy(), now);
                if !plan.writes_status() {
                    break;
                }
                writes += 1;
                prop_assert!(writes <= 4, "still writing after 4: {plan:?}");
                let before = scan.status.as_ref().and_then(|s| s.phase);
                write(&mut scan, &plan);
                seen = after_write(&seen, &scan, before);
            }
        }

        /// Every scan is accounted for: once settled, a scan that is not
        /// suspended, deleted, running or out of retries is in the queue,
        /// now or at a due time (a scan with nothing to schedule aside).
        #[test]
        fn a_settled_scan_is_queued_unless_running_suspended_or_out_of_retries(
            scan in scan(), seen in job_view(), now in -5000i64..5000
        ) {
            let (mut scan, now) = (scan, at(now));
            let mut seen = Observed { job: seen, in_process: false };
            let mut plan = decide(&scan, &seen, &policy(), now);
            for _ in 0..4 {
                if !plan.writes_status() {
                    break;
                }
                let before = scan.status.as_ref().and_then(|s| s.phase);
                write(&mut scan, &plan);
                seen = after_write(&seen, &scan, before);
                plan = decide(&scan, &seen, &policy(), now);
            }
            let status = scan.status.clone().unwrap_or_default();
            let retries = status.retry_count.unwrap_or(0).max(0) as u32;
            // A Pending scan whose run's Job exists is being launched: the
            // Job holds its slot and the reconciler looks again shortly.
            let launching = status.phase == Some(ScanPhase::Pending)
                && matches!(seen.job, JobView::Active { .. })
                && plan.requeue_after.is_some();
            let exempt = scan.spec.suspend
                || launching
                || status.phase == Some(ScanPhase::Running)
                || (status.phase == Some(ScanPhase::Failed) && retries > policy().max_retries);
            if !exempt {
                prop_assert!(
                    matches!(plan.queue, QueueOp::Now(_) | QueueOp::At(_, _)),
                    "{:?} left out of the queue: {plan:?}", status.phase
                );
            }
            // A scan that waits says until when.
            if let QueueOp::At(_, due) = plan.queue
                && status.phase != Some(ScanPhase::Pending)
            {
                prop_assert_eq!(status.next_scheduled_time.as_ref().map(chrono), Some(due));
            }
        }
    }
}
