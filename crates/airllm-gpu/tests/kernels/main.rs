//! GPU kernel tests against the CPU references, on random inputs (seed
//! printed; replay with AIRLLM_TEST_SEED) at odd sizes, with and without
//! subgroups. Skipped (passing) when no adapter exists.

mod attention;
mod common;
mod elementwise;
mod infra;
mod kv_compact;
mod matmul;
mod moe_sparse;
mod norm_rope;
