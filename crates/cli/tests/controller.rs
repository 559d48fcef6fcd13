//! Multi-process tests of `tandem controller`: python-linstor drives it unchanged, bad
//! input changes nothing, and SIGKILL at random points during a scripted sequence of
//! REST calls never leaves the database inconsistent or loses an acknowledged change.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

mod ctl_harness;

/// A controller process on a free port.
struct Ctl {
    child: Child,
    port: u16,
}

impl Ctl {
    fn start(db: &Path) -> Ctl {
        let (child, addr) = ctl_harness::start_controller(db, Stdio::inherit());
        let port = addr
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the address line");
        Ctl { child, port }
    }

    fn url(&self) -> String {
        format!("linstor://127.0.0.1:{}", self.port)
    }

    fn call(&self, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, Value)> {
        http(self.port, method, path, body)
    }

    /// A call that must succeed at the HTTP level; returns (status, JSON).
    fn req(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let b = body.map(|v| v.to_string());
        self.call(method, path, b.as_deref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// One HTTP/1.1 request with `Connection: close`: what a client sees, no retries.
fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<(u16, Value)> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(20)))?;
    let body = body.unwrap_or("");
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no complete answer: {text:?}")))?;
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head:?}")))?;
    let v = if rest.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(rest).map_err(|e| std::io::Error::other(format!("{e}: {rest}")))?
    };
    Ok((code, v))
}

fn has_error(v: &Value) -> bool {
    v.as_array().is_some_and(|a| {
        a.iter().any(|r| {
            r["ret_code"]
                .as_i64()
                .is_some_and(|c| c < 0 && (c as u64) >> 62 == 3)
        })
    })
}

fn error_codes(v: &Value) -> Vec<u64> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["ret_code"].as_i64())
                .filter(|c| (*c as u64) >> 62 == 3)
                .map(|c| c as u64 & 0x7FFF)
                .collect()
        })
        .unwrap_or_default()
}

fn python_with_linstor() -> String {
    let py = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&py)
        .args(["-c", "import linstor"])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "{py} cannot import linstor: install python-linstor \
         (pip install --break-system-packages python-linstor), or set PYTHON"
    );
    py
}

#[test]
fn python_linstor_drives_the_controller_unchanged() {
    let py = python_with_linstor();
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(&dir.path().join("ctl.sqlite"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/linstor_client.py");
    let out = Command::new(py)
        .arg(&script)
        .arg(ctl.url())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.trim_end().ends_with("OK"),
        "python-linstor script failed:\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn bad_input_gets_linstor_errors_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let ctl = Ctl::start(&dir.path().join("ctl.sqlite"));
    // Malformed JSON: 400 with API_CALL_PARSE_ERROR.
    let (code, v) = ctl
        .call("POST", "/v1/nodes", Some("{\"name\": \"alpha\","))
        .unwrap();
    assert_eq!(code, 400, "{v}");
    assert_eq!(
        v[0]["ret_code"].as_i64().map(|c| c as u64),
        Some(0xCFFF_FFFF_FFFF_FFFD),
        "{v}"
    );
    assert!(v[0]["correction"].as_str().is_some_and(|s| !s.is_empty()));
    // Wrong types are malformed too.
    let (code, _) = ctl
        .call("POST", "/v1/nodes", Some("{\"name\": 5}"))
        .unwrap();
    assert_eq!(code, 400);
    let (_, nodes) = ctl.req("GET", "/v1/nodes", None);
    assert_eq!(nodes, json!([]), "nothing created by bad bodies");

    let node = |n: &str, ip: &str| {
        json!({"name": n, "type": "Satellite",
               "net_interfaces": [{"name": "default", "address": ip}]})
    };
    // Invalid name: LINSTOR answers validation errors with 500.
    let (code, v) = ctl.req("POST", "/v1/nodes", Some(node("bad_name!", "10.0.0.1")));
    assert_eq!((code, error_codes(&v)), (500, vec![200]), "{v}");
    // An address that is no IP.
    let (code, v) = ctl.req("POST", "/v1/nodes", Some(node("alpha", "host.example")));
    assert_eq!((code, error_codes(&v)), (500, vec![210]), "{v}");
    for (i, n) in ["alpha", "bravo"].iter().enumerate() {
        let (code, v) = ctl.req(
            "POST",
            "/v1/nodes",
            Some(node(n, &format!("10.0.0.{}", i + 1))),
        );
        assert_eq!(code, 201, "{v}");
    }
    // Duplicate (names compare ignoring case).
    let (code, v) = ctl.req("POST", "/v1/nodes", Some(node("ALPHA", "10.0.0.3")));
    assert_eq!((code, error_codes(&v)), (500, vec![500]), "{v}");
    // Unknown node for a pool: 404.
    let pool = json!({"storage_pool_name": "pool1", "provider_kind": "FILE_THIN",
                      "props": {"StorDriver/StorPoolName": "/srv/pool1"}});
    let (code, v) = ctl.req(
        "POST",
        "/v1/nodes/nowhere/storage-pools",
        Some(pool.clone()),
    );
    assert_eq!((code, error_codes(&v)), (404, vec![300]), "{v}");
    for n in ["alpha", "bravo"] {
        let (code, v) = ctl.req(
            "POST",
            &format!("/v1/nodes/{n}/storage-pools"),
            Some(pool.clone()),
        );
        assert_eq!(code, 201, "{v}");
    }
    // Unknown pool in a group's filter is accepted (LINSTOR too); place-count larger
    // than the eligible nodes fails at spawn, and nothing is created.
    let rg = json!({"name": "grp", "select_filter": {"place_count": 3, "storage_pool": "pool1"}});
    assert_eq!(ctl.req("POST", "/v1/resource-groups", Some(rg)).0, 201);
    assert_eq!(
        ctl.req(
            "POST",
            "/v1/resource-groups/grp/volume-groups",
            Some(json!({}))
        )
        .0,
        201
    );
    let (code, v) = ctl.req(
        "POST",
        "/v1/resource-groups/grp/spawn",
        Some(json!({"resource_definition_name": "r1", "volume_sizes": [1048576]})),
    );
    assert_eq!((code, error_codes(&v)), (500, vec![996]), "{v}");
    assert!(
        v[0]["correction"].as_str().is_some_and(|s| !s.is_empty()),
        "{v}"
    );
    let (code, v) = ctl.req("GET", "/v1/resource-definitions/r1", None);
    assert_eq!(
        (code, error_codes(&v)),
        (404, vec![301]),
        "spawn failed, so no r1: {v}"
    );
    // Unknown group.
    let (code, v) = ctl.req(
        "POST",
        "/v1/resource-groups/nogrp/spawn",
        Some(json!({"resource_definition_name": "r1", "volume_sizes": [1048576]})),
    );
    assert_eq!((code, error_codes(&v)), (404, vec![317]), "{v}");
    // Unknown endpoint.
    let (code, v) = ctl.req("GET", "/v1/no-such-thing", None);
    assert_eq!(code, 404, "{v}");
    assert!(has_error(&v));
    // A body over the limit is refused before parsing.
    let huge = format!("{{\"name\": \"{}\"}}", "x".repeat(2 << 20));
    let (code, v) = ctl
        .call("POST", "/v1/resource-groups", Some(&huge))
        .unwrap();
    assert_eq!(code, 413, "{v}");
    // Still exactly what the good requests made.
    let (_, nodes) = ctl.req("GET", "/v1/nodes", None);
    assert_eq!(nodes.as_array().map(Vec::len), Some(2));
    let (_, rgs) = ctl.req("GET", "/v1/resource-groups", None);
    assert_eq!(rgs.as_array().map(Vec::len), Some(2), "{rgs}");
    // Health and version.
    assert_eq!(ctl.call("GET", "/health", None).unwrap().0, 200);
    let (_, v) = ctl.req("GET", "/v1/controller/version", None);
    assert!(
        v["rest_api_version"]
            .as_str()
            .is_some_and(|s| s.starts_with("1."))
    );
}

/// One step of the crash script: a call and the objects it leaves present or absent.
struct Step {
    method: &'static str,
    path: String,
    body: Value,
    /// (GET path, present afterwards)
    effects: Vec<(String, bool)>,
    /// Error codes that mean "this already happened" (the step was applied before a kill).
    done_codes: &'static [u64],
    /// GET paths whose state the step makes unknown to the script (placement decides).
    forget: Vec<String>,
}

fn script() -> Vec<Step> {
    let mut s = Vec::new();
    let nodes = ["n1", "n2", "n3"];
    for (i, n) in nodes.iter().enumerate() {
        s.push(Step {
            method: "POST",
            path: "/v1/nodes".into(),
            body: json!({"name": n, "type": "Satellite",
                         "net_interfaces": [{"name": "default", "address": format!("10.1.0.{}", i + 1)}]}),
            effects: vec![(format!("/v1/nodes/{n}"), true)],
            done_codes: &[500],
            forget: vec![],
        });
        s.push(Step {
            method: "POST",
            path: format!("/v1/nodes/{n}/storage-pools"),
            body: json!({"storage_pool_name": "pool1", "provider_kind": "FILE_THIN"}),
            effects: vec![(format!("/v1/nodes/{n}/storage-pools/pool1"), true)],
            done_codes: &[510],
            forget: vec![],
        });
    }
    s.push(Step {
        method: "POST",
        path: "/v1/resource-groups".into(),
        body: json!({"name": "grp", "select_filter": {"place_count": 2, "storage_pool": "pool1",
                     "diskless_on_remaining": true}}),
        effects: vec![("/v1/resource-groups/grp".into(), true)],
        done_codes: &[522],
        forget: vec![],
    });
    s.push(Step {
        method: "POST",
        path: "/v1/resource-groups/grp/volume-groups".into(),
        body: json!({"volume_number": 0}),
        effects: vec![("/v1/resource-groups/grp/volume-groups/0".into(), true)],
        done_codes: &[523],
        forget: vec![],
    });
    for i in 0..120 {
        let r = format!("vm-{i:02}");
        s.push(Step {
            method: "POST",
            path: "/v1/resource-groups/grp/spawn".into(),
            body: json!({"resource_definition_name": r, "volume_sizes": [1048576 + i]}),
            effects: ["n1", "n2", "n3"]
                .iter()
                .map(|n| (format!("/v1/resource-definitions/{r}/resources/{n}"), true))
                .chain([(
                    format!("/v1/resource-definitions/{r}/volume-definitions/0"),
                    true,
                )])
                .collect(),
            done_codes: &[501],
            forget: vec![],
        });
    }
    for i in 0..6 {
        let r = format!("vm-{i:02}");
        s.push(Step {
            method: "PUT",
            path: format!("/v1/resource-definitions/{r}/volume-definitions/0"),
            body: json!({"size_kib": 4194304}),
            effects: vec![],
            done_codes: &[],
            forget: vec![],
        });
    }
    for i in 6..12 {
        let r = format!("vm-{i:02}");
        s.push(Step {
            method: "DELETE",
            path: format!("/v1/resource-definitions/{r}"),
            body: Value::Null,
            effects: vec![(format!("/v1/resource-definitions/{r}"), false)],
            done_codes: &[301],
            forget: vec![],
        });
    }
    s.push(Step {
        method: "DELETE",
        path: "/v1/resource-definitions/vm-12/resources/n1".into(),
        body: Value::Null,
        effects: vec![("/v1/resource-definitions/vm-12/resources/n1".into(), false)],
        done_codes: &[302],
        // With one diskful replica left the tiebreaker goes too; which node held it is
        // the placer's choice.
        forget: ["n2", "n3"]
            .iter()
            .map(|n| format!("/v1/resource-definitions/vm-12/resources/{n}"))
            .collect(),
    });
    s
}

#[derive(Debug, Clone, Copy)]
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Checks that the effects of `steps[..acked]` are all visible, and that every stored
/// resource is whole (as many volumes as its definition).
fn verify(ctl: &Ctl, steps: &[Step], acked: usize) {
    let mut expect = std::collections::BTreeMap::new();
    for st in &steps[..acked] {
        for (p, present) in &st.effects {
            if !present {
                // Deleting an object deletes what it contains.
                let inner = format!("{p}/");
                expect.retain(|q: &String, _| !q.starts_with(&inner));
            }
            expect.insert(p.clone(), *present);
        }
        for p in &st.forget {
            expect.remove(p);
        }
    }
    for (p, present) in &expect {
        let (code, v) = ctl.req("GET", p, None);
        assert_eq!(
            code == 200,
            *present,
            "after {acked} acknowledged steps, GET {p} answered {code}: {v}"
        );
    }
    let (_, rds) = ctl.req(
        "GET",
        "/v1/resource-definitions?with_volume_definitions=true",
        None,
    );
    let (_, rscs) = ctl.req("GET", "/v1/view/resources", None);
    for rd in rds.as_array().unwrap() {
        let name = rd["name"].as_str().unwrap();
        let vds = rd["volume_definitions"].as_array().unwrap().len();
        assert!(vds > 0, "{name} has no volume definition");
        for r in rscs
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"] == name)
        {
            assert_eq!(r["volumes"].as_array().unwrap().len(), vds, "{r}");
        }
    }
}

#[test]
fn sigkill_during_mutations_leaves_a_consistent_db() {
    let seed = std::env::var("TANDEM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        });
    eprintln!("seed {seed} (rerun with TANDEM_SEED={seed})");
    let mut rng = XorShift(seed);
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("ctl.sqlite");
    let steps = std::sync::Arc::new(script());
    let mut acked = 0usize;
    let mut kills = 0;
    let started = Instant::now();
    while acked < steps.len() {
        let mut ctl = Ctl::start(&db);
        // The reopened database loads (the controller checked it) and holds everything
        // acknowledged before the kill.
        verify(&ctl, &steps, acked);
        let final_round = kills >= 8;
        let (tx, rx) = mpsc::channel();
        let port = ctl.port;
        let st = steps.clone();
        let from = acked;
        let worker = std::thread::spawn(move || {
            for (i, step) in st.iter().enumerate().skip(from) {
                let body = (!step.body.is_null()).then(|| step.body.to_string());
                match http(port, step.method, &step.path, body.as_deref()) {
                    Ok((code, v)) => {
                        let codes = error_codes(&v);
                        let done =
                            !codes.is_empty() && codes.iter().all(|c| step.done_codes.contains(c));
                        assert!(
                            code < 300 || done,
                            "step {i} {} {}: {code} {v}",
                            step.method,
                            step.path
                        );
                        if tx.send(i + 1).is_err() {
                            return;
                        }
                    }
                    // The controller died under this request: not acknowledged.
                    Err(e) => {
                        eprintln!("step {i} {} {} interrupted: {e}", step.method, step.path);
                        return;
                    }
                }
            }
        });
        if !final_round {
            std::thread::sleep(Duration::from_millis(rng.next() % 30));
            ctl.kill9();
            kills += 1;
        }
        worker.join().expect("a step failed");
        while let Ok(n) = rx.try_recv() {
            acked = acked.max(n);
        }
        // Also read the database directly, as the next start will.
        if !final_round {
            let store = controller::Store::open(&db).expect("open after SIGKILL");
            store.load().expect("consistent after SIGKILL");
        }
        assert!(started.elapsed() < Duration::from_secs(240), "too slow");
    }
    let ctl = Ctl::start(&db);
    verify(&ctl, &steps, steps.len());
    assert!(kills >= 8, "{kills} kills");
    eprintln!("{kills} kills, {} steps", steps.len());
}
