//! CPU predictor behaviour on the compiled layout: inputs, errors, layout helpers.

use vknf_forest::{
    Aggregate, ClassLabels, GpuForest, MissingPolicy, PostTransform, PredictError, RawEntry, RawForest, RawNode,
    RawTree, SplitMode, Task, write_predictions_csv,
};

fn stump_forest(labels: ClassLabels, entries: Vec<RawEntry>) -> GpuForest {
    RawForest {
        task: Task::Classifier { labels },
        n_features: 2,
        n_outputs: 3,
        trees: vec![RawTree {
            id: 0,
            nodes: vec![
                RawNode::Branch {
                    mode: SplitMode::Leq,
                    feature: 1,
                    threshold: 0.0,
                    true_child: 1,
                    false_child: 2,
                    missing_tracks_true: false,
                },
                RawNode::Leaf,
                RawNode::Leaf,
            ],
            entries,
        }],
        aggregate: Aggregate::Average,
        post_transform: PostTransform::None,
        base_values: vec![],
        binary_complement: false,
        missing: MissingPolicy::Reject,
        max_depth_limit: 4096,
    }
    .validate()
    .unwrap()
    .compile()
    .unwrap()
}

fn entry(node: i64, output: i64, weight: f64) -> RawEntry {
    RawEntry { node, output, weight }
}

#[test]
fn empty_leaves_multi_entry_leaves_and_label_ties() {
    let f = stump_forest(
        ClassLabels::Strings(vec!["http".into(), "https".into(), "ssh".into()]),
        vec![entry(1, 1, 0.5), entry(1, 2, 0.5)], // leaf 2 has no entries
    );
    assert_eq!(f.leaf_entries.len(), 4, "one two-entry leaf stored as pairs");
    let p = f.predict_cpu(&[0.0, -1.0, 0.0, 1.0], 2).unwrap();
    assert_eq!(p.row(0), &[0.0, 0.5, 0.5]);
    assert_eq!(p.row(1), &[0.0, 0.0, 0.0]);
    assert_eq!(p.labels, vec![1, 0], "ties go to the lowest index");
    assert_eq!(f.label_name(1), "https");
    assert_eq!(f.label_name(9), "#9");
    assert_eq!(f.leaf_weight_bound(), 0.5);

    let mut csv = Vec::new();
    write_predictions_csv(&mut csv, &f, &p).unwrap();
    assert_eq!(
        String::from_utf8(csv).unwrap(),
        "label,http,https,ssh\nhttps,0,0.5,0.5\nhttp,0,0,0\n"
    );
}

#[test]
fn input_errors_are_typed() {
    let f = stump_forest(ClassLabels::Int64(vec![1, 2, 3]), vec![entry(1, 0, 1.0)]);
    assert!(matches!(
        f.predict_cpu(&[0.0; 3], 2),
        Err(PredictError::Shape { expected: 4, .. })
    ));
    assert!(matches!(
        f.predict_cpu(&[0.0; 3], usize::MAX),
        Err(PredictError::Shape { .. })
    ));
    assert_eq!(
        f.predict_cpu(&[0.0, 0.0, 1.0, f32::NAN], 2).unwrap_err(),
        PredictError::NanInput { row: 1, feature: 1 }
    );
    assert_eq!(f.predict_cpu(&[], 0).unwrap().n_rows, 0);
    assert_eq!(f.label_name(0), "1");
}

#[test]
fn hand_corrupted_layouts_error_instead_of_panicking() {
    let good = stump_forest(ClassLabels::Int64(vec![1, 2, 3]), vec![entry(1, 0, 1.0)]);
    let rows = [0.0f32, 0.0];

    let mut f = good.clone();
    f.nodes[0] |= 0x3_ffff; // left child far outside the node array
    assert!(matches!(f.predict_cpu(&rows, 1), Err(PredictError::CorruptLayout(_))));

    let mut f = good.clone();
    f.max_depth = 0; // root is internal but no steps allowed
    assert!(matches!(f.predict_cpu(&rows, 1), Err(PredictError::CorruptLayout(_))));

    let mut f = good.clone();
    f.nodes[2] = vknf_forest::LEAF_BIT | 5; // five pair entries that do not exist
    assert!(matches!(f.predict_cpu(&rows, 1), Err(PredictError::CorruptLayout(_))));

    let mut f = good;
    f.base_values = vec![1.0];
    assert!(matches!(f.predict_cpu(&rows, 1), Err(PredictError::CorruptLayout(_))));
}

#[test]
fn post_transforms_and_binary_complement() {
    let make = |post, binary, n_outputs: u64| {
        RawForest {
            task: Task::Classifier {
                labels: ClassLabels::Int64((0..n_outputs as i64).collect()),
            },
            n_features: 1,
            n_outputs,
            trees: vec![RawTree {
                id: 0,
                nodes: vec![RawNode::Leaf],
                entries: vec![entry(0, 1, 2.0)],
            }],
            aggregate: Aggregate::Sum,
            post_transform: post,
            base_values: vec![0.0; n_outputs as usize],
            binary_complement: binary,
            missing: MissingPolicy::Route,
            max_depth_limit: 4096,
        }
        .validate()
        .unwrap()
        .compile()
        .unwrap()
    };
    let p = make(PostTransform::Logistic, false, 2)
        .predict_cpu(&[f32::NAN], 1)
        .unwrap();
    assert!((p.scores[1] - 1.0 / (1.0 + (-2.0f32).exp())).abs() < 1e-7);
    assert_eq!(p.scores[0], 0.5);
    let p = make(PostTransform::Softmax, false, 3).predict_cpu(&[0.0], 1).unwrap();
    let e2 = 2.0f64.exp();
    assert!((f64::from(p.scores[1]) - e2 / (e2 + 2.0)).abs() < 1e-6);
    let p = make(PostTransform::None, true, 2).predict_cpu(&[0.0], 1).unwrap();
    assert_eq!(p.scores, vec![-1.0, 2.0]);
}

#[test]
fn mean_depth_counts_internal_nodes() {
    let f = stump_forest(ClassLabels::Int64(vec![1, 2, 3]), vec![]);
    assert_eq!(f.mean_depth(&[0.0, 0.0, 0.0, 1.0], 2).unwrap(), 1.0);
}
