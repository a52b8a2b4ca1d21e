//! The stable home of a function on its port: connections keep the slot while the runtime
//! inside it is swapped by hot reloads.

use std::sync::Arc;

use parking_lot::RwLock;
use tokio::sync::watch;

use super::runtime::FunctionRuntime;
use crate::manifest::FunctionKey;

pub(crate) struct FunctionSlot {
    pub(crate) key: FunctionKey,
    pub(crate) label: Arc<str>,
    current: RwLock<Option<Arc<FunctionRuntime>>>,
    /// Set when the function is removed or the server stops: connections stop reading.
    closing: watch::Sender<bool>,
}

impl FunctionSlot {
    pub(crate) fn new(key: FunctionKey, runtime: Arc<FunctionRuntime>) -> FunctionSlot {
        FunctionSlot {
            label: key.to_string().into(),
            key,
            current: RwLock::new(Some(runtime)),
            closing: watch::Sender::new(false),
        }
    }

    /// The runtime new requests go to, or `None` once the function is closing.
    pub(crate) fn current(&self) -> Option<Arc<FunctionRuntime>> {
        self.current.read().clone()
    }

    /// Puts `next` in place and returns the runtime it replaces.
    pub(crate) fn replace(&self, next: Arc<FunctionRuntime>) -> Option<Arc<FunctionRuntime>> {
        self.current.write().replace(next)
    }

    /// Stops taking requests: empties the slot and tells connections to finish.
    pub(crate) fn close(&self) -> Option<Arc<FunctionRuntime>> {
        let previous = self.current.write().take();
        self.closing.send_replace(true);
        previous
    }

    pub(crate) fn subscribe_closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }
}
