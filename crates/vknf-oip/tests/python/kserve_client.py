#!/usr/bin/env python3
"""Ask a vknf Open Inference Protocol port with the KServe Python SDK, and compare with scikit-learn.

Runs in the KServe venv (.venv-kserve, python/requirements-kserve.txt). CASE_DIR is what
train_forest.py wrote (X.npy, predict.npy, proba.npy). Every check that fails is printed; the exit
status is the number of failures (0: every answer equals scikit-learn's and every error is the
specification's).

Usage: kserve_client.py --rest http://HOST:PORT --grpc HOST:PORT --model NAME CASE_DIR
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import grpc
import httpx
import numpy as np


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rest", required=True)
    p.add_argument("--grpc", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("case_dir", type=Path)
    return p.parse_args()


# kserve parses the process's command line when it is imported (its model server's flags): ours are
# read first and taken off.
ARGS = parse_args()
sys.argv = sys.argv[:1]

from kserve import InferenceGRPCClient, InferenceRESTClient, RESTConfig  # noqa: E402
from kserve.protocol.infer_type import InferInput, InferRequest, RequestedOutput  # noqa: E402

PROBA_TOLERANCE = 1e-5
TIE_TOLERANCE = 1e-6

failures: list[str] = []
checks: list[str] = []


def check(ok: bool, what: str) -> None:
    checks.append(what)
    if not ok:
        failures.append(what)
        print(f"FAIL: {what}", file=sys.stderr)


def compare(what: str, response, predict: np.ndarray, proba: np.ndarray) -> None:
    outputs = {o.name: o for o in response.outputs}
    check(set(outputs) == {"labels", "scores"}, f"{what}: outputs are labels and scores ({sorted(outputs)})")
    if set(outputs) != {"labels", "scores"}:
        return
    labels = outputs["labels"].as_numpy()
    scores = outputs["scores"].as_numpy()
    check(outputs["labels"].datatype == "UINT32", f"{what}: labels are UINT32")
    check(outputs["scores"].datatype == "FP32", f"{what}: scores are FP32")
    check(labels.shape == predict.shape, f"{what}: labels shape {labels.shape} == {predict.shape}")
    check(scores.shape == proba.shape, f"{what}: scores shape {scores.shape} == {proba.shape}")
    if labels.shape != predict.shape or scores.shape != proba.shape:
        return
    gap = np.max(np.abs(scores.astype(np.float64) - proba))
    check(gap <= PROBA_TOLERANCE, f"{what}: scores within {PROBA_TOLERANCE} of predict_proba (max gap {gap})")
    top_two = np.sort(proba, axis=1)[:, -2:]
    tie = (top_two[:, 1] - top_two[:, 0]) <= TIE_TOLERANCE
    differ = (labels.astype(np.int64) != predict) & ~tie
    check(not differ.any(), f"{what}: labels equal predict (rows differing: {np.flatnonzero(differ).tolist()})")


def oversized(X: np.ndarray) -> np.ndarray:
    """Rows of 1.5 MiB: over the server's --max-frame-mib 1."""
    return np.tile(X, (int(np.ceil(1.5 * 2**20 / X.nbytes)), 1))


def request(model: str, X: np.ndarray, binary: bool, datatype: str = "FP32", name: str = "features") -> InferRequest:
    tensor = InferInput(name=name, shape=list(X.shape), datatype=datatype)
    tensor.set_data_from_numpy(X, binary_data=binary)
    outputs = [
        RequestedOutput("labels", parameters={"binary_data": binary}),
        RequestedOutput("scores", parameters={"binary_data": binary}),
    ]
    return InferRequest(model_name=model, infer_inputs=[tensor], request_outputs=outputs)


async def rest_checks(base: str, model: str, X, predict, proba) -> None:
    client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0, timeout=30))
    try:
        check(await client.is_server_live(base), "REST: server live")
        check(await client.is_server_ready(base), "REST: server ready")
        check(await client.is_model_ready(base, model), "REST: model ready")
        response = await client.infer(base, request(model, X, binary=False), model_name=model)
        compare("REST JSON tensors", response, predict, proba)
        response = await client.infer(base, request(model, X, binary=True), model_name=model)
        compare("REST binary tensors", response, predict, proba)
        # One row, without naming outputs: every output comes back.
        one = InferInput(name="features", shape=[1, X.shape[1]], datatype="FP32", data=X[:1].flatten().tolist())
        response = await client.infer(base, InferRequest(model_name=model, infer_inputs=[one]), model_name=model)
        compare("REST one row, all outputs", response, predict[:1], proba[:1])

        async def status_of(req: InferRequest, name: str) -> int:
            try:
                await client.infer(base, req, model_name=name)
                return 200
            except httpx.HTTPStatusError as error:
                return error.response.status_code

        check(await status_of(request("no-such-model", X, False), "no-such-model") == 404, "REST: unknown model is 404")
        wrong_type = request(model, X.astype(np.int32), False, datatype="INT32")
        check(await status_of(wrong_type, model) == 400, "REST: wrong datatype is 400")
        wrong_shape = request(model, X[:, :-1].copy(), False)
        check(await status_of(wrong_shape, model) == 400, "REST: wrong shape is 400")
        wrong_name = request(model, X, False, name="not-the-input")
        check(await status_of(wrong_name, model) == 400, "REST: wrong input name is 400")
        check(await status_of(request(model, oversized(X), True), model) == 413, "REST: an oversized body is 413")
    finally:
        await client.close()


async def grpc_checks(url: str, model: str, X, predict, proba) -> None:
    client = InferenceGRPCClient(url, retries=0, timeout=30)
    try:
        check(await client.is_server_live(), "gRPC: server live")
        check(await client.is_server_ready(), "gRPC: server ready")
        check(await client.is_model_ready(model), "gRPC: model ready")
        response = await client.infer(request(model, X, binary=True))
        compare("gRPC raw tensors", response, predict, proba)
        typed = InferInput(name="features", shape=list(X.shape), datatype="FP32", data=X.flatten().tolist())
        response = await client.infer(
            InferRequest(model_name=model, infer_inputs=[typed], request_outputs=[RequestedOutput("labels"), RequestedOutput("scores")])
        )
        compare("gRPC typed contents", response, predict, proba)

        async def code_of(req: InferRequest):
            try:
                await client.infer(req)
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as error:
                return error.code()

        check(await code_of(request("no-such-model", X, True)) == grpc.StatusCode.NOT_FOUND, "gRPC: unknown model is NOT_FOUND")
        wrong_shape = request(model, X[:, :-1].copy(), True)
        check(await code_of(wrong_shape) == grpc.StatusCode.INVALID_ARGUMENT, "gRPC: wrong shape is INVALID_ARGUMENT")
        wrong_type = request(model, X.astype(np.int32), True, datatype="INT32")
        check(await code_of(wrong_type) == grpc.StatusCode.INVALID_ARGUMENT, "gRPC: wrong datatype is INVALID_ARGUMENT")
        # tonic refuses a message over the limit from its length prefix, with OUT_OF_RANGE.
        too_big = await code_of(request(model, oversized(X), True))
        check(too_big == grpc.StatusCode.OUT_OF_RANGE, f"gRPC: an oversized message is OUT_OF_RANGE ({too_big})")
        # Still serving after all of it.
        response = await client.infer(request(model, X, binary=True))
        compare("gRPC after the errors", response, predict, proba)
    finally:
        await client.close()


async def main() -> int:
    args = ARGS
    X = np.load(args.case_dir / "X.npy").astype(np.float32)
    predict = np.load(args.case_dir / "predict.npy")
    proba = np.load(args.case_dir / "proba.npy")
    await rest_checks(args.rest, args.model, X, predict, proba)
    await grpc_checks(args.grpc, args.model, X, predict, proba)
    print(json.dumps({"checks": len(checks), "failures": failures}))
    return len(failures)


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
