#![no_main]
//! The GGUF header / metadata / tensor-info parser and the spec mapping must never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("x.gguf");
    if let Ok(meta) = airllm_format::gguf::GgufMetadata::parse(data, path) {
        let _ = airllm_format::gguf::spec_from_metadata(&meta, None);
    }
});
