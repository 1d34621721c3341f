//! Bad set-up ends in a clear error naming the component and its log, never a hang.

use std::time::{Duration, Instant};

use devcluster::{Config, DevCluster, Tools};

#[tokio::test]
async fn a_missing_tool_names_the_binary_and_the_build_script() {
    let mut tools = Tools::locate().unwrap();
    tools.kube_apiserver = "/nonexistent/kube-apiserver".into();
    let err = DevCluster::start(Config {
        tools: Some(tools),
        no_kubelet: true,
        ..Default::default()
    })
    .await
    .err()
    .expect("start must fail");
    let text = format!("{err:#}");
    assert!(
        text.contains("/nonexistent/kube-apiserver is missing"),
        "{text}"
    );
    assert!(text.contains("tools/build.sh"), "{text}");
}

#[tokio::test]
async fn a_component_that_cannot_start_is_named_with_its_log() {
    let mut tools = Tools::locate().unwrap();
    // `false` exits at once: the API server "dies" during start-up.
    tools.kube_apiserver = "/bin/false".into();
    let started = Instant::now();
    let err = DevCluster::start(Config {
        tools: Some(tools),
        no_kubelet: true,
        ..Default::default()
    })
    .await
    .err()
    .expect("start must fail");
    let text = format!("{err:#}");
    assert!(text.contains("kube-apiserver exited"), "{text}");
    assert!(text.contains("kube-apiserver.log"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_component_dying_later_is_reported_by_check() {
    let cluster = DevCluster::start(Config {
        no_kubelet: true,
        ..Default::default()
    })
    .await
    .unwrap();
    cluster.check().unwrap();
    let pattern = format!("data-dir={}", cluster.dir().join("etcd").display());
    let st = std::process::Command::new("pkill")
        .args(["-KILL", "-f", &pattern])
        .status()
        .unwrap();
    assert!(st.success(), "etcd process not found");
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        if let Err(e) = cluster.check() {
            break e;
        }
        assert!(Instant::now() < deadline, "death of etcd not reported");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let text = format!("{err:#}");
    assert!(
        text.contains("etcd exited") && text.contains("etcd.log"),
        "{text}"
    );
}
