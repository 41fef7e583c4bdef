#![no_main]
//! The 256-byte shard file header parser must never panic; a header that parses must
//! encode back to the same bytes (every field is read, and reserved bytes are zero).
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(h) = airllm_format::shard_file::ShardHeader::parse(data, std::path::Path::new("x.shard")) {
        assert_eq!(&h.to_bytes()[..], &data[..airllm_format::shard_file::HEADER_LEN], "round trip");
    }
});
