#version 450
#extension GL_KHR_shader_subgroup_arithmetic : require
// Sums `n` unsigned integers: each subgroup reduces its lanes with subgroupAdd, then one lane
// adds the subgroup's total to the result with a single atomic.
layout(local_size_x = 128) in;

layout(set = 0, binding = 0) readonly buffer Input { uint values[]; };
layout(set = 0, binding = 1) buffer Result { uint total; };
layout(push_constant) uniform Params { uint n; } params;

void main() {
    uint i = gl_GlobalInvocationID.x;
    uint value = i < params.n ? values[i] : 0u;
    uint subgroup_total = subgroupAdd(value);
    if (subgroupElect()) {
        atomicAdd(total, subgroup_total);
    }
}
