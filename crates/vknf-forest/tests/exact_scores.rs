//! Fixed-point scores (`vknf_forest::exact`): the scale each forest gets, the error bound against the
//! exact f64 computation, and labels taken before the post transform.

mod common;

use common::stump;
use proptest::prelude::*;
use vknf_forest::{Aggregate, ClassLabels, GpuForest, MissingPolicy, PostTransform, RawForest, RawTree, Task};

fn classifier(trees: Vec<RawTree>, n_outputs: u64, aggregate: Aggregate, base_values: Vec<f64>) -> GpuForest {
    RawForest {
        task: Task::Classifier {
            labels: ClassLabels::Int64((0..n_outputs as i64).collect()),
        },
        n_features: 1,
        n_outputs,
        trees,
        aggregate,
        post_transform: PostTransform::None,
        base_values,
        binary_complement: false,
        missing: MissingPolicy::Reject,
        max_depth_limit: 16,
    }
    .validate()
    .unwrap()
    .compile()
    .unwrap()
}

#[test]
fn the_scale_keeps_every_total_within_i32() {
    // Probabilities of 100 trees summed (skl2onnx's encoding: each weight already divided by 100).
    let trees: Vec<RawTree> = (0..100).map(|t| stump(t, &[(0, 0.01)], &[(1, 0.01)])).collect();
    let forest = classifier(trees, 2, Aggregate::Sum, vec![]);
    assert_eq!(forest.fixed_point().unwrap().scale_log2, 30);

    // The same as an average of whole probabilities: totals reach 100 * 2^k.
    let trees: Vec<RawTree> = (0..100).map(|t| stump(t, &[(0, 1.0)], &[(1, 1.0)])).collect();
    let fixed = classifier(trees, 2, Aggregate::Average, vec![]).fixed_point().unwrap();
    assert_eq!((fixed.scale_log2, fixed.divisor), (24, 100));

    // A leaf naming one output twice counts both weights.
    let trees = vec![stump(0, &[(0, 1.0), (0, 1.0), (1, 1.0)], &[(1, 1.0)])];
    let forest = classifier(trees, 2, Aggregate::Sum, vec![]);
    assert_eq!(forest.fixed_point().unwrap().scale_log2, 29);
    assert_eq!(forest.predict_cpu(&[-1.0], 1).unwrap().scores, vec![2.0, 1.0]);

    // Weights no 2^16 scale covers accumulate in float, as regressors do.
    let trees: Vec<RawTree> = (0..10).map(|t| stump(t, &[(0, 1e5)], &[(1, -1e5)])).collect();
    assert_eq!(classifier(trees, 2, Aggregate::Sum, vec![]).fixed_point(), None);
    let mut regressor = classifier(vec![stump(0, &[(0, 0.5)], &[(0, 0.25)])], 1, Aggregate::Sum, vec![]);
    regressor.task = Task::Regressor;
    assert_eq!(regressor.fixed_point(), None);
}

#[test]
fn base_values_and_ties_round_to_even() {
    // 3 trees averaging 1/3 + 2/3 + 1/3 = 4/9, plus a base value of 0.1.
    let trees = vec![
        stump(0, &[(0, 1.0 / 3.0)], &[]),
        stump(1, &[(0, 2.0 / 3.0)], &[]),
        stump(2, &[(0, 1.0 / 3.0)], &[]),
    ];
    let forest = classifier(trees, 1, Aggregate::Average, vec![0.1]);
    let score = forest.predict_cpu(&[-1.0], 1).unwrap().scores[0];
    let exact = (1.0f64 / 3.0 + 2.0 / 3.0 + 1.0 / 3.0) / 3.0 + 0.1;
    assert!((f64::from(score) - exact).abs() < 1e-7, "{score} vs {exact}");
    // No tree applies on the right: the score is the base value alone, as the nearest f32 to its
    // fixed-point value, which is 0.1f32 itself (0.1 * 3 * 2^k rounds back to it).
    let fixed = forest.fixed_point().unwrap();
    assert_eq!(
        forest.predict_cpu(&[1.0], 1).unwrap().scores[0],
        fixed.to_f32(fixed.base[0])
    );
    assert!((forest.predict_cpu(&[1.0], 1).unwrap().scores[0] - 0.1).abs() < 1e-8);
}

#[test]
fn labels_are_the_argmax_before_the_post_transform() {
    // Two classes whose values differ by one f32 ulp (2^-18) at 40: their logistic scores both round
    // to 1.0, but the label still names the larger value.
    let trees = vec![stump(0, &[(0, 40.0), (1, 40.0 + 1.0 / 262_144.0)], &[])];
    let mut forest = classifier(trees, 2, Aggregate::Sum, vec![]);
    forest.post_transform = PostTransform::Logistic;
    let prediction = forest.predict_cpu(&[-1.0], 1).unwrap();
    assert_eq!(prediction.scores, vec![1.0, 1.0]);
    assert_eq!(prediction.labels, vec![1]);
}

/// A random forest of stumps and its regressor twin (same trees, accumulated in f64).
fn forest_and_twin(weights: &[(u8, f64, f64)], n_outputs: u64, average: bool, base: &[f64]) -> (GpuForest, GpuForest) {
    let trees = weights
        .iter()
        .enumerate()
        .map(|(t, &(output, left, right))| {
            let output = i64::from(output) % n_outputs as i64;
            stump(t as i64, &[(output, left)], &[((output + 1) % n_outputs as i64, right)])
        })
        .collect();
    let aggregate = if average { Aggregate::Average } else { Aggregate::Sum };
    let base_values = base.iter().copied().take(n_outputs as usize).collect::<Vec<_>>();
    let base_values = if base_values.len() == n_outputs as usize {
        base_values
    } else {
        vec![]
    };
    let forest = classifier(trees, n_outputs, aggregate, base_values);
    let mut twin = forest.clone();
    twin.task = Task::Regressor;
    (forest, twin)
}

fn weight() -> impl Strategy<Value = f64> {
    (-1.0f64..1.0, prop::sample::select(vec![1e-4, 1e-2, 1.0, 30.0])).prop_map(|(w, scale)| {
        let w = w * scale;
        if (w as f32) == 0.0 { scale } else { w }
    })
}

proptest! {
    /// Every score is within the documented bound of the exact f64 aggregate: each weight is off by
    /// at most half a unit of 2^-k (so no total wrapped), and the result by half an f32 ulp.
    #[test]
    fn fixed_point_scores_are_within_the_bound(
        weights in prop::collection::vec((any::<u8>(), weight(), weight()), 1..200),
        n_outputs in 1u64..5,
        average in any::<bool>(),
        base in prop::collection::vec(-3.0f64..3.0, 0..5),
    ) {
        let (forest, twin) = forest_and_twin(&weights, n_outputs, average, &base);
        let Some(fixed) = forest.fixed_point() else {
            return Ok(());
        };
        let unit = 2f64.powi(-fixed.scale_log2) / f64::from(fixed.divisor);
        let rows = [-1.0f32, 1.0, 0.0];
        let got = forest.predict_cpu(&rows, 3).unwrap();
        let want = twin.predict_cpu(&rows, 3).unwrap();
        for (g, w) in got.scores.iter().zip(&want.scores) {
            let (g, w) = (f64::from(*g), f64::from(*w));
            // Rounding of the weights and base value, plus half an f32 ulp on each side.
            let bound = unit * (weights.len() as f64 + 1.0) / 2.0 + w.abs() * 2f64.powi(-23) + 1e-30;
            prop_assert!((g - w).abs() <= bound, "{g} vs {w} (bound {bound}, k {})", fixed.scale_log2);
        }
    }
}
