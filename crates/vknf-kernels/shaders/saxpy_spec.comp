#version 450
// y = alpha * x + y, scaled by a compile-time power: exercises push constants and named
// specialization constants of several types.
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WORKGROUP_SIZE = 32;
layout(constant_id = 1) const float SCALE = 1.0;
layout(constant_id = 2) const bool NEGATE = false;

layout(set = 0, binding = 0) readonly buffer X { float x[]; };
layout(set = 0, binding = 1) buffer Y { float y[]; };
layout(push_constant) uniform Params {
    float alpha;
    uint n;
    uint offset;
} params;

void main() {
    uint i = gl_GlobalInvocationID.x + params.offset;
    if (i < params.n) {
        float r = (params.alpha * x[i] + y[i]) * SCALE;
        y[i] = NEGATE ? -r : r;
    }
}
