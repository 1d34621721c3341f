//! End-to-end, issue #17: `helm upgrade` from the previous chart version (kept
//! packaged in `tests/upgrade/`, as users have it installed) to this one, on a
//! devcluster with the chart's defaults. The scans, their findings and their
//! place in the queue survive, the pre-upgrade hook brings the CRD of the new
//! version (Helm itself never upgrades `crds/`) and leaves nothing behind, and
//! the new operator scans again.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use nuclei_operator::api::NucleiScan;
use serde_json::{Value, json};
use support::chart::{Chart, FULLNAME, RELEASE_NS};
use support::{
    canary_annotations, canary_target, completed, eventually, ingress, namespace, repo, target_ip,
};

const P: &str = "nuclei.homelab.mortenolsen.pro/";
const CRD: &str = "nucleiscans.nuclei.homelab.mortenolsen.pro";
/// The chart users have installed: the last version before this one.
const PREVIOUS: &str = "tests/upgrade/nuclei-operator-0.4.0.tgz";
/// Ingresses and their hosts: one on a cron schedule, one rescanned by
/// RESCAN_AGE; both wait in the queue's `scheduled` list after their run.
const INGRESSES: [(&str, &str); 2] = [("cron", "cron.test"), ("aged", "aged.test")];

/// The chart's defaults, but default templates this repository has (the
/// chart's default directories are in the image, not in testdata).
const VALUES: [&str; 2] = [
    "--set-json",
    r#"templates.defaults=["canary.yaml","low-severity.yaml","other-tag.yaml"]"#,
];

/// The scan found the canary, and only it.
fn assert_canary(scan: &NucleiScan, host: &str) {
    let st = scan.status.as_ref().unwrap();
    let found: Vec<(&str, &str)> = st
        .findings
        .iter()
        .map(|f| (f.template_id.as_str(), f.matched_at.as_str()))
        .collect();
    assert_eq!(
        found,
        [(
            "nuclei-operator-canary",
            format!("http://{host}/canary").as_str()
        )]
    );
}

/// Scan name → (uid, findings, last success, next run) as the API has them.
async fn scans_state(api: &Api<NucleiScan>) -> BTreeMap<String, (String, Value, Value, Value)> {
    let mut state = BTreeMap::new();
    for (name, _) in INGRESSES {
        let scan = api.get(&format!("{name}-ingress")).await.unwrap();
        let st = scan.status.clone().unwrap();
        state.insert(
            scan.name_any(),
            (
                scan.uid().unwrap(),
                serde_json::to_value(&st.findings).unwrap(),
                serde_json::to_value(&st.last_success_time).unwrap(),
                serde_json::to_value(&st.next_scheduled_time).unwrap(),
            ),
        );
    }
    state
}

/// The `scheduled` entries of /queue: scan key → reason.
fn scheduled(queue: &Value) -> BTreeMap<String, String> {
    queue["scheduled"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["scan"].as_str().unwrap().to_owned(),
                e["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn version_label(crd: &CustomResourceDefinition) -> Option<String> {
    crd.labels().get("app.kubernetes.io/version").cloned()
}

#[tokio::test]
async fn helm_upgrade_from_the_previous_chart_keeps_every_scan_and_upgrades_the_crd() {
    let ip = target_ip(1);
    canary_target(ip).await;
    let hosts = INGRESSES.iter().map(|(_, h)| format!("{h}={ip}")).collect();
    let chart = Chart::start("e2e_chart_upgrade", hosts).await;
    let client = chart.client.clone();
    let previous = repo().join(PREVIOUS);
    chart.release("install", &previous, &VALUES).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let old_crd = crds.get(CRD).await.unwrap();
    // What the upgrade must change: the previous chart's CRD names no version.
    assert_eq!(version_label(&old_crd), None);
    // The previous chart had no finding exceptions.
    assert!(
        crds.get_opt("nucleifindingexceptions.nuclei.homelab.mortenolsen.pro")
            .await
            .unwrap()
            .is_none()
    );

    let ns = namespace(&client, "web").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    for (name, host) in INGRESSES {
        let mut ann = canary_annotations();
        if name == "cron" {
            // Far from any time this test runs, so no run of its own.
            ann[format!("{P}schedule")] = json!("0 0 1 1 *");
        }
        ingresses
            .create(&PostParams::default(), &ingress(name, host, ann))
            .await
            .unwrap();
    }
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    for (name, host) in INGRESSES {
        let scan = completed(&scans, &format!("{name}-ingress"), Duration::from_secs(180)).await;
        assert_canary(&scan, host);
    }
    chart.step("both scans Completed under the previous chart");
    let queued_before = eventually(Duration::from_secs(30), "both scans scheduled", || async {
        let s = scheduled(&chart.queue().await);
        (s.len() == INGRESSES.len()).then_some(s)
    })
    .await;
    // Each scan's next run is written after its Completed: wait for both.
    let before = eventually(
        Duration::from_secs(30),
        "both next runs written",
        || async {
            let state = scans_state(&scans).await;
            state
                .values()
                .all(|(.., next)| !next.is_null())
                .then_some(state)
        },
    )
    .await;

    chart
        .release(
            "upgrade",
            &repo().join("deploy/helm/nuclei-operator"),
            &VALUES,
        )
        .await;

    // The new operator runs, from the new chart.
    let deployment = Api::<Deployment>::namespaced(client.clone(), RELEASE_NS)
        .get(FULLNAME)
        .await
        .unwrap();
    assert_eq!(
        deployment.labels().get("helm.sh/chart").map(String::as_str),
        Some(concat!("nuclei-operator-", env!("CARGO_PKG_VERSION")))
    );
    // The hook applied this version's CRD, schema and all…
    let crd = crds.get(CRD).await.unwrap();
    assert_eq!(
        version_label(&crd).as_deref(),
        Some(env!("CARGO_PKG_VERSION"))
    );
    // …created the kinds the previous version lacked (Helm installs no
    // CRD on an upgrade)…
    for (_, want) in nuclei_operator::api::crds() {
        let name = want.name_any();
        let got = crds.get(&name).await.unwrap();
        assert_eq!(
            version_label(&got).as_deref(),
            Some(env!("CARGO_PKG_VERSION")),
            "{name}"
        );
    }
    let want = nuclei_operator::api::crd();
    assert_eq!(
        serde_json::to_value(&crd.spec.versions[0].schema).unwrap(),
        serde_json::to_value(&want.spec.versions[0].schema).unwrap()
    );
    // …and left nothing behind.
    let hook = format!("{FULLNAME}-crd-upgrade");
    assert!(
        Api::<Job>::namespaced(client.clone(), RELEASE_NS)
            .get_opt(&hook)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        Api::<ServiceAccount>::namespaced(client.clone(), RELEASE_NS)
            .get_opt(&hook)
            .await
            .unwrap()
            .is_none()
    );
    let roles: Api<ClusterRole> = Api::all(client.clone());
    assert!(roles.get_opt(&hook).await.unwrap().is_none());
    let bindings: Api<ClusterRoleBinding> = Api::all(client.clone());
    assert!(bindings.get_opt(&hook).await.unwrap().is_none());

    // Every scan, its findings and its next run are as they were, and the
    // new leader queues them as the old one did.
    assert_eq!(scans_state(&scans).await, before);
    let queued_after = eventually(
        Duration::from_secs(60),
        "the new leader's queue",
        || async {
            let s = scheduled(&chart.queue().await);
            (s == queued_before).then_some(s)
        },
    )
    .await;
    assert_eq!(queued_after.len(), INGRESSES.len());
    assert_eq!(scans_state(&scans).await, before, "nothing rescanned");

    // The new operator scans: a rescan request runs again, with the same
    // finding, and records its success in the upgraded schema.
    let name = &format!("{}-ingress", INGRESSES[0].0);
    let patch = json!({"metadata": {"annotations": {format!("{P}rescan"): "after-upgrade"}}});
    scans
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let (uid, _, last_success, _) = before[name].clone();
    let rescanned = eventually(Duration::from_secs(180), "the rescan Completed", || async {
        let scan = completed(&scans, name, Duration::from_secs(180)).await;
        let st = scan.status.clone()?;
        (serde_json::to_value(&st.last_success_time).unwrap() != last_success).then_some(scan)
    })
    .await;
    assert_eq!(rescanned.uid().as_deref(), Some(uid.as_str()));
    assert_canary(&rescanned, INGRESSES[0].1);
    // Compared with the 0.4.0 run, whose findings had no fingerprints: the
    // same finding, unchanged, first seen when 0.4.0 found it.
    let st = rescanned.status.as_ref().unwrap();
    let sum = st.summary.as_ref().unwrap();
    assert_eq!(
        (
            sum.new_findings,
            sum.unchanged_findings,
            sum.resolved_findings
        ),
        (Some(0), Some(1), Some(0))
    );
    let first_seen = st.findings[0].first_seen.as_ref().expect("firstSeen").0;
    assert!(first_seen < st.scan_start_time.as_ref().unwrap().0);
    chart.step("rescanned after the upgrade");
}
