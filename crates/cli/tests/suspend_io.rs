//! on-no-quorum = "suspend-io" across real blockd processes on loopback: a primary
//! that loses both its peers holds a real client's write instead of failing it, the
//! write completes once a peer is back (and is on that peer), and `secondary --force`
//! is the way out that fails a held write with an I/O error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{Cluster, peer, qemu_io_outcome, require, stdout};

const RES: &str = "r0";
const MIB: usize = 1 << 20;

/// Starts qemu-io in the background with `cmds` against `uri`.
fn spawn_qemu_io(uri: &str, cmds: &[&str]) -> Child {
    let mut c = Command::new("qemu-io");
    c.args(["-f", "raw"]);
    for cmd in cmds {
        c.args(["-c", cmd]);
    }
    c.arg(uri)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for qemu-io to exit (at most `secs`); returns its output and whether every
/// command succeeded.
fn finish(mut child: Child, secs: u64) -> (String, bool) {
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if start.elapsed() > Duration::from_secs(secs) {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "qemu-io still running after {secs}s: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    qemu_io_outcome(&child.wait_with_output().unwrap())
}

/// Asserts that the client is still waiting: not exited, so neither acknowledged
/// nor failed.
fn assert_hangs(child: &mut Child, secs: u64) {
    std::thread::sleep(Duration::from_secs(secs));
    if let Some(status) = child.try_wait().unwrap() {
        let out = child.stdout.take().map(|mut s| {
            let mut t = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut t);
            t
        });
        panic!("qemu-io exited ({status}) while its write should be held: {out:?}");
    }
}

/// Bytes `at..at+len` of the data area of node i's backing file.
fn backing_bytes(c: &Cluster, i: usize, at: usize, len: usize) -> Vec<u8> {
    let d = std::fs::read(c.nodes[i].path(&format!("data/{RES}.img"))).unwrap();
    d[at..at + len].to_vec()
}

#[test]
fn a_write_held_without_quorum_completes_when_a_peer_returns_and_secondary_force_fails_one() {
    require("qemu-io", "qemu-utils");
    // n0 and n1 hold data, n2 is the diskless tiebreaker.
    let mut c = Cluster::new(&[false, false, true]);
    for i in 0..3 {
        let t = c.resource_text(
            i,
            RES,
            "64MiB",
            "test-secret-1234",
            "on-no-quorum = \"suspend-io\"\ntimeout-ms = 1000",
        );
        c.nodes[i].write_conf(RES, &t);
    }
    c.start_all();
    c.wait_connected(0, RES);
    c.local_ok(0, &["primary", RES, "--force"]);
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }
    let uri0 = c.nodes[0].uri(RES, 0);
    let (text, ok) = finish(spawn_qemu_io(&uri0, &["write -P 0x11 0 1M", "flush"]), 60);
    assert!(ok, "{text}");
    assert_eq!(
        c.nodes[0].volume(RES, 0)["suspended"],
        serde_json::Value::Null
    );

    // Both peers of the primary die: it has no quorum, and suspends its I/O.
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    let v = c.wait(0, RES, "I/O suspended", |v| v["suspended"] == "no quorum");
    assert_eq!(v["quorum"], false, "{v:#}");
    assert_eq!(v["role"], "Primary", "{v:#}");
    let hint = v["hint"].as_str().unwrap_or_default();
    assert!(
        hint.contains("I/O is suspended") && hint.contains("tandem local secondary r0 --force"),
        "{v:#}"
    );

    // A write through the primary hangs: not acknowledged, not failed.
    let mut writer = spawn_qemu_io(&uri0, &["write -P 0x22 1M 256k", "flush"]);
    assert_hangs(&mut writer, 3);
    let v = c.wait(0, RES, "the write held", |v| {
        v["held_requests"].as_u64().is_some_and(|n| n >= 1)
    });
    assert_eq!(v["suspended"], "no quorum", "{v:#}");
    let text = stdout(&c.nodes[0].local(&["status"]));
    assert!(text.contains("I/O suspended: no quorum"), "{text}");

    // A peer with data returns: quorum is back and the write completes.
    c.nodes[1].start();
    let (text, ok) = finish(writer, 60);
    assert!(ok, "the held write failed: {text}\n{}", c.logs());
    let v = c.nodes[0].volume(RES, 0);
    assert_eq!(v["suspended"], serde_json::Value::Null, "{v:#}");
    assert_eq!(v["held_requests"], 0, "{v:#}");
    assert!(
        c.nodes[0]
            .log()
            .contains(r#"suspended: {"suspended":"no quorum"}"#)
            && c.nodes[0]
                .log()
                .contains(r#"suspended: {"suspended":null}"#),
        "the suspended events:\n{}",
        c.nodes[0].log()
    );
    // ... and the data is on the peer.
    c.wait(0, RES, "n1 in sync", |v| {
        let p = peer(v, "n1");
        p["connection"] == "Connected"
            && p["replication"] == "Established"
            && p["out_of_sync_bytes"] == 0
    });
    c.wait(1, RES, "n1 UpToDate", |v| v["disk_state"] == "UpToDate");
    assert!(backing_bytes(&c, 1, 0, MIB).iter().all(|b| *b == 0x11));
    assert!(
        backing_bytes(&c, 1, MIB, 256 << 10)
            .iter()
            .all(|b| *b == 0x22),
        "the write that was held is not on n1"
    );

    // Quorum lost again; this time the administrator gives up on the held write.
    c.nodes[1].kill9();
    c.wait(0, RES, "I/O suspended again", |v| {
        v["suspended"] == "no quorum"
    });
    let mut writer = spawn_qemu_io(&uri0, &["write -P 0x33 2M 64k"]);
    assert_hangs(&mut writer, 2);
    let refused = c.nodes[0].local(&["secondary", RES]);
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && err.contains("secondary r0 --force"),
        "secondary with a client connected: {err}"
    );
    let msg = c.local_ok(0, &["secondary", RES, "--force"]);
    assert!(msg.contains("failed with an I/O error"), "{msg}");
    let (text, ok) = finish(writer, 30);
    assert!(
        !ok,
        "the held write succeeded after secondary --force: {text}"
    );
    assert!(text.contains("Input/output error"), "{text}");
    let v = c.nodes[0].volume(RES, 0);
    assert_eq!(v["role"], "Secondary", "{v:#}");
    assert_eq!(v["suspended"], serde_json::Value::Null, "{v:#}");
    assert!(
        backing_bytes(&c, 0, 2 * MIB, 64 << 10)
            .iter()
            .all(|b| *b == 0)
    );

    // Everyone back: the nodes settle with the same data.
    c.nodes[1].start();
    c.nodes[2].start();
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }
    let size = c.nodes[0].size(RES, 0) as usize;
    assert!(
        backing_bytes(&c, 0, 0, size) == backing_bytes(&c, 1, 0, size),
        "n0 and n1 hold different data"
    );
}
