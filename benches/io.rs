//! io benches: the prefetching shard reader against a plain single-threaded
//! read of the same files.
//!
//! Eight 64 MiB files in a temp dir under the target dir (a real disk, not a
//! tmpfs `/tmp`), read hot from the page cache except in the direct mode.
//! Groups `io/read/{mode}/{threads}t` time one reader pass over all files
//! (depth 2, default chunks); `io/read/plain/1t` and `io/read/plain_direct/1t`
//! are the baselines: a plain loader reading each file with one call into
//! the same two destinations (`dests`), and a loop through one reused 8 MiB
//! buffer (`buf_8MiB`, cache-resident, like `dd bs=8M`).

use std::path::PathBuf;
use std::time::Duration;

use airllm_io::bench::{plain_direct_read, plain_read_into, plain_sequential_read, reader_pass};
use airllm_io::{AlignedBuf, ReadMode, ReaderOptions, ShardSpec};
use criterion::{Criterion, Throughput};
use rand::RngCore;

const FILES: usize = 8;
const FILE_BYTES: usize = 64 << 20;

struct Files {
    _dir: tempfile::TempDir,
    shards: Vec<ShardSpec>,
    paths: Vec<PathBuf>,
}

fn make_files() -> Option<Files> {
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let dir = std::fs::create_dir_all(&base).and_then(|()| tempfile::tempdir_in(&base)).ok()?;
    let mut rng = rand::rng();
    let mut bytes = vec![0u8; FILE_BYTES];
    let mut shards = Vec::new();
    for i in 0..FILES {
        rng.fill_bytes(&mut bytes);
        let path = dir.path().join(format!("layer{i:02}.bin"));
        std::fs::write(&path, &bytes).ok()?;
        shards.push(ShardSpec::new(path, FILE_BYTES as u64));
    }
    let paths = shards.iter().map(|s| s.path.clone()).collect();
    Some(Files { _dir: dir, shards, paths })
}

pub fn benches(c: &mut Criterion) {
    let Some(files) = make_files() else {
        eprintln!("io benches skipped: cannot write {} MiB of temp files", (FILES * FILE_BYTES) >> 20);
        return;
    };
    let total = (FILES * FILE_BYTES) as u64;
    // Warm the page cache.
    let _ = plain_sequential_read(&files.paths, 8 << 20);

    let runs = [
        (ReadMode::Pread, 1),
        (ReadMode::Pread, 2),
        (ReadMode::Pread, 4),
        (ReadMode::Mmap, 1),
        (ReadMode::Mmap, 2),
        (ReadMode::Direct, 1),
        (ReadMode::Direct, 2),
    ];
    for (mode, threads) in runs {
        let opts = ReaderOptions { depth: 2, threads, mode, verify: false, ..ReaderOptions::default() };
        let mut group = c.benchmark_group(format!("io/read/{mode}/{threads}t"));
        group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
        group.throughput(Throughput::Bytes(total));
        let mut dests: Option<Vec<AlignedBuf>> = Some((0..2).map(|_| AlignedBuf::new(FILE_BYTES)).collect());
        group.bench_function("reader", |b| {
            b.iter_custom(|iters| {
                let mut time = Duration::ZERO;
                for _ in 0..iters {
                    let d = dests.take().unwrap_or_default();
                    match reader_pass(&files.shards, d, &opts) {
                        Ok((d, t, ..)) => {
                            dests = Some(d);
                            time += t;
                        }
                        Err(e) => panic!("io bench {mode}/{threads}t: {e}"),
                    }
                }
                time
            });
        });
        group.finish();
    }

    for (name, direct) in [("plain", false), ("plain_direct", true)] {
        let mut group = c.benchmark_group(format!("io/read/{name}/1t"));
        group.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
        group.throughput(Throughput::Bytes(total));
        let mut dests: Vec<AlignedBuf> = (0..2).map(|_| AlignedBuf::new(FILE_BYTES)).collect();
        group.bench_function("dests", |b| {
            b.iter_custom(|iters| {
                let mut time = Duration::ZERO;
                for _ in 0..iters {
                    match plain_read_into(&files.paths, &mut dests, direct) {
                        Ok((_, t)) => time += t,
                        Err(e) => panic!("io bench {name}: {e}"),
                    }
                }
                time
            });
        });
        group.bench_function("buf_8MiB", |b| {
            b.iter_custom(|iters| {
                let mut time = Duration::ZERO;
                for _ in 0..iters {
                    let r = if direct {
                        plain_direct_read(&files.paths, 8 << 20)
                    } else {
                        plain_sequential_read(&files.paths, 8 << 20)
                    };
                    match r {
                        Ok((_, t)) => time += t,
                        Err(e) => panic!("io bench {name}: {e}"),
                    }
                }
                time
            });
        });
        group.finish();
    }
}
