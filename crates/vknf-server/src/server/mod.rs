//! The data plane: one TCP listener per function, connections, dynamic batching, hot reload
//! and recovery from device loss.
//!
//! [`Server::reconcile`] makes the running functions match a [`HostManifest`]: new functions
//! are loaded and their ports opened; changed ones are loaded anew and swapped in while the old
//! version finishes what it admitted; removed ones stop taking requests, finish what they
//! admitted and close. [`Server::watch_directory`] drives it from a manifest directory.

mod connection;
mod job;
mod lane_worker;
mod outbox;
mod runtime;
mod slot;
mod watch;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{JoinHandle, JoinSet};

pub use watch::DirectorySource;

use crate::exec::FunctionLoader;
use crate::manifest::{FunctionKey, HostManifest, ManifestFunction};
use crate::metrics::Metrics;
use crate::protocol::DEFAULT_MAX_PAYLOAD;
use runtime::{FunctionRuntime, RuntimeSettings, create_lanes};
use slot::FunctionSlot;

/// Limits and timeouts of a server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Address the function ports are bound on.
    pub bind_ip: IpAddr,
    /// Largest frame payload accepted; larger frames are answered `TOO_LARGE`.
    pub max_payload: u32,
    /// Open connections across all functions; more are answered `BUSY` and closed.
    pub max_connections: usize,
    /// Requests one connection may have in flight; past it the server stops reading from it.
    pub max_in_flight_per_connection: usize,
    /// Input bytes a function may have admitted and unanswered; past it requests get `BUSY`.
    pub max_queued_bytes: usize,
    /// Lanes (batches in flight) per function.
    pub lanes_per_function: usize,
    /// Longest a batch waits to fill up, unless the manifest says otherwise.
    pub default_max_wait: Duration,
    /// How long a lane thread that has just finished a batch polls for the next one before it sleeps.
    /// Polling spares the next request a thread wake-up (20-30 us of a one-row request's 88 us on the
    /// GPU machine) but takes a core while it lasts; on shared or virtualised hosts the cores it takes
    /// cost more than that (bench/RESULTS.md), so the default is zero.
    pub lane_spin: Duration,
    /// A connection with nothing in flight and nothing received for this long is closed.
    pub idle_timeout: Duration,
    /// A frame that has started must be complete within this.
    pub read_timeout: Duration,
    /// Writing one answer may take at most this; a client that does not read is dropped.
    pub write_timeout: Duration,
    /// How long removal, replacement and shutdown wait for in-flight requests.
    pub drain_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            bind_ip: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_connections: 4096,
            max_in_flight_per_connection: 256,
            max_queued_bytes: 64 << 20,
            lanes_per_function: 3,
            default_max_wait: Duration::from_micros(200),
            lane_spin: Duration::ZERO,
            idle_timeout: Duration::from_secs(300),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(30),
        }
    }
}

/// What the server is doing with one function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FunctionStatus {
    /// Loaded and listening.
    Serving {
        /// The bound address.
        addr: SocketAddr,
    },
    /// The function's latest spec could not be served.
    Failed {
        /// Why.
        reason: String,
        /// Where an earlier version still serves, if one does.
        serving_previous: Option<SocketAddr>,
    },
}

/// The server's view of its functions, behind `/readyz`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostStatus {
    /// Reconciliations completed so far (0: not yet started).
    pub generation: u64,
    /// Why the function source could not be read, if it could not.
    pub source_error: Option<String>,
    /// Every function this host should serve.
    pub functions: BTreeMap<FunctionKey, FunctionStatus>,
}

impl HostStatus {
    /// Ready when the source was read and every function it names is loaded and listening.
    pub fn is_ready(&self) -> bool {
        self.generation > 0
            && self.source_error.is_none()
            && self
                .functions
                .values()
                .all(|s| matches!(s, FunctionStatus::Serving { .. }))
    }

    /// Address of a serving function (the earlier version's when the latest failed).
    pub fn addr(&self, key: &FunctionKey) -> Option<SocketAddr> {
        match self.functions.get(key)? {
            FunctionStatus::Serving { addr } => Some(*addr),
            FunctionStatus::Failed { serving_previous, .. } => *serving_previous,
        }
    }

    /// One line per problem, for `/readyz`.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.generation == 0 {
            problems.push("functions not loaded yet".to_owned());
        }
        if let Some(error) = &self.source_error {
            problems.push(format!("manifests: {error}"));
        }
        for (key, status) in &self.functions {
            if let FunctionStatus::Failed { reason, .. } = status {
                problems.push(format!("{key}: {reason}"));
            }
        }
        problems
    }
}

struct Running {
    function: ManifestFunction,
    slot: Arc<FunctionSlot>,
    addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

struct Inner {
    config: Arc<ServerConfig>,
    loader: Arc<dyn FunctionLoader>,
    metrics: Metrics,
    registry: Registry,
    running: tokio::sync::Mutex<BTreeMap<FunctionKey, Running>>,
    status: parking_lot::Mutex<HostStatus>,
    connections: Arc<Semaphore>,
    device_lost: mpsc::UnboundedSender<FunctionKey>,
    stopping: AtomicBool,
    background: parking_lot::Mutex<Vec<JoinHandle<()>>>,
}

/// A running network-function server. Cheap to clone; every clone is the same server.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// Starts a server with no functions (call [`Server::reconcile`] or
    /// [`Server::watch_directory`]). Must be called inside a Tokio runtime.
    pub fn start(config: ServerConfig, loader: Arc<dyn FunctionLoader>) -> Server {
        let metrics = Metrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let (device_lost, device_lost_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config: Arc::new(config),
            loader,
            metrics,
            registry,
            running: tokio::sync::Mutex::new(BTreeMap::new()),
            status: parking_lot::Mutex::new(HostStatus::default()),
            device_lost,
            stopping: AtomicBool::new(false),
            background: parking_lot::Mutex::new(Vec::new()),
        });
        let recovery = tokio::spawn(recover_from_device_loss(Arc::downgrade(&inner), device_lost_rx));
        inner.background.lock().push(recovery);
        Server { inner }
    }

    /// The server's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The metrics in Prometheus text format.
    pub fn encode_metrics(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }

    /// A snapshot of what the server serves.
    pub fn status(&self) -> HostStatus {
        self.inner.status.lock().clone()
    }

    /// The address a function listens on.
    pub fn local_addr(&self, key: &FunctionKey) -> Option<SocketAddr> {
        self.status().addr(key)
    }

    /// Requests admitted and not yet answered, summed over every function (for leak checks).
    pub async fn queued_requests(&self) -> usize {
        let running = self.inner.running.lock().await;
        running
            .values()
            .filter_map(|r| r.slot.current())
            .map(|rt| rt.queued_requests())
            .sum()
    }

    /// Input bytes admitted and not yet answered, summed over every function.
    pub async fn queued_bytes(&self) -> usize {
        let running = self.inner.running.lock().await;
        running
            .values()
            .filter_map(|r| r.slot.current())
            .map(|rt| rt.queued_bytes())
            .sum()
    }

    /// Lanes currently alive across every function (each owns a batch's staging memory).
    pub fn live_lanes(&self) -> i64 {
        self.inner.metrics.live_lanes.get()
    }

    /// Open client connections.
    pub fn open_connections(&self) -> i64 {
        self.inner.metrics.connections.get()
    }

    /// Makes the running functions match `desired`; returns the resulting status.
    pub async fn reconcile(&self, desired: HostManifest) -> HostStatus {
        let inner = &self.inner;
        let mut running = inner.running.lock().await;
        if inner.stopping.load(Ordering::Acquire) {
            return self.status();
        }
        let mut statuses = BTreeMap::new();
        let wanted: Vec<FunctionKey> = desired
            .functions
            .iter()
            .map(|f| f.spec.key.clone())
            .chain(desired.rejected.iter().map(|r| r.key.clone()))
            .collect();
        let removed: Vec<FunctionKey> = running.keys().filter(|k| !wanted.contains(k)).cloned().collect();
        for key in removed {
            if let Some(old) = running.remove(&key) {
                tracing::info!(function = %key, "removing");
                self.stop(old).await;
            }
        }
        for rejected in desired.rejected {
            tracing::error!(function = %rejected.key, error = %rejected.error, "invalid manifest");
            let serving_previous = running.get(&rejected.key).map(|r| r.addr);
            statuses.insert(
                rejected.key,
                FunctionStatus::Failed {
                    reason: rejected.error.to_string(),
                    serving_previous,
                },
            );
        }
        for function in desired.functions {
            let key = function.spec.key.clone();
            let status = match running.remove(&key) {
                None => self.start_function(function, &mut running).await,
                Some(mut current) if current.function.spec.same_function(&function.spec) => {
                    current.function.spec.endpoints = function.spec.endpoints;
                    let addr = current.addr;
                    running.insert(key.clone(), current);
                    FunctionStatus::Serving { addr }
                }
                Some(current) if current.function.spec.port == function.spec.port => {
                    let status = self.replace(&current, &function).await;
                    let mut current = current;
                    if matches!(status, FunctionStatus::Serving { .. }) {
                        current.function = function;
                    }
                    running.insert(key.clone(), current);
                    status
                }
                Some(current) => {
                    tracing::info!(function = %key, "port changed: restarting");
                    self.stop(current).await;
                    self.start_function(function, &mut running).await
                }
            };
            statuses.insert(key, status);
        }
        let mut status = inner.status.lock();
        status.generation += 1;
        status.source_error = None;
        status.functions = statuses;
        status.clone()
    }

    /// Records that the function source could not be read; running functions keep running.
    pub fn report_source_error(&self, error: String) {
        let mut status = self.inner.status.lock();
        status.source_error = Some(error);
    }

    async fn start_function(
        &self,
        function: ManifestFunction,
        running: &mut BTreeMap<FunctionKey, Running>,
    ) -> FunctionStatus {
        let key = function.spec.key.clone();
        let failed = |reason: String| {
            tracing::error!(function = %key, %reason, "cannot serve");
            FunctionStatus::Failed {
                reason,
                serving_previous: None,
            }
        };
        let listener = match TcpListener::bind((self.inner.config.bind_ip, function.spec.port)).await {
            Ok(listener) => listener,
            Err(e) => return failed(format!("cannot listen on port {}: {e}", function.spec.port)),
        };
        let addr = match listener.local_addr() {
            Ok(addr) => addr,
            Err(e) => return failed(format!("cannot read the bound address: {e}")),
        };
        let runtime = match self.load(&function).await {
            Ok(runtime) => runtime,
            Err(reason) => return failed(reason),
        };
        let slot = Arc::new(FunctionSlot::new(key.clone(), runtime));
        let acceptor = tokio::spawn(accept_loop(
            listener,
            slot.clone(),
            self.inner.config.clone(),
            self.inner.metrics.clone(),
            self.inner.connections.clone(),
        ));
        tracing::info!(function = %key, %addr, loader = self.inner.loader.name(), "serving");
        running.insert(
            key,
            Running {
                function,
                slot,
                addr,
                acceptor,
            },
        );
        FunctionStatus::Serving { addr }
    }

    /// Loads a new version and swaps it in; the old one finishes what it admitted.
    async fn replace(&self, current: &Running, function: &ManifestFunction) -> FunctionStatus {
        let key = &function.spec.key;
        match self.load(function).await {
            Ok(runtime) => {
                tracing::info!(function = %key, "reloaded; draining the previous version");
                if let Some(old) = current.slot.replace(runtime) {
                    old.close();
                    if tokio::time::timeout(self.inner.config.drain_timeout, old.drained())
                        .await
                        .is_err()
                    {
                        tracing::warn!(function = %key, "previous version still busy after the drain timeout");
                    }
                }
                FunctionStatus::Serving { addr: current.addr }
            }
            Err(reason) => {
                tracing::error!(function = %key, %reason, "reload failed; the previous version keeps serving");
                FunctionStatus::Failed {
                    reason,
                    serving_previous: Some(current.addr),
                }
            }
        }
    }

    /// Stops taking requests, finishes admitted ones, closes the port and its connections.
    async fn stop(&self, mut old: Running) {
        let runtime = old.slot.close();
        if let Some(runtime) = &runtime {
            runtime.close();
        }
        let drain = async {
            if let Some(runtime) = &runtime {
                runtime.drained().await;
            }
            let _ = (&mut old.acceptor).await;
        };
        if tokio::time::timeout(self.inner.config.drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(function = %old.slot.key, "still busy after the drain timeout; closing anyway");
            old.acceptor.abort();
        }
    }

    async fn load(&self, function: &ManifestFunction) -> Result<Arc<FunctionRuntime>, String> {
        let loader = self.inner.loader.clone();
        let spec = function.spec.clone();
        let model = function.model.clone();
        let lanes = self.inner.config.lanes_per_function;
        let loaded = tokio::task::spawn_blocking(move || {
            let function = loader.load(&spec, model.as_deref()).map_err(|e| e.to_string())?;
            let lanes = create_lanes(function.as_ref(), lanes).map_err(|e| format!("cannot create lanes: {e}"))?;
            Ok::<_, String>((function, lanes))
        })
        .await
        .map_err(|e| format!("the loader failed: {e}"))??;
        let settings = RuntimeSettings {
            max_wait: self.inner.config.default_max_wait,
            max_queued_bytes: self.inner.config.max_queued_bytes,
            lane_spin: self.inner.config.lane_spin,
        };
        FunctionRuntime::start(
            function.spec.clone(),
            loaded.0,
            loaded.1,
            &settings,
            &self.inner.metrics,
            self.inner.device_lost.clone(),
        )
        .map_err(|e| e.to_string())
    }

    /// Resets the device and loads every function anew (after a lane reported device loss).
    async fn reload_all(&self) {
        let mut running = self.inner.running.lock().await;
        if self.inner.stopping.load(Ordering::Acquire) {
            return;
        }
        let loader = self.inner.loader.clone();
        let reset = tokio::task::spawn_blocking(move || loader.reset()).await;
        let reset_error = match reset {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(e) => Some(e.to_string()),
        };
        let mut statuses = Vec::new();
        for (key, current) in running.iter_mut() {
            let status = match &reset_error {
                Some(reason) => FunctionStatus::Failed {
                    reason: format!("device reset failed: {reason}"),
                    serving_previous: Some(current.addr),
                },
                None => self.replace(current, &current.function.clone()).await,
            };
            statuses.push((key.clone(), status));
        }
        let mut status = self.inner.status.lock();
        for (key, function_status) in statuses {
            status.functions.insert(key, function_status);
        }
    }

    /// Reads `source` now and then whenever its files change, reconciling each time. The task
    /// ends at [`Server::shutdown`].
    pub fn watch_directory(&self, source: DirectorySource) {
        let task = tokio::spawn(watch::watch_loop(Arc::downgrade(&self.inner), source));
        self.inner.background.lock().push(task);
    }

    /// Graceful shutdown: stop watching, stop accepting, answer everything admitted, close.
    pub async fn shutdown(&self) {
        self.inner.stopping.store(true, Ordering::Release);
        for task in self.inner.background.lock().drain(..) {
            task.abort();
        }
        let mut running = self.inner.running.lock().await;
        let mut stops = JoinSet::new();
        for (_, old) in std::mem::take(&mut *running) {
            let server = self.clone();
            stops.spawn(async move { server.stop(old).await });
        }
        while stops.join_next().await.is_some() {}
        self.inner.status.lock().functions.clear();
    }

    fn from_inner(inner: Arc<Inner>) -> Server {
        Server { inner }
    }
}

async fn recover_from_device_loss(inner: Weak<Inner>, mut reports: mpsc::UnboundedReceiver<FunctionKey>) {
    while let Some(key) = reports.recv().await {
        // Every lane of every function reports the same loss; one reload covers them all.
        tokio::time::sleep(Duration::from_millis(10)).await;
        while reports.try_recv().is_ok() {}
        let Some(inner) = inner.upgrade() else { return };
        tracing::error!(reported_by = %key, "device lost: resetting and reloading every function");
        Server::from_inner(inner).reload_all().await;
    }
}

/// Decrements the connection gauge however the connection task ends.
struct ConnectionGuard {
    _permit: tokio::sync::OwnedSemaphorePermit,
    metrics: Metrics,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

async fn until_closing(closing: &mut tokio::sync::watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here rather than in the caller's select.
    let _ = closing.wait_for(|closing| *closing).await.map(|_| ());
}

async fn accept_loop(
    listener: TcpListener,
    slot: Arc<FunctionSlot>,
    config: Arc<ServerConfig>,
    metrics: Metrics,
    connections: Arc<Semaphore>,
) {
    let mut closing = slot.subscribe_closing();
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match connections.clone().try_acquire_owned() {
                    Ok(permit) => {
                        metrics.connections.inc();
                        let guard = ConnectionGuard { _permit: permit, metrics: metrics.clone() };
                        let (slot, config, metrics) = (slot.clone(), config.clone(), metrics.clone());
                        tasks.spawn(async move {
                            connection::serve_connection(stream, slot, config, metrics).await;
                            drop(guard);
                        });
                    }
                    Err(_) => {
                        metrics.refused_connections.inc();
                        tasks.spawn(connection::refuse_connection(stream, config.write_timeout));
                    }
                },
                Err(error) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(function = %slot.key, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            () = until_closing(&mut closing) => break,
        }
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
}
