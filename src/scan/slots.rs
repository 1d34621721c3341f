//! Dispatcher slots belong to runs. A slot (and its host locks) is taken
//! when the dispatcher admits a run and freed exactly once when that run's
//! Job finishes or disappears, whatever made it so: the scanner exited, the
//! Job failed or hit its deadline, the scan, its source or its namespace was
//! deleted (the garbage collector deletes the Job), someone deleted the Job,
//! or its TTL removed it before anyone saw it finish.
//!
//! Three paths free slots, so none is lost:
//! 1. [`on_job_event`]: the Job watch shows a Job finished or deleted (at once);
//! 2. [`audit`], every [`AUDIT_INTERVAL`]: a slot whose Job is finished, or
//!    absent for longer than [`JOBLESS_GRACE`] (a watch that missed a delete),
//!    is freed;
//! 3. in sync mode, the in-process scan frees its slot when it ends.
//!
//! Which run a Job belongs to comes from its controller owner reference (the
//! scan's name, in the Job's own namespace) and its run label, and the Job's
//! name must be the one that run gets: nobody frees or adopts a slot with a
//! Job they made up.

use std::time::Duration;

use dispatcher::DispatcherHandle;
use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use super::reconcile::{ScanCtx, target_hosts};
use crate::api::{NucleiScan, ScanKey};
use crate::cache;
use crate::jobs::RunToken;
use crate::jobs::{job_finished, job_name, run_of};

/// How often [`audit`] runs.
pub const AUDIT_INTERVAL: Duration = Duration::from_secs(10);
/// How long a launched run may hold a slot without its Job in the cache
/// before the API server is asked whether the Job exists.
pub const JOBLESS_GRACE: Duration = Duration::from_secs(30);

/// The scan key (`namespace/name`) and run token of a scanner Job, if it is
/// one: controlled by a NucleiScan, labelled with its run, and named for it.
pub fn job_run(job: &Job) -> Option<(String, RunToken)> {
    let namespace = job.namespace()?;
    let owner = job.owner_references().iter().find(|o| {
        o.controller == Some(true)
            && o.kind == NucleiScan::kind(&())
            && o.api_version == NucleiScan::api_version(&())
    })?;
    let run = run_of(job)?;
    (job.name_any() == job_name(&owner.name, run))
        .then(|| (ScanKey::new(namespace, &owner.name).to_string(), run.into()))
}

/// The uid of the scan controlling `job`.
fn owner_uid(job: &Job) -> Option<&str> {
    job.owner_references()
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

/// Frees the slot of the run of a Job the watch shows finished or deleted.
pub fn on_job_event(dispatch: &DispatcherHandle<RunToken>, event: &watcher::Event<Job>) {
    let job = match event {
        watcher::Event::Apply(job) | watcher::Event::InitApply(job)
            if job_finished(job).is_some() =>
        {
            job
        }
        watcher::Event::Delete(job) => job,
        _ => return,
    };
    if let Some((key, run)) = job_run(job)
        && dispatch.finished_run(&key, &run)
    {
        info!(scan = %key, job = job.name_any(), "scan Job ended: slot freed");
    }
}

/// Frees every slot whose run's Job has finished or is gone (see the module
/// documentation); returns how many. Launches in flight are left alone:
/// their launcher answers for them.
pub async fn audit(ctx: &ScanCtx) -> usize {
    let mut freed = 0;
    for run in ctx.dispatch.running() {
        if run.launching {
            continue;
        }
        let Ok(key) = run.key.parse::<ScanKey>() else {
            continue;
        };
        let (namespace, name) = (key.namespace(), key.name());
        let job = job_name(name, &run.payload);
        let backed = match ctx.jobs.get(&ObjectRef::new(&job).within(namespace)) {
            Some(j) => job_finished(&j).is_none(),
            None if run.running_for < JOBLESS_GRACE => true,
            // The cache may have missed it: ask. An error keeps the slot:
            // freeing a slot whose Job runs would break the limit.
            None => match Api::<Job>::namespaced(ctx.client.clone(), namespace)
                .get_opt(&job)
                .await
            {
                Ok(j) => j.is_some_and(|j| job_finished(&j).is_none()),
                Err(e) => {
                    warn!(scan = %run.key, job, "checking a running scan's Job: {e}");
                    true
                }
            },
        };
        if !backed && ctx.dispatch.finished_run(&run.key, &run.payload) {
            warn!(scan = %run.key, job, "no running Job backs this slot: freed");
            freed += 1;
        }
    }
    freed
}

/// Runs [`audit`] every [`AUDIT_INTERVAL`] until `shutdown`.
pub async fn audit_forever(ctx: std::sync::Arc<ScanCtx>, shutdown: impl Future<Output = ()>) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(AUDIT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => { audit(&ctx).await; }
        }
    }
}

/// Gives the dispatcher a slot for every unfinished scan Job left by an
/// earlier operator process, before it admits anything: otherwise a new
/// process would start up to MaxConcurrent Jobs next to the old ones before
/// the reconciler reaches their scans. Only Jobs controlled by a scan that
/// exists (same uid) count. Waits for both caches; returns how many were
/// adopted.
pub async fn adopt_live_jobs(ctx: &ScanCtx, scans: &Store<NucleiScan>) -> usize {
    if !(cache::ready(scans).await && cache::ready(&ctx.jobs).await) {
        return 0;
    }
    let mut adopted = 0;
    for job in ctx.jobs.state() {
        if job_finished(&job).is_some() {
            continue;
        }
        let Some((key, run)) = job_run(&job) else {
            continue;
        };
        let Some(scan) = scan_of(scans, &key) else {
            continue;
        };
        if scan.metadata.uid.as_deref() != owner_uid(&job) {
            continue;
        }
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

fn scan_of(scans: &Store<NucleiScan>, key: &str) -> Option<std::sync::Arc<NucleiScan>> {
    scans.get(&key.parse::<ScanKey>().ok()?.object_ref())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::labels::RUN_LABEL;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn job(name: &str, owner: &str, run: &str, controller: bool) -> Job {
        let mut j = Job::default();
        j.metadata.name = Some(name.into());
        j.metadata.namespace = Some("team".into());
        j.metadata.labels = Some([(RUN_LABEL.to_string(), run.to_string())].into());
        j.metadata.owner_references = Some(vec![OwnerReference {
            api_version: NucleiScan::api_version(&()).into_owned(),
            kind: "NucleiScan".into(),
            name: owner.into(),
            uid: "u1".into(),
            controller: Some(controller),
            ..Default::default()
        }]);
        j
    }

    #[test]
    fn a_scanner_job_names_its_scan_and_run_by_owner_label_and_name() {
        let name = job_name("web-ingress", "abc");
        assert_eq!(
            job_run(&job(&name, "web-ingress", "abc", true)),
            Some(("team/web-ingress".into(), "abc".into()))
        );
    }

    #[test]
    fn a_job_not_named_for_its_run_or_not_controlled_by_a_scan_is_nobodys() {
        // A Job someone made with the right labels but another name.
        assert_eq!(job_run(&job("forged", "web-ingress", "abc", true)), None);
        // Owned but not controlled.
        let name = job_name("web-ingress", "abc");
        assert_eq!(job_run(&job(&name, "web-ingress", "abc", false)), None);
        // Named for another scan's run.
        assert_eq!(job_run(&job(&name, "other-ingress", "abc", true)), None);
    }
}
