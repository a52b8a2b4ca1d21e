//! `vknf compile-model`: import a random forest (ONNX-ML file or scikit-learn tree-array
//! directory), validate it, lay it out for the GPU and write a `.vkf` file.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::progress::{progress_bar, show};
use super::schema_binding::{SCHEMA_DIGEST_KEY, onnx_vkf_metadata};
use anyhow::{Context, Result, bail};
use vknf_forest::{
    DEFAULT_MAX_DEPTH, Forest, GpuForest, ImportOptions, MissingPolicy, NanRouting, NodeFormat, Progress, SklearnTree,
    Stage, Task, VkfMetadata, import_onnx_bytes, read_file_with_progress,
};

/// Arguments of `vknf compile-model`.
#[derive(Debug, Clone, clap::Args)]
pub struct CompileModelArgs {
    /// The model: an ONNX file (TreeEnsembleClassifier/Regressor or TreeEnsemble) or a
    /// directory of scikit-learn tree arrays (left.csv, right.csv, feature.csv,
    /// threshold.csv, values.csv).
    pub input: PathBuf,
    /// Where to write the compiled `.vkf` file.
    #[arg(short, long)]
    pub output: PathBuf,
    /// For a tree-array directory: how many copies of the tree make the forest (the
    /// paper's W1 benchmark uses 150).
    #[arg(long)]
    pub trees: Option<usize>,
    /// Use this many input features instead of the number the model declares.
    #[arg(long)]
    pub n_features: Option<u64>,
    /// Reject trees deeper than this.
    #[arg(long, default_value_t = DEFAULT_MAX_DEPTH)]
    pub max_depth: u32,
    /// Route NaN by the ONNX missing-value bits even when they are all zero (onnxruntime
    /// semantics). By default such models reject NaN inputs, because skl2onnx writes zeros
    /// whatever scikit-learn would do.
    #[arg(long)]
    pub follow_onnx_nan: bool,
    /// Do not show progress bars.
    #[arg(long)]
    pub quiet: bool,
}

/// Runs the command: import, validate, compile, write, print a summary.
pub fn run(args: CompileModelArgs) -> Result<()> {
    let options = ImportOptions {
        max_depth: args.max_depth,
        n_features: args.n_features,
        nan: if args.follow_onnx_nan {
            NanRouting::FollowOnnx
        } else {
            NanRouting::Auto
        },
    };
    let bar = progress_bar(args.quiet);
    let mut report = |p: Progress| show(&bar, p);

    // What the model carries beside the trees (the feature schema digest of a traffic model) is kept
    // in the .vkf, so that the compiled model stays bound to its schema.
    let (forest, metadata) = if args.input.is_dir() {
        let tree = SklearnTree::load(&args.input)?;
        (tree.forest(args.trees.unwrap_or(1), &options)?, VkfMetadata::new())
    } else {
        if args.trees.is_some() {
            bail!("--trees only applies to a directory of scikit-learn tree arrays");
        }
        let bytes = read_file_with_progress(&args.input, &mut report)
            .with_context(|| format!("reading {}", args.input.display()))?;
        let forest = import_onnx_bytes(&bytes, &options, &mut report)
            .with_context(|| format!("importing {}", args.input.display()))?;
        (forest, onnx_vkf_metadata(&bytes)?)
    };
    let n_trees = forest.trees().len() as u64;
    let gpu = forest.compile_with_progress(&mut |done, _| {
        report(Progress {
            stage: Stage::Compiling,
            done: done as u64,
            total: n_trees,
        })
    })?;
    bar.finish_and_clear();

    let bytes = gpu.to_vkf_bytes_with_metadata(&metadata);
    write_atomically(&args.output, &bytes)?;
    // writeln! rather than println!, so a closed pipe is an error, not a panic.
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{}", summary(&args.output, &forest, &gpu, bytes.len()))?;
    if let Some(digest) = metadata.get(SCHEMA_DIGEST_KEY) {
        writeln!(stdout, "  schema:      {digest}")?;
    }
    Ok(())
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))
}

fn summary(path: &Path, forest: &Forest, gpu: &GpuForest, file_bytes: usize) -> String {
    let s = forest.summary();
    let outputs = match forest.task() {
        Task::Classifier { .. } => format!("{} classes", s.n_outputs),
        Task::Regressor => format!("{} targets", s.n_outputs),
    };
    let format = match gpu.node_format {
        NodeFormat::Compact => "compact",
        NodeFormat::Wide => "wide",
    };
    let nan = match gpu.missing {
        MissingPolicy::Route => "routed by the model",
        MissingPolicy::Reject => "rejected (the model carries no NaN routing)",
    };
    format!(
        "wrote {path}\n  trees:       {trees}\n  nodes:       {nodes} ({leaves} leaves, {pure} pure)\n  \
         features:    {features}\n  outputs:     {outputs}\n  max depth:   {depth}\n  \
         node format: {format} ({words} words/node, {entries} leaf-entry pairs)\n  \
         size:        {file_bytes} bytes ({per_node:.2} bytes/node)\n  NaN inputs:  {nan}",
        path = path.display(),
        trees = s.n_trees,
        nodes = s.n_nodes,
        leaves = s.n_leaves,
        pure = s.n_pure_leaves,
        features = s.n_features,
        depth = s.max_depth,
        words = gpu.node_format.words(),
        entries = gpu.leaf_entries.len() / 2,
        per_node = file_bytes as f64 / s.n_nodes.max(1) as f64,
    )
}
