//! End-to-end, issue #13: findings where people already look. Real scans
//! of the canary target, then: the per-scan series on /metrics, the policy
//! reports (the projects' own CRDs, installed while the operator runs), and
//! a Warning Event on the Ingress and the scan; each follows the next run and goes with
//! the scan.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use nuclei_operator::api::NucleiScan;
use serde_json::json;
use support::monitoring::{monitoring_metric_names, render_monitoring};
use support::reports::{findings_series, open_reports, policy_reports, report, sample};
use support::{
    Operator, canary_annotations, canary_target, cluster, completed, event, eventually, ingress,
    install_crd, namespace, next_run, switchable_target, target_ip,
};
use tokio::sync::OnceCell;

const P: &str = "nuclei.homelab.mortenolsen.pro/";

struct Env {
    cluster: devcluster::DevCluster,
    operator: Operator,
}

static ENV: OnceCell<Env> = OnceCell::const_new();

/// Where `flip.test` goes: a target whose canary page a test switches off
/// and on.
fn flip_ip() -> std::net::Ipv4Addr {
    target_ip(4)
}

static FLIP: std::sync::OnceLock<Arc<AtomicBool>> = std::sync::OnceLock::new();

/// One operator, started before any report CRD exists.
async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        FLIP.get_or_init(|| switchable_target(flip_ip()));
        let ip = target_ip(1);
        canary_target(ip).await;
        let cluster = cluster(&[("canary.test", ip), ("flip.test", flip_ip())]).await;
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
async fn findings_reach_metrics_reports_and_the_ingress_and_follow_each_run() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let tools = devcluster::Tools::locate().unwrap();
    let ns = namespace(&client, "findings").await;
    // Only the Policy WG's API at first: `auto` falls back to it.
    install_crd(&client, tools.policyreport_crd().unwrap()).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    ingresses
        .create(
            &PostParams::default(),
            &ingress("shop", "canary.test", canary_annotations()),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let scan = completed(&scans, "shop-ingress", Duration::from_secs(90)).await;
    let scan_uid = scan.metadata.uid.clone().unwrap();
    let first = scan.status.clone().unwrap();
    let first_success = first
        .last_success_time
        .clone()
        .expect("lastSuccessTime set");

    // The PolicyReport of the run.
    let policy_reports = policy_reports(&client, &ns);
    let pr = report(
        &policy_reports,
        "shop-ingress",
        "PolicyReport of the first run",
        |r| r["summary"]["fail"] == 1,
    )
    .await;
    assert_eq!(pr["scope"]["kind"], "Ingress");
    assert_eq!(pr["scope"]["name"], "shop");
    assert_eq!(
        pr["metadata"]["ownerReferences"][0]["uid"],
        scan_uid.as_str()
    );
    let results = pr["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{pr}");
    let r = &results[0];
    assert_eq!(
        (
            &r["policy"],
            &r["rule"],
            &r["severity"],
            &r["result"],
            &r["source"]
        ),
        (
            &json!("nuclei-operator-canary"),
            &json!("canary-page"),
            &json!("high"),
            &json!("fail"),
            &json!("nuclei")
        ),
    );
    assert_eq!(r["properties"]["matchedAt"], "http://canary.test/canary");
    assert_eq!(r["properties"]["cve"], "CVE-2099-0001");
    let result_id = r["properties"]["resultID"].clone();
    assert!(result_id.as_str().is_some_and(|s| s.len() == 16), "{r}");

    // The Ingress hears of its high finding.
    let note = event(
        &client,
        &ns,
        "shop",
        "Warning",
        "NewFindings",
        "1 new finding (1 high)",
    )
    .await;
    assert!(
        note.contains("kubectl describe nucleiscan shop-ingress -n findings"),
        "{note}"
    );
    // No notifier here: the Event alone told of the run, and it is recorded
    // so that a restart does not tell it again.
    eventually(Duration::from_secs(30), "announcedRun", || async {
        let s = scans.get("shop-ingress").await.ok()?.status?;
        (s.announced_run.as_ref() == Some(&first_success)).then_some(())
    })
    .await;

    // /metrics: the run's counts, by severity, and when it succeeded.
    let text = metrics_where(e, &findings_series(&ns, "shop-ingress", "high"), Some(1.0)).await;
    let count = |severity: &str| sample(&text, &findings_series(&ns, "shop-ingress", severity));
    for severity in ["critical", "medium", "low", "info", "unknown"] {
        assert_eq!(count(severity), Some(0.0), "{severity}");
    }
    let labels = format!("{{namespace=\"{ns}\",nucleiscan=\"shop-ingress\"}}");
    assert_eq!(
        sample(
            &text,
            &format!("nuclei_scan_last_success_timestamp_seconds{labels}")
        ),
        Some(first_success.0.as_millisecond() as f64 / 1000.0)
    );
    assert_eq!(
        sample(&text, &format!("nuclei_scan_consecutive_failures{labels}")),
        Some(0.0)
    );
    assert!(sample(&text, "nuclei_scans{phase=\"Completed\"}").is_some_and(|n| n >= 1.0));

    // OpenReports appears: the writer switches to it, without a restart, and
    // writes the run the scan already has.
    install_crd(&client, tools.openreports_crd().unwrap()).await;
    let open_reports = open_reports(&client, &ns);
    let report_1 = report(
        &open_reports,
        "shop-ingress",
        "Report of the first run",
        |r| r["summary"]["fail"] == 1,
    )
    .await;
    assert_eq!(report_1["source"], "nuclei");
    assert_eq!(report_1["results"], pr["results"]);
    // The PolicyReport, stale from now on, goes.
    eventually(
        Duration::from_secs(30),
        "the PolicyReport deleted",
        || async { matches!(policy_reports.get_opt("shop-ingress").await, Ok(None)).then_some(()) },
    )
    .await;

    // A rescan that finds less: only low-severity templates now (the
    // canary page matches one).
    let mut annotations = canary_annotations();
    annotations[format!("{P}severity")] = json!("low");
    ingresses
        .patch(
            "shop",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
        )
        .await
        .unwrap();
    let second = eventually(Duration::from_secs(90), "the rescan completed", || async {
        let s = scans.get("shop-ingress").await.ok()?.status?;
        (s.last_success_time.as_ref() != Some(&first_success)).then_some(s)
    })
    .await;
    let summary = second.summary.unwrap();
    assert_eq!(summary.total_findings, 1);
    assert_eq!(summary.findings_by_severity.get("low"), Some(&1));
    let report_2 = report(
        &open_reports,
        "shop-ingress",
        "Report of the second run",
        |r| {
            r["metadata"]["annotations"]["nuclei.homelab.mortenolsen.pro/run"]
                != report_1["metadata"]["annotations"]["nuclei.homelab.mortenolsen.pro/run"]
        },
    )
    .await;
    assert_eq!(
        report_2["summary"],
        json!({"pass": 0, "fail": 0, "warn": 1, "error": 0, "skip": 0})
    );
    let results = report_2["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{report_2}");
    assert_eq!(
        (
            &results[0]["policy"],
            &results[0]["severity"],
            &results[0]["result"]
        ),
        (
            &json!("nuclei-operator-canary-low"),
            &json!("low"),
            &json!("warn")
        )
    );
    let text = metrics_where(e, &findings_series(&ns, "shop-ingress", "low"), Some(1.0)).await;
    assert_eq!(
        sample(&text, &findings_series(&ns, "shop-ingress", "high")),
        Some(0.0),
        "{text}"
    );
    // Only a new low finding (below NEW_FINDINGS_SEVERITY's high): the
    // Ingress and the scan heard of the first run only.
    let told: Vec<String> =
        Api::<k8s_openapi::api::core::v1::Event>::namespaced(client.clone(), &ns)
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some("NewFindings"))
            .map(|e| e.message.unwrap_or_default())
            .collect();
    assert_eq!(told.len(), 2, "{told:?}");
    assert!(
        told.iter().all(|m| m.starts_with("1 new finding (1 high)")),
        "{told:?}"
    );

    // The reports go with the scan.
    ingresses
        .delete("shop", &DeleteParams::default())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(60),
        "the scan and its reports deleted",
        || async {
            let gone = |r: Result<Option<DynamicObject>, _>| matches!(r, Ok(None));
            (scans.get_opt("shop-ingress").await.ok()?.is_none()
                && gone(open_reports.get_opt("shop-ingress").await)
                && gone(policy_reports.get_opt("shop-ingress").await))
            .then_some(())
        },
    )
    .await;
    metrics_where(e, &findings_series(&ns, "shop-ingress", "high"), None).await;
}

/// /metrics once the operator's cache shows `series` at `value` (`None`:
/// absent).
async fn metrics_where(e: &Env, series: &str, value: Option<f64>) -> String {
    eventually(
        Duration::from_secs(30),
        &format!("{series} at {value:?} on /metrics"),
        || async {
            let text = e.operator.get("/metrics").await?;
            (sample(&text, series) == value).then_some(text)
        },
    )
    .await
}

#[tokio::test]
async fn every_metric_the_alerts_and_the_dashboard_read_is_on_metrics() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "dashboard").await;
    let mut annotations = canary_annotations();
    annotations[format!("{P}schedule")] = json!("0 3 * * *");
    Api::<Ingress>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &ingress("blog", "canary.test", annotations),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    completed(&scans, "blog-ingress", Duration::from_secs(90)).await;
    eventually(
        Duration::from_secs(30),
        "the next run scheduled",
        || async {
            scans
                .get("blog-ingress")
                .await
                .ok()?
                .status?
                .next_scheduled_time
                .map(|_| ())
        },
    )
    .await;
    let next_run = format!(
        "nuclei_scan_next_run_timestamp_seconds{{namespace=\"{ns}\",nucleiscan=\"blog-ingress\"}}"
    );
    let text = eventually(
        Duration::from_secs(30),
        "the next run on /metrics",
        || async {
            let text = e.operator.get("/metrics").await?;
            sample(&text, &next_run).map(|_| text)
        },
    )
    .await;
    let (rules, dashboard) = render_monitoring().unwrap();
    let names = monitoring_metric_names(&rules, &dashboard).unwrap();
    assert!(names.len() >= 10, "{names:?}");
    let mut missing = Vec::new();
    for name in &names {
        let sampled = text.lines().any(|l| {
            l.strip_prefix(name.as_str())
                .is_some_and(|rest| rest.starts_with(['{', ' ']))
        });
        if !sampled {
            missing.push(name.clone());
        }
    }
    assert!(
        missing.is_empty(),
        "read by the chart's rules or dashboard but not on /metrics: {missing:?}\n{text}"
    );
}

/// After the next run (the first, or the one `rescan` asks for): its Job,
/// the summary's (new, unchanged, resolved) and the stored findings'
/// (fingerprint, firstSeen).
async fn run(
    scans: &Api<NucleiScan>,
    rescan: Option<&str>,
    before: Option<&str>,
) -> (String, (i64, i64, i64), Vec<(String, Time)>) {
    let (job, s) = next_run(scans, "flip-ingress", rescan, before).await;
    let st = s.status.unwrap();
    let sum = st.summary.unwrap();
    let counts = (
        sum.new_findings.expect("newFindings"),
        sum.unchanged_findings.expect("unchangedFindings"),
        sum.resolved_findings.expect("resolvedFindings"),
    );
    let found = st
        .findings
        .into_iter()
        .map(|f| (f.fingerprint, f.first_seen.expect("firstSeen")))
        .collect();
    (job, counts, found)
}

#[tokio::test]
async fn each_run_says_which_findings_are_new_unchanged_or_resolved() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "changes").await;
    let on = FLIP.get().unwrap();
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ann = json!({format!("{P}templates"): "canary.yaml"});
    ingresses
        .create(&PostParams::default(), &ingress("flip", "flip.test", ann))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    // First run: the canary finding is new.
    let (job, counts, first) = run(&scans, None, None).await;
    assert_eq!(counts, (1, 0, 0));
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].0.len(), 16, "{first:?}");
    // Again: the same finding, same fingerprint, first seen back then.
    let (job, counts, second) = run(&scans, Some("1"), Some(&job)).await;
    assert_eq!(counts, (0, 1, 0));
    assert_eq!(second, first);
    // The target stops exposing it: resolved.
    on.store(false, Ordering::SeqCst);
    let (job, counts, third) = run(&scans, Some("2"), Some(&job)).await;
    assert_eq!(counts, (0, 0, 1));
    assert!(third.is_empty());
    // It comes back: new again, with the same fingerprint and a later
    // firstSeen.
    on.store(true, Ordering::SeqCst);
    let (_, counts, fourth) = run(&scans, Some("3"), Some(&job)).await;
    assert_eq!(counts, (1, 0, 0));
    assert_eq!(fourth[0].0, first[0].0);
    assert!(fourth[0].1.0 > first[0].1.0, "{fourth:?} after {first:?}");
}
