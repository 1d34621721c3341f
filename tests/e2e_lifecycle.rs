//! End-to-end, issue #4: cron rescans, manual rescans, operator crash and
//! restart (queue rebuilt, no duplicate Job), leader election.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nuclei_operator::api::{NucleiScan, ScanPhase};
use serde_json::json;
use support::{
    Operator, cluster, completed, eventually, ingress, namespace, slow_target, target_ip,
};
use tokio::sync::OnceCell;

const P: &str = "nuclei.homelab.mortenolsen.pro/";

struct Env {
    cluster: devcluster::DevCluster,
}

static ENV: OnceCell<Env> = OnceCell::const_new();
/// One operator at a time in this binary: the tests that start and kill
/// operators must not overlap.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        let ip = target_ip(3);
        slow_target(ip, Duration::from_secs(4));
        let names: Vec<String> = (0..KILL_SCANS)
            .map(|i| format!("s{i}.test"))
            .chain(["cron.test".into(), "manual.test".into()])
            .collect();
        let hosts: Vec<(&str, Ipv4Addr)> = names.iter().map(|n| (n.as_str(), ip)).collect();
        Env {
            cluster: cluster(&hosts).await,
        }
    })
    .await
}

fn phase(s: &NucleiScan) -> Option<ScanPhase> {
    s.status.as_ref()?.phase
}

async fn jobs_by_scan(jobs: &Api<Job>) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for j in jobs.list(&ListParams::default()).await.unwrap().items {
        let scan = j
            .labels()
            .get("nuclei.homelab.mortenolsen.pro/scan")
            .cloned()
            .unwrap_or_default();
        out.entry(scan).or_default().push(j.name_any());
    }
    out
}

/// How many times the kill test kills the operator, each time with a scan
/// mid-run (the load-test harness does it at scale: `--kills`).
const KILLS: usize = 3;
const KILL_SCANS: usize = 6;

#[tokio::test]
async fn killing_the_operator_mid_run_again_and_again_rebuilds_the_queue_and_starts_no_second_job()
{
    let _serial = SERIAL.lock().await;
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "crash").await;
    let env_vars = [("MAX_CONCURRENT_SCANS", "1"), ("JOB_RATE_LIMIT", "0")];
    let mut operator = Operator::start(&e.cluster, &env_vars).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    for i in 0..KILL_SCANS {
        let ann = json!({format!("{P}templates"): "slow.yaml"});
        ingresses
            .create(
                &PostParams::default(),
                &ingress(&format!("s{i}"), &format!("s{i}.test"), ann),
            )
            .await
            .unwrap();
    }
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let mut killed_in: Vec<String> = Vec::new();
    let mut adoptions = 0;
    for kill in 0..KILLS {
        // Mid-run: a scan Running (its Job alive) that was not running at
        // the last kill, the others waiting or done.
        let running = eventually(Duration::from_secs(60), "a scan Running", || async {
            let l = scans.list(&ListParams::default()).await.ok()?;
            if l.items.len() < KILL_SCANS {
                return None;
            }
            l.items
                .iter()
                .find(|s| {
                    phase(s) == Some(ScanPhase::Running) && !killed_in.contains(&s.name_any())
                })
                .map(|s| s.name_any())
        })
        .await;
        operator.kill().await;
        killed_in.push(running.clone());
        let restarted = Instant::now();
        operator = Operator::start(&e.cluster, &env_vars).await;
        // The queue is rebuilt from the NucleiScans alone.
        let key = format!("{ns}/{running}");
        let (rebuilt, adopted) = eventually(Duration::from_secs(30), "queue rebuilt", || async {
            let q: serde_json::Value = serde_json::from_str(&operator.get("/queue").await?).ok()?;
            let list = scans.list(&ListParams::default()).await.ok()?.items;
            let done = list
                .iter()
                .filter(|s| phase(s) == Some(ScanPhase::Completed))
                .count() as u64;
            let holds = q["running"].as_array()?.iter().any(|r| r["scan"] == key);
            // The killed run, if still Running, holds a slot in the new
            // process: its Job was adopted, not launched again.
            let still_running = list
                .iter()
                .any(|s| s.name_any() == running && phase(s) == Some(ScanPhase::Running));
            if still_running && !holds {
                return None;
            }
            let known = q["pendingTotal"].as_u64()? + q["running"].as_array()?.len() as u64;
            (known + done >= KILL_SCANS as u64).then_some((restarted.elapsed(), holds))
        })
        .await;
        adoptions += usize::from(adopted);
        eprintln!(
            "kill {}: {running} was running; queue rebuilt {:.2}s after restart; adopted: {adopted}",
            kill + 1,
            rebuilt.as_secs_f64()
        );
    }
    // At least one killed run outlived its operator, so adoption was shown,
    // not only the absence of a second Job.
    assert!(
        adoptions >= 1,
        "no restart found its killed run still running"
    );
    for i in 0..KILL_SCANS {
        completed(&scans, &format!("s{i}-ingress"), Duration::from_secs(120)).await;
    }
    // Every scan ran exactly once: the restart adopted the running Job.
    let by_scan = jobs_by_scan(&jobs).await;
    assert_eq!(by_scan.len(), KILL_SCANS, "{by_scan:?}");
    for (scan, js) in &by_scan {
        assert_eq!(js.len(), 1, "{scan} has several Jobs: {js:?}");
    }
    // With MAX_CONCURRENT_SCANS=1 the Jobs ran one after another, across the
    // restart too: the new process held the old Job's slot before admitting.
    let mut runs: Vec<(String, Time, Time)> =
        eventually(Duration::from_secs(30), "every Job complete", || async {
            jobs.list(&ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .map(|j| {
                    let done = j.status.as_ref()?.completion_time.clone()?;
                    Some((j.name_any(), j.metadata.creation_timestamp?, done))
                })
                .collect()
        })
        .await;
    runs.sort_by(|a, b| a.1.cmp(&b.1));
    for w in runs.windows(2) {
        assert!(
            w[1].1 >= w[0].2,
            "{} was created at {:?}, before {} finished at {:?}",
            w[1].0,
            w[1].1,
            w[0].0,
            w[0].2
        );
    }
    drop(operator);
}

#[tokio::test]
async fn an_every_minute_schedule_produces_a_second_run_and_a_rescan_request_a_third() {
    let _serial = SERIAL.lock().await;
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "cron").await;
    let _operator = Operator::start(&e.cluster, &[("JOB_RATE_LIMIT", "0")]).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ann =
        json!({format!("{P}templates"): "canary.yaml", format!("{P}schedule"): "*/1 * * * *"});
    ingresses
        .create(&PostParams::default(), &ingress("cron", "cron.test", ann))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let completed_run = |after: Option<String>| {
        let scans = scans.clone();
        async move {
            let s = scans.get_opt("cron-ingress").await.ok()??;
            let st = s.status.as_ref()?;
            let job = st.job_ref.as_ref()?.name.clone();
            (st.phase == Some(ScanPhase::Completed) && Some(&job) != after.as_ref())
                .then_some((job, s))
        }
    };
    let (first, _) = eventually(Duration::from_secs(90), "first run", || completed_run(None)).await;
    // The reconciler records the next run right after the completion.
    let next = eventually(Duration::from_secs(20), "nextScheduledTime", || async {
        scans
            .get_opt("cron-ingress")
            .await
            .ok()??
            .status?
            .next_scheduled_time
    })
    .await;
    assert_eq!(
        next.0.as_second() % 60,
        0,
        "a */1 schedule fires on the minute"
    );
    let (second, _) = eventually(Duration::from_secs(150), "second, scheduled run", || {
        completed_run(Some(first.clone()))
    })
    .await;
    assert_ne!(first, second);
    // A manual rescan request runs at once, once per value.
    scans
        .patch(
            "cron-ingress",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {format!("{P}rescan"): "1"}}})),
        )
        .await
        .unwrap();
    let (third, s) = eventually(Duration::from_secs(40), "manual rescan run", || {
        completed_run(Some(second.clone()))
    })
    .await;
    assert_eq!(s.status.unwrap().last_rescan_request.as_deref(), Some("1"));
    assert_ne!(third, second);

    // Once per value: without the schedule (whose runs would pass for
    // rescans), a request runs once, and the scan's later reconciles with the
    // same value run nothing more.
    ingresses
        .patch(
            "cron",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {format!("{P}schedule"): null}}})),
        )
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let settled = || async {
        let s = scans.get_opt("cron-ingress").await.ok()??;
        let idle = jobs
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .iter()
            .all(|j| nuclei_operator::jobs::job_finished(j).is_some());
        (s.spec.schedule.is_none() && phase(&s) == Some(ScanPhase::Completed) && idle)
            .then(|| s.status?.job_ref.map(|j| j.name))
            .flatten()
    };
    let unscheduled = eventually(Duration::from_secs(60), "the schedule gone, idle", settled).await;
    scans
        .patch(
            "cron-ingress",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": {format!("{P}rescan"): "2"}}})),
        )
        .await
        .unwrap();
    let (rescan, _) = eventually(Duration::from_secs(40), "the rescan's run", || {
        completed_run(Some(unscheduled.clone()))
    })
    .await;
    let count = jobs_by_scan(&jobs).await["cron-ingress"].len();
    // Each label change is a reconcile of the scan with rescan=2 still set.
    for touch in 0..5 {
        let patch = json!({"metadata": {"labels": {"e2e-touch": touch.to_string()}}});
        scans
            .patch(
                "cron-ingress",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(jobs_by_scan(&jobs).await["cron-ingress"].len(), count);
    let s = scans.get("cron-ingress").await.unwrap();
    let st = s.status.unwrap();
    assert_eq!(st.job_ref.map(|j| j.name), Some(rescan));
    assert_eq!(st.last_rescan_request.as_deref(), Some("2"));
    cleanup(&client, &ns, "cron").await;
}

/// Deletes an Ingress and waits until its scan's Jobs are gone, so a test
/// leaves no running scan (slots, hosts) to the next one.
async fn cleanup(client: &kube::Client, ns: &str, name: &str) {
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);
    ingresses
        .delete(name, &kube::api::DeleteParams::foreground())
        .await
        .unwrap();
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(60),
        "the scan's Jobs deleted",
        || async {
            jobs.list(&ListParams::default())
                .await
                .ok()?
                .items
                .is_empty()
                .then_some(())
        },
    )
    .await;
}

/// Whether the operator says it leads (`/queue` → `leader`).
async fn leader_of(op: &Operator) -> Option<bool> {
    let q: serde_json::Value = serde_json::from_str(&op.get("/queue").await?).ok()?;
    q["leader"].as_bool()
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_dispatches_and_a_new_leader_takes_over() {
    let _serial = SERIAL.lock().await;
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "leader").await;
    let replica = |name: &'static str| {
        [
            ("LEADER_ELECTION", "true"),
            ("POD_NAME", name),
            ("POD_NAMESPACE", "default"),
            ("LEASE_NAME", "e2e-leader"),
        ]
    };
    let a = Operator::start(&e.cluster, &replica("replica-a")).await;
    let b = Operator::start(&e.cluster, &replica("replica-b")).await;
    eventually(Duration::from_secs(30), "exactly one leader", || async {
        let (la, lb) = (leader_of(&a).await?, leader_of(&b).await?);
        (la != lb).then_some(())
    })
    .await;
    let a_leads = leader_of(&a).await.unwrap();
    let (mut leader, follower) = if a_leads { (a, b) } else { (b, a) };
    // While both run, a new scan gets one Job, and the follower queues
    // nothing: it neither dispatches nor keeps a queue of its own.
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ann = json!({format!("{P}templates"): "canary.yaml"});
    ingresses
        .create(
            &PostParams::default(),
            &ingress("both", "cron.test", ann.clone()),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    completed(&scans, "both-ingress", Duration::from_secs(90)).await;
    let q: serde_json::Value =
        serde_json::from_str(&follower.get("/queue").await.unwrap()).unwrap();
    assert_eq!(q["leader"], false, "{q}");
    assert_eq!(q["pendingTotal"], 0, "{q}");
    assert_eq!(q["scheduledTotal"], 0, "{q}");
    assert_eq!(q["running"], json!([]), "{q}");
    // The leader holds the scan's rescan once it has seen the run end (the
    // Completed write can land before the leader's watch delivers it).
    let key = format!("{ns}/both-ingress");
    eventually(
        Duration::from_secs(10),
        "the leader holds the scan's rescan",
        || async {
            let q: serde_json::Value = serde_json::from_str(&leader.get("/queue").await?).ok()?;
            q["scheduled"]
                .as_array()?
                .iter()
                .any(|i| i["scan"] == key.as_str())
                .then_some(())
        },
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    assert_eq!(jobs_by_scan(&jobs).await["both-ingress"].len(), 1);
    leader.kill().await;
    let killed = Instant::now();
    eventually(
        Duration::from_secs(40),
        "the follower takes over",
        || async { leader_of(&follower).await?.then_some(()) },
    )
    .await;
    eprintln!("new leader after {:.1}s", killed.elapsed().as_secs_f64());
    // And it dispatches.
    ingresses
        .create(&PostParams::default(), &ingress("led", "manual.test", ann))
        .await
        .unwrap();
    eventually(
        Duration::from_secs(90),
        "scan Completed under the new leader",
        || async {
            let s = scans.get_opt("led-ingress").await.ok()??;
            (phase(&s) == Some(ScanPhase::Completed)).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_scanner_pod_that_never_starts_is_reported_on_the_scan() {
    let _serial = SERIAL.lock().await;
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "nostart").await;
    let _operator = Operator::start(
        &e.cluster,
        &[
            ("JOB_RATE_LIMIT", "0"),
            ("ALLOWED_SCANNER_IMAGES", "registry.invalid/*"),
        ],
    )
    .await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    // An image the process kubelet cannot "pull".
    let ann = json!({format!("{P}scanner-image"): "registry.invalid/missing:1"});
    ingresses
        .create(
            &PostParams::default(),
            &ingress("nostart", "nostart.test", ann),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let cond = eventually(
        Duration::from_secs(90),
        "PodNotStarted condition",
        || async {
            let s = scans.get_opt("nostart-ingress").await.ok()??;
            s.status?
                .conditions
                .into_iter()
                .find(|c| c.type_ == "PodNotStarted" && c.status == "True")
        },
    )
    .await;
    assert_eq!(cond.reason, "ErrImagePull");
    assert!(
        cond.message.contains("registry.invalid/missing:1"),
        "{}",
        cond.message
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    eventually(
        Duration::from_secs(20),
        "ScanPodNotStarted event",
        || async {
            events
                .list(&Default::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| e.reason.as_deref() == Some("ScanPodNotStarted"))
        },
    )
    .await;
    // Its Job would hold a slot (and its host) until its deadline.
    cleanup(&client, &ns, "nostart").await;
}
