//! Shared helpers for devcluster's end-to-end tests: one cluster per test binary.

#![allow(dead_code)]

use std::time::Instant;

pub use devcluster::eventually;
use devcluster::{Config, DevCluster, ImageMapping};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};
use tokio::sync::OnceCell;

static CLUSTER: OnceCell<DevCluster> = OnceCell::const_new();

/// The cluster shared by every test in this binary; `local/sh` runs `/bin/sh`.
pub async fn cluster() -> &'static DevCluster {
    CLUSTER
        .get_or_init(|| async {
            let started = Instant::now();
            let c = DevCluster::start(Config {
                images: vec![ImageMapping {
                    image: "local/sh".into(),
                    entrypoint: vec!["/bin/sh".into()],
                    ..Default::default()
                }],
                hosts: vec!["canary.devcluster.test".into()],
                ..Default::default()
            })
            .await
            .expect("devcluster starts");
            eprintln!("devcluster up in {:.1}s", started.elapsed().as_secs_f64());
            c
        })
        .await
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
