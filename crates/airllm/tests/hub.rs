//! Downloads from a local stand-in for the Hugging Face Hub (tests/common/hub_server.rs):
//! the standard cache layout, resumed transfers, refused corrupt blobs, offline
//! mode, GGUF tag selection, and the CLI (`airllm pull`, `--model ORG/NAME` on first use,
//! `airllm list`, `airllm rm`).

#![cfg(feature = "hub")]
#![allow(clippy::unwrap_used, clippy::expect_used)] // test helpers: a panic is the failure report

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use airllm::hub::{HubConfig, HubError, PullOptions, pull};
use common::hub_server::{File, HubServer, Repo, fixture_repo};

fn fixture(family: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/tiny").join(family)
}

fn server() -> HubServer {
    let gguf = Repo {
        id: "test/tiny-gguf".into(),
        commit: "fedcba9876543210fedcba9876543210fedcba98".into(),
        files: vec![
            File { path: "README.md".into(), bytes: b"# tiny".to_vec(), lfs: false },
            File { path: "tiny.Q4_0.gguf".into(), bytes: vec![1; 3000], lfs: true },
            File { path: "tiny.Q8_0.gguf".into(), bytes: vec![2; 5000], lfs: true },
        ],
    };
    HubServer::start(vec![fixture_repo("test/tiny-llama", &fixture("llama")), gguf], Duration::from_secs(120))
}

fn config(srv: &HubServer, cache: &Path) -> HubConfig {
    HubConfig { endpoint: srv.url.clone(), token: Some("hf_test".into()), cache_dir: cache.to_owned(), offline: false }
}

fn no_retries() -> PullOptions {
    PullOptions { retries: 0, ..PullOptions::default() }
}

#[test]
fn pull_writes_the_standard_cache_layout() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let p = pull(&config(&srv, tmp.path()), "test/tiny-llama", &no_retries()).unwrap();
    let repo_dir = tmp.path().join("models--test--tiny-llama");
    assert_eq!(p.commit, "0123456789abcdef0123456789abcdef01234567");
    assert_eq!(p.snapshot, repo_dir.join("snapshots").join(&p.commit));
    assert_eq!(std::fs::read_to_string(repo_dir.join("refs/main")).unwrap(), p.commit);
    let names: Vec<&str> = p.files.iter().map(|f| f.path.as_str()).collect();
    assert!(names.contains(&"model-00001-of-00002.safetensors") && names.contains(&"tokenizer.json"), "{names:?}");
    assert!(!names.contains(&"pytorch_model.bin"), "other weight formats are skipped: {names:?}");
    for f in std::fs::read_dir(fixture("llama")).unwrap().flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        let link = p.snapshot.join(&name);
        let target = std::fs::read_link(&link).unwrap();
        assert!(target.starts_with("../../blobs"), "{name}: {}", target.display());
        assert_eq!(std::fs::read(&link).unwrap(), std::fs::read(f.path()).unwrap(), "{name}");
    }
    // LFS blobs are named by their sha256, and the pull verified them against it.
    let st = p.files.iter().find(|f| f.path.ends_with(".safetensors")).unwrap();
    assert!(st.digest.starts_with("sha256:") && repo_dir.join("blobs").join(&st.digest[7..]).is_file());
    let cfg = p.files.iter().find(|f| f.path == "config.json").unwrap();
    assert!(cfg.digest.starts_with("sha1:"), "{}", cfg.digest);
    // The offline resolver finds it, as it finds what huggingface-cli writes.
    let loc = airllm_format::hub::resolve_model_in("test/tiny-llama", Some(tmp.path())).unwrap();
    assert_eq!(loc, airllm_format::ModelLocation::HfDir(p.snapshot.clone()));
    // The token went to the API and the resolve endpoint.
    let seen = srv.seen();
    assert!(seen.iter().filter(|s| s.path.starts_with("/api/")).all(|s| s.auth.as_deref() == Some("Bearer hf_test")));
    // A second pull fetches nothing.
    let before = srv.seen().iter().filter(|s| s.path.starts_with("/cdn/")).count();
    let again = pull(&config(&srv, tmp.path()), "test/tiny-llama", &no_retries()).unwrap();
    assert!(again.files.iter().all(|f| f.downloaded == 0));
    assert_eq!(srv.seen().iter().filter(|s| s.path.starts_with("/cdn/")).count(), before);
}

#[test]
fn a_download_cut_half_way_resumes_with_a_range_request() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let victim = "model-00001-of-00002.safetensors";
    srv.faults.lock().unwrap().cut_once.insert(victim.into());
    let e = pull(&config(&srv, tmp.path()), "test/tiny-llama", &no_retries()).unwrap_err();
    assert!(matches!(e, HubError::Transport { .. }), "{e}");
    assert!(e.to_string().contains("connection closed"), "{e}");
    // The partial file is kept, and no snapshot claims to be complete.
    let blobs = tmp.path().join("models--test--tiny-llama/blobs");
    let part = std::fs::read_dir(&blobs)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".incomplete"))
        .expect("a .incomplete file");
    let have = part.metadata().unwrap().len();
    let full = std::fs::metadata(fixture("llama").join(victim)).unwrap().len();
    assert!(have > 0 && have < full, "{have} of {full}");
    assert!(!tmp.path().join("models--test--tiny-llama/snapshots").exists());

    // The next run resumes from where the first stopped.
    let p = pull(&config(&srv, tmp.path()), "test/tiny-llama", &no_retries()).unwrap();
    let f = p.files.iter().find(|f| f.path == victim).unwrap();
    assert_eq!(f.resumed_from, have);
    assert_eq!(f.downloaded, full - have);
    let want = format!("bytes={have}-");
    assert!(srv.seen().iter().any(|s| s.path.starts_with("/cdn/") && s.range.as_deref() == Some(want.as_str())));
    assert_eq!(std::fs::read(p.snapshot.join(victim)).unwrap(), std::fs::read(fixture("llama").join(victim)).unwrap());

    // Within one pull, a broken transfer is retried from where it broke.
    let tmp2 = tempfile::tempdir().unwrap();
    srv.faults.lock().unwrap().cut_once.insert(victim.into());
    let p = pull(&config(&srv, tmp2.path()), "test/tiny-llama", &PullOptions::default()).unwrap();
    assert_eq!(std::fs::read(p.snapshot.join(victim)).unwrap(), std::fs::read(fixture("llama").join(victim)).unwrap());
}

#[test]
fn a_corrupted_blob_is_refused_and_deleted() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let victim = "model-00002-of-00002.safetensors";
    srv.faults.lock().unwrap().corrupt.insert(victim.into());
    let e = pull(&config(&srv, tmp.path()), "test/tiny-llama", &no_retries()).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, HubError::Integrity { .. }) && msg.contains(victim) && msg.contains("sha256"), "{msg}");
    let blobs = tmp.path().join("models--test--tiny-llama/blobs");
    let sha = fixture_repo("x/y", &fixture("llama")).files.iter().find(|f| f.path == victim).unwrap().sha256();
    assert!(!blobs.join(&sha).exists() && !blobs.join(format!("{sha}.incomplete")).exists());
    // Served correctly again, the same pull succeeds.
    srv.faults.lock().unwrap().corrupt.clear();
    pull(&config(&srv, tmp.path()), "test/tiny-llama", &no_retries()).unwrap();
}

#[test]
fn offline_mode_answers_from_the_cache_only() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let offline = HubConfig { offline: true, ..config(&srv, tmp.path()) };
    let e = pull(&offline, "test/tiny-llama", &no_retries()).unwrap_err().to_string();
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains("not in the cache"), "{e}");
    assert!(srv.seen().is_empty(), "offline mode sent a request");
    pull(&config(&srv, tmp.path()), "test/tiny-llama", &no_retries()).unwrap();
    let n = srv.seen().len();
    let p = pull(&offline, "test/tiny-llama", &no_retries()).unwrap();
    assert!(p.snapshot.join("config.json").is_file());
    assert_eq!(srv.seen().len(), n);
}

#[test]
fn gguf_repos_pull_the_file_for_the_tag() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let opts = PullOptions { quant: Some("q8_0".into()), retries: 0, ..PullOptions::default() };
    let p = pull(&config(&srv, tmp.path()), "test/tiny-gguf", &opts).unwrap();
    assert_eq!(p.files.len(), 1);
    assert!(p.model_path().ends_with("tiny.Q8_0.gguf"), "{}", p.model_path().display());
    let opts = PullOptions { quant: Some("Q2_K".into()), retries: 0, ..PullOptions::default() };
    let e = pull(&config(&srv, tmp.path()), "test/tiny-gguf", &opts).unwrap_err().to_string();
    assert!(e.contains("tiny.Q4_0.gguf") && e.contains("Q2_K"), "{e}");
    let e = pull(&config(&srv, tmp.path()), "test/absent", &no_retries()).unwrap_err().to_string();
    assert!(e.contains("404") && e.contains("test/absent"), "{e}");
}

fn airllm(srv: &HubServer, tmp: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_airllm"));
    c.env("XDG_RUNTIME_DIR", std::env::temp_dir())
        .env("HF_ENDPOINT", &srv.url)
        .env("HF_HUB_CACHE", tmp.join("hub"))
        .env("XDG_CACHE_HOME", tmp.join("xdg"))
        .env_remove("HF_TOKEN")
        .env_remove("HF_HUB_OFFLINE")
        .env("HF_HOME", tmp.join("hf-home"));
    c
}

#[test]
fn cli_pull_list_rm_and_first_use() {
    let srv = server();
    let tmp = tempfile::tempdir().unwrap();
    let o = airllm(&srv, tmp.path()).args(["pull", "test/tiny-gguf:Q4_0", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["files"].as_array().unwrap().len(), 1);
    assert!(v["model_path"].as_str().unwrap().ends_with("tiny.Q4_0.gguf"));

    // --model ORG/NAME pulls on first use and says so; the tiny checkpoint then loads
    // (where a GPU adapter exists) or fails at the adapter, after the download.
    let o = airllm(&srv, tmp.path())
        .args(["generate", "--model", "test/tiny-llama", "--prompt-ids", "0,293,437", "-n", "2", "--json"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("test/tiny-llama is not in the Hugging Face cache") && err.contains("downloading"), "{err}");
    assert!(tmp.path().join("hub/models--test--tiny-llama/refs/main").is_file(), "{err}");
    if o.status.success() {
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(v["generations"][0]["new_ids"].as_array().unwrap().len(), 2);
        // Shards of a hub model live in airllm's cache, not inside the snapshot.
        let shards = tmp.path().join("xdg/airllm/shards");
        assert!(std::fs::read_dir(&shards).unwrap().count() == 1, "{}", shards.display());
        assert_eq!(std::fs::read_dir(tmp.path().join("hub/models--test--tiny-llama/snapshots")).unwrap().count(), 1);
    }

    let o = airllm(&srv, tmp.path()).args(["list", "--json"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let repos: Vec<&str> = v["repos"].as_array().unwrap().iter().map(|r| r["repo"].as_str().unwrap()).collect();
    assert_eq!(repos, ["test/tiny-gguf", "test/tiny-llama"]);
    let o = airllm(&srv, tmp.path()).arg("list").output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("test/tiny-llama") && text.contains("safetensors"), "{text}");

    // rm asks; without a terminal and without --yes it refuses and deletes nothing.
    let o = airllm(&srv, tmp.path()).args(["rm", "tiny-gguf"]).stdin(std::process::Stdio::null()).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--yes"));
    assert!(tmp.path().join("hub/models--test--tiny-gguf").is_dir());
    let o = airllm(&srv, tmp.path()).args(["rm", "tiny-gguf", "--yes"]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(!tmp.path().join("hub/models--test--tiny-gguf").exists());
    let o = airllm(&srv, tmp.path()).args(["rm", "no-such-model", "--yes"]).output().unwrap();
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("airllm list"));

    // Offline, a missing repo is an error that says why nothing was fetched.
    let o = airllm(&srv, tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .args(["generate", "--model", "test/other", "--prompt", "hi"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("HF_HUB_OFFLINE"), "{err}");
}
