//! Throughput measurement of the reader against plain single-threaded reads
//! of the same files, for `airllm bench --io-only` and the criterion bench.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::dest::{AlignedBuf, DIRECT_ALIGN};
use crate::error::IoError;
use crate::mode::{self, ReadMode};
use crate::reader::{Reader, ReaderOptions, ShardSpec};
use crate::stats::gbps;

/// Buffer size of the plain baselines in [`run_io_bench`] (like `dd bs=8M`).
pub const PLAIN_BUF_BYTES: usize = 8 << 20;

fn read_loop(file: &mut File, path: &Path, buf: &mut [u8]) -> Result<u64, IoError> {
    let mut total = 0u64;
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => return Err(IoError::Read { path: path.to_path_buf(), offset: total, source }),
        }
    }
}

/// The baseline: one thread, `read(2)` each file to its end in turn into one
/// reused buffer of `buf_bytes` (an [`AlignedBuf`], touched before timing).
/// Returns the bytes read and the time taken.
pub fn plain_sequential_read(paths: &[PathBuf], buf_bytes: usize) -> Result<(u64, Duration), IoError> {
    // The same kind of memory as the reader's destinations in
    // `run_io_bench`, faulted in before timing as they are.
    let mut buf = AlignedBuf::new(buf_bytes.max(1));
    buf.fill(1);
    let t = Instant::now();
    let mut total = 0;
    for path in paths {
        let mut file = File::open(path).map_err(|source| IoError::Open { path: path.clone(), source })?;
        total += read_loop(&mut file, path, &mut buf)?;
    }
    Ok((total, t.elapsed()))
}

/// The O_DIRECT baseline, like `dd iflag=direct bs=<buf_bytes>`: one thread,
/// each file read to its end with O_DIRECT into one aligned buffer
/// (`buf_bytes` rounded up to 4096). Fails with
/// [`IoError::DirectUnsupported`] where the file system refuses O_DIRECT.
pub fn plain_direct_read(paths: &[PathBuf], buf_bytes: usize) -> Result<(u64, Duration), IoError> {
    let mut buf = AlignedBuf::new(buf_bytes.max(1).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN);
    buf.fill(1);
    let t = Instant::now();
    let mut total = 0;
    for path in paths {
        let mut file = open_plain(path, true)?;
        total += read_loop(&mut file, path, &mut buf).map_err(direct_refusal)?;
    }
    Ok((total, t.elapsed()))
}

fn open_plain(path: &Path, direct: bool) -> Result<File, IoError> {
    if !direct {
        return File::open(path).map_err(|source| IoError::Open { path: path.to_path_buf(), source });
    }
    mode::open_direct(path).map_err(|source| {
        if source.raw_os_error() == Some(libc::EINVAL) {
            IoError::DirectUnsupported { path: path.to_path_buf(), source }
        } else {
            IoError::Open { path: path.to_path_buf(), source }
        }
    })
}

fn direct_refusal(e: IoError) -> IoError {
    match e {
        IoError::Read { path, source, .. } if source.raw_os_error() == Some(libc::EINVAL) => {
            IoError::DirectUnsupported { path, source }
        }
        other => other,
    }
}

/// A non-prefetching loader: one thread reads file `i` to its end into
/// `bufs[i % bufs.len()]` (with O_DIRECT if `direct`), one `read(2)` call per
/// file when the buffer holds it. The baseline [`run_io_bench`] compares the
/// reader with, over the reader's own destinations. Buffers must be at
/// least as large as the files (rounded up to 4096 for `direct`).
pub fn plain_read_into(paths: &[PathBuf], bufs: &mut [AlignedBuf], direct: bool) -> Result<(u64, Duration), IoError> {
    let n = bufs.len().max(1);
    let t = Instant::now();
    let mut total = 0;
    for (i, path) in paths.iter().enumerate() {
        let Some(buf) = bufs.get_mut(i % n) else { break };
        let mut file = open_plain(path, direct)?;
        total += read_loop(&mut file, path, buf).map_err(direct_refusal)?;
    }
    Ok((total, t.elapsed()))
}

/// Result of [`run_io_bench`]: the reader and its baselines, measured in
/// the same call over the same files, passes interleaved.
///
/// Throughputs are medians over passes (the machines these run on are
/// shared, so single passes are noisy), in GB/s (10^9 bytes per second).
#[derive(Clone, Debug, PartialEq)]
pub struct IoBenchReport {
    /// Reader throughput: from `Reader::new` to the last shard delivered.
    pub read_gbps: f64,
    /// Baseline: a non-prefetching loader, [`plain_read_into`]: one thread
    /// reads each file with one `read(2)` call into the same destinations
    /// the reader uses, in turn (O_DIRECT for the direct mode). Same bytes,
    /// same memory, no overlap, no threads.
    pub plain_gbps: f64,
    /// One thread reading each file through a small reused buffer
    /// ([`PLAIN_BUF_BYTES`]: [`plain_sequential_read`], or
    /// [`plain_direct_read`] for the direct mode; like `dd bs=8M
    /// of=/dev/null`). From the page cache that buffer stays in the CPU's
    /// cache, so this measures the source alone, not a way to deliver whole
    /// shards into memory.
    pub plain_small_gbps: f64,
    /// Median over passes of the reader's throughput over the baseline's in
    /// the pass just before it (paired, so load drift cancels out).
    pub ratio: f64,
    /// Bytes per pass.
    pub bytes: u64,
    /// Shards per pass.
    pub shards: usize,
    /// Timed passes of each.
    pub passes: usize,
    /// Mode measured.
    pub mode: ReadMode,
    /// Reader threads.
    pub threads: usize,
    /// Reader depth (in flight).
    pub depth: usize,
    /// Reader chunk size.
    pub chunk_bytes: usize,
    /// Seconds the reader passes took in total.
    pub read_secs: f64,
    /// Seconds the `plain_gbps` passes took in total.
    pub plain_secs: f64,
    /// Seconds the consumer waited in `next()`, over all passes.
    pub wait_secs: f64,
    /// What the `plain_gbps` baseline was, in words.
    pub baseline: String,
    /// Files the file system refused O_DIRECT for (read buffered instead).
    pub direct_fallbacks: u64,
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json_f64(x: f64) -> String {
    if x.is_finite() { format!("{x:.4}") } else { "null".into() }
}

impl IoBenchReport {
    /// One JSON object (this crate has no serde).
    pub fn to_json(&self) -> String {
        format!(
            "{{\"read_gbps\":{},\"plain_gbps\":{},\"plain_small_gbps\":{},\"ratio\":{},\"bytes\":{},\"shards\":{},\"passes\":{},\
             \"mode\":{},\"threads\":{},\"depth\":{},\"chunk_bytes\":{},\"read_secs\":{},\
             \"plain_secs\":{},\"wait_secs\":{},\"baseline\":{},\"direct_fallbacks\":{}}}",
            json_f64(self.read_gbps),
            json_f64(self.plain_gbps),
            json_f64(self.plain_small_gbps),
            json_f64(self.ratio),
            self.bytes,
            self.shards,
            self.passes,
            json_str(self.mode.as_str()),
            self.threads,
            self.depth,
            self.chunk_bytes,
            json_f64(self.read_secs),
            json_f64(self.plain_secs),
            json_f64(self.wait_secs),
            json_str(&self.baseline),
            self.direct_fallbacks,
        )
    }
}

impl std::fmt::Display for IoBenchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "io {} {}t depth {}: {:.2} GB/s vs {:.2} GB/s for the {} ({:.0}%); {:.2} GB/s through a {} MiB \
             buffer; {} shards, {:.1} MB x {} passes",
            self.mode,
            self.threads,
            self.depth,
            self.read_gbps,
            self.plain_gbps,
            self.baseline,
            self.ratio * 100.0,
            self.plain_small_gbps,
            PLAIN_BUF_BYTES >> 20,
            self.shards,
            self.bytes as f64 / 1e6,
            self.passes
        )
    }
}

/// One pass of the reader over every shard in order, consumer recycling each
/// destination as soon as it gets it. Returns the destinations, the time and
/// the consumer's wait.
pub fn reader_pass(
    shards: &[ShardSpec],
    dests: Vec<AlignedBuf>,
    opts: &ReaderOptions,
) -> Result<(Vec<AlignedBuf>, Duration, Duration, u64), IoError> {
    let t = Instant::now();
    let mut reader = Reader::new(shards.to_vec(), 0..shards.len(), dests, opts.clone())?;
    while let Some(r) = reader.next() {
        let filled = r?;
        reader.recycle(filled.dest);
    }
    let elapsed = t.elapsed();
    let stats = reader.stats();
    Ok((reader.into_destinations(), elapsed, stats.wait_total, stats.direct_fallbacks))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// Measures the reader against the plain baselines over `shards`: one
/// untimed warm-up of each, then `passes` timed passes of each, interleaved.
/// The reader reads into `opts.depth` aligned destinations as large as the
/// largest shard (so memory use is `depth` times that).
pub fn run_io_bench(shards: &[ShardSpec], opts: &ReaderOptions, passes: usize) -> Result<IoBenchReport, IoError> {
    let passes = passes.max(1);
    let paths: Vec<PathBuf> = shards.iter().map(|s| s.path.clone()).collect();
    let bytes: u64 = shards.iter().map(|s| s.len).sum();
    let largest = shards.iter().map(|s| s.len).max().unwrap_or(0);
    let cap = usize::try_from(largest).unwrap_or(usize::MAX).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
    let depth = opts.depth.max(1);
    let direct = opts.mode == ReadMode::Direct;
    let small = |buf: usize| {
        if direct { plain_direct_read(&paths, buf) } else { plain_sequential_read(&paths, buf) }
    };
    let what = if direct { "plain O_DIRECT loader" } else { "plain loader" };
    let baseline = format!("{what}: 1 thread, 1 read call per file into the reader's {depth} destinations");

    // Warm-up: page cache (unless direct), destination pages, code paths.
    let mut dests: Vec<AlignedBuf> = (0..depth).map(|_| AlignedBuf::new(cap)).collect();
    small(PLAIN_BUF_BYTES)?;
    plain_read_into(&paths, &mut dests, direct)?;
    let (d, ..) = reader_pass(shards, dests, opts)?;
    dests = d;

    let (mut read_t, mut plain_t, mut wait_t, mut fallbacks) = (Duration::ZERO, Duration::ZERO, Duration::ZERO, 0);
    let (mut read_g, mut plain_g, mut small_g, mut ratios) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..passes {
        small_g.push(gbps(bytes, small(PLAIN_BUF_BYTES)?.1));
        let (_, t) = plain_read_into(&paths, &mut dests, direct)?;
        plain_t += t;
        plain_g.push(gbps(bytes, t));
        let (d, t, w, f) = reader_pass(shards, dests, opts)?;
        dests = d;
        read_t += t;
        read_g.push(gbps(bytes, t));
        if let (Some(r), Some(p)) = (read_g.last(), plain_g.last()) {
            if *p > 0.0 {
                ratios.push(r / p);
            }
        }
        wait_t += w;
        fallbacks += f;
    }
    let read_gbps = median(read_g);
    let plain_gbps = median(plain_g);
    Ok(IoBenchReport {
        read_gbps,
        plain_gbps,
        plain_small_gbps: median(small_g),
        ratio: median(ratios),
        bytes,
        shards: shards.len(),
        passes,
        mode: opts.mode,
        threads: opts.threads,
        depth,
        chunk_bytes: opts.chunk_bytes,
        read_secs: read_t.as_secs_f64(),
        plain_secs: plain_t.as_secs_f64(),
        wait_secs: wait_t.as_secs_f64(),
        baseline,
        direct_fallbacks: fallbacks,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_is_well_formed() {
        let r = IoBenchReport {
            read_gbps: 1.5,
            plain_gbps: f64::NAN,
            plain_small_gbps: 2.0,
            ratio: 0.0,
            bytes: 10,
            shards: 2,
            passes: 1,
            mode: ReadMode::Mmap,
            threads: 2,
            depth: 2,
            chunk_bytes: 4096,
            read_secs: 0.1,
            plain_secs: 0.1,
            wait_secs: 0.0,
            baseline: "a \"quoted\"\nline".into(),
            direct_fallbacks: 0,
        };
        let j = r.to_json();
        assert!(j.starts_with("{\"read_gbps\":1.5000,\"plain_gbps\":null"));
        assert!(j.contains("\"mode\":\"mmap\""));
        assert!(j.contains("a \\\"quoted\\\"\\u000aline"));
        assert!(j.ends_with('}'));
    }
}
