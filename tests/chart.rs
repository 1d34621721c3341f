//! Tests of the Helm chart (`deploy/helm/nuclei-operator`) and the
//! `Dockerfile`, with the real `helm` pinned by `devcluster/tools/versions.env`
//! (built by `devcluster/tools/build.sh`).
//!
//! The chart is rendered with `helm template` and its YAML read back as JSON
//! values, so each test checks the manifests Kubernetes would receive: the
//! operator's environment against [`nuclei_operator::settings`], every
//! values.yaml leaf against what it claims to set, the pod's security context,
//! the RBAC rules, and the image the Dockerfile builds against the chart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, Result, anyhow, bail, ensure};
use nuclei_operator::settings::{Settings, env_table};
use serde::Deserialize;
use serde_json::{Value, json};

// Shared with the e2e tests (`support::monitoring`); included by path because
// the rest of `support` is the e2e harness.
#[path = "support/monitoring.rs"]
mod monitoring;
use monitoring::{DASHBOARD_KEY, monitoring_metric_names, render_monitoring, strings_under};

/// Release name used for every render; the chart names objects
/// `<release>-nuclei-operator`.
const RELEASE: &str = "scans";
/// Objects' names for [`RELEASE`].
const FULLNAME: &str = "scans-nuclei-operator";
/// Release namespace used for every render.
const NAMESPACE: &str = "nuclei-system";
/// Name of the operator container.
const CONTAINER: &str = "operator";
/// The image the chart runs by default: the published one at the one
/// version (the crate's).
const PUBLISHED_IMAGE: &str = concat!(
    "ghcr.io/morten-olsen/nuclei-operator:",
    env!("CARGO_PKG_VERSION")
);
/// User and group of the image (distroless `nonroot`).
const NONROOT: i64 = 65532;
/// Kinds of the scanner's admission policy and its binding.
const POLICY: &str = "ValidatingAdmissionPolicy";
const POLICY_BINDING: &str = "ValidatingAdmissionPolicyBinding";
/// The alerts of the chart's PrometheusRule.
const ALERTS: [&str; 4] = [
    "NucleiFindings",
    "NucleiScanFailing",
    "NucleiScanOverdue",
    "NucleiQueueBacklogGrowing",
];
/// The operator's metrics as its /metrics shows them (histograms by their
/// `_bucket`, `_sum` and `_count` series), from the real exposition of a
/// leader with one scan that has every per-scan series.
fn exported() -> BTreeSet<String> {
    use kube::runtime::{reflector, watcher::Event};
    use nuclei_operator::api::{NucleiScan, NucleiScanStatus, ScanPhase, ScanSummary};
    use nuclei_operator::scan::status::time;
    let mut scan = NucleiScan::new("shop-ingress", Default::default());
    scan.metadata.namespace = Some("web".into());
    let now = Some(time(chrono::Utc::now()));
    scan.status = Some(NucleiScanStatus {
        phase: Some(ScanPhase::Completed),
        summary: Some(ScanSummary::default()),
        last_success_time: now.clone(),
        next_scheduled_time: now,
        ..Default::default()
    });
    let (reader, mut writer) = reflector::store();
    writer.apply_watcher_event(&Event::Init);
    writer.apply_watcher_event(&Event::InitApply(scan));
    writer.apply_watcher_event(&Event::InitDone);
    let metrics = nuclei_operator::metrics::Metrics::default();
    metrics.read_scans_from(reader);
    metrics
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect()
}

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn chart_dir() -> PathBuf {
    repo_root().join("deploy/helm/nuclei-operator")
}

/// The pinned helm binary, located once per test binary.
fn helm() -> Result<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    HELM.get_or_init(|| {
        let tools = devcluster::Tools::locate().map_err(|e| format!("{e:#}"))?;
        tools
            .require(&tools.helm)
            .map(Path::to_path_buf)
            .map_err(|e| format!("{e:#}"))
    })
    .clone()
    .map_err(|e| anyhow!(e))
}

/// Runs helm with `args`; `Ok` holds stdout, `Err` stderr (and stdout).
fn run_helm(args: &[&str]) -> Result<std::result::Result<String, String>> {
    let out = Command::new(helm()?)
        .args(args)
        .output()
        .context("running helm")?;
    let stdout = String::from_utf8(out.stdout)?;
    if out.status.success() {
        Ok(Ok(stdout))
    } else {
        Ok(Err(format!(
            "{}{stdout}",
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

fn template_args<'a>(chart: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["template", RELEASE, chart, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    args
}

/// Renders the chart with extra helm arguments (`--set`, `--set-json`, …).
fn render(extra: &[&str]) -> Result<Rendered> {
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path is not UTF-8")?;
    match run_helm(&template_args(chart, extra))? {
        Ok(yaml) => Rendered::parse(&yaml),
        Err(e) => bail!("helm template {extra:?} failed: {e}"),
    }
}

/// Renders the chart expecting helm to refuse; returns its message.
fn render_error(extra: &[&str]) -> Result<String> {
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path is not UTF-8")?;
    match run_helm(&template_args(chart, extra))? {
        Ok(_) => bail!("helm template {extra:?} should have failed"),
        Err(e) => Ok(e),
    }
}

/// The objects of one `helm template` run: the release's, and its hooks
/// apart (Helm runs those around an install or upgrade, not as part of it).
#[derive(Clone, Debug)]
struct Rendered {
    docs: Vec<Value>,
    hooks: Vec<Value>,
}

impl Rendered {
    fn parse(yaml: &str) -> Result<Rendered> {
        let (mut docs, mut hooks) = (Vec::new(), Vec::new());
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = Value::deserialize(doc).context("helm printed invalid YAML")?;
            if value.is_null() {
                continue;
            }
            if value["metadata"]["annotations"]
                .get("helm.sh/hook")
                .is_some()
            {
                hooks.push(value);
            } else {
                docs.push(value);
            }
        }
        Ok(Rendered { docs, hooks })
    }

    /// The one hook of `kind`.
    fn hook(&self, kind: &str) -> Result<&Value> {
        match self
            .hooks
            .iter()
            .filter(|d| d["kind"] == kind)
            .collect::<Vec<_>>()[..]
        {
            [one] => Ok(one),
            ref many => bail!("expected one {kind} hook, found {}", many.len()),
        }
    }

    fn all(&self, kind: &str) -> Vec<&Value> {
        self.docs.iter().filter(|d| d["kind"] == kind).collect()
    }

    /// The one object of `kind`; an error when there is none or several.
    fn one(&self, kind: &str) -> Result<&Value> {
        match self.all(kind).as_slice() {
            [one] => Ok(one),
            many => bail!("expected one {kind}, found {}", many.len()),
        }
    }

    /// The one object of `kind` named `name`.
    fn named(&self, kind: &str, name: &str) -> Result<&Value> {
        match self
            .all(kind)
            .into_iter()
            .filter(|d| d["metadata"]["name"] == name)
            .collect::<Vec<_>>()[..]
        {
            [one] => Ok(one),
            ref many => bail!("expected one {kind} {name}, found {}", many.len()),
        }
    }

    fn deployment(&self) -> Result<&Value> {
        self.one("Deployment")
    }

    /// The rule of the PrometheusRule that defines `alert`.
    fn alert(&self, alert: &str) -> Result<&Value> {
        self.one("PrometheusRule")?["spec"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().into_iter().flatten())
            .find(|r| r["alert"] == alert)
            .with_context(|| format!("no alert {alert}"))
    }

    /// The Grafana dashboard's ConfigMap.
    fn dashboard(&self) -> Result<&Value> {
        self.one("ConfigMap")
    }

    fn pod_spec(&self) -> Result<&Value> {
        Ok(&self.deployment()?["spec"]["template"]["spec"])
    }

    fn container(&self) -> Result<&Value> {
        self.pod_spec()?["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == CONTAINER)
            .with_context(|| format!("no container named {CONTAINER}"))
    }

    /// The operator container's env entries by name; an error on duplicates.
    fn env(&self) -> Result<BTreeMap<String, Value>> {
        let mut env = BTreeMap::new();
        for entry in self.container()?["env"].as_array().into_iter().flatten() {
            let name = entry["name"].as_str().context("env entry without name")?;
            ensure!(
                env.insert(name.to_owned(), entry.clone()).is_none(),
                "env {name} is set twice"
            );
        }
        Ok(env)
    }

    /// The literal value of env `name`, if set with `value`.
    fn env_value(&self, name: &str) -> Result<Option<String>> {
        Ok(self
            .env()?
            .get(name)
            .and_then(|e| e["value"].as_str().map(str::to_owned)))
    }
}

/// Fails unless the operator container has env `name` = `want`.
fn env_is(r: &Rendered, name: &str, want: &str) -> Result<()> {
    let got = r.env_value(name)?;
    ensure!(
        got.as_deref() == Some(want),
        "env {name} is {got:?}, expected {want:?}"
    );
    Ok(())
}

/// Fails unless `actual` equals `want`, naming `what`.
fn field_is(what: &str, actual: &Value, want: Value) -> Result<()> {
    ensure!(*actual == want, "{what} is {actual}, expected {want}");
    Ok(())
}

/// The settings the operator would parse from the rendered environment, with
/// the downward-API variables filled in as the kubelet would.
fn settings_of(r: &Rendered) -> Result<Settings> {
    let flags: HashMap<String, String> = env_table()
        .into_iter()
        .map(|row| (row.env, row.flag))
        .collect();
    let mut args = vec!["nuclei-operator".to_owned()];
    for (name, entry) in r.env()? {
        let value = match entry["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
            Some("metadata.name") => format!("{FULLNAME}-5d9f7c8b6-x2x4q"),
            Some("metadata.namespace") => NAMESPACE.to_owned(),
            Some(other) => bail!("env {name} comes from unexpected field {other}"),
            None => entry["value"]
                .as_str()
                .with_context(|| format!("env {name} has neither value nor fieldRef"))?
                .to_owned(),
        };
        let flag = flags
            .get(&name)
            .with_context(|| format!("env {name} is not an operator setting"))?;
        args.push(format!("{flag}={value}"));
    }
    Settings::from_flags(&args).map_err(|e| anyhow!("the operator rejects {args:?}: {e}"))
}

/// Every leaf of a values tree as a dotted path: scalars, lists and empty maps.
fn leaves(value: &Value, prefix: &str, out: &mut BTreeSet<String>) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                leaves(child, &path, out);
            }
        }
        _ => {
            out.insert(prefix.to_owned());
        }
    }
}

fn values_yaml() -> Result<Value> {
    let text = std::fs::read_to_string(chart_dir().join("values.yaml"))?;
    Ok(serde_yaml::from_str(&text)?)
}

/// One values.yaml leaf, a non-default setting of it, and what that must
/// change in the rendered manifests.
struct Case {
    /// Dotted path of the leaf in values.yaml.
    value: &'static str,
    /// Arguments both renders share, e.g. enabling the ServiceMonitor whose
    /// fields the case changes.
    context: &'static [&'static str],
    /// Arguments that give the leaf its non-default value.
    set: &'static [&'static str],
    /// Holds for the changed render and must not hold without the change.
    expect: fn(&Rendered) -> Result<()>,
}

/// One [`Case`] per values.yaml leaf.
fn cases() -> Vec<Case> {
    const NO_CONTEXT: &[&str] = &[];
    const SERVICE_MONITOR: &[&str] = &["--set", "serviceMonitor.enabled=true"];
    const NETWORK_POLICY: &[&str] = &["--set", "networkPolicy.enabled=true"];
    const PROMETHEUS_RULE: &[&str] = &["--set", "prometheusRule.enabled=true"];
    const GRAFANA_DASHBOARD: &[&str] = &["--set", "grafanaDashboard.enabled=true"];
    vec![
        Case {
            value: "replicaCount",
            context: NO_CONTEXT,
            set: &["--set", "replicaCount=3"],
            expect: |r| field_is("replicas", &r.deployment()?["spec"]["replicas"], json!(3)),
        },
        Case {
            value: "image.repository",
            context: NO_CONTEXT,
            set: &["--set", "image.repository=registry.example/nuclei"],
            expect: |r| {
                let image = concat!("registry.example/nuclei:", env!("CARGO_PKG_VERSION"));
                field_is("image", &r.container()?["image"], json!(image))?;
                env_is(r, "SCANNER_IMAGE", image)
            },
        },
        Case {
            value: "image.tag",
            context: NO_CONTEXT,
            set: &["--set", "image.tag=1.2.3"],
            expect: |r| {
                let image = json!("ghcr.io/morten-olsen/nuclei-operator:1.2.3");
                field_is("image", &r.container()?["image"], image)?;
                env_is(
                    r,
                    "SCANNER_IMAGE",
                    "ghcr.io/morten-olsen/nuclei-operator:1.2.3",
                )
            },
        },
        Case {
            value: "image.pullPolicy",
            context: NO_CONTEXT,
            set: &["--set", "image.pullPolicy=Always"],
            expect: |r| {
                field_is(
                    "imagePullPolicy",
                    &r.container()?["imagePullPolicy"],
                    json!("Always"),
                )
            },
        },
        Case {
            value: "imagePullSecrets",
            context: NO_CONTEXT,
            set: &["--set-json", r#"imagePullSecrets=[{"name":"regcred"}]"#],
            expect: |r| {
                field_is(
                    "imagePullSecrets",
                    &r.pod_spec()?["imagePullSecrets"],
                    json!([{"name": "regcred"}]),
                )
            },
        },
        Case {
            value: "leaderElection.enabled",
            context: NO_CONTEXT,
            set: &["--set", "leaderElection.enabled=false"],
            expect: |r| {
                env_is(r, "LEADER_ELECTION", "false")?;
                ensure!(
                    r.named("Role", LEASE_ROLE).is_err(),
                    "the lease Role is still rendered"
                );
                ensure!(
                    r.named("RoleBinding", LEASE_ROLE).is_err(),
                    "the lease RoleBinding is still rendered"
                );
                field_is(
                    "strategy",
                    &r.deployment()?["spec"]["strategy"],
                    json!({"type": "Recreate"}),
                )
            },
        },
        Case {
            value: "leaderElection.leaseName",
            context: NO_CONTEXT,
            set: &["--set", "leaderElection.leaseName=my-lease"],
            expect: |r| {
                env_is(r, "LEASE_NAME", "my-lease")?;
                let names = &r.named("Role", LEASE_ROLE)?["rules"][1]["resourceNames"];
                field_is("the lease Role's resourceNames", names, json!(["my-lease"]))
            },
        },
        Case {
            value: "scanner.mode",
            context: NO_CONTEXT,
            set: &["--set", "scanner.mode=sync"],
            expect: |r| env_is(r, "SCANNER_MODE", "sync"),
        },
        Case {
            value: "scanner.image",
            context: NO_CONTEXT,
            set: &["--set", "scanner.image=registry.example/scanner:2"],
            expect: |r| {
                env_is(r, "SCANNER_IMAGE", "registry.example/scanner:2")?;
                // The operator's own image stays.
                let image = json!(PUBLISHED_IMAGE);
                field_is("image", &r.container()?["image"], image)
            },
        },
        Case {
            value: "scanner.timeout",
            context: NO_CONTEXT,
            set: &["--set", "scanner.timeout=45m"],
            expect: |r| env_is(r, "SCANNER_TIMEOUT", "45m"),
        },
        Case {
            value: "scanner.resources",
            context: NO_CONTEXT,
            set: &[
                "--set",
                "scanner.resources.requests.cpu=100m,scanner.resources.limits.memory=1Gi",
            ],
            expect: |r| {
                env_is(
                    r,
                    "SCANNER_RESOURCES",
                    r#"{"limits":{"memory":"1Gi"},"requests":{"cpu":"100m"}}"#,
                )?;
                let s = settings_of(r)?.scanner_resources.context("not parsed")?;
                ensure!(s.limits.context("no limits")?["memory"].0 == "1Gi");
                Ok(())
            },
        },
        Case {
            value: "scanner.maxConcurrent",
            context: NO_CONTEXT,
            set: &["--set", "scanner.maxConcurrent=7"],
            expect: |r| env_is(r, "MAX_CONCURRENT_SCANS", "7"),
        },
        Case {
            value: "scanner.ttlAfterFinished",
            context: NO_CONTEXT,
            set: &["--set", "scanner.ttlAfterFinished=600"],
            expect: |r| env_is(r, "JOB_TTL_AFTER_FINISHED", "600"),
        },
        Case {
            value: "scanner.backoffLimit",
            context: NO_CONTEXT,
            set: &["--set", "scanner.backoffLimit=2"],
            expect: |r| env_is(r, "JOB_BACKOFF_LIMIT", "2"),
        },
        Case {
            value: "scanner.allowedImages",
            context: NO_CONTEXT,
            set: &[
                "--set-json",
                r#"scanner.allowedImages=["registry.example.com/sec/*","mirror/nuclei:2"]"#,
            ],
            expect: |r| {
                env_is(
                    r,
                    "ALLOWED_SCANNER_IMAGES",
                    "registry.example.com/sec/*,mirror/nuclei:2",
                )
            },
        },
        Case {
            value: "targets.denyCidrs",
            context: NO_CONTEXT,
            set: &["--set-json", r#"targets.denyCidrs=["0.0.0.0/0","::/0"]"#],
            expect: |r| env_is(r, "TARGET_DENY_CIDRS", "0.0.0.0/0,::/0"),
        },
        Case {
            value: "targets.allowCidrs",
            context: NO_CONTEXT,
            set: &["--set-json", r#"targets.allowCidrs=["10.0.0.0/8"]"#],
            expect: |r| env_is(r, "TARGET_ALLOW_CIDRS", "10.0.0.0/8"),
        },
        Case {
            value: "targets.denyHostSuffixes",
            context: NO_CONTEXT,
            set: &[
                "--set-json",
                r#"targets.denyHostSuffixes=["corp.internal"]"#,
            ],
            expect: |r| env_is(r, "TARGET_DENY_HOST_SUFFIXES", "corp.internal"),
        },
        Case {
            value: "targets.allowHostSuffixes",
            context: NO_CONTEXT,
            set: &[
                "--set-json",
                r#"targets.allowHostSuffixes=["demo.svc.cluster.local"]"#,
            ],
            expect: |r| env_is(r, "TARGET_ALLOW_HOST_SUFFIXES", "demo.svc.cluster.local"),
        },
        Case {
            value: "targets.ingressClasses",
            context: NO_CONTEXT,
            set: &["--set-json", r#"targets.ingressClasses=["public","-"]"#],
            expect: |r| env_is(r, "INGRESS_CLASSES", "public,-"),
        },
        Case {
            value: "targets.namespaceSelector",
            context: NO_CONTEXT,
            set: &[
                "--set-json",
                r#"targets.namespaceSelector=["team=web","!quarantine"]"#,
            ],
            expect: |r| env_is(r, "SCAN_NAMESPACE_SELECTOR", "team=web,!quarantine"),
        },
        Case {
            value: "scanner.maxRateLimit",
            context: NO_CONTEXT,
            set: &["--set", "scanner.maxRateLimit=40"],
            expect: |r| env_is(r, "MAX_RATE_LIMIT", "40"),
        },
        Case {
            value: "scanner.interactshUrl",
            context: NO_CONTEXT,
            set: &[
                "--set",
                "scanner.interactshUrl=https://oast.example.internal",
            ],
            expect: |r| env_is(r, "INTERACTSH_URL", "https://oast.example.internal"),
        },
        Case {
            value: "scanner.startTimeout",
            context: NO_CONTEXT,
            set: &["--set", "scanner.startTimeout=90s"],
            expect: |r| env_is(r, "POD_START_TIMEOUT", "90s"),
        },
        Case {
            value: "scanner.serviceAccountName",
            context: NO_CONTEXT,
            set: &["--set", "scanner.serviceAccountName=scanner"],
            expect: |r| {
                env_is(r, "SCANNER_SERVICE_ACCOUNT", "scanner")?;
                // The admission policy follows the scanner's writes.
                let condition = scanner_match_condition(r)?;
                ensure!(condition.contains("endsWith(':scanner')"), "{condition}");
                Ok(())
            },
        },
        Case {
            value: "scanner.admissionPolicy.enabled",
            context: NO_CONTEXT,
            set: &["--set", "scanner.admissionPolicy.enabled=false"],
            expect: |r| {
                for kind in [POLICY, POLICY_BINDING] {
                    ensure!(r.all(kind).is_empty(), "a {kind} is rendered");
                }
                Ok(())
            },
        },
        Case {
            value: "templates.path",
            context: NO_CONTEXT,
            set: &["--set", "templates.path=/templates"],
            expect: |r| env_is(r, "NUCLEI_TEMPLATES_PATH", "/templates"),
        },
        Case {
            value: "templates.defaults",
            context: NO_CONTEXT,
            set: &["--set", "templates.defaults={dns/,ssl/deprecated-tls.yaml}"],
            expect: |r| env_is(r, "DEFAULT_TEMPLATES", "dns/,ssl/deprecated-tls.yaml"),
        },
        Case {
            value: "templates.severity",
            context: NO_CONTEXT,
            set: &["--set", "templates.severity={high,critical}"],
            expect: |r| env_is(r, "DEFAULT_SEVERITY", "high,critical"),
        },
        Case {
            value: "templates.repositories",
            context: NO_CONTEXT,
            set: &[
                "--set-json",
                r#"templates.repositories=[{"url":"https://h.example/t.git","branch":"v1","path":"/cves"}]"#,
            ],
            expect: |r| {
                env_is(
                    r,
                    "TEMPLATE_REPOSITORIES",
                    r#"[{"branch":"v1","path":"/cves","url":"https://h.example/t.git"}]"#,
                )
            },
        },
        Case {
            value: "templates.refreshInterval",
            context: NO_CONTEXT,
            set: &["--set", "templates.refreshInterval=6h"],
            expect: |r| env_is(r, "TEMPLATE_REFRESH_INTERVAL", "6h"),
        },
        Case {
            value: "templates.gitImage",
            context: NO_CONTEXT,
            set: &["--set", "templates.gitImage=alpine/git:v2.47.2"],
            expect: |r| env_is(r, "GIT_IMAGE", "alpine/git:v2.47.2"),
        },
        Case {
            value: "operator.rescanAge",
            context: NO_CONTEXT,
            set: &["--set", "operator.rescanAge=0"],
            expect: |r| env_is(r, "RESCAN_AGE", "0"),
        },
        Case {
            value: "operator.backoff.initial",
            context: NO_CONTEXT,
            set: &["--set", "operator.backoff.initial=30s"],
            expect: |r| env_is(r, "BACKOFF_INITIAL", "30s"),
        },
        Case {
            value: "operator.backoff.max",
            context: NO_CONTEXT,
            set: &["--set", "operator.backoff.max=1h"],
            expect: |r| env_is(r, "BACKOFF_MAX", "1h"),
        },
        Case {
            value: "operator.backoff.multiplier",
            context: NO_CONTEXT,
            set: &["--set", "operator.backoff.multiplier=1.5"],
            expect: |r| env_is(r, "BACKOFF_MULTIPLIER", "1.5"),
        },
        Case {
            value: "operator.maxRetries",
            context: NO_CONTEXT,
            set: &["--set", "operator.maxRetries=9"],
            expect: |r| env_is(r, "MAX_RETRIES", "9"),
        },
        Case {
            value: "operator.reconcileConcurrency",
            context: NO_CONTEXT,
            set: &["--set", "operator.reconcileConcurrency=12"],
            expect: |r| env_is(r, "RECONCILE_CONCURRENCY", "12"),
        },
        Case {
            value: "operator.jobRateLimit",
            context: NO_CONTEXT,
            set: &["--set", "operator.jobRateLimit=0"],
            expect: |r| env_is(r, "JOB_RATE_LIMIT", "0"),
        },
        Case {
            value: "operator.targetCheckTimeout",
            context: NO_CONTEXT,
            set: &["--set", "operator.targetCheckTimeout=2s"],
            expect: |r| env_is(r, "TARGET_CHECK_TIMEOUT", "2s"),
        },
        Case {
            value: "crds.upgrade",
            context: NO_CONTEXT,
            set: &["--set", "crds.upgrade=false"],
            expect: |r| {
                ensure!(r.hooks.is_empty(), "hooks left: {:?}", r.hooks);
                Ok(())
            },
        },
        Case {
            value: "reports.format",
            context: NO_CONTEXT,
            set: &["--set", "reports.format=wgpolicy"],
            expect: |r| {
                env_is(r, "REPORTS_FORMAT", "wgpolicy")?;
                let operator = r
                    .all("ClusterRole")
                    .into_iter()
                    .find(|c| c["metadata"]["name"] == FULLNAME)
                    .context("no operator ClusterRole")?;
                let rules = operator["rules"].to_string();
                ensure!(
                    rules.contains("policyreports") && !rules.contains("openreports.io"),
                    "wgpolicy should grant PolicyReports and not Reports: {rules}"
                );
                // Only `auto` switches APIs, deleting the PolicyReports.
                let verbs = operator["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["resources"] == json!(["policyreports"]))
                    .map(|r| r["verbs"].clone());
                field_is(
                    "PolicyReport verbs",
                    &verbs.unwrap_or_default(),
                    json!(["list", "create", "patch"]),
                )?;
                let none = render(&["--set", "reports.format=none"])?;
                let operator = none
                    .all("ClusterRole")
                    .into_iter()
                    .find(|c| c["metadata"]["name"] == FULLNAME)
                    .context("no operator ClusterRole")?;
                let rules = operator["rules"].to_string();
                ensure!(
                    !rules.contains("policyreports") && !rules.contains("openreports.io"),
                    "none should grant no reports: {rules}"
                );
                env_is(&none, "REPORTS_FORMAT", "none")
            },
        },
        Case {
            value: "notifications.eventMinSeverity",
            context: NO_CONTEXT,
            set: &["--set", "notifications.eventMinSeverity=medium"],
            expect: |r| env_is(r, "NEW_FINDINGS_SEVERITY", "medium"),
        },
        Case {
            value: "notifications.scope",
            context: NO_CONTEXT,
            set: &["--set", "notifications.scope=all"],
            expect: |r| {
                env_is(r, "NOTIFIERS", "all")?;
                let operator = r
                    .all("ClusterRole")
                    .into_iter()
                    .find(|c| c["metadata"]["name"] == FULLNAME)
                    .context("no operator ClusterRole")?;
                let secrets = operator["rules"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|r| r["resources"] == json!(["secrets"]))
                    .map(|r| r["verbs"].clone());
                field_is(
                    "Secret verbs",
                    &secrets.unwrap_or_default(),
                    json!(["get", "list", "watch"]),
                )?;
                // Off: no Secret read anywhere.
                let off = render(&["--set", "notifications.scope=off"])?;
                ensure!(
                    !serde_json::to_string(&off.all("Role"))?.contains("secrets"),
                    "scope=off should grant no Secrets"
                );
                env_is(&off, "NOTIFIERS", "off")
            },
        },
        Case {
            value: "notifications.targets",
            context: NO_CONTEXT,
            set: &[
                "--set",
                "notifications.targets[0].name=security",
                "--set",
                "notifications.targets[0].type=teams",
                "--set",
                "notifications.targets[0].url=https://hooks.test/x",
                "--set",
                "notifications.targets[0].minSeverity=medium",
                "--set",
                "notifications.targets[0].resolved=true",
            ],
            expect: |r| {
                let secret = r
                    .all("Secret")
                    .into_iter()
                    .find(|s| s["metadata"]["name"] == format!("{FULLNAME}-notifier-security"))
                    .context("no notifier Secret")?;
                let m = &secret["metadata"];
                field_is(
                    "notifier label",
                    &m["labels"]["nuclei.homelab.mortenolsen.pro/notifier"],
                    json!("teams"),
                )?;
                field_is(
                    "min severity",
                    &m["annotations"]["nuclei.homelab.mortenolsen.pro/min-severity"],
                    json!("medium"),
                )?;
                field_is(
                    "resolved",
                    &m["annotations"]["nuclei.homelab.mortenolsen.pro/notify-resolved"],
                    json!("true"),
                )?;
                field_is(
                    "url",
                    &secret["stringData"]["url"],
                    json!("https://hooks.test/x"),
                )
            },
        },
        Case {
            value: "operator.logFormat",
            context: NO_CONTEXT,
            set: &["--set", "operator.logFormat=text"],
            expect: |r| env_is(r, "LOG_FORMAT", "text"),
        },
        Case {
            value: "http.host",
            context: NO_CONTEXT,
            set: &["--set", "http.host=::"],
            expect: |r| {
                env_is(r, "HTTP_ADDR", "[::]:8080")?;
                env_is(r, "HEALTH_ADDR", "[::]:8081")
            },
        },
        Case {
            value: "http.port",
            context: NO_CONTEXT,
            set: &["--set", "http.port=9090"],
            expect: |r| {
                env_is(r, "HTTP_ADDR", "0.0.0.0:9090")?;
                let ports = &r.container()?["ports"];
                field_is(
                    "container ports",
                    ports,
                    json!([
                        {"name": "http", "containerPort": 9090, "protocol": "TCP"},
                        {"name": "health", "containerPort": 8081, "protocol": "TCP"},
                    ]),
                )
            },
        },
        Case {
            value: "http.auth",
            context: NO_CONTEXT,
            set: &["--set", "http.auth=none"],
            expect: |r| {
                env_is(r, "HTTP_AUTH", "none")?;
                let names: Vec<&Value> = r
                    .all("ClusterRole")
                    .iter()
                    .map(|c| &c["metadata"]["name"])
                    .collect();
                ensure!(
                    !names.contains(&&json!(format!("{FULLNAME}-data-reader"))),
                    "the data-reader ClusterRole is rendered without auth"
                );
                let operator = r
                    .all("ClusterRole")
                    .into_iter()
                    .find(|c| c["metadata"]["name"] == FULLNAME)
                    .context("no operator ClusterRole")?;
                ensure!(
                    !operator["rules"].to_string().contains("tokenreviews"),
                    "the operator may still review tokens"
                );
                Ok(())
            },
        },
        Case {
            value: "health.port",
            context: NO_CONTEXT,
            set: &["--set", "health.port=9091"],
            expect: |r| {
                env_is(r, "HEALTH_ADDR", "0.0.0.0:9091")?;
                field_is(
                    "health container port",
                    &r.container()?["ports"][1],
                    json!({"name": "health", "containerPort": 9091, "protocol": "TCP"}),
                )
            },
        },
        Case {
            value: "service.port",
            context: NO_CONTEXT,
            set: &["--set", "service.port=9100"],
            expect: |r| {
                let ports = &r.one("Service")?["spec"]["ports"];
                field_is(
                    "Service ports",
                    ports,
                    json!([{"name": "http-metrics", "port": 9100, "targetPort": "http", "protocol": "TCP"}]),
                )
            },
        },
        Case {
            value: "serviceMonitor.enabled",
            context: NO_CONTEXT,
            set: SERVICE_MONITOR,
            expect: |r| {
                let sm = r.one("ServiceMonitor")?;
                field_is(
                    "apiVersion",
                    &sm["apiVersion"],
                    json!("monitoring.coreos.com/v1"),
                )?;
                field_is(
                    "endpoints",
                    &sm["spec"]["endpoints"],
                    json!([{
                        "port": "http-metrics",
                        "path": "/metrics",
                        "interval": "30s",
                        "honorLabels": true,
                        "bearerTokenFile": "/var/run/secrets/kubernetes.io/serviceaccount/token",
                    }]),
                )?;
                let service = r.one("Service")?;
                let selector = &sm["spec"]["selector"]["matchLabels"];
                for (key, value) in selector.as_object().context("no matchLabels")? {
                    field_is(
                        &format!("Service label {key}"),
                        &service["metadata"]["labels"][key],
                        value.clone(),
                    )?;
                }
                Ok(())
            },
        },
        Case {
            value: "serviceMonitor.interval",
            context: SERVICE_MONITOR,
            set: &["--set", "serviceMonitor.interval=1m"],
            expect: |r| {
                let interval = &r.one("ServiceMonitor")?["spec"]["endpoints"][0]["interval"];
                field_is("interval", interval, json!("1m"))
            },
        },
        Case {
            value: "serviceMonitor.labels",
            context: SERVICE_MONITOR,
            set: &["--set", "serviceMonitor.labels.release=prometheus"],
            expect: |r| {
                let labels = &r.one("ServiceMonitor")?["metadata"]["labels"];
                field_is("release label", &labels["release"], json!("prometheus"))?;
                field_is(
                    "chart label",
                    &labels["app.kubernetes.io/name"],
                    json!("nuclei-operator"),
                )
            },
        },
        Case {
            value: "prometheusRule.enabled",
            context: NO_CONTEXT,
            set: PROMETHEUS_RULE,
            expect: |r| {
                let rule = r.one("PrometheusRule")?;
                field_is(
                    "apiVersion",
                    &rule["apiVersion"],
                    json!("monitoring.coreos.com/v1"),
                )?;
                let names: Vec<&Value> = rule["spec"]["groups"][0]["rules"]
                    .as_array()
                    .context("no rules")?
                    .iter()
                    .map(|r| &r["alert"])
                    .collect();
                field_is("alerts", &json!(names), json!(ALERTS))?;
                for name in ALERTS {
                    let alert = r.alert(name)?;
                    field_is(
                        &format!("{name}'s severity"),
                        &alert["labels"]["severity"],
                        json!("warning"),
                    )?;
                    for annotation in ["summary", "description"] {
                        let text = alert["annotations"][annotation]
                            .as_str()
                            .unwrap_or_default();
                        let names_the_scan =
                            text.contains("{{ $labels.namespace }}/{{ $labels.nucleiscan }}");
                        ensure!(
                            names_the_scan || name == "NucleiQueueBacklogGrowing",
                            "{name}'s {annotation} does not name the scan: {text:?}"
                        );
                    }
                }
                Ok(())
            },
        },
        Case {
            value: "prometheusRule.labels",
            context: PROMETHEUS_RULE,
            set: &["--set", "prometheusRule.labels.release=prometheus"],
            expect: |r| {
                let labels = &r.one("PrometheusRule")?["metadata"]["labels"];
                field_is("release label", &labels["release"], json!("prometheus"))?;
                field_is(
                    "chart label",
                    &labels["app.kubernetes.io/name"],
                    json!("nuclei-operator"),
                )
            },
        },
        Case {
            value: "prometheusRule.severities",
            context: PROMETHEUS_RULE,
            set: &["--set", "prometheusRule.severities={critical,medium}"],
            expect: |r| {
                let alert = r.alert("NucleiFindings")?;
                let expr = alert["expr"].as_str().unwrap_or_default();
                ensure!(
                    expr.contains(r#"nuclei_findings{severity=~"critical|medium"}"#),
                    "{expr}"
                );
                let summary = alert["annotations"]["summary"].as_str().unwrap_or_default();
                ensure!(summary.contains("critical or medium findings"), "{summary}");
                Ok(())
            },
        },
        Case {
            value: "prometheusRule.failingFor",
            context: PROMETHEUS_RULE,
            set: &["--set", "prometheusRule.failingFor=2h"],
            expect: |r| field_is("for", &r.alert("NucleiScanFailing")?["for"], json!("2h")),
        },
        Case {
            value: "prometheusRule.overdueAfter",
            context: PROMETHEUS_RULE,
            set: &["--set", "prometheusRule.overdueAfter=1d2h30m5s"],
            expect: |r| {
                let expr = r.alert("NucleiScanOverdue")?["expr"]
                    .as_str()
                    .unwrap_or_default();
                ensure!(expr.ends_with("> 95405"), "1d2h30m5s is 95405 s: {expr}");
                Ok(())
            },
        },
        // Leading zeros are decimal, not octal (010m is not 8 minutes).
        Case {
            value: "prometheusRule.overdueAfter",
            context: PROMETHEUS_RULE,
            set: &["--set", "prometheusRule.overdueAfter=010m"],
            expect: |r| {
                let expr = r.alert("NucleiScanOverdue")?["expr"]
                    .as_str()
                    .unwrap_or_default();
                ensure!(expr.ends_with("> 600"), "010m is 600 s: {expr}");
                Ok(())
            },
        },
        Case {
            value: "prometheusRule.overdueAfter",
            context: PROMETHEUS_RULE,
            set: &["--set", "prometheusRule.overdueAfter=08h"],
            expect: |r| {
                let expr = r.alert("NucleiScanOverdue")?["expr"]
                    .as_str()
                    .unwrap_or_default();
                ensure!(expr.ends_with("> 28800"), "08h is 28800 s: {expr}");
                Ok(())
            },
        },
        Case {
            value: "prometheusRule.backlogFor",
            context: PROMETHEUS_RULE,
            set: &["--set", "prometheusRule.backlogFor=2h"],
            expect: |r| {
                let alert = r.alert("NucleiQueueBacklogGrowing")?;
                field_is("for", &alert["for"], json!("2h"))
            },
        },
        Case {
            value: "grafanaDashboard.enabled",
            context: NO_CONTEXT,
            set: GRAFANA_DASHBOARD,
            expect: |r| {
                let cm = r.dashboard()?;
                field_is(
                    "grafana_dashboard label",
                    &cm["metadata"]["labels"]["grafana_dashboard"],
                    json!("1"),
                )?;
                field_is("namespace", &cm["metadata"]["namespace"], json!(NAMESPACE))?;
                let data = cm["data"].as_object().context("no data")?;
                ensure!(
                    data.keys().eq([DASHBOARD_KEY]),
                    "data keys {:?}",
                    data.keys()
                );
                let json = data[DASHBOARD_KEY].as_str().context("not a string")?;
                let dashboard: Value = serde_json::from_str(json).context("not JSON")?;
                field_is("uid", &dashboard["uid"], json!("nuclei-operator"))
            },
        },
        Case {
            value: "grafanaDashboard.namespace",
            context: GRAFANA_DASHBOARD,
            set: &["--set", "grafanaDashboard.namespace=monitoring"],
            expect: |r| {
                let namespace = &r.dashboard()?["metadata"]["namespace"];
                field_is("namespace", namespace, json!("monitoring"))
            },
        },
        Case {
            value: "grafanaDashboard.labels",
            context: GRAFANA_DASHBOARD,
            set: &["--set", "grafanaDashboard.labels.team=security"],
            expect: |r| {
                let labels = &r.dashboard()?["metadata"]["labels"];
                field_is("team label", &labels["team"], json!("security"))?;
                field_is(
                    "grafana_dashboard label",
                    &labels["grafana_dashboard"],
                    json!("1"),
                )
            },
        },
        Case {
            value: "grafanaDashboard.annotations",
            context: GRAFANA_DASHBOARD,
            set: &[
                "--set",
                "grafanaDashboard.annotations.grafana_folder=Security",
            ],
            expect: |r| {
                field_is(
                    "annotations",
                    &r.dashboard()?["metadata"]["annotations"],
                    json!({"grafana_folder": "Security"}),
                )
            },
        },
        Case {
            value: "networkPolicy.enabled",
            context: NO_CONTEXT,
            set: &["--set", "networkPolicy.enabled=true"],
            expect: |r| {
                let np = r.one("NetworkPolicy")?;
                let selector = &r.deployment()?["spec"]["selector"]["matchLabels"];
                field_is(
                    "podSelector",
                    &np["spec"]["podSelector"]["matchLabels"],
                    selector.clone(),
                )?;
                field_is(
                    "policyTypes",
                    &np["spec"]["policyTypes"],
                    json!(["Ingress"]),
                )?;
                field_is(
                    "ingress",
                    &np["spec"]["ingress"],
                    json!([
                        {"ports": [{"port": "health", "protocol": "TCP"}]},
                        {"ports": [{"port": "http", "protocol": "TCP"}],
                         "from": [{"namespaceSelector": {"matchLabels":
                             {"kubernetes.io/metadata.name": "monitoring"}}}]},
                    ]),
                )
            },
        },
        Case {
            value: "networkPolicy.dataFrom",
            context: NETWORK_POLICY,
            set: &[
                "--set-json",
                r#"networkPolicy.dataFrom=[{"podSelector":{"matchLabels":{"app":"prometheus"}}}]"#,
            ],
            expect: |r| {
                let np = r.one("NetworkPolicy")?;
                field_is(
                    "data port peers",
                    &np["spec"]["ingress"][1]["from"],
                    json!([{"podSelector": {"matchLabels": {"app": "prometheus"}}}]),
                )
            },
        },
        Case {
            value: "resources.requests.cpu",
            context: NO_CONTEXT,
            set: &["--set", "resources.requests.cpu=250m"],
            expect: |r| {
                let cpu = &r.container()?["resources"]["requests"]["cpu"];
                field_is("cpu request", cpu, json!("250m"))
            },
        },
        Case {
            value: "resources.requests.memory",
            context: NO_CONTEXT,
            set: &["--set", "resources.requests.memory=512Mi"],
            expect: |r| {
                let memory = &r.container()?["resources"]["requests"]["memory"];
                field_is("memory request", memory, json!("512Mi"))
            },
        },
        Case {
            value: "resources.limits.memory",
            context: NO_CONTEXT,
            set: &["--set", "resources.limits.memory=2Gi"],
            expect: |r| {
                let memory = &r.container()?["resources"]["limits"]["memory"];
                field_is("memory limit", memory, json!("2Gi"))
            },
        },
        Case {
            value: "nodeSelector",
            context: NO_CONTEXT,
            set: &["--set-json", r#"nodeSelector={"kubernetes.io/os":"linux"}"#],
            expect: |r| {
                field_is(
                    "nodeSelector",
                    &r.pod_spec()?["nodeSelector"],
                    json!({"kubernetes.io/os": "linux"}),
                )
            },
        },
        Case {
            value: "tolerations",
            context: NO_CONTEXT,
            set: &[
                "--set-json",
                r#"tolerations=[{"key":"dedicated","operator":"Equal","value":"ops","effect":"NoSchedule"}]"#,
            ],
            expect: |r| {
                field_is(
                    "tolerations",
                    &r.pod_spec()?["tolerations"],
                    json!([{"key": "dedicated", "operator": "Equal", "value": "ops", "effect": "NoSchedule"}]),
                )
            },
        },
        Case {
            value: "affinity",
            context: NO_CONTEXT,
            set: &[
                "--set-json",
                r#"affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/arch","operator":"In","values":["amd64"]}]}]}}}"#,
            ],
            expect: |r| {
                let terms = &r.pod_spec()?["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
                    ["nodeSelectorTerms"];
                field_is(
                    "node affinity",
                    &terms[0]["matchExpressions"][0]["values"],
                    json!(["amd64"]),
                )
            },
        },
    ]
}

#[test]
fn helm_lint_passes_with_default_and_non_default_values() -> Result<()> {
    let chart = chart_dir();
    let chart = chart.to_str().context("chart path is not UTF-8")?;
    for extra in [
        &[][..],
        &["--set", "serviceMonitor.enabled=true,scanner.mode=sync"][..],
        &["--set", "networkPolicy.enabled=true,http.auth=none"][..],
        &[
            "--set",
            "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        ][..],
        &[
            "--set",
            "leaderElection.enabled=false",
            "--set-json",
            "templates.defaults=[]",
        ][..],
    ] {
        let mut args = vec!["lint", "--strict", chart];
        args.extend_from_slice(extra);
        if let Err(e) = run_helm(&args)? {
            bail!("helm lint {extra:?} failed:\n{e}");
        }
    }
    Ok(())
}

#[test]
fn helm_template_renders_the_operator_and_its_rbac_in_the_release_namespace() -> Result<()> {
    let r = render(&[])?;
    let kinds: BTreeSet<&str> = r.docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    let cluster_scoped = ["ClusterRole", "ClusterRoleBinding", POLICY, POLICY_BINDING];
    let expected: BTreeSet<&str> = [
        "Deployment",
        "Role",
        "RoleBinding",
        "Service",
        "ServiceAccount",
    ]
    .into_iter()
    .chain(cluster_scoped)
    .collect();
    assert_eq!(kinds, expected);
    // One of each, but four ClusterRoles (the operator's, the scanners',
    // the data readers' and the one aggregated into the built-in edit role)
    // and two Roles and RoleBindings (the lease's, and the notifier
    // Secrets').
    assert_eq!(r.docs.len(), expected.len() + 5);
    assert_eq!(r.all("Role").len(), 2);
    assert_eq!(r.all("ClusterRole").len(), 4);
    for doc in &r.docs {
        let kind = doc["kind"].as_str().unwrap_or_default();
        let meta = &doc["metadata"];
        let name = meta["name"].as_str().unwrap_or_default();
        assert!(name.starts_with(FULLNAME), "{kind} {name}");
        if !cluster_scoped.contains(&kind) {
            assert_eq!(meta["namespace"], NAMESPACE, "{kind} {name}");
        }
        assert_eq!(
            meta["labels"]["app.kubernetes.io/instance"], RELEASE,
            "{kind}"
        );
        assert_eq!(
            meta["labels"]["app.kubernetes.io/version"],
            env!("CARGO_PKG_VERSION"),
            "{kind}"
        );
    }
    let pod = r.pod_spec()?;
    assert_eq!(pod["serviceAccountName"], FULLNAME);
    assert_eq!(
        r.one("ServiceAccount")?["metadata"]["name"],
        FULLNAME,
        "the pod runs as the chart's ServiceAccount"
    );
    let selector = &r.deployment()?["spec"]["selector"]["matchLabels"];
    let pod_labels = &r.deployment()?["spec"]["template"]["metadata"]["labels"];
    for (key, value) in selector.as_object().context("no selector")? {
        assert_eq!(&pod_labels[key], value, "pod label {key}");
    }
    assert_eq!(&r.one("Service")?["spec"]["selector"], selector);
    Ok(())
}

#[test]
fn the_operator_runs_the_controller_from_the_image_entrypoint() -> Result<()> {
    let r = render(&[])?;
    let container = r.container()?;
    assert_eq!(container["args"], json!(["controller"]));
    assert!(
        container.get("command").is_none(),
        "a command would replace the image's entrypoint"
    );
    Ok(())
}

#[test]
fn every_value_changes_what_it_claims_to() -> Result<()> {
    let mut bases: HashMap<&[&str], Rendered> = HashMap::new();
    let mut failures = Vec::new();
    for case in cases() {
        if !bases.contains_key(case.context) {
            bases.insert(case.context, render(case.context)?);
        }
        let base = &bases[case.context];
        let mut args = case.context.to_vec();
        args.extend_from_slice(case.set);
        let changed = match render(&args) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{}: {e:#}", case.value));
                continue;
            }
        };
        if let Err(e) = (case.expect)(&changed) {
            failures.push(format!("{} {:?}: {e:#}", case.value, case.set));
        }
        if (case.expect)(base).is_ok() {
            failures.push(format!(
                "{}: the check also holds without {:?}, so it proves nothing",
                case.value, case.set
            ));
        }
        if let Err(e) = settings_of(&changed) {
            failures.push(format!("{} {:?}: {e:#}", case.value, case.set));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
    Ok(())
}

#[test]
fn every_values_yaml_leaf_has_a_case_that_proves_it_is_used() -> Result<()> {
    let mut in_values = BTreeSet::new();
    leaves(&values_yaml()?, "", &mut in_values);
    let covered: BTreeSet<String> = cases().iter().map(|c| c.value.to_owned()).collect();
    let unused: Vec<_> = in_values.difference(&covered).collect();
    let stale: Vec<_> = covered.difference(&in_values).collect();
    assert!(
        unused.is_empty(),
        "values without a case proving something reads them: {unused:?}"
    );
    assert!(
        stale.is_empty(),
        "cases for values that do not exist: {stale:?}"
    );
    Ok(())
}

#[test]
fn the_chart_sets_exactly_the_operator_settings() -> Result<()> {
    // The list values set, so their conditionally rendered variables appear.
    let r = render(&[
        "--set",
        "templates.defaults={http/cves/},templates.severity={critical},scanner.resources.limits.memory=1Gi,scanner.allowedImages={registry.example.com/sec/*},scanner.interactshUrl=https://oast.example.internal,targets.allowCidrs={10.0.0.0/8},targets.allowHostSuffixes={example.com},targets.ingressClasses={public},targets.namespaceSelector={team=web}",
        "--set-json",
        r#"templates.repositories=[{"url":"https://h.example/t.git"}]"#,
    ])?;
    let set: BTreeSet<String> = r.env()?.into_keys().collect();
    let known: BTreeSet<String> = env_table().into_iter().map(|row| row.env).collect();
    let unknown: Vec<_> = set.difference(&known).collect();
    let missing: Vec<_> = known.difference(&set).collect();
    assert!(
        unknown.is_empty(),
        "env vars the operator does not read: {unknown:?}"
    );
    assert!(
        missing.is_empty(),
        "settings the chart does not set: {missing:?}"
    );
    settings_of(&r)?;
    Ok(())
}

#[test]
fn the_seed_designs_values_file_installs_unchanged_and_the_operator_takes_its_settings()
-> Result<()> {
    let seed = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/helm/seed-values.yaml");
    let r = render(&["-f", seed.to_str().context("path is not UTF-8")?])?;
    let settings = settings_of(&r)?;
    assert_eq!(settings.default_templates, ["cves/", "vulnerabilities/"]);
    assert_eq!(settings.max_concurrent_scans, 5);
    let repositories = &settings.template_repositories.sources;
    assert_eq!(repositories.len(), 1);
    assert_eq!(
        repositories[0].to_string(),
        "https://github.com/projectdiscovery/nuclei-templates#main:templates/community"
    );
    // Its repositories go through the template cache, which the operator
    // may keep in the release namespace only; without repositories or with
    // the cache off, it gets no such rights.
    let cache_roles = |r: &Rendered| {
        r.all("Role")
            .iter()
            .filter(|d| {
                d["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.ends_with("-template-cache"))
            })
            .count()
    };
    assert_eq!(cache_roles(&r), 1);
    let role = r
        .all("Role")
        .into_iter()
        .find(|d| {
            d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.ends_with("-template-cache"))
        })
        .context("no template cache Role")?;
    assert_eq!(role["metadata"]["namespace"], "nuclei-system");
    assert_eq!(
        role["rules"],
        serde_json::json!([
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list", "create", "delete"]},
            {"apiGroups": ["rbac.authorization.k8s.io"], "resources": ["roles"], "verbs": ["get", "create", "patch"]},
        ])
    );
    assert_eq!(
        settings.template_refresh_interval,
        std::time::Duration::from_secs(3600)
    );
    assert_eq!(cache_roles(&render(&[])?), 0);
    let every = |interval: &str| -> Result<usize> {
        let r = render(&[
            "-f",
            seed.to_str().context("path is not UTF-8")?,
            "--set",
            &format!("templates.refreshInterval={interval}"),
        ])?;
        Ok(cache_roles(&r))
    };
    for zero in ["0", "0s", "0h0m"] {
        assert_eq!(every(zero)?, 0, "{zero}");
    }
    assert_eq!(every("10m")?, 1);
    assert_eq!(every("90s")?, 1);
    Ok(())
}

#[test]
fn the_chart_defaults_agree_with_the_operator_defaults_except_where_it_knows_better() -> Result<()>
{
    // What the chart deliberately sets differently from the operator's own
    // defaults: the cluster (JSON logs, its own image, release-scoped names,
    // the pod's identity) and the seed design's template selection.
    const ON_PURPOSE: &[&str] = &[
        "LOG_FORMAT",
        "SCANNER_IMAGE",
        "LEASE_NAME",
        "SCANNER_CLUSTER_ROLE",
        "OPERATOR_NAMESPACE",
        "POD_NAMESPACE",
        "POD_NAME",
        "DEFAULT_TEMPLATES",
    ];
    let r = render(&[])?;
    let full = settings_of(&r)?;
    let mut only_on_purpose = r.clone();
    let deployment = only_on_purpose
        .docs
        .iter_mut()
        .find(|d| d["kind"] == "Deployment")
        .context("no Deployment")?;
    let container = deployment["spec"]["template"]["spec"]["containers"]
        .as_array_mut()
        .and_then(|cs| cs.iter_mut().find(|c| c["name"] == CONTAINER))
        .context("no operator container")?;
    container["env"]
        .as_array_mut()
        .context("no env")?
        .retain(|e| ON_PURPOSE.iter().any(|name| e["name"] == *name));
    assert_eq!(
        full,
        settings_of(&only_on_purpose)?,
        "a chart default differs from the operator's default"
    );
    env_is(&r, "LOG_FORMAT", "json")?;
    // The published image at the crate's version: one version everywhere.
    env_is(&r, "SCANNER_IMAGE", PUBLISHED_IMAGE)?;
    field_is("image", &r.container()?["image"], json!(PUBLISHED_IMAGE))?;
    assert_eq!(full.lease_namespace(), NAMESPACE);
    assert_eq!(
        full.default_templates,
        ["http/cves/", "http/vulnerabilities/"]
    );
    Ok(())
}

/// Checks a pod spec against the Pod Security Standard "restricted" (and our
/// user); `tmp`: each container mounts the `tmp` emptyDir at /tmp.
fn assert_restricted(pod: &Value, tmp: bool) -> Result<usize> {
    for host in ["hostNetwork", "hostPID", "hostIPC"] {
        assert_ne!(pod[host], json!(true), "{host}");
    }
    let psc = &pod["securityContext"];
    assert_eq!(psc["runAsNonRoot"], json!(true));
    assert_eq!(psc["runAsUser"], json!(NONROOT));
    assert_eq!(psc["runAsGroup"], json!(NONROOT));
    assert_eq!(psc["seccompProfile"]["type"], "RuntimeDefault");

    let volumes = pod["volumes"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    for volume in volumes {
        let kinds: Vec<&String> = volume
            .as_object()
            .context("volume is not a map")?
            .keys()
            .filter(|k| *k != "name")
            .collect();
        assert_eq!(kinds.len(), 1, "{volume}");
        assert!(
            [
                "configMap",
                "csi",
                "downwardAPI",
                "emptyDir",
                "ephemeral",
                "persistentVolumeClaim",
                "projected",
                "secret"
            ]
            .contains(&kinds[0].as_str()),
            "volume type {} is not allowed by the restricted standard",
            kinds[0]
        );
    }
    if tmp {
        let tmp = volumes
            .iter()
            .find(|v| v["name"] == "tmp")
            .context("no tmp volume")?;
        assert!(
            tmp["emptyDir"].is_object(),
            "/tmp must be an emptyDir: {tmp}"
        );
    }

    let containers = pod["containers"]
        .as_array()
        .into_iter()
        .chain(pod["initContainers"].as_array())
        .flatten();
    let mut count = 0;
    for c in containers {
        count += 1;
        let name = &c["name"];
        let sc = &c["securityContext"];
        assert_eq!(sc["allowPrivilegeEscalation"], json!(false), "{name}");
        assert_ne!(sc["privileged"], json!(true), "{name}");
        assert_eq!(sc["readOnlyRootFilesystem"], json!(true), "{name}");
        assert_eq!(sc["runAsNonRoot"], json!(true), "{name}");
        assert_eq!(sc["runAsUser"], json!(NONROOT), "{name}");
        assert_eq!(sc["seccompProfile"]["type"], "RuntimeDefault", "{name}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
        assert!(sc["capabilities"].get("add").is_none(), "{name}");
        for port in c["ports"].as_array().into_iter().flatten() {
            assert!(port.get("hostPort").is_none(), "{name} {port}");
        }
        if tmp {
            let mounts = c["volumeMounts"].as_array().context("no volumeMounts")?;
            assert!(
                mounts
                    .iter()
                    .any(|m| m["name"] == "tmp" && m["mountPath"] == "/tmp"),
                "{name} has no writable /tmp"
            );
        }
    }
    Ok(count)
}

#[test]
fn the_operator_pod_meets_the_restricted_pod_security_standard() -> Result<()> {
    for extra in [
        &[][..],
        &["--set", "scanner.mode=sync,leaderElection.enabled=false"][..],
    ] {
        let r = render(extra)?;
        let count = assert_restricted(r.pod_spec()?, true)?;
        assert_eq!(count, 1, "only the operator container");
    }
    Ok(())
}

#[test]
fn the_crd_upgrade_hook_may_only_apply_the_operators_crds_before_an_upgrade() -> Result<()> {
    let r = render(&[])?;
    let name = format!("{FULLNAME}-crd-upgrade");
    // Every CRD the chart ships, by name.
    let mut crds = Vec::new();
    for entry in std::fs::read_dir(chart_dir().join("crds"))? {
        let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(entry?.path())?)?;
        crds.push(
            crd["metadata"]["name"]
                .as_str()
                .context("no name")?
                .to_owned(),
        );
    }
    crds.sort();
    assert_eq!(crds.len(), 2, "{crds:?}");
    let kinds: BTreeSet<&str> = r.hooks.iter().filter_map(|h| h["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        BTreeSet::from(["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job"])
    );
    let weight = |h: &Value| -> i64 {
        h["metadata"]["annotations"]["helm.sh/hook-weight"]
            .as_str()
            .and_then(|w| w.parse().ok())
            .unwrap_or(0)
    };
    for hook in &r.hooks {
        let meta = &hook["metadata"];
        assert_eq!(meta["name"], name.as_str(), "{hook}");
        // Only on upgrade: an install gets crds/ from Helm itself.
        assert_eq!(meta["annotations"]["helm.sh/hook"], "pre-upgrade");
        assert_eq!(
            meta["annotations"]["helm.sh/hook-delete-policy"],
            "before-hook-creation,hook-succeeded"
        );
        // Its rights exist before the Job starts.
        if hook["kind"] != "Job" {
            assert!(weight(hook) < weight(r.hook("Job")?), "{hook}");
        }
    }
    let role = r.hook("ClusterRole")?;
    assert_eq!(
        role["rules"],
        json!([{
            "apiGroups": ["apiextensions.k8s.io"],
            "resources": ["customresourcedefinitions"],
            "resourceNames": crds,
            // create: server-side apply of a CRD missing since the install.
            "verbs": ["get", "patch", "create"],
        }])
    );
    let binding = r.hook("ClusterRoleBinding")?;
    assert_eq!(binding["roleRef"]["name"], name.as_str());
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": name, "namespace": NAMESPACE}])
    );
    let job = r.hook("Job")?;
    let pod = &job["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], name.as_str());
    assert_eq!(pod["restartPolicy"], "Never");
    assert_eq!(assert_restricted(pod, false)?, 1);
    let container = &pod["containers"][0];
    assert_eq!(
        container["image"],
        r.container()?["image"],
        "the new image's CRD"
    );
    assert_eq!(container["args"], json!(["crd", "--apply"]));
    assert!(container.get("command").is_none());

    // It is scheduled and pulled like the operator pod.
    let r = render(&[
        "--set-json",
        r#"nodeSelector={"kubernetes.io/os":"linux"}"#,
        "--set-json",
        r#"tolerations=[{"operator":"Exists"}]"#,
        "--set-json",
        r#"imagePullSecrets=[{"name":"regcred"}]"#,
        "--set",
        "image.pullPolicy=Always,operator.logFormat=text",
    ])?;
    let pod = &r.hook("Job")?["spec"]["template"]["spec"];
    for field in ["nodeSelector", "tolerations", "imagePullSecrets"] {
        assert_eq!(pod[field], r.pod_spec()?[field], "{field}");
    }
    assert_eq!(pod["containers"][0]["imagePullPolicy"], "Always");
    assert_eq!(
        pod["containers"][0]["env"],
        json!([{"name": "LOG_FORMAT", "value": "text"}])
    );
    Ok(())
}

#[test]
fn the_operator_is_probed_on_its_health_port_and_scraped_with_a_token_on_its_data_port()
-> Result<()> {
    let r = render(&[
        "--set",
        "http.port=9443,health.port=9444,serviceMonitor.enabled=true",
    ])?;
    let c = r.container()?;
    assert_eq!(c["ports"][0]["name"], "http");
    assert_eq!(c["ports"][0]["containerPort"], json!(9443));
    assert_eq!(c["ports"][1]["name"], "health");
    assert_eq!(c["ports"][1]["containerPort"], json!(9444));
    assert_eq!(
        c["livenessProbe"]["httpGet"],
        json!({"path": "/healthz", "port": "health"})
    );
    assert_eq!(
        c["readinessProbe"]["httpGet"],
        json!({"path": "/readyz", "port": "health"})
    );
    let settings = settings_of(&r)?;
    assert_eq!(
        (settings.health_addr.port(), settings.http_addr.port()),
        (9444, 9443),
        "the servers listen where the probes and the Service look"
    );
    assert_eq!(
        settings.http_auth,
        nuclei_operator::settings::HttpAuth::Kubernetes
    );
    let ports = r.one("Service")?["spec"]["ports"]
        .as_array()
        .context("no Service ports")?;
    assert_eq!(ports.len(), 1, "the probes' port is not in the Service");
    assert_eq!(ports[0]["name"], "http-metrics");
    assert_eq!(ports[0]["targetPort"], "http");
    let endpoint = &r.one("ServiceMonitor")?["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], ports[0]["name"]);
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(
        endpoint["bearerTokenFile"], "/var/run/secrets/kubernetes.io/serviceaccount/token",
        "Prometheus sends its token"
    );
    let open = render(&["--set", "http.auth=none,serviceMonitor.enabled=true"])?;
    let endpoint = &open.one("ServiceMonitor")?["spec"]["endpoints"][0];
    assert!(endpoint.get("bearerTokenFile").is_none(), "{endpoint}");
    Ok(())
}

#[test]
fn the_probes_and_the_data_endpoints_cannot_share_a_port() -> Result<()> {
    let e = render_error(&["--set", "health.port=8080"])?;
    assert!(e.contains("health.port must differ from http.port"), "{e}");
    Ok(())
}

#[test]
fn values_outside_the_schema_are_rejected_before_anything_is_rendered() -> Result<()> {
    for (set, expected) in [
        ("scanner.mode=job", "at '/scanner/mode'"),
        ("scanner.maxConcurent=7", "'maxConcurent' not allowed"),
        ("scanner.maxConcurrent=0", "at '/scanner/maxConcurrent'"),
        ("operator.rescanAge=7d", "at '/operator/rescanAge'"),
        ("operator.logFormat=xml", "at '/operator/logFormat'"),
        ("reports.format=yaml", "at '/reports/format'"),
        ("notifications.scope=cluster", "at '/notifications/scope'"),
        (
            "notifications.targets[0].name=x,notifications.targets[0].type=discord,notifications.targets[0].url=https://h.test",
            "at '/notifications/targets/0/type'",
        ),
        ("templates.severity={severe}", "at '/templates/severity/0'"),
        ("templates.defaults={a\\,b}", "at '/templates/defaults/0'"),
        ("image.pullPolicy=Sometimes", "at '/image/pullPolicy'"),
        (
            "scanner.resources.limits.memory=1GB",
            "at '/scanner/resources/limits/memory'",
        ),
        ("scanner.resources.request.cpu=1", "'request' not allowed"),
        ("http.auth=token", "at '/http/auth'"),
        ("health.port=0", "at '/health/port'"),
        (
            "prometheusRule.overdueAfter=3600",
            "at '/prometheusRule/overdueAfter'",
        ),
        (
            "prometheusRule.failingFor=30m1h",
            "at '/prometheusRule/failingFor'",
        ),
        (
            "prometheusRule.severities={severe}",
            "at '/prometheusRule/severities/0'",
        ),
        ("grafanaDashboard.folder=Security", "'folder' not allowed"),
    ] {
        let e = render_error(&["--set", set])?;
        assert!(e.contains("schema"), "{set}: {e}");
        assert!(e.contains(expected), "{set}: {e}");
    }
    Ok(())
}

#[test]
fn several_replicas_without_leader_election_are_refused() -> Result<()> {
    let e = render_error(&["--set", "replicaCount=2,leaderElection.enabled=false"])?;
    assert!(
        e.contains("replicaCount > 1 needs leaderElection.enabled"),
        "{e}"
    );
    render(&["--set", "replicaCount=2"])?;
    render(&["--set", "replicaCount=1,leaderElection.enabled=false"])?;
    Ok(())
}

/// A ClusterRole or Role's rules as (apiGroup, resource, verb) triples, with
/// the resourceNames each is limited to (empty: any).
fn grants(rules: &Value) -> Result<BTreeMap<(String, String, String), Vec<String>>> {
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let mut out = BTreeMap::new();
    for rule in rules.as_array().context("no rules")? {
        ensure!(rule.get("nonResourceURLs").is_none(), "{rule}");
        let names = strings(&rule["resourceNames"]);
        for group in strings(&rule["apiGroups"]) {
            for resource in strings(&rule["resources"]) {
                for verb in strings(&rule["verbs"]) {
                    let key = (group.clone(), resource.clone(), verb);
                    ensure!(
                        out.insert(key.clone(), names.clone()).is_none(),
                        "{key:?} is granted twice"
                    );
                }
            }
        }
    }
    Ok(out)
}

fn triples(spec: &[(&str, &str, &[&str])]) -> BTreeSet<(String, String, String)> {
    spec.iter()
        .flat_map(|(group, resource, verbs)| {
            verbs
                .iter()
                .map(move |v| (group.to_string(), resource.to_string(), v.to_string()))
        })
        .collect()
}

/// The NucleiScan CRD shipped in the chart: (group, plural).
fn crd_group_and_plural() -> Result<(String, String)> {
    let path = chart_dir().join("crds/nucleiscans.nuclei.homelab.mortenolsen.pro.yaml");
    let crd: Value = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    Ok((
        crd["spec"]["group"]
            .as_str()
            .context("no group")?
            .to_owned(),
        crd["spec"]["names"]["plural"]
            .as_str()
            .context("no plural")?
            .to_owned(),
    ))
}

#[test]
fn the_cluster_role_grants_only_what_the_operator_uses() -> Result<()> {
    let r = render(&[])?;
    let scanner_name = format!("{FULLNAME}-scanner");
    let named = |name: &str| -> Result<&Value> {
        r.all("ClusterRole")
            .into_iter()
            .find(|c| c["metadata"]["name"] == name)
            .with_context(|| format!("no ClusterRole {name}"))
    };
    let role = named(FULLNAME)?;
    for rule in role["rules"].as_array().context("no rules")? {
        for field in ["apiGroups", "resources", "verbs", "resourceNames"] {
            for item in rule[field].as_array().into_iter().flatten() {
                let item = item.as_str().unwrap_or_default();
                assert!(!item.contains('*'), "wildcard {field} in {rule}");
            }
        }
    }
    let granted = grants(&role["rules"])?;
    let bind = (
        "rbac.authorization.k8s.io".to_owned(),
        "clusterroles".to_owned(),
        "bind".to_owned(),
    );
    for (grant, names) in &granted {
        if *grant == bind {
            assert_eq!(
                names.as_slice(),
                std::slice::from_ref(&scanner_name),
                "bind only the scanner ClusterRole"
            );
        } else {
            assert!(names.is_empty(), "no resourceNames expected on {grant:?}");
        }
    }
    let (group, plural) = crd_group_and_plural()?;
    let status = format!("{plural}/status");
    let finalizers = format!("{plural}/finalizers");
    let expected = triples(&[
        ("networking.k8s.io", "ingresses", &["get", "list", "watch"]),
        (
            "networking.istio.io",
            "virtualservices",
            &["get", "list", "watch"],
        ),
        (
            "gateway.networking.k8s.io",
            "httproutes",
            &["get", "list", "watch"],
        ),
        (
            "gateway.networking.k8s.io",
            "gateways",
            &["get", "list", "watch"],
        ),
        (
            "apiextensions.k8s.io",
            "customresourcedefinitions",
            &["get", "list", "watch"],
        ),
        ("openreports.io", "reports", &["list", "create", "patch"]),
        (
            "wgpolicyk8s.io",
            "policyreports",
            &["list", "create", "patch", "delete"],
        ),
        (
            &group,
            &plural,
            &["get", "list", "watch", "create", "patch", "delete"],
        ),
        (&group, &status, &["get", "patch"]),
        (&group, &finalizers, &["update"]),
        (&group, "nucleifindingexceptions", &["get", "list", "watch"]),
        (&group, "nucleifindingexceptions/status", &["patch"]),
        (
            "batch",
            "jobs",
            &["get", "list", "watch", "create", "delete"],
        ),
        ("", "pods", &["get", "list", "watch"]),
        ("", "events", &["create", "patch"]),
        ("events.k8s.io", "events", &["create", "patch"]),
        ("", "serviceaccounts", &["get", "create", "patch"]),
        (
            "rbac.authorization.k8s.io",
            "rolebindings",
            &["get", "create", "patch"],
        ),
        ("rbac.authorization.k8s.io", "clusterroles", &["bind"]),
        ("authentication.k8s.io", "tokenreviews", &["create"]),
        ("authorization.k8s.io", "subjectaccessreviews", &["create"]),
    ]);
    let actual: BTreeSet<_> = granted.keys().cloned().collect();
    assert_eq!(actual, expected);
    for (_, resource, verb) in &actual {
        assert!(
            !["escalate", "impersonate"].contains(&verb.as_str()),
            "{verb}"
        );
        assert!(
            !["secrets", "roles", "pods/exec"].contains(&resource.as_str()),
            "{resource}"
        );
    }
    // The scanner ClusterRole is exactly what the operator's code says
    // scanner pods need (jobs::scanner_rules), and the operator binds it by
    // the name the chart gives it.
    let scanner = named(&scanner_name)?;
    let want = serde_json::to_value(nuclei_operator::jobs::scanner_rules())?;
    assert_eq!(grants(&scanner["rules"])?, grants(&want)?);
    env_is(&r, "SCANNER_CLUSTER_ROLE", &scanner_name)?;

    let binding = r.one("ClusterRoleBinding")?;
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["roleRef"]["kind"], "ClusterRole");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}])
    );
    Ok(())
}

/// The expression of the scanner admission policy's one match condition.
fn scanner_match_condition(r: &Rendered) -> Result<String> {
    let conditions = r.one(POLICY)?["spec"]["matchConditions"]
        .as_array()
        .context("no matchConditions")?
        .clone();
    ensure!(conditions.len() == 1, "{conditions:?}");
    Ok(conditions[0]["expression"]
        .as_str()
        .context("no expression")?
        .to_owned())
}

#[test]
fn the_scanner_admission_policy_denies_scanner_writes_to_the_crd_and_nothing_else() -> Result<()> {
    // What the policy decides is proven against a real API server in
    // tests/e2e_security.rs; here, that it is wired to the right requests.
    let r = render(&[])?;
    let policy = r.one(POLICY)?;
    let spec = &policy["spec"];
    let name = format!("{FULLNAME}-scanner-own-scan");
    assert_eq!(policy["metadata"]["name"], name.as_str());
    assert_eq!(spec["failurePolicy"], "Fail", "an error refuses the write");
    let (group, plural) = crd_group_and_plural()?;
    assert_eq!(
        spec["matchConstraints"]["resourceRules"],
        json!([{
            "apiGroups": [group],
            "apiVersions": ["*"],
            "operations": ["UPDATE"],
            "resources": [plural.clone(), format!("{plural}/status")],
        }])
    );
    // Only the scanner ServiceAccount of any namespace: never the operator.
    let condition = scanner_match_condition(&r)?;
    assert_eq!(
        condition,
        "request.userInfo.username.startsWith('system:serviceaccount:') && \
         request.userInfo.username.endsWith(':nuclei-scanner')"
    );
    let validations = spec["validations"].as_array().context("no validations")?;
    assert_eq!(validations.len(), 3);
    for v in validations {
        assert_eq!(v["reason"], "Forbidden", "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    let binding = r.one(POLICY_BINDING)?;
    assert_eq!(binding["metadata"]["name"], name.as_str());
    assert_eq!(
        binding["spec"],
        json!({"policyName": name, "validationActions": ["Deny"]}),
        "bound everywhere, denying"
    );
    Ok(())
}

#[test]
fn the_data_reader_cluster_role_grants_get_on_the_data_paths_and_nothing_else() -> Result<()> {
    let r = render(&[])?;
    let name = format!("{FULLNAME}-data-reader");
    let role = r
        .all("ClusterRole")
        .into_iter()
        .find(|c| c["metadata"]["name"] == name.as_str())
        .with_context(|| format!("no ClusterRole {name}"))?;
    assert_eq!(
        role["rules"],
        json!([{"nonResourceURLs": ["/metrics", "/queue", "/queue/*"], "verbs": ["get"]}])
    );
    // Nothing binds it: who may read is the user's choice.
    for binding in r
        .all("ClusterRoleBinding")
        .iter()
        .chain(r.all("RoleBinding").iter())
    {
        assert_ne!(binding["roleRef"]["name"], name.as_str(), "{binding}");
    }
    Ok(())
}

/// The leader-election Role (and RoleBinding).
const LEASE_ROLE: &str = "scans-nuclei-operator-leader-election";

#[test]
fn namespace_editors_may_accept_findings_and_viewers_may_not_read_them() -> Result<()> {
    const GROUP: &str = "nuclei.homelab.mortenolsen.pro";
    let r = render(&[])?;
    let granted = |role: &Value| -> Result<BTreeSet<(String, String)>> {
        Ok(grants(&role["rules"])?
            .into_keys()
            .map(|(group, resource, verb)| {
                assert_eq!(group, GROUP);
                (resource, verb)
            })
            .collect())
    };
    let pairs = |resource: &str, verbs: &[&str]| -> Vec<(String, String)> {
        verbs
            .iter()
            .map(|v| (resource.to_owned(), (*v).to_owned()))
            .collect()
    };
    let read = ["get", "list", "watch"];
    let edit = r.named("ClusterRole", &format!("{FULLNAME}-edit"))?;
    let labels = &edit["metadata"]["labels"];
    assert_eq!(
        labels["rbac.authorization.k8s.io/aggregate-to-edit"],
        "true"
    );
    assert_eq!(
        labels["rbac.authorization.k8s.io/aggregate-to-admin"],
        "true"
    );
    let want: BTreeSet<_> = pairs(
        "nucleifindingexceptions",
        &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
    )
    .into_iter()
    .chain(pairs("nucleiscans", &read))
    .collect();
    assert_eq!(
        granted(edit)?,
        want,
        "editors change exceptions, never scans"
    );
    // Not for viewers: findings can carry extracted secrets.
    assert!(r.named("ClusterRole", &format!("{FULLNAME}-view")).is_err());
    assert!(r.all("ClusterRole").iter().all(|c| {
        c["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"].is_null()
    }));
    Ok(())
}

#[test]
fn the_notifier_role_reads_only_secrets_in_the_release_namespace() -> Result<()> {
    let r = render(&[])?;
    let role = r.named("Role", &format!("{FULLNAME}-notifiers"))?;
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(
        role["rules"],
        json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["list", "watch"]}])
    );
    let binding = r.named("RoleBinding", &format!("{FULLNAME}-notifiers"))?;
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}])
    );
    assert_eq!(r.env_value("NOTIFIERS")?.as_deref(), Some("operator"));
    Ok(())
}

#[test]
fn the_lease_role_covers_only_the_operators_lease_in_the_release_namespace() -> Result<()> {
    let r = render(&[])?;
    let role = r.named("Role", LEASE_ROLE)?;
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let lease = r.env_value("LEASE_NAME")?.context("no LEASE_NAME")?;
    assert_eq!(lease, format!("{FULLNAME}-leader"));
    let granted = grants(&role["rules"])?;
    let lease_key = |verb: &str| {
        (
            "coordination.k8s.io".to_owned(),
            "leases".to_owned(),
            verb.to_owned(),
        )
    };
    let mut expected = BTreeMap::new();
    expected.insert(lease_key("create"), vec![]);
    for verb in ["get", "update", "patch"] {
        expected.insert(lease_key(verb), vec![lease.clone()]);
    }
    assert_eq!(granted, expected);
    assert_eq!(settings_of(&r)?.lease_namespace(), NAMESPACE);
    let binding = r.named("RoleBinding", LEASE_ROLE)?;
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert_eq!(binding["roleRef"]["kind"], "Role");
    assert_eq!(
        binding["subjects"],
        json!([{"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}])
    );
    Ok(())
}

#[test]
fn the_chart_crds_are_byte_for_byte_the_generated_crds() -> Result<()> {
    let list = |dir: &Path| -> Result<BTreeMap<String, Vec<u8>>> {
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            if name.ends_with(".yaml") || name.ends_with(".yml") || name.ends_with(".json") {
                files.insert(name.into_owned(), std::fs::read(&path)?);
            }
        }
        Ok(files)
    };
    let generated = list(&repo_root().join("deploy/crds"))?;
    assert!(!generated.is_empty(), "deploy/crds holds no CRD");
    let shipped = list(&chart_dir().join("crds"))?;
    assert_eq!(
        generated.keys().collect::<Vec<_>>(),
        shipped.keys().collect::<Vec<_>>(),
        "the chart's crds/ must hold exactly the files of deploy/crds"
    );
    for (name, bytes) in &generated {
        assert!(
            shipped[name] == *bytes,
            "deploy/helm/nuclei-operator/crds/{name} differs from deploy/crds/{name}: copy it again"
        );
    }
    let r = render(&["--include-crds"])?;
    let names: BTreeSet<&str> = r
        .all("CustomResourceDefinition")
        .iter()
        .filter_map(|c| c["metadata"]["name"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "nucleifindingexceptions.nuclei.homelab.mortenolsen.pro",
            "nucleiscans.nuclei.homelab.mortenolsen.pro"
        ])
    );
    Ok(())
}

#[test]
fn the_alert_rules_and_the_dashboard_are_rendered_only_when_enabled() -> Result<()> {
    let r = render(&[])?;
    for kind in ["PrometheusRule", "ConfigMap"] {
        assert!(r.all(kind).is_empty(), "a {kind} is rendered by default");
    }
    let r = render(&[
        "--set",
        "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
    ])?;
    for kind in ["PrometheusRule", "ConfigMap"] {
        let object = r.one(kind)?;
        assert!(
            object["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.starts_with(FULLNAME)),
            "{object}"
        );
        assert_eq!(object["metadata"]["namespace"], NAMESPACE, "{kind}");
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/instance"], RELEASE,
            "{kind}"
        );
    }
    Ok(())
}

#[test]
fn the_dashboard_is_grafana_json_whose_panels_all_query_the_chosen_datasource() -> Result<()> {
    let (_, json) = render_monitoring()?;
    let file = std::fs::read_to_string(chart_dir().join("dashboards").join(DASHBOARD_KEY))?;
    assert_eq!(
        json,
        file.trim_end(),
        "the ConfigMap holds the chart's file"
    );
    let dashboard: Value = serde_json::from_str(&json)?;
    assert_eq!(dashboard["uid"], "nuclei-operator");
    assert!(
        dashboard["schemaVersion"].as_i64().is_some_and(|v| v >= 36),
        "schemaVersion {}",
        dashboard["schemaVersion"]
    );
    let variables = dashboard["templating"]["list"]
        .as_array()
        .context("no variables")?;
    let variable = |name: &str| variables.iter().find(|v| v["name"] == name);
    let datasource = variable("datasource").context("no datasource variable")?;
    assert_eq!(datasource["type"], "datasource");
    assert_eq!(datasource["query"], "prometheus");
    let namespace = variable("namespace").context("no namespace variable")?;
    assert_eq!(
        namespace["query"]["query"],
        "label_values(nuclei_findings, namespace)"
    );
    assert_eq!(namespace["multi"], json!(true));
    assert_eq!(namespace["includeAll"], json!(true));

    let panels = dashboard["panels"].as_array().context("no panels")?;
    let mut ids = BTreeSet::new();
    let mut titles = BTreeSet::new();
    for panel in panels {
        let title = panel["title"].as_str().context("a panel without title")?;
        assert!(
            ids.insert(panel["id"].as_i64()),
            "panel id of {title} repeats"
        );
        assert!(titles.insert(title), "two panels are titled {title}");
        if panel["type"] == "row" {
            continue;
        }
        let ds = json!({"type": "prometheus", "uid": "${datasource}"});
        assert_eq!(panel["datasource"], ds, "{title}");
        let targets = panel["targets"].as_array().context("no targets")?;
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert_eq!(target["datasource"], ds, "{title}");
            assert!(
                target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}: {target}"
            );
        }
    }
    // No data source is named by uid anywhere: the dashboard works with
    // whichever Prometheus the variable selects.
    let mut uids = Vec::new();
    strings_under(&dashboard, "uid", &mut uids);
    assert!(
        uids.iter()
            .all(|u| ["nuclei-operator", "${datasource}"].contains(u)),
        "{uids:?}"
    );
    Ok(())
}

#[test]
fn the_alerts_and_the_dashboard_read_only_metrics_the_operator_exports_and_every_one_of_them()
-> Result<()> {
    let (rules, dashboard) = render_monitoring()?;
    let used = monitoring_metric_names(&rules, &dashboard)?;
    let exported = exported();
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(
        unknown.is_empty(),
        "not exported by the operator: {unknown:?}"
    );
    // Every metric is shown or alerted on (a histogram by any of its series).
    let family = |m: &str| {
        ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| m.strip_suffix(s))
            .unwrap_or(m)
            .to_owned()
    };
    let shown: BTreeSet<String> = used.iter().map(|m| family(m)).collect();
    let unshown: Vec<String> = exported
        .iter()
        .map(|m| family(m))
        .filter(|f| !shown.contains(f))
        .collect();
    assert!(
        unshown.is_empty(),
        "neither on the dashboard nor alerted on: {unshown:?}"
    );
    Ok(())
}

#[test]
fn metric_names_are_read_from_rule_and_panel_queries_but_not_from_strings() -> Result<()> {
    let rules = r#"
groups:
  - name: g
    rules:
      - alert: A
        expr: nuclei_a_total > 0 and on() up{job="nuclei_not_a_metric"}
        annotations:
          summary: "{{ $labels.nuclei_label }}"
"#;
    let dashboard = json!({
        "templating": {"list": [
            {"type": "datasource", "query": "prometheus"},
            {"type": "query", "query": {"query": "label_values(nuclei_b, namespace)"}},
        ]},
        "panels": [
            {"type": "row", "panels": [
                {"targets": [{"expr": "histogram_quantile(0.9, rate(nuclei_c_seconds_bucket[5m]))"}]},
            ]},
            {"targets": [{"expr": "sum(nuclei_c_seconds_sum) / sum(nuclei_c_seconds_count)",
                          "legendFormat": "{{nuclei_d}}"}]},
        ],
    });
    let names = monitoring_metric_names(rules, &dashboard.to_string())?;
    assert_eq!(
        names,
        [
            "nuclei_a_total",
            "nuclei_b",
            "nuclei_c_seconds_bucket",
            "nuclei_c_seconds_count",
            "nuclei_c_seconds_sum",
        ]
        .map(String::from)
        .into()
    );
    Ok(())
}

#[test]
fn the_alert_rules_parse_and_fire_when_they_should() -> Result<()> {
    let tools = devcluster::Tools::locate()?;
    let promtool = tools.require(&tools.promtool)?;
    let (rules, _) = render_monitoring()?;
    let dir = tempfile::tempdir()?;
    // The test file names its rules file `rules.yaml`, next to it.
    std::fs::write(dir.path().join("rules.yaml"), &rules)?;
    std::fs::copy(
        repo_root().join("tests/promtool/rules_test.yaml"),
        dir.path().join("rules_test.yaml"),
    )?;
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "rules_test.yaml"],
    ] {
        let out = Command::new(promtool)
            .args(args)
            .current_dir(dir.path())
            .output()
            .context("running promtool")?;
        assert!(
            out.status.success(),
            "promtool {} failed:\n{}{}\nrules.yaml:\n{rules}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// One instruction of a Dockerfile, continuation lines joined.
#[derive(Debug)]
struct Instruction {
    keyword: String,
    args: String,
}

/// A Dockerfile's build stages (the global `ARG`s before the first `FROM` are
/// stage 0 without a `FROM`).
fn dockerfile_stages(text: &str) -> Vec<Vec<Instruction>> {
    let mut logical = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if current.is_empty() && (trimmed.is_empty() || trimmed.starts_with('#')) {
            continue;
        }
        if trimmed.starts_with('#') {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                logical.push(std::mem::take(&mut current));
            }
        }
    }
    let mut stages = vec![Vec::new()];
    for line in logical {
        let (keyword, args) = line.split_once(char::is_whitespace).unwrap_or((&line, ""));
        let keyword = keyword.to_ascii_uppercase();
        if keyword == "FROM" {
            stages.push(Vec::new());
        }
        let args = args.split_whitespace().collect::<Vec<_>>().join(" ");
        stages
            .last_mut()
            .expect("stages is never empty")
            .push(Instruction { keyword, args });
    }
    stages
}

/// `KEY=value` pairs of `ENV` and `ARG` instructions.
fn assignments(instructions: &[Instruction], keyword: &str) -> BTreeMap<String, String> {
    instructions
        .iter()
        .filter(|i| i.keyword == keyword)
        .flat_map(|i| i.args.split_whitespace())
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('"').to_owned()))
        .collect()
}

/// Destinations of the `COPY` instructions of a stage, with their sources.
fn copies(instructions: &[Instruction]) -> BTreeMap<String, String> {
    instructions
        .iter()
        .filter(|i| i.keyword == "COPY")
        .filter_map(|i| {
            let words: Vec<&str> = i.args.split_whitespace().collect();
            let (dest, rest) = words.split_last()?;
            Some((dest.to_string(), rest.join(" ")))
        })
        .collect()
}

fn versions_env(name: &str) -> Result<String> {
    let text = std::fs::read_to_string(repo_root().join("devcluster/tools/versions.env"))?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{name}=")))
        .map(|v| v.trim().to_owned())
        .with_context(|| format!("{name} is not in versions.env"))
}

#[test]
fn the_dockerfile_builds_the_image_the_chart_and_the_settings_expect() -> Result<()> {
    let text = std::fs::read_to_string(repo_root().join("Dockerfile"))?;
    let stages = dockerfile_stages(&text);
    assert!(stages.len() >= 3, "global ARGs plus at least two stages");
    let global_args = assignments(&stages[0], "ARG");
    let final_stage = stages.last().expect("checked above");
    let from = &final_stage[0].args;
    assert!(
        from.starts_with("gcr.io/distroless/cc-debian12:nonroot")
            || from.starts_with("debian:12-slim"),
        "final base {from}"
    );

    // Every `COPY --from` names an earlier stage.
    let stage_names: Vec<String> = stages[1..]
        .iter()
        .filter_map(|s| {
            s[0].args
                .split_once(" AS ")
                .map(|(_, n)| n.trim().to_owned())
        })
        .collect();
    for stage in &stages[1..] {
        for source in copies(stage).values() {
            if let Some(rest) = source.strip_prefix("--from=") {
                let stage = rest.split_whitespace().next().unwrap_or_default();
                assert!(
                    stage_names.iter().any(|n| n == stage),
                    "unknown stage {stage}"
                );
            }
        }
    }

    // User: the chart's runAsUser/runAsGroup.
    let user = final_stage
        .iter()
        .rfind(|i| i.keyword == "USER")
        .context("no USER in the final stage")?;
    let (uid, gid) = user.args.split_once(':').context("USER without a group")?;
    let r = render(&[])?;
    let psc = &r.pod_spec()?["securityContext"];
    assert_eq!(json!(uid.parse::<i64>()?), psc["runAsUser"]);
    assert_eq!(json!(gid.parse::<i64>()?), psc["runAsGroup"]);
    assert_eq!(
        r.container()?["securityContext"]["runAsUser"],
        psc["runAsUser"]
    );

    // Entrypoint: the operator binary; the chart passes only arguments.
    let entrypoint = final_stage
        .iter()
        .rfind(|i| i.keyword == "ENTRYPOINT")
        .context("no ENTRYPOINT")?;
    let entrypoint: Vec<String> =
        serde_json::from_str(&entrypoint.args).context("ENTRYPOINT must be in exec (JSON) form")?;
    assert_eq!(entrypoint, ["/usr/local/bin/nuclei-operator"]);
    let copied = copies(final_stage);
    assert!(
        copied.contains_key("/usr/local/bin/nuclei-operator"),
        "{copied:?}"
    );
    assert!(copied.contains_key("/usr/local/bin/nuclei"), "{copied:?}");
    assert!(r.container()?.get("command").is_none());

    // Templates: baked where the settings' default and the chart look.
    let env = assignments(final_stage, "ENV");
    let settings_default = env_table()
        .into_iter()
        .find(|row| row.env == "NUCLEI_TEMPLATES_PATH")
        .context("no NUCLEI_TEMPLATES_PATH setting")?
        .default;
    assert_eq!(env.get("NUCLEI_TEMPLATES_PATH"), Some(&settings_default));
    assert!(copied.contains_key(&settings_default), "{copied:?}");
    env_is(&r, "NUCLEI_TEMPLATES_PATH", &settings_default)?;

    // HOME is writable: the chart's /tmp emptyDir.
    assert_eq!(env.get("HOME").map(String::as_str), Some("/tmp"));
    let mounts = &r.container()?["volumeMounts"];
    assert!(
        mounts
            .as_array()
            .into_iter()
            .flatten()
            .any(|m| m["mountPath"] == "/tmp"),
        "{mounts}"
    );

    // Pinned tools: the nuclei the tests run and the templates release of
    // versions.env (what the release workflow passes as build arguments).
    assert_eq!(
        global_args.get("NUCLEI_VERSION"),
        Some(&versions_env("NUCLEI_VERSION")?)
    );
    assert_eq!(
        global_args.get("NUCLEI_TEMPLATES_VERSION"),
        Some(&versions_env("NUCLEI_TEMPLATES_VERSION")?)
    );
    let runs: Vec<&str> = stages
        .iter()
        .flatten()
        .filter(|i| i.keyword == "RUN")
        .map(|i| i.args.as_str())
        .collect();
    let ran = |needle: &str| runs.iter().any(|r| r.contains(needle));
    assert!(ran("cargo build --release --locked"), "{runs:?}");
    assert!(
        ran(
            "go install -trimpath -ldflags=\"-s -w\" github.com/projectdiscovery/nuclei/v3/cmd/nuclei@${NUCLEI_VERSION}"
        ),
        "{runs:?}"
    );
    assert!(
        ran(
            "git clone --depth 1 --branch \"${NUCLEI_TEMPLATES_VERSION}\" https://github.com/projectdiscovery/nuclei-templates.git"
        ),
        "{runs:?}"
    );
    for stage in &stages[1..] {
        let args = assignments(stage, "ARG");
        let declared: Vec<&str> = stage
            .iter()
            .filter(|i| i.keyword == "ARG")
            .map(|i| i.args.as_str())
            .collect();
        let uses = |name: &str| {
            stage
                .iter()
                .any(|i| i.keyword == "RUN" && i.args.contains(&format!("${{{name}}}")))
        };
        for name in ["NUCLEI_VERSION", "NUCLEI_TEMPLATES_VERSION"] {
            // A global ARG is visible in a stage only when redeclared there.
            assert!(
                !uses(name) || declared.contains(&name) || args.contains_key(name),
                "a stage uses ${{{name}}} without declaring it"
            );
        }
    }

    let ignore = std::fs::read_to_string(repo_root().join(".dockerignore"))?;
    assert!(
        ignore
            .lines()
            .any(|l| l.trim() == "target/" || l.trim() == "target"),
        ".dockerignore must exclude target/"
    );
    Ok(())
}
