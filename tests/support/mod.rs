//! End-to-end harness: a devcluster, the NucleiScan CRD, a canary HTTP target
//! on a private loopback address, and the operator binary as a child process.

#![allow(dead_code)]

pub mod chart;
pub mod gateway;
pub mod git;
pub mod monitoring;
pub mod notify;
pub mod reports;
pub mod template_set;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

pub use devcluster::eventually;
use devcluster::{Config, DevCluster, ImageMapping, Tools};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use nuclei_operator::api::{NucleiScan, NucleiScanStatus, ScanPhase, Severity};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Image the operator's Jobs use in the tests; mapped to the freshly built binary.
pub const IMAGE: &str = "nuclei-operator:e2e";

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The operator binary `cargo build` produced next to this test binary.
pub fn operator_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let bin = dir.join("nuclei-operator");
    assert!(
        bin.exists(),
        "{} missing: run `cargo build --bins` first",
        bin.display()
    );
    bin
}

/// The process kubelet's mapping of the operator image: what the Dockerfile
/// puts in the image (the operator, nuclei, the templates), from local files.
pub fn operator_image(templates: &Path) -> ImageMapping {
    let tools = Tools::locate().unwrap();
    let nuclei = tools.require(&tools.nuclei).unwrap().to_owned();
    ImageMapping {
        image: "nuclei-operator".into(),
        entrypoint: vec!["/opt/nuclei-operator/bin/nuclei-operator".into()],
        path: vec!["/opt/nuclei-operator/bin".into()],
        env: [(
            "NUCLEI_TEMPLATES_PATH".to_string(),
            "/nuclei-templates".to_string(),
        )]
        .into(),
        files: [
            (
                "/opt/nuclei-operator/bin/nuclei-operator".to_string(),
                operator_binary(),
            ),
            ("/opt/nuclei-operator/bin/nuclei".to_string(), nuclei),
            ("/nuclei-templates".to_string(), templates.to_owned()),
        ]
        .into(),
    }
}

/// A loopback address for this test binary's targets (port 80 must be free there).
pub fn target_ip(n: u8) -> Ipv4Addr {
    let pid = std::process::id();
    Ipv4Addr::new(127, 200 + (pid % 50) as u8, (pid / 50 % 250) as u8, n)
}

/// Starts a cluster whose pods resolve each `host` to `ip`, with the CRD installed.
pub async fn cluster(hosts: &[(&str, Ipv4Addr)]) -> DevCluster {
    let started = Instant::now();
    let cluster = DevCluster::start(Config {
        images: vec![operator_image(&repo().join("testdata/templates"))],
        hosts: hosts.iter().map(|(h, ip)| format!("{h}={ip}")).collect(),
        ..Default::default()
    })
    .await
    .expect("devcluster starts");
    eprintln!("devcluster up in {:.1}s", started.elapsed().as_secs_f64());
    let client = cluster.client().await.unwrap();
    // What the chart would install besides the operator: the scanner
    // ClusterRole the operator binds in each namespace with scans.
    let role =
        nuclei_operator::jobs::scanner_cluster_role(nuclei_operator::jobs::SCANNER_CLUSTER_ROLE);
    Api::<ClusterRole>::all(client.clone())
        .patch(
            nuclei_operator::jobs::SCANNER_CLUSTER_ROLE,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&role),
        )
        .await
        .unwrap();
    for (_, crd) in nuclei_operator::api::crds() {
        install_crd(&client, crd).await;
    }
    cluster
}

/// Installs `crd` (server-side apply) and waits until the API server has
/// established it.
pub async fn install_crd(client: &kube::Client, mut crd: CustomResourceDefinition) {
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    crd.metadata.managed_fields = None;
    let name = crd.metadata.name.clone().unwrap();
    crds.patch(
        &name,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&crd),
    )
    .await
    .unwrap();
    crd_established(&crds, &name).await;
}

/// Waits (20 s at most) until the API server has established the CRD `name`.
pub async fn crd_established(crds: &Api<CustomResourceDefinition>, name: &str) {
    eventually(
        Duration::from_secs(20),
        &format!("{name} established"),
        || async {
            let c = crds.get(name).await.ok()?;
            c.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        },
    )
    .await;
}

/// The operator as a child process (admin kubeconfig). Killed on drop, and by
/// the kernel when the test binary exits (an operator shared by a binary's
/// tests sits in a static and is never dropped).
pub struct Operator {
    pub pid: i32,
    /// HTTP_ADDR: /metrics and /queue, open (HTTP_AUTH=none).
    pub port: u16,
    /// HEALTH_ADDR: /healthz and /readyz.
    pub health_port: u16,
    pub log: PathBuf,
}

/// Two distinct free ports on 127.0.0.1 (both held while asking, so they
/// differ).
pub fn two_free_ports() -> (u16, u16) {
    let bind = || std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (a, b) = (bind(), bind());
    (
        a.local_addr().unwrap().port(),
        b.local_addr().unwrap().port(),
    )
}

/// Clears `cmd`'s environment and sets what every host-process operator of
/// the tests runs with: the cluster, `port` (/metrics, /queue) and
/// `health_port` on 127.0.0.1, and the defaults below.
pub fn operator_env(
    cmd: &mut std::process::Command,
    cluster: &DevCluster,
    port: u16,
    health_port: u16,
) {
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("KUBECONFIG", cluster.kubeconfig())
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("HEALTH_ADDR", format!("127.0.0.1:{health_port}"))
        // These tests read /queue to follow scans, not to test who may
        // read it (tests/e2e_security.rs does, with the chart's defaults).
        .env("HTTP_AUTH", "none")
        .env("SCANNER_IMAGE", IMAGE)
        .env("LEADER_ELECTION", "false")
        // The operator runs on the host here, where the test host names do
        // not resolve; scanner pods resolve them through devcluster.
        .env("TARGET_CHECK_TIMEOUT", "0")
        // The test targets listen on loopback.
        .env("TARGET_ALLOW_CIDRS", "127.0.0.0/8")
        .env("RUST_LOG", "info,kube_runtime=warn")
        .env("JOB_TTL_AFTER_FINISHED", "600");
}

impl Operator {
    pub async fn start(cluster: &DevCluster, env: &[(&str, &str)]) -> Operator {
        let (port, health_port) = two_free_ports();
        let log = cluster.dir().join(format!("operator-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut cmd = std::process::Command::new("setpriv");
        cmd.args(["--pdeathsig", "KILL", "--"])
            .arg(operator_binary());
        operator_env(&mut cmd, cluster, port, health_port);
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        // The parent-death signal fires when the spawning *thread* ends, so
        // spawn from a thread that lives exactly as long as the child.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut child = cmd.spawn().expect("operator starts");
            tx.send(child.id() as i32).unwrap();
            let _ = child.wait();
        });
        let pid = rx.recv().unwrap();
        let op = Operator {
            pid,
            port,
            health_port,
            log,
        };
        eventually(Duration::from_secs(30), "operator /readyz", || {
            op.health("/readyz")
        })
        .await;
        op
    }

    /// `kill -9`, and waits until the process is gone.
    pub async fn kill(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        eventually(Duration::from_secs(10), "operator gone", || async {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).ok();
            // Gone, or a zombie about to be reaped by its thread.
            stat.is_none_or(|s| s.split(' ').nth(2) == Some("Z"))
                .then_some(())
        })
        .await;
    }

    /// GET a data path (/queue, /metrics); `Some(body)` on 200.
    pub async fn get(&self, path: &str) -> Option<String> {
        devcluster::http_get(self.port, path).await
    }

    /// GET a health path (/healthz, /readyz); `Some(body)` on 200.
    pub async fn health(&self, path: &str) -> Option<String> {
        devcluster::http_get(self.health_port, path).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// An HTTP server on `ip:80` serving `/canary` (the test templates' match).
/// It runs on its own thread and runtime, so it outlives the test that
/// started it (tests share one target).
pub async fn canary_target(ip: Ipv4Addr) {
    serve(ip, None, Arc::new(AtomicBool::new(true)));
}

/// Like [`canary_target`], with `/canary` exposed only while the returned
/// switch is on (off: it answers like any other page), so a test can make
/// the finding go away and come back between runs.
pub fn switchable_target(ip: Ipv4Addr) -> Arc<AtomicBool> {
    let on = Arc::new(AtomicBool::new(true));
    serve(ip, None, on.clone());
    on
}

/// Like [`canary_target`], and `/slow` answers `SLOW-OK` (what
/// testdata/templates/slow.yaml matches) after `delay`, so a scan with that
/// template stays Running for a while.
pub fn slow_target(ip: Ipv4Addr, delay: Duration) {
    serve(ip, Some(delay), Arc::new(AtomicBool::new(true)));
}

fn serve(ip: Ipv4Addr, slow: Option<Duration>, canary: Arc<AtomicBool>) {
    let listener = std::net::TcpListener::bind((ip, 80)).expect("port 80 on the test address");
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            loop {
                let Ok((mut s, _)) = listener.accept().await else { return };
                let canary = canary.load(Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 8192];
                    let n = s.read(&mut buf).await.unwrap_or(0);
                    let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                    let path = req.split(' ').nth(1).unwrap_or("/");
                    let (status, headers, body) = match slow {
                        Some(delay) if path == "/slow" => {
                            tokio::time::sleep(delay).await;
                            ("200 OK", "Content-Type: text/plain", "SLOW-OK\n")
                        }
                        _ if canary && path.starts_with("/canary") => {
                            ("200 OK", "Content-Type: text/plain", "CANARY-OK token=abc123\n")
                        }
                        _ => page(path),
                    };
                    let resp = format!(
                        "HTTP/1.1 {status}\r\n{headers}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = s.write_all(resp.as_bytes()).await;
                });
            }
        });
    });
}

/// What the test target answers at `path` besides `/canary` and `/slow`:
/// a few pages of the kinds real templates look for (see
/// [`template_set`]), and `hello` everywhere else.
fn page(path: &str) -> (&'static str, &'static str, &'static str) {
    match path {
        "/login" => (
            "200 OK",
            "Content-Type: text/html\r\nX-Powered-By: PHP/7.4.3",
            "<html><head><title>Admin Login</title></head><body>\
             <form action=\"/login\"><input name=\"user\"></form></body></html>\n",
        ),
        "/api/version" => (
            "200 OK",
            "Content-Type: application/json",
            "{\"name\":\"demo-app\",\"version\":\"2.4.1\",\"debug\":true}\n",
        ),
        "/.git/config" => (
            "200 OK",
            "Content-Type: text/plain",
            "[core]\n\trepositoryformatversion = 0\n\tbare = false\n",
        ),
        "/admin" => ("403 Forbidden", "Content-Type: text/plain", "forbidden\n"),
        _ => ("200 OK", "Content-Type: text/plain", "hello\n"),
    }
}

/// The message of the first Event of `type_` (`Normal`, `Warning`) with
/// `reason` on the object `name` in `ns` whose message contains
/// `containing`, once there is one (60 s at most).
pub async fn event(
    client: &kube::Client,
    ns: &str,
    name: &str,
    type_: &str,
    reason: &str,
    containing: &str,
) -> String {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    eventually(
        Duration::from_secs(60),
        &format!("{type_} {reason} on {name}"),
        || async {
            events
                .list(&kube::api::ListParams::default())
                .await
                .ok()?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some(reason)
                        && e.type_.as_deref() == Some(type_)
                        && e.involved_object.name.as_deref() == Some(name)
                        && e.message
                            .as_deref()
                            .unwrap_or_default()
                            .contains(containing)
                })
                .and_then(|e| e.message)
        },
    )
    .await
}

/// Creates a namespace for one test.
pub async fn namespace(client: &kube::Client, name: &str) -> String {
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .unwrap();
    name.to_string()
}

/// An Ingress with one host and the given annotations.
pub fn ingress(
    name: &str,
    host: &str,
    annotations: serde_json::Value,
) -> k8s_openapi::api::networking::v1::Ingress {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": annotations},
        "spec": {"rules": [{"host": host, "http": {"paths": [{
            "path": "/", "pathType": "Prefix",
            "backend": {"service": {"name": "web", "port": {"number": 80}}}
        }]}}]}
    }))
    .unwrap()
}

impl Drop for Operator {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Annotations that leave exactly the canary template: other-tag.yaml (tag),
/// low-severity.yaml (severity) and excluded.yaml (exclusion) match the
/// canary page too, and only these filters keep them out.
pub fn canary_annotations() -> serde_json::Value {
    const P: &str = "nuclei.homelab.mortenolsen.pro/";
    serde_json::json!({
        format!("{P}tags"): "canary",
        format!("{P}severity"): "high,critical",
        format!("{P}exclude-templates"): "excluded.yaml",
    })
}

/// Waits until the scan `name` is Completed; panics, with its error, if it
/// fails instead.
pub async fn completed(api: &Api<NucleiScan>, name: &str, timeout: Duration) -> NucleiScan {
    eventually(timeout, &format!("{name} Completed"), || async {
        let s = api.get_opt(name).await.ok()??;
        let phase = s.status.as_ref()?.phase?;
        assert_ne!(
            phase,
            ScanPhase::Failed,
            "{name} failed: {:?}",
            s.status.as_ref().unwrap().last_error
        );
        (phase == ScanPhase::Completed).then_some(s)
    })
    .await
}

/// Waits for the next completed run of `name` (another Job than `before`),
/// after a rescan request when `rescan` is given; returns its Job and scan.
pub async fn next_run(
    scans: &Api<NucleiScan>,
    name: &str,
    rescan: Option<&str>,
    before: Option<&str>,
) -> (String, NucleiScan) {
    if let Some(value) = rescan {
        let ann = serde_json::json!({"metadata": {"annotations": {"nuclei.homelab.mortenolsen.pro/rescan": value}}});
        scans
            .patch(
                name,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(&ann),
            )
            .await
            .unwrap();
    }
    eventually(Duration::from_secs(90), "the run completed", || async {
        let s = scans.get_opt(name).await.ok()??;
        let st = s.status.as_ref()?;
        let job = st.job_ref.as_ref()?.name.clone();
        let done = st.phase? == ScanPhase::Completed && Some(job.as_str()) != before;
        done.then_some((job, s))
    })
    .await
}

/// Asserts that `st` holds the canary's one finding, whole, and its summary.
pub fn assert_only_the_canary_finding(st: &NucleiScanStatus) {
    let ids: Vec<&str> = st.findings.iter().map(|f| f.template_id.as_str()).collect();
    assert_eq!(ids, ["nuclei-operator-canary"]);
    let f = &st.findings[0];
    assert_eq!(f.severity, Some(Severity::High));
    assert_eq!(f.matched_at, "http://canary.test/canary");
    assert_eq!(f.extracted_results, ["abc123"]);
    assert_eq!(f.cve_ids, ["CVE-2099-0001"]);
    assert_eq!(f.matcher_name, "canary-page");
    let summary = st.summary.as_ref().unwrap();
    assert_eq!(summary.total_findings, 1);
    assert_eq!(summary.findings_by_severity.get("high"), Some(&1));
}

/// A client that authenticates only with `token` (verifying the API server
/// against the CA in the file `ca`).
pub async fn token_client(cluster: &DevCluster, token: &str, ca: &Path) -> kube::Client {
    let kc: Kubeconfig = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {
            "server": format!("https://127.0.0.1:{}", cluster.api_port()),
            "certificate-authority": ca,
        }}],
        "users": [{"name": "sa", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "sa"}}],
        "current-context": "c",
    }))
    .unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A token of ServiceAccount `ns/sa` from a real TokenRequest, bound to
/// `pod` when given (as the kubelet binds a pod's token), else to nothing.
pub async fn service_account_token(
    client: &kube::Client,
    ns: &str,
    sa: &str,
    pod: Option<&Pod>,
) -> String {
    let request = TokenRequest {
        spec: Some(TokenRequestSpec {
            bound_object_ref: pod.map(|p| BoundObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: p.metadata.name.clone(),
                uid: p.metadata.uid.clone(),
            }),
            expiration_seconds: Some(3600),
            ..Default::default()
        }),
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(client.clone(), ns)
        .create_token_request(sa, &PostParams::default(), &request)
        .await
        .unwrap_or_else(|e| panic!("TokenRequest for {ns}/{sa}: {e}"))
        .status
        .and_then(|s| s.token)
        .expect("a token in the TokenRequest status")
}

/// A NucleiScan made by hand (as a user would) with the given spec fields
/// on top of a source reference and one target.
pub async fn create_scan(
    client: &kube::Client,
    ns: &str,
    name: &str,
    target: &str,
    spec: serde_json::Value,
) {
    let mut body = serde_json::json!({
        "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
        "kind": "NucleiScan",
        "metadata": {"name": name},
        "spec": {
            "sourceRef": {"apiVersion": "networking.k8s.io/v1", "kind": "Ingress",
                          "name": name, "namespace": ns, "uid": "00000000-0000-0000-0000-000000000000"},
            "targets": [target],
        },
    });
    for (k, v) in spec.as_object().unwrap() {
        body["spec"][k] = v.clone();
    }
    let scan: NucleiScan = serde_json::from_value(body).unwrap();
    Api::<NucleiScan>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &scan)
        .await
        .unwrap();
}
