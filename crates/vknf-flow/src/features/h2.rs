//! The feature vector of one signed record-size sequence.
//!
//! This follows `h2classifier/features_tools.py` (`get_features`, `get_features_index`) line by
//! line, with two deliberate departures, both where the original's vector disagrees with its own
//! legend: the legend names `a1, a2, a3` (records, client records, total bytes) and `c1, c2`
//! (distinct server and client sizes), but the code writes `[f1 + f2 + f3]` and `[f14 + f15]`,
//! which adds the numbers into one value instead of concatenating lists. Here they are five
//! separate features, so the vector has 3 more entries than the original's and matches its names.
//! Everything else is kept as it was, quirks included (see `docs/traffic.md`):
//! - a record of size 0 counts as a server record (`el >= 0`);
//! - a burst is the sum of the server records between two client records: server records before
//!   the first client record, and after the last one, form no burst;
//! - chunks count server records per window of 20 records, and a window counts only once a
//!   record of the next window exists (the last window is never counted);
//! - standard deviations are population ones (numpy's default);
//! - the "rarest" sizes are the sizes present in the trace ordered by their count in the
//!   training set (absent = 0); ties, left to Python's set order in the original, are broken
//!   here by the smaller size so that the result is reproducible.

use super::schema::SizeCounts;

/// Records per chunk window.
pub const WINDOW: usize = 20;
/// Rarest sizes kept per direction.
pub const RARE_SIZES: usize = 20;

/// The names of the base features, in order, for a vocabulary (server sizes, client sizes).
pub fn base_feature_names(server: &SizeCounts, client: &SizeCounts) -> Vec<String> {
    let mut names: Vec<String> = ["a1", "a2", "a3"].iter().map(|s| s.to_string()).collect();
    for group in ["b1", "b2"] {
        for stat in ["mean", "max", "min", "std", "median"] {
            names.push(format!("{group}{stat}"));
        }
    }
    names.push("c1".into());
    names.push("c2".into());
    names.extend((1..=RARE_SIZES).map(|i| format!("dserv{i}")));
    names.extend((1..=RARE_SIZES).map(|i| format!("dcli{i}")));
    names.extend(server.iter().map(|(size, _)| format!("eserv_taille{size}")));
    names.extend(client.iter().map(|(size, _)| format!("ecli_taille{size}")));
    names
}

/// Buffers reused from one row to the next, so that computing a row allocates nothing once they
/// have grown to the longest sequence seen.
#[derive(Clone, Debug, Default)]
pub struct RowScratch {
    server: Vec<u32>,
    client: Vec<u32>,
    bursts: Vec<f64>,
    chunks: Vec<f64>,
    rare: Vec<(u64, u32)>,
    /// Run-length views of the sorted size lists, server's and client's.
    runs: Vec<Run>,
    runs_client: Vec<Run>,
    pub(super) base: Vec<f64>,
}

/// Records of one size in a trace, with the size's place in the vocabulary.
#[derive(Clone, Copy, Debug)]
struct Run {
    size: u32,
    /// Records of this size in the trace.
    len: u64,
    /// The size's histogram bin and training count; `None` outside the vocabulary.
    known: Option<(usize, u64)>,
}

/// The runs of equal sizes of a sorted list, each looked up in the vocabulary once (the
/// distinct count, the rarest sizes and the histogram all read them).
fn runs_into(sorted: &[u32], vocabulary: &SizeCounts, runs: &mut Vec<Run>) {
    runs.clear();
    runs.extend(sorted.chunk_by(|a, b| a == b).map(|run| Run {
        size: run[0],
        len: run.len() as u64,
        known: vocabulary.find(run[0]),
    }));
}

/// The base feature vector (all features, before selection) of a signed record sequence.
pub fn base_features(records: &[i32], server: &SizeCounts, client: &SizeCounts) -> Vec<f64> {
    let mut scratch = RowScratch::default();
    let mut out = Vec::new();
    base_features_into(records, server, client, &mut scratch, &mut out);
    out
}

/// [`base_features`] into `out` (cleared first), with `scratch`'s buffers.
pub fn base_features_into(
    records: &[i32],
    server: &SizeCounts,
    client: &SizeCounts,
    scratch: &mut RowScratch,
    out: &mut Vec<f64>,
) {
    let RowScratch {
        server: rec_serv,
        client: rec_cli,
        bursts,
        chunks,
        rare,
        runs,
        runs_client,
        base: _,
    } = scratch;
    rec_serv.clear();
    rec_cli.clear();
    bursts.clear();
    chunks.clear();
    let mut total_bytes = 0u64;
    // Server records of the current window; `None` before the first record.
    let mut chunk: Option<u64> = None;
    // The burst being summed (bytes, whether it has a record); `None` before the first client record.
    let mut burst: Option<(u64, bool)> = None;
    for (index, &el) in records.iter().enumerate() {
        if index % WINDOW == 0 {
            if let Some(done) = chunk {
                chunks.push(done as f64);
            }
            chunk = Some(0);
        }
        let size = el.unsigned_abs();
        total_bytes += u64::from(size);
        if el >= 0 {
            rec_serv.push(size);
            if let Some(c) = chunk.as_mut() {
                *c += 1;
            }
            if let Some((sum, any)) = burst.as_mut() {
                *sum += u64::from(size);
                *any = true;
            }
        } else {
            rec_cli.push(size);
            if let Some((sum, true)) = burst {
                bursts.push(sum as f64);
            }
            burst = Some((0, false));
        }
    }
    out.clear();
    out.reserve(15 + 2 * RARE_SIZES + server.len() + client.len());
    out.push(records.len() as f64);
    out.push(rec_cli.len() as f64);
    out.push(total_bytes as f64);
    out.extend(five_stats(bursts));
    out.extend(five_stats(chunks));
    // Distinct sizes: each list sorted, then read as runs of equal sizes.
    rec_serv.sort_unstable();
    rec_cli.sort_unstable();
    runs_into(rec_serv, server, runs);
    runs_into(rec_cli, client, runs_client);
    out.push(runs.len() as f64);
    out.push(runs_client.len() as f64);
    rarest_into(runs, rare, out);
    rarest_into(runs_client, rare, out);
    histogram_into(runs, server.len(), out);
    histogram_into(runs_client, client.len(), out);
}

/// mean, max, min, population std, median; zeros for an empty list. Reorders `values` (the
/// sums are taken first, in the given order).
fn five_stats(values: &mut [f64]) -> [f64; 5] {
    if values.is_empty() {
        return [0.0; 5];
    }
    let [mean, max, min, std] = four_stats(values);
    // The median's one or two values by selection, not a sort: the element `mid` of the sorted
    // order, and for an even count the largest of those before it (the sorted order's `mid - 1`).
    let mid = values.len() / 2;
    let odd = values.len() % 2 == 1;
    let (below, &mut upper, _) = values.select_nth_unstable_by(mid, f64::total_cmp);
    let median = match below.iter().copied().max_by(f64::total_cmp) {
        Some(lower) if !odd => (lower + upper) / 2.0,
        _ => upper,
    };
    [mean, max, min, std, median]
}

/// mean, max, min and population std of a non-empty list, the sums taken in its order.
fn four_stats(values: &[f64]) -> [f64; 4] {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let var = values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    [mean, max, min, var.sqrt()]
}

/// The trace's distinct sizes (`runs`), rarest in training first (ties: smaller size first),
/// padded to [`RARE_SIZES`].
fn rarest_into(runs: &[Run], sizes: &mut Vec<(u64, u32)>, out: &mut Vec<f64>) {
    sizes.clear();
    sizes.extend(
        runs.iter()
            .map(|run| (run.known.map_or(0, |(_, count)| count), run.size)),
    );
    sizes.sort_unstable();
    let kept = sizes.len().min(RARE_SIZES);
    out.extend(sizes[..kept].iter().map(|&(_, s)| f64::from(s)));
    out.extend(std::iter::repeat_n(0.0, RARE_SIZES - kept));
}

/// How many records of each of the vocabulary's `bins` sizes the trace (`runs`) has; sizes
/// outside the vocabulary are not counted.
fn histogram_into(runs: &[Run], bins: usize, out: &mut Vec<f64>) {
    let start = out.len();
    out.resize(start + bins, 0.0);
    for run in runs {
        if let Some((index, _)) = run.known {
            out[start + index] = run.len as f64;
        }
    }
}

/// [`five_stats`] with the median from the sorted list, as numpy computes it.
#[cfg(test)]
fn five_stats_reference(values: &[f64]) -> [f64; 5] {
    if values.is_empty() {
        return [0.0; 5];
    }
    let [mean, max, min, std] = four_stats(values);
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[mid]
    } else {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    };
    [mean, max, min, std, median]
}

/// The original computation, kept to check the fast one against (it follows the Python line by line).
#[cfg(test)]
fn base_features_reference(records: &[i32], server: &SizeCounts, client: &SizeCounts) -> Vec<f64> {
    use std::collections::{BTreeSet, HashMap};
    let mut rec_serv: Vec<u32> = Vec::new();
    let mut rec_cli: Vec<u32> = Vec::new();
    let mut chunks: Vec<f64> = Vec::new();
    let mut bursts: Vec<f64> = Vec::new();
    let mut chunk: Option<u64> = None;
    let mut burst: Option<Vec<u64>> = None;
    for (index, &el) in records.iter().enumerate() {
        if index % WINDOW == 0 {
            if let Some(done) = chunk {
                chunks.push(done as f64);
            }
            chunk = Some(0);
        }
        if el >= 0 {
            let size = el.unsigned_abs();
            rec_serv.push(size);
            if let Some(c) = chunk.as_mut() {
                *c += 1;
            }
            if let Some(b) = burst.as_mut() {
                b.push(u64::from(size));
            }
        } else {
            rec_cli.push(el.unsigned_abs());
            if let Some(b) = burst.as_ref()
                && !b.is_empty()
            {
                bursts.push(b.iter().sum::<u64>() as f64);
            }
            burst = Some(Vec::new());
        }
    }
    let sum = |v: &[u32]| v.iter().map(|&x| u64::from(x)).sum::<u64>();
    let mut out = Vec::new();
    out.push(records.len() as f64);
    out.push(rec_cli.len() as f64);
    out.push((sum(&rec_cli) + sum(&rec_serv)) as f64);
    out.extend(five_stats_reference(&bursts));
    out.extend(five_stats_reference(&chunks));
    let set_serv: BTreeSet<u32> = rec_serv.iter().copied().collect();
    let set_cli: BTreeSet<u32> = rec_cli.iter().copied().collect();
    out.push(set_serv.len() as f64);
    out.push(set_cli.len() as f64);
    for (set, vocabulary) in [(&set_serv, server), (&set_cli, client)] {
        let mut sizes: Vec<(u64, u32)> = set.iter().map(|&s| (vocabulary.count(s), s)).collect();
        sizes.sort_unstable();
        let mut rare: Vec<f64> = sizes.iter().take(RARE_SIZES).map(|&(_, s)| f64::from(s)).collect();
        rare.resize(RARE_SIZES, 0.0);
        out.extend(rare);
    }
    for (sizes, vocabulary) in [(&rec_serv, server), (&rec_cli, client)] {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        for &s in sizes.iter() {
            *counts.entry(s).or_default() += 1;
        }
        out.extend(
            vocabulary
                .iter()
                .map(|(size, _)| counts.get(&size).copied().unwrap_or(0) as f64),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use std::collections::BTreeSet;

    use super::*;
    use crate::features::FeatureSchema;

    proptest! {
        /// Invariants that tie each feature to its definition, on arbitrary sequences and a
        /// vocabulary from other arbitrary sequences (the parity with Python and with the
        /// original code is tested on real traffic in tests/capture_parity.rs).
        #[test]
        fn features_follow_their_definitions(
            records in prop::collection::vec(-1500i32..1500, 0..120),
            training in prop::collection::vec(prop::collection::vec(-1500i32..1500, 0..60), 0..6),
        ) {
            let schema = FeatureSchema::from_training(training.iter().map(Vec::as_slice), Vec::new());
            let f = schema.base_row(&records);
            prop_assert_eq!(f.len(), schema.feature_names.len());
            let serv: Vec<u32> = records.iter().filter(|&&r| r >= 0).map(|&r| r as u32).collect();
            let cli: Vec<u32> = records.iter().filter(|&&r| r < 0).map(|&r| r.unsigned_abs()).collect();
            prop_assert_eq!(f[0], records.len() as f64);
            prop_assert_eq!(f[1], cli.len() as f64);
            prop_assert_eq!(f[2], records.iter().map(|r| f64::from(r.unsigned_abs())).sum::<f64>());
            // Chunks: one per completed window of 20 records, each a count of server records.
            let chunks = if records.is_empty() { 0 } else { (records.len() - 1) / WINDOW };
            if chunks == 0 {
                prop_assert_eq!(&f[8..13], &[0.0; 5]);
            } else {
                prop_assert!(f[9] <= WINDOW as f64 && f[10] >= 0.0 && f[10] <= f[8] && f[8] <= f[9]);
            }
            // Bursts: sums of server runs between client records, bounded by all server bytes.
            prop_assert!(f[4] <= serv.iter().map(|&s| f64::from(s)).sum::<f64>());
            let distinct = |v: &[u32]| v.iter().collect::<BTreeSet<_>>().len() as f64;
            prop_assert_eq!((f[13], f[14]), (distinct(&serv), distinct(&cli)));
            // Rarest sizes: present in the trace, ordered by training count, then padded.
            let rare_serv = &f[15..35];
            for pair in rare_serv.windows(2).filter(|w| w[1] != 0.0) {
                prop_assert!(schema.server_sizes.count(pair[0] as u32) <= schema.server_sizes.count(pair[1] as u32));
            }
            prop_assert!(rare_serv.iter().all(|&s| s == 0.0 || serv.contains(&(s as u32))));
            // Histograms count exactly the trace's records whose size the vocabulary knows.
            let hist_serv: f64 = f[55..55 + schema.server_sizes.len()].iter().sum();
            let known = serv.iter().filter(|&&s| schema.server_sizes.count(s) > 0).count();
            prop_assert_eq!(hist_serv, known as f64);
            let hist_cli: f64 = f[55 + schema.server_sizes.len()..].iter().sum();
            prop_assert_eq!(hist_cli, cli.iter().filter(|&&s| schema.client_sizes.count(s) > 0).count() as f64);
        }
    }

    proptest! {
        /// The allocation-free computation gives the original's vector, value for value, also
        /// with one scratch reused across rows of different lengths.
        #[test]
        fn fast_features_equal_the_reference(
            sequences in prop::collection::vec(prop::collection::vec(-600i32..600, 0..90), 1..5),
            training in prop::collection::vec(prop::collection::vec(-600i32..600, 0..60), 0..6),
        ) {
            let schema = FeatureSchema::from_training(training.iter().map(Vec::as_slice), Vec::new());
            let mut scratch = RowScratch::default();
            let mut out = Vec::new();
            for records in &sequences {
                base_features_into(records, &schema.server_sizes, &schema.client_sizes, &mut scratch, &mut out);
                let reference = base_features_reference(records, &schema.server_sizes, &schema.client_sizes);
                prop_assert_eq!(&out, &reference);
            }
        }
    }

    #[test]
    fn names_follow_the_original_legend() {
        let server = SizeCounts::new([(517, 3), (24, 1)]);
        let client = SizeCounts::new([(80, 2)]);
        let names = base_feature_names(&server, &client);
        assert_eq!(&names[..3], ["a1", "a2", "a3"]);
        assert_eq!(&names[13..15], ["c1", "c2"]);
        assert_eq!(names[15], "dserv1");
        assert_eq!(names[55..], ["eserv_taille24", "eserv_taille517", "ecli_taille80"]);
    }
}
