//! End-to-end, issue #14: what a run found new is told once. Real scans of
//! a target whose canary page the test switches off and on, notifier
//! Secrets pointing at a local webhook receiver: each notifier that covers
//! the scan gets one message per run with news, in its own shape; a
//! webhook answering 500 is retried; a run with nothing new sends nothing;
//! a restarted operator does not send again; resolved findings reach the
//! notifiers that asked for them; one whose endpoint is gone is given up
//! with an Event, and scanning goes on.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, PostParams};
use nuclei_operator::api::NucleiScan;
use serde_json::json;
use support::notify::{Receiver, notifier};
use support::reports::sample;
use support::{
    Operator, cluster, event, eventually, ingress, namespace, next_run, switchable_target,
    target_ip,
};

const P: &str = "nuclei.homelab.mortenolsen.pro/";
/// The operator's namespace: its notifiers hear of every scan.
const OPS: &str = "nuclei-ops";
/// Notifiers from every namespace.
const OPERATOR_ENV: &[(&str, &str)] = &[
    ("OPERATOR_NAMESPACE", OPS),
    ("NOTIFIERS", "all"),
    ("DEFAULT_TEMPLATES", ""),
    ("JOB_RATE_LIMIT", "0"),
];

/// Waits until the receiver holds `n` messages for `name`.
async fn messages(rx: &Receiver, name: &str, n: usize) -> Vec<serde_json::Value> {
    eventually(
        Duration::from_secs(60),
        &format!("{n} messages to /{name}"),
        || async {
            let got = rx.got(name);
            (got.len() >= n).then_some(got)
        },
    )
    .await
}

#[tokio::test]
async fn new_findings_are_told_once_to_each_notifier_and_a_failing_webhook_is_retried() {
    let on: Arc<AtomicBool> = switchable_target(target_ip(5));
    let cluster = cluster(&[("news.test", target_ip(5))]).await;
    let client = cluster.client().await.unwrap();
    namespace(&client, OPS).await;
    let ns = namespace(&client, "news").await;
    let elsewhere = namespace(&client, "elsewhere").await;
    // The first two attempts to /flaky get a 500.
    let rx = Receiver::start(&[("flaky", 2)]);
    // Each posts to /{its name}. Operator-wide, from its namespace:
    // Slack-shaped. The scan's namespace: a generic webhook that also wants
    // resolved findings, a Teams one, one that fails twice first and one
    // whose endpoint is gone (404: given up at once, with an Event). Not
    // told: another namespace's, and one that only wants criticals.
    let resolved = json!({format!("{P}notify-resolved"): "true"});
    let critical = json!({format!("{P}min-severity"): "critical"});
    for (namespace, name, kind, annotations) in [
        (OPS, "slack", "slack", json!({})),
        (&ns, "hook", "webhook", resolved),
        (&ns, "teams", "teams", json!({})),
        (&ns, "flaky", "webhook", json!({})),
        (&ns, "gone", "webhook", json!({})),
        (&elsewhere, "other", "webhook", json!({})),
        (&ns, "crit", "webhook", critical),
    ] {
        notifier(&client, namespace, name, kind, &rx.url(name), annotations).await;
    }
    // A Secret that is not a valid notifier says why, without its URL.
    notifier(
        &client,
        &ns,
        "bad",
        "discord",
        "https://h.test/s3cret",
        json!({}),
    )
    .await;

    let mut operator = Operator::start(&cluster, OPERATOR_ENV).await;
    let note = event(
        &client,
        &ns,
        "bad",
        "Warning",
        "InvalidNotifier",
        "expected slack, teams or webhook",
    )
    .await;
    assert!(!note.contains("s3cret"), "{note}");

    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ann = json!({format!("{P}templates"): "canary.yaml"});
    ingresses
        .create(&PostParams::default(), &ingress("news", "news.test", ann))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);

    // First run: the canary finding (high) is new.
    let (job, scan) = next_run(&scans, "news-ingress", None, None).await;
    let run = scan
        .status
        .as_ref()
        .unwrap()
        .last_success_time
        .clone()
        .unwrap();
    let text = "nuclei: news/news-ingress: 1 new finding (1 high) \
                (kubectl describe nucleiscan news-ingress -n news)";
    let slack = messages(&rx, "slack", 1).await;
    assert_eq!(slack[0]["text"], text, "{}", slack[0]);
    let listed = slack[0]["blocks"][1]["text"]["text"].as_str().unwrap();
    assert!(
        listed.starts_with("• [high] nuclei-operator-canary: http://news.test"),
        "{listed}"
    );
    let hook = messages(&rx, "hook", 1).await;
    assert_eq!(hook[0]["kind"], "NucleiScanNews");
    assert_eq!(
        (
            &hook[0]["scan"]["name"],
            &hook[0]["newFindings"],
            &hook[0]["resolvedFindings"]
        ),
        (&json!("news-ingress"), &json!(1), &json!(0))
    );
    assert_eq!(
        hook[0]["findings"][0]["templateId"],
        "nuclei-operator-canary"
    );
    assert_eq!(hook[0]["findings"][0]["cveIds"], json!(["CVE-2099-0001"]));
    assert_eq!(
        hook[0]["source"],
        json!({"kind": "Ingress", "name": "news", "namespace": "news"})
    );
    let teams = messages(&rx, "teams", 1).await;
    let card = &teams[0]["attachments"][0]["content"];
    assert_eq!(
        (&teams[0]["type"], &card["body"][0]["text"]),
        (&json!("message"), &json!(text))
    );
    // Two 500s, then taken: three attempts of the same message.
    let flaky = messages(&rx, "flaky", 3).await;
    assert!(flaky.iter().all(|m| *m == flaky[0]), "{flaky:?}");
    // The run is recorded as told, and Events say so where people look.
    eventually(Duration::from_secs(30), "announcedRun", || async {
        let s = scans.get("news-ingress").await.ok()?;
        (s.status?.announced_run.as_ref() == Some(&run)).then_some(())
    })
    .await;
    for name in ["news", "news-ingress"] {
        let note = event(
            &client,
            &ns,
            name,
            "Warning",
            "NewFindings",
            "1 new finding (1 high)",
        )
        .await;
        assert!(
            note.ends_with("kubectl describe nucleiscan news-ingress -n news"),
            "{note}"
        );
    }
    let metrics = operator.get("/metrics").await.unwrap();
    let count = |t: &str, r: &str| {
        sample(
            &metrics,
            &format!("nuclei_notifications_total{{type=\"{t}\",result=\"{r}\"}}"),
        )
    };
    assert_eq!(count("webhook", "delivered"), Some(2.0), "{metrics}");
    assert_eq!(count("webhook", "retried"), Some(2.0));
    assert_eq!(count("slack", "delivered"), Some(1.0));
    assert_eq!(count("teams", "delivered"), Some(1.0));
    assert_eq!(count("webhook", "failed"), Some(1.0));
    let note = event(
        &client,
        &ns,
        "news-ingress",
        "Warning",
        "NotificationFailed",
        "news/gone",
    )
    .await;
    assert!(
        note.ends_with("(webhook) was not told of this run: HTTP 404"),
        "{note}"
    );

    // kill -9 and a new process: the run is not told again.
    operator.kill().await;
    let operator = Operator::start(&cluster, OPERATOR_ENV).await;

    // Second run: the same finding, unchanged: nothing to tell.
    let (job, scan) = next_run(&scans, "news-ingress", Some("1"), Some(&job)).await;
    let st = scan.status.unwrap();
    assert_eq!(st.summary.unwrap().unchanged_findings, Some(1));
    assert_eq!(st.announced_run.as_ref(), Some(&run));

    // Third run: the page is gone, the finding resolved: only the notifier
    // that asked for resolved findings hears of it.
    on.store(false, Ordering::SeqCst);
    let (_, scan) = next_run(&scans, "news-ingress", Some("2"), Some(&job)).await;
    assert_eq!(
        scan.status
            .as_ref()
            .unwrap()
            .summary
            .as_ref()
            .unwrap()
            .resolved_findings,
        Some(1)
    );
    let hook = messages(&rx, "hook", 2).await;
    assert_eq!(
        (&hook[1]["newFindings"], &hook[1]["resolvedFindings"]),
        (&json!(0), &json!(1))
    );
    assert!(
        hook[1]["text"]
            .as_str()
            .unwrap()
            .contains("1 finding resolved"),
        "{}",
        hook[1]
    );
    let run = scan.status.unwrap().last_success_time;
    eventually(
        Duration::from_secs(30),
        "the resolving run recorded",
        || async {
            let s = scans.get("news-ingress").await.ok()?;
            (s.status?.announced_run == run).then_some(())
        },
    )
    .await;
    // By now every message of the three runs is in: one each, three to
    // /flaky, and none where they do not belong.
    for (name, n) in [
        ("slack", 1),
        ("teams", 1),
        ("flaky", 3),
        ("hook", 2),
        ("gone", 1),
        ("other", 0),
        ("crit", 0),
    ] {
        assert_eq!(rx.got(name).len(), n, "/{name}");
    }
    let metrics = operator.get("/metrics").await.unwrap();
    assert_eq!(
        sample(
            &metrics,
            "nuclei_notifications_total{type=\"slack\",result=\"delivered\"}"
        ),
        Some(0.0),
        "the new process sent no Slack message"
    );
    on.store(true, Ordering::SeqCst);
}
