//! Forests from scikit-learn `tree_` arrays, and the paper's benchmark workload.
//!
//! A tree directory holds one-line CSV files `left.csv`, `right.csv`, `feature.csv`,
//! `threshold.csv` (scikit-learn's `children_left`, `children_right`, `feature`,
//! `threshold`; `-1`/`-2` at leaves) and `values.csv` (one line per node: the per-class
//! values of `tree_.value[:, 0, :]`). Optional: `missing_go_to_left.csv` (one line, 0/1 per
//! node; enables NaN routing) and `classes.csv` (one line of class labels).

use std::path::Path;

use crate::import::{ImportError, ImportOptions};
use crate::model::{Aggregate, ClassLabels, Forest, MissingPolicy, PostTransform, Task};
use crate::rows::Rows;
use crate::threshold::floor_f32;
use crate::validate::{RawEntry, RawForest, RawNode, RawTree, SplitMode};

/// One scikit-learn classification tree as arrays.
#[derive(Debug, Clone, PartialEq)]
pub struct SklearnTree {
    /// `children_left` (-1 at leaves).
    pub children_left: Vec<i64>,
    /// `children_right` (-1 at leaves).
    pub children_right: Vec<i64>,
    /// `feature` (negative at leaves).
    pub feature: Vec<i64>,
    /// `threshold` (ignored at leaves).
    pub threshold: Vec<f64>,
    /// `n_nodes * n_classes` per-class values (counts or fractions).
    pub value: Vec<f64>,
    /// Number of classes.
    pub n_classes: usize,
    /// Per-node NaN routing, when known.
    pub missing_go_to_left: Option<Vec<bool>>,
    /// Class labels, when given (`0..n_classes` otherwise).
    pub classes: Option<ClassLabels>,
}

fn arrays_err(path: &Path, problem: impl Into<String>) -> ImportError {
    ImportError::Arrays {
        path: path.to_owned(),
        problem: problem.into(),
    }
}

fn read_text(path: &Path) -> Result<String, ImportError> {
    std::fs::read_to_string(path).map_err(|source| ImportError::Io {
        path: path.to_owned(),
        source,
    })
}

fn parse_numbers(path: &Path, text: &str) -> Result<Vec<f64>, ImportError> {
    text.split([',', '\n', '\r'])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| {
            s.parse::<f64>()
                .map_err(|_| arrays_err(path, format!("value {} ({s:?}) is not a number", i + 1)))
        })
        .collect()
}

fn parse_ints(path: &Path, text: &str) -> Result<Vec<i64>, ImportError> {
    parse_numbers(path, text)?
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            if v.fract() == 0.0 && v.abs() < 9.0e15 {
                Ok(v as i64)
            } else {
                Err(arrays_err(path, format!("value {} ({v}) is not an integer", i + 1)))
            }
        })
        .collect()
}

impl SklearnTree {
    /// Reads a tree directory (see the module docs).
    pub fn load(dir: &Path) -> Result<Self, ImportError> {
        if !dir.is_dir() {
            return Err(arrays_err(dir, "not a directory of scikit-learn tree arrays"));
        }
        let file = |name: &str| dir.join(name);
        let ints = |name: &str| {
            let path = file(name);
            parse_ints(&path, &read_text(&path)?)
        };
        let children_left = ints("left.csv")?;
        let n = children_left.len();
        let same = |name: &str, len: usize| {
            if len == n {
                Ok(())
            } else {
                Err(arrays_err(&file(name), format!("{len} values, left.csv has {n}")))
            }
        };
        let children_right = ints("right.csv")?;
        same("right.csv", children_right.len())?;
        let feature = ints("feature.csv")?;
        same("feature.csv", feature.len())?;
        let path = file("threshold.csv");
        let threshold = parse_numbers(&path, &read_text(&path)?)?;
        same("threshold.csv", threshold.len())?;

        let path = file("values.csv");
        let text = read_text(&path)?;
        let mut value = Vec::new();
        let mut n_classes = 0;
        let mut lines = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row = parse_numbers(&path, line)?;
            if lines == 0 {
                n_classes = row.len();
            } else if row.len() != n_classes {
                return Err(arrays_err(
                    &path,
                    format!("line {} has {} values, line 1 has {n_classes}", lines + 1, row.len()),
                ));
            }
            value.extend(row);
            lines += 1;
        }
        same("values.csv", lines)?;
        if n_classes == 0 {
            return Err(arrays_err(&path, "no classes"));
        }

        let missing_path = file("missing_go_to_left.csv");
        let missing_go_to_left = if missing_path.exists() {
            let v = parse_ints(&missing_path, &read_text(&missing_path)?)?;
            same("missing_go_to_left.csv", v.len())?;
            Some(v.into_iter().map(|x| x != 0).collect())
        } else {
            None
        };
        let classes_path = file("classes.csv");
        let classes = if classes_path.exists() {
            let text = read_text(&classes_path)?;
            let fields: Vec<&str> = text
                .split([',', '\n', '\r'])
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if fields.len() != n_classes {
                return Err(arrays_err(
                    &classes_path,
                    format!("{} labels for {n_classes} classes", fields.len()),
                ));
            }
            let ints: Option<Vec<i64>> = fields.iter().map(|s| s.parse().ok()).collect();
            Some(match ints {
                Some(v) => ClassLabels::Int64(v),
                None => ClassLabels::Strings(fields.iter().map(|s| s.to_string()).collect()),
            })
        } else {
            None
        };
        let tree = SklearnTree {
            children_left,
            children_right,
            feature,
            threshold,
            value,
            n_classes,
            missing_go_to_left,
            classes,
        };
        tree.check_shapes()?;
        Ok(tree)
    }

    /// Number of nodes.
    pub fn n_nodes(&self) -> usize {
        self.children_left.len()
    }

    /// Checks that the parallel arrays have matching lengths.
    pub fn check_shapes(&self) -> Result<(), ImportError> {
        let n = self.n_nodes();
        let bad = |what: &str, len: usize, want: usize| {
            Err(arrays_err(
                Path::new("<arrays>"),
                format!("{what} has {len} values, expected {want}"),
            ))
        };
        for (what, len) in [
            ("children_right", self.children_right.len()),
            ("feature", self.feature.len()),
            ("threshold", self.threshold.len()),
        ] {
            if len != n {
                return bad(what, len, n);
            }
        }
        if self.n_classes == 0 || Some(self.value.len()) != n.checked_mul(self.n_classes) {
            return bad("value", self.value.len(), n.saturating_mul(self.n_classes));
        }
        if let Some(m) = &self.missing_go_to_left
            && m.len() != n
        {
            return bad("missing_go_to_left", m.len(), n);
        }
        Ok(())
    }

    /// The tree as unvalidated nodes; leaf values are normalised to class fractions, as
    /// `predict_proba` does. The arrays must have passed [`SklearnTree::check_shapes`].
    fn to_raw_tree(&self, id: i64) -> RawTree {
        let n = self.n_nodes();
        let mut tree = RawTree {
            id,
            nodes: Vec::with_capacity(n),
            entries: Vec::new(),
        };
        for i in 0..n {
            let (left, right) = (self.children_left[i], self.children_right[i]);
            // scikit-learn marks leaves with -1 (TREE_LEAF) on both sides.
            if left == -1 && right == -1 {
                tree.nodes.push(RawNode::Leaf);
                let row = &self.value[i * self.n_classes..(i + 1) * self.n_classes];
                let sum: f64 = row.iter().sum();
                if sum != 0.0 {
                    for (class, &v) in row.iter().enumerate() {
                        tree.entries.push(RawEntry {
                            node: i as i64,
                            output: class as i64,
                            weight: v / sum,
                        });
                    }
                }
            } else {
                tree.nodes.push(RawNode::Branch {
                    mode: SplitMode::Leq,
                    feature: self.feature[i],
                    threshold: self.threshold[i],
                    true_child: left,
                    false_child: right,
                    missing_tracks_true: self.missing_go_to_left.as_ref().is_some_and(|m| m[i]),
                });
            }
        }
        tree
    }

    /// A validated averaging forest of `n_trees` copies of this tree (`n_trees = 1` is the
    /// tree itself; larger counts are the paper's W1 workload).
    pub fn forest(&self, n_trees: usize, options: &ImportOptions) -> Result<Forest, ImportError> {
        self.check_shapes()?;
        let max_feature = self.feature.iter().copied().max().unwrap_or(-1);
        let raw = RawForest {
            task: Task::Classifier {
                labels: self
                    .classes
                    .clone()
                    .unwrap_or_else(|| ClassLabels::Int64((0..self.n_classes as i64).collect())),
            },
            n_features: options.n_features.unwrap_or((max_feature + 1).max(1) as u64),
            n_outputs: self.n_classes as u64,
            trees: vec![self.to_raw_tree(0)],
            aggregate: Aggregate::Average,
            post_transform: PostTransform::None,
            base_values: Vec::new(),
            binary_complement: false,
            missing: if self.missing_go_to_left.is_some() {
                MissingPolicy::Route
            } else {
                MissingPolicy::Reject
            },
            max_depth_limit: options.max_depth,
        };
        let one = raw.validate()?;
        if n_trees == 1 {
            Ok(one)
        } else {
            Ok(one.repeat_trees(n_trees)?)
        }
    }

    /// For each feature `0..n_features`, the sorted distinct thresholds the tree splits it on.
    pub fn thresholds_by_feature(&self, n_features: usize) -> Vec<Vec<f64>> {
        let mut by_feature = vec![Vec::new(); n_features];
        let nodes = self.children_left.iter().zip(&self.feature).zip(&self.threshold);
        for ((&left, &f), &t) in nodes {
            if left != -1 && f >= 0 && (f as usize) < n_features && t.is_finite() {
                by_feature[f as usize].push(t);
            }
        }
        for t in &mut by_feature {
            t.sort_by(f64::total_cmp);
            t.dedup();
        }
        by_feature
    }
}

/// Deterministic input rows for a tree, drawn from values around the thresholds the tree
/// uses, so that traversals reach realistic depths.
///
/// Features drawn independently around thresholds mostly fall out near the root (mean depth
/// about 6 on the paper tree), whereas real traffic follows the training distribution. So
/// each row first picks a leaf in proportion to its training samples (the sums of
/// `values.csv` rows), then draws every feature on that leaf's path between the thresholds
/// that bound it (within `max(|t| / 10, 1)` of a one-sided bound), and every other feature
/// around a random threshold of its own (0 for features the tree never uses). Each row
/// therefore reaches its leaf, and the mean depth is the sample-weighted mean leaf depth.
pub fn rows_around_thresholds(
    tree: &SklearnTree,
    n_features: usize,
    n_rows: usize,
    seed: u64,
) -> Result<Rows, ImportError> {
    tree.check_shapes()?;
    let thresholds = tree.thresholds_by_feature(n_features);
    let paths = LeafPaths::new(tree);
    let mut rng = SplitMix64(seed);
    let mut data = Vec::with_capacity(n_rows * n_features);
    let mut bounds = vec![(f64::NEG_INFINITY, f64::INFINITY); n_features];
    for _ in 0..n_rows {
        bounds.fill((f64::NEG_INFINITY, f64::INFINITY));
        if let Some(leaf) = paths.pick(&mut rng) {
            paths.constrain(tree, leaf, &mut bounds);
        }
        for (feature, &(lo, hi)) in bounds.iter().enumerate() {
            let x = match (lo.is_finite(), hi.is_finite()) {
                (true, true) => lo + (hi - lo) * rng.unit_open_low(),
                (true, false) => lo + spread(lo) * rng.unit_open_low(),
                (false, true) => hi - spread(hi) * rng.unit(),
                (false, false) => {
                    let t = &thresholds[feature];
                    if t.is_empty() {
                        0.0
                    } else {
                        let centre = t[rng.below(t.len())];
                        let offset = rng.unit() * spread(centre);
                        if rng.next() & 1 == 0 {
                            centre - offset
                        } else {
                            centre + offset
                        }
                    }
                }
            };
            data.push(clamp_f32(x, lo, hi));
        }
    }
    Ok(Rows {
        data,
        n_rows,
        n_features,
    })
}

fn spread(t: f64) -> f64 {
    (t.abs() / 10.0).max(1.0)
}

/// Rounds `x` to f32 while keeping `lo < x <= hi` under scikit-learn's f32 comparisons.
fn clamp_f32(x: f64, lo: f64, hi: f64) -> f32 {
    let mut v = x as f32;
    if hi.is_finite() {
        v = v.min(floor_f32(hi));
    }
    if lo.is_finite() {
        let above_lo = next_up_f32(floor_f32(lo));
        if v < above_lo {
            v = above_lo;
        }
    }
    v
}

fn next_up_f32(f: f32) -> f32 {
    -crate::threshold::prev_f32(-f)
}

/// Root-to-leaf paths of a tree, and leaf weights by training samples.
struct LeafPaths {
    parent: Vec<usize>,
    leaves: Vec<usize>,
    cumulative: Vec<f64>,
}

const NO_PARENT: usize = usize::MAX;

impl LeafPaths {
    fn new(tree: &SklearnTree) -> Self {
        let n = tree.n_nodes();
        let mut parent = vec![NO_PARENT; n];
        for (i, (&l, &r)) in tree.children_left.iter().zip(&tree.children_right).enumerate() {
            for c in [l, r] {
                if c >= 0 && (c as usize) < n && c as usize != i {
                    parent[c as usize] = i;
                }
            }
        }
        let leaves: Vec<usize> = (0..n).filter(|&i| tree.children_left[i] == -1).collect();
        let k = tree.n_classes;
        let weight = |i: usize| -> f64 {
            let w: f64 = tree.value.get(i * k..(i + 1) * k).map_or(0.0, |row| row.iter().sum());
            if w.is_finite() && w > 0.0 { w } else { 0.0 }
        };
        let total: f64 = leaves.iter().map(|&l| weight(l)).sum();
        let mut acc = 0.0;
        let cumulative = leaves
            .iter()
            .map(|&l| {
                acc += if total > 0.0 { weight(l) } else { 1.0 };
                acc
            })
            .collect();
        LeafPaths {
            parent,
            leaves,
            cumulative,
        }
    }

    fn pick(&self, rng: &mut SplitMix64) -> Option<usize> {
        let total = *self.cumulative.last()?;
        let target = rng.unit() * total;
        let i = self.cumulative.partition_point(|&c| c <= target);
        self.leaves.get(i.min(self.leaves.len() - 1)).copied()
    }

    /// Narrows `bounds` (exclusive low, inclusive high) to the splits on the path to `leaf`.
    fn constrain(&self, tree: &SklearnTree, leaf: usize, bounds: &mut [(f64, f64)]) {
        let mut node = leaf;
        // A path is at most n_nodes long; the bound guards against malformed parent links.
        for _ in 0..tree.n_nodes() {
            let p = self.parent[node];
            if p == NO_PARENT {
                break;
            }
            let (f, t) = (tree.feature[p], tree.threshold[p]);
            if f >= 0 && (f as usize) < bounds.len() {
                let b = &mut bounds[f as usize];
                if tree.children_left[p] == node as i64 {
                    b.1 = b.1.min(t);
                } else {
                    b.0 = b.0.max(t);
                }
            }
            node = p;
        }
    }
}

/// The paper's "150x6000x300" benchmark: the tree repeated, inputs and how deep they go.
#[derive(Debug, Clone)]
pub struct PaperWorkload {
    /// The W1 forest (the paper tree repeated `n_trees` times).
    pub forest: Forest,
    /// Generated input rows.
    pub rows: Rows,
    /// Mean number of internal nodes visited per row (same for every copy of the tree;
    /// about 18.4 for the paper tree, its sample-weighted mean leaf depth).
    pub mean_depth: f64,
}

/// Builds the paper workload from a tree directory.
pub fn paper_workload(dir: &Path, n_trees: usize, n_rows: usize, seed: u64) -> Result<PaperWorkload, ImportError> {
    let tree = SklearnTree::load(dir)?;
    let forest = tree.forest(n_trees, &ImportOptions::default())?;
    let n_features = forest.n_features() as usize;
    let rows = rows_around_thresholds(&tree, n_features, n_rows, seed)?;
    let first = &forest.trees()[0];
    let total: u64 = (0..rows.n_rows).map(|r| u64::from(first.leaf_for(rows.row(r)).1)).sum();
    let mean_depth = if n_rows == 0 { 0.0 } else { total as f64 / n_rows as f64 };
    Ok(PaperWorkload {
        forest,
        rows,
        mean_depth,
    })
}

/// A tiny, fixed PRNG so generated inputs never change across crate versions.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in `(0, 1]`.
    fn unit_open_low(&mut self) -> f64 {
        1.0 - self.unit()
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.unit() * n as f64) as usize % n.max(1)
    }
}
