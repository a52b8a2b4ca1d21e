#version 450
// Busy-loops for `iterations` steps, then writes the result: a kernel that deliberately runs past
// its deadline, for testing timeouts. The loop is bounded, so the device always finishes it.
layout(local_size_x = 1) in;
layout(set = 0, binding = 0) buffer Out { uint value; };
layout(push_constant) uniform Params { uint iterations; } params;

void main() {
    uint x = 1u;
    for (uint i = 0u; i < params.iterations; ++i) {
        x = x * 1664525u + 1013904223u;
    }
    value = x;
}
