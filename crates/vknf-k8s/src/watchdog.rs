//! `vknf agent --watchdog`: marks the EndpointSlices of hosts whose Lease expired not ready, so
//! traffic stops going to a host whose agent died (a dead agent cannot say so itself). Runs as
//! any number of replicas; one leads through the `vknf-watchdog` Lease.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, PostParams};
use kube::{Api, Client};
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::keys;
use crate::lease::{LeaderElection, LeaseObserver};
use crate::metrics::{AgentMetrics, encode};
use crate::slices::{any_ready, marked_unreachable, slice_host};

/// How the watchdog runs.
#[derive(Debug, Clone)]
pub struct WatchdogConfig {
    /// This replica's identity in the leader election.
    pub identity: String,
    /// Namespace of the host Leases and of the watchdog's own Lease.
    pub lease_namespace: String,
    /// Namespaces whose slices are checked (empty: all, which needs a cluster-wide `list`).
    pub namespaces: Vec<String>,
    /// Duration of the watchdog's own Lease.
    pub lease_duration: Duration,
    /// Expiry of a host without a Lease, or whose Lease declares no duration.
    pub host_lease_duration: Duration,
    /// How often hosts are checked.
    pub period: Duration,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            identity: format!("watchdog-{}", std::process::id()),
            lease_namespace: "vknf-system".to_owned(),
            namespaces: Vec::new(),
            lease_duration: Duration::from_secs(15),
            host_lease_duration: Duration::from_secs(40),
            period: Duration::from_secs(5),
        }
    }
}

/// A running watchdog.
pub struct Watchdog {
    task: JoinHandle<()>,
    stop: watch::Sender<bool>,
    metrics: AgentMetrics,
    registry: Arc<Registry>,
}

impl Watchdog {
    /// Starts competing for leadership and, while leading, checking hosts every period.
    pub fn start(client: Client, config: WatchdogConfig) -> Watchdog {
        let metrics = AgentMetrics::default();
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(client, config, metrics.clone(), stopped));
        Watchdog {
            task,
            stop,
            metrics,
            registry: Arc::new(registry),
        }
    }

    /// The watchdog's metrics.
    pub fn metrics(&self) -> &AgentMetrics {
        &self.metrics
    }

    /// The metrics in OpenMetrics text.
    pub fn encode_metrics(&self) -> String {
        encode(&self.registry)
    }

    /// What the operations endpoint serves for the watchdog.
    pub fn ops_source(&self) -> crate::ops::OpsSource {
        let registry = self.registry.clone();
        crate::ops::OpsSource {
            metrics: Arc::new(move || encode(&registry)),
            readiness: Arc::new(|| Ok("ok\n".to_owned())),
        }
    }

    /// Stops and hands leadership over.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(client: Client, config: WatchdogConfig, metrics: AgentMetrics, mut stop: watch::Receiver<bool>) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), &config.lease_namespace);
    let mut election = LeaderElection::new(
        leases.clone(),
        keys::WATCHDOG_LEASE,
        &config.identity,
        config.lease_duration,
    );
    let slices: Vec<Api<EndpointSlice>> = if config.namespaces.is_empty() {
        vec![Api::all(client)]
    } else {
        let unique: BTreeSet<&String> = config.namespaces.iter().collect();
        unique.into_iter().map(|n| Api::namespaced(client.clone(), n)).collect()
    };
    let mut observer = LeaseObserver::default();
    let mut leading = false;
    // Renew well within the Lease duration; check hosts at the configured period.
    let tick = config
        .period
        .min(config.lease_duration / 3)
        .max(Duration::from_millis(50));
    loop {
        match election.try_lead().await {
            Ok(now_leading) => {
                if now_leading != leading {
                    tracing::info!(identity = %config.identity, leading = now_leading, "watchdog leadership changed");
                    // A new leader has no history: every host gets a full Lease duration of grace.
                    observer = LeaseObserver::default();
                }
                leading = now_leading;
            }
            Err(error) => {
                tracing::warn!(%error, "watchdog cannot reach its Lease");
                metrics.error("watchdog");
                leading = false;
            }
        }
        metrics.watchdog_leader.set(i64::from(leading));
        if leading && let Err(error) = check_hosts(&slices, &leases, &config, &mut observer, &metrics).await {
            tracing::warn!(%error, "watchdog check failed; retrying");
            metrics.error("watchdog");
        }
        tokio::select! {
            () = tokio::time::sleep(tick) => {}
            () = crate::agent::stopped(&mut stop) => break,
        }
    }
    if leading && let Err(error) = election.release().await {
        tracing::warn!(%error, "cannot release the watchdog Lease; another replica takes over when it expires");
    }
    metrics.watchdog_leader.set(0);
}

/// One pass: every agent-published slice whose host's Lease expired is marked not ready.
async fn check_hosts(
    slices: &[Api<EndpointSlice>],
    leases: &Api<Lease>,
    config: &WatchdogConfig,
    observer: &mut LeaseObserver,
    metrics: &AgentMetrics,
) -> Result<(), kube::Error> {
    let selector = format!("{}={}", keys::MANAGED_BY_LABEL, keys::MANAGED_BY_AGENT);
    let mut by_host: BTreeMap<String, Vec<EndpointSlice>> = BTreeMap::new();
    for scope in slices {
        let published = scope.list(&ListParams::default().labels(&selector)).await?;
        for slice in published.items {
            if let Some(host) = slice_host(&slice) {
                by_host.entry(host.to_owned()).or_default().push(slice);
            }
        }
    }
    let Some(client) = slices.first().map(|api| api.clone().into_client()) else {
        return Ok(());
    };
    let host_leases: BTreeMap<String, Lease> = leases
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|lease| Some((lease.metadata.name.clone()?, lease)))
        .collect();
    let now = Instant::now();
    let names: BTreeSet<String> = by_host.keys().map(|h| keys::host_lease_name(h)).collect();
    observer.retain(|name| names.contains(name));
    for (host, host_slices) in by_host {
        let lease_name = keys::host_lease_name(&host);
        if !observer.expired(
            &lease_name,
            host_leases.get(&lease_name),
            config.host_lease_duration,
            now,
        ) {
            continue;
        }
        for slice in host_slices.iter().filter(|s| any_ready(s)) {
            let (Some(name), Some(namespace)) = (&slice.metadata.name, &slice.metadata.namespace) else {
                continue;
            };
            let api: Api<EndpointSlice> = Api::namespaced(client.clone(), namespace);
            // A replace carries the resourceVersion read above: if the agent came back and
            // rewrote its slice meanwhile, this fails with 409 and the slice is left alone.
            let params = PostParams {
                field_manager: Some(keys::WATCHDOG_FIELD_MANAGER.to_owned()),
                ..Default::default()
            };
            match api.replace(name, &params, &marked_unreachable(slice)).await {
                Ok(_) => {
                    tracing::warn!(%host, slice = %name, %namespace, "host Lease expired: endpoint marked not ready");
                    metrics.watchdog_marked.inc();
                }
                Err(kube::Error::Api(status)) if status.code == 409 || status.code == 404 => {}
                Err(error) => return Err(error),
            }
        }
    }
    Ok(())
}
