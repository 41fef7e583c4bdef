//! Shared helpers for the integration tests.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};

pub const FAMILIES: [&str; 9] = ["llama", "mistral", "qwen2", "qwen3", "mixtral", "qwen3_moe", "phi3", "gemma", "glm"];

/// `testdata/tiny/<family>` in the repository.
pub fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

/// Copy a fixture into a fresh temporary directory (for tests that modify it).
pub fn copy_fixture(family: &str, to: &Path) -> PathBuf {
    let dst = to.join(family);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(family)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

pub fn quiet() -> airllm_format::ShardOptions {
    airllm_format::ShardOptions { progress: false, ..Default::default() }
}
