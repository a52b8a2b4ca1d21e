"""Simulates the forest kernel's warp-steps on a forest: for each warp step, the distinct 128-byte
lines its lanes' node loads touch, under the depth-first pair order and a breadth-first pair order."""
import pickle, sys, numpy as np
from collections import deque

shape = sys.argv[1]
rows_per_group, lanes = int(sys.argv[2]), int(sys.argv[3])
forest = pickle.load(open(f"/work/shapes/{shape}_forest.pkl", "rb"))
X = np.load(f"/work/shapes/{shape}_x.npy")
trees = [e.tree_ for e in forest.estimators_]
NODE_BYTES, LINE = 8, int(sys.argv[4]) if len(sys.argv) > 4 else 128

def orders(t):
    left, right = t.children_left, t.children_right
    res = {}
    for name in ("dfs", "bfs"):
        pos = np.zeros(t.node_count, np.int64); n = 1; pos[0] = 0
        q = deque([0])
        while q:
            node = q.pop() if name == "dfs" else q.popleft()
            if left[node] >= 0:
                pos[left[node]] = n; pos[right[node]] = n + 1; n += 2
                if name == "dfs": q.append(right[node]); q.append(left[node])
                else: q.append(left[node]); q.append(right[node])
        res[name] = pos
    return res

def ancestors(t):
    left, right = t.children_left, t.children_right
    depth = np.zeros(t.node_count, np.int64); parent = np.full(t.node_count, -1)
    for n in range(t.node_count):
        if left[n] >= 0:
            depth[left[n]] = depth[n] + 1; depth[right[n]] = depth[n] + 1
            parent[left[n]] = n; parent[right[n]] = n
    D = depth.max() + 1
    anc = np.full((t.node_count, D), -1, np.int64)
    for n in range(t.node_count):  # nodes are preorder: a parent precedes its children
        if parent[n] >= 0: anc[n, :depth[n]] = anc[parent[n], :depth[n]]
        anc[n, depth[n]] = n
    return anc

n_rows = X.shape[0]; n_trees = len(trees)
maxD = max(t.max_depth for t in trees) + 1
base = np.cumsum([0] + [t.node_count for t in trees])
paths = {k: np.full((n_trees, n_rows, maxD), -1, np.int64) for k in ("dfs", "bfs")}
for ti, t in enumerate(trees):
    anc = ancestors(t); leaf = t.apply(X); o = orders(t)
    P = anc[leaf]  # rows x D
    for k in paths:
        addr = np.where(P >= 0, (base[ti] + o[k][np.maximum(P, 0)]) * NODE_BYTES // LINE, -1)
        paths[k][ti, :, :addr.shape[1]] = addr

group = rows_per_group * lanes
warps_per_group = -(-group // 32)
iters = -(-n_trees // lanes)
tot = {k: 0 for k in paths}; steps = 0; loads = 0
n_groups = -(-n_rows // rows_per_group)
for g in range(n_groups):
    for w in range(warps_per_group):
        th = np.arange(32 * w, min(32 * w + 32, group))
        row = g * rows_per_group + th % rows_per_group; lane = th // rows_per_group
        ok = row < n_rows
        row, lane = row[ok], lane[ok]
        for i in range(iters):
            tree = lane + lanes * i; act = tree < n_trees
            if not act.any(): continue
            for k in paths:
                A = paths[k][tree[act], row[act]]  # lanes x D
                s = np.sort(A, axis=0)
                distinct = ((s[1:] != s[:-1]) & (s[1:] >= 0)).sum(0) + (s[0] >= 0)
                tot[k] += distinct.sum()
            A = paths["dfs"][tree[act], row[act]]
            steps += (A >= 0).any(0).sum(); loads += (A >= 0).sum()
print(f"{shape}: warp steps {steps}, lane loads {loads} ({loads/steps:.1f} a step), distinct {LINE}-byte lines: "
      + ", ".join(f"{k} {v} ({v/steps:.2f} a step)" for k, v in tot.items()))
