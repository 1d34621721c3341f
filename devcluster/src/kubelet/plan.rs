//! Pure parts of the process kubelet: which local program an image maps to,
//! the environment a container sees, `$(VAR)` expansion and downward-API fields.

use std::collections::BTreeMap;
use std::path::PathBuf;

use k8s_openapi::api::core::v1::{Container, Pod};
use serde::{Deserialize, Serialize};

/// Maps a container image to local programs, the way an image would supply them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageMapping {
    /// Image repository without tag or digest (`ghcr.io/x/operator`), or a prefix
    /// ending in `*`.
    pub image: String,
    /// The image's entrypoint (container paths), used when a container sets no
    /// `command`.
    #[serde(default)]
    pub entrypoint: Vec<String>,
    /// Files and directories of the image: container path → host path. They are
    /// bind-mounted into the pod's root; they must not lie under the host
    /// directories shared read-only with every pod (`/usr`, `/etc`).
    #[serde(default)]
    pub files: BTreeMap<String, PathBuf>,
    /// Container directories put in front of `PATH` (the image's `ENV PATH`).
    #[serde(default)]
    pub path: Vec<String>,
    /// The image's other `ENV` values (the pod's own env wins).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
}

impl ImageMapping {
    /// Whether this mapping serves `image` (tag and digest ignored).
    pub fn matches(&self, image: &str) -> bool {
        let repo = image_repository(image);
        match self.image.strip_suffix('*') {
            Some(prefix) => repo.starts_with(prefix),
            None => repo == self.image,
        }
    }
}

/// `registry:5000/a/b:tag@sha256:…` → `registry:5000/a/b`.
pub fn image_repository(image: &str) -> &str {
    let no_digest = image.split('@').next().unwrap_or(image);
    match no_digest.rfind(':') {
        Some(i) if !no_digest[i..].contains('/') => &no_digest[..i],
        _ => no_digest,
    }
}

/// The PATH a mapped container starts with.
pub fn container_path(mapping: &ImageMapping) -> String {
    let mut parts: Vec<&str> = mapping.path.iter().map(String::as_str).collect();
    parts.extend([
        "/usr/local/sbin",
        "/usr/local/bin",
        "/usr/sbin",
        "/usr/bin",
        "/sbin",
        "/bin",
    ]);
    parts.join(":")
}

/// Value of a downward-API `fieldRef` path, as the kubelet resolves it.
pub fn field_ref(pod: &Pod, path: &str) -> Result<String, String> {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let lookup = |map: &Option<BTreeMap<String, String>>, key: &str| {
        map.as_ref()
            .and_then(|m| m.get(key))
            .cloned()
            .unwrap_or_default()
    };
    if let Some(key) = bracket_key(path, "metadata.labels") {
        return Ok(lookup(&meta.labels, key));
    }
    if let Some(key) = bracket_key(path, "metadata.annotations") {
        return Ok(lookup(&meta.annotations, key));
    }
    Ok(match path {
        "metadata.name" => meta.name.clone().unwrap_or_default(),
        "metadata.namespace" => meta.namespace.clone().unwrap_or_default(),
        "metadata.uid" => meta.uid.clone().unwrap_or_default(),
        "spec.nodeName" => spec.and_then(|s| s.node_name.clone()).unwrap_or_default(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.hostIP" | "status.podIPs" | "status.hostIPs" => "127.0.0.1".into(),
        other => return Err(format!("unsupported fieldRef path {other:?}")),
    })
}

fn bracket_key<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(prefix)?.strip_prefix("['")?;
    rest.strip_suffix("']")
}

/// Kubernetes `$(VAR)` expansion: defined names are replaced, `$$` escapes a
/// `$`, undefined references stay as written.
pub fn expand(input: &str, env: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(inner) = after.strip_prefix('(')
            && let Some(end) = inner.find(')')
        {
            let name = &inner[..end];
            match env.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The argv of a container: `command` (or the image entrypoint) then `args`
/// (or nothing), each `$(VAR)`-expanded against the container's env.
pub fn argv(
    container: &Container,
    mapping: &ImageMapping,
    env: &[(String, String)],
) -> Result<Vec<String>, String> {
    let command = match &container.command {
        Some(c) if !c.is_empty() => c.clone(),
        _ => mapping.entrypoint.clone(),
    };
    let args = container.args.clone().unwrap_or_default();
    let argv: Vec<String> = command
        .iter()
        .chain(args.iter())
        .map(|a| expand(a, env))
        .collect();
    if argv.is_empty() {
        return Err(format!(
            "container {:?} has no command and image {:?} has no entrypoint in the devcluster mapping",
            container.name, mapping.image
        ));
    }
    Ok(argv)
}

/// User, group and supplementary groups of a container, container settings
/// over pod settings; root when neither says (as a container runtime would).
pub fn identity(pod: &Pod, container: &Container) -> (i64, i64, Vec<i64>) {
    let psc = pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let csc = container.security_context.as_ref();
    let uid = csc
        .and_then(|c| c.run_as_user)
        .or(psc.and_then(|p| p.run_as_user))
        .unwrap_or(0);
    let gid = csc
        .and_then(|c| c.run_as_group)
        .or(psc.and_then(|p| p.run_as_group))
        .unwrap_or(uid);
    let mut groups: Vec<i64> = psc
        .and_then(|p| p.supplemental_groups.clone())
        .unwrap_or_default();
    if let Some(fs) = psc.and_then(|p| p.fs_group) {
        groups.push(fs);
    }
    (uid, gid, groups)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn image_repository_strips_tags_and_digests_but_not_registry_ports() {
        for (image, repo) in [
            ("nuclei-operator:dev", "nuclei-operator"),
            ("ghcr.io/a/b:1.2", "ghcr.io/a/b"),
            ("localhost:5000/a/b", "localhost:5000/a/b"),
            ("localhost:5000/a/b:t@sha256:abc", "localhost:5000/a/b"),
            ("alpine/git", "alpine/git"),
        ] {
            assert_eq!(image_repository(image), repo, "{image}");
        }
    }

    #[test]
    fn mappings_match_exact_repositories_or_prefixes() {
        let exact = ImageMapping {
            image: "alpine/git".into(),
            ..Default::default()
        };
        assert!(exact.matches("alpine/git:2.45"));
        assert!(!exact.matches("alpine/gitx"));
        let prefix = ImageMapping {
            image: "ghcr.io/acme/*".into(),
            ..Default::default()
        };
        assert!(prefix.matches("ghcr.io/acme/scanner:1"));
        assert!(!prefix.matches("docker.io/acme/scanner"));
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let e = env(&[("A", "1"), ("B", "two")]);
        assert_eq!(expand("$(A)-$(B)", &e), "1-two");
        assert_eq!(expand("$$(A)", &e), "$(A)");
        assert_eq!(expand("$(MISSING)", &e), "$(MISSING)");
        assert_eq!(expand("cost $5", &e), "cost $5");
        assert_eq!(expand("$(A", &e), "$(A");
    }

    #[test]
    fn field_refs_resolve_pod_metadata_and_reject_unknown_paths() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns", "labels": {"app": "x"}},
            "spec": {"containers": [], "serviceAccountName": "sa"}
        }))
        .unwrap();
        assert_eq!(field_ref(&pod, "metadata.name").unwrap(), "p");
        assert_eq!(field_ref(&pod, "metadata.namespace").unwrap(), "ns");
        assert_eq!(field_ref(&pod, "metadata.labels['app']").unwrap(), "x");
        assert_eq!(field_ref(&pod, "spec.serviceAccountName").unwrap(), "sa");
        assert!(field_ref(&pod, "spec.bogus").is_err());
    }

    #[test]
    fn argv_uses_the_entrypoint_only_without_a_command() {
        let mapping = ImageMapping {
            image: "op".into(),
            entrypoint: vec!["/opt/op/bin/op".into()],
            ..Default::default()
        };
        let c: Container = serde_json::from_value(serde_json::json!({
            "name": "c", "args": ["scanner", "--scan=$(NS)/x"]
        }))
        .unwrap();
        let e = env(&[("NS", "default")]);
        assert_eq!(
            argv(&c, &mapping, &e).unwrap(),
            ["/opt/op/bin/op", "scanner", "--scan=default/x"]
        );
        let c: Container = serde_json::from_value(
            serde_json::json!({"name": "c", "command": ["sh", "-c", "true"]}),
        )
        .unwrap();
        assert_eq!(argv(&c, &mapping, &e).unwrap(), ["sh", "-c", "true"]);
        let empty = ImageMapping {
            image: "x".into(),
            ..Default::default()
        };
        let c: Container = serde_json::from_value(serde_json::json!({"name": "c"})).unwrap();
        assert!(argv(&c, &empty, &e).is_err());
    }

    #[test]
    fn identity_prefers_container_settings_and_adds_fs_group() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"securityContext": {"runAsUser": 1000, "fsGroup": 2000},
                     "containers": [{"name": "c", "securityContext": {"runAsUser": 65532}}]}
        }))
        .unwrap();
        let c = &pod.spec.as_ref().unwrap().containers[0];
        assert_eq!(identity(&pod, c), (65532, 65532, vec![2000]));
    }
}
