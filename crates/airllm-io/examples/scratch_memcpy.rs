fn main() {
    let n = 64usize << 20;
    let src = vec![1u8; 8 * n];
    let mut dst: Vec<Vec<u8>> = (0..2).map(|_| vec![2u8; n]).collect();
    for round in 0..5 {
        let t = std::time::Instant::now();
        for i in 0..8 { dst[i % 2].copy_from_slice(&src[i * n..(i + 1) * n]); }
        let e = t.elapsed();
        let t2 = std::time::Instant::now();
        let mut small = vec![0u8; 8 << 20];
        small.fill(3);
        let t2 = { let _ = t2; std::time::Instant::now() };
        for i in 0..8 { for j in 0..8 { small.copy_from_slice(&src[i * n + j * (8 << 20)..i * n + (j + 1) * (8 << 20)]); } }
        let e2 = t2.elapsed();
        std::hint::black_box(&dst); std::hint::black_box(&small);
        println!("round {round}: memcpy 64MiB->64MiB {:.2} GB/s, 64MiB->8MiB reused {:.2} GB/s", (8 * n) as f64 / e.as_secs_f64() / 1e9, (8 * n) as f64 / e2.as_secs_f64() / 1e9);
    }
}
