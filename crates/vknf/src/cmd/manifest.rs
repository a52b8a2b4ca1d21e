//! `vknf manifest`: writes the Kubernetes manifests of a function.

use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use vknf_server::manifest::{DEFAULT_PART_BYTES, FunctionKind, GenericAbi, ManifestRequest, generate_yaml};

/// Function kinds on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum KindArg {
    /// vknf's random-forest kernel over a `.vkf` model.
    Forest,
    /// Any kernel, wired by `--abi`.
    Generic,
}

/// Arguments of `vknf manifest`.
#[derive(clap::Args, Debug, Clone)]
pub struct ManifestArgs {
    /// Function (Service) name: lower-case letters, digits and '-'.
    #[arg(long)]
    pub name: String,
    /// Namespace.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// TCP port clients connect to.
    #[arg(long)]
    pub port: u16,
    /// Function kind.
    #[arg(long, value_enum, default_value_t = KindArg::Forest)]
    pub kind: KindArg,
    /// SPIR-V kernel (default for forests: the built-in forest kernel).
    #[arg(long)]
    pub spirv: Option<PathBuf>,
    /// Kernel entry point.
    #[arg(long)]
    pub entry_point: Option<String>,
    /// Model bytes (a `.vkf` for forests), split over ConfigMaps.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Specialization constants, a JSON object of name or id to number or bool.
    #[arg(long)]
    pub spec_constants: Option<String>,
    /// JSON file wiring a generic kernel (see docs/functions.md).
    #[arg(long)]
    pub abi: Option<PathBuf>,
    /// Most rows per batch.
    #[arg(long)]
    pub max_batch_rows: Option<usize>,
    /// Longest a batch waits to fill up, in microseconds.
    #[arg(long)]
    pub max_wait_us: Option<u64>,
    /// Host addresses serving the function (written as EndpointSlices).
    #[arg(long = "node-address", value_name = "IP")]
    pub node_address: Vec<IpAddr>,
    /// Model bytes per ConfigMap (under Kubernetes' 1 MiB limit).
    #[arg(long, default_value_t = DEFAULT_PART_BYTES)]
    pub part_bytes: usize,
    /// Output file (default: standard output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

/// Runs `vknf manifest`.
pub fn run(args: ManifestArgs) -> anyhow::Result<()> {
    let kind = match args.kind {
        KindArg::Forest => FunctionKind::Forest,
        KindArg::Generic => FunctionKind::Generic,
    };
    let spirv = match (&args.spirv, kind) {
        (Some(path), _) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        (None, FunctionKind::Forest) => vknf_kernels::by_name("forest")
            .context("this build has no forest kernel; pass --spirv")?
            .to_vec(),
        (None, FunctionKind::Generic) => anyhow::bail!("--spirv is required for generic functions"),
    };
    let model = match &args.model {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let abi: Option<GenericAbi> = match &args.abi {
        Some(path) => {
            let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("parsing the ABI in {}", path.display()))?)
        }
        None => None,
    };
    let yaml = generate_yaml(&ManifestRequest {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        port: args.port,
        kind,
        spirv: &spirv,
        entry_point: args.entry_point.clone(),
        model: model.as_deref(),
        spec_constants: args.spec_constants.clone(),
        abi,
        max_batch_rows: args.max_batch_rows,
        max_wait_us: args.max_wait_us,
        node_addresses: args.node_address.clone(),
        part_bytes: args.part_bytes,
    })
    .with_context(|| format!("function {}", args.name))?;
    match &args.output {
        Some(path) => std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{yaml}"),
    }
    Ok(())
}
