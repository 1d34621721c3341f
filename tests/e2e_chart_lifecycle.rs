//! End-to-end, issue #10, the way users run the operator: installed with the
//! Helm chart (operator pod, the chart's ServiceAccount, target check on,
//! JSON logs) with operator-wide default templates and severity set, and
//! scans deleted, disabled, unreachable or unable to start halfway.
//!
//! One cluster and one release for the whole file; the tests run one at a
//! time because they count the dispatcher's slots (MAX_CONCURRENT_SCANS=2).

mod support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devcluster::ComponentName;
use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Namespace};
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use nuclei_operator::api::gateway::V1;
use nuclei_operator::api::{
    NucleiFindingException, NucleiFindingExceptionSpec, NucleiScan, ScanPhase,
};
use serde_json::{Value, json};
use support::chart::{Chart, restricted_namespace};
use support::gateway;
use support::notify::Receiver;
use support::reports::{findings_series, open_reports, report, sample};
use support::{
    canary_annotations, canary_target, event, eventually, ingress, slow_target, target_ip,
};
use tokio::sync::OnceCell;

const P: &str = "nuclei.homelab.mortenolsen.pro/";
/// How long `/slow` takes to answer: far longer than the tests take to
/// delete or disable a scan that is on it.
const SLOW: Duration = Duration::from_secs(30);
/// The chart's `scanner.startTimeout` here.
const START_TIMEOUT: Duration = Duration::from_secs(20);

/// Host names the pods resolve to the test target; `dead.test` goes to an
/// address where nothing listens.
const HOSTS: [&str; 13] = [
    "plain.test",
    "accept.test",
    "report.test",
    "route.test",
    "slow0.test",
    "slow1.test",
    "slow2.test",
    "slow3.test",
    "after.test",
    "cron.test",
    "pull.test",
    "refused.test",
    "migrate.test",
];

static ENV: OnceCell<Chart> = OnceCell::const_new();
/// The webhook the release's notifier (notifications.targets) posts to.
static HOOK: std::sync::OnceLock<Receiver> = std::sync::OnceLock::new();
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn chart() -> &'static Chart {
    ENV.get_or_init(|| async {
        let ip = target_ip(1);
        slow_target(ip, SLOW);
        let mut hosts: Vec<String> = HOSTS.iter().map(|h| format!("{h}={ip}")).collect();
        hosts.push(format!("dead.test={}", target_ip(2)));
        hosts.push(format!("late.test={}", late_ip()));
        let chart = Chart::start("e2e_chart_lifecycle", hosts).await;
        let hook = HOOK.get_or_init(|| Receiver::start(&[]));
        let notifier = json!([{"name": "all", "type": "webhook", "url": hook.url("chart")}]);
        let notifier = format!("notifications.targets={notifier}");
        let start_timeout = format!("scanner.startTimeout={}s", START_TIMEOUT.as_secs());
        chart
            .install(&[
                "--set-json",
                r#"templates.defaults=["canary.yaml","low-severity.yaml","other-tag.yaml"]"#,
                "--set-json",
                r#"templates.severity=["high"]"#,
                "--set",
                "scanner.maxConcurrent=2",
                "--set",
                &start_timeout,
                // The image the pod-that-never-starts test asks for.
                "--set-json",
                r#"scanner.allowedImages=["registry.invalid/*"]"#,
                "--set-json",
                &notifier,
            ])
            .await;
        chart
    })
    .await
}

/// Where `late.test` goes: nothing listens there until its test starts the
/// canary target.
fn late_ip() -> std::net::Ipv4Addr {
    target_ip(3)
}

/// The shared cluster and a client of this test's own runtime (a client
/// lives only as long as the runtime that made it).
async fn env() -> (&'static Chart, kube::Client) {
    let chart = chart().await;
    (chart, chart.cluster.client().await.unwrap())
}

fn scans(client: &kube::Client, ns: &str) -> Api<NucleiScan> {
    Api::namespaced(client.clone(), ns)
}

async fn create_ingress(client: &kube::Client, ns: &str, name: &str, host: &str, ann: Value) {
    Api::<Ingress>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &ingress(name, host, ann))
        .await
        .unwrap();
}

/// Waits until the scan `name` is in phase `want` and returns it.
async fn phase(
    api: &Api<NucleiScan>,
    name: &str,
    want: ScanPhase,
    timeout: Duration,
) -> NucleiScan {
    eventually(timeout, &format!("{name} {want}"), || async {
        let s = api.get_opt(name).await.ok()??;
        (s.status.as_ref()?.phase? == want).then_some(s)
    })
    .await
}

/// Keys of the scans holding dispatcher slots, from `/queue`.
async fn slots(env: &Chart) -> BTreeSet<String> {
    env.queue().await["running"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["scan"].as_str().unwrap().to_owned())
        .collect()
}

/// Waits until the scan's scanner pod runs (the scanner recorded its pod).
async fn pod_running(api: &Api<NucleiScan>, name: &str) -> NucleiScan {
    eventually(
        Duration::from_secs(90),
        &format!("{name}'s scanner pod running"),
        || async {
            let s = api.get_opt(name).await.ok()??;
            let st = s.status.as_ref()?;
            (st.phase? == ScanPhase::Running && st.job_ref.as_ref()?.pod_name.is_some())
                .then_some(s)
        },
    )
    .await
}

fn slow_annotations() -> Value {
    // DEFAULT_SEVERITY is high; slow.yaml is medium.
    json!({format!("{P}templates"): "slow.yaml", format!("{P}severity"): "medium"})
}

#[tokio::test]
async fn the_charts_default_templates_and_severity_reach_a_scan_that_names_none() {
    let _serial = SERIAL.lock().await;
    let (env, client) = env().await;
    restricted_namespace(&client, "defaults").await;
    create_ingress(&client, "defaults", "plain", "plain.test", json!({})).await;
    let api = scans(&client, "defaults");
    let scan = phase(
        &api,
        "plain-ingress",
        ScanPhase::Completed,
        Duration::from_secs(120),
    )
    .await;
    let st = scan.status.as_ref().unwrap();
    let ids: BTreeSet<&str> = st.findings.iter().map(|f| f.template_id.as_str()).collect();
    // The defaults name canary.yaml, low-severity.yaml and other-tag.yaml, and
    // the default severity keeps the high ones: not the low one, and none of
    // the other templates in the image (excluded.yaml, slow.yaml), which
    // would run, and match this target, without the defaults.
    assert_eq!(
        ids,
        BTreeSet::from(["nuclei-operator-canary", "nuclei-operator-other-tag"]),
        "{:?}",
        st.findings
    );
    let job = Api::<Job>::namespaced(client.clone(), "defaults")
        .get(&st.job_ref.as_ref().unwrap().name)
        .await
        .unwrap();
    let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
    let value = |name: &str| {
        container
            .env
            .iter()
            .flatten()
            .find(|e| e.name == name)
            .and_then(|e| e.value.clone())
    };
    assert_eq!(
        value("DEFAULT_TEMPLATES").as_deref(),
        Some("canary.yaml,low-severity.yaml,other-tag.yaml")
    );
    assert_eq!(value("DEFAULT_SEVERITY").as_deref(), Some("high"));
    // The chart's JSON logs, in the scanner pod too: every line an object,
    // no colour codes.
    assert_eq!(value("LOG_FORMAT").as_deref(), Some("json"));
    let pod = st.job_ref.as_ref().unwrap().pod_name.clone().unwrap();
    let log =
        std::fs::read_to_string(env.cluster.container_log("defaults", &pod, "scanner")).unwrap();
    let mut completed = Vec::new();
    let mut rss = Vec::new();
    for line in log.lines() {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON log line ({e}): {line}"));
        assert!(
            entry["level"].is_string() && !line.contains('\x1b'),
            "{line}"
        );
        if entry["message"] == "scan completed" {
            completed.push(entry);
        } else if entry["message"] == "nuclei exited" {
            rss.push(entry["nuclei_peak_rss_bytes"].as_u64());
        }
    }
    // nuclei's peak memory, to size the scanner by.
    assert!(matches!(rss[..], [Some(b)] if b > 1 << 20), "{log}");
    // The scan named in fields of their own, as the operator's lines do.
    assert_eq!(completed.len(), 1, "{log}");
    let c = &completed[0];
    assert_eq!(
        (&c["namespace"], &c["name"]),
        (&json!("defaults"), &json!("plain-ingress"))
    );
    assert_eq!(c["findings"], 2);
    assert!(c["duration_seconds"].is_number(), "{c}");
    // The chart's rate cap, and interactsh off (no INTERACTSH_URL: `-ni`).
    assert_eq!(value("MAX_RATE_LIMIT").as_deref(), Some("150"));
    assert_eq!(value("INTERACTSH_URL"), None);
}

/// Issue #16 part 3 through the chart (its ClusterRole, the target check):
/// a scan the Go operator made for an Ingress already scanned here is
/// adopted (its hand-set schedule carried over) and deleted.
#[tokio::test]
async fn a_go_operators_scan_of_a_scanned_ingress_is_adopted_and_deleted() {
    let _serial = SERIAL.lock().await;
    let (_env, client) = env().await;
    restricted_namespace(&client, "migrate").await;
    create_ingress(&client, "migrate", "web", "migrate.test", json!({})).await;
    let api = scans(&client, "migrate");
    let ran = phase(
        &api,
        "web-ingress",
        ScanPhase::Completed,
        Duration::from_secs(120),
    )
    .await;
    let web = Api::<Ingress>::namespaced(client.clone(), "migrate")
        .get("web")
        .await
        .unwrap();
    let uid = web.uid().unwrap();
    let go: NucleiScan = serde_json::from_value(json!({
        "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
        "kind": "NucleiScan",
        "metadata": {"name": "web-scan", "ownerReferences": [{"apiVersion": "networking.k8s.io/v1",
            "kind": "Ingress", "name": "web", "uid": uid, "controller": true, "blockOwnerDeletion": true}]},
        "spec": {"sourceRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
            "name": "web", "namespace": "migrate", "uid": uid},
            "targets": ["http://migrate.test/"], "schedule": "0 3 * * *"},
    }))
    .unwrap();
    api.create(&PostParams::default(), &go).await.unwrap();
    let note = event(&client, "migrate", "web", "Normal", "Migrated", "web-scan").await;
    assert_eq!(
        note,
        "Adopted the Go operator's scan web-scan: carried its spec fields schedule over to \
         web-ingress, and deleted web-scan."
    );
    eventually(Duration::from_secs(30), "web-scan deleted", || async {
        api.get_opt("web-scan").await.ok()?.is_none().then_some(())
    })
    .await;
    let scan = api.get("web-ingress").await.unwrap();
    assert_eq!(scan.spec.schedule.as_deref(), Some("0 3 * * *"));
    assert_eq!(scan.uid(), ran.uid());
}

/// Issue #15 through the chart: the Gateway API installed while the
/// operator pod runs (its ClusterRole must let it read routes and
/// Gateways), and a route's host scanned by real nuclei with the chart's
/// default templates, target check on.
#[tokio::test]
async fn an_httproute_installed_while_the_operator_runs_is_scanned_with_the_charts_defaults() {
    let _serial = SERIAL.lock().await;
    let (_env, client) = env().await;
    let ns = "routes";
    restricted_namespace(&client, ns).await;
    gateway::install_crds(&client, None).await;
    gateway::create_gateway(
        &client,
        ns,
        "web",
        json!([{"name": "http", "port": 80, "protocol": "HTTP", "hostname": "*.test"}]),
    )
    .await;
    let route = gateway::route(
        "shop",
        &format!("{ns}/web"),
        None,
        &["route.test"],
        &["/"],
        json!({}),
    );
    gateway::create(&client, ns, &route).await.unwrap();
    gateway::set_accepted::<V1>(&client, ns, "shop", true).await;
    let api = scans(&client, ns);
    let scan = phase(
        &api,
        "shop-httproute",
        ScanPhase::Completed,
        Duration::from_secs(120),
    )
    .await;
    assert_eq!(scan.spec.targets, ["http://route.test"]);
    let st = scan.status.as_ref().unwrap();
    let found: BTreeSet<(&str, &str)> = st
        .findings
        .iter()
        .map(|f| (f.template_id.as_str(), f.matched_at.as_str()))
        .collect();
    // The chart's default templates and severity, as for an Ingress.
    assert_eq!(
        found,
        BTreeSet::from([
            ("nuclei-operator-canary", "http://route.test/canary"),
            ("nuclei-operator-other-tag", "http://route.test/canary"),
        ]),
        "{:?}",
        st.findings
    );
}

/// Issue #13 through the chart: the OpenReports CRD installed while the
/// operator pod runs (its ClusterRole must let it write Reports), and a
/// scan with the chart's defaults shows up in a Report, on /metrics (read
/// as the chart's data reader), as an Event on its Ingress, and to the
/// notifier the release's values made.
#[tokio::test]
async fn findings_of_the_charts_defaults_reach_a_report_metrics_and_the_ingress() {
    let _serial = SERIAL.lock().await;
    let (env, client) = env().await;
    let ns = "reports";
    restricted_namespace(&client, ns).await;
    let tools = devcluster::Tools::locate().unwrap();
    support::install_crd(&client, tools.openreports_crd().unwrap()).await;
    create_ingress(&client, ns, "shop", "report.test", json!({})).await;
    let api = scans(&client, ns);
    let scan = phase(
        &api,
        "shop-ingress",
        ScanPhase::Completed,
        Duration::from_secs(120),
    )
    .await;
    // The chart's defaults: two high findings (see the test above).
    assert_eq!(
        scan.status
            .as_ref()
            .unwrap()
            .summary
            .as_ref()
            .unwrap()
            .findings_by_severity
            .get("high"),
        Some(&2)
    );
    let r = report(
        &open_reports(&client, ns),
        "shop-ingress",
        "the scan's Report",
        |r| r["summary"]["fail"] == 2,
    )
    .await;
    let policies: BTreeSet<&str> = r["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["policy"].as_str().unwrap())
        .collect();
    assert_eq!(
        policies,
        BTreeSet::from(["nuclei-operator-canary", "nuclei-operator-other-tag"])
    );
    assert_eq!(r["scope"]["name"], "shop");
    event(
        &client,
        ns,
        "shop",
        "Warning",
        "NewFindings",
        "2 new findings (2 high)",
    )
    .await;
    // The release's notifier (notifications.targets, in the release
    // namespace: every scan) got one message for this run.
    let hook = HOOK.get().unwrap();
    let mine = || {
        hook.got("chart")
            .into_iter()
            .filter(|m| {
                m["scan"]
                    == json!({"namespace": ns, "name": "shop-ingress", "uid": scan.metadata.uid})
            })
            .collect::<Vec<_>>()
    };
    let told = eventually(Duration::from_secs(60), "the notifier told", || async {
        Some(mine()).filter(|m| !m.is_empty())
    })
    .await;
    assert_eq!(
        (&told[0]["newFindings"], &told[0]["newAtMinSeverity"]),
        (&json!(2), &json!(2))
    );
    let ids: BTreeSet<&str> = told[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["templateId"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        BTreeSet::from(["nuclei-operator-canary", "nuclei-operator-other-tag"])
    );
    let metrics = env
        .get("/metrics")
        .await
        .expect("/metrics answers the data reader");
    assert_eq!(
        sample(&metrics, &findings_series(ns, "shop-ingress", "high")),
        Some(2.0),
        "{metrics}"
    );
    assert_eq!(mine().len(), 1, "told once");
}

#[tokio::test]
async fn a_namespace_editor_accepts_a_finding_of_the_charts_defaults_and_it_leaves_the_news_and_metrics()
 {
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
    };
    let _serial = SERIAL.lock().await;
    let (env, client) = env().await;
    let ns = "accepting";
    restricted_namespace(&client, ns).await;
    // Whoever may edit the namespace may accept findings in it: the
    // chart's ClusterRole is aggregated into the built-in `edit`.
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": {"name": "alice-edit", "namespace": ns},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "alice"}]
    }))
    .unwrap();
    Api::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .unwrap();
    let may = |verb: &str| {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some("alice".into()),
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some(ns.into()),
                    verb: Some(verb.into()),
                    group: Some("nuclei.homelab.mortenolsen.pro".into()),
                    resource: Some("nucleifindingexceptions".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let client = client.clone();
        async move {
            let r = Api::<SubjectAccessReview>::all(client)
                .create(&PostParams::default(), &review)
                .await
                .ok()?;
            r.status.map(|s| s.allowed)
        }
    };
    eventually(
        Duration::from_secs(60),
        "an editor may create exceptions",
        || async { (may("create").await == Some(true)).then_some(()) },
    )
    .await;

    // The chart's defaults find two highs on accept.test; the canary is accepted.
    let exceptions: Api<NucleiFindingException> = Api::namespaced(client.clone(), ns);
    let accepted = NucleiFindingException::new(
        "canary",
        NucleiFindingExceptionSpec {
            template_id: "nuclei-operator-canary".into(),
            target: "accept.test".into(),
            reason: "a test page".into(),
            accepted_by: "alice".into(),
            expires: None,
        },
    );
    exceptions
        .create(&PostParams::default(), &accepted)
        .await
        .unwrap();
    create_ingress(&client, ns, "shop", "accept.test", json!({})).await;
    let api = scans(&client, ns);
    phase(
        &api,
        "shop-ingress",
        ScanPhase::Completed,
        Duration::from_secs(120),
    )
    .await;
    let scan = eventually(Duration::from_secs(60), "the canary marked", || async {
        let scan = api.get("shop-ingress").await.ok()?;
        let summary = scan.status.as_ref()?.summary.as_ref()?;
        (summary.suppressed_findings == Some(1)).then_some(scan)
    })
    .await;
    let st = scan.status.as_ref().unwrap();
    let marked: BTreeSet<(&str, &str)> = st
        .findings
        .iter()
        .map(|f| (f.template_id.as_str(), f.suppressed_by.as_str()))
        .collect();
    assert_eq!(
        marked,
        BTreeSet::from([
            ("nuclei-operator-canary", "canary"),
            ("nuclei-operator-other-tag", "")
        ])
    );
    let summary = st.summary.as_ref().unwrap();
    assert_eq!(summary.findings_by_severity.get("high"), Some(&2));
    assert_eq!(summary.suppressed_by_severity.get("high"), Some(&1));
    event(
        &client,
        ns,
        "shop",
        "Warning",
        "NewFindings",
        "1 new finding (1 high)",
    )
    .await;
    let hook = HOOK.get().unwrap();
    let told = eventually(Duration::from_secs(60), "the notifier told", || async {
        let mine: Vec<Value> = hook
            .got("chart")
            .into_iter()
            .filter(|m| m["scan"]["namespace"] == ns)
            .collect();
        Some(mine).filter(|m| !m.is_empty())
    })
    .await;
    assert_eq!(told[0]["newFindings"], 1, "{}", told[0]);
    let ids: Vec<&str> = told[0]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["templateId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["nuclei-operator-other-tag"]);
    eventually(Duration::from_secs(30), "one high counted", || async {
        let metrics = env.get("/metrics").await?;
        (sample(&metrics, &findings_series(ns, "shop-ingress", "high")) == Some(1.0)).then_some(())
    })
    .await;
    let ex = eventually(Duration::from_secs(30), "the exception's count", || async {
        let ex = exceptions.get("canary").await.ok()?;
        (ex.status.as_ref()?.suppressed_findings == Some(1)).then_some(ex)
    })
    .await;
    let active = &ex.status.unwrap().conditions[0];
    assert_eq!(
        (active.type_.as_str(), active.status.as_str()),
        ("Active", "True")
    );
}

#[tokio::test]
async fn scans_disabled_or_deleted_mid_run_free_their_slots_for_the_next_scans() {
    let _serial = SERIAL.lock().await;
    let (env, client) = env().await;
    let ns = "midrun";
    restricted_namespace(&client, ns).await;
    restricted_namespace(&client, "doomed").await;
    let api = scans(&client, ns);
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), ns);

    // Both slots (MAX_CONCURRENT_SCANS=2) taken by scans that would run for
    // half a minute: one Ingress gets `enabled: "false"`, the other is deleted.
    create_ingress(&client, ns, "slow0", "slow0.test", slow_annotations()).await;
    create_ingress(&client, ns, "slow1", "slow1.test", slow_annotations()).await;
    pod_running(&api, "slow0-ingress").await;
    pod_running(&api, "slow1-ingress").await;
    env.step("two slow scans running");
    let disable = json!({"metadata": {"annotations": {format!("{P}enabled"): "false"}}});
    ingresses
        .patch("slow0", &PatchParams::default(), &Patch::Merge(&disable))
        .await
        .unwrap();
    ingresses
        .delete("slow1", &DeleteParams::default())
        .await
        .unwrap();
    let freed = Instant::now();
    eventually(Duration::from_secs(20), "both slots free", || async {
        slots(env).await.is_empty().then_some(())
    })
    .await;
    env.step(&format!(
        "slots freed {:.1}s after disable/delete (the scans would have run {SLOW:?})",
        freed.elapsed().as_secs_f64()
    ));

    // Again with a namespace deleted, and a NucleiScan deleted by hand (its
    // Ingress makes a new one, with a new uid, that runs on its own).
    create_ingress(&client, "doomed", "slow2", "slow2.test", slow_annotations()).await;
    create_ingress(&client, ns, "slow3", "slow3.test", slow_annotations()).await;
    pod_running(&scans(&client, "doomed"), "slow2-ingress").await;
    let old = pod_running(&api, "slow3-ingress").await;
    Api::<Namespace>::all(client.clone())
        .delete("doomed", &DeleteParams::default())
        .await
        .unwrap();
    api.delete("slow3-ingress", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "doomed/slow2's slot free",
        || async { (!slots(env).await.contains("doomed/slow2-ingress")).then_some(()) },
    )
    .await;
    env.step("namespace deleted: its scan's slot freed");
    eventually(
        Duration::from_secs(30),
        "slow3-ingress re-created",
        || async {
            let s = api.get_opt("slow3-ingress").await.ok()??;
            (s.uid() != old.uid()).then_some(())
        },
    )
    .await;
    let again = phase(
        &api,
        "slow3-ingress",
        ScanPhase::Completed,
        Duration::from_secs(120),
    )
    .await;
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{P}scan=slow3-ingress")))
        .await
        .unwrap();
    let owners: Vec<String> = jobs
        .items
        .iter()
        .filter(|j| j.meta().deletion_timestamp.is_none())
        .map(|j| j.owner_references()[0].uid.clone())
        .collect();
    assert_eq!(owners, [again.uid().unwrap()], "one Job, of the new scan");

    // Nothing is held any more: the next scan runs at once.
    create_ingress(&client, ns, "after", "after.test", canary_annotations()).await;
    phase(
        &api,
        "after-ingress",
        ScanPhase::Completed,
        Duration::from_secs(90),
    )
    .await;
    // Each slot is freed as its Job ends, a moment after the scanner wrote.
    eventually(Duration::from_secs(30), "no slot held", || async {
        slots(env).await.is_empty().then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_target_waits_with_bounded_writes_while_a_cron_canary_keeps_its_schedule() {
    let _serial = SERIAL.lock().await;
    let (env, client) = env().await;
    let ns = "unreachable";
    restricted_namespace(&client, ns).await;
    let api = scans(&client, ns);

    // Every write to the unreachable scan, counted by resourceVersion.
    let writes: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    {
        let (api, writes) = (api.clone(), writes.clone());
        let cfg = watcher::Config::default().fields("metadata.name=dead-ingress");
        tokio::spawn(async move {
            let mut events = watcher(api, cfg).applied_objects().boxed();
            while let Some(Ok(scan)) = events.next().await {
                let rv = scan.resource_version().unwrap_or_default();
                let mut w = writes.lock().unwrap();
                if w.last().is_none_or(|(_, last)| *last != rv) {
                    w.push((Instant::now(), rv));
                }
            }
        });
    }
    let start = Instant::now();
    create_ingress(&client, ns, "dead", "dead.test", json!({})).await;
    let mut cron = canary_annotations();
    cron[format!("{P}schedule")] = json!("*/1 * * * *");
    create_ingress(&client, ns, "cron", "cron.test", cron).await;

    // The canary runs, then runs again on the minute, while the other waits.
    let first = phase(
        &api,
        "cron-ingress",
        ScanPhase::Completed,
        Duration::from_secs(60),
    )
    .await;
    let first_run = first.status.unwrap().last_scan_time.unwrap();
    eventually(
        Duration::from_secs(100),
        "the canary's second run",
        || async {
            let s = api.get_opt("cron-ingress").await.ok()??;
            let st = s.status?;
            (st.phase? == ScanPhase::Completed && st.last_scan_time? != first_run).then_some(())
        },
    )
    .await;
    env.step("cron canary ran twice");
    // Count over at least 70 s: checks after 0, ~10, ~30 and ~70 s.
    tokio::time::sleep(Duration::from_secs(70).saturating_sub(start.elapsed())).await;
    let elapsed = start.elapsed();

    let dead = api.get("dead-ingress").await.unwrap();
    let st = dead.status.as_ref().unwrap();
    assert_eq!(st.phase, Some(ScanPhase::Pending));
    let waiting = st
        .conditions
        .iter()
        .find(|c| c.type_ == "WaitingForTargets")
        .expect("WaitingForTargets");
    assert_eq!(waiting.status, "True");
    assert!(
        waiting.message.contains("no target answered"),
        "{}",
        waiting.message
    );
    assert!(
        st.next_scheduled_time.is_some(),
        "shows when it checks again"
    );
    let item: Value = serde_json::from_str(
        &env.get(&format!("/queue/{ns}/dead-ingress"))
            .await
            .expect("in the queue"),
    )
    .unwrap();
    assert_eq!(item["state"], "scheduled", "{item}");
    assert_eq!(item["reason"], "retry", "{item}");
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default().labels(&format!("{P}scan=dead-ingress")))
        .await
        .unwrap();
    assert!(
        jobs.items.is_empty(),
        "no Job for a target that never answered"
    );
    // Writes: created, Pending, then one per check at growing intervals
    // (10 s, 20 s, 40 s, … with BACKOFF_* at the chart's defaults). Before,
    // the same scan was rewritten dozens of times a minute.
    let writes = writes.lock().unwrap().clone();
    let per_minute = writes.len() as f64 / elapsed.as_secs_f64() * 60.0;
    env.step(&format!(
        "unreachable scan: {} writes in {:.0}s",
        writes.len(),
        elapsed.as_secs_f64()
    ));
    assert!(
        writes.len() <= 8,
        "{} writes in {elapsed:?} ({per_minute:.1}/min)",
        writes.len()
    );
}

#[tokio::test]
async fn a_target_that_starts_answering_is_scanned_at_its_next_check() {
    let _serial = SERIAL.lock().await;
    let (env, client) = env().await;
    let ns = "late";
    restricted_namespace(&client, ns).await;
    let api = scans(&client, ns);
    create_ingress(&client, ns, "late", "late.test", canary_annotations()).await;
    // The chart's target check finds nothing listening: no Job, it waits.
    eventually(
        Duration::from_secs(60),
        "WaitingForTargets=True",
        || async {
            let s = api.get_opt("late-ingress").await.ok()??;
            let st = s.status?;
            st.conditions
                .iter()
                .any(|c| c.type_ == "WaitingForTargets" && c.status == "True")
                .then_some(())
        },
    )
    .await;
    let jobs: Api<Job> = Api::namespaced(client.clone(), ns);
    assert!(
        jobs.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    env.step("late.test: waiting for its target");
    // The app comes up; the next check (BACKOFF_INITIAL, 10 s) finds it.
    canary_target(late_ip()).await;
    let done = phase(
        &api,
        "late-ingress",
        ScanPhase::Completed,
        Duration::from_secs(60),
    )
    .await;
    let st = done.status.unwrap();
    assert!(
        !st.conditions.iter().any(|c| c.type_ == "WaitingForTargets"),
        "{:?}",
        st.conditions
    );
    let found: Vec<(&str, &str)> = st
        .findings
        .iter()
        .map(|f| (f.template_id.as_str(), f.matched_at.as_str()))
        .collect();
    assert_eq!(
        found,
        [("nuclei-operator-canary", "http://late.test/canary")]
    );
    assert_eq!(
        jobs.list(&ListParams::default()).await.unwrap().items.len(),
        1
    );
}

#[tokio::test]
async fn a_scanner_pod_that_never_starts_fails_its_run_at_the_start_timeout_and_frees_its_slot() {
    let _serial = SERIAL.lock().await;
    let (env, client) = env().await;
    let ns = "nopull";
    restricted_namespace(&client, ns).await;
    let api = scans(&client, ns);
    let mut ann = canary_annotations();
    ann[format!("{P}scanner-image")] = json!("registry.invalid/missing:1");
    create_ingress(&client, ns, "pull", "pull.test", ann).await;

    // Reported while it waits…
    let waiting = eventually(Duration::from_secs(60), "PodNotStarted", || async {
        let s = api.get_opt("pull-ingress").await.ok()??;
        let c = s
            .status
            .as_ref()?
            .conditions
            .iter()
            .find(|c| c.type_ == "PodNotStarted" && c.status == "True")?
            .clone();
        Some((s, c))
    })
    .await;
    assert_eq!(waiting.1.reason, "ErrImagePull");
    let job = waiting.0.status.unwrap().job_ref.unwrap().name;
    assert!(slots(env).await.contains("nopull/pull-ingress"));
    env.step("scanner pod reported as not starting");

    // …then its run fails at the start timeout, its Job is deleted and its
    // slot freed, long before the Job's own deadline (30m).
    let failed = phase(&api, "pull-ingress", ScanPhase::Failed, START_TIMEOUT * 3).await;
    let st = failed.status.as_ref().unwrap();
    let message = st.last_error.clone().unwrap_or_default();
    assert!(message.contains("did not start within 20s"), "{message}");
    assert!(message.contains("ErrImagePull"), "{message}");
    assert_eq!(st.retry_count, Some(1));
    let jobs = Api::<Job>::namespaced(client.clone(), ns);
    eventually(Duration::from_secs(20), "the Job deleted", || async {
        jobs.get_opt(&job).await.ok()?.is_none().then_some(())
    })
    .await;
    eventually(Duration::from_secs(20), "its slot freed", || async {
        (!slots(env).await.contains("nopull/pull-ingress")).then_some(())
    })
    .await;
    let events = Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let reasons: BTreeSet<String> = events
        .items
        .iter()
        .filter_map(|e| e.reason.clone())
        .collect();
    assert!(reasons.contains("ScanPodNotStarted"), "{reasons:?}");
    // Stop it here: a retry would start another pod that cannot start.
    Api::<Ingress>::namespaced(client.clone(), ns)
        .delete("pull", &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn a_job_the_api_server_refuses_fails_the_scan_with_its_message_and_is_retried_with_backoff()
{
    let _serial = SERIAL.lock().await;
    let (_env, client) = env().await;
    let ns = "refused";
    restricted_namespace(&client, ns).await;
    let api = scans(&client, ns);
    // requests above limits: the API server refuses such a Job (422).
    let scan: NucleiScan = serde_json::from_value(json!({
        "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
        "kind": "NucleiScan",
        "metadata": {"name": "refused"},
        "spec": {
            "sourceRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                          "name": "none", "namespace": ns, "uid": "none"},
            "targets": ["http://refused.test/"],
            "tags": ["canary"],
            "scannerConfig": {"resources": {"requests": {"cpu": "2"}, "limits": {"cpu": "1"}}}
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &scan).await.unwrap();
    let failed = phase(&api, "refused", ScanPhase::Failed, Duration::from_secs(60)).await;
    let st = failed.status.as_ref().unwrap();
    let message = st.last_error.clone().unwrap_or_default();
    assert!(
        message.contains("the API server refused the scan Job")
            && message.contains("must be less than or equal to cpu limit"),
        "{message}"
    );
    assert_eq!(st.retry_count, Some(1));
    assert!(st.last_scan_time.is_some() && st.completion_time.is_some());
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    assert!(jobs.items.is_empty());
    let event = eventually(Duration::from_secs(20), "a ScanFailed Event", || async {
        let events = Api::<Event>::namespaced(client.clone(), ns)
            .list(&ListParams::default())
            .await
            .ok()?;
        events
            .items
            .into_iter()
            .find(|e| e.reason.as_deref() == Some("ScanFailed"))
    })
    .await;
    assert!(
        event
            .message
            .unwrap_or_default()
            .contains("must be less than or equal to cpu limit")
    );
    // Retried after BACKOFF_INITIAL (10 s, shortened by at most 20%), not at once.
    let first = Instant::now();
    eventually(Duration::from_secs(40), "a second attempt", || async {
        let s = api.get_opt("refused").await.ok()??;
        (s.status?.retry_count? == 2).then_some(())
    })
    .await;
    let gap = first.elapsed();
    assert!(gap >= Duration::from_secs(6), "retried after {gap:?}");
    api.delete("refused", &DeleteParams::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn an_api_server_refusing_connections_while_scans_finish_loses_no_findings_and_starts_no_second_job()
 {
    let _serial = SERIAL.lock().await;
    let (env, client) = env().await;
    let ns = "outage";
    restricted_namespace(&client, ns).await;
    let api = scans(&client, ns);
    // The canary finding, and a page that keeps nuclei busy for ~20 s (its
    // request timeout twice), so the scans finish while the API server is down.
    let ann = json!({
        format!("{P}templates"): "canary.yaml,slow.yaml",
        format!("{P}severity"): "high,medium",
    });
    create_ingress(&client, ns, "o1", "slow0.test", ann.clone()).await;
    create_ingress(&client, ns, "o2", "slow1.test", ann).await;
    pod_running(&api, "o1-ingress").await;
    pod_running(&api, "o2-ingress").await;

    env.cluster
        .stop_component(ComponentName::KubeApiserver)
        .await
        .unwrap();
    env.step("kube-apiserver stopped: connections refused");
    tokio::time::sleep(Duration::from_secs(40)).await;
    env.cluster
        .start_component(ComponentName::KubeApiserver)
        .await
        .unwrap();
    env.step("kube-apiserver back after 40s");
    // As in a real cluster, whose controller manager loses its leader lease
    // in such an outage and restarts (devcluster's runs without election;
    // otherwise its Job controller backs off for up to two minutes before
    // it marks the Jobs that finished during the outage complete).
    env.cluster
        .stop_component(ComponentName::KubeControllerManager)
        .await
        .unwrap();
    env.cluster
        .start_component(ComponentName::KubeControllerManager)
        .await
        .unwrap();
    let client = env.cluster.client().await.unwrap();
    let api = scans(&client, ns);
    for name in ["o1-ingress", "o2-ingress"] {
        let scan = phase(&api, name, ScanPhase::Completed, Duration::from_secs(120)).await;
        let ids: Vec<&str> = scan
            .status
            .as_ref()
            .unwrap()
            .findings
            .iter()
            .map(|f| f.template_id.as_str())
            .collect();
        assert_eq!(ids, ["nuclei-operator-canary"], "{name}");
    }
    env.step("both scans Completed with their findings");

    // etcd restarted under the API server: nothing lost either.
    env.cluster
        .stop_component(ComponentName::Etcd)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    env.cluster
        .start_component(ComponentName::Etcd)
        .await
        .unwrap();
    env.step("etcd restarted");

    // The operator leads again (its pod restarted if it lost the Lease) and
    // the slots are free: a new scan runs.
    create_ingress(&client, ns, "o3", "after.test", canary_annotations()).await;
    phase(
        &api,
        "o3-ingress",
        ScanPhase::Completed,
        Duration::from_secs(180),
    )
    .await;
    let jobs = Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap();
    let mut per_scan: Vec<String> = jobs
        .items
        .iter()
        .map(|j| j.labels()[&format!("{P}scan")].clone())
        .collect();
    per_scan.sort();
    assert_eq!(
        per_scan,
        ["o1-ingress", "o2-ingress", "o3-ingress"],
        "one Job each"
    );
    let restarts = env
        .operator_pod()
        .await
        .status
        .and_then(|s| s.container_statuses)
        .map_or(0, |c| c[0].restart_count);
    env.step(&format!("operator container restarts: {restarts}"));
    eventually(Duration::from_secs(60), "no slot held", || async {
        slots(env).await.is_empty().then_some(())
    })
    .await;
}
