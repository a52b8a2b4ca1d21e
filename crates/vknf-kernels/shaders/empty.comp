#version 450
// Does nothing: measures the cost of a dispatch round trip.
layout(local_size_x = 1) in;
void main() {}
