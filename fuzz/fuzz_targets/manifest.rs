#![no_main]
//! `manifest.json` parsing and validation must never panic, and a manifest that
//! validates must survive a round trip through its own JSON unchanged.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("manifest.json");
    if let Ok(m) = airllm_format::Manifest::parse(data, path) {
        let _ = m.head_units();
        let _ = m.total_bytes();
        let again = airllm_format::Manifest::parse(m.to_json().as_bytes(), path).expect("a valid manifest re-parses");
        assert_eq!(again, m, "round trip");
    }
});
