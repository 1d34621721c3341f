//! End-to-end, issue #5: where templates come from and how big results are
//! kept. Real scanner Jobs (process kubelet) run the real nuclei against a
//! local target with templates from a ConfigMap and from a git repository
//! served on loopback by `git daemon`; a scan yielding thousands of findings
//! leaves a status under budget with true totals; and sync mode
//! (`SCANNER_MODE=sync`, a second cluster) scans in-process without a Job.

mod support;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use devcluster::{ImageMapping, Tools};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, ListParams, PostParams};
use nuclei_operator::api::{NucleiScan, ScanPhase, Severity};
use serde_json::json;
use support::git::{Daemon, GitServer, canary_template, guarded};
use support::{
    assert_only_the_canary_finding, canary_annotations, canary_target, cluster, completed,
    create_scan, eventually, ingress, namespace, target_ip, template_set,
};
use tokio::sync::OnceCell;

/// The git image the operator is told to use (GIT_IMAGE); the process
/// kubelet maps it to the host's git.
const GIT_IMAGE: &str = "e2e.local/git:test";
/// How many paths the "thousands of findings" template requests.
const MANY: usize = 3000;
/// How many of them the high-severity companion template requests.
const MANY_HIGH: usize = 20;

// ---- environment ------------------------------------------------------------

/// The canary target, shared by both clusters (one listener on `ip:80`).
static TARGET: OnceCell<Ipv4Addr> = OnceCell::const_new();

async fn target() -> Ipv4Addr {
    *TARGET
        .get_or_init(|| async {
            let ip = target_ip(1);
            canary_target(ip).await;
            ip
        })
        .await
}

/// Pod mode: a cluster, the operator, and a git daemon serving one repository.
struct Env {
    cluster: devcluster::DevCluster,
    _operator: Daemon,
    git: GitServer,
}

static ENV: OnceCell<Env> = OnceCell::const_new();

async fn env() -> &'static Env {
    ENV.get_or_init(|| async {
        let ip = target().await;
        let git = GitServer::start(&[(
            "community/git-canary.yaml",
            &canary_template("nuclei-operator-git-canary", "medium", "git-e2e"),
        )]);
        let cluster = cluster(&[
            ("canary.test", ip),
            ("many.test", ip),
            ("realistic.test", ip),
        ])
        .await;
        cluster.add_image(ImageMapping {
            image: GIT_IMAGE.split(':').next().unwrap().into(),
            entrypoint: vec!["git".into()],
            ..ImageMapping::default()
        });
        let (operator, _) = start_operator(
            &cluster,
            &[
                ("MAX_CONCURRENT_SCANS", "4"),
                ("JOB_RATE_LIMIT", "0"),
                ("DEFAULT_TEMPLATES", ""),
                ("GIT_IMAGE", GIT_IMAGE),
            ],
            None,
        )
        .await;
        Env {
            cluster,
            _operator: operator,
            git,
        }
    })
    .await
}

/// Sync mode: its own cluster (two operators must not share one) and an
/// operator that scans in-process.
struct SyncEnv {
    cluster: devcluster::DevCluster,
    _operator: Daemon,
    /// The operator's HTTP port.
    port: u16,
}

static SYNC_ENV: OnceCell<SyncEnv> = OnceCell::const_new();

async fn sync_env() -> &'static SyncEnv {
    SYNC_ENV
        .get_or_init(|| async {
            let ip = target().await;
            // `/slow` answers after 30 s: an in-process scan stays on it.
            let slow = target_ip(2);
            support::slow_target(slow, Duration::from_secs(30));
            let cluster = cluster(&[("canary.test", ip)]).await;
            let tools = Tools::locate().unwrap();
            let nuclei = tools.require(&tools.nuclei).unwrap().to_owned();
            let templates = support::repo().join("testdata/templates");
            let (operator, port) = start_operator(
                &cluster,
                &[
                    ("SCANNER_MODE", "sync"),
                    ("NUCLEI_BINARY", nuclei.to_str().unwrap()),
                    ("NUCLEI_TEMPLATES_PATH", templates.to_str().unwrap()),
                    ("DEFAULT_TEMPLATES", ""),
                ],
                Some(&[("canary.test", ip), ("slow.test", slow)]),
            )
            .await;
            SyncEnv {
                cluster,
                _operator: operator,
                port,
            }
        })
        .await
}

/// Starts the operator (as `support::Operator::start` does, with `env` on
/// top) and waits for `/readyz`. With `hosts`, it runs in a private mount
/// namespace whose `/etc/hosts` resolves them: in sync mode nuclei runs on the
/// host, where the test names do not resolve otherwise. Unlike
/// `Operator::start`, the process dies with this test binary.
async fn start_operator(
    cluster: &devcluster::DevCluster,
    env: &[(&str, &str)],
    hosts: Option<&[(&str, Ipv4Addr)]>,
) -> (Daemon, u16) {
    let (port, health_port) = support::two_free_ports();
    let dir = cluster.dir().join(format!("operator-{port}"));
    let home = dir.join("home");
    std::fs::create_dir_all(&home).unwrap();
    let mut cmd = match hosts {
        None => guarded(support::operator_binary().to_str().unwrap()),
        Some(hosts) => {
            let hosts_file = dir.join("hosts");
            let mut text = String::from("127.0.0.1 localhost\n");
            for (name, ip) in hosts {
                text.push_str(&format!("{ip} {name}\n"));
            }
            std::fs::write(&hosts_file, text).unwrap();
            let mut cmd = guarded("unshare");
            cmd.args(["-m", "--propagation", "private", "--", "sh", "-c"])
                .arg(r#"mount --bind "$1" /etc/hosts && shift && exec "$@""#)
                .arg("sh")
                .arg(&hosts_file)
                .arg(support::operator_binary());
            cmd
        }
    };
    let log = dir.join("operator.log");
    let out = std::fs::File::create(&log).unwrap();
    support::operator_env(&mut cmd, cluster, port, health_port);
    // nuclei (sync mode) writes its config and cache below HOME.
    cmd.env("HOME", &home)
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let daemon = Daemon::spawn(cmd);
    let ready = async {
        while devcluster::http_get(health_port, "/readyz").await.is_none() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    if tokio::time::timeout(Duration::from_secs(30), ready)
        .await
        .is_err()
    {
        panic!(
            "operator (pid {}) not ready in 30s; log:\n{}",
            daemon.pid,
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }
    (daemon, port)
}

// ---- fixtures -----------------------------------------------------------------

/// A template requesting `count` distinct paths, each of which the target
/// answers with its default page: one finding per path.
fn many_template(id: &str, severity: &str, prefix: &str, count: usize) -> String {
    let payloads: String = (0..count)
        .map(|i| format!("          - \"{prefix}-{i:05}\"\n"))
        .collect();
    format!(
        r#"id: {id}

info:
  name: {id} (e2e, one finding per requested path)
  author: nuclei-operator
  severity: {severity}
  description: Requests many distinct paths of the end-to-end target; every one answers with its default page, so every request is a finding. Used to check that a scan with thousands of findings keeps the NucleiScan status under its byte budget while the summary keeps the true totals.
  reference:
    - https://example.invalid/nuclei-operator/many-findings
  tags: many-e2e

http:
  - method: GET
    path:
      - "{{{{BaseURL}}}}/many/{{{{n}}}}"
    payloads:
      n:
{payloads}    matchers:
      - type: word
        name: default-page
        words:
          - "hello"
"#
    )
}

async fn config_map(client: &kube::Client, ns: &str, name: &str, data: &[(&str, String)]) {
    let cm: ConfigMap = serde_json::from_value(json!({
        "metadata": {"name": name},
        "data": data.iter().map(|(k, v)| (k.to_string(), v.clone())).collect::<BTreeMap<_, _>>(),
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
}

async fn jobs_of(client: &kube::Client, ns: &str) -> Vec<Job> {
    Api::<Job>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
}

// ---- tests --------------------------------------------------------------------

#[tokio::test]
async fn templates_from_a_configmap_run_on_top_of_the_selected_templates() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "tpl-configmap").await;
    config_map(
        &client,
        &ns,
        "team-templates",
        &[(
            "configmap-canary.yaml",
            canary_template(
                "nuclei-operator-configmap-canary",
                "medium",
                "configmap-e2e",
            ),
        )],
    )
    .await;
    create_scan(
        &client,
        &ns,
        "cm",
        "http://canary.test",
        json!({
            "templates": ["canary.yaml"],
            "scannerConfig": {"templateConfigMaps": ["team-templates"]},
        }),
    )
    .await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let st = completed(&scans, "cm", Duration::from_secs(180))
        .await
        .status
        .unwrap();
    // The selected built-in template and the ConfigMap's, most severe first;
    // none of the other built-in templates that match the page.
    let ids: Vec<&str> = st.findings.iter().map(|f| f.template_id.as_str()).collect();
    assert_eq!(
        ids,
        ["nuclei-operator-canary", "nuclei-operator-configmap-canary"]
    );
    let f = &st.findings[1];
    assert_eq!(f.severity, Some(Severity::Medium));
    assert_eq!(f.matched_at, "http://canary.test/canary");
    assert_eq!(f.extracted_results, ["abc123"]);
    assert_eq!(f.matcher_name, "canary-page");
    assert_eq!(st.summary.unwrap().total_findings, 2);

    let jobs = jobs_of(&client, &ns).await;
    assert_eq!(jobs.len(), 1);
    let pod = jobs[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let cms: Vec<&str> = pod
        .volumes
        .iter()
        .flatten()
        .filter_map(|v| v.config_map.as_ref().map(|c| c.name.as_str()))
        .collect();
    assert_eq!(cms, ["team-templates"]);
}

#[tokio::test]
async fn templates_from_a_git_repository_are_cloned_at_their_branch_and_directory_and_the_commit_is_recorded()
 {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "tpl-git").await;
    let clones = e.git.upload_packs();
    let source = format!("{}#main:/community/", e.git.url);
    create_scan(
        &client,
        &ns,
        "git",
        "http://canary.test",
        json!({
            "tags": ["git-e2e"],
            "scannerConfig": {"templateURLs": [source]},
        }),
    )
    .await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let st = completed(&scans, "git", Duration::from_secs(180))
        .await
        .status
        .unwrap();
    let ids: Vec<&str> = st.findings.iter().map(|f| f.template_id.as_str()).collect();
    assert_eq!(ids, ["nuclei-operator-git-canary"]);
    let f = &st.findings[0];
    assert_eq!(f.severity, Some(Severity::Medium));
    assert_eq!(f.matched_at, "http://canary.test/canary");
    assert_eq!(f.extracted_results, ["abc123"]);
    // The commit the run used, as the repository has it.
    assert_eq!(
        serde_json::to_value(&st.template_sources).unwrap(),
        json!([{"url": e.git.url, "ref": "main", "path": "community", "commit": e.git.head()}])
    );
    assert_eq!(e.git.upload_packs(), clones + 1, "one clone for one run");

    // Cloned by the init container, from the configured git image.
    let jobs = jobs_of(&client, &ns).await;
    assert_eq!(jobs.len(), 1);
    let pod = jobs[0]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let init = pod
        .init_containers
        .as_ref()
        .expect("a git-clone init container");
    assert_eq!(init.len(), 1);
    assert_eq!(init[0].image.as_deref(), Some(GIT_IMAGE));
    let args: Vec<&str> = init[0].args.iter().flatten().map(String::as_str).collect();
    assert_eq!(
        args,
        [
            "clone",
            "--depth",
            "1",
            "--branch",
            "main",
            "--",
            &e.git.url,
            "/templates/git/0"
        ]
    );
}

#[tokio::test]
async fn a_template_url_pinned_to_a_commit_runs_that_commits_templates() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "tpl-git-pinned").await;
    // A pinned scan keeps the commit it names when the branch moves on (a
    // repository of its own: the others' tests read the shared one's head).
    let git = GitServer::start(&[(
        "community/git-canary.yaml",
        &canary_template("nuclei-operator-git-canary", "medium", "git-e2e"),
    )]);
    let pinned = git.head();
    git.commit(
        &[(
            "community/git-canary-later.yaml",
            &canary_template("nuclei-operator-git-canary-later", "medium", "git-e2e"),
        )],
        "a later template",
    );
    create_scan(
        &client,
        &ns,
        "pinned",
        "http://canary.test",
        json!({
            "tags": ["git-e2e"],
            "scannerConfig": {"templateURLs": [format!("{}#{pinned}:community", git.url)]},
        }),
    )
    .await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let st = completed(&scans, "pinned", Duration::from_secs(180))
        .await
        .status
        .unwrap();
    let ids: Vec<&str> = st.findings.iter().map(|f| f.template_id.as_str()).collect();
    assert_eq!(ids, ["nuclei-operator-git-canary"]);
    assert_eq!(st.template_sources.len(), 1);
    assert_eq!(
        st.template_sources[0].commit.as_deref(),
        Some(pinned.as_str())
    );
}

#[tokio::test]
async fn a_template_repository_that_cannot_be_cloned_fails_the_scan_naming_it() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "tpl-git-missing").await;
    let missing = e.git.url.replace("templates.git", "missing.git");
    create_scan(
        &client,
        &ns,
        "missing",
        "http://canary.test",
        json!({"scannerConfig": {"templateURLs": [missing]}}),
    )
    .await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let error = eventually(Duration::from_secs(120), "the scan failed", || async {
        let st = scans.get_opt("missing").await.ok()??.status?;
        (st.phase? == ScanPhase::Failed).then_some(st.last_error?)
    })
    .await;
    // The clone's own words, not only the Job's "backoff limit".
    assert!(
        error.contains("init container git-clone-0 exited 128") && error.contains("/missing.git"),
        "{error}"
    );
}

#[tokio::test]
async fn thousands_of_findings_leave_a_status_under_budget_with_true_totals() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "tpl-many").await;
    config_map(
        &client,
        &ns,
        "many-templates",
        &[
            (
                "many-info.yaml",
                many_template("nuclei-operator-many-info", "info", "info", MANY),
            ),
            (
                "many-high.yaml",
                many_template("nuclei-operator-many-high", "high", "high", MANY_HIGH),
            ),
        ],
    )
    .await;
    create_scan(
        &client,
        &ns,
        "many",
        "http://many.test",
        json!({
            "tags": ["many-e2e"],
            "rateLimit": 5000,
            "scannerConfig": {"templateConfigMaps": ["many-templates"]},
        }),
    )
    .await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let started = Instant::now();
    let st = completed(&scans, "many", Duration::from_secs(420))
        .await
        .status
        .unwrap();
    let elapsed = started.elapsed();

    // The whole status as the API server stores it.
    let raw: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns, &ApiResource::erase::<NucleiScan>(&()));
    let obj = raw.get("many").await.unwrap();
    let status_bytes = serde_json::to_vec(&obj.data["status"]).unwrap().len();
    let object_bytes = serde_json::to_vec(&obj).unwrap().len();

    let summary = st.summary.clone().unwrap();
    let total = (MANY + MANY_HIGH) as i64;
    let stored = st.findings.len();
    eprintln!(
        "thousands of findings: total {} (info {:?}, high {:?}), stored {stored}, truncated {}, \
         status {status_bytes} bytes ({:.1} KiB), object {object_bytes} bytes, scan took {:.1}s",
        summary.total_findings,
        summary.findings_by_severity.get("info"),
        summary.findings_by_severity.get("high"),
        summary.findings_truncated,
        status_bytes as f64 / 1024.0,
        elapsed.as_secs_f64(),
    );
    assert_eq!(summary.total_findings, total, "the true count");
    assert_eq!(
        summary.findings_by_severity.get("info"),
        Some(&(MANY as i64))
    );
    assert_eq!(
        summary.findings_by_severity.get("high"),
        Some(&(MANY_HIGH as i64))
    );
    assert!(summary.findings_truncated);
    assert_eq!(summary.stored_findings, Some(stored as i64));
    assert!(stored < MANY, "stored {stored} of {total}");
    // Every finding's fingerprint is kept, stored or not, for the next
    // run's new/resolved counts; all are new on the first run.
    assert_eq!(summary.new_findings, Some(total));
    assert_eq!(
        st.fingerprints.as_ref().map(String::len),
        Some(total as usize * 16)
    );
    assert!(
        status_bytes < 512 * 1024,
        "status is {status_bytes} bytes, over the 512 KiB budget"
    );
    // Most severe first: every high finding is kept, ahead of the info ones.
    let highs = st
        .findings
        .iter()
        .take_while(|f| f.severity == Some(Severity::High))
        .count();
    assert_eq!(highs, MANY_HIGH);
    assert!(
        st.findings[MANY_HIGH..]
            .iter()
            .all(|f| f.severity == Some(Severity::Info))
    );
    // Distinct paths, as nuclei reported them.
    let paths: std::collections::BTreeSet<&str> =
        st.findings.iter().map(|f| f.matched_at.as_str()).collect();
    assert_eq!(paths.len(), stored);
    assert!(paths.contains("http://many.test/many/high-00000"));
}

/// Issue #16 part 2: a template set of realistic size and shape (275
/// templates of 11 kinds, see `support::template_set`), most finding
/// nothing, from a ConfigMap: the scan reports exactly the findings the set
/// defines (one per named matcher that fires), with their severities,
/// extracted values and classification, and true totals. Its wall time and
/// nuclei's peak memory are printed, not asserted.
#[tokio::test]
async fn a_realistic_template_set_reports_exactly_the_findings_it_defines() {
    let e = env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "tpl-realistic").await;
    let set = template_set::generate();
    let data: Vec<(&str, String)> = set
        .files
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    config_map(&client, &ns, "realistic-templates", &data).await;
    create_scan(
        &client,
        &ns,
        "realistic",
        "http://realistic.test",
        json!({
            "tags": [template_set::TAG],
            "rateLimit": 5000,
            "scannerConfig": {"templateConfigMaps": ["realistic-templates"]},
        }),
    )
    .await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let st = completed(&scans, "realistic", Duration::from_secs(300))
        .await
        .status
        .unwrap();
    let mut got: Vec<template_set::Expected> = st
        .findings
        .iter()
        .map(|f| template_set::Expected {
            template_id: f.template_id.clone(),
            matcher_name: f.matcher_name.clone(),
            severity: f
                .severity
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            path: f
                .matched_at
                .trim_start_matches("http://realistic.test")
                .to_owned(),
            extracted: f.extracted_results.clone(),
        })
        .collect();
    got.sort();
    assert_eq!(got, set.expected);
    for f in &st.findings {
        let i: usize = f.template_id.rsplit('-').next().unwrap().parse().unwrap();
        assert_eq!(f.cve_ids, [format!("CVE-2099-{:04}", 1000 + i)], "{f:?}");
        assert_eq!(f.cwe_ids, ["CWE-200"], "{f:?}");
        assert_eq!(f.cvss_score, Some(5.3), "{f:?}");
    }
    let summary = st.summary.unwrap();
    let total = set.expected.len() as i64;
    assert_eq!(summary.total_findings, total);
    assert!(!summary.findings_truncated);
    let mut by_severity = BTreeMap::new();
    for x in &set.expected {
        *by_severity.entry(x.severity.clone()).or_insert(0i64) += 1;
    }
    for (severity, n) in &by_severity {
        assert_eq!(
            summary.findings_by_severity.get(severity),
            Some(n),
            "{severity}"
        );
    }
    // Each named matcher is a finding of its own, with a fingerprint of its own.
    assert_eq!(summary.new_findings, Some(total));

    let pod_name = st.job_ref.unwrap().pod_name.unwrap();
    let log = std::fs::read_to_string(e.cluster.container_log(&ns, &pod_name, "scanner")).unwrap();
    let rss = log
        .split("nuclei_peak_rss_bytes=")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no nuclei_peak_rss_bytes in the scanner's log:\n{log}"));
    eprintln!(
        "realistic template set: {} templates, {total} findings, scan took {} s \
         (durationSeconds), nuclei peak RSS {:.1} MiB",
        set.files.len(),
        summary.duration_seconds,
        rss as f64 / (1024.0 * 1024.0)
    );
}

#[tokio::test]
async fn sync_mode_scans_the_canary_in_process_without_a_job() {
    let e = sync_env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "sync-canary").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    ingresses
        .create(
            &PostParams::default(),
            &ingress("canary", "canary.test", canary_annotations()),
        )
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let st = completed(&scans, "canary-ingress", Duration::from_secs(180))
        .await
        .status
        .unwrap();
    assert_only_the_canary_finding(&st);
    assert!(st.job_ref.is_none(), "{:?}", st.job_ref);
    assert!(
        jobs_of(&client, &ns).await.is_empty(),
        "sync mode created a Job"
    );
}

#[tokio::test]
async fn sync_mode_stops_an_in_process_scan_whose_ingress_is_deleted_and_frees_its_slot() {
    let e = sync_env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "sync-deleted").await;
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    let ann = json!({"nuclei.homelab.mortenolsen.pro/templates": "slow.yaml"});
    ingresses
        .create(&PostParams::default(), &ingress("slow", "slow.test", ann))
        .await
        .unwrap();
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    eventually(Duration::from_secs(60), "scan Running", || async {
        let s = scans.get_opt("slow-ingress").await.ok()??;
        (s.status?.phase? == ScanPhase::Running).then_some(())
    })
    .await;
    ingresses
        .delete("slow", &DeleteParams::default())
        .await
        .unwrap();
    let key = format!("{ns}/slow-ingress");
    // Within the audit interval (10 s), well before nuclei would give up on
    // the page (twice its 10 s request timeout).
    eventually(Duration::from_secs(15), "the slot freed", || async {
        let queue: serde_json::Value =
            serde_json::from_str(&devcluster::http_get(e.port, "/queue").await?).ok()?;
        let held = queue["running"]
            .as_array()?
            .iter()
            .any(|r| r["scan"] == key.as_str());
        (!held).then_some(())
    })
    .await;
}

#[tokio::test]
async fn sync_mode_refuses_template_configmaps_with_a_reason() {
    let e = sync_env().await;
    let client = e.cluster.client().await.unwrap();
    let ns = namespace(&client, "sync-configmap").await;
    create_scan(
        &client,
        &ns,
        "cm",
        "http://canary.test",
        json!({"scannerConfig": {"templateConfigMaps": ["team-templates"]}}),
    )
    .await;
    let scans: Api<NucleiScan> = Api::namespaced(client.clone(), &ns);
    let s = eventually(Duration::from_secs(90), "scan Failed", || async {
        let s = scans.get_opt("cm").await.ok()??;
        (s.status.as_ref()?.phase? == ScanPhase::Failed).then_some(s)
    })
    .await;
    let err = s.status.unwrap().last_error.unwrap_or_default();
    assert!(
        err.contains("templateConfigMaps need SCANNER_MODE=pod"),
        "{err}"
    );
    assert!(jobs_of(&client, &ns).await.is_empty());
}
