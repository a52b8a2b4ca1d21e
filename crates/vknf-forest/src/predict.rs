//! CPU reference predictor over the compiled GPU layout.
//!
//! It implements exactly the traversal and aggregation the GPU kernel implements, so it is
//! both the reference for GPU parity tests and a fallback. It never trusts the layout: every
//! index is bounds-checked and every traversal is bounded by `max_depth`.

use rayon::prelude::*;
use thiserror::Error;

use crate::layout::{
    COMPACT_DELTA_MASK, COMPACT_FEATURE_MASK, COMPACT_FEATURE_SHIFT, FLAG_BIT, GpuForest, LEAF_BIT, LOW30_MASK,
    NodeFormat,
};
use crate::model::{Aggregate, MissingPolicy, PostTransform};

/// Predictions for a batch of rows.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Rows predicted.
    pub n_rows: usize,
    /// Outputs per row.
    pub n_outputs: usize,
    /// `n_rows * n_outputs` final scores (probabilities for classifiers), row-major.
    pub scores: Vec<f32>,
    /// Argmax output per row (ties go to the lowest index); empty for regressors.
    pub labels: Vec<u32>,
}

/// Why a batch could not be predicted.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum PredictError {
    /// `rows.len()` is not `n_rows * n_features`.
    #[error("input has {got} values; {n_rows} rows of {n_features} features need {expected}")]
    Shape {
        /// Values given.
        got: usize,
        /// Rows claimed.
        n_rows: usize,
        /// Features per row.
        n_features: u32,
        /// Values needed (saturating).
        expected: usize,
    },
    /// A NaN input and a model that cannot route it.
    #[error(
        "row {row}, feature {feature} is NaN, but this model has no missing-value routing \
         (only models that carry NaN routing accept NaN inputs)"
    )]
    NanInput {
        /// Row index.
        row: usize,
        /// Feature index.
        feature: usize,
    },
    /// The layout is inconsistent (only possible for a hand-built `GpuForest`).
    #[error("corrupt forest layout: {0}")]
    CorruptLayout(String),
}

/// A resolved leaf: where its entries are.
enum Leaf {
    Inline { output: u32, weight: f32 },
    Pairs { first: usize, count: usize },
}

impl GpuForest {
    /// Predicts `n_rows` rows (row-major, `n_features` each) on the CPU, in parallel.
    pub fn predict_cpu(&self, rows: &[f32], n_rows: usize) -> Result<Prediction, PredictError> {
        self.check_input(rows, n_rows)?;
        let n_out = self.n_outputs as usize;
        let nf = self.n_features as usize;
        let mut scores = vec![0f32; n_rows * n_out];
        if n_out > 0 && nf > 0 {
            scores
                .par_chunks_mut(n_out)
                .zip(rows.par_chunks(nf))
                .try_for_each_init(|| vec![0f64; n_out], |acc, (out, row)| self.predict_row(row, acc, out))?;
        }
        let labels = if self.task.is_classifier() && n_out > 0 {
            scores.chunks(n_out).map(argmax).collect()
        } else {
            Vec::new()
        };
        Ok(Prediction {
            n_rows,
            n_outputs: n_out,
            scores,
            labels,
        })
    }

    /// Mean number of internal nodes visited per (row, tree): how deep traversals go.
    pub fn mean_depth(&self, rows: &[f32], n_rows: usize) -> Result<f64, PredictError> {
        self.check_input(rows, n_rows)?;
        let nf = self.n_features as usize;
        if n_rows == 0 || self.tree_roots.is_empty() || nf == 0 {
            return Ok(0.0);
        }
        let total: u64 = rows
            .par_chunks(nf)
            .map(|row| -> Result<u64, PredictError> {
                let mut sum = 0u64;
                for &root in &self.tree_roots {
                    let (_, depth) = self.find_leaf(root, row)?;
                    sum += u64::from(depth);
                }
                Ok(sum)
            })
            .try_reduce(|| 0, |a, b| Ok(a + b))?;
        Ok(total as f64 / (n_rows as f64 * self.tree_roots.len() as f64))
    }

    fn check_input(&self, rows: &[f32], n_rows: usize) -> Result<(), PredictError> {
        let nf = self.n_features as usize;
        let expected = n_rows.checked_mul(nf);
        if expected != Some(rows.len()) {
            return Err(PredictError::Shape {
                got: rows.len(),
                n_rows,
                n_features: self.n_features,
                expected: expected.unwrap_or(usize::MAX),
            });
        }
        if self.missing == MissingPolicy::Reject
            && let Some(pos) = rows.iter().position(|x| x.is_nan())
        {
            return Err(PredictError::NanInput {
                row: pos / nf,
                feature: pos % nf,
            });
        }
        Ok(())
    }

    fn predict_row(&self, row: &[f32], acc: &mut [f64], out: &mut [f32]) -> Result<(), PredictError> {
        acc.fill(0.0);
        for &root in &self.tree_roots {
            let (leaf, _) = self.find_leaf(root, row)?;
            match leaf {
                Leaf::Inline { output, weight } => {
                    *acc.get_mut(output as usize)
                        .ok_or_else(|| corrupt(format!("leaf output {output} out of range")))? += f64::from(weight);
                }
                Leaf::Pairs { first, count } => {
                    let words = first
                        .checked_mul(2)
                        .and_then(|start| Some(start..start.checked_add(count.checked_mul(2)?)?))
                        .and_then(|range| self.leaf_entries.get(range))
                        .ok_or_else(|| corrupt("leaf entries out of range".into()))?;
                    for pair in words.chunks_exact(2) {
                        *acc.get_mut(pair[0] as usize)
                            .ok_or_else(|| corrupt(format!("leaf output {} out of range", pair[0])))? +=
                            f64::from(f32::from_bits(pair[1]));
                    }
                }
            }
        }
        self.finish(acc)?;
        for (o, a) in out.iter_mut().zip(acc.iter()) {
            *o = *a as f32;
        }
        Ok(())
    }

    /// Aggregation, base values, binary complement and post transform, in that order.
    fn finish(&self, acc: &mut [f64]) -> Result<(), PredictError> {
        if self.aggregate == Aggregate::Average && !self.tree_roots.is_empty() {
            let n = self.tree_roots.len() as f64;
            acc.iter_mut().for_each(|a| *a /= n);
        }
        if !self.base_values.is_empty() {
            if self.base_values.len() != acc.len() {
                return Err(corrupt("base_values length differs from n_outputs".into()));
            }
            for (a, b) in acc.iter_mut().zip(&self.base_values) {
                *a += f64::from(*b);
            }
        }
        if self.binary_complement {
            if acc.len() != 2 {
                return Err(corrupt("binary complement needs exactly 2 outputs".into()));
            }
            acc[0] = 1.0 - acc[1];
        }
        match self.post_transform {
            PostTransform::None => {}
            PostTransform::Logistic => acc.iter_mut().for_each(|a| *a = 1.0 / (1.0 + (-*a).exp())),
            PostTransform::Softmax => {
                let max = acc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let mut sum = 0.0;
                for a in acc.iter_mut() {
                    *a = (*a - max).exp();
                    sum += *a;
                }
                if sum > 0.0 {
                    acc.iter_mut().for_each(|a| *a /= sum);
                }
            }
        }
        Ok(())
    }

    /// Follows `row` from `root` to a leaf, at most `max_depth` steps.
    fn find_leaf(&self, root: u32, row: &[f32]) -> Result<(Leaf, u32), PredictError> {
        let w = self.node_format.words();
        let mut node = root as usize;
        for depth in 0..=self.max_depth {
            let words = node
                .checked_mul(w)
                .and_then(|start| self.nodes.get(start..start + w))
                .ok_or_else(|| corrupt(format!("node {node} out of range")))?;
            let w0 = words[0];
            if w0 & LEAF_BIT != 0 {
                let leaf = if w0 & FLAG_BIT != 0 {
                    Leaf::Inline {
                        output: w0 & LOW30_MASK,
                        weight: f32::from_bits(words[1]),
                    }
                } else {
                    Leaf::Pairs {
                        first: words[1] as usize,
                        count: (w0 & LOW30_MASK) as usize,
                    }
                };
                return Ok((leaf, depth));
            }
            if depth == self.max_depth {
                break;
            }
            let (feature, left) = match self.node_format {
                NodeFormat::Compact => (
                    ((w0 >> COMPACT_FEATURE_SHIFT) & COMPACT_FEATURE_MASK) as usize,
                    node + (w0 & COMPACT_DELTA_MASK) as usize,
                ),
                NodeFormat::Wide => ((w0 & LOW30_MASK) as usize, words[2] as usize),
            };
            let x = *row
                .get(feature)
                .ok_or_else(|| corrupt(format!("feature {feature} out of range")))?;
            let threshold = f32::from_bits(words[1]);
            let go_left = x <= threshold || (x.is_nan() && w0 & FLAG_BIT != 0);
            node = if go_left { left } else { left + 1 };
        }
        Err(corrupt(format!(
            "traversal from root {root} did not reach a leaf within max_depth {}",
            self.max_depth
        )))
    }
}

fn corrupt(message: String) -> PredictError {
    PredictError::CorruptLayout(message)
}

/// Index of the largest score; ties go to the lowest index (as numpy's argmax).
pub fn argmax(scores: &[f32]) -> u32 {
    let mut best = 0usize;
    for (i, &s) in scores.iter().enumerate() {
        if s > scores[best] {
            best = i;
        }
    }
    best as u32
}

impl Prediction {
    /// The scores of row `row`.
    pub fn row(&self, row: usize) -> &[f32] {
        self.scores
            .get(row * self.n_outputs..(row + 1) * self.n_outputs)
            .unwrap_or(&[])
    }
}
