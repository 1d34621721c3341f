//! End-to-end, issue #11: what a namespace user cannot do through the
//! operator, against devcluster's real API server with the chart's RBAC (the
//! operator runs as the chart's ServiceAccount, in a pod). Each test is
//! named after the attack it stops.

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Event;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams, PostParams};
use nuclei_operator::api::{NucleiScan, ScanPhase};
use serde_json::{Value, json};
use support::chart::{Chart, restricted_namespace};
use support::{canary_annotations, canary_target, completed, eventually, ingress, target_ip};
use tokio::sync::OnceCell;

const P: &str = "nuclei.homelab.mortenolsen.pro/";
const HOSTS: [&str; 3] = ["image.test", "timeout.test", "spec-image.test"];

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
