//! The API server's `apiserver_request_total`, scraped from its `/metrics`
//! and differenced between phases.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use serde::Serialize;

/// Request counts keyed by (verb, resource[/subresource]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Requests(pub BTreeMap<(String, String), f64>);

/// Scrapes `/metrics` of the API server (needs a client allowed to read it).
pub async fn scrape(client: &kube::Client) -> Result<Requests> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client
        .request_text(req)
        .await
        .context("reading the API server's /metrics")?;
    Ok(parse(&text))
}

fn label<'a>(labels: &'a str, name: &str) -> &'a str {
    let pat = format!("{name}=\"");
    labels
        .split(',')
        .find_map(|kv| kv.trim().strip_prefix(pat.as_str()))
        .and_then(|v| v.strip_suffix('"'))
        .unwrap_or("")
}

/// Sums `apiserver_request_total` samples by verb and resource.
pub fn parse(text: &str) -> Requests {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        let Ok(v) = value.trim().parse::<f64>() else {
            continue;
        };
        let verb = label(labels, "verb").to_string();
        let resource = label(labels, "resource");
        let sub = label(labels, "subresource");
        let res = if sub.is_empty() {
            resource.to_string()
        } else {
            format!("{resource}/{sub}")
        };
        *out.entry((verb, res)).or_insert(0.0) += v;
    }
    Requests(out)
}

impl Requests {
    /// `self − earlier`, dropping zero rows.
    pub fn since(&self, earlier: &Requests) -> Requests {
        let mut out = BTreeMap::new();
        for (k, v) in &self.0 {
            let d = v - earlier.0.get(k).copied().unwrap_or(0.0);
            if d > 0.0 {
                out.insert(k.clone(), d);
            }
        }
        Requests(out)
    }

    /// Totals per verb.
    pub fn by_verb(&self) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        for ((verb, _), v) in &self.0 {
            *out.entry(verb.clone()).or_insert(0) += *v as u64;
        }
        out
    }

    /// Total requests.
    pub fn total(&self) -> u64 {
        self.0.values().map(|v| *v as u64).sum()
    }

    /// The `n` largest (verb, resource) rows.
    pub fn top(&self, n: usize) -> Vec<VerbResource> {
        let mut rows: Vec<VerbResource> = self
            .0
            .iter()
            .map(|((verb, resource), v)| VerbResource {
                verb: verb.clone(),
                resource: resource.clone(),
                count: *v as u64,
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.verb.cmp(&b.verb)));
        rows.truncate(n);
        rows
    }
}

/// One row of the by-resource breakdown.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VerbResource {
    pub verb: String,
    pub resource: String,
    pub count: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP apiserver_request_total [STABLE] Counter of apiserver requests
# TYPE apiserver_request_total counter
apiserver_request_total{code="201",component="apiserver",dry_run="",group="networking.k8s.io",resource="ingresses",scope="resource",subresource="",verb="POST",version="v1"} 1000
apiserver_request_total{code="409",component="apiserver",dry_run="",group="networking.k8s.io",resource="ingresses",scope="resource",subresource="",verb="POST",version="v1"} 2
apiserver_request_total{code="200",component="apiserver",dry_run="",group="nuclei.homelab.mortenolsen.pro",resource="nucleiscans",scope="resource",subresource="status",verb="PATCH",version="v1alpha1"} 7
apiserver_request_total_other{verb="GET"} 5
"#;

    #[test]
    fn request_totals_are_summed_by_verb_and_resource() {
        let r = parse(TEXT);
        assert_eq!(r.0[&("POST".into(), "ingresses".into())], 1002.0);
        assert_eq!(r.0[&("PATCH".into(), "nucleiscans/status".into())], 7.0);
        assert_eq!(r.by_verb()["POST"], 1002);
        assert_eq!(r.total(), 1009);
    }

    #[test]
    fn differences_keep_only_what_grew() {
        let a = parse(TEXT);
        let mut b = a.clone();
        *b.0.get_mut(&("PATCH".into(), "nucleiscans/status".into()))
            .unwrap() += 3.0;
        let d = b.since(&a);
        assert_eq!(d.0.len(), 1);
        assert_eq!(d.by_verb()["PATCH"], 3);
    }
}
