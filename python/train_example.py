#!/usr/bin/env python3
"""Train the small demo traffic classifier and export it to ONNX (deterministic).

The data is synthetic "flow features" (packet sizes, inter-arrival times, port hints) for a
handful of service classes, so the demo needs no downloads. Writes:
  OUT_DIR/model.onnx      RandomForestClassifier (string labels) exported with skl2onnx
  OUT_DIR/inputs.csv      held-out rows with a header of feature names
  OUT_DIR/expected.csv    scikit-learn's predicted label for each row

Usage: train_example.py OUT_DIR [--trees 32] [--rows 2000] [--seed 7]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import RandomForestClassifier

SERVICES = ["dns", "http", "https", "ssh", "video", "voip"]
FEATURES = [
    "mean_pkt_len",
    "std_pkt_len",
    "mean_iat_ms",
    "std_iat_ms",
    "pkts_per_s",
    "bytes_up_ratio",
    "dst_port_low",
    "tls_seen",
]
# Per service: (mean_pkt_len, mean_iat_ms, pkts_per_s, bytes_up_ratio, dst_port_low, tls_seen)
PROFILES = {
    "dns": (90, 40.0, 5, 0.5, 1, 0),
    "http": (700, 15.0, 40, 0.2, 1, 0),
    "https": (800, 12.0, 50, 0.15, 1, 1),
    "ssh": (150, 80.0, 8, 0.5, 1, 1),
    "video": (1300, 3.0, 400, 0.03, 0, 1),
    "voip": (200, 20.0, 50, 0.5, 0, 0),
}


def synthesize(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.choice(SERVICES, size=n)
    X = np.empty((n, len(FEATURES)), dtype=np.float32)
    for i, s in enumerate(labels):
        pkt, iat, rate, up, low_port, tls = PROFILES[s]
        X[i] = [
            rng.normal(pkt, pkt * 0.25),
            abs(rng.normal(pkt * 0.3, pkt * 0.1)),
            abs(rng.normal(iat, iat * 0.4)),
            abs(rng.normal(iat * 0.5, iat * 0.2)),
            abs(rng.normal(rate, rate * 0.3)),
            np.clip(rng.normal(up, 0.1), 0, 1),
            low_port if rng.random() > 0.05 else 1 - low_port,
            tls if rng.random() > 0.05 else 1 - tls,
        ]
    return X, labels


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir", type=Path)
    p.add_argument("--trees", type=int, default=32)
    p.add_argument("--rows", type=int, default=2000)
    p.add_argument("--seed", type=int, default=7)
    args = p.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    X, y = synthesize(4000, rng)
    model = RandomForestClassifier(
        n_estimators=args.trees, max_depth=12, random_state=args.seed, n_jobs=1
    ).fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        onx = convert_sklearn(
            model,
            initial_types=[("X", FloatTensorType([None, len(FEATURES)]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
            options={id(model): {"zipmap": False}},
        )
    onx.graph.name = "vknf_demo"  # skl2onnx names graphs with a random UUID
    args.out_dir.mkdir(parents=True, exist_ok=True)
    onnx.save_model(onx, str(args.out_dir / "model.onnx"))

    X_test, _ = synthesize(args.rows, rng)
    np.savetxt(args.out_dir / "inputs.csv", X_test, delimiter=",", header=",".join(FEATURES),
               comments="", fmt="%.9g")
    # Read back what was written, so the expected labels match the CSV's f32 values exactly.
    X_read = np.loadtxt(args.out_dir / "inputs.csv", delimiter=",", skiprows=1, ndmin=2)
    predicted = model.predict(X_read.astype(np.float32))
    (args.out_dir / "expected.csv").write_text("label\n" + "\n".join(predicted) + "\n")
    accuracy = model.score(*synthesize(1000, np.random.default_rng(args.seed + 1)))
    print(f"wrote {args.out_dir}/model.onnx ({args.trees} trees, {len(SERVICES)} classes, "
          f"{len(FEATURES)} features, held-out accuracy {accuracy:.3f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
