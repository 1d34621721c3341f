//! The operator as users run it: installed with the real `helm` from the
//! chart into a devcluster, as a pod under the chart's ServiceAccount, with
//! the chart's defaults (target check on, JSON logs, leader election).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use devcluster::{Config, DevCluster, Tools};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::authorization::v1::SubjectAccessReview;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use tokio::sync::OnceCell;

use super::{operator_image, repo};

/// Release name; the chart names its objects after it (it contains the chart name).
pub const RELEASE: &str = "nuclei-operator";
/// Name of the chart's objects (Deployment, ServiceAccount, ClusterRole, …).
pub const FULLNAME: &str = "nuclei-operator";
/// Label every object of the release carries.
pub const RELEASE_SELECTOR: &str = "app.kubernetes.io/instance=nuclei-operator";
/// Namespace of the release.
pub const RELEASE_NS: &str = "nuclei-system";
/// The chart's ClusterRole that grants reading /metrics and /queue.
pub const DATA_READER: &str = "nuclei-operator-data-reader";
/// The ServiceAccount (in [`RELEASE_NS`]) and ClusterRoleBinding to
/// [`DATA_READER`] through which [`Chart::get`] reads the data endpoints.
pub const TEST_READER: &str = "e2e-data-reader";

/// A cluster (without the CRD: the chart installs it) and the helm that
/// installs into it.
pub struct Chart {
    pub cluster: DevCluster,
    pub client: kube::Client,
    pub helm: PathBuf,
    /// The operator's data port, /metrics and /queue (pods share the host
    /// network).
    pub port: u16,
    /// The operator's health port, /healthz and /readyz.
    pub health_port: u16,
    pub started: Instant,
    /// Prefix of the progress lines.
    pub name: &'static str,
    /// A token of [`TEST_READER`], made on first use.
    reader_token: OnceCell<String>,
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
        // Both held while asking, so they differ.
        let bind = || std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        let (data, health) = (bind(), bind());
        let chart = Chart {
            cluster,
            client,
            helm,
            port: data.local_addr().unwrap().port(),
            health_port: health.local_addr().unwrap().port(),
            started,
            name,
            reader_token: OnceCell::new(),
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

    /// `helm install --wait` of this repository's chart with its defaults,
    /// except what a devcluster needs (the image, free ports) and `values`
    /// (more `--set` / `--set-json` arguments).
    pub async fn install(&self, values: &[&str]) {
        self.release(
            "install",
            &repo().join("deploy/helm/nuclei-operator"),
            values,
        )
        .await;
    }

    /// `helm install` (`verb`) or `helm upgrade` of `chart` (a directory or
    /// a packaged `.tgz`), `--wait`, with the same devcluster values as
    /// [`install`](Self::install).
    pub async fn release(&self, verb: &str, chart: &std::path::Path, values: &[&str]) {
        let port = self.port.to_string();
        let http_port = format!("http.port={port}");
        let service_port = format!("service.port={port}");
        let health_port = format!("health.port={}", self.health_port);
        let mut args = vec![
            verb,
            RELEASE,
            chart.to_str().unwrap(),
            "--namespace",
            RELEASE_NS,
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
            "--set",
            &health_port,
        ];
        if verb == "install" {
            args.push("--create-namespace");
        }
        args.extend_from_slice(values);
        self.helm(&args).await;
        self.step(&format!("helm {verb} --wait returned"));
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

    /// GET a data path (/queue, /metrics) as [`TEST_READER`], the way a
    /// user bound to the chart's data-reader ClusterRole reads it;
    /// `Some(body)` on 200.
    pub async fn get(&self, path: &str) -> Option<String> {
        let token = self.reader_token().await;
        match self.request(self.port, path, Some(&token)).await? {
            (200, body) => Some(body),
            _ => None,
        }
    }

    /// GET a health path (/healthz, /readyz), without a token; `Some(body)`
    /// on 200.
    pub async fn health(&self, path: &str) -> Option<String> {
        devcluster::http_get(self.health_port, path).await
    }

    /// GET `path` on `port` (the operator's [`port`](Self::port) or
    /// [`health_port`](Self::health_port)), with a bearer token when given:
    /// status and body.
    pub async fn request(
        &self,
        port: u16,
        path: &str,
        token: Option<&str>,
    ) -> Option<(u16, String)> {
        devcluster::http_request(port, path, token).await
    }

    /// A token of [`TEST_READER`]: on first use, creates that
    /// ServiceAccount, binds it to the chart's [`DATA_READER`] ClusterRole
    /// and waits until the API server allows it `get` on /queue (so the
    /// operator's first review of it is not a 403 it would cache).
    pub async fn reader_token(&self) -> String {
        self.reader_token
            .get_or_init(|| async {
                let client = self.cluster.client().await.unwrap();
                let token = account_token(&client, RELEASE_NS, TEST_READER).await;
                let binding: ClusterRoleBinding = serde_json::from_value(json!({
                    "metadata": {"name": TEST_READER},
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io",
                                "kind": "ClusterRole", "name": DATA_READER},
                    "subjects": [{"kind": "ServiceAccount", "name": TEST_READER,
                                  "namespace": RELEASE_NS}],
                }))
                .unwrap();
                Api::<ClusterRoleBinding>::all(client.clone())
                    .patch(
                        TEST_READER,
                        &PatchParams::apply("e2e").force(),
                        &Patch::Apply(&binding),
                    )
                    .await
                    .unwrap();
                let user = format!("system:serviceaccount:{RELEASE_NS}:{TEST_READER}");
                super::eventually(
                    Duration::from_secs(30),
                    "the data-reader binding in force",
                    || may_get(&client, &user, "/queue"),
                )
                .await;
                token
            })
            .await
            .clone()
    }

    /// The `/queue` page as JSON (read as [`TEST_READER`]).
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

/// Creates (or keeps) the ServiceAccount `namespace/name` and returns a
/// token of it, as `kubectl create token` does (TokenRequest, 2 h).
pub async fn account_token(client: &kube::Client, namespace: &str, name: &str) -> String {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    let account: ServiceAccount =
        serde_json::from_value(json!({"metadata": {"name": name}})).unwrap();
    accounts
        .patch(
            name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&account),
        )
        .await
        .unwrap();
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 7200}}))
            .unwrap();
    let granted: TokenRequest = accounts
        .create_subresource("token", name, &PostParams::default(), &request)
        .await
        .unwrap();
    granted.status.and_then(|s| s.token).expect("a token")
}

/// Whether the API server lets `user` (a ServiceAccount's user name, with
/// the ServiceAccount groups) `get` the non-resource URL `path`; `Some(())`
/// when it does.
pub async fn may_get(client: &kube::Client, user: &str, path: &str) -> Option<()> {
    let review: SubjectAccessReview = serde_json::from_value(json!({"spec": {
        "user": user,
        "groups": ["system:serviceaccounts", "system:authenticated"],
        "nonResourceAttributes": {"path": path, "verb": "get"},
    }}))
    .unwrap();
    let review = Api::<SubjectAccessReview>::all(client.clone())
        .create(&PostParams::default(), &review)
        .await
        .ok()?;
    review.status?.allowed.then_some(())
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
