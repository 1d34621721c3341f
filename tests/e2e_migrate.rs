//! End-to-end, issue #16 part 3: upgrading from the Go operator
//! (`homelab-nuclei-operator`). The cluster holds what it left, `<ingress>-scan`
//! NucleiScans owned by their Ingresses with its status shape, when this
//! operator starts: each is adopted by the new `<ingress>-ingress` scan and
//! deleted, so no source is scanned twice.

mod support;

use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nuclei_operator::api::NucleiScan;
use serde_json::{Value, json};
use support::{Operator, canary_target, cluster, completed, event, eventually, ingress, namespace};

const P: &str = "nuclei.homelab.mortenolsen.pro/";

/// A NucleiScan as the Go operator created it for the Ingress `source`:
/// named `<source>-scan`, controlled by the Ingress, no labels; its spec
/// with `extra` set by hand on top.
fn go_scan(source: &Ingress, extra: Value) -> NucleiScan {
    let name = source.name_any();
    let uid = source.uid().unwrap();
    let mut spec = json!({
        "sourceRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "name": name, "namespace": source.namespace().unwrap(), "uid": uid},
        "targets": ["http://canary.test/"],
    });
    spec.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
        "kind": "NucleiScan",
        "metadata": {
            "name": format!("{name}-scan"),
            "ownerReferences": [{"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                "name": name, "uid": uid, "controller": true, "blockOwnerDeletion": true}],
        },
        "spec": spec,
    }))
    .unwrap()
}

#[tokio::test]
async fn the_go_operators_scans_are_adopted_with_their_last_run_and_hand_set_fields_then_deleted() {
    let ip = support::target_ip(1);
    canary_target(ip).await;
    let cluster = cluster(&[("canary.test", ip)]).await;
    let env = [
        ("MAX_CONCURRENT_SCANS", "2"),
        ("JOB_RATE_LIMIT", "0"),
        ("DEFAULT_TEMPLATES", ""),
    ];
    let mut operator = Operator::start(&cluster, &env).await;
    let client = cluster.client().await.unwrap();
    let ns = namespace(&client, "migrate").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let pp = PostParams::default();
    // other-tag.yaml alone: a template without a named matcher (the Go
    // operator did not store matcher names).
    let annotations = json!({format!("{P}tags"): "other", format!("{P}severity"): "high"});

    // What nuclei reports for the target, as the Go operator stored it too.
    ingresses
        .create(&pp, &ingress("probe", "canary.test", annotations.clone()))
        .await
        .unwrap();
    let probe = completed(&scans, "probe-ingress", Duration::from_secs(90)).await;
    let probe = probe.status.unwrap();
    let ids: Vec<&str> = probe
        .findings
        .iter()
        .map(|f| f.template_id.as_str())
        .collect();
    assert_eq!(ids, ["nuclei-operator-other-tag"]);
    let found = &probe.findings[0];

    // The Go operator's turn: it made a scan per Ingress and ran them.
    operator.kill().await;
    let shop = ingresses
        .create(&pp, &ingress("shop", "canary.test", annotations.clone()))
        .await
        .unwrap();
    let hand_set = json!({
        "severity": ["high"],
        "schedule": "0 3 * * *",
        "scannerConfig": {"timeout": "20m0s"},
    });
    scans.create(&pp, &go_scan(&shop, hand_set)).await.unwrap();
    let go_finding = |template: &str, matched_at: &str| {
        json!({"templateId": template, "templateName": "a test template", "severity": "high",
            "type": "http", "host": found.host, "matchedAt": matched_at,
            "timestamp": "2025-06-01T10:01:00Z"})
    };
    let go_status = json!({"status": {
        "phase": "Completed",
        "lastScanTime": "2025-06-01T10:00:00Z",
        "completionTime": "2025-06-01T10:05:00Z",
        "observedGeneration": 1,
        "jobRef": {"name": "shop-scan-x7k2p", "uid": "4f2a", "podName": "shop-scan-x7k2p-abcde"},
        "summary": {"totalFindings": 2, "findingsBySeverity": {"high": 2},
            "targetsScanned": 1, "durationSeconds": 300},
        "findings": [
            go_finding("nuclei-operator-other-tag", &found.matched_at),
            go_finding("go-only-exposure", "http://canary.test/old"),
        ],
    }});
    scans
        .patch_status(
            "shop-scan",
            &PatchParams::default(),
            &Patch::Merge(&go_status),
        )
        .await
        .unwrap();
    // A source that is no longer scanned, and a scan someone wrote by hand.
    let off = ingresses
        .create(
            &pp,
            &ingress(
                "off",
                "canary.test",
                json!({format!("{P}enabled"): "false"}),
            ),
        )
        .await
        .unwrap();
    scans.create(&pp, &go_scan(&off, json!({}))).await.unwrap();
    let mut manual = go_scan(&shop, json!({"suspend": true}));
    manual.metadata.name = Some("manual-scan".into());
    manual.metadata.owner_references = None;
    scans.create(&pp, &manual).await.unwrap();

    // This operator starts.
    let _operator = Operator::start(&cluster, &env).await;
    let note = event(&client, &ns, "shop", "Normal", "Migrated", "shop-scan").await;
    assert_eq!(
        note,
        "Adopted the Go operator's scan shop-scan: carried its last run and its spec fields \
         scannerConfig, schedule over to shop-ingress, and deleted shop-scan."
    );
    eventually(Duration::from_secs(30), "the old scans deleted", || async {
        let names: Vec<String> = scans
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .map(|s| s.name_any())
            .collect();
        (names == ["manual-scan", "probe-ingress", "shop-ingress"]).then_some(())
    })
    .await;

    // The new scan's first run: compared with the Go operator's last.
    let scan = completed(&scans, "shop-ingress", Duration::from_secs(90)).await;
    assert_eq!(scan.spec.schedule.as_deref(), Some("0 3 * * *"));
    assert_eq!(
        scan.spec
            .scanner_config
            .as_ref()
            .unwrap()
            .timeout
            .as_deref(),
        Some("20m0s")
    );
    let owner = |field: &str| {
        scan.metadata
            .managed_fields
            .iter()
            .flatten()
            .find(|m| {
                m.operation.as_deref() == Some("Apply")
                    && m.fields_v1
                        .as_ref()
                        .is_some_and(|f| f.0["f:spec"].get(field).is_some())
            })
            .and_then(|m| m.manager.clone())
    };
    // Later applies of the Ingress's annotations keep them, as they keep
    // any field a user set.
    assert_eq!(
        owner("f:schedule").as_deref(),
        Some("nuclei-operator-migration")
    );
    assert_eq!(owner("f:targets").as_deref(), Some("nuclei-operator"));
    let st = scan.status.unwrap();
    let summary = st.summary.as_ref().unwrap();
    assert_eq!(
        (
            summary.new_findings,
            summary.unchanged_findings,
            summary.resolved_findings
        ),
        (Some(0), Some(1), Some(1)),
        "{summary:?}"
    );
    assert_eq!(st.findings.len(), 1);
    let first_seen = st.findings[0].first_seen.as_ref().unwrap().0;
    assert_eq!(first_seen.to_string(), "2025-06-01T10:01:00Z");
    let next = st.next_scheduled_time.as_ref().unwrap().0.to_string();
    assert!(next.ends_with("T03:00:00Z"), "{next}");
    assert!(
        !scans
            .get("manual-scan")
            .await
            .unwrap()
            .spec
            .targets
            .is_empty()
    );
}
