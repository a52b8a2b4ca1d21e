#version 450
// A generic network function on integer inputs (wired by a manifest's `vknf.io/abi`): an access-control
// list over IPv4 flows. Each request row is (source address, destination port) as u32, taken bit for bit;
// the resident rules (from the "model" bytes) are (network, netmask, first port, last port) as u32. Outputs
// per row: the index of the first matching rule, or -1 (i32), and the source's /24 network (u32).
layout(local_size_x_id = 0) in;
layout(constant_id = 0) const uint WORKGROUP_SIZE = 64;
layout(constant_id = 1) const uint N_RULES = 1;

layout(set = 0, binding = 0) readonly buffer Rows { uint rows[]; };
layout(set = 0, binding = 1) readonly buffer Rules { uint rules[]; };
layout(set = 0, binding = 2) writeonly buffer Matches { int matches[]; };
layout(set = 0, binding = 3) writeonly buffer Networks { uint networks[]; };
layout(push_constant) uniform Params { uint n_rows; } params;

void main() {
    const uint row = gl_GlobalInvocationID.x;
    if (row >= params.n_rows) {
        return;
    }
    const uint address = rows[row * 2u];
    const uint port = rows[row * 2u + 1u];
    int found = -1;
    for (uint i = 0u; i < N_RULES; ++i) {
        const uint network = rules[i * 4u];
        const uint mask = rules[i * 4u + 1u];
        if ((address & mask) == network && port >= rules[i * 4u + 2u] && port <= rules[i * 4u + 3u]) {
            found = int(i);
            break;
        }
    }
    matches[row] = found;
    networks[row] = address & 0xFFFFFF00u;
}
