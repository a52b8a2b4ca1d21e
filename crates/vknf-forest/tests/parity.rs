//! Parity with scikit-learn over freshly generated random forests (needs the Python venv).

use vknf_forest::GpuForest;
use vknf_testkit::parity::{self, CaseReport};

#[test]
fn cpu_predictor_matches_scikit_learn_on_generated_cases() {
    let dir = tempfile::tempdir().unwrap();
    let cases = parity::generate_cases(dir.path(), 32, 20210721).unwrap_or_else(|e| panic!("{e}"));
    assert!(cases.len() >= 32, "generator wrote {} cases", cases.len());
    let mut totals = CaseReport::default();
    let mut routed = 0;
    let mut rejected = 0;
    for case in &cases {
        let forest = case.import().unwrap_or_else(|e| panic!("{e}"));
        let reloaded = GpuForest::from_vkf_bytes(&forest.to_vkf_bytes())
            .unwrap_or_else(|e| panic!("{}: .vkf round trip: {e}", case.meta.name));
        assert_eq!(
            reloaded, forest,
            "{}: .vkf round trip changed the forest",
            case.meta.name
        );
        let report = case
            .check(&reloaded, &mut parity::cpu_predictor)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(report.rows_compared > 0, "{}: nothing compared", case.meta.name);
        totals.rows_compared += report.rows_compared;
        totals.tied_label_differences += report.tied_label_differences;
        totals.max_abs_diff = totals.max_abs_diff.max(report.max_abs_diff);
        routed += usize::from(case.meta.nan_routing);
        rejected += usize::from(report.nan_rows_rejected > 0);
    }
    // The fixed part of the plan must keep exercising both NaN paths.
    assert!(routed >= 4, "only {routed} cases route NaN");
    assert!(rejected >= 1, "no case exercised NaN rejection");
    eprintln!(
        "{} cases, {} rows, max |diff| {:e}, {} tie-broken labels",
        cases.len(),
        totals.rows_compared,
        totals.max_abs_diff,
        totals.tied_label_differences
    );
}
