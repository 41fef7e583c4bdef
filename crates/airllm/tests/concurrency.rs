//! Concurrent first use through the CLI: processes that shard the same model into
//! the same directory at once all succeed; the later ones wait (saying so) and reuse
//! the finished shards.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn copy_fixture(family: &str, to: &Path) -> PathBuf {
    let dst = to.join(family);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(family)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

fn spawn(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_airllm"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Wait with a timeout (a hang is a failure, not a stuck test run).
fn finish(mut c: Child, what: &str) -> Output {
    let t = Instant::now();
    while c.try_wait().unwrap().is_none() {
        if t.elapsed() > Duration::from_secs(120) {
            let _ = c.kill();
            panic!("{what} hung");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    c.wait_with_output().unwrap()
}

fn ok(o: &Output, what: &str) {
    assert_eq!(o.status.code(), Some(0), "{what}: {}", String::from_utf8_lossy(&o.stderr));
}

/// While another writer holds the directory, `airllm shard` waits with a message,
/// then keeps the shards that writer finished.
#[test]
fn shard_waits_for_the_writer_holding_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("qwen2", tmp.path());
    let out = tmp.path().join("shards");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    // A first writer: made the shards, still holds the lock.
    airllm_format::write_shards(
        &airllm_format::Checkpoint::open(&model).unwrap(),
        &out,
        &airllm_format::ShardOptions { progress: false, ..Default::default() },
    )
    .unwrap();
    let lock = airllm_format::lock::DirLock::acquire(&out).unwrap();
    let waiting: Vec<Child> = (0..2).map(|_| spawn(&["shard", m, "--out", o, "--json"])).collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut waiting: Vec<Child> = waiting;
    for c in &mut waiting {
        assert!(c.try_wait().unwrap().is_none(), "a second writer did not wait for the lock");
    }
    drop(lock);
    for (i, c) in waiting.into_iter().enumerate() {
        let out = finish(c, "shard");
        ok(&out, "shard");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("another airllm process is writing shards"), "{i}: {err}");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(report["written"], 0, "{i}: {report}");
    }
    airllm_format::ShardDir::open(&out).unwrap().verify_all().unwrap();
}

/// Several `airllm shard` processes started at once on one model and directory.
#[test]
fn simultaneous_shard_commands_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("mixtral", tmp.path());
    let out = tmp.path().join("shards");
    let (m, o) = (model.to_str().unwrap(), out.to_str().unwrap());
    let children: Vec<Child> = (0..3).map(|_| spawn(&["shard", m, "--out", o, "--json"])).collect();
    let mut written = Vec::new();
    for c in children {
        let out = finish(c, "shard");
        ok(&out, "shard");
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        written.push(report["written"].as_u64().unwrap());
    }
    let n = airllm_format::ShardDir::open(&out).unwrap().manifest().shards.len() as u64;
    written.sort();
    // Exactly one process wrote the shards; the others kept them.
    assert_eq!(written, vec![0, 0, n], "{written:?}");
    airllm_format::ShardDir::open(&out).unwrap().verify_all().unwrap();
}

/// Two `airllm generate` calls on a checkpoint's first use (the shard directory is
/// made beside it) give the same answer.
#[test]
fn simultaneous_first_use_generate() {
    if airllm_gpu::GpuContext::new(&Default::default()).is_err() {
        assert!(std::env::var_os("CI").is_none(), "CI must have a GPU adapter (lavapipe)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_fixture("qwen2_bf16", tmp.path());
    let m = model.to_str().unwrap();
    let args = ["generate", "--model", m, "--prompt-ids", "0,5,6,7", "--max-new-tokens", "5", "--json"];
    let children: Vec<Child> = (0..2).map(|_| spawn(&args)).collect();
    let mut ids = Vec::new();
    for c in children {
        let out = finish(c, "generate");
        ok(&out, "generate");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let new = v["generations"][0]["new_ids"].clone();
        assert_eq!(new.as_array().map(Vec::len), Some(5), "generate --json: {v}");
        ids.push(new);
    }
    assert_eq!(ids[0], ids[1]);
    assert!(tmp.path().join("qwen2_bf16.airllm-shards-none").join("manifest.json").is_file());
}
