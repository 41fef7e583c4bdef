//! An OpenAI-compatible HTTP server (feature `server`): `POST /v1/chat/completions`,
//! `POST /v1/completions` (JSON or server-sent events), `GET /v1/models`, `GET /health`
//! and `GET /metrics` (Prometheus text).
//!
//! The server speaks HTTP and the OpenAI schema; everything below — queueing,
//! admission, KV memory, passes, sampling, stop strings — belongs to a [`Backend`]
//! (see [`backend`] for the contract). Two come with the crate: [`BatchedBackend`] over an
//! [`AutoModel`](crate::AutoModel), continuous batching on the engine's scheduler (every
//! running request shares each pass over the weights), and [`MockBackend`], deterministic
//! and instant, for tests and for measuring the server's own overhead.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use airllm::serve::{MockBackend, MockConfig, Server, ServerConfig, shutdown_signal};
//!
//! let backend = Arc::new(MockBackend::new(MockConfig::default()));
//! let rt = tokio::runtime::Runtime::new()?;
//! rt.block_on(async {
//!     let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
//!     Server::new(backend, ServerConfig::default()).serve(listener, shutdown_signal()).await
//! })?;
//! # Ok(()) }
//! ```
//!
//! Modules: [`backend`] (the trait, its types, [`StopFilter`]), [`openai`] (request and
//! response bodies, validation), [`http`] (routes, auth, shutdown), [`stream`] (events to
//! JSON or SSE, cancellation on disconnect), [`metrics`], [`mock`], [`batched`].
//!
//! Non-goals: TLS (put a reverse proxy in front), several models per server, `n` > 1,
//! tools and structured output.

pub mod backend;
pub mod batched;
pub mod http;
pub mod metrics;
pub mod mock;
pub mod openai;
pub mod stream;

pub use backend::{
    Backend, BackendError, BackendMetrics, GenEvent, GenRequest, RequestId, StopFilter, SubmitError, TokenLogprob,
    TopLogprob,
};
pub use batched::BatchedBackend;
pub use http::{Server, ServerConfig, shutdown_signal};
pub use mock::{MockBackend, MockConfig};
