//! The chart's monitoring objects, its PrometheusRule and its Grafana
//! dashboard, rendered with the real `helm`, and the metric names their
//! queries read, so that tests can check the rules with `promtool` and the
//! names against what the operator exports on /metrics.
//!
//! Self-contained (std, serde and devcluster only): `tests/chart.rs`
//! includes this file by path, the e2e tests as `support::monitoring`.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use serde::Deserialize;
use serde_json::Value;

/// Key of the dashboard in the chart's ConfigMap, and the file name under
/// the chart's `dashboards/`.
pub const DASHBOARD_KEY: &str = "nuclei-operator.json";

/// Renders the chart with `prometheusRule.enabled` and
/// `grafanaDashboard.enabled` and returns the alert rules as a Prometheus
/// rule file (YAML; what `promtool check rules` reads) and the dashboard
/// JSON.
pub fn render_monitoring() -> Result<(String, String)> {
    let tools = devcluster::Tools::locate()?;
    let helm = tools.require(&tools.helm)?;
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/helm/nuclei-operator");
    let out = Command::new(helm)
        .args(["template", "monitoring"])
        .arg(&chart)
        .args(["--namespace", "monitoring"])
        .args([
            "--set",
            "prometheusRule.enabled=true,grafanaDashboard.enabled=true",
        ])
        .output()
        .context("running helm")?;
    ensure!(
        out.status.success(),
        "helm template failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    monitoring_files(&String::from_utf8(out.stdout)?)
}

/// From `helm template` output: the one PrometheusRule's `spec` as a rule
/// file (`groups: [...]`), and the dashboard JSON of the one ConfigMap
/// labelled `grafana_dashboard`.
pub fn monitoring_files(manifests: &str) -> Result<(String, String)> {
    let mut rules = Vec::new();
    let mut dashboards = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(manifests) {
        let doc = Value::deserialize(doc).context("helm printed invalid YAML")?;
        if doc["kind"] == "PrometheusRule" {
            rules.push(serde_yaml::to_string(&doc["spec"])?);
        } else if doc["kind"] == "ConfigMap"
            && !doc["metadata"]["labels"]["grafana_dashboard"].is_null()
        {
            let json = doc["data"][DASHBOARD_KEY]
                .as_str()
                .with_context(|| format!("the dashboard ConfigMap has no {DASHBOARD_KEY}"))?;
            dashboards.push(json.to_owned());
        }
    }
    match (rules.as_slice(), dashboards.as_slice()) {
        ([rules], [dashboard]) => Ok((rules.clone(), dashboard.clone())),
        _ => bail!(
            "expected one PrometheusRule and one dashboard ConfigMap, found {} and {}",
            rules.len(),
            dashboards.len()
        ),
    }
}

/// The `nuclei_…` metric names the queries read: every rule `expr` of
/// `rules` (a rule file or a whole PrometheusRule, YAML) and every panel
/// target `expr` and query variable of `dashboard` (Grafana JSON). Names are
/// as written: a histogram's `_bucket`, `_sum` and `_count` are kept, as the
/// exposition has them; label values (quoted strings) are not names.
pub fn monitoring_metric_names(rules: &str, dashboard: &str) -> Result<BTreeSet<String>> {
    let rules: Value = serde_yaml::from_str(rules).context("the rules are not YAML")?;
    let dashboard: Value = serde_json::from_str(dashboard).context("the dashboard is not JSON")?;
    let mut queries = Vec::new();
    strings_under(&rules, "expr", &mut queries);
    strings_under(&dashboard["panels"], "expr", &mut queries);
    for variable in dashboard["templating"]["list"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if variable["type"] == "query" {
            let query = &variable["query"];
            queries.extend(query.as_str().or(query["query"].as_str()));
        }
    }
    ensure!(!queries.is_empty(), "no queries found");
    Ok(queries.into_iter().flat_map(nuclei_names).collect())
}

/// Every string under `key`, at any depth (`expr` of rules in groups, of
/// targets in panels, of panels in rows).
pub fn strings_under<'a>(value: &'a Value, key: &str, out: &mut Vec<&'a str>) {
    match value {
        Value::Object(map) => {
            for (k, child) in map {
                match child.as_str() {
                    Some(s) if k == key => out.push(s),
                    _ => strings_under(child, key, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| strings_under(item, key, out)),
        _ => {}
    }
}

/// The identifiers of a PromQL query that start with `nuclei_`, outside
/// string literals.
fn nuclei_names(query: &str) -> Vec<String> {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    let mut names = Vec::new();
    let mut chars = query.char_indices().peekable();
    while let Some((start, c)) = chars.next() {
        if matches!(c, '"' | '\'' | '`') {
            // Skip the string, honouring backslash escapes (not in raw `…`).
            let mut escaped = false;
            for (_, d) in chars.by_ref() {
                match d {
                    _ if escaped => escaped = false,
                    '\\' if c != '`' => escaped = true,
                    _ if d == c => break,
                    _ => {}
                }
            }
        } else if is_ident(c) {
            let mut end = start + c.len_utf8();
            while let Some(&(i, d)) = chars.peek() {
                if !is_ident(d) {
                    break;
                }
                end = i + d.len_utf8();
                chars.next();
            }
            let ident = &query[start..end];
            if ident.starts_with("nuclei_") {
                names.push(ident.to_owned());
            }
        }
    }
    names
}
