//! End-to-end: the rules that decide when a scan runs again, through real
//! scanner Jobs. A failed scan is retried with backoff up to MAX_RETRIES and
//! then left alone; a spec change rescans at once; a schedule cron cannot
//! read is a condition, and the scan is rescanned at RESCAN_AGE instead; a
//! suspended scan does not run until resumed. The
//! pure phase machine (`src/scan/phase.rs`) has the fine print; these show
//! the operator acts on it.

mod support;

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use nuclei_operator::api::{NucleiScan, ScanPhase};
use serde_json::json;
use support::{
    Operator, canary_annotations, canary_target, cluster, completed, eventually, ingress,
    namespace, target_ip,
};
use tokio::sync::OnceCell;

const P: &str = "nuclei.homelab.mortenolsen.pro/";

struct Env {
    cluster: devcluster::DevCluster,
    operator: Operator,
}

static ENV: OnceCell<Env> = OnceCell::const_new();

async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        let ip = target_ip(1);
        canary_target(ip).await;
        let cluster = cluster(&[("rules.test", ip)]).await;
        let operator = Operator::start(
            &cluster,
            &[
                ("MAX_CONCURRENT_SCANS", "2"),
                ("JOB_RATE_LIMIT", "0"),
                ("DEFAULT_TEMPLATES", ""),
                ("MAX_RETRIES", "1"),
                ("RESCAN_AGE", "2h"),
            ],
        )
        .await;
        Env { cluster, operator }
    })
    .await
}

/// Names of the scan Jobs of `ns`, oldest first.
async fn job_names(client: &kube::Client, ns: &str) -> Vec<String> {
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    let mut jobs = jobs.list(&ListParams::default()).await.unwrap().items;
    jobs.sort_by_key(|j| j.metadata.creation_timestamp.clone());
    jobs.into_iter().filter_map(|j| j.metadata.name).collect()
}

/// Waits until `name` is Completed by a run other than `before`'s Job.
async fn completed_again(api: &Api<NucleiScan>, name: &str, before: &str) -> NucleiScan {
    eventually(
        Duration::from_secs(90),
        &format!("{name} Completed by a new run"),
        || async {
            let s = api.get_opt(name).await.ok()??;
            let st = s.status.as_ref()?;
            let job = st.job_ref.as_ref()?.name.as_str();
            (st.phase? == ScanPhase::Completed && job != before).then_some(s)
        },
    )
    .await
}

fn job_of(s: &NucleiScan) -> String {
    s.status
        .as_ref()
        .unwrap()
        .job_ref
        .as_ref()
        .unwrap()
        .name
        .clone()
}

async fn patch_spec(api: &Api<NucleiScan>, name: &str, spec: serde_json::Value) {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "spec": spec })),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn a_failing_scan_is_retried_once_with_max_retries_1_and_then_left_alone() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "rules-retry").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    // No template has this tag: nuclei exits with an error, every time.
    let ann = json!({format!("{P}tags"): "no-such-tag-anywhere"});
    ingresses
        .create(&PostParams::default(), &ingress("bad", "rules.test", ann))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    // The first run fails and counts retry 1; its retry (after ~10 s of
    // backoff) fails and counts 2, one more than MAX_RETRIES allows.
    let s = eventually(Duration::from_secs(150), "retries spent", || async {
        let s = scans.get_opt("bad-ingress").await.ok()??;
        let st = s.status.as_ref()?;
        let spent = st.phase? == ScanPhase::Failed && st.retry_count == Some(2);
        // Nothing due any more: no retry and no rescan.
        (spent && st.next_scheduled_time.is_none()).then_some(s)
    })
    .await;
    let err = s.status.unwrap().last_error.unwrap_or_default();
    assert!(err.contains("no templates"), "{err}");
    let jobs = job_names(&client, &ns).await;
    assert_eq!(jobs.len(), 2, "one run and one retry: {jobs:?}");
    // Left alone: out of the queue, and no third Job after longer than the
    // next backoff (20 s, less at most 20% of jitter) would have been.
    let path = format!("/queue/{ns}/bad-ingress");
    eventually(Duration::from_secs(10), "out of the queue", || async {
        e.operator.get(&path).await.is_none().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(25)).await;
    assert_eq!(job_names(&client, &ns).await, jobs);
    let st = scans.get("bad-ingress").await.unwrap().status.unwrap();
    assert_eq!(
        (st.phase, st.retry_count),
        (Some(ScanPhase::Failed), Some(2))
    );
}

#[tokio::test]
async fn a_spec_change_rescans_a_bad_schedule_is_a_condition_and_suspend_holds_a_scan() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "rules-spec").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    ingresses
        .create(
            &PostParams::default(),
            &ingress("app", "rules.test", canary_annotations()),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let first = job_of(&completed(&scans, "app-ingress", Duration::from_secs(90)).await);

    // A schedule the CRD accepts (any short string) but cron cannot read:
    // the spec changed, so it rescans at once, and says what is wrong.
    patch_spec(&scans, "app-ingress", json!({"schedule": "every tuesday"})).await;
    let second = job_of(&completed_again(&scans, "app-ingress", &first).await);
    let cond = eventually(Duration::from_secs(10), "ScheduleValid", || async {
        let st = scans.get("app-ingress").await.ok()?.status?;
        st.conditions
            .into_iter()
            .find(|c| c.type_ == "ScheduleValid")
    })
    .await;
    assert_eq!(
        (cond.status.as_str(), cond.reason.as_str()),
        ("False", "InvalidSchedule")
    );
    assert!(cond.message.contains("5 fields"), "{}", cond.message);
    // Without a schedule it can read, the scan is rescanned at RESCAN_AGE
    // after its last run, and waits in the queue's scheduled list.
    let st = eventually(Duration::from_secs(10), "rescan by age", || async {
        let st = scans.get("app-ingress").await.ok()?.status?;
        st.next_scheduled_time.is_some().then_some(st)
    })
    .await;
    let last = st.last_scan_time.unwrap().0.as_second();
    assert_eq!(st.next_scheduled_time.unwrap().0.as_second() - last, 7200);
    let path = format!("/queue/{ns}/app-ingress");
    let queued = eventually(Duration::from_secs(10), "scheduled in /queue", || async {
        let q: serde_json::Value = serde_json::from_str(&e.operator.get(&path).await?).ok()?;
        (q["state"] == "scheduled").then_some(q)
    })
    .await;
    assert_eq!(queued["reason"], "scheduled", "{queued}");
    assert_eq!(
        job_names(&client, &ns).await,
        [first.as_str(), second.as_str()]
    );

    // Suspended, with a valid schedule: a spec change that would rescan at
    // once, yet nothing is queued, nothing is due and no Job starts.
    patch_spec(
        &scans,
        "app-ingress",
        json!({"schedule": "@every 1h", "suspend": true}),
    )
    .await;
    eventually(
        Duration::from_secs(20),
        "suspended scan settled",
        || async {
            let s = scans.get("app-ingress").await.ok()?;
            let idle = e.operator.get(&path).await.is_none();
            let st = s.status?;
            (idle && st.next_scheduled_time.is_none() && st.phase? == ScanPhase::Completed)
                .then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(
        job_names(&client, &ns).await,
        [first.as_str(), second.as_str()]
    );
    assert_eq!(e.operator.get(&path).await, None);

    // Resumed: it runs (its spec changed while it was held), the schedule
    // reads, the condition is gone and the next run is an hour away.
    patch_spec(&scans, "app-ingress", json!({"suspend": false})).await;
    let third = job_of(&completed_again(&scans, "app-ingress", &second).await);
    let st = eventually(Duration::from_secs(10), "next run set", || async {
        let st = scans.get("app-ingress").await.ok()?.status?;
        st.next_scheduled_time.as_ref()?;
        st.conditions
            .iter()
            .all(|c| c.type_ != "ScheduleValid")
            .then_some(st)
    })
    .await;
    let started = st.last_scan_time.unwrap().0.as_second();
    let ahead = st.next_scheduled_time.unwrap().0.as_second() - started;
    assert_eq!(
        ahead, 3600,
        "@every 1h: the next run is an hour after the last"
    );
    assert_eq!(
        job_names(&client, &ns).await,
        [first.as_str(), second.as_str(), third.as_str()]
    );
}
