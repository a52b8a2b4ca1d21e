//! The GPU layout: the contract between this crate and the forest compute kernel.
//!
//! See `docs/vkf-format.md` for the full description. In short: node `i` occupies words
//! `[i*W, (i+1)*W)`; each tree's nodes are contiguous with the root first; the children of
//! an internal node are adjacent (`right = left + 1`) and always lie after it.

use thiserror::Error;

use crate::model::{Aggregate, ClassLabels, Forest, MissingPolicy, Node, PostTransform, Task};

/// Bit 31 of word 0: set for leaves.
pub const LEAF_BIT: u32 = 1 << 31;
/// Bit 30 of word 0: internal node: NaN goes left; leaf: the single entry is inline.
pub const FLAG_BIT: u32 = 1 << 30;
/// Mask of the low 30 bits (wide feature, leaf payload).
pub const LOW30_MASK: u32 = (1 << 30) - 1;
/// Compact internal node: the feature lives in bits 18..30.
pub const COMPACT_FEATURE_SHIFT: u32 = 18;
/// Compact internal node: 12 feature bits.
pub const COMPACT_FEATURE_MASK: u32 = (1 << 12) - 1;
/// Compact internal node: the left-child delta lives in the low 18 bits.
pub const COMPACT_DELTA_MASK: u32 = (1 << 18) - 1;
/// Largest feature count the compact format can address.
pub const COMPACT_MAX_FEATURES: u32 = 4096;

/// How many 32-bit words each node takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeFormat {
    /// 2 words: feature and left-child delta packed into word 0.
    Compact,
    /// 4 words: feature and absolute left child in separate words.
    Wide,
}

impl NodeFormat {
    /// Words per node.
    pub fn words(self) -> usize {
        match self {
            NodeFormat::Compact => 2,
            NodeFormat::Wide => 4,
        }
    }
}

/// One node of the GPU layout, decoded from its words: the format's one reader, shared by the
/// layout check, the CPU reference's walk and the node blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NodeWords {
    /// A leaf: its words 0 (flags and payload) and 1, as stored.
    Leaf { w0: u32, w1: u32 },
    /// An internal node.
    Internal {
        /// The input feature it compares.
        feature: u32,
        /// NaN goes left ([`FLAG_BIT`]).
        nan_left: bool,
        /// The threshold's bits.
        threshold: u32,
        /// The left child's node index (the right child is the next node): a compact node's own
        /// index plus its delta, a wide node's word 2.
        left: usize,
    },
}

impl NodeFormat {
    /// Decodes node `index` of `nodes` (words in this format), or `None` when it lies outside them.
    #[inline]
    pub(crate) fn decode(self, nodes: &[u32], index: usize) -> Option<NodeWords> {
        let w = self.words();
        let words = nodes.get(index.checked_mul(w)?..index.checked_add(1)?.checked_mul(w)?)?;
        let w0 = words[0];
        if w0 & LEAF_BIT != 0 {
            return Some(NodeWords::Leaf { w0, w1: words[1] });
        }
        let (feature, left) = match self {
            NodeFormat::Compact => (
                (w0 >> COMPACT_FEATURE_SHIFT) & COMPACT_FEATURE_MASK,
                index + (w0 & COMPACT_DELTA_MASK) as usize,
            ),
            NodeFormat::Wide => (w0 & LOW30_MASK, words[2] as usize),
        };
        Some(NodeWords::Internal {
            feature,
            nan_left: w0 & FLAG_BIT != 0,
            threshold: words[1],
            left,
        })
    }
}

/// A forest compiled to the GPU layout; see the module docs and `docs/vkf-format.md`.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuForest {
    /// Classifier (with labels) or regressor.
    pub task: Task,
    /// Features per input row.
    pub n_features: u32,
    /// Classes (classifier) or targets (regressor).
    pub n_outputs: u32,
    /// Number of trees.
    pub n_trees: u32,
    /// Max number of internal nodes on any root-to-leaf path.
    pub max_depth: u32,
    /// Words per node.
    pub node_format: NodeFormat,
    /// `n_nodes * node_format.words()` words.
    pub nodes: Vec<u32>,
    /// Node index (not word index) of each tree's root.
    pub tree_roots: Vec<u32>,
    /// Pairs `[output index, weight f32 bits]`.
    pub leaf_entries: Vec<u32>,
    /// `Average` divides the tree sum by `n_trees`.
    pub aggregate: Aggregate,
    /// Final transform.
    pub post_transform: PostTransform,
    /// Empty or `n_outputs` values added after aggregation.
    pub base_values: Vec<f32>,
    /// Output 0 becomes `1 - output 1` after aggregation.
    pub binary_complement: bool,
    /// NaN routing or rejection.
    pub missing: MissingPolicy,
}

/// Why a forest could not be laid out for the GPU.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CompileError {
    /// More nodes than `u32` word indices allow.
    #[error("forest has {0} nodes; the GPU layout holds at most {max}", max = crate::model::MAX_TOTAL_NODES)]
    TooManyNodes(usize),
    /// More leaf entries than `u32` word indices allow.
    #[error("forest has {0} leaf entries; the GPU layout holds at most {max}", max = MAX_LEAF_ENTRIES)]
    TooManyLeafEntries(usize),
    /// A leaf with more entries than 30 bits can count.
    #[error("a leaf has {0} entries; at most {max} are allowed", max = LOW30_MASK)]
    LeafTooLarge(usize),
    /// A node layout no validated forest has (only possible for a hand-built `GpuForest`).
    #[error("invalid node layout: {0}")]
    InvalidLayout(String),
    /// Laid out in another order, a compact node would lie further from its children than its delta
    /// field reaches (the caller keeps the order it has).
    #[error("node {node} would lie {delta} nodes before its children, beyond a compact node's reach")]
    ChildTooFar {
        /// The node's index in the new order.
        node: usize,
        /// The distance to its left child.
        delta: usize,
    },
}

/// Most leaf entry pairs (each pair is 2 words; word indices stay within `u32`).
pub const MAX_LEAF_ENTRIES: usize = (u32::MAX / 2) as usize;

impl Forest {
    /// Lays the forest out in the GPU format, choosing [`NodeFormat::Compact`] when every
    /// feature id and left-child delta fits.
    pub fn compile(&self) -> Result<GpuForest, CompileError> {
        self.compile_with_progress(&mut |_, _| {})
    }

    /// As [`Forest::compile`], calling `progress(trees_done, n_trees)` per tree.
    pub fn compile_with_progress(&self, progress: &mut dyn FnMut(usize, usize)) -> Result<GpuForest, CompileError> {
        let n_nodes: usize = self.trees.iter().map(|t| t.nodes.len()).sum();
        if n_nodes > crate::model::MAX_TOTAL_NODES {
            return Err(CompileError::TooManyNodes(n_nodes));
        }
        // Pass 1: the order of nodes within each tree. Depth-first, children placed as an
        // adjacent pair right when their parent is visited, so left spines stay close.
        let mut orders = Vec::with_capacity(self.trees.len());
        let mut max_delta = 0u32;
        let mut n_entries = 0usize;
        for tree in &self.trees {
            let order = pair_order(tree.nodes());
            for (old, node) in tree.nodes.iter().enumerate() {
                match node {
                    Node::Branch(split) => {
                        let delta = order.new_of[split.left as usize] - order.new_of[old];
                        max_delta = max_delta.max(delta);
                    }
                    Node::Leaf { n_entries: k, .. } => {
                        if *k as usize > LOW30_MASK as usize {
                            return Err(CompileError::LeafTooLarge(*k as usize));
                        }
                        if *k != 1 {
                            n_entries += *k as usize;
                        }
                    }
                }
            }
            orders.push(order);
        }
        if n_entries > MAX_LEAF_ENTRIES {
            return Err(CompileError::TooManyLeafEntries(n_entries));
        }
        let format = if self.n_features <= COMPACT_MAX_FEATURES && max_delta <= COMPACT_DELTA_MASK {
            NodeFormat::Compact
        } else {
            NodeFormat::Wide
        };
        let w = format.words();

        // Pass 2: emit words.
        let mut nodes = vec![0u32; n_nodes * w];
        let mut leaf_entries = Vec::with_capacity(n_entries * 2);
        let mut tree_roots = Vec::with_capacity(self.trees.len());
        let mut base = 0u32;
        let n_trees = self.trees.len();
        for (t, (tree, order)) in self.trees.iter().zip(&orders).enumerate() {
            tree_roots.push(base);
            for (new, &old) in order.old_of.iter().enumerate() {
                let index = base + new as u32;
                let words = &mut nodes[index as usize * w..(index as usize + 1) * w];
                match tree.nodes[old as usize] {
                    Node::Branch(split) => {
                        let left = base + order.new_of[split.left as usize];
                        let nan = if split.nan_goes_left { FLAG_BIT } else { 0 };
                        match format {
                            NodeFormat::Compact => {
                                words[0] = nan | (split.feature << COMPACT_FEATURE_SHIFT) | (left - index);
                            }
                            NodeFormat::Wide => {
                                words[0] = nan | split.feature;
                                words[2] = left;
                            }
                        }
                        words[1] = split.threshold.to_bits();
                    }
                    Node::Leaf { .. } => {
                        let entries = tree.leaf_entries(old as usize);
                        if let [only] = entries {
                            words[0] = LEAF_BIT | FLAG_BIT | only.output;
                            words[1] = only.weight.to_bits();
                        } else {
                            words[0] = LEAF_BIT | entries.len() as u32;
                            words[1] = (leaf_entries.len() / 2) as u32;
                            for e in entries {
                                leaf_entries.push(e.output);
                                leaf_entries.push(e.weight.to_bits());
                            }
                        }
                    }
                }
            }
            base += order.old_of.len() as u32;
            progress(t + 1, n_trees);
        }
        Ok(GpuForest {
            task: self.task.clone(),
            n_features: self.n_features,
            n_outputs: self.n_outputs,
            n_trees: self.trees.len() as u32,
            max_depth: self.trees.iter().map(|t| t.max_depth).max().unwrap_or(0),
            node_format: format,
            nodes,
            tree_roots,
            leaf_entries,
            aggregate: self.aggregate,
            post_transform: self.post_transform,
            base_values: self.base_values.clone(),
            binary_complement: self.binary_complement,
            missing: self.missing,
        })
    }
}

struct PairOrder {
    /// new position -> old node index
    old_of: Vec<u32>,
    /// old node index -> new position
    new_of: Vec<u32>,
}

fn pair_order(nodes: &[Node]) -> PairOrder {
    let mut old_of = Vec::with_capacity(nodes.len());
    let mut new_of = vec![0u32; nodes.len()];
    old_of.push(0u32);
    let mut stack = vec![0u32];
    while let Some(old) = stack.pop() {
        if let Node::Branch(split) = nodes[old as usize] {
            new_of[split.left as usize] = old_of.len() as u32;
            old_of.push(split.left);
            new_of[split.right as usize] = old_of.len() as u32;
            old_of.push(split.right);
            // Left is popped first, so its whole subtree is laid out before the right one.
            stack.push(split.right);
            stack.push(split.left);
        }
    }
    PairOrder { old_of, new_of }
}

impl GpuForest {
    /// Checks words to be laid out again for the device (this forest's own [`GpuForest::nodes`], or
    /// the fixed-point words of [`GpuForest::fixed_point_words`]): the forest's layout keeps the node
    /// rules (`docs/vkf-format.md`: one parent per node, children after it in its tree, no deeper than
    /// `max_depth`; a hand-built `GpuForest` may break them), and `nodes` differ from its own in inline
    /// leaf weights only, never in structure. Those rules are what bound any walk over the words.
    pub(crate) fn check_node_words(&self, nodes: &[u32]) -> Result<(), CompileError> {
        let w = self.node_format.words();
        if nodes.len() != self.nodes.len() {
            return Err(CompileError::InvalidLayout(format!(
                "{} node words given for a forest of {}",
                nodes.len(),
                self.nodes.len()
            )));
        }
        self.check_layout()
            .map_err(|err| CompileError::InvalidLayout(err.to_string()))?;
        for (index, (given, own)) in nodes.chunks_exact(w).zip(self.nodes.chunks_exact(w)).enumerate() {
            let inline_leaf = own[0] & LEAF_BIT != 0 && own[0] & FLAG_BIT != 0;
            if given[0] != own[0] || (!inline_leaf && given[1] != own[1]) || given[2..] != own[2..] {
                return Err(CompileError::InvalidLayout(format!(
                    "node {index} differs from the forest's own in more than a leaf weight"
                )));
            }
        }
        Ok(())
    }

    /// Total number of nodes (`nodes.len() / node_format.words()`).
    pub fn n_nodes(&self) -> usize {
        self.nodes.len() / self.node_format.words()
    }

    /// Sum over trees of the largest `|weight|` of any single leaf entry in that tree: an
    /// upper bound on any accumulator before `Average` division, for a fixed-point scale.
    pub fn leaf_weight_bound(&self) -> f64 {
        let w = self.node_format.words();
        let n_nodes = self.n_nodes();
        let mut total = 0.0f64;
        for (t, &root) in self.tree_roots.iter().enumerate() {
            let end = self.tree_roots.get(t + 1).map_or(n_nodes, |&next| next as usize);
            let mut tree_max = 0.0f64;
            for i in (root as usize)..end.min(n_nodes) {
                let (w0, w1) = (self.nodes[i * w], self.nodes[i * w + 1]);
                if w0 & LEAF_BIT == 0 {
                    continue;
                }
                if w0 & FLAG_BIT != 0 {
                    tree_max = tree_max.max(f64::from(f32::from_bits(w1)).abs());
                } else {
                    let first = w1 as usize;
                    let count = (w0 & LOW30_MASK) as usize;
                    for pair in first..first.saturating_add(count) {
                        if let Some(&bits) = self.leaf_entries.get(pair * 2 + 1) {
                            tree_max = tree_max.max(f64::from(f32::from_bits(bits)).abs());
                        }
                    }
                }
            }
            total += tree_max;
        }
        total
    }

    /// The display name of output `label`: the class label for classifiers ("3", "https"),
    /// the target index for regressors; an out-of-range index is shown as `#<index>`.
    pub fn label_name(&self, label: u32) -> String {
        match &self.task {
            Task::Classifier { labels } => labels.name(label as usize).unwrap_or_else(|| format!("#{label}")),
            Task::Regressor if label < self.n_outputs => label.to_string(),
            Task::Regressor => format!("#{label}"),
        }
    }

    /// Class labels (classifiers only).
    pub fn class_labels(&self) -> Option<&ClassLabels> {
        match &self.task {
            Task::Classifier { labels } => Some(labels),
            Task::Regressor => None,
        }
    }
}
