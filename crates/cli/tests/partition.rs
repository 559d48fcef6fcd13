//! Network partitions between real blockd processes, each in a network namespace of
//! its own with a veth link to each other node: the links are cut with `ip link set
//! down`. Needs root and iproute2.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Cluster, peer, qemu_io_ok, qemu_io_try as qemu_io, require};

const RES: &str = "r0";

#[test]
fn a_partitioned_primary_keeps_writing_with_quorum_fails_without_and_resyncs_after_healing() {
    require("qemu-io", "qemu-utils");
    // n0 and n1 hold data, n2 is the diskless tiebreaker; quorum is a majority.
    let mut c = Cluster::in_netns(&[false, false, true]);
    for i in 0..3 {
        let t = c.resource_text(i, RES, "64MiB", "test-secret-1234", "timeout-ms = 1000");
        c.nodes[i].write_conf(RES, &t);
    }
    c.start_all();
    c.wait_connected(0, RES);
    c.local_ok(0, &["primary", RES, "--force"]);
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }
    let uri0 = c.nodes[0].uri(RES, 0);
    let uri1 = c.nodes[1].uri(RES, 0);
    qemu_io_ok(&uri0, &["write -P 0x01 0 1M", "flush"]);

    // Cut the primary from the secondary only: with the tiebreaker it keeps quorum
    // and keeps writing; the secondary may not promote.
    c.mesh().cut(0, 1);
    c.wait(0, RES, "n1 gone", |v| {
        peer(v, "n1")["connection"] != "Connected"
    });
    qemu_io_ok(&uri0, &["write -P 0x02 4M 256k", "flush"]);
    let v0 = c.nodes[0].volume(RES, 0);
    assert_eq!(v0["quorum"], true, "{v0:#}");
    assert_eq!(v0["role"], "Primary", "{v0:#}");
    let out = c.nodes[1].local(&["primary", RES]);
    assert!(!out.status.success(), "n1 promoted while n0 is primary");
    // Heal: n1 catches up on what it missed.
    c.mesh().up(0, 1);
    let v1 = c.wait_in_sync(1, RES);
    assert_eq!(v1["disk_state"], "UpToDate", "{v1:#}");

    // Cut the primary from everyone: it loses quorum and its I/O fails.
    c.mesh().cut(0, 1);
    c.mesh().cut(0, 2);
    c.wait(0, RES, "quorum lost", |v| v["quorum"] == false);
    let (text, ok) = qemu_io(&uri0, &["write -P 0x03 8M 64k", "flush"]);
    assert!(!ok, "a primary without quorum completed a write: {text}");
    assert!(text.contains("Input/output error"), "{text}");
    // The other side promotes and writes.
    c.wait(1, RES, "n0 gone", |v| {
        peer(v, "n0")["connection"] != "Connected"
    });
    c.local_ok(1, &["primary", RES]);
    qemu_io_ok(
        &uri1,
        &["read -P 0x02 4M 256k", "write -P 0x04 12M 128k", "flush"],
    );
    // The old primary's application gives up; the node steps down.
    c.local_ok(0, &["secondary", RES]);

    // Heal: no split brain; n0 takes the changes from n1 as SyncTarget.
    c.mesh().up(0, 1);
    c.mesh().up(0, 2);
    let v0 = c.wait_in_sync(0, RES);
    c.wait_in_sync(1, RES);
    let received = peer(&v0, "n1")["resync_received_bytes"].as_u64().unwrap();
    assert!(
        received >= 128 << 10,
        "n0 received only {received} bytes: {v0:#}"
    );
    assert!(
        !c.nodes[0].log().contains("split brain") && !c.nodes[1].log().contains("split brain"),
        "split brain logged:\n{}\n{}",
        c.nodes[0].log(),
        c.nodes[1].log()
    );
    c.local_ok(1, &["secondary", RES]);
    qemu_io_ok(
        &uri0,
        &[
            "read -P 0x01 0 1M",
            "read -P 0x02 4M 256k",
            "read -P 0 8M 64k",
            "read -P 0x04 12M 128k",
        ],
    );
    let size = c.nodes[0].size(RES, 0) as usize;
    let read = |i: usize| {
        let mut d = std::fs::read(c.nodes[i].path(&format!("data/{RES}.img"))).unwrap();
        d.truncate(size);
        d
    };
    assert!(read(0) == read(1), "n0 and n1 hold different data");
}
