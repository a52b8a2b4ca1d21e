#!/usr/bin/env python3
"""Train a scikit-learn random forest for the Open Inference Protocol tests (deterministic).

Runs in the project venv (.venv: scikit-learn, skl2onnx). Writes to OUT_DIR:
  model.onnx   the RandomForestClassifier exported with skl2onnx (classes 0..k-1, so scikit-learn's
               predict is the class index vknf answers)
  X.npy        held-out rows, float32 (n, features)
  predict.npy  scikit-learn's predict, int64 (n,)
  proba.npy    scikit-learn's predict_proba, float64 (n, classes)

Usage: train_forest.py OUT_DIR [--features 6] [--classes 4] [--trees 16] [--rows 64] [--seed 3]
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--features", type=int, default=6)
    p.add_argument("--classes", type=int, default=4)
    p.add_argument("--trees", type=int, default=16)
    p.add_argument("--rows", type=int, default=64)
    p.add_argument("--seed", type=int, default=3)
    args = p.parse_args()

    rng = np.random.default_rng(args.seed)
    n_train = 1500
    centres = rng.normal(0, 3, size=(args.classes, args.features))
    y = rng.integers(0, args.classes, size=n_train + args.rows)
    X = (centres[y] + rng.normal(0, 2.0, size=(len(y), args.features))).astype(np.float32)
    model = RandomForestClassifier(
        n_estimators=args.trees, max_depth=8, random_state=args.seed, n_jobs=1
    ).fit(X[:n_train], y[:n_train])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(
            model,
            initial_types=[("input", FloatTensorType([None, args.features]))],
            options={id(model): {"zipmap": False}},
            target_opset={"": 17, "ai.onnx.ml": 3},
        )
    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save(onx, str(args.out_dir / "model.onnx"))
    held_out = X[n_train:]
    np.save(args.out_dir / "X.npy", held_out)
    np.save(args.out_dir / "predict.npy", model.predict(held_out).astype(np.int64))
    np.save(args.out_dir / "proba.npy", model.predict_proba(held_out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
