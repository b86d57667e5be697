//! The local API: HTTP on 127.0.0.1 only, and every call needs the bearer
//! token from `api.json` in the data directory (readable by its owner
//! only). The token is compared in constant time. A request whose `Host`
//! is not this loopback address (a web page that re-bound its own name to
//! 127.0.0.1, "DNS rebinding") or that a browser marked with a foreign
//! `Origin` is refused before the token is looked at; every refusal is
//! counted (`chainmail_api_refused_total`). `/metrics` needs the token
//! too: its counters tell when the user sends and which mailboxes are
//! busy.
//!
//! - `GET /v1/status`: node and client status
//! - `POST /v1/account` `{"op": ...}`: the account's requests (contacts,
//!   messages, inbox, safety numbers, communities; see
//!   `chainmail_client::AccountRequest`)
//! - `GET /metrics`: Prometheus text

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chainmail_mixnet::{ClientStats, NodeStats};
use chainmail_net::NetMetrics;
use chainmail_store::StoreStats;
use rand::RngExt;
use tokio::sync::{mpsc, oneshot};

use chainmail_client::hex::hex;
use serde::{Deserialize, Serialize};

/// Where the local API listens and its token; written to `api.json` in the
/// data directory (readable by the owner only).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiInfo {
    /// Port on 127.0.0.1.
    pub port: u16,
    /// Bearer token.
    pub token: String,
    /// The node's peer id.
    pub peer_id: String,
    /// The node's process id.
    pub pid: u32,
}

/// Requests from the local API to the runtime.
pub enum ApiCall {
    /// Status snapshot.
    Status(oneshot::Sender<Status>),
    /// Prometheus metrics text.
    Metrics(oneshot::Sender<String>),
    /// The node descriptors this node knows.
    Directory(oneshot::Sender<Vec<DirectoryEntry>>),
    /// An account request from the CLI.
    Account {
        /// What the user asks.
        request: chainmail_client::AccountRequest,
        /// Where the answer goes.
        reply: oneshot::Sender<Result<chainmail_client::Response, String>>,
    },
}

/// What `GET /v1/status` returns.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Status {
    /// Peer id.
    pub peer_id: String,
    /// Node id (hex of the Ed25519 key).
    pub node_id: String,
    /// Roles.
    pub mix: bool,
    /// Roles.
    pub provider: bool,
    /// Connected peers.
    pub peers: usize,
    /// Every peer this node has been connected to since it started.
    pub peers_seen: Vec<String>,
    /// Descriptors known.
    pub descriptors: usize,
    /// Current epoch.
    pub epoch: u32,
    /// Mixes per layer in the current epoch's directory.
    pub layers: Vec<usize>,
    /// Providers in the current epoch's directory.
    pub providers: usize,
    /// Whether routes can be built.
    pub directory_complete: bool,
    /// The hosted client's address, once it has providers.
    pub address: Option<String>,
    /// Messages sent and not yet acknowledged.
    pub pending: usize,
    /// Packets the client has put on its link.
    pub client_packets_sent: u64,
    /// Addresses the node listens on.
    #[serde(default)]
    pub listen_addrs: Vec<String>,
    /// Addresses others can reach it at: what its descriptor carries.
    #[serde(default)]
    pub announced_addrs: Vec<String>,
    /// Whether the node is a mix or provider of the current directory.
    #[serde(default)]
    pub in_directory: bool,
    /// Whether others can reach the node, and why not.
    #[serde(default)]
    pub reachability: String,
    /// The bootstrap peers, and how reaching them goes.
    #[serde(default)]
    pub bootstrap: Vec<BootstrapStatus>,
    /// Direct mode with contacts, where it is not off.
    #[serde(default)]
    pub direct: Vec<DirectStatus>,
    /// The network's preset and how well it hides senders, as measured.
    #[serde(default)]
    pub anonymity: String,
}

/// Direct mode with one contact, in [`Status`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DirectStatus {
    /// The contact's name.
    pub contact: String,
    /// asked, offered, connecting, relayed, direct, failed.
    pub state: String,
    /// One line for people.
    pub detail: String,
}

/// One node descriptor, as `GET /v1/directory` shows it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct DirectoryEntry {
    /// Node id (hex).
    pub node_id: String,
    /// Whether it offers to mix.
    pub mix: bool,
    /// Whether it offers mailboxes.
    pub provider: bool,
    /// The addresses it announces.
    pub addresses: Vec<String>,
    /// Its software version.
    pub version: String,
}

/// One bootstrap peer, as the node sees it.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct BootstrapStatus {
    /// Its address from the network file.
    pub addr: String,
    /// Connected now.
    pub connected: bool,
    /// Attempts that failed since the last connection.
    pub failures: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// Seconds until the next attempt.
    pub retry_in_secs: Option<u64>,
}

/// A running API server.
pub(crate) struct Api {
    /// Port on 127.0.0.1.
    pub(crate) port: u16,
    /// Bearer token.
    pub(crate) token: String,
}

#[derive(Clone)]
struct AppState {
    calls: mpsc::Sender<ApiCall>,
    token: String,
    port: u16,
    refused: Arc<Refused>,
}

/// Requests refused, by reason.
#[derive(Default)]
struct Refused {
    token: AtomicU64,
    host: AtomicU64,
    origin: AtomicU64,
}

/// Starts the API on 127.0.0.1:`port` (0: any free port).
pub(crate) async fn serve(port: u16, calls: mpsc::Sender<ApiCall>) -> Result<Api> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("cannot listen on 127.0.0.1:{port} for the local API"))?;
    let port = listener.local_addr()?.port();
    let token = hex(&rand::rng().random::<[u8; 32]>());
    let state = AppState {
        calls,
        token: token.clone(),
        port,
        refused: Arc::default(),
    };
    let app = Router::new()
        .route("/v1/status", get(status))
        .route("/v1/account", post(account))
        .route("/v1/directory", get(directory))
        .route("/metrics", get(metrics))
        .with_state(state);
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(Api { port, token })
}

/// `None` if the request is for this loopback address, from no web page,
/// and carries the token; otherwise the refusal (counted).
fn unauthorized(state: &AppState, headers: &HeaderMap) -> Option<Response> {
    let port = state.port;
    let local = [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    // With this port, or with none (HTTP's default would be 80, but no
    // page can make a browser send a bare loopback Host for another name).
    let is_local = |h: &str| {
        local.iter().any(|l| {
            l.eq_ignore_ascii_case(h)
                || l.rsplit_once(':')
                    .is_some_and(|(name, _)| name.eq_ignore_ascii_case(h))
        })
    };
    let host = headers.get("host").and_then(|v| v.to_str().ok());
    if !host.is_some_and(is_local) {
        state.refused.host.fetch_add(1, Ordering::Relaxed);
        return Some(
            (
                StatusCode::FORBIDDEN,
                "the local API answers only requests addressed to 127.0.0.1, localhost or [::1] (and its own port)\n",
            )
                .into_response(),
        );
    }
    // Browsers mark requests made by a page with its origin; the CLI and
    // scripts send none. No page may drive the node.
    if let Some(origin) = headers.get("origin") {
        let ok = origin.to_str().is_ok_and(|o| {
            local
                .iter()
                .any(|l| o.eq_ignore_ascii_case(&format!("http://{l}")))
        });
        if !ok {
            state.refused.origin.fetch_add(1, Ordering::Relaxed);
            return Some(
                (
                    StatusCode::FORBIDDEN,
                    "requests from web pages are refused\n",
                )
                    .into_response(),
            );
        }
    }
    let expected = format!("Bearer {}", state.token);
    let given = headers
        .get("authorization")
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if bool::from(subtle::ConstantTimeEq::ct_eq(given, expected.as_bytes())) {
        return None;
    }
    state.refused.token.fetch_add(1, Ordering::Relaxed);
    Some(
        (
            StatusCode::UNAUTHORIZED,
            "missing or wrong token (see api.json in the data directory)\n",
        )
            .into_response(),
    )
}

async fn call<T>(
    state: &AppState,
    make: impl FnOnce(oneshot::Sender<T>) -> ApiCall,
) -> Result<T, Response> {
    let (tx, rx) = oneshot::channel();
    state
        .calls
        .send(make(tx))
        .await
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "node is stopping\n").into_response())?;
    rx.await
        .map_err(|_| (StatusCode::SERVICE_UNAVAILABLE, "node is stopping\n").into_response())
}

async fn status(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    match call(&state, ApiCall::Status).await {
        Ok(s) => Json(s).into_response(),
        Err(r) => r,
    }
}

async fn directory(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    match call(&state, ApiCall::Directory).await {
        Ok(d) => Json(d).into_response(),
        Err(r) => r,
    }
}

async fn account(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<chainmail_client::AccountRequest>,
) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    match call(&state, |reply| ApiCall::Account { request, reply }).await {
        Ok(Ok(value)) => Json(value).into_response(),
        Ok(Err(e)) => (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": e })),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn metrics(State(state): State<AppState>, headers: HeaderMap) -> Response {
    if let Some(refusal) = unauthorized(&state, &headers) {
        return refusal;
    }
    match call(&state, ApiCall::Metrics).await {
        Ok(mut text) => {
            let r = &state.refused;
            counter(
                &mut text,
                "chainmail_api_refused_total",
                "Local API requests refused, by reason (no or wrong token, a foreign Host, a web page's Origin).",
                &[
                    ("{reason=\"token\"}".into(), r.token.load(Ordering::Relaxed)),
                    ("{reason=\"host\"}".into(), r.host.load(Ordering::Relaxed)),
                    (
                        "{reason=\"origin\"}".into(),
                        r.origin.load(Ordering::Relaxed),
                    ),
                ],
            );
            ([("content-type", "text/plain; version=0.0.4")], text).into_response()
        }
        Err(r) => r,
    }
}

/// One counter in the Prometheus text format: help, type, and each sample
/// (`labels` is `""` or `{name="value",…}`).
pub(crate) fn counter(out: &mut String, name: &str, help: &str, samples: &[(String, u64)]) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
    for (labels, value) in samples {
        let _ = writeln!(out, "{name}{labels} {value}");
    }
}

/// Renders the counters in the Prometheus text format.
pub(crate) fn render_metrics(
    node: Option<(&NodeStats, usize, chainmail_mixnet::ReplayStatus)>,
    client: Option<&ClientStats>,
    net: &NetMetrics,
    store: Option<StoreStats>,
    session: Option<&chainmail_session::MessengerStats>,
) -> String {
    let mut out = String::new();
    if let Some(s) = session {
        counter(
            &mut out,
            "chainmail_session_dropped_total",
            "Session messages not shown to the user, by reason.",
            &[
                ("{reason=\"stamp\"}".into(), s.rejected_stamp),
                ("{reason=\"binding\"}".into(), s.rejected_binding),
                ("{reason=\"undecryptable\"}".into(), s.undecryptable),
                ("{reason=\"malformed\"}".into(), s.malformed),
                ("{reason=\"not_accepted\"}".into(), s.hidden),
                ("{reason=\"blocked\"}".into(), s.from_blocked),
                ("{reason=\"duplicate\"}".into(), s.duplicates),
                ("{reason=\"bad_descriptor\"}".into(), s.bad_descriptors),
                ("{reason=\"contacts_full\"}".into(), s.requests_refused_full),
                (
                    "{reason=\"partial_evicted\"}".into(),
                    s.partial_messages_evicted,
                ),
            ],
        );
    }
    if let Some((s, queue, replay)) = node {
        counter(
            &mut out,
            "chainmail_packets_in_total",
            "Mix packets received.",
            &[(String::new(), s.packets_in)],
        );
        counter(
            &mut out,
            "chainmail_packets_out_total",
            "Mix packets sent on.",
            &[(String::new(), s.packets_out)],
        );
        counter(
            &mut out,
            "chainmail_delivered_total",
            "Packets stored into mailboxes.",
            &[(String::new(), s.delivered)],
        );
        counter(
            &mut out,
            "chainmail_drop_cover_discarded_total",
            "Drop cover discarded here.",
            &[(String::new(), s.drop_cover_discarded)],
        );
        counter(
            &mut out,
            "chainmail_mix_loops_total",
            "Mix loop cover sent and returned.",
            &[
                ("{state=\"sent\"}".into(), s.loops_sent),
                ("{state=\"returned\"}".into(), s.loops_returned),
            ],
        );
        let dropped: Vec<(String, u64)> = s
            .dropped
            .iter()
            .map(|(r, n)| (format!("{{reason=\"{}\"}}", r.as_str()), *n))
            .collect();
        counter(
            &mut out,
            "chainmail_packets_dropped_total",
            "Packets dropped, by reason.",
            &dropped,
        );
        counter(
            &mut out,
            "chainmail_fetches_total",
            "Mailbox fetches.",
            &[
                ("{result=\"served\"}".into(), s.fetches_served),
                ("{result=\"refused\"}".into(), s.fetches_refused),
            ],
        );
        counter(
            &mut out,
            "chainmail_errands_total",
            "DHT lookups and publications carried out for clients (as their exit).",
            &[
                ("{state=\"received\"}".into(), s.errands),
                ("{state=\"answered\"}".into(), s.errands_answered),
            ],
        );
        let _ = writeln!(
            out,
            "# HELP chainmail_queue_depth Packets held for their delay.\n# TYPE chainmail_queue_depth gauge\nchainmail_queue_depth {queue}"
        );
        let _ = writeln!(
            out,
            "# HELP chainmail_replay_tags Replay tags recorded for the live mix keys.\n# TYPE chainmail_replay_tags gauge\nchainmail_replay_tags {}\n\
             # HELP chainmail_replay_filter_bytes Memory of the replay filters.\n# TYPE chainmail_replay_filter_bytes gauge\nchainmail_replay_filter_bytes {}\n\
             # HELP chainmail_replay_false_positive_rate Estimated chance that an honest packet is dropped as a replay.\n# TYPE chainmail_replay_false_positive_rate gauge\nchainmail_replay_false_positive_rate {:e}\n\
             # HELP chainmail_replay_over_capacity 1 when a key saw more packets than the node is sized for.\n# TYPE chainmail_replay_over_capacity gauge\nchainmail_replay_over_capacity {}",
            replay.tags,
            replay.bytes,
            replay.false_positive_rate,
            u8::from(replay.over_capacity)
        );
    }
    if let Some(c) = client {
        counter(
            &mut out,
            "chainmail_client_packets_total",
            "Packets the client sent, by kind.",
            &[
                ("{kind=\"real\"}".into(), c.real_sent),
                ("{kind=\"ack\"}".into(), c.acks_sent),
                ("{kind=\"drop\"}".into(), c.drop_sent),
                ("{kind=\"loop\"}".into(), c.loops_sent),
                ("{kind=\"errand\"}".into(), c.errand_packets_sent),
            ],
        );
        counter(
            &mut out,
            "chainmail_client_retransmissions_total",
            "Messages sent again.",
            &[(String::new(), c.retransmissions)],
        );
        counter(
            &mut out,
            "chainmail_client_errands_total",
            "DHT lookups and publications sent through the mixnet to an exit provider, by outcome.",
            &[
                ("{outcome=\"retried\"}".into(), c.errands_retried),
                ("{outcome=\"failed\"}".into(), c.errands_failed),
            ],
        );
        counter(
            &mut out,
            "chainmail_client_foreign_surbs_total",
            "Messages whose acknowledgement SURB did not start at one of our providers (not acknowledged: it would have revealed this node).",
            &[(String::new(), c.foreign_surbs)],
        );
    }
    let d = &net.frames_dropped;
    counter(
        &mut out,
        "chainmail_net_frames_dropped_total",
        "Frames dropped by the network layer, by reason.",
        &[
            ("{reason=\"rate_limited\"}".into(), d.rate_limited),
            ("{reason=\"source_limited\"}".into(), d.source_limited),
            ("{reason=\"malformed\"}".into(), d.malformed),
            ("{reason=\"queue_full\"}".into(), d.queue_full),
            ("{reason=\"no_connection\"}".into(), d.no_connection),
            ("{reason=\"event_queue_full\"}".into(), d.event_queue_full),
        ],
    );
    counter(
        &mut out,
        "chainmail_net_connections_refused_total",
        "Inbound connections refused because their source (IP address, IPv6 /64) had as many as it may.",
        &[(
            "{reason=\"per_source\"}".into(),
            net.connections_refused_per_source,
        )],
    );
    counter(
        &mut out,
        "chainmail_net_frames_total",
        "Frames on the packet protocol.",
        &[
            ("{dir=\"in\"}".into(), net.frames_in),
            ("{dir=\"out\"}".into(), net.frames_out),
        ],
    );
    if let Some(st) = store {
        // Totals only: a mailbox id as a label would tell whoever reads
        // the metrics which mailboxes are busy when.
        let _ = writeln!(
            out,
            "# HELP chainmail_mailboxes Mailboxes holding items.\n# TYPE chainmail_mailboxes gauge\nchainmail_mailboxes {}\n\
             # HELP chainmail_mailbox_items Items held in all mailboxes.\n# TYPE chainmail_mailbox_items gauge\nchainmail_mailbox_items {}",
            st.mailboxes.iter().filter(|m| m.items > 0).count(),
            st.mailboxes.iter().map(|m| m.items).sum::<u64>()
        );
        let _ = writeln!(
            out,
            "# HELP chainmail_mailbox_bytes_total Bytes held in all mailboxes.\n# TYPE chainmail_mailbox_bytes_total gauge\nchainmail_mailbox_bytes_total {}",
            st.total_bytes
        );
    }
    out
}
