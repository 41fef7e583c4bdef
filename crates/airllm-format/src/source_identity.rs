//! Which checkpoint a shard directory was made from, and where a checkpoint's
//! shards live.
//!
//! Shards are a cache of a checkpoint, so using them is only right while they are
//! still *that* checkpoint's. [`SourceIdentity`] records what the writer read: the
//! canonical path, every file's size, modification time and a hash of its first
//! 64 KiB, and a hash of the small files that define the model (config.json,
//! generation_config.json, the safetensors index; for GGUF the first MiB, which holds
//! the header and metadata). It goes into `manifest.json`, and [`ensure_shards`]
//! reuses a directory only when the checkpoint still has the same identity:
//!
//! - a directory the engine chose itself ([`default_shards_dir`]) is re-sharded when
//!   the identity differs or is unknown (a manifest without one);
//! - a directory the user named (`--shards-dir`) is never overwritten on a mismatch:
//!   that is an error saying what differs, since the directory may hold another
//!   model's shards on purpose.
//!
//! The fallback directory under the user cache (when the checkpoint's parent is not
//! writable) is named with a hash of the canonical source path, so two models with the
//! same directory name never share shards.

use std::path::{Path, PathBuf};

use airllm_quant::Compression;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::checkpoint::TOKENIZER_FILES;
use crate::error::{FormatError, IoContext, Result};
use crate::hub::ModelLocation;
use crate::manifest::{Manifest, hex64};
use crate::writer::ShardOptions;

/// Bytes at the start of each file that go into its [`FileStamp::head_hash`].
pub const HEAD_BYTES: u64 = 64 << 10;
/// Bytes at the start of a GGUF file that go into [`SourceIdentity::config_hash`].
pub const GGUF_META_BYTES: u64 = 1 << 20;

/// One source file as the writer saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    /// File name inside the checkpoint directory (the file name for a GGUF file).
    pub name: String,
    /// Length in bytes.
    pub size: u64,
    /// Modification time, seconds since the Unix epoch.
    pub mtime_s: i64,
    /// Modification time, nanoseconds within the second.
    pub mtime_ns: u32,
    /// xxh3-64 of the first [`HEAD_BYTES`] bytes, 16 hex digits.
    pub head_hash: String,
}

/// What a shard directory was made from (see the [module docs](self)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceIdentity {
    /// "safetensors" or "gguf".
    pub kind: String,
    /// Canonical path of the checkpoint directory or GGUF file.
    pub path: PathBuf,
    /// xxh3-64 of config.json, generation_config.json and the safetensors index (or of
    /// a GGUF file's first MiB), 16 hex digits.
    pub config_hash: String,
    /// Every file read, sorted by name.
    pub files: Vec<FileStamp>,
    /// Weight files removed by `--delete-original` after their shards were verified
    /// (absent now, and that is expected).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<String>,
}

impl SourceIdentity {
    /// The identity of a model location as it is on disk now (a shard directory has none).
    pub fn of(loc: &ModelLocation) -> Result<Option<SourceIdentity>> {
        match loc {
            ModelLocation::HfDir(d) => SourceIdentity::of_checkpoint_dir(d).map(Some),
            ModelLocation::Gguf(p) => SourceIdentity::of_gguf(p).map(Some),
            ModelLocation::ShardDir(_) => Ok(None),
        }
    }

    /// A Hugging Face checkpoint directory. Weight files named by the index but absent
    /// (deleted by `--delete-original`) are simply not stamped.
    pub fn of_checkpoint_dir(dir: &Path) -> Result<SourceIdentity> {
        let path = dir.canonicalize().at("resolving", dir)?;
        let mut hasher = xxhash_rust::xxh3::Xxh3::new();
        for name in ["config.json", "generation_config.json", "model.safetensors.index.json"] {
            let p = path.join(name);
            if let Ok(bytes) = std::fs::read(&p) {
                hasher.update(name.as_bytes());
                hasher.update(&(bytes.len() as u64).to_le_bytes());
                hasher.update(&bytes);
            }
        }
        let mut names: Vec<String> = ["config.json", "generation_config.json", "model.safetensors.index.json"]
            .into_iter()
            .chain(TOKENIZER_FILES)
            .map(str::to_owned)
            .collect();
        names.extend(weight_file_names(&path));
        names.sort();
        names.dedup();
        let mut files = Vec::new();
        for n in names {
            let p = path.join(&n);
            if p.is_file() {
                files.push(stamp(&p, n)?);
            }
        }
        Ok(SourceIdentity {
            kind: "safetensors".into(),
            path,
            config_hash: hex64(hasher.digest()),
            files,
            deleted: Vec::new(),
        })
    }

    /// A GGUF file.
    pub fn of_gguf(file: &Path) -> Result<SourceIdentity> {
        let path = file.canonicalize().at("resolving", file)?;
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let s = stamp(&path, name)?;
        let config_hash = hex64(head_hash(&path, GGUF_META_BYTES)?);
        Ok(SourceIdentity { kind: "gguf".into(), path, config_hash, files: vec![s], deleted: Vec::new() })
    }

    /// Why `now` is not the source these shards were made from, or `None` when it is.
    /// Files recorded as deleted may be absent.
    pub fn mismatch(&self, now: &SourceIdentity) -> Option<String> {
        if self.kind != now.kind || self.path != now.path {
            return Some(format!(
                "they were made from the {} {}, not from {}",
                self.kind,
                self.path.display(),
                now.path.display()
            ));
        }
        if self.config_hash != now.config_hash {
            return Some(if self.kind == "gguf" {
                "the GGUF file's header and metadata changed".into()
            } else {
                "config.json, generation_config.json or the safetensors index changed".into()
            });
        }
        for f in &self.files {
            match now.files.iter().find(|n| n.name == f.name) {
                Some(n) if n == f => {}
                Some(n) if n.size != f.size => {
                    return Some(format!("{} changed size ({} -> {} bytes)", f.name, f.size, n.size));
                }
                Some(_) => return Some(format!("{} was modified since the shards were made", f.name)),
                None if self.deleted.contains(&f.name) => {}
                None => return Some(format!("{} is gone", f.name)),
            }
        }
        if let Some(n) = now.files.iter().find(|n| !self.files.iter().any(|f| f.name == n.name)) {
            return Some(format!("{} is new", n.name));
        }
        None
    }
}

/// The files a checkpoint's weights may come from, by name: those the index names,
/// `model.safetensors`, and every `*.safetensors` file present (the reader takes one of
/// these sets; stamping all of them keeps the identity the same whichever it took, and
/// after `--delete-original` removed some). Never fails: a broken index is reported by
/// [`Checkpoint::open`](crate::Checkpoint::open), not here.
fn weight_file_names(dir: &Path) -> Vec<String> {
    let index = dir.join("model.safetensors.index.json");
    let mut names: Vec<String> = std::fs::read(&index)
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|v| v.get("weight_map").and_then(Value::as_object).cloned())
        .map(|map| {
            map.values()
                .filter_map(Value::as_str)
                .filter(|n| !n.contains('/') && !n.contains('\\') && !n.contains(".."))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    names.push("model.safetensors".into());
    if let Ok(rd) = std::fs::read_dir(dir) {
        names.extend(
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.ends_with(".safetensors")),
        );
    }
    names
}

fn stamp(path: &Path, name: String) -> Result<FileStamp> {
    let meta = std::fs::metadata(path).at("reading metadata of", path)?;
    let (mtime_s, mtime_ns) = match meta.modified() {
        Ok(t) => match t.duration_since(std::time::UNIX_EPOCH) {
            Ok(d) => (d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => (-(e.duration().as_secs() as i64), e.duration().subsec_nanos()),
        },
        Err(_) => (0, 0),
    };
    Ok(FileStamp { name, size: meta.len(), mtime_s, mtime_ns, head_hash: hex64(head_hash(path, HEAD_BYTES)?) })
}

fn head_hash(path: &Path, n: u64) -> Result<u64> {
    use std::io::Read;
    let f = std::fs::File::open(path).at("opening", path)?;
    let mut buf = Vec::new();
    f.take(n).read_to_end(&mut buf).at("reading", path)?;
    Ok(xxhash_rust::xxh3::xxh3_64(&buf))
}

/// Where the shards of `source` (a checkpoint directory or GGUF file) go by default:
/// for a model inside a Hugging Face cache snapshot, `<airllm cache>/shards/<org>--<name>--<revision>`
/// (tools that read the hub cache take every entry of `snapshots/` for a revision, so
/// nothing may be added beside it); otherwise `<name>.airllm-shards-<compression>` beside
/// it when that directory is writable, else
/// `<user cache>/airllm/shards/<name>-<hash of the canonical path>.airllm-shards-<compression>`.
pub fn default_shards_dir(source: &Path, compression: Compression) -> PathBuf {
    if let (Some((repo, rev, rel)), Some(cache)) = (crate::hub::hf_snapshot_of(source), crate::hub::airllm_cache_dir())
    {
        let mut name = format!("{}--{}", repo.replace('/', "--"), &rev[..rev.len().min(12)]);
        if let Some(stem) = rel.file_stem() {
            name = format!("{name}--{}", stem.to_string_lossy());
        }
        return cache.join("shards").join(format!("{name}.airllm-shards-{compression}"));
    }
    let name = source
        .file_stem()
        .or_else(|| source.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let leaf = format!("{name}.airllm-shards-{compression}");
    if let Some(parent) = source.parent() {
        let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
        if is_writable_dir(parent) {
            return parent.join(leaf);
        }
    }
    user_cache_shards_dir(source, compression)
}

/// The fallback shard directory under the user cache, named with a hash of the
/// canonical source path (so `/a/model` and `/b/model` never share one).
pub fn user_cache_shards_dir(source: &Path, compression: Compression) -> PathBuf {
    let canonical = source.canonicalize().unwrap_or_else(|_| source.to_owned());
    let name = canonical
        .file_stem()
        .or_else(|| canonical.file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let hash = xxhash_rust::xxh3::xxh3_64(canonical.as_os_str().as_encoded_bytes());
    let leaf = format!("{name}-{}.airllm-shards-{compression}", &hex64(hash)[..12]);
    dirs::cache_dir().unwrap_or_else(std::env::temp_dir).join("airllm").join("shards").join(leaf)
}

/// Whether files can be created in `dir` (tried, not guessed from permission bits:
/// read-only mounts and ACLs decide).
pub(crate) fn is_writable_dir(dir: &Path) -> bool {
    let probe = dir.join(format!(".airllm-write-probe-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// What [`ensure_shards`] found in a shard directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShardDirState {
    /// No manifest: nothing written yet, or an interrupted run (the writer resumes it).
    Empty,
    /// Complete shards of this very source and compression.
    Ready,
    /// Shards of this source with another compression (rewritten on use).
    OtherCompression(String),
    /// Shards of another source, or of one that changed; the reason.
    Stale(String),
    /// A manifest that does not say what it was made from, or cannot be read.
    Unknown(String),
}

/// Compare a shard directory with a source's current identity.
pub fn shard_dir_state(dir: &Path, now: &SourceIdentity, compression: Compression) -> ShardDirState {
    if !dir.join(crate::manifest::MANIFEST_FILE).exists() {
        return ShardDirState::Empty;
    }
    let m = match Manifest::load(dir) {
        Ok(m) => m,
        Err(e) => return ShardDirState::Unknown(format!("its manifest cannot be used ({e})")),
    };
    match &m.source_identity {
        None => ShardDirState::Unknown(format!(
            "its manifest does not record which checkpoint it was made from (made from {}; written by an older \
             airllm or by a tool)",
            crate::error::quote(&m.source)
        )),
        Some(id) => match id.mismatch(now) {
            Some(why) => ShardDirState::Stale(why),
            None if m.compression != compression.to_string() => ShardDirState::OtherCompression(m.compression),
            None => ShardDirState::Ready,
        },
    }
}

/// Make sure the shards of a checkpoint or GGUF file exist and are that model's, and
/// return their directory: `explicit` (the user's `--shards-dir`) or
/// [`default_shards_dir`]. Shards whose source identity matches are reused as they
/// are; otherwise the model is sharded (resuming an interrupted run). A directory the
/// engine chose is re-sharded when it is stale or its identity unknown; an explicit
/// one is refused instead, with the reason. A shard directory given as the model is
/// returned as it is.
pub fn ensure_shards(loc: &ModelLocation, explicit: Option<&Path>, opts: &ShardOptions) -> Result<PathBuf> {
    let source = match loc {
        ModelLocation::ShardDir(d) => return Ok(d.clone()),
        ModelLocation::HfDir(p) | ModelLocation::Gguf(p) => p,
    };
    let out = explicit.map_or_else(|| default_shards_dir(source, opts.compression), Path::to_path_buf);
    // A checkpoint whose weights an earlier --delete-original run removed still has an
    // identity (the remaining files); it matches the manifest's, which lists them as deleted.
    let now = SourceIdentity::of(loc)?.ok_or_else(|| FormatError::ModelNotFound {
        model: source.display().to_string(),
        message: "not a checkpoint".into(),
    })?;
    let refuse = |why: String| FormatError::Manifest {
        path: out.join(crate::manifest::MANIFEST_FILE),
        message: format!(
            "--shards-dir {} cannot be used for {}: {why}. Pass another --shards-dir, or delete the directory \
             (or run `airllm shard {} --out {}`) to shard this model into it",
            out.display(),
            source.display(),
            source.display(),
            out.display()
        ),
    };
    match shard_dir_state(&out, &now, opts.compression) {
        ShardDirState::Ready => return Ok(out),
        ShardDirState::Empty | ShardDirState::OtherCompression(_) => {}
        ShardDirState::Stale(why) | ShardDirState::Unknown(why) if explicit.is_some() => return Err(refuse(why)),
        ShardDirState::Stale(why) | ShardDirState::Unknown(why) => {
            tracing::warn!(
                "re-sharding {} into {}: the shards there are not usable ({why})",
                source.display(),
                out.display()
            );
        }
    }
    tracing::info!("sharding {} into {} (first use)", source.display(), out.display());
    crate::writer::shard_model(&source.to_string_lossy(), &out, opts)?;
    Ok(out)
}
