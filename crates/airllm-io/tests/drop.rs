//! Dropping a reader mid-stream joins its threads, and nothing writes into
//! the destinations after `drop` returns. Its own test binary, so the thread
//! census sees no other test's readers.

use std::time::Duration;

use airllm_io::{AlignedBuf, Destination, ReadMode, Reader, ReaderOptions, ShardSpec};

/// Lends memory the test keeps owning, so it can be inspected after the
/// reader (and this value) is gone.
struct Probe {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: points into an AlignedBuf the test keeps alive (and does not touch)
// until the reader is dropped; moving a Probe does not move that memory.
unsafe impl Send for Probe {}
// SAFETY: see above.
unsafe impl Destination for Probe {
    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }
    fn capacity(&self) -> usize {
        self.len
    }
}

/// Live threads named `airllm-io-*`, where procfs exists (Linux); 0 elsewhere.
fn reader_threads() -> usize {
    let mut n = 0;
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    for entry in tasks {
        let comm = entry.map(|e| e.path().join("comm")).and_then(std::fs::read_to_string).unwrap_or_default();
        if comm.starts_with("airllm-io") {
            n += 1;
        }
    }
    n
}

#[test]
fn drop_mid_stream_joins_and_stops_writing() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let len = 4 << 20;
    let specs: Vec<ShardSpec> = (0..16)
        .map(|i| {
            let path = dir.path().join(format!("s{i}.bin"));
            std::fs::write(&path, vec![i as u8 + 1; len]).unwrap();
            ShardSpec::new(path, len as u64)
        })
        .collect();
    for mode in ReadMode::ALL {
        for held in [0usize, 1] {
            let mut bufs: Vec<AlignedBuf> = (0..4).map(|_| AlignedBuf::new(len)).collect();
            let probes: Vec<Probe> =
                bufs.iter_mut().map(|b| Probe { ptr: Destination::as_mut_ptr(b), len: b.len() }).collect();
            let opts = ReaderOptions { depth: 4, threads: 3, chunk_bytes: 64 << 10, mode, verify: false };
            // An endless schedule: the reader always has work when dropped.
            let mut reader = Reader::new(specs.clone(), (0..specs.len()).cycle(), probes, opts).unwrap();
            let mut keep = Vec::new();
            for _ in 0..held + 1 {
                let f = reader.next().unwrap().unwrap();
                // SAFETY: a delivered shard's memory is no longer written.
                let got = unsafe { std::slice::from_raw_parts(f.dest.ptr, f.len) };
                assert!(got.iter().all(|&b| b == f.shard as u8 + 1));
                keep.push(f.dest);
            }
            if let Some(d) = keep.pop() {
                reader.recycle(d);
            }
            if cfg!(target_os = "linux") {
                assert!(reader_threads() > 0, "workers should be running");
            }
            drop(reader);
            // Joined threads may linger in procfs for a moment after their
            // exit wakes the joiner; give the kernel a little time to reap.
            let mut left = reader_threads();
            for _ in 0..100 {
                if left == 0 {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
                left = reader_threads();
            }
            assert_eq!(left, 0, "{mode}: worker threads outlived drop");
            let before: Vec<Vec<u8>> = bufs.iter().map(|b| b.to_vec()).collect();
            std::thread::sleep(Duration::from_millis(100));
            for (i, b) in bufs.iter().enumerate() {
                assert!(b[..] == before[i][..], "{mode}: destination {i} written after drop");
            }
            drop(keep);
        }
    }
}
