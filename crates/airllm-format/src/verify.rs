//! Verifying a shard directory before use: every header against the manifest, and
//! every file's xxh3-64 checksum, with a cache so that a warm start stays fast.
//!
//! - [`VerifyMode::First`] (the default) hashes a shard the first time this process
//!   uses it, unless the verification cache says it was verified before and the file
//!   is still the same file: same device, inode, size, modification time and change
//!   time. The change time cannot be set back by tools that preserve the modification
//!   time (`touch -r`, `cp -p`), so an edit in place always invalidates the entry.
//! - [`VerifyMode::Always`] hashes every shard, ignoring the cache.
//! - [`VerifyMode::Never`] checks headers, lengths and the manifest only.
//!
//! The cache is `.verified.json` in the shard directory, or, when that directory is
//! not writable, a file named by a hash of its canonical path under
//! `<user cache>/airllm/verified/`. The shard writer, which has just computed every
//! checksum, seeds it, so the first use after sharding does not read everything twice.
//! The cache is only a hint: a damaged or missing cache file means hashing again.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Mutex, OnceLock};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::error::{FormatError, IoContext, Result};
use crate::manifest::ShardEntry;
use crate::shard_dir::ShardDir;
use crate::shard_file::{HEADER_LEN, ShardHeader};

/// File name of the verification cache inside a shard directory.
pub const VERIFY_CACHE_FILE: &str = ".verified.json";
const CACHE_VERSION: u32 = 1;
/// Show a progress bar when at least this many bytes are to be hashed.
const PROGRESS_BYTES: u64 = 256 << 20;

/// When to check shard checksums (`--verify`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VerifyMode {
    /// Hash every shard on every load.
    Always,
    /// Hash each shard the first time it is used, unless the verification cache shows
    /// the same file was verified before.
    #[default]
    First,
    /// Check headers and lengths only (for read-only media already verified).
    Never,
}

impl VerifyMode {
    /// The `--verify` spelling.
    pub const fn name(self) -> &'static str {
        match self {
            VerifyMode::Always => "always",
            VerifyMode::First => "first",
            VerifyMode::Never => "never",
        }
    }
}

impl fmt::Display for VerifyMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for VerifyMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "always" => Ok(VerifyMode::Always),
            "first" => Ok(VerifyMode::First),
            "never" => Ok(VerifyMode::Never),
            other => Err(format!("unknown verify mode {other:?} (always, first, never)")),
        }
    }
}

/// What [`ShardDir::verify`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Shards whose headers were checked (all of them).
    pub shards: usize,
    /// Shards hashed now.
    pub hashed: usize,
    /// Shards skipped because this process or the cache had verified them.
    pub cached: usize,
    /// Bytes hashed now.
    pub bytes_hashed: u64,
}

/// What identifies a file's contents without reading them.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileKey {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_s: i64,
    mtime_ns: u32,
    ctime_s: i64,
    ctime_ns: u32,
}

impl FileKey {
    /// The key of an open file.
    pub fn of(meta: &std::fs::Metadata) -> FileKey {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            FileKey {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                mtime_s: meta.mtime(),
                mtime_ns: meta.mtime_nsec() as u32,
                ctime_s: meta.ctime(),
                ctime_ns: meta.ctime_nsec() as u32,
            }
        }
        #[cfg(not(unix))]
        {
            let (mtime_s, mtime_ns) = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| (d.as_secs() as i64, d.subsec_nanos()))
                .unwrap_or((0, 0));
            FileKey { dev: 0, ino: 0, size: meta.len(), mtime_s, mtime_ns, ctime_s: 0, ctime_ns: 0 }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct CacheEntry {
    key: FileKey,
    checksum: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    entries: BTreeMap<String, CacheEntry>,
}

/// Shards this process has verified: (canonical path, key, checksum).
fn verified_here() -> &'static Mutex<HashSet<(PathBuf, FileKey, String)>> {
    static SET: OnceLock<Mutex<HashSet<(PathBuf, FileKey, String)>>> = OnceLock::new();
    SET.get_or_init(Default::default)
}

fn remember(path: &Path, key: &FileKey, checksum: &str) {
    let p = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    if let Ok(mut s) = verified_here().lock() {
        s.insert((p, key.clone(), checksum.to_owned()));
    }
}

fn remembered(path: &Path, key: &FileKey, checksum: &str) -> bool {
    let p = path.canonicalize().unwrap_or_else(|_| path.to_owned());
    verified_here().lock().is_ok_and(|s| s.contains(&(p, key.clone(), checksum.to_owned())))
}

/// The verification cache of one shard directory.
#[derive(Debug)]
pub(crate) struct VerifyCache {
    dir: PathBuf,
    entries: BTreeMap<String, CacheEntry>,
    dirty: bool,
}

fn user_cache_file(dir: &Path) -> Option<PathBuf> {
    let canonical = dir.canonicalize().unwrap_or_else(|_| dir.to_owned());
    let h = xxhash_rust::xxh3::xxh3_64(canonical.as_os_str().as_encoded_bytes());
    dirs::cache_dir().map(|c| c.join("airllm").join("verified").join(format!("{h:016x}.json")))
}

fn read_cache(path: &Path) -> BTreeMap<String, CacheEntry> {
    std::fs::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice::<CacheFile>(&b).ok())
        .filter(|c| c.version == CACHE_VERSION)
        .map(|c| c.entries)
        .unwrap_or_default()
}

impl VerifyCache {
    /// Load the cache of `dir` (empty when there is none or it cannot be read).
    pub(crate) fn load(dir: &Path) -> VerifyCache {
        let mut entries = read_cache(&dir.join(VERIFY_CACHE_FILE));
        if let Some(p) = user_cache_file(dir) {
            for (k, v) in read_cache(&p) {
                entries.entry(k).or_insert(v);
            }
        }
        VerifyCache { dir: dir.to_owned(), entries, dirty: false }
    }

    fn hit(&self, file: &str, key: &FileKey, checksum: &str) -> bool {
        self.entries.get(file).is_some_and(|e| &e.key == key && e.checksum == checksum)
    }

    /// Record that `file` (in the directory) with this key has this checksum.
    pub(crate) fn insert(&mut self, file: &str, key: FileKey, checksum: &str) {
        let e = CacheEntry { key, checksum: checksum.to_owned() };
        if self.entries.get(file) != Some(&e) {
            self.entries.insert(file.to_owned(), e);
            self.dirty = true;
        }
    }

    /// Record a file just written: stat it now (after its rename into place).
    pub(crate) fn insert_written(&mut self, file: &str, checksum: &str) {
        let path = self.dir.join(file);
        if let Ok(meta) = std::fs::metadata(&path) {
            let key = FileKey::of(&meta);
            remember(&path, &key, checksum);
            self.insert(file, key, checksum);
        }
    }

    /// Keep only entries for these files.
    pub(crate) fn retain(&mut self, files: &HashSet<&str>) {
        let before = self.entries.len();
        self.entries.retain(|k, _| files.contains(k.as_str()));
        self.dirty |= self.entries.len() != before;
    }

    /// Write the cache if it changed: into the directory, else the user cache. Failure
    /// only costs a re-hash next time, so it is logged, not returned.
    pub(crate) fn save(&mut self) {
        if !self.dirty {
            return;
        }
        let file = CacheFile { version: CACHE_VERSION, entries: self.entries.clone() };
        let bytes = serde_json::to_vec_pretty(&file).unwrap_or_default();
        let in_dir = self.dir.join(VERIFY_CACHE_FILE);
        let saved = crate::writer::write_atomic(&in_dir, &bytes).is_ok()
            || user_cache_file(&self.dir).is_some_and(|p| {
                p.parent().is_some_and(|d| std::fs::create_dir_all(d).is_ok())
                    && crate::writer::write_atomic(&p, &bytes).is_ok()
            });
        if saved {
            self.dirty = false;
        } else {
            tracing::debug!("could not write the verification cache of {}", self.dir.display());
        }
    }
}

/// Read a shard's header and length and check them against its manifest entry.
fn check_header(file: &mut File, path: &Path, entry: &ShardEntry, spec_hash: u64) -> Result<FileKey> {
    let meta = file.metadata().at("reading metadata of", path)?;
    let len = meta.len();
    if len != entry.bytes {
        return Err(FormatError::BadShard {
            path: path.to_owned(),
            message: format!(
                "{len} bytes on disk, the manifest says {}; the file is truncated or from another run. \
                 Re-run `airllm shard` (complete shards are kept)",
                entry.bytes
            ),
        });
    }
    let mut head = [0u8; HEADER_LEN];
    let n = read_full(file, &mut head).at("reading", path)?;
    let h = ShardHeader::parse(&head[..n], path)?;
    h.check(entry, len, Some(spec_hash), path)?;
    Ok(FileKey::of(&meta))
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// xxh3-64 of a whole file, read from its start through a buffer (not mapped: a file
/// truncated while we read is an error, not a SIGBUS).
fn hash_file(file: &mut File, path: &Path, bar: &indicatif::ProgressBar) -> Result<(u64, u64)> {
    use std::io::{Seek, SeekFrom};
    file.seek(SeekFrom::Start(0)).at("reading", path)?;
    let mut hasher = xxhash_rust::xxh3::Xxh3::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut total = 0u64;
    loop {
        let n = read_full(file, &mut buf).at("reading", path)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        bar.inc(n as u64);
    }
    Ok((hasher.digest(), total))
}

/// Outcome of verifying one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    /// Hashed now (bytes read).
    Hashed(u64),
    /// Known good (this process or the cache).
    Cached,
    /// Header only ([`VerifyMode::Never`]).
    HeaderOnly,
}

/// Verify one shard file against its entry.
pub(crate) fn verify_entry(
    dir: &Path,
    entry: &ShardEntry,
    spec_hash: u64,
    mode: VerifyMode,
    cache: &VerifyCache,
    bar: &indicatif::ProgressBar,
) -> Result<(Checked, Option<FileKey>)> {
    let path = dir.join(&entry.file);
    let mut file = File::open(&path).at("opening shard", &path)?;
    let key = check_header(&mut file, &path, entry, spec_hash)?;
    match mode {
        VerifyMode::Never => return Ok((Checked::HeaderOnly, None)),
        VerifyMode::First
            if remembered(&path, &key, &entry.checksum) || cache.hit(&entry.file, &key, &entry.checksum) =>
        {
            bar.inc(entry.bytes);
            return Ok((Checked::Cached, Some(key)));
        }
        _ => {}
    }
    let (got, n) = hash_file(&mut file, &path, bar)?;
    if Some(got) != entry.checksum_u64() || n != entry.bytes {
        return Err(FormatError::BadShard {
            path,
            message: format!(
                "checksum mismatch (file {got:016x}, manifest {}); the file is corrupted. Delete it and re-run \
                 `airllm shard` (the other shards are kept)",
                entry.checksum
            ),
        });
    }
    // Cache only if the file did not change while we read it.
    let after = file.metadata().map(|m| FileKey::of(&m)).ok();
    let key = after.filter(|k| *k == key);
    if let Some(k) = &key {
        remember(&path, k, &entry.checksum);
    }
    Ok((Checked::Hashed(n), key))
}

fn progress(total: u64) -> indicatif::ProgressBar {
    if total < PROGRESS_BYTES {
        return indicatif::ProgressBar::hidden();
    }
    // Drawn on stderr, and only when it is a terminal.
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "verifying shards [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

impl ShardDir {
    /// Check every shard: present, the right length, every header field matching the
    /// manifest (see [`ShardHeader::check`]), and, per `mode`, its xxh3-64 checksum
    /// (see [`VerifyMode`]). Shards are hashed in parallel; the first problem found is
    /// returned, naming the file.
    pub fn verify(&self, mode: VerifyMode) -> Result<VerifyReport> {
        let spec_hash = crate::shard_file::spec_hash(&self.manifest().spec);
        let cache = VerifyCache::load(self.dir());
        let shards = &self.manifest().shards;
        let to_hash: u64 = if mode == VerifyMode::Never { 0 } else { shards.iter().map(|s| s.bytes).sum() };
        let bar = progress(to_hash);
        let results: Vec<Result<(Checked, Option<FileKey>)>> =
            shards.par_iter().map(|e| verify_entry(self.dir(), e, spec_hash, mode, &cache, &bar)).collect();
        bar.finish_and_clear();
        let mut report = VerifyReport { shards: shards.len(), ..VerifyReport::default() };
        let mut cache = cache;
        for (e, r) in shards.iter().zip(results) {
            match r? {
                (Checked::Hashed(n), key) => {
                    report.hashed += 1;
                    report.bytes_hashed += n;
                    if let Some(k) = key {
                        cache.insert(&e.file, k, &e.checksum);
                    }
                }
                (Checked::Cached, _) => report.cached += 1,
                (Checked::HeaderOnly, _) => {}
            }
        }
        cache.save();
        Ok(report)
    }

    /// [`ShardDir::verify`] for one shard (for an engine that verifies lazily, on a
    /// shard's first use); returns whether it was hashed now.
    pub fn verify_shard(&self, i: usize, mode: VerifyMode) -> Result<bool> {
        let spec_hash = crate::shard_file::spec_hash(&self.manifest().spec);
        let mut cache = VerifyCache::load(self.dir());
        let e = self.entry(i);
        let (checked, key) = verify_entry(self.dir(), e, spec_hash, mode, &cache, &indicatif::ProgressBar::hidden())?;
        if let (Checked::Hashed(_), Some(k)) = (checked, key) {
            cache.insert(&e.file, k, &e.checksum);
            cache.save();
        }
        Ok(matches!(checked, Checked::Hashed(_)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_print() {
        for m in [VerifyMode::Always, VerifyMode::First, VerifyMode::Never] {
            assert_eq!(m.name().parse::<VerifyMode>(), Ok(m));
        }
        assert!("sometimes".parse::<VerifyMode>().is_err());
        assert_eq!(VerifyMode::default(), VerifyMode::First);
    }
}
