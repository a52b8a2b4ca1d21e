//! Unvalidated forests as importers read them, and the checks that turn them into a
//! [`Forest`].

use std::fmt;

use thiserror::Error;

use crate::model::{
    Aggregate, Forest, LeafEntry, MAX_TOTAL_NODES, MissingPolicy, Node, PostTransform, Split, Task, Tree,
};
use crate::threshold::{below_f32, floor_f32};

/// Deepest tree accepted by default: bounds every traversal loop on CPU and GPU.
pub const DEFAULT_MAX_DEPTH: u32 = 4096;
/// Most input features a model may declare (features are stored in 30 bits).
pub const MAX_FEATURES: u64 = 1 << 30;
/// Most outputs (classes or targets) a model may declare.
pub const MAX_OUTPUTS: u64 = 1 << 24;

/// The comparison a source split performs between the feature `x` and its threshold `t`;
/// the "true" child is taken when it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SplitMode {
    /// `x <= t`
    Leq,
    /// `x < t`
    Lt,
    /// `x >= t`
    Gte,
    /// `x > t`
    Gt,
    /// Any other mode (BRANCH_EQ, BRANCH_NEQ, BRANCH_MEMBER ...): rejected by validation.
    Unsupported(String),
}

/// A node as read from a file, before any check.
#[derive(Debug, Clone, PartialEq)]
pub enum RawNode {
    /// Internal node.
    Branch {
        /// Comparison mode.
        mode: SplitMode,
        /// Feature id as stored.
        feature: i64,
        /// Threshold exactly as stored (an f32 threshold is widened losslessly).
        threshold: f64,
        /// Child id taken when the comparison holds.
        true_child: i64,
        /// Child id taken otherwise.
        false_child: i64,
        /// Whether NaN takes the true child.
        missing_tracks_true: bool,
    },
    /// Leaf; its weights are the [`RawEntry`]s naming this node.
    Leaf,
}

/// One leaf weight as read from a file.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RawEntry {
    /// Node id (within the tree) of the leaf.
    pub node: i64,
    /// Class or target id.
    pub output: i64,
    /// Weight; zeros are dropped.
    pub weight: f64,
}

/// One tree as read from a file: node ids are indices into `nodes`, node 0 is the root.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RawTree {
    /// The tree's id in the source (used in error messages).
    pub id: i64,
    /// Nodes indexed by node id.
    pub nodes: Vec<RawNode>,
    /// Leaf weights.
    pub entries: Vec<RawEntry>,
}

/// A whole forest as read from a file, before any check.
#[derive(Debug, Clone, PartialEq)]
pub struct RawForest {
    /// Classifier or regressor.
    pub task: Task,
    /// Declared number of input features.
    pub n_features: u64,
    /// Declared number of outputs.
    pub n_outputs: u64,
    /// The trees.
    pub trees: Vec<RawTree>,
    /// Tree combination.
    pub aggregate: Aggregate,
    /// Final transform.
    pub post_transform: PostTransform,
    /// Offsets added after aggregation (empty or `n_outputs` long).
    pub base_values: Vec<f64>,
    /// ONNX binary encoding: output 0 is `1 - output 1`.
    pub binary_complement: bool,
    /// NaN handling.
    pub missing: MissingPolicy,
    /// Deepest tree accepted.
    pub max_depth_limit: u32,
}

/// Which child of a split an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The child taken when the comparison holds.
    True,
    /// The other child.
    False,
}

impl fmt::Display for Side {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Side::True => "true (left)",
            Side::False => "false (right)",
        })
    }
}

/// Something wrong with one node.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum NodeProblem {
    /// A child id is not a node of the tree.
    #[error("{side} child {child} out of range (tree has {n_nodes} nodes)")]
    ChildOutOfRange {
        /// Which child.
        side: Side,
        /// The bad id.
        child: i64,
        /// Nodes in the tree.
        n_nodes: usize,
    },
    /// A feature id is not below the declared feature count.
    #[error("feature {feature} out of range (model has {n_features} features)")]
    FeatureOutOfRange {
        /// The bad feature id.
        feature: i64,
        /// Declared feature count.
        n_features: u64,
    },
    /// NaN threshold. (Infinite thresholds are legal: scikit-learn writes `+inf` for splits
    /// that only separate missing from present values.)
    #[error("threshold is NaN")]
    NanThreshold,
    /// `x < -inf` / `x >= -inf` cannot be written as `x <= t` for an f32 `t`.
    #[error("threshold -inf with a strict comparison (BRANCH_LT/BRANCH_GTE) is not supported")]
    UnrepresentableThreshold,
    /// Unsupported comparison mode.
    #[error("unsupported node mode {0} (supported: BRANCH_LEQ, BRANCH_LT, BRANCH_GT, BRANCH_GTE, LEAF)")]
    UnsupportedMode(String),
    /// A leaf weight names an output that does not exist.
    #[error("output (class/target) id {output} out of range (model has {n_outputs} outputs)")]
    OutputOutOfRange {
        /// The bad id.
        output: i64,
        /// Declared outputs.
        n_outputs: u64,
    },
    /// NaN or infinite leaf weight (or one that overflows f32).
    #[error("leaf weight {0} is not finite as f32")]
    NonFiniteWeight(f64),
    /// Leaf weight attached to an internal node.
    #[error("has leaf weights but is not a leaf")]
    WeightsOnBranch,
    /// Leaf weight names a node id outside the tree.
    #[error("leaf weight names a node that does not exist (tree has {n_nodes} nodes)")]
    UnknownNode {
        /// Nodes in the tree.
        n_nodes: usize,
    },
    /// The node cannot be reached from the root.
    #[error("unreachable from the root")]
    Unreachable,
    /// The node is its own ancestor.
    #[error("is part of a cycle")]
    Cycle,
    /// The node has two parents.
    #[error("is reached more than once from the root (shared subtree or cycle)")]
    SharedChild,
    /// The path to this node is longer than the limit.
    #[error("lies deeper than the depth limit {limit}")]
    TooDeep {
        /// The limit.
        limit: u32,
    },
}

/// Something wrong with a whole tree.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum TreeProblem {
    /// No nodes.
    #[error("has no nodes")]
    Empty,
    /// Two nodes with the same id.
    #[error("node id {0} appears twice")]
    DuplicateNodeId(i64),
    /// Node ids are not `0..n`.
    #[error("node id {id} out of range (tree has {n_nodes} nodes; ids must be 0..n)")]
    NodeIdOutOfRange {
        /// The bad id.
        id: i64,
        /// Nodes in the tree.
        n_nodes: usize,
    },
    /// Leaf weights for a tree id that has no nodes.
    #[error("has leaf weights but no nodes")]
    WeightsWithoutNodes,
}

/// Something wrong with the model as a whole.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ModelProblem {
    /// No trees.
    #[error("model has no trees")]
    NoTrees,
    /// Feature count zero or too large.
    #[error("declared feature count {0} is outside 1..={max}", max = MAX_FEATURES)]
    BadFeatureCount(u64),
    /// Output count zero or too large.
    #[error("declared output count {0} is outside 1..={max}", max = MAX_OUTPUTS)]
    BadOutputCount(u64),
    /// Label count disagrees with the output count.
    #[error("model declares {labels} class labels but {n_outputs} outputs")]
    LabelCountMismatch {
        /// Labels.
        labels: usize,
        /// Outputs.
        n_outputs: u64,
    },
    /// `base_values` has the wrong length.
    #[error("base_values has {got} values; expected 0 or {n_outputs}")]
    BaseValuesLength {
        /// Actual length.
        got: usize,
        /// Outputs.
        n_outputs: u64,
    },
    /// NaN/infinite base value.
    #[error("base value {0} is not finite")]
    NonFiniteBaseValue(f64),
    /// Binary complement on something that is not a two-class classifier without transform.
    #[error("binary-complement encoding needs a two-class classifier without post_transform")]
    BadBinaryComplement,
    /// More nodes than the GPU layout can index.
    #[error("forest has more than {limit} nodes")]
    TooManyNodes {
        /// The limit.
        limit: usize,
    },
    /// An interior node that no tree reaches (TreeEnsemble opset 5).
    #[error("interior node {0} belongs to no tree (unreachable from every root)")]
    OrphanNode(u64),
    /// The depth limit itself is out of range.
    #[error("depth limit {0} is outside 1..={max}", max = DEFAULT_MAX_DEPTH)]
    BadDepthLimit(u32),
}

/// A validation failure, naming the tree and node where it applies.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum ModelError {
    /// A node-level problem.
    #[error("tree {tree}, node {node}: {problem}")]
    Node {
        /// Tree id from the source.
        tree: i64,
        /// Node id within the tree.
        node: i64,
        /// What is wrong.
        problem: NodeProblem,
    },
    /// A tree-level problem.
    #[error("tree {tree}: {problem}")]
    Tree {
        /// Tree id from the source.
        tree: i64,
        /// What is wrong.
        problem: TreeProblem,
    },
    /// A model-level problem.
    #[error("{0}")]
    Model(ModelProblem),
}

impl RawForest {
    /// Checks every structural rule and converts to the canonical form: thresholds become
    /// the f32 that reproduces the source comparison for f32 inputs, every split becomes
    /// "left iff `x <= t`", zero weights are dropped.
    pub fn validate(self) -> Result<Forest, ModelError> {
        self.validate_with_progress(&mut |_, _| {})
    }

    /// As [`RawForest::validate`], calling `progress(trees_done, n_trees)` after each tree.
    pub fn validate_with_progress(self, progress: &mut dyn FnMut(usize, usize)) -> Result<Forest, ModelError> {
        let model = |p| Err(ModelError::Model(p));
        if self.trees.is_empty() {
            return model(ModelProblem::NoTrees);
        }
        if self.n_features == 0 || self.n_features > MAX_FEATURES {
            return model(ModelProblem::BadFeatureCount(self.n_features));
        }
        if self.n_outputs == 0 || self.n_outputs > MAX_OUTPUTS {
            return model(ModelProblem::BadOutputCount(self.n_outputs));
        }
        if self.max_depth_limit == 0 || self.max_depth_limit > DEFAULT_MAX_DEPTH {
            return model(ModelProblem::BadDepthLimit(self.max_depth_limit));
        }
        if let Task::Classifier { labels } = &self.task
            && labels.len() as u64 != self.n_outputs
        {
            return model(ModelProblem::LabelCountMismatch {
                labels: labels.len(),
                n_outputs: self.n_outputs,
            });
        }
        if !self.base_values.is_empty() && self.base_values.len() as u64 != self.n_outputs {
            return model(ModelProblem::BaseValuesLength {
                got: self.base_values.len(),
                n_outputs: self.n_outputs,
            });
        }
        let mut base_values = Vec::with_capacity(self.base_values.len());
        for &b in &self.base_values {
            let f = b as f32;
            if !f.is_finite() {
                return model(ModelProblem::NonFiniteBaseValue(b));
            }
            base_values.push(f);
        }
        if self.binary_complement
            && (!self.task.is_classifier() || self.n_outputs != 2 || self.post_transform != PostTransform::None)
        {
            return model(ModelProblem::BadBinaryComplement);
        }
        let total_nodes = self
            .trees
            .iter()
            .fold(0usize, |acc, t| acc.saturating_add(t.nodes.len()));
        if total_nodes > MAX_TOTAL_NODES {
            return model(ModelProblem::TooManyNodes { limit: MAX_TOTAL_NODES });
        }

        let limits = Limits {
            n_features: self.n_features,
            n_outputs: self.n_outputs,
            max_depth: self.max_depth_limit,
            route_nan: self.missing == MissingPolicy::Route,
        };
        let n_trees = self.trees.len();
        let mut trees = Vec::with_capacity(n_trees);
        for (i, raw) in self.trees.into_iter().enumerate() {
            trees.push(validate_tree(raw, &limits)?);
            progress(i + 1, n_trees);
        }
        Ok(Forest {
            task: self.task,
            n_features: self.n_features as u32,
            n_outputs: self.n_outputs as u32,
            trees,
            aggregate: self.aggregate,
            post_transform: self.post_transform,
            base_values,
            binary_complement: self.binary_complement,
            missing: self.missing,
        })
    }
}

struct Limits {
    n_features: u64,
    n_outputs: u64,
    max_depth: u32,
    route_nan: bool,
}

const NO_PARENT: u32 = u32::MAX;

fn validate_tree(raw: RawTree, limits: &Limits) -> Result<Tree, ModelError> {
    let tree_id = raw.id;
    let n = raw.nodes.len();
    let node_err = |node: usize, problem| ModelError::Node {
        tree: tree_id,
        node: node as i64,
        problem,
    };
    if n == 0 {
        return Err(ModelError::Tree {
            tree: tree_id,
            problem: TreeProblem::Empty,
        });
    }

    // Local checks first, so a bad id is reported as such rather than as a structural error.
    let child_index = |side, child: i64| -> Result<u32, NodeProblem> {
        if child >= 0 && (child as u64) < n as u64 {
            Ok(child as u32)
        } else {
            Err(NodeProblem::ChildOutOfRange {
                side,
                child,
                n_nodes: n,
            })
        }
    };
    let mut children: Vec<Option<(u32, u32)>> = Vec::with_capacity(n);
    for (i, node) in raw.nodes.iter().enumerate() {
        match node {
            RawNode::Leaf => children.push(None),
            RawNode::Branch {
                mode,
                feature,
                threshold,
                true_child,
                false_child,
                ..
            } => {
                if let SplitMode::Unsupported(name) = mode {
                    return Err(node_err(i, NodeProblem::UnsupportedMode(name.clone())));
                }
                if *feature < 0 || *feature as u64 >= limits.n_features {
                    return Err(node_err(
                        i,
                        NodeProblem::FeatureOutOfRange {
                            feature: *feature,
                            n_features: limits.n_features,
                        },
                    ));
                }
                if threshold.is_nan() {
                    return Err(node_err(i, NodeProblem::NanThreshold));
                }
                if *threshold == f64::NEG_INFINITY && matches!(mode, SplitMode::Lt | SplitMode::Gte) {
                    return Err(node_err(i, NodeProblem::UnrepresentableThreshold));
                }
                let t = child_index(Side::True, *true_child).map_err(|p| node_err(i, p))?;
                let f = child_index(Side::False, *false_child).map_err(|p| node_err(i, p))?;
                children.push(Some((t, f)));
            }
        }
    }

    // Entries: range checks, then group by leaf with a counting sort.
    let mut counts = vec![0u32; n + 1];
    let mut kept: Vec<(u32, LeafEntry)> = Vec::with_capacity(raw.entries.len());
    for e in &raw.entries {
        if e.node < 0 || e.node as u64 >= n as u64 {
            return Err(ModelError::Node {
                tree: tree_id,
                node: e.node,
                problem: NodeProblem::UnknownNode { n_nodes: n },
            });
        }
        let node = e.node as usize;
        if children[node].is_some() {
            return Err(node_err(node, NodeProblem::WeightsOnBranch));
        }
        if e.output < 0 || e.output as u64 >= limits.n_outputs {
            return Err(node_err(
                node,
                NodeProblem::OutputOutOfRange {
                    output: e.output,
                    n_outputs: limits.n_outputs,
                },
            ));
        }
        let w = e.weight as f32;
        if !w.is_finite() {
            return Err(node_err(node, NodeProblem::NonFiniteWeight(e.weight)));
        }
        if w != 0.0 {
            counts[node] += 1;
            kept.push((
                node as u32,
                LeafEntry {
                    output: e.output as u32,
                    weight: w,
                },
            ));
        }
    }

    let max_depth = check_structure(&children, limits.max_depth).map_err(|(i, p)| node_err(i, p))?;

    // Prefix sums give each leaf its slice; a stable fill keeps source order within a leaf.
    let mut starts = vec![0u32; n + 1];
    for i in 0..n {
        starts[i + 1] = starts[i] + counts[i];
    }
    let mut fill = starts.clone();
    let mut entries = vec![LeafEntry { output: 0, weight: 0.0 }; kept.len()];
    for (node, entry) in kept {
        let slot = &mut fill[node as usize];
        entries[*slot as usize] = entry;
        *slot += 1;
    }

    let mut nodes = Vec::with_capacity(n);
    for (i, raw_node) in raw.nodes.into_iter().enumerate() {
        nodes.push(match raw_node {
            RawNode::Leaf => Node::Leaf {
                first_entry: starts[i],
                n_entries: counts[i],
            },
            RawNode::Branch {
                mode,
                feature,
                threshold,
                true_child,
                false_child,
                missing_tracks_true,
            } => {
                let (t, f) = (true_child as u32, false_child as u32);
                // Every mode becomes "left iff x <= t'": LT/GTE need the f32 strictly below
                // the threshold, GT/GTE swap which child counts as left.
                let (threshold, left, right, nan_left) = match mode {
                    SplitMode::Leq => (floor_f32(threshold), t, f, missing_tracks_true),
                    SplitMode::Lt => (below_f32(threshold), t, f, missing_tracks_true),
                    SplitMode::Gt => (floor_f32(threshold), f, t, !missing_tracks_true),
                    SplitMode::Gte => (below_f32(threshold), f, t, !missing_tracks_true),
                    SplitMode::Unsupported(name) => {
                        return Err(node_err(i, NodeProblem::UnsupportedMode(name)));
                    }
                };
                Node::Branch(Split {
                    feature: feature as u32,
                    threshold,
                    left,
                    right,
                    nan_goes_left: limits.route_nan && nan_left,
                })
            }
        });
    }
    Ok(Tree {
        nodes,
        entries,
        max_depth,
    })
}

/// Walks the tree from node 0 and proves it is a proper binary tree: every node reached
/// exactly once, no cycles, depth within `limit`. Returns the maximum depth (internal nodes
/// on the longest root-to-leaf path).
fn check_structure(children: &[Option<(u32, u32)>], limit: u32) -> Result<u32, (usize, NodeProblem)> {
    let n = children.len();
    let mut parent = vec![NO_PARENT; n];
    let mut visited = vec![false; n];
    visited[0] = true;
    let mut stack: Vec<(u32, u32)> = vec![(0, 0)];
    let mut max_depth = 0;
    while let Some((node, depth)) = stack.pop() {
        let Some((a, b)) = children[node as usize] else {
            max_depth = max_depth.max(depth);
            continue;
        };
        if depth >= limit {
            return Err((node as usize, NodeProblem::TooDeep { limit }));
        }
        for child in [a, b] {
            let c = child as usize;
            if visited[c] {
                let problem = if is_ancestor_or_self(&parent, child, node) {
                    NodeProblem::Cycle
                } else {
                    NodeProblem::SharedChild
                };
                return Err((c, problem));
            }
            visited[c] = true;
            parent[c] = node;
            stack.push((child, depth + 1));
        }
    }
    if let Some(unreached) = visited.iter().position(|v| !v) {
        return Err((unreached, NodeProblem::Unreachable));
    }
    Ok(max_depth)
}

fn is_ancestor_or_self(parent: &[u32], candidate: u32, mut node: u32) -> bool {
    // Parent links form a tree here (each node got one parent), so this walk ends.
    loop {
        if node == candidate {
            return true;
        }
        node = parent[node as usize];
        if node == NO_PARENT {
            return false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ClassLabels;

    fn branch(t: i64, f: i64) -> RawNode {
        RawNode::Branch {
            mode: SplitMode::Leq,
            feature: 0,
            threshold: 0.5,
            true_child: t,
            false_child: f,
            missing_tracks_true: false,
        }
    }

    fn forest(nodes: Vec<RawNode>, entries: Vec<RawEntry>) -> RawForest {
        RawForest {
            task: Task::Classifier {
                labels: ClassLabels::Int64(vec![0, 1]),
            },
            n_features: 2,
            n_outputs: 2,
            trees: vec![RawTree { id: 3, nodes, entries }],
            aggregate: Aggregate::Average,
            post_transform: PostTransform::None,
            base_values: vec![],
            binary_complement: false,
            missing: MissingPolicy::Reject,
            max_depth_limit: DEFAULT_MAX_DEPTH,
        }
    }

    fn leaf_entry(node: i64, output: i64, weight: f64) -> RawEntry {
        RawEntry { node, output, weight }
    }

    #[test]
    fn accepts_a_stump_and_drops_zero_weights() {
        let f = forest(
            vec![branch(1, 2), RawNode::Leaf, RawNode::Leaf],
            vec![
                leaf_entry(1, 0, 1.0),
                leaf_entry(1, 1, 0.0),
                leaf_entry(2, 1, 0.25),
                leaf_entry(2, 0, 0.75),
            ],
        )
        .validate()
        .unwrap();
        let tree = &f.trees()[0];
        assert_eq!(tree.max_depth(), 1);
        assert_eq!(tree.leaf_entries(1), &[LeafEntry { output: 0, weight: 1.0 }]);
        assert_eq!(tree.leaf_entries(2).len(), 2);
        assert_eq!(tree.leaf_entries(2)[0].output, 1);
    }

    #[test]
    fn names_tree_and_node_for_out_of_range_child() {
        let err = forest(vec![branch(1, 9001), RawNode::Leaf], vec![])
            .validate()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "tree 3, node 0: false (right) child 9001 out of range (tree has 2 nodes)"
        );
    }

    #[test]
    fn detects_cycles_shared_children_and_unreachable_nodes() {
        let cycle = forest(vec![branch(1, 2), branch(0, 2), RawNode::Leaf], vec![]);
        assert!(matches!(
            cycle.validate().unwrap_err(),
            ModelError::Node {
                problem: NodeProblem::Cycle | NodeProblem::SharedChild,
                ..
            }
        ));
        let self_loop = forest(vec![branch(1, 2), branch(1, 2), RawNode::Leaf], vec![]);
        let err = self_loop.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ModelError::Node {
                    problem: NodeProblem::Cycle | NodeProblem::SharedChild,
                    ..
                }
            ),
            "{err}"
        );
        let shared = forest(
            vec![branch(1, 2), branch(3, 4), branch(3, 4), RawNode::Leaf, RawNode::Leaf],
            vec![],
        );
        assert!(matches!(
            shared.validate().unwrap_err(),
            ModelError::Node {
                problem: NodeProblem::SharedChild,
                node: 3,
                ..
            }
        ));
        let root_cycle = forest(vec![branch(0, 1), RawNode::Leaf], vec![]);
        assert!(matches!(
            root_cycle.validate().unwrap_err(),
            ModelError::Node {
                problem: NodeProblem::Cycle,
                node: 0,
                ..
            }
        ));
        let unreachable = forest(vec![branch(1, 2), RawNode::Leaf, RawNode::Leaf, RawNode::Leaf], vec![]);
        assert_eq!(
            unreachable.validate().unwrap_err().to_string(),
            "tree 3, node 3: unreachable from the root"
        );
    }

    #[test]
    fn rejects_bad_features_thresholds_modes_outputs_weights() {
        let mut nodes = vec![branch(1, 2), RawNode::Leaf, RawNode::Leaf];
        if let RawNode::Branch { feature, .. } = &mut nodes[0] {
            *feature = 2;
        }
        assert!(
            forest(nodes, vec![])
                .validate()
                .unwrap_err()
                .to_string()
                .contains("feature 2 out of range")
        );

        let mut nodes = vec![branch(1, 2), RawNode::Leaf, RawNode::Leaf];
        if let RawNode::Branch { threshold, .. } = &mut nodes[0] {
            *threshold = f64::NAN;
        }
        assert!(
            forest(nodes, vec![])
                .validate()
                .unwrap_err()
                .to_string()
                .contains("threshold is NaN")
        );

        let mut nodes = vec![branch(1, 2), RawNode::Leaf, RawNode::Leaf];
        if let RawNode::Branch { mode, .. } = &mut nodes[0] {
            *mode = SplitMode::Unsupported("BRANCH_EQ".into());
        }
        assert!(
            forest(nodes, vec![])
                .validate()
                .unwrap_err()
                .to_string()
                .contains("BRANCH_EQ")
        );

        let nodes = vec![branch(1, 2), RawNode::Leaf, RawNode::Leaf];
        let err = forest(nodes.clone(), vec![leaf_entry(1, 5, 1.0)])
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("output (class/target) id 5 out of range"),
            "{err}"
        );
        let err = forest(nodes.clone(), vec![leaf_entry(1, 1, f64::INFINITY)])
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            ModelError::Node {
                problem: NodeProblem::NonFiniteWeight(_),
                ..
            }
        ));
        let err = forest(nodes.clone(), vec![leaf_entry(1, 1, 1e300)])
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            ModelError::Node {
                problem: NodeProblem::NonFiniteWeight(_),
                ..
            }
        ));
        let err = forest(nodes.clone(), vec![leaf_entry(0, 1, 1.0)])
            .validate()
            .unwrap_err();
        assert!(matches!(
            err,
            ModelError::Node {
                problem: NodeProblem::WeightsOnBranch,
                ..
            }
        ));
        let err = forest(nodes, vec![leaf_entry(7, 1, 1.0)]).validate().unwrap_err();
        assert!(matches!(
            err,
            ModelError::Node {
                problem: NodeProblem::UnknownNode { .. },
                node: 7,
                ..
            }
        ));
    }

    #[test]
    fn enforces_depth_limit() {
        // A chain: branch k at index 2k, its leaf at 2k+1, the next branch at 2k+2.
        let mut chain = Vec::new();
        for k in 0..10i64 {
            chain.push(branch(2 * k + 2, 2 * k + 1));
            chain.push(RawNode::Leaf);
        }
        chain.push(RawNode::Leaf);
        let mut f = forest(chain.clone(), vec![]);
        assert_eq!(f.clone().validate().unwrap().summary().max_depth, 10);
        f.max_depth_limit = 9;
        assert!(matches!(
            f.validate().unwrap_err(),
            ModelError::Node {
                problem: NodeProblem::TooDeep { limit: 9 },
                ..
            }
        ));
    }

    #[test]
    fn modes_map_to_canonical_left_iff_leq() {
        let mk = |mode| {
            forest(
                vec![
                    RawNode::Branch {
                        mode,
                        feature: 1,
                        threshold: 0.1,
                        true_child: 1,
                        false_child: 2,
                        missing_tracks_true: true,
                    },
                    RawNode::Leaf,
                    RawNode::Leaf,
                ],
                vec![],
            )
        };
        let split = |f: Forest| match f.trees()[0].nodes()[0] {
            Node::Branch(s) => s,
            Node::Leaf { .. } => unreachable!(),
        };
        let mut routed = mk(SplitMode::Gt);
        routed.missing = MissingPolicy::Route;
        let s = split(routed.validate().unwrap());
        assert_eq!((s.left, s.right, s.nan_goes_left), (2, 1, false));
        assert_eq!(s.threshold, floor_f32(0.1));
        let mut routed = mk(SplitMode::Lt);
        routed.missing = MissingPolicy::Route;
        let s = split(routed.validate().unwrap());
        assert_eq!((s.left, s.right, s.nan_goes_left), (1, 2, true));
        // Under Reject the NaN bit is never set.
        let s = split(mk(SplitMode::Lt).validate().unwrap());
        assert!(!s.nan_goes_left);
    }

    #[test]
    fn model_level_checks() {
        let ok = || forest(vec![RawNode::Leaf], vec![]);
        let mut f = ok();
        f.n_outputs = 3;
        assert!(matches!(
            f.validate().unwrap_err(),
            ModelError::Model(ModelProblem::LabelCountMismatch { .. })
        ));
        let mut f = ok();
        f.n_features = u64::MAX;
        assert!(matches!(
            f.validate().unwrap_err(),
            ModelError::Model(ModelProblem::BadFeatureCount(_))
        ));
        let mut f = ok();
        f.base_values = vec![1.0];
        assert!(matches!(
            f.validate().unwrap_err(),
            ModelError::Model(ModelProblem::BaseValuesLength { .. })
        ));
        let mut f = ok();
        f.trees.clear();
        assert!(matches!(
            f.validate().unwrap_err(),
            ModelError::Model(ModelProblem::NoTrees)
        ));
        let mut f = ok();
        f.task = Task::Regressor;
        f.binary_complement = true;
        assert!(matches!(
            f.validate().unwrap_err(),
            ModelError::Model(ModelProblem::BadBinaryComplement)
        ));
    }
}
