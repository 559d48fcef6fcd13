//! The controller's SQLite database. Each top-level object of the model — a node (with
//! its net interfaces and storage pools), a resource group (with its volume groups), a
//! resource definition (with its volume definitions and resources) — is one row holding
//! the model's serde form, keyed by the name as LINSTOR compares it; controller
//! properties are one row per key. A mutation writes the rows that differ between the
//! cluster before and after it in one transaction, so a crash leaves either the old or
//! the new objects, never part of one. Loading checks the whole cluster
//! ([`model::Cluster::from_parts`]) before anything is served.
//!
//! Nodes that were deleted or lost leave a tombstone (table `tombstones`, written in
//! the same transaction as the delete): the satellite's address and the node's pools,
//! so the controller can tell the satellite to remove everything it made, also after a
//! restart. A node created again under the same name removes its tombstone.
//!
//! The schema is versioned: `schema_version` holds the number of migrations applied and
//! [`MIGRATIONS`] lists them in order; each runs in its own transaction.

use std::path::Path;

use model::name::key;
use model::satellite::{self, DesiredPool};
use model::{Cluster, ModelError, Node, Props, ResourceDefinition, ResourceGroup};
use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Ordered schema migrations; index + 1 is the version after applying one.
pub const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE controller_props (
         key   TEXT PRIMARY KEY NOT NULL,
         value TEXT NOT NULL
     );
     CREATE TABLE nodes (
         name_key TEXT PRIMARY KEY NOT NULL,
         name     TEXT NOT NULL,
         body     TEXT NOT NULL
     );
     CREATE TABLE resource_groups (
         name_key TEXT PRIMARY KEY NOT NULL,
         name     TEXT NOT NULL,
         body     TEXT NOT NULL
     );
     CREATE TABLE resource_definitions (
         name_key       TEXT PRIMARY KEY NOT NULL,
         name           TEXT NOT NULL,
         resource_group TEXT NOT NULL,
         body           TEXT NOT NULL
     );",
    // 2: tombstones of deleted and lost nodes, until their satellites are clean.
    "CREATE TABLE tombstones (
         name_key TEXT PRIMARY KEY NOT NULL,
         name     TEXT NOT NULL,
         body     TEXT NOT NULL
     );",
];

/// A node that was deleted or lost, whose satellite still has to remove what it made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tombstone {
    pub node: String,
    /// `host:port` of its satellite when the node went.
    pub address: String,
    /// Its storage pools, so the satellite knows where its volumes are.
    pub pools: Vec<DesiredPool>,
    /// When the node went, milliseconds since the Unix epoch.
    pub created_ms: u64,
}

impl Tombstone {
    /// The tombstone `node` leaves in `c`; None for a node that runs no satellite.
    pub fn of(c: &Cluster, node: &Node) -> Option<Self> {
        if !node.node_type.runs_satellite() {
            return None;
        }
        Some(Self {
            node: node.name.clone(),
            address: satellite::satellite_address(node)?,
            pools: satellite::desired_pools(c, node),
            created_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Sqlite {
        path: String,
        #[source]
        source: rusqlite::Error,
    },
    #[error(
        "database {path} has schema version {found}, but this tandem knows only up to {known}: \
         it was written by a newer tandem; run that version, or restore a backup"
    )]
    TooNew {
        path: String,
        found: i64,
        known: usize,
    },
    #[error("database {path}: row '{row}' of table {table} does not parse: {source}")]
    BadRow {
        path: String,
        table: &'static str,
        row: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("database {path} does not hold a consistent cluster: {source}")]
    Inconsistent {
        path: String,
        #[source]
        source: ModelError,
    },
    #[error("encoding an object for the database: {0}")]
    Encode(#[from] serde_json::Error),
}

#[derive(Debug)]
pub struct Store {
    conn: Connection,
    path: String,
}

const TABLES: [(&str, &str); 3] = [
    (
        "nodes",
        "INSERT OR REPLACE INTO nodes (name_key, name, body) VALUES (?1, ?2, ?3)",
    ),
    (
        "resource_groups",
        "INSERT OR REPLACE INTO resource_groups (name_key, name, body) VALUES (?1, ?2, ?3)",
    ),
    (
        "resource_definitions",
        "INSERT OR REPLACE INTO resource_definitions (name_key, name, resource_group, body) \
         VALUES (?1, ?2, ?4, ?3)",
    ),
];

impl Store {
    /// Opens (creating if needed) the database and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let p = path.display().to_string();
        let sql = |source| StoreError::Sqlite {
            path: p.clone(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        // WAL + FULL: a commit the client saw acknowledged survives a crash and a power loss.
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        let mut store = Self { conn, path: p };
        store.migrate()?;
        Ok(store)
    }

    fn sql(&self, source: rusqlite::Error) -> StoreError {
        StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// The schema version: the number of migrations applied.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.conn
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_version",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        self.conn
            .execute_batch("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            .map_err(|e| self.sql(e))?;
        let found = self.schema_version()?;
        let known = MIGRATIONS.len();
        if found > i64::try_from(known).unwrap_or(i64::MAX) {
            return Err(StoreError::TooNew {
                path: self.path.clone(),
                found,
                known,
            });
        }
        for (i, m) in MIGRATIONS
            .iter()
            .enumerate()
            .skip(usize::try_from(found).unwrap_or(0))
        {
            let path = self.path.clone();
            let sql = |source| StoreError::Sqlite {
                path: path.clone(),
                source,
            };
            let tx = self.conn.transaction().map_err(sql)?;
            tx.execute_batch(m).map_err(sql)?;
            tx.execute("DELETE FROM schema_version", []).map_err(sql)?;
            tx.execute(
                "INSERT INTO schema_version (version) VALUES (?1)",
                params![i64::try_from(i + 1).unwrap_or(i64::MAX)],
            )
            .map_err(sql)?;
            tx.commit().map_err(sql)?;
            tracing::info!(db = %self.path, version = i + 1, "schema migrated");
        }
        Ok(())
    }

    /// Answers whether the database can be read (for `/health`).
    pub fn ping(&self) -> bool {
        self.conn
            .query_row("SELECT 1", [], |r| r.get::<_, i64>(0))
            .is_ok()
    }

    fn rows<T: DeserializeOwned>(&self, table: &'static str) -> Result<Vec<T>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT name, body FROM {table} ORDER BY name_key"))
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (name, body) = row.map_err(|e| self.sql(e))?;
            out.push(
                serde_json::from_str(&body).map_err(|source| StoreError::BadRow {
                    path: self.path.clone(),
                    table,
                    row: name,
                    source,
                })?,
            );
        }
        Ok(out)
    }

    /// The stored cluster, checked. An empty database is an empty cluster.
    pub fn load(&self) -> Result<Cluster, StoreError> {
        let mut props = Props::new();
        {
            let mut stmt = self
                .conn
                .prepare("SELECT key, value FROM controller_props")
                .map_err(|e| self.sql(e))?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(|e| self.sql(e))?;
            for row in rows {
                let (k, v) = row.map_err(|e| self.sql(e))?;
                props.insert(k, v);
            }
        }
        let nodes: Vec<Node> = self.rows("nodes")?;
        let groups: Vec<ResourceGroup> = self.rows("resource_groups")?;
        let defs: Vec<ResourceDefinition> = self.rows("resource_definitions")?;
        Cluster::from_parts(props, nodes, groups, defs).map_err(|source| StoreError::Inconsistent {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes what changed from `old` to `new` in one transaction, with a tombstone for
    /// every node that went and none for every node that came. On error nothing is
    /// written and the caller keeps `old`. Returns whether tombstones changed.
    pub fn commit(&mut self, old: &Cluster, new: &Cluster) -> Result<bool, StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let touched = write_diff(&tx, old, new).map_err(|e| e.into_store(&path))?;
        tx.commit().map_err(sql)?;
        Ok(touched)
    }

    /// Every tombstone, by node name.
    pub fn tombstones(&self) -> Result<Vec<Tombstone>, StoreError> {
        self.rows("tombstones")
    }

    /// Drops the tombstone of `node` (its satellite is clean, or a human said to forget
    /// it). Returns whether there was one.
    pub fn delete_tombstone(&mut self, node: &str) -> Result<bool, StoreError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM tombstones WHERE name_key = ?1",
                params![key(node)],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n > 0)
    }

    /// Replaces the stored cluster with `c` in one transaction (a new database).
    pub fn write_all(&mut self, c: &Cluster) -> Result<(), StoreError> {
        let path = self.path.clone();
        let tx = self
            .conn
            .transaction()
            .map_err(|source| StoreError::Sqlite {
                path: path.clone(),
                source,
            })?;
        write_everything(&tx, c).map_err(|e| e.into_store(&path))?;
        tx.commit()
            .map_err(|source| StoreError::Sqlite { path, source })
    }
}

fn write_everything(tx: &Transaction<'_>, c: &Cluster) -> Result<(), DiffError> {
    for t in [
        "controller_props",
        "nodes",
        "resource_groups",
        "resource_definitions",
    ] {
        tx.execute(&format!("DELETE FROM {t}"), [])?;
    }
    for (k, v) in c.controller_props() {
        tx.execute(
            "INSERT INTO controller_props (key, value) VALUES (?1, ?2)",
            params![k, v],
        )?;
    }
    for n in c.nodes() {
        upsert(tx, 0, &n.name, n, "")?;
    }
    for g in c.resource_groups() {
        upsert(tx, 1, &g.name, g, "")?;
    }
    for rd in c.resource_definitions() {
        upsert(tx, 2, &rd.name, rd, &rd.resource_group_name)?;
    }
    Ok(())
}

enum DiffError {
    Sql(rusqlite::Error),
    Encode(serde_json::Error),
}

impl DiffError {
    fn into_store(self, path: &str) -> StoreError {
        match self {
            DiffError::Sql(source) => StoreError::Sqlite {
                path: path.to_owned(),
                source,
            },
            DiffError::Encode(e) => StoreError::Encode(e),
        }
    }
}

impl From<rusqlite::Error> for DiffError {
    fn from(e: rusqlite::Error) -> Self {
        Self::Sql(e)
    }
}

impl From<serde_json::Error> for DiffError {
    fn from(e: serde_json::Error) -> Self {
        Self::Encode(e)
    }
}

fn upsert<T: Serialize>(
    tx: &Transaction<'_>,
    table: usize,
    name: &str,
    obj: &T,
    group: &str,
) -> Result<(), DiffError> {
    let body = serde_json::to_string(obj)?;
    let (_, sql) = TABLES[table];
    if table == 2 {
        tx.execute(sql, params![key(name), name, body, group])?;
    } else {
        tx.execute(sql, params![key(name), name, body])?;
    }
    Ok(())
}

fn delete(tx: &Transaction<'_>, table: usize, name: &str) -> Result<(), DiffError> {
    let (t, _) = TABLES[table];
    tx.execute(
        &format!("DELETE FROM {t} WHERE name_key = ?1"),
        params![key(name)],
    )?;
    Ok(())
}

fn write_diff(tx: &Transaction<'_>, old: &Cluster, new: &Cluster) -> Result<bool, DiffError> {
    let mut tombstones = false;
    let (op, np) = (old.controller_props(), new.controller_props());
    for k in op.keys().filter(|k| !np.contains_key(*k)) {
        tx.execute("DELETE FROM controller_props WHERE key = ?1", params![k])?;
    }
    for (k, v) in np.iter().filter(|(k, v)| op.get(*k) != Some(*v)) {
        tx.execute(
            "INSERT OR REPLACE INTO controller_props (key, value) VALUES (?1, ?2)",
            params![k, v],
        )?;
    }
    for n in new.nodes() {
        match old.node(&n.name) {
            Some(o) if o == n => {}
            Some(_) => upsert(tx, 0, &n.name, n, "")?,
            None => {
                upsert(tx, 0, &n.name, n, "")?;
                // The node is back: the normal desired state cleans up from now on.
                tombstones |= tx.execute(
                    "DELETE FROM tombstones WHERE name_key = ?1",
                    params![key(&n.name)],
                )? > 0;
            }
        }
    }
    for n in old.nodes().filter(|n| new.node(&n.name).is_none()) {
        delete(tx, 0, &n.name)?;
        if let Some(t) = Tombstone::of(old, n) {
            tx.execute(
                "INSERT OR REPLACE INTO tombstones (name_key, name, body) VALUES (?1, ?2, ?3)",
                params![key(&n.name), n.name, serde_json::to_string(&t)?],
            )?;
            tombstones = true;
        }
    }
    for g in new.resource_groups() {
        if old.resource_group(&g.name) != Some(g) {
            upsert(tx, 1, &g.name, g, "")?;
        }
    }
    for g in old
        .resource_groups()
        .filter(|g| new.resource_group(&g.name).is_none())
    {
        delete(tx, 1, &g.name)?;
    }
    for rd in new.resource_definitions() {
        if old.resource_definition(&rd.name) != Some(rd) {
            upsert(tx, 2, &rd.name, rd, &rd.resource_group_name)?;
        }
    }
    for rd in old
        .resource_definitions()
        .filter(|rd| new.resource_definition(&rd.name).is_none())
    {
        delete(tx, 2, &rd.name)?;
    }
    Ok(tombstones)
}

/// The stored cluster; a new database first gets the empty cluster (the default group).
pub fn load_or_init(store: &mut Store) -> Result<Cluster, StoreError> {
    let has_groups: Option<i64> = store
        .conn
        .query_row("SELECT 1 FROM resource_groups LIMIT 1", [], |r| r.get(0))
        .optional()
        .map_err(|e| store.sql(e))?;
    if has_groups.is_none() {
        let c = Cluster::new();
        store.write_all(&c)?;
    }
    store.load()
}

#[cfg(test)]
mod tests {
    use super::*;
    use model::{NodeCreate, ProviderKind, StoragePoolCreate};

    #[test]
    fn fresh_db_migrates_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        let c0 = load_or_init(&mut s).unwrap();
        assert_eq!(c0, Cluster::new());
        let mut c1 = c0.clone();
        c1.create_node(NodeCreate::satellite("alpha", "10.0.0.1"))
            .unwrap();
        c1.create_storage_pool("alpha", StoragePoolCreate::new("pool", ProviderKind::File))
            .unwrap();
        c1.modify_controller_props(&model::PropsModify::set("Aux/x", "1"))
            .unwrap();
        s.commit(&c0, &c1).unwrap();
        drop(s);
        // Reopening applies no migration twice and yields the same cluster.
        let s = Store::open(&path).unwrap();
        assert_eq!(s.schema_version().unwrap(), MIGRATIONS.len() as i64);
        assert_eq!(s.load().unwrap(), c1);
        // Deletes are written too.
        let mut s = s;
        let mut c2 = c1.clone();
        c2.delete_node("alpha").unwrap();
        c2.modify_controller_props(&model::PropsModify {
            delete_props: vec!["Aux/x".into()],
            ..Default::default()
        })
        .unwrap();
        s.commit(&c1, &c2).unwrap();
        assert_eq!(s.load().unwrap(), c2);
    }

    #[test]
    fn newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        drop(Store::open(&path).unwrap());
        let conn = Connection::open(&path).unwrap();
        conn.execute("UPDATE schema_version SET version = 99", [])
            .unwrap();
        drop(conn);
        let e = Store::open(&path).unwrap_err();
        assert!(matches!(e, StoreError::TooNew { found: 99, .. }), "{e}");
    }

    #[test]
    fn damaged_rows_are_refused_on_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.sqlite");
        let mut s = Store::open(&path).unwrap();
        let c0 = load_or_init(&mut s).unwrap();
        let mut c1 = c0.clone();
        c1.create_node(NodeCreate::satellite("alpha", "10.0.0.1"))
            .unwrap();
        s.commit(&c0, &c1).unwrap();
        s.conn
            .execute("UPDATE nodes SET body = '{\"name\":' ", [])
            .unwrap();
        assert!(matches!(s.load(), Err(StoreError::BadRow { .. })));
    }
}
