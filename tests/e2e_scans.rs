//! End-to-end, issues #4 and #5: real scanner Jobs (process kubelet) running
//! the real nuclei against a local target, under MaxConcurrent=2.

mod support;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use nuclei_operator::api::{NucleiScan, ScanPhase};
use serde_json::json;
use support::{
    Operator, assert_only_the_canary_finding, canary_annotations, canary_target, cluster,
    completed, event, eventually, ingress, namespace, target_ip,
};
use tokio::sync::OnceCell;

const P: &str = "nuclei.homelab.mortenolsen.pro/";

struct Env {
    cluster: devcluster::DevCluster,
    operator: Operator,
}

static ENV: OnceCell<Env> = OnceCell::const_new();

/// Eight hosts `h0.test`…`h7.test` and `canary.test`, all served by the canary target.
async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        let ip = target_ip(1);
        canary_target(ip).await;
        let names: Vec<String> = (0..8)
            .map(|i| format!("h{i}.test"))
            .chain(["canary.test".into()])
            .collect();
        let hosts: Vec<(&str, std::net::Ipv4Addr)> =
            names.iter().map(|n| (n.as_str(), ip)).collect();
        let cluster = cluster(&hosts).await;
        let operator = Operator::start(
            &cluster,
            &[
                ("MAX_CONCURRENT_SCANS", "2"),
                ("JOB_RATE_LIMIT", "0"),
                ("DEFAULT_TEMPLATES", ""),
            ],
        )
        .await;
        Env { cluster, operator }
    })
    .await
}

#[tokio::test]
async fn an_annotated_ingress_is_scanned_to_exactly_the_expected_finding() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "scan-canary").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    ingresses
        .create(
            &PostParams::default(),
            &ingress("canary", "canary.test", canary_annotations()),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let s = completed(&scans, "canary-ingress", Duration::from_secs(90)).await;
    let st = s.status.unwrap();
    assert_only_the_canary_finding(&st);
    let job = st.job_ref.unwrap();
    assert!(job.pod_name.is_some());
    // The scan's story in Events, by reason: its Job, then its result.
    let scan = "canary-ingress";
    let created = format!("created Job {}", job.name);
    event(&client, &ns, scan, "Normal", "ScanJobCreated", &created).await;
    let done = "Scan completed: 1 finding (1 high).";
    assert_eq!(
        event(&client, &ns, scan, "Normal", "ScanCompleted", "").await,
        done
    );
}

#[tokio::test]
async fn a_scan_without_usable_templates_fails_with_nucleis_reason() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "scan-notemplates").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ann = json!({format!("{P}tags"): "no-such-tag-anywhere"});
    ingresses
        .create(
            &PostParams::default(),
            &ingress("empty", "canary.test", ann),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    let s = eventually(Duration::from_secs(90), "scan Failed", || async {
        let s = scans.get_opt("empty-ingress").await.ok()??;
        (s.status.as_ref()?.phase? == ScanPhase::Failed).then_some(s)
    })
    .await;
    let err = s.status.unwrap().last_error.unwrap_or_default();
    assert!(err.contains("no templates"), "{err}");
    let client = e.cluster.client().await.unwrap();
    let note = event(&client, &ns, "empty-ingress", "Warning", "ScanFailed", "").await;
    assert_eq!(note, format!("scan failed: {err}"));
}

#[tokio::test]
async fn eight_ingresses_are_all_scanned_and_never_more_than_two_jobs_run_at_once() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "scan-limit").await;
    // Watch every scan Job and track how many are unfinished at each event.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let max_seen = Arc::new(AtomicUsize::new(0));
    let watcher_task = {
        let max_seen = max_seen.clone();
        tokio::spawn(async move {
            let mut unfinished: BTreeSet<String> = BTreeSet::new();
            let stream = watcher(jobs, watcher::Config::default()).applied_objects();
            futures::pin_mut!(stream);
            while let Some(Ok(job)) = stream.next().await {
                let name = job.metadata.name.clone().unwrap();
                let done = job
                    .status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter().any(|c| {
                            (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                        })
                    });
                if done {
                    unfinished.remove(&name);
                } else {
                    unfinished.insert(name);
                }
                max_seen.fetch_max(unfinished.len(), Ordering::SeqCst);
            }
        })
    };
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ann = json!({format!("{P}templates"): "canary.yaml"});
    for i in 0..8 {
        ingresses
            .create(
                &PostParams::default(),
                &ingress(&format!("web{i}"), &format!("h{i}.test"), ann.clone()),
            )
            .await
            .unwrap();
    }
    // While they run, /queue shows the waiting scans in admission order.
    let queue: serde_json::Value = eventually(
        Duration::from_secs(30),
        "queue with waiting scans",
        || async {
            let q: serde_json::Value =
                serde_json::from_str(&e.operator.get("/queue").await?).ok()?;
            let ours = q["pending"]
                .as_array()?
                .iter()
                .filter(|p| {
                    p["scan"]
                        .as_str()
                        .is_some_and(|s| s.starts_with(&format!("{ns}/")))
                })
                .count();
            (ours >= 2).then_some(q)
        },
    )
    .await;
    assert_eq!(queue["limits"]["maxConcurrent"], 2);
    // Admission order: higher priority first, then first come, first
    // served (the other tests of this file share the queue).
    let pending: Vec<(String, u64, String)> = queue["pending"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["scan"].as_str().unwrap().to_owned(),
                p["priority"].as_u64().unwrap(),
                p["enqueuedAt"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    for pair in pending.windows(2) {
        let ((_, p0, t0), (_, p1, t1)) = (&pair[0], &pair[1]);
        assert!(p0 > p1 || (p0 == p1 && t0 <= t1), "out of order: {pair:?}");
    }
    // This test's: new, each once.
    let ours: Vec<&serde_json::Value> = queue["pending"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["scan"].as_str().unwrap().starts_with(&format!("{ns}/")))
        .collect();
    assert!(ours.len() >= 2, "{queue}");
    let mut names = BTreeSet::new();
    for p in &ours {
        assert_eq!(p["reason"], "new_scan", "{p}");
        assert!(names.insert(p["scan"].as_str().unwrap()), "twice: {p}");
    }
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    for i in 0..8 {
        let s = completed(&scans, &format!("web{i}-ingress"), Duration::from_secs(180)).await;
        assert_eq!(s.status.unwrap().summary.unwrap().total_findings, 1);
    }
    watcher_task.abort();
    // One Job per scan: a new scan runs once.
    let jobs: Api<Job> = Api::namespaced(e.cluster.client().await.unwrap(), &ns);
    let mut per_scan: std::collections::BTreeMap<String, usize> = Default::default();
    for job in jobs.list(&Default::default()).await.unwrap().items {
        let scan = job.metadata.labels.unwrap_or_default()[&format!("{P}scan")].clone();
        *per_scan.entry(scan).or_default() += 1;
    }
    assert_eq!(per_scan.len(), 8, "{per_scan:?}");
    assert!(per_scan.values().all(|n| *n == 1), "{per_scan:?}");
    let max = max_seen.load(Ordering::SeqCst);
    // The limit is reached, not only respected: eight scans waiting and no
    // rate limit leave no reason to run fewer than two at once.
    assert_eq!(
        max, 2,
        "saw at most {max} unfinished scan Jobs at once with MAX_CONCURRENT_SCANS=2"
    );
}
