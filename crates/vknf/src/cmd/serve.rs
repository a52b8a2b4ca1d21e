//! `vknf serve`: serves the network functions of a manifest directory.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use vknf_functions::FunctionLoader;
use vknf_manifest::Placement;
use vknf_server::DirectorySource;
use vknf_server::daemon::{ServeOptions, serve_blocking};

use super::data_plane::DataPlaneArgs;

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
    /// How often the manifest directory is checked for changes, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub poll_ms: u64,
    /// The server's flags.
    #[command(flatten)]
    pub data_plane: DataPlaneArgs,
}

impl ServeArgs {
    fn options(&self) -> anyhow::Result<ServeOptions> {
        let placement = if self.all {
            Placement::All
        } else if self.host_address.is_empty() {
            Placement::local_addresses().context("cannot list this host's addresses (use --host-address or --all)")?
        } else {
            Placement::Addresses(self.host_address.clone())
        };
        // With --all the host's addresses are not listed: each function binds the first of its
        // endpoint addresses the host has.
        let host_addresses = match &placement {
            Placement::Addresses(addresses) => addresses.clone(),
            Placement::All => Vec::new(),
        };
        Ok(ServeOptions {
            source: DirectorySource {
                dir: self.manifests.clone(),
                placement,
                options: self.data_plane.parse_options(),
                poll_interval: Duration::from_millis(self.poll_ms.max(10)),
            },
            config: self.data_plane.server_config(host_addresses, None)?,
            metrics_addr: self.data_plane.metrics_addr,
            oip_addr: self.data_plane.oip_addr,
        })
    }
}

/// Runs `vknf serve`; `gpu` is the loader used unless `--cpu` is given.
pub fn run_with_loader(args: ServeArgs, gpu: Option<Arc<dyn FunctionLoader>>) -> anyhow::Result<()> {
    let options = args.options()?;
    let loader = args.data_plane.loader(gpu)?;
    serve_blocking(options, loader)
}
