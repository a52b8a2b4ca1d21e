//! The forest the soak serves and the rows its good clients send, with the labels the CPU reference
//! gives them (computed once, in process, before the server starts).

use std::path::Path;

use anyhow::Context as _;
use rand::{Rng as _, SeedableRng as _};

/// The served forest and a pool of rows with their expected labels.
pub struct Workload {
    /// What the forest is, for the summary.
    pub description: String,
    /// The model as `.vkf` bytes.
    pub vkf: Vec<u8>,
    /// Input width.
    pub n_features: usize,
    /// `n_rows * n_features` inputs.
    pub rows: Vec<f32>,
    /// The CPU reference's label of each row.
    pub labels: Vec<u32>,
}

impl Workload {
    /// The paper's tree repeated `trees` times, with `n_rows` rows generated around its thresholds.
    pub fn paper_tree(dir: &Path, trees: usize, n_rows: usize) -> anyhow::Result<Workload> {
        let workload = vknf_forest::paper_workload(dir, trees, n_rows, 2021)
            .with_context(|| format!("loading the paper tree from {}", dir.display()))?;
        let forest = workload.forest.compile().context("compiling the paper forest")?;
        Self::with_forest(
            format!("the paper's tree x{trees} ({})", dir.display()),
            &forest,
            workload.rows.data,
        )
    }

    /// A synthetic classifier (no files needed): `trees` trees of depth `depth` over `features`
    /// inputs and `classes` classes, rows uniform in [-1, 1).
    pub fn synthetic(
        features: usize,
        classes: usize,
        trees: usize,
        depth: u32,
        n_rows: usize,
    ) -> anyhow::Result<Workload> {
        let forest = vknf_testkit::synthetic::random_classifier(features, classes, trees, depth, 7);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let rows = (0..n_rows * features).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        Self::with_forest(
            format!("synthetic classifier: {trees} trees of depth {depth}, {features} features, {classes} classes"),
            &forest,
            rows,
        )
    }

    fn with_forest(description: String, forest: &vknf_forest::GpuForest, rows: Vec<f32>) -> anyhow::Result<Workload> {
        let n_features = forest.n_features as usize;
        let n_rows = rows.len() / n_features;
        let labels = forest
            .predict_cpu(&rows, n_rows)
            .context("the CPU reference on the pool of rows")?
            .labels;
        Ok(Workload {
            description,
            vkf: forest.to_vkf_bytes(),
            n_features,
            rows,
            labels,
        })
    }

    /// Rows in the pool.
    pub fn n_rows(&self) -> usize {
        self.labels.len()
    }

    /// `count` consecutive rows starting at `first` (wrapping is the caller's business) and their labels.
    pub fn slice(&self, first: usize, count: usize) -> (&[f32], &[u32]) {
        let first = first.min(self.n_rows() - count);
        (
            &self.rows[first * self.n_features..(first + count) * self.n_features],
            &self.labels[first..first + count],
        )
    }
}
