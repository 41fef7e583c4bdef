pub mod args;
pub mod bench;
pub mod chat;
pub mod generate;
pub mod info;
pub mod inspect;
pub mod shard;
