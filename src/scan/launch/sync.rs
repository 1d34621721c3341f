//! Sync mode (`SCANNER_MODE=sync`): the scanner runs inside the operator,
//! under the same dispatcher limits, for clusters that cannot run Jobs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use dispatcher::{Admitted, LaunchError, Launched, Launcher};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::reflector::Store;
use serde_json::Value;
use tokio::task::AbortHandle;
use tracing::{info, warn};

use super::{fail_attempt, scan_key_of};
use crate::api::{NucleiScan, ScanKey};
use crate::jobs::RunToken;
use crate::scan::fence::{RunCheck, check_run, write_if};
use crate::scan::phase::{next_retry_count, retries};
use crate::scan::reconcile::ScanCtx;
use crate::scan::slots::AUDIT_INTERVAL;
use crate::scan::status::{Attempt, Transition};
use crate::scanner::run::{RunId, ScannerDefaults, run};

/// In-process scans running now: scan key → run token and the task.
type Runs = Arc<Mutex<HashMap<String, (RunToken, AbortHandle)>>>;

/// Runs admitted scans as in-process tasks.
pub struct SyncLauncher {
    ctx: Arc<ScanCtx>,
    defaults: ScannerDefaults,
    runs: Runs,
}

/// Stops in-process scans whose scan is gone or has moved on (deleted,
/// disabled, re-created, its spec changed), every [`AUDIT_INTERVAL`], and
/// frees their slots, as the Job watch does for scanner Jobs in pod mode.
pub async fn audit_forever(
    ctx: Arc<ScanCtx>,
    runs: Runs,
    scans: Store<NucleiScan>,
    shutdown: impl Future<Output = ()>,
) {
    let mut shutdown = std::pin::pin!(shutdown);
    let mut tick = tokio::time::interval(AUDIT_INTERVAL);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = tick.tick() => {}
        }
        let stale: Vec<(String, RunToken, AbortHandle)> = {
            let runs = runs.lock().expect("runs lock");
            runs.iter()
                .filter(|(key, (run, _))| {
                    let Ok(key) = key.parse::<ScanKey>() else {
                        return true;
                    };
                    match scans.get(&key.object_ref()) {
                        None => true,
                        // Unreadable for now: nothing says it moved on.
                        Some(scan) if crate::cache::unreadable(scan.as_ref()).is_some() => false,
                        Some(scan) => matches!(
                            check_run(&scan, &scan.uid().unwrap_or_default(), run),
                            RunCheck::MovedOn(_)
                        ),
                    }
                })
                .map(|(key, (run, task))| (key.clone(), run.clone(), task.clone()))
                .collect()
        };
        for (key, run, task) in stale {
            task.abort();
            runs.lock().expect("runs lock").remove(&key);
            if ctx.dispatch.finished_run(&key, &run) {
                info!(scan = %key, "the scan moved on: in-process scan stopped, slot freed");
            }
        }
    }
}

impl SyncLauncher {
    /// The in-process scans running now, for [`audit_forever`].
    pub fn runs(&self) -> Runs {
        self.runs.clone()
    }

    /// A launcher using the operator's settings as scanner defaults.
    pub fn new(ctx: Arc<ScanCtx>) -> Self {
        let s = &ctx.settings;
        if !s.template_repositories.sources.is_empty() {
            warn!(
                "TEMPLATE_REPOSITORIES is ignored in sync mode: there is no scanner pod to clone them into; scans run the image's templates only"
            );
        }
        let defaults = ScannerDefaults {
            templates_path: s.nuclei_templates_path.clone(),
            extra_template_dirs: Vec::new(),
            git_sources: Vec::new(),
            template_cache: None,
            timeout: s.scanner_timeout,
            templates: s.default_templates.clone(),
            severity: s.default_severity.clone(),
            nuclei: std::env::var_os("NUCLEI_BINARY")
                .map(Into::into)
                .unwrap_or_else(|| "nuclei".into()),
            pod_name: s.pod_name.clone(),
            interactsh_url: s.interactsh_url.clone(),
            max_rate_limit: (s.max_rate_limit > 0).then_some(s.max_rate_limit),
            target_policy: s.target_policy(),
        };
        SyncLauncher {
            ctx,
            defaults,
            runs: Runs::default(),
        }
    }
}

/// Why `scan` cannot run in sync mode, if it cannot: template ConfigMaps and
/// `templateURLs` reach the scanner as pod volumes and init containers, which
/// an in-process scan does not have.
pub fn unsupported_in_sync_mode(scan: &NucleiScan) -> Option<String> {
    let config = scan.spec.scanner_config.as_ref()?;
    let mut fields = Vec::new();
    if !config.template_config_maps.is_empty() {
        fields.push("spec.scannerConfig.templateConfigMaps");
    }
    if !config.template_urls.is_empty() {
        fields.push("spec.scannerConfig.templateURLs");
    }
    (!fields.is_empty()).then(|| {
        format!(
            "{} need SCANNER_MODE=pod: sync mode scans inside the operator, with no pod to mount or clone templates into",
            fields.join(" and ")
        )
    })
}

impl Launcher<RunToken> for SyncLauncher {
    async fn launch(&self, admitted: &Admitted<RunToken>) -> Result<Launched, LaunchError> {
        let retry = |e: kube::Error| LaunchError::new(Duration::from_secs(5), e.to_string());
        let key = admitted.intent.key.clone();
        let key_for_registry = key.clone();
        let run_token = admitted.intent.payload.clone();
        let Some(scan_key) = scan_key_of(admitted) else {
            return Ok(Launched::AlreadyFinished);
        };
        let (namespace, name) = (scan_key.namespace().to_owned(), scan_key.name().to_owned());
        let api: Api<NucleiScan> = Api::namespaced(self.ctx.client.clone(), &namespace);
        let Some(scan) = api.get_opt(&name).await.map_err(retry)? else {
            return Ok(Launched::AlreadyFinished);
        };
        let uid = scan.uid().unwrap_or_default();
        // A Running run of this token here is one a restart cut off: the
        // reconciler recovers it.
        if scan.spec.suspend || check_run(&scan, &uid, &run_token) != RunCheck::NotStarted {
            return Ok(Launched::AlreadyFinished);
        }
        if let Some(message) = unsupported_in_sync_mode(&scan) {
            // No pod means nothing to mount or clone into; scanning without
            // the templates the scan asked for would look like a clean result.
            fail_attempt(&api, &scan, &run_token, message)
                .await
                .map_err(retry)?;
            return Ok(Launched::AlreadyFinished);
        }
        let now = Utc::now();
        let running = Transition::Running {
            run: run_token.to_string(),
            job: None,
            at: now,
            attempt: Attempt::of(&scan),
        };
        let written = write_if(
            &api,
            &name,
            &uid,
            &run_token,
            &RunCheck::NotStarted,
            Some(&scan),
            |_| Value::Object(running.patch()),
        )
        .await
        .map_err(retry)?;
        if written.is_err() {
            return Ok(Launched::AlreadyFinished);
        }
        self.ctx.metrics.jobs_created.inc();
        let (ctx, defaults) = (self.ctx.clone(), self.defaults.clone());
        let id = RunId {
            uid,
            token: run_token.clone(),
        };
        let runs = self.runs.clone();
        // Held across the spawn so the task cannot finish (and remove its
        // entry) before the entry is made.
        let mut registry = self.runs.lock().expect("runs lock");
        let task = tokio::spawn(async move {
            if let Err(e) = run(ctx.client.clone(), &namespace, &name, &defaults, &id).await {
                warn!(scan = %key, "in-process scan failed: {e:#}");
                let failed = Transition::Failed {
                    message: format!("{e:#}"),
                    retry_count: next_retry_count(retries(&scan)),
                    at: Utc::now(),
                    attempt: None,
                };
                let _ = write_if(
                    &api,
                    &name,
                    &id.uid,
                    &id.token,
                    &RunCheck::Current,
                    None,
                    |_| Value::Object(failed.patch()),
                )
                .await;
            }
            runs.lock().expect("runs lock").remove(&key);
            ctx.dispatch.finished_run(&key, &id.token);
        });
        registry.insert(key_for_registry, (run_token, task.abort_handle()));
        Ok(Launched::Running)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ScannerConfig;

    fn scan(config: Option<ScannerConfig>) -> NucleiScan {
        let mut s = NucleiScan::new("s", Default::default());
        s.spec.scanner_config = config;
        s
    }

    #[test]
    fn template_configmaps_and_urls_are_refused_in_sync_mode_with_a_reason() {
        assert_eq!(unsupported_in_sync_mode(&scan(None)), None);
        let plain = ScannerConfig {
            timeout: Some("5m".into()),
            ..ScannerConfig::default()
        };
        assert_eq!(unsupported_in_sync_mode(&scan(Some(plain))), None);
        let cms = ScannerConfig {
            template_config_maps: vec!["t".into()],
            ..ScannerConfig::default()
        };
        let why = unsupported_in_sync_mode(&scan(Some(cms))).unwrap();
        assert!(
            why.starts_with("spec.scannerConfig.templateConfigMaps need SCANNER_MODE=pod"),
            "{why}"
        );
        let both = ScannerConfig {
            template_config_maps: vec!["t".into()],
            template_urls: vec!["https://example.com/t.git".into()],
            ..ScannerConfig::default()
        };
        let why = unsupported_in_sync_mode(&scan(Some(both))).unwrap();
        assert!(
            why.contains("templateConfigMaps and spec.scannerConfig.templateURLs"),
            "{why}"
        );
    }
}
