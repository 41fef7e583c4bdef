//! Offline resolution of model arguments: a checkpoint directory, a shard
//! directory, a `.gguf` file, a Hugging Face repo id (`org/name`, or
//! `org/name:Q4_K_M` for one quantization of a GGUF repo) looked up in the local
//! Hugging Face cache, or a bare name (`SmolLM2-135M-Instruct`) found in that
//! cache or in airllm's own model directory. Nothing is downloaded here (the
//! `airllm` facade's `hub` module downloads into the same cache layout).
//!
//! The cache layout is the one `huggingface_hub` writes and transformers reads:
//! `models--org--name/{blobs/<etag>, snapshots/<commit>/<file> -> ../../blobs/<etag>,
//! refs/<revision>}`.

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

/// airllm's own cache directory: `$XDG_CACHE_HOME/airllm`, else the user cache
/// directory's `airllm` (`~/.cache/airllm` on Linux). It holds `models/` (model
/// files placed there by hand or by tools) and `shards/` (shard directories of
/// models whose own directory is read-only or inside the Hugging Face cache).
pub fn airllm_cache_dir() -> Option<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CACHE_HOME").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(x).join("airllm"));
    }
    dirs::cache_dir().map(|c| c.join("airllm"))
}

/// Where model arguments are looked up.
#[derive(Clone, Debug, Default)]
pub struct SearchRoots {
    /// The Hugging Face hub cache (`models--org--name/...`).
    pub hf_cache: Option<PathBuf>,
    /// airllm's cache directory (see [`airllm_cache_dir`]).
    pub airllm_dir: Option<PathBuf>,
}

impl SearchRoots {
    /// The roots the environment names ([`hf_cache_dir`], [`airllm_cache_dir`]).
    pub fn from_env() -> SearchRoots {
        SearchRoots { hf_cache: hf_cache_dir(), airllm_dir: airllm_cache_dir() }
    }
}

/// Resolve a model argument. Paths win over repo ids, repo ids over bare names.
pub fn resolve_model(arg: &str) -> Result<ModelLocation> {
    resolve_model_with(arg, &SearchRoots::from_env())
}

/// [`resolve_model`] with an explicit hub cache directory (for tests).
pub fn resolve_model_in(arg: &str, cache: Option<&Path>) -> Result<ModelLocation> {
    resolve_model_with(arg, &SearchRoots { hf_cache: cache.map(Path::to_owned), airllm_dir: None })
}

/// [`resolve_model`] with explicit search roots.
pub fn resolve_model_with(arg: &str, roots: &SearchRoots) -> Result<ModelLocation> {
    let p = Path::new(arg);
    if p.exists() {
        return classify_path(p, arg, None);
    }
    let (repo, tag) = split_tag(arg);
    if looks_like_repo_id(repo) {
        return resolve_repo_id(repo, tag, arg, roots.hf_cache.as_deref());
    }
    if is_bare_name(arg) {
        let found = find_bare_name(arg, roots);
        match found.len() {
            1 => return Ok(found.into_iter().next().map(|(_, l)| l).unwrap_or(ModelLocation::HfDir(p.to_owned()))),
            0 => {}
            _ => {
                return Err(FormatError::ModelNotFound {
                    model: arg.to_owned(),
                    message: format!(
                        "the name is ambiguous; it matches {} cached models:\n{}\npass one of them",
                        found.len(),
                        found
                            .iter()
                            .map(|(name, l)| format!("  {name}  ({})", l.path().display()))
                            .collect::<Vec<_>>()
                            .join("\n")
                    ),
                });
            }
        }
    }
    Err(FormatError::ModelNotFound {
        model: arg.to_owned(),
        message: "no such file or directory, and no cached model of that name. Pass a checkpoint directory \
                  (with config.json), a shard directory (with manifest.json), a .gguf file, a Hugging Face \
                  repo id (org/name, downloaded with `airllm pull org/name`), or the name of a model that \
                  `airllm list` shows"
            .into(),
    })
}

/// Split `org/name:TAG` into the repo id and the quantization tag (as llama.cpp's
/// `-hf org/name:Q4_K_M`). A colon in the first path component (`C:\...`) is no tag.
pub fn split_tag(arg: &str) -> (&str, Option<&str>) {
    match arg.rsplit_once(':') {
        Some((repo, tag)) if repo.contains('/') && !tag.is_empty() && !tag.contains('/') => (repo, Some(tag)),
        _ => (arg, None),
    }
}

/// A bare name: one path component, no extension games (`SmolLM2-135M-Instruct`).
fn is_bare_name(s: &str) -> bool {
    !s.is_empty() && !s.contains(['/', '\\']) && !s.starts_with('.')
}

/// Cached models a bare name can mean: Hugging Face repos whose name part is
/// `name`, and entries of airllm's `models/` directory named `name`, `name.gguf`
/// or `name.<QUANT>.gguf` (all compared case-insensitively).
fn find_bare_name(name: &str, roots: &SearchRoots) -> Vec<(String, ModelLocation)> {
    let want = name.to_ascii_lowercase();
    let mut out = Vec::new();
    if let Some(cache) = &roots.hf_cache {
        for repo in scan_hf_cache(cache) {
            let short = repo.repo_id.rsplit('/').next().unwrap_or("").to_ascii_lowercase();
            if short == want {
                if let Ok(loc) = resolve_repo_id(&repo.repo_id, None, &repo.repo_id, Some(cache)) {
                    out.push((repo.repo_id.clone(), loc));
                }
            }
        }
    }
    if let Some(dir) = &roots.airllm_dir {
        let models = dir.join("models");
        let mut entries: Vec<PathBuf> = std::fs::read_dir(&models)
            .map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect())
            .unwrap_or_default();
        entries.sort();
        for path in entries {
            let file = path.file_name().map(|f| f.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            if file.contains(".airllm-shards-") {
                // Shards made beside a model there are not a second candidate for its name.
                continue;
            }
            let stem = file.strip_suffix(".gguf").unwrap_or(&file);
            let base = stem.split_once('.').map_or(stem, |(b, _)| b);
            if file == want || stem == want || base == want {
                if let Ok(loc) = classify_path(&path, name, None) {
                    out.push((path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default(), loc));
                }
            }
        }
    }
    out
}

/// The GGUF files of a repo to use for `tag` (llama.cpp's `-hf` rule): files whose
/// name holds the tag as a whole word (case-insensitive; `Q4_K` does not match
/// `Q4_K_M`), all parts of a split file (`-00001-of-00003.gguf`); without a tag,
/// `Q4_K_M` when the repo has it, else the first file. Projector files (`mmproj`)
/// are never chosen. `Err` lists the tags on offer.
pub fn pick_gguf<'a>(names: &[&'a str], tag: Option<&str>) -> std::result::Result<Vec<&'a str>, String> {
    let mut ggufs: Vec<&'a str> = names
        .iter()
        .copied()
        .filter(|n| n.to_ascii_lowercase().ends_with(".gguf") && !n.to_ascii_lowercase().contains("mmproj"))
        .collect();
    ggufs.sort_unstable();
    if ggufs.is_empty() {
        return Err("the repo has no .gguf file".into());
    }
    let matching = |t: &str| -> Vec<&'a str> { ggufs.iter().copied().filter(|n| has_word(n, t)).collect() };
    let chosen = match tag {
        Some(t) => matching(t),
        None => {
            let m = matching("Q4_K_M");
            if m.is_empty() { vec![ggufs[0]] } else { m }
        }
    };
    if chosen.is_empty() {
        return Err(format!(
            "no .gguf file matches the tag {:?}; the repo has: {}",
            tag.unwrap_or(""),
            ggufs.join(", ")
        ));
    }
    // One file, or the parts of one split file.
    let first = split_base(chosen[0]).to_ascii_lowercase();
    if chosen.iter().all(|n| split_base(n).to_ascii_lowercase() == first) {
        return Ok(chosen);
    }
    Err(format!(
        "the tag {:?} matches several files: {}; pass a longer tag (the part of the file name that differs)",
        tag.unwrap_or("Q4_K_M"),
        chosen.join(", ")
    ))
}

/// `name` without a `-00001-of-00003` split suffix.
fn split_base(name: &str) -> &str {
    let lower = name.to_ascii_lowercase();
    let Some(stem) = lower.strip_suffix(".gguf") else { return name };
    // -NNNNN-of-NNNNN
    let b = stem.as_bytes();
    if b.len() > 15 {
        let tail = &stem[stem.len() - 15..];
        let t = tail.as_bytes();
        let digits = |r: std::ops::Range<usize>| t[r].iter().all(u8::is_ascii_digit);
        if t[0] == b'-' && digits(1..6) && &tail[6..10] == "-of-" && digits(10..15) {
            return &name[..stem.len() - 15];
        }
    }
    name
}

/// Whether `tag` occurs in `name` delimited by non-word characters (case-insensitive).
fn has_word(name: &str, tag: &str) -> bool {
    let (n, t) = (name.to_ascii_uppercase(), tag.to_ascii_uppercase());
    if t.is_empty() {
        return false;
    }
    let word = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    n.match_indices(&t).any(|(i, _)| !word(n[..i].chars().next_back()) && !word(n[i + t.len()..].chars().next()))
}

/// One repo in the Hugging Face cache.
#[derive(Clone, Debug)]
pub struct CachedRepo {
    /// `org/name`.
    pub repo_id: String,
    /// `<cache>/models--org--name`.
    pub dir: PathBuf,
    /// Snapshots: (commit, directory, refs pointing at it).
    pub snapshots: Vec<(String, PathBuf, Vec<String>)>,
    /// Bytes of its blobs (what deleting it frees).
    pub bytes: u64,
}

/// Every model repo in a Hugging Face cache directory (sorted by repo id).
pub fn scan_hf_cache(cache: &Path) -> Vec<CachedRepo> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(cache) else { return out };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix("models--") else { continue };
        let Some((org, model)) = rest.split_once("--") else { continue };
        let dir = e.path();
        let refs_dir = dir.join("refs");
        let mut refs: Vec<(String, String)> = Vec::new();
        collect_refs(&refs_dir, &refs_dir, &mut refs);
        let mut snapshots = Vec::new();
        if let Ok(rd) = std::fs::read_dir(dir.join("snapshots")) {
            for s in rd.flatten().filter(|s| s.path().is_dir()) {
                let rev = s.file_name().to_string_lossy().into_owned();
                let names = refs.iter().filter(|(_, c)| *c == rev).map(|(r, _)| r.clone()).collect();
                snapshots.push((rev, s.path(), names));
            }
        }
        snapshots.sort();
        out.push(CachedRepo {
            repo_id: format!("{org}/{model}"),
            bytes: dir_bytes(&dir.join("blobs")),
            dir,
            snapshots,
        });
    }
    out.sort_by(|a, b| a.repo_id.cmp(&b.repo_id));
    out
}

fn collect_refs(root: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if p.is_dir() {
            collect_refs(root, &p, out);
        } else if let Ok(commit) = std::fs::read_to_string(&p) {
            let name = p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/");
            out.push((name, commit.trim().to_owned()));
        }
    }
}

/// Total bytes of the regular files under `dir` (symlinks not followed).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// If `path` lies inside a Hugging Face cache snapshot, `(repo id, commit, path
/// inside the snapshot)`. Shards of such models must not be written next to them
/// (tools that read the cache take every directory in `snapshots/` for a revision).
pub fn hf_snapshot_of(path: &Path) -> Option<(String, String, PathBuf)> {
    let comps: Vec<&std::ffi::OsStr> = path.iter().collect();
    let i = comps.iter().rposition(|c| *c == "snapshots")?;
    let repo = comps.get(i.checked_sub(1)?)?.to_str()?.strip_prefix("models--")?;
    let (org, name) = repo.split_once("--")?;
    let rev = comps.get(i + 1)?.to_str()?.to_owned();
    let rel: PathBuf = comps[i + 2..].iter().collect();
    Some((format!("{org}/{name}"), rev, rel))
}

/// `tag`: for a directory with .gguf files, pick with [`pick_gguf`] (`Some("")`: the
/// hub rule with no tag, used for cached repos; `None`: a local directory, which must
/// hold exactly one).
fn classify_path(p: &Path, arg: &str, tag: Option<&str>) -> Result<ModelLocation> {
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
    if ggufs.len() == 1 && tag.is_none() {
        return Ok(ModelLocation::Gguf(ggufs[0].clone()));
    }
    if !ggufs.is_empty() {
        let names: Vec<String> =
            ggufs.iter().filter_map(|g| g.file_name().map(|n| n.to_string_lossy().into_owned())).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        if let Some(t) = tag {
            return match pick_gguf(&refs, Some(t).filter(|t| !t.is_empty())) {
                Ok(files) if files.len() == 1 => Ok(ModelLocation::Gguf(p.join(files[0]))),
                Ok(files) => Err(FormatError::ModelNotFound {
                    model: arg.to_owned(),
                    message: format!(
                        "{} is split into {} files; merge them first (llama-gguf-split --merge)",
                        files[0],
                        files.len()
                    ),
                }),
                Err(why) => Err(FormatError::ModelNotFound {
                    model: arg.to_owned(),
                    message: format!("in {}: {why}", p.display()),
                }),
            };
        }
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

/// `org/name` (two non-empty components, neither starting with a dot).
pub fn looks_like_repo_id(s: &str) -> bool {
    let mut parts = s.split('/');
    matches!((parts.next(), parts.next(), parts.next()), (Some(a), Some(b), None)
        if !a.is_empty() && !b.is_empty() && !a.starts_with('.') && !b.starts_with('.'))
}

/// The cache directory of a repo: `<cache>/models--org--name`.
pub fn repo_cache_dir(cache: &Path, repo: &str) -> PathBuf {
    cache.join(format!("models--{}", repo.replace('/', "--")))
}

fn resolve_repo_id(repo: &str, tag: Option<&str>, arg: &str, cache: Option<&Path>) -> Result<ModelLocation> {
    let Some(cache) = cache else {
        return Err(FormatError::ModelNotFound {
            model: repo.to_owned(),
            message: "no Hugging Face cache directory is known (set HF_HOME or HF_HUB_CACHE)".into(),
        });
    };
    let repo_dir = repo_cache_dir(cache, repo);
    let not_found = |why: String| FormatError::ModelNotFound {
        model: arg.to_owned(),
        message: format!(
            "{why}. Looked in {} (from HF_HUB_CACHE, HF_HOME or ~/.cache/huggingface/hub). \
             Download it first (`airllm pull {arg}`) or pass a local path",
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
    classify_path(&snap, arg, Some(tag.unwrap_or("")))
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
    fn gguf_tags_pick_like_llama_cpp() {
        let names = ["m-Q4_K_M.gguf", "m-Q4_K_S.gguf", "m-Q8_0.gguf", "mmproj-f16.gguf", "README.md"];
        assert_eq!(pick_gguf(&names, None).unwrap(), ["m-Q4_K_M.gguf"]);
        assert_eq!(pick_gguf(&names, Some("q8_0")).unwrap(), ["m-Q8_0.gguf"]);
        let e = pick_gguf(&names, Some("Q4_K")).unwrap_err();
        assert!(e.contains("m-Q4_K_S.gguf") && !e.contains("mmproj"), "{e}");
        assert_eq!(pick_gguf(&["b.Q5_0.gguf", "a.Q6_K.gguf"], None).unwrap(), ["a.Q6_K.gguf"]);
        let split = ["Q4_K_M/m-Q4_K_M-00001-of-00002.gguf", "Q4_K_M/m-Q4_K_M-00002-of-00002.gguf", "m-Q8_0.gguf"];
        assert_eq!(pick_gguf(&split, Some("Q4_K_M")).unwrap().len(), 2);
        assert_eq!(split_tag("org/name:Q4_K_M"), ("org/name", Some("Q4_K_M")));
        assert_eq!(split_tag("org/name"), ("org/name", None));
    }

    #[test]
    fn tagged_repo_and_bare_names_resolve_from_the_caches() {
        let tmp = tempfile::tempdir().unwrap();
        let hf = tmp.path().join("hub");
        let snap = hf.join("models--org--gguf-repo").join("snapshots").join("c0ffee");
        std::fs::create_dir_all(&snap).unwrap();
        std::fs::write(snap.join("m.Q4_0.gguf"), b"x").unwrap();
        std::fs::write(snap.join("m.Q8_0.gguf"), b"x").unwrap();
        let roots = SearchRoots { hf_cache: Some(hf.clone()), airllm_dir: Some(tmp.path().join("airllm")) };
        let loc = resolve_model_with("org/gguf-repo:q8_0", &roots).unwrap();
        assert_eq!(loc, ModelLocation::Gguf(snap.join("m.Q8_0.gguf")));
        assert!(resolve_model_with("org/gguf-repo:Q2_K", &roots).unwrap_err().to_string().contains("m.Q4_0.gguf"));
        // A bare name: the repo's name part, case-insensitively.
        // Without a tag a cached repo follows llama.cpp: Q4_K_M, else the first file.
        let loc = resolve_model_with("GGUF-REPO", &SearchRoots { hf_cache: Some(hf.clone()), airllm_dir: None });
        assert_eq!(loc.unwrap(), ModelLocation::Gguf(snap.join("m.Q4_0.gguf")));
        let models = tmp.path().join("airllm").join("models");
        std::fs::create_dir_all(&models).unwrap();
        std::fs::write(models.join("Tiny.Q4_1.gguf"), b"x").unwrap();
        std::fs::create_dir_all(models.join("Tiny.Q4_1.airllm-shards-none")).unwrap();
        assert_eq!(resolve_model_with("tiny", &roots).unwrap(), ModelLocation::Gguf(models.join("Tiny.Q4_1.gguf")));
        // Ambiguous: the same name in both places lists both.
        let snap2 = hf.join("models--other--tiny").join("snapshots").join("abc");
        std::fs::create_dir_all(&snap2).unwrap();
        std::fs::write(snap2.join("config.json"), "{}").unwrap();
        let e = resolve_model_with("tiny", &roots).unwrap_err().to_string();
        assert!(e.contains("ambiguous") && e.contains("other/tiny") && e.contains("Tiny.Q4_1.gguf"), "{e}");
        assert_eq!(scan_hf_cache(&hf).len(), 2);
        let (repo, rev, rel) = hf_snapshot_of(&snap.join("m.Q4_0.gguf")).unwrap();
        assert_eq!((repo.as_str(), rev.as_str(), rel.to_str().unwrap()), ("org/gguf-repo", "c0ffee", "m.Q4_0.gguf"));
    }

    #[test]
    fn missing_path_is_clear() {
        let e = resolve_model_in("/no/such/dir/at/all", None).unwrap_err().to_string();
        assert!(e.contains("no such file"), "{e}");
    }
}
