//! The `airllm` binary end to end on a bundled fixture: shard, inspect, info,
//! generate --json (greedy ids equal to transformers') and clear errors.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

fn airllm() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airllm"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir());
    c
}

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn has_gpu() -> bool {
    let ok = airllm_gpu::GpuContext::new(&Default::default()).is_ok();
    assert!(ok || std::env::var_os("CI").is_none(), "CI must have lavapipe");
    ok
}

#[test]
fn shard_inspect_generate() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("shards");
    let o = airllm().args(["shard"]).arg(fixture("qwen3")).arg("--out").arg(&out).args(["--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["shards"], 5);

    let o = airllm().arg("inspect").arg(&out).args(["--max-vram", "64MiB", "--max-context", "64"]).output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success() && text.contains("qwen3") && text.contains("plan"), "{text}");

    if !has_gpu() {
        return;
    }
    // Greedy continuation of prompt 0 must equal the transformers golden.
    let golden: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("qwen3").join("golden.json")).unwrap()).unwrap();
    let ids: Vec<String> =
        [0, 293, 437, 382, 310, 262, 271, 264, 14, 278, 262, 386, 73].iter().map(|i: &i32| i.to_string()).collect();
    let o = airllm()
        .args(["generate", "--model"])
        .arg(&out)
        .args(["--prompt-ids", &ids.join(","), "--max-new-tokens", "24", "--resident-layers", "0", "--json"])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let g = &v["generations"][0];
    let new_ids: Vec<u64> = g["new_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    let want: Vec<u64> = find_greedy(&golden);
    assert_eq!(new_ids, want);
    assert!(v["timings"]["per_token_s"].as_f64().unwrap() > 0.0);
    assert!(g["text"].is_string() && g["prompt_ids"].as_array().unwrap().len() == 13);
}

/// The greedy ids of prompt 0 from golden.json.
fn find_greedy(v: &serde_json::Value) -> Vec<u64> {
    v["greedy"]["new_ids"].as_array().expect("greedy.new_ids").iter().map(|i| i.as_u64().unwrap()).collect()
}

#[test]
fn errors_are_clear_and_exit_nonzero() {
    let o = airllm().args(["generate", "--model", "/no/such/model", "--prompt", "hi"]).output().unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("/no/such/model") && e.contains("no such file"), "{e}");

    let o = airllm()
        .args(["inspect"])
        .arg(fixture("llama"))
        .args(["--max-vram", "10KiB", "--device", "gpu"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--max-vram") && e.contains("minimum"), "{e}");

    let o = airllm().args(["generate", "--model", "x", "--max-vram", "lots", "--prompt", "hi"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("size"));
}

#[test]
fn info_lists_adapters() {
    let o = airllm().args(["info", "--json"]).output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v.is_array());
}

/// `--device auto` with only a software rasterizer (lavapipe here) runs on the CPU
/// executor and says why in the startup line.
#[test]
fn auto_device_says_why_it_chose_the_cpu() {
    let software = match airllm_gpu::GpuContext::new(&Default::default()) {
        Ok(ctx) => ctx.caps().is_software(),
        Err(_) => false,
    };
    let tmp = tempfile::tempdir().unwrap();
    let o = airllm()
        .args(["generate", "--model", fixture("llama").to_str().unwrap(), "--prompt-ids", "0,5,6", "-n", "1"])
        .arg("--shards-dir")
        .arg(tmp.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    if software {
        assert!(err.contains("every unit on the CPU executor: ") && err.contains("software rasterizer"), "{err}");
    }
}
