//! `airllm serve`: the OpenAI-compatible HTTP server over a model.

use super::args::ModelArgs;

/// Serve a model over the OpenAI HTTP API (chat and completions, streamed or not).
///
/// Endpoints: POST /v1/chat/completions, POST /v1/completions, GET /v1/models,
/// GET /health, GET /metrics (Prometheus). Stop with Ctrl-C or SIGTERM: in-flight
/// requests get --shutdown-grace seconds to finish, then are cancelled; exit status 0.
#[derive(clap::Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub spec: super::spec::SpecArgs,
    /// Address to listen on (0.0.0.0 for every interface).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 picks a free one; the address is printed).
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/* (also AIRLLM_API_KEY, which keeps the
    /// key out of the process list). /health and /metrics stay open.
    #[arg(long, env = "AIRLLM_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Requests that may wait for a sequence slot; beyond that, new requests get 429.
    #[arg(long, default_value_t = 64)]
    pub max_waiting: usize,
    /// The model name clients send (default: the --model file or directory name; the
    /// --model argument as given is accepted too).
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Seconds in-flight requests may run after SIGINT/SIGTERM before they are cancelled.
    #[arg(long, default_value_t = 10.0)]
    pub shutdown_grace: f64,
    /// Serve a deterministic mock backend instead of loading the model (measures the
    /// server's own overhead; --model is only its name).
    #[arg(long, hide = true)]
    pub mock: bool,
    /// Mock backend: milliseconds per pass.
    #[arg(long, hide = true, default_value_t = 0.0)]
    pub mock_pass_ms: f64,
}

/// The name to serve: the file stem of a .gguf, the directory name, or a repo id as given.
#[cfg(feature = "server")]
pub fn default_model_name(model: &str) -> String {
    let p = std::path::Path::new(model);
    if p.exists() {
        let stem = if p.is_file() { p.file_stem() } else { p.file_name() };
        if let Some(s) = stem {
            return s.to_string_lossy().into_owned();
        }
    }
    model.trim_end_matches('/').to_string()
}

#[cfg(not(feature = "server"))]
pub fn run(_a: ServeArgs) -> anyhow::Result<()> {
    anyhow::bail!("this airllm was built without the `server` feature; rebuild with `--features server`")
}

#[cfg(feature = "server")]
pub fn run(a: ServeArgs) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::time::Duration;

    use airllm::serve::{Backend, BatchedBackend, MockBackend, MockConfig, Server, ServerConfig, shutdown_signal};
    use anyhow::Context;

    let name = a.served_model_name.clone().unwrap_or_else(|| default_model_name(&a.model.model));
    let max_sequences = a.model.engine.max_sequences.unwrap_or(airllm::Options::default().max_sequences);
    if max_sequences == 0 {
        anyhow::bail!("--max-sequences must be at least 1");
    }
    let max_context = a.model.engine.max_context.unwrap_or(4096);
    if !(a.shutdown_grace >= 0.0 && a.shutdown_grace.is_finite()) {
        anyhow::bail!("--shutdown-grace must be a number of seconds >= 0");
    }
    let backend: Arc<dyn Backend> = if a.mock {
        Arc::new(MockBackend::new(MockConfig {
            model_name: name.clone(),
            context_len: max_context,
            max_sequences,
            max_waiting: a.max_waiting,
            kv_blocks: max_sequences * max_context.div_ceil(16),
            block_size: 16,
            pass_delay: Duration::from_secs_f64(a.mock_pass_ms.max(0.0) / 1e3),
        }))
    } else {
        // The engine reads --max-sequences (and --max-context, --kv-tokens, ...) from the
        // shared engine options; the backend batches up to that many per pass.
        let args = a.model.clone();
        let spec = a.spec.clone();
        Arc::new(
            BatchedBackend::spawn(name.clone(), a.max_waiting, move || {
                super::spec::load_with_speculation(&args, &spec, true)
            })
            .with_context(|| format!("loading {}", a.model.model))?,
        )
    };
    let cfg = ServerConfig {
        api_key: a.api_key.clone().filter(|k| !k.is_empty()),
        model_aliases: vec![a.model.model.clone()],
        shutdown_grace: Duration::from_secs_f64(a.shutdown_grace),
        ..ServerConfig::default()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let result = rt.block_on(async {
        let listener = tokio::net::TcpListener::bind((a.host.as_str(), a.port))
            .await
            .with_context(|| format!("cannot listen on {}:{} (is the port in use? try --port)", a.host, a.port))?;
        let addr = listener.local_addr().context("reading the listening address")?;
        eprintln!(
            "serving {name:?} (context {} tokens) on http://{addr}/v1{}; Ctrl-C to stop",
            backend.context_len(),
            if cfg.api_key.is_some() { ", API key required" } else { "" }
        );
        let signal = async {
            shutdown_signal().await;
            eprintln!("shutting down: finishing in-flight requests (signal again to exit at once)");
            tokio::spawn(async {
                shutdown_signal().await;
                eprintln!("second signal: exiting now");
                std::process::exit(130);
            });
        };
        Server::new(backend, cfg).serve(listener, signal).await.context("serving")
    });
    rt.shutdown_timeout(Duration::from_secs(1));
    result?;
    eprintln!("server stopped");
    Ok(())
}
