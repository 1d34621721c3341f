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
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::controller::SourceObject;
use crate::api::NucleiScan;

/// A reconcile request: namespace and name of a source.
type Request = (String, String);

/// Owner kind → the running source controller's trigger channel.
#[derive(Clone, Default)]
pub struct Triggers(Arc<Mutex<HashMap<String, UnboundedSender<Request>>>>);

impl Triggers {
    /// Reconcile requests for sources of kind `K` (namespace, name); a new
    /// subscriber replaces an earlier one.
    pub fn subscribe<K: SourceObject>(&self) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
        let (tx, rx) = unbounded_channel();
        self.0
            .lock()
            .expect("triggers lock")
            .insert(K::KIND.as_str().to_owned(), tx);
        requests(rx)
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
                let _ = tx.send((namespace.clone(), owner.name.clone()));
            }
        }
    }
}

fn requests<K: SourceObject>(
    mut rx: UnboundedReceiver<Request>,
) -> impl Stream<Item = ObjectRef<K>> + Send + 'static {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|(namespace, name)| ObjectRef::new(&name).within(&namespace))
}
