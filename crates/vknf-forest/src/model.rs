//! The validated, format-independent forest that every importer produces.
//!
//! A [`Forest`] can only be built through [`crate::RawForest::validate`], so holding one means
//! every structural rule has been checked: node ids in range, each tree a proper binary tree
//! reachable from its root, bounded depth, feature and output ids in range, finite values.

use std::fmt;

/// Most nodes in the whole forest: keeps every GPU word index within `u32`.
pub const MAX_TOTAL_NODES: usize = (u32::MAX / 4) as usize;

/// Which outputs the forest computes and how to name them.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Class probabilities (or scores); `labels` names each output column.
    Classifier {
        /// One label per output, in output order.
        labels: ClassLabels,
    },
    /// One or more regression targets.
    Regressor,
}

impl Task {
    /// True for [`Task::Classifier`].
    pub fn is_classifier(&self) -> bool {
        matches!(self, Task::Classifier { .. })
    }
}

/// Class labels as the model declared them (scikit-learn's `classes_`).
#[derive(Debug, Clone, PartialEq)]
pub enum ClassLabels {
    /// Integer labels (`classlabels_int64s`).
    Int64(Vec<i64>),
    /// String labels (`classlabels_strings`).
    Strings(Vec<String>),
}

impl ClassLabels {
    /// Number of classes.
    pub fn len(&self) -> usize {
        match self {
            ClassLabels::Int64(v) => v.len(),
            ClassLabels::Strings(v) => v.len(),
        }
    }

    /// True when there are no classes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Display name of class `index`, or `None` when out of range.
    pub fn name(&self, index: usize) -> Option<String> {
        match self {
            ClassLabels::Int64(v) => v.get(index).map(|l| l.to_string()),
            ClassLabels::Strings(v) => v.get(index).cloned(),
        }
    }
}

/// How the per-tree leaf sums become the forest output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Aggregate {
    /// Sum of the tree outputs (weights are already scaled, as skl2onnx writes them).
    Sum,
    /// Sum divided by the number of trees (scikit-learn's mean over estimators).
    Average,
}

/// Transform applied to the aggregated scores, last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostTransform {
    /// Scores are final.
    None,
    /// `1 / (1 + exp(-s))` per output.
    Logistic,
    /// Softmax over the outputs of a row.
    Softmax,
}

/// What a NaN input feature does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingPolicy {
    /// The model knows where NaN goes: each split's `nan_goes_left` bit decides.
    Route,
    /// The model carries no trustworthy NaN routing: rows containing NaN are rejected.
    Reject,
}

/// One (output, weight) contribution of a leaf.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeafEntry {
    /// Output (class or target) index.
    pub output: u32,
    /// Non-zero, finite weight added to that output.
    pub weight: f32,
}

/// A split in canonical form: go left iff `x <= threshold`, or `x` is NaN and `nan_goes_left`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    /// Feature index, `< n_features`.
    pub feature: u32,
    /// The f32 threshold that reproduces the source comparison exactly for f32 inputs.
    pub threshold: f32,
    /// Node index (within the tree) taken when the comparison holds.
    pub left: u32,
    /// Node index (within the tree) taken otherwise.
    pub right: u32,
    /// Where a NaN feature value goes (only meaningful under [`MissingPolicy::Route`]).
    pub nan_goes_left: bool,
}

/// A node of a validated tree.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Node {
    /// Internal node.
    Branch(Split),
    /// Leaf; its entries are `Tree::entries()[first_entry .. first_entry + n_entries]`.
    Leaf {
        /// Index of the first entry in the tree's entry list.
        first_entry: u32,
        /// Number of (non-zero) entries.
        n_entries: u32,
    },
}

/// One validated decision tree; node 0 is the root.
#[derive(Debug, Clone, PartialEq)]
pub struct Tree {
    pub(crate) nodes: Vec<Node>,
    pub(crate) entries: Vec<LeafEntry>,
    pub(crate) max_depth: u32,
}

impl Tree {
    /// All nodes; index 0 is the root and children are indices into this slice.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// All leaf entries of the tree, grouped by leaf.
    pub fn entries(&self) -> &[LeafEntry] {
        &self.entries
    }

    /// The entries of leaf `node` (empty for a branch or an out-of-range index).
    pub fn leaf_entries(&self, node: usize) -> &[LeafEntry] {
        match self.nodes.get(node) {
            Some(Node::Leaf { first_entry, n_entries }) => {
                let start = *first_entry as usize;
                self.entries.get(start..start + *n_entries as usize).unwrap_or(&[])
            }
            _ => &[],
        }
    }

    /// Largest number of internal nodes on a root-to-leaf path.
    pub fn max_depth(&self) -> u32 {
        self.max_depth
    }

    /// Number of leaves.
    pub fn n_leaves(&self) -> usize {
        self.nodes.iter().filter(|n| matches!(n, Node::Leaf { .. })).count()
    }

    /// Follows `row` from the root to a leaf; returns the leaf index and the number of
    /// internal nodes visited. NaN follows `nan_goes_left`.
    pub fn leaf_for(&self, row: &[f32]) -> (usize, u32) {
        let mut node = 0usize;
        let mut depth = 0u32;
        while let Some(Node::Branch(split)) = self.nodes.get(node) {
            let x = row.get(split.feature as usize).copied().unwrap_or(f32::NAN);
            let left = x <= split.threshold || (x.is_nan() && split.nan_goes_left);
            node = if left { split.left } else { split.right } as usize;
            depth += 1;
        }
        (node, depth)
    }
}

/// A validated forest, independent of any file format.
#[derive(Debug, Clone, PartialEq)]
pub struct Forest {
    pub(crate) task: Task,
    pub(crate) n_features: u32,
    pub(crate) n_outputs: u32,
    pub(crate) trees: Vec<Tree>,
    pub(crate) aggregate: Aggregate,
    pub(crate) post_transform: PostTransform,
    pub(crate) base_values: Vec<f32>,
    pub(crate) binary_complement: bool,
    pub(crate) missing: MissingPolicy,
}

impl Forest {
    /// Classifier (with labels) or regressor.
    pub fn task(&self) -> &Task {
        &self.task
    }
    /// Number of input features a row must have.
    pub fn n_features(&self) -> u32 {
        self.n_features
    }
    /// Number of outputs (classes or targets).
    pub fn n_outputs(&self) -> u32 {
        self.n_outputs
    }
    /// The trees.
    pub fn trees(&self) -> &[Tree] {
        &self.trees
    }
    /// How tree outputs are combined.
    pub fn aggregate(&self) -> Aggregate {
        self.aggregate
    }
    /// Final transform.
    pub fn post_transform(&self) -> PostTransform {
        self.post_transform
    }
    /// Per-output offsets added after aggregation (empty or `n_outputs` long).
    pub fn base_values(&self) -> &[f32] {
        &self.base_values
    }
    /// ONNX binary encoding: output 0 is `1 - output 1`.
    pub fn binary_complement(&self) -> bool {
        self.binary_complement
    }
    /// NaN handling.
    pub fn missing(&self) -> MissingPolicy {
        self.missing
    }

    /// Counts that describe the forest's size and shape.
    pub fn summary(&self) -> ForestSummary {
        let mut s = ForestSummary {
            n_trees: self.trees.len(),
            n_features: self.n_features,
            n_outputs: self.n_outputs,
            ..ForestSummary::default()
        };
        for tree in &self.trees {
            s.n_nodes += tree.nodes.len();
            s.max_depth = s.max_depth.max(tree.max_depth);
            for node in &tree.nodes {
                if let Node::Leaf { n_entries, .. } = node {
                    s.n_leaves += 1;
                    if *n_entries == 1 {
                        s.n_pure_leaves += 1;
                    }
                }
            }
        }
        s
    }

    /// A forest of `n` copies of this forest's trees (the paper's "one tree repeated N
    /// times" workload). Averaging forests stay averages; summing forests keep their sum
    /// semantics, so callers normally use this on a single-tree averaging forest.
    pub fn repeat_trees(&self, n: usize) -> Result<Forest, crate::ModelError> {
        if n == 0 {
            return Err(crate::ModelError::Model(crate::ModelProblem::NoTrees));
        }
        let total_nodes = self.trees.iter().map(|t| t.nodes.len()).sum::<usize>().checked_mul(n);
        match total_nodes {
            Some(total) if total <= MAX_TOTAL_NODES => {}
            _ => {
                return Err(crate::ModelError::Model(crate::ModelProblem::TooManyNodes {
                    limit: MAX_TOTAL_NODES,
                }));
            }
        }
        let mut trees = Vec::with_capacity(self.trees.len() * n);
        for _ in 0..n {
            trees.extend(self.trees.iter().cloned());
        }
        Ok(Forest { trees, ..self.clone() })
    }
}

/// Size and shape counts of a forest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForestSummary {
    /// Number of trees.
    pub n_trees: usize,
    /// Total nodes over all trees.
    pub n_nodes: usize,
    /// Total leaves over all trees.
    pub n_leaves: usize,
    /// Leaves with exactly one non-zero entry.
    pub n_pure_leaves: usize,
    /// Largest number of internal nodes on any root-to-leaf path.
    pub max_depth: u32,
    /// Input features.
    pub n_features: u32,
    /// Outputs (classes or targets).
    pub n_outputs: u32,
}

impl fmt::Display for ForestSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} trees, {} nodes ({} leaves, {} pure), {} features, {} outputs, max depth {}",
            self.n_trees,
            self.n_nodes,
            self.n_leaves,
            self.n_pure_leaves,
            self.n_features,
            self.n_outputs,
            self.max_depth
        )
    }
}
