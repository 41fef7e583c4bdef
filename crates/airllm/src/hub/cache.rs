//! The cache side of a pull: resumable, verified blob downloads, snapshot links, refs.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use fs4::fs_std::FileExt;
use indicatif::{ProgressBar, ProgressStyle};
use sha1::Digest as _;

use super::api::{Client, Digest, FileMeta};
use super::{HubConfig, HubError, PullOptions, Pulled, PulledFile, Result};

/// `<cache>/models--org--name`.
pub fn repo_dir(cache: &Path, repo: &str) -> PathBuf {
    airllm_format::hub::repo_cache_dir(cache, repo)
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> HubError + 'a {
    move |source| HubError::Io { action, path: path.to_owned(), source }
}

/// The snapshot directory `revision` points at in the cache, if any (a commit hash
/// names its snapshot directly; a branch or tag goes through `refs/`).
pub fn cached_snapshot(cache: &Path, repo: &str, revision: &str) -> Option<(String, PathBuf)> {
    let dir = repo_dir(cache, repo);
    let commit = std::fs::read_to_string(dir.join("refs").join(revision))
        .map(|c| c.trim().to_owned())
        .unwrap_or_else(|_| revision.to_owned());
    let snap = dir.join("snapshots").join(&commit);
    snap.is_dir().then_some((commit, snap))
}

/// Offline: answer from the cache, or say what is missing.
pub fn offline_pull(cfg: &HubConfig, repo: &str, opts: &PullOptions) -> Result<Pulled> {
    let missing = |why: String| HubError::Offline {
        repo: repo.to_owned(),
        message: format!(
            "{why}, and HF_HUB_OFFLINE is set so nothing is downloaded; unset it or copy the model into {}",
            cfg.cache_dir.display()
        ),
    };
    let Some((commit, snapshot)) = cached_snapshot(&cfg.cache_dir, repo, &opts.revision) else {
        return Err(missing(format!("revision {} is not in the cache", opts.revision)));
    };
    let mut names = Vec::new();
    list_files(&snapshot, &snapshot, &mut names);
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let chosen = super::select_files(&refs, &opts.include, opts.quant.as_deref()).map_err(missing)?;
    let files = chosen
        .into_iter()
        .map(|path| {
            let bytes = std::fs::metadata(snapshot.join(&path)).map(|m| m.len()).unwrap_or(0);
            PulledFile { path, bytes, downloaded: 0, resumed_from: 0, digest: String::new() }
        })
        .collect();
    Ok(Pulled { repo: repo.to_owned(), commit, snapshot, files })
}

fn list_files(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            list_files(root, &p, out);
        } else if p.is_file() {
            out.push(p.strip_prefix(root).unwrap_or(&p).to_string_lossy().replace('\\', "/"));
        }
    }
}

/// A running digest of the content.
enum Hasher {
    Sha256(sha2::Sha256),
    GitSha1(sha1::Sha1),
}

impl Hasher {
    fn new(d: &Digest, size: u64) -> Hasher {
        match d {
            Digest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Digest::GitSha1(_) => {
                let mut h = sha1::Sha1::new();
                h.update(format!("blob {size}\0").as_bytes());
                Hasher::GitSha1(h)
            }
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::GitSha1(h) => h.update(b),
        }
    }
    fn finish(self) -> String {
        let bytes: Vec<u8> = match self {
            Hasher::Sha256(h) => h.finalize().to_vec(),
            Hasher::GitSha1(h) => h.finalize().to_vec(),
        };
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }
}

fn bar(meta: &FileMeta, show: bool) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(meta.size);
    if let Ok(style) =
        ProgressStyle::with_template("{msg:30!} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12} eta {eta}")
    {
        pb.set_style(style);
    }
    pb.set_message(meta.path.clone());
    pb
}

/// Hash the first `len` bytes of `f` (a partial download being resumed).
fn hash_prefix(f: &mut File, len: u64, h: &mut Hasher, path: &Path) -> Result<()> {
    f.seek(SeekFrom::Start(0)).map_err(io("reading", path))?;
    let mut left = len;
    let mut buf = vec![0u8; 1 << 20];
    while left > 0 {
        let want = left.min(buf.len() as u64) as usize;
        let n = f.read(&mut buf[..want]).map_err(io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(())
}

/// Make sure `blobs/<etag>` holds the verified content of `meta`, downloading what
/// is missing (resuming a `.incomplete` file with a Range request, and again after
/// a broken transfer, up to `opts.retries` times).
pub fn fetch_blob(client: &Client, repo_dir: &Path, meta: &FileMeta, opts: &PullOptions) -> Result<PulledFile> {
    let blobs = repo_dir.join("blobs");
    std::fs::create_dir_all(&blobs).map_err(io("creating", &blobs))?;
    let blob = blobs.join(&meta.etag);
    let done = |downloaded, resumed_from| PulledFile {
        path: meta.path.clone(),
        bytes: meta.size,
        downloaded,
        resumed_from,
        digest: meta.digest.label(),
    };
    // A blob only ever enters the cache verified (here or by huggingface_hub): trust its presence and size.
    if std::fs::metadata(&blob).is_ok_and(|m| m.len() == meta.size) {
        return Ok(done(0, 0));
    }
    // One writer per blob, as huggingface_hub does (its lock files live in <cache>/.locks).
    let locks = repo_dir.parent().unwrap_or(repo_dir).join(".locks").join(repo_dir.file_name().unwrap_or_default());
    std::fs::create_dir_all(&locks).map_err(io("creating", &locks))?;
    let lock_path = locks.join(format!("{}.lock", meta.etag));
    let lock = File::create(&lock_path).map_err(io("creating", &lock_path))?;
    lock.lock_exclusive().map_err(io("locking", &lock_path))?;
    if std::fs::metadata(&blob).is_ok_and(|m| m.len() == meta.size) {
        return Ok(done(0, 0));
    }
    let part = blobs.join(format!("{}.incomplete", meta.etag));
    let mut f = OpenOptions::new()
        .create(true)
        .read(true)
        .write(true)
        .truncate(false)
        .open(&part)
        .map_err(io("opening", &part))?;
    let mut have = f.metadata().map_err(io("reading", &part))?.len();
    if have > meta.size {
        f.set_len(0).map_err(io("truncating", &part))?;
        have = 0;
    }
    let resumed_from = have;
    let pb = bar(meta, opts.progress);
    let mut hasher = Hasher::new(&meta.digest, meta.size);
    hash_prefix(&mut f, have, &mut hasher, &part)?;
    pb.set_position(have);
    let mut downloaded = 0u64;
    let mut attempt = 0;
    let mut buf = vec![0u8; 1 << 20];
    while have < meta.size {
        let step = (|| -> Result<()> {
            let (status, start, mut body) = client.get_from(meta, have)?;
            if status == 200 || start != have {
                // The server sent the whole file (no range support): start over.
                if start != 0 {
                    return Err(HubError::Protocol {
                        url: meta.url.clone(),
                        message: format!("asked for bytes from {have}, got from {start}"),
                    });
                }
                f.set_len(0).map_err(io("truncating", &part))?;
                have = 0;
                hasher = Hasher::new(&meta.digest, meta.size);
                pb.set_position(0);
            }
            f.seek(SeekFrom::Start(have)).map_err(io("seeking in", &part))?;
            let mut reader = body.as_reader();
            loop {
                let n = match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        return Err(HubError::Transport {
                            url: meta.url.clone(),
                            message: format!("connection closed after {have} of {} bytes ({e})", meta.size),
                        });
                    }
                };
                let take = n.min((meta.size - have) as usize);
                f.write_all(&buf[..take]).map_err(io("writing", &part))?;
                hasher.update(&buf[..take]);
                have += take as u64;
                downloaded += take as u64;
                pb.set_position(have);
                if have == meta.size {
                    break;
                }
            }
            if have < meta.size {
                return Err(HubError::Transport {
                    url: meta.url.clone(),
                    message: format!("connection closed after {have} of {} bytes", meta.size),
                });
            }
            Ok(())
        })();
        match step {
            Ok(()) => {}
            Err(HubError::Status { status: 416, .. }) if attempt < opts.retries => {
                // The partial file does not fit the server's copy: start over.
                attempt += 1;
                f.set_len(0).map_err(io("truncating", &part))?;
                have = 0;
                hasher = Hasher::new(&meta.digest, meta.size);
            }
            Err(e @ (HubError::Transport { .. } | HubError::Status { status: 429 | 500..=599, .. }))
                if attempt < opts.retries =>
            {
                attempt += 1;
                let _ = f.flush();
                pb.println(format!(
                    "{}: {e}; resuming from byte {have} (try {attempt} of {})",
                    meta.path, opts.retries
                ));
                std::thread::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)));
            }
            Err(e) => {
                let _ = f.sync_all();
                pb.abandon();
                return Err(e);
            }
        }
    }
    f.sync_all().map_err(io("syncing", &part))?;
    drop(f);
    let actual = hasher.finish();
    let (kind, expected) = match &meta.digest {
        Digest::Sha256(h) => ("sha256", h),
        Digest::GitSha1(h) => ("git blob sha1", h),
    };
    if &actual != expected {
        let _ = std::fs::remove_file(&part);
        pb.abandon();
        return Err(HubError::Integrity { file: meta.path.clone(), kind, expected: expected.clone(), actual });
    }
    std::fs::rename(&part, &blob).map_err(io("renaming into place", &blob))?;
    pb.finish();
    Ok(done(downloaded, resumed_from))
}

/// Write `snapshots/<commit>/<path>` links to the blobs (relative symlinks where the
/// platform has them, copies elsewhere). Returns the snapshot directory.
pub fn link_snapshot(repo_dir: &Path, commit: &str, files: &[(String, String)]) -> Result<PathBuf> {
    let snap = repo_dir.join("snapshots").join(commit);
    for (path, etag) in files {
        let dst = snap.join(path);
        let parent = dst.parent().unwrap_or(&snap).to_owned();
        std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
        let depth = path.matches('/').count();
        let target: PathBuf = std::iter::repeat_n("..", depth + 2).collect::<PathBuf>().join("blobs").join(etag);
        let _ = std::fs::remove_file(&dst);
        #[cfg(unix)]
        std::os::unix::fs::symlink(&target, &dst).map_err(io("linking", &dst))?;
        #[cfg(not(unix))]
        std::fs::copy(repo_dir.join("blobs").join(etag), &dst).map(|_| ()).map_err(io("copying to", &dst))?;
    }
    Ok(snap)
}

/// `refs/<revision>` = commit.
pub fn write_ref(repo_dir: &Path, revision: &str, commit: &str) -> Result<()> {
    let path = repo_dir.join("refs").join(revision);
    let parent = path.parent().unwrap_or(repo_dir).to_owned();
    std::fs::create_dir_all(&parent).map_err(io("creating", &parent))?;
    let tmp =
        parent.join(format!(".{}.tmp-{}", path.file_name().unwrap_or_default().to_string_lossy(), std::process::id()));
    std::fs::write(&tmp, commit).map_err(io("writing", &tmp))?;
    std::fs::rename(&tmp, &path).map_err(io("writing", &path))
}
