//! The functions of one process: loading, hot swaps, removal, shutdown and recovery from device loss.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vknf_functions::{FunctionLoader, FunctionSpec};

use crate::budget::MemoryBudget;
use crate::engine::{Engine, EngineSettings, create_lanes};
use crate::handle::FunctionHandle;
use crate::metrics::Metrics;

/// Batching and queueing settings shared by every function of a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Lanes (batches in flight) per function.
    pub lanes_per_function: usize,
    /// Longest a batch waits to fill up, unless the function says otherwise.
    pub default_max_wait: Duration,
    /// Input bytes a function may have admitted and unanswered; past it calls get `BUSY`.
    pub max_queued_bytes: usize,
    /// How long a lane thread that has just finished a batch polls for the next one before it sleeps.
    /// Polling spares the next call a thread wake-up but takes a core while it lasts; the default is zero
    /// (bench/RESULTS.md has the measurements).
    pub lane_spin: Duration,
    /// How long a replaced or removed version may take to answer what it admitted.
    pub drain_timeout: Duration,
    /// Bytes of the process's memory budget ([`MemoryBudget`]), shared by every front end.
    pub memory_budget: usize,
}

impl Default for RuntimeSettings {
    fn default() -> Self {
        RuntimeSettings {
            lanes_per_function: 3,
            default_max_wait: Duration::from_micros(200),
            max_queued_bytes: 64 << 20,
            lane_spin: Duration::ZERO,
            drain_timeout: Duration::from_secs(30),
            memory_budget: 1 << 30,
        }
    }
}

/// Why a function could not be loaded (the loader's or the lanes' error, as text for status reports).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoadFailure(pub String);

#[derive(Clone)]
struct Entry {
    handle: FunctionHandle,
    spec: FunctionSpec,
    model: Option<Arc<[u8]>>,
    max_wait: Option<Duration>,
}

struct Inner {
    loader: Arc<dyn FunctionLoader>,
    settings: RuntimeSettings,
    metrics: Metrics,
    budget: MemoryBudget,
    /// The loaded functions; held only for a look-up or an update, never across a load, so that callers
    /// looking a function up never wait for another one to load.
    functions: parking_lot::Mutex<BTreeMap<Arc<str>, Entry>>,
    /// Loads, removals and recoveries happen one at a time.
    changes: tokio::sync::Mutex<()>,
    /// Why a function could not be reloaded after the last device reset, by name.
    failures: parking_lot::Mutex<BTreeMap<Arc<str>, String>>,
    device_lost: mpsc::UnboundedSender<Arc<str>>,
    stopping: AtomicBool,
    recovery: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// The in-process API of vknf: load functions and call them ([`FunctionHandle`]), with the same
/// admission, batching, backpressure, deadlines and metrics for every caller. Front ends (the binary
/// protocol, the Open Inference Protocol, the traffic path) are callers like any other.
///
/// Create it inside a Tokio runtime (its batchers are tasks); calls may come from any thread.
#[derive(Clone)]
pub struct Runtime {
    inner: Arc<Inner>,
}

impl Runtime {
    /// A runtime loading functions with `loader`.
    pub fn new(loader: Arc<dyn FunctionLoader>, settings: RuntimeSettings) -> Runtime {
        let (device_lost, reports) = mpsc::unbounded_channel();
        let budget = MemoryBudget::new(settings.memory_budget);
        let inner = Arc::new(Inner {
            loader,
            settings,
            metrics: Metrics::default(),
            budget,
            functions: parking_lot::Mutex::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
            failures: parking_lot::Mutex::new(BTreeMap::new()),
            device_lost,
            stopping: AtomicBool::new(false),
            recovery: parking_lot::Mutex::new(None),
        });
        let recovery = tokio::spawn(recover_from_device_loss(Arc::downgrade(&inner), reports));
        *inner.recovery.lock() = Some(recovery);
        Runtime { inner }
    }

    /// The runtime's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// Registers the runtime's metrics (under the `vknf` prefix).
    pub fn register_metrics(&self, registry: &mut Registry) {
        self.inner.metrics.register(registry);
        self.inner.budget.register(registry);
    }

    /// The process's memory budget: queued calls are charged to it, and front ends charge what they
    /// receive and what waits to be sent.
    pub fn budget(&self) -> &MemoryBudget {
        &self.inner.budget
    }

    /// The loader's name ("cpu", "gpu").
    pub fn loader_name(&self) -> &'static str {
        self.inner.loader.name()
    }

    /// The settings.
    pub fn settings(&self) -> &RuntimeSettings {
        &self.inner.settings
    }

    /// Loads a function under `spec.name`. If one of that name is loaded, the new version is swapped in
    /// behind the same handle and the old one finishes what it admitted (a hot reload); if loading fails,
    /// the old version keeps serving. `max_wait` overrides the batching wait of the settings.
    pub async fn load(
        &self,
        spec: FunctionSpec,
        model: Option<Arc<[u8]>>,
        max_wait: Option<Duration>,
    ) -> Result<FunctionHandle, LoadFailure> {
        let _changing = self.inner.changes.lock().await;
        if self.inner.stopping.load(Ordering::Acquire) {
            return Err(LoadFailure("the runtime is stopping".into()));
        }
        let name: Arc<str> = spec.name.as_str().into();
        let engine = self.start_engine(&name, &spec, model.clone(), max_wait).await?;
        self.inner.failures.lock().remove(&name);
        let (handle, replaced) = {
            let mut functions = self.inner.functions.lock();
            match functions.get_mut(&name) {
                Some(entry) => {
                    entry.spec = spec;
                    entry.model = model;
                    entry.max_wait = max_wait;
                    (entry.handle.clone(), entry.handle.replace(engine))
                }
                None => {
                    let handle = FunctionHandle::new(name.clone(), engine);
                    let entry = Entry {
                        handle: handle.clone(),
                        spec,
                        model,
                        max_wait,
                    };
                    functions.insert(name.clone(), entry);
                    (handle, None)
                }
            }
        };
        if let Some(old) = replaced {
            tracing::info!(function = %name, "reloaded; draining the previous version");
            self.drain(&name, old).await;
        }
        Ok(handle)
    }

    /// The loaded function called `name`.
    pub async fn get(&self, name: &str) -> Option<FunctionHandle> {
        self.inner.functions.lock().get(name).map(|e| e.handle.clone())
    }

    /// Every loaded function, by name.
    pub async fn functions(&self) -> Vec<FunctionHandle> {
        self.inner.functions.lock().values().map(|e| e.handle.clone()).collect()
    }

    /// Why `name` could not be reloaded after the last device reset, if it could not (it then answers
    /// `DEVICE_LOST` until it is loaded again).
    pub fn failure(&self, name: &str) -> Option<String> {
        self.inner.failures.lock().get(name).cloned()
    }

    /// Stops taking calls for `name`, answers what it admitted (up to the drain timeout) and unloads it.
    /// False when no such function is loaded.
    pub async fn remove(&self, name: &str) -> bool {
        let _changing = self.inner.changes.lock().await;
        let Some(entry) = self.inner.functions.lock().remove(name) else {
            return false;
        };
        self.inner.failures.lock().remove(name);
        if let Some(engine) = entry.handle.close() {
            self.drain(name, engine).await;
        }
        true
    }

    /// Stops every function after answering what was admitted, and ends device recovery.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        if let Some(recovery) = self.inner.recovery.lock().take() {
            recovery.abort();
        }
        let _changing = self.inner.changes.lock().await;
        let functions = std::mem::take(&mut *self.inner.functions.lock());
        let mut drains = tokio::task::JoinSet::new();
        for (name, entry) in functions {
            if let Some(engine) = entry.handle.close() {
                let runtime = self.clone();
                drains.spawn(async move { runtime.drain(&name, engine).await });
            }
        }
        while drains.join_next().await.is_some() {}
    }

    async fn drain(&self, name: &str, engine: Arc<Engine>) {
        engine.close();
        if tokio::time::timeout(self.inner.settings.drain_timeout, engine.drained())
            .await
            .is_err()
        {
            tracing::warn!(function = %name, "still busy after the drain timeout");
        }
    }

    async fn start_engine(
        &self,
        name: &Arc<str>,
        spec: &FunctionSpec,
        model: Option<Arc<[u8]>>,
        max_wait: Option<Duration>,
    ) -> Result<Arc<Engine>, LoadFailure> {
        let loader = self.inner.loader.clone();
        let lanes = self.inner.settings.lanes_per_function;
        let spec = spec.clone();
        let (function, lanes) = tokio::task::spawn_blocking(move || {
            let function = loader.load(&spec, model.as_deref()).map_err(|e| e.to_string())?;
            let lanes = create_lanes(function.as_ref(), lanes).map_err(|e| format!("cannot create lanes: {e}"))?;
            Ok::<_, String>((function, lanes))
        })
        .await
        .map_err(|e| LoadFailure(format!("the loader failed: {e}")))?
        .map_err(LoadFailure)?;
        let settings = EngineSettings {
            max_wait: max_wait.unwrap_or(self.inner.settings.default_max_wait),
            max_queued_bytes: self.inner.settings.max_queued_bytes,
            lane_spin: self.inner.settings.lane_spin,
            budget: self.inner.budget.clone(),
        };
        Engine::start(
            name.clone(),
            function,
            lanes,
            &settings,
            &self.inner.metrics,
            self.inner.device_lost.clone(),
        )
        .map_err(|e| LoadFailure(e.to_string()))
    }

    /// Resets the device and loads every function anew (after a lane reported device loss).
    async fn reload_all(&self) {
        let _changing = self.inner.changes.lock().await;
        if self.inner.stopping.load(Ordering::Acquire) {
            return;
        }
        // Loads and removals wait for this reload, so the functions cannot change meanwhile.
        let functions: Vec<(Arc<str>, Entry)> = self
            .inner
            .functions
            .lock()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        let loader = self.inner.loader.clone();
        let reset_error = match tokio::task::spawn_blocking(move || loader.reset()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        for (name, entry) in &functions {
            let result = match &reset_error {
                Some(reason) => Err(LoadFailure(format!("device reset failed: {reason}"))),
                None => {
                    self.start_engine(name, &entry.spec, entry.model.clone(), entry.max_wait)
                        .await
                }
            };
            match result {
                Ok(engine) => {
                    self.inner.failures.lock().remove(name);
                    if let Some(old) = entry.handle.replace(engine) {
                        self.drain(name, old).await;
                    }
                }
                Err(failure) => {
                    tracing::error!(function = %name, %failure, "cannot reload after the device loss");
                    self.inner.failures.lock().insert(name.clone(), failure.0);
                }
            }
        }
    }
}

async fn recover_from_device_loss(inner: Weak<Inner>, mut reports: mpsc::UnboundedReceiver<Arc<str>>) {
    while let Some(reported_by) = reports.recv().await {
        // Every lane of every function reports the same loss; one reload covers them all.
        tokio::time::sleep(Duration::from_millis(10)).await;
        while reports.try_recv().is_ok() {}
        let Some(inner) = inner.upgrade() else { return };
        tracing::error!(%reported_by, "device lost: resetting and reloading every function");
        Runtime { inner }.reload_all().await;
    }
}
