//! End-to-end, issue #18 item 6: `/metrics` after one real scan holds exact
//! values, not only names, and a restarted operator counts nothing twice. Its
//! own cluster, so no other test's scans move a count.

mod support;

use std::time::Duration;

use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, PostParams};
use nuclei_operator::api::NucleiScan;
use serde_json::json;
use support::reports::{findings_series, sample};
use support::{Operator, canary_target, cluster, completed, ingress, namespace, target_ip};

const P: &str = "nuclei.homelab.mortenolsen.pro/";
const NS: &str = "counted";
const SCAN: &str = "web-ingress";

/// Every series of `/metrics` named in `want`, with its value.
fn values(metrics: &str, want: &[(&str, f64)]) -> Vec<(String, Option<f64>)> {
    want.iter()
        .map(|(series, _)| (series.to_string(), sample(metrics, series)))
        .collect()
}

fn expected(want: &[(&str, f64)]) -> Vec<(String, Option<f64>)> {
    want.iter()
        .map(|(series, v)| (series.to_string(), Some(*v)))
        .collect()
}

/// Scrapes until `want` holds (the last counts land just after the scan's
/// status); panics with what differs after 30 s.
async fn scrape_until(op: &Operator, what: &str, want: &[(&str, f64)]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let got = values(&op.get("/metrics").await.unwrap_or_default(), want);
        if got == expected(want) {
            return;
        }
        if tokio::time::Instant::now() > deadline {
            let diff: Vec<_> = got
                .iter()
                .zip(expected(want))
                .filter(|(g, w)| **g != *w)
                .map(|(g, w)| format!("{}: {:?}, want {:?}", g.0, g.1, w.1))
                .collect();
            let log = op.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            panic!(
                "{what}:\n{}\n--- operator log, last lines first:\n{}",
                diff.join("\n"),
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test]
async fn one_scan_is_counted_exactly_once_and_a_restart_counts_nothing_twice() {
    let ip = target_ip(1);
    canary_target(ip).await;
    let cluster = cluster(&[("web.test", ip)]).await;
    let client = cluster.client().await.unwrap();
    let env = [("JOB_RATE_LIMIT", "0"), ("DEFAULT_TEMPLATES", "")];
    let mut operator = Operator::start(&cluster, &env).await;
    namespace(&client, NS).await;
    let ann = json!({format!("{P}templates"): "canary.yaml"});
    Api::<Ingress>::namespaced(client.clone(), NS)
        .create(&PostParams::default(), &ingress("web", "web.test", ann))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), NS);
    completed(&scans, SCAN, Duration::from_secs(90)).await;

    let high = findings_series(NS, SCAN, "high");
    let low = findings_series(NS, SCAN, "low");
    let failures =
        format!("nuclei_scan_consecutive_failures{{namespace=\"{NS}\",nucleiscan=\"{SCAN}\"}}");
    // What the state says: the same before and after a restart.
    let state: Vec<(&str, f64)> = vec![
        (&high, 1.0),
        (&low, 0.0),
        (&failures, 0.0),
        ("nuclei_scans{phase=\"Completed\"}", 1.0),
        ("nuclei_scans{phase=\"Pending\"}", 0.0),
        ("nuclei_scans{phase=\"Running\"}", 0.0),
        ("nuclei_scans{phase=\"Failed\"}", 0.0),
        ("nuclei_active_scan_jobs", 0.0),
        // Its rescan waits for RESCAN_AGE; nothing is ready.
        ("nuclei_queue_scheduled", 1.0),
        ("nuclei_queue_depth{reason=\"new_scan\"}", 0.0),
        ("nuclei_queue_depth{reason=\"manual_rescan\"}", 0.0),
        ("nuclei_queue_depth{reason=\"spec_changed\"}", 0.0),
        ("nuclei_queue_depth{reason=\"recovered\"}", 0.0),
        ("nuclei_queue_depth{reason=\"scheduled\"}", 0.0),
        ("nuclei_queue_depth{reason=\"retry\"}", 0.0),
        (
            "nuclei_reconcile_errors_total{controller=\"nucleiscan\",error=\"write_status\"}",
            0.0,
        ),
        (
            "nuclei_reconcile_errors_total{controller=\"ingress\",error=\"apply_scan\"}",
            0.0,
        ),
    ];
    // What this process did: one Job, one completed run, one wait, one duration.
    let counted = |n: f64| -> Vec<(&'static str, f64)> {
        vec![
            ("nuclei_scan_jobs_created_total", n),
            ("nuclei_scan_outcomes_total{outcome=\"completed\"}", n),
            ("nuclei_scan_outcomes_total{outcome=\"failed\"}", 0.0),
            ("nuclei_scan_job_duration_seconds_count", n),
            ("nuclei_queue_wait_seconds_count", n),
        ]
    };
    let mut want = state.clone();
    want.extend(counted(1.0));
    scrape_until(&operator, "one scan counted", &want).await;

    // kill -9 and start again: the finished run is read back, not recounted.
    operator.kill().await;
    let operator = Operator::start(&cluster, &env).await;
    let mut want = state;
    want.extend(counted(0.0));
    scrape_until(&operator, "the restarted operator's counts", &want).await;
    // And it stays so: nothing late counts the old run.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let m = operator.get("/metrics").await.unwrap();
    assert_eq!(values(&m, &want), expected(&want));
}
