//! `vknf agent`: the Kubernetes node agent of a GPU host (or, with `--watchdog`, the watchdog
//! that marks the endpoints of dead hosts not ready). See docs/kubernetes.md.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use vknf_functions::FunctionLoader;
use vknf_k8s::daemon::{DaemonOptions, Role, run_blocking};
use vknf_k8s::host::{HostIdentity, parse_labels};
use vknf_k8s::{AgentConfig, WatchdogConfig};

use super::data_plane::DataPlaneArgs;

/// Arguments of `vknf agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct AgentArgs {
    /// Kubeconfig of the agent's ServiceAccount (default: KUBECONFIG, ~/.kube/config, then the
    /// in-cluster environment).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Run the watchdog instead of the node agent: mark the endpoints of hosts whose Lease
    /// expired not ready (run one or more replicas; they elect a leader).
    #[arg(long)]
    pub watchdog: bool,
    /// This host's name in Leases, EndpointSlices and status annotations (default: the system
    /// host name, lower-cased).
    #[arg(long)]
    pub host_name: Option<String>,
    /// This host's addresses; hand-written Endpoints naming one place functions here, and the
    /// first is published in the host's EndpointSlices (default: every local interface address,
    /// routable IPv4 first).
    #[arg(long = "address", value_name = "IP")]
    pub addresses: Vec<IpAddr>,
    /// A host label matched by the `vknf.io/hosts` selector of functions, e.g. `gpu=h100`.
    #[arg(long = "host-label", value_name = "KEY=VALUE")]
    pub host_labels: Vec<String>,
    /// Watch functions in this namespace (repeatable; default: every namespace, which needs
    /// cluster-wide permissions: deploy/rbac.yaml grants them per namespace).
    #[arg(long = "namespace", value_name = "NS")]
    pub namespaces: Vec<String>,
    /// Namespace of the host and watchdog Leases.
    #[arg(long, default_value = "vknf-system")]
    pub lease_namespace: String,
    /// Host Lease duration in seconds (renewed every third of it); also the watchdog's expiry
    /// for hosts whose Lease declares none.
    #[arg(long, default_value_t = 40)]
    pub lease_duration_s: u64,
    /// Longest time between two reconcile passes, in seconds.
    #[arg(long, default_value_t = 30)]
    pub resync_s: u64,
    /// Seconds a function no longer placed here keeps serving, marked not ready, before its port
    /// closes.
    #[arg(long, default_value_t = 5)]
    pub drain_delay_s: u64,
    /// Where the rendered manifests are kept (default: $RUNTIME_DIRECTORY/manifests under
    /// systemd, else none).
    #[arg(long)]
    pub state_dir: Option<PathBuf>,
    /// The server's flags.
    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
    /// The watchdog's identity in its leader election (default: host name and process id).
    #[arg(long)]
    pub identity: Option<String>,
    /// How often the watchdog checks the host Leases, in seconds.
    #[arg(long, default_value_t = 5)]
    pub watchdog_period_s: u64,
}

impl AgentArgs {
    fn agent_config(&self) -> anyhow::Result<AgentConfig> {
        let labels = parse_labels(self.host_labels.iter().map(String::as_str))?;
        let host = HostIdentity::detect(self.host_name.as_deref(), self.addresses.clone(), labels)?;
        let state_dir = self
            .state_dir
            .clone()
            .or_else(|| std::env::var_os("RUNTIME_DIRECTORY").map(|dir| PathBuf::from(dir).join("manifests")));
        // Function ports bind the host's address among their endpoints, else the advertised one.
        let (addresses, advertise) = (host.addresses.clone(), host.advertise);
        let mut config = AgentConfig::new(host);
        config.namespaces = self.namespaces.clone();
        config.lease_namespace = self.lease_namespace.clone();
        config.lease_duration = Duration::from_secs(self.lease_duration_s.max(3));
        config.resync_interval = Duration::from_secs(self.resync_s.max(1));
        config.drain_delay = Duration::from_secs(self.drain_delay_s);
        config.state_dir = state_dir;
        config.parse_options = self.data_plane.parse_options();
        config.server = self.data_plane.server_config(addresses, Some(advertise))?;
        if let Some(addr) = self.data_plane.oip_addr {
            // The port goes into every EndpointSlice: it must be the one the host listens on.
            anyhow::ensure!(
                addr.port() != 0,
                "--oip-addr needs a fixed port for the agent to publish"
            );
            config.oip_port = Some(addr.port());
        }
        Ok(config)
    }

    fn watchdog_config(&self) -> anyhow::Result<WatchdogConfig> {
        let identity = match &self.identity {
            Some(identity) => identity.clone(),
            None => {
                let host = hostname_lossy().context("cannot read the host name (pass --identity)")?;
                format!("{host}-{}", std::process::id())
            }
        };
        Ok(WatchdogConfig {
            identity,
            lease_namespace: self.lease_namespace.clone(),
            namespaces: self.namespaces.clone(),
            lease_duration: Duration::from_secs(15),
            host_lease_duration: Duration::from_secs(self.lease_duration_s.max(3)),
            period: Duration::from_secs(self.watchdog_period_s.max(1)),
        })
    }
}

fn hostname_lossy() -> anyhow::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::env::var("HOSTNAME"))
        .context("no /proc/sys/kernel/hostname and no HOSTNAME")?
        .trim()
        .to_lowercase())
}

/// Runs `vknf agent`: the watchdog with `--watchdog`, else the node agent with the CPU loader
/// (`--cpu`) or `gpu`.
pub fn run_with_loader(args: AgentArgs, gpu: Option<Arc<dyn FunctionLoader>>) -> anyhow::Result<()> {
    // The operations endpoint shares the agent's TLS set-up (and so its handshake metrics).
    let (role, ops_tls) = if args.watchdog {
        let tls = args.data_plane.tls()?;
        args.data_plane.check_metrics_addr(tls.is_some())?;
        (Role::Watchdog(args.watchdog_config()?), tls)
    } else {
        let loader = args.data_plane.loader(gpu)?;
        let config = args.agent_config()?;
        let tls = config.server.tls.clone();
        (
            Role::Agent {
                config: Box::new(config),
                loader,
            },
            tls,
        )
    };
    Ok(run_blocking(DaemonOptions {
        kubeconfig: args.kubeconfig.clone(),
        ops_tls,
        metrics_addr: args.data_plane.metrics_addr,
        oip_addr: if args.watchdog { None } else { args.data_plane.oip_addr },
        role,
    })?)
}
