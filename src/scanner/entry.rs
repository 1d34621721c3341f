//! `nuclei-operator scanner`: what a scanner Job's pod runs. Its command
//! line and environment are the other half of the Job the operator builds
//! ([`crate::jobs::build_job`]): both take the variable names from the
//! constants in [`crate::jobs`], and a test checks that the Job sets
//! nothing the scanner does not read. It owns the pod's exit codes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use tracing::info;

use super::run::{RunId, RunResult, ScannerDefaults, children_peak_rss_bytes, run};
use crate::api::{ScanKey, Severity};
use crate::jobs::{
    DEFAULT_SEVERITY_ENV, DEFAULT_TEMPLATES_ENV, EXTRA_TEMPLATE_DIRS_ENV, INTERACTSH_URL_ENV,
    MAX_RATE_LIMIT_ENV, POD_NAME_ENV, SCAN_RUN_ENV, SCAN_UID_ENV, SCANNER_TIMEOUT_ENV,
    TARGET_POLICY_ENV, TEMPLATE_SOURCES_ENV, TEMPLATES_PATH_ENV,
};
use crate::target_policy::TargetPolicy;

/// The scan completed (or no longer expects this run: nothing to record).
pub const EXIT_DONE: u8 = 0;
/// The scan failed, and the failure is recorded in its status.
pub const EXIT_FAILED: u8 = 1;
/// The result could not be recorded before the run's deadline.
pub const EXIT_UNRECORDED: u8 = 2;

/// The scanner's command line (each flag also read from its environment
/// variable, which is how the Job passes all but `--scan`).
#[derive(clap::Args, Debug)]
pub struct ScannerArgs {
    /// The scan to run, `NAMESPACE/NAME`.
    #[arg(long)]
    pub scan: String,
    /// Built-in templates directory.
    #[arg(long, env = TEMPLATES_PATH_ENV, default_value = "/nuclei-templates")]
    pub templates_path: PathBuf,
    /// More template directories (ConfigMaps, git clones), `:`-separated.
    #[arg(long, env = EXTRA_TEMPLATE_DIRS_ENV, value_delimiter = ':')]
    pub extra_template_dirs: Vec<PathBuf>,
    /// The git sources cloned into `/templates/git/<i>`, in that order (JSON).
    #[arg(long, env = TEMPLATE_SOURCES_ENV, value_parser = parse_template_sources)]
    pub template_sources: Option<crate::git::Repositories>,
    /// Which of them to read from the operator's template cache, as JSON.
    #[arg(long, env = crate::template_cache::TEMPLATE_CACHE_ENV, value_parser = parse_template_cache)]
    pub template_cache: Option<crate::template_cache::CacheEnv>,
    /// Scan timeout when the scan sets none (Go duration).
    #[arg(long, env = SCANNER_TIMEOUT_ENV, default_value = "30m", value_parser = crate::duration::parse_duration)]
    pub timeout: Duration,
    /// The nuclei binary.
    #[arg(long, env = "NUCLEI_BINARY", default_value = "nuclei")]
    pub nuclei: PathBuf,
    /// Templates when the scan lists none (comma-separated).
    #[arg(long, env = DEFAULT_TEMPLATES_ENV, value_delimiter = ',')]
    pub default_templates: Vec<String>,
    /// Severities when the scan lists none (comma-separated).
    #[arg(long, env = DEFAULT_SEVERITY_ENV, value_delimiter = ',', value_parser = crate::settings::parse_severity)]
    pub default_severity: Vec<Severity>,
    /// Most requests per second a scan may send (0: no cap).
    #[arg(long, env = MAX_RATE_LIMIT_ENV, default_value = "0")]
    pub max_rate_limit: u32,
    /// Interactsh server for OAST templates; unset turns interactsh off.
    #[arg(long, env = INTERACTSH_URL_ENV)]
    pub interactsh_url: Option<String>,
    /// Which hosts and addresses the scan may reach, as JSON; unset applies
    /// the built-in defaults.
    #[arg(long, env = TARGET_POLICY_ENV, value_parser = parse_target_policy)]
    pub target_policy: Option<TargetPolicy>,
    /// The scan's uid: nothing is written to a scan of another uid.
    #[arg(long, env = SCAN_UID_ENV)]
    pub scan_uid: String,
    /// The run's token: nothing is written once the scan has moved on from it.
    #[arg(long, env = SCAN_RUN_ENV)]
    pub run: String,
    /// This pod's name (downward API).
    #[arg(long, env = POD_NAME_ENV)]
    pub pod_name: Option<String>,
}

fn parse_template_sources(s: &str) -> Result<crate::git::Repositories, String> {
    serde_json::from_str(s)
        .map(crate::git::Repositories)
        .map_err(|e| format!("not a list of git sources: {e}"))
}

fn parse_template_cache(s: &str) -> Result<crate::template_cache::CacheEnv, String> {
    serde_json::from_str(s).map_err(|e| format!("not a template cache: {e}"))
}

fn parse_target_policy(s: &str) -> Result<TargetPolicy, String> {
    serde_json::from_str(s).map_err(|e| format!("not a target policy: {e}"))
}

/// Runs the scan `args` name and records its result; the pod's exit code
/// ([`EXIT_DONE`], [`EXIT_FAILED`], [`EXIT_UNRECORDED`]). The reason of a
/// failure goes to the termination log, where `kubectl describe pod` shows it.
pub async fn main(args: ScannerArgs) -> ExitCode {
    let Ok(key) = args.scan.parse::<ScanKey>() else {
        return unrecorded("--scan must be NAMESPACE/NAME");
    };
    let (namespace, name) = (key.namespace(), key.name());
    let defaults = ScannerDefaults {
        templates_path: args.templates_path,
        extra_template_dirs: args.extra_template_dirs,
        git_sources: args.template_sources.unwrap_or_default().0,
        template_cache: args.template_cache,
        timeout: args.timeout,
        templates: args.default_templates,
        severity: args.default_severity,
        interactsh_url: args.interactsh_url,
        max_rate_limit: (args.max_rate_limit > 0).then_some(args.max_rate_limit),
        nuclei: args.nuclei,
        pod_name: args.pod_name,
        target_policy: args.target_policy.unwrap_or_default(),
    };
    let client = match kube::Client::try_default().await {
        Ok(c) => c,
        Err(e) => return unrecorded(&format!("in-cluster configuration: {e}")),
    };
    let id = RunId {
        uid: args.scan_uid,
        token: args.run.into(),
    };
    let result = run(client, namespace, name, &defaults, &id).await;
    if let Some(bytes) = children_peak_rss_bytes().filter(|b| *b > 0) {
        // What to size the scanner's memory request and limit by.
        info!(
            namespace,
            name,
            nuclei_peak_rss_bytes = bytes,
            "nuclei exited"
        );
    }
    match result {
        Ok(RunResult::Completed { .. } | RunResult::MovedOn { .. }) => ExitCode::from(EXIT_DONE),
        Ok(RunResult::Failed { message }) => {
            eprintln!("scan failed: {message}");
            std::fs::write("/dev/termination-log", &message).ok();
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => unrecorded(&format!("{e:#}")),
    }
}

fn unrecorded(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    std::fs::write("/dev/termination-log", message).ok();
    ExitCode::from(EXIT_UNRECORDED)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use clap::{Args, Command};

    use super::*;
    use crate::api::NucleiScan;
    use crate::jobs::{SCANNER_CONTAINER, build_job, effective_params};
    use crate::settings::Settings;

    /// The environment variables the scanner reads.
    fn read() -> BTreeSet<String> {
        ScannerArgs::augment_args(Command::new("scanner"))
            .get_arguments()
            .filter_map(|a| a.get_env())
            .map(|e| e.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_job_sets_only_what_the_scanner_reads_and_all_it_needs() {
        // Every option that adds a variable: defaults, a rate cap,
        // interactsh, a template ConfigMap, a cached repository.
        let scan: NucleiScan = serde_json::from_value(serde_json::json!({
            "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
            "kind": "NucleiScan",
            "metadata": {"name": "web-ingress", "namespace": "shop", "uid": "u-1"},
            "spec": {
                "sourceRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                    "name": "web", "namespace": "shop", "uid": "i-1"},
                "targets": ["https://web.example.com"],
                "scannerConfig": {"templateConfigMaps": ["team"], "templateURLs": ["https://h/t.git#v1"]},
            },
        }))
        .unwrap();
        let settings = Settings {
            default_templates: vec!["cves/".into()],
            default_severity: vec![Severity::High],
            max_rate_limit: 100,
            interactsh_url: Some("https://oast.example.com".into()),
            ..Settings::default()
        };
        let mut params = effective_params(&scan, &settings).unwrap();
        // The scan's repository is in the template cache.
        params.cache = Some(crate::jobs::CacheRef {
            namespace: "ops".into(),
            manifest: std::sync::Arc::new(crate::template_cache::Manifest {
                fetched_at: chrono::Utc::now(),
                sources: vec![crate::template_cache::Entry {
                    source: params.template_sources[0].clone(),
                    commit: Some("c".repeat(40)),
                    ..Default::default()
                }],
            }),
        });
        let job = build_job(&scan, &params);
        let pod = job.spec.unwrap().template.spec.unwrap();
        let scanner = pod
            .containers
            .iter()
            .find(|c| c.name == SCANNER_CONTAINER)
            .unwrap();
        let set: BTreeSet<String> = scanner
            .env
            .iter()
            .flatten()
            .map(|e| e.name.clone())
            .collect();
        let read = read();
        // HOME is for nuclei (its config and cache), LOG_FORMAT for the
        // logger, which reads it before the command line.
        let not_args = BTreeSet::from(["HOME".to_string(), "LOG_FORMAT".to_string()]);
        let unread: Vec<&String> = set
            .difference(&read)
            .filter(|v| !not_args.contains(*v))
            .collect();
        assert!(
            unread.is_empty(),
            "set by the Job, read by nobody: {unread:?}"
        );
        // The nuclei binary is the image's; everything else comes from the Job.
        let unset: Vec<&String> = read
            .difference(&set)
            .filter(|v| *v != "NUCLEI_BINARY")
            .collect();
        assert!(
            unset.is_empty(),
            "read by the scanner, never set by the Job: {unset:?}"
        );
        // `--scan` is the one argument.
        assert_eq!(
            scanner.args.as_deref(),
            Some(
                &[
                    "scanner".to_string(),
                    "--scan".into(),
                    "shop/web-ingress".into()
                ][..]
            )
        );
    }
}
