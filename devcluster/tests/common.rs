//! Shared helpers for devcluster's end-to-end tests: one cluster per test binary.

#![allow(dead_code)]

use std::time::Instant;

pub use devcluster::eventually;
use devcluster::{Config, DevCluster, ImageMapping};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

static CLUSTER: OnceCell<DevCluster> = OnceCell::const_new();

/// The cluster shared by every test in this binary; `local/sh` runs `/bin/sh`.
pub async fn cluster() -> &'static DevCluster {
    CLUSTER
        .get_or_init(|| async {
            let started = Instant::now();
            let c = DevCluster::start(config())
                .await
                .expect("devcluster starts");
            eprintln!("devcluster up in {:.1}s", started.elapsed().as_secs_f64());
            c
        })
        .await
}

/// The shared cluster's configuration, for tests that need a cluster of their own.
pub fn config() -> Config {
    Config {
        images: vec![ImageMapping {
            image: "local/sh".into(),
            entrypoint: vec!["/bin/sh".into()],
            ..Default::default()
        }],
        hosts: vec!["canary.devcluster.test".into()],
        ..Default::default()
    }
}

/// A fresh namespace (optionally labelled) for one test.
pub async fn namespace(client: &kube::Client, name: &str, labels: serde_json::Value) -> String {
    let ns: Namespace = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels}
    }))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace created");
    name.to_string()
}

/// A Job running `script` with `/bin/sh -c` once (no retries), with `extra`
/// merged into it.
pub fn shell_job(name: &str, script: &str, extra: serde_json::Value) -> Job {
    let mut job = json!({
        "metadata": {"name": name},
        "spec": {
            "backoffLimit": 0,
            "template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 2,
                "containers": [{"name": "main", "image": "local/sh:1", "args": ["-c", script]}],
            }},
        },
    });
    merge(&mut job, extra);
    serde_json::from_value(job).unwrap()
}

fn merge(a: &mut serde_json::Value, b: serde_json::Value) {
    match (a, b) {
        (serde_json::Value::Object(a), serde_json::Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(serde_json::Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

/// The Job's finished condition, `(Complete | Failed, reason)`, once it has one.
pub async fn job_condition(jobs: &Api<Job>, name: &str) -> Option<(String, String)> {
    let job = jobs.get_opt(name).await.ok()??;
    job.status?.conditions?.into_iter().find_map(|c| {
        (matches!(c.type_.as_str(), "Complete" | "Failed") && c.status == "True")
            .then(|| (c.type_, c.reason.unwrap_or_default()))
    })
}
