//! Shared by the benchmarks (written next).
