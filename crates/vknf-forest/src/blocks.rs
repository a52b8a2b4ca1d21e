//! Node blocks: a device layout of a compiled forest in which one 32-byte block holds an internal node
//! and both its children, so that one load (one memory sector of a GPU) decides two levels of a walk.
//!
//! In the node layout ([`GpuForest::nodes`]) a walk loads one 8-byte node per level, each load's
//! address depending on the previous one, and the rows of a subgroup soon read different sectors. A
//! block halves both the chain of dependent loads and the sectors a walk touches, at the cost of
//! memory (blocks whose top is a leaf hold one node). The layout is derived from a validated
//! [`GpuForest`] when the forest is uploaded, so `.vkf` files and the CPU reference keep the node
//! layout, and the GPU's scores are checked against a reference that does not share this code.
//!
//! Block `b` is words `[8b, 8b + 8)`, four word pairs:
//! - pair 0, the top node: an internal node as `[nan flag | feature, threshold bits]` (the feature in
//!   the low 30 bits, [`FLAG_BIT`] when NaN goes left), or a leaf's two words as the node layout has
//!   them ([`LEAF_BIT`] set); a leaf top ends the walk, and the rest of the block is zero;
//! - pairs 1 and 2, the top's left and right children, each an internal node or a leaf, encoded alike;
//! - pair 3, `[first, 0]`: the index of the first block of the top's grandchildren. The children of
//!   the left child (when it is internal) are the blocks `first` and `first + 1`; those of the right
//!   child follow them (`first + 2`, `first + 3`, or `first`, `first + 1` when the left child is a
//!   leaf). A grandchild block always lies after its parent block, so every walk moves forward.

use std::collections::VecDeque;

use crate::layout::{CompileError, FLAG_BIT, GpuForest, NodeWords};
use crate::order::NodeOrder;

/// Words per node block (32 bytes: one sector).
pub const BLOCK_WORDS: usize = 8;

/// A forest's nodes regrouped into blocks; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeBlocks {
    /// `n_blocks * BLOCK_WORDS` words.
    pub words: Vec<u32>,
    /// Block index of each tree's root block.
    pub tree_roots: Vec<u32>,
}

impl NodeBlocks {
    /// Number of blocks.
    pub fn n_blocks(&self) -> usize {
        self.words.len() / BLOCK_WORDS
    }
}

impl GpuForest {
    /// Regroups `nodes` (words in this forest's node format: its own [`GpuForest::nodes`], or the
    /// fixed-point words of [`GpuForest::fixed_point_words`]) into node blocks.
    ///
    /// A layout that breaks the node rules (`docs/vkf-format.md`: one parent per node, children after
    /// it in its tree, no deeper than `max_depth`; a hand-built `GpuForest` may) is an error, never a
    /// panic or an endless loop: those rules are what bound the blocks (one per node at most) and the
    /// walk (`max_depth / 2 + 1` blocks).
    ///
    /// `order` places each tree's blocks depth first (a block's grandchildren are expanded as soon as
    /// it is) or level by level ([`NodeOrder`]); a block's grandchild blocks are adjacent either way.
    pub fn node_blocks(&self, nodes: &[u32], order: NodeOrder) -> Result<NodeBlocks, CompileError> {
        let w = self.node_format.words();
        self.check_node_words(nodes)?;
        let n_nodes = nodes.len() / w;
        let decode = |index: usize| -> Result<NodeWords, CompileError> {
            self.node_format
                .decode(nodes, index)
                .ok_or_else(|| CompileError::InvalidLayout(format!("node {index} out of range")))
        };
        // A node's words in a block: a leaf's as they are, an internal node's feature with the NaN
        // flag beside its threshold.
        let block_pair = |node: NodeWords| match node {
            NodeWords::Leaf { w0, w1 } => [w0, w1],
            NodeWords::Internal {
                feature,
                nan_left,
                threshold,
                ..
            } => [if nan_left { FLAG_BIT | feature } else { feature }, threshold],
        };

        let mut words: Vec<u32> = Vec::with_capacity(n_nodes * 4);
        let mut tree_roots = Vec::with_capacity(self.tree_roots.len());
        // (block index, node index of its top): a block's grandchildren are laid out as soon as it
        // is, next to each other; depth first the first of them is expanded next.
        let mut pending: VecDeque<(usize, usize)> = VecDeque::new();
        for &root in &self.tree_roots {
            let root_block = words.len() / BLOCK_WORDS;
            tree_roots.push(to_u32(root_block)?);
            words.resize(words.len() + BLOCK_WORDS, 0);
            pending.push_back((root_block, root as usize));
            while let Some((block, top)) = order.next(&mut pending) {
                let at = block * BLOCK_WORDS;
                let top = decode(top)?;
                words[at..at + 2].copy_from_slice(&block_pair(top));
                let NodeWords::Internal { left, .. } = top else {
                    continue;
                };
                let mut grandchildren = [0usize; 4];
                let mut count = 0;
                for (slot, child) in [left, left + 1].into_iter().enumerate() {
                    let child = decode(child)?;
                    if let NodeWords::Internal { left, .. } = child {
                        grandchildren[count] = left;
                        grandchildren[count + 1] = left + 1;
                        count += 2;
                    }
                    let start = at + 2 + slot * 2;
                    words[start..start + 2].copy_from_slice(&block_pair(child));
                }
                if count == 0 {
                    continue;
                }
                let first = words.len() / BLOCK_WORDS;
                words[at + 6] = to_u32(first)?;
                words.resize(words.len() + count * BLOCK_WORDS, 0);
                let grandchildren = grandchildren[..count]
                    .iter()
                    .enumerate()
                    .map(|(k, &node)| (first + k, node));
                match order {
                    NodeOrder::DepthFirst => pending.extend(grandchildren.rev()),
                    NodeOrder::BreadthFirst => pending.extend(grandchildren),
                }
            }
        }
        Ok(NodeBlocks { words, tree_roots })
    }
}

fn to_u32(index: usize) -> Result<u32, CompileError> {
    u32::try_from(index).map_err(|_| CompileError::InvalidLayout(format!("block index {index} exceeds u32")))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::layout::{
        COMPACT_DELTA_MASK, COMPACT_FEATURE_MASK, COMPACT_FEATURE_SHIFT, LEAF_BIT, LOW30_MASK, NodeFormat,
    };
    use crate::model::{Aggregate, ClassLabels, MissingPolicy, PostTransform, Task};
    use crate::validate::{RawEntry, RawForest, RawNode, RawTree, SplitMode};

    /// The leaf words a walk over blocks reaches for `row`, as the kernel walks them (two levels per
    /// block), or `None` when it runs past `max_depth` or out of range.
    fn block_leaf(forest: &GpuForest, blocks: &NodeBlocks, tree: usize, row: &[f32]) -> Option<[u32; 2]> {
        let goes_left = |pair: [u32; 2]| {
            let x = row[(pair[0] & LOW30_MASK) as usize];
            x <= f32::from_bits(pair[1]) || (x.is_nan() && pair[0] & FLAG_BIT != 0)
        };
        let mut block = blocks.tree_roots[tree] as usize;
        for step in 0..=forest.max_depth / 2 {
            let _ = step;
            let b = blocks.words.get(block * BLOCK_WORDS..(block + 1) * BLOCK_WORDS)?;
            let top = [b[0], b[1]];
            if top[0] & LEAF_BIT != 0 {
                return Some(top);
            }
            let left = goes_left(top);
            let child = if left { [b[2], b[3]] } else { [b[4], b[5]] };
            if child[0] & LEAF_BIT != 0 {
                return Some(child);
            }
            let left_child_internal = b[2] & LEAF_BIT == 0;
            let skip = if !left && left_child_internal { 2 } else { 0 };
            block = b[6] as usize + skip + usize::from(!goes_left(child));
        }
        None
    }

    /// The leaf words the node layout reaches for `row` (the CPU reference's walk).
    fn node_leaf(forest: &GpuForest, tree: usize, row: &[f32]) -> [u32; 2] {
        let w = forest.node_format.words();
        let mut node = forest.tree_roots[tree] as usize;
        loop {
            let words = &forest.nodes[node * w..(node + 1) * w];
            if words[0] & LEAF_BIT != 0 {
                return [words[0], words[1]];
            }
            let (feature, left) = match forest.node_format {
                NodeFormat::Compact => (
                    ((words[0] >> COMPACT_FEATURE_SHIFT) & COMPACT_FEATURE_MASK) as usize,
                    node + (words[0] & COMPACT_DELTA_MASK) as usize,
                ),
                NodeFormat::Wide => ((words[0] & LOW30_MASK) as usize, words[2] as usize),
            };
            let x = row[feature];
            let left_wins = x <= f32::from_bits(words[1]) || (x.is_nan() && words[0] & FLAG_BIT != 0);
            node = if left_wins { left } else { left + 1 };
        }
    }

    /// A random tree: `shape` decides, node by node in depth-first order, whether to split (up to
    /// `max_depth`); leaves get one or several entries.
    fn tree(id: i64, shape: &[u8], n_features: u32, max_depth: u32) -> RawTree {
        let mut nodes = Vec::new();
        let mut entries = Vec::new();
        let mut cursor = 0usize;
        let next = |cursor: &mut usize| {
            let value = shape[*cursor % shape.len()];
            *cursor += 1;
            value
        };
        // (node id, depth) to fill, depth first.
        let mut todo = vec![(0i64, 0u32)];
        nodes.push(RawNode::Leaf);
        while let Some((id_here, depth)) = todo.pop() {
            let choice = next(&mut cursor);
            if depth < max_depth && choice % 4 != 0 {
                let true_child = nodes.len() as i64;
                nodes.push(RawNode::Leaf);
                nodes.push(RawNode::Leaf);
                nodes[id_here as usize] = RawNode::Branch {
                    mode: SplitMode::Leq,
                    feature: i64::from(
                        ((u32::from(next(&mut cursor)) << 8) | u32::from(next(&mut cursor))) % n_features,
                    ),
                    threshold: f64::from(next(&mut cursor)) / 32.0 - 4.0,
                    true_child,
                    false_child: true_child + 1,
                    missing_tracks_true: choice % 2 == 0,
                };
                todo.push((true_child + 1, depth + 1));
                todo.push((true_child, depth + 1));
            } else {
                for k in 0..=(choice % 3) {
                    entries.push(RawEntry {
                        node: id_here,
                        output: i64::from(k),
                        weight: f64::from(choice) / 7.0 + f64::from(k),
                    });
                }
            }
        }
        RawTree { id, nodes, entries }
    }

    fn forest(shapes: &[Vec<u8>], n_features: u32, max_depth: u32) -> GpuForest {
        RawForest {
            task: Task::Classifier {
                labels: ClassLabels::Int64(vec![0, 1, 2]),
            },
            n_features: u64::from(n_features),
            n_outputs: 3,
            trees: shapes
                .iter()
                .enumerate()
                .map(|(t, shape)| tree(t as i64, shape, n_features, max_depth))
                .collect(),
            aggregate: Aggregate::Sum,
            post_transform: PostTransform::None,
            base_values: vec![],
            binary_complement: false,
            missing: MissingPolicy::Route,
            max_depth_limit: 64,
        }
        .validate()
        .unwrap()
        .compile()
        .unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Every row reaches the same leaf, with the same words, through blocks as through nodes, in
        /// both node formats and both node orders, for trees of odd and even depths, with NaN features
        /// routed both ways; breadth first, each tree's levels follow one another.
        #[test]
        fn blocks_and_orders_reach_the_leaves_nodes_reach(
            shapes in prop::collection::vec(prop::collection::vec(any::<u8>(), 1..64), 1..6),
            wide in any::<bool>(),
            max_depth in 0u32..12,
            rows in prop::collection::vec(prop::collection::vec(prop_oneof![-5.0f32..5.0, Just(f32::NAN)], 6), 1..16),
        ) {
            let n_features: u32 = if wide { 4100 } else { 6 };
            let forest = forest(&shapes, n_features, max_depth);
            prop_assert_eq!(forest.node_format, if wide { NodeFormat::Wide } else { NodeFormat::Compact });
            let breadth_first = GpuForest { nodes: forest.breadth_first_nodes(&forest.nodes).unwrap(), ..forest.clone() };
            breadth_first.check_layout().unwrap();
            for t in 0..shapes.len() {
                let depths = node_depths(&breadth_first, t);
                prop_assert!(depths.windows(2).all(|d| d[0] <= d[1]), "tree {} not level by level: {:?}", t, depths);
            }
            for order in [NodeOrder::DepthFirst, NodeOrder::BreadthFirst] {
                let blocks = forest.node_blocks(&forest.nodes, order).unwrap();
                if order == NodeOrder::BreadthFirst {
                    let depths = block_depths(&blocks);
                    prop_assert!(depths.windows(2).all(|d| d[0] <= d[1] || d[1] == 0), "blocks not level by level: {:?}", depths);
                }
                // Every node is in exactly one block's pairs 0-2.
                let used = blocks.words.chunks_exact(BLOCK_WORDS).map(|b| {
                    if b[0] & LEAF_BIT != 0 { 1 } else { 3 }
                }).sum::<usize>();
                prop_assert_eq!(used, forest.n_nodes());
                for row in &rows {
                    // Every feature a split may name gets one of the row's values.
                    let full: Vec<f32> = (0..n_features as usize).map(|f| row[(f * 7 + f / 6) % 6]).collect();
                    for t in 0..shapes.len() {
                        let leaf = node_leaf(&forest, t, &full);
                        prop_assert_eq!(block_leaf(&forest, &blocks, t, &full), Some(leaf));
                        prop_assert_eq!(node_leaf(&breadth_first, t, &full), leaf);
                    }
                }
            }
        }
    }

    /// The depth of each block within its tree (0 for each tree's root block), in the order they lie in.
    fn block_depths(blocks: &NodeBlocks) -> Vec<u32> {
        let mut depth = vec![0u32; blocks.n_blocks()];
        for (b, block) in blocks.words.chunks_exact(BLOCK_WORDS).enumerate() {
            if block[0] & LEAF_BIT != 0 {
                continue;
            }
            let internal_children = [block[2], block[4]].iter().filter(|w| *w & LEAF_BIT == 0).count();
            for k in 0..2 * internal_children {
                depth[block[6] as usize + k] = depth[b] + 1;
            }
        }
        depth
    }

    /// The depth of each of tree `tree`'s nodes, in the order they lie in.
    fn node_depths(forest: &GpuForest, tree: usize) -> Vec<u32> {
        let start = forest.tree_roots[tree] as usize;
        let end = forest
            .tree_roots
            .get(tree + 1)
            .map_or(forest.n_nodes(), |&r| r as usize);
        let mut depth = vec![0u32; end - start];
        for node in start..end {
            if let Some(NodeWords::Internal { left, .. }) = forest.node_format.decode(&forest.nodes, node) {
                depth[left - start] = depth[node - start] + 1;
                depth[left + 1 - start] = depth[node - start] + 1;
            }
        }
        depth
    }

    #[test]
    fn a_layout_whose_children_point_backwards_is_an_error() {
        let mut forest = forest(&[vec![1, 9, 200, 1, 0, 0]], 6, 2);
        assert!(forest.n_nodes() >= 3);
        // The root's left child delta 0: its "children" would be itself.
        forest.nodes[0] &= !COMPACT_DELTA_MASK;
        let err = forest
            .node_blocks(&forest.nodes.clone(), NodeOrder::DepthFirst)
            .unwrap_err();
        assert!(matches!(err, CompileError::InvalidLayout(_)), "{err}");
        assert!(err.to_string().contains("would loop"), "{err}");
        let short = forest.nodes[..2].to_vec();
        assert!(forest.node_blocks(&short, NodeOrder::DepthFirst).is_err());
        let err = forest.breadth_first_nodes(&forest.nodes.clone()).unwrap_err();
        assert!(err.to_string().contains("would loop"), "{err}");
    }

    /// Breadth first, a compact node further from its children than the delta field reaches is the
    /// error callers fall back on (tried with a reach of 2: the root's grandchildren lie further).
    #[test]
    fn levels_wider_than_a_compact_delta_reaches_are_refused() {
        let forest = forest(&[vec![1, 9, 200, 1, 5, 0, 3, 7, 1, 2, 9]], 6, 4);
        let widest = forest.breadth_first_nodes(&forest.nodes).unwrap();
        assert_eq!(widest.len(), forest.nodes.len());
        let err = forest.breadth_first_nodes_within(&forest.nodes, 2).unwrap_err();
        assert!(matches!(err, CompileError::ChildTooFar { .. }), "{err}");
    }

    /// Words to lay out again may differ from the forest's own in leaf weights only: a valid forest
    /// given words whose structure differs (here a root pointing back at itself) is refused by both
    /// layouts, whose walks over the words the forest's rules bound.
    #[test]
    fn words_whose_structure_differs_from_the_forest_are_an_error() {
        let forest = forest(&[vec![1, 9, 200, 1, 0, 0]], 6, 2);
        let mut words = forest.nodes.clone();
        words[0] &= !COMPACT_DELTA_MASK;
        for err in [
            forest.node_blocks(&words, NodeOrder::BreadthFirst).unwrap_err(),
            forest.breadth_first_nodes(&words).unwrap_err(),
        ] {
            assert!(err.to_string().contains("more than a leaf weight"), "{err}");
        }
    }

    /// A chain whose every node shares a child with the next (node k's children are k+1 and k+2):
    /// walks of it end, but copying each path into blocks would grow exponentially. Refused.
    #[test]
    fn a_layout_whose_nodes_share_children_is_an_error() {
        let mut forest = forest(&[vec![1, 9, 200, 1, 0, 0]], 6, 2);
        let n = 40usize;
        let mut nodes = Vec::new();
        for _ in 0..n - 2 {
            nodes.extend_from_slice(&[1, 0.5f32.to_bits()]);
        }
        nodes.extend_from_slice(&[LEAF_BIT | FLAG_BIT, 1.0f32.to_bits()]);
        nodes.extend_from_slice(&[LEAF_BIT | FLAG_BIT | 1, 1.0f32.to_bits()]);
        forest.nodes = nodes;
        forest.max_depth = n as u32;
        let err = forest
            .node_blocks(&forest.nodes.clone(), NodeOrder::DepthFirst)
            .unwrap_err();
        assert!(err.to_string().contains("two parents"), "{err}");
    }

    /// A forest whose leaves lie deeper than its `max_depth` says: the kernel's walk would stop where
    /// the bound says, and the block walk one level later. Refused.
    #[test]
    fn a_layout_deeper_than_its_max_depth_is_an_error() {
        let mut forest = forest(&[vec![1, 9, 200, 1, 0, 0]], 6, 2);
        assert!(forest.max_depth >= 1);
        forest.max_depth = 0;
        let err = forest
            .node_blocks(&forest.nodes.clone(), NodeOrder::DepthFirst)
            .unwrap_err();
        assert!(err.to_string().contains("max_depth"), "{err}");
    }
}
