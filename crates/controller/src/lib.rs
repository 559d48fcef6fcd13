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
    #[error(transparent)]
    Open(#[from] MutateError),
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
    pub fn open(db: &std::path::Path) -> Result<Self, MutateError> {
        Self::open_with(db, SyncConfig::default())
    }

    /// [`Controller::open`] with other satellite link timings (tests).
    ///
    /// Resource definitions of older databases get their shared secrets here. A
    /// database from before satellites existed holds replicas that no node has made
    /// yet: the definitions with diskful replicas get an initial generation too, so
    /// their satellites create them UpToDate together like freshly spawned ones.
    pub fn open_with(db: &std::path::Path, cfg: SyncConfig) -> Result<Self, MutateError> {
        let mut store = Store::open(db)?;
        let mut cluster = store::load_or_init(&mut store)?;
        // Reports live in memory only (older databases may hold some).
        cluster.clear_reports();
        let tombstones = store.tombstones()?;
        let before_satellites =
            store.opened_at_version() > 0 && store.opened_at_version() < store::SATELLITE_SCHEMA;
        if before_satellites {
            // Seen against the cluster without definitions, every definition gets its
            // first replicas now.
            let mut untouched = cluster.clone();
            let names: Vec<String> = cluster
                .resource_definitions()
                .map(|rd| rd.name.clone())
                .collect();
            for n in &names {
                untouched.delete_resource_definition(n)?;
            }
            let mut next = cluster.clone();
            fill_in(&untouched, &mut next)?;
            store.commit(&cluster, &next)?;
            cluster = next;
        }
        let ctl = Self {
            inner: Mutex::new(Inner {
                cluster: Arc::new(cluster),
                store,
            }),
            live: Live::new(cfg, tombstones),
        };
        // Definitions without a secret get one (an empty change does it).
        ctl.mutate(|_| Ok(()))?;
        Ok(ctl)
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

/// Orders names as the model's maps do (by [`model::name::key`]), without allocating.
fn cmp_names(a: &str, b: &str) -> std::cmp::Ordering {
    a.bytes()
        .map(|c| c.to_ascii_uppercase())
        .cmp(b.bytes().map(|c| c.to_ascii_uppercase()))
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
    // Both clusters list definitions in key order: walk them side by side (this runs
    // on every change, so no lookup and no allocation per definition).
    let mut olds = old.resource_definitions().peekable();
    for rd in next.resource_definitions() {
        let mut before = None;
        while let Some(o) = olds.peek() {
            match cmp_names(&o.name, &rd.name) {
                std::cmp::Ordering::Less => {
                    olds.next();
                }
                std::cmp::Ordering::Equal => {
                    before = olds.next();
                    break;
                }
                std::cmp::Ordering::Greater => break,
            }
        }
        let mut m = PropsModify::default();
        if !rd.props.contains_key(KEY_SHARED_SECRET) {
            m.override_props.insert(
                KEY_SHARED_SECRET.into(),
                entropy::secret().map_err(MutateError::Entropy)?,
            );
        }
        let had_none = before.is_none_or(|o| o.resources.is_empty());
        let diskful = || -> Vec<&str> {
            rd.resources
                .values()
                .filter(|r| !r.is_diskless())
                .map(|r| r.node_name.as_str())
                .collect()
        };
        if had_none && !rd.resources.is_empty() && !diskful().is_empty() {
            m.override_props.insert(
                KEY_INITIAL_GENERATION.into(),
                entropy::generation().map_err(MutateError::Entropy)?,
            );
            m.override_props
                .insert(KEY_INITIAL_NODES.into(), diskful().join(","));
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

#[cfg(test)]
mod tests {
    use super::*;
    use model::{NodeCreate, ProviderKind, ResourceCreate, StoragePoolCreate};

    #[test]
    fn a_database_from_before_satellites_gets_secrets_and_initial_generations() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut s = Store::open(&path).unwrap();
        let c0 = store::load_or_init(&mut s).unwrap();
        let mut c1 = c0.clone();
        for (n, ip) in [("n1", "10.0.0.1"), ("n2", "10.0.0.2")] {
            c1.create_node(NodeCreate::satellite(n, ip)).unwrap();
            c1.create_storage_pool(n, StoragePoolCreate::new("pool", ProviderKind::FileThin))
                .unwrap();
        }
        for rd in ["placed", "empty"] {
            c1.create_resource_definition(model::ResourceDefinitionCreate {
                name: rd.into(),
                ..Default::default()
            })
            .unwrap();
        }
        for n in ["n1", "n2"] {
            c1.create_resource(ResourceCreate {
                resource: "placed".into(),
                node: n.into(),
                storage_pool: Some("pool".into()),
                ..Default::default()
            })
            .unwrap();
        }
        s.commit(&c0, &c1).unwrap();
        drop(s);
        // Make it a schema-1 database, as the controller before satellites left it.
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("DROP TABLE tombstones; UPDATE schema_version SET version = 1")
            .unwrap();
        drop(conn);
        let ctl = Controller::open(&path).unwrap();
        let c = ctl.snapshot();
        let placed = c.resource_definition("placed").unwrap();
        assert_eq!(placed.props[KEY_SHARED_SECRET].len(), entropy::SECRET_LEN);
        assert!(placed.props.contains_key(KEY_INITIAL_GENERATION));
        assert_eq!(placed.props[KEY_INITIAL_NODES], "n1,n2");
        let empty = c.resource_definition("empty").unwrap();
        assert!(empty.props.contains_key(KEY_SHARED_SECRET));
        assert!(!empty.props.contains_key(KEY_INITIAL_GENERATION));
        drop(ctl);
        // Stored, and only once: a second open changes nothing.
        let ctl = Controller::open(&path).unwrap();
        assert_eq!(*ctl.snapshot(), *c);
    }
}

#[cfg(test)]
mod order_tests {
    #[test]
    fn names_compare_as_the_maps_order_them() {
        let mut by_key = vec!["vm-10", "VM-2", "a_b", "A-B", "zz", "Zy", "vm-1"];
        let mut by_cmp = by_key.clone();
        by_key.sort_by_key(|n| model::name::key(n));
        by_cmp.sort_by(|a, b| super::cmp_names(a, b));
        assert_eq!(by_key, by_cmp);
    }
}
