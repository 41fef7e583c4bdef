#![no_main]
//! The GGUF header / metadata / tensor-info parser, the spec mapping and the tokenizer
//! export must never panic. Each input is parsed twice: as a whole file, and as the
//! start of a larger one (so that the real metadata of a large model, given without its
//! tensor data, reaches the spec mapping and the tokenizer export).
use libfuzzer_sys::fuzz_target;

fn exercise(meta: &airllm_format::gguf::GgufMetadata) {
    let _ = airllm_format::gguf::spec_from_metadata(meta, None);
    let _ = airllm_format::gguf::export_tokenizer(meta);
    let _ = meta.type_histogram();
}

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("x.gguf");
    if let Ok(meta) = airllm_format::gguf::GgufMetadata::parse(data, path) {
        exercise(&meta);
    }
    if let Ok(meta) = airllm_format::gguf::GgufMetadata::parse_prefix(data, 1 << 40, path) {
        exercise(&meta);
    }
});
