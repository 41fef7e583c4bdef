#![no_main]
//! The safetensors header parser (through the checkpoint reader) must never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = airllm_format::parse_safetensors_header(data, std::path::Path::new("x.safetensors"));
});
