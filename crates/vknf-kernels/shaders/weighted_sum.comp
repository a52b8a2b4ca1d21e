#version 450
// A small generic network function (wired by a manifest's `vknf.io/abi`, not by vknf code): for each
// request row, the weighted sum of its features (weights are resident data from the "model" bytes)
// and the index of its largest feature. One invocation per row.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WORKGROUP_SIZE = 64;
layout(constant_id = 1) const uint WIDTH = 8;

layout(set = 0, binding = 0) readonly buffer Rows { float rows[]; };
layout(set = 0, binding = 1) readonly buffer Weights { float weights[]; };
layout(set = 0, binding = 2) writeonly buffer Sums { float sums[]; };
layout(set = 0, binding = 3) writeonly buffer Largest { uint largest[]; };
layout(push_constant) uniform Params { uint n_rows; } params;

void main() {
    const uint row = gl_GlobalInvocationID.x;
    if (row >= params.n_rows) {
        return;
    }
    float sum = 0.0;
    uint best = 0u;
    for (uint i = 0u; i < WIDTH; ++i) {
        const float value = rows[row * WIDTH + i];
        sum += value * weights[i];
        if (value > rows[row * WIDTH + best]) {
            best = i;
        }
    }
    sums[row] = sum;
    largest[row] = best;
}
