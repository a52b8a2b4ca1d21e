//! The data plane: the functions of a manifest, each served on its own port by the binary protocol's
//! front end over the function runtime; hot reload and recovery from device loss.
//!
//! [`Server::reconcile`] makes the running functions match a [`HostManifest`]: new functions
//! are loaded and their ports opened; changed ones are loaded anew and swapped in while the old
//! version finishes what it admitted; removed ones stop taking requests, finish what they
//! admitted and close. [`Server::watch_directory`] drives it from a manifest directory. Device loss
//! is recovered by the function runtime.

mod watch;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::{JoinHandle, JoinSet};
use vknf_functions::FunctionLoader;
use vknf_manifest::{FunctionKey, HostManifest, ManifestFunction};
use vknf_oip::{OipConfig, OipServer};
use vknf_runtime::{DeviceHealth, DeviceStatus, FunctionHandle, Metrics, Runtime};

pub use watch::DirectorySource;

use crate::binary::{Listener, accept_loop};
use crate::config::ServerConfig;
use crate::metrics::ServerMetrics;

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
    /// The devices functions run on, and how each is doing.
    pub devices: Vec<DeviceStatus>,
}

impl HostStatus {
    /// Ready when the source was read, every function it names is loaded and listening, and a device
    /// serves (with several, one being recovered leaves the host ready: the others answer).
    pub fn is_ready(&self) -> bool {
        self.generation > 0
            && self.source_error.is_none()
            && (self.devices.is_empty() || self.devices.iter().any(|d| d.health == DeviceHealth::Serving))
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
        problems.extend(self.device_problems());
        problems
    }

    /// One line per device that is not serving.
    pub fn device_problems(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter_map(|device| {
                let what = match &device.health {
                    DeviceHealth::Serving => return None,
                    DeviceHealth::Recovering => "lost; being reset".to_owned(),
                    DeviceHealth::Failed(reason) => format!("cannot be reset ({reason}); retrying"),
                };
                Some(format!("device {} ({}): {what}", device.index, device.info.name))
            })
            .collect()
    }
}

struct Running {
    function: ManifestFunction,
    handle: FunctionHandle,
    addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

struct Inner {
    config: Arc<ServerConfig>,
    runtime: Runtime,
    server_metrics: ServerMetrics,
    registry: Registry,
    running: tokio::sync::Mutex<BTreeMap<FunctionKey, Running>>,
    status: parking_lot::Mutex<HostStatus>,
    connections: Arc<Semaphore>,
    stopping: AtomicBool,
    background: parking_lot::Mutex<Vec<JoinHandle<()>>>,
    /// The host's Open Inference Protocol port, when one is open.
    oip: tokio::sync::Mutex<Option<OipServer>>,
    oip_addr: parking_lot::Mutex<Option<SocketAddr>>,
}

/// A running network-function server. Cheap to clone; every clone is the same server.
#[derive(Clone)]
pub struct Server {
    inner: Arc<Inner>,
}

impl Server {
    /// Starts a server with no functions (call [`Server::reconcile`] or
    /// [`Server::watch_directory`]). Must be called inside a Tokio runtime.
    pub fn start(mut config: ServerConfig, loader: Arc<dyn FunctionLoader>) -> Server {
        let runtime = Runtime::new(loader, config.runtime_settings());
        // Every TLS connection of every port reserves its buffers from the process's memory budget.
        config.tls = config
            .tls
            .map(|tls| tls.with_connection_budget(vknf_oip::tls_connection_budget(runtime.budget())));
        let server_metrics = ServerMetrics::default();
        let mut registry = Registry::default();
        runtime.register_metrics(&mut registry);
        server_metrics.register(&mut registry);
        if let Some(tls) = &config.tls {
            tls.metrics().register(&mut registry);
        }
        let inner = Arc::new(Inner {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config: Arc::new(config),
            runtime,
            server_metrics,
            registry,
            running: tokio::sync::Mutex::new(BTreeMap::new()),
            status: parking_lot::Mutex::new(HostStatus::default()),
            stopping: AtomicBool::new(false),
            background: parking_lot::Mutex::new(Vec::new()),
            oip: tokio::sync::Mutex::new(None),
            oip_addr: parking_lot::Mutex::new(None),
        });
        Server { inner }
    }

    /// The server's configuration.
    pub fn config(&self) -> &ServerConfig {
        &self.inner.config
    }

    /// The TLS set-up every port of the server uses, if any.
    pub fn tls(&self) -> Option<&vknf_tls::ServerTls> {
        self.inner.config.tls.as_ref()
    }

    /// The function runtime behind the server: its functions can be called in process too.
    pub fn runtime(&self) -> &Runtime {
        &self.inner.runtime
    }

    /// The function runtime's metrics.
    pub fn metrics(&self) -> &Metrics {
        self.inner.runtime.metrics()
    }

    /// The server's own metrics (connections, reloads).
    pub fn server_metrics(&self) -> &ServerMetrics {
        &self.inner.server_metrics
    }

    /// The metrics in Prometheus text format.
    pub fn encode_metrics(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.inner.registry);
        text
    }

    /// A snapshot of what the server serves. A function that could not be reloaded after a device loss
    /// shows as failed, its port still open.
    pub fn status(&self) -> HostStatus {
        let mut status = self.inner.status.lock().clone();
        status.devices = self.inner.runtime.devices();
        for (key, function) in status.functions.iter_mut() {
            if let FunctionStatus::Serving { addr } = *function
                && let Some(reason) = self.inner.runtime.failure(&key.to_string())
            {
                *function = FunctionStatus::Failed {
                    reason,
                    serving_previous: Some(addr),
                };
            }
        }
        status
    }

    /// The address a function listens on.
    pub fn local_addr(&self, key: &FunctionKey) -> Option<SocketAddr> {
        self.status().addr(key)
    }

    /// Requests admitted and not yet answered, summed over every function (for leak checks).
    pub async fn queued_requests(&self) -> usize {
        let running = self.inner.running.lock().await;
        running.values().map(|r| r.handle.queued_requests()).sum()
    }

    /// Input bytes admitted and not yet answered, summed over every function.
    pub async fn queued_bytes(&self) -> usize {
        let running = self.inner.running.lock().await;
        running.values().map(|r| r.handle.queued_bytes()).sum()
    }

    /// Lanes currently alive across every function (each owns a batch's staging memory).
    pub fn live_lanes(&self) -> i64 {
        self.metrics().live_lanes.get()
    }

    /// Open client connections.
    pub fn open_connections(&self) -> i64 {
        self.inner.server_metrics.connections.get()
    }

    /// The digest of the feature schema that the model of `function` (`namespace/name`) was trained
    /// with, as the version serving now reports it (`FunctionInfo::parameters`, from the model's own
    /// metadata); `None` for a model bound to no schema, or a function not serving. A manifest
    /// declaring another schema is never served. The Open Inference Protocol port reports the same in
    /// the model's metadata (`parameters`), read from the same version.
    pub async fn schema_digest(&self, function: &str) -> Option<String> {
        let info = self.inner.runtime.get(function).await?.info()?;
        info.parameters
            .get(vknf_functions::families::forest::SCHEMA_DIGEST)
            .cloned()
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
                    // Same model, same schema; only whether the manifest declares it may differ.
                    current.function.spec.schema = function.spec.schema;
                    let addr = current.addr;
                    running.insert(key.clone(), current);
                    FunctionStatus::Serving { addr }
                }
                Some(current) if current.function.spec.port == function.spec.port => {
                    let status = self.replace(&current, &function).await;
                    let mut current = current;
                    if matches!(status, FunctionStatus::Serving { .. }) {
                        note_schema(&function);
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
        drop(status);
        self.status()
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
        let socket = match self.bind(&function).await {
            Ok(socket) => socket,
            Err(reason) => return failed(reason),
        };
        let addr = match socket.local_addr() {
            Ok(addr) => addr,
            Err(e) => return failed(format!("cannot read the bound address: {e}")),
        };
        let handle = match self.load(&function).await {
            Ok(handle) => handle,
            Err(reason) => return failed(reason),
        };
        let listener = Listener {
            function: handle.clone(),
            config: self.inner.config.clone(),
            metrics: self.metrics().clone(),
            server_metrics: self.inner.server_metrics.clone(),
            connections: self.inner.connections.clone(),
            budget: self.inner.runtime.budget().clone(),
        };
        let acceptor = tokio::spawn(accept_loop(socket, listener));
        tracing::info!(function = %key, %addr, loader = self.inner.runtime.loader_name(), "serving");
        note_schema(&function);
        running.insert(
            key,
            Running {
                function,
                handle,
                addr,
                acceptor,
            },
        );
        FunctionStatus::Serving { addr }
    }

    /// Opens a function's port on the address the bind policy names for it, refusing plaintext beyond
    /// loopback unless allowed. Of several candidate addresses, the first the host can bind wins.
    async fn bind(&self, function: &ManifestFunction) -> Result<TcpListener, String> {
        let config = &self.inner.config;
        let port = function.spec.port;
        let candidates = config.bind.candidates(&function.spec.endpoints);
        if candidates.is_empty() {
            return Err(format!(
                "none of the function's endpoint addresses is this host's (give --bind or --bind-all): {:?}",
                function.spec.endpoints
            ));
        }
        let mut last_error = None;
        for ip in candidates {
            config.check_plaintext(ip)?;
            match TcpListener::bind((ip, port)).await {
                Ok(socket) => return Ok(socket),
                // Another host's address (the host list was not given): try the next endpoint.
                Err(e) if e.kind() == std::io::ErrorKind::AddrNotAvailable => last_error = Some((ip, e)),
                Err(e) => return Err(format!("cannot listen on port {port}: {ip}: {e}")),
            }
        }
        let (ip, e) = last_error.expect("a candidate was tried");
        Err(format!("cannot listen on port {port}: {ip}: {e}"))
    }

    /// Loads a new version and swaps it in; the old one finishes what it admitted.
    async fn replace(&self, current: &Running, function: &ManifestFunction) -> FunctionStatus {
        let key = &function.spec.key;
        match self.load(function).await {
            Ok(_) => FunctionStatus::Serving { addr: current.addr },
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
        let name = old.handle.name().to_owned();
        let drain = async {
            self.inner.runtime.remove(&name).await;
            let _ = (&mut old.acceptor).await;
        };
        if tokio::time::timeout(self.inner.config.drain_timeout, drain)
            .await
            .is_err()
        {
            tracing::warn!(function = %name, "still busy after the drain timeout; closing anyway");
            old.acceptor.abort();
        }
    }

    async fn load(&self, function: &ManifestFunction) -> Result<FunctionHandle, String> {
        self.inner
            .runtime
            .load(
                function.spec.function.clone(),
                function.model.clone(),
                function.spec.max_wait,
            )
            .await
            .map_err(|e| e.to_string())
    }

    /// Opens the host's Open Inference Protocol port (REST and gRPC) on `addr`, serving every function
    /// of the server by name beside their binary ports; returns the bound address. Bodies are limited
    /// like binary frames (`max_payload`), connections like binary ones, and `/v2/health/ready` is
    /// [`HostStatus::is_ready`]. With the server's TLS set-up the port speaks TLS only (ALPN `h2`,
    /// `http/1.1`); without it, a non-loopback `addr` is refused unless plaintext is allowed. A second
    /// call replaces the first port.
    pub async fn serve_oip(&self, addr: SocketAddr) -> std::io::Result<SocketAddr> {
        let config = &self.inner.config;
        let oip_config = OipConfig {
            max_body_bytes: config.max_payload as usize,
            max_connections: config.max_connections,
            body_timeout: config.read_timeout,
            header_timeout: config.read_timeout,
            drain_timeout: config.drain_timeout,
            tls: config
                .tls
                .as_ref()
                .map(|tls| tls.with_alpn(&[vknf_tls::alpn::H2, vknf_tls::alpn::HTTP_1_1])),
            ..OipConfig::default()
        };
        config
            .check_plaintext(addr.ip())
            .map_err(|reason| std::io::Error::new(std::io::ErrorKind::PermissionDenied, reason))?;
        // A weak reference: the port lives inside the server and must not keep it alive.
        let weak = Arc::downgrade(&self.inner);
        let readiness = Arc::new(move || {
            weak.upgrade()
                .is_some_and(|inner| Server::from_inner(inner).status().is_ready())
        });
        let oip = OipServer::bind(addr, self.inner.runtime.clone(), readiness, oip_config).await?;
        let bound = oip.local_addr();
        let previous = self.inner.oip.lock().await.replace(oip);
        *self.inner.oip_addr.lock() = Some(bound);
        if let Some(previous) = previous {
            previous.shutdown().await;
        }
        Ok(bound)
    }

    /// Where the Open Inference Protocol port listens, if it is open.
    pub fn oip_addr(&self) -> Option<SocketAddr> {
        *self.inner.oip_addr.lock()
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
        if let Some(oip) = self.inner.oip.lock().await.take() {
            // Stops taking requests beside the binary ports; what it admitted is answered before the
            // runtime stops below.
            stops.spawn(oip.shutdown());
        }
        for (_, old) in std::mem::take(&mut *running) {
            let server = self.clone();
            stops.spawn(async move { server.stop(old).await });
        }
        while stops.join_next().await.is_some() {}
        self.inner.runtime.shutdown().await;
        self.inner.status.lock().functions.clear();
    }

    fn from_inner(inner: Arc<Inner>) -> Server {
        Server { inner }
    }
}

/// Says which feature schema a version that now serves is bound to.
fn note_schema(function: &ManifestFunction) {
    let key = &function.spec.key;
    match &function.spec.schema {
        Some(schema) if schema.declared => {
            tracing::info!(function = %key, schema = %schema.digest, "bound to its declared feature schema");
        }
        Some(schema) => tracing::warn!(
            function = %key,
            schema = %schema.digest,
            "the model is bound to a feature schema that the manifest does not declare (annotation {}): \
             served, but clients cannot check theirs against the manifest",
            vknf_manifest::annotations::FEATURE_SCHEMA_SHA256
        ),
        None => {}
    }
}
