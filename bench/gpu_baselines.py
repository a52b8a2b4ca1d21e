#!/usr/bin/env python3
"""Baselines for vknf's forest workloads, measured on the same input rows as vknf:
scikit-learn (all cores, one core), ONNX Runtime (CPU), Hummingbird (torch, CUDA), and the plain
pinned-memory copy of the input to the GPU (the physical floor).

  gpu_baselines.py prepare SHAPE OUTDIR    train a named shape's forest, export ONNX, write its test rows
  gpu_baselines.py run SHAPE OUTDIR [--paper-tree DIR]   time every baseline, check label agreement

Shapes (bench/README.md):
  w1a   the paper's tree x150 (rows written by bench-forest --write-input)
  deep  = w1b: a real 150-tree scikit-learn forest of the paper's shape (300 features, 198 classes,
        max_depth=50) trained on make_classification rows; 5788 held-out rows
  wide  300 trees of depth 12, 80 features, binary, trained on 30,000 make_classification rows;
        100,000 held-out rows
  tiny  10 trees of depth 6 trained on scikit-learn's bundled breast-cancer data (real measurements,
        30 features, binary; load_breast_cancer, no download); all 569 rows, and one row for latency
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

N_ROWS, N_FEATURES, N_CLASSES, N_TREES = 5788, 300, 198, 150


def timed(fn, runs, warmup=2, budget_s=None):
    """Median of up to `runs` runs; with `budget_s`, stops early (after at least 3) once the budget is spent,
    so that slow baselines (one core on 100,000 rows) fit the device call."""
    for _ in range(warmup):
        fn()
    samples = []
    started = time.perf_counter()
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t) * 1e6)
        if budget_s is not None and len(samples) >= 3 and time.perf_counter() - started > budget_s:
            break
    samples.sort()
    n = len(samples)
    return {"runs": n, "median_us": statistics.median(samples), "min_us": samples[0],
            "p90_us": samples[int(0.9 * (n - 1))]}


def paper_forest(tree_dir):
    """The paper's tree repeated 150 times, as a fitted scikit-learn RandomForestClassifier."""
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.tree import DecisionTreeClassifier
    from sklearn.tree._tree import Tree

    d = Path(tree_dir)
    left = np.loadtxt(d / "left.csv", delimiter=",", dtype=np.int64)
    right = np.loadtxt(d / "right.csv", delimiter=",", dtype=np.int64)
    feature = np.loadtxt(d / "feature.csv", delimiter=",", dtype=np.int64)
    threshold = np.loadtxt(d / "threshold.csv", delimiter=",", dtype=np.float64)
    values = np.loadtxt(d / "values.csv", delimiter=",", dtype=np.float64)
    n = len(left)
    rng = np.random.default_rng(0)
    X0 = rng.normal(size=(2 * N_CLASSES, N_FEATURES)).astype(np.float32)
    y0 = np.tile(np.arange(N_CLASSES), 2)
    template = DecisionTreeClassifier(max_depth=1, random_state=0).fit(X0, y0)
    state = template.tree_.__getstate__()
    nodes = np.zeros(n, dtype=state["nodes"].dtype)
    nodes["left_child"], nodes["right_child"] = left, right
    nodes["feature"], nodes["threshold"] = feature, threshold
    counts = values.sum(axis=1)
    nodes["n_node_samples"] = counts.astype(np.int64)
    nodes["weighted_n_node_samples"] = counts
    depth = np.zeros(n, dtype=np.int64)
    for i in range(n):
        for c in (left[i], right[i]):
            if c >= 0:
                depth[c] = depth[i] + 1
    state.update(nodes=nodes, values=values.reshape(n, 1, N_CLASSES).copy(), node_count=n,
                 max_depth=int(depth.max()))
    tree = Tree(N_FEATURES, np.array([N_CLASSES], dtype=np.intp), 1)
    tree.__setstate__(state)
    template.tree_ = tree
    forest = RandomForestClassifier(n_estimators=N_TREES, n_jobs=-1)
    forest.estimators_ = [template] * N_TREES
    forest.estimator_ = template
    forest.classes_ = np.arange(N_CLASSES)
    forest.n_classes_ = N_CLASSES
    forest.n_outputs_ = 1
    forest.n_features_in_ = N_FEATURES
    return forest


def export_onnx(forest, X, path):
    from skl2onnx import to_onnx

    t = time.perf_counter()
    onx = to_onnx(forest, X[:1], options={id(forest): {"zipmap": False}},
                  target_opset={"": 17, "ai.onnx.ml": 3})
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    print(f"exported ONNX in {time.perf_counter() - t:.1f} s: {os.path.getsize(path) / 1e6:.0f} MB", flush=True)


def prepare(shape, out):
    """Trains a named shape's forest, writes its test rows, the fitted forest and its ONNX export."""
    import pickle
    from sklearn.datasets import load_breast_cancer, make_classification
    from sklearn.ensemble import RandomForestClassifier

    if shape in ("deep", "w1b"):
        # W1b's recipe, unchanged (same seed): a real forest of the paper's shape.
        X, y = make_classification(n_samples=2 * N_ROWS, n_features=N_FEATURES, n_informative=64,
                                   n_redundant=32, n_classes=N_CLASSES, n_clusters_per_class=1,
                                   class_sep=2.0, random_state=2021)
        params = dict(n_estimators=N_TREES, max_depth=50, max_samples=0.6)
        train, test = slice(N_ROWS, None), slice(None, N_ROWS)
    elif shape == "wide":
        X, y = make_classification(n_samples=130_000, n_features=80, n_informative=40, n_redundant=10,
                                   n_classes=2, flip_y=0.03, class_sep=1.0, random_state=2021)
        params = dict(n_estimators=300, max_depth=12)
        train, test = slice(None, 30_000), slice(30_000, None)
    elif shape == "tiny":
        X, y = load_breast_cancer(return_X_y=True)
        params = dict(n_estimators=10, max_depth=6)
        train, test = slice(None, 400), slice(None, None)
    else:
        raise SystemExit(f"unknown shape {shape}")
    X = X.astype(np.float32)
    t = time.perf_counter()
    forest = RandomForestClassifier(n_jobs=-1, random_state=2021, **params).fit(X[train], y[train])
    print(f"trained {shape} in {time.perf_counter() - t:.1f} s: {params}; nodes per tree: "
          f"{np.mean([e.tree_.node_count for e in forest.estimators_]):.0f}", flush=True)
    np.save(out / f"{shape}_x.npy", np.ascontiguousarray(X[test]))
    with open(out / f"{shape}_forest.pkl", "wb") as f:
        pickle.dump(forest, f)
    export_onnx(forest, X, out / f"{shape}.onnx")


def run(workload, out, paper_tree, with_onnxruntime=True):
    import pickle

    results = {"workload": workload, "cpu_count": os.cpu_count()}
    if workload == "w1a":
        forest = paper_forest(paper_tree)
    else:
        with open(out / f"{workload}_forest.pkl", "rb") as f:
            forest = pickle.load(f)
    X = np.load(out / f"{workload}_x.npy").astype(np.float32)
    results["rows_shape"] = list(X.shape)
    labels = {}
    # Seconds each baseline may take (at least 3 runs): the 100,000-row shape on one core takes seconds.
    budget = float(os.environ.get("BASELINE_BUDGET_S", "20"))

    forest.set_params(n_jobs=-1)
    labels["sklearn"] = forest.predict(X)
    results["sklearn_all_cores"] = timed(lambda: forest.predict(X), 20, budget_s=budget)
    print("sklearn all cores", results["sklearn_all_cores"], flush=True)
    forest.set_params(n_jobs=1)
    results["sklearn_one_core"] = timed(lambda: forest.predict(X), 20, warmup=1, budget_s=budget)
    print("sklearn one core", results["sklearn_one_core"], flush=True)
    if workload == "tiny":
        # Latency: one row, where the one-core setting is scikit-learn's fastest.
        results["sklearn_one_core_1row"] = timed(lambda: forest.predict(X[:1]), 200, warmup=5, budget_s=budget)
        print("sklearn one core, 1 row", results["sklearn_one_core_1row"], flush=True)
    forest.set_params(n_jobs=-1)

    import torch

    try:
        from hummingbird.ml import convert
        model = convert(forest, "torch", X[:64]).to("cuda")
        labels["hummingbird"] = model.predict(X)

        def hb():
            model.predict(X)
            torch.cuda.synchronize()
        results["hummingbird_torch_cuda"] = timed(hb, 20, budget_s=budget)
        print("hummingbird", results["hummingbird_torch_cuda"], flush=True)
        if workload == "tiny":
            def hb1():
                model.predict(X[:1])
                torch.cuda.synchronize()
            results["hummingbird_torch_cuda_1row"] = timed(hb1, 200, warmup=5, budget_s=budget)
            print("hummingbird, 1 row", results["hummingbird_torch_cuda_1row"], flush=True)
    except Exception as err:
        results["hummingbird_torch_cuda"] = {"error": repr(err)}
        print("hummingbird failed:", err, flush=True)

    # The floor: the input's bytes over PCIe from pinned memory, as CUDA copies them.
    host = torch.from_numpy(X).pin_memory()
    device = torch.empty_like(host, device="cuda")

    def copy():
        device.copy_(host, non_blocking=True)
        torch.cuda.synchronize()
    floor = timed(copy, 50, warmup=5)
    floor["bytes"] = X.nbytes
    floor["gbps"] = X.nbytes / (floor["median_us"] * 1e-6) / 1e9
    results["pinned_copy_floor"] = floor
    results["gpu"] = torch.cuda.get_device_name(0)
    print("pinned copy floor", floor, flush=True)

    (out / f"{workload}_baselines.json").write_text(json.dumps(results, indent=2, default=float))
    try:
        if not with_onnxruntime:
            raise RuntimeError("skipped (--no-onnxruntime)")
        import onnxruntime as ort
        onnx_path = out / f"{workload}.onnx"
        if not onnx_path.exists():
            from skl2onnx import to_onnx
            onx = to_onnx(forest, X[:1], options={id(forest): {"zipmap": False}},
                          target_opset={"": 17, "ai.onnx.ml": 3})
            onnx_path.write_bytes(onx.SerializeToString())
        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        labels["onnxruntime"] = session.run(None, {name: X})[0]
        results["onnxruntime_cpu"] = timed(lambda: session.run(None, {name: X}), 20, budget_s=budget)
        print("onnxruntime", results["onnxruntime_cpu"], flush=True)
        if workload == "tiny":
            results["onnxruntime_cpu_1row"] = timed(lambda: session.run(None, {name: X[:1]}), 200, warmup=5,
                                                    budget_s=budget)
            print("onnxruntime, 1 row", results["onnxruntime_cpu_1row"], flush=True)
    except Exception as err:  # recorded, not fatal: the other baselines still count
        results["onnxruntime_cpu"] = {"error": repr(err)}
        print("onnxruntime failed:", err, flush=True)

    vknf_labels = out / f"{workload}_vknf_labels.npy"
    if vknf_labels.exists():
        labels["vknf"] = np.load(vknf_labels)
    reference = labels["sklearn"]
    results["label_agreement_with_sklearn"] = {
        name: int((np.asarray(v).astype(np.int64) == reference).sum()) for name, v in labels.items()}
    results["rows"] = int(len(reference))
    print("agreement", results["label_agreement_with_sklearn"], flush=True)
    (out / f"{workload}_baselines.json").write_text(json.dumps(results, indent=2, default=float))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("stage", choices=["prepare", "prepare-w1b", "run"])
    parser.add_argument("args", nargs="+")
    parser.add_argument("--paper-tree")
    parser.add_argument("--no-onnxruntime", action="store_true")
    a = parser.parse_args()
    if a.stage == "prepare-w1b":
        prepare("w1b", Path(a.args[0]))
    elif a.stage == "prepare":
        prepare(a.args[0], Path(a.args[1]))
    else:
        run(a.args[0], Path(a.args[1]), a.paper_tree, not a.no_onnxruntime)


if __name__ == "__main__":
    sys.exit(main())
