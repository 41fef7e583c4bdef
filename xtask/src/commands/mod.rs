pub mod demo;
pub mod shaders;
pub mod shard;
pub mod synth;
