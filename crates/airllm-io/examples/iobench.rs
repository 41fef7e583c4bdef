//! Reader vs plain read over temp files, every mode and a few thread counts.
//!
//! `cargo run --release -p airllm-io --example iobench -- [DIR] [FILES] [MIB] [PASSES]`
//! (defaults: target/tmp, 8 files, 64 MiB, 7 passes). Files are written once
//! and read hot from the page cache, except by the direct mode.

use airllm_io::bench::run_io_bench;
use airllm_io::{ReadMode, ReaderOptions, ShardSpec};
use rand::RngCore;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = args.first().cloned().unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/tmp").into());
    let files: usize = args.get(1).map_or(Ok(8), |s| s.parse())?;
    let mib: usize = args.get(2).map_or(Ok(64), |s| s.parse())?;
    let passes: usize = args.get(3).map_or(Ok(7), |s| s.parse())?;
    std::fs::create_dir_all(&dir)?;
    let tmp = tempfile::tempdir_in(&dir)?;
    let mut rng = rand::rng();
    let mut shards = Vec::new();
    for i in 0..files {
        let mut bytes = vec![0u8; mib << 20];
        rng.fill_bytes(&mut bytes);
        let path = tmp.path().join(format!("shard{i}.bin"));
        std::fs::write(&path, &bytes)?;
        shards.push(ShardSpec::new(path, bytes.len() as u64));
    }
    let chunk: usize =
        std::env::var("CHUNK_MIB").ok().and_then(|s| s.parse().ok()).unwrap_or(airllm_io::DEFAULT_CHUNK_BYTES >> 20)
            << 20;
    let depth: usize = std::env::var("DEPTH").ok().and_then(|s| s.parse().ok()).unwrap_or(2);
    let mut runs = vec![];
    for t in [1, 2, 4] {
        runs.push((ReadMode::Pread, t));
    }
    for t in [1, 2, 4] {
        runs.push((ReadMode::Mmap, t));
    }
    for t in [1, 2, 4] {
        runs.push((ReadMode::Direct, t));
    }
    println!(
        "{files} files x {mib} MiB in {}, chunk {} MiB, depth {depth}, {passes} passes",
        tmp.path().display(),
        chunk >> 20
    );
    let only: Option<Vec<ReadMode>> =
        std::env::var("MODES").ok().map(|m| m.split(',').filter_map(|s| s.parse().ok()).collect());
    let threads_list: Option<Vec<usize>> =
        std::env::var("THREADS").ok().map(|m| m.split(',').filter_map(|s| s.parse().ok()).collect());
    runs.retain(|(m, t)| {
        only.as_ref().is_none_or(|o| o.contains(m)) && threads_list.as_ref().is_none_or(|l| l.contains(t))
    });
    println!("| mode | threads | reader GB/s | plain loader GB/s | reader / plain | plain 8 MiB-buffer read GB/s |");
    println!("| --- | --- | --- | --- | --- | --- |");
    for (mode, threads) in runs {
        let opts = ReaderOptions { depth, threads, chunk_bytes: chunk, mode, verify: false };
        let r = run_io_bench(&shards, &opts, passes)?;
        println!(
            "| {} | {} | {:.2} | {:.2} | {:.0}% | {:.2} |",
            r.mode,
            r.threads,
            r.read_gbps,
            r.plain_gbps,
            r.ratio * 100.0,
            r.plain_small_gbps
        );
    }
    Ok(())
}
