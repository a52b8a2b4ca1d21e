//! One reconcile pass makes the host match the cluster: plan, fetch models, resolve the
//! functions in memory, hand the result to [`Server::reconcile`], probe the ports, then publish
//! slices, status and Events, and finally refresh the state directory (a copy for operators).
//! Every step is idempotent, so a restarted agent converges to the same state, and every
//! failure is confined to the function it concerns and retried on a later pass.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use tokio::sync::watch as signal;
use vknf_manifest::{FunctionKey, HostManifest, ManifestFunction, ServedSpec, SpecError};
use vknf_server::{FunctionStatus, HostStatus, Server};

mod report;

use super::publish;
use super::watch::{Caches, FirstSeen};
use super::{AgentConfig, Shared};
use crate::keys;
use crate::models::ModelCache;
use crate::plan::{PlacementMode, Plan, object_key, plan};
use crate::render::{clone_manifest, function_service, resolve_functions, write_state_dir};
use crate::slices::{EndpointState, desired_slice, slice_host, up_to_date};
use crate::status::{FunctionPhase, HostFunctionStatus};

/// Events arriving together are handled in one pass.
const DEBOUNCE: Duration = Duration::from_millis(5);
/// How soon a pass is repeated while a port has not answered yet.
const PROBE_RETRY: Duration = Duration::from_millis(100);
/// Longest wait for a port to accept a connection.
const PROBE_TIMEOUT: Duration = Duration::from_secs(1);
/// First retry delay after a failed write; doubled up to the resync interval.
const FIRST_RETRY: Duration = Duration::from_millis(200);

/// What the resolver was given last time; an identical input is not resolved again.
#[derive(Debug, Clone, PartialEq)]
struct RenderInput {
    services: Vec<Service>,
    configmaps: Vec<(FunctionKey, Option<String>, Option<String>)>,
}

/// What the server was asked to run; an identical request is not sent again.
#[derive(Debug, Clone, PartialEq)]
struct Signature {
    functions: Vec<ServedSpec>,
    rejected: Vec<(FunctionKey, SpecError)>,
}

impl Signature {
    fn of(manifest: &HostManifest) -> Signature {
        Signature {
            functions: manifest.functions.iter().map(|f| f.spec.clone()).collect(),
            rejected: manifest
                .rejected
                .iter()
                .map(|r| (r.key.clone(), r.error.clone()))
                .collect(),
        }
    }
}

/// A function no longer placed here, still serving what it admitted until `until`.
struct Draining {
    function: ManifestFunction,
    service: Arc<Service>,
    mode: PlacementMode,
    until: Instant,
}

/// The model ConfigMaps read in one pass, and the Services they complete.
#[derive(Default)]
struct FetchedInputs {
    services: Vec<Service>,
    configmaps: BTreeMap<FunctionKey, Arc<ConfigMap>>,
    failures: BTreeMap<FunctionKey, String>,
}

/// The timings of one pass, for cold starts.
#[derive(Default)]
struct PassTimings {
    model_fetch: BTreeMap<FunctionKey, Duration>,
    validation: Duration,
    load: Duration,
    probe: BTreeMap<FunctionKey, Duration>,
    answered_at: BTreeMap<FunctionKey, Instant>,
}

pub(crate) struct Reconciler {
    client: Client,
    config: Arc<AgentConfig>,
    server: Server,
    caches: Caches,
    shared: Arc<Shared>,
    first_seen: FirstSeen,
    state_dir: Option<PathBuf>,
    /// Objects resolved since the state directory was last written successfully.
    unwritten_state: Option<(Vec<Service>, Vec<Arc<ConfigMap>>)>,
    models: ModelCache,
    recorder: Recorder,
    last_render: Option<(RenderInput, HostManifest)>,
    last_signature: Option<Signature>,
    /// The version the server serves for each function (kept across failed replacements).
    running: BTreeMap<FunctionKey, ManifestFunction>,
    /// The last Service and placement of each function that ran here.
    known: BTreeMap<FunctionKey, (Arc<Service>, PlacementMode)>,
    draining: BTreeMap<FunctionKey, Draining>,
    /// Functions whose port has accepted a connection at this address.
    answering: BTreeMap<FunctionKey, SocketAddr>,
    /// The last state an Event was recorded for.
    reported: BTreeMap<FunctionKey, HostFunctionStatus>,
    /// When failed loads are next retried.
    retry_loads_at: Option<Instant>,
    /// Consecutive passes with a failed write.
    failed_passes: u32,
    /// Consecutive passes with a serving port that did not answer.
    unanswered_passes: u32,
}

impl Reconciler {
    pub(crate) fn new(
        client: Client,
        config: Arc<AgentConfig>,
        server: Server,
        caches: Caches,
        shared: Arc<Shared>,
        first_seen: FirstSeen,
        state_dir: Option<PathBuf>,
    ) -> Reconciler {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: keys::EVENT_CONTROLLER.to_owned(),
                instance: Some(config.host.name.clone()),
            },
        );
        Reconciler {
            models: ModelCache::new(client.clone()),
            client,
            config,
            server,
            caches,
            shared,
            first_seen,
            state_dir,
            unwritten_state: None,
            recorder,
            last_render: None,
            last_signature: None,
            running: BTreeMap::new(),
            known: BTreeMap::new(),
            draining: BTreeMap::new(),
            answering: BTreeMap::new(),
            reported: BTreeMap::new(),
            retry_loads_at: None,
            failed_passes: 0,
            unanswered_passes: 0,
        }
    }

    pub(crate) async fn run(mut self, mut stop: signal::Receiver<bool>) {
        tokio::select! {
            synced = self.caches.wait_until_ready() => if !synced { return },
            () = stopped(&mut stop) => return,
        }
        self.shared.status.lock().synced = true;
        tracing::info!(host = %self.config.host.name, "caches synced; reconciling");
        loop {
            let pause = self.reconcile_once().await;
            let wake = self.shared.wake.clone();
            let stop_now = tokio::select! {
                () = wake.notified() => {
                    tokio::time::sleep(DEBOUNCE).await;
                    false
                }
                () = tokio::time::sleep(pause) => false,
                () = stopped(&mut stop) => true,
            };
            if stop_now {
                break;
            }
        }
        self.finish().await;
    }

    /// Graceful stop: every endpoint of this host goes terminating before the server drains.
    async fn finish(&mut self) {
        for slice in self.own_slices() {
            let Some(service) = self.service(&slice_key(&slice)) else {
                continue;
            };
            if let Some(draining) = desired_slice(
                &service,
                &self.config.host,
                self.config.oip_port,
                EndpointState::DRAINING,
            ) && !up_to_date(&slice, &draining)
                && let Err(error) = publish::apply_slice(&self.client, &draining).await
            {
                tracing::warn!(error = %publish::error_text(&error), "cannot mark the endpoint terminating before shutdown");
            }
        }
        // A stopped host reports nothing rather than a stale "Serving".
        let annotation = keys::status_annotation(&self.config.host.name);
        for service in self.caches.services() {
            let ours = service
                .metadata
                .annotations
                .as_ref()
                .is_some_and(|a| a.contains_key(&annotation));
            if ours && let Err(error) = publish::set_status_annotation(&self.client, &service, &annotation, None).await
            {
                tracing::warn!(error = %publish::error_text(&error), "cannot remove the status annotation before shutdown");
            }
        }
    }

    fn own_slices(&self) -> Vec<Arc<EndpointSlice>> {
        self.caches
            .slices()
            .into_iter()
            .filter(|s| slice_host(s) == Some(self.config.host.name.as_str()))
            .collect()
    }

    /// The host's slices by namespace and name.
    fn own_slices_by_name(&self) -> BTreeMap<(String, String), Arc<EndpointSlice>> {
        self.own_slices()
            .into_iter()
            .filter_map(|s| {
                let namespace = s.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned());
                Some(((namespace, s.metadata.name.clone()?), s))
            })
            .collect()
    }

    fn service(&self, key: &FunctionKey) -> Option<Arc<Service>> {
        self.caches.service(key)
    }

    /// One pass; returns how long to wait before the next one when nothing changes.
    async fn reconcile_once(&mut self) -> Duration {
        let pass_start = Instant::now();
        let metrics = self.shared.metrics.clone();
        metrics.reconciles.inc();
        let services = self.caches.services();
        let plan = plan(
            &services,
            &self.caches.slices(),
            &self.caches.endpoints(),
            &self.config.host,
        );
        for (key, placed) in &plan.placed {
            self.known.insert(key.clone(), (placed.service.clone(), placed.mode));
        }
        let mut timings = PassTimings::default();
        let mut write_failed = false;

        let fetched = self.fetch_models(&plan, &mut timings).await;
        let rendered = self
            .render_if_changed(fetched.services, &fetched.configmaps, &mut timings)
            .await;
        let fetch_failures = fetched.failures;

        self.update_drains(&plan, &mut write_failed).await;

        let mut status = self.server.status();
        let mut desired_functions = BTreeMap::new();
        let mut rejected = BTreeMap::new();
        if let (true, Some((_, manifest))) = (rendered, &self.last_render) {
            let mut desired = clone_manifest(manifest);
            for key in fetch_failures.keys() {
                if let Some(current) = self.running.get(key) {
                    desired.functions.push(current.clone());
                }
            }
            for draining in self.draining.values() {
                desired.functions.push(draining.function.clone());
            }
            desired.functions.sort_by(|a, b| a.spec.key.cmp(&b.spec.key));
            desired_functions = desired
                .functions
                .iter()
                .map(|f| (f.spec.key.clone(), f.clone()))
                .collect();
            rejected = desired
                .rejected
                .iter()
                .map(|r| (r.key.clone(), r.error.clone()))
                .collect();
            let signature = Signature::of(&desired);
            let retry_due = self.retry_loads_at.is_some_and(|at| at <= Instant::now());
            // A source error reported earlier is cleared only by a reconcile.
            let stale_error = status.source_error.is_some();
            if self.last_signature.as_ref() != Some(&signature) || retry_due || stale_error {
                let started = Instant::now();
                status = self.server.reconcile(desired).await;
                timings.load = started.elapsed();
                self.last_signature = Some(signature);
            }
        }
        let was_running: BTreeSet<FunctionKey> = self.running.keys().cloned().collect();
        self.track_running(&status, &desired_functions);

        let newly_answering = self.probe(&status, &mut timings).await;
        self.publish_slices(&plan, &mut write_failed).await;
        let reports = self.reports(&plan, &status, &rejected, &fetch_failures);
        self.publish_status(&services, &reports, &mut write_failed).await;
        self.record_events(&plan, &reports).await;
        self.record_cold_starts(pass_start, &newly_answering, &was_running, &timings);
        self.forget_first_seen(&plan, &reports);
        self.write_state_dir(&mut write_failed).await;

        let count = |phase: FunctionPhase| reports.values().filter(|r| r.phase == phase).count();
        metrics.set_functions("pending", count(FunctionPhase::Pending));
        metrics.set_functions("serving", count(FunctionPhase::Serving));
        metrics.set_functions("failed", count(FunctionPhase::Failed));
        metrics.set_functions("draining", count(FunctionPhase::Draining));
        {
            let mut shared = self.shared.status.lock();
            shared.reconciles += 1;
            shared.functions = reports.clone();
        }
        self.next_pause(
            &status,
            &rejected,
            write_failed || !rendered || !fetch_failures.is_empty(),
        )
    }

    /// Reads the model ConfigMaps of every placed function. A function whose ConfigMaps cannot
    /// be read is left out of the render and keeps its current version.
    async fn fetch_models(&mut self, plan: &Plan, timings: &mut PassTimings) -> FetchedInputs {
        let mut fetched = FetchedInputs::default();
        for (key, placed) in &plan.placed {
            let result = self
                .models
                .fetch(
                    &key.namespace,
                    &placed.model_configmaps,
                    &self.caches.configmaps(&key.namespace),
                )
                .await;
            match result {
                Ok(model) => {
                    timings.model_fetch.insert(key.clone(), model.elapsed);
                    for configmap in model.configmaps {
                        if let Some(cm_key) = object_key(&configmap.metadata) {
                            fetched.configmaps.insert(cm_key, configmap);
                        }
                    }
                    fetched.services.push(function_service(&placed.service));
                }
                Err(error) => {
                    let error = publish::error_text(&error);
                    tracing::warn!(function = %key, %error, "cannot read the model ConfigMaps; retrying");
                    self.shared.metrics.error("model_fetch");
                    fetched.failures.insert(key.clone(), error);
                }
            }
        }
        let wanted: BTreeSet<FunctionKey> = plan
            .placed
            .iter()
            .flat_map(|(key, p)| {
                p.model_configmaps.iter().map(|name| FunctionKey {
                    namespace: key.namespace.clone(),
                    name: name.clone(),
                })
            })
            .collect();
        self.models.retain(&wanted);
        fetched
    }

    /// Resolves the functions in memory unless the input is what was resolved last; returns
    /// whether `last_render` holds the current input.
    async fn render_if_changed(
        &mut self,
        services: Vec<Service>,
        configmaps: &BTreeMap<FunctionKey, Arc<ConfigMap>>,
        timings: &mut PassTimings,
    ) -> bool {
        let input = RenderInput {
            services,
            configmaps: configmaps
                .iter()
                .map(|(k, cm)| (k.clone(), cm.metadata.uid.clone(), cm.metadata.resource_version.clone()))
                .collect(),
        };
        if self.last_render.as_ref().is_some_and(|(last, _)| *last == input) {
            return true;
        }
        let started = Instant::now();
        let configmaps: Vec<Arc<ConfigMap>> = configmaps.values().cloned().collect();
        let (services, resolver_configmaps, options) = (
            input.services.clone(),
            configmaps.clone(),
            self.config.parse_options.clone(),
        );
        // Off the runtime: assembling and hashing a large model takes a while.
        let result =
            tokio::task::spawn_blocking(move || resolve_functions(&services, &resolver_configmaps, &options)).await;
        timings.validation = started.elapsed();
        let error = match result {
            Ok(manifest) => {
                if self.state_dir.is_some() {
                    self.unwritten_state = Some((input.services.clone(), configmaps));
                }
                self.last_render = Some((input, manifest));
                return true;
            }
            Err(error) => format!("resolver failed: {error}"),
        };
        tracing::error!(%error, "cannot resolve the functions; the running ones keep serving");
        self.shared.metrics.error("render");
        self.server.report_source_error(error);
        false
    }

    /// Writes the objects resolved last into the state directory, when one is configured and
    /// they changed since the last successful write. Nothing reads it back: a failure only
    /// leaves the operators' copy stale, and it is retried like any failed write.
    async fn write_state_dir(&mut self, write_failed: &mut bool) {
        let (Some(dir), Some((services, configmaps))) = (self.state_dir.clone(), self.unwritten_state.take()) else {
            return;
        };
        let (written_services, written_configmaps) = (services.clone(), configmaps.clone());
        let result =
            tokio::task::spawn_blocking(move || write_state_dir(&dir, &written_services, &written_configmaps)).await;
        let error = match result {
            Ok(Ok(())) => return,
            Ok(Err(error)) => error.to_string(),
            Err(error) => format!("state directory writer failed: {error}"),
        };
        tracing::warn!(%error, "cannot write the state directory; retrying");
        self.shared.metrics.error("state_dir");
        self.unwritten_state = Some((services, configmaps));
        *write_failed = true;
    }

    /// Starts draining functions that are no longer placed here, marks their endpoints
    /// terminating, and lets drains whose delay has passed end.
    async fn update_drains(&mut self, plan: &Plan, write_failed: &mut bool) {
        let now = Instant::now();
        self.draining.retain(|key, _| !plan.placed.contains_key(key));
        for (key, function) in &self.running {
            if plan.placed.contains_key(key) || self.draining.contains_key(key) {
                continue;
            }
            let Some((service, mode)) = self.known.get(key).cloned() else {
                continue;
            };
            tracing::info!(function = %key, delay = ?self.config.drain_delay, "no longer placed here: draining");
            self.draining.insert(
                key.clone(),
                Draining {
                    function: function.clone(),
                    service,
                    mode,
                    until: now + self.config.drain_delay,
                },
            );
        }
        // Traffic must stop before the port closes: mark the endpoints first.
        let own = self.own_slices_by_name();
        for (key, draining) in self.draining.iter().filter(|(_, d)| d.mode == PlacementMode::Managed) {
            let Some(wanted) = desired_slice(
                &draining.service,
                &self.config.host,
                self.config.oip_port,
                EndpointState::DRAINING,
            ) else {
                continue;
            };
            let name = keys::slice_name(&key.name, &self.config.host.name);
            let observed = own.get(&(key.namespace.clone(), name));
            if let Some(observed) = observed
                && !up_to_date(observed, &wanted)
                && let Err(error) = publish::apply_slice(&self.client, &wanted).await
            {
                tracing::warn!(error = %publish::error_text(&error), "cannot mark a draining endpoint; retrying");
                self.shared.metrics.error("slice");
                *write_failed = true;
            }
        }
        self.draining.retain(|key, draining| {
            let done = draining.until <= now;
            if done {
                tracing::info!(function = %key, "drain delay over: closing");
            }
            !done
        });
    }

    /// Keeps `running` equal to what the server actually serves.
    fn track_running(&mut self, status: &HostStatus, desired: &BTreeMap<FunctionKey, ManifestFunction>) {
        for (key, function_status) in &status.functions {
            match function_status {
                FunctionStatus::Serving { .. } => {
                    if let Some(function) = desired.get(key) {
                        self.running.insert(key.clone(), function.clone());
                    }
                }
                FunctionStatus::Failed {
                    serving_previous: None, ..
                } => {
                    self.running.remove(key);
                }
                FunctionStatus::Failed {
                    serving_previous: Some(_),
                    ..
                } => {}
            }
        }
        self.running.retain(|key, _| status.functions.contains_key(key));
        self.known
            .retain(|key, _| status.functions.contains_key(key) || self.draining.contains_key(key));
    }

    /// Connects to every serving port not yet known to answer; returns those that answered
    /// for the first time.
    async fn probe(&mut self, status: &HostStatus, timings: &mut PassTimings) -> BTreeSet<FunctionKey> {
        let mut newly = BTreeSet::new();
        self.answering.retain(|key, addr| status.addr(key) == Some(*addr));
        for key in status.functions.keys() {
            let Some(addr) = status.addr(key) else { continue };
            if self.answering.contains_key(key) {
                continue;
            }
            let target = SocketAddr::new(probe_ip(addr.ip(), self.config.host.advertise), addr.port());
            let started = Instant::now();
            let connected = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(target)).await;
            if let Ok(Ok(_stream)) = connected {
                timings.probe.insert(key.clone(), started.elapsed());
                timings.answered_at.insert(key.clone(), Instant::now());
                self.answering.insert(key.clone(), addr);
                newly.insert(key.clone());
            } else {
                tracing::debug!(function = %key, %target, "port not answering yet");
            }
        }
        newly
    }

    /// Publishes the host's slice of every managed function placed here (ready once its port
    /// answers) and deletes slices of functions that are neither placed here nor draining.
    async fn publish_slices(&mut self, plan: &Plan, write_failed: &mut bool) {
        let own = self.own_slices_by_name();
        let mut keep = BTreeSet::new();
        for (key, placed) in plan.placed.iter().filter(|(_, p)| p.mode == PlacementMode::Managed) {
            let state = if self.answering.contains_key(key) {
                EndpointState::READY
            } else {
                EndpointState::NOT_READY
            };
            let Some(wanted) = desired_slice(&placed.service, &self.config.host, self.config.oip_port, state) else {
                continue;
            };
            let id = (key.namespace.clone(), wanted.metadata.name.clone().unwrap_or_default());
            let current = own.get(&id).is_some_and(|observed| up_to_date(observed, &wanted));
            keep.insert(id);
            if current {
                continue;
            }
            if let Err(error) = publish::apply_slice(&self.client, &wanted).await {
                tracing::warn!(function = %key, error = %publish::error_text(&error), "cannot publish the endpoint; retrying");
                self.shared.metrics.error("slice");
                *write_failed = true;
            }
        }
        for (key, draining) in &self.draining {
            if draining.mode == PlacementMode::Managed {
                keep.insert((
                    key.namespace.clone(),
                    keys::slice_name(&key.name, &self.config.host.name),
                ));
            }
        }
        for (namespace, name) in own.keys() {
            if keep.contains(&(namespace.clone(), name.clone())) {
                continue;
            }
            tracing::info!(slice = %name, %namespace, "removing the endpoint of a function no longer served here");
            if let Err(error) = publish::delete_slice(&self.client, namespace, name).await {
                tracing::warn!(error = %publish::error_text(&error), "cannot delete the endpoint; retrying");
                self.shared.metrics.error("slice");
                *write_failed = true;
            }
        }
    }

    fn next_pause(
        &mut self,
        status: &HostStatus,
        rejected: &BTreeMap<FunctionKey, SpecError>,
        failed: bool,
    ) -> Duration {
        let now = Instant::now();
        let resync = self.config.resync_interval;
        // Loads that failed for reasons outside the manifest (a port in use, the device) are
        // retried at the resync interval.
        let load_failed = status
            .functions
            .iter()
            .any(|(key, s)| matches!(s, FunctionStatus::Failed { .. }) && !rejected.contains_key(key));
        self.retry_loads_at = match (load_failed, self.retry_loads_at) {
            (false, _) => None,
            (true, Some(at)) if at > now => Some(at),
            (true, _) => Some(now + resync),
        };
        let mut pause = resync;
        if let Some(at) = self.retry_loads_at {
            pause = pause.min(at - now);
        }
        if failed {
            self.failed_passes = self.failed_passes.saturating_add(1);
            let backoff = FIRST_RETRY.saturating_mul(1 << self.failed_passes.min(10).saturating_sub(1));
            pause = pause.min(backoff);
        } else {
            self.failed_passes = 0;
        }
        let unanswered = status
            .functions
            .keys()
            .any(|k| status.addr(k).is_some() && !self.answering.contains_key(k));
        if unanswered {
            // Quick at first (a port usually answers at once), then backing off.
            self.unanswered_passes = self.unanswered_passes.saturating_add(1);
            pause = pause.min(PROBE_RETRY.saturating_mul(1 << (self.unanswered_passes / 10).min(8)));
        } else {
            self.unanswered_passes = 0;
        }
        if let Some(until) = self.draining.values().map(|d| d.until).min() {
            pause = pause.min(until.saturating_duration_since(now));
        }
        pause
    }
}

/// Resolves once `stop` says so (or its sender is gone).
pub(crate) async fn stopped(stop: &mut signal::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here, not across the caller's await.
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

fn slice_key(slice: &EndpointSlice) -> FunctionKey {
    let name = slice
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(keys::SERVICE_NAME_LABEL))
        .cloned()
        .unwrap_or_default();
    FunctionKey {
        namespace: slice.metadata.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        name,
    }
}

/// Where to reach a port bound to `bound`: the advertised address when it was bound to every
/// interface (and the families match), else the loopback of its family.
fn probe_ip(bound: IpAddr, advertise: IpAddr) -> IpAddr {
    if !bound.is_unspecified() {
        return bound;
    }
    match (bound, advertise) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => advertise,
        (IpAddr::V4(_), _) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        (IpAddr::V6(_), _) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    }
}
