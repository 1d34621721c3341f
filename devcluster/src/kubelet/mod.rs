//! The process kubelet: plays the one node of a dev cluster. It binds pending
//! pods to its node (there is no scheduler), runs their containers as local
//! processes (see `run`) with the volumes, env and service-account token a real
//! kubelet would give them, and reports pod status so the real Job and
//! ReplicaSet controllers see what they expect.

mod plan;
mod run;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use futures::StreamExt;
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, ContainerState, ContainerStateRunning, ContainerStateTerminated,
    ContainerStateWaiting, ContainerStatus, Node, Pod, PodCondition, Secret, ServiceAccount,
    Volume,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::{mpsc, watch};

pub use plan::{ImageMapping, image_repository};
use run::{ContainerRun, Mount};

/// Settings of the process kubelet.
#[derive(Clone, Debug)]
pub struct KubeletConfig {
    pub node_name: String,
    pub api_port: u16,
    pub pods_dir: PathBuf,
    pub hosts: Vec<String>,
    pub images: Arc<RwLock<Vec<ImageMapping>>>,
}

/// A running process kubelet.
pub struct Kubelet {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

/// Where a container's stdout/stderr go.
pub fn container_log(pods_dir: &Path, namespace: &str, pod: &str, container: &str) -> PathBuf {
    pods_dir
        .join(namespace)
        .join(pod)
        .join(format!("{container}.log"))
}

/// The Node object the kubelet registers.
pub fn node_object(name: &str) -> Node {
    serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux"}},
    }))
    .expect("static node")
}

fn now() -> Time {
    Time(Timestamp::now())
}

impl Kubelet {
    /// Marks the node Ready and starts watching pods.
    pub async fn start(client: kube::Client, config: KubeletConfig) -> Result<Kubelet> {
        let nodes: Api<Node> = Api::all(client.clone());
        let _ = nodes
            .create(&PostParams::default(), &node_object(&config.node_name))
            .await;
        let ts = now();
        nodes
            .patch_status(
                &config.node_name,
                &PatchParams::default(),
                &Patch::Merge(json!({"status": {
                    "capacity": {"cpu": "2", "memory": "24Gi", "pods": "10000"},
                    "allocatable": {"cpu": "2", "memory": "24Gi", "pods": "10000"},
                    "addresses": [{"type": "InternalIP", "address": "127.0.0.1"},
                                  {"type": "Hostname", "address": config.node_name}],
                    "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady",
                                    "message": "devcluster process kubelet", "lastHeartbeatTime": ts,
                                    "lastTransitionTime": ts}],
                }})),
            )
            .await
            .context("marking the node Ready")?;
        std::fs::create_dir_all(&config.pods_dir)?;
        // Namespace names never start with a dot, so this never collides with a pod directory.
        let hosts = config.pods_dir.join(".etc-hosts");
        let mut text = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost\n");
        for h in &config.hosts {
            // `name` resolves to 127.0.0.1, `name=127.0.0.7` to that address.
            let (name, ip) = h.split_once('=').unwrap_or((h, "127.0.0.1"));
            text.push_str(&format!("{ip} {name}\n"));
        }
        std::fs::write(&hosts, text)?;
        let (stop, stop_rx) = watch::channel(false);
        let ctx = Arc::new(Ctx {
            client,
            config,
            hosts,
        });
        let task = tokio::spawn(watch_pods(ctx, stop_rx));
        Ok(Kubelet { stop, task })
    }

    /// Kills every pod process (grace 2 s) and stops watching.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }
}

struct Ctx {
    client: kube::Client,
    config: KubeletConfig,
    hosts: PathBuf,
}

/// What the pod task is told by the watch loop.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Signal {
    Run,
    /// Deleted with this grace period: stop the containers.
    Stop(Duration),
}

/// How long a request keeps being retried while the API server (or etcd behind
/// it) is unreachable or unavailable, as while a test restarts it.
const API_RETRY: Duration = Duration::from_secs(300);

/// Whether a failed request may succeed later: no connection, a timeout, or an
/// API server that is starting, overloaded or without etcd.
fn transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_) | kube::Error::Service(_) => true,
        _ => false,
    }
}

/// Runs the request `f` until it succeeds, fails for good or [`API_RETRY`] has passed.
async fn retry<T, F, Fut>(mut f: F) -> kube::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = kube::Result<T>>,
{
    let deadline = Instant::now() + API_RETRY;
    let mut delay = Duration::from_millis(100);
    loop {
        match f().await {
            Err(e) if transient(&e) && Instant::now() + delay < deadline => {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(1));
            }
            result => return result,
        }
    }
}

async fn watch_pods(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>) {
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let stream = watcher(pods, watcher::Config::default());
    futures::pin_mut!(stream);
    let mut tasks: HashMap<String, (watch::Sender<Signal>, tokio::task::JoinHandle<()>)> =
        HashMap::new();
    // Pods seen since the watcher started a (re)list; `None` while it watches.
    let mut listed: Option<HashSet<String>> = None;
    loop {
        let event = tokio::select! {
            _ = stop.changed() => break,
            e = stream.next() => e,
        };
        let Some(event) = event else { break };
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!("kubelet: pod watch error: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        match event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => {
                let Some(uid) = pod.metadata.uid.clone() else {
                    continue;
                };
                if let Some(listed) = listed.as_mut() {
                    listed.insert(uid.clone());
                }
                let node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
                if node.as_deref().is_some_and(|n| n != ctx.config.node_name) {
                    continue;
                }
                let deleting = pod.metadata.deletion_timestamp.is_some();
                let grace = Duration::from_secs(
                    pod.metadata
                        .deletion_grace_period_seconds
                        .unwrap_or(30)
                        .max(0) as u64,
                );
                if let Some((tx, _)) = tasks.get(&uid) {
                    if deleting {
                        let _ = tx.send(Signal::Stop(grace));
                    }
                    continue;
                }
                let phase = pod.status.as_ref().and_then(|s| s.phase.clone());
                let terminal = matches!(phase.as_deref(), Some("Succeeded" | "Failed"));
                if deleting && (terminal || node.is_none() || phase.is_none()) {
                    // Nothing of ours runs: finish the deletion as a kubelet does.
                    let ctx = ctx.clone();
                    tokio::spawn(async move { finalize_delete(&ctx, &pod).await });
                    continue;
                }
                if terminal {
                    continue;
                }
                let (tx, rx) = watch::channel(if deleting {
                    Signal::Stop(grace)
                } else {
                    Signal::Run
                });
                let handle = tokio::spawn(run_pod(ctx.clone(), pod, rx));
                tasks.insert(uid, (tx, handle));
            }
            watcher::Event::Delete(pod) => {
                if let Some(uid) = pod.metadata.uid
                    && let Some((tx, _)) = tasks.remove(&uid)
                {
                    let _ = tx.send(Signal::Stop(Duration::ZERO));
                }
            }
            watcher::Event::Init => listed = Some(HashSet::new()),
            watcher::Event::InitDone => {
                // A relist (the watch could not resume after an API server
                // restart) reports no deletions: pods deleted meanwhile are the
                // ones it did not list.
                if let Some(listed) = listed.take() {
                    tasks.retain(|uid, (tx, _)| {
                        let keep = listed.contains(uid);
                        if !keep {
                            let _ = tx.send(Signal::Stop(Duration::ZERO));
                        }
                        keep
                    });
                }
            }
        }
        tasks.retain(|_, (tx, h)| !h.is_finished() || !tx.is_closed());
    }
    for (_, (tx, h)) in tasks.drain() {
        let _ = tx.send(Signal::Stop(Duration::from_secs(2)));
        let _ = tokio::time::timeout(Duration::from_secs(5), h).await;
    }
}

async fn finalize_delete(ctx: &Ctx, pod: &Pod) {
    let (Some(ns), Some(name)) = (&pod.metadata.namespace, &pod.metadata.name) else {
        return;
    };
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let dp = DeleteParams {
        grace_period_seconds: Some(0),
        preconditions: Some(Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    let _ = retry(|| api.delete(name, &dp)).await;
}

/// Per-pod state the kubelet reports.
struct PodState {
    api: Api<Pod>,
    name: String,
    start_time: Time,
    phase: &'static str,
    init: Vec<ContainerStatus>,
    main: Vec<ContainerStatus>,
    reason: Option<String>,
    message: Option<String>,
}

fn waiting(name: &str, image: &str, reason: &str, message: Option<String>) -> ContainerStatus {
    ContainerStatus {
        name: name.into(),
        image: image.into(),
        image_id: String::new(),
        ready: false,
        restart_count: 0,
        started: Some(false),
        state: Some(ContainerState {
            waiting: Some(ContainerStateWaiting {
                reason: Some(reason.into()),
                message,
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl PodState {
    async fn publish(&self) {
        let initialized = self.init.iter().all(|s| {
            s.state
                .as_ref()
                .and_then(|st| st.terminated.as_ref())
                .is_some_and(|t| t.exit_code == 0)
        });
        let ready = self.phase == "Running" && self.main.iter().all(|s| s.ready);
        let cond = |t: &str, ok: bool| PodCondition {
            type_: t.into(),
            status: if ok { "True" } else { "False" }.into(),
            last_transition_time: Some(now()),
            ..Default::default()
        };
        let status = json!({
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": "127.0.0.1",
            "podIPs": [{"ip": "127.0.0.1"}],
            "startTime": self.start_time,
            "reason": self.reason,
            "message": self.message,
            "conditions": [cond("PodScheduled", true), cond("Initialized", initialized),
                           cond("ContainersReady", ready), cond("Ready", ready)],
            "initContainerStatuses": self.init,
            "containerStatuses": self.main,
        });
        let (pp, patch) = (
            PatchParams::default(),
            Patch::Merge(json!({"status": status})),
        );
        if let Err(e) = retry(|| self.api.patch_status(&self.name, &pp, &patch)).await {
            tracing::debug!("kubelet: status of {} not written: {e}", self.name);
        }
    }
}

async fn run_pod(ctx: Arc<Ctx>, pod: Pod, mut signal: watch::Receiver<Signal>) {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ns);
    if pod
        .spec
        .as_ref()
        .and_then(|s| s.node_name.as_ref())
        .is_none()
    {
        let binding = json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name, "namespace": ns},
            "target": {"apiVersion": "v1", "kind": "Node", "name": ctx.config.node_name},
        });
        let pp = PostParams::default();
        if let Err(e) = retry(|| {
            api.create_subresource::<_, serde_json::Value>("binding", &name, &pp, &binding)
        })
        .await
        {
            tracing::warn!("kubelet: binding {ns}/{name} failed: {e}");
            return;
        }
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let init_containers = spec.init_containers.clone().unwrap_or_default();
    let mut state = PodState {
        api: api.clone(),
        name: name.clone(),
        start_time: now(),
        phase: "Pending",
        init: init_containers
            .iter()
            .map(|c| {
                waiting(
                    &c.name,
                    c.image.as_deref().unwrap_or(""),
                    "PodInitializing",
                    None,
                )
            })
            .collect(),
        main: spec
            .containers
            .iter()
            .map(|c| {
                waiting(
                    &c.name,
                    c.image.as_deref().unwrap_or(""),
                    "ContainerCreating",
                    None,
                )
            })
            .collect(),
        reason: None,
        message: None,
    };
    state.publish().await;

    let pod_dir = ctx.config.pods_dir.join(&ns).join(&name);
    let prepared = prepare(&ctx, &pod, &pod_dir).await;
    let containers: Vec<(bool, usize, Container)> = init_containers
        .iter()
        .cloned()
        .enumerate()
        .map(|(i, c)| (true, i, c))
        .chain(
            spec.containers
                .iter()
                .cloned()
                .enumerate()
                .map(|(i, c)| (false, i, c)),
        )
        .collect();
    let runs: Result<Vec<ContainerRun>, (String, String)> = match prepared {
        Err(e) => Err(("CreateContainerConfigError".into(), format!("{e:#}"))),
        Ok(volumes) => {
            let mut runs = Vec::new();
            let mut err = None;
            for (_, _, c) in &containers {
                match container_run(&ctx, &pod, c, &volumes, &pod_dir).await {
                    Ok(r) => runs.push(r),
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            match err {
                Some(e) => Err(e),
                None => Ok(runs),
            }
        }
    };
    let runs = match runs {
        Ok(r) => r,
        Err((reason, message)) => {
            // Like an image that cannot be pulled: the pod stays Pending, visibly.
            for s in state.init.iter_mut().chain(state.main.iter_mut()) {
                *s = waiting(&s.name, &s.image, &reason, Some(message.clone()));
            }
            state.publish().await;
            let _ = signal.wait_for(|s| matches!(s, Signal::Stop(_))).await;
            finalize_delete(&ctx, &pod).await;
            return;
        }
    };
    let restart = spec
        .restart_policy
        .clone()
        .unwrap_or_else(|| "Always".into());
    let (init_runs, main_runs) = runs.split_at(init_containers.len());

    // Init containers, one after another.
    for (i, run) in init_runs.iter().enumerate() {
        let mut restarts = 0;
        loop {
            let (code, stopped) = run_once(&mut state, true, i, run, &mut signal).await;
            if stopped {
                finalize_delete(&ctx, &pod).await;
                return;
            }
            if code == 0 {
                break;
            }
            if restart == "Never" {
                state.phase = "Failed";
                state.publish().await;
                wait_stop_and_finalize(&ctx, &pod, &mut signal).await;
                return;
            }
            restarts += 1;
            state.init[i].restart_count = restarts;
            if backoff(restarts, &mut signal).await {
                finalize_delete(&ctx, &pod).await;
                return;
            }
        }
    }

    // Main containers, concurrently.
    state.phase = "Running";
    state.publish().await;
    let (tx, mut rx) = mpsc::channel::<(usize, ContainerStatus)>(16);
    let mut handles = Vec::new();
    for (i, run) in main_runs.iter().cloned().enumerate() {
        let (tx, signal, restart) = (tx.clone(), signal.clone(), restart.clone());
        let status = state.main[i].clone();
        handles.push(tokio::spawn(container_loop(
            i, run, status, restart, signal, tx,
        )));
    }
    drop(tx);
    while let Some((i, st)) = rx.recv().await {
        state.main[i] = st;
        let done: Vec<Option<i32>> = state
            .main
            .iter()
            .map(|s| {
                s.state
                    .as_ref()
                    .and_then(|st| st.terminated.as_ref())
                    .map(|t| t.exit_code)
            })
            .collect();
        if done.iter().all(Option::is_some) && restart != "Always" {
            let failed = done.iter().any(|c| *c != Some(0));
            if !failed || restart == "Never" {
                state.phase = if failed { "Failed" } else { "Succeeded" };
            }
        }
        state.publish().await;
    }
    for h in handles {
        let _ = h.await;
    }
    if matches!(*signal.borrow(), Signal::Stop(_)) {
        finalize_delete(&ctx, &pod).await;
    } else {
        wait_stop_and_finalize(&ctx, &pod, &mut signal).await;
    }
}

/// Resolves once the pod is to stop, with the grace period to give it.
async fn stop_requested(signal: &mut watch::Receiver<Signal>) -> Duration {
    let s = signal
        .wait_for(|s| matches!(s, Signal::Stop(_)))
        .await
        .map(|r| *r);
    match s {
        Ok(Signal::Stop(g)) => g,
        _ => Duration::ZERO,
    }
}

async fn wait_stop_and_finalize(ctx: &Ctx, pod: &Pod, signal: &mut watch::Receiver<Signal>) {
    if signal
        .wait_for(|s| matches!(s, Signal::Stop(_)))
        .await
        .is_ok()
    {
        finalize_delete(ctx, pod).await;
    }
}

/// Sleeps the crash-loop back-off; true when the pod was deleted meanwhile.
async fn backoff(restarts: i32, signal: &mut watch::Receiver<Signal>) -> bool {
    let delay = Duration::from_secs((1u64 << restarts.clamp(0, 4) as u32).min(10));
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = signal.wait_for(|s| matches!(s, Signal::Stop(_))) => true,
    }
}

fn running_status(mut st: ContainerStatus, started: &Time) -> ContainerStatus {
    st.state = Some(ContainerState {
        running: Some(ContainerStateRunning {
            started_at: Some(started.clone()),
        }),
        ..Default::default()
    });
    st.started = Some(true);
    st.ready = true;
    st
}

fn terminated_status(
    mut st: ContainerStatus,
    started: &Time,
    code: i32,
    run: &ContainerRun,
    policy_fallback: bool,
) -> ContainerStatus {
    let mut message = std::fs::read(&run.termination_file).unwrap_or_default();
    message.truncate(4096);
    let mut message = String::from_utf8_lossy(&message).trim().to_string();
    if message.is_empty() && code != 0 && policy_fallback {
        let tail = crate::process::log_tail(&run.log_file, 80);
        message = tail[tail.len().saturating_sub(2048)..].to_string();
    }
    let reason = if code == 0 { "Completed" } else { "Error" };
    st.state = Some(ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: code,
            reason: Some(reason.into()),
            message: (!message.is_empty()).then_some(message),
            started_at: Some(started.clone()),
            finished_at: Some(now()),
            ..Default::default()
        }),
        ..Default::default()
    });
    st.ready = false;
    st.started = Some(false);
    st
}

/// Runs an init container once; (exit code, deleted meanwhile).
async fn run_once(
    state: &mut PodState,
    init: bool,
    i: usize,
    run: &ContainerRun,
    signal: &mut watch::Receiver<Signal>,
) -> (i32, bool) {
    let list = if init {
        &mut state.init
    } else {
        &mut state.main
    };
    let started = now();
    let script = run.rootfs.with_extension("sh");
    let mut proc = match run::start(run, &script) {
        Ok(p) => p,
        Err(e) => {
            list[i] = waiting(
                &list[i].name,
                &list[i].image,
                "RunContainerError",
                Some(format!("{e:#}")),
            );
            state.publish().await;
            return (128, false);
        }
    };
    list[i] = running_status(list[i].clone(), &started);
    state.publish().await;
    let (code, stopped) = tokio::select! {
        code = proc.wait() => (code, false),
        grace = stop_requested(signal) => {
            (proc.terminate(grace).await, true)
        }
    };
    let list = if init {
        &mut state.init
    } else {
        &mut state.main
    };
    list[i] = terminated_status(list[i].clone(), &started, code, run, true);
    state.publish().await;
    (code, stopped)
}

async fn container_loop(
    i: usize,
    run: ContainerRun,
    mut status: ContainerStatus,
    restart: String,
    mut signal: watch::Receiver<Signal>,
    tx: mpsc::Sender<(usize, ContainerStatus)>,
) {
    let script = run.rootfs.with_extension("sh");
    loop {
        if matches!(*signal.borrow(), Signal::Stop(_)) {
            return;
        }
        let started = now();
        let mut proc = match run::start(&run, &script) {
            Ok(p) => p,
            Err(e) => {
                status = waiting(
                    &status.name,
                    &status.image,
                    "RunContainerError",
                    Some(format!("{e:#}")),
                );
                let _ = tx.send((i, status.clone())).await;
                return;
            }
        };
        status = running_status(status, &started);
        let _ = tx.send((i, status.clone())).await;
        let (code, stopped) = tokio::select! {
            code = proc.wait() => (code, false),
            grace = stop_requested(&mut signal) => {
                (proc.terminate(grace).await, true)
            }
        };
        status = terminated_status(status, &started, code, &run, true);
        let _ = tx.send((i, status.clone())).await;
        let again = !stopped && (restart == "Always" || (restart == "OnFailure" && code != 0));
        if !again {
            return;
        }
        status.restart_count += 1;
        if backoff(status.restart_count, &mut signal).await {
            return;
        }
    }
}

/// Materialises the pod's volumes; volume name → host directory.
async fn prepare(ctx: &Ctx, pod: &Pod, pod_dir: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let _ = std::fs::remove_dir_all(pod_dir.join("volumes"));
    std::fs::create_dir_all(pod_dir.join("volumes"))?;
    let mut out = BTreeMap::new();
    for v in pod
        .spec
        .as_ref()
        .and_then(|s| s.volumes.clone())
        .unwrap_or_default()
    {
        let dir = pod_dir.join("volumes").join(&v.name);
        let path = volume(ctx, pod, &ns, &v, &dir)
            .await
            .with_context(|| format!("volume {:?}", v.name))?;
        out.insert(v.name.clone(), path);
    }
    Ok(out)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write_file(dir: &Path, rel: &str, data: &[u8], mode: u32) -> Result<()> {
    if rel.split('/').any(|p| p == ".." || p.is_empty()) {
        bail!("invalid volume item path {rel:?}");
    }
    let path = dir.join(rel);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
        set_mode(parent, 0o755)?;
    }
    std::fs::write(&path, data)?;
    set_mode(&path, mode)
}

type Items = Option<Vec<k8s_openapi::api::core::v1::KeyToPath>>;

fn write_items(
    dir: &Path,
    data: BTreeMap<String, Vec<u8>>,
    items: &Items,
    default_mode: u32,
) -> Result<()> {
    match items {
        Some(items) => {
            for it in items {
                let v = data
                    .get(&it.key)
                    .ok_or_else(|| anyhow!("key {:?} not found", it.key))?;
                write_file(
                    dir,
                    &it.path,
                    v,
                    it.mode.map(|m| m as u32).unwrap_or(default_mode),
                )?;
            }
        }
        None => {
            for (k, v) in &data {
                write_file(dir, k, v, default_mode)?;
            }
        }
    }
    Ok(())
}

async fn config_map_data(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), ns);
    match retry(|| api.get_opt(name)).await? {
        Some(cm) => {
            let mut out: BTreeMap<String, Vec<u8>> = cm
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect();
            out.extend(
                cm.binary_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.0)),
            );
            Ok(out)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("configmap {ns}/{name} not found"),
    }
}

async fn secret_data(
    ctx: &Ctx,
    ns: &str,
    name: &str,
    optional: bool,
) -> Result<BTreeMap<String, Vec<u8>>> {
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    match retry(|| api.get_opt(name)).await? {
        Some(s) => {
            let mut out: BTreeMap<String, Vec<u8>> = s
                .data
                .unwrap_or_default()
                .into_iter()
                .map(|(k, v)| (k, v.0))
                .collect();
            out.extend(
                s.string_data
                    .unwrap_or_default()
                    .into_iter()
                    .map(|(k, v)| (k, v.into_bytes())),
            );
            Ok(out)
        }
        None if optional => Ok(BTreeMap::new()),
        None => bail!("secret {ns}/{name} not found"),
    }
}

async fn volume(ctx: &Ctx, pod: &Pod, ns: &str, v: &Volume, dir: &Path) -> Result<PathBuf> {
    if let Some(hp) = &v.host_path {
        return Ok(PathBuf::from(&hp.path));
    }
    std::fs::create_dir_all(dir)?;
    if v.empty_dir.is_some() {
        set_mode(dir, 0o777)?;
    } else if let Some(cm) = &v.config_map {
        let data = config_map_data(ctx, ns, &cm.name, cm.optional.unwrap_or(false)).await?;
        write_items(
            dir,
            data,
            &cm.items,
            cm.default_mode.unwrap_or(0o644) as u32,
        )?;
        set_mode(dir, 0o755)?;
    } else if let Some(s) = &v.secret {
        let name = s.secret_name.clone().unwrap_or_default();
        let data = secret_data(ctx, ns, &name, s.optional.unwrap_or(false)).await?;
        write_items(dir, data, &s.items, s.default_mode.unwrap_or(0o644) as u32)?;
        set_mode(dir, 0o755)?;
    } else if let Some(d) = &v.downward_api {
        for it in d.items.clone().unwrap_or_default() {
            let f = it
                .field_ref
                .as_ref()
                .ok_or_else(|| anyhow!("only fieldRef items are supported"))?;
            let val = plan::field_ref(pod, &f.field_path).map_err(anyhow::Error::msg)?;
            write_file(
                dir,
                &it.path,
                val.as_bytes(),
                it.mode.unwrap_or(0o644) as u32,
            )?;
        }
        set_mode(dir, 0o755)?;
    } else if let Some(p) = &v.projected {
        let mode = p.default_mode.unwrap_or(0o644) as u32;
        for src in p.sources.clone().unwrap_or_default() {
            if let Some(t) = src.service_account_token {
                let token =
                    service_account_token(ctx, pod, ns, t.audience, t.expiration_seconds).await?;
                write_file(dir, &t.path, token.as_bytes(), mode)?;
            } else if let Some(cm) = src.config_map {
                let data = config_map_data(ctx, ns, &cm.name, cm.optional.unwrap_or(false)).await?;
                write_items(dir, data, &cm.items, mode)?;
            } else if let Some(s) = src.secret {
                let data = secret_data(ctx, ns, &s.name, s.optional.unwrap_or(false)).await?;
                write_items(dir, data, &s.items, mode)?;
            } else if let Some(d) = src.downward_api {
                for it in d.items.unwrap_or_default() {
                    let f = it
                        .field_ref
                        .ok_or_else(|| anyhow!("only fieldRef items are supported"))?;
                    let val = plan::field_ref(pod, &f.field_path).map_err(anyhow::Error::msg)?;
                    write_file(dir, &it.path, val.as_bytes(), mode)?;
                }
            } else {
                bail!("unsupported projected volume source");
            }
        }
        set_mode(dir, 0o755)?;
    } else {
        bail!(
            "unsupported volume type (devcluster supports emptyDir, configMap, secret, downwardAPI, projected, hostPath)"
        );
    }
    Ok(dir.to_owned())
}

/// A token for the pod's own ServiceAccount, bound to the pod, from a real
/// TokenRequest: the pod acts with its ServiceAccount's RBAC, never as admin.
async fn service_account_token(
    ctx: &Ctx,
    pod: &Pod,
    ns: &str,
    audience: Option<String>,
    expiration: Option<i64>,
) -> Result<String> {
    let sa_name = pod
        .spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .unwrap_or_else(|| "default".into());
    let api: Api<ServiceAccount> = Api::namespaced(ctx.client.clone(), ns);
    let req = TokenRequest {
        spec: Some(TokenRequestSpec {
            audiences: audience.map(|a| vec![a]),
            expiration_seconds: Some(expiration.unwrap_or(3607)),
            bound_object_ref: Some(BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: pod.metadata.name.clone(),
                uid: pod.metadata.uid.clone(),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let pp = PostParams::default();
    let resp = retry(|| api.create_token_request(&sa_name, &pp, &req))
        .await
        .with_context(|| format!("TokenRequest for serviceaccount {ns}/{sa_name}"))?;
    resp.status
        .and_then(|s| s.token)
        .ok_or_else(|| anyhow!("TokenRequest returned no token"))
}

/// Resolves one container: image mapping, env, argv, mounts, identity.
async fn container_run(
    ctx: &Ctx,
    pod: &Pod,
    c: &Container,
    volumes: &BTreeMap<String, PathBuf>,
    pod_dir: &Path,
) -> Result<ContainerRun, (String, String)> {
    let image = c.image.clone().unwrap_or_default();
    let mapping = ctx
        .config
        .images
        .read()
        .expect("images lock")
        .iter()
        .find(|m| m.matches(&image))
        .cloned()
        .ok_or_else(|| {
            (
                "ErrImagePull".to_string(),
                format!(
                    "image {image:?} is not mapped to a local command in devcluster (known: {:?})",
                    ctx.config
                        .images
                        .read()
                        .expect("images lock")
                        .iter()
                        .map(|m| m.image.clone())
                        .collect::<Vec<_>>()
                ),
            )
        })?;
    let config_err =
        |e: anyhow::Error| ("CreateContainerConfigError".to_string(), format!("{e:#}"));
    let env = container_env(ctx, pod, c, &mapping)
        .await
        .map_err(config_err)?;
    let argv =
        plan::argv(c, &mapping, &env).map_err(|e| ("CreateContainerError".to_string(), e))?;
    let mut mounts: Vec<Mount> = mapping
        .files
        .iter()
        .map(|(container, host)| Mount {
            host: host.clone(),
            container: container.clone(),
            read_only: true,
        })
        .collect();
    for vm in c.volume_mounts.clone().unwrap_or_default() {
        let base = volumes.get(&vm.name).ok_or_else(|| {
            (
                "CreateContainerConfigError".to_string(),
                format!("volume {:?} not found", vm.name),
            )
        })?;
        let host = match vm.sub_path.as_deref() {
            Some(sp) if !sp.is_empty() => base.join(sp),
            _ => base.clone(),
        };
        mounts.push(Mount {
            host,
            container: vm.mount_path.clone(),
            read_only: vm.read_only.unwrap_or(false),
        });
    }
    let (uid, gid, groups) = plan::identity(pod, c);
    let dir = pod_dir.join(&c.name);
    let _ = std::fs::create_dir_all(&dir);
    Ok(ContainerRun {
        argv,
        env,
        working_dir: c.working_dir.clone().unwrap_or_else(|| "/".into()),
        mounts,
        uid,
        gid,
        groups,
        rootfs: dir.join("root"),
        hosts_file: ctx.hosts.clone(),
        termination_file: dir.join("termination-log"),
        termination_path: c
            .termination_message_path
            .clone()
            .unwrap_or_else(|| "/dev/termination-log".into()),
        log_file: container_log(
            &ctx.config.pods_dir,
            pod.metadata.namespace.as_deref().unwrap_or_default(),
            pod.metadata.name.as_deref().unwrap_or_default(),
            &c.name,
        ),
    })
}

async fn container_env(
    ctx: &Ctx,
    pod: &Pod,
    c: &Container,
    mapping: &ImageMapping,
) -> Result<Vec<(String, String)>> {
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let (uid, _, _) = plan::identity(pod, c);
    let mut env: Vec<(String, String)> = vec![
        ("PATH".into(), plan::container_path(mapping)),
        (
            "HOSTNAME".into(),
            pod.metadata.name.clone().unwrap_or_default(),
        ),
        (
            "HOME".into(),
            if uid == 0 { "/root".into() } else { "/".into() },
        ),
    ];
    env.extend(mapping.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    let port = ctx.config.api_port.to_string();
    env.extend([
        ("KUBERNETES_SERVICE_HOST".into(), "127.0.0.1".into()),
        ("KUBERNETES_SERVICE_PORT".into(), port.clone()),
        ("KUBERNETES_SERVICE_PORT_HTTPS".into(), port.clone()),
        ("KUBERNETES_PORT".into(), format!("tcp://127.0.0.1:{port}")),
    ]);
    let set = |env: &mut Vec<(String, String)>, k: String, v: String| {
        env.retain(|(n, _)| *n != k);
        env.push((k, v));
    };
    for from in c.env_from.clone().unwrap_or_default() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let data = if let Some(cm) = &from.config_map_ref {
            config_map_data(ctx, &ns, &cm.name, cm.optional.unwrap_or(false)).await?
        } else if let Some(s) = &from.secret_ref {
            secret_data(ctx, &ns, &s.name, s.optional.unwrap_or(false)).await?
        } else {
            BTreeMap::new()
        };
        for (k, v) in data {
            set(
                &mut env,
                format!("{prefix}{k}"),
                String::from_utf8_lossy(&v).into_owned(),
            );
        }
    }
    for e in c.env.clone().unwrap_or_default() {
        let value = if let Some(v) = &e.value {
            plan::expand(v, &env)
        } else if let Some(from) = &e.value_from {
            if let Some(f) = &from.field_ref {
                plan::field_ref(pod, &f.field_path).map_err(anyhow::Error::msg)?
            } else if let Some(k) = &from.config_map_key_ref {
                let data = config_map_data(ctx, &ns, &k.name, k.optional.unwrap_or(false)).await?;
                data.get(&k.key)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            } else if let Some(k) = &from.secret_key_ref {
                let data = secret_data(ctx, &ns, &k.name, k.optional.unwrap_or(false)).await?;
                data.get(&k.key)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            } else {
                // resourceFieldRef: there are no cgroup limits here.
                String::new()
            }
        } else {
            String::new()
        };
        set(&mut env, e.name.clone(), value);
    }
    Ok(env)
}
