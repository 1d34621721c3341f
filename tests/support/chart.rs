//! The operator as users run it: installed with the real `helm` from the
//! chart into a devcluster, as a pod under the chart's ServiceAccount, with
//! the chart's defaults (target check on, JSON logs, leader election).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Instant;

use devcluster::{Config, DevCluster, Tools};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

use super::{operator_image, repo};

/// Release name; the chart names its objects after it (it contains the chart name).
pub const RELEASE: &str = "nuclei-operator";
/// Name of the chart's objects (Deployment, ServiceAccount, ClusterRole, …).
pub const FULLNAME: &str = "nuclei-operator";
/// Label every object of the release carries.
pub const RELEASE_SELECTOR: &str = "app.kubernetes.io/instance=nuclei-operator";
/// Namespace of the release.
pub const RELEASE_NS: &str = "nuclei-system";

/// A cluster (without the CRD: the chart installs it) and the helm that
/// installs into it.
pub struct Chart {
    pub cluster: DevCluster,
    pub client: kube::Client,
    pub helm: PathBuf,
    /// The operator's HTTP port (pods share the host network).
    pub port: u16,
    pub started: Instant,
    /// Prefix of the progress lines.
    pub name: &'static str,
}

impl Chart {
    /// A cluster whose pods resolve each `host=ip` entry.
    pub async fn start(name: &'static str, hosts: Vec<String>) -> Chart {
        let started = Instant::now();
        let cluster = DevCluster::start(Config {
            images: vec![operator_image(&repo().join("testdata/templates"))],
            hosts,
            ..Default::default()
        })
        .await
        .expect("devcluster starts");
        let client = cluster.client().await.unwrap();
        let tools = Tools::locate().unwrap();
        let helm = tools.require(&tools.helm).unwrap().to_owned();
        let port = std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let chart = Chart {
            cluster,
            client,
            helm,
            port,
            started,
            name,
        };
        chart.step("devcluster up");
        chart
    }

    pub fn step(&self, what: &str) {
        eprintln!(
            "[{}] {:>6.1}s  {what}",
            self.name,
            self.started.elapsed().as_secs_f64()
        );
    }

    /// Runs helm against the cluster (its own config, cache and data
    /// directories); panics with helm's output when it fails.
    pub async fn helm(&self, args: &[&str]) -> String {
        let home = self.cluster.dir().join("helm");
        let out = tokio::process::Command::new(&self.helm)
            .args(args)
            .env("KUBECONFIG", self.cluster.kubeconfig())
            .env("HELM_CONFIG_HOME", home.join("config"))
            .env("HELM_CACHE_HOME", home.join("cache"))
            .env("HELM_DATA_HOME", home.join("data"))
            .output()
            .await
            .expect("helm runs");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "helm {args:?} failed ({}):\n{}{stdout}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `helm install --wait` with the chart's defaults, except what a
    /// devcluster needs (the image, a free port) and `values` (more `--set`
    /// / `--set-json` arguments).
    pub async fn install(&self, values: &[&str]) {
        let chart = repo().join("deploy/helm/nuclei-operator");
        let port = self.port.to_string();
        let http_port = format!("http.port={port}");
        let service_port = format!("service.port={port}");
        let mut args = vec![
            "install",
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            RELEASE_NS,
            "--create-namespace",
            "--wait",
            "--timeout",
            "3m",
            "--set",
            "image.repository=nuclei-operator",
            "--set",
            "image.tag=e2e",
            "--set",
            &http_port,
            "--set",
            &service_port,
            // The test targets listen on loopback, which the chart's target
            // policy refuses by default.
            "--set-json",
            r#"targets.allowCidrs=["127.0.0.0/8"]"#,
        ];
        args.extend_from_slice(values);
        self.helm(&args).await;
        self.step("helm install --wait returned");
    }

    /// The one pod of the release's Deployment.
    pub async fn operator_pod(&self) -> Pod {
        // A client of the caller's runtime: tests may share one Chart.
        let client = self.cluster.client().await.unwrap();
        let pods: Api<Pod> = Api::namespaced(client, RELEASE_NS);
        let list = pods
            .list(&ListParams::default().labels(RELEASE_SELECTOR))
            .await
            .unwrap();
        assert_eq!(list.items.len(), 1, "one operator pod");
        list.items.into_iter().next().unwrap()
    }

    /// GET on the operator's HTTP server; `Some(body)` on 200.
    pub async fn get(&self, path: &str) -> Option<String> {
        devcluster::http_get(self.port, path).await
    }

    /// The `/queue` page as JSON.
    pub async fn queue(&self) -> serde_json::Value {
        let body = self.get("/queue").await.expect("/queue answers");
        serde_json::from_str(&body).unwrap()
    }

    /// Prints the tail of every container log when the test fails.
    pub fn dump_logs_on_panic(&self) {
        if !std::thread::panicking() {
            return;
        }
        let pods = self.cluster.dir().join("pods");
        for ns in std::fs::read_dir(&pods).into_iter().flatten().flatten() {
            for pod in std::fs::read_dir(ns.path()).into_iter().flatten().flatten() {
                for f in std::fs::read_dir(pod.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    let path = f.path();
                    if path.extension().is_some_and(|e| e == "log") {
                        let text = std::fs::read_to_string(&path).unwrap_or_default();
                        let lines: Vec<&str> = text.lines().collect();
                        let tail = &lines[lines.len().saturating_sub(40)..];
                        eprintln!("--- {}\n{}", path.display(), tail.join("\n"));
                    }
                }
            }
        }
    }
}

impl Drop for Chart {
    fn drop(&mut self) {
        self.dump_logs_on_panic();
    }
}

/// Creates a namespace that enforces the "restricted" Pod Security Standard.
pub async fn restricted_namespace(client: &kube::Client, name: &str) {
    let ns: Namespace = serde_json::from_value(json!({"metadata": {
        "name": name,
        "labels": {"pod-security.kubernetes.io/enforce": "restricted"},
    }}))
    .unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
}
