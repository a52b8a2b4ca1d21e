//! Exact f64 -> f32 threshold conversion.
//!
//! scikit-learn evaluates `float32(x) <= threshold64`. For any f32 `x` that comparison equals
//! `x <= floor_f32(threshold64)`, where `floor_f32` is the largest f32 not above the double,
//! so storing that f32 keeps f32-only GPU comparisons bit-exact with scikit-learn.

/// The largest f32 strictly below `f` (`-inf` stays `-inf`; NaN stays NaN).
pub fn prev_f32(f: f32) -> f32 {
    if f.is_nan() || f == f32::NEG_INFINITY {
        return f;
    }
    if f == 0.0 {
        // Both zeros: the next value down is the smallest negative subnormal.
        return -f32::from_bits(1);
    }
    let bits = f.to_bits();
    if f > 0.0 {
        f32::from_bits(bits - 1)
    } else {
        f32::from_bits(bits + 1)
    }
}

/// The largest f32 `t` with `t <= x` (for finite `x` below `-f32::MAX` this is `-inf`).
pub fn floor_f32(x: f64) -> f32 {
    let nearest = x as f32;
    if f64::from(nearest) > x {
        prev_f32(nearest)
    } else {
        nearest
    }
}

/// The largest f32 `t` with `t < x`, so that `y < x <=> y <= below_f32(x)` for f32 `y`.
pub fn below_f32(x: f64) -> f32 {
    let floor = floor_f32(x);
    if f64::from(floor) == x { prev_f32(floor) } else { floor }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_rounds_down_where_nearest_rounds_up() {
        // 0.1 as f32 rounds up (0.100000001490116...), so the floor is the f32 below it.
        let nearest = 0.1f64 as f32;
        assert!(f64::from(nearest) > 0.1);
        let floor = floor_f32(0.1);
        assert!(f64::from(floor) <= 0.1);
        assert_eq!(floor, prev_f32(nearest));
    }

    #[test]
    fn floor_keeps_exact_values_and_saturates() {
        assert_eq!(floor_f32(0.5), 0.5);
        assert_eq!(floor_f32(1e300), f32::MAX);
        assert_eq!(floor_f32(-1e300), f32::NEG_INFINITY);
        assert_eq!(floor_f32(-0.0), 0.0);
    }

    #[test]
    fn below_is_strict() {
        assert_eq!(below_f32(0.5), prev_f32(0.5));
        assert!(below_f32(0.5) < 0.5);
        assert_eq!(below_f32(0.1), floor_f32(0.1));
        assert_eq!(below_f32(-(f32::MAX as f64)), f32::NEG_INFINITY);
    }

    #[test]
    fn prev_walks_across_zero_and_signs() {
        assert_eq!(prev_f32(1.0), f32::from_bits(1.0f32.to_bits() - 1));
        assert!(prev_f32(0.0) < 0.0);
        assert_eq!(prev_f32(-1.0), f32::from_bits((-1.0f32).to_bits() + 1));
        assert_eq!(prev_f32(f32::INFINITY), f32::MAX);
        assert_eq!(prev_f32(f32::MIN), f32::NEG_INFINITY);
    }

    #[test]
    fn comparison_equivalence_holds_around_random_doubles() {
        // y <= x (f64 compare) must equal y <= floor_f32(x) for f32 y near x.
        let mut state = 0x1234_5678_9abc_def0u64;
        for _ in 0..20_000 {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let x = f64::from_bits((state >> 2) | 0x3F00_0000_0000_0000) - 1.5;
            let t = floor_f32(x);
            let b = below_f32(x);
            let near = x as f32;
            for y in [prev_f32(near), near, f32::from_bits(near.to_bits().wrapping_add(1))] {
                assert_eq!(f64::from(y) <= x, y <= t, "x={x} y={y}");
                assert_eq!(f64::from(y) < x, y <= b, "x={x} y={y}");
            }
        }
    }
}
