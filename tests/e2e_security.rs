//! End-to-end, issue #11: what a namespace user cannot do through the
//! operator, and what a scanner pod cannot do with its token, against
//! devcluster's real API server with the chart's RBAC and admission policy
//! (the operator runs as the chart's ServiceAccount, in a pod). Each test is
//! named after the attack it stops.
//!
//! The data endpoints (/queue, /metrics) are read as any pod would: over the
//! operator pod's data port (pods share the host network here, so
//! 127.0.0.1), with or without a ServiceAccount token that the operator has
//! the real API server review.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod, Secret};
use k8s_openapi::api::networking::v1::{Ingress, NetworkPolicy};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nuclei_operator::api::{NucleiScan, ScanPhase, SourceKind};
use nuclei_operator::sources::targets::{MAX_SCAN_NAME_LEN, scan_name};
use serde_json::{Value, json};
use support::chart::{
    Chart, DATA_READER, RELEASE, RELEASE_NS, account_token, may_get, restricted_namespace,
};
use support::{
    canary_annotations, canary_target, completed, eventually, ingress, namespace, repo,
    service_account_token, target_ip, token_client,
};
use tokio::sync::OnceCell;

const P: &str = "nuclei.homelab.mortenolsen.pro/";
const HOSTS: [&str; 4] = [
    "image.test",
    "timeout.test",
    "spec-image.test",
    "identity.test",
];
/// The chart's scanner ServiceAccount (`scanner.serviceAccountName`).
const SCANNER_SA: &str = "nuclei-scanner";
/// The chart's admission policy that keeps a scanner pod to its own scan.
const SCANNER_POLICY: &str = "nuclei-operator-scanner-own-scan";

static ENV: OnceCell<Chart> = OnceCell::const_new();

/// The chart with its defaults (default templates aside: the test images
/// hold only the test templates), and a client of this test's runtime.
async fn env() -> (&'static Chart, kube::Client) {
    let chart = ENV
        .get_or_init(|| async {
            let ip = target_ip(1);
            canary_target(ip).await;
            let hosts = HOSTS.iter().map(|h| format!("{h}={ip}")).collect();
            let chart = Chart::start("e2e_security", hosts).await;
            chart
                .install(&["--set-json", r#"templates.defaults=["canary.yaml"]"#])
                .await;
            chart
        })
        .await;
    (chart, chart.cluster.client().await.unwrap())
}

async fn events(client: &kube::Client, ns: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

fn condition_message(scan: &NucleiScan, type_: &str) -> Option<String> {
    scan.status
        .as_ref()?
        .conditions
        .iter()
        .find(|c| c.type_ == type_ && c.status == "False")
        .map(|c| c.message.clone())
}

#[tokio::test]
async fn an_annotation_asking_for_an_arbitrary_scanner_image_gets_no_pod_with_that_image() {
    let (env, client) = env().await;
    let ns = "image";
    restricted_namespace(&client, ns).await;
    let mut ann = canary_annotations();
    ann[format!("{P}scanner-image")] = json!("evil.example.com/miner:latest");
    Api::<Ingress>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &ingress("web", "image.test", ann))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), ns);
    let scan = completed(&scans, "web-ingress", Duration::from_secs(120)).await;
    // Reported on the scan and, as a Warning Event, on the Ingress, naming
    // the setting that would allow it…
    let message = condition_message(&scan, "AnnotationsValid").unwrap_or_default();
    assert!(
        message.contains("ALLOWED_SCANNER_IMAGES") && message.contains("evil.example.com"),
        "{message}"
    );
    let warned = events(&client, ns).await.into_iter().any(|e| {
        e.reason.as_deref() == Some("InvalidAnnotation")
            && e.involved_object.kind.as_deref() == Some("Ingress")
            && e.message
                .unwrap_or_default()
                .contains("ALLOWED_SCANNER_IMAGES")
    });
    assert!(warned, "a Warning Event on the Ingress");
    // …and the scan ran with the operator's own image only.
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let images: BTreeSet<String> = jobs
        .items
        .iter()
        .flat_map(|j| {
            j.spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .containers
                .iter()
        })
        .filter_map(|c| c.image.clone())
        .collect();
    assert_eq!(images, BTreeSet::from(["nuclei-operator:e2e".to_owned()]));
    env.step("scanner-image annotation refused");
}

#[tokio::test]
async fn a_nucleiscan_asking_for_an_arbitrary_scanner_image_fails_without_a_job() {
    let (_env, client) = env().await;
    let ns = "spec-image";
    restricted_namespace(&client, ns).await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), ns);
    let scan: NucleiScan = serde_json::from_value(json!({
        "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
        "kind": "NucleiScan",
        "metadata": {"name": "direct"},
        "spec": {
            "sourceRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                          "name": "none", "namespace": ns, "uid": "none"},
            "targets": ["http://spec-image.test/"],
            "scannerConfig": {"image": "evil.example.com/miner:latest"}
        }
    }))
    .unwrap();
    scans.create(&PostParams::default(), &scan).await.unwrap();
    let failed = eventually(Duration::from_secs(60), "scan Failed", || async {
        let s = scans.get_opt("direct").await.ok()??;
        (s.status.as_ref()?.phase? == ScanPhase::Failed).then_some(s)
    })
    .await;
    let error = failed.status.unwrap().last_error.unwrap_or_default();
    assert!(error.contains("ALLOWED_SCANNER_IMAGES"), "{error}");
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(jobs.items.is_empty());
}

#[tokio::test]
async fn an_overflowing_timeout_annotation_is_an_error_not_an_operator_crash() {
    let (env, client) = env().await;
    let ns = "timeout";
    restricted_namespace(&client, ns).await;
    let mut ann = canary_annotations();
    ann[format!("{P}timeout")] = json!("94522879700260684295381835.999999999999999999h");
    Api::<Ingress>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &ingress("web", "timeout.test", ann))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), ns);
    let scan = completed(&scans, "web-ingress", Duration::from_secs(120)).await;
    let message = condition_message(&scan, "AnnotationsValid").unwrap_or_default();
    assert!(message.contains("too large"), "{message}");
    let restarts: Value = serde_json::to_value(env.operator_pod().await.status).unwrap();
    assert_eq!(
        restarts["containerStatuses"][0]["restartCount"], 0,
        "the operator did not restart"
    );
}

/// A pod in `ns` named `name` that runs as the scanner ServiceAccount and
/// never starts (devcluster knows no such image): what anyone who may create
/// pods there could make, to hold a token bound to a pod of that name.
async fn forged_scanner_pod(client: &kube::Client, ns: &str, name: &str) -> Pod {
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {
            "serviceAccountName": SCANNER_SA,
            "containers": [{"name": "c", "image": "forged.invalid/scanner:1"}],
        }
    }))
    .unwrap();
    Api::<Pod>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap()
}

/// A client acting as the scanner ServiceAccount of `ns` with a token bound
/// to `pod` (as a scanner pod's is), or bound to no pod.
async fn scanner_client(env: &Chart, ns: &str, pod: Option<&Pod>) -> kube::Client {
    let admin = env.cluster.client().await.unwrap();
    let token = service_account_token(&admin, ns, SCANNER_SA, pod).await;
    token_client(&env.cluster, &token, &env.cluster.dir().join("pki/ca.crt")).await
}

async fn patch_status(
    api: &Api<NucleiScan>,
    name: &str,
    status: Value,
) -> kube::Result<NucleiScan> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
}

/// Asserts that the scanner admission policy refused `result`, saying each
/// of `says`.
#[track_caller]
fn assert_refused(result: kube::Result<NucleiScan>, says: &[&str]) {
    match result {
        Err(kube::Error::Api(e)) => {
            assert_eq!(e.code, 403, "{e:?}");
            for part in std::iter::once(SCANNER_POLICY).chain(says.iter().copied()) {
                assert!(e.message.contains(part), "{part:?} not in {:?}", e.message);
            }
        }
        other => panic!("expected the scanner admission policy to refuse, got {other:?}"),
    }
}

#[tokio::test]
async fn a_scanner_pod_cannot_rewrite_another_scans_findings() {
    let (env, client) = env().await;
    let ns = "identity";
    namespace(&client, ns).await;
    let ingresses = Api::<Ingress>::namespaced(client.clone(), ns);
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), ns);
    let own = "web-ingress";
    ingresses
        .create(
            &PostParams::default(),
            &ingress("web", "identity.test", canary_annotations()),
        )
        .await
        .unwrap();
    let a = completed(&scans, own, Duration::from_secs(120)).await;
    let a_job = a.status.as_ref().unwrap().job_ref.clone().unwrap();

    // The scanner ServiceAccount exists now. The policy is active once a
    // write with its token bound to no pod is refused (a dry run, so nothing
    // is written while it is not).
    let unbound = Api::<NucleiScan>::namespaced(scanner_client(env, ns, None).await, ns);
    let dry_run = PatchParams {
        dry_run: true,
        ..Default::default()
    };
    let refused = eventually(Duration::from_secs(30), "the policy refusing", || async {
        let erase = Patch::Merge(json!({"status": {"findings": []}}));
        match unbound.patch_status(own, &dry_run, &erase).await {
            Err(e @ kube::Error::Api(_)) => Some(e),
            Ok(_) => None,
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    assert_refused(Err(refused), &["bound to no pod"]);
    env.step("scanner admission policy active");

    // A scan run wholly under the policy: its scanner pod's own writes (its
    // pod name when it starts, its findings at the end) pass. Its name is
    // as long as scan names get, so its Job's has the full 63 characters and
    // its pod's generated name is cut to the Job name's first 58 and 5
    // random characters.
    let long = "storefront-of-another-team-with-a-longer-name";
    let other = &scan_name(SourceKind::Ingress, long);
    assert_eq!(other.len(), MAX_SCAN_NAME_LEN);
    ingresses
        .create(
            &PostParams::default(),
            &ingress(long, "identity.test", canary_annotations()),
        )
        .await
        .unwrap();
    let b = completed(&scans, other, Duration::from_secs(120)).await;
    let b_status = b.status.as_ref().unwrap();
    assert_eq!(b_status.findings.len(), 1);
    let b_job = b_status.job_ref.clone().unwrap();
    assert_eq!(b_job.name.len(), 63, "{}", b_job.name);
    let b_pod = b_job
        .pod_name
        .clone()
        .expect("B's scanner recorded its pod");
    assert_eq!(b_pod.len(), 63, "{b_pod}");
    assert!(b_pod.starts_with(&b_job.name[..58]), "{b_pod}");
    let a_pod = a_job
        .pod_name
        .clone()
        .expect("A's scanner recorded its pod");
    assert!(a_pod.starts_with(&format!("{}-", a_job.name)), "{a_pod}");
    env.step("a scan ran under the policy");

    // Tokens bound to pods named as each Job's pods are, like the ones the
    // scanner pods hold.
    let pod_a = forged_scanner_pod(&client, ns, &format!("{}-zzzzz", a_job.name)).await;
    let pod_b = forged_scanner_pod(&client, ns, &format!("{}zzzzz", &b_job.name[..58])).await;
    let as_a_client = scanner_client(env, ns, Some(&pod_a)).await;
    let as_a = Api::<NucleiScan>::namespaced(as_a_client.clone(), ns);
    let as_b = Api::<NucleiScan>::namespaced(scanner_client(env, ns, Some(&pod_b)).await, ns);
    let pod_a_name = pod_a.metadata.name.clone().unwrap();
    let pod_b_name = pod_b.metadata.name.clone().unwrap();

    // A's scanner cannot erase or forge B's findings, nor B's scanner A's…
    let erase = json!({"phase": "Completed", "findings": []});
    assert_refused(
        patch_status(&as_a, other, erase.clone()).await,
        &[
            &format!("scanner pod {pod_a_name} "),
            &b_job.name,
            "own Job",
        ],
    );
    assert_refused(
        patch_status(&as_b, own, erase.clone()).await,
        &[&format!("scanner pod {pod_b_name} "), &a_job.name],
    );
    let b_now = scans.get(other).await.unwrap();
    assert_eq!(b_now.status.unwrap().findings.len(), 1, "B's finding kept");
    // …nor can a pod whose name only starts like the Job's pods.
    let longer = forged_scanner_pod(&client, ns, &format!("{}-zzzzzz", a_job.name)).await;
    let as_longer = Api::<NucleiScan>::namespaced(scanner_client(env, ns, Some(&longer)).await, ns);
    assert_refused(
        patch_status(&as_longer, own, erase.clone()).await,
        &[&a_job.name],
    );

    // Each writes its own scan: what the scanner writes, phase and findings.
    let written = patch_status(&as_a, own, erase.clone())
        .await
        .expect("A's pod writes A");
    assert!(written.status.unwrap().findings.is_empty());
    patch_status(&as_b, other, json!({"jobRef": {"podName": pod_b_name}}))
        .await
        .expect("B's pod (its name cut) writes B");

    // Neither moves its scan to another run: that is the operator's to say.
    for change in [
        json!({"jobRef": {"name": b_job.name}}),
        json!({"jobRef": {"uid": "forged"}}),
        json!({"runToken": "forged"}),
    ] {
        assert_refused(
            patch_status(&as_a, own, change).await,
            &["may not change status.jobRef.name"],
        );
    }

    // Reads are not admission-controlled: A's pod reads its scan, as the
    // scanner does first; RBAC still keeps Secrets out of its reach.
    as_a.get(own).await.expect("A's pod reads A");
    let secrets = Api::<Secret>::namespaced(as_a_client, ns)
        .list(&ListParams::default())
        .await;
    assert!(
        matches!(&secrets, Err(kube::Error::Api(e)) if e.code == 403),
        "a scanner's token may not list Secrets: {secrets:?}"
    );
}

/// The data paths: the queue, one scan's entry, the metrics.
const DATA_PATHS: [&str; 3] = ["/queue", "/queue/image/web-ingress", "/metrics"];

/// A token of a new ServiceAccount `name` in a new namespace `name`.
async fn new_account_token(client: &kube::Client, name: &str) -> String {
    namespace(client, name).await;
    account_token(client, name, name).await
}

/// Binds `namespace/name`'s ServiceAccount to the chart's data-reader
/// ClusterRole, as the README says to, and waits until RBAC allows it.
async fn bind_data_reader(client: &kube::Client, name: &str) {
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole",
                    "name": DATA_READER},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": name}],
    }))
    .unwrap();
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let user = format!("system:serviceaccount:{name}:{name}");
    eventually(Duration::from_secs(30), "the binding in force", || {
        may_get(client, &user, "/queue")
    })
    .await;
}

#[tokio::test]
async fn an_anonymous_or_forged_token_request_for_the_queue_or_metrics_gets_401() {
    let (env, _client) = env().await;
    // A made-up token, and one shaped like a ServiceAccount JWT.
    let forged = [
        None,
        Some("forged"),
        Some("eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.eyJzdWIiOiJzeXN0ZW06YWRtaW4ifQ.c2ln"),
    ];
    for path in DATA_PATHS {
        for token in forged {
            let (status, body) = env
                .request(env.port, path, token)
                .await
                .expect("the data port answers");
            assert_eq!(status, 401, "{path} {token:?}: {body}");
            assert!(
                !body.contains("pendingTotal") && !body.contains("nuclei_"),
                "{body}"
            );
        }
    }
}

#[tokio::test]
async fn a_service_account_token_without_the_data_reader_binding_gets_403() {
    let (env, client) = env().await;
    let token = new_account_token(&client, "snoop").await;
    for path in DATA_PATHS {
        let (status, body) = env.request(env.port, path, Some(&token)).await.unwrap();
        assert_eq!(status, 403, "{path}: {body}");
        assert!(
            body.contains("system:serviceaccount:snoop:snoop") && body.contains("data-reader"),
            "{body}"
        );
    }
}

#[tokio::test]
async fn a_token_bound_to_the_data_reader_role_reads_the_queue_and_the_metrics() {
    let (env, client) = env().await;
    let token = new_account_token(&client, "reader").await;
    bind_data_reader(&client, "reader").await;
    let (status, body) = env.request(env.port, "/queue", Some(&token)).await.unwrap();
    assert_eq!(status, 200, "{body}");
    let queue: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(queue["leader"], true, "{queue}");
    assert!(queue["pendingTotal"].is_u64(), "{queue}");
    let (status, body) = env
        .request(env.port, "/queue/reader/absent", Some(&token))
        .await
        .unwrap();
    assert_eq!(
        (status, body.contains(r#""state":"absent""#)),
        (404, true),
        "{body}"
    );
    let (status, body) = env
        .request(env.port, "/metrics", Some(&token))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("nuclei_queue_depth"), "{body}");
}

#[tokio::test]
async fn the_probes_answer_without_a_token_on_the_health_port_which_serves_no_data() {
    let (env, client) = env().await;
    for path in ["/healthz", "/readyz"] {
        let (status, body) = env.request(env.health_port, path, None).await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ok"), "{path}");
    }
    let token = new_account_token(&client, "prober").await;
    bind_data_reader(&client, "prober").await;
    // The health port has no data, whatever the token…
    for path in DATA_PATHS {
        for token in [None, Some(token.as_str())] {
            let (status, _) = env.request(env.health_port, path, token).await.unwrap();
            assert_eq!(status, 404, "health port {path}");
        }
    }
    // …and the data port no probes: 401 without a token, 404 with one.
    for path in ["/healthz", "/readyz"] {
        let anonymous = env.request(env.port, path, None).await.unwrap().0;
        let allowed = env.request(env.port, path, Some(&token)).await.unwrap().0;
        assert_eq!((anonymous, allowed), (401, 404), "data port {path}");
    }
}

#[tokio::test]
async fn the_charts_network_policy_is_accepted_by_the_api_server_and_fits_the_operator_pod() {
    let (env, client) = env().await;
    let chart = repo().join("deploy/helm/nuclei-operator");
    for data_from in [
        None,
        Some(
            r#"networkPolicy.dataFrom=[{"namespaceSelector":{"matchLabels":{"team":"obs"}},"podSelector":{"matchLabels":{"app":"prometheus"}}},{"ipBlock":{"cidr":"10.0.0.0/8"}}]"#,
        ),
    ] {
        let mut args = vec![
            "template",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            RELEASE_NS,
            "--set",
            "networkPolicy.enabled=true",
            "--show-only",
            "templates/networkpolicy.yaml",
        ];
        if let Some(set) = data_from {
            args.extend(["--set-json", set]);
        }
        let policy: NetworkPolicy = serde_yaml::from_str(&env.helm(&args).await).unwrap();
        let created = Api::<NetworkPolicy>::namespaced(client.clone(), RELEASE_NS)
            .create(
                &PostParams {
                    dry_run: true,
                    ..Default::default()
                },
                &policy,
            )
            .await
            .unwrap_or_else(|e| panic!("the API server refuses the NetworkPolicy: {e}"));
        let spec = created.spec.unwrap();
        // It selects the operator pod and names ports the pod has.
        let pod = env.operator_pod().await;
        let labels = pod.metadata.labels.unwrap_or_default();
        let selector = spec.pod_selector.unwrap_or_default().match_labels;
        let selector = selector.unwrap_or_default();
        assert!(!selector.is_empty(), "it selects the operator pod only");
        for (k, v) in selector {
            assert_eq!(labels.get(&k), Some(&v), "selector {k}");
        }
        let pod_ports: BTreeSet<String> = pod.spec.unwrap().containers[0]
            .ports
            .iter()
            .flatten()
            .filter_map(|p| p.name.clone())
            .collect();
        let rules = spec.ingress.unwrap();
        assert_eq!(rules.len(), 2, "health from anywhere, data from dataFrom");
        for rule in &rules {
            for port in rule.ports.iter().flatten() {
                let name = serde_json::to_value(port.port.as_ref().unwrap()).unwrap();
                assert!(pod_ports.contains(name.as_str().unwrap()), "{name}");
            }
        }
        assert!(rules[0].from.is_none(), "the probes' port is open to all");
        assert!(!rules[1].from.as_ref().unwrap().is_empty());
        assert_eq!(spec.policy_types, Some(vec!["Ingress".to_owned()]));
    }
}
