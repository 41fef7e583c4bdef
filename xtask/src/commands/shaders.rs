//! `cargo xtask shaders`: preprocess every pipeline variant and validate it with naga.

pub fn run() -> anyhow::Result<()> {
    let n = airllm_gpu::validate_all_shaders()?;
    println!("{n} shader variants preprocessed and validated");
    Ok(())
}
