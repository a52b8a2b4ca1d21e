#version 450
// Steps a linear congruential generator `iterations` times in memory: a kernel that deliberately runs
// past its deadline, for testing timeouts. `coherent` keeps every step a real memory operation, so no
// compiler can shorten the loop; the loop is bounded, so the device always finishes it.
layout(local_size_x = 1) in;
layout(set = 0, binding = 0) coherent buffer State { uint value; };
layout(push_constant) uniform Params { uint iterations; } params;

void main() {
    for (uint i = 0u; i < params.iterations; ++i) {
        value = value * 1664525u + 1013904223u;
    }
}
