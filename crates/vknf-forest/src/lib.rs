//! Random forests for vknf: import, validation, GPU layout, CPU reference prediction.
//!
//! Pipeline: an importer ([`import_onnx_file`], [`SklearnTree`]) produces a [`RawForest`];
//! [`RawForest::validate`] checks it and yields a [`Forest`]; [`Forest::compile`] lays it out
//! as a [`GpuForest`], which is what the GPU kernel consumes, what `.vkf` files store
//! ([`GpuForest::to_vkf_bytes`], [`GpuForest::from_vkf_bytes`]) and what the CPU reference
//! predictor ([`GpuForest::predict_cpu`]) runs on. The layout and the file format are
//! documented in `docs/vkf-format.md`.

mod blocks;
pub mod exact;
mod import;
mod layout;
mod model;
pub mod onnx;
mod order;
mod predict;
mod rows;
mod sklearn;
pub mod threshold;
mod validate;
mod vkf;
pub mod wire;

pub use blocks::{BLOCK_WORDS, NodeBlocks};
pub use exact::FixedPoint;
pub use import::{ImportError, ImportOptions, NanRouting, Progress, Stage, read_file_with_progress};
pub use layout::{
    COMPACT_DELTA_MASK, COMPACT_FEATURE_MASK, COMPACT_FEATURE_SHIFT, COMPACT_MAX_FEATURES, CompileError, FLAG_BIT,
    GpuForest, LEAF_BIT, LOW30_MASK, MAX_LEAF_ENTRIES, NodeFormat,
};
pub use model::{
    Aggregate, ClassLabels, Forest, ForestSummary, LeafEntry, MAX_TOTAL_NODES, MissingPolicy, Node, PostTransform,
    Split, Task, Tree,
};
pub use onnx::{import_onnx_bytes, import_onnx_file, onnx_metadata, read_onnx};
pub use order::NodeOrder;
pub use predict::{PredictError, Prediction, apply_post_transform, apply_post_transform_le, argmax};
pub use rows::{NpyArray, Rows, RowsError, parse_csv, parse_npy, read_rows, write_predictions_csv};
pub use sklearn::{PaperWorkload, SklearnTree, paper_workload, rows_around_thresholds};
pub use validate::{
    DEFAULT_MAX_DEPTH, MAX_FEATURES, MAX_OUTPUTS, ModelError, ModelProblem, NodeProblem, RawEntry, RawForest, RawNode,
    RawTree, Side, SplitMode, TreeProblem,
};
pub use vkf::{
    FormatError, MAGIC as VKF_MAGIC, VERSION as VKF_VERSION, VERSION_METADATA as VKF_VERSION_METADATA, VkfMetadata,
};
