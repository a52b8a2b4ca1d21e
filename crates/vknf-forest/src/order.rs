//! Node orders: where a tree's nodes (or node blocks) lie in the buffer the GPU walks.
//!
//! The kernel's lanes walk one tree for different rows in lock step, one level a step, so at each
//! step a subgroup's lanes load nodes of one level. Depth first (the `.vkf` order) scatters a level's
//! nodes over the whole tree, one cache line a lane once the rows part; breadth first keeps each level
//! contiguous, so the same loads touch fewer lines. Either order keeps the layout's rules (root first,
//! children adjacent and after their parent), so the kernel reads both alike.

use std::collections::VecDeque;

use crate::layout::{COMPACT_DELTA_MASK, CompileError, GpuForest, NodeFormat, NodeWords};

/// The order of each tree's nodes (or node blocks) in the device's buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NodeOrder {
    /// Depth first, a node's children as an adjacent pair (the `.vkf` layout's own order).
    #[default]
    DepthFirst,
    /// Level by level within each tree, children still adjacent pairs.
    BreadthFirst,
}

impl NodeOrder {
    /// Takes the next entry of a walk's work list: the last pushed (depth first) or the first.
    pub(crate) fn next<T>(self, pending: &mut VecDeque<T>) -> Option<T> {
        match self {
            NodeOrder::DepthFirst => pending.pop_back(),
            NodeOrder::BreadthFirst => pending.pop_front(),
        }
    }
}

impl std::str::FromStr for NodeOrder {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "depth-first" => Ok(NodeOrder::DepthFirst),
            "breadth-first" => Ok(NodeOrder::BreadthFirst),
            other => Err(format!("unknown node order {other:?}: depth-first or breadth-first")),
        }
    }
}

impl GpuForest {
    /// `nodes` (words in this forest's node format: its own [`GpuForest::nodes`] or the fixed-point
    /// words of [`GpuForest::fixed_point_words`]) with each tree's nodes in breadth-first order. Every
    /// tree keeps its range (so [`GpuForest::tree_roots`] stay valid) and every row reaches the same
    /// leaf words.
    ///
    /// A compact node whose left child would lie further than its delta field reaches is
    /// [`CompileError::ChildTooFar`] (the caller keeps the depth-first order); a layout that breaks the
    /// node rules, or words whose structure differs from the forest's, is [`CompileError::InvalidLayout`].
    pub fn breadth_first_nodes(&self, nodes: &[u32]) -> Result<Vec<u32>, CompileError> {
        self.breadth_first_nodes_within(nodes, COMPACT_DELTA_MASK as usize)
    }

    /// [`GpuForest::breadth_first_nodes`] with compact deltas of at most `max_delta` (the field's
    /// reach, or less in tests, where trees wide enough to exceed 18 bits would take a million nodes).
    pub(crate) fn breadth_first_nodes_within(&self, nodes: &[u32], max_delta: usize) -> Result<Vec<u32>, CompileError> {
        let w = self.node_format.words();
        self.check_node_words(nodes)?;
        let n_nodes = nodes.len() / w;
        let mut out = vec![0u32; nodes.len()];
        for (t, &root) in self.tree_roots.iter().enumerate() {
            let start = root as usize;
            let end = self.tree_roots.get(t + 1).map_or(n_nodes, |&r| r as usize);
            // Old node -> new node: the root stays first; each node's children are placed as a pair
            // when it is reached, and reached in that order.
            let mut old_of = Vec::with_capacity(end - start);
            let mut new_of = vec![0usize; end - start];
            old_of.push(start);
            let mut pending = VecDeque::from([start]);
            while let Some(old) = pending.pop_front() {
                if let Some(NodeWords::Internal { left, .. }) = self.node_format.decode(nodes, old) {
                    if left < start || left + 1 >= end {
                        return Err(CompileError::InvalidLayout(format!(
                            "node {old} of tree {t} has children outside the tree's nodes"
                        )));
                    }
                    for child in [left, left + 1] {
                        new_of[child - start] = start + old_of.len();
                        old_of.push(child);
                        pending.push_back(child);
                    }
                }
            }
            if old_of.len() != end - start {
                return Err(CompileError::InvalidLayout(format!(
                    "tree {t} reaches {} of its {} nodes",
                    old_of.len(),
                    end - start
                )));
            }
            for (offset, &old) in old_of.iter().enumerate() {
                let new = start + offset;
                let words = &mut out[new * w..(new + 1) * w];
                words.copy_from_slice(&nodes[old * w..(old + 1) * w]);
                let Some(NodeWords::Internal { left, .. }) = self.node_format.decode(nodes, old) else {
                    continue;
                };
                let left = new_of[left - start];
                match self.node_format {
                    NodeFormat::Compact => {
                        let delta = left - new;
                        if delta > max_delta {
                            return Err(CompileError::ChildTooFar { node: new, delta });
                        }
                        words[0] = (words[0] & !COMPACT_DELTA_MASK) | delta as u32;
                    }
                    NodeFormat::Wide => {
                        words[2] = u32::try_from(left)
                            .map_err(|_| CompileError::InvalidLayout(format!("node index {left} exceeds u32")))?;
                    }
                }
            }
        }
        Ok(out)
    }
}
