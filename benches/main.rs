//! criterion benchmarks of airllm-rs: one binary, one module per stage.
//!
//! Run all with `cargo bench -p airllm-benches`, or one stage with a filter,
//! e.g. `cargo bench -p airllm-benches -- codec/`. Group ids read
//! `{stage}/{op}/{variant}`; GPU groups start with the adapter name.

use criterion::{criterion_group, criterion_main};

mod codec;
mod io;
mod kernels;
mod shard;

criterion_group!(benches, codec::benches, io::benches, kernels::benches, shard::benches);
criterion_main!(benches);
