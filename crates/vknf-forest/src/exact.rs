//! Exact class scores: the fixed-point arithmetic that the CPU reference and the GPU kernel share.
//!
//! A classifier's leaf weights are converted once, at load time, to 32-bit integers with a power-of-two
//! scale ([`FixedPoint::weight_to_fixed`]); both sides add them with wrapping `i32` additions (associative,
//! so neither the order of the trees nor the split of a row's trees over GPU threads changes the sum), add
//! the base values and apply the binary complement in the same integer units, and turn each total into
//! the `f32` nearest to `total / (divisor * 2^scale_log2)` with integer operations only
//! ([`FixedPoint::to_f32`], mirrored instruction for instruction by `fixed_to_float` in
//! `crates/vknf-kernels/shaders/forest.comp`). No floating-point rounding mode, contraction or denormal
//! mode of a device enters the result, so GPU and CPU scores are equal bit for bit; labels are the argmax
//! of those values on both sides. Post transforms (logistic, softmax) are applied to those f32 values on
//! the host by one function, [`crate::apply_post_transform`], for the CPU reference and the GPU lanes.
//!
//! Error against the exact mean of the f32 leaf weights (scikit-learn's `predict_proba`): each weight is
//! off by at most `2^-(scale_log2 + 1)` and the total is rounded once to f32, so a score is within
//! `2^-(scale_log2 + 1)` plus half an f32 ulp; the scale is at least 2^16 (else the forest accumulates in
//! float, see [`GpuForest::fixed_point`]), which keeps every score within 1e-5.

use crate::layout::{FLAG_BIT, GpuForest, LEAF_BIT, LOW30_MASK};
use crate::model::Aggregate;

/// Smallest scale exponent accepted for fixed point: coarser scales accumulate in float instead.
pub const MIN_SCALE_LOG2: i32 = 16;
/// Largest scale exponent used (finer steps buy nothing once the f32 result is rounded).
pub const MAX_SCALE_LOG2: i32 = 30;

/// How a forest's totals become exact scores; see the module docs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FixedPoint {
    /// A leaf weight `w` counts as `round_ties_even(w * 2^scale_log2)`.
    pub scale_log2: i32,
    /// The aggregation's divisor: the tree count for `Average`, else 1.
    pub divisor: u32,
    /// Per output: the base value in accumulator units, `round_ties_even(base * divisor * 2^scale_log2)`
    /// (zeros when the model has no base values).
    pub base: Vec<i32>,
    /// The value 1 in accumulator units (`divisor * 2^scale_log2`), for the binary complement; 0 when
    /// the forest has none (it need not fit `i32` then).
    pub one: i32,
}

impl GpuForest {
    /// The fixed-point arithmetic this forest's scores use on the CPU and the GPU, or `None` when it
    /// accumulates in float (regressors, whose values need relative rather than absolute precision, and
    /// classifiers whose weights, tree count or base values leave no scale of at least
    /// 2^[`MIN_SCALE_LOG2`] that keeps every total within `i32`).
    pub fn fixed_point(&self) -> Option<FixedPoint> {
        if !self.task.is_classifier() || self.n_outputs == 0 {
            return None;
        }
        let n_trees = self.tree_roots.len();
        let divisor = match self.aggregate {
            Aggregate::Average => u32::try_from(n_trees.max(1)).ok().filter(|d| *d < 1 << 30)?,
            Aggregate::Sum => 1,
        };
        if (!self.base_values.is_empty() && self.base_values.len() != self.n_outputs as usize)
            || (self.binary_complement && self.n_outputs != 2)
        {
            return None;
        }
        let base_bound = self.base_values.iter().fold(0f64, |m, b| m.max(f64::from(*b).abs()));
        let complement = if self.binary_complement { 1.0 } else { 0.0 };
        // Largest |total| in units of 2^scale_log2: the leaf sums (each weight rounded by at most half a
        // unit, counted separately), the base value, and the complement's 1.
        let (weight_bound, entry_bound) = self.leaf_sum_bounds();
        let per_unit = weight_bound + f64::from(divisor) * (base_bound + complement);
        let rounding = entry_bound / 2.0 + 2.0;
        let limit = f64::from(i32::MAX) * 0.98;
        let scale_log2 = (MIN_SCALE_LOG2..=MAX_SCALE_LOG2)
            .rev()
            .find(|k| per_unit * 2f64.powi(*k) + rounding <= limit)?;
        let one = if self.binary_complement {
            i32::try_from(u64::from(divisor) << scale_log2).ok()?
        } else {
            0
        };
        let base = if self.base_values.is_empty() {
            vec![0; self.n_outputs as usize]
        } else {
            self.base_values
                .iter()
                .map(|b| scaled_f32(*b, u64::from(divisor), scale_log2).and_then(|v| i32::try_from(v).ok()))
                .collect::<Option<Vec<i32>>>()?
        };
        Some(FixedPoint {
            scale_log2,
            divisor,
            base,
            one,
        })
    }

    /// Sums over trees of the largest `sum |weight|` and of the largest entry count of any one leaf of
    /// the tree: bounds on what a row's trees can add to one accumulator, and on how many rounded
    /// weights they add (a leaf may name an output more than once).
    fn leaf_sum_bounds(&self) -> (f64, f64) {
        let w = self.node_format.words();
        let n_nodes = self.n_nodes();
        let (mut weights, mut entries) = (0f64, 0f64);
        for (t, &root) in self.tree_roots.iter().enumerate() {
            let end = self.tree_roots.get(t + 1).map_or(n_nodes, |&next| next as usize);
            let (mut tree_weight, mut tree_entries) = (0f64, 0f64);
            for i in (root as usize)..end.min(n_nodes) {
                let (w0, w1) = (self.nodes[i * w], self.nodes[i * w + 1]);
                if w0 & LEAF_BIT == 0 {
                    continue;
                }
                let (sum, count) = if w0 & FLAG_BIT != 0 {
                    (f64::from(f32::from_bits(w1)).abs(), 1.0)
                } else {
                    let first = (w1 as usize).saturating_mul(2);
                    let count = (w0 & LOW30_MASK) as usize;
                    let pairs = self
                        .leaf_entries
                        .get(
                            first
                                ..first
                                    .saturating_add(count.saturating_mul(2))
                                    .min(self.leaf_entries.len()),
                        )
                        .unwrap_or(&[]);
                    let sum = pairs
                        .chunks_exact(2)
                        .map(|pair| f64::from(f32::from_bits(pair[1])).abs())
                        .sum();
                    (sum, count as f64)
                };
                tree_weight = tree_weight.max(sum);
                tree_entries = tree_entries.max(count);
            }
            weights += tree_weight;
            entries += tree_entries;
        }
        (weights, entries)
    }

    /// The layout's `nodes` and `leaf_entries` with every leaf weight replaced by its fixed-point value
    /// (`i32` bits): what the GPU kernel reads when the forest accumulates in fixed point.
    pub fn fixed_point_words(&self, fixed: &FixedPoint) -> (Vec<u32>, Vec<u32>) {
        let w = self.node_format.words();
        let mut nodes = self.nodes.clone();
        for node in nodes.chunks_exact_mut(w) {
            if node[0] & LEAF_BIT != 0 && node[0] & FLAG_BIT != 0 {
                node[1] = fixed.weight_to_fixed(f32::from_bits(node[1])) as u32;
            }
        }
        let mut entries = self.leaf_entries.clone();
        for pair in entries.chunks_exact_mut(2) {
            pair[1] = fixed.weight_to_fixed(f32::from_bits(pair[1])) as u32;
        }
        (nodes, entries)
    }
}

impl FixedPoint {
    /// `round_ties_even(weight * 2^scale_log2)`, saturated to `i32` (validated weights never saturate:
    /// the scale is chosen so that whole sums fit).
    pub fn weight_to_fixed(&self, weight: f32) -> i32 {
        // Scaling by a power of two is exact in f32 (a finite weight times 2^k, k in 16..=30, cannot
        // underflow, and overflow saturates like the exact value would), so only the rounding rounds.
        (weight * f32::from_bits(((self.scale_log2 + 127) as u32) << 23)).round_ties_even() as i32
    }

    /// Turns per-output leaf sums into totals in place: base values added, then the binary complement
    /// (`total[0] = one - total[1]`), with the wrapping `i32` arithmetic of the kernel.
    pub fn totals(&self, sums: &mut [i32], binary_complement: bool) {
        for (sum, base) in sums.iter_mut().zip(&self.base) {
            *sum = sum.wrapping_add(*base);
        }
        if binary_complement && sums.len() == 2 {
            sums[0] = self.one.wrapping_sub(sums[1]);
        }
    }

    /// The f32 nearest to `total / (divisor * 2^scale_log2)` (ties to even), by the integer steps that
    /// the kernel's `fixed_to_float` takes.
    pub fn to_f32(&self, total: i32) -> f32 {
        ratio_to_f32(total, self.divisor, self.scale_log2)
    }
}

/// The f32 nearest to `total / (divisor * 2^scale_log2)`, ties to even, with 32-bit integer operations
/// only. `divisor` must be in `1..2^31` and the result a normal number (true for every [`FixedPoint`]:
/// `|total| >= 1` and `divisor * 2^scale_log2 < 2^31` keep it within `[2^-31, 2^31]`).
pub fn ratio_to_f32(total: i32, divisor: u32, scale_log2: i32) -> f32 {
    if total == 0 || divisor == 0 || divisor >= 1 << 31 {
        return 0.0;
    }
    let sign = if total < 0 { 1u32 << 31 } else { 0 };
    let magnitude = total.unsigned_abs();
    // value = (q + r / divisor) * 2^exponent * 2^-scale_log2
    let mut q = magnitude / divisor;
    let mut r = magnitude % divisor;
    let mut exponent = 0i32;
    let mut sticky = false;
    // 25 significant bits: 24 for the significand, one to round with; dropped bits go into `sticky`.
    for _ in 0..8 {
        if q < 1 << 25 {
            break;
        }
        sticky |= q & 1 != 0;
        q >>= 1;
        exponent += 1;
    }
    if divisor == 1 && q < 1 << 24 {
        // No remainder (the usual `Sum` aggregate): shift the quotient up in one step.
        let shift = q.leading_zeros() as i32 - 7;
        q <<= shift;
        exponent -= shift;
    }
    // Long division, one quotient bit a step: r < divisor < 2^31, so 2r fits.
    for _ in 0..64 {
        if q >= 1 << 24 {
            break;
        }
        r <<= 1;
        q <<= 1;
        if r >= divisor {
            r -= divisor;
            q |= 1;
        }
        exponent -= 1;
    }
    sticky |= r != 0;
    let mut significand = q >> 1;
    if q & 1 != 0 && (sticky || significand & 1 != 0) {
        significand += 1;
    }
    if significand == 1 << 24 {
        significand >>= 1;
        exponent += 1;
    }
    let biased = exponent + 1 - scale_log2 + 23 + 127;
    if !(1..=254).contains(&biased) {
        return 0.0;
    }
    f32::from_bits(sign | (biased as u32) << 23 | (significand & 0x7f_ffff))
}

/// `round_ties_even(value * factor * 2^scale_log2)` exactly, for a finite f32 `value`.
fn scaled_f32(value: f32, factor: u64, scale_log2: i32) -> Option<i128> {
    if !value.is_finite() {
        return None;
    }
    let bits = value.to_bits();
    let biased = ((bits >> 23) & 0xff) as i32;
    let fraction = i128::from(bits & 0x7f_ffff);
    // value = mantissa * 2^exponent
    let (mantissa, exponent) = if biased == 0 {
        (fraction, -149)
    } else {
        (fraction | 1 << 23, biased - 150)
    };
    let magnitude = round_shift(mantissa * i128::from(factor), exponent + scale_log2)?;
    Some(if bits >> 31 != 0 { -magnitude } else { magnitude })
}

/// `round_ties_even(value * 2^shift)` for `value >= 0`, or `None` when it overflows.
fn round_shift(value: i128, shift: i32) -> Option<i128> {
    if shift >= 0 {
        if shift > 64 {
            return (value == 0).then_some(0);
        }
        return value.checked_mul(1i128 << shift);
    }
    let down = -shift;
    if down >= 120 {
        return Some(0);
    }
    let quotient = value >> down;
    let remainder = value - (quotient << down);
    let half = 1i128 << (down - 1);
    Some(if remainder > half || (remainder == half && quotient & 1 != 0) {
        quotient + 1
    } else {
        quotient
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The f32 nearest to `total / (divisor * 2^k)` by exact u128 arithmetic (an independent algorithm).
    fn exact_reference(total: i32, divisor: u32, k: i32) -> f32 {
        let magnitude = u128::from(total.unsigned_abs());
        // numerator / denominator with 96 extra bits: the quotient has >= 65 significant bits.
        let numerator = magnitude << 96;
        let denominator = u128::from(divisor);
        let quotient = numerator / denominator;
        let sticky = numerator % denominator != 0;
        let bits = 128 - quotient.leading_zeros() as i32;
        let drop = bits - 24;
        let mut significand = quotient >> drop;
        let rest = quotient & ((1u128 << drop) - 1);
        let half = 1u128 << (drop - 1);
        if rest > half || (rest == half && (sticky || significand & 1 != 0)) {
            significand += 1;
        }
        // value = significand * 2^(drop - 96 - k)
        let value = significand as f64 * 2f64.powi(drop - 96 - k);
        let value = value as f32; // exact: significand has at most 25 bits and 2^24 is exact
        if total < 0 { -value } else { value }
    }

    proptest! {
        #[test]
        fn ratio_is_the_nearest_f32(total in any::<i32>(), divisor in 1u32..(1 << 31), k in 0i32..=30) {
            prop_assume!(total != 0);
            prop_assert_eq!(ratio_to_f32(total, divisor, k).to_bits(), exact_reference(total, divisor, k).to_bits());
        }

        #[test]
        fn ratio_of_small_divisors_is_the_nearest_f32(total in any::<i32>(), divisor in 1u32..300, k in 16i32..=30) {
            prop_assume!(total != 0);
            prop_assert_eq!(ratio_to_f32(total, divisor, k).to_bits(), exact_reference(total, divisor, k).to_bits());
        }

        #[test]
        fn ratio_without_divisor_is_the_nearest_f32(total in any::<i32>(), k in 0i32..=30) {
            prop_assume!(total != 0);
            prop_assert_eq!(ratio_to_f32(total, 1, k).to_bits(), exact_reference(total, 1, k).to_bits());
        }

        #[test]
        fn weights_round_to_the_nearest_unit(weight in -4.0f32..4.0, k in 16i32..=28) {
            let fixed = FixedPoint { scale_log2: k, divisor: 1, base: vec![], one: 1 << k };
            let exact = f64::from(weight) * 2f64.powi(k); // exact: 24 significant bits scaled by 2^k
            prop_assert_eq!(i64::from(fixed.weight_to_fixed(weight)), exact.round_ties_even() as i64);
        }
    }

    #[test]
    fn ties_round_to_even_and_powers_of_two_are_exact() {
        // 2^24 + 1 is halfway between two f32s: ties go to the even significand.
        assert_eq!(ratio_to_f32((1 << 24) + 1, 1, 0), 16_777_216.0);
        assert_eq!(ratio_to_f32((1 << 24) + 3, 1, 0), 16_777_220.0);
        assert_eq!(ratio_to_f32(1 << 30, 1, 30), 1.0);
        assert_eq!(ratio_to_f32(-(1 << 29), 1, 30), -0.5);
        assert_eq!(ratio_to_f32(i32::MIN, 1, 31), -1.0);
        assert_eq!(ratio_to_f32(1, 3, 0).to_bits(), (1.0f32 / 3.0).to_bits());
        assert_eq!(ratio_to_f32(0, 7, 3), 0.0);
    }
}
