//! `airllm generate` as a script uses it: one JSON line, JSON-lines streams parsed
//! event by event (same shape for one prompt or many), stop strings that never
//! reach the text, prompts from files and stdin, seeds, validated sampling values
//! with errors that name the option, and a quiet exit when stdout closes.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn has_gpu() -> bool {
    let ok = airllm_gpu::GpuContext::new(&Default::default()).is_ok();
    assert!(ok || std::env::var_os("CI").is_none(), "CI must have lavapipe");
    ok
}

fn airllm(shards: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airllm"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .args(["generate", "--model"])
        .arg(fixture("qwen3"))
        .arg("--shards-dir")
        .arg(shards);
    c
}

const PROMPT0: &str = "0,293,437,382,310,262,271,264,14,278,262,386,73";

fn golden_ids() -> Vec<u64> {
    let g: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("qwen3").join("golden.json")).unwrap()).unwrap();
    g["greedy"]["new_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

fn run_ok(c: &mut Command) -> (String, String) {
    let o = c.output().unwrap();
    let (out, err) = (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned());
    assert!(o.status.success(), "failed:\n{err}");
    (out, err)
}

#[test]
fn errors_name_the_option_and_no_internal_types() {
    let tmp = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--temperature", "-1"], "--temperature"),
        (&["--temp", "nan"], "--temperature"),
        (&["--top-p", "0"], "--top-p"),
        (&["--top-p", "1.5"], "--top-p"),
        (&["--repetition-penalty", "0"], "--repetition-penalty"),
        (&["-n", "0"], "--max-new-tokens"),
        (&["--stop", ""], "--stop"),
        (&["--compression", "3bit"], "3bit"),
        (&["--read-mode", "sideways"], "sideways"),
        (&["--max-vram", "lots"], "size"),
        (&["--json-schema", "/no/such/schema.json"], "/no/such/schema.json"),
    ];
    for (args, want) in cases {
        let o = airllm(tmp.path()).args(["--prompt", "hi"]).args(*args).output().unwrap();
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
        for internal in ["Some(", "None", "Err(", "Ok(", "Error {", "EngineError", "QuantError", "IoError", "Unknown"] {
            assert!(!err.contains(internal), "{args:?} shows an internal name {internal:?}: {err}");
        }
    }
    let o = airllm(tmp.path()).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--prompt"));
}

#[test]
fn json_is_one_line_and_jsonl_streams_events() {
    if !has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let (out, _) = run_ok(airllm(tmp.path()).args(["--prompt-ids", PROMPT0, "-n", "24", "--json"]));
    assert_eq!(out.trim_end().lines().count(), 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let ids: Vec<u64> =
        v["generations"][0]["new_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(ids, golden_ids());
    assert_eq!(v["generations"][0]["finish"], "length");
    assert!(v["seed"].is_u64() && v["timings"]["per_token_s"].as_f64().unwrap() > 0.0);

    // JSON lines: one token event per new id, a done event per prompt, a summary; two prompts.
    let (out, _) = run_ok(airllm(tmp.path()).args(["-p", "The cat sat", "-p", "On 12 March", "-n", "6", "--jsonl"]));
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let last = events.last().unwrap();
    assert_eq!(last["event"], "summary");
    assert_eq!(last["generations"], 2);
    for seq in 0..2u64 {
        let toks: Vec<&serde_json::Value> =
            events.iter().filter(|e| e["event"] == "token" && e["seq"] == seq).collect();
        let done = events.iter().find(|e| e["event"] == "done" && e["seq"] == seq).unwrap();
        let ids: Vec<u64> = toks.iter().map(|e| e["id"].as_u64().unwrap()).collect();
        assert_eq!(serde_json::json!(ids), done["new_ids"], "seq {seq}");
        let streamed: String = toks.iter().map(|e| e["text"].as_str().unwrap()).collect();
        assert!(done["text"].as_str().unwrap().starts_with(&streamed), "seq {seq}");
    }
    // One prompt has the same shape.
    let (out, _) = run_ok(airllm(tmp.path()).args(["-p", "The cat sat", "-n", "3", "--jsonl"]));
    let kinds: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(kinds, ["token", "token", "token", "done", "summary"]);
}

#[test]
fn stop_strings_never_reach_the_text() {
    if !has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    // Generate greedily once, then stop at a piece from the middle of that text.
    let (out, _) = run_ok(airllm(tmp.path()).args(["-p", "The cat sat on the mat", "-n", "24", "--json"]));
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    let full = v["generations"][0]["text"].as_str().unwrap().to_owned();
    let chars: Vec<char> = full.chars().collect();
    assert!(chars.len() > 8, "{full:?}");
    let stop: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
    let cut = &full[..full.find(&stop).unwrap()];
    let (out, _) =
        run_ok(airllm(tmp.path()).args(["-p", "The cat sat on the mat", "-n", "24", "--jsonl", "--stop", &stop]));
    let events: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let done = events.iter().find(|e| e["event"] == "done").unwrap();
    assert_eq!(done["text"], cut);
    assert_eq!(done["finish"], "stop");
    let streamed: String =
        events.iter().filter(|e| e["event"] == "token").map(|e| e["text"].as_str().unwrap()).collect();
    assert_eq!(streamed, cut, "the stream showed part of the stop string {stop:?}");
    // Plain streaming prints the same cut text.
    let (out, _) = run_ok(airllm(tmp.path()).args(["-p", "The cat sat on the mat", "-n", "24", "--stop", &stop]));
    assert_eq!(out.trim_end_matches('\n'), cut);
}

#[test]
fn prompts_from_files_and_stdin_seeds_and_a_closed_stdout() {
    if !has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("p.txt");
    std::fs::write(&file, "The cat sat on the mat").unwrap();
    let (a, _) = run_ok(airllm(tmp.path()).arg("-f").arg(&file).args(["-n", "5", "--json", "--seed", "1"]));
    let mut c = airllm(tmp.path());
    let mut child = c
        .args(["-f", "-", "-n", "5", "--json", "--seed", "1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"The cat sat on the mat").unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let ids =
        |s: &str| serde_json::from_str::<serde_json::Value>(s.trim()).unwrap()["generations"][0]["new_ids"].clone();
    assert_eq!(ids(&a), ids(&String::from_utf8_lossy(&o.stdout)));

    // Sampling: a random seed by default, printed; the same seed gives the same ids.
    let sample = ["-p", "The cat", "-n", "8", "--temp", "1.0"];
    let (_, err) = run_ok(airllm(tmp.path()).args(sample));
    let seed: String =
        err.lines().find_map(|l| l.strip_prefix("seed ")).unwrap().split_whitespace().next().unwrap().into();
    let (x, _) = run_ok(airllm(tmp.path()).args(sample).args(["--seed", &seed, "--json"]));
    let (y, _) = run_ok(airllm(tmp.path()).args(sample).args(["--seed", &seed, "--json"]));
    assert_eq!(ids(&x), ids(&y));

    // `| head -c 1`: the reader goes away; no panic, a quiet exit.
    let mut child = airllm(tmp.path())
        .args(["-p", "The cat", "-n", "200", "--ignore-eos", "--jsonl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    std::io::Read::read_exact(&mut stdout, &mut one).unwrap();
    drop(stdout);
    let o = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success() && !err.contains("panicked") && !err.contains("error"), "{:?}: {err}", o.status);
}
