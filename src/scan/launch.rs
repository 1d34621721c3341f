//! Launchers: how an admitted scan starts. The Job launcher creates the
//! scanner Job (idempotently: the Job name is fixed per run); the sync
//! launcher runs the scanner in-process under the same limits.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dispatcher::{Admitted, LaunchError, Launched, Launcher, Reason};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::{info, instrument, warn};

use super::reconcile::ScanCtx;
use super::schedule::{DEFAULT_JITTER_FRACTION, backoff_delay};
use super::status::{WAITING_FOR_TARGETS, patch_status, remove_condition, set_condition, time};
use crate::annotations;
use crate::api::{NucleiScan, ScanPhase};
use crate::error::is_conflict;
use crate::jobs::{self, RbacCache};

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("default", key))
}

fn retry(after: Duration, e: impl std::fmt::Display) -> LaunchError {
    LaunchError::new(after, e.to_string())
}

/// Creates one scanner Job per admitted scan.
pub struct JobLauncher {
    pub ctx: Arc<ScanCtx>,
    pub rbac: RbacCache,
}

impl Launcher<String> for JobLauncher {
    async fn launch(&self, admitted: &Admitted<String>) -> Result<Launched, LaunchError> {
        self.launch_job(admitted).await
    }
}

impl JobLauncher {
    #[instrument(skip_all, fields(scan = %admitted.intent.key, reason = ?admitted.intent.reason))]
    async fn launch_job(&self, admitted: &Admitted<String>) -> Result<Launched, LaunchError> {
        let ctx = &self.ctx;
        let (namespace, name) = split_key(&admitted.intent.key);
        let api: Api<NucleiScan> = Api::namespaced(ctx.client.clone(), namespace);
        let scan = match api.get_opt(name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Launched::AlreadyFinished),
            Err(e) => return Err(retry(Duration::from_secs(5), e)),
        };
        let status = scan.status.clone().unwrap_or_default();
        if scan.spec.suspend || scan.meta().deletion_timestamp.is_some() {
            return Ok(Launched::AlreadyFinished);
        }
        if status.phase == Some(ScanPhase::Running) {
            // Launched before (the reconciler adopts or recovers it).
            return Ok(Launched::Running);
        }
        let now = Utc::now();
        let rv = scan.resource_version();

        if !ctx.settings.target_check_timeout.is_zero()
            && !super::probe::any_target_answers(
                &scan.spec.targets,
                ctx.settings.target_check_timeout,
            )
            .await
        {
            let retries = status.retry_count.unwrap_or(0).max(0) as u32;
            let delay = backoff_delay(
                retries,
                ctx.settings.backoff_initial,
                ctx.settings.backoff_max,
                ctx.settings.backoff_multiplier,
                DEFAULT_JITTER_FRACTION,
                &mut rand::rng(),
            );
            let mut conditions = status.conditions.clone();
            set_condition(
                &mut conditions,
                WAITING_FOR_TARGETS,
                true,
                "NoTargetAnswered",
                &format!(
                    "no target answered within {:?}; next check in {}s",
                    ctx.settings.target_check_timeout,
                    delay.as_secs()
                ),
                scan.metadata.generation,
                now,
            );
            let patch = json!({
                "phase": ScanPhase::Pending,
                "conditions": conditions,
                "retryCount": retries + 1,
                "lastRetryTime": time(now),
                "nextScheduledTime": time(now + chrono::Duration::from_std(delay).unwrap_or_default()),
            });
            if let Err(e) = patch_status(&api, name, rv.as_deref(), patch).await {
                warn!("status not written: {e}");
            }
            return Err(retry(delay, "no target answered the availability check"));
        }

        let params = match jobs::effective_params(&scan, &ctx.settings) {
            // The Job is named after the run the dispatcher admitted, so the
            // reconciler frees exactly this run's slot when the Job ends.
            Ok(p) => jobs::JobParams {
                run_token: admitted.intent.payload.clone(),
                ..p
            },
            Err(message) => {
                // A configuration error will not fix itself by retrying.
                let patch = json!({"phase": ScanPhase::Failed, "lastError": message, "completionTime": time(now)});
                let _ = patch_status(&api, name, rv.as_deref(), patch).await;
                ctx.event(&scan, EventType::Warning, "ScanFailed", message)
                    .await;
                return Ok(Launched::AlreadyFinished);
            }
        };
        if let Err(e) = self
            .rbac
            .ensure(
                &ctx.client,
                namespace,
                &ctx.settings.scanner_service_account,
            )
            .await
        {
            return Err(retry(
                Duration::from_secs(10),
                format!("ensuring scanner RBAC: {e}"),
            ));
        }
        let job = jobs::build_job(&scan, &params);
        let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), namespace);
        // One scan never runs twice at once: a Job of an earlier run that is
        // still active (its status write lost in a crash, or a run superseded
        // by a spec change) must end before the next starts.
        let lp = ListParams::default().labels(&format!("{}={}", jobs::SCAN_LABEL, name));
        match jobs_api.list(&lp).await {
            Ok(list) => {
                if let Some(active) = list
                    .items
                    .iter()
                    .find(|j| j.name_any() != job.name_any() && jobs::job_finished(j).is_none())
                {
                    return Err(retry(
                        Duration::from_secs(10),
                        format!(
                            "Job {} of an earlier run is still active",
                            active.name_any()
                        ),
                    ));
                }
            }
            Err(e) => return Err(retry(Duration::from_secs(5), e)),
        }
        let job = match jobs_api.create(&PostParams::default(), &job).await {
            Ok(j) => {
                ctx.metrics.jobs_created.inc();
                j
            }
            // Created before a crash; this run is that Job.
            Err(e) if is_conflict(&e) => match jobs_api.get(&job.name_any()).await {
                Ok(j) => j,
                Err(e) => return Err(retry(Duration::from_secs(2), e)),
            },
            Err(e) => return Err(retry(Duration::from_secs(5), e)),
        };
        ctx.metrics
            .queue_wait
            .observe(admitted.waited.as_secs_f64());
        let rescan = annotations::rescan_request(scan.annotations());
        // No resourceVersion: these fields are the launcher's alone, and a
        // concurrent condition update by the reconciler must not make the
        // Running write fail while the Job already exists.
        let mut patch = json!({
            "phase": ScanPhase::Running,
            "jobRef": {
                "name": job.name_any(),
                "uid": job.uid().unwrap_or_default(),
                "startTime": time(now),
            },
            "lastScanTime": time(now),
            "observedGeneration": scan.metadata.generation,
            "nextScheduledTime": null,
        });
        if admitted.intent.reason == Reason::ManualRescan || rescan.is_some() {
            patch["lastRescanRequest"] = json!(rescan);
        }
        if let Err(e) = patch_status(&api, name, None, patch).await {
            // The Job exists: the retry adopts it (same run, same Job name).
            return Err(retry(
                Duration::from_secs(2),
                format!("writing Running status: {e}"),
            ));
        }
        let mut conditions = status.conditions.clone();
        if remove_condition(&mut conditions, WAITING_FOR_TARGETS) {
            let _ = patch_status(&api, name, None, json!({"conditions": conditions})).await;
        }
        info!(job = job.name_any(), targets = scan.spec.targets.len(), timeout = ?params.timeout, "scan Job created");
        ctx.event(
            &scan,
            EventType::Normal,
            "ScanJobCreated",
            format!("created Job {}", job.name_any()),
        )
        .await;
        Ok(Launched::Running)
    }
}
