#!/usr/bin/env python3
"""Trains the paper's encrypted-traffic classifier (H2Classifier, Brissaud et al., as used by
Haavisto et al. 2021) from a vknf flow dataset, and writes the model (ONNX) and its feature schema.

  train_traffic.py train --dataset flows.jsonl --model model.onnx --schema model.schema.json
  train_traffic.py features --dataset flows.jsonl --schema model.schema.json -o rows.json

The dataset is what `vknf flows` (crates/vknf-flow, DatasetWriter) writes: JSON lines with a
`label` and `records`, the signed TLS record sizes (+ server to client, - client to server).

The recipe is the original's (h2classifier/expe.py, rf_tools.py): the vocabulary (record sizes per
direction and their counts) comes from the training set; RandomForestClassifier(n_estimators=150,
max_depth=50, max_samples=0.6) is fitted, the 300 most important features are kept (all of them if
there are fewer), and the forest is fitted again on those. Features follow
h2classifier/features_tools.py with two deliberate departures, where its vector contradicts its own
legend: records, client records and total bytes (a1, a2, a3) are three features, not their sum, and
the distinct server and client sizes (c1, c2) are two, not their sum. Ties among the "rarest" sizes
are broken by the smaller size (the original left them to Python's set order). The Rust
implementation (vknf_flow::features) computes the same numbers; a test checks it row by row.

The schema JSON carries the vocabulary, the selected feature indices, the names, the classes and a
SHA-256 digest of them (canonical text described in crates/vknf-flow/src/features/schema.rs); the
digest is also stored in the ONNX model's metadata as `vknf.schema_digest`, which binds the two.
"""

import argparse
import hashlib
import json
import sys
import warnings
from collections import Counter

import numpy as np

FORMAT = "vknf-h2-schema"
VERSION = 1
WINDOW = 20
RARE = 20


def read_dataset(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                rows.append(json.loads(line))
    return rows


def vocabulary(sequences):
    """Counts of server (>= 0) and client (< 0, as absolute) sizes, as data_tools.stats_training."""
    server, client = Counter(), Counter()
    for seq in sequences:
        for el in seq:
            if el >= 0:
                server[el] += 1
            else:
                client[-el] += 1
    return server, client


def feature_names(server, client):
    names = ["a1", "a2", "a3"]
    names += [f"{g}{s}" for g in ("b1", "b2") for s in ("mean", "max", "min", "std", "median")]
    names += ["c1", "c2"]
    names += [f"dserv{i}" for i in range(1, RARE + 1)] + [f"dcli{i}" for i in range(1, RARE + 1)]
    names += [f"eserv_taille{s}" for s in sorted(server)] + [f"ecli_taille{s}" for s in sorted(client)]
    return names


def five(values):
    if len(values) == 0:
        return [0.0] * 5
    return [float(np.mean(values)), float(max(values)), float(min(values)), float(np.std(values)),
            float(np.median(values))]


def base_features(data, count_serv, count_cli):
    """features_tools.get_features, with a1..a3 and c1, c2 kept separate."""
    rec_cli, rec_serv, chunks, bursts = [], [], [], []
    chunk_tmp = None
    burst_tmp = None
    for index, el in enumerate(data):
        if index % WINDOW == 0:
            if chunk_tmp is not None:
                chunks.append(chunk_tmp)
            chunk_tmp = 0
        if el >= 0:
            rec_serv.append(el)
            if chunk_tmp is not None:
                chunk_tmp += 1
            if burst_tmp is not None:
                burst_tmp.append(el)
        else:
            rec_cli.append(abs(el))
            if burst_tmp is not None and len(burst_tmp) > 0:
                bursts.append(sum(burst_tmp))
            burst_tmp = []
    set_serv, set_cli = set(rec_serv), set(rec_cli)
    out = [len(data), len(rec_cli), sum(rec_cli) + sum(rec_serv)]
    out += five(bursts) + five(chunks)
    out += [len(set_serv), len(set_cli)]
    for present, counts in ((set_serv, count_serv), (set_cli, count_cli)):
        rarest = sorted(present, key=lambda x: (counts.get(x, 0), x))[:RARE]
        out += rarest + [0] * (RARE - len(rarest))
    for sizes, counts in ((rec_serv, count_serv), (rec_cli, count_cli)):
        c = Counter(sizes)
        out += [c[s] for s in sorted(counts)]
    return [float(v) for v in out]


def digest(schema):
    pairs = lambda counts: ",".join(f"{s}:{c}" for s, c in counts)
    text = (
        f"{FORMAT}\nversion={schema['version']}\nwindow={schema['window']}\nrarest={schema['rarest']}\n"
        f"server={pairs(schema['server_sizes'])}\nclient={pairs(schema['client_sizes'])}\n"
        f"selected={','.join(str(i) for i in schema['selected'])}\n"
        f"classes={','.join(c.encode().hex() for c in schema['classes'])}\n"
    )
    return hashlib.sha256(text.encode()).hexdigest()


def load_schema(path):
    with open(path) as f:
        schema = json.load(f)
    if schema.get("format") != FORMAT or schema.get("version") != VERSION:
        sys.exit(f"{path}: not a {FORMAT} version {VERSION} schema")
    if digest(schema) != schema["digest"]:
        sys.exit(f"{path}: digest does not match the content")
    return schema


def rows_for(schema, sequences):
    server = {s: c for s, c in schema["server_sizes"]}
    client = {s: c for s, c in schema["client_sizes"]}
    base = np.array([base_features(seq, server, client) for seq in sequences], dtype=np.float64)
    return base[:, schema["selected"]] if len(base) else base.reshape(0, len(schema["selected"]))


def top_features(importances, n):
    """Indices of the n most important features (ties: lower index first), in column order."""
    order = sorted(range(len(importances)), key=lambda i: (-importances[i], i))
    return sorted(order[: min(n, len(importances))])


def train(args):
    from sklearn.ensemble import RandomForestClassifier

    rows = [r for r in read_dataset(args.dataset) if r.get("label") and r.get("records")]
    if args.complete_only:
        rows = [r for r in rows if r.get("complete", True)]
    if not rows:
        sys.exit(f"{args.dataset}: no labelled flow with records")
    sequences = [r["records"] for r in rows]
    labels = np.array([r["label"] for r in rows])
    server, client = vocabulary(sequences)
    names = feature_names(server, client)
    base = np.array([base_features(s, server, client) for s in sequences], dtype=np.float64)
    assert base.shape[1] == len(names)
    params = dict(n_estimators=args.n_estimators, max_depth=args.max_depth, max_samples=args.max_samples,
                  random_state=args.seed, n_jobs=args.jobs)
    # The forest sees float32 features, as the ONNX model and the GPU will.
    clf = RandomForestClassifier(**params).fit(base.astype(np.float32), labels)
    selected = top_features(clf.feature_importances_, args.n_features)
    clf = RandomForestClassifier(**params).fit(base[:, selected].astype(np.float32), labels)
    schema = {
        "format": FORMAT, "version": VERSION, "window": WINDOW, "rarest": RARE,
        "server_sizes": [[s, server[s]] for s in sorted(server)],
        "client_sizes": [[s, client[s]] for s in sorted(client)],
        "feature_names": names, "selected": selected,
        "classes": [str(c) for c in clf.classes_],
    }
    schema["digest"] = digest(schema)

    import onnx
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = convert_sklearn(
            clf,
            initial_types=[("X", FloatTensorType([None, len(selected)]))],
            target_opset={"": 17, "ai.onnx.ml": 3},
            options={id(clf): {"zipmap": False}},
        )
    model.graph.name = "vknf_h2classifier"  # skl2onnx names graphs with a random UUID
    entry = model.metadata_props.add()
    entry.key, entry.value = "vknf.schema_digest", schema["digest"]
    onnx.save_model(model, args.model)
    with open(args.schema, "w") as f:
        json.dump(schema, f, indent=1)
    print(f"trained on {len(rows)} flows, {len(clf.classes_)} classes, {len(names)} features, "
          f"kept {len(selected)}; schema digest {schema['digest']}")


def features(args):
    schema = load_schema(args.schema)
    rows = read_dataset(args.dataset)
    X = rows_for(schema, [r["records"] for r in rows])
    with open(args.out, "w") as f:
        json.dump([[float(np.float32(v)) for v in row] for row in X], f)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train and export model + schema")
    t.add_argument("--dataset", required=True)
    t.add_argument("--model", required=True)
    t.add_argument("--schema", required=True)
    t.add_argument("--n-estimators", type=int, default=150)
    t.add_argument("--max-depth", type=int, default=50)
    t.add_argument("--max-samples", type=float, default=0.6)
    t.add_argument("--n-features", type=int, default=300)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--jobs", type=int, default=1)
    t.add_argument("--complete-only", action="store_true", help="skip flows with a gap or other flag")
    f = sub.add_parser("features", help="feature rows (selected) of a dataset, as JSON")
    f.add_argument("--dataset", required=True)
    f.add_argument("--schema", required=True)
    f.add_argument("-o", "--out", required=True)
    args = p.parse_args(argv)
    {"train": train, "features": features}[args.command](args)


if __name__ == "__main__":
    main()
