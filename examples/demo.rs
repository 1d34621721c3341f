//! The last step of `scripts/demo.sh`: applies an Ingress (KUBECONFIG), waits
//! for its NucleiScan to finish and prints the findings as a table.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use k8s_openapi::api::networking::v1::Ingress;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use nuclei_operator::api::{NucleiScan, ScanPhase, SourceKind};
use nuclei_operator::sources::targets::scan_name;

#[tokio::main]
async fn main() -> Result<()> {
    let path = std::env::args()
        .nth(1)
        .context("usage: demo INGRESS.yaml")?;
    let ingress: Ingress = serde_yaml::from_str(&std::fs::read_to_string(&path)?)?;
    let ns = ingress.namespace().unwrap_or_else(|| "default".into());
    let client = kube::Client::try_default().await?;
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
