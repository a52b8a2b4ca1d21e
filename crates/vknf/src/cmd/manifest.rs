//! `vknf manifest`: writes the Kubernetes manifests of a function.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use vknf_functions::Families;
use vknf_functions::families::generic::{ABI_PARAM, GenericAbi};
use vknf_manifest::{DEFAULT_PART_BYTES, ManifestRequest, build_objects};

use super::schema_binding::{BoundModel, SCHEMA_ANNOTATION, load_schema};

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
    /// The hosts' Open Inference Protocol port (`--oip-addr` of serve and agent): declared as the
    /// Service's second port, named `oip`, so that the cluster routes v2 clients to the hosts serving
    /// this function.
    #[arg(long)]
    pub oip_port: Option<u16>,
    /// Function family: `forest` (vknf's random-forest kernel over a `.vkf` model) or `generic` (any
    /// kernel, wired by `--abi`).
    #[arg(long, default_value = "forest")]
    pub kind: String,
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
    /// A family parameter, `NAME=VALUE`, written as the annotation `vknf.io/NAME` (repeatable): for
    /// example `deadline-ms=500` (generic) or `input-path=host-memory` (forest); docs/functions.md.
    #[arg(long = "param", value_name = "NAME=VALUE", value_parser = parse_param)]
    pub params: Vec<(String, String)>,
    /// Most rows per batch.
    #[arg(long)]
    pub max_batch_rows: Option<usize>,
    /// Longest a batch waits to fill up, in microseconds.
    #[arg(long)]
    pub max_wait_us: Option<u64>,
    /// Host addresses serving the function (written as EndpointSlices).
    #[arg(long = "node-address", value_name = "IP")]
    pub node_address: Vec<IpAddr>,
    /// The feature schema of a traffic model (`python/train_traffic.py`): checked against the digest
    /// the `.vkf` carries and declared on the Service as `vknf.io/feature-schema-sha256`, which
    /// `vknf classify --addr --manifest` checks its own schema against.
    #[arg(long, requires = "model")]
    pub schema: Option<PathBuf>,
    /// Model bytes per ConfigMap (under Kubernetes' 1 MiB limit).
    #[arg(long, default_value_t = DEFAULT_PART_BYTES)]
    pub part_bytes: usize,
    /// Output file (default: standard output).
    #[arg(long, short)]
    pub output: Option<PathBuf>,
}

fn parse_param(text: &str) -> Result<(String, String), String> {
    let (name, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected NAME=VALUE"))?;
    Ok((name.trim().to_owned(), value.to_owned()))
}

/// Runs `vknf manifest`.
pub fn run(args: ManifestArgs) -> anyhow::Result<()> {
    let families = Families::builtin();
    if families.get(&args.kind).is_none() {
        let known: Vec<&str> = families.kinds().collect();
        anyhow::bail!("unknown kind {:?} (known kinds: {})", args.kind, known.join(", "));
    }
    let spirv = match (&args.spirv, args.kind.as_str()) {
        (Some(path), _) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        (None, "forest") => vknf_kernels::by_name("forest")
            .context("this build has no forest kernel; pass --spirv")?
            .to_vec(),
        (None, kind) => anyhow::bail!("--spirv is required for {kind} functions"),
    };
    let model = match &args.model {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading {}", path.display()))?),
        None => None,
    };
    let schema_digest = match (&args.schema, &model) {
        (Some(path), Some(bytes)) => Some(schema_digest_of(path, args.model.as_deref().unwrap_or(path), bytes)?),
        _ => None,
    };
    let mut params = BTreeMap::new();
    if let Some(path) = &args.abi {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let abi: GenericAbi =
            serde_json::from_str(&text).with_context(|| format!("parsing the ABI in {}", path.display()))?;
        params.insert(ABI_PARAM.to_owned(), abi.to_json());
    }
    let family = families.get(&args.kind).context("checked above")?;
    for (name, value) in &args.params {
        if !family.params().contains(&name.as_str()) {
            anyhow::bail!(
                "--param {name}: kind {} takes {}",
                args.kind,
                match family.params() {
                    [] => "no parameters".to_owned(),
                    names => names.join(", "),
                }
            );
        }
        if params.insert(name.clone(), value.clone()).is_some() {
            anyhow::bail!("--param {name} is given twice (or also by --abi)");
        }
    }
    // Values are checked here as the host will check them, rather than when a host loads the function.
    let spec = vknf_functions::FunctionSpec {
        params: params.clone(),
        ..vknf_functions::FunctionSpec::new(&args.name, &args.kind, spirv.clone())
    };
    family
        .validate(&spec, model.as_ref().map(Vec::len))
        .map_err(|e| match e.param.as_str() {
            "model" => anyhow::anyhow!("{} functions need --model", args.kind),
            param => anyhow::anyhow!("vknf.io/{param}: {}", e.reason),
        })?;
    let request = ManifestRequest {
        name: args.name.clone(),
        namespace: args.namespace.clone(),
        port: args.port,
        oip_port: args.oip_port,
        kind: args.kind.clone(),
        spirv: &spirv,
        entry_point: args.entry_point.clone(),
        model: model.as_deref(),
        spec_constants: args.spec_constants.clone(),
        params,
        max_batch_rows: args.max_batch_rows,
        max_wait_us: args.max_wait_us,
        node_addresses: args.node_address.clone(),
        part_bytes: args.part_bytes,
    };
    let mut objects = build_objects(&request).with_context(|| format!("function {}", args.name))?;
    if let Some(digest) = schema_digest {
        declare_schema(&mut objects, digest)?;
    }
    let mut yaml = String::new();
    for object in &objects {
        yaml.push_str("---\n");
        yaml.push_str(&serde_norway::to_string(object)?);
    }
    match &args.output {
        Some(path) => std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?,
        None => print!("{yaml}"),
    }
    Ok(())
}

/// The digest of the schema at `schema`, after checking that the model (`.vkf` bytes) was trained with it.
fn schema_digest_of(schema: &std::path::Path, model_path: &std::path::Path, model: &[u8]) -> anyhow::Result<String> {
    let schema = load_schema(schema)?;
    let (forest, metadata) = vknf_forest::GpuForest::from_vkf_bytes_with_metadata(model)
        .with_context(|| format!("--schema needs a .vkf model; loading {}", model_path.display()))?;
    BoundModel { forest, metadata }.check(&schema, &model_path.display().to_string())?;
    Ok(schema.digest)
}

/// Adds the schema annotation to the Service among `objects`.
fn declare_schema(objects: &mut [serde_norway::Value], digest: String) -> anyhow::Result<()> {
    use serde_norway::Value;

    let service = objects
        .iter_mut()
        .find(|o| o.get("kind").and_then(Value::as_str) == Some("Service"))
        .context("the generated objects have no Service")?;
    let annotations = service
        .get_mut("metadata")
        .and_then(|m| m.get_mut("annotations"))
        .and_then(Value::as_mapping_mut)
        .context("the generated Service has no annotations")?;
    annotations.insert(Value::String(SCHEMA_ANNOTATION.to_owned()), Value::String(digest));
    Ok(())
}
