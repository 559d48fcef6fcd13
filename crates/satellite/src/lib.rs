//! `tandem satellite`: the controller's agent on one node (docs/satellite.md).
//!
//! The controller PUTs the node's complete desired state; the satellite stores it in its
//! state directory before answering, then reconciles in a loop of its own: backing
//! volumes through the storage providers, one blockd resource file per resource, and
//! `adjust` on blockd's admin socket. It keeps doing so with the stored state while the
//! controller is away, and across its own restarts. blockd is a separate process:
//! restarting the satellite never touches I/O.

pub mod reconcile;
pub mod render;
pub mod store;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use model::satellite::{DesiredState, MAX_DESIRED_BYTES, MAX_RESOURCES_PER_NODE, ObservedState};
use serde_json::json;

pub use reconcile::{Ledger, LedgerEntry, Paths, Reconciler};

pub const DEFAULT_LISTEN: &str = "0.0.0.0:3366";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tandem/satellite";
/// A pass runs at least this often (observed state stays this fresh).
pub const PASS_EVERY: Duration = Duration::from_secs(1);
/// Most volumes and nodes one resource may list (blockd's own limits).
const MAX_VOLUMES: usize = 64;
const MAX_NODES: usize = 16;

#[derive(Debug, Clone)]
pub struct Options {
    pub node: String,
    pub listen: SocketAddr,
    pub state_dir: PathBuf,
    /// blockd's resource directory.
    pub config_dir: PathBuf,
    pub admin_socket: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum SatelliteError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("state directory {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    State(String),
    #[error("invalid node name {0:?}: {1}")]
    Node(String, String),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// What the HTTP side and the reconcile loop share.
#[derive(Debug)]
struct Shared {
    node: String,
    state_dir: PathBuf,
    desired: Mutex<Option<DesiredState>>,
    observed: Mutex<ObservedState>,
    wake: Condvar,
    stop: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Checks a desired state before it is stored: it must be for this node and within
/// limits. Everything else (names, options) is checked per resource while applying, so
/// one bad resource does not block the others.
pub fn validate(node: &str, d: &DesiredState) -> Result<(), String> {
    if d.node != node {
        return Err(format!(
            "this satellite is node '{node}', the state is for '{}'; check the node's address in the controller (`tandem node interface list {}`)",
            d.node, d.node
        ));
    }
    if d.resources.len() > MAX_RESOURCES_PER_NODE {
        return Err(format!(
            "{} resources; a node holds at most {MAX_RESOURCES_PER_NODE}",
            d.resources.len()
        ));
    }
    let mut names = BTreeSet::new();
    for r in &d.resources {
        if !names.insert(r.name.to_ascii_lowercase()) {
            return Err(format!("resource '{}' is listed twice", r.name));
        }
        if r.volumes.len() > MAX_VOLUMES || r.nodes.len() > MAX_NODES {
            return Err(format!(
                "resource '{}' lists {} volumes and {} nodes; at most {MAX_VOLUMES} and {MAX_NODES}",
                r.name,
                r.volumes.len(),
                r.nodes.len()
            ));
        }
    }
    let mut pools = BTreeSet::new();
    for p in &d.pools {
        if !pools.insert(&p.name) {
            return Err(format!("storage pool '{}' is listed twice", p.name));
        }
    }
    Ok(())
}

fn error(status: StatusCode, msg: String) -> Response {
    (status, axum::Json(json!({ "error": msg }))).into_response()
}

async fn put_desired(State(sh): State<Arc<Shared>>, body: Bytes) -> Response {
    let d: DesiredState = match serde_json::from_slice(&body) {
        Ok(d) => d,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!("the desired state is not valid JSON of the expected shape: {e}"),
            );
        }
    };
    if let Err(e) = validate(&sh.node, &d) {
        return error(StatusCode::UNPROCESSABLE_ENTITY, e);
    }
    let generation = d.generation;
    let unchanged = lock(&sh.desired).as_ref() == Some(&d);
    if !unchanged {
        // Stored before it is acknowledged: the controller may rely on it.
        let sh2 = sh.clone();
        let stored = tokio::task::spawn_blocking(move || {
            store::save(&sh2.state_dir.join(store::DESIRED), &d)?;
            *lock(&sh2.desired) = Some(d);
            sh2.wake.notify_all();
            Ok::<(), String>(())
        })
        .await;
        match stored {
            Ok(Ok(())) => tracing::info!(generation, "new desired state"),
            Ok(Err(e)) => return error(StatusCode::INTERNAL_SERVER_ERROR, e),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        }
    }
    axum::Json(json!({ "generation": generation })).into_response()
}

async fn get_observed(State(sh): State<Arc<Shared>>) -> Response {
    let obs = lock(&sh.observed).clone();
    axum::Json(obs).into_response()
}

async fn health(State(sh): State<Arc<Shared>>) -> Response {
    axum::Json(json!({ "node": sh.node, "ok": true })).into_response()
}

fn router(sh: Arc<Shared>) -> Router {
    Router::new()
        .route("/v1/satellite/desired", put(put_desired))
        .route("/v1/satellite/observed", get(get_observed))
        .route("/health", get(health))
        .fallback(|| async {
            error(
                StatusCode::NOT_FOUND,
                "no such satellite path; the satellite serves PUT /v1/satellite/desired and GET /v1/satellite/observed".to_owned(),
            )
        })
        .layer(DefaultBodyLimit::max(MAX_DESIRED_BYTES))
        .with_state(sh)
}

fn reconcile_loop(sh: Arc<Shared>, mut rec: Reconciler) {
    let mut last_gen = None;
    while !sh.stop.load(Ordering::Relaxed) {
        let desired = lock(&sh.desired).clone();
        let obs = rec.pass(desired.as_ref());
        for e in &obs.errors {
            tracing::warn!("{e}");
        }
        let generation = desired.as_ref().map(|d| d.generation);
        if obs.applied && last_gen != generation {
            tracing::info!(generation = ?generation, "desired state applied");
            last_gen = generation;
        }
        *lock(&sh.observed) = obs;
        let guard = lock(&sh.desired);
        if guard.as_ref() != desired.as_ref() {
            continue; // a new state arrived during the pass
        }
        let _unused = sh
            .wake
            .wait_timeout(guard, PASS_EVERY)
            .unwrap_or_else(std::sync::PoisonError::into_inner);
    }
}

/// Runs the satellite until SIGINT or SIGTERM. Prints `listening on ADDR` on stdout once
/// it accepts requests.
pub fn run(opts: Options, runner: Arc<dyn storage::Runner>) -> Result<(), SatelliteError> {
    blockd::config::check_node_name(&opts.node)
        .map_err(|e| SatelliteError::Node(opts.node.clone(), e))?;
    std::fs::create_dir_all(&opts.state_dir).map_err(|source| SatelliteError::StateDir {
        path: opts.state_dir.clone(),
        source,
    })?;
    let desired: Option<DesiredState> =
        store::load(&opts.state_dir.join(store::DESIRED)).map_err(SatelliteError::State)?;
    if let Some(d) = &desired
        && d.node != opts.node
    {
        return Err(SatelliteError::State(format!(
            "{} holds the state of node '{}', this satellite runs as '{}'; use that node name or another --state-dir",
            opts.state_dir.join(store::DESIRED).display(),
            d.node,
            opts.node
        )));
    }
    let rec = Reconciler::new(
        Paths {
            node: opts.node.clone(),
            state_dir: opts.state_dir.clone(),
            config_dir: opts.config_dir.clone(),
            admin_socket: opts.admin_socket.clone(),
        },
        runner,
    )
    .map_err(SatelliteError::State)?;
    let sh = Arc::new(Shared {
        node: opts.node.clone(),
        state_dir: opts.state_dir.clone(),
        desired: Mutex::new(desired),
        observed: Mutex::new(ObservedState {
            node: opts.node.clone(),
            ..Default::default()
        }),
        wake: Condvar::new(),
        stop: AtomicBool::new(false),
    });
    let worker = {
        let sh = sh.clone();
        std::thread::Builder::new()
            .name("reconcile".into())
            .spawn(move || reconcile_loop(sh, rec))?
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let served = rt.block_on({
        let sh = sh.clone();
        async move {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = signal(SignalKind::terminate())?;
            let mut int = signal(SignalKind::interrupt())?;
            let listener = tokio::net::TcpListener::bind(opts.listen)
                .await
                .map_err(|source| SatelliteError::Listen {
                    addr: opts.listen,
                    source,
                })?;
            let addr = listener.local_addr()?;
            tracing::info!(%addr, node = %opts.node, "satellite ready");
            println!("listening on {addr}");
            let shutdown = async move {
                tokio::select! {
                    _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                }
            };
            axum::serve(listener, router(sh))
                .with_graceful_shutdown(shutdown)
                .await?;
            Ok::<(), SatelliteError>(())
        }
    });
    sh.stop.store(true, Ordering::Relaxed);
    sh.wake.notify_all();
    let _ = worker.join();
    served
}
