//! `pread` against `mmap`, interleaved, for large and small shards: the
//! measurement behind the default read mode (see the crate docs).
//!
//! `cargo run --release -p airllm-io --example modes -- [DIR] [PASSES]`
//! (defaults: target/tmp, 25 passes; the first pass is a warm-up).

use airllm_io::bench::reader_pass;
use airllm_io::{AlignedBuf, ReadMode, ReaderOptions, ShardSpec};
use rand::RngCore;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().cloned().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/tmp").into());
    let passes: usize = args.get(1).map_or(Ok(25), |s| s.parse())?;
    std::fs::create_dir_all(&dir)?;
    for (files, mib) in [(8usize, 64usize), (2, 256), (64, 4)] {
        let tmp = tempfile::tempdir_in(&dir)?;
        let mut shards = vec![];
        let mut rng = rand::rng();
        let mut bytes = vec![0u8; mib << 20];
        for i in 0..files {
            rng.fill_bytes(&mut bytes);
            let path = tmp.path().join(format!("shard{i}.bin"));
            std::fs::write(&path, &bytes)?;
            shards.push(ShardSpec::new(path, bytes.len() as u64));
        }
        let total = (files * (mib << 20)) as u64;
        let mut dests: Vec<AlignedBuf> = (0..2).map(|_| AlignedBuf::new(mib << 20)).collect();
        let runs = [(ReadMode::Pread, 1), (ReadMode::Mmap, 1), (ReadMode::Pread, 2), (ReadMode::Mmap, 2)];
        let mut gbps: Vec<Vec<f64>> = vec![vec![]; runs.len()];
        for pass in 0..passes.max(2) {
            for (k, &(mode, threads)) in runs.iter().enumerate() {
                let opts = ReaderOptions { depth: 2, threads, mode, ..ReaderOptions::default() };
                let (d, time, ..) = reader_pass(&shards, dests, &opts)?;
                dests = d;
                if pass > 0 {
                    gbps[k].push(airllm_io::gbps(total, time));
                }
            }
        }
        let cols: Vec<String> = runs.iter().zip(gbps).map(|((m, t), g)| format!("{m} {t}t {:.2}", median(g))).collect();
        println!("{files} x {mib} MiB: {} GB/s", cols.join(" | "));
    }
    Ok(())
}
