//! The soak behind `bench-soak`: a real `vknf serve` process under good load (answers checked against
//! the CPU reference) and every hostile client at once, sampled every second, judged at the end.

pub mod counters;
pub mod good;
pub mod hostile;
pub mod net;
pub mod sampler;
pub mod server;
pub mod summary;
pub mod workload;
