//! End-to-end, issue #14 part 3: a `NucleiFindingException` accepts
//! findings. Real scans of a local canary target: the accepted finding stays
//! in the status marked `suppressedBy`, is left out of the `nuclei_findings`
//! metric, the `NewFindings` Event and notifications, is `skip` in the
//! scan's report, is marked again after
//! each run, and counts again when the exception expires; an exception that
//! would accept everything is reported Invalid; deleting the last one
//! removes every mark.

mod support;

use std::time::Duration;

use chrono::Utc;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use nuclei_operator::api::{
    NucleiFindingException, NucleiFindingExceptionSpec, NucleiScan, Severity,
};
use serde_json::json;
use support::notify::{Receiver, notifier};
use support::reports::{open_reports, report};
use support::{
    Operator, canary_target, cluster, event, eventually, ingress, namespace, next_run, target_ip,
};

const P: &str = "nuclei.homelab.mortenolsen.pro/";
const CANARY: &str = "nuclei-operator-canary";

fn exception(name: &str, template_id: &str, target: &str) -> NucleiFindingException {
    NucleiFindingException::new(
        name,
        NucleiFindingExceptionSpec {
            template_id: template_id.into(),
            target: target.into(),
            reason: "the canary is a test page".into(),
            accepted_by: "security@example.com".into(),
            expires: None,
        },
    )
}

/// The scan's marks: each finding's `suppressedBy`, and the summary's
/// suppressed count and suppressed highs.
async fn marks(scans: &Api<NucleiScan>, name: &str) -> (Vec<String>, Option<i64>, Option<i64>) {
    let scan = scans.get(name).await.unwrap();
    let st = scan.status.unwrap();
    let summary = st.summary.unwrap();
    (
        st.findings.into_iter().map(|f| f.suppressed_by).collect(),
        summary.suppressed_findings,
        summary
            .suppressed_by_severity
            .get(Severity::High.as_str())
            .copied(),
    )
}

async fn wait_marks(
    scans: &Api<NucleiScan>,
    name: &str,
    want: (Vec<String>, Option<i64>, Option<i64>),
) {
    eventually(
        Duration::from_secs(60),
        &format!("{name} marked {want:?}"),
        || async { (marks(scans, name).await == want).then_some(()) },
    )
    .await
}

/// The `nuclei_findings` sample of `scan` at severity high.
async fn highs(operator: &Operator, ns: &str, scan: &str) -> Option<String> {
    let text = operator.get("/metrics").await?;
    let want =
        format!("nuclei_findings{{namespace=\"{ns}\",nucleiscan=\"{scan}\",severity=\"high\"}} ");
    text.lines()
        .find_map(|l| l.strip_prefix(want.as_str()).map(str::to_owned))
}

/// The exception's `Active` condition (status, reason) and its count.
async fn active(
    exceptions: &Api<NucleiFindingException>,
    name: &str,
) -> Option<(String, String, Option<i64>)> {
    let ex = exceptions.get(name).await.ok()?;
    let st = ex.status?;
    let c = st.conditions.iter().find(|c| c.type_ == "Active")?;
    Some((c.status.clone(), c.reason.clone(), st.suppressed_findings))
}

/// Waits until the exception's `Active` condition has `reason`.
async fn turned(
    exceptions: &Api<NucleiFindingException>,
    name: &str,
    reason: &str,
) -> (String, String, Option<i64>) {
    eventually(Duration::from_secs(30), reason, || async {
        active(exceptions, name).await.filter(|a| a.1 == reason)
    })
    .await
}

#[tokio::test]
async fn an_accepted_finding_is_marked_left_out_of_metrics_and_news_and_counts_again_when_the_exception_expires()
 {
    canary_target(target_ip(1)).await;
    let cluster = cluster(&[("accepted.test", target_ip(1)), ("told.test", target_ip(1))]).await;
    let client = cluster.client().await.unwrap();
    let tools = devcluster::Tools::locate().unwrap();
    support::install_crd(&client, tools.openreports_crd().unwrap()).await;
    let ns = namespace(&client, "accepted").await;
    let rx = Receiver::start(&[]);
    notifier(&client, &ns, "hook", "webhook", &rx.url("hook"), json!({})).await;

    // Accepted before the first run: the canary, on accepted.test only.
    let exceptions: Api<NucleiFindingException> = Api::namespaced(client.clone(), &ns);
    exceptions
        .create(
            &PostParams::default(),
            &exception("canary-page", CANARY, "accepted.test"),
        )
        .await
        .unwrap();
    let operator = Operator::start(
        &cluster,
        &[
            ("NOTIFIERS", "all"),
            ("DEFAULT_TEMPLATES", ""),
            ("JOB_RATE_LIMIT", "0"),
        ],
    )
    .await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ann = json!({format!("{P}templates"): "canary.yaml"});
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    ingresses
        .create(
            &PostParams::default(),
            &ingress("accepted", "accepted.test", ann.clone()),
        )
        .await
        .unwrap();
    let (job, _) = next_run(&scans, "accepted-ingress", None, None).await;
    wait_marks(
        &scans,
        "accepted-ingress",
        (vec!["canary-page".into()], Some(1), Some(1)),
    )
    .await;
    let count = eventually(Duration::from_secs(30), "the exception's count", || async {
        active(&exceptions, "canary-page")
            .await
            .filter(|a| a.2 == Some(1))
    })
    .await;
    assert_eq!((count.0.as_str(), count.1.as_str()), ("True", "Active"));
    let scan = scans.get("accepted-ingress").await.unwrap();
    let summary = scan.status.unwrap().summary.unwrap();
    assert_eq!(
        (summary.total_findings, summary.new_findings),
        (1, Some(1)),
        "the finding is still found, and new"
    );
    // The scan's report lists it as skipped, not failed.
    let r = report(
        &open_reports(&client, &ns),
        "accepted-ingress",
        "the report with the finding skipped",
        |r| r["summary"]["skip"] == 1,
    )
    .await;
    assert_eq!(r["summary"]["fail"], 0, "{r}");
    assert_eq!(r["results"][0]["properties"]["suppressedBy"], "canary-page");
    eventually(Duration::from_secs(30), "the metric without it", || async {
        (highs(&operator, &ns, "accepted-ingress").await.as_deref() == Some("0")).then_some(())
    })
    .await;

    // The same finding on a host the exception does not name is told.
    ingresses
        .create(&PostParams::default(), &ingress("told", "told.test", ann))
        .await
        .unwrap();
    next_run(&scans, "told-ingress", None, None).await;
    let told = eventually(
        Duration::from_secs(60),
        "the told scan's message",
        || async {
            let got = rx.got("hook");
            (!got.is_empty()).then_some(got)
        },
    )
    .await;
    wait_marks(
        &scans,
        "told-ingress",
        (vec![String::new()], Some(0), Some(0)),
    )
    .await;
    event(
        &client,
        &ns,
        "told-ingress",
        "Warning",
        "NewFindings",
        "1 new finding",
    )
    .await;
    // By now the accepted scan's run, which finished first, was long
    // announced or left out; and marked scans are not written again.
    let rv = |s: NucleiScan| s.metadata.resource_version;
    let before = rv(scans.get("accepted-ingress").await.unwrap());
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rv(scans.get("accepted-ingress").await.unwrap()), before);
    let got = rx.got("hook");
    assert_eq!(got.len(), 1, "only the told scan's run is told: {got:?}");
    assert_eq!(told[0]["scan"]["name"], "told-ingress", "{}", told[0]);
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), &ns);
    let accepted_news: Vec<_> = events
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some("NewFindings")
                && e.involved_object.name.as_deref() == Some("accepted-ingress")
        })
        .collect();
    assert!(accepted_news.is_empty(), "{accepted_news:?}");

    // The next run writes its findings unmarked; they are marked again.
    next_run(&scans, "accepted-ingress", Some("again"), Some(&job)).await;
    wait_marks(
        &scans,
        "accepted-ingress",
        (vec!["canary-page".into()], Some(1), Some(1)),
    )
    .await;

    // An exception that would accept everything is refused, with an Event.
    exceptions
        .create(&PostParams::default(), &exception("everything", "", "*"))
        .await
        .unwrap();
    let invalid = turned(&exceptions, "everything", "Invalid").await;
    assert_eq!(invalid, ("False".into(), "Invalid".into(), Some(0)));
    event(
        &client,
        &ns,
        "everything",
        "Warning",
        "Invalid",
        "every finding",
    )
    .await;
    wait_marks(
        &scans,
        "told-ingress",
        (vec![String::new()], Some(0), Some(0)),
    )
    .await;

    // One that does not decode (a time zone offset past what a Time can
    // hold) is Invalid, says why once, and is not written again and again.
    let ar = kube::api::ApiResource::erase::<NucleiFindingException>(&());
    let raw: Api<kube::api::DynamicObject> = Api::namespaced_with(client.clone(), &ns, &ar);
    let unreadable: kube::api::DynamicObject = serde_json::from_value(json!({
        "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
        "kind": "NucleiFindingException",
        "metadata": {"name": "unreadable"},
        "spec": {"templateId": CANARY, "reason": "r", "acceptedBy": "a",
                 "expires": "2030-01-01T00:00:00+99:00"}
    }))
    .unwrap();
    raw.create(&PostParams::default(), &unreadable)
        .await
        .unwrap();
    let note = event(
        &client,
        &ns,
        "unreadable",
        "Warning",
        "Invalid",
        "cannot be read",
    )
    .await;
    assert!(note.contains("time zone offset"), "{note}");
    let rv = || async {
        raw.get("unreadable")
            .await
            .unwrap()
            .metadata
            .resource_version
    };
    let written = rv().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rv().await, written, "its status is written once");
    raw.delete("unreadable", &DeleteParams::default())
        .await
        .unwrap();

    // Expiry brings the finding back.
    let soon = Utc::now() + chrono::Duration::seconds(4);
    exceptions
        .patch(
            "canary-page",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"expires": soon.to_rfc3339()}})),
        )
        .await
        .unwrap();
    let expired = turned(&exceptions, "canary-page", "Expired").await;
    assert_eq!(expired, ("False".into(), "Expired".into(), Some(0)));
    event(
        &client,
        &ns,
        "canary-page",
        "Normal",
        "Expired",
        "count again",
    )
    .await;
    wait_marks(
        &scans,
        "accepted-ingress",
        (vec![String::new()], Some(0), Some(0)),
    )
    .await;
    report(
        &open_reports(&client, &ns),
        "accepted-ingress",
        "the report with the finding failed again",
        |r| r["summary"]["skip"] == 0 && r["summary"]["fail"] == 1,
    )
    .await;
    eventually(Duration::from_secs(30), "the metric with it", || async {
        (highs(&operator, &ns, "accepted-ingress").await.as_deref() == Some("1")).then_some(())
    })
    .await;

    // Without exceptions the scans carry no suppression counts at all.
    for name in ["canary-page", "everything"] {
        exceptions
            .delete(name, &DeleteParams::default())
            .await
            .unwrap();
    }
    wait_marks(
        &scans,
        "accepted-ingress",
        (vec![String::new()], None, None),
    )
    .await;
    wait_marks(&scans, "told-ingress", (vec![String::new()], None, None)).await;
}

#[tokio::test]
async fn without_the_exceptions_crd_scans_run_and_the_operator_says_why_nothing_is_accepted() {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    canary_target(target_ip(2)).await;
    let cluster = cluster(&[("plain.test", target_ip(2))]).await;
    let client = cluster.client().await.unwrap();
    // As on a cluster whose CRDs are managed by hand and were not updated.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crds.delete(
        "nucleifindingexceptions.nuclei.homelab.mortenolsen.pro",
        &DeleteParams::default(),
    )
    .await
    .unwrap();
    eventually(Duration::from_secs(30), "the CRD gone", || async {
        crds.get_opt("nucleifindingexceptions.nuclei.homelab.mortenolsen.pro")
            .await
            .ok()?
            .is_none()
            .then_some(())
    })
    .await;
    let ns = namespace(&client, "plain").await;
    let operator = Operator::start(&cluster, &[("DEFAULT_TEMPLATES", "")]).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ann = json!({format!("{P}templates"): "canary.yaml"});
    ingresses
        .create(&PostParams::default(), &ingress("plain", "plain.test", ann))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let (_, scan) = next_run(&scans, "plain-ingress", None, None).await;
    let st = scan.status.unwrap();
    assert_eq!(st.findings.len(), 1);
    assert!(st.findings[0].suppressed_by.is_empty());
    assert_eq!(st.summary.unwrap().suppressed_findings, None);
    let log = operator.log_text();
    assert!(
        log.contains("watching NucleiFindingExceptions"),
        "the operator says why no exception applies: {log}"
    );
}
