//! The operator's template repositories (TEMPLATE_REPOSITORIES), fetched
//! once for every scan instead of cloned by every scanner pod.
//!
//! How it flows:
//! 1. The leader's [`refresh::run`] starts a fetch Job in the operator's
//!    namespace ([`crate::jobs::build_fetch_job`]): one `git clone` init
//!    container per repository (the operator image has no git), then the
//!    operator image's `publish-templates` mode ([`publish`]), which packs
//!    each repository's `path` into a deterministic tar.gz
//!    ([`archive::pack`]) and writes it as immutable ConfigMaps named after
//!    its SHA-256 (`nuclei-templates-<sha>-<i>`, ≤ 768 KiB each), plus a
//!    [`Manifest`] ConfigMap named after the Job: commit, digest and chunks
//!    per repository, or why one could not be fetched.
//! 2. The operator reads the manifest, lets scanner pods `get` exactly those
//!    ConfigMaps (Role [`READER_ROLE`], `resourceNames`), and from then on
//!    each scanner Job names the entries of its sources
//!    ([`TEMPLATE_CACHE_ENV`]) instead of cloning them.
//! 3. The scanner reads the chunks through the API, checks size and digest,
//!    unpacks them into `/templates/git/<i>` and records the manifest's
//!    commit in `status.templateSources`.
//! 4. Every TEMPLATE_REFRESH_INTERVAL the Job runs again; unchanged
//!    repositories give the same names (nothing new is written), and
//!    ConfigMaps neither the new nor the previous manifest names are deleted.
//!
//! Scanner pods live in the scans' namespaces and cannot mount a ConfigMap
//! of the operator's namespace; reading through the API keeps one copy in
//! etcd whatever the number of namespaces, and keeps clone credentials and
//! untrusted clones out of the scan namespaces and the operator process.

pub mod archive;
pub mod publish;
pub mod refresh;

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::git::GitSource;

/// Label on every ConfigMap of the cache: `manifest` or `chunk`.
pub const CACHE_LABEL: &str = "nuclei.homelab.mortenolsen.pro/template-cache";
/// `app.kubernetes.io/component` of the fetch Job and the cache's objects.
pub const COMPONENT_TEMPLATE_CACHE: &str = "template-cache";
/// Key of a manifest ConfigMap's JSON.
pub const MANIFEST_KEY: &str = "manifest.json";
/// Key of a chunk ConfigMap's bytes (`binaryData`).
pub const CHUNK_KEY: &str = "chunk";
/// Prefix of the fetch Jobs, their manifests and the chunks.
pub const NAME_PREFIX: &str = "nuclei-templates-";
/// The Role (operator namespace) that lets scanner pods read the chunks of
/// the current manifests, and the prefix of its RoleBindings, one per
/// namespace with scans.
pub const READER_ROLE: &str = "nuclei-template-cache";
/// ServiceAccount and Role of the fetch Job (`create` on ConfigMaps in the
/// operator namespace, nothing else).
pub const FETCHER: &str = "nuclei-template-fetcher";
/// Environment variable of the scanner: where its sources are cached, as
/// JSON ([`CacheEnv`]).
pub const TEMPLATE_CACHE_ENV: &str = "TEMPLATE_CACHE";
/// Environment variable of the publisher: the name of the manifest to write.
pub const MANIFEST_NAME_ENV: &str = "MANIFEST_NAME";

/// One repository as the cache holds it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    #[serde(flatten)]
    pub source: GitSource,
    /// The commit fetched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
    /// Why it could not be fetched (then nothing else is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// SHA-256 of the archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Size of the archive.
    #[serde(default)]
    pub bytes: u64,
    /// The ConfigMaps holding the archive, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chunks: Vec<String>,
}

/// What one fetch found: an entry per repository, in TEMPLATE_REPOSITORIES
/// order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// When the fetch Job published it.
    pub fetched_at: DateTime<Utc>,
    pub sources: Vec<Entry>,
}

impl Manifest {
    /// The entry of `source`, if this manifest holds it.
    pub fn entry(&self, source: &GitSource) -> Option<&Entry> {
        self.sources.iter().find(|e| &e.source == source)
    }

    /// Whether it was fetched for exactly these repositories.
    pub fn is_for(&self, sources: &[GitSource]) -> bool {
        self.sources.len() == sources.len()
            && self
                .sources
                .iter()
                .zip(sources)
                .all(|(e, s)| &e.source == s)
    }

    /// Names of its chunk ConfigMaps.
    pub fn chunk_names(&self) -> impl Iterator<Item = &str> {
        self.sources
            .iter()
            .flat_map(|e| e.chunks.iter().map(String::as_str))
    }
}

/// The names of the chunk ConfigMaps of an archive with SHA-256 `sha256`
/// cut into `n` chunks.
pub fn chunk_names(sha256: &str, n: usize) -> Vec<String> {
    let short = &sha256[..sha256.len().min(20)];
    (0..n)
        .map(|i| format!("{NAME_PREFIX}{short}-{i}"))
        .collect()
}

/// What a scanner Job is told ([`TEMPLATE_CACHE_ENV`]): the namespace of the
/// cache and, aligned with its git sources, the entry of each that is
/// cached (`null` for one its init containers clone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheEnv {
    pub namespace: String,
    pub sources: Vec<Option<Entry>>,
}

/// The manifest scanner Jobs use now, shared by the refresh loop (which sets
/// it) and the launcher (which reads it).
#[derive(Debug)]
pub struct TemplateCache {
    namespace: String,
    current: RwLock<Option<Arc<Manifest>>>,
}

impl TemplateCache {
    /// An empty cache in the operator's `namespace`: until the first fetch
    /// is published, scanner pods clone the repositories themselves.
    pub fn new(namespace: &str) -> Self {
        TemplateCache {
            namespace: namespace.to_owned(),
            current: RwLock::new(None),
        }
    }

    /// The operator's namespace, where the cache lives.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The manifest in use, if one was published.
    pub fn current(&self) -> Option<Arc<Manifest>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Makes `manifest` the one new Jobs use.
    pub fn set(&self, manifest: Arc<Manifest>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(manifest);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn source(url: &str) -> GitSource {
        GitSource::parse(url).unwrap()
    }

    #[test]
    fn a_manifest_round_trips_and_finds_its_entries_by_source() {
        let m = Manifest {
            fetched_at: "2026-12-04T03:00:00Z".parse().unwrap(),
            sources: vec![
                Entry {
                    source: source("https://h/a.git#main:http"),
                    commit: Some("a".repeat(40)),
                    sha256: Some("f".repeat(64)),
                    bytes: 10,
                    chunks: chunk_names(&"f".repeat(64), 2),
                    ..Entry::default()
                },
                Entry {
                    source: source("https://h/missing.git"),
                    error: Some("not fetched: fatal: not found".into()),
                    ..Entry::default()
                },
            ],
        };
        let json = serde_json::to_string(&m).unwrap();
        assert!(json.contains(r#""ref":"main""#), "{json}");
        assert_eq!(serde_json::from_str::<Manifest>(&json).unwrap(), m);
        assert_eq!(
            m.entry(&source("https://h/missing.git"))
                .unwrap()
                .error
                .as_deref(),
            Some("not fetched: fatal: not found")
        );
        assert!(m.entry(&source("https://h/a.git#main")).is_none());
        assert!(m.is_for(&[
            source("https://h/a.git#main:http"),
            source("https://h/missing.git")
        ]));
        assert!(!m.is_for(&[
            source("https://h/missing.git"),
            source("https://h/a.git#main:http")
        ]));
        assert_eq!(
            m.chunk_names().collect::<Vec<_>>(),
            [
                "nuclei-templates-ffffffffffffffffffff-0",
                "nuclei-templates-ffffffffffffffffffff-1"
            ]
        );
    }
}
