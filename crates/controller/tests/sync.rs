//! The controller against fake satellites: small axum servers that record every
//! desired state pushed to them and answer a scripted observed state. Checks what is
//! pushed (after a spawn, after a change), node ONLINE/OFFLINE, the views (disk states,
//! capacities), deletes refused while in use, tombstones of lost nodes and the removal
//! of the initial generation.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use controller::{Controller, SyncConfig};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use model::satellite::{
    DesiredState, KEY_INITIAL_GENERATION, KEY_INITIAL_NODES, KEY_SHARED_SECRET, ObservedPeer,
    ObservedPool, ObservedRemoval, ObservedResource, ObservedState, ObservedVolume,
};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

fn fast() -> SyncConfig {
    SyncConfig {
        poll_interval: Duration::from_millis(40),
        online_window: Duration::from_millis(400),
        repush_interval: Duration::from_millis(600),
        connect_timeout: Duration::from_millis(300),
        request_timeout: Duration::from_millis(500),
        push_timeout: Duration::from_millis(1000),
        max_backoff: Duration::from_millis(150),
        debounce: Duration::from_millis(5),
    }
}

// ---- the fake satellite ----

#[derive(Debug)]
struct Fake {
    name: String,
    pushes: Vec<DesiredState>,
    observed: ObservedState,
    /// Answer 503 to everything (a satellite that is away).
    down: bool,
    /// Refuse pushes with 400 and this error.
    refuse: Option<String>,
    /// Mirror every push into the observed state (a satellite that applies at once).
    mirror: bool,
    /// Disk state of diskful volumes when mirrored.
    disk: String,
    role: String,
    removing: Vec<ObservedRemoval>,
}

type FakeRef = Arc<Mutex<Fake>>;

fn mirror(f: &mut Fake, d: &DesiredState) {
    f.observed = ObservedState {
        node: f.name.clone(),
        generation: d.generation,
        applied: true,
        errors: vec![],
        pools: d
            .pools
            .iter()
            .map(|p| ObservedPool {
                name: p.name.clone(),
                free_capacity_kib: Some(9_000_000),
                total_capacity_kib: Some(10_000_000),
                error: None,
            })
            .collect(),
        resources: d
            .resources
            .iter()
            .map(|r| {
                let me = r.nodes.iter().find(|n| n.name == d.node);
                let diskless = me.is_some_and(|n| n.diskless);
                ObservedResource {
                    name: r.name.clone(),
                    error: None,
                    role: Some(f.role.clone()),
                    volumes: r
                        .volumes
                        .iter()
                        .map(|v| ObservedVolume {
                            number: v.number,
                            disk_state: Some(if diskless {
                                "Diskless".into()
                            } else {
                                f.disk.clone()
                            }),
                            quorum: Some(true),
                            may_promote: Some(!diskless),
                            size: Some(v.size_kib * 1024),
                            nbd_uri: None,
                            backing: None,
                            hint: None,
                            resync_left_bytes: None,
                        })
                        .collect(),
                    peers: r
                        .nodes
                        .iter()
                        .filter(|n| n.name != d.node)
                        .map(|n| ObservedPeer {
                            name: n.name.clone(),
                            connection: "Connected".into(),
                            replication: "Established".into(),
                            disk_state: None,
                            out_of_sync_bytes: 0,
                            resync_done_percent: None,
                        })
                        .collect(),
                }
            })
            .collect(),
        removing: f.removing.clone(),
    };
}

async fn fake_put(State(f): State<FakeRef>, Json(d): Json<DesiredState>) -> Response {
    let mut f = f.lock().unwrap();
    if f.down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    if let Some(e) = &f.refuse {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response();
    }
    if d.node != f.name {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": format!("this is node {}", f.name)})),
        )
            .into_response();
    }
    let held = f.observed.generation;
    if d.generation < held {
        return (
            StatusCode::CONFLICT,
            Json(json!({"error": format!("generation {} is older than {held}", d.generation)})),
        )
            .into_response();
    }
    let g = d.generation;
    if f.mirror {
        mirror(&mut f, &d);
    } else {
        f.observed.generation = g;
    }
    f.pushes.push(d);
    Json(json!({"generation": g})).into_response()
}

async fn fake_get(State(f): State<FakeRef>) -> Response {
    let f = f.lock().unwrap();
    if f.down {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let mut o = f.observed.clone();
    o.removing = f.removing.clone();
    if o.node.is_empty() {
        o.node = f.name.clone();
    }
    Json(o).into_response()
}

struct FakeSat {
    state: FakeRef,
    port: u16,
    task: JoinHandle<()>,
}

impl FakeSat {
    async fn start(name: &str) -> Self {
        let state = Arc::new(Mutex::new(Fake {
            name: name.into(),
            pushes: vec![],
            observed: ObservedState::default(),
            down: false,
            refuse: None,
            mirror: true,
            disk: "UpToDate".into(),
            role: "Secondary".into(),
            removing: vec![],
        }));
        let app = axum::Router::new()
            .route("/v1/satellite/desired", put(fake_put))
            .route("/v1/satellite/observed", get(fake_get))
            .with_state(state.clone());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(l, app).await.unwrap();
        });
        Self { state, port, task }
    }

    fn with<R>(&self, f: impl FnOnce(&mut Fake) -> R) -> R {
        f(&mut self.state.lock().unwrap())
    }

    fn last_push(&self) -> Option<DesiredState> {
        self.with(|f| f.pushes.last().cloned())
    }
}

impl Drop for FakeSat {
    fn drop(&mut self) {
        self.task.abort();
    }
}

// ---- the controller under test ----

struct Ctl {
    ctl: Arc<Controller>,
    addr: SocketAddr,
    tasks: Vec<JoinHandle<()>>,
}

impl Ctl {
    async fn start(db: &std::path::Path) -> Self {
        Self::start_with(db, fast()).await
    }

    async fn start_with(db: &std::path::Path, cfg: SyncConfig) -> Self {
        let ctl = Arc::new(Controller::open_with(db, cfg).unwrap());
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let app = controller::http::router(ctl.clone());
        let server = tokio::spawn(async move {
            axum::serve(l, app).await.unwrap();
        });
        let sync = controller::sync::spawn(ctl.clone());
        Self {
            ctl,
            addr,
            tasks: vec![server, sync],
        }
    }

    async fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let stream = tokio::net::TcpStream::connect(self.addr).await.unwrap();
        let (mut send, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .unwrap();
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", "controller")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let resp = send.send_request(req).await.unwrap();
        let code = resp.status().as_u16();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let v = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)))
        };
        (code, v)
    }

    async fn ok(&self, method: &str, path: &str, body: Value) -> Value {
        let (code, v) = self.req(method, path, Some(body)).await;
        assert!(code < 300, "{method} {path}: {code} {v:#}");
        v
    }

    async fn get(&self, path: &str) -> Value {
        let (code, v) = self.req("GET", path, None).await;
        assert_eq!(code, 200, "GET {path}: {v:#}");
        v
    }

    async fn node(&self, name: &str, port: u16) {
        self.ok(
            "POST",
            "/v1/nodes",
            json!({"name": name, "type": "Satellite", "net_interfaces": [
                {"name": "default", "address": "127.0.0.1", "satellite_port": port}]}),
        )
        .await;
        self.ok(
            "POST",
            &format!("/v1/nodes/{name}/storage-pools"),
            json!({"storage_pool_name": "pool", "provider_kind": "FILE_THIN",
                   "props": {"StorDriver/StorPoolName": format!("/srv/{name}")}}),
        )
        .await;
    }

    fn stop(self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Polls `f` until it gives Some, or fails the test after `secs` seconds.
async fn wait<T>(what: &str, secs: u64, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three fake satellites, their nodes with a pool each, and group "grp" placing two
/// diskful replicas and a tiebreaker.
async fn cluster(ctl: &Ctl) -> Vec<FakeSat> {
    let mut sats = Vec::new();
    for n in ["n1", "n2", "n3"] {
        let s = FakeSat::start(n).await;
        ctl.node(n, s.port).await;
        sats.push(s);
    }
    ctl.ok(
        "POST",
        "/v1/resource-groups",
        json!({"name": "grp", "select_filter": {"place_count": 2, "storage_pool": "pool",
               "diskless_on_remaining": true}}),
    )
    .await;
    ctl.ok(
        "POST",
        "/v1/resource-groups/grp/volume-groups",
        json!({"volume_number": 0}),
    )
    .await;
    sats
}

async fn spawn(ctl: &Ctl, name: &str) {
    ctl.ok(
        "POST",
        "/v1/resource-groups/grp/spawn",
        json!({"resource_definition_name": name, "volume_sizes": [1048576]}),
    )
    .await;
}

fn sat<'a>(sats: &'a [FakeSat], node: &str) -> &'a FakeSat {
    &sats[usize::from(node.as_bytes()[1] - b'1')]
}

async fn view(ctl: &Ctl, rsc: &str) -> Vec<Value> {
    let v = ctl
        .get(&format!("/v1/view/resources?resources={rsc}"))
        .await;
    v.as_array().unwrap().clone()
}

fn disk_state(r: &Value) -> String {
    r["volumes"][0]["state"]["disk_state"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

async fn node_status(ctl: &Ctl, node: &str) -> String {
    ctl.get(&format!("/v1/nodes/{node}")).await["connection_status"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spawn_is_pushed_shown_and_initial_generation_removed() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(&dir.path().join("c.sqlite")).await;
    let sats = cluster(&ctl).await;
    spawn(&ctl, "vm-1").await;
    let rd = ctl.get("/v1/resource-definitions/vm-1").await;
    let secret = rd["props"][KEY_SHARED_SECRET].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 20, "{rd:#}");
    let gen_hex = rd["props"][KEY_INITIAL_GENERATION]
        .as_str()
        .unwrap()
        .to_owned();
    let initial: Vec<String> = rd["props"][KEY_INITIAL_NODES]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    assert_eq!(initial.len(), 2, "{rd:#}");

    // Every node gets the resource: the whole state, with its peers.
    for s in &sats {
        let d = wait("the resource in the push", 10, async || {
            s.last_push().filter(|d| !d.resources.is_empty())
        })
        .await;
        let name = s.with(|f| f.name.clone());
        assert_eq!(d.node, name);
        assert!(!d.lost);
        assert_eq!(d.pools.len(), 1);
        assert_eq!(
            d.pools[0].props["StorDriver/StorPoolName"],
            format!("/srv/{name}")
        );
        let r = &d.resources[0];
        assert_eq!(r.name, "vm-1");
        assert_eq!(r.secret, secret);
        assert_eq!(r.nodes.len(), 3);
        assert!(r.nodes.iter().all(|n| n.address == "127.0.0.1:7000"));
        assert_eq!(r.volumes[0].size_kib, 1048576);
        let diskful = initial.contains(&name);
        assert_eq!(r.volumes[0].pool.is_some(), diskful, "{r:?}");
        assert_eq!(
            r.initial_generation,
            Some(u64::from_str_radix(&gen_hex, 16).unwrap())
        );
        assert_eq!(r.initial_nodes, initial);
        assert_eq!(r.quorum, "majority");
    }

    // The views show what the satellites report.
    for n in ["n1", "n2", "n3"] {
        wait("ONLINE", 10, async || {
            (node_status(&ctl, n).await == "ONLINE").then_some(())
        })
        .await;
    }
    let rs = wait("disk states", 10, async || {
        let rs = view(&ctl, "vm-1").await;
        rs.iter().all(|r| disk_state(r) != "Unknown").then_some(rs)
    })
    .await;
    for r in &rs {
        let node = r["node_name"].as_str().unwrap();
        let want = if initial.iter().any(|n| n == node) {
            "UpToDate"
        } else {
            "Diskless"
        };
        assert_eq!(disk_state(r), want, "{r:#}");
        assert_eq!(r["state"]["in_use"], false, "{r:#}");
        let conns = r["layer_object"]["drbd"]["connections"]
            .as_object()
            .unwrap();
        assert_eq!(conns.len(), 2, "{r:#}");
        assert!(conns.values().all(|c| c["connected"] == true), "{r:#}");
    }
    let pools = ctl.get("/v1/view/storage-pools?storage_pools=pool").await;
    for p in pools.as_array().unwrap() {
        assert_eq!(p["free_capacity"], 9_000_000, "{p:#}");
        assert_eq!(p["total_capacity"], 10_000_000, "{p:#}");
    }

    // All initial replicas UpToDate: the initial generation goes, and the next push
    // says so.
    wait("initial generation removed", 10, async || {
        let rd = ctl.get("/v1/resource-definitions/vm-1").await;
        (rd["props"].get(KEY_INITIAL_GENERATION).is_none()
            && rd["props"].get(KEY_INITIAL_NODES).is_none())
        .then_some(())
    })
    .await;
    for s in &sats {
        wait("a push without initial generation", 10, async || {
            s.last_push().filter(|d| {
                d.resources
                    .first()
                    .is_some_and(|r| r.initial_generation.is_none())
            })
        })
        .await;
    }
    // A replica added later is not initial.
    ctl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_are_pushed_with_growing_generations() {
    let dir = tempfile::tempdir().unwrap();
    // Repushes far apart, so that a push soon after a change is the change's.
    let cfg = SyncConfig {
        repush_interval: Duration::from_secs(3),
        ..fast()
    };
    let ctl = Ctl::start_with(&dir.path().join("c.sqlite"), cfg).await;
    let sats = cluster(&ctl).await;
    spawn(&ctl, "vm-1").await;
    let s = &sats[0];
    // Settled: the initial generation is gone (that too is a change of desired state).
    let first = wait("first push without initial generation", 10, async || {
        s.last_push()
            .filter(|d| !d.resources.is_empty() && d.resources[0].initial_generation.is_none())
    })
    .await;
    ctl.ok(
        "PUT",
        "/v1/resource-definitions/vm-1",
        json!({"override_props": {"DrbdOptions/Net/protocol": "A"}}),
    )
    .await;
    // Pushed with a new generation (a repush would keep the old one).
    let next = wait("the change pushed", 15, async || {
        s.last_push()
            .filter(|d| d.resources.first().is_some_and(|r| r.protocol == "A"))
    })
    .await;
    assert!(next.generation > first.generation);
    // Unchanged, it is pushed again now and then with the same generation.
    let n = s.with(|f| f.pushes.len());
    let again = wait("a repush", 5, async || {
        s.with(|f| (f.pushes.len() > n).then(|| f.pushes.last().cloned()))
            .flatten()
    })
    .await;
    assert_eq!(again.generation, next.generation);
    assert_eq!(again.resources, next.resources);

    // A refused push is shown, and retried with a new generation once accepted.
    s.with(|f| f.refuse = Some("disk full of opinions".into()));
    ctl.ok(
        "PUT",
        "/v1/resource-definitions/vm-1",
        json!({"override_props": {"DrbdOptions/Net/protocol": "C"}}),
    )
    .await;
    let lines = wait("the refusal shown", 5, async || {
        let v = ctl.get("/v1/satellites").await;
        let e = v
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["node"] == "n1")
            .cloned()?;
        let lines = e["status_lines"].to_string();
        lines.contains("disk full of opinions").then_some(lines)
    })
    .await;
    assert!(lines.contains("not accepted"), "{lines}");
    s.with(|f| f.refuse = None);
    let fixed = wait("the change pushed after the refusal", 5, async || {
        s.last_push()
            .filter(|d| d.resources.first().is_some_and(|r| r.protocol == "C"))
    })
    .await;
    assert!(fixed.generation > next.generation);
    ctl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_offline_and_unknown_states() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(&dir.path().join("c.sqlite")).await;
    let sats = cluster(&ctl).await;
    spawn(&ctl, "vm-1").await;
    wait("n2 ONLINE with its pool reported", 10, async || {
        let p = ctl.get("/v1/nodes/n2/storage-pools/pool").await;
        (node_status(&ctl, "n2").await == "ONLINE" && p["free_capacity"] == 9_000_000).then_some(())
    })
    .await;
    sat(&sats, "n2").with(|f| f.down = true);
    wait("n2 OFFLINE", 10, async || {
        (node_status(&ctl, "n2").await == "OFFLINE").then_some(())
    })
    .await;
    let rs = view(&ctl, "vm-1").await;
    let r2 = rs.iter().find(|r| r["node_name"] == "n2").unwrap();
    assert_eq!(disk_state(r2), "Unknown", "{r2:#}");
    assert_eq!(r2["state"], json!({}), "{r2:#}");
    let sl = ctl.get("/v1/satellites").await;
    let e = sl
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["node"] == "n2")
        .unwrap();
    let lines = e["status_lines"].to_string();
    assert!(
        lines.contains("OFFLINE") && lines.contains("tandem node lost n2"),
        "{e:#}"
    );
    // Pools keep the last capacity, with a warning.
    let p = ctl.get("/v1/nodes/n2/storage-pools/pool").await;
    assert_eq!(p["free_capacity"], 9_000_000, "{p:#}");
    assert!(
        p["reports"].to_string().contains("does not answer"),
        "{p:#}"
    );
    // Mutations while it is away warn that it is not connected.
    let (_, v) = ctl
        .req(
            "PUT",
            "/v1/resource-definitions/vm-1/volume-definitions/0",
            Some(json!({"size_kib": 2097152})),
        )
        .await;
    assert!(
        v.to_string()
            .contains("No active connection to satellite 'n2'"),
        "{v}"
    );
    // Back: ONLINE, and the change reaches it.
    sat(&sats, "n2").with(|f| f.down = false);
    wait("n2 ONLINE again", 10, async || {
        (node_status(&ctl, "n2").await == "ONLINE").then_some(())
    })
    .await;
    wait("the resize on n2", 10, async || {
        // (A push in between may carry no resource yet: not the one waited for.)
        sat(&sats, "n2").last_push().filter(|d| {
            d.resources
                .first()
                .and_then(|r| r.volumes.first())
                .is_some_and(|v| v.size_kib == 2097152)
        })
    })
    .await;

    // A satellite that reports another node's name.
    let odd = FakeSat::start("someone-else").await;
    ctl.node("n4", odd.port).await;
    wait("HOSTNAME_MISMATCH", 10, async || {
        (node_status(&ctl, "n4").await == "HOSTNAME_MISMATCH").then_some(())
    })
    .await;
    assert!(odd.with(|f| f.pushes.is_empty()));
    // Nobody listens: OFFLINE with the reason.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    ctl.node("n5", port).await;
    let e = wait("the reason n5 is offline", 10, async || {
        let v = ctl.get("/v1/satellites").await;
        let e = v
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["node"] == "n5")
            .cloned()?;
        e["error"].is_string().then_some(e)
    })
    .await;
    assert_eq!(e["connection_status"], "OFFLINE", "{e:#}");
    assert!(e["error"].as_str().unwrap().contains("connect"), "{e:#}");
    ctl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_refused_while_in_use_and_then_desired() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(&dir.path().join("c.sqlite")).await;
    let sats = cluster(&ctl).await;
    spawn(&ctl, "vm-1").await;
    let rd = ctl.get("/v1/resource-definitions/vm-1").await;
    let initial: Vec<String> = rd["props"][KEY_INITIAL_NODES]
        .as_str()
        .unwrap()
        .split(',')
        .map(str::to_owned)
        .collect();
    let primary = initial[0].clone();
    let s = sat(&sats, &primary);
    s.with(|f| f.role = "Primary".into());
    // The role shows once a push was mirrored with it.
    ctl.ok(
        "PUT",
        "/v1/resource-definitions/vm-1",
        json!({"override_props": {"Aux/x": "1"}}),
    )
    .await;
    wait("InUse", 10, async || {
        let rs = view(&ctl, "vm-1").await;
        rs.iter()
            .any(|r| r["node_name"] == primary.as_str() && r["state"]["in_use"] == true)
            .then_some(())
    })
    .await;
    let (code, v) = ctl
        .req(
            "DELETE",
            &format!("/v1/resource-definitions/vm-1/resources/{primary}"),
            None,
        )
        .await;
    assert_eq!(code, 500, "{v:#}");
    let text = v.to_string();
    assert!(
        text.contains("Primary") && text.contains(&primary),
        "{text}"
    );
    let (code, v) = ctl
        .req("DELETE", "/v1/resource-definitions/vm-1", None)
        .await;
    assert_eq!(code, 500, "{v:#}");
    assert!(
        v[0]["correction"].as_str().unwrap().contains("Unused"),
        "{v:#}"
    );
    // Unused again: deleting is desired state; the satellites get it dropped.
    s.with(|f| {
        f.role = "Secondary".into();
        for r in &mut f.observed.resources {
            r.role = Some("Secondary".into());
        }
    });
    wait("Unused", 10, async || {
        let rs = view(&ctl, "vm-1").await;
        rs.iter()
            .all(|r| r["state"]["in_use"] != true)
            .then_some(())
    })
    .await;
    ctl.ok("DELETE", "/v1/resource-definitions/vm-1", Value::Null)
        .await;
    for s in &sats {
        wait("the resource dropped", 10, async || {
            s.last_push().filter(|d| d.resources.is_empty())
        })
        .await;
    }
    ctl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_node_is_cleaned_when_it_returns() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("c.sqlite");
    let ctl = Ctl::start(&db).await;
    let sats = cluster(&ctl).await;
    spawn(&ctl, "vm-1").await;
    let s3 = sat(&sats, "n3");
    wait("n3 has the resource", 10, async || {
        s3.last_push().filter(|d| !d.resources.is_empty())
    })
    .await;
    wait("n3 ONLINE", 10, async || {
        (node_status(&ctl, "n3").await == "ONLINE").then_some(())
    })
    .await;
    // Not while its satellite answers.
    let (code, v) = ctl.req("DELETE", "/v1/nodes/n3/lost", None).await;
    assert_eq!(code, 500, "{v:#}");
    assert!(v.to_string().contains("ONLINE"), "{v:#}");
    s3.with(|f| f.down = true);
    wait("n3 OFFLINE", 10, async || {
        (node_status(&ctl, "n3").await == "OFFLINE").then_some(())
    })
    .await;
    ctl.ok("DELETE", "/v1/nodes/n3/lost", Value::Null).await;
    let e = wait("the tombstone shown", 5, async || {
        let v = ctl.get("/v1/satellites").await;
        v.as_array()
            .unwrap()
            .iter()
            .find(|e| e["node"] == "n3" && e["lost"] == true)
            .cloned()
    })
    .await;
    assert!(
        e["status_lines"].to_string().contains("deleted node"),
        "{e:#}"
    );
    // It survives a controller restart.
    ctl.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let ctl = Ctl::start(&db).await;
    assert_eq!(ctl.ctl.live().tombstones().len(), 1);
    // The satellite returns, still removing something for a while.
    s3.with(|f| {
        f.removing = vec![ObservedRemoval {
            name: "vm-1".into(),
            reason: "backing volume busy".into(),
        }];
        f.down = false;
    });
    let d = wait("lost:true pushed", 10, async || {
        s3.last_push().filter(|d| d.lost)
    })
    .await;
    assert!(d.resources.is_empty());
    assert_eq!(d.pools.len(), 1);
    assert_eq!(d.pools[0].name, "pool");
    wait("the removal shown", 5, async || {
        let v = ctl.get("/v1/satellites").await;
        v.to_string().contains("backing volume busy").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(ctl.ctl.live().tombstones().len(), 1, "kept while removing");
    s3.with(|f| f.removing.clear());
    wait("the tombstone dropped", 10, async || {
        ctl.ctl.live().tombstones().is_empty().then_some(())
    })
    .await;
    let v = ctl.get("/v1/satellites").await;
    assert!(
        v.as_array().unwrap().iter().all(|e| e["node"] != "n3"),
        "{v:#}"
    );
    let store = controller::Store::open(&db).unwrap();
    assert!(store.tombstones().unwrap().is_empty());
    ctl.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tombstones_go_with_a_new_node_or_a_second_lost() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(&dir.path().join("c.sqlite")).await;
    // A node whose satellite never answers.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    ctl.node("n7", port).await;
    ctl.ok("DELETE", "/v1/nodes/n7/storage-pools/pool", Value::Null)
        .await;
    ctl.ok("DELETE", "/v1/nodes/n7", Value::Null).await;
    assert_eq!(ctl.ctl.live().tombstones().len(), 1);
    // Created again: the normal desired state takes over.
    ctl.node("n7", port).await;
    assert!(ctl.ctl.live().tombstones().is_empty());
    ctl.ok("DELETE", "/v1/nodes/n7/lost", Value::Null).await;
    assert_eq!(ctl.ctl.live().tombstones().len(), 1);
    // `node lost` again forgets the pending cleanup.
    let v = ctl.ok("DELETE", "/v1/nodes/n7/lost", Value::Null).await;
    assert!(v.to_string().contains("forgotten"), "{v}");
    assert!(ctl.ctl.live().tombstones().is_empty());
    let (code, _) = ctl.req("DELETE", "/v1/nodes/n7/lost", None).await;
    assert_eq!(code, 404);
    ctl.stop();
}
