//! Offline resolution of model arguments: a checkpoint directory, a shard
//! directory, a `.gguf` file, or a Hugging Face repo id (`org/name`) looked up
//! in the local Hugging Face cache. Nothing is downloaded.

use std::path::{Path, PathBuf};

use crate::error::{FormatError, Result};
use crate::manifest::MANIFEST_FILE;

/// What a model argument points at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ModelLocation {
    /// A Hugging Face checkpoint directory (config.json + safetensors).
    HfDir(PathBuf),
    /// A directory written by the shard tool (manifest.json + *.shard).
    ShardDir(PathBuf),
    /// A single GGUF file.
    Gguf(PathBuf),
}

impl ModelLocation {
    /// The path.
    pub fn path(&self) -> &Path {
        match self {
            ModelLocation::HfDir(p) | ModelLocation::ShardDir(p) | ModelLocation::Gguf(p) => p,
        }
    }
}

/// The Hugging Face hub cache directory: `$HF_HUB_CACHE`, else `$HF_HOME/hub`,
/// else `~/.cache/huggingface/hub`, as `huggingface_hub` does. (This is the one
/// place the library reads the environment: it follows the hub's documented rule.)
pub fn hf_cache_dir() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("HF_HUB_CACHE").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(p) = std::env::var_os("HF_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p).join("hub"));
    }
    dirs::home_dir().map(|h| h.join(".cache").join("huggingface").join("hub"))
}

/// Resolve a model argument. Paths win over repo ids.
pub fn resolve_model(arg: &str) -> Result<ModelLocation> {
    resolve_model_in(arg, hf_cache_dir().as_deref())
}

/// [`resolve_model`] with an explicit hub cache directory (for tests).
pub fn resolve_model_in(arg: &str, cache: Option<&Path>) -> Result<ModelLocation> {
    let p = Path::new(arg);
    if p.exists() {
        return classify_path(p, arg);
    }
    if looks_like_repo_id(arg) {
        return resolve_repo_id(arg, cache);
    }
    Err(FormatError::ModelNotFound {
        model: arg.to_owned(),
        message: "no such file or directory. Pass a checkpoint directory (with config.json), a shard \
                  directory (with manifest.json), a .gguf file, or a Hugging Face repo id (org/name) \
                  that is already in the local Hugging Face cache"
            .into(),
    })
}

fn classify_path(p: &Path, arg: &str) -> Result<ModelLocation> {
    if p.is_file() {
        if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
            return Ok(ModelLocation::Gguf(p.to_owned()));
        }
        if p.file_name().is_some_and(|n| n == MANIFEST_FILE) {
            return Ok(ModelLocation::ShardDir(p.parent().unwrap_or(Path::new(".")).to_owned()));
        }
        if p.file_name().is_some_and(|n| n == "config.json") {
            return Ok(ModelLocation::HfDir(p.parent().unwrap_or(Path::new(".")).to_owned()));
        }
        return Err(FormatError::ModelNotFound {
            model: arg.to_owned(),
            message: format!("{} is a file but not a .gguf model; pass its directory instead", p.display()),
        });
    }
    if p.join(MANIFEST_FILE).is_file() {
        return Ok(ModelLocation::ShardDir(p.to_owned()));
    }
    if p.join("config.json").is_file() {
        return Ok(ModelLocation::HfDir(p.to_owned()));
    }
    let ggufs: Vec<PathBuf> = std::fs::read_dir(p)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|q| q.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")))
                .collect()
        })
        .unwrap_or_default();
    if ggufs.len() == 1 {
        return Ok(ModelLocation::Gguf(ggufs[0].clone()));
    }
    Err(FormatError::ModelNotFound {
        model: arg.to_owned(),
        message: format!(
            "{} has neither config.json (a Hugging Face checkpoint) nor {MANIFEST_FILE} (a shard directory){}",
            p.display(),
            if ggufs.len() > 1 { "; it holds several .gguf files: pass one of them" } else { "" }
        ),
    })
}

fn looks_like_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None)
        if !a.is_empty() && !b.is_empty() && !a.starts_with('.') && !b.starts_with('.'))
}

fn resolve_repo_id(repo: &str, cache: Option<&Path>) -> Result<ModelLocation> {
    let Some(cache) = cache else {
        return Err(FormatError::ModelNotFound {
            model: repo.to_owned(),
            message: "no Hugging Face cache directory is known (set HF_HOME or HF_HUB_CACHE)".into(),
        });
    };
    let repo_dir = cache.join(format!("models--{}", repo.replace('/', "--")));
    let not_found = |why: String| FormatError::ModelNotFound {
        model: repo.to_owned(),
        message: format!(
            "{why}. Looked in {} (from HF_HUB_CACHE, HF_HOME or ~/.cache/huggingface/hub). \
             Download it first (e.g. `huggingface-cli download {repo}`) or pass a local path",
            repo_dir.display()
        ),
    };
    if !repo_dir.is_dir() {
        return Err(not_found("not in the local Hugging Face cache".into()));
    }
    let snapshots = repo_dir.join("snapshots");
    let by_ref = std::fs::read_to_string(repo_dir.join("refs").join("main"))
        .ok()
        .map(|h| snapshots.join(h.trim()))
        .filter(|p| p.is_dir());
    let snap = match by_ref {
        Some(s) => s,
        None => {
            // No refs/main: take the most recently modified snapshot.
            let mut all: Vec<(std::time::SystemTime, PathBuf)> = std::fs::read_dir(&snapshots)
                .map(|rd| {
                    rd.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
                        .collect()
                })
                .unwrap_or_default();
            all.sort();
            match all.pop() {
                Some((_, p)) => p,
                None => return Err(not_found("the cache entry has no snapshot".into())),
            }
        }
    };
    classify_path(&snap, repo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_id_resolves_through_refs_main() {
        let tmp = tempfile::tempdir().unwrap();
        let repo = tmp.path().join("models--org--tiny");
        let snap = repo.join("snapshots").join("abc123");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::create_dir_all(repo.join("refs")).unwrap();
        std::fs::write(repo.join("refs").join("main"), "abc123\n").unwrap();
        std::fs::write(snap.join("config.json"), "{}").unwrap();
        let loc = resolve_model_in("org/tiny", Some(tmp.path())).unwrap();
        assert_eq!(loc, ModelLocation::HfDir(snap));
    }

    #[test]
    fn missing_repo_says_where_it_looked() {
        let tmp = tempfile::tempdir().unwrap();
        let e = resolve_model_in("org/absent", Some(tmp.path())).unwrap_err().to_string();
        assert!(e.contains("models--org--absent") && e.contains("HF_HOME"), "{e}");
    }

    #[test]
    fn missing_path_is_clear() {
        let e = resolve_model_in("/no/such/dir/at/all", None).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
    }
}
