//! `tandem satellite` against real blockd processes, driven by desired states pushed
//! over HTTP the way the controller pushes them: a new resource comes up replicated
//! without an initial sync, survives a satellite restart without interrupting I/O, and
//! removing it from the desired state removes its files and backing volumes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{Blockd, Satellite, TANDEM, free_port, require, run};
use serde_json::{Value, json};

struct Node {
    blockd: Blockd,
    sat: Satellite,
    name: String,
    diskless: bool,
}

fn nodes() -> Vec<Node> {
    [("n0", false), ("n1", false), ("n2", true)]
        .iter()
        .map(|(name, diskless)| {
            let mut blockd = Blockd::new();
            blockd.node = Some((*name).to_owned());
            std::fs::create_dir_all(blockd.path("pool")).unwrap();
            let sat = Satellite::new(&blockd, name);
            Node {
                blockd,
                sat,
                name: (*name).to_owned(),
                diskless: *diskless,
            }
        })
        .collect()
}

fn desired(ns: &[Node], i: usize, generation: u64, ports: &[u16], resources: bool) -> String {
    let n = &ns[i];
    let pool = n.blockd.path("pool");
    let nodes: Vec<Value> = ns
        .iter()
        .enumerate()
        .map(|(j, m)| {
            json!({"name": m.name, "id": j, "address": format!("127.0.0.1:{}", ports[j]),
                   "diskless": m.diskless})
        })
        .collect();
    let res = json!({
        "name": "r1", "secret": "satellite-test-secret", "protocol": "C",
        "quorum": "majority", "on_no_quorum": "io-error", "allow_two_primaries": false,
        "split_brain": "disconnect", "resync_rate": null, "verify_alg": "crc32c",
        "volumes": [{"number": 0, "size_kib": 64 * 1024,
                     "pool": if n.diskless { Value::Null } else { json!("pool1") }}],
        "nodes": nodes,
        "initial_generation": 0x5eed_0000_1234_u64,
        "initial_nodes": ["n0", "n1"],
    });
    json!({
        "generation": generation,
        "node": n.name,
        "pools": if n.diskless { json!([]) } else {
            json!([{"name": "pool1", "provider_kind": "FILE_THIN",
                    "props": {"StorDriver/StorPoolName": pool}}])
        },
        "resources": if resources { json!([res]) } else { json!([]) },
    })
    .to_string()
}

fn wait(n: &Node, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let o = n.sat.observed();
        if f(&o) {
            return o;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}: {what} did not happen; observed:\n{o:#}\nsatellite log:\n{}\nblockd log:\n{}",
            n.name,
            n.sat.logs(),
            n.blockd.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn settled(o: &Value, disk: &str) -> bool {
    let r = &o["resources"][0];
    o["applied"] == true
        && r["volumes"][0]["disk_state"] == disk
        && r["peers"]
            .as_array()
            .is_some_and(|ps| ps.len() == 2 && ps.iter().all(|p| p["connection"] == "Connected"))
}

#[test]
fn desired_state_becomes_a_replicated_volume_and_goes_away_again() {
    require("qemu-io", "qemu-utils");
    let mut ns = nodes();
    let ports: Vec<u16> = ns.iter().map(|_| free_port()).collect();
    for n in &mut ns {
        n.blockd.start();
        n.sat.start();
    }

    // Bad input first: nothing may change.
    let (code, v) = ns[0].sat.push("{not json");
    assert_eq!(code, 400, "{v}");
    let (code, v) = ns[0].sat.push(&desired(&ns, 1, 1, &ports, true));
    assert_eq!(code, 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("'n0'"), "{v}");
    assert_eq!(ns[0].sat.observed()["generation"], 0);

    for i in 0..ns.len() {
        let (code, v) = ns[i].sat.push(&desired(&ns, i, 7, &ports, true));
        assert_eq!(code, 200, "{v}");
        assert_eq!(v["generation"], 7);
    }
    for (i, disk) in [(0, "UpToDate"), (1, "UpToDate"), (2, "Diskless")] {
        let o = wait(&ns[i], "settling", |o| settled(o, disk));
        assert_eq!(o["generation"], 7);
    }
    // Volumes made together for a new resource start alike: nothing was resynced.
    let st = ns[0].blockd.status();
    let vol = &st["resources"][0]["volumes"][0];
    for p in vol["peers"].as_array().unwrap() {
        assert_eq!(p["resync_sent_bytes"], 0, "{st:#}");
        assert_eq!(p["resync_received_bytes"], 0, "{st:#}");
    }
    let backing = ns[0].blockd.path("pool/r1_00000.img");
    assert!(backing.exists());
    assert!(
        std::fs::read_to_string(ns[0].blockd.path("conf/r1.toml"))
            .unwrap()
            .starts_with("# Managed by tandem satellite")
    );
    let pools = &ns[0].sat.observed()["pools"][0];
    assert!(pools["total_capacity_kib"].as_u64().unwrap() > 0, "{pools}");

    // Data written through n0 is read back through n1.
    let uri0 = ns[0].sat.observed()["resources"][0]["volumes"][0]["nbd_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri1 = ns[1].sat.observed()["resources"][0]["volumes"][0]["nbd_uri"]
        .as_str()
        .unwrap()
        .to_owned();
    run("qemu-io", &["-f", "raw", "-c", "write -P 0x5a 0 4M", &uri0]);
    run("qemu-io", &["-f", "raw", "-c", "read -P 0x5a 0 4M", &uri1]);

    // A satellite restart leaves blockd and its clients alone.
    let file = ns[0].blockd.path("conf/r1.toml");
    let before = std::fs::metadata(&file).unwrap().modified().unwrap();
    let qemu = std::process::Command::new("qemu-io")
        .args([
            "-f",
            "raw",
            "-c",
            "write -P 0x6b 4M 4M",
            "-c",
            "read -P 0x6b 4M 4M",
        ])
        .args(["-c", "write -P 0x6c 8M 4M", "-c", "read -P 0x6c 8M 4M"])
        .arg(&uri0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    ns[0].sat.kill9();
    ns[0].sat.start();
    let out = qemu.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success() && !text.contains("failed"), "{text}");
    wait(&ns[0], "settling after the restart", |o| {
        settled(o, "UpToDate")
    });
    assert_eq!(
        std::fs::metadata(&file).unwrap().modified().unwrap(),
        before
    );

    // Removing the resource from the desired state removes everything it had.
    for i in 0..ns.len() {
        let (code, v) = ns[i].sat.push(&desired(&ns, i, 8, &ports, false));
        assert_eq!(code, 200, "{v}");
    }
    for n in &ns {
        wait(n, "removal", |o| {
            o["applied"] == true
                && o["generation"] == 8
                && o["resources"].as_array().is_some_and(Vec::is_empty)
                && o["removing"].as_array().is_some_and(Vec::is_empty)
        });
        assert!(!n.blockd.path("conf/r1.toml").exists());
        assert!(!n.blockd.path("pool/r1_00000.img").exists());
        let st = n.blockd.status();
        assert!(st["resources"].as_array().unwrap().is_empty(), "{st:#}");
    }
    let ledger = std::fs::read_to_string(ns[0].blockd.path("sat-state/ledger.json")).unwrap();
    let ledger: Value = serde_json::from_str(&ledger).unwrap();
    assert!(ledger["volumes"].as_array().unwrap().is_empty(), "{ledger}");
    let _ = TANDEM;
}

#[test]
fn files_it_did_not_write_are_left_alone() {
    let mut ns = nodes();
    let ports: Vec<u16> = ns.iter().map(|_| free_port()).collect();
    // Someone's own resource file with the same name: the satellite must not take it.
    ns[0].blockd.add_resource("r1", &[(0, "16MiB")]);
    ns[0].blockd.start();
    ns[0].sat.start();
    let (code, _) = ns[0].sat.push(&desired(&ns, 0, 3, &ports, true));
    assert_eq!(code, 200);
    let o = wait(&ns[0], "an error for r1", |o| {
        o["resources"][0]["error"]
            .as_str()
            .is_some_and(|e| e.contains("not written by the satellite"))
    });
    assert_eq!(o["applied"], false);
    let text = std::fs::read_to_string(ns[0].blockd.path("conf/r1.toml")).unwrap();
    assert!(!text.contains("Managed by tandem satellite"), "{text}");
    // An empty desired state does not remove it either.
    let (code, _) = ns[0].sat.push(&desired(&ns, 0, 4, &ports, false));
    assert_eq!(code, 200);
    wait(&ns[0], "applying generation 4", |o| {
        o["generation"] == 4 && o["applied"] == true
    });
    assert!(ns[0].blockd.path("conf/r1.toml").exists());
    assert!(ns[0].blockd.path("data/r1-0.img").exists());
}
