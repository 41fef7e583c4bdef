use airllm_io::bench::reader_pass;
use airllm_io::*;
use rand::RngCore;
use std::os::unix::fs::FileExt;
fn med(mut v: Vec<f64>) -> f64 { v.sort_by(f64::total_cmp); v[v.len() / 2] }
fn cpu() -> f64 { let mut r: libc::rusage = unsafe { std::mem::zeroed() }; unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut r) }; (r.ru_utime.tv_sec + r.ru_stime.tv_sec) as f64 + (r.ru_utime.tv_usec + r.ru_stime.tv_usec) as f64 * 1e-6 }
fn main() -> anyhow::Result<()> {
    let base = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/tmp"));
    let tmp = tempfile::tempdir_in(base)?;
    let mib = 64usize; let n = 8usize;
    let mut shards = vec![];
    let mut rng = rand::rng();
    for i in 0..n { let mut b = vec![0u8; mib << 20]; rng.fill_bytes(&mut b); let p = tmp.path().join(format!("f{i}")); std::fs::write(&p, &b)?; shards.push(ShardSpec::new(p, b.len() as u64)); }
    let total = (n * (mib << 20)) as f64;
    let mut bufs: Vec<AlignedBuf> = (0..2).map(|_| { let mut b = AlignedBuf::new(mib << 20); b.fill(1); b }).collect();
    let names = ["A plain 1 call/file into 1 buf", "B pread 8MiB pieces, 2 bufs alternating", "C reader 1t chunk 8M d2", "D reader 1t chunk 64M d2", "G reader 1t chunk 8M d1", "H reader 1t 8M d2 same reader reused"];
    let mut res: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut cpus: Vec<Vec<f64>> = vec![vec![]; names.len()];
    let mut dests: Vec<AlignedBuf> = (0..2).map(|_| AlignedBuf::new(mib << 20)).collect();
    for _ in 0..21 {
        let (t, c) = (std::time::Instant::now(), cpu());
        for s in &shards { let f = std::fs::File::open(&s.path)?; f.read_exact_at(&mut bufs[0][..], 0)?; }
        res[0].push(total / t.elapsed().as_secs_f64() / 1e9); cpus[0].push(total / (cpu() - c) / 1e9);
        let (t, c) = (std::time::Instant::now(), cpu());
        for (i, s) in shards.iter().enumerate() { let f = std::fs::File::open(&s.path)?; for c in 0..8 { let r = c * (8 << 20)..(c + 1) * (8 << 20); f.read_exact_at(&mut bufs[i % 2][r], (c * (8 << 20)) as u64)?; } }
        res[1].push(total / t.elapsed().as_secs_f64() / 1e9); cpus[1].push(total / (cpu() - c) / 1e9);
        for (k, (d_, ch)) in [(2, 8usize), (2, 64), (1, 8)].into_iter().enumerate() {
            let opts = ReaderOptions { depth: d_, threads: 1, chunk_bytes: ch << 20, mode: ReadMode::Pread, verify: false };
            let (t, c) = (std::time::Instant::now(), cpu());
            let (d, _el, _, _) = reader_pass(&shards, dests, &opts)?; dests = d;
            res[2 + k].push(total / t.elapsed().as_secs_f64() / 1e9); cpus[2 + k].push(total / (cpu() - c) / 1e9);
        }
        {
            let opts = ReaderOptions { depth: 2, threads: 1, chunk_bytes: 8 << 20, mode: ReadMode::Pread, verify: false };
            let mut r = Reader::new(shards.clone(), (0..n).cycle(), std::mem::take(&mut dests), opts)?;
            let f = r.next().unwrap()?; r.recycle(f.dest); // warm
            let (t, c) = (std::time::Instant::now(), cpu());
            for _ in 0..n { let f = r.next().unwrap()?; r.recycle(f.dest); }
            res[5].push(total / t.elapsed().as_secs_f64() / 1e9); cpus[5].push(total / (cpu() - c) / 1e9);
            dests = r.into_destinations();
        }
    }
    for ((n, r), c) in names.iter().zip(res).zip(cpus) { println!("{n}: wall median {:.2} max {:.2} | per-cpu-second median {:.2}", med(r.clone()), r.iter().cloned().fold(0.0, f64::max), med(c)); }
    Ok(())
}
