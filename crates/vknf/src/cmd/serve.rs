//! `vknf serve`: serves the network functions of a manifest directory.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use vknf_server::cpu::CpuLoader;
use vknf_server::daemon::{ServeOptions, serve_blocking};
use vknf_server::manifest::{ParseOptions, Placement};
use vknf_server::{DirectorySource, FunctionLoader, ServerConfig};

/// Arguments of `vknf serve`.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Directory of Kubernetes manifests (Service + ConfigMaps + EndpointSlices per function).
    #[arg(long)]
    pub manifests: PathBuf,
    /// Serve every function, wherever its endpoints point.
    #[arg(long, conflicts_with = "host_address")]
    pub all: bool,
    /// This host's addresses; a function is served when one of its endpoints is among them
    /// (default: the addresses of every local interface).
    #[arg(long = "host-address", value_name = "IP")]
    pub host_address: Vec<IpAddr>,
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
    /// How often the manifest directory is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// Batches in flight per function.
    #[arg(long, default_value_t = 3)]
    pub lanes: usize,
    /// Longest a batch waits to fill up, in microseconds, unless the manifest says otherwise.
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
    /// Requests one connection may have in flight.
    #[arg(long, default_value_t = 256)]
    pub max_in_flight: usize,
    /// Input MiB a function may have queued before answering BUSY.
    #[arg(long, default_value_t = 64)]
    pub max_queued_mib: usize,
    /// Largest frame payload in MiB.
    #[arg(long, default_value_t = 16)]
    pub max_frame_mib: u32,
    /// Largest model in MiB.
    #[arg(long, default_value_t = 256)]
    pub max_model_mib: usize,
    /// Seconds before an idle connection is closed.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_s: u64,
    /// Seconds a write may block before a client that does not read is dropped.
    #[arg(long, default_value_t = 10)]
    pub write_timeout_s: u64,
    /// Seconds shutdown and reloads wait for in-flight requests.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
}

impl ServeArgs {
    fn options(&self) -> anyhow::Result<ServeOptions> {
        anyhow::ensure!(
            self.max_frame_mib >= 1 && self.max_frame_mib <= 1024,
            "--max-frame-mib must be 1..=1024"
        );
        let placement = if self.all {
            Placement::All
        } else if self.host_address.is_empty() {
            Placement::local_addresses().context("cannot list this host's addresses (use --host-address or --all)")?
        } else {
            Placement::Addresses(self.host_address.clone())
        };
        Ok(ServeOptions {
            source: DirectorySource {
                dir: self.manifests.clone(),
                placement,
                options: ParseOptions {
                    max_model_bytes: self.max_model_mib << 20,
                    allow_ephemeral_ports: false,
                },
                poll_interval: Duration::from_millis(self.poll_ms.max(10)),
            },
            config: ServerConfig {
                bind_ip: self.bind,
                max_payload: self.max_frame_mib << 20,
                max_connections: self.max_connections.max(1),
                max_in_flight_per_connection: self.max_in_flight.max(1),
                max_queued_bytes: self.max_queued_mib << 20,
                lanes_per_function: self.lanes.max(1),
                default_max_wait: Duration::from_micros(self.max_wait_us),
                lane_spin: self.lane_spin_us.map(Duration::from_micros),
                idle_timeout: Duration::from_secs(self.idle_timeout_s),
                read_timeout: Duration::from_secs(10),
                write_timeout: Duration::from_secs(self.write_timeout_s.max(1)),
                drain_timeout: Duration::from_secs(self.drain_timeout_s),
            },
            metrics_addr: self.metrics_addr,
        })
    }
}

/// Runs `vknf serve`; `gpu` is the loader used unless `--cpu` is given.
pub fn run_with_loader(args: ServeArgs, gpu: Option<Arc<dyn FunctionLoader>>) -> anyhow::Result<()> {
    let options = args.options()?;
    let loader: Arc<dyn FunctionLoader> = match (args.cpu, gpu) {
        (true, _) => Arc::new(CpuLoader),
        (false, Some(gpu)) => gpu,
        (false, None) => anyhow::bail!("no GPU loader in this build; pass --cpu to serve with the CPU"),
    };
    serve_blocking(options, loader)
}
