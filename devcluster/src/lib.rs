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
use tokio::sync::{mpsc, oneshot};

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

/// A control-plane process that [`DevCluster::stop_component`] can stop and
/// [`DevCluster::start_component`] start again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComponentName {
    Etcd,
    KubeApiserver,
    KubeControllerManager,
}

impl ComponentName {
    /// The process name, as in log file names and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            ComponentName::Etcd => "etcd",
            ComponentName::KubeApiserver => "kube-apiserver",
            ComponentName::KubeControllerManager => "kube-controller-manager",
        }
    }
}

impl std::fmt::Display for ComponentName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A request to the devcluster thread, answered on the oneshot.
enum Control {
    Stop(ComponentName),
    Start(ComponentName),
}

type ControlRequest = (Control, oneshot::Sender<Result<()>>);

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
    /// Closed to stop the cluster.
    control: Option<mpsc::UnboundedSender<ControlRequest>>,
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
        let (control_tx, control_rx) = mpsc::unbounded_channel();
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
                        config, tools, dir, images, failure, ready_tx, control_rx,
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
            control: Some(control_tx),
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

    /// Stops one component (SIGTERM, SIGKILL after 5 s) and waits for it to
    /// exit; its port then refuses connections. [`DevCluster::check`] does not
    /// count a component stopped this way as failed. Errors if it is not running.
    pub async fn stop_component(&self, which: ComponentName) -> Result<()> {
        self.control(Control::Stop(which)).await
    }

    /// Starts a component stopped by [`DevCluster::stop_component`] again, with
    /// the same arguments, ports and data (etcd keeps its objects), appending to
    /// its log, and returns once it is ready: the API server's `/readyz`, etcd's
    /// `/health` (and the API server's `/readyz` if it runs), the controller
    /// manager's `/healthz`. Errors if it is already running.
    pub async fn start_component(&self, which: ComponentName) -> Result<()> {
        self.control(Control::Start(which)).await
    }

    async fn control(&self, request: Control) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.control
            .as_ref()
            .and_then(|c| c.send((request, tx)).ok())
            .ok_or_else(|| anyhow!("the devcluster thread has ended"))?;
        rx.await
            .map_err(|_| anyhow!("the devcluster thread ended before answering"))?
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
        self.control = None;
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

/// How long a stopping component gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Clone, Copy)]
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
    mut control: mpsc::UnboundedReceiver<ControlRequest>,
) {
    let started = Instant::now();
    let mut attempt = 0;
    let (mut plane, endpoints) = loop {
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
        match kubelet::Kubelet::start(plane.client.clone(), kcfg).await {
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
    loop {
        tokio::select! {
            request = control.recv() => match request {
                Some((request, reply)) => {
                    let _ = reply.send(plane.control(request).await);
                }
                // The handle was stopped or dropped.
                None => break,
            },
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for c in plane.components.iter_mut() {
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
    for c in plane.components.iter_mut().rev() {
        let _ = c.stop(STOP_GRACE).await;
    }
}

/// The control-plane processes (etcd, kube-apiserver, kube-controller-manager,
/// in start order) and what it takes to probe them.
struct ControlPlane {
    components: Vec<Component>,
    client: kube::Client,
    ports: Ports,
}

impl ControlPlane {
    async fn control(&mut self, request: Control) -> Result<()> {
        match request {
            Control::Stop(which) => {
                let started = Instant::now();
                self.component(which).stop(STOP_GRACE).await?;
                tracing::info!(
                    "devcluster: {which} stopped in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            }
            Control::Start(which) => {
                let started = Instant::now();
                self.start(which)
                    .await
                    .with_context(|| format!("starting {which} again"))?;
                tracing::info!(
                    "devcluster: {which} ready again in {:.1}s",
                    started.elapsed().as_secs_f64()
                );
                Ok(())
            }
        }
    }

    fn component(&mut self, which: ComponentName) -> &mut Component {
        self.components
            .iter_mut()
            .find(|c| c.name == which.as_str())
            .expect("every ComponentName is started")
    }

    async fn start(&mut self, which: ComponentName) -> Result<()> {
        self.component(which).restart()?;
        let (ports, client) = (self.ports, self.client.clone());
        match which {
            ComponentName::Etcd => {
                wait_until(
                    &mut self.components,
                    Duration::from_secs(30),
                    "etcd /health",
                    || http_ok(ports.etcd_client, "/health"),
                )
                .await
                .map_err(|(e, _)| e)?;
                if self.component(ComponentName::KubeApiserver).is_running() {
                    wait_api_ready(&mut self.components, &client)
                        .await
                        .map_err(|(e, _)| e)?;
                }
            }
            ComponentName::KubeApiserver => {
                wait_api_ready(&mut self.components, &client)
                    .await
                    .map_err(|(e, _)| e)?;
            }
            ComponentName::KubeControllerManager => {
                // Anonymous and unverified: the controller manager serves /healthz
                // to anyone, with a self-signed certificate.
                let mut config =
                    kube::Config::new(format!("https://127.0.0.1:{}", ports.kcm).parse()?);
                config.accept_invalid_certs = true;
                let kcm = kube::Client::try_from(config)?;
                wait_until(
                    &mut self.components,
                    Duration::from_secs(60),
                    "kube-controller-manager /healthz",
                    || text_ok(&kcm, "/healthz"),
                )
                .await
                .map_err(|(e, _)| e)?;
            }
        }
        Ok(())
    }
}

/// Waits until the API server's `/readyz` answers `ok` to the admin client.
async fn wait_api_ready(
    components: &mut [Component],
    client: &kube::Client,
) -> std::result::Result<(), StartError> {
    wait_until(
        components,
        Duration::from_secs(60),
        "kube-apiserver /readyz",
        || text_ok(client, "/readyz"),
    )
    .await
}

/// Whether `GET path` answers exactly `ok`.
async fn text_ok(client: &kube::Client, path: &str) -> Option<()> {
    let req = http::Request::get(path).body(Vec::new()).ok()?;
    let text = client.request_text(req).await.ok()?;
    (text.trim() == "ok").then_some(())
}

type StartError = (anyhow::Error, bool);

async fn start_control_plane(
    tools: &Tools,
    dir: &Path,
) -> std::result::Result<(ControlPlane, Endpoints), StartError> {
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
            // On SIGTERM, end open watches after 1 s rather than wait for the
            // 60 s server shutdown timeout, so a stopped API server goes at once.
            "--shutdown-watch-termination-grace-period=1s".into(),
            "--profiling=false".into(),
        ],
        &logs.join("kube-apiserver.log"),
    )
    .map_err(fatal)?;
    components.push(apiserver);

    let kubeconfig = dir.join("admin.kubeconfig");
    write_kubeconfig(&kubeconfig, ports.api, &pki).map_err(fatal)?;
    let client = admin_client(&kubeconfig).await.map_err(fatal)?;
    wait_api_ready(&mut components, &client).await?;

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
            "--controllers=job-controller,garbage-collector-controller,ttl-after-finished-controller,namespace-controller,deployment-controller,replicaset-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,cronjob-controller,pod-garbage-collector-controller,clusterrole-aggregation-controller".into(),
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
        ControlPlane {
            components,
            client,
            ports,
        },
        Endpoints {
            api_port: ports.api,
            dir: dir.to_owned(),
            kubeconfig,
        },
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
    match http_request(port, path, None).await? {
        (200, body) => Some(body),
        _ => None,
    }
}

/// `GET path` from `127.0.0.1:port` over HTTP/1.0, with
/// `Authorization: Bearer <token>` when given: the status and the body,
/// `None` when nothing answered within 5 s.
pub async fn http_request(port: u16, path: &str, token: Option<&str>) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let fetch = async {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let (head, body) = text.split_once("\r\n\r\n")?;
        let status = head.split(' ').nth(1)?.parse().ok()?;
        Some((status, body.to_string()))
    };
    tokio::time::timeout(Duration::from_secs(5), fetch)
        .await
        .ok()
        .flatten()
}
