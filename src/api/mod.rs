//! The `nuclei.homelab.mortenolsen.pro/v1alpha1` API, and the minimal Istio
//! `VirtualService` and Gateway API `HTTPRoute`/`Gateway` types we read.

pub mod conditions;
pub mod exception;
mod finding;
pub mod gateway;
mod key;
pub mod labels;
pub mod nucleiscan;
pub mod virtual_service;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use labels::CRD_VERSION_LABEL;

pub use exception::{
    NucleiFindingException, NucleiFindingExceptionSpec, NucleiFindingExceptionStatus,
};
pub use finding::{Finding, Severity};
pub use key::ScanKey;
pub use nucleiscan::{
    JobRef, MAX_RATE_LIMIT, MAX_REFUSED_LISTED, MAX_RETRY_COUNT, MAX_TARGET_LEN, MAX_TARGETS,
    MIN_RATE_LIMIT, NucleiScan, NucleiScanSpec, NucleiScanStatus, ScanPhase, ScanSummary,
    ScannerConfig, SourceKind, SourceRef, TEMPLATE_PATH_RULE, TEMPLATE_PATH_RULE_MESSAGE,
    TemplateSource, is_template_path, is_valid_target,
};
pub use virtual_service::{
    HttpMatchRequest, HttpRoute, OpaqueRoute, StringMatch, VirtualService, VirtualServiceSpec,
};

/// Where the generated `NucleiScan` CRD is checked in, relative to the
/// repository root.
pub const CRD_PATH: &str = "deploy/crds/nucleiscans.nuclei.homelab.mortenolsen.pro.yaml";

/// Where the generated `NucleiFindingException` CRD is checked in.
pub const EXCEPTION_CRD_PATH: &str =
    "deploy/crds/nucleifindingexceptions.nuclei.homelab.mortenolsen.pro.yaml";

/// The `NucleiScan` CustomResourceDefinition, generated from the Rust types,
/// labelled with this operator's version.
pub fn crd() -> CustomResourceDefinition {
    labelled(NucleiScan::crd())
}

/// Every CRD this operator defines, with the path it is checked in at:
/// `NucleiScan` first.
pub fn crds() -> [(&'static str, CustomResourceDefinition); 2] {
    [
        (CRD_PATH, crd()),
        (EXCEPTION_CRD_PATH, labelled(NucleiFindingException::crd())),
    ]
}

fn labelled(mut crd: CustomResourceDefinition) -> CustomResourceDefinition {
    crd.metadata.labels = Some(
        [
            ("app.kubernetes.io/name", "nuclei-operator"),
            (CRD_VERSION_LABEL, env!("CARGO_PKG_VERSION")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect(),
    );
    crd
}

/// `crd` as YAML, exactly as checked in (`nuclei-operator crd` prints them
/// all, as one YAML stream).
pub fn crd_yaml(crd: &CustomResourceDefinition) -> String {
    let yaml = serde_yaml::to_string(crd).expect("a CRD always serializes to YAML");
    format!("# Generated from src/api/ by `cargo run -- crd`; do not edit.\n{yaml}")
}

/// Every CRD as one YAML stream (`nuclei-operator crd`).
pub fn crds_yaml() -> String {
    crds()
        .iter()
        .map(|(_, crd)| crd_yaml(crd))
        .collect::<Vec<_>>()
        .join("---\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checked_in_crds_match_the_rust_types() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let chart = root.join("deploy/helm/nuclei-operator/crds");
        for (at, crd) in crds() {
            let want = crd_yaml(&crd);
            let path = root.join(at);
            let copy = chart.join(path.file_name().unwrap());
            if std::env::var_os("NUCLEI_UPDATE_CRD").is_some() {
                std::fs::write(&path, &want).unwrap();
                std::fs::write(&copy, &want).unwrap();
            }
            for path in [path, copy] {
                let got = std::fs::read_to_string(&path).unwrap_or_default();
                assert!(
                    got == want,
                    "{} is stale or missing: run \
                     `NUCLEI_UPDATE_CRD=1 cargo test -p nuclei-operator --lib crd` and commit it",
                    path.display()
                );
            }
        }
    }

    #[test]
    fn the_crd_yaml_parses_back_to_the_crd() {
        let back: CustomResourceDefinition = serde_yaml::from_str(&crd_yaml(&crd())).unwrap();
        assert_eq!(back, crd());
        assert_eq!(
            back.metadata.name.as_deref(),
            Some("nucleiscans.nuclei.homelab.mortenolsen.pro")
        );
    }
}
