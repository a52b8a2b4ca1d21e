//! CPU reference predictor over the compiled GPU layout.
//!
//! It implements exactly the traversal and aggregation the GPU kernel implements, so it is
//! both the reference for GPU parity tests and a fallback. It never trusts the layout: every
//! index is bounds-checked and every traversal is bounded by `max_depth`.

use rayon::prelude::*;
use thiserror::Error;

use crate::exact::FixedPoint;
use crate::layout::{FLAG_BIT, GpuForest, LOW30_MASK, NodeWords};
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
    ///
    /// Each row's aggregated values (tree sum or mean, base values, binary complement) are rounded to
    /// f32; the label is their argmax, and the scores are [`apply_post_transform`] of them.
    ///
    /// Classifiers whose weights fit a fixed-point scale ([`GpuForest::fixed_point`]) accumulate in
    /// fixed point, exactly as the GPU kernel does, so that both give the same scores bit for bit
    /// (`crate::exact`); the others accumulate in f64.
    pub fn predict_cpu(&self, rows: &[f32], n_rows: usize) -> Result<Prediction, PredictError> {
        self.predict_cpu_with(self.fixed_point().as_ref(), rows, n_rows)
    }

    /// As [`GpuForest::predict_cpu`], with the forest's fixed-point arithmetic computed beforehand (it
    /// scans every node): `fixed` must be what [`GpuForest::fixed_point`] returns for this forest.
    pub fn predict_cpu_with(
        &self,
        fixed: Option<&FixedPoint>,
        rows: &[f32],
        n_rows: usize,
    ) -> Result<Prediction, PredictError> {
        self.check_input(rows, n_rows)?;
        let n_out = self.n_outputs as usize;
        let nf = self.n_features as usize;
        let mut scores = vec![0f32; n_rows * n_out];
        if n_out > 0 && nf > 0 {
            let pairs = scores.par_chunks_mut(n_out).zip(rows.par_chunks(nf));
            match fixed {
                Some(fixed) => pairs.try_for_each_init(
                    || vec![0i32; n_out],
                    |acc, (out, row)| self.predict_row_fixed(fixed, row, acc, out),
                )?,
                None => {
                    pairs.try_for_each_init(|| vec![0f64; n_out], |acc, (out, row)| self.predict_row(row, acc, out))?
                }
            }
        }
        // Labels from the aggregated values, before the post transform (which is monotonic; its f32
        // results may tie where the values do not), as the GPU kernel computes them.
        let labels = if self.task.is_classifier() && n_out > 0 {
            scores.chunks(n_out).map(argmax).collect()
        } else {
            Vec::new()
        };
        if self.post_transform != PostTransform::None && n_out > 0 {
            scores
                .par_chunks_mut(n_out)
                .for_each(|row| apply_post_transform(self.post_transform, row));
        }
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
            self.for_each_entry(leaf, |output, weight| {
                *acc.get_mut(output as usize)
                    .ok_or_else(|| corrupt(format!("leaf output {output} out of range")))? += f64::from(weight);
                Ok(())
            })?;
        }
        self.finish(acc)?;
        for (o, a) in out.iter_mut().zip(acc.iter()) {
            *o = *a as f32;
        }
        Ok(())
    }

    /// One row's aggregated values in fixed point (`crate::exact`): the kernel's integer sums and
    /// conversion.
    fn predict_row_fixed(
        &self,
        fixed: &FixedPoint,
        row: &[f32],
        acc: &mut [i32],
        out: &mut [f32],
    ) -> Result<(), PredictError> {
        acc.fill(0);
        for &root in &self.tree_roots {
            let (leaf, _) = self.find_leaf(root, row)?;
            self.for_each_entry(leaf, |output, weight| {
                let sum = acc
                    .get_mut(output as usize)
                    .ok_or_else(|| corrupt(format!("leaf output {output} out of range")))?;
                *sum = sum.wrapping_add(fixed.weight_to_fixed(weight));
                Ok(())
            })?;
        }
        fixed.totals(acc, self.binary_complement);
        for (o, total) in out.iter_mut().zip(acc.iter()) {
            *o = fixed.to_f32(*total);
        }
        Ok(())
    }

    /// Calls `add(output, weight)` for each entry of `leaf`.
    fn for_each_entry(
        &self,
        leaf: Leaf,
        mut add: impl FnMut(u32, f32) -> Result<(), PredictError>,
    ) -> Result<(), PredictError> {
        match leaf {
            Leaf::Inline { output, weight } => add(output, weight),
            Leaf::Pairs { first, count } => {
                let words = first
                    .checked_mul(2)
                    .and_then(|start| Some(start..start.checked_add(count.checked_mul(2)?)?))
                    .and_then(|range| self.leaf_entries.get(range))
                    .ok_or_else(|| corrupt("leaf entries out of range".into()))?;
                for pair in words.chunks_exact(2) {
                    add(pair[0], f32::from_bits(pair[1]))?;
                }
                Ok(())
            }
        }
    }

    /// Aggregation, base values and binary complement, in that order.
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
        Ok(())
    }

    /// Follows `row` from `root` to a leaf, at most `max_depth` steps.
    fn find_leaf(&self, root: u32, row: &[f32]) -> Result<(Leaf, u32), PredictError> {
        let mut node = root as usize;
        for depth in 0..=self.max_depth {
            let decoded = self
                .node_format
                .decode(&self.nodes, node)
                .ok_or_else(|| corrupt(format!("node {node} out of range")))?;
            let (feature, nan_left, threshold, left) = match decoded {
                NodeWords::Leaf { w0, w1 } => {
                    let leaf = if w0 & FLAG_BIT != 0 {
                        Leaf::Inline {
                            output: w0 & LOW30_MASK,
                            weight: f32::from_bits(w1),
                        }
                    } else {
                        Leaf::Pairs {
                            first: w1 as usize,
                            count: (w0 & LOW30_MASK) as usize,
                        }
                    };
                    return Ok((leaf, depth));
                }
                NodeWords::Internal {
                    feature,
                    nan_left,
                    threshold,
                    left,
                } => (feature as usize, nan_left, threshold, left),
            };
            if depth == self.max_depth {
                break;
            }
            let x = *row
                .get(feature)
                .ok_or_else(|| corrupt(format!("feature {feature} out of range")))?;
            let go_left = x <= f32::from_bits(threshold) || (x.is_nan() && nan_left);
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

/// Applies `post` to one row's aggregated values, in place: computed in f64 from the f32 values and
/// rounded once. The CPU reference and the GPU lanes (which read the kernel's aggregated values) both
/// call it, so their scores agree bit for bit wherever their aggregated values do.
pub fn apply_post_transform(post: PostTransform, row: &mut [f32]) {
    transform_row(post, row);
}

/// [`apply_post_transform`] on a row of little-endian f32 values (a response frame's bytes, which need
/// not be aligned for `f32`); a trailing partial value is left alone.
pub fn apply_post_transform_le(post: PostTransform, row: &mut [u8]) {
    transform_row(post, &mut LeF32(row));
}

/// A row of values the post transform reads and writes.
trait RowValues {
    fn len(&self) -> usize;
    fn get(&self, index: usize) -> f64;
    fn set(&mut self, index: usize, value: f64);
}

impl RowValues for [f32] {
    fn len(&self) -> usize {
        <[f32]>::len(self)
    }
    fn get(&self, index: usize) -> f64 {
        f64::from(self[index])
    }
    fn set(&mut self, index: usize, value: f64) {
        self[index] = value as f32;
    }
}

struct LeF32<'a>(&'a mut [u8]);

impl RowValues for LeF32<'_> {
    fn len(&self) -> usize {
        self.0.len() / 4
    }
    fn get(&self, index: usize) -> f64 {
        let bytes = &self.0[index * 4..index * 4 + 4];
        f64::from(f32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]))
    }
    fn set(&mut self, index: usize, value: f64) {
        self.0[index * 4..index * 4 + 4].copy_from_slice(&(value as f32).to_le_bytes());
    }
}

fn transform_row<R: RowValues + ?Sized>(post: PostTransform, row: &mut R) {
    let n = row.len();
    match post {
        PostTransform::None => {}
        PostTransform::Logistic => {
            for i in 0..n {
                let v = row.get(i);
                row.set(i, 1.0 / (1.0 + (-v).exp()));
            }
        }
        PostTransform::Softmax => {
            // No buffer: the exponentials are computed twice (the same bits both times).
            let max = (0..n).fold(f64::NEG_INFINITY, |m, i| m.max(row.get(i)));
            let sum: f64 = (0..n).map(|i| (row.get(i) - max).exp()).sum();
            if sum > 0.0 {
                for i in 0..n {
                    let v = row.get(i);
                    row.set(i, (v - max).exp() / sum);
                }
            }
        }
    }
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
