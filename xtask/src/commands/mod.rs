pub mod demo;
pub mod fuzz;
pub mod shaders;
pub mod shard;
pub mod synth;
pub mod synth_gguf;
