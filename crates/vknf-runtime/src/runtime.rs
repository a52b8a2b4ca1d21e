//! The functions of one process: loading onto every device of the loader, hot swaps, removal,
//! shutdown, and recovery of each device after its loss while the others keep serving.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use vknf_functions::{DeviceInfo, ExecError, Function, FunctionInfo, FunctionLoader, FunctionSpec, Lane, LoadError};

use crate::budget::MemoryBudget;
use crate::engine::{DeviceLanes, DeviceLoss, Engine, EngineSettings, create_lanes};
use crate::handle::FunctionHandle;
use crate::metrics::Metrics;

/// Batching and queueing settings shared by every function of a runtime.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    /// Lanes (batches in flight) per function and device.
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
    /// How long a function whose kernel missed its deadline is quarantined the first time; each
    /// further miss doubles it, up to [`MAX_QUARANTINE`].
    pub quarantine_backoff: Duration,
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
            quarantine_backoff: Duration::from_secs(30),
            memory_budget: 1 << 30,
        }
    }
}

/// Why a function could not be loaded (the loader's or the lanes' error, as text for status reports).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct LoadFailure(pub String);

/// How a device of the runtime is doing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceHealth {
    /// Running its functions' batches.
    Serving,
    /// Lost; being reset and its functions reloaded onto it. The other devices keep serving.
    Recovering,
    /// Could not be reset (the reason); retried with back-off.
    Failed(String),
}

/// One device of the runtime, as status reports and readiness checks see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceStatus {
    /// Index in the loader's order (the `device` label of the metrics).
    pub index: usize,
    /// Name and type, from the loader.
    pub info: DeviceInfo,
    /// How it is doing.
    pub health: DeviceHealth,
    /// Resets after a loss so far.
    pub resets: u64,
}

struct DeviceState {
    status: DeviceStatus,
    /// Grows with every reset; lanes and loss reports carry the generation they belong to.
    generation: u64,
}

/// Longest wait between two attempts to reset a device that failed to come back.
const MAX_RESET_BACKOFF: Duration = Duration::from_secs(30);

/// Longest quarantine of a function whose kernels keep missing their deadline.
pub const MAX_QUARANTINE: Duration = Duration::from_secs(600);

/// A function's deadline misses: how many in a row, and its last back-off.
struct Strikes {
    count: u32,
    backoff: Duration,
    lifted_at: Instant,
}

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
    /// Why a function could not be reloaded onto a device after its reset, by name and device.
    failures: parking_lot::Mutex<BTreeMap<Arc<str>, BTreeMap<usize, String>>>,
    devices: parking_lot::Mutex<Vec<DeviceState>>,
    /// Deadline misses by function.
    quarantines: parking_lot::Mutex<BTreeMap<Arc<str>, Strikes>>,
    device_lost: mpsc::UnboundedSender<DeviceLoss>,
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
        let metrics = Metrics::default();
        let devices = loader
            .devices()
            .into_iter()
            .enumerate()
            .map(|(index, info)| {
                metrics
                    .device_info
                    .get_or_create(&crate::metrics::DeviceInfoLabels {
                        device: index.to_string(),
                        name: info.name.clone(),
                        device_type: info.device_type.clone(),
                    })
                    .set(1);
                metrics.device_up.get_or_create(&Metrics::device_labels(index)).set(1);
                DeviceState {
                    status: DeviceStatus {
                        index,
                        info,
                        health: DeviceHealth::Serving,
                        resets: 0,
                    },
                    generation: 0,
                }
            })
            .collect();
        let budget = MemoryBudget::new(settings.memory_budget);
        let inner = Arc::new(Inner {
            loader,
            settings,
            metrics,
            budget,
            functions: parking_lot::Mutex::new(BTreeMap::new()),
            changes: tokio::sync::Mutex::new(()),
            failures: parking_lot::Mutex::new(BTreeMap::new()),
            devices: parking_lot::Mutex::new(devices),
            quarantines: parking_lot::Mutex::new(BTreeMap::new()),
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
                    (entry.handle.clone(), entry.handle.release(engine))
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

    /// Why `name` could not be reloaded onto a device after its reset, if it could not (it serves on
    /// its other devices, and answers `DEVICE_LOST` when it has none, until it is loaded again).
    pub fn failure(&self, name: &str) -> Option<String> {
        let quarantined = self
            .inner
            .functions
            .lock()
            .get(name)
            .and_then(|e| e.handle.quarantined());
        if quarantined.is_some() {
            return quarantined;
        }
        let failures = self.inner.failures.lock();
        let by_device = failures.get(name)?;
        let several = self.inner.devices.lock().len() > 1;
        let reasons: Vec<String> = by_device
            .iter()
            .map(|(device, reason)| {
                if several {
                    format!("device {device}: {reason}")
                } else {
                    reason.clone()
                }
            })
            .collect();
        Some(reasons.join("; "))
    }

    /// The devices functions run on, and how each is doing.
    pub fn devices(&self) -> Vec<DeviceStatus> {
        self.inner.devices.lock().iter().map(|d| d.status.clone()).collect()
    }

    /// Stops taking calls for `name`, answers what it admitted (up to the drain timeout) and unloads it.
    /// False when no such function is loaded.
    pub async fn remove(&self, name: &str) -> bool {
        let _changing = self.inner.changes.lock().await;
        let Some(entry) = self.inner.functions.lock().remove(name) else {
            return false;
        };
        self.inner.failures.lock().remove(name);
        self.inner.quarantines.lock().remove(name);
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

    /// Loads `spec` onto every serving device (in parallel) and starts an engine over their lanes. A
    /// device lost meanwhile is left to its recovery, which adds its lanes later; any other error on any
    /// device fails the load, so that a function runs the same everywhere.
    async fn start_engine(
        &self,
        name: &Arc<str>,
        spec: &FunctionSpec,
        model: Option<Arc<[u8]>>,
        max_wait: Option<Duration>,
    ) -> Result<Arc<Engine>, LoadFailure> {
        let serving: Vec<(usize, u64)> = self
            .inner
            .devices
            .lock()
            .iter()
            .filter(|d| d.status.health == DeviceHealth::Serving)
            .map(|d| (d.status.index, d.generation))
            .collect();
        if serving.is_empty() {
            return Err(LoadFailure(
                "no device is serving: every device is being recovered".into(),
            ));
        }
        let several = self.inner.devices.lock().len() > 1;
        let mut loads = tokio::task::JoinSet::new();
        for &(device, generation) in &serving {
            let runtime = self.clone();
            let spec = spec.clone();
            let model = model.clone();
            loads.spawn(async move { (device, generation, runtime.load_on(device, spec, model).await) });
        }
        let mut loaded: Vec<(FunctionInfo, DeviceLanes)> = Vec::new();
        let mut failure = None;
        while let Some(joined) = loads.join_next().await {
            let (device, generation, result) = joined.map_err(|e| LoadFailure(format!("the loader failed: {e}")))?;
            match result {
                Ok((function, lanes)) => loaded.push((
                    function.info().clone(),
                    DeviceLanes {
                        device,
                        generation,
                        lanes,
                    },
                )),
                Err(LoadOnError::DeviceLost(reason)) => {
                    tracing::error!(function = %name, device, %reason, "device lost while loading");
                    self.report_loss(device, generation, name.clone());
                }
                Err(LoadOnError::Failed(reason)) => {
                    let reason = if several {
                        format!("device {device}: {reason}")
                    } else {
                        reason
                    };
                    failure.get_or_insert(reason);
                }
            }
        }
        if let Some(reason) = failure {
            return Err(LoadFailure(reason));
        }
        loaded.sort_by_key(|(_, lanes)| lanes.device);
        let Some(info) = loaded.first().map(|(info, _)| info.clone()) else {
            return Err(LoadFailure("every device was lost while loading".into()));
        };
        let settings = EngineSettings {
            max_wait: max_wait.unwrap_or(self.inner.settings.default_max_wait),
            max_queued_bytes: self.inner.settings.max_queued_bytes,
            lane_spin: self.inner.settings.lane_spin,
            budget: self.inner.budget.clone(),
        };
        Engine::start(
            name.clone(),
            info,
            loaded.into_iter().map(|(_, lanes)| lanes).collect(),
            &settings,
            &self.inner.metrics,
            self.inner.device_lost.clone(),
        )
        .map_err(|e| LoadFailure(e.to_string()))
    }

    /// Loads a function onto one device and creates its lanes (blocking work, off the async threads).
    async fn load_on(
        &self,
        device: usize,
        spec: FunctionSpec,
        model: Option<Arc<[u8]>>,
    ) -> Result<(Arc<dyn Function>, Vec<Box<dyn Lane>>), LoadOnError> {
        let loader = self.inner.loader.clone();
        let lanes = self.inner.settings.lanes_per_function;
        tokio::task::spawn_blocking(move || {
            let function = loader
                .load(device, &spec, model.as_deref())
                .map_err(|error| match &error {
                    LoadError::Exec { source, .. } if source.is_device_lost() => {
                        LoadOnError::DeviceLost(error.to_string())
                    }
                    _ => LoadOnError::Failed(error.to_string()),
                })?;
            let lanes = create_lanes(function.as_ref(), lanes).map_err(|error| {
                let reason = format!("cannot create lanes: {error}");
                if error.is_device_lost() {
                    LoadOnError::DeviceLost(reason)
                } else {
                    LoadOnError::Failed(reason)
                }
            })?;
            Ok((function, lanes))
        })
        .await
        .unwrap_or_else(|e| Err(LoadOnError::Failed(format!("the loader failed: {e}"))))
    }

    fn report_loss(&self, device: usize, generation: u64, function: Arc<str>) {
        let _ = self.inner.device_lost.send(DeviceLoss {
            device,
            generation,
            function,
            deadline_missed: false,
        });
    }

    /// Quarantines `name`, whose kernel missed its deadline on `device`: its calls are answered
    /// `QUARANTINED` and it is loaded onto no device until its back-off ends (doubling with each strike,
    /// from the settings' `quarantine_backoff` up to [`MAX_QUARANTINE`]); then it is loaded again.
    fn quarantine(&self, name: &Arc<str>, device: usize) {
        let Some(handle) = self.inner.functions.lock().get(name).map(|e| e.handle.clone()) else {
            return;
        };
        if handle.quarantined().is_some() {
            return;
        }
        let now = Instant::now();
        let (strikes, backoff) = {
            let mut quarantines = self.inner.quarantines.lock();
            let record = quarantines.entry(name.clone()).or_insert(Strikes {
                count: 0,
                backoff: Duration::ZERO,
                lifted_at: now,
            });
            // A function that served well for a while after its last quarantine starts afresh.
            if record.count > 0 && now.duration_since(record.lifted_at) > record.backoff * 4 {
                record.count = 0;
            }
            record.count += 1;
            let base = self.inner.settings.quarantine_backoff;
            record.backoff = base.saturating_mul(1 << (record.count - 1).min(16)).min(MAX_QUARANTINE);
            (record.count, record.backoff)
        };
        let why = format!(
            "{name} is quarantined for {} s: its kernel missed its deadline on device {device} (strike {strikes}); \
             it is loaded again after that",
            backoff.as_secs_f64().ceil()
        );
        tracing::error!(function = %name, device, strikes, ?backoff, "quarantined: its kernel missed its deadline");
        self.inner
            .metrics
            .quarantines
            .get_or_create(&crate::metrics::FunctionLabels {
                function: name.to_string(),
            })
            .inc();
        if let Some(engine) = handle.quarantine(why.clone()) {
            engine.quarantine(why);
            let (runtime, name) = (self.clone(), name.clone());
            tokio::spawn(async move { runtime.drain(&name, engine).await });
        }
        tokio::spawn(lift_quarantine(Arc::downgrade(&self.inner), name.clone(), backoff));
    }

    /// Marks `device` lost unless a report of its current generation was handled already; true when
    /// this call starts its recovery.
    fn begin_recovery(&self, loss: &DeviceLoss) -> bool {
        let mut devices = self.inner.devices.lock();
        let Some(state) = devices.get_mut(loss.device) else {
            return false;
        };
        if state.generation != loss.generation || state.status.health != DeviceHealth::Serving {
            return false;
        }
        state.status.health = DeviceHealth::Recovering;
        drop(devices);
        // Every function's lanes on the device are lost, not only those of the reporting one.
        for entry in self.inner.functions.lock().values() {
            if let Some(engine) = entry.handle.current() {
                engine.device_lost(loss.device, loss.generation);
            }
        }
        self.inner.metrics.device_losses.inc();
        self.inner
            .metrics
            .device_up
            .get_or_create(&Metrics::device_labels(loss.device))
            .set(0);
        true
    }

    fn set_health(&self, device: usize, health: DeviceHealth) {
        let up = i64::from(health == DeviceHealth::Serving);
        self.inner.devices.lock()[device].status.health = health;
        self.inner
            .metrics
            .device_up
            .get_or_create(&Metrics::device_labels(device))
            .set(up);
    }

    /// Resets `device` and loads every function onto it again; false when the reset failed.
    async fn try_recover(&self, device: usize) -> bool {
        let _changing = self.inner.changes.lock().await;
        if self.inner.stopping.load(Ordering::Acquire) {
            return true;
        }
        let loader = self.inner.loader.clone();
        let reset = tokio::task::spawn_blocking(move || loader.reset(device))
            .await
            .unwrap_or_else(|e| {
                Err(LoadError::Exec {
                    function: "device".into(),
                    source: ExecError::Failed(e.to_string()),
                })
            });
        match reset {
            Ok(()) => {
                self.reload_device(device).await;
                true
            }
            Err(error) => {
                tracing::error!(device, %error, "device reset failed; retrying");
                self.set_health(device, DeviceHealth::Failed(error.to_string()));
                false
            }
        }
    }

    /// Loads every function onto `device`, freshly reset, and hands the lanes to the serving versions.
    /// Loads and removals wait for this (the caller holds `changes`), so the functions cannot change
    /// meanwhile.
    async fn reload_device(&self, device: usize) {
        let generation = {
            let mut devices = self.inner.devices.lock();
            let state = &mut devices[device];
            state.generation += 1;
            state.status.resets += 1;
            state.generation
        };
        self.inner
            .metrics
            .device_resets
            .get_or_create(&Metrics::device_labels(device))
            .inc();
        let functions: Vec<(Arc<str>, Entry)> = self
            .inner
            .functions
            .lock()
            .iter()
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        let mut lost_again = false;
        for (name, entry) in &functions {
            let Some(engine) = entry.handle.current() else { continue };
            let outcome = match self.load_on(device, entry.spec.clone(), entry.model.clone()).await {
                Ok((_function, lanes)) => engine
                    .add_lanes(DeviceLanes {
                        device,
                        generation,
                        lanes,
                    })
                    .map_err(|e| e.to_string()),
                Err(LoadOnError::DeviceLost(reason)) => {
                    lost_again = true;
                    Err(reason)
                }
                Err(LoadOnError::Failed(reason)) => Err(reason),
            };
            let mut failures = self.inner.failures.lock();
            match outcome {
                Ok(()) => {
                    if let Some(by_device) = failures.get_mut(name) {
                        by_device.remove(&device);
                        if by_device.is_empty() {
                            failures.remove(name);
                        }
                    }
                }
                Err(reason) => {
                    tracing::error!(function = %name, device, %reason, "cannot reload after the device loss");
                    failures.entry(name.clone()).or_default().insert(device, reason);
                }
            }
        }
        self.set_health(device, DeviceHealth::Serving);
        if lost_again {
            self.report_loss(device, generation, "reload".into());
        }
        tracing::info!(device, generation, functions = functions.len(), "device recovered");
    }
}

/// Why loading onto one device failed: the device is gone (its recovery follows), or anything else.
enum LoadOnError {
    DeviceLost(String),
    Failed(String),
}

async fn recover_from_device_loss(inner: Weak<Inner>, mut reports: mpsc::UnboundedReceiver<DeviceLoss>) {
    while let Some(first) = reports.recv().await {
        // Every lane of every function of a lost device reports it; one recovery covers them all.
        tokio::time::sleep(Duration::from_millis(10)).await;
        let mut losses = vec![first];
        while let Ok(loss) = reports.try_recv() {
            losses.push(loss);
        }
        let Some(inner) = inner.upgrade() else { return };
        let runtime = Runtime { inner };
        // The function whose own batch missed its deadline is quarantined before its device is
        // reloaded, so that the device comes back without it.
        for loss in losses.iter().filter(|loss| loss.deadline_missed) {
            runtime.quarantine(&loss.function, loss.device);
        }
        let mut started = BTreeSet::new();
        for loss in &losses {
            if !started.contains(&loss.device) && runtime.begin_recovery(loss) {
                started.insert(loss.device);
                tracing::error!(device = loss.device, reported_by = %loss.function, "device lost: resetting it and reloading its functions");
                tokio::spawn(recover_device(Arc::downgrade(&runtime.inner), loss.device));
            }
        }
    }
}

/// Recovers `device`, retrying its reset with back-off while it fails, for as long as the runtime lives.
async fn recover_device(inner: Weak<Inner>, device: usize) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let Some(inner) = inner.upgrade() else { return };
        if (Runtime { inner }).try_recover(device).await {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_RESET_BACKOFF);
    }
}

/// Loads a quarantined function again once its back-off has passed (a failed load retries after the
/// same back-off).
async fn lift_quarantine(inner: Weak<Inner>, name: Arc<str>, backoff: Duration) {
    loop {
        tokio::time::sleep(backoff).await;
        let Some(inner) = inner.upgrade() else { return };
        let runtime = Runtime { inner };
        let _changing = runtime.inner.changes.lock().await;
        if runtime.inner.stopping.load(Ordering::Acquire) {
            return;
        }
        let Some(entry) = runtime.inner.functions.lock().get(&name).cloned() else {
            return;
        };
        if entry.handle.quarantined().is_none() {
            return;
        }
        match runtime
            .start_engine(&name, &entry.spec, entry.model.clone(), entry.max_wait)
            .await
        {
            Ok(engine) => {
                if let Some(strikes) = runtime.inner.quarantines.lock().get_mut(&name) {
                    strikes.lifted_at = Instant::now();
                }
                if let Some(old) = entry.handle.release(engine) {
                    old.close();
                }
                tracing::info!(function = %name, "quarantine over: loaded again");
                return;
            }
            Err(failure) => {
                tracing::error!(function = %name, %failure, "cannot load after its quarantine; retrying");
            }
        }
    }
}
