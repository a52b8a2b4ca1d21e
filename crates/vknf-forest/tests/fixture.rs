//! Parity with scikit-learn on the committed fixture (no Python needed).

use std::path::Path;

use vknf_forest::{GpuForest, MissingPolicy};
use vknf_testkit::parity::{self, ParityCase};

fn fixture() -> ParityCase {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rf12_5classes");
    ParityCase::load(&dir).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn committed_fixture_matches_scikit_learn() {
    let case = fixture();
    assert_eq!(case.meta.n_trees, 12);
    let forest = case.import().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(forest.n_trees, 12);
    assert_eq!(forest.missing, MissingPolicy::Route);
    let report = case
        .check(&forest, &mut parity::cpu_predictor)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.rows_compared, case.x.n_rows);
    assert!(case.meta.nan_rows.len() >= 10, "fixture should hold NaN rows");
    assert!(report.max_abs_diff < 1e-6, "{report:?}");
}

#[test]
fn fixture_survives_vkf_round_trip_and_detects_a_wrong_predictor() {
    let case = fixture();
    let forest = case.import().unwrap();
    let reloaded = GpuForest::from_vkf_bytes(&forest.to_vkf_bytes()).unwrap();
    assert_eq!(reloaded, forest);
    case.check(&reloaded, &mut parity::cpu_predictor).unwrap();

    // The comparison must catch a predictor that ignores NaN routing.
    let mut broken = forest.clone();
    let w = broken.node_format.words();
    for node in broken.nodes.chunks_mut(w) {
        if node[0] & vknf_forest::LEAF_BIT == 0 {
            node[0] ^= vknf_forest::FLAG_BIT;
        }
    }
    assert!(case.check(&broken, &mut parity::cpu_predictor).is_err());
}
