//! Integration tests of the reader: bytes, order, backpressure, errors.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use airllm_io::{AlignedBuf, Destination, IoError, ReadMode, Reader, ReaderOptions, ShardSpec};
use proptest::prelude::*;
use rand::{Rng, SeedableRng};

/// Temp dirs on the real disk (target/tmp), not a tmpfs /tmp, so O_DIRECT works.
fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).expect("tempdir")
}

fn write_shards(dir: &Path, sizes: &[usize], seed: u64) -> (Vec<ShardSpec>, Vec<Vec<u8>>) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut specs = Vec::new();
    let mut contents = Vec::new();
    for (i, &len) in sizes.iter().enumerate() {
        let mut bytes = vec![0u8; len];
        rng.fill(&mut bytes[..]);
        let path = dir.join(format!("shard{i:03}.bin"));
        std::fs::write(&path, &bytes).expect("write shard");
        specs.push(ShardSpec { path, len: len as u64, checksum: Some(xxhash_rust::xxh3::xxh3_64(&bytes)) });
        contents.push(bytes);
    }
    (specs, contents)
}

fn opts(mode: ReadMode, depth: usize, threads: usize, chunk: usize) -> ReaderOptions {
    ReaderOptions { depth, threads, chunk_bytes: chunk, mode, verify: true }
}

/// Reads the whole schedule, holding up to `hold` filled destinations before
/// recycling the oldest, and checks every byte and the order.
fn check_stream<D: Destination + AsRef<[u8]>>(
    specs: &[ShardSpec],
    contents: &[Vec<u8>],
    schedule: Vec<usize>,
    dests: Vec<D>,
    o: ReaderOptions,
    hold: usize,
) -> airllm_io::ReaderStats {
    let depth = o.depth.min(dests.len());
    let mut reader = Reader::new(specs.to_vec(), schedule.clone(), dests, o).expect("reader");
    let mut held = std::collections::VecDeque::new();
    let mut order = Vec::new();
    while let Some(r) = reader.next() {
        let f = r.expect("read");
        assert_eq!(f.len, contents[f.shard].len());
        assert!(f.bytes() == contents[f.shard].as_slice(), "shard {} bytes differ", f.shard);
        order.push(f.shard);
        held.push_back(f.dest);
        if held.len() > hold.min(depth - 1) {
            reader.recycle(held.pop_front().expect("held"));
        }
    }
    assert_eq!(order, schedule);
    let stats = reader.stats();
    assert!(stats.max_in_flight <= depth, "{stats}");
    assert_eq!(stats.delivered as usize, schedule.len());
    stats
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]

    #[test]
    fn delivers_file_bytes(
        sizes in prop::collection::vec(
            prop_oneof![0usize..5000, 4096usize..200_000, Just(65536usize), 300_000usize..1_500_000],
            1..7,
        ),
        depth in 1usize..5,
        threads in 1usize..5,
        chunk_pages in 1usize..40,
        hold in 0usize..3,
        seed in any::<u64>(),
    ) {
        let dir = tempdir();
        let (specs, contents) = write_shards(dir.path(), &sizes, seed);
        let max = sizes.iter().copied().max().unwrap_or(0);
        let schedule: Vec<usize> = (0..specs.len()).chain((0..specs.len()).rev()).collect();
        for mode in ReadMode::ALL {
            let o = opts(mode, depth, threads, chunk_pages * 4096);
            // Aligned destinations (O_DIRECT in place) ...
            let aligned: Vec<AlignedBuf> = (0..depth + 1).map(|_| AlignedBuf::new(max)).collect();
            let s = check_stream(&specs, &contents, schedule.clone(), aligned, o.clone(), hold);
            if mode == ReadMode::Direct && s.direct_fallbacks > 0 {
                eprintln!("O_DIRECT refused under {}: direct mode read buffered", dir.path().display());
            }
            // ... and unaligned ones (O_DIRECT through the bounce buffer).
            let unaligned: Vec<Vec<u8>> = (0..depth).map(|_| vec![0u8; max + 1]).collect();
            let unaligned: Vec<Offset> = unaligned.into_iter().map(Offset).collect();
            check_stream(&specs, &contents, schedule.clone(), unaligned, o, hold);
        }
    }
}

/// A destination starting one byte into a Vec: never 4096-aligned.
struct Offset(Vec<u8>);

// SAFETY: the heap block does not move with the value; we lend `len - 1`
// bytes starting at index 1.
unsafe impl Destination for Offset {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.0[1..].as_mut_ptr()
    }
    fn capacity(&self) -> usize {
        self.0.len() - 1
    }
}

impl AsRef<[u8]> for Offset {
    fn as_ref(&self) -> &[u8] {
        &self.0[1..]
    }
}

/// Counts destinations in use: +1 when the reader starts a read into one
/// (it calls `as_mut_ptr` exactly once per read), -1 when the test recycles.
struct Counted {
    buf: AlignedBuf,
    in_use: Arc<AtomicUsize>,
    max: Arc<AtomicUsize>,
}

// SAFETY: AlignedBuf's heap memory does not move with the value.
unsafe impl Destination for Counted {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        let now = self.in_use.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        Destination::as_mut_ptr(&mut self.buf)
    }
    fn capacity(&self) -> usize {
        self.buf.len()
    }
}

#[test]
fn never_more_than_depth_in_flight() {
    let dir = tempdir();
    let sizes: Vec<usize> = (0..12).map(|i| 50_000 + i * 30_000).collect();
    let (specs, contents) = write_shards(dir.path(), &sizes, 7);
    for depth in 1..=4 {
        for dests in [depth, depth + 2] {
            let in_use = Arc::new(AtomicUsize::new(0));
            let max = Arc::new(AtomicUsize::new(0));
            let d: Vec<Counted> = (0..dests)
                .map(|_| Counted { buf: AlignedBuf::new(500_000), in_use: in_use.clone(), max: max.clone() })
                .collect();
            let mut reader =
                Reader::new(specs.clone(), 0..specs.len(), d, opts(ReadMode::Pread, depth, 3, 16384)).unwrap();
            let mut held = Vec::new();
            while let Some(r) = reader.next() {
                let f = r.unwrap();
                assert_eq!(&f.dest.buf[..f.len], contents[f.shard].as_slice());
                held.push(f.dest);
                // Hold as many as possible before giving them back.
                if held.len() == depth {
                    for h in held.drain(..) {
                        in_use.fetch_sub(1, Ordering::SeqCst);
                        reader.recycle(h);
                    }
                }
            }
            let observed = max.load(Ordering::SeqCst);
            assert!(observed <= depth, "depth {depth}: {observed} in flight");
            assert_eq!(observed, depth.min(specs.len()), "depth {depth} should be reached");
            assert_eq!(reader.stats().max_in_flight, observed);
        }
    }
}

#[test]
fn repeating_schedule_skipping_resident_layers() {
    let dir = tempdir();
    let layers = 6;
    let sizes: Vec<usize> = (0..layers + 2).map(|i| 40_000 + i * 12_288).collect();
    let (specs, contents) = write_shards(dir.path(), &sizes, 11);
    // Shard 0 (embedding) and the last (lm_head) resident: stream 1..=L per token, 3 tokens.
    let schedule: Vec<usize> = (0..3).flat_map(|_| 1..=layers).collect();
    for mode in ReadMode::ALL {
        let dests: Vec<Vec<u8>> = (0..3).map(|_| vec![0; 200_000]).collect();
        let s = check_stream(&specs, &contents, schedule.clone(), dests, opts(mode, 3, 2, 8192), 1);
        assert_eq!(s.per_shard[0].count, 0);
        assert_eq!(s.per_shard[1].count, 3);
        assert_eq!(s.bytes, schedule.iter().map(|&i| sizes[i] as u64).sum::<u64>());
    }
}

#[test]
fn infinite_schedule_stops_when_consumer_stops() {
    let dir = tempdir();
    let (specs, contents) = write_shards(dir.path(), &[10_000, 20_000, 30_000], 3);
    let dests: Vec<Vec<u8>> = (0..2).map(|_| vec![0; 30_000]).collect();
    let mut reader = Reader::new(specs, (0..3).cycle(), dests, opts(ReadMode::Pread, 2, 2, 4096)).unwrap();
    for i in 0..20 {
        let f = reader.next().unwrap().unwrap();
        assert_eq!(f.shard, i % 3);
        assert_eq!(f.bytes(), contents[i % 3].as_slice());
        reader.recycle(f.dest);
    }
}

fn expect_err<D: Destination>(reader: &mut Reader<D>) -> IoError {
    match reader.next() {
        Some(Err(e)) => e,
        Some(Ok(f)) => panic!("expected an error, got shard {}", f.shard),
        None => panic!("expected an error, got the end"),
    }
}

fn names(e: &IoError, path: &Path) {
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
}

#[test]
fn truncated_file_is_named() {
    let dir = tempdir();
    let (mut specs, _) = write_shards(dir.path(), &[8192, 20_000, 8192], 5);
    // The manifest promises more than the file holds.
    specs[1].len = 40_960;
    for mode in ReadMode::ALL {
        let dests: Vec<AlignedBuf> = (0..2).map(|_| AlignedBuf::new(40_960)).collect();
        let mut reader = Reader::new(specs.clone(), 0..3, dests, opts(mode, 2, 2, 4096)).unwrap();
        assert_eq!(reader.next().unwrap().unwrap().shard, 0);
        let e = expect_err(&mut reader);
        assert!(matches!(e, IoError::Truncated { expected: 40_960, actual: 20_000, .. }), "{mode}: {e:?}");
        names(&e, &specs[1].path);
        assert!(e.to_string().contains("re-run the shard tool"));
        // The stream goes on after the error.
        assert_eq!(reader.next().unwrap().unwrap().shard, 2);
        assert!(reader.next().is_none());
    }
}

#[test]
fn checksum_mismatch_is_named() {
    let dir = tempdir();
    let (mut specs, contents) = write_shards(dir.path(), &[100_000, 50_000], 13);
    specs[0].checksum = Some(specs[0].checksum.unwrap() ^ 1);
    for mode in ReadMode::ALL {
        let dests: Vec<Vec<u8>> = (0..2).map(|_| vec![0; 100_000]).collect();
        let mut reader = Reader::new(specs.clone(), 0..2, dests, opts(mode, 2, 2, 8192)).unwrap();
        let e = expect_err(&mut reader);
        assert!(matches!(e, IoError::Checksum { .. }), "{e:?}");
        names(&e, &specs[0].path);
        let f = reader.next().unwrap().unwrap();
        assert_eq!(f.bytes(), contents[1].as_slice());
    }
    // Verification off: no check.
    let dests: Vec<Vec<u8>> = vec![vec![0; 100_000]];
    let o = ReaderOptions { verify: false, ..opts(ReadMode::Pread, 1, 1, 8192) };
    let mut reader = Reader::new(specs, [0], dests, o).unwrap();
    assert_eq!(reader.next().unwrap().unwrap().bytes(), contents[0].as_slice());
}

#[test]
fn open_failure_is_named() {
    let dir = tempdir();
    let missing = dir.path().join("missing.bin");
    let specs = vec![ShardSpec::new(&missing, 4096)];
    for mode in ReadMode::ALL {
        let mut reader = Reader::new(specs.clone(), [0], vec![vec![0u8; 4096]], opts(mode, 1, 1, 4096)).unwrap();
        let e = expect_err(&mut reader);
        assert!(matches!(e, IoError::Open { .. }), "{e:?}");
        names(&e, &missing);
        assert!(reader.next().is_none());
    }
}

#[test]
fn too_large_names_both_sizes() {
    let dir = tempdir();
    let (specs, _) = write_shards(dir.path(), &[10_000, 5000], 17);
    let mut reader =
        Reader::new(specs.clone(), [0, 1], vec![vec![0u8; 6000]], opts(ReadMode::Pread, 1, 1, 4096)).unwrap();
    let e = expect_err(&mut reader);
    assert!(matches!(e, IoError::TooLarge { len: 10_000, capacity: 6000, .. }), "{e:?}");
    let msg = e.to_string();
    names(&e, &specs[0].path);
    assert!(msg.contains("10000") && msg.contains("6000"), "{msg}");
    assert_eq!(reader.next().unwrap().unwrap().shard, 1);
}

#[test]
fn bad_index_and_starvation() {
    let dir = tempdir();
    let (specs, _) = write_shards(dir.path(), &[1000, 2000], 19);
    let mut reader =
        Reader::new(specs, [0, 5, 1, 0], vec![vec![0u8; 2000]], opts(ReadMode::Pread, 4, 1, 4096)).unwrap();
    assert_eq!(reader.options().depth, 1);
    let held = reader.next().unwrap().unwrap();
    assert!(matches!(expect_err(&mut reader), IoError::BadIndex { index: 5, count: 2 }));
    // The only destination is held: next() cannot make progress.
    assert!(matches!(expect_err(&mut reader), IoError::Starved { held: 1 }));
    reader.recycle(held.dest);
    assert_eq!(reader.next().unwrap().unwrap().shard, 1);
}

#[test]
fn reader_is_send() {
    fn send<T: Send>() {}
    send::<Reader<Vec<u8>>>();
    send::<Reader<AlignedBuf>>();
}

#[test]
fn rejects_bad_options() {
    let dests = || vec![vec![0u8; 10]];
    let bad = |o: ReaderOptions, d: Vec<Vec<u8>>| Reader::new(Vec::new(), 0..0, d, o).err();
    assert!(matches!(
        bad(ReaderOptions { depth: 0, ..ReaderOptions::default() }, dests()),
        Some(IoError::InvalidOption { option: "depth", .. })
    ));
    assert!(matches!(
        bad(ReaderOptions { threads: 0, ..ReaderOptions::default() }, dests()),
        Some(IoError::InvalidOption { option: "threads", .. })
    ));
    assert!(matches!(
        bad(ReaderOptions::default(), Vec::new()),
        Some(IoError::InvalidOption { option: "destinations", .. })
    ));
    assert!(matches!("odirect".parse::<ReadMode>(), Err(IoError::UnknownMode(_))));
    for m in ReadMode::ALL {
        assert_eq!(m.to_string().parse::<ReadMode>().unwrap(), m);
    }
}

#[test]
fn bench_report_runs() {
    let dir = tempdir();
    let (specs, _) = write_shards(dir.path(), &[300_000, 1 << 20, 12_345], 23);
    let paths: Vec<PathBuf> = specs.iter().map(|s| s.path.clone()).collect();
    let (bytes, _) = airllm_io::bench::plain_sequential_read(&paths, 65536).unwrap();
    assert_eq!(bytes, 300_000 + (1 << 20) + 12_345);
    match airllm_io::bench::plain_direct_read(&paths, 65536) {
        Ok((b, _)) => assert_eq!(b, bytes),
        Err(IoError::DirectUnsupported { .. }) => eprintln!("O_DIRECT unsupported here; skipped"),
        Err(e) => panic!("{e}"),
    }
    let mut dests: Vec<AlignedBuf> = (0..2).map(|_| AlignedBuf::new(1 << 20)).collect();
    assert_eq!(airllm_io::bench::plain_read_into(&paths, &mut dests, false).unwrap().0, bytes);
    // File i lands in dests[i % 2]: file 2 (12 345 bytes) overwrote the start of dests[0].
    assert_eq!(&dests[0][..12_345], std::fs::read(&paths[2]).unwrap().as_slice());
    assert_eq!(&dests[1][..], std::fs::read(&paths[1]).unwrap().as_slice());
    for mode in ReadMode::ALL {
        let r = airllm_io::bench::run_io_bench(&specs, &opts(mode, 2, 2, 65536), 1).unwrap();
        assert_eq!(r.bytes, bytes);
        assert_eq!(r.mode, mode);
        assert!(r.to_json().contains("\"read_gbps\":"));
    }
}
