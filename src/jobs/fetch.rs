//! The template cache's fetch Job (see [`crate::template_cache`]).

use std::collections::BTreeMap;

use k8s_openapi::api::batch::v1::{Job, JobSpec};
use k8s_openapi::api::core::v1::{
    Container, EnvVar, EnvVarSource, PodTemplateSpec, SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::build::{
    container_security_context, empty_dir, env_field, env_value, git_containers, mount,
    pod_annotations, restricted_pod,
};
use super::*;
use crate::git::GitSource;
use crate::settings::LogFormat;
use crate::template_cache::{COMPONENT_TEMPLATE_CACHE, FETCHER, MANIFEST_NAME_ENV};

/// Name of the fetch Job's main container.
pub const PUBLISH_CONTAINER: &str = "publish";

/// What one fetch Job needs.
#[derive(Clone, Debug, PartialEq)]
pub struct FetchParams {
    /// The Job's name, also its manifest's.
    pub name: String,
    /// The operator's namespace.
    pub namespace: String,
    /// The operator image (its `publish-templates` mode).
    pub image: String,
    /// GIT_IMAGE.
    pub git_image: String,
    /// TEMPLATE_REPOSITORIES.
    pub sources: Vec<GitSource>,
    /// Aligned with `sources`: the Secret each is cloned with.
    pub secrets: Vec<Option<String>>,
    pub log_format: LogFormat,
}

/// The fetch Job: every repository cloned by an optional init container (one
/// that fails leaves its words for the manifest instead of failing the Job),
/// then `publish-templates` as ServiceAccount [`FETCHER`]. Its pod passes Pod
/// Security Admission "restricted", as scanner pods do. Not retried: the
/// operator starts the next one.
pub fn build_fetch_job(p: &FetchParams) -> Job {
    let labels = BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (
            COMPONENT_LABEL.to_owned(),
            COMPONENT_TEMPLATE_CACHE.to_owned(),
        ),
    ]);
    let init_containers: Vec<Container> = p
        .sources
        .iter()
        .enumerate()
        .flat_map(|(i, source)| {
            let mut steps = git_containers(&p.git_image, i, source, true);
            if let Some(secret) = p.secrets.get(i).cloned().flatten() {
                for step in &mut steps {
                    step.env
                        .get_or_insert_default()
                        .extend(credentials(&secret));
                }
            }
            steps
        })
        .collect();
    let publish = Container {
        name: PUBLISH_CONTAINER.to_owned(),
        image: Some(p.image.clone()),
        args: Some(vec!["publish-templates".into()]),
        env: Some(vec![
            env_value(
                TEMPLATE_SOURCES_ENV,
                &serde_json::to_string(&p.sources).expect("serializable sources"),
            ),
            env_value(MANIFEST_NAME_ENV, &p.name),
            env_field("POD_NAMESPACE", "metadata.namespace"),
            env_value("HOME", TMP_DIR),
            env_value(LOG_FORMAT_ENV, p.log_format.as_str()),
        ]),
        security_context: Some(container_security_context()),
        termination_message_policy: Some("FallbackToLogsOnError".into()),
        volume_mounts: Some(vec![
            mount("tmp", TMP_DIR, false),
            mount("git-templates", GIT_TEMPLATES_DIR, true),
        ]),
        ..Container::default()
    };
    let clones = i64::try_from(p.sources.len()).unwrap_or(i64::MAX);
    Job {
        metadata: ObjectMeta {
            name: Some(p.name.clone()),
            namespace: Some(p.namespace.clone()),
            labels: Some(labels.clone()),
            ..ObjectMeta::default()
        },
        spec: Some(JobSpec {
            backoff_limit: Some(0),
            ttl_seconds_after_finished: Some(FETCH_JOB_TTL_SECONDS),
            active_deadline_seconds: Some(
                (CLONE_DEADLINE_MARGIN.as_secs() as i64).saturating_mul(clones.saturating_add(1)),
            ),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    annotations: Some(pod_annotations()),
                    ..ObjectMeta::default()
                }),
                spec: Some(restricted_pod(
                    FETCHER,
                    init_containers,
                    publish,
                    vec![
                        empty_dir("tmp", TMP_SIZE_LIMIT),
                        empty_dir("git-templates", GIT_TEMPLATES_SIZE_LIMIT),
                    ],
                )),
            },
            ..JobSpec::default()
        }),
        status: None,
    }
}

/// Environment of a git container that answers git's credential questions
/// from the Secret `secret`: key `username` (default `git`; most hosts take
/// any name with a token) and key `password` (a password or token). Both
/// keys are optional, so a missing Secret fails only that repository's
/// clone ("could not read Username"), not the pod. The values stay in the
/// environment: no file, no command line.
fn credentials(secret: &str) -> Vec<EnvVar> {
    let key = |name: &str, key: &str| EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: secret.to_owned(),
                key: key.to_owned(),
                optional: Some(true),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    };
    vec![
        key("GIT_USERNAME", "username"),
        key("GIT_PASSWORD", "password"),
        // A credential helper through git's environment configuration.
        env_value("GIT_CONFIG_COUNT", "1"),
        env_value("GIT_CONFIG_KEY_0", "credential.helper"),
        env_value(
            "GIT_CONFIG_VALUE_0",
            r#"!f() { test "$1" = get || return 0; echo "username=${GIT_USERNAME:-git}"; echo "password=${GIT_PASSWORD}"; }; f"#,
        ),
    ]
}

/// `ttlSecondsAfterFinished` of a fetch Job: long enough to read its logs.
pub const FETCH_JOB_TTL_SECONDS: i32 = 3600;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fetch_job_clones_every_repository_optionally_then_publishes_as_the_fetcher() {
        let p = FetchParams {
            name: "nuclei-templates-1764816000".into(),
            namespace: "nuclei-system".into(),
            image: "nuclei-operator:1".into(),
            git_image: "alpine/git:2".into(),
            sources: vec![
                GitSource::parse("https://h/a.git#main:http").unwrap(),
                GitSource::parse(&format!("https://h/b.git#{}", "a".repeat(40))).unwrap(),
            ],
            secrets: vec![None, Some("git-creds".into())],
            log_format: LogFormat::Json,
        };
        let job = build_fetch_job(&p);
        assert_eq!(job.metadata.namespace.as_deref(), Some("nuclei-system"));
        let spec = job.spec.unwrap();
        assert_eq!(spec.backoff_limit, Some(0));
        assert_eq!(spec.active_deadline_seconds, Some(180));
        let pod = spec.template.spec.unwrap();
        assert_eq!(pod.service_account_name.as_deref(), Some(FETCHER));
        let inits: Vec<&str> = pod
            .init_containers
            .iter()
            .flatten()
            .map(|c| c.name.as_str())
            .collect();
        assert_eq!(inits, ["git-clone-0", "git-clone-1", "git-checkout-1"]);
        for c in pod.init_containers.iter().flatten() {
            assert_eq!(c.command.as_deref(), Some(&["sh".to_owned()][..]));
            assert_eq!(c.image.as_deref(), Some("alpine/git:2"));
            // Only the private repository's steps see its Secret.
            let secrets: Vec<(&str, &str)> = c
                .env
                .iter()
                .flatten()
                .filter_map(|e| {
                    let r = e.value_from.as_ref()?.secret_key_ref.as_ref()?;
                    Some((r.name.as_str(), r.key.as_str()))
                })
                .collect();
            if c.name.ends_with("-1") {
                assert_eq!(
                    secrets,
                    [("git-creds", "username"), ("git-creds", "password")]
                );
            } else {
                assert!(secrets.is_empty(), "{}: {secrets:?}", c.name);
            }
        }
        let publish = &pod.containers[0];
        assert_eq!(
            publish.args.as_deref(),
            Some(&["publish-templates".to_owned()][..])
        );
        let env: BTreeMap<String, Option<String>> = publish
            .env
            .iter()
            .flatten()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect();
        assert_eq!(
            env[MANIFEST_NAME_ENV].as_deref(),
            Some("nuclei-templates-1764816000")
        );
        let told: Vec<GitSource> =
            serde_json::from_str(env[TEMPLATE_SOURCES_ENV].as_deref().unwrap()).unwrap();
        assert_eq!(told, p.sources);
        assert!(env.contains_key("POD_NAMESPACE"));
        // Restricted: as the scanner's pod.
        let sc = publish.security_context.as_ref().unwrap();
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(pod.security_context.unwrap().run_as_non_root, Some(true));
    }
}
