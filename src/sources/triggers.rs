//! Source reconciles triggered by their scans. The scan controller's watch
//! (the one that fills the shared scan cache) passes the owner of every scan
//! it sees change or go to the source controller of the owner's kind, after
//! the cache has the change: a source reconciled because its scan was
//! deleted finds the scan gone from the cache and creates it again. (A
//! second watch of every NucleiScan, as `Controller::owns` would start,
//! could deliver the deletion before the cache has it, and the scan would
//! never come back.)

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::controller::SourceObject;
use crate::api::NucleiScan;

/// A reconcile request: namespace and name of a source; `None` for every
/// source in the namespace.
type Request = (String, Option<String>);

/// Owner kind → the running source controller's trigger channel.
#[derive(Clone, Default)]
pub struct Triggers(Arc<Mutex<HashMap<String, UnboundedSender<Request>>>>);

impl Triggers {
    /// Reconcile requests for sources of kind `K`, whose cache is
    /// `sources`; a new subscriber replaces an earlier one.
    pub fn subscribe<K: SourceObject>(
        &self,
        sources: Store<K>,
    ) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
        let (tx, rx) = unbounded_channel();
        self.0
            .lock()
            .expect("triggers lock")
            .insert(K::KIND.as_str().to_owned(), tx);
        requests(rx, sources)
    }

    /// Asks every source controller to reconcile each source in
    /// `namespace` (it entered or left the scanned namespaces).
    pub fn notify_namespace(&self, namespace: &str) {
        for tx in self.0.lock().expect("triggers lock").values() {
            let _ = tx.send((namespace.to_owned(), None));
        }
    }

    /// Asks the controller of each touched scan's owner to reconcile it.
    pub fn notify(&self, event: &watcher::Event<NucleiScan>) {
        let scan = match event {
            watcher::Event::Apply(s) | watcher::Event::InitApply(s) | watcher::Event::Delete(s) => {
                s
            }
            _ => return,
        };
        let Some(namespace) = scan.namespace() else {
            return;
        };
        let senders = self.0.lock().expect("triggers lock");
        for owner in scan
            .owner_references()
            .iter()
            .filter(|o| o.controller == Some(true))
        {
            if let Some(tx) = senders.get(&owner.kind) {
                // A stopped controller (no receiver) needs no reconcile.
                let _ = tx.send((namespace.clone(), Some(owner.name.clone())));
            }
        }
    }
}

fn requests<K: SourceObject>(
    mut rx: UnboundedReceiver<Request>,
    sources: Store<K>,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx)).flat_map(move |(namespace, name)| {
        let refs: Vec<ObjectRef<K>> = match name {
            Some(name) => vec![ObjectRef::new(&name).within(&namespace)],
            None => sources
                .state()
                .iter()
                .filter(|s| s.namespace().as_deref() == Some(namespace.as_str()))
                .map(|s| ObjectRef::from_obj(s.as_ref()))
                .collect(),
        };
        futures::stream::iter(refs)
    })
}
