use airllm_io::bench::reader_pass;
use airllm_io::*;
use rand::RngCore;
fn med(mut v: Vec<f64>) -> f64 { v.sort_by(f64::total_cmp); v[v.len() / 2] }
fn main() -> anyhow::Result<()> {
    let base = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target/tmp"));
    for (n, mib) in [(8usize, 64usize), (2, 256), (64, 4)] {
        let tmp = tempfile::tempdir_in(base)?;
        let mut shards = vec![];
        let mut rng = rand::rng();
        for i in 0..n { let mut b = vec![0u8; mib << 20]; rng.fill_bytes(&mut b); let p = tmp.path().join(format!("f{i}")); std::fs::write(&p, &b)?; shards.push(ShardSpec::new(p, b.len() as u64)); }
        let total = (n * (mib << 20)) as f64;
        let mut dests: Vec<AlignedBuf> = (0..2).map(|_| AlignedBuf::new(mib << 20)).collect();
        let cfgs = [(ReadMode::Pread, 1), (ReadMode::Mmap, 1), (ReadMode::Pread, 2), (ReadMode::Mmap, 2)];
        let mut res: Vec<Vec<f64>> = vec![vec![]; cfgs.len()];
        for pass in 0..25 {
            for (k, (m, t)) in cfgs.iter().enumerate() {
                let opts = ReaderOptions { depth: 2, threads: *t, mode: *m, ..ReaderOptions::default() };
                let (d, el, _, _) = reader_pass(&shards, dests, &opts)?; dests = d;
                if pass > 0 { res[k].push(total / el.as_secs_f64() / 1e9); }
            }
        }
        let line: Vec<String> = cfgs.iter().zip(&res).map(|((m, t), r)| format!("{m} {t}t {:.2}", med(r.clone()))).collect();
        println!("{n} x {mib} MiB: {}", line.join(" | "));
    }
    Ok(())
}
