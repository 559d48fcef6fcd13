//! allow-two-primaries across real blockd processes: a live migration's disk side.
//! The source VM's NBD connection stays open (nbdfuse holds it) while the target
//! opens the volume on another node; both read and write; the source lets go and the
//! target carries on alone; every replica ends identical.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Attached, Cluster, qemu_io_ok, qemu_io_try, require};

const RES: &str = "r0";
const SECRET: &str = "test-secret-1234";

#[test]
fn live_migration_with_two_primaries_moves_the_writer_and_loses_nothing() {
    require("qemu-io", "qemu-utils");
    require("nbdfuse", "libnbd-bin");
    let mut c = Cluster::new(&[false, false, true]);
    for i in 0..3 {
        let t = c.resource_text(i, RES, "64MiB", SECRET, "");
        c.nodes[i].write_conf(RES, &t);
    }
    c.start_all();
    c.wait_connected(0, RES);
    c.local_ok(0, &["primary", RES, "--force"]);
    c.local_ok(0, &["secondary", RES]);
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }
    let (uri0, uri1) = (c.nodes[0].uri(RES, 0), c.nodes[1].uri(RES, 0));

    // The source VM runs on n0: its connection keeps n0 primary.
    let dir0 = tempfile::tempdir().unwrap();
    let source = Attached::new(dir0.path(), &uri0);
    c.wait(0, RES, "n0 primary", |v| v["role"] == "Primary");
    qemu_io_ok(&uri0, &["write -P 0x11 0 1M", "flush"]);

    // Without allow-two-primaries the target cannot open the volume, and says why.
    let (text, ok) = qemu_io_try(&uri1, &["read 0 4k"]);
    assert!(!ok, "{text}");
    assert!(text.contains("node 0 is primary"), "{text}");
    assert!(text.contains("allow-two-primaries"), "{text}");

    // Allowed live, as a migration does before it starts.
    for i in 0..3 {
        let t = c.resource_text(i, RES, "64MiB", SECRET, "allow-two-primaries = true");
        c.nodes[i].write_conf(RES, &t);
        let out = c.local_ok(i, &["adjust"]);
        assert!(out.contains("options changed"), "{out}");
    }

    // The target opens it on n1: a second primary whose writes n0 orders.
    let dir1 = tempfile::tempdir().unwrap();
    let target = Attached::new(dir1.path(), &uri1);
    let v = c.wait(1, RES, "n1 primary too", |v| v["role"] == "Primary");
    assert_eq!(v["writes_via"], "n0", "{v:#}");
    assert_eq!(c.nodes[0].volume(RES, 0)["role"], "Primary");
    let text = c.local_ok(1, &["status"]);
    assert!(text.contains("writes ordered by n0"), "{text}");
    // Each side reads what the other wrote.
    qemu_io_ok(&uri1, &["read -P 0x11 0 1M", "write -P 0x22 1M 1M"]);
    qemu_io_ok(
        &uri0,
        &["read -P 0x22 1M 1M", "write -P 0x33 2M 64k", "flush"],
    );
    qemu_io_ok(&uri1, &["read -P 0x33 2M 64k"]);

    // The source VM stops: n0 is demoted and n1 orders its own writes.
    drop(source);
    c.wait(0, RES, "n0 demoted", |v| v["role"] == "Secondary");
    c.wait(1, RES, "n1 on its own", |v| {
        v["role"] == "Primary" && v["writes_via"].is_null()
    });
    qemu_io_ok(
        &uri1,
        &["write -P 0x44 3M 1M", "flush", "read -P 0x33 2M 64k"],
    );
    drop(target);
    c.wait(1, RES, "n1 demoted", |v| v["role"] == "Secondary");
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }
    // Every write is on both disks.
    let size = c.nodes[0].size(RES, 0) as usize;
    let read = |i: usize| {
        let mut d = std::fs::read(c.nodes[i].path(&format!("data/{RES}.img"))).unwrap();
        d.truncate(size);
        d
    };
    let (a, b) = (read(0), read(1));
    assert!(a == b, "n0 and n1 differ\n{}", c.logs());
    for (off, len, byte) in [
        (0usize, 1 << 20, 0x11u8),
        (1 << 20, 1 << 20, 0x22),
        (2 << 20, 64 << 10, 0x33),
        (3 << 20, 1 << 20, 0x44),
    ] {
        assert!(
            a[off..off + len].iter().all(|x| *x == byte),
            "pattern {byte:#x} at {off}"
        );
    }
}
