//! The scanner Job of one run, and its pod.

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, ConfigMapVolumeSource, Container, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, SeccompProfile,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;

use crate::api::NucleiScan;
use crate::duration::format_duration;
use crate::git::GitSource;

use super::*;

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
    let cached = params.cached_sources();
    if !params.template_sources.is_empty() {
        volumes.push(empty_dir("git-templates", GIT_TEMPLATES_SIZE_LIMIT));
        // The scanner unpacks cached sources there itself.
        let read_only = cached.is_none();
        scanner_mounts.push(mount("git-templates", GIT_TEMPLATES_DIR, read_only));
        for (i, source) in params.template_sources.iter().enumerate() {
            if cached.as_ref().is_some_and(|c| c.sources[i].is_some()) {
                continue;
            }
            let optional = i < params.shared_sources;
            init_containers.extend(git_containers(&params.git_image, i, source, optional));
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
    // What the scanner records, with the commit each clone checked out.
    if !params.template_sources.is_empty() {
        env.push(env_value(
            TEMPLATE_SOURCES_ENV,
            &serde_json::to_string(&params.template_sources).expect("serializable sources"),
        ));
    }
    if let Some(cached) = &cached {
        env.push(env_value(
            crate::template_cache::TEMPLATE_CACHE_ENV,
            &serde_json::to_string(cached).expect("serializable cache"),
        ));
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
        node_selector: (!params.node_selector.is_empty()).then(|| params.node_selector.clone()),
        tolerations: (!params.tolerations.is_empty()).then(|| params.tolerations.clone()),
        ..restricted_pod(&params.service_account, init_containers, scanner, volumes)
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
                    annotations: Some(pod_annotations()),
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

/// The init containers that put `source` into `/templates/git/<i>`: one
/// shallow clone of its branch or tag, or, for a commit (which a shallow
/// clone cannot name), a clone without checkout and a checkout of the commit.
/// An `optional` source that fails leaves no directory (the scanner runs
/// without it and says so) instead of failing the pod, and git's words in
/// `/templates/git/<i>.failed`, where the scanner and the template cache's
/// publisher read why.
pub(super) fn git_containers(
    git_image: &str,
    i: usize,
    source: &GitSource,
    optional: bool,
) -> Vec<Container> {
    let dir = format!("{GIT_TEMPLATES_DIR}/{i}");
    let mut clone: Vec<String> = vec!["clone".into()];
    match &source.git_ref {
        Some(commit) if source.pins_commit() => {
            clone.push("--no-checkout".into());
            let checkout = vec![
                "-C".into(),
                dir.clone(),
                "-c".into(),
                "advice.detachedHead=false".into(),
                "checkout".into(),
                "--quiet".into(),
                "--detach".into(),
                commit.clone(),
                "--".into(),
            ];
            // Ends option parsing: a URL can never be read as a flag.
            clone.extend(["--".into(), source.url.clone(), dir]);
            return vec![
                git_container(git_image, i, "git-clone", clone, optional),
                git_container(git_image, i, "git-checkout", checkout, optional),
            ];
        }
        Some(branch) => clone.extend([
            "--depth".into(),
            "1".into(),
            "--branch".into(),
            branch.clone(),
        ]),
        None => clone.extend(["--depth".into(), "1".into()]),
    }
    clone.extend(["--".into(), source.url.clone(), dir]);
    vec![git_container(git_image, i, "git-clone", clone, optional)]
}

fn git_container(
    git_image: &str,
    i: usize,
    step: &str,
    git_args: Vec<String>,
    optional: bool,
) -> Container {
    let name = format!("{step}-{i}");
    let (command, args) = if optional {
        // The arguments stay arguments ("$@"); only our own directory is
        // written into the script. A step after a failed one does nothing,
        // so `<dir>.failed` keeps the first failure's words.
        let dir = format!("{GIT_TEMPLATES_DIR}/{i}");
        let script = format!(
            "[ -e {dir}.failed ] && exit 0; git \"$@\" 2>{dir}.log || {{ cat {dir}.log >&2; rm -rf {dir}; mv {dir}.log {dir}.failed; echo \"$0 failed: the scan runs without these templates\" >&2; }}"
        );
        let mut args = vec!["-c".to_owned(), script, name.clone()];
        args.extend(git_args);
        ("sh", args)
    } else {
        ("git", git_args)
    };
    Container {
        name,
        image: Some(git_image.to_owned()),
        command: Some(vec![command.into()]),
        args: Some(args),
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

/// A pod of one run (`restartPolicy: Never`) that passes Pod Security
/// Admission "restricted", as `service_account` with its token (the
/// scanner and the template publisher write through the API), without
/// service links (every Service of the namespace in the environment; none
/// is needed).
pub(super) fn restricted_pod(
    service_account: &str,
    init_containers: Vec<Container>,
    main: Container,
    volumes: Vec<Volume>,
) -> PodSpec {
    PodSpec {
        restart_policy: Some("Never".into()),
        service_account_name: Some(service_account.to_owned()),
        automount_service_account_token: Some(true),
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
        containers: vec![main],
        volumes: Some(volumes),
        ..PodSpec::default()
    }
}

/// Annotations of a run's pod: no Istio sidecar, which would keep the pod
/// (and so the Job) running after its main container exits.
pub(super) fn pod_annotations() -> BTreeMap<String, String> {
    BTreeMap::from([(ISTIO_INJECT_ANNOTATION.to_owned(), "false".to_owned())])
}

pub(super) fn container_security_context() -> SecurityContext {
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

pub(super) fn empty_dir(name: &str, size_limit: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            size_limit: Some(Quantity(size_limit.to_owned())),
            ..EmptyDirVolumeSource::default()
        }),
        ..Volume::default()
    }
}

pub(super) fn mount(volume: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: volume.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

pub(super) fn env_value(name: &str, value: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.to_owned()),
        ..EnvVar::default()
    }
}

pub(super) fn env_field(name: &str, field_path: &str) -> EnvVar {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::Severity;
    use crate::settings::Settings;
    use crate::target_policy::TargetPolicy;
    use k8s_openapi::api::core::v1::{ResourceRequirements, Toleration};

    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    use super::super::fixtures::*;

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
                p.run_token.to_string(),
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
            template_sources: sources(&["https://a/t", "https://b/t"]),
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
    fn template_sources_are_cloned_by_init_containers_at_their_ref() {
        let commit = "0123456789abcdef0123456789abcdef01234567";
        let p = JobParams {
            template_sources: sources(&[
                "https://github.com/acme/templates.git",
                "git@example.com:sec/more.git#v2:http/cves",
                &format!("https://h/pinned.git#{commit}:/community/"),
            ]),
            git_image: "alpine/git:2.47.2".into(),
            ..params()
        };
        let job = build_job(&scan(), &p);
        let pod = pod(&job);
        let inits = pod.init_containers.as_ref().unwrap();
        let args: Vec<(&str, Vec<&str>)> = inits
            .iter()
            .map(|c| {
                let args = c.args.iter().flatten().map(String::as_str).collect();
                (c.name.as_str(), args)
            })
            .collect();
        assert_eq!(
            args,
            [
                (
                    "git-clone-0",
                    vec![
                        "clone",
                        "--depth",
                        "1",
                        "--",
                        "https://github.com/acme/templates.git",
                        "/templates/git/0"
                    ]
                ),
                (
                    "git-clone-1",
                    vec![
                        "clone",
                        "--depth",
                        "1",
                        "--branch",
                        "v2",
                        "--",
                        "git@example.com:sec/more.git",
                        "/templates/git/1"
                    ]
                ),
                // A shallow clone cannot name a commit.
                (
                    "git-clone-2",
                    vec![
                        "clone",
                        "--no-checkout",
                        "--",
                        "https://h/pinned.git",
                        "/templates/git/2"
                    ]
                ),
                (
                    "git-checkout-2",
                    vec![
                        "-C",
                        "/templates/git/2",
                        "-c",
                        "advice.detachedHead=false",
                        "checkout",
                        "--quiet",
                        "--detach",
                        commit,
                        "--"
                    ]
                ),
            ]
        );
        for c in inits {
            assert_eq!(c.image.as_deref(), Some("alpine/git:2.47.2"));
            assert_eq!(c.command.as_deref(), Some(&["git".to_owned()][..]));
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
        // Each source's directory runs; the scanner learns the sources to
        // record their commits.
        assert_eq!(
            env_val(s, EXTRA_TEMPLATE_DIRS_ENV),
            Some("/templates/git/0:/templates/git/1/http/cves:/templates/git/2/community")
        );
        let told: Vec<crate::git::GitSource> =
            serde_json::from_str(env_val(s, TEMPLATE_SOURCES_ENV).unwrap()).unwrap();
        assert_eq!(told, p.template_sources);
        assert_eq!(p.active_deadline_seconds(), 1800 + 60 + 3 * 60);
        let names: Vec<_> = pod
            .volumes
            .iter()
            .flatten()
            .map(|v| v.name.as_str())
            .collect();
        assert_eq!(names, ["tmp", "git-templates"]);
    }

    #[test]
    fn a_failed_clone_of_the_operators_repository_leaves_no_directory_instead_of_failing_the_pod() {
        let p = JobParams {
            template_sources: sources(&["https://h/shared.git#main", "https://h/own.git"]),
            shared_sources: 1,
            ..params()
        };
        let job = build_job(&scan(), &p);
        let inits = pod(&job).init_containers.clone().unwrap();
        let shared = &inits[0];
        assert_eq!(shared.command.as_deref(), Some(&["sh".to_owned()][..]));
        let args = shared.args.as_deref().unwrap();
        assert_eq!(args[0], "-c");
        assert_eq!(
            args[1],
            r#"[ -e /templates/git/0.failed ] && exit 0; git "$@" 2>/templates/git/0.log || { cat /templates/git/0.log >&2; rm -rf /templates/git/0; mv /templates/git/0.log /templates/git/0.failed; echo "$0 failed: the scan runs without these templates" >&2; }"#
        );
        // The URL stays an argument, never part of the script.
        assert_eq!(
            &args[2..],
            [
                "git-clone-0",
                "clone",
                "--depth",
                "1",
                "--branch",
                "main",
                "--",
                "https://h/shared.git",
                "/templates/git/0"
            ]
        );
        // The scan's own repository is required: git itself, its failure fails the pod.
        assert_eq!(inits[1].command.as_deref(), Some(&["git".to_owned()][..]));
    }

    #[test]
    fn sources_the_template_cache_holds_are_not_cloned_and_the_scanner_is_told_where_they_are() {
        use crate::template_cache::{Entry, Manifest};
        let all = sources(&[
            "https://h/shared.git#main",
            "https://h/broken.git",
            "https://h/own.git",
            "https://h/own-broken.git",
        ]);
        let entry = |i: usize, error: Option<&str>| Entry {
            source: all[i].clone(),
            commit: error.is_none().then(|| "c".repeat(40)),
            error: error.map(str::to_owned),
            sha256: error.is_none().then(|| "f".repeat(64)),
            bytes: 10,
            chunks: if error.is_none() {
                crate::template_cache::chunk_names(&"f".repeat(64), 1)
            } else {
                Vec::new()
            },
        };
        let manifest = Manifest {
            fetched_at: chrono::Utc::now(),
            sources: vec![
                entry(0, None),
                entry(1, Some("not cloned: fatal")),
                entry(2, None),
                entry(3, Some("not cloned: fatal")),
            ],
        };
        let p = JobParams {
            template_sources: all.clone(),
            shared_sources: 2,
            cache: Some(CacheRef {
                namespace: "ops".into(),
                manifest: std::sync::Arc::new(manifest),
            }),
            ..params()
        };
        let job = build_job(&scan(), &p);
        // Only the scan's own repository that the cache could not fetch is
        // cloned (it is required); the operator's broken one is not retried.
        let inits: Vec<String> = pod(&job)
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(inits, ["git-clone-3"]);
        let s = scanner(&job);
        let told: crate::template_cache::CacheEnv =
            serde_json::from_str(env_val(s, crate::template_cache::TEMPLATE_CACHE_ENV).unwrap())
                .unwrap();
        assert_eq!(told.namespace, "ops");
        let held: Vec<bool> = told.sources.iter().map(Option::is_some).collect();
        assert_eq!(held, [true, true, true, false]);
        // The scanner unpacks into the clones' volume.
        let m = s
            .volume_mounts
            .iter()
            .flatten()
            .find(|m| m.name == "git-templates")
            .unwrap();
        assert_eq!(m.read_only, None);
        // Without a cache: as before.
        let p = JobParams { cache: None, ..p };
        assert_eq!(
            pod(&build_job(&scan(), &p))
                .init_containers
                .iter()
                .flatten()
                .count(),
            4
        );
        assert!(
            env_val(
                scanner(&build_job(&scan(), &p)),
                crate::template_cache::TEMPLATE_CACHE_ENV
            )
            .is_none()
        );
    }

    #[test]
    fn template_config_maps_are_mounted_read_only_by_name() {
        let p = JobParams {
            template_sources: sources(&["https://github.com/acme/templates.git"]),
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
            template_sources: sources(&["https://github.com/acme/templates.git"]),
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
            template_sources: sources(&[
                "https://github.com/acme/templates.git",
                "https://github.com/acme/more.git#v2",
                "https://github.com/acme/pinned.git#0123456789abcdef0123456789abcdef01234567",
            ]),
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
                template_sources: sources(&["https://github.com/acme/templates.git"]),
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
}
