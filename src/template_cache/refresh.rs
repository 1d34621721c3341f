//! The leader's template cache loop: fetch, publish to scanner Jobs, clean
//! up, sleep, again. All I/O of the cache on the operator's side is here.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chrono::Utc;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{
    CACHE_LABEL, COMPONENT_TEMPLATE_CACHE, FETCHER, MANIFEST_KEY, Manifest, NAME_PREFIX,
    READER_ROLE, TemplateCache,
};
use crate::api::labels::{COMPONENT_LABEL, FIELD_MANAGER, MANAGED_BY, MANAGED_BY_LABEL};
use crate::git::GitSource;
use crate::jobs::{FetchParams, JobOutcome, build_fetch_job, job_finished};
use crate::metrics::{FetchLabel, Metrics};
use crate::settings::Settings;

/// How soon a fetch that did not publish is tried again (or the refresh
/// interval, if shorter).
pub const RETRY: Duration = Duration::from_secs(300);
/// How often a running fetch Job is looked at.
const POLL: Duration = Duration::from_secs(2);

fn labels() -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
        (
            COMPONENT_LABEL.to_owned(),
            COMPONENT_TEMPLATE_CACHE.to_owned(),
        ),
    ])
}

fn meta(namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(labels()),
        ..ObjectMeta::default()
    }
}

fn configmap_rule(verb: &str, names: Option<Vec<String>>) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["configmaps".into()]),
        verbs: vec![verb.into()],
        resource_names: names,
        ..PolicyRule::default()
    }
}

fn binding(namespace: &str, name: &str, role: &str, subject: Subject) -> RoleBinding {
    RoleBinding {
        metadata: meta(namespace, name),
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: role.to_owned(),
        },
        subjects: Some(vec![subject]),
    }
}

fn service_account_subject(namespace: &str, name: &str) -> Subject {
    Subject {
        kind: "ServiceAccount".into(),
        name: name.to_owned(),
        namespace: Some(namespace.to_owned()),
        ..Subject::default()
    }
}

/// The Role letting scanner pods `get` exactly the ConfigMaps `chunks`;
/// without chunks it grants nothing (an empty `resourceNames` would grant
/// every ConfigMap of the namespace).
pub fn reader_role(namespace: &str, chunks: &BTreeSet<String>) -> Role {
    let rules = if chunks.is_empty() {
        Vec::new()
    } else {
        vec![configmap_rule(
            "get",
            Some(chunks.iter().cloned().collect()),
        )]
    };
    Role {
        metadata: meta(namespace, READER_ROLE),
        rules: Some(rules),
    }
}

/// The RoleBinding (in the cache's namespace) of the scanner ServiceAccount
/// `service_account` of `scan_namespace` to [`reader_role`].
pub fn reader_binding(namespace: &str, scan_namespace: &str, service_account: &str) -> RoleBinding {
    binding(
        namespace,
        &format!("{READER_ROLE}-{scan_namespace}"),
        READER_ROLE,
        service_account_subject(scan_namespace, service_account),
    )
}

/// The fetch Job's ServiceAccount, its Role (`create` ConfigMaps) and its
/// RoleBinding.
pub fn fetcher_rbac(namespace: &str) -> (ServiceAccount, Role, RoleBinding) {
    (
        ServiceAccount {
            metadata: meta(namespace, FETCHER),
            automount_service_account_token: Some(false),
            ..ServiceAccount::default()
        },
        Role {
            metadata: meta(namespace, FETCHER),
            rules: Some(vec![configmap_rule("create", None)]),
        },
        binding(
            namespace,
            FETCHER,
            FETCHER,
            service_account_subject(namespace, FETCHER),
        ),
    )
}

fn apply() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Applies [`reader_binding`]: called before a scanner Job that reads the
/// cache is created in `scan_namespace`.
pub async fn ensure_reader_binding(
    client: &kube::Client,
    namespace: &str,
    scan_namespace: &str,
    service_account: &str,
) -> Result<(), kube::Error> {
    let rb = reader_binding(namespace, scan_namespace, service_account);
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .patch(&rb.name_any(), &apply(), &Patch::Apply(&rb))
        .await?;
    Ok(())
}

async fn apply_reader_role(
    client: &kube::Client,
    namespace: &str,
    manifests: &[&Manifest],
) -> Result<(), kube::Error> {
    let chunks: BTreeSet<String> = manifests
        .iter()
        .flat_map(|m| m.chunk_names().map(str::to_owned))
        .collect();
    Api::<Role>::namespaced(client.clone(), namespace)
        .patch(
            READER_ROLE,
            &apply(),
            &Patch::Apply(&reader_role(namespace, &chunks)),
        )
        .await?;
    Ok(())
}

async fn ensure_fetcher_rbac(client: &kube::Client, namespace: &str) -> Result<(), kube::Error> {
    let (sa, role, rb) = fetcher_rbac(namespace);
    Api::<ServiceAccount>::namespaced(client.clone(), namespace)
        .patch(FETCHER, &apply(), &Patch::Apply(&sa))
        .await?;
    Api::<Role>::namespaced(client.clone(), namespace)
        .patch(FETCHER, &apply(), &Patch::Apply(&role))
        .await?;
    Api::<RoleBinding>::namespaced(client.clone(), namespace)
        .patch(FETCHER, &apply(), &Patch::Apply(&rb))
        .await?;
    Ok(())
}

fn manifest_of(cm: &ConfigMap) -> Option<Manifest> {
    let json = cm.data.as_ref()?.get(MANIFEST_KEY)?;
    match serde_json::from_str(json) {
        Ok(m) => Some(m),
        Err(e) => {
            warn!(
                configmap = cm.name_any(),
                "not a template cache manifest: {e}"
            );
            None
        }
    }
}

/// The newest manifest fetched for exactly `sources`, with its name.
async fn newest_manifest(
    api: &Api<ConfigMap>,
    sources: &[GitSource],
) -> Result<Option<(String, Manifest)>, kube::Error> {
    let lp = ListParams::default().labels(&format!("{CACHE_LABEL}=manifest"));
    Ok(api
        .list(&lp)
        .await?
        .items
        .iter()
        .filter_map(|cm| Some((cm.name_any(), manifest_of(cm)?)))
        .filter(|(_, m)| m.is_for(sources))
        .max_by_key(|(_, m)| m.fetched_at))
}

/// Runs one fetch Job to its end and reads the manifest it published.
async fn fetch(
    client: &kube::Client,
    settings: &Settings,
    namespace: &str,
) -> Result<(String, Manifest)> {
    ensure_fetcher_rbac(client, namespace)
        .await
        .context("applying the fetcher's ServiceAccount and Role")?;
    let params = FetchParams {
        name: format!("{NAME_PREFIX}{}", Utc::now().timestamp()),
        namespace: namespace.to_owned(),
        image: settings.scanner_image.clone(),
        git_image: settings.git_image.clone(),
        sources: settings.template_repositories.sources.clone(),
        secrets: settings.template_repositories.secrets.clone(),
        log_format: settings.log_format,
    };
    let job = build_fetch_job(&params);
    let jobs: Api<Job> = Api::namespaced(client.clone(), namespace);
    match jobs.create(&PostParams::default(), &job).await {
        Ok(_) => {}
        // Another replica's, a second ago: the same fetch.
        Err(kube::Error::Api(e)) if e.code == 409 => {}
        Err(e) => return Err(e).context("creating the fetch Job"),
    }
    info!(job = params.name, "fetching the template repositories");
    let deadline_secs = job
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds)
        .unwrap_or(600);
    let give_up = tokio::time::Instant::now() + Duration::from_secs(deadline_secs as u64 + 60);
    loop {
        tokio::time::sleep(POLL).await;
        let job = jobs
            .get(&params.name)
            .await
            .context("reading the fetch Job")?;
        match job_finished(&job) {
            Some(JobOutcome::Complete) => break,
            Some(JobOutcome::Failed { reason, message }) => {
                bail!("fetch Job {} failed ({reason}): {message}", params.name)
            }
            None if tokio::time::Instant::now() > give_up => {
                bail!("fetch Job {} did not finish in time", params.name)
            }
            None => {}
        }
    }
    let cm = Api::<ConfigMap>::namespaced(client.clone(), namespace)
        .get(&params.name)
        .await
        .context("reading the fetch Job's manifest")?;
    let manifest = manifest_of(&cm).context("the fetch Job's manifest is unreadable")?;
    Ok((params.name, manifest))
}

/// Deletes the cache's ConfigMaps that neither `keep` manifest is or names.
async fn collect_garbage(
    api: &Api<ConfigMap>,
    keep: &[(&str, &Manifest)],
) -> Result<usize, kube::Error> {
    let names: BTreeSet<&str> = keep
        .iter()
        .flat_map(|(name, m)| std::iter::once(*name).chain(m.chunk_names()))
        .collect();
    let lp = ListParams::default().labels(CACHE_LABEL);
    let mut deleted = 0;
    for cm in api.list_metadata(&lp).await?.items {
        let name = cm.name_any();
        if !names.contains(name.as_str()) {
            match api.delete(&name, &DeleteParams::default()).await {
                Ok(_) => deleted += 1,
                Err(kube::Error::Api(e)) if e.code == 404 => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(deleted)
}

fn log_entries(manifest: &Manifest) {
    for e in &manifest.sources {
        match &e.error {
            Some(error) => warn!(source = %e.source, "template repository unavailable: {error}"),
            None => {
                info!(source = %e.source, commit = ?e.commit, bytes = e.bytes, "template repository cached")
            }
        }
    }
}

/// Keeps `cache` filled: adopts the newest manifest of these repositories
/// (a restart does not fetch again before it is due), then fetches every
/// TEMPLATE_REFRESH_INTERVAL (or [`RETRY`] after a fetch that published
/// nothing, keeping the last manifest). Runs on the leader until `stop`.
pub async fn run(
    client: kube::Client,
    settings: Settings,
    cache: Arc<TemplateCache>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let in_use = |m: &Manifest| {
        cache.set(Arc::new(m.clone()));
        metrics.templates_published.set(m.fetched_at.timestamp());
        let missing = m.sources.iter().filter(|e| e.error.is_some()).count();
        metrics.templates_unavailable.set(missing as i64);
    };
    let count_fetch = |result: &str| {
        metrics
            .template_fetches
            .get_or_create(&FetchLabel {
                result: result.into(),
            })
            .inc();
    };
    let namespace = cache.namespace().to_owned();
    let sources = settings.template_repositories.sources.clone();
    let interval = settings.template_refresh_interval;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    let mut current: Option<(String, Manifest)> = None;
    let mut wait = Duration::ZERO;
    match newest_manifest(&api, &sources).await {
        Ok(Some((name, m))) => match apply_reader_role(&client, &namespace, &[&m]).await {
            Ok(()) => {
                let age = (Utc::now() - m.fetched_at).to_std().unwrap_or_default();
                wait = interval.saturating_sub(age);
                info!(manifest = name, due_in = ?wait, "template cache adopted");
                in_use(&m);
                current = Some((name, m));
            }
            Err(e) => warn!("granting scanners the template cache: {e}"),
        },
        Ok(None) => {}
        Err(e) => warn!("reading the template cache: {e}"),
    }
    loop {
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        let fetched = tokio::select! {
            r = fetch(&client, &settings, &namespace) => r,
            () = stop.cancelled() => return,
        };
        let published = match fetched {
            Ok((name, m)) => {
                let mut keep = vec![&m];
                keep.extend(current.as_ref().map(|(_, m)| m));
                apply_reader_role(&client, &namespace, &keep)
                    .await
                    .map(|()| (name, m))
                    .context("granting scanners the template cache")
            }
            Err(e) => Err(e),
        };
        match published {
            Ok((name, m)) => {
                log_entries(&m);
                in_use(&m);
                count_fetch("published");
                let mut keep = vec![(name.as_str(), &m)];
                keep.extend(current.as_ref().map(|(n, m)| (n.as_str(), m)));
                match collect_garbage(&api, &keep).await {
                    Ok(n) if n > 0 => info!(deleted = n, "old template cache ConfigMaps deleted"),
                    Ok(_) => {}
                    Err(e) => warn!("deleting old template cache ConfigMaps: {e}"),
                }
                current = Some((name, m));
                wait = interval;
            }
            Err(e) => {
                warn!("template cache not refreshed, the last one stays in use: {e:#}");
                count_fetch("failed");
                wait = interval.min(RETRY);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_role_grants_get_on_exactly_the_chunks_and_nothing_without_them() {
        let chunks: BTreeSet<String> = [
            "nuclei-templates-a-0".to_owned(),
            "nuclei-templates-b-0".into(),
        ]
        .into();
        let role = reader_role("ops", &chunks);
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].verbs, ["get"]);
        assert_eq!(
            rules[0].resources.as_deref(),
            Some(&["configmaps".to_owned()][..])
        );
        assert_eq!(
            rules[0].resource_names.as_deref(),
            Some(
                &[
                    "nuclei-templates-a-0".to_owned(),
                    "nuclei-templates-b-0".into()
                ][..]
            )
        );
        assert_eq!(reader_role("ops", &BTreeSet::new()).rules, Some(vec![]));
    }

    #[test]
    fn the_bindings_name_their_subjects_and_the_fetcher_may_only_create_configmaps() {
        let rb = reader_binding("ops", "shop", "nuclei-scanner");
        assert_eq!(rb.metadata.namespace.as_deref(), Some("ops"));
        assert_eq!(
            rb.metadata.name.as_deref(),
            Some("nuclei-template-cache-shop")
        );
        assert_eq!(rb.role_ref.name, READER_ROLE);
        let s = &rb.subjects.unwrap()[0];
        assert_eq!(
            (s.name.as_str(), s.namespace.as_deref()),
            ("nuclei-scanner", Some("shop"))
        );
        let (sa, role, rb) = fetcher_rbac("ops");
        assert_eq!(sa.automount_service_account_token, Some(false));
        let rules = role.rules.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].verbs, ["create"]);
        assert_eq!(rb.subjects.unwrap()[0].name, FETCHER);
    }
}
