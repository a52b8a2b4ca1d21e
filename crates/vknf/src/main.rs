//! `vknf`: Vulkan network functions. A thin command line over the workspace's crates.

mod cmd;

/// jemalloc returns freed memory to the system within seconds (its decay), where glibc's malloc kept a
/// long-running server's freed frame buffers and per-thread arenas resident.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use clap::{Parser, Subcommand};

/// Vulkan network functions: SPIR-V kernels as network functions on any Vulkan GPU.
#[derive(Parser)]
#[command(name = "vknf", version, about)]
struct Cli {
    /// Enable the Khronos validation layer; any error it reports fails the command.
    #[arg(long, global = true, env = "VKNF_VALIDATE")]
    validate: bool,
    /// Log filter (tracing env-filter syntax), e.g. `info` or `vknf_server=debug`.
    #[arg(long, global = true, env = "VKNF_LOG", default_value = "warn")]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// List Vulkan devices: type, driver, Vulkan version, subgroup size, multiprocessors, pipeline statistics,
    /// queue families, memory heaps.
    Devices(cmd::devices::DevicesArgs),
    /// Run a SPIR-V compute kernel on buffers read from files, for trying a kernel by hand.
    RunKernel(cmd::run_kernel::RunKernelArgs),
    /// Compile a model (.onnx or a scikit-learn tree-array directory) to vknf's GPU layout (.vkf).
    CompileModel(cmd::compile_model::CompileModelArgs),
    /// Serve the network functions of a manifest directory on their ports (the embedded default).
    Serve(cmd::serve::ServeArgs),
    /// Write a function manifest (Service, model ConfigMaps, EndpointSlice) ready for `kubectl apply`.
    Manifest(cmd::manifest::ManifestArgs),
    /// Generate load against a function: closed or open loop, throughput and latency percentiles.
    Load(cmd::load::LoadArgs),
    /// Run the Kubernetes node agent: serve the functions the cluster places on this host.
    Agent(cmd::agent::AgentArgs),
    /// Classify rows with a random forest (`.onnx` or `.vkf`) on the GPU, or with `--cpu`.
    Predict(cmd::predict::PredictArgs),
    /// Turn captures into a flow dataset (JSON lines) to train the traffic classifier on.
    Flows(cmd::flows::FlowsArgs),
    /// Classify the TLS flows of captures or an interface with a traffic model, in process or served.
    Classify(cmd::classify::ClassifyArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter =
        tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        builder.json().init();
    } else {
        builder.init();
    }
    let global = cmd::Global { validate: cli.validate };
    let result = match cli.command {
        Command::Devices(args) => cmd::devices::run(&global, args),
        Command::RunKernel(args) => cmd::run_kernel::run(&global, args),
        Command::Predict(args) => cmd::predict::run(&global, args),
        Command::Flows(args) => cmd::flows::run(args),
        Command::Classify(args) => cmd::classify::run(&global, args),
        Command::CompileModel(args) => cmd::compile_model::run(args),
        Command::Serve(args) => {
            let gpu = (!args.data_plane.cpu)
                .then(|| global.gpu_loader(args.data_plane.devices.as_deref()))
                .transpose();
            gpu.and_then(|gpu| cmd::serve::run_with_loader(args, gpu))
        }
        Command::Manifest(args) => cmd::manifest::run(args),
        Command::Load(args) => cmd::load::run(args),
        Command::Agent(args) => {
            let gpu = (!args.data_plane.cpu && !args.watchdog)
                .then(|| global.gpu_loader(args.data_plane.devices.as_deref()))
                .transpose();
            gpu.and_then(|gpu| cmd::agent::run_with_loader(args, gpu))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
