//! The operator's watch caches. Objects are cached without `managedFields`
//! (about half of a small object) and without the fields no reconciler
//! reads, so memory stays flat at thousands of Ingresses; and a wait for a
//! cache's first full list that several tasks can share.
//!
//! NucleiScans are decoded one by one ([`Decoded`]): one object the
//! operator cannot read (say, a status written under an older CRD without
//! today's bounds) is left out and logged, instead of failing every list
//! and stopping the watch of all the others.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};
use tracing::warn;

/// A watch of `api` that fills the returned store with trimmed objects:
/// `managedFields` dropped, then `trim` applied. The store is filled while
/// the stream is polled (by the controller that consumes it). A failed
/// watch or list is retried with kube-runtime's default backoff (up to
/// about a minute apart), not at once: an API server that is down or
/// refuses the list is not asked again in a loop.
pub fn reflect<K>(
    api: Api<K>,
    config: watcher::Config,
    trim: fn(&mut K),
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let stream = watcher(api, config)
        .default_backoff()
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            trim(o);
        })
        .reflect(writer);
    (reader, stream)
}

/// An object as the API server sent it: decoded as `K`, or only its
/// metadata and why the rest did not decode.
#[derive(Clone, Debug)]
pub struct Decoded<K> {
    meta: ObjectMeta,
    object: Result<K, String>,
}

impl<'de, K: DeserializeOwned> Deserialize<'de> for Decoded<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let value = serde_json::Value::deserialize(d)?;
        let meta = value
            .get("metadata")
            .map(ObjectMeta::deserialize)
            .transpose()
            .map_err(serde::de::Error::custom)?
            .unwrap_or_default();
        let object = K::deserialize(&value).map_err(|e| e.to_string());
        Ok(Decoded { meta, object })
    }
}

impl<K: Resource<DynamicType = ()>> Resource for Decoded<K> {
    type DynamicType = ();
    type Scope = K::Scope;

    fn kind(dt: &()) -> Cow<'_, str> {
        K::kind(dt)
    }
    fn group(dt: &()) -> Cow<'_, str> {
        K::group(dt)
    }
    fn version(dt: &()) -> Cow<'_, str> {
        K::version(dt)
    }
    fn plural(dt: &()) -> Cow<'_, str> {
        K::plural(dt)
    }
    fn meta(&self) -> &ObjectMeta {
        &self.meta
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.meta
    }
}

/// Annotation the cache puts on the stand-in of an object that could not be
/// read (never written to the API server): why it could not.
pub const UNREADABLE: &str = "nuclei-operator.internal/unreadable";

/// Why the cached `object` is only a stand-in, if it is one.
pub fn unreadable<K: Resource>(object: &K) -> Option<&str> {
    object
        .meta()
        .annotations
        .as_ref()?
        .get(UNREADABLE)
        .map(String::as_str)
}

/// Like [`reflect`], decoding each object on its own: an object that does
/// not decode is logged (once per version) and cached as a stand-in made by
/// `stub` from its metadata, marked [`UNREADABLE`], so that reconcilers can
/// leave it alone while whatever looks up its name still finds it (a source
/// does not create its scan again; its running Job keeps its slot).
pub fn reflect_each<K>(
    client: kube::Client,
    config: watcher::Config,
    trim: fn(&mut K),
    stub: fn(ObjectMeta) -> K,
) -> (
    Store<K>,
    impl Stream<Item = Result<watcher::Event<K>, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store();
    let reported: Mutex<HashSet<(String, String)>> = Mutex::default();
    let decode = move |d: Decoded<K>| -> K {
        match d.object {
            Ok(k) => k,
            Err(e) => {
                let id = (
                    d.meta.uid.clone().unwrap_or_default(),
                    d.meta.resource_version.clone().unwrap_or_default(),
                );
                if reported.lock().expect("reported lock").insert(id) {
                    warn!(
                        kind = %K::kind(&()),
                        namespace = d.meta.namespace.as_deref().unwrap_or(""),
                        name = d.meta.name.as_deref().unwrap_or(""),
                        error = %e,
                        "object cannot be read; it is left alone until it is fixed"
                    );
                }
                let mut meta = d.meta;
                meta.annotations
                    .get_or_insert_default()
                    .insert(UNREADABLE.to_owned(), e);
                stub(meta)
            }
        }
    };
    let stream = watcher(Api::<Decoded<K>>::all(client), config)
        .default_backoff()
        .map(move |event| {
            event.map(|e| match e {
                watcher::Event::Apply(d) => watcher::Event::Apply(decode(d)),
                watcher::Event::InitApply(d) => watcher::Event::InitApply(decode(d)),
                watcher::Event::Delete(d) => watcher::Event::Delete(decode(d)),
                watcher::Event::Init => watcher::Event::Init,
                watcher::Event::InitDone => watcher::Event::InitDone,
            })
        })
        .modify(move |o: &mut K| {
            o.meta_mut().managed_fields = None;
            trim(o);
        })
        .reflect(writer);
    (reader, stream)
}

/// Waits until `store` has listed every object once. `false` if its watch
/// ended first. (kube-runtime's `Store::wait_until_ready` keeps only the last
/// waiter's waker, so with two waiters one may never wake: poll it.)
pub async fn ready<K>(store: &Store<K>) -> bool
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    loop {
        match tokio::time::timeout(Duration::from_millis(50), store.wait_until_ready()).await {
            Ok(r) => return r.is_ok(),
            Err(_) => continue,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NucleiScan;

    fn scan_json(retry_count: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "apiVersion": "nuclei.homelab.mortenolsen.pro/v1alpha1",
            "kind": "NucleiScan",
            "metadata": {"name": "web", "namespace": "team", "uid": "u1", "resourceVersion": "7"},
            "spec": {
                "sourceRef": {"apiVersion": "v1", "kind": "Ingress", "name": "a", "namespace": "team", "uid": "i"},
                "targets": ["https://a.example.com"]
            },
            "status": {"retryCount": retry_count}
        })
    }

    #[test]
    fn an_object_that_does_not_decode_keeps_its_metadata_and_says_why() {
        let good: Decoded<NucleiScan> = serde_json::from_value(scan_json(3.into())).unwrap();
        assert_eq!(good.object.unwrap().status.unwrap().retry_count, Some(3));
        // Stored under an older CRD without today's bounds: too big for i32.
        let bad: Decoded<NucleiScan> =
            serde_json::from_value(scan_json(3_000_000_000u64.into())).unwrap();
        assert_eq!(bad.meta.name.as_deref(), Some("web"));
        assert_eq!(bad.meta.resource_version.as_deref(), Some("7"));
        let error = bad.object.unwrap_err();
        assert!(error.contains("3000000000"), "{error}");
        // A list with it still decodes: one bad item does not fail the others.
        let list: Vec<Decoded<NucleiScan>> = serde_json::from_value(serde_json::json!([
            scan_json(3_000_000_000u64.into()),
            scan_json(1.into())
        ]))
        .unwrap();
        assert!(list[0].object.is_err() && list[1].object.is_ok());
    }

    /// A kube client of an "API server" on loopback that fails every
    /// request with a 500 (kube's client retries 503s itself, with backoff),
    /// and how many requests it has had.
    async fn failing_api_server() -> (kube::Client, std::sync::Arc<std::sync::atomic::AtomicUsize>)
    {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let hits = std::sync::Arc::new(AtomicUsize::new(0));
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move || {
            counted.fetch_add(1, Ordering::SeqCst);
            async { (axum::http::StatusCode::INTERNAL_SERVER_ERROR, "broken") }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap();
        (client, hits)
    }

    /// A cache's stream backs off by itself, whoever polls it. Without, the
    /// watcher lists again at once after each error: 10,496 requests in
    /// these 3 s. (The controllers also back off their trigger streams; the
    /// namespace, Gateway and exception watchers are polled directly.)
    #[tokio::test]
    async fn lists_that_fail_are_retried_with_backoff_not_in_a_loop() {
        use std::sync::atomic::Ordering;
        let (client, hits) = failing_api_server().await;
        let (_, jobs) = reflect(
            Api::<k8s_openapi::api::batch::v1::Job>::all(client.clone()),
            watcher::Config::default(),
            |_| {},
        );
        let (_, scans) = reflect_each(
            client,
            watcher::Config::default(),
            |_| {},
            |metadata| NucleiScan {
                metadata,
                spec: Default::default(),
                status: None,
            },
        );
        let both = futures::future::join(jobs.for_each(|_| async {}), scans.for_each(|_| async {}));
        let _ = tokio::time::timeout(std::time::Duration::from_secs(3), both).await;
        let n = hits.load(Ordering::SeqCst);
        // Default backoff: 0.8 s doubling with jitter; at most 4 lists each.
        assert!((2..=8).contains(&n), "{n} requests in 3 s from two watches");
    }
}
