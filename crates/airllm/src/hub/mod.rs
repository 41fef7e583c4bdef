//! Downloads from the Hugging Face Hub into the standard cache layout, so
//! transformers, `huggingface-cli` and airllm share one copy of each file.
//!
//! ```text
//! <cache>/models--org--name/
//!     blobs/<etag>                      file contents (etag: sha256 for LFS files, git sha1 otherwise)
//!     blobs/<etag>.incomplete           a download in progress (resumed with an HTTP Range request)
//!     snapshots/<commit>/<path>      -> ../../blobs/<etag>   (relative symlinks)
//!     refs/<revision>                   the commit a branch or tag pointed at
//! ```
//!
//! What it does, as `huggingface_hub` does: the revision is resolved to a commit
//! through `GET /api/models/{repo}/revision/{rev}`, each file's etag, commit and
//! size come from `HEAD /{repo}/resolve/{commit}/{file}` (`X-Linked-Etag`,
//! `X-Linked-Size`, `X-Repo-Commit`; redirects not followed, so the LFS headers
//! are seen), the bytes from `GET` on the same URL (redirects to the CDN followed,
//! the token never sent there). Every file is verified before it enters the cache:
//! LFS files by sha256 against the etag (and the API's `lfs.sha256`), small files
//! by their git blob sha1; a mismatch deletes the partial file and is an error.
//! Snapshot links and refs are written only after every selected file is in
//! place, so an interrupted pull never leaves a snapshot that looks complete.
//!
//! Configuration follows the Hub's environment variables ([`HubConfig::from_env`]):
//! `HF_ENDPOINT`, `HF_TOKEN` (or `$HF_HOME/token`), `HF_HUB_CACHE` / `HF_HOME`,
//! `HF_HUB_OFFLINE=1` (nothing is fetched; the cache must already hold the files).
//!
//! Non-goals: uploads, datasets and spaces, Xet storage (files are fetched through
//! the Hub's HTTP resolve endpoint, which serves them either way).

mod api;
mod cache;
mod select;

use std::path::PathBuf;

pub use cache::{cached_snapshot, repo_dir};
pub use select::select_files;

/// What went wrong talking to the Hub or writing the cache.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    /// Offline mode and the cache does not hold what is needed.
    #[error("{repo}: {message}")]
    Offline {
        /// The repo id.
        repo: String,
        /// What is missing and what to do.
        message: String,
    },
    /// The request failed before an HTTP status came back (DNS, TLS, connection, timeout).
    #[error("could not reach {url}: {message}")]
    Transport {
        /// The URL.
        url: String,
        /// The transport error.
        message: String,
    },
    /// The Hub answered with an error status.
    #[error("{url} answered HTTP {status}: {hint}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
        /// What it means here and what to do.
        hint: String,
    },
    /// The Hub's answer lacks something needed or contradicts itself.
    #[error("unexpected answer from {url}: {message}")]
    Protocol {
        /// The URL.
        url: String,
        /// What was wrong.
        message: String,
    },
    /// A downloaded file does not match the Hub's checksum; it was deleted.
    #[error(
        "{file}: the downloaded bytes do not match the Hub's {kind} ({expected}, got {actual}); the file was \
         refused and deleted, run the pull again"
    )]
    Integrity {
        /// Path of the file in the repo.
        file: String,
        /// "sha256" or "git blob sha1".
        kind: &'static str,
        /// Expected digest (hex).
        expected: String,
        /// Digest of what arrived (hex).
        actual: String,
    },
    /// No file of the repo matches the selection.
    #[error("{repo}: {message}")]
    Selection {
        /// The repo id.
        repo: String,
        /// Why, with what the repo has.
        message: String,
    },
    /// A file or directory of the cache could not be read or written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Results of this module.
pub type Result<T> = std::result::Result<T, HubError>;

/// Where and how to reach the Hub.
#[derive(Clone, Debug)]
pub struct HubConfig {
    /// Base URL, no trailing slash (`https://huggingface.co`).
    pub endpoint: String,
    /// Bearer token for gated and private repos.
    pub token: Option<String>,
    /// The hub cache directory (holds `models--org--name`).
    pub cache_dir: PathBuf,
    /// Never touch the network.
    pub offline: bool,
}

/// The public Hub.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

impl HubConfig {
    /// Read the Hub's documented environment variables: `HF_ENDPOINT`, `HF_TOKEN`
    /// (else `HUGGING_FACE_HUB_TOKEN`, else the file `$HF_HOME/token` that
    /// `huggingface-cli login` writes), `HF_HUB_CACHE` / `HF_HOME`, `HF_HUB_OFFLINE`.
    pub fn from_env() -> Result<HubConfig> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let endpoint = var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.into()).trim_end_matches('/').to_owned();
        let hf_home =
            var("HF_HOME").map(PathBuf::from).or_else(|| dirs::home_dir().map(|h| h.join(".cache/huggingface")));
        let token = var("HF_TOKEN").or_else(|| var("HUGGING_FACE_HUB_TOKEN")).or_else(|| {
            let p = var("HF_TOKEN_PATH").map(PathBuf::from).or_else(|| hf_home.as_ref().map(|h| h.join("token")))?;
            std::fs::read_to_string(p).ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty())
        });
        let offline = var("HF_HUB_OFFLINE")
            .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "on" | "yes" | "true"));
        let cache_dir = airllm_format::hub::hf_cache_dir().ok_or_else(|| HubError::Offline {
            repo: String::new(),
            message: "no Hugging Face cache directory is known: set HF_HOME or HF_HUB_CACHE".into(),
        })?;
        Ok(HubConfig { endpoint, token, cache_dir, offline })
    }
}

/// What to pull.
#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Branch, tag or commit (`main`).
    pub revision: String,
    /// Glob patterns of repo paths to fetch (`*.json`, `*Q4_K_M*.gguf`); empty: the
    /// files a model needs (see [`select_files`]).
    pub include: Vec<String>,
    /// GGUF quantization tag (`Q4_K_M`): fetch that file of a GGUF repo.
    pub quant: Option<String>,
    /// Show a progress bar per file on stderr.
    pub progress: bool,
    /// Times a broken transfer is resumed before giving up.
    pub retries: u32,
}

impl Default for PullOptions {
    fn default() -> Self {
        PullOptions { revision: "main".into(), include: Vec::new(), quant: None, progress: false, retries: 5 }
    }
}

/// One file of a pull.
#[derive(Clone, Debug)]
pub struct PulledFile {
    /// Path in the repo.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Bytes transferred by this pull (0 when the cache had it).
    pub downloaded: u64,
    /// Bytes a partial download from an earlier run already had (resumed from there).
    pub resumed_from: u64,
    /// The digest it was verified against (`sha256:...` or `sha1:...`).
    pub digest: String,
}

/// What a pull produced.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// The repo id.
    pub repo: String,
    /// The commit the revision resolved to.
    pub commit: String,
    /// `<cache>/models--org--name/snapshots/<commit>`.
    pub snapshot: PathBuf,
    /// The files, in repo order.
    pub files: Vec<PulledFile>,
}

impl Pulled {
    /// The path to load: the one GGUF file when the pull selected exactly one, else the snapshot.
    pub fn model_path(&self) -> PathBuf {
        let ggufs: Vec<&PulledFile> =
            self.files.iter().filter(|f| f.path.to_ascii_lowercase().ends_with(".gguf")).collect();
        match ggufs.as_slice() {
            [one] => self.snapshot.join(&one.path),
            _ => self.snapshot.clone(),
        }
    }
}

/// Download `repo` (`org/name`) at `opts.revision` into the cache; files the cache
/// already holds are not fetched again. Offline, the cache alone answers.
pub fn pull(cfg: &HubConfig, repo: &str, opts: &PullOptions) -> Result<Pulled> {
    if cfg.offline {
        return cache::offline_pull(cfg, repo, opts);
    }
    let client = api::Client::new(cfg);
    let info = client.repo_info(repo, &opts.revision)?;
    let names: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let chosen = select_files(&names, &opts.include, opts.quant.as_deref())
        .map_err(|message| HubError::Selection { repo: repo.to_owned(), message })?;
    let repo_dir = repo_dir(&cfg.cache_dir, repo);
    let mut files = Vec::new();
    let mut links = Vec::new();
    for name in &chosen {
        let sibling = info.siblings.iter().find(|s| &s.rfilename == name);
        let meta = client.file_meta(repo, &info.sha, name, sibling)?;
        let got = cache::fetch_blob(&client, &repo_dir, &meta, opts)?;
        links.push((name.clone(), meta.etag.clone()));
        files.push(got);
    }
    let snapshot = cache::link_snapshot(&repo_dir, &info.sha, &links)?;
    if opts.revision != info.sha {
        cache::write_ref(&repo_dir, &opts.revision, &info.sha)?;
    }
    Ok(Pulled { repo: repo.to_owned(), commit: info.sha, snapshot, files })
}
