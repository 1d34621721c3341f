//! The release path, checked here since the hosted CI that runs it cannot be:
//! one version everywhere (`scripts/release-check.sh`, and a test that its
//! checks catch each disagreement), the binary reporting that version, and
//! the GitHub Actions workflows linted by the real actionlint and read for
//! what a release must do.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde::Deserialize;
use serde_yaml::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const CRD: &str = "nucleiscans.nuclei.homelab.mortenolsen.pro.yaml";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs `scripts/release-check.sh args` on the tree at `root`.
fn release_check(root: &Path, args: &[&str]) -> Output {
    Command::new("bash")
        .arg(repo().join("scripts/release-check.sh"))
        .args(args)
        .env("RELEASE_CHECK_ROOT", root)
        .output()
        .expect("bash runs")
}

#[test]
fn this_tree_names_one_version_everywhere() {
    let out = release_check(repo(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains(&format!("{VERSION} everywhere")));
    // A tag's leading v is the version.
    let out = release_check(repo(), &[&format!("v{VERSION}")]);
    assert!(out.status.success(), "{}", text(&out));
    let out = Command::new("bash")
        .arg(repo().join("scripts/release-check.sh"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), VERSION);
}

/// A directory removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Scratch {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "nuclei-release-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The files the check reads, copied into a scratch tree.
fn scratch_tree() -> Scratch {
    let dir = Scratch::new();
    for file in [
        "Cargo.toml",
        "CHANGELOG.md",
        "README.md",
        "Dockerfile",
        "devcluster/tools/versions.env",
        "deploy/helm/nuclei-operator/Chart.yaml",
        "deploy/helm/nuclei-operator/values.yaml",
        &format!("deploy/crds/{CRD}"),
        &format!("deploy/helm/nuclei-operator/crds/{CRD}"),
    ] {
        let to = dir.path().join(file);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(repo().join(file), to).unwrap();
    }
    dir
}

/// Replaces the first `from` in `file` of the tree with `to`.
fn edit(root: &Path, file: &str, from: &str, to: &str) {
    let path: PathBuf = root.join(file);
    let old = std::fs::read_to_string(&path).unwrap();
    assert!(old.contains(from), "{file} has no '{from}'");
    std::fs::write(&path, old.replacen(from, to, 1)).unwrap();
}

#[test]
fn the_release_check_catches_each_disagreement() {
    let crd_label = format!("app.kubernetes.io/version: {VERSION}");
    let chart_crd = format!("deploy/helm/nuclei-operator/crds/{CRD}");
    let cases: &[(&str, &str, String, &str, &str)] = &[
        (
            "Chart.yaml version",
            "deploy/helm/nuclei-operator/Chart.yaml",
            format!("version: {VERSION}"),
            "version: 9.9.9",
            "Chart.yaml version",
        ),
        (
            "Chart.yaml appVersion",
            "deploy/helm/nuclei-operator/Chart.yaml",
            format!("appVersion: \"{VERSION}\""),
            "appVersion: \"9.9.9\"",
            "appVersion",
        ),
        (
            "a fixed image tag",
            "deploy/helm/nuclei-operator/values.yaml",
            "  tag: \"\"".into(),
            "  tag: \"0.0.1\"",
            "image.tag",
        ),
        (
            "the chart's copy of the CRD",
            &chart_crd,
            crd_label.clone(),
            "app.kubernetes.io/version: 9.9.9",
            "crds/nucleiscans",
        ),
        (
            "the CHANGELOG",
            "CHANGELOG.md",
            format!("## [{VERSION}]"),
            "## [9.9.9]",
            "CHANGELOG.md",
        ),
        (
            "the README's install command",
            "README.md",
            format!("--version {VERSION} "),
            "--version 9.9.9 ",
            "README.md",
        ),
        (
            "the Dockerfile's nuclei",
            "Dockerfile",
            "ARG NUCLEI_VERSION=".into(),
            "ARG NUCLEI_VERSION=v0.0.1-",
            "NUCLEI_VERSION",
        ),
        (
            "the Dockerfile's templates",
            "Dockerfile",
            "ARG NUCLEI_TEMPLATES_VERSION=".into(),
            "ARG NUCLEI_TEMPLATES_VERSION=v0.0.1-",
            "NUCLEI_TEMPLATES_VERSION",
        ),
    ];
    // The unedited copy passes, so each failure below is the edit's.
    let tree = scratch_tree();
    let out = release_check(tree.path(), &[]);
    assert!(out.status.success(), "{}", text(&out));
    for (what, file, from, to, named) in cases {
        let tree = scratch_tree();
        edit(tree.path(), file, from, to);
        let out = release_check(tree.path(), &[]);
        assert!(!out.status.success(), "{what}: the check passed");
        assert!(
            text(&out).contains(named),
            "{what}: the message does not name {named}: {}",
            text(&out)
        );
    }
    // A tag that is not the version.
    let out = release_check(tree.path(), &["v9.9.9"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("the tag says 9.9.9"), "{}", text(&out));
}

#[test]
fn the_binary_reports_the_one_version() {
    let out = Command::new(env!("CARGO_BIN_EXE_nuclei-operator"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("nuclei-operator {VERSION}")
    );
    // And each CRD it applies names it (the chart's upgrade hook reads it).
    let out = Command::new(env!("CARGO_BIN_EXE_nuclei-operator"))
        .arg("crd")
        .output()
        .unwrap();
    let mut names = Vec::new();
    for doc in serde_yaml::Deserializer::from_slice(&out.stdout) {
        let crd = Value::deserialize(doc).unwrap();
        assert_eq!(
            crd["metadata"]["labels"]["app.kubernetes.io/version"].as_str(),
            Some(VERSION),
            "{crd:?}"
        );
        names.push(crd["metadata"]["name"].as_str().unwrap().to_owned());
    }
    assert_eq!(
        names,
        [
            "nucleiscans.nuclei.homelab.mortenolsen.pro",
            "nucleifindingexceptions.nuclei.homelab.mortenolsen.pro"
        ]
    );
}

/// Runs actionlint on every workflow under `dir`/.github/workflows (named
/// explicitly, so no git checkout is needed).
fn actionlint(dir: &Path) -> Output {
    let tools = devcluster::Tools::locate().unwrap();
    let bin = tools.require(&tools.actionlint).unwrap();
    let mut flows: Vec<PathBuf> = std::fs::read_dir(dir.join(".github/workflows"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yml" || e == "yaml"))
        .collect();
    flows.sort();
    assert!(!flows.is_empty(), "no workflows under {}", dir.display());
    Command::new(bin)
        .args(["-no-color", "-shellcheck=", "-pyflakes="])
        .args(flows)
        .current_dir(dir)
        .output()
        .expect("actionlint runs")
}

#[test]
fn actionlint_passes_the_workflows_and_catches_a_broken_one() {
    let out = actionlint(repo());
    assert!(out.status.success(), "actionlint:\n{}", text(&out));

    // The linter is really reading: a workflow with an unknown job key and
    // an undefined step output fails.
    let dir = Scratch::new();
    let flows = dir.path().join(".github/workflows");
    std::fs::create_dir_all(&flows).unwrap();
    std::fs::write(
        flows.join("broken.yml"),
        "on: push\njobs:\n  a:\n    runs-on: ubuntu-24.04\n    step:\n      - run: echo ${{ steps.x.outputs.y }}\n",
    )
    .unwrap();
    let out = actionlint(dir.path());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("broken.yml"), "{}", text(&out));
}

fn workflow(name: &str) -> Value {
    let path = repo().join(".github/workflows").join(name);
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// Every `run:` of a job's steps, joined.
fn runs(job: &Value) -> String {
    job["steps"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s["run"].as_str())
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every `uses:` of a job's steps.
fn uses(job: &Value) -> Vec<&str> {
    job["steps"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|s| s["uses"].as_str())
        .collect()
}

#[test]
fn ci_on_pull_requests_runs_the_same_command_as_dot_ci_run() {
    let ci_run = std::fs::read_to_string(repo().join(".ci/run")).unwrap();
    assert!(ci_run.lines().any(|l| l.trim() == "exec scripts/test.sh"));
    let ci = workflow("ci.yml");
    assert!(ci["on"].get("pull_request").is_some(), "{:?}", ci["on"]);
    let test = &ci["jobs"]["test"];
    assert!(
        runs(test).lines().any(|l| l.trim() == "scripts/test.sh"),
        "{}",
        runs(test)
    );
    // The tools cache is keyed by the files that pin them.
    let cache = test["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["with"]["path"].as_str() == Some("~/.cache/nuclei-operator/tools"))
        .expect("the tools are cached");
    assert!(
        cache["with"]["key"]
            .as_str()
            .unwrap()
            .contains("hashFiles('devcluster/tools/**')")
    );
}

#[test]
fn a_tag_releases_a_checked_signed_multi_arch_image_and_chart() {
    let release = workflow("release.yml");
    let tags: Vec<&str> = release["on"]["push"]["tags"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(tags, ["v*"]);
    let jobs = &release["jobs"];

    // Nothing is published before the tag is checked against the version.
    assert!(runs(&jobs["check"]).contains("scripts/release-check.sh \"$GITHUB_REF_NAME\""));
    for job in ["image", "chart"] {
        let needs = &jobs[job]["needs"];
        let needs: Vec<&str> = match needs {
            Value::String(one) => vec![one.as_str()],
            many => many
                .as_sequence()
                .unwrap()
                .iter()
                .filter_map(Value::as_str)
                .collect(),
        };
        assert!(needs.contains(&"check"), "{job} needs {needs:?}");
    }

    // The image: both platforms, SBOM, provenance, the pinned nuclei, signed.
    let image = &jobs["image"];
    let build = image["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| {
            s["uses"]
                .as_str()
                .is_some_and(|u| u.starts_with("docker/build-push-action@"))
        })
        .expect("the image is built with buildx");
    let with = &build["with"];
    assert_eq!(with["platforms"].as_str(), Some("linux/amd64,linux/arm64"));
    assert_eq!(with["push"].as_bool(), Some(true));
    assert_eq!(with["sbom"].as_bool(), Some(true));
    assert!(
        with["provenance"]
            .as_str()
            .is_some_and(|p| p.contains("mode=max"))
    );
    assert!(with["cache-from"].as_str().is_some());
    let args = with["build-args"].as_str().unwrap();
    assert!(args.contains("NUCLEI_VERSION=${{ needs.check.outputs.nuclei }}"));
    assert!(args.contains("NUCLEI_TEMPLATES_VERSION=${{ needs.check.outputs.templates }}"));
    let meta = image["steps"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|s| s["id"].as_str() == Some("meta"))
        .unwrap();
    let image_tags = meta["with"]["tags"].as_str().unwrap();
    assert!(image_tags.contains("value=${{ needs.check.outputs.version }}"));
    assert!(image_tags.contains("value=latest"));
    assert!(runs(image).contains("cosign sign --yes \"$IMAGE@$DIGEST\""));
    assert_eq!(image["permissions"]["id-token"].as_str(), Some("write"));

    // The chart: the tag's version as version and appVersion, pushed as an
    // OCI artifact, signed, by the helm the tests run.
    let chart = &jobs["chart"];
    let chart_runs = runs(chart);
    assert!(chart_runs.contains("--version \"$VERSION\" --app-version \"$VERSION\""));
    assert!(chart_runs.contains("helm push"));
    assert!(chart_runs.contains("oci://$CHARTS"));
    assert!(chart_runs.contains("cosign sign --yes"));
    assert!(runs(&jobs["check"]).contains("echo \"helm=$HELM_VERSION\""));

    // Every action is pinned to a release.
    for (name, job) in jobs.as_mapping().unwrap() {
        for action in uses(job) {
            let (_, version) = action.split_once('@').unwrap_or_default();
            assert!(version.starts_with('v'), "{name:?} uses {action} unpinned");
        }
    }
}
