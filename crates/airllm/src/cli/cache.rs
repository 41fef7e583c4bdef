//! `airllm list` and `airllm rm`: the models in the Hugging Face cache and in
//! airllm's model directory, and the shard directories made from them.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use airllm_format::hub::{CachedRepo, airllm_cache_dir, dir_bytes, hf_cache_dir, scan_hf_cache};
use airllm_format::{ShardDir, human_bytes};
use anyhow::Context;

/// List cached models and their shard directories (sizes, compression).
#[derive(clap::Args, Debug)]
pub struct ListArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

/// Delete a cached model, or only its shards.
#[derive(clap::Args, Debug)]
pub struct RmArgs {
    /// A repo id (org/name), a bare name `airllm list` shows, or a shard directory.
    pub model: String,
    /// Delete only the shard directories made from the model, keep the model.
    #[arg(long)]
    pub shards: bool,
    /// Delete without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,
}

/// A shard directory in airllm's cache.
#[derive(Debug, serde::Serialize)]
struct ShardInfo {
    path: PathBuf,
    bytes: u64,
    compression: String,
    source: String,
}

fn shard_dirs() -> Vec<ShardInfo> {
    let Some(root) = airllm_cache_dir() else { return Vec::new() };
    // airllm's shard cache, and shard directories made beside models in its models/ folder.
    let mut paths: Vec<PathBuf> = Vec::new();
    for (dir, only_shards) in [(root.join("shards"), false), (root.join("models"), true)] {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let p = e.path();
            let named = p.file_name().is_some_and(|n| n.to_string_lossy().contains(".airllm-shards-"));
            if p.is_dir() && (!only_shards || named) {
                paths.push(p);
            }
        }
    }
    let mut out: Vec<ShardInfo> = paths
        .into_iter()
        .map(|p| {
            let (compression, source) = match ShardDir::open(&p) {
                Ok(d) => (d.manifest().compression.clone(), d.manifest().source.clone()),
                Err(_) => ("?".into(), "incomplete or damaged (no valid manifest.json)".into()),
            };
            ShardInfo { bytes: dir_bytes(&p), path: p, compression, source }
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// The prefix of the shard directories of a repo's snapshots (see `default_shards_dir`).
fn repo_shard_prefix(repo: &str) -> String {
    format!("{}--", repo.replace('/', "--"))
}

fn shards_of<'a>(repo: &str, all: &'a [ShardInfo]) -> Vec<&'a ShardInfo> {
    let prefix = repo_shard_prefix(repo);
    all.iter().filter(|s| s.path.file_name().is_some_and(|n| n.to_string_lossy().starts_with(&prefix))).collect()
}

fn models_dir_entries() -> Vec<(PathBuf, u64)> {
    let Some(dir) = airllm_cache_dir().map(|d| d.join("models")) else { return Vec::new() };
    let mut v: Vec<(PathBuf, u64)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| !p.file_name().is_some_and(|n| n.to_string_lossy().contains(".airllm-shards-")))
                .map(|p| {
                    let b =
                        if p.is_dir() { dir_bytes(&p) } else { std::fs::metadata(&p).map(|m| m.len()).unwrap_or(0) };
                    (p, b)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn kind_of(repo: &CachedRepo) -> String {
    let mut kinds = std::collections::BTreeSet::new();
    for (_, snap, _) in &repo.snapshots {
        if let Ok(rd) = std::fs::read_dir(snap) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().to_ascii_lowercase();
                if n.ends_with(".gguf") {
                    kinds.insert("gguf");
                } else if n.ends_with(".safetensors") {
                    kinds.insert("safetensors");
                }
            }
        }
    }
    if kinds.is_empty() { "no weights".into() } else { kinds.into_iter().collect::<Vec<_>>().join("+") }
}

pub fn list(a: ListArgs) -> anyhow::Result<()> {
    let hf = hf_cache_dir();
    let repos = hf.as_deref().map(scan_hf_cache).unwrap_or_default();
    let shards = shard_dirs();
    let models = models_dir_entries();
    if a.json {
        let v = serde_json::json!({
            "hf_cache": hf,
            "repos": repos.iter().map(|r| serde_json::json!({
                "repo": r.repo_id, "path": r.dir, "bytes": r.bytes, "weights": kind_of(r),
                "revisions": r.snapshots.iter().map(|(c, _, refs)| serde_json::json!({"commit": c, "refs": refs})).collect::<Vec<_>>(),
                "shards": shards_of(&r.repo_id, &shards),
            })).collect::<Vec<_>>(),
            "models_dir": airllm_cache_dir().map(|d| d.join("models")),
            "models": models.iter().map(|(p, b)| serde_json::json!({"path": p, "bytes": b})).collect::<Vec<_>>(),
            "shards": shards,
        });
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    println!("Hugging Face cache: {}", hf.as_deref().map_or("(unknown)".into(), |p| p.display().to_string()));
    if repos.is_empty() {
        println!("  (no models; `airllm pull ORG/NAME` downloads one)");
    }
    for r in &repos {
        let refs: Vec<String> = r
            .snapshots
            .iter()
            .map(|(c, _, refs)| if refs.is_empty() { c[..c.len().min(12)].to_owned() } else { refs.join(",") })
            .collect();
        println!("  {:<48} {:>10}  {:<12} {}", r.repo_id, human_bytes(r.bytes), kind_of(r), refs.join(" "));
        for s in shards_of(&r.repo_id, &shards) {
            println!("      shards {:>10}  {:<8} {}", human_bytes(s.bytes), s.compression, s.path.display());
        }
    }
    if let Some(dir) = airllm_cache_dir() {
        println!("airllm models: {}", dir.join("models").display());
        if models.is_empty() {
            println!("  (none)");
        }
        for (p, b) in &models {
            println!(
                "  {:<48} {:>10}",
                p.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                human_bytes(*b)
            );
        }
        let others: Vec<&ShardInfo> = shards
            .iter()
            .filter(|s| !repos.iter().any(|r| shards_of(&r.repo_id, &shards).iter().any(|x| x.path == s.path)))
            .collect();
        println!("airllm shards: {}", dir.join("shards").display());
        if others.is_empty() {
            println!("  (none other than those listed with their models)");
        }
        for s in others {
            println!(
                "  {:<48} {:>10}  {:<8} {}",
                s.path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default(),
                human_bytes(s.bytes),
                s.compression,
                s.source
            );
        }
    }
    println!("(shards of models outside these caches sit next to them, as NAME.airllm-shards-COMPRESSION)");
    Ok(())
}

/// Ask on the terminal; without one, refuse unless --yes.
fn confirm(what: &str) -> anyhow::Result<bool> {
    if !std::io::stdin().is_terminal() {
        anyhow::bail!("not deleting {what} without a terminal to ask on: pass --yes");
    }
    eprint!("delete {what}? [y/N] ");
    std::io::stderr().flush().ok();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).context("reading the answer")?;
    Ok(matches!(line.trim().to_ascii_lowercase().as_str(), "y" | "yes"))
}

fn remove(path: &Path) -> anyhow::Result<()> {
    if path.is_dir() {
        std::fs::remove_dir_all(path).with_context(|| format!("deleting {}", path.display()))
    } else {
        std::fs::remove_file(path).with_context(|| format!("deleting {}", path.display()))
    }
}

pub fn rm(a: RmArgs) -> anyhow::Result<()> {
    let shards = shard_dirs();
    let mut targets: Vec<(PathBuf, u64)> = Vec::new();
    let p = Path::new(&a.model);
    let (repo, _) = airllm_format::hub::split_tag(&a.model);
    if p.join(airllm_format::MANIFEST_FILE).is_file() {
        targets.push((p.to_owned(), dir_bytes(p)));
    } else if let Some(r) = hf_cache_dir().as_deref().map(scan_hf_cache).unwrap_or_default().into_iter().find(|r| {
        r.repo_id == repo
            || (!a.model.contains('/')
                && r.repo_id.rsplit('/').next().is_some_and(|n| n.eq_ignore_ascii_case(&a.model)))
    }) {
        targets.extend(shards_of(&r.repo_id, &shards).into_iter().map(|s| (s.path.clone(), s.bytes)));
        if !a.shards {
            targets.push((r.dir.clone(), dir_bytes(&r.dir)));
        }
    } else if let Some((path, bytes)) = models_dir_entries().into_iter().find(|(m, _)| {
        m.file_name().is_some_and(|n| {
            let n = n.to_string_lossy().to_ascii_lowercase();
            let want = a.model.to_ascii_lowercase();
            n == want || n.strip_suffix(".gguf") == Some(&want) || n.split('.').next() == Some(&want)
        })
    }) {
        let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        targets.extend(
            shards
                .iter()
                .filter(|s| {
                    s.path
                        .file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&format!("{stem}.airllm-shards-")))
                })
                .map(|s| (s.path.clone(), s.bytes)),
        );
        if !a.shards {
            targets.push((path, bytes));
        }
    } else {
        anyhow::bail!("{} is not a cached model or a shard directory (`airllm list` shows what there is)", a.model);
    }
    if targets.is_empty() {
        println!("nothing to delete: {} has no shard directories", a.model);
        return Ok(());
    }
    let total: u64 = targets.iter().map(|t| t.1).sum();
    let what = format!(
        "{} ({})",
        targets.iter().map(|t| t.0.display().to_string()).collect::<Vec<_>>().join(", "),
        human_bytes(total)
    );
    if !a.yes && !confirm(&what)? {
        println!("kept {}", a.model);
        return Ok(());
    }
    for (t, _) in &targets {
        remove(t)?;
        println!("deleted {}", t.display());
    }
    Ok(())
}
