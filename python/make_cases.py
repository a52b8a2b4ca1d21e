#!/usr/bin/env python3
"""Generate scikit-learn parity cases for vknf-forest.

Each case directory holds:
  model.onnx     the forest exported with skl2onnx (sometimes rewritten, see below)
  X.npy          float32 inputs: test rows, rows exactly at / around split thresholds,
                 and NaN rows
  expected.npy   float64: predict_proba (classifiers) or predict (regressors), 2-D
  pred_index.npy float64 (n, 1): index into classes_ of scikit-learn's predict (classifiers)
  case.json      what the case exercises, and which rows hold NaN

Rewrites applied to some exports (all verified against scikit-learn when onnx's reference
evaluator can run the model):
  * "nan_routing": skl2onnx writes nodes_missing_value_tracks_true as all zeros; we fill
    it from tree_.missing_go_to_left so the ONNX file carries scikit-learn's NaN routing.
  * "double_input": nodes_values become nodes_values_as_tensor holding scikit-learn's raw
    float64 thresholds (ai.onnx.ml opset 3), class/target weights become *_as_tensor.
  * "tree_ensemble_v5": a single-target regressor re-encoded as the opset-5 TreeEnsemble.

Usage: make_cases.py OUT_DIR [--n-cases N] [--seed S]
       make_cases.py --fixture OUT_DIR     (the small committed fixture)
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.tree import DecisionTreeClassifier, DecisionTreeRegressor

# Leaf entries skl2onnx writes are trees x leaves x classes; this keeps each export fast.
ENTRY_BUDGET = 300_000
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}

ESTIMATORS = {
    ("rf", "classifier"): RandomForestClassifier,
    ("et", "classifier"): ExtraTreesClassifier,
    ("dt", "classifier"): DecisionTreeClassifier,
    ("rf", "regressor"): RandomForestRegressor,
    ("et", "regressor"): ExtraTreesRegressor,
    ("dt", "regressor"): DecisionTreeRegressor,
}


def spec(name, **kw):
    base = dict(
        name=name,
        estimator="rf",
        task="classifier",
        n_classes=3,
        n_targets=1,
        n_features=8,
        max_depth=8,
        n_trees=10,
        n_samples=200,
        string_labels=False,
        zipmap=True,
        nan_train=False,
        nan_routing=False,
        nan_inputs=True,
        double_input=False,
        v5=False,
        chain=False,
    )
    base.update(kw)
    return base


def fixed_specs():
    """Cases that must always exist: each exercises one import or semantics path."""
    return [
        spec("binary_rf_int_zipmap", n_classes=2, n_trees=15),
        spec("multiclass_rf_strings", n_classes=7, string_labels=True, zipmap=False),
        spec("extratrees_12_classes", estimator="et", n_classes=12, n_trees=20, max_depth=12),
        spec("decisiontree_5_classes", estimator="dt", n_classes=5, max_depth=20, n_trees=1),
        spec("decisiontree_binary_strings", estimator="dt", n_classes=2, string_labels=True,
             n_trees=1),
        spec("wide_200_classes_200_trees", n_classes=200, n_trees=200, max_depth=3,
             n_samples=400, n_features=30),
        spec("rf_nan_trained_routed", nan_train=True, nan_routing=True, n_classes=4),
        spec("et_nan_trained_routed", estimator="et", nan_train=True, nan_routing=True,
             n_classes=3),
        spec("rf_clean_trained_routed", nan_routing=True, n_classes=5),
        spec("rf_unrouted_rejects_nan", n_classes=3),
        spec("rf_regressor", task="regressor"),
        spec("et_regressor_3_targets", estimator="et", task="regressor", n_targets=3),
        spec("dt_regressor_nan_routed", estimator="dt", task="regressor", n_trees=1,
             nan_train=True, nan_routing=True),
        spec("rf_regressor_double_thresholds", task="regressor", double_input=True),
        spec("rf_classifier_double_thresholds", n_classes=6, double_input=True),
        spec("rf_regressor_tree_ensemble_v5", task="regressor", v5=True, nan_inputs=False),
        spec("rf_regressor_v5_nan_routed", task="regressor", v5=True, nan_train=True,
             nan_routing=True),
        spec("deep_chain_depth_50", estimator="rf", task="regressor", chain=True, n_trees=3,
             max_depth=50, n_features=1, nan_inputs=False),
        spec("stump_one_feature", n_classes=2, n_features=1, max_depth=1, n_trees=1),
        spec("many_features_300", n_classes=4, n_features=300, n_trees=8, max_depth=10),
    ]


def random_spec(rng, i):
    task = "classifier" if rng.random() < 0.7 else "regressor"
    estimator = rng.choice(["rf", "rf", "et", "et", "dt"])
    n_classes = int(round(math.exp(rng.uniform(math.log(2), math.log(200)))))
    n_features = int(rng.integers(1, 301))
    max_depth = int(rng.integers(1, 51))
    n_samples = int(rng.integers(60, 401))
    n_trees = 1 if estimator == "dt" else int(rng.integers(1, 201))
    leaves = min(2 ** min(max_depth, 20), n_samples)
    per_tree = leaves * (n_classes if task == "classifier" else 1)
    n_trees = max(1, min(n_trees, ENTRY_BUDGET // max(per_tree, 1)))
    nan_train = bool(rng.random() < 0.3)
    return spec(
        f"random_{i:03d}",
        estimator=str(estimator),
        task=task,
        n_classes=n_classes,
        n_targets=int(rng.integers(1, 4)) if task == "regressor" else 1,
        n_features=n_features,
        max_depth=max_depth,
        n_trees=n_trees,
        n_samples=max(n_samples, 2 * n_classes) if task == "classifier" else n_samples,
        string_labels=bool(rng.random() < 0.3),
        zipmap=bool(rng.random() < 0.5),
        nan_train=nan_train,
        nan_routing=nan_train or bool(rng.random() < 0.3),
        double_input=bool(rng.random() < 0.15),
    )


def make_data(s, rng):
    n, f = s["n_samples"], s["n_features"]
    if s["chain"]:
        # 2.5^i targets make every split peel off the largest sample: a depth-50 chain.
        x = np.arange(70, dtype=np.float32).reshape(-1, 1)
        return x, 2.5 ** np.arange(70)
    X = rng.normal(size=(n, f)).astype(np.float32)
    # Some integer-valued features give thresholds at exact .5 midpoints.
    X[:, ::3] = np.round(X[:, ::3] * 3)
    if s["nan_train"]:
        X[rng.random(X.shape) < 0.1] = np.nan
    signal = np.nan_to_num(X[:, : min(f, 3)]).sum(axis=1)
    if s["task"] == "classifier":
        k = s["n_classes"]
        y = np.arange(n) % k
        # Half the labels follow the signal so trees learn structure, the rest is noise.
        order = np.argsort(signal)
        structured = np.empty(n, dtype=int)
        structured[order] = (np.arange(n) * k) // n
        y = np.where(rng.random(n) < 0.5, structured, rng.permutation(y))
        y[:k] = np.arange(k)  # every class present
        if s["string_labels"]:
            y = np.array([f"L{c:03d}" for c in y])
        return X, y
    targets = [signal * (t + 1) + rng.normal(size=n) for t in range(s["n_targets"])]
    y = np.stack(targets, axis=1) if s["n_targets"] > 1 else targets[0]
    return X, y


def fit(s, X, y, seed):
    cls = ESTIMATORS[(s["estimator"], s["task"])]
    kwargs = dict(max_depth=s["max_depth"], random_state=seed)
    if s["estimator"] != "dt":
        kwargs["n_estimators"] = s["n_trees"]
        kwargs["n_jobs"] = 1
    if s["chain"]:
        kwargs["bootstrap"] = False
        kwargs["max_features"] = 1.0
    return cls(**kwargs).fit(X, y)


def estimators_of(model):
    return model.estimators_ if hasattr(model, "estimators_") else [model]


def ensemble_node(onx):
    nodes = [n for n in onx.graph.node if n.op_type.startswith("TreeEnsemble")]
    assert len(nodes) == 1, [n.op_type for n in onx.graph.node]
    return nodes[0]


def attr(node, name):
    for a in node.attribute:
        if a.name == name:
            return a
    return None


def set_attr(node, name, value):
    old = attr(node, name)
    if old is not None:
        node.attribute.remove(old)
    node.attribute.append(helper.make_attribute(name, value))


def set_ml_opset(onx, version):
    for op in onx.opset_import:
        if op.domain == "ai.onnx.ml":
            op.version = version


def export(s, model, n_features):
    tensor_type = DoubleTensorType if s["double_input"] else FloatTensorType
    options = {}
    if s["task"] == "classifier":
        options = {id(model): {"zipmap": s["zipmap"]}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(
            model,
            initial_types=[("X", tensor_type([None, n_features]))],
            target_opset=TARGET_OPSET,
            options=options,
        )
    onx.graph.name = s["name"]  # skl2onnx names graphs with a random UUID
    node = ensemble_node(onx)
    routed = False
    trees = estimators_of(model)
    tree_ids = list(attr(node, "nodes_treeids").ints)
    node_ids = list(attr(node, "nodes_nodeids").ints)
    modes = list(attr(node, "nodes_modes").strings)
    if s["nan_routing"]:
        tracks = [
            int(trees[t].tree_.missing_go_to_left[n]) if m != b"LEAF" else 0
            for t, n, m in zip(tree_ids, node_ids, modes)
        ]
        set_attr(node, "nodes_missing_value_tracks_true", tracks)
        # All-zero bits look exactly like skl2onnx's "no information" export.
        routed = any(tracks)
    if s["double_input"]:
        raw = np.array(
            [trees[t].tree_.threshold[n] if m != b"LEAF" else 0.0
             for t, n, m in zip(tree_ids, node_ids, modes)],
            dtype=np.float64,
        )
        node.attribute.remove(attr(node, "nodes_values"))
        set_attr(node, "nodes_values_as_tensor", numpy_helper.from_array(raw))
        prefix = "class" if s["task"] == "classifier" else "target"
        weights = np.array(attr(node, f"{prefix}_weights").floats, dtype=np.float64)
        node.attribute.remove(attr(node, f"{prefix}_weights"))
        set_attr(node, f"{prefix}_weights_as_tensor", numpy_helper.from_array(weights))
        set_ml_opset(onx, 3)
    if s["v5"]:
        onx = to_tree_ensemble_v5(onx)
    return onx, routed


def to_tree_ensemble_v5(onx):
    """Re-encodes a single-target TreeEnsembleRegressor as the opset-5 TreeEnsemble."""
    node = ensemble_node(onx)
    a = {x.name: x for x in node.attribute}
    tree_ids = list(a["nodes_treeids"].ints)
    node_ids = list(a["nodes_nodeids"].ints)
    modes = [m.decode() for m in a["nodes_modes"].strings]
    feats = list(a["nodes_featureids"].ints)
    values = list(a["nodes_values"].floats)
    trues = list(a["nodes_truenodeids"].ints)
    falses = list(a["nodes_falsenodeids"].ints)
    tracks = list(a["nodes_missing_value_tracks_true"].ints) if "nodes_missing_value_tracks_true" in a else [0] * len(modes)
    weight_of = {}
    for t, n, w in zip(a["target_treeids"].ints, a["target_nodeids"].ints, a["target_weights"].floats):
        weight_of[(t, n)] = weight_of.get((t, n), 0.0) + w
    key = {(t, n): i for i, (t, n) in enumerate(zip(tree_ids, node_ids))}
    interior, leaf = {}, {}
    for i, m in enumerate(modes):
        (leaf if m == "LEAF" else interior)[(tree_ids[i], node_ids[i])] = None
    interior = {k: j for j, k in enumerate(interior)}
    leaf = {k: j for j, k in enumerate(leaf)}
    leaf_weights = [weight_of.get(k, 0.0) for k in leaf]
    out = dict(featureids=[], splits=[], modes=[], true=[], false=[], tl=[], fl=[], miss=[])

    def emit(i, feature, split, true_ref, false_ref, miss):
        out["featureids"].append(feature)
        out["splits"].append(split)
        out["modes"].append(0)
        out["true"].append(true_ref[0])
        out["tl"].append(true_ref[1])
        out["false"].append(false_ref[0])
        out["fl"].append(false_ref[1])
        out["miss"].append(miss)

    def ref(t, n):
        return (leaf[(t, n)], 1) if (t, n) in leaf else (interior[(t, n)], 0)

    for (t, n), j in interior.items():
        i = key[(t, n)]
        emit(i, feats[i], values[i], ref(t, trues[i]), ref(t, falses[i]), tracks[i])
    roots = []
    for t in sorted(set(tree_ids)):
        if (t, 0) in interior:
            roots.append(interior[(t, 0)])
        else:  # single-leaf tree: one node whose branches name the same leaf
            roots.append(len(out["featureids"]))
            emit(None, 0, 0.0, (leaf[(t, 0)], 1), (leaf[(t, 0)], 1), 0)
    new = helper.make_node(
        "TreeEnsemble",
        list(node.input),
        list(node.output),
        domain="ai.onnx.ml",
        n_targets=1,
        aggregate_function=1,
        post_transform=0,
        tree_roots=roots,
        nodes_featureids=out["featureids"],
        nodes_splits=numpy_helper.from_array(np.array(out["splits"], dtype=np.float32)),
        nodes_modes=numpy_helper.from_array(np.array(out["modes"], dtype=np.uint8)),
        nodes_truenodeids=out["true"],
        nodes_falsenodeids=out["false"],
        nodes_trueleafs=out["tl"],
        nodes_falseleafs=out["fl"],
        nodes_missing_value_tracks_true=out["miss"],
        leaf_targetids=[0] * len(leaf_weights),
        leaf_weights=numpy_helper.from_array(np.array(leaf_weights, dtype=np.float32)),
    )
    graph_nodes = list(onx.graph.node)
    onx.graph.ClearField("node")
    onx.graph.node.extend([new if n is node else n for n in graph_nodes])
    set_ml_opset(onx, 5)
    for op in onx.opset_import:
        if op.domain == "":
            op.version = max(op.version, 21)
    return onx


def split_thresholds(model):
    out = []
    for est in estimators_of(model):
        t = est.tree_
        # Missing-vs-present splits have threshold +inf: nothing to probe around.
        mask = (t.children_left != -1) & np.isfinite(t.threshold)
        out.extend(zip(t.feature[mask], t.threshold[mask]))
    return out


def threshold_rows(model, base, rng, limit=40):
    """Rows whose split feature sits exactly at, just below and just above a threshold."""
    splits = split_thresholds(model)
    if not splits or len(base) == 0:
        return np.empty((0, base.shape[1]), dtype=np.float32)
    picks = rng.choice(len(splits), size=min(limit, len(splits)), replace=False)
    rows = []
    for p in picks:
        f, t = splits[p]
        nearest = np.float32(t)
        floor = nearest if float(nearest) <= t else np.nextafter(nearest, np.float32(-np.inf))
        for v in {nearest, floor, np.nextafter(floor, np.float32(np.inf)),
                  np.nextafter(floor, np.float32(-np.inf))}:
            row = base[rng.integers(len(base))].copy()
            row[f] = v
            rows.append(row)
    return np.array(rows, dtype=np.float32)


def make_inputs(s, model, X, rng):
    n_features = X.shape[1]
    fresh = rng.normal(size=(60, n_features)).astype(np.float32)
    fresh[:, ::3] = np.round(fresh[:, ::3] * 3)
    if s["chain"]:
        fresh = np.linspace(-2, 72, 60, dtype=np.float32).reshape(-1, 1)
    base = np.nan_to_num(np.vstack([X[:60], fresh]))
    # scikit-learn refuses +/-inf inputs, so infinities are covered by the Rust tests only.
    parts = [X[:60], fresh, threshold_rows(model, base, rng)]
    Xt = np.vstack(parts).astype(np.float32)
    nan_rows = []
    if s["nan_inputs"]:
        nan = base[rng.integers(len(base), size=20)].copy()
        nan[rng.random(nan.shape) < 0.3] = np.nan
        nan[np.arange(len(nan)), rng.integers(n_features, size=len(nan))] = np.nan
        nan_rows = list(range(len(Xt), len(Xt) + len(nan)))
        Xt = np.vstack([Xt, nan]).astype(np.float32)
    nan_rows = [i for i in range(len(Xt)) if np.isnan(Xt[i]).any()]
    return Xt, nan_rows


def check_with_reference(onx, Xt, expected, nan_rows, s):
    """Sanity check of our own rewrites with onnx's reference evaluator."""
    if not (s["v5"] or s["nan_routing"]) or s["double_input"] or len(Xt) > 400:
        return
    if any(n.op_type == "ZipMap" for n in onx.graph.node):  # no reference implementation
        return
    from onnx.reference import ReferenceEvaluator

    feed = Xt.astype(np.float64) if s["double_input"] else Xt
    out = ReferenceEvaluator(onx).run(None, {"X": feed})
    got = np.asarray(out[-1] if s["task"] == "classifier" else out[0])
    if got.dtype == object:  # ZipMap output
        return
    got = got.reshape(len(Xt), -1)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5,
                               err_msg=f"{s['name']}: rewritten ONNX disagrees with sklearn")


def build_case(s, out_dir, seed):
    rng = np.random.default_rng(seed)
    X, y = make_data(s, rng)
    model = fit(s, X, y, seed)
    n_features = X.shape[1]
    Xt, nan_rows = make_inputs(s, model, X, rng)
    if s["task"] == "classifier":
        expected = model.predict_proba(Xt).astype(np.float64)
        index = {c: i for i, c in enumerate(model.classes_)}
        pred = np.array([index[c] for c in model.predict(Xt)], dtype=np.float64).reshape(-1, 1)
        classes = [c.item() if hasattr(c, "item") else str(c) for c in model.classes_]
    else:
        expected = np.asarray(model.predict(Xt), dtype=np.float64).reshape(len(Xt), -1)
        pred, classes = None, None
    onx, routed = export(s, model, n_features)
    check_with_reference(onx, Xt, expected, nan_rows, s)

    case_dir = out_dir / s["name"]
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    onnx.save_model(onx, str(case_dir / "model.onnx"))
    np.save(case_dir / "X.npy", Xt)
    np.save(case_dir / "expected.npy", expected)
    if pred is not None:
        np.save(case_dir / "pred_index.npy", pred)
    meta = {
        "name": s["name"],
        "task": s["task"],
        "estimator": s["estimator"],
        "n_features": n_features,
        "n_outputs": int(expected.shape[1]),
        "n_trees": len(estimators_of(model)),
        "max_depth": int(max(e.get_depth() for e in estimators_of(model))),
        "classes": classes,
        "string_labels": bool(s["string_labels"]),
        "zipmap": bool(s["zipmap"]),
        "nan_routing": bool(routed),
        "double_input": bool(s["double_input"]),
        "tree_ensemble_v5": bool(s["v5"]),
        "nan_rows": nan_rows,
        "seed": seed,
    }
    (case_dir / "case.json").write_text(json.dumps(meta, indent=1))
    return meta


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--n-cases", type=int, default=32,
                   help="total cases: the fixed ones plus random ones up to this count")
    p.add_argument("--seed", type=int, default=20210721)
    p.add_argument("--fixture", action="store_true",
                   help="write only the small committed fixture case")
    args = p.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.fixture:
        specs = [spec("rf12_5classes", n_classes=5, n_features=20, n_trees=12, max_depth=6,
                      n_samples=150, nan_train=True, nan_routing=True)]
    else:
        specs = fixed_specs()
        rng = np.random.default_rng(args.seed)
        specs += [random_spec(rng, i) for i in range(max(0, args.n_cases - len(specs)))]
    for i, s in enumerate(specs):
        meta = build_case(s, args.out_dir, args.seed + i)
        print(f"{meta['name']}: {meta['task']} {meta['estimator']} trees={meta['n_trees']} "
              f"outputs={meta['n_outputs']} features={meta['n_features']} "
              f"depth={meta['max_depth']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
