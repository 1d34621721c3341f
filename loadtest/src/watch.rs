//! Watches that record when objects appear (NucleiScans) and when scanner
//! Jobs are created and finish, in seconds since the run's epoch.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::{WatchStreamExt, watcher};
use nuclei_operator::api::NucleiScan;
use nuclei_operator::api::labels::{
    MANAGED_BY, MANAGED_BY_LABEL, RUN_LABEL, SCAN_KEY_ANNOTATION, SCAN_LABEL,
};
use tokio::task::JoinHandle;

use crate::stats::JobObs;

/// What the watches saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// NucleiScan `namespace/name` → first seen.
    pub scans: HashMap<String, f64>,
    /// Job uid → observation.
    pub jobs: HashMap<String, JobObs>,
    /// Watch errors (the watches retry with back-off).
    pub errors: u64,
}

/// A shared recorder with a common clock.
#[derive(Clone)]
pub struct Recorder {
    pub epoch: Instant,
    pub seen: Arc<Mutex<Seen>>,
}

impl Recorder {
    pub fn new(epoch: Instant) -> Self {
        Recorder {
            epoch,
            seen: Arc::new(Mutex::new(Seen::default())),
        }
    }

    /// Seconds since the epoch.
    pub fn now(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64()
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every Job seen so far, by creation.
    pub fn jobs(&self) -> Vec<JobObs> {
        let mut v: Vec<JobObs> = self.lock().jobs.values().cloned().collect();
        v.sort_by(|a, b| a.added.total_cmp(&b.added));
        v
    }

    /// Starts the NucleiScan watch (metadata only; all namespaces).
    pub fn watch_scans(&self, client: kube::Client) -> JoinHandle<()> {
        let rec = self.clone();
        tokio::spawn(async move {
            let api: Api<PartialObjectMeta<NucleiScan>> = Api::all(client);
            let stream = watcher(api, watcher::Config::default()).default_backoff();
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let t = rec.now();
                match ev {
                    Ok(watcher::Event::Apply(m) | watcher::Event::InitApply(m)) => {
                        let key = format!("{}/{}", m.namespace().unwrap_or_default(), m.name_any());
                        rec.lock().scans.entry(key).or_insert(t);
                    }
                    Ok(_) => {}
                    Err(_) => rec.lock().errors += 1,
                }
            }
        })
    }

    /// Starts the watch of the operator's scanner Jobs.
    pub fn watch_jobs(&self, client: kube::Client) -> JoinHandle<()> {
        let rec = self.clone();
        tokio::spawn(async move {
            let api: Api<Job> = Api::all(client);
            let cfg =
                watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
            let stream = watcher(api, cfg).default_backoff();
            futures::pin_mut!(stream);
            while let Some(ev) = stream.next().await {
                let t = rec.now();
                match ev {
                    Ok(watcher::Event::Apply(job) | watcher::Event::InitApply(job)) => {
                        rec.record_job(&job, t);
                    }
                    Ok(_) => {}
                    Err(_) => rec.lock().errors += 1,
                }
            }
        })
    }

    fn record_job(&self, job: &Job, t: f64) {
        let Some(uid) = job.uid() else { return };
        let finished = nuclei_operator::jobs::job_finished(job).map(|o| match o {
            nuclei_operator::jobs::JobOutcome::Complete => "Complete".to_string(),
            nuclei_operator::jobs::JobOutcome::Failed { reason, .. } => format!("Failed: {reason}"),
        });
        let mut seen = self.lock();
        let obs = seen.jobs.entry(uid.clone()).or_insert_with(|| {
            let ns = job.namespace().unwrap_or_default();
            let scan = job
                .annotations()
                .get(SCAN_KEY_ANNOTATION)
                .cloned()
                .unwrap_or_else(|| format!("{ns}/?"));
            JobObs {
                namespace: ns,
                name: job.name_any(),
                uid,
                scan,
                scan_label: job.labels().get(SCAN_LABEL).cloned().unwrap_or_default(),
                run: job.labels().get(RUN_LABEL).cloned().unwrap_or_default(),
                added: t,
                finished: None,
                outcome: None,
            }
        });
        if obs.finished.is_none()
            && let Some(outcome) = finished
        {
            obs.finished = Some(t);
            obs.outcome = Some(outcome);
        }
    }
}
