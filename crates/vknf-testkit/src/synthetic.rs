//! Random forests with a known shape, for tests and benchmarks that need a valid model of a given
//! size without training one (scikit-learn parity is checked with real models: `parity`).

use rand::{Rng as _, SeedableRng as _};

use vknf_forest::{
    Aggregate, ClassLabels, DEFAULT_MAX_DEPTH, GpuForest, MissingPolicy, PostTransform, RawEntry, RawForest, RawNode,
    RawTree, SplitMode, Task,
};

/// A classifier of `n_trees` full binary trees of `depth` splits each: features and thresholds (in
/// [-1, 1)) drawn at random, every leaf weighting every class. The same seed gives the same forest.
pub fn random_classifier(n_features: usize, n_classes: usize, n_trees: usize, depth: u32, seed: u64) -> GpuForest {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let shape = Shape { n_features, n_classes };
    let trees = (0..n_trees)
        .map(|id| {
            let mut tree = RawTree {
                id: id as i64,
                ..Default::default()
            };
            shape.grow(&mut tree, depth, &mut rng);
            tree
        })
        .collect();
    RawForest {
        task: Task::Classifier {
            labels: ClassLabels::Int64((0..n_classes as i64).collect()),
        },
        n_features: n_features as u64,
        n_outputs: n_classes as u64,
        trees,
        aggregate: Aggregate::Average,
        post_transform: PostTransform::None,
        base_values: Vec::new(),
        binary_complement: false,
        missing: MissingPolicy::Reject,
        max_depth_limit: DEFAULT_MAX_DEPTH,
    }
    .validate()
    .expect("a full random tree is a valid forest")
    .compile()
    .expect("a valid random forest compiles")
}

struct Shape {
    n_features: usize,
    n_classes: usize,
}

impl Shape {
    fn grow(&self, tree: &mut RawTree, depth: u32, rng: &mut rand::rngs::StdRng) -> i64 {
        let id = tree.nodes.len() as i64;
        tree.nodes.push(RawNode::Leaf);
        if depth == 0 {
            for class in 0..self.n_classes {
                tree.entries.push(RawEntry {
                    node: id,
                    output: class as i64,
                    weight: rng.random_range(0.01..1.0),
                });
            }
            return id;
        }
        let true_child = self.grow(tree, depth - 1, rng);
        let false_child = self.grow(tree, depth - 1, rng);
        tree.nodes[id as usize] = RawNode::Branch {
            mode: SplitMode::Leq,
            feature: rng.random_range(0..self.n_features as i64),
            threshold: rng.random_range(-1.0..1.0),
            true_child,
            false_child,
            missing_tracks_true: false,
        };
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_forest_of_the_asked_shape() {
        let a = random_classifier(5, 3, 4, 3, 9);
        let b = random_classifier(5, 3, 4, 3, 9);
        assert_eq!((a.n_features, a.n_outputs, a.n_trees), (5, 3, 4));
        assert_eq!(a.nodes, b.nodes);
        assert_ne!(a.nodes, random_classifier(5, 3, 4, 3, 10).nodes);
        let rows = vec![0.25f32; 5 * 2];
        assert_eq!(a.predict_cpu(&rows, 2).unwrap().labels.len(), 2);
    }
}
