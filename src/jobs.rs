//! Scanner Jobs: the run token and Job name of a scan run, the effective pod
//! configuration, the Job itself, whether a Job has finished, and the
//! per-namespace ServiceAccount, Role and RoleBinding scanner pods run as.
//!
//! Everything but [`ensure_scanner_rbac`] and [`RbacCache::ensure`] does no I/O.
//!
//! A run is identified by its [`run_token`], derived only from state stored in
//! the NucleiScan. The dispatcher creates the Job named by [`job_name`] and then
//! records the run (`status.lastScanTime`); if it crashes in between, the same
//! state gives the same token and name after a restart, so creating the Job
//! again fails with `AlreadyExists` and the existing Job is adopted instead of
//! a second one being started.
//!
//! Pod layout (see [`build_job`]):
//!
//! | path | volume | written by |
//! |---|---|---|
//! | `/tmp` (also `HOME`) | `tmp` emptyDir | nuclei, git |
//! | `/templates/git/<i>` | `git-templates` emptyDir | init container `git-clone-<i>` (scanner: read-only) |
//! | `/templates/configmaps/<name>` | ConfigMap `<name>` | read-only |
//!
//! The scanner learns the extra directories from [`EXTRA_TEMPLATE_DIRS_ENV`].

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, ResourceRequirements,
    SeccompProfile, SecurityContext, ServiceAccount, Toleration, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};

use crate::annotations::rescan_request;
use crate::api::{NucleiScan, Severity};
use crate::duration::format_duration;
use crate::settings::Settings;
use crate::target_policy::TargetPolicy;

/// Field manager of every server-side apply made here.
pub const FIELD_MANAGER: &str = "nuclei-operator";

/// `app.kubernetes.io/managed-by` label key.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Value of [`MANAGED_BY_LABEL`] on every object the operator creates.
pub const MANAGED_BY: &str = "nuclei-operator";
/// `app.kubernetes.io/component` label key.
pub const COMPONENT_LABEL: &str = "app.kubernetes.io/component";
/// Value of [`COMPONENT_LABEL`] on scanner Jobs, their pods and scanner RBAC.
pub const COMPONENT_SCANNER: &str = "scanner";
/// Label on a Job and its pod: the name of its NucleiScan (cut to 63
/// characters; [`SCAN_KEY_ANNOTATION`] has it in full).
pub const SCAN_LABEL: &str = "nuclei.homelab.mortenolsen.pro/scan";
/// Label on a Job and its pod: the [`run_token`] of its run.
pub const RUN_LABEL: &str = "nuclei.homelab.mortenolsen.pro/run";
/// Annotation on a Job: `<namespace>/<name>` of its NucleiScan, uncut.
pub const SCAN_KEY_ANNOTATION: &str = "nuclei.homelab.mortenolsen.pro/scan-key";
/// Pod annotation that keeps Istio from injecting a sidecar, which would keep
/// the pod (and so the Job) running after the scanner exits.
pub const ISTIO_INJECT_ANNOTATION: &str = "sidecar.istio.io/inject";

/// Name of the scanner container.
pub const SCANNER_CONTAINER: &str = "scanner";
/// Environment variable of the scanner: the scan's uid (nothing is written
/// to a scan of another uid).
pub const SCAN_UID_ENV: &str = "SCAN_UID";
/// Environment variable of the scanner: the run's token (nothing is written
/// once the scan has moved on from it).
pub const SCAN_RUN_ENV: &str = "SCAN_RUN";
/// Environment variable of the scanner: its pod's name (downward API).
pub const POD_NAME_ENV: &str = "POD_NAME";
/// Environment variable of the scanner: the built-in templates directory.
pub const TEMPLATES_PATH_ENV: &str = "NUCLEI_TEMPLATES_PATH";
/// Environment variable of the scanner: the timeout of a scan that sets none.
pub const SCANNER_TIMEOUT_ENV: &str = "SCANNER_TIMEOUT";
/// Environment variable with the extra template directories of a run,
/// colon-separated: `/templates/git/<i>` per `templateURLs` entry, then
/// `/templates/configmaps/<name>` per template ConfigMap. Absent when there
/// are none.
pub const EXTRA_TEMPLATE_DIRS_ENV: &str = "EXTRA_TEMPLATE_DIRS";
/// Environment variable of the scanner: templates for a scan that names none.
pub const DEFAULT_TEMPLATES_ENV: &str = "DEFAULT_TEMPLATES";
/// Environment variable of the scanner: severities for a scan that names none.
pub const DEFAULT_SEVERITY_ENV: &str = "DEFAULT_SEVERITY";
/// Environment variable of the scanner: the operator's rate-limit cap.
pub const MAX_RATE_LIMIT_ENV: &str = "MAX_RATE_LIMIT";
/// Environment variable of the scanner: the interactsh server, if any.
pub const INTERACTSH_URL_ENV: &str = "INTERACTSH_URL";
/// Environment variable of the scanner: `json` or `text`, as the operator.
pub const LOG_FORMAT_ENV: &str = "LOG_FORMAT";
/// The target policy, as JSON ([`TargetPolicy`]).
pub const TARGET_POLICY_ENV: &str = "TARGET_POLICY";
/// Where the `templateURLs` repositories are cloned, one numbered directory each.
pub const GIT_TEMPLATES_DIR: &str = "/templates/git";
/// Where template ConfigMaps are mounted, one directory per ConfigMap name.
pub const CONFIGMAP_TEMPLATES_DIR: &str = "/templates/configmaps";
/// The writable scratch directory (an emptyDir) and `HOME` of every container.
pub const TMP_DIR: &str = "/tmp";
/// User and group id of every container (distroless `nonroot`).
pub const SCANNER_UID: i64 = 65532;
/// `sizeLimit` of the scanner's `/tmp` (nuclei's home and work files): a
/// scan that fills it is evicted instead of filling the node's disk.
pub const TMP_SIZE_LIMIT: &str = "1Gi";
/// `sizeLimit` of the cloned template repositories.
pub const GIT_TEMPLATES_SIZE_LIMIT: &str = "2Gi";

/// Default name of the scanner ClusterRole (SCANNER_CLUSTER_ROLE) and of
/// its RoleBinding in each namespace with scans.
pub const SCANNER_CLUSTER_ROLE: &str = "nuclei-scanner";

/// Time the Job's active deadline allows beyond the scan timeout, for
/// scheduling, image pulls and writing the report, so the scanner's own timeout
/// fires first and the scan fails with a clear message rather than the Job's
/// bare `DeadlineExceeded`.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(60);
/// Extra deadline margin per `templateURLs` clone, which runs before the scan
/// and counts against the Job's deadline.
pub const CLONE_DEADLINE_MARGIN: Duration = Duration::from_secs(60);
/// Most `templateURLs` a scan may list (one init container each).
pub const MAX_TEMPLATE_URLS: usize = 16;
/// Most `templateConfigMaps` a scan may list (one volume each).
pub const MAX_TEMPLATE_CONFIG_MAPS: usize = 16;
/// Longest accepted `templateURLs` entry.
pub const MAX_TEMPLATE_URL_LEN: usize = 2048;

// Kubernetes limits: label values and DNS-1123 labels (Job names become the
// `job-name` label of their pods).
const MAX_LABEL_VALUE_LEN: usize = 63;
const MAX_NAME_LEN: usize = 63;
const NAME_HASH_LEN: usize = 10;

// Transports git may use for a clone. `ext::` would run a command and `file://`
// would read the pod's file system; git blocks `ext` by default, but say so
// explicitly in case the image's git is configured otherwise.
const GIT_ALLOW_PROTOCOL: &str = "https:http:ssh:git";

/// A deterministic token for the next run of `scan`.
///
/// Derived only from stored state: the scan's uid, `metadata.generation`,
/// `status.lastScanTime` (whole seconds, as the apiserver keeps it, or
/// `never`), `status.retryCount` (unset counts as 0), the manual-rescan
/// annotation and `status.runToken`, the token of the run before. The same
/// state gives the same token; starting a run records its token, so the run
/// after it always gets another one (even two runs started within one
/// second). 16 hex digits of FNV-1a 64, stable across Rust releases and
/// operator restarts.
pub fn run_token(scan: &NucleiScan) -> String {
    let status = scan.status.as_ref();
    let uid = scan.metadata.uid.as_deref().unwrap_or("");
    let generation = scan
        .metadata
        .generation
        .map_or_else(|| "none".to_owned(), |g| g.to_string());
    // Seconds: the apiserver stores times to the second, so sub-second
    // precision in memory would give a different token after a round trip.
    let last_scan = status
        .and_then(|s| s.last_scan_time.as_ref())
        .map_or_else(|| "never".to_owned(), |t| t.0.as_second().to_string());
    let retries = status.and_then(|s| s.retry_count).unwrap_or(0).to_string();
    let rescan = rescan_request(scan.annotations()).unwrap_or("");

    match status.and_then(|s| s.run_token.as_deref()) {
        Some(previous) => stable_hash(&[
            "v1",
            uid,
            &generation,
            &last_scan,
            &retries,
            rescan,
            previous,
        ]),
        // As before run tokens were recorded, so a Job made then is found.
        None => stable_hash(&["v1", uid, &generation, &last_scan, &retries, rescan]),
    }
}

/// The Job name of a run: the scan name (lower-cased, other characters than
/// `a-z0-9-` made `-`, cut to 52 characters) + `-` + 10 hex digits hashed from
/// the scan name and `token`.
///
/// Deterministic, a DNS-1123 label of at most 63 characters that never starts
/// or ends with `-`, so it is also a valid label value for the pods' `job-name`
/// label.
pub fn job_name(scan_name: &str, token: &str) -> String {
    let hash = stable_hash(&[scan_name, token]);
    let hash = &hash[..NAME_HASH_LEN];

    let keep = MAX_NAME_LEN - NAME_HASH_LEN - 1;
    let sanitized: String = scan_name
        .chars()
        .map(|c| match c.to_ascii_lowercase() {
            c @ ('a'..='z' | '0'..='9' | '-') => c,
            _ => '-',
        })
        .take(keep)
        .collect();
    let prefix = sanitized.trim_matches('-');
    if prefix.is_empty() {
        format!("scan-{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

/// The effective configuration of one scanner Job: operator defaults
/// overridden by `spec.scannerConfig` (annotations are already merged into the
/// spec by the source reconcilers).
#[derive(Clone, Debug, PartialEq)]
pub struct JobParams {
    /// Scanner image (the operator image: nuclei plus the `scanner` mode).
    pub image: String,
    /// Whole-scan timeout, passed to the scanner; the Job deadline adds
    /// [`DEADLINE_MARGIN`].
    pub timeout: Duration,
    /// `ttlSecondsAfterFinished` of the Job.
    pub ttl_seconds: i32,
    /// `backoffLimit` of the Job.
    pub backoff_limit: i32,
    /// ServiceAccount the pod runs as.
    pub service_account: String,
    /// Built-in templates directory inside the image.
    pub templates_path: String,
    /// Image of the `git clone` init containers.
    pub git_image: String,
    /// Requests and limits of the scanner container.
    pub resources: Option<ResourceRequirements>,
    /// Node selector of the pod.
    pub node_selector: BTreeMap<String, String>,
    /// Tolerations of the pod.
    pub tolerations: Vec<Toleration>,
    /// Git repositories cloned into `/templates/git/<i>` before the scan.
    pub template_urls: Vec<String>,
    /// ConfigMaps (`spec.scannerConfig.templateConfigMaps`) mounted at
    /// `/templates/configmaps/<name>`.
    pub template_config_maps: Vec<String>,
    /// Namespace of the scan (and of the Job).
    pub scan_namespace: String,
    /// Name of the scan.
    pub scan_name: String,
    /// [`run_token`] of the run.
    pub run_token: String,
    /// UID of the scan, for the owner reference.
    pub scan_uid: String,
    /// DEFAULT_TEMPLATES, for a scan that names no templates.
    pub default_templates: Vec<String>,
    /// DEFAULT_SEVERITY, for a scan that names no severities.
    pub default_severity: Vec<Severity>,
    /// MAX_RATE_LIMIT (0: none).
    pub max_rate_limit: u32,
    /// INTERACTSH_URL.
    pub interactsh_url: Option<String>,
    /// TARGET_DENY_CIDRS and the other target-policy settings.
    pub target_policy: TargetPolicy,
    /// LOG_FORMAT: the scanner logs as the operator does.
    pub log_format: crate::settings::LogFormat,
}

impl JobParams {
    /// `<namespace>/<name>` of the scan: the scanner's `--scan` argument.
    pub fn scan_key(&self) -> String {
        format!("{}/{}", self.scan_namespace, self.scan_name)
    }

    /// The Job's name: [`job_name`] of the scan name and run token.
    pub fn job_name(&self) -> String {
        job_name(&self.scan_name, &self.run_token)
    }

    /// The Job's `activeDeadlineSeconds`: the timeout rounded up to whole
    /// seconds, plus [`DEADLINE_MARGIN`], plus [`CLONE_DEADLINE_MARGIN`] per
    /// template repository.
    pub fn active_deadline_seconds(&self) -> i64 {
        let clones = u32::try_from(self.template_urls.len()).unwrap_or(u32::MAX);
        let total = self
            .timeout
            .saturating_add(DEADLINE_MARGIN)
            .saturating_add(CLONE_DEADLINE_MARGIN.saturating_mul(clones));
        let secs = total.as_secs() + u64::from(total.subsec_nanos() > 0);
        i64::try_from(secs).unwrap_or(i64::MAX)
    }

    /// The colon-separated [`EXTRA_TEMPLATE_DIRS_ENV`] value; empty when the
    /// run has no extra templates.
    pub fn extra_template_dirs(&self) -> String {
        let git = (0..self.template_urls.len()).map(|i| format!("{GIT_TEMPLATES_DIR}/{i}"));
        let cms = self
            .template_config_maps
            .iter()
            .map(|name| format!("{CONFIGMAP_TEMPLATES_DIR}/{name}"));
        git.chain(cms).collect::<Vec<_>>().join(":")
    }
}

/// Merges operator defaults with `spec.scannerConfig` into the parameters of
/// the next Job of `scan`.
///
/// Fails, with a message for `status.lastError`, when the scan has no name,
/// namespace or uid (it was not read from the apiserver), when its timeout is
/// invalid, or when a `templateURLs` entry is not a plain git URL.
pub fn effective_params(scan: &NucleiScan, settings: &Settings) -> Result<JobParams, String> {
    let scan_name = scan
        .metadata
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or("the NucleiScan has no name")?;
    let scan_namespace = scan
        .metadata
        .namespace
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("NucleiScan {scan_name} has no namespace"))?;
    let scan_uid = scan
        .metadata
        .uid
        .clone()
        .filter(|n| !n.is_empty())
        .ok_or_else(|| format!("NucleiScan {scan_namespace}/{scan_name} has no uid"))?;

    let config = scan.spec.scanner_config.clone().unwrap_or_default();
    let timeout = config
        .parsed_timeout()
        .map_err(|e| format!("spec.scannerConfig.timeout: {e}"))?
        .unwrap_or(settings.scanner_timeout);
    let image = config
        .image
        .as_deref()
        .map(str::trim)
        .filter(|i| !i.is_empty())
        .unwrap_or(&settings.scanner_image)
        .to_owned();
    let images = settings.image_policy();
    if !images.allows(&image) {
        return Err(format!(
            "spec.scannerConfig.image: {}",
            images.refusal(&image)
        ));
    }
    if config.template_urls.len() > MAX_TEMPLATE_URLS {
        return Err(format!(
            "spec.scannerConfig.templateURLs: {} entries, at most {MAX_TEMPLATE_URLS} are allowed",
            config.template_urls.len()
        ));
    }
    let template_urls = config
        .template_urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            check_git_url(url.trim())
                .map(|()| url.trim().to_owned())
                .map_err(|e| format!("spec.scannerConfig.templateURLs[{i}]: {e}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if config.template_config_maps.len() > MAX_TEMPLATE_CONFIG_MAPS {
        return Err(format!(
            "spec.scannerConfig.templateConfigMaps: {} entries, at most {MAX_TEMPLATE_CONFIG_MAPS} are allowed",
            config.template_config_maps.len()
        ));
    }
    let mut template_config_maps: Vec<String> = Vec::new();
    for (i, name) in config.template_config_maps.iter().enumerate() {
        let name = name.trim();
        check_dns_subdomain(name)
            .map_err(|e| format!("spec.scannerConfig.templateConfigMaps[{i}]: {e}"))?;
        // Mounting one ConfigMap twice at the same path would be rejected.
        if !template_config_maps.iter().any(|n| n == name) {
            template_config_maps.push(name.to_owned());
        }
    }

    Ok(JobParams {
        image,
        timeout,
        ttl_seconds: settings.job_ttl_after_finished,
        backoff_limit: settings.job_backoff_limit,
        service_account: settings.scanner_service_account.clone(),
        templates_path: settings
            .nuclei_templates_path
            .to_string_lossy()
            .into_owned(),
        git_image: settings.git_image.clone(),
        resources: config
            .resources
            .or_else(|| settings.scanner_resources.clone()),
        node_selector: config.node_selector,
        tolerations: config.tolerations,
        template_urls,
        template_config_maps,
        run_token: run_token(scan),
        scan_namespace,
        scan_name,
        scan_uid,
        default_templates: settings.default_templates.clone(),
        default_severity: settings.default_severity.clone(),
        max_rate_limit: settings.max_rate_limit,
        interactsh_url: settings.interactsh_url.clone(),
        target_policy: settings.target_policy(),
        log_format: settings.log_format,
    })
}

/// Accepts a ConfigMap name: a DNS-1123 subdomain (lower-case alphanumeric
/// labels joined by `.`, inner `-` allowed, at most 253 characters). It becomes
/// a directory name under [`CONFIGMAP_TEMPLATES_DIR`], so nothing else (`..`,
/// `/`) may pass.
fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty ConfigMap name".to_owned());
    }
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a ConfigMap name (lower-case letters, digits, '-' and '.')"
        ))
    }
}

/// Accepts `https://`, `http://`, `ssh://` and `git://` URLs and scp-style
/// `user@host:path`; rejects everything git could read as an option, a local
/// path or a command transport (`ext::`).
fn check_git_url(url: &str) -> Result<(), String> {
    if url.is_empty() {
        return Err("empty URL".to_owned());
    }
    if url.len() > MAX_TEMPLATE_URL_LEN {
        return Err(format!("longer than {MAX_TEMPLATE_URL_LEN} characters"));
    }
    if let Some(c) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{url:?} contains {c:?}"));
    }
    let schemed = ["https://", "http://", "ssh://", "git://"].iter().any(|s| {
        url.len() > s.len()
            && url
                .get(..s.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(s))
    });
    let scp_like = !url.starts_with('-')
        && !url.contains("://")
        && url
            .split_once(':')
            .is_some_and(|(user_host, path)| user_host.contains('@') && !path.is_empty());
    if schemed || scp_like {
        Ok(())
    } else {
        Err(format!(
            "{url:?} is not a git URL (use https://, http://, ssh://, git:// or user@host:path)"
        ))
    }
}

/// The scanner Job of one run.
///
/// In the scan's namespace, named [`JobParams::job_name`], controlled by the
/// NucleiScan (garbage-collected with it); labelled with the scan and run;
/// `restartPolicy: Never`; a pod that passes Pod Security Admission
/// "restricted" (non-root 65532, read-only root file system, no privilege
/// escalation, all capabilities dropped, seccomp `RuntimeDefault`).
///
/// `activeDeadlineSeconds` is [`JobParams::active_deadline_seconds`]: longer
/// than the scan timeout, so the scanner stops nuclei itself and reports why.
pub fn build_job(scan: &NucleiScan, params: &JobParams) -> Job {
    let name = params.job_name();
    let labels = job_labels(params);

    let mut owner = scan
        .controller_owner_ref(&())
        .unwrap_or_else(|| OwnerReference {
            api_version: NucleiScan::api_version(&()).into_owned(),
            kind: NucleiScan::kind(&()).into_owned(),
            name: params.scan_name.clone(),
            uid: params.scan_uid.clone(),
            ..OwnerReference::default()
        });
    owner.controller = Some(true);
    owner.block_owner_deletion = Some(true);

    let mut volumes = vec![empty_dir("tmp", TMP_SIZE_LIMIT)];
    let mut scanner_mounts = vec![mount("tmp", TMP_DIR, false)];
    let mut init_containers = Vec::new();
    if !params.template_urls.is_empty() {
        volumes.push(empty_dir("git-templates", GIT_TEMPLATES_SIZE_LIMIT));
        scanner_mounts.push(mount("git-templates", GIT_TEMPLATES_DIR, true));
        for (i, url) in params.template_urls.iter().enumerate() {
            init_containers.push(git_clone_container(params, i, url));
        }
    }
    for (i, cm) in params.template_config_maps.iter().enumerate() {
        // Volume names must be DNS-1123 labels; ConfigMap names may be longer
        // subdomains, so number them instead.
        let volume = format!("templates-cm-{i}");
        volumes.push(Volume {
            name: volume.clone(),
            config_map: Some(ConfigMapVolumeSource {
                name: cm.clone(),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        });
        scanner_mounts.push(mount(
            &volume,
            &format!("{CONFIGMAP_TEMPLATES_DIR}/{cm}"),
            true,
        ));
    }

    let mut env = vec![
        // The run the scanner writes for (`--scan` names the scan).
        env_value(SCAN_UID_ENV, &params.scan_uid),
        env_value(SCAN_RUN_ENV, &params.run_token),
        env_field(POD_NAME_ENV, "metadata.name"),
        env_value(TEMPLATES_PATH_ENV, &params.templates_path),
        env_value(SCANNER_TIMEOUT_ENV, &format_duration(params.timeout)),
        env_value("HOME", TMP_DIR),
        env_value(LOG_FORMAT_ENV, params.log_format.as_str()),
    ];
    let extra = params.extra_template_dirs();
    if !extra.is_empty() {
        env.push(env_value(EXTRA_TEMPLATE_DIRS_ENV, &extra));
    }
    // The operator's defaults reach the scanner as in sync mode: it applies
    // them where the scan is silent.
    if !params.default_templates.is_empty() {
        env.push(env_value(
            DEFAULT_TEMPLATES_ENV,
            &params.default_templates.join(","),
        ));
    }
    if !params.default_severity.is_empty() {
        let severities: Vec<&str> = params.default_severity.iter().map(|s| s.as_str()).collect();
        env.push(env_value(DEFAULT_SEVERITY_ENV, &severities.join(",")));
    }
    if params.max_rate_limit > 0 {
        env.push(env_value(
            MAX_RATE_LIMIT_ENV,
            &params.max_rate_limit.to_string(),
        ));
    }
    if let Some(url) = &params.interactsh_url {
        env.push(env_value(INTERACTSH_URL_ENV, url));
    }
    // Always set: a scanner without it applies the built-in defaults, which
    // may refuse what the operator allows.
    env.push(env_value(
        TARGET_POLICY_ENV,
        &serde_json::to_string(&params.target_policy).expect("serializable policy"),
    ));

    let scanner = Container {
        name: SCANNER_CONTAINER.to_owned(),
        image: Some(params.image.clone()),
        // No command: the image's entrypoint is the operator binary.
        args: Some(vec!["scanner".into(), "--scan".into(), params.scan_key()]),
        env: Some(env),
        resources: params.resources.clone(),
        security_context: Some(container_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(scanner_mounts),
        ..Container::default()
    };

    let pod_spec = PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(params.service_account.clone()),
        // The scanner writes its results through the API with this token.
        automount_service_account_token: Some(true),
        // Service links put every Service of the namespace into the
        // environment; the scanner needs none of them.
        enable_service_links: Some(false),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(SCANNER_UID),
            run_as_group: Some(SCANNER_UID),
            fs_group: Some(SCANNER_UID),
            seccomp_profile: Some(runtime_default_seccomp()),
            ..PodSecurityContext::default()
        }),
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        containers: vec![scanner],
        volumes: Some(volumes),
        node_selector: (!params.node_selector.is_empty()).then(|| params.node_selector.clone()),
        tolerations: (!params.tolerations.is_empty()).then(|| params.tolerations.clone()),
        ..PodSpec::default()
    };

    Job {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(params.scan_namespace.clone()),
            labels: Some(labels.clone()),
            annotations: Some(BTreeMap::from([(
                SCAN_KEY_ANNOTATION.to_owned(),
                params.scan_key(),
            )])),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            ttl_seconds_after_finished: Some(params.ttl_seconds),
            backoff_limit: Some(params.backoff_limit),
            active_deadline_seconds: Some(params.active_deadline_seconds()),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(BTreeMap::from([(
                        ISTIO_INJECT_ANNOTATION.to_owned(),
                        "false".to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(pod_spec),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// The labels of a Job and its pod: managed-by, component, scan and run.
pub fn job_labels(params: &JobParams) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (COMPONENT_LABEL.to_owned(), COMPONENT_SCANNER.to_owned()),
        (SCAN_LABEL.to_owned(), label_value(&params.scan_name)),
        (RUN_LABEL.to_owned(), label_value(&params.run_token)),
    ])
}

/// Makes `s` a valid label value: characters other than `A-Za-z0-9-_.` become
/// `-` (object names and run tokens have none), then it is cut to 63
/// characters and trimmed to start and end with an alphanumeric character.
fn label_value(s: &str) -> String {
    let cut: String = s
        .chars()
        .map(|c| match c {
            'A'..='Z' | 'a'..='z' | '0'..='9' | '-' | '_' | '.' => c,
            _ => '-',
        })
        .take(MAX_LABEL_VALUE_LEN)
        .collect();
    cut.trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

fn git_clone_container(params: &JobParams, i: usize, url: &str) -> Container {
    Container {
        name: format!("git-clone-{i}"),
        image: Some(params.git_image.clone()),
        command: Some(vec!["git".into()]),
        args: Some(vec![
            "clone".into(),
            "--depth".into(),
            "1".into(),
            // Ends option parsing: a URL can never be read as a flag.
            "--".into(),
            url.to_owned(),
            format!("{GIT_TEMPLATES_DIR}/{i}"),
        ]),
        env: Some(vec![
            env_value("HOME", TMP_DIR),
            env_value("GIT_ALLOW_PROTOCOL", GIT_ALLOW_PROTOCOL),
            // Fail instead of waiting for credentials nobody can type.
            env_value("GIT_TERMINAL_PROMPT", "0"),
        ]),
        security_context: Some(container_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![
            mount("tmp", TMP_DIR, false),
            mount("git-templates", GIT_TEMPLATES_DIR, false),
        ]),
        ..Container::default()
    }
}

fn container_security_context() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".into()]),
            ..Capabilities::default()
        }),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        privileged: Some(false),
        ..SecurityContext::default()
    }
}

fn runtime_default_seccomp() -> SeccompProfile {
    SeccompProfile {
        type_: "RuntimeDefault".into(),
        ..SeccompProfile::default()
    }
}

fn empty_dir(name: &str, size_limit: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size_limit.to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

fn env_field(name: &str, field_path: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field_path.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

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

fn rbac_labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (COMPONENT_LABEL.to_owned(), COMPONENT_SCANNER.to_owned()),
    ])
}

fn rbac_meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(rbac_labels()),
        ..ObjectMeta::default()
    }
}

/// The scanner ServiceAccount `name` in `namespace`.
///
/// Its `automountServiceAccountToken` is false so that no other pod gets its
/// token by accident; scanner pods ask for it in their own spec.
pub fn scanner_service_account(namespace: &str, name: &str) -> ServiceAccount {
    ServiceAccount {
        metadata: rbac_meta(namespace, name),
        automount_service_account_token: Some(false),
        ..ServiceAccount::default()
    }
}

/// The rules scanner pods need: `get` on nucleiscans, `get` and `patch` on
/// nucleiscans/status, nothing else. The chart ships them as a ClusterRole
/// (SCANNER_CLUSTER_ROLE, `<release>-scanner`) that the operator binds in
/// each namespace with scans; a chart test checks the two agree. RBAC lets
/// that `patch` reach every scan of the namespace; the chart's admission
/// policy (`scanner.admissionPolicy`) narrows it to the scan of the pod's
/// own Job.
pub fn scanner_rules() -> Vec<PolicyRule> {
    let group = NucleiScan::group(&()).into_owned();
    let plural = NucleiScan::plural(&()).into_owned();
    vec![
        PolicyRule {
            api_groups: Some(vec![group.clone()]),
            resources: Some(vec![plural.clone()]),
            verbs: vec!["get".into()],
            ..PolicyRule::default()
        },
        PolicyRule {
            api_groups: Some(vec![group]),
            resources: Some(vec![format!("{plural}/status")]),
            verbs: vec!["get".into(), "patch".into()],
            ..PolicyRule::default()
        },
    ]
}

/// The scanner ClusterRole `name` (for clusters without the chart: tests,
/// the load test).
pub fn scanner_cluster_role(name: &str) -> ClusterRole {
    ClusterRole {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            labels: Some(rbac_labels()),
            ..ObjectMeta::default()
        },
        rules: Some(scanner_rules()),
        ..ClusterRole::default()
    }
}

/// The RoleBinding in `namespace` granting the ClusterRole `cluster_role`
/// to the scanner ServiceAccount `service_account` of that namespace; named
/// like the ClusterRole.
pub fn scanner_role_binding(
    namespace: &str,
    service_account: &str,
    cluster_role: &str,
) -> RoleBinding {
    RoleBinding {
        metadata: rbac_meta(namespace, cluster_role),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "ClusterRole".into(),
            name: cluster_role.to_owned(),
        },
        subjects: Some(vec![Subject {
            kind: "ServiceAccount".into(),
            name: service_account.to_owned(),
            namespace: Some(namespace.to_owned()),
            ..Subject::default()
        }]),
    }
}

/// Server-side applies the scanner ServiceAccount and its RoleBinding to
/// the scanner ClusterRole in `namespace` (field manager [`FIELD_MANAGER`],
/// forced).
///
/// The operator needs `get`, `create`, `patch` on serviceaccounts and
/// rolebindings, and `bind` on that one ClusterRole; it creates no Roles.
pub async fn ensure_scanner_rbac(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    cluster_role: &str,
) -> Result<(), kube::Error> {
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let sa = scanner_service_account(namespace, service_account);
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .patch(service_account, &pp, &Patch::Apply(&sa))
        .await?;
    let binding = scanner_role_binding(namespace, service_account, cluster_role);
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .patch(cluster_role, &pp, &Patch::Apply(&binding))
        .await?;
    Ok(())
}

/// Remembers in which namespaces the scanner RBAC was applied, so the launcher
/// makes the two API calls of [`ensure_scanner_rbac`] once per namespace per
/// [`RbacCache::refresh`] instead of before every Job.
///
/// An entry expires after the refresh interval (default
/// [`RbacCache::DEFAULT_REFRESH`]), so a deleted or edited Role is restored
/// within that time without a restart; [`RbacCache::forget`] re-applies at the
/// next Job (e.g. after a scanner failed with `403 Forbidden`). Kept in memory
/// only: a restarted operator applies once more per namespace.
#[derive(Debug)]
pub struct RbacCache {
    refresh: Duration,
    done: Mutex<HashMap<(String, String), Instant>>,
}

impl Default for RbacCache {
    fn default() -> Self {
        RbacCache::new(RbacCache::DEFAULT_REFRESH)
    }
}

impl RbacCache {
    /// How long an applied namespace is trusted before the next Job there
    /// applies again.
    pub const DEFAULT_REFRESH: Duration = Duration::from_secs(600);

    /// An empty cache whose entries expire after `refresh`.
    pub fn new(refresh: Duration) -> Self {
        RbacCache {
            refresh,
            done: Mutex::new(HashMap::new()),
        }
    }

    /// The refresh interval.
    pub fn refresh(&self) -> Duration {
        self.refresh
    }

    /// Whether the RBAC of `service_account` in `namespace` must be applied
    /// (never applied, or applied longer than the refresh interval before `now`).
    pub fn needs_apply(&self, namespace: &str, service_account: &str, now: Instant) -> bool {
        let done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.get(&(namespace.to_owned(), service_account.to_owned()))
            .is_none_or(|at| now.saturating_duration_since(*at) >= self.refresh)
    }

    /// Records that the RBAC of `service_account` in `namespace` was applied at
    /// `at`.
    pub fn mark_applied(&self, namespace: &str, service_account: &str, at: Instant) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.insert((namespace.to_owned(), service_account.to_owned()), at);
    }

    /// Forgets `namespace`, so the next [`RbacCache::ensure`] there applies
    /// again.
    pub fn forget(&self, namespace: &str) {
        let mut done = self.done.lock().unwrap_or_else(|e| e.into_inner());
        done.retain(|(ns, _), _| ns != namespace);
    }

    /// [`ensure_scanner_rbac`] unless it succeeded in `namespace` within the
    /// refresh interval. Concurrent first calls for one namespace may both
    /// apply; that is harmless (apply is idempotent).
    pub async fn ensure(
        &self,
        client: &kube::Client,
        namespace: &str,
        service_account: &str,
        cluster_role: &str,
    ) -> Result<(), kube::Error> {
        if !self.needs_apply(namespace, service_account, Instant::now()) {
            return Ok(());
        }
        ensure_scanner_rbac(client, namespace, service_account, cluster_role).await?;
        self.mark_applied(namespace, service_account, Instant::now());
        Ok(())
    }
}

// FNV-1a 64 (stable across Rust releases, unlike std's DefaultHasher, which
// would rename the Job of a run in flight across an upgrade) over
// length-prefixed fields, so ("ab", "c") and ("a", "bc") differ.
fn stable_hash(fields: &[&str]) -> String {
    let mut bytes = Vec::new();
    for f in fields {
        bytes.extend_from_slice(&(f.len() as u64).to_le_bytes());
        bytes.extend_from_slice(f.as_bytes());
    }
    crate::hash::fnv1a_64_hex(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::annotations::RESCAN;
    use crate::api::{NucleiScanSpec, NucleiScanStatus, ScannerConfig};
    use k8s_openapi::api::batch::v1::{JobCondition, JobStatus};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use k8s_openapi::jiff::Timestamp;

    // ---- fixtures ----------------------------------------------------------

    fn scan() -> NucleiScan {
        let mut s = NucleiScan::new(
            "shop-ingress",
            NucleiScanSpec {
                targets: vec!["https://shop.example.com".into()],
                ..NucleiScanSpec::default()
            },
        );
        s.metadata.namespace = Some("web".into());
        s.metadata.uid = Some("6f1c2a0e-8d1b-4c55-9a57-2b6a7e3d9f10".into());
        s.metadata.generation = Some(3);
        s
    }

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    fn with_status(mut s: NucleiScan, f: impl FnOnce(&mut NucleiScanStatus)) -> NucleiScan {
        f(s.status.get_or_insert_with(NucleiScanStatus::default));
        s
    }

    fn with_config(mut s: NucleiScan, config: ScannerConfig) -> NucleiScan {
        s.spec.scanner_config = Some(config);
        s
    }

    fn params() -> JobParams {
        effective_params(&scan(), &Settings::default()).unwrap()
    }

    fn pod(job: &Job) -> &PodSpec {
        job.spec.as_ref().unwrap().template.spec.as_ref().unwrap()
    }

    fn scanner(job: &Job) -> &Container {
        let p = pod(job);
        assert_eq!(p.containers.len(), 1);
        &p.containers[0]
    }

    fn env(c: &Container) -> BTreeMap<&str, &EnvVar> {
        c.env
            .iter()
            .flatten()
            .map(|e| (e.name.as_str(), e))
            .collect()
    }

    fn env_val<'a>(c: &'a Container, name: &str) -> Option<&'a str> {
        c.env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.as_deref())
    }

    fn mounts(c: &Container) -> Vec<(&str, &str, bool)> {
        c.volume_mounts
            .iter()
            .flatten()
            .map(|m| {
                (
                    m.name.as_str(),
                    m.mount_path.as_str(),
                    m.read_only == Some(true),
                )
            })
            .collect()
    }

    fn is_dns_label(s: &str) -> bool {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    fn is_label_value(s: &str) -> bool {
        s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && (s.is_empty()
                || (s.as_bytes()[0].is_ascii_alphanumeric()
                    && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()))
    }

    // ---- run tokens --------------------------------------------------------

    #[test]
    fn the_same_state_gives_the_same_token() {
        assert_eq!(run_token(&scan()), run_token(&scan()));
        let t = run_token(&scan());
        assert_eq!(t.len(), 16);
        assert!(t.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn run_tokens_are_stable_across_releases() {
        // A changed value here renames the Job of a run in flight across an
        // upgrade, which would then start a second Job; change it knowingly.
        // Computed outside Rust: FNV-1a 64 over fields each prefixed with its
        // length as a little-endian u64.
        assert_eq!(run_token(&scan()), "f8c025a80d6976fa");
        assert_eq!(
            job_name("shop-ingress", "f8c025a80d6976fa"),
            "shop-ingress-36b2e60c39"
        );
    }

    #[test]
    fn every_input_of_the_token_changes_it() {
        let base = run_token(&scan());
        let mut other_uid = scan();
        other_uid.metadata.uid = Some("other".into());
        let mut other_generation = scan();
        other_generation.metadata.generation = Some(4);
        let started = with_status(scan(), |s| s.last_scan_time = Some(at(1_700_000_000)));
        let retried = with_status(scan(), |s| s.retry_count = Some(1));
        let mut rescan = scan();
        rescan
            .annotations_mut()
            .insert(RESCAN.into(), "2025-06-01T10:00:00Z".into());

        let tokens = [
            base,
            run_token(&other_uid),
            run_token(&other_generation),
            run_token(&started),
            run_token(&retried),
            run_token(&rescan),
        ];
        for (i, a) in tokens.iter().enumerate() {
            for b in &tokens[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn starting_a_run_gives_the_next_run_a_new_token() {
        let first = with_status(scan(), |s| s.last_scan_time = Some(at(1_700_000_000)));
        let second = with_status(first.clone(), |s| {
            s.last_scan_time = Some(at(1_700_086_400));
        });
        assert_ne!(run_token(&first), run_token(&second));
    }

    #[test]
    fn state_that_does_not_define_a_run_leaves_the_token_alone() {
        let base = run_token(&scan());
        let busy = with_status(scan(), |s| {
            s.phase = Some(crate::api::ScanPhase::Pending);
            s.next_scheduled_time = Some(at(1_800_000_000));
            s.last_error = Some("boom".into());
            s.observed_generation = Some(2);
            s.retry_count = Some(0);
        });
        assert_eq!(run_token(&busy), base, "retryCount 0 is the same as unset");

        let mut labelled = scan();
        labelled.labels_mut().insert("team".into(), "web".into());
        labelled.metadata.resource_version = Some("12345".into());
        labelled
            .annotations_mut()
            .insert(RESCAN.into(), "   ".into());
        assert_eq!(run_token(&labelled), base, "an empty rescan value is none");
    }

    #[test]
    fn sub_second_times_give_the_token_the_apiserver_round_trip_gives() {
        let precise = with_status(scan(), |s| {
            s.last_scan_time = Some(Time(Timestamp::new(1_700_000_000, 123_456_789).unwrap()));
        });
        let json = serde_json::to_value(&precise).unwrap();
        let stored: NucleiScan = serde_json::from_value(json).unwrap();
        assert_eq!(run_token(&precise), run_token(&stored));
    }

    // ---- job names ---------------------------------------------------------

    #[test]
    fn job_names_are_the_scan_name_and_ten_hex_digits() {
        let token = run_token(&scan());
        let name = job_name("shop-ingress", &token);
        assert_eq!(name, job_name("shop-ingress", &token));
        let (prefix, hash) = name.rsplit_once('-').unwrap();
        assert_eq!(prefix, "shop-ingress");
        assert_eq!(hash.len(), 10);
        assert!(hash.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(name, job_name("shop-ingress", "another-token"));
        assert_ne!(name, job_name("shop2-ingress", &token));
    }

    #[test]
    fn job_names_are_always_dns_labels() {
        let long = "a".repeat(300);
        let cut_on_dash = format!("{}-{}", "a".repeat(51), "b".repeat(20));
        for scan_name in [
            "shop-ingress",
            long.as_str(),
            cut_on_dash.as_str(),
            "my.dotted.scan",
            "UPPER-case",
            "-",
            "---",
            "",
            "a",
            "0",
        ] {
            let name = job_name(scan_name, "t");
            assert!(is_dns_label(&name), "{scan_name:?} → {name:?}");
        }
        assert_eq!(
            job_name(&cut_on_dash, "t").len(),
            51 + 1 + 10,
            "the cut lands on a '-', which is trimmed"
        );
        assert_eq!(job_name(&long, "t").len(), 63);
        assert!(job_name("---", "t").starts_with("scan-"));
    }

    #[test]
    fn long_scan_names_that_share_a_prefix_get_distinct_job_names() {
        let a = format!("{}-one", "x".repeat(60));
        let b = format!("{}-two", "x".repeat(60));
        assert_ne!(job_name(&a, "t"), job_name(&b, "t"));
    }

    // ---- effective parameters ----------------------------------------------

    #[test]
    fn without_scanner_config_the_operator_defaults_apply() {
        let settings = Settings::default();
        let p = params();
        assert_eq!(p.image, settings.scanner_image);
        assert_eq!(p.timeout, settings.scanner_timeout);
        assert_eq!(p.ttl_seconds, settings.job_ttl_after_finished);
        assert_eq!(p.backoff_limit, settings.job_backoff_limit);
        assert_eq!(p.service_account, settings.scanner_service_account);
        assert_eq!(p.templates_path, "/nuclei-templates");
        assert_eq!(p.git_image, settings.git_image);
        assert_eq!(p.resources, None);
        assert!(p.node_selector.is_empty());
        assert!(p.tolerations.is_empty());
        assert!(p.template_urls.is_empty());
        assert!(p.template_config_maps.is_empty());
        assert_eq!(p.scan_namespace, "web");
        assert_eq!(p.scan_name, "shop-ingress");
        assert_eq!(p.scan_uid, "6f1c2a0e-8d1b-4c55-9a57-2b6a7e3d9f10");
        assert_eq!(p.run_token, run_token(&scan()));
        assert_eq!(p.scan_key(), "web/shop-ingress");
    }

    #[test]
    fn scanner_config_overrides_the_defaults() {
        let resources = ResourceRequirements {
            limits: Some(BTreeMap::from([("memory".into(), Quantity("1Gi".into()))])),
            ..ResourceRequirements::default()
        };
        let toleration = Toleration {
            key: Some("scanners".into()),
            operator: Some("Exists".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        };
        let s = with_config(
            scan(),
            ScannerConfig {
                image: Some(" registry.local/nuclei-operator:v2 ".into()),
                resources: Some(resources.clone()),
                timeout: Some("1h30m".into()),
                template_urls: vec!["https://github.com/acme/templates.git".into()],
                template_config_maps: vec![" team-templates ".into(), "cves.2025".into()],
                node_selector: BTreeMap::from([("pool".into(), "scan".into())]),
                tolerations: vec![toleration.clone()],
            },
        );
        let defaults = Settings {
            scanner_resources: Some(ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("100m".into()))])),
                ..ResourceRequirements::default()
            }),
            allowed_scanner_images: vec!["registry.local/*".into()],
            ..Settings::default()
        };
        // The operator-wide default applies to a scan without its own.
        let plain = effective_params(&scan(), &defaults).unwrap();
        assert_eq!(plain.resources, defaults.scanner_resources);
        let p = effective_params(&s, &defaults).unwrap();
        assert_eq!(p.image, "registry.local/nuclei-operator:v2");
        assert_eq!(p.timeout, Duration::from_secs(5400));
        // A scan's own resources replace the default whole.
        assert_eq!(p.resources, Some(resources));
        assert_eq!(p.template_urls, ["https://github.com/acme/templates.git"]);
        assert_eq!(p.template_config_maps, ["team-templates", "cves.2025"]);
        assert_eq!(
            p.extra_template_dirs(),
            "/templates/git/0:/templates/configmaps/team-templates:/templates/configmaps/cves.2025"
        );
        assert_eq!(p.node_selector["pool"], "scan");
        assert_eq!(p.tolerations, [toleration]);
    }

    #[test]
    fn an_empty_image_falls_back_to_the_default() {
        let s = with_config(
            scan(),
            ScannerConfig {
                image: Some("  ".into()),
                ..ScannerConfig::default()
            },
        );
        let p = effective_params(&s, &Settings::default()).unwrap();
        assert_eq!(p.image, Settings::default().scanner_image);
    }

    #[test]
    fn a_bad_timeout_is_an_error_naming_the_field() {
        let s = with_config(
            scan(),
            ScannerConfig {
                timeout: Some("0s".into()),
                ..ScannerConfig::default()
            },
        );
        let e = effective_params(&s, &Settings::default()).unwrap_err();
        assert!(e.starts_with("spec.scannerConfig.timeout: "), "{e}");
    }

    #[test]
    fn a_scan_without_identity_is_an_error() {
        let mut s = scan();
        s.metadata.uid = None;
        let e = effective_params(&s, &Settings::default()).unwrap_err();
        assert!(e.contains("has no uid"), "{e}");
        let mut s = scan();
        s.metadata.namespace = None;
        assert!(effective_params(&s, &Settings::default()).is_err());
    }

    #[test]
    fn template_urls_must_be_plain_git_urls() {
        for good in [
            "https://github.com/acme/templates.git",
            "HTTPS://example.com/t",
            "http://git.local/t",
            "ssh://git@example.com/t.git",
            "git://example.com/t",
            "git@github.com:acme/templates.git",
        ] {
            assert_eq!(check_git_url(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "--upload-pack=touch /tmp/x",
            "-u x@y:z",
            "ext::sh -c touch% /tmp/pwned",
            "ext::sh",
            "file:///etc",
            "/etc/passwd",
            "../repo",
            "https://",
            "https://example.com/a b",
            "https://example.com/\n",
            "github.com:acme/t",
            "git@github.com:",
            "https:/é/x",
            "ééééééééé",
        ] {
            assert!(check_git_url(bad).is_err(), "{bad:?}");
        }

        let s = with_config(
            scan(),
            ScannerConfig {
                template_urls: vec!["https://ok.example/t".into(), "ext::sh".into()],
                ..ScannerConfig::default()
            },
        );
        let e = effective_params(&s, &Settings::default()).unwrap_err();
        assert!(e.starts_with("spec.scannerConfig.templateURLs[1]: "), "{e}");

        let s = with_config(
            scan(),
            ScannerConfig {
                template_urls: vec!["https://ok.example/t".into(); MAX_TEMPLATE_URLS + 1],
                ..ScannerConfig::default()
            },
        );
        let e = effective_params(&s, &Settings::default()).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
    }

    #[test]
    fn template_config_maps_must_be_configmap_names() {
        for good in [
            "t",
            "team-templates",
            "cves.2025",
            "a-1.b-2",
            &"a".repeat(253),
        ] {
            assert_eq!(check_dns_subdomain(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "..",
            ".",
            "../x",
            "a/b",
            "-a",
            "a-",
            "a..b",
            ".a",
            "Team",
            "a_b",
            "a b",
            &"a".repeat(254),
        ] {
            assert!(check_dns_subdomain(bad).is_err(), "{bad:?}");
        }

        let s = with_config(
            scan(),
            ScannerConfig {
                template_config_maps: vec!["ok".into(), "../etc".into()],
                ..ScannerConfig::default()
            },
        );
        let e = effective_params(&s, &Settings::default()).unwrap_err();
        assert!(
            e.starts_with("spec.scannerConfig.templateConfigMaps[1]: "),
            "{e}"
        );

        let s = with_config(
            scan(),
            ScannerConfig {
                template_config_maps: (0..=MAX_TEMPLATE_CONFIG_MAPS)
                    .map(|i| format!("cm-{i}"))
                    .collect(),
                ..ScannerConfig::default()
            },
        );
        let e = effective_params(&s, &Settings::default()).unwrap_err();
        assert!(e.contains("at most 16"), "{e}");
    }

    #[test]
    fn a_configmap_listed_twice_is_mounted_once() {
        let s = with_config(
            scan(),
            ScannerConfig {
                template_config_maps: vec!["t".into(), " t".into(), "u".into()],
                ..ScannerConfig::default()
            },
        );
        let p = effective_params(&s, &Settings::default()).unwrap();
        assert_eq!(p.template_config_maps, ["t", "u"]);
        let job = build_job(&s, &p);
        let volumes = job.spec.unwrap().template.spec.unwrap().volumes.unwrap();
        let cms: Vec<&str> = volumes
            .iter()
            .filter_map(|v| v.config_map.as_ref().map(|c| c.name.as_str()))
            .collect();
        assert_eq!(cms, ["t", "u"]);
    }

    // ---- the Job -----------------------------------------------------------

    #[test]
    fn the_job_is_named_for_its_run_and_owned_by_its_scan() {
        let s = scan();
        let p = params();
        let job = build_job(&s, &p);
        let meta = &job.metadata;
        assert_eq!(
            meta.name.as_deref(),
            Some(job_name("shop-ingress", &p.run_token).as_str())
        );
        assert_eq!(meta.namespace.as_deref(), Some("web"));
        let owners = meta.owner_references.as_ref().unwrap();
        assert_eq!(owners.len(), 1);
        let o = &owners[0];
        assert_eq!(o.api_version, "nuclei.homelab.mortenolsen.pro/v1alpha1");
        assert_eq!(o.kind, "NucleiScan");
        assert_eq!(o.name, "shop-ingress");
        assert_eq!(o.uid, "6f1c2a0e-8d1b-4c55-9a57-2b6a7e3d9f10");
        assert_eq!(o.controller, Some(true));
        assert_eq!(o.block_owner_deletion, Some(true));
        assert_eq!(
            meta.annotations.as_ref().unwrap()[SCAN_KEY_ANNOTATION],
            "web/shop-ingress"
        );
    }

    #[test]
    fn the_job_and_its_pod_carry_the_scan_and_run_labels() {
        let p = params();
        let job = build_job(&scan(), &p);
        let want = BTreeMap::from([
            (
                "app.kubernetes.io/managed-by".to_owned(),
                "nuclei-operator".to_owned(),
            ),
            (
                "app.kubernetes.io/component".to_owned(),
                "scanner".to_owned(),
            ),
            (
                "nuclei.homelab.mortenolsen.pro/scan".to_owned(),
                "shop-ingress".to_owned(),
            ),
            (
                "nuclei.homelab.mortenolsen.pro/run".to_owned(),
                p.run_token.clone(),
            ),
        ]);
        assert_eq!(job.metadata.labels.as_ref(), Some(&want));
        let template = job
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap();
        assert_eq!(template.labels.as_ref(), Some(&want));
        assert_eq!(
            template.annotations.as_ref().unwrap()["sidecar.istio.io/inject"],
            "false"
        );
    }

    #[test]
    fn label_values_of_long_scan_names_are_cut_and_stay_valid() {
        let long = format!("{}.{}", "a".repeat(62), "b".repeat(100));
        let p = JobParams {
            scan_name: long.clone(),
            ..params()
        };
        let job = build_job(&scan(), &p);
        let labels = job.metadata.labels.as_ref().unwrap();
        let value = &labels[SCAN_LABEL];
        assert_eq!(
            value,
            &"a".repeat(62),
            "the cut ends on '.', which is trimmed"
        );
        for v in labels.values() {
            assert!(is_label_value(v), "{v:?}");
        }
        assert_eq!(
            job.metadata.annotations.as_ref().unwrap()[SCAN_KEY_ANNOTATION],
            format!("web/{long}")
        );
        assert!(is_dns_label(job.metadata.name.as_deref().unwrap()));

        for odd in ["scän/é", "ééé", &"é".repeat(100)] {
            let v = label_value(odd);
            assert!(is_label_value(&v), "{odd:?} → {v:?}");
        }
    }

    #[test]
    fn the_job_spec_follows_the_settings() {
        let p = JobParams {
            ttl_seconds: 600,
            backoff_limit: 2,
            timeout: Duration::from_secs(1800),
            ..params()
        };
        let job = build_job(&scan(), &p);
        let spec = job.spec.as_ref().unwrap();
        assert_eq!(spec.ttl_seconds_after_finished, Some(600));
        assert_eq!(spec.backoff_limit, Some(2));
        assert_eq!(spec.active_deadline_seconds, Some(1800 + 60));
        assert_eq!(spec.pod_replacement_policy, None);
        assert_eq!(spec.completions, None);
        assert_eq!(spec.parallelism, None);
        assert!(job.status.is_none());
    }

    #[test]
    fn the_deadline_outlasts_the_scan_timeout_and_each_clone() {
        let p = JobParams {
            timeout: Duration::from_millis(1_500),
            ..params()
        };
        assert_eq!(p.active_deadline_seconds(), 2 + 60, "rounded up");
        let p = JobParams {
            timeout: Duration::from_secs(600),
            template_urls: vec!["https://a/t".into(), "https://b/t".into()],
            ..params()
        };
        assert_eq!(p.active_deadline_seconds(), 600 + 60 + 2 * 60);
    }

    #[test]
    fn the_pod_runs_the_scanner_mode_of_the_image_as_the_scanner_account() {
        let p = JobParams {
            image: "registry.local/nuclei-operator:v2".into(),
            ..params()
        };
        let job = build_job(&scan(), &p);
        let pod = pod(&job);
        assert_eq!(pod.restart_policy.as_deref(), Some("Never"));
        assert_eq!(pod.service_account_name.as_deref(), Some("nuclei-scanner"));
        assert_eq!(pod.automount_service_account_token, Some(true));
        assert_eq!(pod.init_containers, None);
        let c = scanner(&job);
        assert_eq!(c.name, "scanner");
        assert_eq!(
            c.image.as_deref(),
            Some("registry.local/nuclei-operator:v2")
        );
        assert_eq!(c.command, None, "the entrypoint is the operator binary");
        assert_eq!(
            c.args.as_deref(),
            Some(
                &[
                    "scanner".to_owned(),
                    "--scan".into(),
                    "web/shop-ingress".into()
                ][..]
            )
        );
        assert_eq!(
            c.termination_message_policy.as_deref(),
            Some("FallbackToLogsOnError")
        );
    }

    #[test]
    fn the_scanner_learns_its_scan_and_pod_from_the_environment() {
        let p = JobParams {
            timeout: Duration::from_secs(5400),
            ..params()
        };
        let job = build_job(&scan(), &p);
        let c = scanner(&job);
        assert_eq!(env_val(c, "SCAN_UID"), Some(p.scan_uid.as_str()));
        assert_eq!(env_val(c, "SCAN_RUN"), Some(p.run_token.as_str()));
        // Nothing the scanner does not read.
        for unread in ["SCAN_NAMESPACE", "SCAN_NAME", "JOB_NAME", "POD_NAMESPACE"] {
            assert_eq!(env_val(c, unread), None, "{unread}");
        }
        assert_eq!(
            env_val(c, "NUCLEI_TEMPLATES_PATH"),
            Some("/nuclei-templates")
        );
        assert_eq!(env_val(c, "SCANNER_TIMEOUT"), Some("1h30m0s"));
        assert_eq!(env_val(c, "HOME"), Some("/tmp"));
        assert_eq!(env_val(c, EXTRA_TEMPLATE_DIRS_ENV), None);
        let policy: TargetPolicy =
            serde_json::from_str(env_val(c, TARGET_POLICY_ENV).unwrap()).unwrap();
        assert_eq!(policy, TargetPolicy::default());
        let vars = env(c);
        let pod_name = vars["POD_NAME"];
        let field = pod_name
            .value_from
            .as_ref()
            .unwrap()
            .field_ref
            .as_ref()
            .unwrap();
        assert_eq!(field.field_path, "metadata.name");
        assert_eq!(pod_name.value, None);
        let mut names: Vec<_> = c.env.iter().flatten().map(|e| &e.name).collect();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "no variable twice");
    }

    #[test]
    fn the_operators_default_templates_and_severity_reach_the_scanner() {
        let settings = Settings {
            default_templates: vec!["http/cves/".into(), "canary.yaml".into()],
            default_severity: vec![Severity::High, Severity::Critical],
            ..Settings::default()
        };
        let p = effective_params(&scan(), &settings).unwrap();
        let c = scanner(&build_job(&scan(), &p)).clone();
        assert_eq!(
            env_val(&c, DEFAULT_TEMPLATES_ENV),
            Some("http/cves/,canary.yaml")
        );
        assert_eq!(env_val(&c, DEFAULT_SEVERITY_ENV), Some("high,critical"));
        // None set: the scanner gets neither (and runs what the scan says).
        let none = Settings {
            default_templates: vec![],
            default_severity: vec![],
            ..Settings::default()
        };
        let p = effective_params(&scan(), &none).unwrap();
        let c = scanner(&build_job(&scan(), &p)).clone();
        assert_eq!(env_val(&c, DEFAULT_TEMPLATES_ENV), None);
        assert_eq!(env_val(&c, DEFAULT_SEVERITY_ENV), None);
    }

    #[test]
    fn the_scanner_logs_in_the_operators_format() {
        for format in [
            crate::settings::LogFormat::Json,
            crate::settings::LogFormat::Text,
        ] {
            let settings = Settings {
                log_format: format,
                ..Settings::default()
            };
            let p = effective_params(&scan(), &settings).unwrap();
            let c = scanner(&build_job(&scan(), &p)).clone();
            assert_eq!(env_val(&c, LOG_FORMAT_ENV), Some(format.as_str()));
        }
    }

    #[test]
    fn a_scanner_image_outside_the_policy_is_refused_naming_the_setting() {
        let mut s = scan();
        s.spec.scanner_config = Some(crate::api::ScannerConfig {
            image: Some("evil.example.com/miner:1".into()),
            ..Default::default()
        });
        let e = effective_params(&s, &Settings::default()).unwrap_err();
        assert!(e.starts_with("spec.scannerConfig.image:"), "{e}");
        assert!(e.contains("ALLOWED_SCANNER_IMAGES"), "{e}");
        let settings = Settings {
            allowed_scanner_images: vec!["evil.example.com/*".into()],
            ..Settings::default()
        };
        assert_eq!(
            effective_params(&s, &settings).unwrap().image,
            "evil.example.com/miner:1"
        );
    }

    #[test]
    fn only_tmp_is_writable_without_extra_templates() {
        let job = build_job(&scan(), &params());
        assert_eq!(mounts(scanner(&job)), [("tmp", "/tmp", false)]);
        let volumes = pod(&job).volumes.as_ref().unwrap();
        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].name, "tmp");
        // Bounded: a scan that fills it is evicted, not the node's disk.
        let limit = volumes[0].empty_dir.as_ref().unwrap().size_limit.clone();
        assert_eq!(limit, Some(Quantity(TMP_SIZE_LIMIT.into())));
    }

    #[test]
    fn template_urls_are_cloned_by_one_init_container_each() {
        let p = JobParams {
            template_urls: vec![
                "https://github.com/acme/templates.git".into(),
                "git@example.com:sec/more.git".into(),
            ],
            git_image: "alpine/git:2.47.2".into(),
            ..params()
        };
        let job = build_job(&scan(), &p);
        let pod = pod(&job);
        let inits = pod.init_containers.as_ref().unwrap();
        assert_eq!(inits.len(), 2);
        for (i, (c, url)) in inits.iter().zip(&p.template_urls).enumerate() {
            assert_eq!(c.name, format!("git-clone-{i}"));
            assert_eq!(c.image.as_deref(), Some("alpine/git:2.47.2"));
            assert_eq!(c.command.as_deref(), Some(&["git".to_owned()][..]));
            let dir = format!("/templates/git/{i}");
            assert_eq!(
                c.args.as_deref().unwrap(),
                ["clone", "--depth", "1", "--", url.as_str(), dir.as_str()]
            );
            assert_eq!(env_val(c, "HOME"), Some("/tmp"));
            assert_eq!(env_val(c, "GIT_TERMINAL_PROMPT"), Some("0"));
            assert_eq!(
                mounts(c),
                [
                    ("tmp", "/tmp", false),
                    ("git-templates", "/templates/git", false)
                ]
            );
        }
        let s = scanner(&job);
        assert_eq!(
            mounts(s),
            [
                ("tmp", "/tmp", false),
                ("git-templates", "/templates/git", true)
            ]
        );
        assert_eq!(
            env_val(s, EXTRA_TEMPLATE_DIRS_ENV),
            Some("/templates/git/0:/templates/git/1")
        );
        let names: Vec<_> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["tmp", "git-templates"]);
    }

    #[test]
    fn template_config_maps_are_mounted_read_only_by_name() {
        let p = JobParams {
            template_urls: vec!["https://github.com/acme/templates.git".into()],
            template_config_maps: vec!["team-templates".into(), "cves.2025".into()],
            ..params()
        };
        let job = build_job(&scan(), &p);
        let s = scanner(&job);
        assert_eq!(
            mounts(s)[2..],
            [
                (
                    "templates-cm-0",
                    "/templates/configmaps/team-templates",
                    true
                ),
                ("templates-cm-1", "/templates/configmaps/cves.2025", true),
            ]
        );
        let volumes = pod(&job).volumes.as_ref().unwrap();
        let cms: Vec<_> = volumes
            .iter()
            .filter_map(|v| Some((v.name.as_str(), v.config_map.as_ref()?.name.as_str())))
            .collect();
        assert_eq!(
            cms,
            [
                ("templates-cm-0", "team-templates"),
                ("templates-cm-1", "cves.2025")
            ]
        );
        assert_eq!(
            env_val(s, EXTRA_TEMPLATE_DIRS_ENV),
            Some(
                "/templates/git/0:/templates/configmaps/team-templates:/templates/configmaps/cves.2025"
            )
        );
    }

    #[test]
    fn placement_and_resources_come_from_the_params() {
        let resources = ResourceRequirements {
            requests: Some(BTreeMap::from([("cpu".into(), Quantity("250m".into()))])),
            ..ResourceRequirements::default()
        };
        let toleration = Toleration {
            key: Some("dedicated".into()),
            value: Some("scanners".into()),
            operator: Some("Equal".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        };
        let p = JobParams {
            resources: Some(resources.clone()),
            node_selector: BTreeMap::from([("pool".into(), "scan".into())]),
            tolerations: vec![toleration.clone()],
            ..params()
        };
        let job = build_job(&scan(), &p);
        let pod = pod(&job);
        assert_eq!(pod.node_selector.as_ref().unwrap()["pool"], "scan");
        assert_eq!(pod.tolerations.as_deref(), Some(&[toleration][..]));
        assert_eq!(scanner(&job).resources, Some(resources));

        let plain = build_job(&scan(), &params());
        let plain_pod = plain.spec.as_ref().unwrap().template.spec.as_ref().unwrap();
        assert_eq!(plain_pod.node_selector, None);
        assert_eq!(plain_pod.tolerations, None);
        assert_eq!(scanner(&plain).resources, None);
    }

    #[test]
    fn every_container_runs_locked_down_with_a_read_only_root() {
        let p = JobParams {
            template_urls: vec!["https://github.com/acme/templates.git".into()],
            ..params()
        };
        let job = build_job(&scan(), &p);
        let pod = pod(&job);
        let psc = pod.security_context.as_ref().unwrap();
        assert_eq!(psc.run_as_non_root, Some(true));
        assert_eq!(psc.run_as_user, Some(65532));
        assert_eq!(psc.run_as_group, Some(65532));
        assert_eq!(psc.fs_group, Some(65532));
        assert_eq!(
            psc.seccomp_profile.as_ref().unwrap().type_,
            "RuntimeDefault"
        );
        for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true), "{}", c.name);
            assert_eq!(sc.allow_privilege_escalation, Some(false), "{}", c.name);
            assert_eq!(sc.run_as_non_root, Some(true), "{}", c.name);
            assert_eq!(
                sc.capabilities.as_ref().unwrap().drop.as_deref(),
                Some(&["ALL".to_owned()][..])
            );
            assert!(
                mounts(c).contains(&("tmp", "/tmp", false)),
                "{}: HOME must be writable",
                c.name
            );
        }
    }

    // ---- Pod Security Admission "restricted" -------------------------------

    // The checks of the "restricted" level (and the "baseline" checks it
    // includes), as in k8s.io/pod-security-admission/policy for v1.37. Where
    // the policy has an allow-list of values (sysctls, SELinux types) this is
    // stricter and rejects any value: the scanner pod sets none.
    fn psa_restricted_violations(pod: &PodSpec) -> Vec<String> {
        let mut v = Vec::new();
        let psc = pod.security_context.clone().unwrap_or_default();
        for (field, on) in [
            ("hostNetwork", pod.host_network),
            ("hostPID", pod.host_pid),
            ("hostIPC", pod.host_ipc),
        ] {
            if on == Some(true) {
                v.push(format!("pod: {field}"));
            }
        }
        const ALLOWED_VOLUMES: [&str; 8] = [
            "configMap",
            "csi",
            "downwardAPI",
            "emptyDir",
            "ephemeral",
            "persistentVolumeClaim",
            "projected",
            "secret",
        ];
        for vol in pod.volumes.iter().flatten() {
            let json = serde_json::to_value(vol).unwrap();
            for key in json.as_object().unwrap().keys() {
                if key != "name" && !ALLOWED_VOLUMES.contains(&key.as_str()) {
                    v.push(format!("volume {}: type {key}", vol.name));
                }
            }
        }
        if psc.run_as_user == Some(0) {
            v.push("pod: runAsUser 0".into());
        }
        let pod_seccomp = psc.seccomp_profile.as_ref().map(|s| s.type_.as_str());
        if let Some(t) = pod_seccomp
            && !matches!(t, "RuntimeDefault" | "Localhost")
        {
            v.push(format!("pod: seccomp {t}"));
        }
        for s in psc.sysctls.iter().flatten() {
            v.push(format!("pod: sysctl {}", s.name));
        }
        if let Some(se) = &psc.se_linux_options
            && (se.user.is_some() || se.role.is_some())
        {
            v.push("pod: seLinuxOptions user/role".into());
        }
        if psc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
            v.push("pod: windows hostProcess".into());
        }
        if psc.app_armor_profile.as_ref().map(|a| a.type_.as_str()) == Some("Unconfined") {
            v.push("pod: appArmor Unconfined".into());
        }

        let all = pod
            .init_containers
            .iter()
            .flatten()
            .chain(&pod.containers)
            .map(|c| (c.name.clone(), c.security_context.clone(), c.ports.clone()))
            .chain(
                pod.ephemeral_containers
                    .iter()
                    .flatten()
                    .map(|c| (c.name.clone(), c.security_context.clone(), c.ports.clone())),
            );
        for (name, sc, ports) in all {
            let sc = sc.unwrap_or_default();
            if sc.privileged == Some(true) {
                v.push(format!("{name}: privileged"));
            }
            if sc.allow_privilege_escalation != Some(false) {
                v.push(format!("{name}: allowPrivilegeEscalation must be false"));
            }
            let caps = sc.capabilities.clone().unwrap_or_default();
            if !caps.drop.iter().flatten().any(|d| d == "ALL") {
                v.push(format!("{name}: capabilities must drop ALL"));
            }
            for add in caps.add.iter().flatten() {
                if add != "NET_BIND_SERVICE" {
                    v.push(format!("{name}: adds capability {add}"));
                }
            }
            let non_root = match sc.run_as_non_root {
                Some(b) => b,
                None => psc.run_as_non_root == Some(true),
            };
            if !non_root {
                v.push(format!("{name}: runAsNonRoot must be true"));
            }
            if sc.run_as_user == Some(0) {
                v.push(format!("{name}: runAsUser 0"));
            }
            let seccomp = sc
                .seccomp_profile
                .as_ref()
                .map(|s| s.type_.as_str())
                .or(pod_seccomp);
            if !matches!(seccomp, Some("RuntimeDefault" | "Localhost")) {
                v.push(format!(
                    "{name}: seccomp must be RuntimeDefault or Localhost"
                ));
            }
            if sc.proc_mount.as_deref().is_some_and(|p| p != "Default") {
                v.push(format!("{name}: procMount"));
            }
            if let Some(se) = &sc.se_linux_options
                && (se.user.is_some() || se.role.is_some())
            {
                v.push(format!("{name}: seLinuxOptions user/role"));
            }
            if sc.windows_options.as_ref().and_then(|w| w.host_process) == Some(true) {
                v.push(format!("{name}: windows hostProcess"));
            }
            if sc.app_armor_profile.as_ref().map(|a| a.type_.as_str()) == Some("Unconfined") {
                v.push(format!("{name}: appArmor Unconfined"));
            }
            for p in ports.iter().flatten() {
                if p.host_port.is_some_and(|h| h != 0) {
                    v.push(format!("{name}: hostPort"));
                }
            }
        }
        v
    }

    #[test]
    fn the_pod_passes_pod_security_admission_restricted() {
        let p = JobParams {
            template_urls: vec![
                "https://github.com/acme/templates.git".into(),
                "https://github.com/acme/more.git".into(),
            ],
            template_config_maps: vec!["team-templates".into()],
            resources: Some(ResourceRequirements::default()),
            ..params()
        };
        for params in [params(), p] {
            let job = build_job(&scan(), &params);
            let violations = psa_restricted_violations(pod(&job));
            assert!(violations.is_empty(), "{violations:#?}");
            let annotations = job
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap();
            for key in annotations.annotations.iter().flatten().map(|(k, _)| k) {
                assert!(
                    !key.starts_with("container.apparmor.security.beta.kubernetes.io/")
                        && !key.starts_with("seccomp.security.alpha.kubernetes.io/"),
                    "{key}"
                );
            }
        }
    }

    #[test]
    fn the_restricted_checker_catches_what_it_checks() {
        let mut job = build_job(
            &scan(),
            &JobParams {
                template_urls: vec!["https://github.com/acme/templates.git".into()],
                ..params()
            },
        );
        let pod = job.spec.as_mut().unwrap().template.spec.as_mut().unwrap();
        pod.host_network = Some(true);
        pod.volumes.as_mut().unwrap().push(Volume {
            name: "root".into(),
            host_path: Some(Default::default()),
            ..Volume::default()
        });
        pod.security_context.as_mut().unwrap().seccomp_profile = None;
        let init = &mut pod.init_containers.as_mut().unwrap()[0];
        let sc = init.security_context.as_mut().unwrap();
        sc.allow_privilege_escalation = None;
        sc.run_as_non_root = Some(false);
        sc.capabilities = Some(Capabilities {
            add: Some(vec!["NET_ADMIN".into()]),
            drop: None,
        });
        pod.containers[0]
            .security_context
            .as_mut()
            .unwrap()
            .privileged = Some(true);
        let v = psa_restricted_violations(pod);
        for want in [
            "pod: hostNetwork",
            "volume root: type hostPath",
            "git-clone-0: allowPrivilegeEscalation must be false",
            "git-clone-0: runAsNonRoot must be true",
            "git-clone-0: capabilities must drop ALL",
            "git-clone-0: adds capability NET_ADMIN",
            "git-clone-0: seccomp must be RuntimeDefault or Localhost",
            "scanner: privileged",
            "scanner: seccomp must be RuntimeDefault or Localhost",
        ] {
            assert!(v.iter().any(|x| x == want), "missing {want:?} in {v:#?}");
        }
    }

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

    // ---- scanner RBAC ------------------------------------------------------

    #[test]
    fn the_scanner_cluster_role_grants_exactly_reading_its_scan_and_patching_status() {
        let role = scanner_cluster_role("nuclei-scanner");
        assert_eq!(role.metadata.name.as_deref(), Some("nuclei-scanner"));
        let mut grants: Vec<(String, String, String)> = Vec::new();
        for rule in role.rules.as_ref().unwrap() {
            assert_eq!(rule.resource_names, None);
            assert_eq!(rule.non_resource_urls, None);
            for g in rule.api_groups.iter().flatten() {
                for r in rule.resources.iter().flatten() {
                    for v in &rule.verbs {
                        grants.push((g.clone(), r.clone(), v.clone()));
                    }
                }
            }
        }
        grants.sort();
        let g = "nuclei.homelab.mortenolsen.pro";
        assert_eq!(
            grants,
            [
                (g.into(), "nucleiscans".into(), "get".into()),
                (g.into(), "nucleiscans/status".into(), "get".into()),
                (g.into(), "nucleiscans/status".into(), "patch".into()),
            ]
        );
    }

    #[test]
    fn the_role_binding_grants_the_cluster_role_to_the_scanner_account_of_its_namespace() {
        let rb = scanner_role_binding("web", "nuclei-scanner", "nuclei-operator-scanner");
        assert_eq!(rb.metadata.name.as_deref(), Some("nuclei-operator-scanner"));
        assert_eq!(rb.metadata.namespace.as_deref(), Some("web"));
        assert_eq!(rb.role_ref.kind, "ClusterRole");
        assert_eq!(rb.role_ref.name, "nuclei-operator-scanner");
        assert_eq!(
            rb.role_ref.api_group.as_deref(),
            Some("rbac.authorization.k8s.io")
        );
        let subjects = rb.subjects.as_ref().unwrap();
        assert_eq!(subjects.len(), 1);
        assert_eq!(subjects[0].kind, "ServiceAccount");
        assert_eq!(subjects[0].name, "nuclei-scanner");
        assert_eq!(subjects[0].namespace.as_deref(), Some("web"));
    }

    #[test]
    fn scanner_rbac_objects_are_labelled_as_the_operators() {
        let sa = scanner_service_account("web", "scan-sa");
        assert_eq!(sa.metadata.name.as_deref(), Some("scan-sa"));
        assert_eq!(sa.metadata.namespace.as_deref(), Some("web"));
        assert_eq!(sa.automount_service_account_token, Some(false));
        for labels in [
            sa.metadata.labels,
            scanner_cluster_role("r").metadata.labels,
            scanner_role_binding("web", "scan-sa", "r").metadata.labels,
        ] {
            assert_eq!(labels.unwrap()[MANAGED_BY_LABEL], "nuclei-operator");
        }
    }

    #[test]
    fn applied_bodies_carry_their_kind_for_server_side_apply() {
        let rb = serde_json::to_value(scanner_role_binding("web", "x", "r")).unwrap();
        assert_eq!(rb["apiVersion"], "rbac.authorization.k8s.io/v1");
        assert_eq!(rb["kind"], "RoleBinding");
        let sa = serde_json::to_value(scanner_service_account("web", "x")).unwrap();
        assert_eq!(sa["apiVersion"], "v1");
        assert_eq!(sa["kind"], "ServiceAccount");
    }

    #[test]
    fn the_rbac_cache_applies_once_per_namespace_until_it_expires() {
        let cache = RbacCache::new(Duration::from_secs(600));
        let t0 = Instant::now();
        assert!(cache.needs_apply("web", "nuclei-scanner", t0));
        cache.mark_applied("web", "nuclei-scanner", t0);
        assert!(!cache.needs_apply("web", "nuclei-scanner", t0));
        assert!(!cache.needs_apply("web", "nuclei-scanner", t0 + Duration::from_secs(599)));
        assert!(cache.needs_apply("web", "nuclei-scanner", t0 + Duration::from_secs(600)));
        assert!(
            cache.needs_apply("shop", "nuclei-scanner", t0),
            "per namespace"
        );
        assert!(cache.needs_apply("web", "other-sa", t0), "per account");
    }

    #[test]
    fn forgetting_a_namespace_applies_again_at_the_next_job() {
        let cache = RbacCache::default();
        assert_eq!(cache.refresh(), RbacCache::DEFAULT_REFRESH);
        let t0 = Instant::now();
        cache.mark_applied("web", "nuclei-scanner", t0);
        cache.mark_applied("shop", "nuclei-scanner", t0);
        cache.forget("web");
        assert!(cache.needs_apply("web", "nuclei-scanner", t0));
        assert!(!cache.needs_apply("shop", "nuclei-scanner", t0));
    }
}
