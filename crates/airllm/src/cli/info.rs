//! `airllm info`: adapters, features and limits.

/// List GPU adapters with the features and limits the engine uses.
#[derive(clap::Args, Debug)]
pub struct InfoArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: InfoArgs) -> anyhow::Result<()> {
    let adapters = airllm_gpu::list_adapters();
    if a.json {
        let v: Vec<serde_json::Value> = adapters
            .iter()
            .map(|r| {
                serde_json::json!({
                    "name": r.name, "backend": format!("{:?}", r.backend), "device_type": format!("{:?}", r.device_type),
                    "driver": r.driver, "features": r.features, "subgroup_sizes": [r.subgroup_sizes.0, r.subgroup_sizes.1],
                    "max_storage_binding": r.max_binding, "max_buffer": r.max_buffer,
                    "max_workgroup_storage": r.max_workgroup_storage, "max_invocations": r.max_invocations,
                    "device_memory": r.vram_bytes,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    if adapters.is_empty() {
        println!(
            "no GPU adapter found. On Linux without a GPU install Mesa's software Vulkan driver \
             (apt-get install mesa-vulkan-drivers)."
        );
        return Ok(());
    }
    println!(
        "airllm {} ({} adapter(s), best first; pick one with --adapter or AIRLLM_ADAPTER)",
        env!("CARGO_PKG_VERSION"),
        adapters.len()
    );
    for r in adapters {
        println!("{r}");
    }
    Ok(())
}
