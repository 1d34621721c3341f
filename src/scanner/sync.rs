//! Sync mode (`SCANNER_MODE=sync`): the scanner runs inside the operator,
//! under the same dispatcher limits, for clusters that cannot run Jobs.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use dispatcher::{Admitted, LaunchError, Launched, Launcher};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::events::EventType;
use serde_json::json;
use tracing::warn;

use super::run::{ScannerDefaults, run};
use crate::api::{NucleiScan, ScanPhase};
use crate::scan::reconcile::ScanCtx;
use crate::scan::status::{patch_status, time};

/// Runs admitted scans as in-process tasks.
pub struct SyncLauncher {
    ctx: Arc<ScanCtx>,
    defaults: ScannerDefaults,
}

impl SyncLauncher {
    /// A launcher using the operator's settings as scanner defaults.
    pub fn new(ctx: Arc<ScanCtx>) -> Self {
        let s = &ctx.settings;
        let defaults = ScannerDefaults {
            templates_path: s.nuclei_templates_path.clone(),
            extra_template_dirs: Vec::new(),
            timeout: s.scanner_timeout,
            templates: s.default_templates.clone(),
            severity: s.default_severity.clone(),
            nuclei: std::env::var_os("NUCLEI_BINARY")
                .map(Into::into)
                .unwrap_or_else(|| "nuclei".into()),
            pod_name: s.pod_name.clone(),
        };
        SyncLauncher { ctx, defaults }
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

impl Launcher<String> for SyncLauncher {
    async fn launch(&self, admitted: &Admitted<String>) -> Result<Launched, LaunchError> {
        let key = admitted.intent.key.clone();
        let (namespace, name) = key
            .split_once('/')
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .unwrap_or_default();
        let api: Api<NucleiScan> = Api::namespaced(self.ctx.client.clone(), &namespace);
        let scan = match api.get_opt(&name).await {
            Ok(Some(s)) => s,
            Ok(None) => return Ok(Launched::AlreadyFinished),
            Err(e) => return Err(LaunchError::new(Duration::from_secs(5), e.to_string())),
        };
        if scan.spec.suspend {
            return Ok(Launched::AlreadyFinished);
        }
        let now = Utc::now();
        if let Some(message) = unsupported_in_sync_mode(&scan) {
            // No pod means nothing to mount or clone into; scanning without
            // the templates the scan asked for would look like a clean result.
            let patch = json!({
                "phase": ScanPhase::Failed,
                "lastError": message,
                "completionTime": time(now),
                "observedGeneration": scan.metadata.generation,
            });
            if let Err(e) =
                patch_status(&api, &name, scan.resource_version().as_deref(), patch).await
            {
                return Err(LaunchError::new(Duration::from_secs(2), e.to_string()));
            }
            self.ctx
                .event(&scan, EventType::Warning, "ScanFailed", message)
                .await;
            return Ok(Launched::AlreadyFinished);
        }
        let patch = json!({
            "phase": ScanPhase::Running,
            "lastScanTime": time(now),
            "observedGeneration": scan.metadata.generation,
            "nextScheduledTime": null,
            "lastRescanRequest": crate::annotations::rescan_request(scan.annotations()),
        });
        if let Err(e) = patch_status(&api, &name, scan.resource_version().as_deref(), patch).await {
            return Err(LaunchError::new(Duration::from_secs(2), e.to_string()));
        }
        self.ctx.metrics.jobs_created.inc();
        let (ctx, defaults) = (self.ctx.clone(), self.defaults.clone());
        let run_id = admitted.intent.payload.clone();
        tokio::spawn(async move {
            if let Err(e) = run(ctx.client.clone(), &namespace, &name, &defaults).await {
                warn!(scan = %key, "in-process scan failed: {e:#}");
                let patch = json!({"phase": ScanPhase::Failed, "lastError": format!("{e:#}"), "completionTime": time(Utc::now())});
                let _ = patch_status(&api, &name, None, patch).await;
            }
            ctx.dispatch.finished_run(&key, &run_id);
        });
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
