//! How an admitted run starts: as a Job in pod mode (here), or as a task
//! in the operator's process in sync mode ([`sync`]), side by side with the
//! parts both share ([`scan_key_of`], [`fail_attempt`], [`is_permanent`]).
//!
//! The Job launcher:
//! For the run the dispatcher admitted (its token is the intent's payload),
//! it reads the scan and goes on only while the scan still waits for that
//! run ([`check_run`]); checks that a target answers; creates the run's Job
//! (idempotently: the Job's name is fixed by the run, so a retry after a
//! crash finds it); and records Running with a fenced write. What can go
//! wrong ends in one of three ways:
//! - the targets are silent: the scan stays Pending, `WaitingForTargets`,
//!   and is checked again after a backoff that grows while they stay silent;
//! - an error retrying cannot fix (a refused configuration, a Job the API
//!   server rejects): the attempt is recorded as Failed with the reason,
//!   and the reconciler retries it with backoff up to MAX_RETRIES;
//! - anything else (API unavailable, conflicts): the launch is retried with
//!   backoff, without a status write.

pub mod sync;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::Utc;
use dispatcher::{Admitted, LaunchError, Launched, Launcher};
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::events::EventType;
use serde_json::{Value, json};
use tracing::{debug, info, instrument, warn};

use super::fence::{RunCheck, check_run, write_if};
use super::phase::{after, next_retry_count, retries, whole_second};
use super::reconcile::ScanCtx;
use super::status::{
    Attempt, POD_NOT_STARTED, Transition, WAITING_FOR_TARGETS, chrono, remove_condition,
    set_condition, time,
};
use crate::api::{JobRef, NucleiScan, ScanKey};
use crate::error::is_conflict;
use crate::jobs::RunToken;
use crate::jobs::{self, RbacCache};

/// The scan an admitted intent names; `None` (logged) for a key no scan
/// could have, which is nothing to launch.
pub fn scan_key_of(admitted: &Admitted<RunToken>) -> Option<ScanKey> {
    admitted
        .intent
        .key
        .parse()
        .inspect_err(|e| warn!("nothing to launch: {e}"))
        .ok()
}

/// Whether a failed API request will fail the same way when repeated: the
/// request itself was refused (invalid, forbidden, too large), as opposed
/// to the server being unavailable, busy or in conflict.
pub fn is_permanent(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if matches!(s.code, 400 | 403 | 404 | 413 | 422))
}

/// The API server's message of a failed request, or the error itself.
fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({})", s.message, s.reason),
        other => other.to_string(),
    }
}

/// Creates one scanner Job per admitted run.
pub struct JobLauncher {
    ctx: Arc<ScanCtx>,
    rbac: RbacCache,
    /// Failed launch attempts in a row per scan key, for the retry backoff.
    failures: Mutex<HashMap<String, u32>>,
}

impl JobLauncher {
    /// A launcher for the operator's settings.
    pub fn new(ctx: Arc<ScanCtx>) -> Self {
        JobLauncher {
            ctx,
            rbac: RbacCache::default(),
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// A launch to retry with backoff; logs why.
    fn retry(&self, key: &str, why: impl std::fmt::Display) -> LaunchError {
        let attempt = {
            let mut failures = self.failures.lock().expect("failures lock");
            let n = failures.entry(key.to_owned()).or_default();
            *n = n.saturating_add(1);
            *n - 1
        };
        let after = self.ctx.policy.backoff.delay(attempt, key);
        LaunchError::new(after, why.to_string())
    }

    fn done(&self, key: &str, launched: Launched) -> Result<Launched, LaunchError> {
        self.failures.lock().expect("failures lock").remove(key);
        Ok(launched)
    }
}

impl Launcher<RunToken> for JobLauncher {
    async fn launch(&self, admitted: &Admitted<RunToken>) -> Result<Launched, LaunchError> {
        let key = admitted.intent.key.as_str();
        match self.launch_job(admitted).await {
            Ok(launched) => self.done(key, launched),
            Err(Retry::Now(e)) => Err(e),
            Err(Retry::Backoff(why)) => Err(self.retry(key, why)),
        }
    }
}

/// How a launch that did not go through is retried.
enum Retry {
    /// After the given error's delay (the targets' own backoff).
    Now(LaunchError),
    /// After the launcher's growing backoff for this key.
    Backoff(String),
}

impl<E: std::fmt::Display> From<E> for Retry {
    fn from(e: E) -> Self {
        Retry::Backoff(e.to_string())
    }
}

impl JobLauncher {
    #[instrument(skip_all, fields(scan = %admitted.intent.key, reason = ?admitted.intent.reason))]
    async fn launch_job(&self, admitted: &Admitted<RunToken>) -> Result<Launched, Retry> {
        let ctx = &self.ctx;
        let run = admitted.intent.payload.as_str();
        let Some(key) = scan_key_of(admitted) else {
            return Ok(Launched::AlreadyFinished);
        };
        let (namespace, name) = (key.namespace(), key.name());
        let api: Api<NucleiScan> = Api::namespaced(ctx.client.clone(), namespace);
        let Some(scan) = api.get_opt(name).await? else {
            return Ok(Launched::AlreadyFinished);
        };
        if scan.spec.suspend {
            return Ok(Launched::AlreadyFinished);
        }
        let uid = scan.uid().unwrap_or_default();
        match check_run(&scan, &uid, run) {
            RunCheck::NotStarted => {}
            // Launched before (the Job holds the slot until it ends).
            RunCheck::Current => return Ok(Launched::Running),
            RunCheck::MovedOn(why) => {
                debug!(why, "the scan no longer waits for this run");
                return Ok(Launched::AlreadyFinished);
            }
        }

        if !ctx.settings.target_check_timeout.is_zero()
            && !super::probe::any_target_answers(
                &scan.spec.targets,
                ctx.settings.target_check_timeout,
                &ctx.settings.target_policy(),
            )
            .await
        {
            return Err(Retry::Now(self.wait_for_targets(&api, &scan, run).await));
        }

        let params = match jobs::effective_params(&scan, &ctx.settings) {
            // The Job is named after the admitted run, so the run's slot is
            // freed exactly when this Job ends.
            Ok(p) => jobs::JobParams {
                run_token: run.into(),
                cache: ctx.templates.as_ref().and_then(|c| {
                    Some(jobs::CacheRef {
                        namespace: c.namespace().to_owned(),
                        manifest: c.current()?,
                    })
                }),
                ..p
            },
            Err(message) => {
                fail_attempt(&api, &scan, run, message).await?;
                return Ok(Launched::AlreadyFinished);
            }
        };
        self.rbac
            .ensure(
                &ctx.client,
                namespace,
                &ctx.settings.scanner_service_account,
                &ctx.settings.scanner_cluster_role,
                params.cached_sources().map(|c| c.namespace).as_deref(),
            )
            .await
            .map_err(|e| format!("ensuring scanner RBAC: {e}"))?;
        let job = jobs::build_job(&scan, &params);
        let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
        // One scan never runs twice at once: a Job of an earlier run that is
        // still active must end before the next starts.
        let lp =
            ListParams::default().labels(&format!("{}={}", crate::api::labels::SCAN_LABEL, name));
        if let Some(active) = jobs_api
            .list(&lp)
            .await?
            .items
            .iter()
            .find(|j| j.name_any() != job.name_any() && jobs::job_finished(j).is_none())
        {
            return Err(Retry::Backoff(format!(
                "Job {} of an earlier run is still active",
                active.name_any()
            )));
        }
        let (job, created) = match jobs_api.create(&PostParams::default(), &job).await {
            Ok(j) => {
                ctx.metrics.jobs_created.inc();
                (j, true)
            }
            // Created before a crash or a failed status write: this run's Job.
            Err(e) if is_conflict(&e) => (jobs_api.get(&job.name_any()).await?, false),
            Err(e) if is_permanent(&e) => {
                let message = format!("the API server refused the scan Job: {}", api_message(&e));
                fail_attempt(&api, &scan, run, message).await?;
                return Ok(Launched::AlreadyFinished);
            }
            Err(e) => return Err(format!("creating the scan Job: {e}").into()),
        };
        ctx.metrics
            .queue_wait
            .observe(admitted.waited.as_secs_f64());

        let now = Utc::now();
        let running = Transition::Running {
            run: run.to_owned(),
            job: Some(JobRef {
                name: job.name_any(),
                uid: job.uid().unwrap_or_default(),
                pod_name: None,
                start_time: Some(time(now)),
            }),
            at: now,
            attempt: Attempt::of(&scan),
        };
        let written = match write_if(
            &api,
            name,
            &uid,
            run,
            &RunCheck::NotStarted,
            Some(&scan),
            |current| {
                let mut patch = running.patch();
                let mut conditions = current
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                let a = remove_condition(&mut conditions, WAITING_FOR_TARGETS);
                let b = remove_condition(&mut conditions, POD_NOT_STARTED);
                if a || b {
                    patch.insert("conditions".into(), json!(conditions));
                }
                Value::Object(patch)
            },
        )
        .await
        {
            Ok(written) => written,
            // The Job exists and holds the slot: the reconciler, woken by the
            // Job's creation, records the run (see `phase`).
            Err(e) => {
                warn!(job = job.name_any(), "recording Running failed: {e}");
                return Ok(Launched::Running);
            }
        };
        match written {
            Ok(_) | Err(RunCheck::Current) => {}
            Err(RunCheck::NotStarted) => unreachable!("write_if only refuses another state"),
            Err(RunCheck::MovedOn(why)) => {
                // Nobody waits for this run any more: its Job must not scan.
                // The slot stays until the Job is gone (the Job watch frees
                // it), since its pod may already run.
                info!(
                    job = job.name_any(),
                    why, "the scan moved on while its Job was created: deleting the Job"
                );
                if let Err(e) = jobs_api
                    .delete(&job.name_any(), &DeleteParams::background())
                    .await
                {
                    warn!(job = job.name_any(), "deleting an unwanted scan Job: {e}");
                }
                return Ok(Launched::Running);
            }
        }
        // An earlier attempt's Job that has already ended: recorded as the
        // run (the reconciler fails it, as no result came), but it holds no
        // slot any more.
        if jobs::job_finished(&job).is_some() {
            return Ok(Launched::AlreadyFinished);
        }
        info!(job = job.name_any(), targets = scan.spec.targets.len(), timeout = ?params.timeout, created, "scan running");
        if created {
            ctx.event(
                &scan,
                EventType::Normal,
                "ScanJobCreated",
                format!("created Job {}", job.name_any()),
            )
            .await;
        }
        Ok(Launched::Running)
    }

    /// Records that no target answered (once per attempt) and how long to
    /// wait: the delay grows with the time the targets have been silent.
    async fn wait_for_targets(
        &self,
        api: &Api<NucleiScan>,
        scan: &NucleiScan,
        run: &str,
    ) -> LaunchError {
        let ctx = &self.ctx;
        let now = Utc::now();
        let silent_since = scan
            .status
            .as_ref()
            .and_then(|s| s.conditions.iter().find(|c| c.type_ == WAITING_FOR_TARGETS))
            .filter(|c| c.status == "True")
            .map_or(now, |c| chrono(&c.last_transition_time));
        let silent_for = (now - silent_since).to_std().unwrap_or_default();
        let delay = ctx
            .policy
            .backoff
            .while_waiting(silent_for, &format!("{run}/{}", silent_for.as_secs()));
        let next = whole_second(after(now, delay));
        let message = format!(
            "no target answered within {}; next check at {}",
            crate::duration::format_duration(ctx.settings.target_check_timeout),
            next.format("%H:%M:%S UTC"),
        );
        let waiting = Transition::WaitingForTargets {
            next,
            attempt: Attempt::of(scan),
        };
        let uid = scan.uid().unwrap_or_default();
        let write = write_if(
            api,
            &scan.name_any(),
            &uid,
            run,
            &RunCheck::NotStarted,
            Some(scan),
            |current| {
                let mut patch = waiting.patch();
                let mut conditions = current
                    .status
                    .as_ref()
                    .map(|s| s.conditions.clone())
                    .unwrap_or_default();
                set_condition(
                    &mut conditions,
                    WAITING_FOR_TARGETS,
                    true,
                    "NoTargetAnswered",
                    &message,
                    current.metadata.generation,
                    now,
                );
                patch.insert("conditions".into(), json!(conditions));
                Value::Object(patch)
            },
        )
        .await;
        if let Err(e) = write {
            warn!("status not written: {e}");
        }
        LaunchError::new(delay, "no target answered the availability check")
    }
}

/// Records an attempt that failed before its run could start (a refused
/// configuration or Job) as Failed, counting it as a retry, so the
/// reconciler retries it with backoff up to MAX_RETRIES. Nothing is written
/// if the scan no longer waits for `run`. Shared by both launchers.
pub async fn fail_attempt(
    api: &Api<NucleiScan>,
    scan: &NucleiScan,
    run: &str,
    message: String,
) -> Result<(), kube::Error> {
    warn!(error = %message, "scan cannot start");
    let retries = retries(scan);
    let failed = Transition::Failed {
        message,
        retry_count: next_retry_count(retries),
        at: Utc::now(),
        attempt: Some(Attempt::of(scan)),
    };
    let uid = scan.uid().unwrap_or_default();
    write_if(
        api,
        &scan.name_any(),
        &uid,
        run,
        &RunCheck::NotStarted,
        Some(scan),
        |_| Value::Object(failed.patch()),
    )
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Status::failure("refused", "Reason").with_code(code).boxed())
    }

    #[test]
    fn only_requests_the_server_refused_are_permanent_failures() {
        for code in [400, 403, 404, 413, 422] {
            assert!(is_permanent(&api(code)), "{code}");
        }
        // Conflicts, throttling and an unavailable server pass: retried
        // without a status write.
        for code in [409, 429, 500, 503, 504] {
            assert!(!is_permanent(&api(code)), "{code}");
        }
        let transport = kube::Error::Service("connection refused".into());
        assert!(!is_permanent(&transport));
        assert_eq!(api_message(&api(422)), "refused (Reason)");
    }
}
