//! Stopping one control-plane component and starting it again, as outage tests
//! do: an API server that refuses connections, a restarted etcd. Each test has
//! a cluster of its own, since it breaks it on purpose.

mod common;

use std::time::{Duration, Instant};

use common::{eventually, job_condition, namespace, shell_job};
use devcluster::{ComponentName, Config, DevCluster};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

fn config_map(name: &str) -> ConfigMap {
    serde_json::from_value(json!({"metadata": {"name": name}, "data": {"k": name}})).unwrap()
}

async fn timed<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let started = Instant::now();
    let out = f.await;
    eprintln!("{what} took {:.1}s", started.elapsed().as_secs_f64());
    out
}

#[tokio::test]
async fn a_stopped_api_server_refuses_connections_and_once_started_again_the_cluster_runs_jobs() {
    let c = DevCluster::start(common::config()).await.unwrap();
    let client = c.client().await.unwrap();
    let ns = namespace(&client, "outage", json!({})).await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    cms.create(&PostParams::default(), &config_map("before"))
        .await
        .unwrap();
    // A pod that finishes while the API server is away: its status must still arrive.
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    jobs.create(
        &PostParams::default(),
        &shell_job("across", "sleep 4; echo done", json!({})),
    )
    .await
    .unwrap();
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let pod = eventually(Duration::from_secs(30), "the pod runs", || async {
        let p = pods
            .list(&ListParams::default().labels("job-name=across"))
            .await
            .ok()?
            .items
            .pop()?;
        (p.status.as_ref()?.phase.as_deref() == Some("Running")).then_some(p)
    })
    .await;
    let pod_log = c.container_log(&ns, pod.metadata.name.as_deref().unwrap(), "main");
    let pod_done = || std::fs::read_to_string(&pod_log).is_ok_and(|s| s.contains("done"));

    let log = c.dir().join("logs/kube-apiserver.log");
    let first_run = std::fs::read_to_string(&log).unwrap();
    timed(
        "stopping kube-apiserver",
        c.stop_component(ComponentName::KubeApiserver),
    )
    .await
    .unwrap();
    assert!(
        !pod_done(),
        "the pod must still run when the API server is gone"
    );
    let refused = std::net::TcpStream::connect(("127.0.0.1", c.api_port())).unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    assert!(cms.get("before").await.is_err());
    let twice = c
        .stop_component(ComponentName::KubeApiserver)
        .await
        .unwrap_err();
    assert!(
        format!("{twice:#}").contains("kube-apiserver is already stopped"),
        "{twice:#}"
    );
    eventually(
        Duration::from_secs(10),
        "the pod finishes during the outage",
        || async { pod_done().then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.check().unwrap();

    timed(
        "starting kube-apiserver",
        c.start_component(ComponentName::KubeApiserver),
    )
    .await
    .unwrap();
    let twice = c
        .start_component(ComponentName::KubeApiserver)
        .await
        .unwrap_err();
    assert!(
        format!("{twice:#}").contains("kube-apiserver is already running"),
        "{twice:#}"
    );
    let both_runs = std::fs::read_to_string(&log).unwrap();
    assert!(
        both_runs.starts_with(&first_run) && both_runs.len() > first_run.len(),
        "the restarted API server must append to its log"
    );
    let before = cms.get("before").await.unwrap();
    assert_eq!(before.data.unwrap()["k"], "before");
    let (cond, _) = eventually(
        Duration::from_secs(30),
        "the job that ran across the outage completes",
        || job_condition(&jobs, "across"),
    )
    .await;
    assert_eq!(cond, "Complete");

    // The controller manager too: the Job below needs it and the kubelet.
    c.stop_component(ComponentName::KubeControllerManager)
        .await
        .unwrap();
    timed(
        "starting kube-controller-manager",
        c.start_component(ComponentName::KubeControllerManager),
    )
    .await
    .unwrap();
    jobs.create(
        &PostParams::default(),
        &shell_job("after", "exit 0", json!({})),
    )
    .await
    .unwrap();
    let (cond, _) = eventually(
        Duration::from_secs(30),
        "a job created after the restart completes",
        || job_condition(&jobs, "after"),
    )
    .await;
    assert_eq!(cond, "Complete");
    c.check().unwrap();
}

#[tokio::test]
async fn etcd_restarted_under_a_running_api_server_keeps_its_objects_and_takes_new_writes() {
    let c = DevCluster::start(Config {
        no_kubelet: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let client = c.client().await.unwrap();
    let ns = namespace(&client, "etcd-restart", json!({})).await;
    let cms: Api<ConfigMap> = Api::namespaced(client, &ns);
    cms.create(&PostParams::default(), &config_map("before"))
        .await
        .unwrap();

    timed("stopping etcd", c.stop_component(ComponentName::Etcd))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.check().unwrap();
    timed("starting etcd", c.start_component(ComponentName::Etcd))
        .await
        .unwrap();

    let before = cms.get("before").await.unwrap();
    assert_eq!(before.data.unwrap()["k"], "before");
    cms.create(&PostParams::default(), &config_map("after"))
        .await
        .unwrap();
    c.check().unwrap();

    // The restarted etcd is supervised like the first: dying on its own is reported.
    let pattern = format!("data-dir={}", c.dir().join("etcd").display());
    let st = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &pattern])
        .status()
        .unwrap();
    assert!(st.success(), "etcd process not found");
    eventually(Duration::from_secs(10), "check() reports etcd", || async {
        c.check()
            .err()
            .filter(|e| format!("{e:#}").contains("etcd exited"))
    })
    .await;
}
