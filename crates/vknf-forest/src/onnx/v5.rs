//! `TreeEnsemble` (ai.onnx.ml opset 5).
//!
//! Interior nodes and leaves live in separate arrays and trees are defined by `tree_roots`
//! plus the child links, so tree membership is only known by walking. The walk here is
//! guarded (every interior node may be claimed once, depth is bounded) so hostile links
//! cannot loop; each reference to a leaf becomes its own leaf node. The operator has no
//! class labels, so it imports as a regressor over `n_targets` outputs.

use std::collections::VecDeque;

use super::Context;
use crate::import::{ImportError, NanRouting, Tracker};
use crate::model::{Aggregate, MissingPolicy, PostTransform, Task};
use crate::validate::{ModelError, ModelProblem, NodeProblem, RawEntry, RawForest, RawNode, RawTree, Side, SplitMode};

const UNCLAIMED: u32 = u32::MAX;

pub(crate) fn read(
    node: &super::attrs::NodeView<'_>,
    ctx: &Context,
    tracker: &mut Tracker<'_>,
) -> Result<RawForest, ImportError> {
    let attrs = node.attr_map()?;
    let get = |name: &str| attrs.get(name).copied();
    let required = |name: &str| get(name).ok_or_else(|| ImportError::attr(name, "required attribute is missing"));

    let features = required("nodes_featureids")?.ints(tracker)?;
    let n = features.len();
    let check = |name: &str, got: usize, reference: &str, expected: usize| {
        if got == expected {
            Ok(())
        } else {
            Err(ImportError::LengthMismatch {
                name: name.to_owned(),
                got,
                reference: reference.to_owned(),
                expected,
            })
        }
    };
    let mut ints = |name: &str| -> Result<Vec<i64>, ImportError> {
        let v = required(name)?.ints(tracker)?;
        check(name, v.len(), "nodes_featureids", n)?;
        Ok(v)
    };
    let true_ids = ints("nodes_truenodeids")?;
    let false_ids = ints("nodes_falsenodeids")?;
    let true_leafs = ints("nodes_trueleafs")?;
    let false_leafs = ints("nodes_falseleafs")?;
    let missing = match get("nodes_missing_value_tracks_true") {
        Some(_) => Some(ints("nodes_missing_value_tracks_true")?),
        None => None,
    };
    let splits = required("nodes_splits")?.tensor()?;
    let mut thresholds = Vec::with_capacity(n);
    splits.for_each_number(tracker, |v| thresholds.push(v))?;
    check("nodes_splits", thresholds.len(), "nodes_featureids", n)?;
    let mut modes = Vec::with_capacity(n);
    required("nodes_modes")?
        .tensor()?
        .for_each_number(tracker, |v| modes.push(v))?;
    check("nodes_modes", modes.len(), "nodes_featureids", n)?;

    let target_ids = required("leaf_targetids")?.ints(tracker)?;
    let mut weights = Vec::with_capacity(target_ids.len());
    required("leaf_weights")?
        .tensor()?
        .for_each_number(tracker, |v| weights.push(v))?;
    check("leaf_weights", weights.len(), "leaf_targetids", target_ids.len())?;
    let roots = required("tree_roots")?.ints(tracker)?;

    let int_or = |name: &str, default: i64| get(name).map_or(Ok(default), |a| a.int());
    let aggregate = match int_or("aggregate_function", 1)? {
        0 => Aggregate::Average,
        1 => Aggregate::Sum,
        other => {
            return Err(ImportError::Unsupported(format!(
                "aggregate_function {other} (MIN/MAX)"
            )));
        }
    };
    let post_transform = match int_or("post_transform", 0)? {
        0 => PostTransform::None,
        1 => PostTransform::Softmax,
        2 => PostTransform::Logistic,
        other => {
            return Err(ImportError::Unsupported(format!(
                "post_transform {other} (SOFTMAX_ZERO/PROBIT)"
            )));
        }
    };
    let n_targets = match get("n_targets") {
        Some(a) => u64::try_from(a.int()?).map_err(|_| ImportError::attr("n_targets", "must not be negative"))?,
        None => target_ids.iter().copied().max().map_or(1, |m| (m.max(0) + 1) as u64),
    };

    let n_leaves = target_ids.len();
    let leaf_entry = |tree: i64, local: usize, leaf: i64| -> Result<RawEntry, ImportError> {
        if leaf < 0 || leaf as u64 >= n_leaves as u64 {
            return Err(ImportError::attr(
                "nodes_truenodeids",
                format!("tree {tree}: leaf index {leaf} out of range ({n_leaves} leaves)"),
            ));
        }
        Ok(RawEntry {
            node: local as i64,
            output: target_ids[leaf as usize],
            weight: weights[leaf as usize],
        })
    };

    let mut owner = vec![UNCLAIMED; n];
    let mut trees = Vec::with_capacity(roots.len());
    let mut routes_nan = false;
    let mut max_feature = -1i64;
    for (t, &root) in roots.iter().enumerate() {
        let tree_id = t as i64;
        let node_err = |node: i64, problem| ModelError::Node {
            tree: tree_id,
            node,
            problem,
        };
        if root < 0 || root as u64 >= n as u64 {
            return Err(ImportError::attr(
                "tree_roots",
                format!("root {root} of tree {t} out of range ({n} interior nodes)"),
            ));
        }
        let r = root as usize;
        let mut tree = RawTree {
            id: tree_id,
            ..RawTree::default()
        };
        // A single-leaf tree is one node whose both branches name the same leaf.
        if true_leafs[r] != 0 && false_leafs[r] != 0 && true_ids[r] == false_ids[r] {
            claim(&mut owner, r, t, root, &node_err)?;
            tree.nodes.push(RawNode::Leaf);
            tree.entries.push(leaf_entry(tree_id, 0, true_ids[r])?);
            trees.push(tree);
            continue;
        }
        claim(&mut owner, r, t, root, &node_err)?;
        tree.nodes.push(RawNode::Leaf); // replaced below
        let mut queue = VecDeque::from([(r, 0usize, 0u32)]);
        while let Some((j, local, depth)) = queue.pop_front() {
            if depth >= ctx.options.max_depth {
                return Err(node_err(
                    j as i64,
                    NodeProblem::TooDeep {
                        limit: ctx.options.max_depth,
                    },
                )
                .into());
            }
            let mut child = |id: i64, is_leaf: bool, side: Side, tree: &mut RawTree| {
                let slot = tree.nodes.len();
                if is_leaf {
                    tree.nodes.push(RawNode::Leaf);
                    tree.entries.push(leaf_entry(tree_id, slot, id)?);
                } else {
                    if id < 0 || id as u64 >= n as u64 {
                        return Err(node_err(
                            j as i64,
                            NodeProblem::ChildOutOfRange {
                                side,
                                child: id,
                                n_nodes: n,
                            },
                        )
                        .into());
                    }
                    claim(&mut owner, id as usize, t, id, &node_err)?;
                    tree.nodes.push(RawNode::Leaf); // replaced when dequeued
                    queue.push_back((id as usize, slot, depth + 1));
                }
                Ok::<i64, ImportError>(slot as i64)
            };
            let true_child = child(true_ids[j], true_leafs[j] != 0, Side::True, &mut tree)?;
            let false_child = child(false_ids[j], false_leafs[j] != 0, Side::False, &mut tree)?;
            let tracks_true = missing.as_ref().is_some_and(|m| m[j] != 0);
            routes_nan |= tracks_true;
            max_feature = max_feature.max(features[j]);
            tree.nodes[local] = RawNode::Branch {
                mode: match modes[j] as i64 {
                    0 => SplitMode::Leq,
                    1 => SplitMode::Lt,
                    2 => SplitMode::Gte,
                    3 => SplitMode::Gt,
                    4 => SplitMode::Unsupported("BRANCH_EQ".into()),
                    5 => SplitMode::Unsupported("BRANCH_NEQ".into()),
                    6 => SplitMode::Unsupported("BRANCH_MEMBER".into()),
                    other => SplitMode::Unsupported(format!("mode {other}")),
                },
                feature: features[j],
                threshold: thresholds[j],
                true_child,
                false_child,
                missing_tracks_true: tracks_true,
            };
        }
        trees.push(tree);
    }
    if let Some(orphan) = owner.iter().position(|&o| o == UNCLAIMED) {
        return Err(ModelError::Model(ModelProblem::OrphanNode(orphan as u64)).into());
    }
    let missing = if routes_nan || ctx.options.nan == NanRouting::FollowOnnx {
        MissingPolicy::Route
    } else {
        MissingPolicy::Reject
    };
    Ok(RawForest {
        task: Task::Regressor,
        n_features: ctx.declared_features.unwrap_or((max_feature + 1).max(1) as u64),
        n_outputs: n_targets,
        trees,
        aggregate,
        post_transform,
        base_values: Vec::new(),
        binary_complement: false,
        missing,
        max_depth_limit: ctx.options.max_depth,
    })
}

/// Marks interior node `index` as belonging to tree `tree`; a second claim means a shared
/// subtree or a cycle.
fn claim(
    owner: &mut [u32],
    index: usize,
    tree: usize,
    id: i64,
    node_err: &dyn Fn(i64, NodeProblem) -> ModelError,
) -> Result<(), ImportError> {
    if owner[index] != UNCLAIMED {
        return Err(node_err(id, NodeProblem::SharedChild).into());
    }
    owner[index] = tree as u32;
    Ok(())
}
