"""Distinct 32-byte sectors a subgroup step (breadth-first layout) for the deep forest's rows in
several orders: as given, sorted by label, and sorted by the node each row reaches at depth k of the
first trees (a signature of its top-level decisions)."""
import pickle, numpy as np
from collections import deque
forest = pickle.load(open("/work/shapes/deep_forest.pkl", "rb"))
X = np.load("/work/shapes/deep_x.npy")
trees = [e.tree_ for e in forest.estimators_]
R, L = 22, 45
def bfs_pos(t):
    pos = np.zeros(t.node_count, np.int64); n = 1; q = deque([0])
    while q:
        v = q.popleft()
        if t.children_left[v] >= 0:
            pos[t.children_left[v]] = n; pos[t.children_right[v]] = n + 1; n += 2
            q.append(t.children_left[v]); q.append(t.children_right[v])
    return pos
def anc(t):
    l, r = t.children_left, t.children_right
    d = np.zeros(t.node_count, np.int64); p = np.full(t.node_count, -1)
    for v in range(t.node_count):
        if l[v] >= 0: d[l[v]] = d[r[v]] = d[v] + 1; p[l[v]] = p[r[v]] = v
    A = np.full((t.node_count, d.max() + 1), -1, np.int64)
    for v in range(t.node_count):
        if p[v] >= 0: A[v, :d[v]] = A[p[v], :d[v]]
        A[v, d[v]] = v
    return A
base = np.cumsum([0] + [t.node_count for t in trees]); maxD = max(t.max_depth for t in trees) + 1
paths = np.full((len(trees), len(X), maxD), -1, np.int64); nodes_at = []
for i, t in enumerate(trees):
    A = anc(t)[t.apply(X)]; pos = bfs_pos(t)
    paths[i, :, :A.shape[1]] = np.where(A >= 0, (base[i] + pos[np.maximum(A, 0)]) * 8 // 32, -1)
    nodes_at.append(A)
def cost(order):
    P = paths[:, order]; tot = 0; steps = 0
    for g in range(-(-len(order) // R)):
        for w in range(-(-R * L // 32)):
            th = np.arange(32 * w, min(32 * w + 32, R * L)); row = g * R + th % R; lane = th // R
            ok = row < len(order); row, lane = row[ok], lane[ok]
            for it in range(-(-len(trees) // L)):
                tr = lane + L * it; a = tr < len(trees)
                if not a.any(): continue
                s = np.sort(P[tr[a], row[a]], axis=0)
                tot += (((s[1:] != s[:-1]) & (s[1:] >= 0)).sum(0) + (s[0] >= 0)).sum()
                steps += (s >= 0).any(0).sum()
    return tot, steps
n = len(X)
print("given", cost(np.arange(n)))
print("by label", cost(np.argsort(forest.predict(X), kind="stable")))
for k, m in [(6, 1), (10, 1), (6, 3), (4, 8)]:
    sig = np.stack([nodes_at[t][:, min(k, nodes_at[t].shape[1] - 1)] for t in range(m)], 1)
    sig = np.where(sig < 0, 0, sig)
    order = np.lexsort(sig.T[::-1])
    print(f"by depth-{k} node of the first {m} trees", cost(order))
