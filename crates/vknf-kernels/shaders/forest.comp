#version 450
// Random-forest inference over the vknf GPU layout (docs/vkf-format.md): one dispatch walks every tree
// for every row, accumulates the leaf weights per row and output, applies the aggregation, and writes the
// argmax label (and, on request, the aggregated values) of each row. The post transform (logistic,
// softmax) is the host's, applied to the aggregated values as it reads them (vknf_forest::
// apply_post_transform, shared with the CPU reference); labels are the argmax before it.
//
// Design (docs/forest-kernel.md):
// - A workgroup owns ROWS_PER_GROUP rows. Thread l serves row (l % ROWS_PER_GROUP) and walks the trees
//   (l / ROWS_PER_GROUP), (l / ROWS_PER_GROUP) + TREE_LANES, ...: consecutive lanes of a subgroup walk the
//   same tree for different rows, so they read the same compact nodes, which stay in cache.
// - The workgroup's input rows are staged once in shared memory (coalesced), when STAGE_INPUT is set.
// - Per-row, per-output accumulators live in shared memory as fixed-point integers, added with
//   shared-memory atomics: no global memory traffic per tree, no dense per-leaf class vectors. The host
//   stores each leaf weight as round_ties_even(weight * 2^FIXED_SCALE_LOG2) (i32 bits, scale chosen so that no
//   total can overflow); integer addition is associative, so the sums do not depend on which lane walks
//   which tree or in which order lanes finish, and fixed_to_float turns each total into an f32 with
//   integer operations only. Scores are therefore the same bits whatever the workgroup shape, and equal
//   to the CPU reference's (vknf_forest::exact, which mirrors fixed_to_float step by step).
// - Every loop is bounded: traversal by MAX_DEPTH (the validated depth), leaf entries by the entry
//   buffer's length (a leaf may name an output twice, so it may hold more entries than outputs), and
//   node indices are checked against the node count, whatever the model data says.

layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint GROUP_SIZE = 64;
layout(constant_id = 1) const uint ROWS_PER_GROUP = 8;
layout(constant_id = 2) const uint TREE_LANES = 8;
layout(constant_id = 3) const uint N_FEATURES = 1;
layout(constant_id = 4) const uint N_OUTPUTS = 1;
layout(constant_id = 5) const uint NODE_WORDS = 2;
layout(constant_id = 6) const uint MAX_DEPTH = 64;
layout(constant_id = 7) const bool STAGE_INPUT = true;
// 0: sum, 1: average over trees.
layout(constant_id = 8) const uint AGGREGATE = 1;
// (constant_id 9 was the post transform: the host applies it now.)
layout(constant_id = 10) const bool BINARY_COMPLEMENT = false;
// Fixed point: a total t stands for t / (DIVISOR * 2^FIXED_SCALE_LOG2); FIXED_ONE is 1 in those units.
layout(constant_id = 11) const int FIXED_SCALE_LOG2 = 30;
// Shared-memory sizes (in floats / ints) the host derives from the constants above.
layout(constant_id = 12) const uint STAGED_FLOATS = 1;
layout(constant_id = 13) const uint ACCUMULATORS = 1;
// The model has no missing-value routing: rows with a NaN feature get the label NAN_ROW instead of a
// prediction (checked here, in the pass that stages the rows anyway, rather than by a host-side scan).
layout(constant_id = 14) const bool REJECT_NAN = false;
const uint NAN_ROW = 0xffffffffu;
// Accumulate in float (compare-and-swap on the accumulator's bits) instead of fixed point: for weights
// whose range no 32-bit fixed-point scale covers (regressors with large or widely spread values). Leaf
// weights and base values are then f32 bits, and the sums depend on the order of the additions.
layout(constant_id = 15) const bool FLOAT_ACCUMULATE = false;
layout(constant_id = 16) const uint DIVISOR = 1;
layout(constant_id = 17) const int FIXED_ONE = 1073741824;

const uint LEAF_BIT = 0x80000000u;
const uint FLAG_BIT = 0x40000000u;
const uint LOW30 = 0x3fffffffu;
const uint COMPACT_DELTA_MASK = 0x3ffffu;
const uint COMPACT_FEATURE_SHIFT = 18u;
const uint COMPACT_FEATURE_MASK = 0xfffu;

layout(set = 0, binding = 0) readonly buffer Rows { float rows[]; };
// Nodes and leaf entries are read as word pairs: a compact node (or the first half of a wide one) and an
// (output, weight) entry each come in one 8-byte load instead of two 4-byte ones. Weights (and base
// values) are fixed-point i32 bits, or f32 bits when FLOAT_ACCUMULATE. Traversal loads are
// divergent (each row of a subgroup at its own node), so this halves the memory transactions per step.
layout(set = 0, binding = 1) readonly buffer Nodes { uvec2 nodes[]; };
layout(set = 0, binding = 2) readonly buffer TreeRoots { uint tree_roots[]; };
layout(set = 0, binding = 3) readonly buffer LeafEntries { uvec2 leaf_entries[]; };
layout(set = 0, binding = 4) readonly buffer BaseValues { uint base_values[]; };
layout(set = 0, binding = 5) writeonly buffer Labels { uint labels[]; };
layout(set = 0, binding = 6) writeonly buffer Scores { float scores[]; };
// The same node buffer read as node blocks (NODE_WORDS == 8, vknf_forest::NodeBlocks): 32 bytes holding an
// internal node, both its children and the index of its grandchildren's blocks, read as two 16-byte
// loads from one sector, so that one dependent load decides two levels of a walk. Other node formats
// bind the node buffer here too and never read it.
layout(set = 0, binding = 7) readonly buffer NodeBlocks { uvec4 node_blocks[]; };

layout(push_constant) uniform Params {
    uint n_rows;      // end of this dispatch's rows (exclusive), counted from the buffer's start
    uint n_trees;
    uint n_nodes;
    uint n_entries;   // pairs in leaf_entries
    uint write_scores;
    uint first_row;   // first row of this dispatch: a batch may be split into pipelined dispatches
} params;

shared float staged[STAGED_FLOATS];
shared int accumulators[ACCUMULATORS];
shared uint row_has_nan[ROWS_PER_GROUP];
// Labels from integer totals (the many-outputs argmax of a labels-only batch): each row's largest total
// and its label.
shared int row_top[ROWS_PER_GROUP];
shared int row_label[ROWS_PER_GROUP];

float feature_value(uint local_row, uint global_row, uint feature) {
    if (STAGE_INPUT) {
        return staged[local_row * N_FEATURES + feature];
    }
    return rows[global_row * N_FEATURES + feature];
}

// Whether a row goes left at an internal node (`node_head`: its first word, with the NaN flag, and its
// threshold's bits) splitting on `feature`.
bool goes_left(uvec2 node_head, uint feature, uint local_row, uint row) {
    const float x = feature_value(local_row, row, min(feature, N_FEATURES - 1u));
    if (REJECT_NAN) {
        // Rows with a NaN get the NAN_ROW label whatever they walk, so a non-NaN value is all a walk
        // compares: the NaN flag's test would only add instructions to every level.
        return x <= uintBitsToFloat(node_head.y);
    }
    return x <= uintBitsToFloat(node_head.y) || (isnan(x) && (node_head.x & FLAG_BIT) != 0u);
}

void add_weight(uint local_row, uint output_index, uint weight_bits) {
    if (output_index >= N_OUTPUTS) {
        return;
    }
    const uint index = local_row * N_OUTPUTS + output_index;
    if (FLOAT_ACCUMULATE) {
        // Each round at least one of the (at most GROUP_SIZE) contending invocations succeeds, so
        // GROUP_SIZE + 1 rounds always suffice: the loop is bounded.
        int seen = accumulators[index];
        for (uint attempt = 0u; attempt <= GROUP_SIZE; ++attempt) {
            const int expected = seen;
            seen = atomicCompSwap(accumulators[index], expected,
                                  floatBitsToInt(intBitsToFloat(expected) + uintBitsToFloat(weight_bits)));
            if (seen == expected) {
                break;
            }
        }
    } else {
        atomicAdd(accumulators[index], int(weight_bits));
    }
}

// The f32 nearest to total / (DIVISOR * 2^FIXED_SCALE_LOG2), ties to even, with integer operations only,
// so that no rounding mode, contraction or denormal mode of the device enters the result: the same steps
// as vknf_forest::exact::ratio_to_f32. Totals never exceed 2^31 in magnitude and DIVISOR is below 2^30,
// so the result is a normal number.
float fixed_to_float(int total) {
    if (total == 0) {
        return 0.0;
    }
    const uint sign = total < 0 ? 0x80000000u : 0u;
    const uint magnitude = total < 0 ? uint(-total) : uint(total);
    // value = (q + r / DIVISOR) * 2^exponent * 2^-FIXED_SCALE_LOG2
    uint q = magnitude / DIVISOR;
    uint r = magnitude % DIVISOR;
    int exponent = 0;
    bool sticky = false;
    // 25 significant bits: 24 for the significand, one to round with; dropped bits go into `sticky`.
    for (uint i = 0u; i < 8u && q >= (1u << 25); ++i) {
        sticky = sticky || (q & 1u) != 0u;
        q >>= 1u;
        exponent += 1;
    }
    if (DIVISOR == 1u) {
        // No remainder (the usual `Sum` aggregate): shift the quotient up in one step.
        if (q < (1u << 24)) {
            const int shift = 24 - findMSB(q);
            q <<= uint(shift);
            exponent -= shift;
        }
    }
    // Long division, one quotient bit a step: r < DIVISOR < 2^31, so 2r fits.
    for (uint i = 0u; i < 64u && q < (1u << 24); ++i) {
        r <<= 1u;
        q <<= 1u;
        if (r >= DIVISOR) {
            r -= DIVISOR;
            q |= 1u;
        }
        exponent -= 1;
    }
    sticky = sticky || r != 0u;
    uint significand = q >> 1u;
    if ((q & 1u) != 0u && (sticky || (significand & 1u) != 0u)) {
        significand += 1u;
    }
    if (significand == (1u << 24)) {
        significand >>= 1u;
        exponent += 1;
    }
    const int biased = exponent + 1 - FIXED_SCALE_LOG2 + 150;
    if (biased < 1 || biased > 254) {
        return 0.0;
    }
    return uintBitsToFloat(sign | (uint(biased) << 23u) | (significand & 0x7fffffu));
}

// Fixed-point total of output o: leaf sum plus base value (wrapping, as the CPU reference adds).
int fixed_total(uint acc_base, uint o) {
    return accumulators[acc_base + o] + int(base_values[o]);
}

// Float accumulation: aggregated value of output o before the binary complement.
float aggregated(uint acc_base, uint o, float divisor) {
    return intBitsToFloat(accumulators[acc_base + o]) / divisor + uintBitsToFloat(base_values[o]);
}

// Value of output o: aggregation, base value and binary complement (CPU reference: same order of steps).
float aggregated_value(uint acc_base, uint o, float divisor) {
    // Nested rather than `&&`: spirq cannot evaluate a LogicalAnd of specialization constants.
    if (BINARY_COMPLEMENT) {
        if (o == 0u && N_OUTPUTS == 2u) {
            if (FLOAT_ACCUMULATE) {
                return 1.0 - aggregated(acc_base, 1u, divisor);
            }
            return fixed_to_float(FIXED_ONE - fixed_total(acc_base, 1u));
        }
    }
    if (FLOAT_ACCUMULATE) {
        return aggregated(acc_base, o, divisor);
    }
    return fixed_to_float(fixed_total(acc_base, o));
}

void main() {
    const uint local_id = gl_LocalInvocationIndex;
    const uint local_row = local_id % ROWS_PER_GROUP;
    const uint lane = local_id / ROWS_PER_GROUP;
    const uint first_row = params.first_row + gl_WorkGroupID.x * ROWS_PER_GROUP;
    const uint row = first_row + local_row;
    const uint rows_here = min(ROWS_PER_GROUP, params.n_rows - min(first_row, params.n_rows));

    for (uint i = local_id; i < ROWS_PER_GROUP * N_OUTPUTS; i += GROUP_SIZE) {
        accumulators[i] = 0;
    }
    if (local_id < ROWS_PER_GROUP) {
        row_has_nan[local_id] = 0u;
    }
    // More outputs than tree lanes: a row's threads share its argmax (below). Not `const`: an expression
    // of specialization constants would become an OpSpecConstantOp, and spirq evaluates no ordering.
    uint tree_lanes = TREE_LANES;
    const bool many_outputs = N_OUTPUTS > tree_lanes;
    // Only those forests use the integer argmax's arrays; others leave them untouched, so a driver may
    // drop them.
    if (many_outputs && local_id < ROWS_PER_GROUP) {
        row_top[local_id] = int(0x80000000u);
        row_label[local_id] = 0x7fffffff;
    }
    barrier();
    if (STAGE_INPUT) {
        const uint count = rows_here * N_FEATURES;
        const uint base = first_row * N_FEATURES;
        for (uint i = local_id; i < count; i += GROUP_SIZE) {
            const float value = rows[base + i];
            staged[i] = value;
            if (REJECT_NAN) {
                if (isnan(value)) {
                    row_has_nan[i / N_FEATURES] = 1u;
                }
            }
        }
    } else if (REJECT_NAN) {
        const uint count = rows_here * N_FEATURES;
        const uint base = first_row * N_FEATURES;
        for (uint i = local_id; i < count; i += GROUP_SIZE) {
            if (isnan(rows[base + i])) {
                row_has_nan[i / N_FEATURES] = 1u;
            }
        }
    }
    barrier();

    if (local_row < rows_here && lane < TREE_LANES) {
        for (uint tree = lane; tree < params.n_trees; tree += TREE_LANES) {
            uint node = tree_roots[tree];
            uvec2 head = uvec2(0u);
            // Pairs per node: 1 (compact) or 2 (wide: the absolute left child in the second pair).
            const uint node_pairs = NODE_WORDS / 2u;
            // Node blocks: `node` is a block index and n_nodes the block count; each step decides two
            // levels, so MAX_DEPTH / 2 + 1 steps reach any leaf.
            for (uint step = 0u; NODE_WORDS == 8u && step * 2u <= MAX_DEPTH && node < params.n_nodes; ++step) {
                const uvec4 upper = node_blocks[node * 2u];
                const uvec4 lower = node_blocks[node * 2u + 1u];
                head = upper.xy;
                if ((head.x & LEAF_BIT) != 0u) {
                    break;
                }
                const bool left = goes_left(head, head.x & LOW30, local_row, row);
                head = left ? upper.zw : lower.xy;
                if ((head.x & LEAF_BIT) != 0u) {
                    break;
                }
                // The right child's children follow the left child's, when it has any.
                const uint skip = (!left && (upper.z & LEAF_BIT) == 0u) ? 2u : 0u;
                node = lower.z + skip + (goes_left(head, head.x & LOW30, local_row, row) ? 0u : 1u);
            }
            for (uint depth = 0u; NODE_WORDS != 8u && depth <= MAX_DEPTH && node < params.n_nodes; ++depth) {
                head = nodes[node * node_pairs];
                if ((head.x & LEAF_BIT) != 0u) {
                    break;
                }
                uint feature;
                uint left;
                if (NODE_WORDS == 2u) {
                    feature = (head.x >> COMPACT_FEATURE_SHIFT) & COMPACT_FEATURE_MASK;
                    left = node + (head.x & COMPACT_DELTA_MASK);
                } else {
                    feature = head.x & LOW30;
                    left = nodes[node * node_pairs + 1u].x;
                }
                node = goes_left(head, feature, local_row, row) ? left : left + 1u;
            }
            if (node >= params.n_nodes || (head.x & LEAF_BIT) == 0u) {
                continue;
            }
            if ((head.x & FLAG_BIT) != 0u) {
                add_weight(local_row, head.x & LOW30, head.y);
            } else {
                const uint count = head.x & LOW30;
                for (uint k = 0u; k < count && head.y + k < params.n_entries; ++k) {
                    const uvec2 entry = leaf_entries[head.y + k];
                    add_weight(local_row, entry.x, entry.y);
                }
            }
        }
    }
    barrier();

    const float divisor = AGGREGATE == 1u ? float(max(params.n_trees, 1u)) : 1.0;
    const uint acc_base = local_row * N_OUTPUTS;
    if (many_outputs) {
        // Many outputs: a row's tree threads turn its totals into scores together (output o by thread
        // o % TREE_LANES). Each thread keeps its best (ties to the lowest index) and leaves its best
        // value in the accumulator of its first output; every thread then finds the row's best value
        // among them, the threads holding it offer their indices, and the lowest wins (in the
        // accumulator of output TREE_LANES, which thread 0 has read by then): the same label as one
        // thread scanning every output in order.
        const bool owns_row = local_row < rows_here && lane < TREE_LANES;
        // Labels only, in fixed point: the label is the lowest output whose value equals the largest, and
        // values grow with totals (a correctly rounded division), so the largest total gives the largest
        // value and only totals that can round to the same f32 need converting: those within 2^-22 of it
        // (24 significant bits). One conversion a thread instead of one an output. Set in steps: spirq
        // evaluates no LogicalAnd of specialization constants.
        bool labels_from_totals = params.write_scores == 0u;
        if (FLOAT_ACCUMULATE) {
            labels_from_totals = false;
        }
        if (BINARY_COMPLEMENT) {
            labels_from_totals = false;
        }
        if (labels_from_totals) {
            if (owns_row) {
                int top = fixed_total(acc_base, lane);
                for (uint o = lane + TREE_LANES; o < N_OUTPUTS; o += TREE_LANES) {
                    top = max(top, fixed_total(acc_base, o));
                }
                atomicMax(row_top[local_row], top);
            }
            barrier();
            if (owns_row) {
                const int top = row_top[local_row];
                const float top_value = fixed_to_float(top);
                // In unsigned arithmetic, which wraps: |top| (also of the smallest int), and top - total,
                // which lies in [0, 2^32) since no total exceeds top.
                const uint magnitude = top < 0 ? ~uint(top) + 1u : uint(top);
                const uint near = (magnitude >> 22u) + 1u;
                for (uint o = lane; o < N_OUTPUTS; o += TREE_LANES) {
                    const int total = fixed_total(acc_base, o);
                    if (total == top || (uint(top) - uint(total) <= near && fixed_to_float(total) == top_value)) {
                        atomicMin(row_label[local_row], int(o));
                        break;
                    }
                }
            }
            barrier();
            if (lane == 0u && local_row < rows_here) {
                labels[row] = row_has_nan[local_row] != 0u ? NAN_ROW : uint(row_label[local_row]);
            }
            return;
        }
        float best = 0.0;
        uint best_index = 0u;
        if (owns_row) {
            for (uint o = lane; o < N_OUTPUTS; o += TREE_LANES) {
                const float value = aggregated_value(acc_base, o, divisor);
                if (o == lane || value > best) {
                    best = value;
                    best_index = o;
                }
                if (params.write_scores != 0u) {
                    scores[row * N_OUTPUTS + o] = value;
                }
            }
            accumulators[acc_base + lane] = floatBitsToInt(best);
            if (lane == 0u) {
                accumulators[acc_base + TREE_LANES] = 0x7fffffff;
            }
        }
        barrier();
        if (owns_row) {
            float top = intBitsToFloat(accumulators[acc_base]);
            for (uint other = 1u; other < TREE_LANES; ++other) {
                top = max(top, intBitsToFloat(accumulators[acc_base + other]));
            }
            if (best == top) {
                atomicMin(accumulators[acc_base + TREE_LANES], int(best_index));
            }
        }
        barrier();
        if (lane == 0u && local_row < rows_here) {
            const uint winner = uint(accumulators[acc_base + TREE_LANES]);
            labels[row] = row_has_nan[local_row] != 0u ? NAN_ROW : winner;
        }
        return;
    }
    if (lane == 0u && local_row < rows_here) {
        float best = 0.0;
        uint best_index = 0u;
        for (uint o = 0u; o < N_OUTPUTS; ++o) {
            const float value = aggregated_value(acc_base, o, divisor);
            // Ties go to the lowest index, as numpy's argmax does.
            if (o == 0u || value > best) {
                best = value;
                best_index = o;
            }
            if (params.write_scores != 0u) {
                scores[row * N_OUTPUTS + o] = value;
            }
        }
        labels[row] = row_has_nan[local_row] != 0u ? NAN_ROW : best_index;
    }
}
