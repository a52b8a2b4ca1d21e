//! The paper's HTTPS-classifier tree (shared/paper-rf-tree) and its W1 workload.

use std::path::PathBuf;

use vknf_forest::{
    GpuForest, ImportOptions, MissingPolicy, NodeFormat, SklearnTree, paper_workload, rows_around_thresholds,
};
use vknf_testkit::paper_tree_dir;

fn dir() -> PathBuf {
    let dir = paper_tree_dir();
    assert!(
        dir.join("left.csv").is_file(),
        "the paper tree is missing: expected {} (the shared/paper-rf-tree folder beside the \
         workspace, or set VKNF_PAPER_TREE)",
        dir.display()
    );
    dir
}

#[test]
fn paper_tree_has_the_documented_shape() {
    let tree = SklearnTree::load(&dir()).unwrap();
    assert_eq!(tree.n_nodes(), 3285);
    assert_eq!(tree.n_classes, 198);
    let forest = tree.forest(1, &ImportOptions::default()).unwrap();
    let s = forest.summary();
    assert_eq!(s.n_nodes, 3285);
    assert_eq!(s.n_leaves, 1643);
    assert_eq!(s.n_pure_leaves, 1643, "every leaf is pure");
    assert_eq!(s.max_depth, 40);
    assert_eq!(s.n_features, 300);
    assert_eq!(forest.missing(), MissingPolicy::Reject);
}

#[test]
fn w1_forest_builds_compiles_and_round_trips() {
    let w = paper_workload(&dir(), 150, 500, 7).unwrap();
    let s = w.forest.summary();
    assert_eq!((s.n_trees, s.n_nodes), (150, 150 * 3285));
    let gpu = w.forest.compile().unwrap();
    assert_eq!(gpu.node_format, NodeFormat::Compact);
    assert!(gpu.leaf_entries.is_empty(), "pure leaves are all inline");
    assert_eq!(gpu.n_nodes(), 150 * 3285);
    // Averaging 150 trees whose pure leaves weigh 1.0.
    assert_eq!(gpu.leaf_weight_bound(), 150.0);

    let p = gpu.predict_cpu(&w.rows.data, w.rows.n_rows).unwrap();
    // Every copy reaches the same pure leaf: probability 1 for one class per row.
    for r in 0..p.n_rows {
        let row = p.row(r);
        assert_eq!(row[p.labels[r] as usize], 1.0);
        assert_eq!(row.iter().filter(|&&v| v != 0.0).count(), 1);
    }
    // Rows follow leaves picked by training samples: the sample-weighted mean leaf depth
    // of the tree is 18.4 (independent per-feature draws would stop near depth 6).
    assert!((16.0..21.0).contains(&w.mean_depth), "mean depth {}", w.mean_depth);
    let gpu_depth = gpu.mean_depth(&w.rows.data, w.rows.n_rows).unwrap();
    assert!((gpu_depth - w.mean_depth).abs() < 1e-9);
    eprintln!("paper W1: mean traversal depth {:.2}", w.mean_depth);

    let reloaded = GpuForest::from_vkf_bytes(&gpu.to_vkf_bytes()).unwrap();
    assert_eq!(reloaded, gpu);
}

#[test]
fn generated_inputs_are_deterministic_and_seeded() {
    let tree = SklearnTree::load(&dir()).unwrap();
    let a = rows_around_thresholds(&tree, 300, 50, 1).unwrap();
    let b = rows_around_thresholds(&tree, 300, 50, 1).unwrap();
    let c = rows_around_thresholds(&tree, 300, 50, 2).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_eq!(a.data.len(), 50 * 300);
    assert!(a.data.iter().all(|v| v.is_finite()));
}

#[test]
fn malformed_array_directories_are_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    let src = dir();
    for f in ["left.csv", "right.csv", "feature.csv", "threshold.csv", "values.csv"] {
        std::fs::copy(src.join(f), tmp.path().join(f)).unwrap();
    }
    assert!(SklearnTree::load(tmp.path()).is_ok());
    std::fs::write(tmp.path().join("right.csv"), "1,2,3").unwrap();
    let err = SklearnTree::load(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("3 values, left.csv has 3285"), "{err}");
    std::fs::write(tmp.path().join("left.csv"), "1,x").unwrap();
    let err = SklearnTree::load(tmp.path()).unwrap_err();
    assert!(err.to_string().contains("not a number"), "{err}");
    assert!(SklearnTree::load(&tmp.path().join("nope")).is_err());
}
