//! `vknf agent`: the Kubernetes node agent of a GPU host (or, with `--watchdog`, the watchdog
//! that marks the endpoints of dead hosts not ready). See docs/kubernetes.md.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use vknf_k8s::daemon::{DaemonOptions, Role, run_blocking};
use vknf_k8s::host::{HostIdentity, parse_labels};
use vknf_k8s::{AgentConfig, WatchdogConfig};
use vknf_server::cpu::CpuLoader;
use vknf_server::manifest::ParseOptions;
use vknf_server::{FunctionLoader, ServerConfig};

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
    /// Watch functions in this namespace only (default: every namespace).
    #[arg(long)]
    pub namespace: Option<String>,
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
    /// Run forest functions with the CPU reference predictor instead of the GPU.
    #[arg(long)]
    pub cpu: bool,
    /// Device for the GPU loader: index, UUID or part of the name.
    #[arg(long)]
    pub device: Option<String>,
    /// Serve /metrics, /livez and /readyz here, e.g. 0.0.0.0:9090.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Address the function ports are bound on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Batches in flight per function.
    #[arg(long, default_value_t = 3)]
    pub lanes: usize,
    /// Longest a batch waits to fill up, in microseconds, unless the Service says otherwise.
    #[arg(long, default_value_t = 200)]
    pub max_wait_us: u64,
    /// Microseconds a lane thread that has just finished a batch polls for the next one before it
    /// sleeps (waking a sleeping thread adds to the next request's latency); 0 never polls. Default:
    /// 2000 on a GPU, 0 with --cpu or a CPU Vulkan device (where polling takes a core from the work).
    #[arg(long)]
    pub lane_spin_us: Option<u64>,
    /// Open connections across all functions.
    #[arg(long, default_value_t = 4096)]
    pub max_connections: usize,
    /// Input MiB a function may have queued before answering BUSY.
    #[arg(long, default_value_t = 64)]
    pub max_queued_mib: usize,
    /// Largest model in MiB.
    #[arg(long, default_value_t = 256)]
    pub max_model_mib: usize,
    /// Seconds removals, replacements and shutdown wait for in-flight requests.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
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
        let mut config = AgentConfig::new(host);
        config.namespace = self.namespace.clone();
        config.lease_namespace = self.lease_namespace.clone();
        config.lease_duration = Duration::from_secs(self.lease_duration_s.max(3));
        config.resync_interval = Duration::from_secs(self.resync_s.max(1));
        config.drain_delay = Duration::from_secs(self.drain_delay_s);
        config.state_dir = state_dir;
        config.parse_options = ParseOptions {
            max_model_bytes: self.max_model_mib << 20,
            allow_ephemeral_ports: false,
        };
        config.server = ServerConfig {
            bind_ip: self.bind,
            max_connections: self.max_connections.max(1),
            max_queued_bytes: self.max_queued_mib << 20,
            lanes_per_function: self.lanes.max(1),
            default_max_wait: Duration::from_micros(self.max_wait_us),
            lane_spin: self.lane_spin_us.map(Duration::from_micros),
            drain_timeout: Duration::from_secs(self.drain_timeout_s),
            ..ServerConfig::default()
        };
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
            namespace: self.namespace.clone(),
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
    let role = if args.watchdog {
        Role::Watchdog(args.watchdog_config()?)
    } else {
        let loader: Arc<dyn FunctionLoader> = match (args.cpu, gpu) {
            (true, _) => Arc::new(CpuLoader),
            (false, Some(gpu)) => gpu,
            (false, None) => anyhow::bail!("no GPU loader in this build; pass --cpu to serve with the CPU"),
        };
        Role::Agent {
            config: Box::new(args.agent_config()?),
            loader,
        }
    };
    Ok(run_blocking(DaemonOptions {
        kubeconfig: args.kubeconfig.clone(),
        metrics_addr: args.metrics_addr,
        role,
    })?)
}
