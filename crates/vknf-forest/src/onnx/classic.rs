//! `TreeEnsembleClassifier` / `TreeEnsembleRegressor` (ai.onnx.ml opsets 1 and 3).
//!
//! How skl2onnx (1.20) encodes scikit-learn forests, which this mapping reproduces:
//! - thresholds: `nodes_values` (float) already hold the largest f32 not above scikit-learn's
//!   double threshold, so `x <= t` in f32 is exact; `nodes_values_as_tensor` (double) holds
//!   the double threshold, which validation rounds down to f32 the same way;
//! - classifier leaf weights: each leaf's class distribution normalised to sum 1 and
//!   multiplied by `1 / n_estimators`, every class written (zeros included), and the
//!   ensemble sums them (aggregate `Sum`), which equals `predict_proba`;
//! - binary classifiers: only the class-1 probability is written, under class id 0; the
//!   runtime then reports `[1 - p, p]` (our `binary_complement`);
//! - regressors: leaf values times `1 / n_estimators`, summed;
//! - `nodes_missing_value_tracks_true` is written as all zeros whatever the model's real NaN
//!   routing (see [`crate::NanRouting`]).

use super::Context;
use super::attrs::{Attr, NodeView};
use crate::import::{ImportError, NanRouting, Tracker};
use crate::model::{Aggregate, ClassLabels, MissingPolicy, PostTransform, Task};
use crate::validate::{ModelError, RawEntry, RawForest, RawNode, RawTree, SplitMode, TreeProblem};

enum Mode {
    Leaf,
    Split(SplitMode),
}

pub(crate) fn read(
    node: &NodeView<'_>,
    is_classifier: bool,
    ctx: &Context,
    tracker: &mut Tracker<'_>,
) -> Result<RawForest, ImportError> {
    let attrs = node.attr_map()?;
    let get = |name: &str| attrs.get(name).copied();
    let required = |name: &str| get(name).ok_or_else(|| ImportError::attr(name, "required attribute is missing"));

    // --- nodes ---
    let tree_ids = required("nodes_treeids")?.ints(tracker)?;
    let n = tree_ids.len();
    let same_len = |name: &str, got: usize| -> Result<(), ImportError> {
        if got == n {
            Ok(())
        } else {
            Err(ImportError::LengthMismatch {
                name: name.to_owned(),
                got,
                reference: "nodes_treeids".into(),
                expected: n,
            })
        }
    };
    let node_ids = required("nodes_nodeids")?.ints(tracker)?;
    same_len("nodes_nodeids", node_ids.len())?;
    let features = required("nodes_featureids")?.ints(tracker)?;
    same_len("nodes_featureids", features.len())?;
    let true_ids = required("nodes_truenodeids")?.ints(tracker)?;
    same_len("nodes_truenodeids", true_ids.len())?;
    let false_ids = required("nodes_falsenodeids")?.ints(tracker)?;
    same_len("nodes_falsenodeids", false_ids.len())?;
    let mut modes = Vec::with_capacity(n);
    required("nodes_modes")?.for_each_string(|m| {
        modes.push(match m {
            b"LEAF" => Mode::Leaf,
            b"BRANCH_LEQ" => Mode::Split(SplitMode::Leq),
            b"BRANCH_LT" => Mode::Split(SplitMode::Lt),
            b"BRANCH_GTE" => Mode::Split(SplitMode::Gte),
            b"BRANCH_GT" => Mode::Split(SplitMode::Gt),
            other => Mode::Split(SplitMode::Unsupported(String::from_utf8_lossy(other).into_owned())),
        });
        Ok(())
    })?;
    same_len("nodes_modes", modes.len())?;
    let values = match (get("nodes_values"), get("nodes_values_as_tensor")) {
        (Some(_), Some(_)) => {
            return Err(ImportError::attr(
                "nodes_values",
                "both nodes_values and nodes_values_as_tensor are given",
            ));
        }
        (Some(a), None) | (None, Some(a)) => {
            let v = a.numbers(tracker)?;
            same_len(a.name, v.len())?;
            v
        }
        (None, None) if modes.iter().all(|m| matches!(m, Mode::Leaf)) => vec![0.0; n],
        (None, None) => return Err(ImportError::attr("nodes_values", "required attribute is missing")),
    };
    let missing = match get("nodes_missing_value_tracks_true") {
        Some(a) => {
            let v = a.ints(tracker)?;
            same_len(a.name, v.len())?;
            Some(v)
        }
        None => None,
    };

    // --- trees: group nodes by tree id; node ids must be 0..count within each tree ---
    let mut distinct = tree_ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    let mut trees: Vec<RawTree> = distinct
        .iter()
        .map(|&id| RawTree {
            id,
            ..RawTree::default()
        })
        .collect();
    let mut counts = vec![0usize; trees.len()];
    let tree_of = |id: i64| distinct.binary_search(&id).ok();
    for &id in &tree_ids {
        counts[tree_of(id).expect("id is in distinct")] += 1;
    }
    for (tree, &count) in trees.iter_mut().zip(&counts) {
        tree.nodes = vec![RawNode::Leaf; count];
    }
    let mut filled: Vec<Vec<bool>> = counts.iter().map(|&c| vec![false; c]).collect();
    let mut routes_nan = false;
    let mut max_feature = -1i64;
    for (i, mode) in modes.into_iter().enumerate() {
        let t = tree_of(tree_ids[i]).expect("id is in distinct");
        let id = node_ids[i];
        let tree_err = |problem| ModelError::Tree {
            tree: tree_ids[i],
            problem,
        };
        if id < 0 || id as u64 >= counts[t] as u64 {
            return Err(tree_err(TreeProblem::NodeIdOutOfRange { id, n_nodes: counts[t] }).into());
        }
        if std::mem::replace(&mut filled[t][id as usize], true) {
            return Err(tree_err(TreeProblem::DuplicateNodeId(id)).into());
        }
        if let Mode::Split(mode) = mode {
            let tracks_true = missing.as_ref().is_some_and(|m| m[i] != 0);
            routes_nan |= tracks_true;
            max_feature = max_feature.max(features[i]);
            trees[t].nodes[id as usize] = RawNode::Branch {
                mode,
                feature: features[i],
                threshold: values[i],
                true_child: true_ids[i],
                false_child: false_ids[i],
                missing_tracks_true: tracks_true,
            };
        }
    }
    drop(filled);

    // --- leaf weights, streamed so zero weights never take memory ---
    let prefix = if is_classifier { "class" } else { "target" };
    let names = [
        format!("{prefix}_weights"),
        format!("{prefix}_weights_as_tensor"),
        format!("{prefix}_ids"),
        format!("{prefix}_treeids"),
        format!("{prefix}_nodeids"),
    ];
    let weights_attr = match (get(&names[0]), get(&names[1])) {
        (Some(_), Some(_)) => {
            return Err(ImportError::attr(
                &names[0],
                "both the float and the tensor form are given",
            ));
        }
        (a, b) => a.or(b),
    };
    let mut kept: Vec<(usize, f64)> = Vec::new();
    let mut n_weights = 0usize;
    if let Some(a) = weights_attr {
        a.for_each_number(tracker, |w| {
            if w != 0.0 {
                kept.push((n_weights, w));
            }
            n_weights += 1;
        })?;
    }
    let mut id_range = (i64::MAX, i64::MIN);
    let mut track_range = |v: i64| {
        id_range.0 = id_range.0.min(v);
        id_range.1 = id_range.1.max(v);
    };
    let outputs = filtered_ints(
        get(&names[2]),
        &names[2],
        &names[0],
        &kept,
        n_weights,
        tracker,
        &mut track_range,
    )?;
    let entry_trees = filtered_ints(
        get(&names[3]),
        &names[3],
        &names[0],
        &kept,
        n_weights,
        tracker,
        &mut |_| {},
    )?;
    let entry_nodes = filtered_ints(
        get(&names[4]),
        &names[4],
        &names[0],
        &kept,
        n_weights,
        tracker,
        &mut |_| {},
    )?;

    // --- task, outputs, binary encoding ---
    let (task, n_outputs, remap_binary) = if is_classifier {
        let labels = match (get("classlabels_int64s"), get("classlabels_strings")) {
            (Some(a), None) => ClassLabels::Int64(a.ints(tracker)?),
            (None, Some(a)) => ClassLabels::Strings(a.strings()?),
            _ => {
                return Err(ImportError::attr(
                    "classlabels_int64s",
                    "exactly one of classlabels_int64s and classlabels_strings must be given",
                ));
            }
        };
        let n = labels.len() as u64;
        // One distinct class id in a two-class model: the ids are the positive class.
        let binary = n == 2 && n_weights > 0 && id_range.0 == id_range.1 && (0..2).contains(&id_range.0);
        (Task::Classifier { labels }, n, binary)
    } else {
        let n = match get("n_targets") {
            Some(a) => u64::try_from(a.int()?).map_err(|_| ImportError::attr("n_targets", "must not be negative"))?,
            None => (id_range.1.max(0) + 1) as u64,
        };
        (Task::Regressor, n, false)
    };

    for (k, &(_, weight)) in kept.iter().enumerate() {
        let tree_id = entry_trees[k];
        let Some(t) = tree_of(tree_id) else {
            return Err(ModelError::Tree {
                tree: tree_id,
                problem: TreeProblem::WeightsWithoutNodes,
            }
            .into());
        };
        trees[t].entries.push(RawEntry {
            node: entry_nodes[k],
            output: if remap_binary { 1 } else { outputs[k] },
            weight,
        });
    }

    let base_values = match (get("base_values"), get("base_values_as_tensor")) {
        (Some(_), Some(_)) => {
            return Err(ImportError::attr(
                "base_values",
                "both the float and the tensor form are given",
            ));
        }
        (Some(a), None) | (None, Some(a)) => a.numbers(tracker)?,
        (None, None) => Vec::new(),
    };
    let post_transform = match get("post_transform").map(|a| a.string()).transpose()? {
        None | Some("NONE") => PostTransform::None,
        Some("LOGISTIC") => PostTransform::Logistic,
        Some("SOFTMAX") => PostTransform::Softmax,
        Some(other) => {
            return Err(ImportError::Unsupported(format!("post_transform {other}")));
        }
    };
    let aggregate = if is_classifier {
        Aggregate::Sum
    } else {
        match get("aggregate_function").map(|a| a.string()).transpose()? {
            None | Some("SUM") => Aggregate::Sum,
            Some("AVERAGE") => Aggregate::Average,
            Some(other) => {
                return Err(ImportError::Unsupported(format!("aggregate_function {other}")));
            }
        }
    };
    let missing = if routes_nan || ctx.options.nan == NanRouting::FollowOnnx {
        MissingPolicy::Route
    } else {
        MissingPolicy::Reject
    };
    Ok(RawForest {
        task,
        n_features: ctx.declared_features.unwrap_or((max_feature + 1).max(1) as u64),
        n_outputs,
        trees,
        aggregate,
        post_transform,
        base_values,
        binary_complement: remap_binary,
        missing,
        max_depth_limit: ctx.options.max_depth,
    })
}

/// Streams an INTS attribute parallel to the weights, keeping only the values at the
/// indices in `kept` (the non-zero weights); `all` sees every value.
fn filtered_ints(
    attr: Option<Attr<'_>>,
    name: &str,
    weights_name: &str,
    kept: &[(usize, f64)],
    n_weights: usize,
    tracker: &mut Tracker<'_>,
    all: &mut dyn FnMut(i64),
) -> Result<Vec<i64>, ImportError> {
    let Some(attr) = attr else {
        if n_weights == 0 {
            return Ok(Vec::new());
        }
        return Err(ImportError::attr(name, "required attribute is missing"));
    };
    let mut out = Vec::with_capacity(kept.len());
    let mut index = 0usize;
    let mut next = 0usize;
    let count = attr.for_each_int(tracker, |v| {
        all(v);
        if next < kept.len() && kept[next].0 == index {
            out.push(v);
            next += 1;
        }
        index += 1;
    })?;
    if count != n_weights {
        return Err(ImportError::LengthMismatch {
            name: name.to_owned(),
            got: count,
            reference: weights_name.to_owned(),
            expected: n_weights,
        });
    }
    Ok(out)
}
