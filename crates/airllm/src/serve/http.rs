//! The axum application: routes, the API key check, request counting, handlers, and
//! graceful shutdown.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::backend::{Backend, BackendError, SubmitError};
use super::metrics::{HttpMetrics, endpoint_label};
use super::openai::{self, ApiError, ModelList, ModelObject, check_chat, check_common, check_completion, gen_request};
use super::stream::{Api, Generation, ResponseMeta, collect, sse_response};

/// How the server behaves (the backend has its own limits: sequences, queue, context).
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// When set, `/v1/*` requires `Authorization: Bearer <key>` (`/health` and `/metrics`
    /// stay open for probes and scrapers).
    pub api_key: Option<String>,
    /// Other names requests may use for the model (e.g. the `--model` argument as given).
    pub model_aliases: Vec<String>,
    /// After a shutdown signal, how long in-flight requests may run to completion before
    /// the backend cancels them.
    pub shutdown_grace: Duration,
    /// A comment line is sent on a quiet stream this often.
    pub keep_alive: Duration,
    /// Largest request body.
    pub max_body_bytes: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            api_key: None,
            model_aliases: Vec::new(),
            shutdown_grace: Duration::from_secs(10),
            keep_alive: Duration::from_secs(15),
            max_body_bytes: 8 << 20,
        }
    }
}

struct AppState {
    backend: Arc<dyn Backend>,
    cfg: ServerConfig,
    metrics: Arc<HttpMetrics>,
    draining: AtomicBool,
    created: u64,
}

/// The HTTP server over a backend.
///
/// ```no_run
/// # async fn demo(backend: std::sync::Arc<dyn airllm::serve::Backend>) -> std::io::Result<()> {
/// use airllm::serve::{Server, ServerConfig, shutdown_signal};
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8080").await?;
/// Server::new(backend, ServerConfig::default()).serve(listener, shutdown_signal()).await
/// # }
/// ```
#[derive(Clone)]
pub struct Server {
    state: Arc<AppState>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server").field("model", &self.state.backend.model_name()).finish()
    }
}

fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Server {
    /// A server for `backend`.
    pub fn new(backend: Arc<dyn Backend>, cfg: ServerConfig) -> Server {
        Server {
            state: Arc::new(AppState {
                backend,
                cfg,
                metrics: Arc::new(HttpMetrics::default()),
                draining: AtomicBool::new(false),
                created: unix_now(),
            }),
        }
    }

    /// The HTTP counters (requests by endpoint and status, SSE bytes).
    pub fn metrics(&self) -> &HttpMetrics {
        &self.state.metrics
    }

    /// The application, to mount elsewhere or drive with `tower::ServiceExt::oneshot`.
    pub fn router(&self) -> Router {
        let st = self.state.clone();
        Router::new()
            .route("/v1/chat/completions", post(chat))
            .route("/v1/completions", post(completions))
            .route("/v1/models", get(models))
            .route("/v1/models/{*id}", get(model))
            .route("/health", get(health))
            .route("/metrics", get(metrics))
            .fallback(not_found)
            .method_not_allowed_fallback(method_not_allowed)
            .layer(axum::middleware::from_fn_with_state(st.clone(), track))
            .layer(DefaultBodyLimit::max(st.cfg.max_body_bytes))
            .with_state(st)
    }

    /// Serve on `listener` until `shutdown` resolves, then: stop accepting connections,
    /// answer new requests on open ones with 503, let in-flight requests finish for
    /// `shutdown_grace`, then have the backend cancel the rest (their streams end with an
    /// error event and `[DONE]`), and return once every connection is closed (at most a
    /// few seconds later). The backend is shut down in every case.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let st = self.state.clone();
        let (tx, rx) = tokio::sync::watch::channel(false);
        let mut graceful = rx.clone();
        // Without TCP_NODELAY a stream's small writes wait for the client's delayed ACK
        // (measured: 40 ms to the first token with an instant backend).
        let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!("TCP_NODELAY: {e}");
            }
        });
        let server = axum::serve(listener, self.router()).with_graceful_shutdown(async move {
            let _ = graceful.wait_for(|v| *v).await;
        });
        let mut server = tokio::spawn(server.into_future());
        let joined = |r: Result<std::io::Result<()>, tokio::task::JoinError>| match r {
            Ok(r) => r,
            Err(e) => Err(std::io::Error::other(format!("the HTTP server task failed: {e}"))),
        };
        tokio::select! {
            r = &mut server => {
                st.backend.shutdown();
                return joined(r);
            }
            _ = shutdown => {}
        }
        st.draining.store(true, Ordering::SeqCst);
        let _ = tx.send(true);
        let in_flight = st.metrics.in_flight().load(Ordering::Relaxed);
        tracing::info!("shutting down: {in_flight} requests in flight, {:?} grace", st.cfg.shutdown_grace);
        if let Ok(r) = tokio::time::timeout(st.cfg.shutdown_grace, &mut server).await {
            st.backend.shutdown();
            return joined(r);
        }
        tracing::info!("grace period over: cancelling the requests still running");
        st.backend.shutdown();
        match tokio::time::timeout(Duration::from_secs(5), &mut server).await {
            Ok(r) => joined(r),
            Err(_) => {
                tracing::warn!("connections still open 5 s after cancelling; closing them");
                server.abort();
                Ok(())
            }
        }
    }
}

/// Resolves on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = (status, axum::Json(self.body())).into_response();
        if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        r
    }
}

/// Equal without an early exit, so the key cannot be guessed byte by byte from timings.
fn same_key(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn check_key(cfg: &ServerConfig, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = &cfg.api_key else { return Ok(()) };
    let unauthorized = |m: &str| ApiError::new(401, "invalid_request_error", m).with_code("invalid_api_key");
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(unauthorized(
            "missing API key: send it as the header `Authorization: Bearer <key>` (this server was started with \
             --api-key)",
        ));
    };
    let given = value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim);
    match given {
        Some(g) if same_key(g.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(unauthorized("incorrect API key provided")),
        None => Err(unauthorized("the Authorization header must be `Bearer <key>`")),
    }
}

/// Counts every request by endpoint and status; checks the API key on `/v1/*`.
async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = endpoint_label(req.uri().path());
    let resp = match req.uri().path().starts_with("/v1/") {
        true => match check_key(&st.cfg, req.headers()) {
            Ok(()) => next.run(req).await,
            Err(e) => e.into_response(),
        },
        false => next.run(req).await,
    };
    st.metrics.record(endpoint, resp.status().as_u16());
    resp
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        404,
        "invalid_request_error",
        format!(
            "no endpoint {} {}; this server has POST /v1/chat/completions, POST /v1/completions, GET /v1/models, \
             GET /health and GET /metrics",
            req.method(),
            req.uri().path()
        ),
    )
    .with_code("unknown_url")
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(405, "invalid_request_error", format!("{} is not allowed on {}", req.method(), req.uri().path()))
        .with_code("method_not_allowed")
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    let m = st.backend.metrics();
    let draining = st.draining.load(Ordering::SeqCst);
    let body = json!({
        "status": if draining { "shutting_down" } else { "ok" },
        "model": st.backend.model_name(),
        "running": m.running,
        "waiting": m.waiting,
    });
    let status = if draining { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    (status, axum::Json(body)).into_response()
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let text = st.metrics.render(&st.backend.metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

fn model_object(st: &AppState) -> ModelObject {
    ModelObject { id: st.backend.model_name(), object: "model", created: st.created, owned_by: "airllm" }
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(ModelList { object: "list", data: vec![model_object(&st)] }).into_response()
}

async fn model(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> Response {
    match check_model(&st, &id) {
        Ok(()) => axum::Json(model_object(&st)).into_response(),
        Err(e) => e.into_response(),
    }
}

fn check_model(st: &AppState, model: &str) -> Result<(), ApiError> {
    let name = st.backend.model_name();
    if model == name || st.cfg.model_aliases.iter().any(|a| a == model) {
        return Ok(());
    }
    if model.is_empty() {
        return Err(ApiError::invalid("model", format!("model must name the served model, {name:?}")));
    }
    Err(ApiError {
        status: 404,
        message: format!("the model {model:?} does not exist; this server serves {name:?} (see GET /v1/models)"),
        kind: "invalid_request_error",
        param: Some("model".into()),
        code: Some("model_not_found"),
    })
}

fn body_bytes(body: Result<Bytes, BytesRejection>) -> Result<Bytes, ApiError> {
    body.map_err(|e| ApiError::new(e.status().as_u16(), "invalid_request_error", e.body_text()))
}

fn accepting(st: &AppState) -> Result<(), ApiError> {
    if st.draining.load(Ordering::SeqCst) {
        return Err(submit_error(SubmitError::ShuttingDown));
    }
    Ok(())
}

fn submit_error(e: SubmitError) -> ApiError {
    let message = e.to_string();
    match e {
        SubmitError::QueueFull { .. } => ApiError::new(429, "rate_limit_error", message).with_code("queue_full"),
        SubmitError::PromptTooLong { .. } => {
            ApiError::invalid("max_tokens", message).with_code("context_length_exceeded")
        }
        SubmitError::ShuttingDown => ApiError::new(503, "server_error", message).with_code("shutting_down"),
        SubmitError::Invalid { param, message } => ApiError::invalid(param.clone(), format!("{param}: {message}")),
    }
}

fn backend_error(e: BackendError, param: &str) -> ApiError {
    match e {
        BackendError::Invalid { param, message } => ApiError::invalid(param, message),
        BackendError::Internal(m) => ApiError::new(500, "server_error", format!("encoding the {param} failed: {m}")),
    }
}

/// Run CPU work (tokenizing, templating) off the async workers.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(500, "server_error", format!("a worker task failed: {e}")))
}

fn response_id(prefix: &str) -> String {
    format!("{prefix}-{:016x}{:08x}", rand::random::<u64>(), rand::random::<u32>())
}

async fn chat(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    match chat_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn chat_inner(st: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body_bytes(body)?;
    accepting(&st)?;
    let req = openai::parse_chat(&bytes)?;
    check_model(&st, &req.common.model)?;
    let sampling = check_common(&req.common)?;
    let (messages, top_logprobs) = check_chat(&req.chat)?;
    let backend = st.backend.clone();
    let ids = blocking(move || backend.encode_chat(&messages)).await?.map_err(|e| backend_error(e, "messages"))?;
    let gen_req = gen_request(ids, &sampling, top_logprobs, st.backend.context_len(), "messages", None)?;
    let meta = ResponseMeta {
        api: Api::Chat,
        id: response_id("chatcmpl"),
        created: unix_now(),
        model: st.backend.model_name(),
        include_usage: sampling.include_usage,
        logprobs: top_logprobs.is_some(),
    };
    respond(&st, gen_req, meta, sampling.stream).await
}

async fn completions(State(st): State<Arc<AppState>>, body: Result<Bytes, BytesRejection>) -> Response {
    match completions_inner(st, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn completions_inner(st: Arc<AppState>, body: Result<Bytes, BytesRejection>) -> Result<Response, ApiError> {
    let bytes = body_bytes(body)?;
    accepting(&st)?;
    let req = openai::parse_completion(&bytes)?;
    check_model(&st, &req.common.model)?;
    let sampling = check_common(&req.common)?;
    let (prompt, top_logprobs) = check_completion(&req.completion)?;
    let ids = match prompt {
        openai::PromptIn::Ids(ids) => ids,
        openai::PromptIn::Text(text) => {
            let backend = st.backend.clone();
            blocking(move || backend.encode(&text)).await?.map_err(|e| backend_error(e, "prompt"))?
        }
    };
    // The legacy endpoint's default is 16 new tokens (as OpenAI's).
    let gen_req = gen_request(ids, &sampling, top_logprobs, st.backend.context_len(), "prompt", Some(16))?;
    let meta = ResponseMeta {
        api: Api::Completion,
        id: response_id("cmpl"),
        created: unix_now(),
        model: st.backend.model_name(),
        include_usage: sampling.include_usage,
        logprobs: top_logprobs.is_some(),
    };
    respond(&st, gen_req, meta, sampling.stream).await
}

async fn respond(
    st: &Arc<AppState>,
    req: super::backend::GenRequest,
    meta: ResponseMeta,
    stream: bool,
) -> Result<Response, ApiError> {
    let g = Generation::start(&st.backend, &st.metrics, req).map_err(submit_error)?;
    if stream {
        return Ok(sse_response(g, meta, st.metrics.clone(), st.cfg.keep_alive));
    }
    match collect(g).await {
        Ok(c) => Ok(axum::Json(meta.response(c)).into_response()),
        Err(msg) if st.draining.load(Ordering::SeqCst) => {
            Err(ApiError::new(503, "server_error", msg).with_code("shutting_down"))
        }
        Err(msg) => Err(ApiError::new(500, "server_error", msg)),
    }
}
