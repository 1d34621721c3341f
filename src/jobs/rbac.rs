//! The ServiceAccount and RoleBinding scanner pods run as in each namespace, and the only I/O of this module: applying them.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, PolicyRule, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::{Api, Patch, PatchParams};

use crate::api::NucleiScan;

use super::*;

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
/// With `cache_namespace`, also the RoleBinding there that lets the
/// ServiceAccount read the template cache
/// ([`crate::template_cache::refresh::reader_binding`]).
///
/// The operator needs `get`, `create`, `patch` on serviceaccounts and
/// rolebindings, and `bind` on that one ClusterRole.
pub async fn ensure_scanner_rbac(
    client: &kube::Client,
    namespace: &str,
    service_account: &str,
    cluster_role: &str,
    cache_namespace: Option<&str>,
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
    if let Some(cache) = cache_namespace {
        crate::template_cache::refresh::ensure_reader_binding(
            client,
            cache,
            namespace,
            service_account,
        )
        .await?;
    }
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
        cache_namespace: Option<&str>,
    ) -> Result<(), kube::Error> {
        // Applied without the cache's binding does not count as applied with
        // it (a space is in no ServiceAccount name).
        let key = match cache_namespace {
            Some(cache) => format!("{service_account} {cache}"),
            None => service_account.to_owned(),
        };
        if !self.needs_apply(namespace, &key, Instant::now()) {
            return Ok(());
        }
        ensure_scanner_rbac(
            client,
            namespace,
            service_account,
            cluster_role,
            cache_namespace,
        )
        .await?;
        self.mark_applied(namespace, &key, Instant::now());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
