//! tandem's controller: the cluster model ([`model::Cluster`]) behind LINSTOR's v1 REST
//! API, stored in SQLite. Every mutation is applied to a copy of the cluster, the
//! objects it changed are written in one transaction, and only after the commit does the
//! copy replace the served cluster: a request either happened completely (and survives
//! a crash) or not at all.
//!
//! Beside the REST API runs the sync loop ([`sync`]): it pushes each node's desired
//! state to its satellite and reads back what the satellite observed, which the views
//! show ([`live`]).

mod entropy;
pub mod http;
pub mod live;
pub mod rc;
pub mod satclient;
pub mod store;
pub mod sync;
pub mod wire;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use model::satellite::{KEY_INITIAL_GENERATION, KEY_INITIAL_NODES, KEY_SHARED_SECRET};
use model::{Cluster, ModelError, PropsModify, ResourceDefinitionModify};

pub use live::{Live, SyncConfig};
pub use store::{Store, StoreError, Tombstone};

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
    /// No randomness for a secret: `/dev/urandom` could not be read.
    #[error("cannot read random bytes for a shared secret: {0}")]
    Entropy(#[source] std::io::Error),
}

struct Inner {
    cluster: Arc<Cluster>,
    store: Store,
}

/// The served cluster and its database; one writer at a time.
pub struct Controller {
    inner: Mutex<Inner>,
    live: Live,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller").finish_non_exhaustive()
    }
}

impl Controller {
    /// Opens the database (migrating it) and loads the cluster, checked.
    pub fn open(db: &std::path::Path) -> Result<Self, StoreError> {
        Self::open_with(db, SyncConfig::default())
    }

    /// [`Controller::open`] with other satellite link timings (tests).
    pub fn open_with(db: &std::path::Path, cfg: SyncConfig) -> Result<Self, StoreError> {
        let mut store = Store::open(db)?;
        let mut cluster = store::load_or_init(&mut store)?;
        // Reports live in memory only (older databases may hold some).
        cluster.clear_reports();
        let tombstones = store.tombstones()?;
        Ok(Self {
            inner: Mutex::new(Inner {
                cluster: Arc::new(cluster),
                store,
            }),
            live: Live::new(cfg, tombstones),
        })
    }

    /// What the controller knows of its satellites now.
    pub fn live(&self) -> &Live {
        &self.live
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic in a mutation leaves the old cluster in place (it works on a copy),
        // so the state behind a poisoned lock is still whole.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The cluster as of now; later mutations do not change it. Connection statuses
    /// and pool capacities are not in it (see [`Controller::live_cluster`]).
    pub fn snapshot(&self) -> Arc<Cluster> {
        self.lock().cluster.clone()
    }

    /// A copy of the cluster with what satellites reported laid over it.
    pub fn live_cluster(&self) -> Cluster {
        let mut c = (*self.snapshot()).clone();
        self.live.overlay(&mut c);
        c
    }

    /// Forgets the tombstone of `node`; whether there was one.
    pub fn forget_tombstone(&self, node: &str) -> Result<bool, StoreError> {
        let mut inner = self.lock();
        let gone = inner.store.delete_tombstone(node)?;
        if gone {
            let list = inner.store.tombstones()?;
            self.live.set_tombstones(list);
        }
        Ok(gone)
    }

    pub fn db_ok(&self) -> bool {
        self.lock().store.ping()
    }

    /// Applies `f` to a copy of the cluster, stores what changed in one transaction and
    /// then serves the copy. If `f` fails or the commit fails, nothing changed. `f` sees
    /// the satellites' reports (connection statuses, pool capacities: the placer uses
    /// them); they are taken out again before anything is stored. New resource
    /// definitions get a shared secret, and one that gets its first replicas an initial
    /// generation ([`fill_in`]). Wakes the sync loop after a change.
    pub fn mutate<R>(
        &self,
        f: impl FnOnce(&mut Cluster) -> Result<R, ModelError>,
    ) -> Result<R, MutateError> {
        let mut inner = self.lock();
        let mut next = (*inner.cluster).clone();
        self.live.overlay(&mut next);
        let out = f(&mut next)?;
        next.clear_reports();
        fill_in(&inner.cluster, &mut next)?;
        if next != *inner.cluster {
            let old = inner.cluster.clone();
            let tombstones = inner.store.commit(&old, &next)?;
            inner.cluster = Arc::new(next);
            if tombstones {
                let list = inner.store.tombstones()?;
                self.live.set_tombstones(list);
            }
            self.live.notify();
        }
        Ok(out)
    }
}

/// What the controller adds to resource definitions after every change:
///
/// - a shared secret (`DrbdOptions/Net/shared-secret`, 20 random letters and digits)
///   for every definition without one: new ones, and those of older databases;
/// - when a definition gets its first diskful replicas (it had no replicas before this
///   change), `Tandem/InitialGeneration` (random) and `Tandem/InitialNodes` (those
///   replicas' nodes): they start UpToDate together instead of syncing zeros. The sync
///   loop removes both once every one of them reported UpToDate; a definition left
///   without replicas loses them at once.
fn fill_in(old: &Cluster, next: &mut Cluster) -> Result<(), MutateError> {
    let mut changes: Vec<(String, PropsModify)> = Vec::new();
    for rd in next.resource_definitions() {
        let mut m = PropsModify::default();
        if !rd.props.contains_key(KEY_SHARED_SECRET) {
            m.override_props.insert(
                KEY_SHARED_SECRET.into(),
                entropy::secret().map_err(MutateError::Entropy)?,
            );
        }
        let had_none = old
            .resource_definition(&rd.name)
            .is_none_or(|o| o.resources.is_empty());
        let diskful: Vec<&str> = rd
            .resources
            .values()
            .filter(|r| !r.is_diskless())
            .map(|r| r.node_name.as_str())
            .collect();
        if had_none && !diskful.is_empty() {
            m.override_props.insert(
                KEY_INITIAL_GENERATION.into(),
                entropy::generation().map_err(MutateError::Entropy)?,
            );
            m.override_props
                .insert(KEY_INITIAL_NODES.into(), diskful.join(","));
        } else if rd.resources.is_empty()
            && (rd.props.contains_key(KEY_INITIAL_GENERATION)
                || rd.props.contains_key(KEY_INITIAL_NODES))
        {
            m.delete_props = vec![KEY_INITIAL_GENERATION.into(), KEY_INITIAL_NODES.into()];
        }
        if !m.is_empty() {
            changes.push((rd.name.clone(), m));
        }
    }
    for (name, props) in changes {
        next.modify_resource_definition(
            &name,
            &ResourceDefinitionModify {
                props,
                ..ResourceDefinitionModify::default()
            },
        )?;
    }
    Ok(())
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
        let sync = sync::spawn(ctl.clone());
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
        sync.abort();
        Ok::<(), ControllerError>(())
    })
}
