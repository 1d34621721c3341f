//! The scanner's side of the template cache: reading the archives of its
//! cached sources through the API and unpacking them where a clone would be.

use std::path::Path;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::Api;
use tracing::{info, warn};

use crate::template_cache::archive;
use crate::template_cache::{CHUNK_KEY, CacheEnv, Entry};

/// What a run got of one cached source: the commit, or why it went without.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unpacked {
    pub commit: Option<String>,
    pub error: Option<String>,
}

/// Tries a read of a chunk this many times (the API server may be restarting).
const ATTEMPTS: u32 = 3;

async fn read_chunk(api: &Api<ConfigMap>, name: &str) -> Result<Vec<u8>, String> {
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_secs(u64::from(attempt))).await;
        }
        match api.get(name).await {
            Ok(cm) => {
                return cm
                    .binary_data
                    .and_then(|mut d| d.remove(CHUNK_KEY))
                    .map(|b| b.0)
                    .ok_or_else(|| format!("ConfigMap {name} holds no {CHUNK_KEY:?}"));
            }
            // Forbidden or gone will not change within seconds.
            Err(kube::Error::Api(e)) if matches!(e.code, 403 | 404) => {
                return Err(format!("ConfigMap {name}: {}", e.message));
            }
            Err(e) => last = format!("ConfigMap {name}: {e}"),
        }
    }
    Err(last)
}

async fn unpack_entry(api: &Api<ConfigMap>, entry: &Entry, into: &Path) -> Result<(), String> {
    let sha = entry
        .sha256
        .as_deref()
        .ok_or("the manifest names no digest")?;
    let mut parts = Vec::with_capacity(entry.chunks.len());
    for name in &entry.chunks {
        parts.push(read_chunk(api, name).await?);
    }
    let bytes = archive::join(parts, entry.bytes, sha).map_err(|e| e.to_string())?;
    archive::unpack(&bytes, into).map_err(|e| format!("unpacking: {e}"))
}

/// Unpacks every cached source of `cache` into `<root>/<i>`; aligned with
/// the run's sources, what each cached one got (`None` for one cloned by
/// an init container). A source that cannot be read leaves no directory.
pub async fn unpack_all(
    client: kube::Client,
    cache: &CacheEnv,
    root: &Path,
) -> Vec<Option<Unpacked>> {
    let api: Api<ConfigMap> = Api::namespaced(client, &cache.namespace);
    let mut out = Vec::with_capacity(cache.sources.len());
    for (i, entry) in cache.sources.iter().enumerate() {
        let Some(entry) = entry else {
            out.push(None);
            continue;
        };
        if let Some(error) = &entry.error {
            out.push(Some(Unpacked {
                commit: None,
                error: Some(format!("{error} (the template cache's last fetch)")),
            }));
            continue;
        }
        let dir = root.join(i.to_string());
        let got = match unpack_entry(&api, entry, &dir).await {
            Ok(()) => {
                info!(source = %entry.source, commit = ?entry.commit, "templates read from the cache");
                Unpacked {
                    commit: entry.commit.clone(),
                    error: None,
                }
            }
            Err(e) => {
                warn!(source = %entry.source, "templates not read from the cache: {e}");
                let _ = std::fs::remove_dir_all(&dir);
                Unpacked {
                    commit: None,
                    error: Some(format!("not read from the template cache: {e}")),
                }
            }
        };
        out.push(Some(got));
    }
    out
}
