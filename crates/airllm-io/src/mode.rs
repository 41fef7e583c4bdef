//! Read modes and their primitives: positional reads (`pread`), O_DIRECT
//! reads (through a bounce buffer where the destination is not aligned) and
//! memory-mapped copies.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;
use std::str::FromStr;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use memmap2::MmapRaw;

use crate::dest::{AlignedBuf, DIRECT_ALIGN};
use crate::error::IoError;

/// How shard bytes get from the file into the destination.
///
/// The default, [`ReadMode::Pread`], was chosen by measurement: see the crate
/// documentation for the table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ReadMode {
    /// Positional `read` system calls straight into the destination, several
    /// threads per large shard. One copy (page cache to destination).
    #[default]
    Pread,
    /// `O_DIRECT` reads that bypass the page cache: for models larger than
    /// RAM, where caching would only evict other shards. Needs 4096-aligned
    /// destinations to avoid a bounce copy. Falls back to `Pread` (with a
    /// warning) where the file system refuses O_DIRECT.
    Direct,
    /// Map the file and copy with several threads. One copy, plus page-table
    /// work; a file truncated by another process while mapped kills the
    /// process with SIGBUS, so prefer `Pread` for files that may change.
    Mmap,
}

impl ReadMode {
    /// All modes, in the order benches and docs list them.
    pub const ALL: [ReadMode; 3] = [ReadMode::Pread, ReadMode::Direct, ReadMode::Mmap];

    /// The lowercase name `FromStr` accepts.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::Pread => "pread",
            ReadMode::Direct => "direct",
            ReadMode::Mmap => "mmap",
        }
    }
}

impl fmt::Display for ReadMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ReadMode {
    type Err = IoError;
    fn from_str(s: &str) -> Result<Self, IoError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pread" => Ok(ReadMode::Pread),
            "direct" | "o_direct" => Ok(ReadMode::Direct),
            "mmap" => Ok(ReadMode::Mmap),
            _ => Err(IoError::UnknownMode(s.to_owned())),
        }
    }
}

/// An open shard file, ready for chunk reads in one mode.
pub(crate) enum Source {
    Buffered(File),
    Direct {
        file: File,
        /// Opened on the first EINVAL from an O_DIRECT read.
        buffered: OnceLock<File>,
    },
    Mapped(MmapRaw),
}

/// An opened shard: its source, its size on disk and whether O_DIRECT was
/// asked for but refused.
pub(crate) struct Opened {
    pub source: Source,
    pub direct_refused: bool,
}

/// What a chunk read needs to know about its shard, for error messages.
pub(crate) struct ShardCtx<'a> {
    pub path: &'a Path,
    pub len: u64,
}

static DIRECT_WARNED: AtomicBool = AtomicBool::new(false);

fn warn_direct_refused(path: &Path, err: &io::Error) {
    if !DIRECT_WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            path = %path.display(),
            error = %err,
            "the file system refused O_DIRECT; falling back to buffered pread for such files \
             (warned once; ReaderStats::direct_fallbacks counts them)"
        );
    }
}

/// Opens `path` in `mode` and checks it holds at least `expected` bytes.
pub(crate) fn open(path: &Path, mode: ReadMode, expected: u64) -> Result<Opened, IoError> {
    let open_err = |source| IoError::Open { path: path.to_path_buf(), source };
    let mut direct_refused = false;
    let source = match mode {
        ReadMode::Pread => Source::Buffered(File::open(path).map_err(open_err)?),
        ReadMode::Direct => match open_direct(path) {
            Ok(file) => Source::Direct { file, buffered: OnceLock::new() },
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                warn_direct_refused(path, &e);
                direct_refused = true;
                Source::Buffered(File::open(path).map_err(open_err)?)
            }
            Err(e) => return Err(open_err(e)),
        },
        ReadMode::Mmap => {
            let file = File::open(path).map_err(open_err)?;
            check_len(path, &file, expected)?;
            if expected == 0 {
                // Zero-length mappings are refused; nothing will be read.
                Source::Buffered(file)
            } else {
                let map = memmap2::MmapOptions::new().map_raw_read_only(&file).map_err(open_err)?;
                Source::Mapped(map)
            }
        }
    };
    match &source {
        Source::Buffered(f) | Source::Direct { file: f, .. } => check_len(path, f, expected)?,
        Source::Mapped(_) => {}
    }
    Ok(Opened { source, direct_refused })
}

fn check_len(path: &Path, file: &File, expected: u64) -> Result<(), IoError> {
    let actual = file.metadata().map_err(|source| IoError::Open { path: path.to_path_buf(), source })?.len();
    if actual < expected {
        return Err(IoError::Truncated { path: path.to_path_buf(), expected, actual });
    }
    if actual > expected {
        tracing::debug!(path = %path.display(), expected, actual, "shard file longer than its manifest length; reading the first {expected} bytes");
    }
    Ok(())
}

/// Opens a file for O_DIRECT reads (`F_NOCACHE` on macOS).
pub(crate) fn open_direct(path: &Path) -> io::Result<File> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        use std::os::unix::fs::OpenOptionsExt;
        OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(path)
    }
    #[cfg(target_os = "macos")]
    {
        use std::os::fd::AsRawFd;
        let file = OpenOptions::new().read(true).open(path)?;
        // SAFETY: plain fcntl on an fd we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_NOCACHE, 1) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(file)
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "macos")))]
    {
        // No portable cache bypass: report it like a refusing file system.
        let _ = OpenOptions::new();
        let _ = path;
        Err(io::Error::from_raw_os_error(libc::EINVAL))
    }
}

/// One positional read system call into raw memory. Retries on EINTR.
///
/// # Safety
///
/// `dst` must be valid for writes of `n` bytes.
unsafe fn pread_once(file: &File, dst: *mut u8, n: usize, offset: u64) -> io::Result<usize> {
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        let off = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "offset beyond off_t"))?;
        loop {
            // SAFETY: the caller guarantees `dst` is valid for `n` bytes; the
            // kernel writes at most `n`.
            let got = unsafe { libc::pread(file.as_raw_fd(), dst.cast(), n, off) };
            if got >= 0 {
                return Ok(got.unsigned_abs());
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
    #[cfg(windows)]
    {
        use std::os::windows::fs::FileExt;
        // SAFETY: the caller guarantees `dst` is valid for `n` bytes; on
        // Windows destinations must also be initialised (all provided ones are).
        let buf = unsafe { std::slice::from_raw_parts_mut(dst, n) };
        file.seek_read(buf, offset)
    }
}

/// Largest single read call: keeps a cancelled reader's drop prompt even with
/// large chunks, and stays below Linux's 2 GiB per-call limit.
const MAX_CALL: usize = 64 << 20;

/// Reads exactly `len` bytes at `offset` into `dst` with buffered preads.
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes.
unsafe fn pread_exact(file: &File, ctx: &ShardCtx<'_>, dst: *mut u8, len: usize, offset: u64) -> Result<(), IoError> {
    let mut done = 0usize;
    while done < len {
        let at = offset + done as u64;
        let want = (len - done).min(MAX_CALL);
        // SAFETY: `done + want <= len`, inside the caller's range.
        let got = unsafe { pread_once(file, dst.add(done), want, at) }.map_err(|source| IoError::Read {
            path: ctx.path.to_path_buf(),
            offset: at,
            source,
        })?;
        if got == 0 {
            return Err(IoError::Truncated { path: ctx.path.to_path_buf(), expected: ctx.len, actual: at });
        }
        done += got;
    }
    Ok(())
}

/// Reads up to `len` bytes (a multiple of [`DIRECT_ALIGN`]) at an aligned
/// `offset` into aligned `dst` with O_DIRECT. Returns the bytes read, which
/// are fewer only at end of file.
///
/// # Safety
///
/// `dst` must be valid for writes of `len` bytes.
unsafe fn pread_direct(file: &File, dst: *mut u8, len: usize, offset: u64) -> io::Result<usize> {
    let mut done = 0usize;
    while done < len {
        let want = (len - done).min(MAX_CALL);
        // SAFETY: `done + want <= len`, inside the caller's range.
        let got = unsafe { pread_once(file, dst.add(done), want, offset + done as u64) }?;
        done += got;
        // End of file: nothing more, or a partial block (the next offset
        // would be unaligned anyway).
        if got == 0 || !got.is_multiple_of(DIRECT_ALIGN) {
            break;
        }
    }
    Ok(done)
}

const fn round_up(n: usize, to: usize) -> usize {
    n.div_ceil(to) * to
}

/// Reads file bytes `offset .. offset + len` of the shard into `dst`.
///
/// `room` is how many bytes may be written at `dst` (at least `len`); O_DIRECT
/// uses it to read a whole last block in place. `bounce` is the calling
/// worker's reusable aligned buffer.
///
/// # Safety
///
/// `dst` must be valid for writes of `room` bytes, and no other thread may
/// access them during the call.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn read_at(
    src: &Source,
    ctx: &ShardCtx<'_>,
    dst: *mut u8,
    room: usize,
    offset: u64,
    len: usize,
    bounce: &mut Option<AlignedBuf>,
) -> Result<(), IoError> {
    debug_assert!(room >= len);
    match src {
        // SAFETY: forwarded caller guarantee (`len <= room`).
        Source::Buffered(file) => unsafe { pread_exact(file, ctx, dst, len, offset) },
        Source::Direct { file, buffered } => {
            // SAFETY: forwarded caller guarantee.
            match unsafe { direct_read(file, ctx, dst, room, offset, len, bounce) } {
                Err(IoError::Read { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                    // Some file systems accept O_DIRECT at open but refuse the
                    // reads (or need a larger alignment): read buffered.
                    warn_direct_refused(ctx.path, &source);
                    let file = match buffered.get() {
                        Some(f) => f,
                        None => {
                            let f = File::open(ctx.path)
                                .map_err(|source| IoError::Open { path: ctx.path.to_path_buf(), source })?;
                            let _ = buffered.set(f);
                            buffered.get().ok_or_else(|| IoError::Open {
                                path: ctx.path.to_path_buf(),
                                source: io::Error::other("buffered fallback handle vanished"),
                            })?
                        }
                    };
                    // SAFETY: forwarded caller guarantee.
                    unsafe { pread_exact(file, ctx, dst, len, offset) }
                }
                other => other,
            }
        }
        Source::Mapped(map) => {
            let end = offset as usize + len;
            if end > map.len() {
                return Err(IoError::Truncated {
                    path: ctx.path.to_path_buf(),
                    expected: ctx.len,
                    actual: map.len() as u64,
                });
            }
            // Fault the range in with one call instead of one fault per few
            // pages; harmless where unsupported (pre-5.14 kernels).
            #[cfg(target_os = "linux")]
            let _ = map.advise_range(memmap2::Advice::PopulateRead, offset as usize, len);
            // SAFETY: `offset + len <= map.len()`; the destination is valid
            // for `len` bytes and cannot overlap a private read-only mapping.
            unsafe {
                std::ptr::copy_nonoverlapping(map.as_ptr().add(offset as usize), dst, len);
            }
            Ok(())
        }
    }
}

/// O_DIRECT read of `len` bytes at `offset` (4096-aligned), directly into
/// `dst` where it is aligned, else through `bounce`.
///
/// # Safety
///
/// As [`read_at`].
unsafe fn direct_read(
    file: &File,
    ctx: &ShardCtx<'_>,
    dst: *mut u8,
    room: usize,
    offset: u64,
    len: usize,
    bounce: &mut Option<AlignedBuf>,
) -> Result<(), IoError> {
    let read_err = |at: u64, source| IoError::Read { path: ctx.path.to_path_buf(), offset: at, source };
    let truncated = |got: u64| IoError::Truncated { path: ctx.path.to_path_buf(), expected: ctx.len, actual: got };
    debug_assert!(offset.is_multiple_of(DIRECT_ALIGN as u64));
    // Whole blocks in place when the destination is aligned.
    let mut done = 0usize;
    if (dst as usize).is_multiple_of(DIRECT_ALIGN) {
        let whole = if room >= round_up(len, DIRECT_ALIGN) {
            round_up(len, DIRECT_ALIGN)
        } else {
            len / DIRECT_ALIGN * DIRECT_ALIGN
        };
        if whole > 0 {
            // SAFETY: `whole <= room`.
            let got = unsafe { pread_direct(file, dst, whole, offset) }.map_err(|e| read_err(offset, e))?;
            if got < whole.min(len) {
                return Err(truncated(offset + got as u64));
            }
            done = whole.min(len);
        }
    }
    // The rest (an unaligned destination, or a partial last block that does
    // not fit in place) goes through the bounce buffer, block-aligned.
    while done < len {
        let at = offset + done as u64;
        let rest = len - done;
        let want = round_up(rest, DIRECT_ALIGN);
        let cap = want.min(MAX_CALL);
        let buf = match bounce {
            Some(b) if b.len() >= cap => b,
            _ => bounce.insert(AlignedBuf::new(cap)),
        };
        let b_ptr = buf.as_mut_ptr();
        // SAFETY: `cap <= buf.len()`.
        let got = unsafe { pread_direct(file, b_ptr, cap, at) }.map_err(|e| read_err(at, e))?;
        let take = got.min(rest);
        if take == 0 || (take < rest && take < cap) {
            return Err(truncated(at + got as u64));
        }
        // SAFETY: `take <= got <= buf.len()` bytes were written to the bounce
        // buffer; `done + take <= len <= room` at `dst`.
        unsafe { std::ptr::copy_nonoverlapping(b_ptr, dst.add(done), take) };
        done += take;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file cut after it was opened (the size check passed) gives
    /// `Truncated` at the end of what is left, in every mode but mmap
    /// (where the kernel would raise SIGBUS, so the mode checks the mapping).
    #[test]
    fn shrinking_file_is_truncated() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR").to_owned() + "/../../target")
            .or_else(|_| tempfile::tempdir())
            .unwrap();
        let path = dir.path().join("shrinks.bin");
        let len = 1usize << 20;
        std::fs::write(&path, vec![3u8; len]).unwrap();
        for mode in [ReadMode::Pread, ReadMode::Direct] {
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len as u64).unwrap();
            let opened = open(&path, mode, len as u64).unwrap();
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(300_000).unwrap();
            let mut dst = AlignedBuf::new(len);
            let ctx = ShardCtx { path: &path, len: len as u64 };
            let mut bounce = None;
            // SAFETY: dst is valid for `len` bytes and unshared.
            let r = unsafe { read_at(&opened.source, &ctx, dst.as_mut_ptr(), len, 0, len, &mut bounce) };
            match r {
                Err(IoError::Truncated { actual, expected, path: p }) => {
                    assert_eq!(actual, 300_000, "{mode}");
                    assert_eq!(expected, len as u64);
                    assert_eq!(p, path);
                }
                other => panic!("{mode}: {other:?}"),
            }
            assert!(dst[..300_000].iter().all(|&b| b == 3));
        }
    }

    #[test]
    fn direct_tail_and_unaligned_destination() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tail.bin");
        let len = 3 * 4096 + 123;
        let bytes: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let opened = open(&path, ReadMode::Direct, len as u64).unwrap();
        let ctx = ShardCtx { path: &path, len: len as u64 };
        // Aligned but with no room for the rounded-up last block, then unaligned.
        for skew in [0usize, 1, 17] {
            let mut dst = AlignedBuf::new(len + skew);
            let mut bounce = None;
            // SAFETY: `len` bytes from `skew` are inside dst, unshared.
            let r = unsafe { read_at(&opened.source, &ctx, dst.as_mut_ptr().add(skew), len, 0, len, &mut bounce) };
            r.unwrap();
            assert!(dst[skew..] == bytes[..], "skew {skew}");
        }
    }
}
