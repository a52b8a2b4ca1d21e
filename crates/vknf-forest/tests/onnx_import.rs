//! ONNX import: semantics of hand-built ensembles and rejection of hostile models.

mod common;

use common::*;
use vknf_forest::onnx::proto::{AttributeProto, NodeProto};
use vknf_forest::{
    ClassLabels, ImportError, ImportOptions, MissingPolicy, ModelError, NanRouting, NodeProblem, Task,
    import_onnx_bytes,
};

fn import(bytes: &[u8]) -> Result<vknf_forest::Forest, ImportError> {
    import_onnx_bytes(bytes, &ImportOptions::default(), &mut |_| {})
}

fn predict(bytes: &[u8], rows: &[[f32; 4]]) -> Vec<Vec<f32>> {
    let forest = import(bytes).unwrap().compile().unwrap();
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    let p = forest.predict_cpu(&flat, rows.len()).unwrap();
    (0..rows.len()).map(|r| p.row(r).to_vec()).collect()
}

#[test]
fn small_classifier_imports_and_predicts_by_hand() {
    let bytes = small_classifier().bytes();
    let forest = import(&bytes).unwrap();
    assert_eq!(forest.n_features(), 4);
    assert_eq!(
        forest.task(),
        &Task::Classifier {
            labels: ClassLabels::Int64(vec![10, 20, 30])
        }
    );
    let s = forest.summary();
    assert_eq!((s.n_trees, s.n_nodes, s.n_leaves, s.max_depth), (2, 6, 4, 2));
    let got = predict(
        &bytes,
        &[[0.5, 9.0, 0.0, 0.0], [0.6, 2.0, 0.0, 0.0], [0.6, 2.1, 0.0, 0.0]],
    );
    assert_eq!(got[0], vec![0.5, 0.5, 0.0]); // x0 <= 0.5 exactly: left
    assert_eq!(got[1], vec![0.0, 0.75, 0.25]);
    assert_eq!(got[2], vec![0.0, 0.5, 0.5]);
}

#[test]
fn infinities_compare_normally() {
    let bytes = small_classifier().bytes();
    let got = predict(
        &bytes,
        &[
            [f32::NEG_INFINITY, 0.0, 0.0, 0.0],
            [f32::INFINITY, f32::INFINITY, 0.0, 0.0],
        ],
    );
    assert_eq!(got[0], vec![0.5, 0.5, 0.0]);
    assert_eq!(got[1], vec![0.0, 0.5, 0.5]);
}

#[test]
fn zero_tracks_reject_nan_unless_asked_to_follow_onnx() {
    let bytes = small_classifier().bytes();
    let forest = import(&bytes).unwrap();
    assert_eq!(forest.missing(), MissingPolicy::Reject);
    let gpu = forest.compile().unwrap();
    let err = gpu.predict_cpu(&[f32::NAN, 0.0, 0.0, 0.0], 1).unwrap_err();
    assert!(err.to_string().contains("row 0, feature 0 is NaN"), "{err}");

    let follow = ImportOptions {
        nan: NanRouting::FollowOnnx,
        ..ImportOptions::default()
    };
    let gpu = import_onnx_bytes(&bytes, &follow, &mut |_| {})
        .unwrap()
        .compile()
        .unwrap();
    assert_eq!(gpu.missing, MissingPolicy::Route);
    // Tracks-true 0: NaN takes the false branch (node 2), then x1 = 9 > 2: node 4.
    let p = gpu.predict_cpu(&[f32::NAN, 9.0, 0.0, 0.0], 1).unwrap();
    assert_eq!(p.row(0), &[0.0, 0.5, 0.5]);
}

#[test]
fn missing_value_tracks_route_nan() {
    let mut c = small_classifier();
    c.nodes[0].missing_true = 1; // NaN x0 goes to node 1
    let gpu = import(&c.bytes()).unwrap().compile().unwrap();
    assert_eq!(gpu.missing, MissingPolicy::Route);
    let p = gpu
        .predict_cpu(&[f32::NAN, f32::NAN, 0.0, 0.0, 1.0, f32::NAN, 0.0, 0.0], 2)
        .unwrap();
    assert_eq!(p.row(0), &[0.5, 0.5, 0.0]);
    assert_eq!(p.row(1), &[0.0, 0.5, 0.5]); // node 2 tracks false: NaN x1 -> node 4
}

#[test]
fn comparison_modes_match_their_definitions() {
    // One stump per mode on x0 with threshold 0.1f32; true leaf -> class 0, false -> class 1.
    for (mode, holds) in [
        ("BRANCH_LEQ", (|x: f32, t: f32| x <= t) as fn(f32, f32) -> bool),
        ("BRANCH_LT", |x, t| x < t),
        ("BRANCH_GT", |x, t| x > t),
        ("BRANCH_GTE", |x, t| x >= t),
    ] {
        let t = 0.1f32;
        let mut c = Classic::classifier(vec![0, 1]);
        c.nodes = vec![
            ClassicNode {
                mode,
                ..branch(0, 0, 0, t, 1, 2)
            },
            leaf(0, 1),
            leaf(0, 2),
        ];
        c.weights = vec![(0, 1, 0, 1.0), (0, 2, 1, 1.0)];
        let gpu = import(&c.bytes()).unwrap().compile().unwrap();
        let below = f32::from_bits(t.to_bits() - 1);
        let above = f32::from_bits(t.to_bits() + 1);
        for x in [below, t, above, f32::NEG_INFINITY, f32::INFINITY] {
            let p = gpu.predict_cpu(&[x, 0.0, 0.0, 0.0], 1).unwrap();
            let expected = if holds(x, t) { 0 } else { 1 };
            assert_eq!(p.labels[0], expected, "{mode} x={x}");
        }
    }
}

#[test]
fn binary_encoding_with_a_single_class_id_is_complemented() {
    // skl2onnx binary export: only the class-1 probability, written under class id 0.
    let mut c = Classic::classifier(vec![0, 1]);
    c.nodes = vec![branch(0, 0, 0, 0.5, 1, 2), leaf(0, 1), leaf(0, 2)];
    c.weights = vec![(0, 1, 0, 0.25), (0, 2, 0, 0.0)];
    let forest = import(&c.bytes()).unwrap();
    assert!(forest.binary_complement());
    let gpu = forest.compile().unwrap();
    let p = gpu.predict_cpu(&[0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0], 2).unwrap();
    assert_eq!(p.row(0), &[0.75, 0.25]);
    assert_eq!(p.row(1), &[1.0, 0.0]);
    assert_eq!(p.labels, vec![0, 0]);
}

#[test]
fn regressor_average_and_base_values() {
    let mut c = Classic::regressor();
    c.nodes = vec![branch(0, 0, 2, 0.0, 1, 2), leaf(0, 1), leaf(0, 2), leaf(1, 0)];
    c.weights = vec![(0, 1, 0, 2.0), (0, 2, 0, 4.0), (1, 0, 0, 6.0)];
    let c = c
        .with_attr(AttributeProto::string("aggregate_function", "AVERAGE"))
        .with_attr(AttributeProto::floats("base_values", [0.5]));
    let gpu = import(&c.bytes()).unwrap().compile().unwrap();
    let p = gpu.predict_cpu(&[0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0, 0.0], 2).unwrap();
    assert_eq!(p.scores, vec![4.5, 5.5]);
    assert!(p.labels.is_empty());
}

#[test]
fn double_thresholds_round_down_to_f32() {
    // 0.1 as a double: the nearest f32 is above it, so x = f32(0.1) must go right.
    let mut c = small_classifier();
    let values: Vec<f64> = c
        .nodes
        .iter()
        .map(|n| {
            if n.feature == 0 && n.mode != "LEAF" {
                0.1
            } else {
                f64::from(n.value)
            }
        })
        .collect();
    c.extra.push(AttributeProto::tensor(
        "nodes_values_as_tensor",
        double_tensor_raw(&values),
    ));
    let node = c.node();
    let node = NodeProto {
        attribute: node
            .attribute
            .into_iter()
            .filter(|a| a.name.as_deref() != Some("nodes_values"))
            .collect(),
        ..node
    };
    let bytes = model_bytes(vec![node], Some(4));
    let gpu = import(&bytes).unwrap().compile().unwrap();
    let nearest = 0.1f64 as f32;
    let below = f32::from_bits(nearest.to_bits() - 1);
    let p = gpu
        .predict_cpu(&[below, 9.0, 0.0, 0.0, nearest, 9.0, 0.0, 0.0], 2)
        .unwrap();
    assert_eq!(p.row(0), &[0.5, 0.5, 0.0]);
    assert_eq!(p.row(1), &[0.0, 0.5, 0.5]);
}

#[test]
fn tree_ensemble_opset5_imports_with_leaf_sharing_and_strict_modes() {
    let v = V5::sample();
    let forest = import(&v.bytes()).unwrap();
    assert_eq!(forest.task(), &Task::Regressor);
    let s = forest.summary();
    assert_eq!((s.n_trees, s.n_outputs, s.max_depth), (2, 2, 2));
    let gpu = forest.compile().unwrap();
    let rows = [0.5f32, -1.0, 0.5, 0.0, 2.0, 0.0];
    let p = gpu.predict_cpu(&rows, 3).unwrap();
    // x1 < 0 (BRANCH_LT): leaf0 (target0 +1); x1 = 0 is not < 0: leaf1 (target0 +2); x0 > 1: leaf2.
    assert_eq!(p.row(0), &[1.0, 4.0]);
    assert_eq!(p.row(1), &[2.0, 4.0]);
    assert_eq!(p.row(2), &[0.0, 7.0]);
}

#[test]
fn opset5_rejects_cycles_shared_and_orphan_nodes() {
    let mut v = V5::sample();
    v.true_ids[1] = 0; // node 1's true branch back to the root
    v.true_leafs[1] = 0;
    let err = import(&v.bytes()).unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");

    let mut v = V5::sample();
    v.roots = vec![0]; // node 2 is now orphaned
    let err = import(&v.bytes()).unwrap_err();
    assert!(err.to_string().contains("belongs to no tree"), "{err}");

    let mut v = V5::sample();
    v.false_ids[0] = 77;
    v.false_leafs[0] = 0;
    let err = import(&v.bytes()).unwrap_err();
    assert!(err.to_string().contains("77 out of range"), "{err}");

    let mut v = V5::sample();
    v.modes[0] = 6;
    let err = import(&v.bytes()).unwrap_err();
    assert!(err.to_string().contains("BRANCH_MEMBER"), "{err}");

    let mut v = V5::sample();
    v.aggregate = 3;
    assert!(matches!(import(&v.bytes()).unwrap_err(), ImportError::Unsupported(_)));
}

fn expect_node_problem(c: &Classic, want: fn(&NodeProblem) -> bool, text: &str) {
    let err = import(&c.bytes()).unwrap_err();
    match &err {
        ImportError::Model(ModelError::Node { problem, .. }) if want(problem) => {}
        other => panic!("expected {text}, got {other:?}"),
    }
    assert!(err.to_string().contains(text), "{err}");
}

#[test]
fn hostile_structures_are_rejected_with_tree_and_node() {
    let mut c = small_classifier();
    c.nodes[2].false_id = 9001;
    let err = import(&c.bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "tree 0, node 2: false (right) child 9001 out of range (tree has 5 nodes)"
    );

    let mut c = small_classifier();
    c.nodes[2].true_id = 0;
    expect_node_problem(&c, |p| matches!(p, NodeProblem::Cycle), "cycle");

    let mut c = small_classifier();
    c.nodes[2].true_id = 1; // node 1 now has two parents, node 3 none
    expect_node_problem(&c, |p| matches!(p, NodeProblem::SharedChild), "more than once");

    let mut c = small_classifier();
    c.nodes[0].false_id = 1;
    c.nodes[0].true_id = 3;
    c.nodes[2] = leaf(0, 2);
    expect_node_problem(&c, |p| matches!(p, NodeProblem::Unreachable), "unreachable");

    let mut c = small_classifier();
    c.nodes[0].feature = 4;
    expect_node_problem(
        &c,
        |p| matches!(p, NodeProblem::FeatureOutOfRange { .. }),
        "feature 4 out of range",
    );

    let mut c = small_classifier();
    c.nodes[0].value = f32::NAN;
    expect_node_problem(&c, |p| matches!(p, NodeProblem::NanThreshold), "threshold is NaN");

    let mut c = small_classifier();
    c.nodes[0].mode = "BRANCH_EQ";
    expect_node_problem(&c, |p| matches!(p, NodeProblem::UnsupportedMode(_)), "BRANCH_EQ");

    let mut c = small_classifier();
    c.weights[2].2 = 3;
    expect_node_problem(
        &c,
        |p| matches!(p, NodeProblem::OutputOutOfRange { .. }),
        "id 3 out of range",
    );

    let mut c = small_classifier();
    c.weights[2].3 = f32::INFINITY;
    expect_node_problem(&c, |p| matches!(p, NodeProblem::NonFiniteWeight(_)), "not finite");

    let mut c = small_classifier();
    c.weights[0].1 = 0; // weight on the root, a branch
    expect_node_problem(&c, |p| matches!(p, NodeProblem::WeightsOnBranch), "not a leaf");

    let mut c = small_classifier();
    c.nodes[4].id = 3;
    let err = import(&c.bytes()).unwrap_err();
    assert!(err.to_string().contains("node id 3 appears twice"), "{err}");

    let mut c = small_classifier();
    c.nodes[4].id = 7;
    let err = import(&c.bytes()).unwrap_err();
    assert!(err.to_string().contains("node id 7 out of range"), "{err}");

    let mut c = small_classifier();
    c.weights[5].0 = 5;
    let err = import(&c.bytes()).unwrap_err();
    assert!(
        err.to_string().contains("tree 5: has leaf weights but no nodes"),
        "{err}"
    );

    let c = small_classifier();
    let options = ImportOptions {
        max_depth: 1,
        ..ImportOptions::default()
    };
    let err = import_onnx_bytes(&c.bytes(), &options, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("deeper than the depth limit 1"), "{err}");
}

#[test]
fn inconsistent_attributes_are_rejected() {
    let c = small_classifier().with_attr(AttributeProto::ints("nodes_featureids", [0, 1]));
    let err = import(&c.bytes()).unwrap_err();
    assert!(matches!(err, ImportError::LengthMismatch { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("nodes_featureids has 2 values but nodes_treeids has 6")
    );

    let c = small_classifier().with_attr(AttributeProto::ints("class_ids", [0]));
    assert!(matches!(
        import(&c.bytes()).unwrap_err(),
        ImportError::LengthMismatch { .. }
    ));

    let c = small_classifier().with_attr(AttributeProto::strings("classlabels_strings", ["a", "b", "c"]));
    assert!(matches!(import(&c.bytes()).unwrap_err(), ImportError::Attribute { .. }));

    let c = small_classifier().with_attr(AttributeProto::ints("classlabels_int64s", [1, 2]));
    let err = import(&c.bytes()).unwrap_err();
    assert!(err.to_string().contains("id 2 out of range"), "{err}");

    let c = small_classifier().with_attr(AttributeProto::string("post_transform", "PROBIT"));
    assert!(matches!(import(&c.bytes()).unwrap_err(), ImportError::Unsupported(_)));

    let mut node = small_classifier().node();
    node.attribute.push(AttributeProto::ints("nodes_treeids", [0]));
    let bytes = vknf_forest::onnx::proto::ModelProto {
        ..model(vec![], Some(4))
    };
    let mut m = bytes;
    m.graph.as_mut().unwrap().node = vec![node];
    let err = import(&prost::Message::encode_to_vec(&m)).unwrap_err();
    assert!(err.to_string().contains("appears twice"), "{err}");

    // Huge declared sizes are refused before anything is sized by them.
    let mut r = Classic::regressor();
    r.nodes = vec![leaf(0, 0)];
    r.weights = vec![(0, 0, 0, 1.0)];
    let r = r.with_attr(AttributeProto::int("n_targets", 1 << 40));
    let err = import(&r.bytes()).unwrap_err();
    assert!(err.to_string().contains("declared output count 1099511627776"), "{err}");
    let err = import(&model_bytes(vec![small_classifier().node()], Some(1 << 40))).unwrap_err();
    assert!(err.to_string().contains("declared feature count"), "{err}");

    let c = small_classifier().with_attr(AttributeProto::int("n_features_is_not_an_attribute", 1));
    assert!(import(&c.bytes()).is_ok(), "unknown attributes are ignored");
}

#[test]
fn graph_shape_problems_are_rejected() {
    assert!(matches!(
        import(&model_bytes(vec![], Some(4))).unwrap_err(),
        ImportError::NoTreeEnsemble
    ));
    let node = small_classifier().node();
    let err = import(&model_bytes(vec![node.clone(), node.clone()], Some(4))).unwrap_err();
    assert!(matches!(err, ImportError::MultipleTreeEnsembles(2)));

    // A Scaler between the input and the ensemble would be silently skipped: rejected.
    let scaler = NodeProto {
        input: vec!["X".into()],
        output: vec!["scaled".into()],
        op_type: Some("Scaler".into()),
        domain: Some("ai.onnx.ml".into()),
        ..Default::default()
    };
    let mut ensemble = node.clone();
    ensemble.input = vec!["scaled".into()];
    let err = import(&model_bytes(vec![scaler, ensemble.clone()], Some(4))).unwrap_err();
    assert!(
        err.to_string().contains("operator Scaler before the tree ensemble"),
        "{err}"
    );

    // A Cast in between is fine.
    let cast = NodeProto {
        input: vec!["X".into()],
        output: vec!["scaled".into()],
        op_type: Some("Cast".into()),
        domain: Some(String::new()),
        ..Default::default()
    };
    assert!(import(&model_bytes(vec![cast, ensemble], Some(4))).is_ok());

    // The declared feature count bounds feature ids; without one, max id + 1 is used.
    let forest = import(&model_bytes(vec![node.clone()], None)).unwrap();
    assert_eq!(forest.n_features(), 2);
    let err = import(&model_bytes(vec![node], Some(1))).unwrap_err();
    assert!(err.to_string().contains("feature 1 out of range"), "{err}");
}

#[test]
fn garbage_and_truncated_files_are_rejected() {
    let bytes = small_classifier().bytes();
    for cut in [1, 10, bytes.len() / 3, bytes.len() / 2, bytes.len() - 1] {
        assert!(import(&bytes[..cut]).is_err(), "prefix of {cut} bytes imported");
    }
    assert!(import(b"").is_err());
    assert!(import(b"this is not protobuf at all, just text").is_err());
    // Graph field with a declared length of ~2^63.
    let huge = [0x3a, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f];
    let err = import(&huge).unwrap_err();
    assert!(err.to_string().contains("past the end"), "{err}");
}

#[test]
fn progress_reports_each_stage() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.onnx");
    std::fs::write(&path, small_classifier().bytes()).unwrap();
    let mut stages = Vec::new();
    let forest = vknf_forest::import_onnx_file(&path, &ImportOptions::default(), &mut |p| {
        assert!(p.done <= p.total, "{p:?}");
        if stages.last() != Some(&p.stage) {
            stages.push(p.stage);
        }
    })
    .unwrap();
    assert_eq!(forest.trees().len(), 2);
    use vknf_forest::Stage::*;
    assert_eq!(stages, vec![Reading, Decoding, Validating]);
    let missing = vknf_forest::import_onnx_file(&dir.path().join("nope.onnx"), &ImportOptions::default(), &mut |_| {});
    assert!(matches!(missing.unwrap_err(), ImportError::Io { .. }));
}
