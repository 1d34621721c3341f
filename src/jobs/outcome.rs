//! Whether a Job has finished, and how.

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ContainerStatus, Pod};

/// Most bytes of a container's termination message quoted in a failure.
const CAUSE_MAX: usize = 512;

/// How a finished Job ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JobOutcome {
    /// The Job's `Complete` condition is true: the scanner exited 0.
    Complete,
    /// The Job's `Failed` condition is true.
    Failed {
        /// The condition's reason, e.g. `BackoffLimitExceeded` or
        /// `DeadlineExceeded`; empty when unset.
        reason: String,
        /// The condition's message; empty when unset.
        message: String,
    },
}

/// Whether `job` has finished, and how; `None` while it runs.
///
/// Only the terminal `Complete` and `Failed` conditions count: they are set
/// once every pod of the Job has terminated. `SuccessCriteriaMet` and
/// `FailureTarget` come earlier, while pods may still be running (and writing
/// the status), so a Job with only those is not finished yet.
pub fn job_finished(job: &Job) -> Option<JobOutcome> {
    let conditions = job.status.as_ref()?.conditions.as_ref()?;
    let is_true = |type_: &str| {
        conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == "True")
    };
    if let Some(failed) = is_true("Failed") {
        return Some(JobOutcome::Failed {
            reason: failed.reason.clone().unwrap_or_default(),
            message: failed.message.clone().unwrap_or_default(),
        });
    }
    is_true("Complete").map(|_| JobOutcome::Complete)
}

/// Why the pods of a failed Job failed, as the first container that exited
/// non-zero says it (init containers first, e.g. a `git clone` of
/// `templateURLs`): `init container git-clone-0 exited 128: fatal: …`, the
/// message's tail. `None` when no container says.
pub fn pod_failure(pods: &[Pod]) -> Option<String> {
    let failed = |kind: &'static str, statuses: Option<&Vec<ContainerStatus>>| {
        statuses.into_iter().flatten().find_map(move |c| {
            let t = c.state.as_ref()?.terminated.as_ref()?;
            (t.exit_code != 0).then(|| {
                let message = t.message.as_deref().unwrap_or_default().trim();
                let mut start = message.len().saturating_sub(CAUSE_MAX);
                while !message.is_char_boundary(start) {
                    start += 1;
                }
                let message = message[start..].replace('\n', " / ");
                match message.is_empty() {
                    true => format!("{kind} {} exited {}", c.name, t.exit_code),
                    false => format!("{kind} {} exited {}: {message}", c.name, t.exit_code),
                }
            })
        })
    };
    pods.iter()
        .filter_map(|p| p.status.as_ref())
        .find_map(|st| {
            failed("init container", st.init_container_statuses.as_ref())
                .or_else(|| failed("container", st.container_statuses.as_ref()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};

    use super::super::fixtures::*;

    // ---- finished Jobs -----------------------------------------------------

    fn job_with(conditions: &[(&str, &str, &str, &str)]) -> Job {
        Job {
            status: Some(JobStatus {
                conditions: Some(
                    conditions
                        .iter()
                        .map(|(type_, status, reason, message)| JobCondition {
                            type_: (*type_).into(),
                            status: (*status).into(),
                            reason: (!reason.is_empty()).then(|| (*reason).into()),
                            message: (!message.is_empty()).then(|| (*message).into()),
                            last_transition_time: Some(at(1_700_000_000)),
                            last_probe_time: Some(at(1_700_000_000)),
                        })
                        .collect(),
                ),
                ..JobStatus::default()
            }),
            ..Job::default()
        }
    }

    #[test]
    fn a_job_without_terminal_conditions_is_still_running() {
        assert_eq!(job_finished(&Job::default()), None);
        let started = Job {
            status: Some(JobStatus {
                active: Some(1),
                ready: Some(1),
                ..JobStatus::default()
            }),
            ..Job::default()
        };
        assert_eq!(job_finished(&started), None);
        assert_eq!(job_finished(&job_with(&[])), None);
        assert_eq!(
            job_finished(&job_with(&[("Suspended", "True", "JobSuspended", "")])),
            None
        );
    }

    #[test]
    fn a_completed_job_is_complete() {
        // What the Job controller writes (v1.31+): SuccessCriteriaMet first,
        // then Complete once the pod is gone.
        let job = job_with(&[
            (
                "SuccessCriteriaMet",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ),
            (
                "Complete",
                "True",
                "CompletionsReached",
                "Reached expected number of succeeded pods",
            ),
        ]);
        assert_eq!(job_finished(&job), Some(JobOutcome::Complete));
    }

    #[test]
    fn interim_conditions_do_not_finish_a_job() {
        let succeeding = job_with(&[(
            "SuccessCriteriaMet",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
        )]);
        assert_eq!(job_finished(&succeeding), None);
        let failing = job_with(&[(
            "FailureTarget",
            "True",
            "DeadlineExceeded",
            "Job was active longer than specified deadline",
        )]);
        assert_eq!(
            job_finished(&failing),
            None,
            "its pod may still be terminating"
        );
    }

    #[test]
    fn a_job_past_its_deadline_failed_with_deadline_exceeded() {
        let job = job_with(&[
            (
                "FailureTarget",
                "True",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ),
            (
                "Failed",
                "True",
                "DeadlineExceeded",
                "Job was active longer than specified deadline",
            ),
        ]);
        assert_eq!(
            job_finished(&job),
            Some(JobOutcome::Failed {
                reason: "DeadlineExceeded".into(),
                message: "Job was active longer than specified deadline".into(),
            })
        );
    }

    #[test]
    fn a_job_out_of_retries_failed_with_backoff_limit_exceeded() {
        let job = job_with(&[
            (
                "FailureTarget",
                "True",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ),
            (
                "Failed",
                "True",
                "BackoffLimitExceeded",
                "Job has reached the specified backoff limit",
            ),
        ]);
        assert_eq!(
            job_finished(&job),
            Some(JobOutcome::Failed {
                reason: "BackoffLimitExceeded".into(),
                message: "Job has reached the specified backoff limit".into(),
            })
        );
    }

    #[test]
    fn false_conditions_do_not_count_and_missing_texts_are_empty() {
        assert_eq!(
            job_finished(&job_with(&[("Complete", "False", "", "")])),
            None
        );
        assert_eq!(
            job_finished(&job_with(&[("Failed", "Unknown", "", "")])),
            None
        );
        assert_eq!(
            job_finished(&job_with(&[("Failed", "True", "", "")])),
            Some(JobOutcome::Failed {
                reason: String::new(),
                message: String::new()
            })
        );
    }

    // ---- why the pods failed -------------------------------------------------

    #[test]
    fn the_first_container_that_exited_non_zero_says_why_init_containers_first() {
        let pod: Pod = serde_json::from_value(serde_json::json!({"status": {
            "initContainerStatuses": [
                {"name": "git-clone-0", "image": "g", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0}}},
                {"name": "git-clone-1", "image": "g", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 128,
                    "message": "Cloning into '/templates/git/1'...\nfatal: remote error: repository not exported: /missing.git\n"}}},
            ],
            "containerStatuses": [
                {"name": "scanner", "image": "s", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 2, "message": "never ran"}}},
            ],
        }}))
        .unwrap();
        assert_eq!(
            pod_failure(std::slice::from_ref(&pod)).as_deref(),
            Some(
                "init container git-clone-1 exited 128: Cloning into '/templates/git/1'... / fatal: remote error: repository not exported: /missing.git"
            )
        );
        let scanner_only: Pod = serde_json::from_value(serde_json::json!({"status": {
            "containerStatuses": [
                {"name": "scanner", "image": "s", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 2, "message": "é".repeat(400)}}},
            ],
        }}))
        .unwrap();
        let cause = pod_failure(&[Pod::default(), scanner_only]).unwrap();
        assert!(
            cause.starts_with("container scanner exited 2: é"),
            "{cause}"
        );
        assert!(cause.len() <= "container scanner exited 2: ".len() + CAUSE_MAX);
        assert_eq!(pod_failure(&[Pod::default()]), None);
    }
}
