#![no_main]
//! The 256-byte shard file header parser must never panic.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = airllm_format::shard_file::ShardHeader::parse(data, std::path::Path::new("x.shard"));
});
