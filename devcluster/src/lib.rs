//! A local Kubernetes control plane for tests, load tests and the demo.
//!
//! [`DevCluster::start`] runs a real etcd, kube-apiserver and kube-controller-manager
//! (built from their Go modules by `devcluster/tools/build.sh`) on free loopback
//! ports, plus a process kubelet ([`kubelet`]) that runs pods as local processes.
//! Everything runs on a dedicated thread with its own runtime, so one cluster can
//! be shared by many `#[tokio::test]`s, and every child process dies with that
//! thread (parent-death signal), even when a test binary crashes.

pub mod certs;
pub mod kubelet;
pub mod process;
pub mod tools;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Node, ServiceAccount};
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::sync::oneshot;

pub use kubelet::ImageMapping;
use process::{Component, free_port};
pub use tools::Tools;

/// Name of the single node the process kubelet registers.
pub const NODE_NAME: &str = "devcluster-node";

/// How to start a cluster.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Image → local command mappings for the process kubelet.
    pub images: Vec<ImageMapping>,
    /// Host names that resolve to loopback inside pods (private `/etc/hosts`):
    /// `name` (127.0.0.1) or `name=127.0.0.7`.
    pub hosts: Vec<String>,
    /// Directory for state (certs, etcd data, logs, pods). A fresh temporary
    /// directory, removed on drop, when `None`.
    pub state_dir: Option<PathBuf>,
    /// Do not run the process kubelet (control plane only).
    pub no_kubelet: bool,
    /// Binaries to run; the build script's cache when `None`.
    pub tools: Option<Tools>,
}

/// What a running cluster tells its users.
#[derive(Clone, Debug)]
pub struct Endpoints {
    pub api_port: u16,
    pub dir: PathBuf,
    pub kubeconfig: PathBuf,
}

/// A running dev cluster. Stopped (all processes ended) on drop.
pub struct DevCluster {
    endpoints: Endpoints,
    images: Arc<RwLock<Vec<ImageMapping>>>,
    failure: Arc<Mutex<Option<String>>>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _tempdir: Option<tempfile::TempDir>,
}

impl DevCluster {
    /// Starts etcd, kube-apiserver, kube-controller-manager and the process
    /// kubelet, and returns once the API server is ready, the controllers have
    /// created the `default` ServiceAccount and the node is registered.
    pub async fn start(config: Config) -> Result<DevCluster> {
        let tools = match &config.tools {
            Some(t) => t.clone(),
            None => Tools::locate()?,
        };
        for p in [
            &tools.etcd,
            &tools.kube_apiserver,
            &tools.kube_controller_manager,
        ] {
            tools.require(p)?;
        }
        let (tempdir, dir) = match &config.state_dir {
            Some(d) => {
                std::fs::create_dir_all(d)?;
                (None, d.clone())
            }
            None => {
                let t = tempfile::Builder::new().prefix("devcluster-").tempdir()?;
                let d = t.path().to_owned();
                (Some(t), d)
            }
        };
        let images = Arc::new(RwLock::new(config.images.clone()));
        let failure = Arc::new(Mutex::new(None));
        let (ready_tx, ready_rx) = oneshot::channel();
        let (shutdown_tx, shutdown_rx) = oneshot::channel();
        let thread = {
            let (dir, images, failure) = (dir.clone(), images.clone(), failure.clone());
            std::thread::Builder::new()
                .name("devcluster".into())
                .spawn(move || {
                    let rt = match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt,
                        Err(e) => {
                            let _ = ready_tx.send(Err(anyhow!(e)));
                            return;
                        }
                    };
                    rt.block_on(run(
                        config,
                        tools,
                        dir,
                        images,
                        failure,
                        ready_tx,
                        shutdown_rx,
                    ));
                })?
        };
        let endpoints = ready_rx
            .await
            .map_err(|_| anyhow!("devcluster thread ended during start-up"))??;
        Ok(DevCluster {
            endpoints,
            images,
            failure,
            shutdown: Some(shutdown_tx),
            thread: Some(thread),
            _tempdir: tempdir,
        })
    }

    /// The admin kubeconfig file (client certificate in `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.endpoints.kubeconfig
    }

    /// The state directory: `logs/`, `pods/`, `pki/`, `etcd/`.
    pub fn dir(&self) -> &Path {
        &self.endpoints.dir
    }

    /// Port of the API server on 127.0.0.1.
    pub fn api_port(&self) -> u16 {
        self.endpoints.api_port
    }

    /// An admin client, bound to the caller's runtime.
    pub async fn client(&self) -> Result<kube::Client> {
        admin_client(&self.endpoints.kubeconfig).await
    }

    /// Adds an image mapping for pods started from now on.
    pub fn add_image(&self, mapping: ImageMapping) {
        self.images.write().expect("images lock").push(mapping);
    }

    /// The log file of a container run by the process kubelet.
    pub fn container_log(&self, namespace: &str, pod: &str, container: &str) -> PathBuf {
        kubelet::container_log(&self.endpoints.dir.join("pods"), namespace, pod, container)
    }

    /// Errors if a component died since start-up (the message names it and its log).
    pub fn check(&self) -> Result<()> {
        match self.failure.lock().expect("failure lock").as_ref() {
            Some(f) => bail!("{f}"),
            None => Ok(()),
        }
    }

    /// Stops every process and waits for them to end.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for DevCluster {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// A client from an admin kubeconfig file.
pub async fn admin_client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

struct Ports {
    etcd_client: u16,
    etcd_peer: u16,
    api: u16,
    kcm: u16,
}

impl Ports {
    fn pick() -> Result<Ports> {
        Ok(Ports {
            etcd_client: free_port()?,
            etcd_peer: free_port()?,
            api: free_port()?,
            kcm: free_port()?,
        })
    }
}

async fn run(
    config: Config,
    tools: Tools,
    dir: PathBuf,
    images: Arc<RwLock<Vec<ImageMapping>>>,
    failure: Arc<Mutex<Option<String>>>,
    ready: oneshot::Sender<Result<Endpoints>>,
    shutdown: oneshot::Receiver<()>,
) {
    let started = Instant::now();
    let mut attempt = 0;
    let (mut components, endpoints, client) = loop {
        attempt += 1;
        match start_control_plane(&tools, &dir).await {
            Ok(ok) => break ok,
            // Another cluster may grab a port between our probe and the bind.
            Err((e, true)) if attempt < 3 => {
                tracing::warn!("devcluster: port conflict, retrying: {e:#}");
            }
            Err((e, _)) => {
                let _ = ready.send(Err(e));
                return;
            }
        }
    };
    let kubelet = if config.no_kubelet {
        None
    } else {
        let kcfg = kubelet::KubeletConfig {
            node_name: NODE_NAME.to_string(),
            api_port: endpoints.api_port,
            pods_dir: dir.join("pods"),
            hosts: config.hosts.clone(),
            images: images.clone(),
        };
        match kubelet::Kubelet::start(client.clone(), kcfg).await {
            Ok(k) => Some(k),
            Err(e) => {
                let _ = ready.send(Err(e.context("starting the process kubelet")));
                return;
            }
        }
    };
    tracing::info!(
        "devcluster ready in {:.1}s (API on 127.0.0.1:{})",
        started.elapsed().as_secs_f64(),
        endpoints.api_port
    );
    let _ = ready.send(Ok(endpoints));

    // Supervise until asked to stop: a dying component is recorded, not hidden.
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for c in components.iter_mut() {
                    if let Err(e) = c.check_alive() {
                        let mut f = failure.lock().expect("failure lock");
                        if f.is_none() {
                            tracing::error!("{e:#}");
                            *f = Some(format!("{e:#}"));
                        }
                    }
                }
            }
        }
    }
    if let Some(k) = kubelet {
        k.shutdown().await;
    }
    for c in components.iter_mut().rev() {
        c.stop(Duration::from_secs(5)).await;
    }
}

type StartError = (anyhow::Error, bool);

async fn start_control_plane(
    tools: &Tools,
    dir: &Path,
) -> std::result::Result<(Vec<Component>, Endpoints, kube::Client), StartError> {
    let fatal = |e: anyhow::Error| (e, false);
    let ports = Ports::pick().map_err(fatal)?;
    let logs = dir.join("logs");
    std::fs::create_dir_all(&logs).map_err(|e| fatal(e.into()))?;
    let pki = certs::generate(&dir.join("pki")).map_err(fatal)?;
    let etcd_dir = dir.join("etcd");
    let _ = std::fs::remove_dir_all(&etcd_dir);
    let mut components = Vec::new();

    let etcd_url = format!("http://127.0.0.1:{}", ports.etcd_client);
    let peer_url = format!("http://127.0.0.1:{}", ports.etcd_peer);
    let etcd = Component::spawn(
        "etcd",
        &tools.etcd,
        &[
            "--name=devcluster".into(),
            format!("--data-dir={}", etcd_dir.display()),
            format!("--listen-client-urls={etcd_url}"),
            format!("--advertise-client-urls={etcd_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster=devcluster={peer_url}"),
            // A throw-away test store: durability buys nothing and costs seconds.
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ],
        &logs.join("etcd.log"),
    )
    .map_err(fatal)?;
    components.push(etcd);
    wait_until(
        &mut components,
        Duration::from_secs(30),
        "etcd /health",
        || http_ok(ports.etcd_client, "/health"),
    )
    .await?;

    let p = |p: &Path| p.display().to_string();
    let apiserver = Component::spawn(
        "kube-apiserver",
        &tools.kube_apiserver,
        &[
            format!("--etcd-servers={etcd_url}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", ports.api),
            format!("--cert-dir={}", p(&dir.join("pki"))),
            format!("--tls-cert-file={}", p(&pki.serving_cert)),
            format!("--tls-private-key-file={}", p(&pki.serving_key)),
            format!("--client-ca-file={}", p(&pki.ca_cert)),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", p(&pki.sa_pub)),
            format!("--service-account-signing-key-file={}", p(&pki.sa_key)),
            "--authorization-mode=RBAC".into(),
            "--allow-privileged=true".into(),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            // There is no kube-proxy: pods reach the API server on loopback and
            // the kubernetes Service's endpoints would only be a loopback address,
            // which the API rejects.
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ],
        &logs.join("kube-apiserver.log"),
    )
    .map_err(fatal)?;
    components.push(apiserver);

    let kubeconfig = dir.join("admin.kubeconfig");
    write_kubeconfig(&kubeconfig, ports.api, &pki).map_err(fatal)?;
    let client = admin_client(&kubeconfig).await.map_err(fatal)?;
    {
        let client = client.clone();
        wait_until(
            &mut components,
            Duration::from_secs(60),
            "kube-apiserver /readyz",
            move || {
                let client = client.clone();
                async move {
                    let req = http::Request::get("/readyz").body(Vec::new()).ok()?;
                    client
                        .request_text(req)
                        .await
                        .ok()
                        .filter(|t| t.trim() == "ok")
                }
            },
        )
        .await?;
    }

    let kcm = Component::spawn(
        "kube-controller-manager",
        &tools.kube_controller_manager,
        &[
            format!("--kubeconfig={}", p(&kubeconfig)),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", ports.kcm),
            "--leader-elect=false".into(),
            format!("--root-ca-file={}", p(&pki.ca_cert)),
            format!("--service-account-private-key-file={}", p(&pki.sa_key)),
            "--controllers=job-controller,garbage-collector-controller,ttl-after-finished-controller,namespace-controller,deployment-controller,replicaset-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,cronjob-controller,pod-garbage-collector-controller".into(),
            "--profiling=false".into(),
        ],
        &logs.join("kube-controller-manager.log"),
    )
    .map_err(fatal)?;
    components.push(kcm);
    {
        let client = client.clone();
        wait_until(
            &mut components,
            Duration::from_secs(60),
            "kube-controller-manager (default ServiceAccount and kube-root-ca.crt)",
            move || {
                let client = client.clone();
                async move {
                    let sa = Api::<ServiceAccount>::namespaced(client.clone(), "default");
                    let cm = Api::<ConfigMap>::namespaced(client, "default");
                    sa.get_opt("default").await.ok()??;
                    cm.get_opt("kube-root-ca.crt").await.ok()??;
                    Some(())
                }
            },
        )
        .await?;
    }
    // Touch the Namespace API once so a broken RBAC/admin setup fails here, loudly.
    Api::<Namespace>::all(client.clone())
        .get("default")
        .await
        .map_err(|e| fatal(anyhow!("admin client cannot read namespaces: {e}")))?;
    let _ = Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &kubelet::node_object(NODE_NAME))
        .await;

    Ok((
        components,
        Endpoints {
            api_port: ports.api,
            dir: dir.to_owned(),
            kubeconfig,
        },
        client,
    ))
}

/// Polls `probe` until it yields `Some`, failing early (and naming the
/// component and its log) when a component dies.
async fn wait_until<T, F, Fut>(
    components: &mut [Component],
    timeout: Duration,
    what: &str,
    mut probe: F,
) -> std::result::Result<T, StartError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        for c in components.iter_mut() {
            if let Err(e) = c.check_alive() {
                let conflict = c.port_conflict();
                return Err((e, conflict));
            }
        }
        if Instant::now() > deadline {
            let logs: Vec<String> = components
                .iter()
                .map(|c| format!("{}: {}", c.name, c.log.display()))
                .collect();
            return Err((
                anyhow!(
                    "timed out after {timeout:?} waiting for {what}; logs: {}",
                    logs.join(", ")
                ),
                false,
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A plain-HTTP GET on loopback that answers whether the status was 200.
async fn http_ok(port: u16, path: &str) -> Option<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    buf.starts_with(b"HTTP/1.0 200")
        .then_some(())
        .or(buf.starts_with(b"HTTP/1.1 200").then_some(()))
}

fn write_kubeconfig(path: &Path, port: u16, pki: &certs::Pki) -> Result<()> {
    let kc = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "devcluster", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority": pki.ca_cert,
        }}],
        "users": [{"name": "admin", "user": {
            "client-certificate": pki.admin_cert,
            "client-key": pki.admin_key,
        }}],
        "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": "admin"}}],
        "current-context": "devcluster",
    });
    std::fs::write(path, serde_yaml::to_string(&kc)?)?;
    Ok(())
}

/// For tests against the cluster: polls `f` every 100 ms until it returns
/// `Some`, panicking with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` from `127.0.0.1:port` over HTTP/1.0 (the operator's health,
/// queue and metrics endpoints): `Some(body)` on a 200 within 5 s.
pub async fn http_get(port: u16, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        (head.split(' ').nth(1) == Some("200")).then(|| body.to_string())
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}
