//! End-to-end, issue #12 item 5: while the API server refuses connections,
//! the operator's watches wait between attempts instead of retrying at once
//! (kube-runtime's controllers back off their trigger streams, the other
//! watches use `default_backoff`), so an outage is not a busy loop; and the
//! operator carries on when the API server is back.

mod support;

use std::time::Duration;

use devcluster::ComponentName;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, PostParams};
use nuclei_operator::api::NucleiScan;
use support::{Operator, canary_target, cluster, completed, ingress, namespace, target_ip};

/// CPU time (user + system) the process `pid` has used so far.
fn cpu(pid: i32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // USER_HZ is 100 on Linux.
    Duration::from_millis(ticks * 10)
}

#[tokio::test]
async fn an_api_server_outage_costs_the_operator_almost_no_cpu_and_it_carries_on_after() {
    let ip = target_ip(1);
    canary_target(ip).await;
    let cluster = cluster(&[("outage.test", ip)]).await;
    let client = cluster.client().await.unwrap();
    let ns = namespace(&client, "outage").await;
    let operator = Operator::start(&cluster, &[("DEFAULT_TEMPLATES", "canary.yaml")]).await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    ingresses
        .create(
            &PostParams::default(),
            &ingress("a", "outage.test", serde_json::json!({})),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    completed(&scans, "a-ingress", Duration::from_secs(90)).await;

    cluster
        .stop_component(ComponentName::KubeApiserver)
        .await
        .unwrap();
    // Let the watches notice, then measure a quiet stretch of the outage.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let outage = Duration::from_secs(10);
    let before = cpu(operator.pid);
    tokio::time::sleep(outage).await;
    let used = cpu(operator.pid) - before;
    cluster
        .start_component(ComponentName::KubeApiserver)
        .await
        .unwrap();
    // Retrying every watch at once keeps a core busy; with backoff the
    // operator sleeps between attempts.
    assert!(
        used < outage / 10,
        "the operator used {used:?} of CPU in a {outage:?} outage"
    );

    // Back: a new Ingress is scanned.
    let client = cluster.client().await.unwrap();
    Api::<Ingress>::namespaced(client.clone(), &ns)
        .create(
            &PostParams::default(),
            &ingress("b", "outage.test", serde_json::json!({})),
        )
        .await
        .unwrap();
    completed(
        &Api::namespaced(client, &ns),
        "b-ingress",
        Duration::from_secs(120),
    )
    .await;
}
