#version 450
// A generic network function whose kernel time the caller chooses: each request row (u32) is a number
// of steps of a linear congruential generator, and the output row (u32) the generator's value after
// them, seeded with the row's index. For drills of kernel deadlines, quarantine and isolation between
// functions: a million rows of 60,000 steps run for seconds on lavapipe, a row of 0 returns at once.
// Keep steps below 65,536: llvmpipe (lavapipe) ends any loop after 65,535 iterations.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WORKGROUP_SIZE = 64;

layout(set = 0, binding = 0) readonly buffer Rows { uint rows[]; };
layout(set = 0, binding = 1) writeonly buffer Values { uint values[]; };
layout(push_constant) uniform Params { uint n_rows; } params;

void main() {
    const uint row = gl_GlobalInvocationID.x;
    if (row >= params.n_rows) {
        return;
    }
    uint value = row;
    const uint steps = rows[row];
    for (uint i = 0u; i < steps; ++i) {
        value = value * 1664525u + 1013904223u;
    }
    values[row] = value;
}
