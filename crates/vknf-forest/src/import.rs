//! Shared import plumbing: options, progress reporting and errors.

use std::io::{self, Read};
use std::path::{Path, PathBuf};

use thiserror::Error;

use crate::validate::{DEFAULT_MAX_DEPTH, ModelError};
use crate::wire::WireError;

/// What a long import is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Reading the file (`done`/`total` in bytes).
    Reading,
    /// Decoding the tree attributes (`done`/`total` in bytes of the model).
    Decoding,
    /// Validating trees (`done`/`total` in trees).
    Validating,
    /// Laying out trees for the GPU (`done`/`total` in trees).
    Compiling,
}

/// A progress report passed to the caller's callback.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Current stage.
    pub stage: Stage,
    /// Units done in this stage.
    pub done: u64,
    /// Units in this stage.
    pub total: u64,
}

/// What to do with NaN inputs when the ONNX model's routing cannot be trusted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NanRouting {
    /// Route NaN by `nodes_missing_value_tracks_true` only when the model sets it on at least
    /// one split. A model whose bits are all zero (or absent) gets
    /// [`crate::MissingPolicy::Reject`]: skl2onnx writes all-zero bits for scikit-learn
    /// forests whatever their real NaN routing, so zeros carry no information.
    #[default]
    Auto,
    /// Always follow the ONNX semantics literally (absent or zero bit: NaN takes the false
    /// branch), as onnxruntime does.
    FollowOnnx,
}

/// Import settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImportOptions {
    /// Deepest tree accepted (at most [`DEFAULT_MAX_DEPTH`]).
    pub max_depth: u32,
    /// Feature count to use instead of the one the model declares.
    pub n_features: Option<u64>,
    /// NaN handling policy for ONNX models.
    pub nan: NanRouting,
}

impl Default for ImportOptions {
    fn default() -> Self {
        ImportOptions {
            max_depth: DEFAULT_MAX_DEPTH,
            n_features: None,
            nan: NanRouting::Auto,
        }
    }
}

/// Why a model could not be imported.
#[derive(Debug, Error)]
pub enum ImportError {
    /// File system error.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
    /// Malformed protobuf.
    #[error("{context}: {source}")]
    Wire {
        /// Which message was being read.
        context: &'static str,
        /// The cause.
        source: WireError,
    },
    /// A small message failed to decode.
    #[error("{context}: {source}")]
    Decode {
        /// Which message was being decoded.
        context: &'static str,
        /// The cause.
        source: prost::DecodeError,
    },
    /// The file is not an ONNX model with a graph.
    #[error("not an ONNX model: {0}")]
    NotOnnx(String),
    /// The graph has no tree ensemble.
    #[error("the ONNX graph has no TreeEnsembleClassifier, TreeEnsembleRegressor or TreeEnsemble (ai.onnx.ml) node")]
    NoTreeEnsemble,
    /// The graph has several tree ensembles.
    #[error("the ONNX graph has {0} tree-ensemble nodes; only single-ensemble models are supported")]
    MultipleTreeEnsembles(usize),
    /// A feature the importer does not support.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A bad attribute.
    #[error("attribute {name}: {problem}")]
    Attribute {
        /// Attribute name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Parallel attribute arrays of different lengths.
    #[error("attribute {name} has {got} values but {reference} has {expected}")]
    LengthMismatch {
        /// Offending attribute.
        name: String,
        /// Its length.
        got: usize,
        /// The attribute it must match.
        reference: String,
        /// The reference length.
        expected: usize,
    },
    /// A scikit-learn arrays directory is malformed.
    #[error("{path}: {problem}")]
    Arrays {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        problem: String,
    },
    /// The forest read fine but is invalid.
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl ImportError {
    pub(crate) fn attr(name: &str, problem: impl Into<String>) -> Self {
        ImportError::Attribute {
            name: name.to_owned(),
            problem: problem.into(),
        }
    }
}

/// Reads a whole file, reporting [`Stage::Reading`] progress every few megabytes.
pub fn read_file_with_progress(path: &Path, progress: &mut dyn FnMut(Progress)) -> Result<Vec<u8>, ImportError> {
    let io_err = |source| ImportError::Io {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io_err)?;
    let total = file.metadata().map_err(io_err)?.len();
    let mut bytes = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut chunk = vec![0u8; 8 << 20];
    loop {
        let n = file.read(&mut chunk).map_err(io_err)?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        progress(Progress {
            stage: Stage::Reading,
            done: bytes.len() as u64,
            total: total.max(bytes.len() as u64),
        });
    }
    Ok(bytes)
}

/// Rate-limits decoding progress: reports when at least 1 MiB more has been walked.
pub(crate) struct Tracker<'p> {
    callback: &'p mut dyn FnMut(Progress),
    total: u64,
    last: u64,
}

impl<'p> Tracker<'p> {
    pub(crate) fn new(callback: &'p mut dyn FnMut(Progress), total: u64) -> Self {
        Tracker {
            callback,
            total,
            last: 0,
        }
    }

    /// Notes that decoding reached absolute byte `offset`.
    pub(crate) fn at(&mut self, offset: usize) {
        let offset = offset as u64;
        if offset >= self.last + (1 << 20) || (offset >= self.total && self.last < self.total) {
            self.last = offset;
            (self.callback)(Progress {
                stage: Stage::Decoding,
                done: offset.min(self.total),
                total: self.total,
            });
        }
    }
}
