//! The operator's watch caches. Objects are cached without `managedFields`
//! (about half of a small object) and without the fields no reconciler
//! reads, so memory stays flat at thousands of Ingresses; and a wait for a
//! cache's first full list that several tasks can share.

use std::fmt::Debug;
use std::time::Duration;

use futures::Stream;
use kube::Resource;
use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde::de::DeserializeOwned;

/// A watch of `api` that fills the returned store with trimmed objects:
/// `managedFields` dropped, then `trim` applied. The store is filled while
/// the stream is polled (by the controller that consumes it).
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
