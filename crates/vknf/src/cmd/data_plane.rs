//! The data-plane flags `vknf serve` and `vknf agent` share: which loader, where ports and metrics
//! listen, batching, and the server's limits.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use vknf_functions::CpuLoader;
use vknf_functions::FunctionLoader;
use vknf_manifest::ParseOptions;
use vknf_server::ServerConfig;

/// Flags of the network-function server, flattened into `vknf serve` and `vknf agent`.
#[derive(clap::Args, Debug, Clone)]
pub struct DataPlaneArgs {
    /// Run forest functions with the CPU reference predictor instead of the GPU.
    #[arg(long)]
    pub cpu: bool,
    /// Devices for the GPU loader: `all` (every GPU of the host), or a comma-separated list of
    /// indices, UUIDs or parts of names as `vknf devices` shows them (default: $VKNF_DEVICES, then
    /// $VKNF_DEVICE, else the best device). A function's batches spread over all of them.
    #[arg(long, alias = "device", value_name = "all|LIST")]
    pub devices: Option<String>,
    /// Serve /metrics, /livez and /readyz here, e.g. 0.0.0.0:9090.
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the Open Inference Protocol (KServe v2: REST and gRPC, HTTP/1.1 and h2c) for every
    /// function of the host by name on this address, e.g. 0.0.0.0:8080 (default: not served).
    #[arg(long, value_name = "HOST:PORT")]
    pub oip_addr: Option<SocketAddr>,
    /// Address the function ports are bound on.
    #[arg(long, default_value = "0.0.0.0")]
    pub bind: IpAddr,
    /// Batches in flight per function.
    #[arg(long, default_value_t = 3)]
    pub lanes: usize,
    /// Longest a batch waits to fill up, in microseconds, unless the function says otherwise.
    #[arg(long, default_value_t = 200)]
    pub max_wait_us: u64,
    /// Microseconds a lane thread that has just finished a batch polls for the next one before it
    /// sleeps: spares the next request a thread wake-up, but takes a core while it polls (worth it
    /// only on hosts with cores to spare).
    #[arg(long, default_value_t = 0)]
    pub lane_spin_us: u64,
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
    /// MiB of the process's memory budget: requests being received, queued calls and answers not yet
    /// read, across every function and both front ends. One connection may hold an eighth of it;
    /// past it requests are answered BUSY (or 503 / RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = 1024)]
    pub memory_budget_mib: usize,
    /// Largest model in MiB.
    #[arg(long, default_value_t = 256)]
    pub max_model_mib: usize,
    /// Seconds before an idle connection is closed.
    #[arg(long, default_value_t = 300)]
    pub idle_timeout_s: u64,
    /// Seconds a write may block before a client that does not read is dropped.
    #[arg(long, default_value_t = 10)]
    pub write_timeout_s: u64,
    /// Seconds removals, replacements and shutdown wait for in-flight requests.
    #[arg(long, default_value_t = 30)]
    pub drain_timeout_s: u64,
    /// Seconds a function whose kernel missed its deadline is quarantined the first time (doubling
    /// with each further miss, up to 10 minutes).
    #[arg(long, default_value_t = 30)]
    pub quarantine_s: u64,
}

impl DataPlaneArgs {
    /// The server's configuration.
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        anyhow::ensure!(
            (1..=1024).contains(&self.max_frame_mib),
            "--max-frame-mib must be 1..=1024"
        );
        anyhow::ensure!(
            self.memory_budget_mib / vknf_runtime::MemoryBudget::CLIENT_SHARE_DIVISOR >= self.max_frame_mib as usize,
            "--memory-budget-mib ({}) must be at least {} x --max-frame-mib ({}): one connection may hold \
             an eighth of the budget and must be able to send the largest frame",
            self.memory_budget_mib,
            vknf_runtime::MemoryBudget::CLIENT_SHARE_DIVISOR,
            self.max_frame_mib
        );
        Ok(ServerConfig {
            bind_ip: self.bind,
            max_payload: self.max_frame_mib << 20,
            max_connections: self.max_connections.max(1),
            max_in_flight_per_connection: self.max_in_flight.max(1),
            max_queued_bytes: self.max_queued_mib << 20,
            memory_budget: self.memory_budget_mib << 20,
            lanes_per_function: self.lanes.max(1),
            default_max_wait: Duration::from_micros(self.max_wait_us),
            lane_spin: Duration::from_micros(self.lane_spin_us),
            idle_timeout: Duration::from_secs(self.idle_timeout_s),
            read_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(self.write_timeout_s.max(1)),
            drain_timeout: Duration::from_secs(self.drain_timeout_s),
            quarantine_backoff: Duration::from_secs(self.quarantine_s.max(1)),
        })
    }

    /// Limits applied to the functions' manifests.
    pub fn parse_options(&self) -> ParseOptions {
        ParseOptions {
            max_model_bytes: self.max_model_mib << 20,
            ..ParseOptions::default()
        }
    }

    /// The CPU loader with `--cpu`, else `gpu`.
    pub fn loader(&self, gpu: Option<Arc<dyn FunctionLoader>>) -> anyhow::Result<Arc<dyn FunctionLoader>> {
        match (self.cpu, gpu) {
            (true, _) => Ok(Arc::new(CpuLoader::default())),
            (false, Some(gpu)) => Ok(gpu),
            (false, None) => anyhow::bail!("no GPU loader in this build; pass --cpu to serve with the CPU"),
        }
    }
}
