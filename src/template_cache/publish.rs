//! The fetch Job's main container (`nuclei-operator publish-templates`):
//! packs what its init containers cloned into `/templates/git/<i>` and
//! publishes it as the cache's ConfigMaps and manifest.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use chrono::Utc;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use tracing::{info, warn};

use super::archive;
use super::{CACHE_LABEL, CHUNK_KEY, COMPONENT_TEMPLATE_CACHE, Entry, MANIFEST_KEY, Manifest};
use crate::api::labels::{COMPONENT_LABEL, MANAGED_BY, MANAGED_BY_LABEL};
use crate::git::GitSource;

/// Most bytes of git's own words kept as the error of a failed clone.
const ERROR_TAIL_BYTES: usize = 512;

/// Arguments of `publish-templates`, all set by the fetch Job.
#[derive(clap::Args, Debug)]
pub struct PublishArgs {
    /// The repositories cloned into `/templates/git/<i>`, as JSON.
    #[arg(long, env = crate::jobs::TEMPLATE_SOURCES_ENV, value_parser = parse_sources)]
    pub sources: crate::git::Repositories,
    /// The manifest ConfigMap to write (the fetch Job's name).
    #[arg(long, env = super::MANIFEST_NAME_ENV)]
    pub manifest: String,
    /// Namespace of the cache (the Job's own).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
}

fn parse_sources(s: &str) -> Result<crate::git::Repositories, String> {
    serde_json::from_str(s)
        .map(crate::git::Repositories)
        .map_err(|e| format!("not a list of git sources: {e}"))
}

/// Packs every source cloned below `root` (`<root>/<i>`); a source whose
/// clone is missing, or whose `path` cannot be packed, gets an error and no
/// archive. Returns the entries (without chunk names) and archives.
pub fn pack_all(sources: &[GitSource], root: &Path) -> Vec<(Entry, Option<Vec<u8>>)> {
    sources
        .iter()
        .enumerate()
        .map(|(i, source)| {
            let dir = root.join(i.to_string());
            let mut entry = Entry {
                source: source.clone(),
                ..Entry::default()
            };
            if !dir.is_dir() {
                entry.error = Some(clone_error(root, i));
                return (entry, None);
            }
            match archive::pack(&dir, source.path.as_deref()) {
                Ok(bytes) => {
                    entry.commit = crate::git::head_commit(&dir);
                    entry.sha256 = Some(archive::digest(&bytes));
                    entry.bytes = bytes.len() as u64;
                    (entry, Some(bytes))
                }
                Err(e) => {
                    entry.error = Some(format!("not cached: {e}"));
                    (entry, None)
                }
            }
        })
        .collect()
}

/// Why the clone of source `i` below `root` is missing: git's last words,
/// kept by its init container in `<root>/<i>.failed`
/// ([`crate::jobs::build_job`]'s optional clone).
pub fn clone_error(root: &Path, i: usize) -> String {
    let words = archive::read_tail(&root.join(format!("{i}.failed")), ERROR_TAIL_BYTES).map(|t| {
        // git's progress lines say nothing of why.
        t.lines()
            .filter(|l| !l.starts_with("Cloning into "))
            .collect::<Vec<_>>()
            .join("\n")
    });
    match words.filter(|w| !w.is_empty()) {
        Some(words) => format!("not cloned: {words}"),
        None => format!("not cloned (the log of init container git-clone-{i} says why)"),
    }
}

fn cache_meta(name: &str, namespace: &str, kind: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        labels: Some(BTreeMap::from([
            (MANAGED_BY_LABEL.to_owned(), MANAGED_BY.to_owned()),
            (
                COMPONENT_LABEL.to_owned(),
                COMPONENT_TEMPLATE_CACHE.to_owned(),
            ),
            (CACHE_LABEL.to_owned(), kind.to_owned()),
        ])),
        ..ObjectMeta::default()
    }
}

/// Creates `cm` unless it exists (chunks are content-addressed and
/// immutable: one of that name already holds these bytes).
async fn create(api: &Api<ConfigMap>, cm: &ConfigMap) -> Result<()> {
    match api.create(&PostParams::default(), cm).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(e).with_context(|| {
            format!(
                "creating ConfigMap {}",
                cm.metadata.name.as_deref().unwrap_or("")
            )
        }),
    }
}

/// Writes the chunks of every archive, then the manifest naming them.
pub async fn publish(
    client: kube::Client,
    namespace: &str,
    manifest_name: &str,
    packed: Vec<(Entry, Option<Vec<u8>>)>,
) -> Result<Manifest> {
    let api: Api<ConfigMap> = Api::namespaced(client, namespace);
    let mut sources = Vec::with_capacity(packed.len());
    for (mut entry, bytes) in packed {
        if let (Some(bytes), Some(sha)) = (bytes, entry.sha256.clone()) {
            let parts = archive::chunks(&bytes);
            let names = super::chunk_names(&sha, parts.len());
            for (name, part) in names.iter().zip(parts) {
                let cm = ConfigMap {
                    metadata: cache_meta(name, namespace, "chunk"),
                    immutable: Some(true),
                    binary_data: Some(BTreeMap::from([(
                        CHUNK_KEY.to_owned(),
                        ByteString(part.to_vec()),
                    )])),
                    ..ConfigMap::default()
                };
                create(&api, &cm).await?;
            }
            entry.chunks = names;
        }
        sources.push(entry);
    }
    let manifest = Manifest {
        fetched_at: Utc::now(),
        sources,
    };
    let cm = ConfigMap {
        metadata: cache_meta(manifest_name, namespace, "manifest"),
        immutable: Some(true),
        data: Some(BTreeMap::from([(
            MANIFEST_KEY.to_owned(),
            serde_json::to_string(&manifest)?,
        )])),
        ..ConfigMap::default()
    };
    create(&api, &cm).await?;
    Ok(manifest)
}

/// `publish-templates`: 0 when the manifest was written (even if some
/// repositories could not be fetched: it says so), 1 otherwise.
pub async fn main(args: PublishArgs) -> ExitCode {
    let root = Path::new(crate::jobs::GIT_TEMPLATES_DIR);
    let packed = pack_all(&args.sources.0, root);
    for (entry, _) in &packed {
        match &entry.error {
            Some(e) => warn!(source = %entry.source, "{e}"),
            None => {
                info!(source = %entry.source, commit = ?entry.commit, bytes = entry.bytes, "packed")
            }
        }
    }
    let result = async {
        let client = kube::Client::try_default()
            .await
            .context("in-cluster configuration")?;
        publish(client, &args.namespace, &args.manifest, packed).await
    }
    .await;
    match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("publishing the template cache: {e:#}");
            eprintln!("error: {message}");
            std::fs::write("/dev/termination-log", &message).ok();
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_clone_is_packed_and_a_missing_one_says_what_git_said() {
        let root = tempfile::tempdir().unwrap();
        let repo = root.path().join("0");
        std::fs::create_dir_all(repo.join("http")).unwrap();
        std::fs::write(repo.join("http/t.yaml"), "id: t\n").unwrap();
        std::fs::create_dir_all(repo.join(".git")).unwrap();
        let commit = "c".repeat(40);
        std::fs::write(repo.join(".git/HEAD"), format!("{commit}\n")).unwrap();
        std::fs::write(
            root.path().join("1.failed"),
            "Cloning into '/templates/git/1'...\nfatal: remote error: repository not exported: /missing.git\n",
        )
        .unwrap();
        let sources = [
            GitSource::parse("https://h/a.git#main:http").unwrap(),
            GitSource::parse("https://h/missing.git").unwrap(),
            GitSource::parse("https://h/never.git").unwrap(),
            GitSource::parse("https://h/a.git#main:nope").unwrap(),
        ];
        // The fourth names the first clone's directory under another path.
        std::fs::create_dir_all(root.path().join("3")).unwrap();
        let packed = pack_all(&sources, root.path());
        let (entry, bytes) = &packed[0];
        assert_eq!(entry.commit.as_deref(), Some(commit.as_str()));
        assert_eq!(entry.error, None);
        let bytes = bytes.as_ref().unwrap();
        assert_eq!(entry.bytes, bytes.len() as u64);
        assert_eq!(
            entry.sha256.as_deref(),
            Some(archive::digest(bytes).as_str())
        );
        assert_eq!(
            packed[1].0.error.as_deref(),
            Some("not cloned: fatal: remote error: repository not exported: /missing.git")
        );
        assert!(packed[1].1.is_none() && packed[1].0.sha256.is_none());
        assert!(
            packed[2]
                .0
                .error
                .as_deref()
                .unwrap()
                .starts_with("not cloned (")
        );
        assert!(
            packed[3].0.error.as_deref().unwrap().contains("nope"),
            "{:?}",
            packed[3].0
        );
    }
}
