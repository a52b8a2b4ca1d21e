"""gRPC over TLS with the KServe Python SDK (grpcio's TLS, BoringSSL): infer rows with a client
certificate, and try again without one.

Prints one JSON line: {"ready": bool, "labels": [...], "uncertified": "<gRPC status code name>"}.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import sys

import grpc


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--grpc", required=True, help="HOST:PORT; HOST is the name checked in the certificate")
    p.add_argument("--model", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--rows", type=int, default=5, help="first rows of --input to infer")
    p.add_argument("--input", required=True, help="CSV with a header line")
    return p.parse_args()


# kserve parses the process's command line when it is imported: ours are read first and taken off.
ARGS = parse_args()
sys.argv = sys.argv[:1]

from kserve import InferenceGRPCClient  # noqa: E402
from kserve.protocol.infer_type import InferInput, InferRequest  # noqa: E402


def rows(path: str, count: int) -> list[list[float]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        next(reader)
        return [[float(v) for v in row] for row, _ in zip(reader, range(count))]


async def main() -> int:
    args = ARGS
    X = rows(args.input, args.rows)
    tensor = InferInput(name="features", shape=[len(X), len(X[0])], datatype="FP32", data=[v for row in X for v in row])
    request = InferRequest(model_name=args.model, infer_inputs=[tensor])
    certified = InferenceGRPCClient(
        args.grpc, use_ssl=True, root_certificates=args.ca, private_key=args.key, certificate_chain=args.cert,
        retries=0, timeout=30,
    )
    try:
        ready = await certified.is_server_ready()
        response = await certified.infer(request)
        labels = next(o for o in response.outputs if o.name == "labels").as_numpy().tolist()
    finally:
        await certified.close()
    uncertified = InferenceGRPCClient(args.grpc, use_ssl=True, root_certificates=args.ca, retries=0, timeout=30)
    try:
        await uncertified.infer(request)
        code = "OK"
    except grpc.aio.AioRpcError as error:
        code = error.code().name
    finally:
        await uncertified.close()
    print(json.dumps({"ready": ready, "labels": labels, "uncertified": code}))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
