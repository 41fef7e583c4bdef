//! `cargo xtask shaders`: preprocess every pipeline variant, validate it with
//! naga, and translate it for every backend (SPIR-V, MSL, HLSL, GLSL ES) with
//! the capabilities each offers; `spirv-val` checks the SPIR-V where installed
//! (Debian: `apt-get install spirv-tools`; with `CI` set, a missing binary is
//! an error). `--out DIR` writes every translation for reading.

use std::path::PathBuf;

use airllm_gpu::translate::{Output, SpirvValUnavailable, spirv_target_env, spirv_val, translate_all_shaders};
use anyhow::{Context, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Write each translation to DIR/<target>/<label with / as .>.<ext>.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Do not run spirv-val even when it is installed.
    #[arg(long)]
    no_spirv_val: bool,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let n = airllm_gpu::validate_all_shaders()?;
    println!("{n} shader variants preprocessed and validated (WGSL, all capabilities)");
    let mut spirv_failures = Vec::new();
    let (mut checked, mut missing) = (0usize, false);
    let mut write_err = None;
    let report = translate_all_shaders(|key, t| {
        if let Some(dir) = &args.out {
            let name = key.to_string().replace('/', ".");
            let dir = dir.join(t.target.name());
            let (path, bytes): (PathBuf, Vec<u8>) = match &t.output {
                Output::Words(w) => (dir.join(format!("{name}.spv")), bytemuck_words(w)),
                Output::Text(s) => {
                    let ext = match t.target {
                        airllm_gpu::translate::Target::Msl => "metal",
                        airllm_gpu::translate::Target::Hlsl => "hlsl",
                        _ => "comp",
                    };
                    (dir.join(format!("{name}.{ext}")), s.clone().into_bytes())
                }
            };
            let r = std::fs::create_dir_all(&dir)
                .and_then(|_| std::fs::write(&path, bytes))
                .with_context(|| format!("writing {}", path.display()));
            if let Err(e) = r {
                write_err.get_or_insert(e);
            }
        }
        if let (Output::Words(words), false, false) = (&t.output, args.no_spirv_val, missing) {
            match spirv_val(words, spirv_target_env(&t.version)) {
                Ok(Ok(())) => checked += 1,
                Ok(Err(report)) => spirv_failures.push(format!("{key} ({}): {report}", t.version)),
                Err(SpirvValUnavailable::NotInstalled) => missing = true,
            }
        }
    })?;
    if let Some(e) = write_err {
        return Err(e);
    }
    for (target, translated, not_offered) in &report.per_target {
        let extra = if *not_offered > 0 {
            format!(" ({not_offered} need features wgpu's {:?} backend never offers)", target.backend())
        } else {
            String::new()
        };
        println!("{target}: {translated} of {} translated{extra}", report.variants);
    }
    if args.no_spirv_val {
        println!("spirv-val: not run (--no-spirv-val)");
    } else if missing {
        let msg = "spirv-val is not installed (apt-get install spirv-tools): SPIR-V checked by naga only";
        if std::env::var_os("CI").is_some() {
            bail!("{msg}; CI is set, so this is an error");
        }
        println!("{msg}");
    } else {
        println!("spirv-val: {checked} SPIR-V modules valid");
    }
    if let Some(dir) = &args.out {
        println!("translations written under {}", dir.display());
    }
    let failed = report.failures.len() + spirv_failures.len();
    for e in &report.failures {
        eprintln!("{e}\n");
    }
    for e in &spirv_failures {
        eprintln!("{e}\n");
    }
    if failed > 0 {
        bail!("{failed} translations failed");
    }
    Ok(())
}

fn bytemuck_words(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}
