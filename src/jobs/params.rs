//! The effective configuration of a scanner Job: the operator's defaults overridden by the scan's `spec.scannerConfig`, validated.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};

use crate::api::{NucleiScan, ScanKey, Severity};
use crate::git::GitSource;
use crate::settings::Settings;
use crate::target_policy::TargetPolicy;

use super::*;

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
    /// Git repositories cloned into `/templates/git/<i>` before the scan:
    /// TEMPLATE_REPOSITORIES, then the scan's `templateURLs` not among them.
    pub template_sources: Vec<GitSource>,
    /// How many of [`JobParams::template_sources`], from the start, are the
    /// operator's: a failed clone of one leaves the run without it instead
    /// of failing the run (a scan's own `templateURLs` are required).
    pub shared_sources: usize,
    /// The operator's template cache, when it has published a manifest: the
    /// sources it holds are read from it instead of cloned.
    pub cache: Option<CacheRef>,
    /// ConfigMaps (`spec.scannerConfig.templateConfigMaps`) mounted at
    /// `/templates/configmaps/<name>`.
    pub template_config_maps: Vec<String>,
    /// Namespace of the scan (and of the Job).
    pub scan_namespace: String,
    /// Name of the scan.
    pub scan_name: String,
    /// [`run_token`] of the run.
    pub run_token: RunToken,
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

/// Where the operator's template cache is and what it holds now.
#[derive(Clone, Debug, PartialEq)]
pub struct CacheRef {
    /// The operator's namespace.
    pub namespace: String,
    pub manifest: std::sync::Arc<crate::template_cache::Manifest>,
}

impl JobParams {
    /// What the scanner is told of the cache: the entry of each source read
    /// from it. An operator repository is read from the cache whatever the
    /// fetch found (one that failed is left out, not cloned again by every
    /// pod); a scan's own `templateURLs` entry only when it was fetched, its
    /// clone being required. `None` when no source is cached.
    pub fn cached_sources(&self) -> Option<crate::template_cache::CacheEnv> {
        let cache = self.cache.as_ref()?;
        let sources: Vec<Option<crate::template_cache::Entry>> = self
            .template_sources
            .iter()
            .enumerate()
            .map(|(i, source)| {
                cache
                    .manifest
                    .entry(source)
                    .filter(|e| i < self.shared_sources || e.error.is_none())
                    .cloned()
            })
            .collect();
        sources
            .iter()
            .any(Option::is_some)
            .then(|| crate::template_cache::CacheEnv {
                namespace: cache.namespace.clone(),
                sources,
            })
    }

    /// `<namespace>/<name>` of the scan: the scanner's `--scan` argument.
    pub fn scan_key(&self) -> String {
        ScanKey::new(&self.scan_namespace, &self.scan_name).to_string()
    }

    /// The Job's name: [`job_name`] of the scan name and run token.
    pub fn job_name(&self) -> String {
        job_name(&self.scan_name, &self.run_token)
    }

    /// The Job's `activeDeadlineSeconds`: the timeout rounded up to whole
    /// seconds, plus [`DEADLINE_MARGIN`], plus [`CLONE_DEADLINE_MARGIN`] per
    /// template repository.
    pub fn active_deadline_seconds(&self) -> i64 {
        let clones = u32::try_from(self.template_sources.len()).unwrap_or(u32::MAX);
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
        let git = self
            .template_sources
            .iter()
            .enumerate()
            .map(|(i, source)| match &source.path {
                Some(path) => format!("{GIT_TEMPLATES_DIR}/{i}/{path}"),
                None => format!("{GIT_TEMPLATES_DIR}/{i}"),
            });
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
    let mut template_sources = settings.template_repositories.sources.clone();
    let shared_sources = template_sources.len();
    for (i, entry) in config.template_urls.iter().enumerate() {
        let source = GitSource::parse(entry)
            .map_err(|e| format!("spec.scannerConfig.templateURLs[{i}]: {e}"))?;
        // One clone of a repository the operator already adds.
        if !template_sources.contains(&source) {
            template_sources.push(source);
        }
    }
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
        template_sources,
        shared_sources,
        cache: None,
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
        Err("empty ConfigMap name".to_owned())
    } else if name.len() > crate::names::MAX_DNS_SUBDOMAIN {
        Err(format!("{name:?} is longer than 253 characters"))
    } else if crate::names::is_dns_subdomain(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a ConfigMap name (lower-case letters, digits, '-' and '.')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::api::ScannerConfig;

    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::super::fixtures::*;

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
        assert!(p.template_sources.is_empty());
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
        assert_eq!(
            p.template_sources,
            sources(&["https://github.com/acme/templates.git"])
        );
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
            assert!(GitSource::parse(good).is_ok(), "{good}");
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
            "github.com:acme/t",
            "git@github.com:",
            "https:/é/x",
            "ééééééééé",
        ] {
            assert!(GitSource::parse(bad).is_err(), "{bad:?}");
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
    fn the_operators_repositories_come_first_and_a_scan_naming_one_again_clones_it_once() {
        let settings = Settings {
            template_repositories: crate::git::parse_repositories(
                r#"[{"url": "https://h/community.git", "branch": "main", "path": "/templates/community"}]"#,
            )
            .unwrap(),
            ..Settings::default()
        };
        assert_eq!(
            effective_params(&scan(), &settings)
                .unwrap()
                .template_sources,
            sources(&["https://h/community.git#main:templates/community"])
        );
        let s = with_config(
            scan(),
            ScannerConfig {
                template_urls: vec![
                    "https://h/team.git#v1".into(),
                    "https://h/community.git#main:templates/community".into(),
                ],
                ..ScannerConfig::default()
            },
        );
        let p = effective_params(&s, &settings).unwrap();
        assert_eq!(
            p.template_sources,
            sources(&[
                "https://h/community.git#main:templates/community",
                "https://h/team.git#v1"
            ])
        );
        assert_eq!(
            p.extra_template_dirs(),
            "/templates/git/0/templates/community:/templates/git/1"
        );
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
}
