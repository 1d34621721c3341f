//! End-to-end, issue #6: the Helm chart, installed with the real `helm` into a
//! devcluster, runs the operator as a pod under the chart's ServiceAccount
//! (authenticated by its projected token, never by admin credentials), that
//! operator scans an annotated Ingress, and `helm uninstall` takes away every
//! object of the release.
//!
//! Each test starts its own cluster (one at a time: the machine has 2 cores).
//! The operator pod shares the host network, so the chart's HTTP port is set to
//! a free port; it resolves `canary.test` through devcluster's private
//! `/etc/hosts`, so the default target check (`TARGET_CHECK_TIMEOUT=5s`) runs.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret, ServiceAccount};
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::Role;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, ListParams, PostParams};
use kube::discovery::{Discovery, Scope, verbs};
use kube::{Resource, ResourceExt};
use nuclei_operator::api::labels::{MANAGED_BY, MANAGED_BY_LABEL};
use nuclei_operator::api::{NucleiScan, ScanPhase};
use serde_json::json;
use support::chart::{
    Chart, DATA_READER, FULLNAME, RELEASE, RELEASE_NS, RELEASE_SELECTOR, restricted_namespace,
};
use support::{
    assert_only_the_canary_finding, canary_annotations, canary_target, completed, eventually,
    ingress, namespace, target_ip, token_client,
};
use tokio::sync::Mutex;

/// The chart's default leader-election Lease name, `<fullname>-leader`.
const LEASE: &str = "nuclei-operator-leader";
/// Namespace of the annotated Ingress, its scan and the scanner Job.
const APP_NS: &str = "web";
const HOST: &str = "canary.test";
const CRD: &str = "nucleiscans.nuclei.homelab.mortenolsen.pro";
/// The scan the Ingress `canary` gets.
const SCAN: &str = "canary-ingress";
/// Where the pod's ServiceAccount token is mounted (ServiceAccount admission).
const TOKEN_MOUNT: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The chart's scanner ClusterRole, `<fullname>-scanner`.
const SCANNER_CLUSTER_ROLE: &str = "nuclei-operator-scanner";
/// The chart's scanner admission policy and its binding,
/// `<fullname>-scanner-own-scan`.
const SCANNER_POLICY: &str = "nuclei-operator-scanner-own-scan";

/// One devcluster at a time in this binary.
static SERIAL: Mutex<()> = Mutex::const_new(());

/// A cluster whose pods resolve [`HOST`] to a canary target, and the chart.
struct Env(Chart);

impl std::ops::Deref for Env {
    type Target = Chart;
    fn deref(&self) -> &Chart {
        &self.0
    }
}

impl Env {
    async fn start(n: u8) -> Env {
        let ip = target_ip(n);
        canary_target(ip).await;
        Env(Chart::start("e2e_helm", vec![format!("{HOST}={ip}")]).await)
    }

    /// `helm install --wait`, with the values `scripts/demo.sh` uses.
    async fn install(&self) {
        self.0
            .install(&[
                "--set-json",
                "templates.defaults=[]",
                "--set",
                "operator.logFormat=text",
            ])
            .await;
    }

    /// Creates the annotated Ingress in [`APP_NS`] (which must exist) and
    /// waits for its scan to complete.
    async fn scan_canary(&self) -> NucleiScan {
        Api::<Ingress>::namespaced(self.client.clone(), APP_NS)
            .create(
                &PostParams::default(),
                &ingress("canary", HOST, canary_annotations()),
            )
            .await
            .unwrap();
        let scans: Api<NucleiScan> = Api::namespaced(self.client.clone(), APP_NS);
        let scan = completed(&scans, SCAN, Duration::from_secs(180)).await;
        self.step("scan Completed");
        scan
    }
}

/// Every object the API lists (Events aside), as `Kind namespace/name` or
/// `Kind name`; only those matching `selector` when given.
async fn inventory(client: &kube::Client, selector: Option<&str>) -> BTreeSet<String> {
    let discovery = Discovery::new(client.clone()).run().await.unwrap();
    let lp = match selector {
        Some(s) => ListParams::default().labels(s),
        None => ListParams::default(),
    };
    let mut out = BTreeSet::new();
    for group in discovery.groups() {
        for (ar, caps) in group.resources_by_stability() {
            // Events are a record, not state; component statuses are probes.
            if !caps.supports_operation(verbs::LIST)
                || ar.kind == "Event"
                || ar.kind == "ComponentStatus"
            {
                continue;
            }
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let list = api
                .list(&lp)
                .await
                .unwrap_or_else(|e| panic!("listing {}: {e}", ar.plural));
            for o in list {
                out.insert(match (&caps.scope, o.namespace()) {
                    (Scope::Namespaced, Some(ns)) => {
                        format!("{} {ns}/{}", ar.kind, o.name_any())
                    }
                    _ => format!("{} {}", ar.kind, o.name_any()),
                });
            }
        }
    }
    out
}

/// Polls `f` once a second until it returns `want`; asserts equality (showing
/// the difference) after `timeout`.
async fn settles_to<F, Fut>(timeout: Duration, what: &str, want: &BTreeSet<String>, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BTreeSet<String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let got = f().await;
        if &got == want {
            return;
        }
        if Instant::now() > deadline {
            let extra: Vec<_> = got.difference(want).collect();
            let missing: Vec<_> = want.difference(&got).collect();
            panic!("{what} after {timeout:?}: unexpected {extra:#?}, missing {missing:#?}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

fn set(items: &[String]) -> BTreeSet<String> {
    items.iter().cloned().collect()
}

#[tokio::test]
async fn helm_install_runs_the_operator_as_the_charts_service_account_and_it_scans_an_ingress() {
    let _serial = SERIAL.lock().await;
    let env = Env::start(1).await;
    let client = env.client.clone();
    // Pod Security Admission rejects any operator or scanner pod that does not
    // meet the restricted standard (helm keeps an existing namespace).
    restricted_namespace(&client, RELEASE_NS).await;
    restricted_namespace(&client, APP_NS).await;
    env.install().await;

    // The Deployment is available with its one replica.
    let deployment = Api::<Deployment>::namespaced(client.clone(), RELEASE_NS)
        .get(FULLNAME)
        .await
        .unwrap();
    let status = deployment.status.unwrap();
    assert_eq!(status.available_replicas, Some(1));
    assert_eq!(status.ready_replicas, Some(1));
    let available =
        status.conditions.unwrap_or_default().into_iter().any(|c| {
            c.type_.as_deref() == Some("Available") && c.status.as_deref() == Some("True")
        });
    assert!(available, "Deployment Available");

    // The pod runs as the chart's ServiceAccount, with the token the API
    // server's ServiceAccount admission projects, and nothing else to log in with.
    let sa = Api::<ServiceAccount>::namespaced(client.clone(), RELEASE_NS)
        .get(FULLNAME)
        .await
        .unwrap();
    assert_eq!(sa.labels()["app.kubernetes.io/instance"], RELEASE);
    let pod = env.operator_pod().await;
    let pod_name = pod.name_any();
    assert_eq!(
        pod.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.service_account_name.as_deref(), Some(FULLNAME));
    let container = &spec.containers[0];
    let env_names: Vec<&str> = container
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert!(!env_names.contains(&"KUBECONFIG"), "{env_names:?}");
    let token_mount = container
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.mount_path == TOKEN_MOUNT)
        .expect("the ServiceAccount token is mounted");
    let token_volume = spec
        .volumes
        .iter()
        .flatten()
        .find(|v| v.name == token_mount.name)
        .unwrap();
    assert!(
        token_volume
            .projected
            .iter()
            .flat_map(|p| p.sources.iter().flatten())
            .any(|s| s.service_account_token.is_some()),
        "a projected, pod-bound ServiceAccount token"
    );
    // The token the process kubelet put in that volume is the
    // ServiceAccount's, bound to this pod, and it is not an admin's.
    let volume_dir = env
        .cluster
        .dir()
        .join("pods")
        .join(RELEASE_NS)
        .join(&pod_name)
        .join("volumes")
        .join(&token_mount.name);
    let token = std::fs::read_to_string(volume_dir.join("token")).unwrap();
    let review = Api::<TokenReview>::all(client.clone())
        .create(
            &PostParams::default(),
            &TokenReview {
                spec: TokenReviewSpec {
                    token: token.clone(),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let review = review.status.unwrap();
    assert_eq!(review.authenticated, Some(true), "{:?}", review.error);
    let user = review.user.unwrap();
    assert_eq!(
        user.username.as_deref(),
        Some("system:serviceaccount:nuclei-system:nuclei-operator")
    );
    assert_eq!(
        user.extra.unwrap()["authentication.kubernetes.io/pod-name"],
        vec![pod_name.clone()]
    );
    let as_pod = token_client(&env.cluster, &token, &volume_dir.join("ca.crt")).await;
    Api::<Ingress>::all(as_pod.clone())
        .list(&ListParams::default())
        .await
        .expect("the operator's token may list Ingresses");
    let secrets = Api::<Secret>::all(as_pod.clone())
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&secrets, Err(kube::Error::Api(e)) if e.code == 403),
        "the operator's token may not read Secrets: {secrets:?}"
    );
    // Nor run a pod of its choosing, nor hand out rights in kube-system.
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "x"},
        "spec": {"containers": [{"name": "c", "image": "nuclei-operator:e2e"}]}
    }))
    .unwrap();
    let created = Api::<Pod>::namespaced(as_pod.clone(), APP_NS)
        .create(&PostParams::default(), &pod)
        .await;
    assert!(
        matches!(&created, Err(kube::Error::Api(e)) if e.code == 403),
        "the operator's token may not create Pods: {created:?}"
    );
    let role: Role = serde_json::from_value(json!({
        "metadata": {"name": "x"},
        "rules": [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    }))
    .unwrap();
    let created = Api::<Role>::namespaced(as_pod.clone(), "kube-system")
        .create(&PostParams::default(), &role)
        .await;
    assert!(
        matches!(&created, Err(kube::Error::Api(e)) if e.code == 403),
        "the operator's token may not create Roles: {created:?}"
    );

    // That pod is the leader (its identity holds the chart's Lease) and ready.
    let lease = eventually(Duration::from_secs(30), "the Lease held", || async {
        let l = Api::<Lease>::namespaced(client.clone(), RELEASE_NS)
            .get_opt(LEASE)
            .await
            .ok()??;
        l.spec.as_ref()?.holder_identity.as_ref()?;
        Some(l)
    })
    .await;
    assert_eq!(
        lease.spec.unwrap().holder_identity.as_deref(),
        Some(pod_name.as_str())
    );
    eventually(Duration::from_secs(30), "operator /readyz", || {
        env.health("/readyz")
    })
    .await;

    // It scans an annotated Ingress, checking the target first, to exactly
    // the expected finding.
    let scan = env.scan_canary().await;
    assert_only_the_canary_finding(scan.status.as_ref().unwrap());
    let job_ref = scan.status.as_ref().unwrap().job_ref.clone().unwrap();
    let job = Api::<Job>::namespaced(client.clone(), APP_NS)
        .get(&job_ref.name)
        .await
        .unwrap();
    let job_pod = job.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        job_pod.containers[0].image.as_deref(),
        Some("nuclei-operator:e2e"),
        "scanner pods run the operator's image"
    );
    // The operator checked the target before the Job (the chart keeps
    // TARGET_CHECK_TIMEOUT on) and it answered at once: no retry, never
    // WaitingForTargets.
    let check = container
        .env
        .iter()
        .flatten()
        .find(|e| e.name == "TARGET_CHECK_TIMEOUT")
        .and_then(|e| e.value.as_deref());
    assert_eq!(check, Some("5s"));
    let st = scan.status.as_ref().unwrap();
    assert_eq!(st.retry_count.unwrap_or(0), 0, "{:?}", st.conditions);
    assert!(
        !st.conditions
            .iter()
            .any(|c| c.type_ == "WaitingForTargets" && c.status == "True"),
        "{:?}",
        st.conditions
    );
}

#[tokio::test]
async fn helm_uninstall_removes_the_release_and_a_reinstall_takes_over_what_it_keeps() {
    let _serial = SERIAL.lock().await;
    let env = Env::start(2).await;
    let client = env.client.clone();
    let before = inventory(&client, None).await;
    env.install().await;
    let pod = env.operator_pod().await;
    let pod_name = pod.name_any();
    namespace(&client, APP_NS).await;
    let scan = env.scan_canary().await;
    let job_ref = scan.status.as_ref().unwrap().job_ref.clone().unwrap();
    let scanner_pod = job_ref.pod_name.clone().expect("jobRef.podName");

    // Before: the chart's objects, and what the Deployment made of them, carry
    // the release's labels (so the check below would see them).
    let replica_set = &pod.owner_references()[0];
    assert_eq!(replica_set.kind, "ReplicaSet");
    let release_objects = set(&[
        format!("Deployment {RELEASE_NS}/{FULLNAME}"),
        format!("ReplicaSet {RELEASE_NS}/{}", replica_set.name),
        format!("Pod {RELEASE_NS}/{pod_name}"),
        format!("ServiceAccount {RELEASE_NS}/{FULLNAME}"),
        format!("Service {RELEASE_NS}/{FULLNAME}"),
        format!("ClusterRole {FULLNAME}"),
        format!("ClusterRole {SCANNER_CLUSTER_ROLE}"),
        format!("ClusterRole {DATA_READER}"),
        format!("ClusterRole {FULLNAME}-edit"),
        format!("ClusterRoleBinding {FULLNAME}"),
        format!("ValidatingAdmissionPolicy {SCANNER_POLICY}"),
        format!("ValidatingAdmissionPolicyBinding {SCANNER_POLICY}"),
        format!("Role {RELEASE_NS}/{FULLNAME}-leader-election"),
        format!("RoleBinding {RELEASE_NS}/{FULLNAME}-leader-election"),
        // notifications.scope=operator: the notifier Secrets of its namespace.
        format!("Role {RELEASE_NS}/{FULLNAME}-notifiers"),
        format!("RoleBinding {RELEASE_NS}/{FULLNAME}-notifiers"),
    ]);
    assert_eq!(
        inventory(&client, Some(RELEASE_SELECTOR)).await,
        release_objects
    );

    env.helm(&[
        "uninstall",
        RELEASE,
        "--namespace",
        RELEASE_NS,
        "--wait",
        "--timeout",
        "2m",
    ])
    .await;
    env.step("helm uninstall --wait returned");

    // Nothing with the release's labels is left anywhere: not the Deployment,
    // its ReplicaSet and pod (garbage-collected after the Deployment), the
    // ServiceAccount, the RBAC, the admission policy or the Service.
    settles_to(
        Duration::from_secs(90),
        "objects labelled with the release",
        &BTreeSet::new(),
        || inventory(&client, Some(RELEASE_SELECTOR)),
    )
    .await;
    env.step("no object of the release left");
    assert!(
        env.health("/readyz").await.is_none(),
        "the operator's HTTP server is gone"
    );

    // What is left, exactly, compared with the cluster before the install
    // (anything else, such as helm's release Secret, is gone):
    let created =
        |now: &BTreeSet<String>| -> BTreeSet<String> { now.difference(&before).cloned().collect() };
    let expected = set(&[
        // Helm keeps CRDs from crds/ (and the API server serves its group).
        format!("CustomResourceDefinition {CRD}"),
        "CustomResourceDefinition nucleifindingexceptions.nuclei.homelab.mortenolsen.pro".into(),
        "APIService v1alpha1.nuclei.homelab.mortenolsen.pro".into(),
        // `--create-namespace` namespaces are not part of the release; the
        // controller-manager fills every namespace with these two.
        format!("Namespace {RELEASE_NS}"),
        format!("ServiceAccount {RELEASE_NS}/default"),
        format!("ConfigMap {RELEASE_NS}/kube-root-ca.crt"),
        // The leader-election Lease: the operator (kube-lease-manager) creates
        // it at run time, not the chart, and nothing owns it.
        format!("Lease {RELEASE_NS}/{LEASE}"),
        // User data: the Ingress, its scan (owned by the Ingress), the scan's
        // Job (owned by the scan, deleted after JOB_TTL_AFTER_FINISHED) and
        // that Job's pod.
        format!("Namespace {APP_NS}"),
        format!("ServiceAccount {APP_NS}/default"),
        format!("ConfigMap {APP_NS}/kube-root-ca.crt"),
        format!("Ingress {APP_NS}/canary"),
        format!("NucleiScan {APP_NS}/{SCAN}"),
        format!("Job {APP_NS}/{}", job_ref.name),
        format!("Pod {APP_NS}/{scanner_pod}"),
        // The scanner's ServiceAccount and RoleBinding (to the chart's
        // scanner ClusterRole, gone with the release), which the operator
        // applies in each namespace with scans; unowned, like the Lease.
        format!("ServiceAccount {APP_NS}/nuclei-scanner"),
        format!("RoleBinding {APP_NS}/{SCANNER_CLUSTER_ROLE}"),
    ]);
    settles_to(
        Duration::from_secs(30),
        "objects created since before the install",
        &expected,
        || async { created(&inventory(&client, None).await) },
    )
    .await;
    let now = inventory(&client, None).await;
    let gone: Vec<&String> = before.difference(&now).collect();
    assert!(
        gone.is_empty(),
        "objects deleted that predate the release: {gone:?}"
    );

    // The leftovers are what the comments above say they are.
    let crd = Api::<CustomResourceDefinition>::all(client.clone())
        .get(CRD)
        .await
        .unwrap();
    assert!(
        crd.labels().get("app.kubernetes.io/managed-by").is_none(),
        "crds/ are installed unlabelled"
    );
    let lease = Api::<Lease>::namespaced(client.clone(), RELEASE_NS)
        .get(LEASE)
        .await
        .unwrap();
    assert!(
        lease.owner_references().is_empty(),
        "nothing owns the Lease"
    );
    assert!(
        lease.labels().is_empty(),
        "the chart did not create the Lease"
    );
    let holder = lease.spec.and_then(|s| s.holder_identity);
    eprintln!("[e2e_helm] Lease {LEASE} left behind, holder {holder:?}");
    assert!(
        holder.is_none() || holder.as_deref() == Some(pod_name.as_str()),
        "last held by the uninstalled operator pod: {holder:?}"
    );
    let scan = Api::<NucleiScan>::namespaced(client.clone(), APP_NS)
        .get(SCAN)
        .await
        .unwrap();
    assert_only_the_canary_finding(scan.status.as_ref().unwrap());
    let owner = &scan.owner_references()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Ingress", "canary")
    );
    let job = Api::<Job>::namespaced(client.clone(), APP_NS)
        .get(&job_ref.name)
        .await
        .unwrap();
    assert_eq!(
        job.owner_references()[0].uid,
        scan.meta().uid.clone().unwrap()
    );
    let scanner_sa = Api::<ServiceAccount>::namespaced(client.clone(), APP_NS)
        .get("nuclei-scanner")
        .await
        .unwrap();
    assert_eq!(scanner_sa.labels()[MANAGED_BY_LABEL], MANAGED_BY);
    assert!(scanner_sa.owner_references().is_empty());
    env.step("leftovers checked");

    // Nothing left behind gets in the way of the next install: the new pod
    // takes the old pod's Lease once it expires, and the kept, completed scan
    // is picked up (its rescan scheduled), not scanned again.
    env.install().await;
    let new_pod = env.operator_pod().await.name_any();
    assert_ne!(new_pod, pod_name);
    eventually(
        Duration::from_secs(60),
        "the new operator pod holding the Lease",
        || async {
            let l = Api::<Lease>::namespaced(client.clone(), RELEASE_NS)
                .get_opt(LEASE)
                .await
                .ok()??;
            (l.spec?.holder_identity? == new_pod).then_some(())
        },
    )
    .await;
    env.step("reinstalled operator leads");
    let item: serde_json::Value = eventually(
        Duration::from_secs(30),
        "the kept scan in the new operator's queue",
        || async { serde_json::from_str(&env.get(&format!("/queue/{APP_NS}/{SCAN}")).await?).ok() },
    )
    .await;
    assert_eq!(item["state"], "scheduled", "{item}");
    let jobs = Api::<Job>::namespaced(client.clone(), APP_NS)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert_eq!(jobs.items.len(), 1, "no second scan");
    let scan = Api::<NucleiScan>::namespaced(client.clone(), APP_NS)
        .get(SCAN)
        .await
        .unwrap();
    assert_eq!(
        scan.status.as_ref().unwrap().phase,
        Some(ScanPhase::Completed)
    );
    env.step("reinstall picked up the kept scan");
}
