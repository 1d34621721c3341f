//! End-to-end, issue #10: writers that must not write. A scanner of a run
//! the scan has moved on from (finished, or a scan deleted and created again
//! under the same name) changes nothing; a Job that no live scan controls is
//! never adopted into a slot; a scan the operator cannot read (stored under
//! an older CRD) does not stop the others.

mod support;

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use nuclei_operator::api::{NucleiScan, ScanPhase};
use serde_json::{Value, json};
use support::{
    Operator, canary_annotations, canary_target, cluster, completed, eventually, ingress,
    namespace, operator_binary, target_ip,
};
use tokio::sync::OnceCell;

static CLUSTER: OnceCell<devcluster::DevCluster> = OnceCell::const_new();
/// One operator at a time in this binary.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn env() -> (&'static devcluster::DevCluster, kube::Client) {
    let cluster = CLUSTER
        .get_or_init(|| async {
            let ip = target_ip(1);
            canary_target(ip).await;
            cluster(&[("canary.test", ip)]).await
        })
        .await;
    (cluster, cluster.client().await.unwrap())
}

/// Runs the scanner as a scanner pod would, for run `run` of the scan with
/// `uid`, with no nuclei to run; returns its exit code and output.
async fn scanner(
    cluster: &devcluster::DevCluster,
    key: &str,
    uid: &str,
    run: &str,
) -> (i32, String) {
    let out = tokio::process::Command::new(operator_binary())
        .args(["scanner", "--scan", key])
        .env_clear()
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("SCAN_UID", uid)
        .env("SCAN_RUN", run)
        .env("NUCLEI_BINARY", "/nonexistent/nuclei")
        .env("SCANNER_TIMEOUT", "1m")
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

/// Whether the operator is done writing `scan` after its run: Completed,
/// its next run scheduled, and its new finding announced (the announcement
/// is recorded in the status after the run's own writes).
fn settled(scan: &NucleiScan) -> bool {
    scan.status.as_ref().is_some_and(|st| {
        st.phase == Some(ScanPhase::Completed)
            && st.next_scheduled_time.is_some()
            && st.announced_run.is_some()
            && st.announced_run == st.last_success_time
    })
}

#[tokio::test]
async fn a_scanner_of_a_run_the_scan_has_moved_on_from_writes_nothing() {
    let _serial = SERIAL.lock().await;
    let (cluster, client) = env().await;
    let ns = namespace(&client, "fence").await;
    let _operator = Operator::start(cluster, &[("DEFAULT_TEMPLATES", "")]).await;
    Api::<Ingress>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &ingress("web", "canary.test", canary_annotations()),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let key = format!("{ns}/web-ingress");
    completed(&scans, "web-ingress", Duration::from_secs(90)).await;
    let done = eventually(Duration::from_secs(30), "the run settled", || async {
        let s = scans.get("web-ingress").await.ok()?;
        settled(&s).then_some(s)
    })
    .await;
    let uid = done.uid().unwrap();
    let run = done.status.as_ref().unwrap().run_token.clone().unwrap();

    // A late scanner of the finished run (an old pod, a retried Job).
    let (code, out) = scanner(cluster, &key, &uid, &run).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("no longer expects this run"), "{out}");
    assert!(out.contains("already ended"), "{out}");
    // A scanner of a run that never was.
    let (code, out) = scanner(cluster, &key, &uid, "0123456789abcdef").await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("moved on to another run"), "{out}");
    let now = scans.get("web-ingress").await.unwrap();
    assert_eq!(
        now.resource_version(),
        done.resource_version(),
        "nothing written"
    );

    // The scan deleted and created again by its Ingress: the old run's
    // scanner cannot write into the new scan of the same name.
    scans
        .delete("web-ingress", &DeleteParams::default())
        .await
        .unwrap();
    let again = eventually(
        Duration::from_secs(90),
        "the new scan Completed",
        || async {
            let s = scans.get_opt("web-ingress").await.ok()??;
            (s.uid()? != uid && settled(&s)).then_some(s)
        },
    )
    .await;
    let new_run = again.status.as_ref().unwrap().run_token.clone().unwrap();
    let (code, out) = scanner(cluster, &key, &uid, &new_run).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("deleted and created again"), "{out}");
    let now = scans.get("web-ingress").await.unwrap();
    assert_eq!(
        now.resource_version(),
        again.resource_version(),
        "nothing written"
    );
}

#[tokio::test]
async fn a_job_no_live_scan_controls_is_never_adopted_into_a_slot() {
    let _serial = SERIAL.lock().await;
    let (cluster, client) = env().await;
    let victims = namespace(&client, "victims").await;
    let forged_ns = namespace(&client, "forged").await;
    // The scan exists before the operator starts (so a restart would find
    // both it and the Job).
    let scan: NucleiScan = serde_json::from_value(json!({
        "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
        "kind": "NucleiScan",
        "metadata": {"name": "web"},
        "spec": {
            "sourceRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                          "name": "none", "namespace": victims, "uid": "none"},
            "targets": ["http://canary.test/"],
            "tags": ["canary"], "severity": ["high"], "excludeTemplates": ["excluded.yaml"]
        }
    }))
    .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &victims);
    scans.create(&PostParams::default(), &scan).await.unwrap();
    // Someone who may create Jobs in their own namespace makes one that looks
    // like the operator's, claiming that scan; its pod never finishes.
    let job: Job = serde_json::from_value(json!({
        "metadata": {
            "name": "web-forged",
            "labels": {"app.kubernetes.io/managed-by": "nuclei-operator",
                       "nuclei.homelab.mortenolsen.pro/scan": "web",
                       "nuclei.homelab.mortenolsen.pro/run": "0123456789abcdef"},
            "annotations": {"nuclei.homelab.mortenolsen.pro/scan-key": format!("{victims}/web")}
        },
        "spec": {"template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "c", "image": "registry.invalid/never:1"}]
        }}}
    }))
    .unwrap();
    Api::<Job>::namespaced(client.clone(), &forged_ns)
        .create(&PostParams::default(), &job)
        .await
        .unwrap();

    // With one slot, a forged Job holding it would keep the scan Pending.
    let operator = Operator::start(
        cluster,
        &[("MAX_CONCURRENT_SCANS", "1"), ("DEFAULT_TEMPLATES", "")],
    )
    .await;
    completed(&scans, "web", Duration::from_secs(90)).await;
    // Its own Job's end frees the slot; the forged Job never held one.
    eventually(Duration::from_secs(30), "no slot held", || async {
        let queue: Value = serde_json::from_str(&operator.get("/queue").await?).ok()?;
        (queue["limits"]["slotsUsed"] == 0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_scan_the_operator_cannot_read_does_not_stop_the_others() {
    let _serial = SERIAL.lock().await;
    let (cluster, client) = env().await;
    let ns = namespace(&client, "unreadable").await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);

    // Today's CRD bounds retryCount, so the API server refuses a value the
    // operator could not read…
    let plain: NucleiScan = serde_json::from_value(json!({
        "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
        "kind": "NucleiScan",
        "metadata": {"name": "old"},
        "spec": {
            "sourceRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                          "name": "none", "namespace": ns, "uid": "none"},
            "targets": ["http://canary.test/"]
        }
    }))
    .unwrap();
    scans.create(&PostParams::default(), &plain).await.unwrap();
    let huge = json!({"status": {"retryCount": 3_000_000_000u64, "phase": "Failed"}});
    let refused = scans
        .patch_status("old", &PatchParams::default(), &Patch::Merge(&huge))
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(e)) if e.code == 422),
        "{refused:?}"
    );

    // …but an object stored under an older CRD without the bound stays.
    let mut loose = nuclei_operator::api::crd();
    let mut schema = serde_json::to_value(&loose).unwrap();
    let retry = &mut schema["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
        ["properties"]["retryCount"];
    retry.as_object_mut().unwrap().remove("maximum");
    retry.as_object_mut().unwrap().remove("format");
    loose = serde_json::from_value(schema).unwrap();
    let apply = |crd: CustomResourceDefinition| {
        let crds = crds.clone();
        async move {
            crds.patch(
                &crd.name_any(),
                &PatchParams::apply("e2e").force(),
                &Patch::Apply(&crd),
            )
            .await
            .unwrap();
        }
    };
    apply(loose).await;
    // (Read back as raw JSON: the typed client cannot read it either.)
    let raw: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<NucleiScan>(&()));
    eventually(
        Duration::from_secs(20),
        "the loose CRD in force",
        || async {
            raw.patch_status("old", &PatchParams::default(), &Patch::Merge(&huge))
                .await
                .ok()
        },
    )
    .await;
    apply(nuclei_operator::api::crd()).await;
    let stored = raw.get("old").await.unwrap();
    assert_eq!(stored.data["status"]["retryCount"], 3_000_000_000u64);

    let operator = Operator::start(cluster, &[("DEFAULT_TEMPLATES", "")]).await;
    Api::<Ingress>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &ingress("web", "canary.test", canary_annotations()),
        )
        .await
        .unwrap();
    completed(&scans, "web-ingress", Duration::from_secs(90)).await;
    let log = operator.log_text();
    assert!(
        log.contains("object cannot be read") && log.contains("3000000000"),
        "{log}"
    );
    // Left alone: the operator did not write it.
    let now = raw.get("old").await.unwrap();
    assert_eq!(now.resource_version(), stored.resource_version());
    raw.delete("old", &DeleteParams::default()).await.unwrap();
}
