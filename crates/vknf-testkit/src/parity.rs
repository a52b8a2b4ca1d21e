//! Parity cases against scikit-learn, shared by the CPU and GPU parity tests.
//!
//! `python/make_cases.py` writes one directory per case (model.onnx, X.npy, expected.npy,
//! pred_index.npy, case.json). [`ParityCase::check`] runs any predictor over a case and
//! applies the agreed comparison: probabilities within [`PROBA_TOLERANCE`] of
//! `predict_proba`; labels equal except where scikit-learn's top two probabilities are
//! within [`TIE_TOLERANCE`]; regression values within [`REGRESSION_TOLERANCE`] relative (or
//! absolute below 1). Rows with NaN must be rejected when the model carries no NaN routing.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;
use thiserror::Error;

use vknf_forest::GpuForest;
use vknf_forest::Prediction;
use vknf_forest::{ClassLabels, MissingPolicy, Task};
use vknf_forest::{ImportError, ImportOptions};
use vknf_forest::{Rows, parse_npy};

/// Largest accepted |probability - predict_proba|.
pub const PROBA_TOLERANCE: f64 = 1e-5;
/// Labels may differ only where scikit-learn's top two probabilities are this close.
pub const TIE_TOLERANCE: f64 = 1e-6;
/// Relative (absolute below 1) tolerance for regression outputs.
pub const REGRESSION_TOLERANCE: f64 = 1e-5;
/// Environment variable naming the Python interpreter with scikit-learn and skl2onnx.
pub const PYTHON_ENV: &str = "VKNF_PYTHON";

/// What a case exercises (`case.json`).
#[derive(Debug, Clone, Deserialize)]
pub struct CaseMeta {
    /// Case name (its directory name).
    pub name: String,
    /// "classifier" or "regressor".
    pub task: String,
    /// "rf", "et" or "dt".
    pub estimator: String,
    /// Input features.
    pub n_features: usize,
    /// Classes or targets.
    pub n_outputs: usize,
    /// Trees in the scikit-learn model.
    pub n_trees: usize,
    /// Deepest tree.
    pub max_depth: u32,
    /// `classes_` (classifiers), as JSON numbers or strings.
    pub classes: Option<Vec<serde_json::Value>>,
    /// Whether the ONNX file carries scikit-learn's NaN routing.
    pub nan_routing: bool,
    /// Exported with double input and `*_as_tensor` attributes.
    pub double_input: bool,
    /// Re-encoded as the opset-5 `TreeEnsemble`.
    pub tree_ensemble_v5: bool,
    /// Rows of X containing NaN.
    pub nan_rows: Vec<usize>,
}

/// One parity case loaded from disk.
#[derive(Debug, Clone)]
pub struct ParityCase {
    /// The case directory.
    pub dir: PathBuf,
    /// Its description.
    pub meta: CaseMeta,
    /// Inputs.
    pub x: Rows,
    /// scikit-learn's `predict_proba` / `predict`, `n_rows * n_outputs`.
    pub expected: Vec<f64>,
    /// scikit-learn's predicted class index per row (classifiers).
    pub pred_index: Option<Vec<u32>>,
}

/// What a successful check compared.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CaseReport {
    /// Rows compared with scikit-learn.
    pub rows_compared: usize,
    /// Rows that had to be (and were) rejected for containing NaN.
    pub nan_rows_rejected: usize,
    /// Largest absolute score difference.
    pub max_abs_diff: f64,
    /// Label differences accepted because scikit-learn's top two were tied.
    pub tied_label_differences: usize,
}

/// A parity failure or a case that cannot be loaded.
#[derive(Debug, Error)]
pub enum ParityError {
    /// No usable Python.
    #[error("{0}")]
    NoPython(String),
    /// `make_cases.py` failed.
    #[error("make_cases.py failed ({status}):\n{stderr}")]
    Generator {
        /// Exit status.
        status: String,
        /// Its stderr.
        stderr: String,
    },
    /// A case file is missing or malformed.
    #[error("case {case}: {problem}")]
    BadCase {
        /// Case directory.
        case: String,
        /// What is wrong.
        problem: String,
    },
    /// The model did not import.
    #[error("case {case}: import failed: {source}")]
    Import {
        /// Case name.
        case: String,
        /// The cause.
        source: ImportError,
    },
    /// The predictor disagrees with scikit-learn (or misbehaves).
    #[error("case {case}: {problem}")]
    Mismatch {
        /// Case name.
        case: String,
        /// What differs.
        problem: String,
    },
}

pub use crate::workspace_root;

/// The Python interpreter for the generator: `$VKNF_PYTHON`, else `<workspace>/.venv/bin/python`.
/// Fails, with instructions, unless it can import scikit-learn, skl2onnx and onnx.
pub fn find_python() -> Result<PathBuf, ParityError> {
    let candidates: Vec<PathBuf> = match std::env::var_os(PYTHON_ENV) {
        Some(p) => vec![PathBuf::from(p)],
        None => vec![workspace_root().join(".venv/bin/python")],
    };
    for python in &candidates {
        let ok = Command::new(python)
            .args(["-c", "import sklearn, skl2onnx, onnx, numpy"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if ok {
            return Ok(python.clone());
        }
    }
    Err(ParityError::NoPython(format!(
        "no Python with scikit-learn, skl2onnx and onnx found (tried {}). Run `make test` \
         (it creates .venv from python/requirements.txt), or create it yourself: \
         `python3 -m venv .venv && .venv/bin/pip install -r python/requirements.txt`, \
         or point {PYTHON_ENV} at a suitable interpreter",
        candidates
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

/// Runs `python/make_cases.py` into `out_dir` and loads the cases it wrote.
pub fn generate_cases(out_dir: &Path, n_cases: usize, seed: u64) -> Result<Vec<ParityCase>, ParityError> {
    let python = find_python()?;
    let script = workspace_root().join("python/make_cases.py");
    let output = Command::new(&python)
        .arg(&script)
        .arg(out_dir)
        .args(["--n-cases", &n_cases.to_string(), "--seed", &seed.to_string()])
        .output()
        .map_err(|e| ParityError::NoPython(format!("cannot run {}: {e}", python.display())))?;
    if !output.status.success() {
        return Err(ParityError::Generator {
            status: output.status.to_string(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        });
    }
    load_cases(out_dir)
}

/// Loads every case directory (one holding `case.json`) under `dir`, sorted by name.
pub fn load_cases(dir: &Path) -> Result<Vec<ParityCase>, ParityError> {
    let bad = |problem: String| ParityError::BadCase {
        case: dir.display().to_string(),
        problem,
    };
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| bad(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("case.json").is_file())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| ParityCase::load(d)).collect()
}

impl ParityCase {
    /// Loads one case directory.
    pub fn load(dir: &Path) -> Result<Self, ParityError> {
        let bad = |problem: String| ParityError::BadCase {
            case: dir.display().to_string(),
            problem,
        };
        let read = |name: &str| std::fs::read(dir.join(name)).map_err(|e| bad(format!("{name}: {e}")));
        let meta: CaseMeta = serde_json::from_slice(&read("case.json")?).map_err(|e| bad(format!("case.json: {e}")))?;
        let x = parse_npy(&read("X.npy")?).map_err(|e| bad(format!("X.npy: {e}")))?;
        let expected = parse_npy(&read("expected.npy")?).map_err(|e| bad(format!("expected.npy: {e}")))?;
        if expected.rows != x.rows || expected.cols != meta.n_outputs {
            return Err(bad(format!(
                "expected.npy is {}x{}, X has {} rows and the case {} outputs",
                expected.rows, expected.cols, x.rows, meta.n_outputs
            )));
        }
        let pred_index = if meta.task == "classifier" {
            let p = parse_npy(&read("pred_index.npy")?).map_err(|e| bad(format!("pred_index.npy: {e}")))?;
            if p.values.len() != x.rows {
                return Err(bad("pred_index.npy has the wrong length".into()));
            }
            Some(p.values.iter().map(|&v| v as u32).collect())
        } else {
            None
        };
        Ok(ParityCase {
            dir: dir.to_owned(),
            meta,
            x: Rows {
                data: x.values.iter().map(|&v| v as f32).collect(),
                n_rows: x.rows,
                n_features: x.cols,
            },
            expected: expected.values,
            pred_index,
        })
    }

    /// The case's model path.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join("model.onnx")
    }

    /// Imports and compiles the case's ONNX model with default options.
    pub fn import(&self) -> Result<GpuForest, ParityError> {
        let import_err = |source| ParityError::Import {
            case: self.meta.name.clone(),
            source,
        };
        let forest = vknf_forest::import_onnx_file(&self.model_path(), &ImportOptions::default(), &mut |_| {})
            .map_err(import_err)?;
        forest.compile().map_err(|e| ParityError::Mismatch {
            case: self.meta.name.clone(),
            problem: format!("compile failed: {e}"),
        })
    }

    fn mismatch(&self, problem: String) -> ParityError {
        ParityError::Mismatch {
            case: self.meta.name.clone(),
            problem,
        }
    }

    /// Checks `predict` (CPU, GPU ...) on this case against scikit-learn.
    pub fn check(
        &self,
        forest: &GpuForest,
        predict: &mut dyn FnMut(&GpuForest, &Rows) -> anyhow::Result<Prediction>,
    ) -> Result<CaseReport, ParityError> {
        self.check_metadata(forest)?;
        let mut report = CaseReport::default();
        let rows: Vec<usize> = match forest.missing {
            MissingPolicy::Route => (0..self.x.n_rows).collect(),
            MissingPolicy::Reject => {
                if !self.meta.nan_rows.is_empty() {
                    if predict(forest, &self.x).is_ok() {
                        return Err(self.mismatch("rows with NaN were accepted by a model without NaN routing".into()));
                    }
                    report.nan_rows_rejected = self.meta.nan_rows.len();
                }
                (0..self.x.n_rows)
                    .filter(|r| self.meta.nan_rows.binary_search(r).is_err())
                    .collect()
            }
        };
        let input = self.x.select(&rows);
        let prediction = predict(forest, &input).map_err(|e| self.mismatch(format!("prediction failed: {e:#}")))?;
        let n_out = self.meta.n_outputs;
        if prediction.n_rows != rows.len() || prediction.scores.len() != rows.len() * n_out {
            return Err(self.mismatch(format!(
                "prediction has {} rows / {} scores for {} rows of {n_out} outputs",
                prediction.n_rows,
                prediction.scores.len(),
                rows.len()
            )));
        }
        let classifier = self.meta.task == "classifier";
        for (i, &r) in rows.iter().enumerate() {
            let want = &self.expected[r * n_out..(r + 1) * n_out];
            let got = &prediction.scores[i * n_out..(i + 1) * n_out];
            for (o, (&g, &w)) in got.iter().zip(want).enumerate() {
                let diff = (f64::from(g) - w).abs();
                report.max_abs_diff = report.max_abs_diff.max(diff);
                let limit = if classifier {
                    PROBA_TOLERANCE
                } else {
                    REGRESSION_TOLERANCE * w.abs().max(1.0)
                };
                if diff.is_nan() || diff > limit {
                    return Err(self.mismatch(format!(
                        "row {r} output {o}: got {g}, scikit-learn {w} (|diff| {diff:e} > {limit:e})"
                    )));
                }
            }
            if let Some(pred_index) = &self.pred_index {
                let got_label = *prediction
                    .labels
                    .get(i)
                    .ok_or_else(|| self.mismatch(format!("no label for row {r}")))?;
                if got_label != pred_index[r] {
                    if top_two_gap(want) <= TIE_TOLERANCE {
                        report.tied_label_differences += 1;
                    } else {
                        return Err(self.mismatch(format!(
                            "row {r}: label index {got_label}, scikit-learn {} (probabilities {want:?})",
                            pred_index[r]
                        )));
                    }
                }
            }
        }
        report.rows_compared = rows.len();
        Ok(report)
    }

    fn check_metadata(&self, forest: &GpuForest) -> Result<(), ParityError> {
        let m = &self.meta;
        if forest.n_features as usize != m.n_features || forest.n_outputs as usize != m.n_outputs {
            return Err(self.mismatch(format!(
                "forest has {} features / {} outputs, scikit-learn {} / {}",
                forest.n_features, forest.n_outputs, m.n_features, m.n_outputs
            )));
        }
        let routed = forest.missing == MissingPolicy::Route;
        if routed != m.nan_routing {
            return Err(self.mismatch(format!(
                "missing policy {:?} but the case {} NaN routing",
                forest.missing,
                if m.nan_routing { "carries" } else { "does not carry" }
            )));
        }
        match (&forest.task, &m.classes) {
            (Task::Classifier { labels }, Some(classes)) => {
                let ours: Vec<serde_json::Value> = match labels {
                    ClassLabels::Int64(v) => v.iter().map(|&l| l.into()).collect(),
                    ClassLabels::Strings(v) => v.iter().map(|l| l.clone().into()).collect(),
                };
                if &ours != classes {
                    return Err(self.mismatch(format!("class labels {ours:?} differ from scikit-learn's {classes:?}")));
                }
            }
            (Task::Regressor, None) => {}
            (task, _) => {
                return Err(self.mismatch(format!("task {task:?} but the case is a {}", m.task)));
            }
        }
        Ok(())
    }
}

/// Difference between the largest and second-largest value (infinite for one value).
pub fn top_two_gap(values: &[f64]) -> f64 {
    let mut best = f64::NEG_INFINITY;
    let mut second = f64::NEG_INFINITY;
    for &v in values {
        if v > best {
            second = best;
            best = v;
        } else if v > second {
            second = v;
        }
    }
    best - second
}

/// The CPU reference predictor in the shape [`ParityCase::check`] expects.
pub fn cpu_predictor(forest: &GpuForest, rows: &Rows) -> anyhow::Result<Prediction> {
    Ok(forest.predict_cpu(&rows.data, rows.n_rows)?)
}
