//! `--json-schema` / `--grammar`: whatever the model would say, the output parses and
//! matches. On a random-weight fixture (which left alone writes byte soup) and, where
//! its GGUF is present, on SmolLM2-135M.

#![cfg(feature = "constrain")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

use std::path::{Path, PathBuf};
use std::process::Command;

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn has_gpu() -> bool {
    let ok = airllm_gpu::GpuContext::new(&Default::default()).is_ok();
    assert!(ok || std::env::var_os("CI").is_none(), "CI must have lavapipe");
    ok
}

fn generate(model: &Path, shards: &Path, extra: &[&str]) -> serde_json::Value {
    let o = Command::new(env!("CARGO_BIN_EXE_airllm"))
        .env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .args(["generate", "--model"])
        .arg(model)
        .arg("--shards-dir")
        .arg(shards)
        .args(extra)
        .arg("--json")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    v["generations"][0].clone()
}

#[test]
fn schema_constrained_output_is_valid_json_on_a_random_model() {
    if !has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let schema = tmp.path().join("s.json");
    std::fs::write(
        &schema,
        serde_json::json!({
            "type": "object",
            "properties": {
                "ok": {"type": "boolean"},
                "tag": {"enum": ["red", "green", "blue"]},
                "n": {"type": "integer", "minimum": 0, "maximum": 99},
            },
            "required": ["ok", "tag", "n"],
            "additionalProperties": false,
            "x-guidance": {"whitespace_flexible": false},
        })
        .to_string(),
    )
    .unwrap();
    for (family, temp) in [("qwen3", "0"), ("llama", "0.9")] {
        let g = generate(
            &fixture(family),
            &tmp.path().join(family),
            &[
                "-p",
                "The cat sat",
                "-n",
                "60",
                "--temp",
                temp,
                "--seed",
                "7",
                "--json-schema",
                schema.to_str().unwrap(),
            ],
        );
        assert_eq!(g["finish"], "eos", "{family}: {g}");
        let text = g["text"].as_str().unwrap();
        let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{family}: {text:?}: {e}"));
        let o = v.as_object().unwrap();
        assert_eq!(o.len(), 3, "{text}");
        assert!(o["ok"].is_boolean(), "{text}");
        assert!(["red", "green", "blue"].contains(&o["tag"].as_str().unwrap()), "{text}");
        assert!(o["n"].as_u64().unwrap() <= 99, "{text}");
    }
    // A grammar in GBNF, as llama.cpp takes it.
    let gbnf = tmp.path().join("g.gbnf");
    std::fs::write(&gbnf, "root ::= \"yes\" | \"no\" | number\nnumber ::= [1-9] [0-9]{0,2}\n").unwrap();
    let g = generate(
        &fixture("qwen3"),
        &tmp.path().join("qwen3"),
        &["-p", "Answer:", "-n", "10", "--grammar", gbnf.to_str().unwrap()],
    );
    let t = g["text"].as_str().unwrap();
    assert!(t == "yes" || t == "no" || (t.len() <= 3 && t.parse::<u32>().is_ok()), "{t:?}");
}

#[test]
fn smollm2_writes_json_for_a_schema() {
    let Some(gguf) = airllm_format::gguf::smollm2_path() else {
        assert!(std::env::var_os("CI").is_none(), "CI must fetch SmolLM2 (see .ci/run)");
        eprintln!("skipping: SmolLM2 GGUF not found");
        return;
    };
    if !has_gpu() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let schema = tmp.path().join("s.json");
    std::fs::write(
        &schema,
        serde_json::json!({
            "type": "object",
            "properties": {"name": {"type": "string", "maxLength": 20}, "capital": {"type": "string", "maxLength": 20}},
            "required": ["name", "capital"],
            "additionalProperties": false,
        })
        .to_string(),
    )
    .unwrap();
    let g = generate(
        &gguf,
        &tmp.path().join("s"),
        &[
            "--chat",
            "-p",
            "Describe France as JSON with its name and capital.",
            "-n",
            "48",
            "--json-schema",
            schema.to_str().unwrap(),
        ],
    );
    let text = g["text"].as_str().unwrap();
    let v: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
    assert!(v["name"].is_string() && v["capital"].is_string() && v.as_object().unwrap().len() == 2, "{text}");
    eprintln!("SmolLM2 under the schema: {text}");
}
