#!/usr/bin/env python3
"""Fails when a crate's modules import each other in a circle, or when crates depend on each other in
a circle. Module edges come from `use crate::...`, `crate::a::b` paths and `super::` paths in each
crate's src/; crate edges from `cargo metadata`. Usage: scripts/check-module-cycles.py [crates-dir]"""
import json
import os
import re
import subprocess
import sys


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel[-1] in ("lib", "main", "mod"):
        rel = rel[:-1]
    return tuple(rel)


def top(module):
    return module[:1]


def edges_of(src):
    modules = {}
    for root, _, files in os.walk(src):
        for name in files:
            if name.endswith(".rs") and "bin" not in os.path.relpath(root, src).split(os.sep):
                path = os.path.join(root, name)
                modules[module_of(src, path)] = open(path, encoding="utf-8").read()
    edges = {}
    for module, text in modules.items():
        if not module:
            continue
        # Tests inside a module may reach anywhere; only production code counts.
        text = re.split(r"#\[cfg\(test\)\]", text)[0]
        text = re.sub(r"//[^\n]*", "", text)
        targets = set()
        for group in re.findall(r"\bcrate::((?:\w+::)*\{?[\w, :{}]*)", text):
            first = group.split("::")[0].strip("{ ")
            if first and first[0].islower():
                targets.add((first,))
        parent = module[:-1]
        for first in re.findall(r"\bsuper::(\w+)", text):
            if first[0].islower() and parent:
                targets.add(top(parent + (first,)))
        mine = top(module)
        edges.setdefault(mine, set()).update(t for t in targets if t != mine and t in {top(m) for m in modules})
    return edges


def cycle(edges):
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(edges):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def main():
    crates = sys.argv[1] if len(sys.argv) > 1 else "crates"
    failed = False
    for crate in sorted(os.listdir(crates)):
        src = os.path.join(crates, crate, "src")
        if not os.path.isdir(src):
            continue
        found = cycle(edges_of(src))
        if found:
            failed = True
            print(f"{crate}: modules import each other in a circle: " + " -> ".join("::".join(m) for m in found))
    meta = json.loads(subprocess.check_output(["cargo", "metadata", "--format-version", "1", "--no-deps"]))
    names = {p["name"] for p in meta["packages"]}
    deps = {p["name"]: {d["name"] for d in p["dependencies"] if d["name"] in names and d["kind"] is None}
            for p in meta["packages"]}
    found = cycle({(k,): {(d,) for d in v} for k, v in deps.items()})
    if found:
        failed = True
        print("crates depend on each other in a circle: " + " -> ".join(n[0] for n in found))
    if failed:
        sys.exit(1)
    print("no import circles between modules of a crate, nor between crates")


if __name__ == "__main__":
    main()
