//! How a whole batch runs ([`BatchPlan`]: its dispatches and the order its rows reach the GPU), and a
//! lane's measured choice among the plans that apply to a batch size ([`ForestLane::tune_plans`]).
//!
//! The plan rules of [`ForestKernel`] come from the forest's shape and the batch's bytes. On the H200
//! some forests ran fastest in plans no such rule picks: the deep forest in two dispatches whose direct
//! shares are written after the previous copy, where W1a, of the same shape, lost in them; which wins
//! depends on the kernel's length against the copy's (docs/forest-kernel.md, item 31). Only timing the
//! plans on the lane's own device, with the caller's own rows, tells them apart.

use std::time::Instant;

use serde::Serialize;

use super::{ForestError, ForestKernel, ForestLane};

/// How a whole batch handed to [`ForestLane::predict`] or [`ForestLane::run_planned`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BatchPlan {
    /// Dispatches the batch is split into, each submitted as soon as its rows are written (fewer
    /// where the batch has fewer workgroups).
    pub dispatches: usize,
    /// One dispatch of a batch split by a direct share, on a lane with a transfer stream: the rows the
    /// host writes into device memory run as a dispatch of their own, ahead of the copied ones
    /// ([`ForestOptions::direct_rows_first`](super::ForestOptions::direct_rows_first)).
    pub direct_rows_first: bool,
    /// Several dispatches of a batch split by a direct share, on a lane with a transfer stream: each
    /// dispatch's direct share is written once the previous dispatch's copy has ended
    /// ([`ForestOptions::direct_after_copy`](super::ForestOptions::direct_after_copy)).
    pub direct_after_copy: bool,
}

impl BatchPlan {
    /// This plan as a batch of `groups` workgroups runs it: at most a dispatch a workgroup, and the
    /// orderings only where they apply (`splits`: the batch is split by a direct share between the
    /// host's writes and a copy on a transfer stream), so that plans that run alike compare equal.
    pub fn as_run(self, groups: usize, splits: bool) -> BatchPlan {
        let dispatches = self.dispatches.clamp(1, groups.max(1));
        BatchPlan {
            dispatches,
            direct_rows_first: self.direct_rows_first && splits && dispatches == 1,
            direct_after_copy: self.direct_after_copy && splits && dispatches > 1,
        }
    }
}

impl std::fmt::Display for BatchPlan {
    /// `1`, `1s` (directly written rows first), `4`, `4o` (direct shares after the previous copy):
    /// bench-forest's `--chunk-counts` spelling.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ordering = match (self.direct_rows_first, self.direct_after_copy) {
            (true, _) => "s",
            (false, true) => "o",
            (false, false) => "",
        };
        write!(f, "{}{ordering}", self.dispatches)
    }
}

/// The most dispatches a tuned plan may take.
pub const MAX_TUNED_DISPATCHES: usize = 6;

/// The plans [`ForestLane::tune_plans`] times for a batch of `groups` workgroups, the rule's first:
/// every dispatch count up to [`MAX_TUNED_DISPATCHES`], each in the orderings that apply.
pub fn candidate_plans(rule: BatchPlan, groups: usize, splits: bool) -> Vec<BatchPlan> {
    let mut plans = vec![rule.as_run(groups, splits)];
    for dispatches in 1..=MAX_TUNED_DISPATCHES.min(groups.max(1)) {
        for ordered in [false, true] {
            let plan = BatchPlan {
                dispatches,
                direct_rows_first: ordered,
                direct_after_copy: ordered,
            }
            .as_run(groups, splits);
            if !plans.contains(&plan) {
                plans.push(plan);
            }
        }
    }
    plans
}

/// One plan's timings in a tuning.
#[derive(Debug, Clone, Serialize)]
pub struct PlanTrial {
    /// The plan.
    pub plan: BatchPlan,
    /// End to end of each timed batch (from the rows handed over to the results read), microseconds,
    /// one a round.
    pub runs_us: Vec<f64>,
    /// Their median.
    pub median_us: f64,
    /// Whether the plan was timed again among the closest ([`FINALIST_MARGIN`]); only finalists are
    /// chosen.
    pub finalist: bool,
}

/// What [`ForestLane::tune_plans`] measured and chose.
#[derive(Debug, Clone, Serialize)]
pub struct PlanTuning {
    /// The batch size tuned for: the lane runs batches of exactly this many rows in the chosen plan.
    pub rows: usize,
    /// Every plan timed, the rule's first.
    pub trials: Vec<PlanTrial>,
    /// The finalist of the lowest median (the earliest listed on a tie).
    pub chosen: BatchPlan,
}

/// Plans whose first median is at most this fraction above the best one's are timed again.
pub const FINALIST_MARGIN: f64 = 0.05;

/// The finalists' further rounds, as a multiple of the first rounds.
pub const FINAL_ROUNDS_FACTOR: usize = 2;

/// The trials whose median is at most `margin` (a fraction) above the lowest, in their order.
pub fn finalists(trials: &[PlanTrial], margin: f64) -> Vec<usize> {
    let best = trials.iter().map(|t| t.median_us).fold(f64::INFINITY, f64::min);
    (0..trials.len())
        .filter(|&i| trials[i].median_us <= best * (1.0 + margin))
        .collect()
}

/// The index of the finalist (or, where none is marked, the trial) with the lowest median, the
/// earliest on a tie (the rule's plan is listed first, so it stays unless another plan measured
/// faster).
pub fn fastest(trials: &[PlanTrial]) -> Option<usize> {
    let any_finalist = trials.iter().any(|t| t.finalist);
    let mut best: Option<usize> = None;
    for (index, trial) in trials.iter().enumerate() {
        if any_finalist && !trial.finalist {
            continue;
        }
        if best.is_none_or(|b| trial.median_us < trials[b].median_us) {
            best = Some(index);
        }
    }
    best
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
pub(super) fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => 0.0,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// What a tuning times: the caller's rows, the same rotated by half the batch (run untimed before
/// each timed run), and whether scores are read.
struct TuningBatch<'a> {
    rows: &'a [f32],
    rotated: &'a [f32],
    want_scores: bool,
}

/// A batch's labels and the bits of its scores (none where they were not read).
type ResultBits = (Vec<u32>, Vec<u32>);

/// Keeps the first plan's results in `first`, and fails unless `result` (of `plan`) equals them bit
/// for bit.
fn same_results(
    first: &mut Option<ResultBits>,
    result: super::LaneResult,
    plan: BatchPlan,
    first_plan: BatchPlan,
) -> Result<(), ForestError> {
    let n_rows = result.n_rows;
    let bits = (
        result.labels,
        result.scores.unwrap_or_default().iter().map(|s| s.to_bits()).collect(),
    );
    match first {
        None => *first = Some(bits),
        Some(first) if *first != bits => {
            return Err(ForestError::Unsupported(format!(
                "plan {plan} gave other results than plan {first_plan} on the same {n_rows} rows"
            )));
        }
        Some(_) => {}
    }
    Ok(())
}

/// The most rounds a tuning may take.
pub const MAX_TUNING_ROUNDS: usize = 64;

impl ForestKernel {
    /// The plan [`ForestLane::predict`] follows for a batch of `n_rows` on a lane that has not been
    /// tuned for it: [`pipeline_chunks`](Self::pipeline_chunks) dispatches, ordered as the options ask
    /// (orderings a lane's batch cannot take are left out when it runs, [`BatchPlan::as_run`]).
    pub fn batch_plan(&self, n_rows: usize) -> BatchPlan {
        let config = self.config();
        BatchPlan {
            dispatches: self.pipeline_chunks(n_rows),
            direct_rows_first: config.direct_rows_first,
            direct_after_copy: config.direct_after_copy,
        }
    }
}

impl ForestLane {
    /// The plan [`predict`](Self::predict) follows for a batch of `n_rows`: the one
    /// [`tune_plans`](Self::tune_plans) chose for that size, else the kernel's rule
    /// ([`ForestKernel::batch_plan`]), as such a batch runs it ([`BatchPlan::as_run`]).
    pub fn plan_for(&self, n_rows: usize) -> BatchPlan {
        let plan = self
            .tuned_plans
            .iter()
            .find(|(rows, _)| *rows == n_rows)
            .map_or_else(|| self.kernel.batch_plan(n_rows), |(_, plan)| *plan);
        let (groups, splits) = self.plan_shape(n_rows);
        plan.as_run(groups, splits)
    }

    /// What decides how a batch of `n_rows` can run ([`BatchPlan::as_run`]): its workgroups, and
    /// whether it is split between the host's writes into device memory and a copy on a transfer
    /// stream (the orderings of [`BatchPlan`] apply to such batches only).
    pub(super) fn plan_shape(&self, n_rows: usize) -> (usize, bool) {
        let groups = n_rows.div_ceil(self.kernel.config().rows_per_group as usize);
        let splits =
            self.batch_direct_share(n_rows).is_some() && self.device_input.is_some() && self.transfer.is_some();
        (groups, splits)
    }

    /// Times every plan that applies to a batch of `rows` ([`candidate_plans`]) on this lane, then the
    /// closest again, and from then on [`predict`](Self::predict) runs batches of that many rows in the
    /// fastest. First every plan `rounds` times (at most [`MAX_TUNING_ROUNDS`]); then the plans whose
    /// median is within [`FINALIST_MARGIN`] of the best, [`FINAL_ROUNDS_FACTOR`] times as many rounds
    /// more, so that the choice among plans a few microseconds apart rests on more runs than a
    /// plan far behind gets. The plans alternate within each round, and each timed run follows an
    /// untimed run in the same plan of the rows rotated by half the batch (a change of plan records
    /// the lane's command lists again). The finalist of the lowest median over all its runs is chosen.
    /// Batches are timed with scores read where `want_scores` (or the forest is a regressor), as the
    /// caller will run them.
    ///
    /// Every plan is checked before it is timed, and the tuning fails (a fault in a plan, never a
    /// matter of timing) unless it gives the first plan's labels and score bits: each runs the batch
    /// once with scores after other values (every row's features negated and less one) were written
    /// whole through the unsplit path, so a plan that leaves rows uncopied reads those. The timed runs'
    /// results (scores where read) must agree too, after the rotated rows, which a plan that read
    /// rows before they arrived would find. Costs one batch written and two run a plan, then two
    /// batches a plan a round.
    pub fn tune_plans(&mut self, rows: &[f32], rounds: usize, want_scores: bool) -> Result<PlanTuning, ForestError> {
        let nf = self.n_features().max(1);
        let n_rows = rows.len() / nf;
        if rows.is_empty() || rows.len() % nf != 0 || n_rows > self.max_rows {
            return Err(ForestError::Input(format!(
                "tuning needs a batch of 1 to {} rows of {nf} features; got {} values",
                self.max_rows,
                rows.len()
            )));
        }
        let rounds = rounds.clamp(1, MAX_TUNING_ROUNDS);
        let (groups, splits) = self.plan_shape(n_rows);
        let plans = candidate_plans(self.kernel.batch_plan(n_rows), groups, splits);
        let mut trials: Vec<PlanTrial> = plans
            .iter()
            .map(|plan| PlanTrial {
                plan: *plan,
                runs_us: Vec::new(),
                median_us: 0.0,
                finalist: false,
            })
            .collect();
        self.check_plans(rows, &plans)?;
        // The untimed runs take the rows rotated by half the batch, so that a timed run that read rows
        // before they arrived would find other rows' values (with rows grouped by label, rows half a
        // batch away are the likeliest to differ).
        let mut rotated = rows.to_vec();
        rotated.rotate_left(n_rows / 2 * nf);
        let batch = TuningBatch {
            rows,
            rotated: &rotated,
            // Regressors have no labels: their scores are what must agree.
            want_scores: want_scores || !self.kernel.is_classifier(),
        };
        let mut expected = None;
        let everyone: Vec<usize> = (0..trials.len()).collect();
        self.time_plans(&batch, &mut trials, &everyone, rounds, &mut expected)?;
        let finalists = finalists(&trials, FINALIST_MARGIN);
        if finalists.len() > 1 {
            self.time_plans(
                &batch,
                &mut trials,
                &finalists,
                rounds * FINAL_ROUNDS_FACTOR,
                &mut expected,
            )?;
        }
        for &index in &finalists {
            trials[index].finalist = true;
        }
        let chosen = match fastest(&trials) {
            Some(index) => trials[index].plan,
            None => plans[0],
        };
        self.use_plan(n_rows, chosen);
        Ok(PlanTuning {
            rows: n_rows,
            trials,
            chosen,
        })
    }

    /// Runs `rows` once in each plan, with scores, after other values were written and run whole
    /// through the unsplit path, and fails unless every plan gives the first one's labels and score
    /// bits: a plan that leaves rows uncopied, or copies them to the wrong place, reads the other values.
    fn check_plans(&mut self, rows: &[f32], plans: &[BatchPlan]) -> Result<(), ForestError> {
        let n_rows = rows.len() / self.n_features().max(1);
        let other: Vec<f32> = rows.iter().map(|v| -v - 1.0).collect();
        let mut first = None;
        for plan in plans {
            self.write_rows(0, &other)?;
            self.run(n_rows, false)?;
            let result = self.run_planned(rows, *plan, true)?;
            same_results(&mut first, result, *plan, plans[0])?;
        }
        Ok(())
    }

    /// `rounds` rounds of the trials at `which`, each round every one of them in turn (an untimed
    /// run of the rotated rows, then a timed one of the rows), their medians updated; results
    /// compared with `expected` (the first timed run's, kept there).
    fn time_plans(
        &mut self,
        batch: &TuningBatch<'_>,
        trials: &mut [PlanTrial],
        which: &[usize],
        rounds: usize,
        expected: &mut Option<ResultBits>,
    ) -> Result<(), ForestError> {
        let TuningBatch {
            rows,
            rotated,
            want_scores,
        } = *batch;
        for _ in 0..rounds {
            for &index in which {
                let plan = trials[index].plan;
                self.run_planned(rotated, plan, want_scores)?;
                let started = Instant::now();
                let result = self.run_planned(rows, plan, want_scores)?;
                trials[index].runs_us.push(started.elapsed().as_secs_f64() * 1e6);
                same_results(expected, result, plan, trials[0].plan)?;
            }
        }
        for &index in which {
            trials[index].median_us = median(&trials[index].runs_us);
        }
        Ok(())
    }

    /// Runs batches of `n_rows` in `plan` from now on, as if a tuning had chosen it (e.g. one an earlier
    /// tuning of the same model and batch size on the same device chose).
    pub fn use_plan(&mut self, n_rows: usize, plan: BatchPlan) {
        self.tuned_plans.retain(|(rows, _)| *rows != n_rows);
        self.tuned_plans.push((n_rows, plan));
    }

    /// Forgets the plans [`tune_plans`](Self::tune_plans) chose: every batch follows the kernel's rule
    /// again.
    pub fn forget_tuned_plans(&mut self) {
        self.tuned_plans.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(dispatches: usize, direct_rows_first: bool, direct_after_copy: bool) -> BatchPlan {
        BatchPlan {
            dispatches,
            direct_rows_first,
            direct_after_copy,
        }
    }

    #[test]
    fn candidates_list_each_way_of_running_once_the_rule_first() {
        let rule = plan(1, true, false);
        let split = candidate_plans(rule, 242, true);
        let names: Vec<String> = split.iter().map(ToString::to_string).collect();
        assert_eq!(
            names,
            ["1s", "1", "2", "2o", "3", "3o", "4", "4o", "5", "5o", "6", "6o"]
        );
        // Without a split the orderings do not apply: one plan a dispatch count.
        let names: Vec<String> = candidate_plans(rule, 242, false)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["1", "2", "3", "4", "5", "6"]);
        // A batch of three workgroups runs in at most three dispatches; the rule's four become three.
        let names: Vec<String> = candidate_plans(plan(4, true, false), 3, true)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(names, ["3", "1", "1s", "2", "2o", "3o"]);
    }

    #[test]
    fn the_fastest_median_wins_and_ties_keep_the_earlier_plan() {
        let trial = |plan: BatchPlan, median_us: f64| PlanTrial {
            plan,
            runs_us: vec![median_us],
            median_us,
            finalist: false,
        };
        let mut trials = [
            trial(plan(1, true, false), 330.0),
            trial(plan(2, false, true), 312.0),
            trial(plan(2, false, false), 312.0),
            trial(plan(4, false, false), 327.6),
            trial(plan(6, false, false), 400.0),
        ];
        assert_eq!(fastest(&trials), Some(1));
        assert_eq!(fastest(&trials[..1]), Some(0));
        assert_eq!(fastest(&[]), None);
        // Within 5% of 312 (327.6): timed again; 330 and 400 are not.
        assert_eq!(finalists(&trials, 0.05), [1, 2, 3]);
        assert_eq!(finalists(&trials, 0.0), [1, 2]);
        // Once finalists are marked, only they are chosen from, whatever the others' first medians.
        for index in finalists(&trials, 0.05) {
            trials[index].finalist = true;
        }
        trials[1].median_us = 329.0;
        trials[2].median_us = 328.0;
        trials[4].median_us = 100.0;
        assert_eq!(fastest(&trials), Some(3));
        assert_eq!(median(&[5.0, 1.0, 3.0]), 3.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[]), 0.0);
    }
}
