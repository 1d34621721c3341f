//! Where the real component binaries live: the per-version cache that
//! `devcluster/tools/build.sh` fills.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

/// Paths of the built tools.
#[derive(Clone, Debug)]
pub struct Tools {
    pub etcd: PathBuf,
    pub kube_apiserver: PathBuf,
    pub kube_controller_manager: PathBuf,
    pub nuclei: PathBuf,
    pub helm: PathBuf,
    /// Prometheus's `promtool`, which checks and unit-tests the chart's
    /// alert rules.
    pub promtool: PathBuf,
    /// `actionlint`, which lints the GitHub Actions workflows.
    pub actionlint: PathBuf,
    /// The Gateway API project's standard-channel CRDs (GatewayClass,
    /// Gateway, HTTPRoute), copied from its Go module: a directory.
    pub gateway_api_crds: PathBuf,
    /// OpenReports' Report CRD and the Policy WG's PolicyReport CRD, copied
    /// from their projects' Go modules: a directory.
    pub report_crds: PathBuf,
}

/// The build script, for error messages and for callers that want to build.
pub fn build_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/build.sh")
}

impl Tools {
    /// Asks the build script where each tool's cache directory is. Does not
    /// build anything: a missing binary is reported by [`Tools::require`].
    pub fn locate() -> Result<Tools> {
        let script = build_script();
        let out = std::process::Command::new("bash")
            .arg(&script)
            .arg("--print-dir")
            .output()
            .with_context(|| format!("running {} --print-dir", script.display()))?;
        if !out.status.success() {
            bail!(
                "{} --print-dir failed: {}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let dirs = String::from_utf8(out.stdout)?;
        let dir = |name: &str| -> Result<PathBuf> {
            dirs.lines()
                .find_map(|l| l.strip_prefix(&format!("{name}=")))
                .map(PathBuf::from)
                .with_context(|| format!("build.sh --print-dir did not name {name}"))
        };
        Ok(Tools {
            etcd: dir("etcd")?.join("etcd"),
            kube_apiserver: dir("kubernetes")?.join("kube-apiserver"),
            kube_controller_manager: dir("kubernetes")?.join("kube-controller-manager"),
            nuclei: dir("nuclei")?.join("nuclei"),
            helm: dir("helm")?.join("helm"),
            promtool: dir("prometheus")?.join("promtool"),
            actionlint: dir("actionlint")?.join("actionlint"),
            gateway_api_crds: dir("gateway-api")?,
            report_crds: dir("reports")?,
        })
    }

    /// The Gateway API CRDs, parsed, in the order they must be installed
    /// (GatewayClass, Gateway, HTTPRoute).
    pub fn gateway_api_crds(&self) -> Result<Vec<CustomResourceDefinition>> {
        ["gatewayclasses", "gateways", "httproutes"]
            .iter()
            .map(|kind| {
                self.crd(
                    &self
                        .gateway_api_crds
                        .join(format!("gateway.networking.k8s.io_{kind}.yaml")),
                )
            })
            .collect()
    }

    /// OpenReports' `Report` CRD (`openreports.io/v1alpha1`).
    pub fn openreports_crd(&self) -> Result<CustomResourceDefinition> {
        self.crd(&self.report_crds.join("openreports.io_reports.yaml"))
    }

    /// The Policy WG's `PolicyReport` CRD (`wgpolicyk8s.io/v1alpha2`).
    pub fn policyreport_crd(&self) -> Result<CustomResourceDefinition> {
        self.crd(&self.report_crds.join("wgpolicyk8s.io_policyreports.yaml"))
    }

    fn crd(&self, path: &Path) -> Result<CustomResourceDefinition> {
        let text = std::fs::read_to_string(self.require(path)?)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    }

    /// The path of `tool`, or an error telling how to build it.
    pub fn require<'a>(&self, path: &'a Path) -> Result<&'a Path> {
        if path.is_file() {
            Ok(path)
        } else {
            bail!(
                "{} is missing: run `{}` to build the devcluster tools (cold builds take tens of minutes)",
                path.display(),
                build_script().display()
            )
        }
    }
}
