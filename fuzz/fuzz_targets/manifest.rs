#![no_main]
//! `manifest.json` parsing and validation must never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = airllm_format::Manifest::parse(data, std::path::Path::new("manifest.json"));
});
