//! The data-plane flags `vknf serve` and `vknf agent` share: which loader, where ports and metrics
//! listen, batching, and the server's limits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;

use vknf_functions::CpuLoader;
use vknf_functions::FunctionLoader;
use vknf_manifest::ParseOptions;
use vknf_server::{BindAddress, ServerConfig};
use vknf_tls::{ServerTls, ServerTlsFiles};

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
    /// Serve /metrics, /livez and /readyz here, e.g. 10.0.0.7:9090 (over TLS with --tls-cert).
    #[arg(long)]
    pub metrics_addr: Option<SocketAddr>,
    /// Serve the Open Inference Protocol (KServe v2: REST and gRPC, HTTP/1.1 and h2c) for every
    /// function of the host by name on this address, e.g. 10.0.0.7:8080 (default: not served; over
    /// TLS with --tls-cert, ALPN h2 and http/1.1).
    #[arg(long, value_name = "HOST:PORT")]
    pub oip_addr: Option<SocketAddr>,
    /// Bind every function port on this address (default: each function's port on this host's
    /// address among the function's endpoints).
    #[arg(long, value_name = "IP", conflicts_with = "bind_all")]
    pub bind: Option<IpAddr>,
    /// Bind every function port on every address of the host (0.0.0.0).
    #[arg(long)]
    pub bind_all: bool,
    /// TLS on every port (function ports, --oip-addr, --metrics-addr): the server's certificate
    /// chain, PEM.
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, PEM.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Require client certificates signed by these CA certificates (PEM) on every port.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Seconds a client has to complete its TLS handshake.
    #[arg(long, default_value_t = 10)]
    pub tls_handshake_timeout_s: u64,
    /// Serve without TLS on addresses other than loopback ones (refused by default).
    #[arg(long)]
    pub allow_plaintext: bool,
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
    /// The server's configuration. Function ports bind `--bind`, every address with `--bind-all`,
    /// else the address among each function's endpoints that is one of `host_addresses` (any
    /// endpoint the host can bind when empty), or `otherwise` for functions whose endpoints name none.
    /// Loads the TLS files and refuses a plaintext `--metrics-addr` beyond loopback unless allowed.
    pub fn server_config(
        &self,
        host_addresses: Vec<IpAddr>,
        otherwise: Option<IpAddr>,
    ) -> anyhow::Result<ServerConfig> {
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
        let bind = match (self.bind, self.bind_all) {
            (Some(ip), _) => BindAddress::Fixed(ip),
            (None, true) => BindAddress::Fixed(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            (None, false) => BindAddress::Endpoints {
                host: host_addresses,
                otherwise,
            },
        };
        let tls = self.tls()?;
        self.check_metrics_addr(tls.is_some())?;
        Ok(ServerConfig {
            bind,
            tls,
            allow_plaintext: self.allow_plaintext,
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

    /// Refuses a plaintext `--metrics-addr` beyond loopback unless `--allow-plaintext`.
    pub fn check_metrics_addr(&self, tls: bool) -> anyhow::Result<()> {
        if let Some(addr) = self.metrics_addr {
            vknf_server::plaintext_allowed(addr.ip(), tls, self.allow_plaintext)
                .map_err(|reason| anyhow::anyhow!("--metrics-addr {addr}: {reason}"))?;
        }
        Ok(())
    }

    /// The TLS set-up of `--tls-cert`, `--tls-key` and `--tls-client-ca`, if given.
    pub fn tls(&self) -> anyhow::Result<Option<ServerTls>> {
        let (Some(cert), Some(key)) = (&self.tls_cert, &self.tls_key) else {
            return Ok(None);
        };
        let files = ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: self.tls_client_ca.clone(),
        };
        let tls = ServerTls::load(&files).context("cannot set up TLS")?;
        Ok(Some(tls.with_handshake_timeout(Duration::from_secs(
            self.tls_handshake_timeout_s.max(1),
        ))))
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
