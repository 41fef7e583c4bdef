//! `cargo xtask fuzz TARGET --seconds N [--max-len N]`: run one cargo-fuzz target of
//! `fuzz/` for a fixed time, seeded from `fuzz/seeds/<target>/` (real files), and
//! report executions and crashes. `cargo xtask fuzz --make-seeds` rebuilds the seeds.
//!
//! Works on a stable toolchain: cargo-fuzz needs nightly flags, which
//! `RUSTC_BOOTSTRAP=1` unlocks, and `--sanitizer none` avoids the nightly-only
//! AddressSanitizer (the parsers are safe Rust; what the fuzzer looks for is panics,
//! aborts, timeouts and runaway allocations, which libFuzzer catches without it).
//! Needs `cargo install cargo-fuzz`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// The targets: name, the `-max_len` its seeds need, the per-input timeout in seconds,
/// what it covers.
const TARGETS: [(&str, usize, u32, &str); 4] = [
    ("manifest", 256 << 10, 10, "manifest.json parsing and validation"),
    // The SmolLM2 GGUF's tensor infos end at byte 1,785,664 (its vocabulary and merges
    // come first): 2 MiB lets the fuzzer keep that seed whole. Parsing it and exporting
    // its 49k-token tokenizer takes 0.6 s of CPU with debug assertions, so on a loaded
    // 2-core machine an input can take 10 s of wall time: the timeout is 60 s.
    ("gguf", 2 << 20, 60, "GGUF header, metadata, tensor infos, spec mapping, tokenizer export"),
    ("safetensors_header", 128 << 10, 10, "safetensors header parsing"),
    ("shard_header", 4096, 10, "shard file header parsing"),
];

#[derive(clap::Args)]
pub struct Args {
    /// Target to run (omit, or give an unknown name, to list them).
    pub target: Option<String>,
    /// How long to fuzz.
    #[arg(long, default_value_t = 60)]
    pub seconds: u64,
    /// Longest input (default: per target, large enough for its seeds).
    #[arg(long)]
    pub max_len: Option<usize>,
    /// Parallel fuzzing jobs.
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// Rebuild `fuzz/seeds/` from the repository's test data (and the SmolLM2 GGUF
    /// if it is downloaded) instead of fuzzing.
    #[arg(long)]
    pub make_seeds: bool,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn list() -> String {
    TARGETS.iter().map(|(n, l, _, what)| format!("  {n:<20} {what} (max_len {l})")).collect::<Vec<_>>().join("\n")
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.make_seeds {
        return make_seeds();
    }
    let Some(name) = a.target.as_deref() else {
        println!("fuzz targets:\n{}", list());
        return Ok(());
    };
    let Some(&(target, default_len, timeout, _)) = TARGETS.iter().find(|t| t.0 == name) else {
        bail!("unknown fuzz target {name:?}; the targets are:\n{}", list());
    };
    let fuzz = root().join("fuzz");
    let corpus = fuzz.join("corpus").join(target);
    let seeds = fuzz.join("seeds").join(target);
    std::fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let max_len = a.max_len.unwrap_or(default_len);
    let mut cmd = Command::new("cargo");
    cmd.current_dir(&fuzz)
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", target, "--sanitizer", "none", "--release", "--debug-assertions"])
        .arg(&corpus)
        .arg(&seeds)
        .arg("--")
        .arg(format!("-max_total_time={}", a.seconds))
        .arg(format!("-max_len={max_len}"))
        .arg("-print_final_stats=1")
        // A parse that takes very long is a bug too; so is an allocation of GiBs.
        .arg(format!("-timeout={timeout}"))
        .arg(format!("-report_slow_units={timeout}"))
        .arg("-rss_limit_mb=2048");
    if a.jobs > 1 {
        cmd.arg(format!("-jobs={}", a.jobs)).arg(format!("-workers={}", a.jobs));
    }
    println!("fuzzing {target} for {} s (max_len {max_len}), seeds in {}", a.seconds, seeds.display());
    let out = cmd.output().context("running `cargo fuzz` (install it with `cargo install cargo-fuzz`)")?;
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let execs: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("stat::number_of_executed_units:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum();
    let peak: u64 = text
        .lines()
        .filter_map(|l| l.strip_prefix("stat::peak_rss_mb:"))
        .filter_map(|v| v.trim().parse().ok())
        .max()
        .unwrap_or(0);
    let artifacts = fuzz.join("artifacts").join(target);
    let crashes: Vec<String> = std::fs::read_dir(&artifacts)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect())
        .unwrap_or_default();
    println!("{target}: {execs} executions in {} s, peak RSS {peak} MB, {} crash artifacts", a.seconds, crashes.len());
    for c in &crashes {
        println!("  {}", artifacts.join(c).display());
    }
    if !out.status.success() || !crashes.is_empty() {
        // The last lines, each cut short (libFuzzer prints a failing input in full).
        let lines: Vec<String> = text.lines().rev().take(40).map(|l| l.chars().take(300).collect()).collect();
        let tail = lines.into_iter().rev().collect::<Vec<_>>().join("\n");
        bail!("{target}: the fuzzer found a problem (exit {:?}):\n{tail}", out.status.code());
    }
    Ok(())
}

/// Seeds from real files: manifests and shard headers of shard directories made from
/// the tiny fixtures (and SmolLM2 when available), the fixtures' safetensors files, the
/// llama.cpp-written tokenizer GGUF, and the SmolLM2 GGUF up to the end of its tensor
/// infos.
fn make_seeds() -> anyhow::Result<()> {
    let root = root();
    let seeds = root.join("fuzz").join("seeds");
    let dir = |t: &str| -> anyhow::Result<PathBuf> {
        let d = seeds.join(t);
        std::fs::create_dir_all(&d)?;
        Ok(d)
    };
    let tmp = std::env::temp_dir().join(format!("airllm-seeds-{}", std::process::id()));
    let quiet = airllm_format::ShardOptions { progress: false, ..Default::default() };
    let tiny = root.join("testdata").join("tiny");
    let mut shard_dirs = Vec::new();
    for (family, part) in [("qwen2_bf16", None), ("mixtral", None), ("llama", Some(20_000u64)), ("gemma", None)] {
        let ck = airllm_format::Checkpoint::open(&tiny.join(family))?;
        let out = tmp.join(family);
        let opts = airllm_format::ShardOptions { lm_head_part_bytes: part, ..quiet.clone() };
        airllm_format::write_shards(&ck, &out, &opts)?;
        shard_dirs.push((family.to_string(), out));
    }
    if let Some(g) = airllm_format::gguf::smollm2_path() {
        let src = airllm_format::GgufSource::open(&g)?;
        let out = tmp.join("smollm2");
        airllm_format::write_shards(&src, &out, &quiet)?;
        shard_dirs.push(("smollm2".into(), out));
        // Header, metadata and tensor infos: everything up to the tensor data.
        let meta = airllm_format::gguf::read_metadata(&g)?;
        let head = read_head(&g, meta.data_offset as usize)?;
        std::fs::write(dir("gguf")?.join("smollm2-135m-q4_1-head.gguf"), head)?;
    } else {
        println!("SmolLM2 GGUF not found (run `cargo xtask demo` to fetch it): its seeds are skipped");
    }
    for (family, out) in &shard_dirs {
        std::fs::copy(out.join("manifest.json"), dir("manifest")?.join(format!("{family}.json")))?;
        let m = airllm_format::Manifest::load(out)?;
        let mut kinds = std::collections::BTreeSet::new();
        for s in &m.shards {
            let kind = s.file.split('.').next().unwrap_or("x").to_owned()
                + if matches!(s.unit, airllm_format::Unit::LmHeadPart(_)) { "-part" } else { "" };
            if kinds.insert(kind.clone()) {
                let head = read_head(&out.join(&s.file), airllm_format::shard_file::HEADER_LEN)?;
                std::fs::write(dir("shard_header")?.join(format!("{family}-{kind}.bin")), head)?;
            }
        }
    }
    let st = dir("safetensors_header")?;
    std::fs::copy(tiny.join("llama").join("model-00002-of-00002.safetensors"), st.join("llama-part2.safetensors"))?;
    let data = root.join("crates").join("airllm-format").join("tests").join("data");
    std::fs::copy(data.join("kquant_blocks.safetensors"), st.join("kquant_blocks.safetensors"))?;
    std::fs::copy(data.join("spm_tiny.gguf"), dir("gguf")?.join("spm_tiny.gguf"))?;
    let _ = std::fs::remove_dir_all(&tmp);
    println!("seeds written to {}", seeds.display());
    Ok(())
}

fn read_head(path: &Path, n: usize) -> anyhow::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?.take(n as u64).read_to_end(&mut buf)?;
    Ok(buf)
}
