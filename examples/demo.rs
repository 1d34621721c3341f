//! The last steps of `scripts/demo.sh`: applies an Ingress (KUBECONFIG), waits
//! for its NucleiScan to finish and prints the findings as a table; with
//! `--reader-token FILE`, first lets a ServiceAccount read the operator's
//! /queue and /metrics (`kubectl create serviceaccount`, `kubectl create
//! clusterrolebinding --clusterrole=nuclei-operator-data-reader` and
//! `kubectl create token`, without kubectl) and writes its token to FILE.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::networking::v1::Ingress;
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

/// The ServiceAccount (in the release namespace) the demo reads /queue as.
const READER: &str = "demo-queue-reader";

/// Binds [`READER`] to the chart's data-reader ClusterRole and returns a
/// one-hour token of it.
async fn reader_token(client: &kube::Client) -> Result<String> {
    let (ns, role) = ("nuclei-system", "nuclei-operator-data-reader");
    let apply = PatchParams::apply("demo").force();
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), ns);
    let account: ServiceAccount = serde_json::from_value(json!({"metadata": {"name": READER}}))?;
    accounts
        .patch(READER, &apply, &Patch::Apply(&account))
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": READER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": READER, "namespace": ns}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .patch(READER, &apply, &Patch::Apply(&binding))
        .await?;
    let request: TokenRequest =
        serde_json::from_value(json!({"spec": {"audiences": [], "expirationSeconds": 3600}}))?;
    let granted: TokenRequest = accounts
        .create_subresource("token", READER, &PostParams::default(), &request)
        .await?;
    granted
        .status
        .and_then(|s| s.token)
        .context("the TokenRequest returned no token")
}
use nuclei_operator::api::{NucleiScan, ScanPhase, SourceKind};
use nuclei_operator::sources::targets::scan_name;

#[tokio::main]
async fn main() -> Result<()> {
    let usage = "usage: demo [--reader-token FILE] INGRESS.yaml";
    let (mut token_file, mut path) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--reader-token" {
            token_file = Some(args.next().context(usage)?);
        } else {
            path = Some(arg);
        }
    }
    let path = path.context(usage)?;
    let ingress: Ingress = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let ns = ingress.namespace().unwrap_or_else(|| "default".into());
    let client = kube::Client::try_default().await?;
    if let Some(file) = token_file {
        let token = reader_token(&client).await?;
        std::fs::write(&file, token).with_context(|| format!("writing {file}"))?;
    }
    let ingresses: Api<Ingress> = Api::namespaced(client.clone(), &ns);
    ingresses
        .patch(
            &ingress.name_any(),
            &PatchParams::apply("demo").force(),
            &Patch::Apply(&ingress),
        )
        .await?;
    let name = scan_name(SourceKind::Ingress, &ingress.name_any());
    let scans: Api<NucleiScan> = Api::namespaced(client, &ns);
    let started = Instant::now();
    let mut last = String::new();
    let scan = loop {
        if started.elapsed() > Duration::from_secs(180) {
            bail!("scan {ns}/{name} did not finish in 3 minutes (last phase: {last})");
        }
        if let Some(s) = scans.get_opt(&name).await? {
            let phase = s.status.as_ref().and_then(|st| st.phase);
            let now = phase
                .map(|p| p.to_string())
                .unwrap_or_else(|| "(new)".into());
            if now != last {
                eprintln!("    {ns}/{name}: {now}");
                last = now;
            }
            if matches!(phase, Some(ScanPhase::Completed | ScanPhase::Failed)) {
                break s;
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let st = scan.status.unwrap_or_default();
    println!();
    println!(
        "NucleiScan {ns}/{name}: {}",
        st.phase.map(|p| p.to_string()).unwrap_or_default()
    );
    println!("targets: {}", scan.spec.targets.join(", "));
    if let Some(err) = &st.last_error {
        println!("error: {err}");
    }
    if let Some(sum) = &st.summary {
        let by: Vec<String> = sum
            .findings_by_severity
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| format!("{k}={n}"))
            .collect();
        println!(
            "findings: {} ({}) in {}s",
            sum.total_findings,
            by.join(", "),
            sum.duration_seconds
        );
    }
    println!();
    println!(
        "{:<9} {:<28} {:<34} {:<14} EXTRACTED",
        "SEVERITY", "TEMPLATE", "MATCHED AT", "CVE"
    );
    for f in &st.findings {
        println!(
            "{:<9} {:<28} {:<34} {:<14} {}",
            f.severity.map(|s| s.to_string()).unwrap_or_default(),
            f.template_id,
            f.matched_at,
            f.cve_ids.join(","),
            f.extracted_results.join(",")
        );
    }
    Ok(())
}
