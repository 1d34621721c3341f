//! Status writes and conditions of a `NucleiScan`: the named transitions
//! every writer uses (the only place a phase is spelled into a patch), the
//! conditions, and the merge patch that writes them.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Map, Value, json};

use crate::api::{JobRef, NucleiScan, ScanPhase};

pub use crate::api::conditions::{
    ANNOTATIONS_VALID, POD_NOT_STARTED, SCHEDULE_VALID, TEMPLATES_UNAVAILABLE, WAITING_FOR_TARGETS,
};

/// What one attempt to run a scan acts on: the spec generation and the
/// rescan request it was started for. Recording them keeps the same
/// generation or request from starting another attempt.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Attempt {
    /// `metadata.generation` of the scan.
    pub generation: Option<i64>,
    /// The value of the rescan annotation, if set.
    pub rescan: Option<String>,
}

impl Attempt {
    /// The attempt `scan` as it stands asks for.
    pub fn of(scan: &NucleiScan) -> Self {
        use kube::ResourceExt;
        Attempt {
            generation: scan.metadata.generation,
            rescan: crate::api::labels::rescan_request(scan.annotations()).map(str::to_owned),
        }
    }

    fn record(&self, patch: &mut Map<String, Value>) {
        if let Some(g) = self.generation {
            patch.insert("observedGeneration".into(), json!(g));
        }
        if let Some(r) = &self.rescan {
            patch.insert("lastRescanRequest".into(), json!(r));
        }
    }
}

/// A change of a scan's status, by name. Conditions are written beside it.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// Wanted again; waits in the queue (new scan, spec change, rescan
    /// request, recovery). Clears `nextScheduledTime`.
    Pending {
        /// Why it is scanned again, when that is news.
        last_error: Option<String>,
    },
    /// No target answered: still Pending, checked again at `next`.
    WaitingForTargets {
        /// When the targets are checked again.
        next: DateTime<Utc>,
        /// The attempt that found them silent.
        attempt: Attempt,
    },
    /// A run started (its Job created, or the in-process scan begun).
    Running {
        /// The run's token: the scanner writes only while it is current.
        run: String,
        /// The run's Job; `None` for an in-process scan.
        job: Option<JobRef>,
        /// When it started.
        at: DateTime<Utc>,
        /// What it acts on.
        attempt: Attempt,
    },
    /// The scanner finished and recorded its findings.
    Completed {
        /// `status.findings`, already within the byte budget.
        findings: Value,
        /// `status.summary`.
        summary: Value,
        /// `status.fingerprints` (`None` removes them: too many to keep).
        fingerprints: Option<String>,
        /// When it finished.
        at: DateTime<Utc>,
    },
    /// The attempt failed: nuclei failed, the Job failed or vanished, its
    /// pod never started, or it could not be launched.
    Failed {
        /// Why (also `lastError` and the ScanFailed Event).
        message: String,
        /// The new `retryCount`.
        retry_count: i32,
        /// When it failed.
        at: DateTime<Utc>,
        /// Set when the attempt failed before any run started (a launch
        /// error): the attempt is recorded as started and ended at `at`.
        attempt: Option<Attempt>,
    },
    /// Only `nextScheduledTime` changes (`None` removes it).
    Scheduled {
        /// When the next run is due.
        next: Option<DateTime<Utc>>,
    },
}

impl Transition {
    /// The phase it leads to, if it changes the phase.
    pub fn phase(&self) -> Option<ScanPhase> {
        match self {
            Transition::Pending { .. } | Transition::WaitingForTargets { .. } => {
                Some(ScanPhase::Pending)
            }
            Transition::Running { .. } => Some(ScanPhase::Running),
            Transition::Completed { .. } => Some(ScanPhase::Completed),
            Transition::Failed { .. } => Some(ScanPhase::Failed),
            Transition::Scheduled { .. } => None,
        }
    }

    /// The status fields it writes, as a JSON merge patch of `status`.
    pub fn patch(&self) -> Map<String, Value> {
        let mut p = Map::new();
        if let Some(phase) = self.phase() {
            p.insert("phase".into(), json!(phase));
        }
        match self {
            Transition::Pending { last_error } => {
                p.insert("nextScheduledTime".into(), Value::Null);
                if let Some(e) = last_error {
                    p.insert("lastError".into(), json!(e));
                }
            }
            Transition::WaitingForTargets { next, attempt } => {
                p.insert("nextScheduledTime".into(), json!(time(*next)));
                attempt.record(&mut p);
            }
            Transition::Running {
                run,
                job,
                at,
                attempt,
            } => {
                p.insert("runToken".into(), json!(run));
                // Whole, with podName null: a merge patch would keep the
                // previous run's pod name otherwise.
                let job = job.as_ref().map(|j| {
                    json!({"name": j.name, "uid": j.uid, "podName": null, "startTime": j.start_time})
                });
                p.insert("jobRef".into(), json!(job));
                p.insert("lastScanTime".into(), json!(time(*at)));
                p.insert("nextScheduledTime".into(), Value::Null);
                attempt.record(&mut p);
            }
            Transition::Completed {
                findings,
                summary,
                fingerprints,
                at,
            } => {
                p.insert("findings".into(), findings.clone());
                p.insert("summary".into(), summary.clone());
                p.insert("fingerprints".into(), json!(fingerprints));
                p.insert("completionTime".into(), json!(time(*at)));
                p.insert("lastSuccessTime".into(), json!(time(*at)));
                p.insert("lastError".into(), Value::Null);
                p.insert("retryCount".into(), json!(0));
            }
            Transition::Failed {
                message,
                retry_count,
                at,
                attempt,
            } => {
                p.insert("lastError".into(), json!(message));
                p.insert("completionTime".into(), json!(time(*at)));
                p.insert("retryCount".into(), json!(retry_count));
                if let Some(attempt) = attempt {
                    p.insert("lastScanTime".into(), json!(time(*at)));
                    p.insert("nextScheduledTime".into(), Value::Null);
                    attempt.record(&mut p);
                }
            }
            Transition::Scheduled { next } => {
                p.insert("nextScheduledTime".into(), json!(next.map(time)));
            }
        }
        p
    }
}

/// `Time` from chrono.
pub fn time(dt: DateTime<Utc>) -> Time {
    Time(
        Timestamp::new(dt.timestamp(), dt.timestamp_subsec_nanos() as i32)
            .unwrap_or(Timestamp::UNIX_EPOCH),
    )
}

/// chrono from `Time`.
pub fn chrono(t: &Time) -> DateTime<Utc> {
    DateTime::from_timestamp(t.0.as_second(), t.0.subsec_nanosecond().max(0) as u32)
        .unwrap_or_default()
}

/// Sets a condition; `true` when anything changed (the transition time only
/// moves when the status does, per API conventions).
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    now: DateTime<Utc>,
) -> bool {
    let status_s = if status { "True" } else { "False" };
    let message: String = message.chars().take(32 * 1024).collect();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) if c.status == status_s && c.reason == reason && c.message == message => false,
        Some(c) => {
            if c.status != status_s {
                c.last_transition_time = time(now);
            }
            c.status = status_s.into();
            c.reason = reason.into();
            c.message = message;
            c.observed_generation = generation;
            true
        }
        None => {
            conditions.push(Condition {
                type_: type_.into(),
                status: status_s.into(),
                reason: reason.into(),
                message,
                observed_generation: generation,
                last_transition_time: time(now),
            });
            true
        }
    }
}

/// Removes a condition; `true` when it was there.
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) -> bool {
    let before = conditions.len();
    conditions.retain(|c| c.type_ != type_);
    before != conditions.len()
}

/// Merge-patches `status`. With `resource_version`, the write fails with 409
/// when the object changed since it was read, so a list such as `conditions`
/// is never overwritten from a stale copy.
pub async fn patch_status(
    api: &Api<NucleiScan>,
    name: &str,
    resource_version: Option<&str>,
    status: Value,
) -> Result<NucleiScan, kube::Error> {
    let mut body = json!({ "status": status });
    if let Some(rv) = resource_version {
        body["metadata"] = json!({ "resourceVersion": rv });
    }
    api.patch_status(
        name,
        &PatchParams {
            field_manager: Some(crate::api::labels::FIELD_MANAGER.into()),
            ..Default::default()
        },
        &Patch::Merge(&body),
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setting_an_unchanged_condition_reports_no_change() {
        let now = Utc::now();
        let mut c = Vec::new();
        assert!(set_condition(&mut c, "A", true, "R", "m", Some(1), now));
        assert!(!set_condition(&mut c, "A", true, "R", "m", Some(1), now));
        assert!(set_condition(&mut c, "A", false, "R", "m", Some(1), now));
        assert_eq!(c.len(), 1);
        assert!(remove_condition(&mut c, "A"));
        assert!(!remove_condition(&mut c, "A"));
    }

    #[test]
    fn times_round_trip_between_chrono_and_kubernetes() {
        let dt = DateTime::from_timestamp(1_700_000_000, 123_000_000).unwrap();
        assert_eq!(chrono(&time(dt)), dt);
    }
}
