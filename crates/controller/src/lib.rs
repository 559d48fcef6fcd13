//! tandem's controller: the cluster model ([`model::Cluster`]) behind LINSTOR's v1 REST
//! API, stored in SQLite. Every mutation is applied to a copy of the cluster, the
//! objects it changed are written in one transaction, and only after the commit does the
//! copy replace the served cluster: a request either happened completely (and survives
//! a crash) or not at all.

pub mod http;
pub mod rc;
pub mod store;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use model::{Cluster, ModelError};

pub use store::{Store, StoreError};

/// The REST API version we answer with: the LINSTOR OpenAPI whose paths and shapes we
/// follow (python-linstor picks request shapes by it).
pub const REST_API_VERSION: &str = "1.28.0";
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3370";
pub const DEFAULT_DB: &str = "/var/lib/tandem/controller.sqlite";

#[derive(Debug, Clone)]
pub struct Options {
    pub listen: SocketAddr,
    pub db: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("creating the database directory {path}: {source}")]
    DbDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Why a mutation did not happen.
#[derive(Debug, thiserror::Error)]
pub enum MutateError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

struct Inner {
    cluster: Arc<Cluster>,
    store: Store,
}

/// The served cluster and its database; one writer at a time.
pub struct Controller {
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

impl Controller {
    /// Opens the database (migrating it) and loads the cluster, checked.
    pub fn open(db: &std::path::Path) -> Result<Self, StoreError> {
        let mut store = Store::open(db)?;
        let cluster = store::load_or_init(&mut store)?;
        Ok(Self {
            inner: Mutex::new(Inner {
                cluster: Arc::new(cluster),
                store,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in a mutation leaves the old cluster in place (it works on a copy),
        // so the state behind a poisoned lock is still whole.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cluster as of now; later mutations do not change it.
    pub fn snapshot(&self) -> Arc<Cluster> {
        self.lock().cluster.clone()
    }

    pub fn db_ok(&self) -> bool {
        self.lock().store.ping()
    }

    /// Applies `f` to a copy of the cluster, stores what changed in one transaction and
    /// then serves the copy. If `f` fails or the commit fails, nothing changed.
    pub fn mutate<R>(
        &self,
        f: impl FnOnce(&mut Cluster) -> Result<R, ModelError>,
    ) -> Result<R, MutateError> {
        let mut inner = self.lock();
        let mut next = (*inner.cluster).clone();
        let out = f(&mut next)?;
        if next != *inner.cluster {
            let old = inner.cluster.clone();
            inner.store.commit(&old, &next)?;
            inner.cluster = Arc::new(next);
        }
        Ok(out)
    }
}

/// Runs the controller until SIGINT or SIGTERM. Prints `listening on ADDR` on stdout
/// once it accepts requests (with the port chosen when `listen` has port 0).
pub fn run(opts: Options) -> Result<(), ControllerError> {
    if let Some(dir) = opts.db.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| ControllerError::DbDir {
            path: dir.to_owned(),
            source,
        })?;
    }
    let ctl = Arc::new(Controller::open(&opts.db)?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let listener = tokio::net::TcpListener::bind(opts.listen)
            .await
            .map_err(|source| ControllerError::Listen {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr()?;
        tracing::info!(%addr, db = %opts.db.display(), "controller ready");
        println!("listening on {addr}");
        let app = http::router(ctl);
        let shutdown = async move {
            tokio::select! {
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
            }
        };
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown)
            .await?;
        Ok::<(), ControllerError>(())
    })
}
