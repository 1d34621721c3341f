//! End-to-end, issue #3: a reconcile with nothing to change writes nothing to
//! the API. In its own test binary (its own API server), so the request
//! counters see only this test.

mod support;

use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nuclei_operator::api::NucleiScan;
use serde_json::json;
use support::reports::sample;
use support::{Operator, cluster, eventually, ingress, namespace};

/// Writes to NucleiScan objects (not their status) counted by the API server.
async fn scan_writes(client: &kube::Client) -> u64 {
    let req = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(req).await.unwrap();
    text.lines()
        .filter(|l| l.starts_with("apiserver_request_total{"))
        .filter(|l| l.contains("resource=\"nucleiscans\"") && l.contains("subresource=\"\""))
        .filter(|l| {
            ["APPLY", "PATCH", "POST", "PUT", "DELETE"]
                .iter()
                .any(|v| l.contains(&format!("verb=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// [`scan_writes`] once it has not moved for three reads a second apart.
async fn quiet_writes(client: &kube::Client) -> u64 {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let (mut last, mut steady) = (scan_writes(client).await, 0);
    while steady < 3 {
        assert!(
            std::time::Instant::now() < deadline,
            "NucleiScan writes still moving after 30 s (at {last})"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = scan_writes(client).await;
        steady = if now == last { steady + 1 } else { 0 };
        last = now;
    }
    last
}

/// `nuclei_reconciles_total` of the Ingress controller.
async fn ingress_reconciles(op: &Operator) -> f64 {
    let metrics = op.get("/metrics").await.expect("/metrics answers");
    sample(&metrics, "nuclei_reconciles_total{controller=\"ingress\"}").expect("the counter")
}

#[tokio::test]
async fn a_reconcile_without_changes_makes_no_write_and_a_change_makes_exactly_one() {
    let cluster = cluster(&[]).await;
    let operator = Operator::start(
        &cluster,
        &[("MAX_CONCURRENT_SCANS", "1"), ("JOB_RATE_LIMIT", "1")],
    )
    .await;
    let client = cluster.client().await.unwrap();
    let ns = namespace(&client, "noop").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    for i in 0..3 {
        ingresses
            .create(
                &PostParams::default(),
                &ingress(
                    &format!("app{i}"),
                    &format!("app{i}.example.com"),
                    json!({}),
                ),
            )
            .await
            .unwrap();
    }
    for i in 0..3 {
        eventually(Duration::from_secs(20), "scan", || async {
            scans.get_opt(&format!("app{i}-ingress")).await.ok()?
        })
        .await;
    }
    let before = quiet_writes(&client).await;
    assert!(
        before >= 3,
        "the counter saw {before} writes for 3 created scans"
    );
    // Unrelated metadata changes trigger reconciles that must change nothing:
    // each round waits until the operator has reconciled all three again.
    let mut reconciled = ingress_reconciles(&operator).await;
    for round in 0..3 {
        for i in 0..3 {
            let touch =
                Patch::Merge(json!({"metadata": {"labels": {"touched": round.to_string()}}}));
            ingresses
                .patch(&format!("app{i}"), &PatchParams::default(), &touch)
                .await
                .unwrap();
        }
        let want = reconciled + 3.0;
        reconciled = eventually(
            Duration::from_secs(20),
            "the touched Ingresses reconciled",
            || async {
                let now = ingress_reconciles(&operator).await;
                (now >= want).then_some(now)
            },
        )
        .await;
    }
    assert_eq!(
        quiet_writes(&client).await,
        before,
        "a no-op reconcile wrote to the API"
    );
    // A real change is one write.
    let tags = Patch::Merge(
        json!({"metadata": {"annotations": {"nuclei.homelab.mortenolsen.pro/tags": "cve"}}}),
    );
    ingresses
        .patch("app0", &PatchParams::default(), &tags)
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "tags applied", || async {
        scans
            .get_opt("app0-ingress")
            .await
            .ok()?
            .filter(|s| s.spec.tags == ["cve"])
    })
    .await;
    assert_eq!(quiet_writes(&client).await, before + 1);
}
