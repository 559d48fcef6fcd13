//! Replicated resources across real blockd processes on loopback: failover after a
//! crash, bitmap resync of only what changed, split brain and its resolution, and
//! peers that must be refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::Write;
use std::time::Duration;

use common::{
    Attached, Cluster, FailingDisk, check_test_files, fio_verify, peer, require,
    require_filesystem_tools, run, stdout, test_files,
};

const RES: &str = "r0";

fn qemu_io(uri: &str, cmds: &[&str]) -> String {
    let mut args = vec!["-f", "raw"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(uri);
    let out = run("qemu-io", &args);
    let text = stdout(&out);
    assert!(
        !text.contains("Pattern verification failed") && !text.contains("failed"),
        "qemu-io {cmds:?}: {text}"
    );
    text
}

fn data_size(c: &Cluster, i: usize) -> u64 {
    c.nodes[i].size(RES, 0)
}

/// The data areas of two nodes' backing files are byte-identical.
fn assert_same_data(c: &Cluster, a: usize, b: usize) {
    let size = data_size(c, a) as usize;
    let read = |i: usize| {
        let mut d = std::fs::read(c.nodes[i].path(&format!("data/{RES}.img"))).unwrap();
        d.truncate(size);
        d
    };
    let (x, y) = (read(a), read(b));
    if let Some(pos) = x.iter().zip(&y).position(|(p, q)| p != q) {
        let last = x.iter().zip(&y).rposition(|(p, q)| p != q).unwrap_or(pos);
        let n = x.iter().zip(&y).filter(|(p, q)| p != q).count();
        panic!(
            "node {a} and node {b} differ in {n} bytes from byte {pos} ({:#x} vs {:#x}) to byte {last}\n{}",
            x[pos],
            y[pos],
            c.logs()
        );
    }
}

/// Two diskful nodes and a diskless tiebreaker, the first initial sync done. `extra`
/// goes into every node's resource file.
fn three_nodes(extra: &str) -> Cluster {
    let mut c = Cluster::new(&[false, false, true]);
    for i in 0..3 {
        let t = c.resource_text(i, RES, "64MiB", "test-secret-1234", extra);
        c.nodes[i].write_conf(RES, &t);
    }
    c.start_all();
    // A new resource: nobody has UpToDate data, and status says what to do.
    let v = c.wait(0, RES, "peers connected", |v| {
        v["peers"]
            .as_array()
            .is_some_and(|ps| ps.iter().all(|p| p["connection"] == "Connected"))
    });
    assert_eq!(v["disk_state"], "Inconsistent");
    assert!(
        v["hint"]
            .as_str()
            .unwrap_or("")
            .contains("primary r0 --force"),
        "{v:#}"
    );
    c.local_ok(0, &["primary", RES, "--force"]);
    c.local_ok(0, &["secondary", RES]);
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }
    c
}

#[test]
fn crash_failover_and_bitmap_resync_of_only_the_changes() {
    require("qemu-io", "qemu-utils");
    let mut c = three_nodes("");
    let uri0 = c.nodes[0].uri(RES, 0);
    let uri1 = c.nodes[1].uri(RES, 0);

    // The NBD client promotes node 0 on connect; writes, one unaligned, then flush.
    qemu_io(
        &uri0,
        &[
            "write -P 0xab 0 1M",
            "write -P 0xcd 1000 5000",
            "write -P 0xef 3M 64k",
            "flush",
        ],
    );
    // The last client left: node 0 is secondary again.
    c.wait(0, RES, "demotion after the last client", |v| {
        v["role"] == "Secondary"
    });
    // Node 0 primary again, then it crashes.
    c.local_ok(0, &["primary", RES]);
    c.nodes[0].kill9();

    // Node 1 takes over with everything acknowledged.
    c.wait(1, RES, "node 0 gone", |v| {
        peer(v, "n0")["connection"] != "Connected"
    });
    c.local_ok(1, &["primary", RES]);
    qemu_io(
        &uri1,
        &[
            "read -P 0xab 0 1000",
            "read -P 0xcd 1000 5000",
            "read -P 0xab 6000 1042576",
            "read -P 0xef 3M 64k",
        ],
    );
    // New writes on node 1 while node 0 is down: 260 KiB.
    qemu_io(
        &uri1,
        &["write -P 0x11 8M 256k", "write -P 0x22 20M 4k", "flush"],
    );
    let v1 = c.nodes[1].volume(RES, 0);
    assert_eq!(peer(&v1, "n0")["out_of_sync_bytes"], 260 << 10, "{v1:#}");
    c.local_ok(1, &["secondary", RES]);

    // Node 0 returns: it copies back only what changed plus its own hot extent (its
    // writes since the last flush of the activity log may differ: 4 MiB).
    c.nodes[0].start();
    let v0 = c.wait_in_sync(0, RES);
    c.wait_in_sync(1, RES);
    assert_eq!(v0["previous_shutdown"], "unclean");
    let received = peer(&v0, "n1")["resync_received_bytes"].as_u64().unwrap();
    assert!(
        ((260 << 10)..=(260 << 10) + (4 << 20)).contains(&received),
        "node 0 received {received} bytes by resync; expected the 260 KiB changed plus at most one 4 MiB hot extent"
    );
    assert_same_data(&c, 0, 1);
    qemu_io(
        &uri0,
        &[
            "read -P 0x11 8M 256k",
            "read -P 0x22 20M 4k",
            "read -P 0xcd 1000 5000",
        ],
    );
    // An online verify compares every block and finds nothing different.
    let v = verify(&c, 1, "n0");
    assert_eq!(peer(&v, "n0")["verify_out_of_sync_bytes"], 0, "{v:#}");
}

/// Runs an online verify on node i against `peer` and waits for it to finish.
/// Changes 100 bytes at `offset` of node `i`'s backing file, behind blockd's back.
fn change_behind_blockd(c: &Cluster, i: usize, offset: u64) {
    use std::io::{Seek, SeekFrom};
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(c.nodes[i].path(&format!("data/{RES}.img")))
        .unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&[0x99; 100]).unwrap();
    f.sync_all().unwrap();
}

fn verify(c: &Cluster, i: usize, peer_name: &str) -> serde_json::Value {
    // A client that just left demotes its node, and the peers re-handshake: verify
    // needs them connected.
    c.wait_in_sync(i, RES);
    c.local_ok(i, &["verify", RES, "--peer", peer_name]);
    let v = c.wait(i, RES, "verify ended", |v| {
        peer(v, peer_name)["verifying"] == false
    });
    assert_eq!(peer(&v, peer_name)["verify_done_percent"], 100.0, "{v:#}");
    v
}

#[test]
fn verify_finds_a_block_changed_behind_blockd_and_resyncs_it() {
    require("qemu-io", "qemu-utils");
    let c = three_nodes("");
    let uri0 = c.nodes[0].uri(RES, 0);
    qemu_io(&uri0, &["write -P 0x44 0 2M", "flush"]);
    c.wait_in_sync(1, RES);
    // Bit rot on node 1: one block changes under blockd's feet.
    change_behind_blockd(&c, 1, 1 << 20);
    let v = verify(&c, 0, "n1");
    assert_eq!(peer(&v, "n1")["verify_out_of_sync_bytes"], 4096, "{v:#}");
    // The block found different goes back to node 1.
    c.wait_in_sync(0, RES);
    c.wait_in_sync(1, RES);
    assert_same_data(&c, 0, 1);
    let v = verify(&c, 0, "n1");
    assert_eq!(peer(&v, "n1")["verify_out_of_sync_bytes"], 0, "{v:#}");
    // Verify needs UpToDate data here and a peer to compare with.
    let out = c.nodes[2].local(&["verify", RES]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UpToDate"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_diskless_node_writes_and_reads_through_two_diskful_peers() {
    require("qemu-io", "qemu-utils");
    let c = three_nodes("");
    let uri2 = c.nodes[2].uri(RES, 0);
    // The NBD client promotes the diskless node; its writes land on both disks.
    qemu_io(
        &uri2,
        &[
            "write -P 0x61 0 1M",
            "write -P 0x62 5000 3000",
            "write -P 0x63 40M 256k",
            "flush",
            "read -P 0x61 0 5000",
            "read -P 0x62 5000 3000",
            "read -P 0x63 40M 256k",
        ],
    );
    c.wait(2, RES, "demotion after the last client", |v| {
        v["role"] == "Secondary"
    });
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }
    assert_same_data(&c, 0, 1);
    qemu_io(
        &c.nodes[1].uri(RES, 0),
        &["read -P 0x62 5000 3000", "read -P 0x63 40M 256k"],
    );
}

#[test]
fn ext4_on_the_primary_survives_its_crash_and_mounts_clean_on_the_survivor() {
    require_filesystem_tools();
    let mut c = three_nodes("");
    let uri0 = c.nodes[0].uri(RES, 0);
    let uri1 = c.nodes[1].uri(RES, 0);

    // Node 0: the client promotes it; a filesystem and fsynced files (and their
    // directories), then the node dies with the filesystem mounted.
    let mut a = Attached::new(c.nodes[0].dir.path(), &uri0);
    c.wait(0, RES, "promotion by the NBD client", |v| {
        v["role"] == "Primary"
    });
    run("mkfs.ext4", &["-q", "-F", a.dev()]);
    a.mount();
    for (name, data) in test_files() {
        let p = a.mnt.join(&name);
        let dir = p.parent().unwrap();
        std::fs::create_dir_all(dir).unwrap();
        let mut f = std::fs::File::create(&p).unwrap();
        f.write_all(&data).unwrap();
        f.sync_all().unwrap();
        std::fs::File::open(dir).unwrap().sync_all().unwrap();
    }
    // Written but never fsynced: it may or may not survive, and must not hurt.
    std::fs::write(a.mnt.join("unsynced.bin"), vec![7u8; 300_000]).unwrap();
    c.nodes[0].kill9();
    a.crash();

    // Node 1 takes over: mounting replays the journal, every fsynced file is there,
    // and a forced check finds nothing to repair.
    c.wait(1, RES, "node 0 gone", |v| {
        peer(v, "n0")["connection"] != "Connected"
    });
    c.local_ok(1, &["primary", RES]);
    let mut b = Attached::new(c.nodes[1].dir.path(), &uri1);
    b.mount();
    check_test_files(&b.mnt);
    b.umount();
    run("fsck.ext4", &["-fn", b.dev()]);
}

#[test]
fn split_brain_is_refused_until_discard_my_data_resolves_it() {
    require("qemu-io", "qemu-utils");
    // Without quorum, so that both sides of the partition can write.
    let c = three_nodes("quorum = \"off\"");
    let uri0 = c.nodes[0].uri(RES, 0);
    let uri1 = c.nodes[1].uri(RES, 0);
    qemu_io(&uri0, &["write -P 0x01 0 1M", "flush"]);
    c.wait_in_sync(1, RES);

    // Partition node 0 from everyone; both sides promote by force and write.
    c.local_ok(0, &["disconnect", RES]);
    c.wait(1, RES, "node 0 gone", |v| {
        peer(v, "n0")["connection"] != "Connected"
    });
    c.local_ok(0, &["primary", RES, "--force"]);
    qemu_io(&uri0, &["write -P 0x0a 4M 128k", "flush"]);
    c.local_ok(1, &["primary", RES, "--force"]);
    qemu_io(&uri1, &["write -P 0x0b 12M 64k", "flush"]);
    c.local_ok(0, &["secondary", RES]);
    c.local_ok(1, &["secondary", RES]);

    // Reconnecting finds the split brain: both stay StandAlone and say how to resolve.
    c.local_ok(0, &["connect", RES]);
    let v0 = c.wait(0, RES, "split brain detected", |v| {
        peer(v, "n1")["connection"] == "StandAlone"
    });
    let hint = v0["hint"].as_str().unwrap_or("");
    assert!(hint.contains("--discard-my-data"), "{v0:#}");
    let text = c.local_ok(0, &["status"]);
    assert!(text.contains("split brain"), "{text}");
    std::thread::sleep(Duration::from_millis(500));
    let v1 = c.nodes[1].volume(RES, 0);
    assert_ne!(peer(&v1, "n0")["connection"], "Connected", "{v1:#}");

    // Node 0 gives its changes up; only the divergent blocks move.
    c.local_ok(0, &["connect", RES, "--discard-my-data"]);
    c.local_ok(1, &["connect", RES]);
    let v0 = c.wait_in_sync(0, RES);
    c.wait_in_sync(1, RES);
    let received = peer(&v0, "n1")["resync_received_bytes"].as_u64().unwrap();
    let divergent = (128 << 10) + (64 << 10);
    assert!(
        (divergent..=divergent + (8 << 20)).contains(&received),
        "resync moved {received} bytes; the divergent blocks are {divergent}"
    );
    assert_same_data(&c, 0, 1);
    qemu_io(
        &uri0,
        &[
            "read -P 0x0b 12M 64k",
            "read -P 0 4M 128k",
            "read -P 0x01 0 1M",
        ],
    );
}

#[test]
fn bad_peers_are_refused_with_a_reason_and_disturb_nothing() {
    require("qemu-io", "qemu-utils");
    // Two nodes without quorum, so that node 0 serves alone; node 1 has the wrong secret.
    let mut c = Cluster::new(&[false, false]);
    let q = "quorum = \"off\"";
    let t = c.resource_text(0, RES, "64MiB", "test-secret-1234", q);
    c.nodes[0].write_conf(RES, &t);
    let t = c.resource_text(1, RES, "64MiB", "another-secret-9", q);
    c.nodes[1].write_conf(RES, &t);
    c.start_all();
    c.local_ok(0, &["primary", RES, "--force"]);
    let uri0 = c.nodes[0].uri(RES, 0);
    qemu_io(&uri0, &["write -P 0x5a 0 64k", "flush"]);
    // Node 1 dials node 0 (lower id): both sides name the cause.
    c.wait(1, RES, "authentication failure shown", |v| {
        peer(v, "n0")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("authentication failed"))
    });
    assert!(c.nodes[0].log().contains("authentication failed"));

    // Garbage and another protocol version on node 0's replication port.
    let addr = format!("127.0.0.1:{}", c.specs[0].port);
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut v = b"TANDEMRP".to_vec();
    v.extend_from_slice(&[99, 2]);
    v.extend_from_slice(b"r0");
    let mut s2 = std::net::TcpStream::connect(&addr).unwrap();
    s2.write_all(&v).unwrap();
    let start = std::time::Instant::now();
    while !(c.nodes[0].log().contains("bad magic") && c.nodes[0].log().contains("version 99")) {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "refusals not logged:\n{}",
            c.nodes[0].log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // A resource name node 0 does not have, and a volume of another size.
    c.nodes[1].stop();
    std::fs::remove_file(c.nodes[1].path(&format!("conf/{RES}.toml"))).unwrap();
    let t = c.resource_text(1, "r9", "64MiB", "test-secret-1234", q);
    c.nodes[1].write_conf("r9", &t);
    c.nodes[1].start();
    c.wait(1, "r9", "unknown resource refusal shown", |v| {
        peer(v, "n0")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not up on this node"))
    });
    c.nodes[1].stop();
    std::fs::remove_file(c.nodes[1].path("conf/r9.toml")).unwrap();
    std::fs::remove_file(c.nodes[1].path(&format!("data/{RES}.img"))).unwrap();
    let t = c.resource_text(1, RES, "128MiB", "test-secret-1234", q);
    c.nodes[1].write_conf(RES, &t);
    c.nodes[1].start();
    c.wait(1, RES, "size refusal shown", |v| {
        peer(v, "n0")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("size mismatch"))
    });

    // Node 0 served its client throughout, and never connected to the bad peers.
    qemu_io(&uri0, &["read -P 0x5a 0 64k", "write -P 0x5b 64k 64k"]);
    let v0 = c.nodes[0].volume(RES, 0);
    assert_eq!(v0["role"], "Primary", "{v0:#}");
    assert_eq!(peer(&v0, "n1")["connection"], "Connecting", "{v0:#}");
}

#[test]
fn adjust_adds_and_removes_nodes_while_a_client_keeps_writing() {
    require("qemu-io", "qemu-utils");
    let q = "quorum = \"off\"";
    let mut c = Cluster::new(&[false, false, false]);
    let conf = |c: &Cluster, i: usize, members: &[usize]| {
        let t = c.resource_text_of(i, RES, "64MiB", "test-secret-1234", q, members);
        c.nodes[i].write_conf(RES, &t);
    };
    for i in 0..2 {
        conf(&c, i, &[0, 1]);
    }
    c.nodes[0].start();
    c.nodes[1].start();
    c.wait(0, RES, "n1 connected", |v| {
        peer(v, "n1")["connection"] == "Connected"
    });
    c.local_ok(0, &["primary", RES, "--force"]);
    c.wait_in_sync(0, RES);
    let uri0 = c.nodes[0].uri(RES, 0);

    // A client writes, pauses while a third node joins, and writes again on the
    // same connection: the volume was not reopened under it.
    let client = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0x31 0 1M", "-c", "sleep 3000"])
        .args(["-c", "write -P 0x32 1M 1M", "-c", "flush", &uri0])
        .output();
    let adjust = std::thread::scope(|s| {
        let h = s.spawn(|| client);
        std::thread::sleep(Duration::from_millis(1000));
        for i in 0..3 {
            conf(&c, i, &[0, 1, 2]);
        }
        let a0 = c.local_ok(0, &["adjust"]);
        let a1 = c.local_ok(1, &["adjust"]);
        (h.join().unwrap(), a0, a1)
    });
    let (out, a0, a1) = adjust;
    let out = out.unwrap();
    let text = stdout(&out);
    assert!(out.status.success() && !text.contains("failed"), "{text}");
    assert!(
        a0.contains("node n2 added") && a1.contains("node n2 added"),
        "{a0}\n{a1}"
    );
    // The new node gets everything.
    c.nodes[2].start();
    let v2 = c.wait_in_sync(2, RES);
    assert_eq!(v2["disk_state"], "UpToDate", "{v2:#}");
    c.wait_in_sync(0, RES);
    assert_same_data(&c, 0, 2);

    // n1 leaves: the others forget it and refuse it.
    for i in [0, 2] {
        conf(&c, i, &[0, 2]);
    }
    let a0 = c.local_ok(0, &["adjust"]);
    assert!(a0.contains("node n1 removed"), "{a0}");
    c.local_ok(2, &["adjust"]);
    let v0 = c.nodes[0].volume(RES, 0);
    let names: Vec<&str> = v0["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["n2"], "{v0:#}");
    c.wait(1, RES, "n0 refusing n1", |v| {
        peer(v, "n0")["reason"]
            .as_str()
            .is_some_and(|r| r.contains("not a node of resource"))
    });
    qemu_io(
        &uri0,
        &[
            "read -P 0x31 0 1M",
            "read -P 0x32 1M 1M",
            "write -P 0x33 2M 64k",
            "flush",
        ],
    );
    c.wait_in_sync(0, RES);
    assert_same_data(&c, 0, 2);

    // A change to this node's own entry is refused and changes nothing.
    let t = c
        .resource_text_of(0, RES, "64MiB", "test-secret-1234", q, &[0, 2])
        .replace(&format!(":{}\"", c.specs[0].port), ":1\"");
    c.nodes[0].write_conf(RES, &t);
    let out = c.nodes[0].local(&["adjust"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("own entry"), "{err}");
    c.wait_in_sync(0, RES);
    assert_eq!(c.nodes[0].volume(RES, 0)["role"], "Primary");
}

#[test]
fn a_failing_disk_on_the_primary_is_detached_and_io_goes_on_through_the_peer() {
    require("qemu-io", "qemu-utils");
    let mut c = three_nodes("");
    let uri0 = c.nodes[0].uri(RES, 0);
    qemu_io(&uri0, &["write -P 0x71 0 1M", "flush"]);
    c.wait_in_sync(0, RES);
    // Node 0's backing becomes a disk that fails on demand.
    c.nodes[0].stop();
    let disk = FailingDisk::replace(&c.nodes[0].path(&format!("data/{RES}.img")));
    c.nodes[0].start();
    c.wait_in_sync(0, RES);
    c.local_ok(0, &["primary", RES]);
    qemu_io(&uri0, &["write -P 0x72 1M 64k", "flush"]);

    // The disk dies: the next I/O detaches it, and the writes and reads of the
    // client still succeed through node 1.
    disk.fail();
    qemu_io(
        &uri0,
        &[
            "write -P 0x73 2M 128k",
            "flush",
            "read -P 0x71 0 1M",
            "read -P 0x72 1M 64k",
            "read -P 0x73 2M 128k",
        ],
    );
    let v0 = c.wait(0, RES, "detached", |v| v["disk_state"] == "Diskless");
    assert_eq!(v0["role"], "Primary", "{v0:#}");
    assert!(
        v0["detached"]
            .as_str()
            .is_some_and(|d| d.contains("failed")),
        "{v0:#}"
    );
    assert!(
        v0["hint"]
            .as_str()
            .is_some_and(|h| h.contains("tandem local attach r0")),
        "{v0:#}"
    );
    let text = c.local_ok(0, &["status"]);
    assert!(text.contains("disk detached"), "{text}");
    qemu_io(&c.nodes[0].uri(RES, 0), &["write -P 0x74 3M 4k", "flush"]);

    // Repaired: as a secondary, node 0 attaches its disk again and takes a full
    // resync; the two copies end identical.
    disk.heal();
    let out = c.nodes[0].local(&["attach", RES]);
    assert!(
        !out.status.success(),
        "attach on the primary must be refused"
    );
    c.local_ok(0, &["secondary", RES]);
    c.local_ok(0, &["attach", RES]);
    let v0 = c.wait_in_sync(0, RES);
    assert_eq!(v0["disk_state"], "UpToDate", "{v0:#}");
    assert!(v0["detached"].is_null(), "{v0:#}");
    c.wait_in_sync(1, RES);
    // Node 0's file is the FUSE view of the repaired disk: compare through it.
    assert_same_data(&c, 0, 1);
    drop(disk);
}

/// A secondary killed after taking writes comes back Consistent: its volatile cache
/// may have lost writes that the primary made durable later. Without the node that
/// stayed up it is not promoted, and status says what to do; once that node is back
/// it takes the changes and its hot extents from it and is UpToDate.
#[test]
fn a_secondary_back_from_a_crash_waits_for_the_node_that_stayed_up() {
    require("qemu-io", "qemu-utils");
    let mut c = three_nodes("");
    let uri0 = c.nodes[0].uri(RES, 0);
    qemu_io(&uri0, &["write -P 0x41 0 1M", "flush"]);
    c.wait_in_sync(1, RES);
    c.nodes[1].kill9();
    c.wait(0, RES, "node 1 gone", |v| {
        peer(v, "n1")["connection"] != "Connected"
    });
    // Node 0 goes on with the tiebreaker, then stops cleanly.
    qemu_io(&uri0, &["write -P 0x42 2M 64k", "flush"]);
    c.wait(0, RES, "demotion after the last client", |v| {
        v["role"] == "Secondary"
    });
    c.nodes[0].stop();

    c.nodes[1].start();
    let v = c.wait(1, RES, "node 1 back, Consistent", |v| {
        v["disk_state"] == "Consistent" && peer(v, "n2")["connection"] == "Connected"
    });
    assert_eq!(v["may_promote"], false, "{v:#}");
    let hint = v["hint"].as_str().unwrap_or("");
    assert!(hint.contains("primary r0 --force"), "{v:#}");
    let out = c.nodes[1].local(&["primary", RES]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Consistent"), "{err}");

    c.nodes[0].start();
    let v1 = c.wait_in_sync(1, RES);
    c.wait_in_sync(0, RES);
    assert_eq!(v1["disk_state"], "UpToDate", "{v1:#}");
    let received = peer(&v1, "n0")["resync_received_bytes"].as_u64().unwrap();
    assert!(
        received >= 64 << 10,
        "node 1 received {received} bytes by resync"
    );
    assert_same_data(&c, 0, 1);
}

#[test]
fn a_cluster_shut_down_cleanly_at_once_comes_back_up_to_date() {
    require("qemu-io", "qemu-utils");
    let mut c = three_nodes("");
    let uri0 = c.nodes[0].uri(RES, 0);
    qemu_io(&uri0, &["write -P 0x81 0 256k", "flush"]);
    c.wait_in_sync(1, RES);
    // Both disks stop at the same moment: each sees the other still up and marks
    // itself Outdated.
    let (a, b) = c.nodes.split_at_mut(1);
    std::thread::scope(|s| {
        s.spawn(|| a[0].stop());
        s.spawn(|| b[0].stop());
    });
    c.nodes[0].start();
    c.nodes[1].start();
    for i in 0..3 {
        let v = c.wait_in_sync(i, RES);
        assert_ne!(v["disk_state"], "Outdated", "{v:#}");
    }
    assert_eq!(c.nodes[0].volume(RES, 0)["may_promote"], true);
    qemu_io(&uri0, &["read -P 0x81 0 256k"]);
    assert_same_data(&c, 0, 1);
}

#[test]
fn online_grow_reaches_every_node_and_the_new_area_is_replicated() {
    require("qemu-io", "qemu-utils");
    let mut c = three_nodes("");
    let uri0 = c.nodes[0].uri(RES, 0);
    qemu_io(&uri0, &["write -P 0x41 0 1M", "write -P 0x42 60M 1M"]);
    c.wait(0, RES, "demotion after the last client", |v| {
        v["role"] == "Secondary"
    });
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }
    let old = data_size(&c, 0);
    let backing = |c: &Cluster, i: usize| {
        std::fs::metadata(c.nodes[i].path(&format!("data/{RES}.img")))
            .unwrap()
            .len()
    };

    // A shrink is refused and changes nothing.
    let out = c.nodes[0].local(&["resize", RES, "--size", "32MiB"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("shrinking is not supported"),
        "{err}"
    );

    // So is a grow while a diskful peer is down; the error names it.
    c.nodes[1].stop();
    c.wait(0, RES, "n1 gone", |v| {
        peer(v, "n1")["connection"] != "Connected"
    });
    let out = c.nodes[0].local(&["resize", RES, "--size", "96MiB"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("node n1 is not connected"),
        "{err}"
    );
    assert_eq!(data_size(&c, 0), old);
    assert_eq!(backing(&c, 0), 64 << 20);
    assert_eq!(backing(&c, 1), 64 << 20);
    c.nodes[1].start();
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }

    // The grow itself, run on a secondary.
    let report = c.local_ok(1, &["resize", RES, "--size", "96MiB"]);
    assert!(report.contains("96"), "{report}");
    let new = data_size(&c, 1);
    assert!(new > old + (31 << 20), "{new}");
    for i in 0..3 {
        let v = c.wait(i, RES, "the new size", |v| v["size"] == new);
        if i < 2 {
            assert_eq!(v["backing_size"], 96u64 << 20);
            assert_eq!(backing(&c, i), 96 << 20);
        }
    }

    // A new NBD client sees the new size and writes past the old end.
    let end = new - (64 << 10);
    let w1 = format!("write -P 0x43 {old} 1M");
    let w2 = format!("write -P 0x44 {end} 64k");
    let r1 = format!("read -P 0x43 {old} 1M");
    let r2 = format!("read -P 0x44 {end} 64k");
    qemu_io(&uri0, &[&w1, &w2, "flush", "read -P 0x42 60M 1M", &r1, &r2]);
    let beyond = format!("write -P 0x45 {new} 4k");
    let out = std::process::Command::new("qemu-io")
        .args(["-f", "raw", "-c", &beyond, &uri0])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !out.status.success() && !text.contains("wrote"),
        "a write past the new end succeeded: {text}"
    );
    c.wait(0, RES, "demotion after the last client", |v| {
        v["role"] == "Secondary"
    });
    for i in 0..3 {
        c.wait_in_sync(i, RES);
    }
    assert_same_data(&c, 0, 1);

    // Restarted, a diskful node opens at the new size from its metadata; the diskless
    // one takes it from its resource file, which the user raises.
    c.nodes[1].stop();
    c.nodes[1].start();
    let t = c.resource_text(2, RES, "96MiB", "test-secret-1234", "");
    c.nodes[2].write_conf(RES, &t);
    c.nodes[2].stop();
    c.nodes[2].start();
    for i in 0..3 {
        c.wait_in_sync(i, RES);
        assert_eq!(data_size(&c, i), new);
    }
    qemu_io(&c.nodes[1].uri(RES, 0), &[&r1, &r2]);
}

#[test]
fn resync_rate_bounds_a_resync_shows_its_rate_and_adjust_lifts_it_live() {
    let q = "quorum = \"off\"\nresync-rate = \"4M\"";
    let mut c = Cluster::new(&[false, false]);
    for i in 0..2 {
        let t = c.resource_text(i, RES, "64MiB", "test-secret-1234", q);
        c.nodes[i].write_conf(RES, &t);
    }
    c.start_all();
    c.wait(0, RES, "n1 connected", |v| {
        peer(v, "n1")["connection"] == "Connected"
    });
    c.local_ok(0, &["primary", RES, "--force"]);
    // The full sync of 64 MiB runs at no more than the limit (an upper bound: a
    // slow machine only makes it slower).
    let v = c.wait(0, RES, "a measured resync rate", |v| {
        peer(v, "n1")["resync_rate_bytes_per_s"]
            .as_u64()
            .is_some_and(|r| r > 0)
    });
    let rate = peer(&v, "n1")["resync_rate_bytes_per_s"].as_u64().unwrap();
    assert!(
        rate <= 6 << 20,
        "resync at {rate} B/s with a 4 MiB/s limit: {v:#}"
    );
    let text = c.local_ok(0, &["status"]);
    assert!(text.contains("/s"), "{text}");
    // Lifted live: the resync finishes without a restart.
    for i in 0..2 {
        let t = c.resource_text(i, RES, "64MiB", "test-secret-1234", "quorum = \"off\"");
        c.nodes[i].write_conf(RES, &t);
        let out = c.local_ok(i, &["adjust"]);
        assert!(out.contains("options changed"), "{out}");
    }
    c.wait_in_sync(1, RES);
    assert_same_data(&c, 0, 1);
}

#[test]
fn checksum_resync_copies_only_blocks_that_differ() {
    require("qemu-io", "qemu-utils");
    // Both new files hold zeros: with checksums the initial sync copies nothing.
    let c = three_nodes("csums-alg = \"sha256\"");
    let size = data_size(&c, 0);
    let received = |c: &Cluster| {
        let v = c.nodes[1].volume(RES, 0);
        (
            peer(&v, "n0")["resync_received_bytes"].as_u64().unwrap(),
            v["resync_same_bytes"].as_u64().unwrap(),
        )
    };
    let (got, same) = received(&c);
    assert_eq!(got, 0, "the initial sync copied data");
    // (A block compared again after a round restarted counts again.)
    assert!(same >= size, "{same} < {size}");
    let uri0 = c.nodes[0].uri(RES, 0);
    qemu_io(&uri0, &["write -P 0x5d 0 4M", "flush"]);
    c.wait_in_sync(1, RES);
    // One block changes behind blockd on node 1; a full resync finds and copies it.
    change_behind_blockd(&c, 1, 3 << 20);
    c.local_ok(1, &["invalidate", RES]);
    c.wait_in_sync(1, RES);
    c.wait_in_sync(0, RES);
    let (got2, same2) = received(&c);
    assert_eq!(got2 - got, 4096, "only the changed block is copied");
    assert!(
        same2 - same >= size - 4096,
        "{} < {}",
        same2 - same,
        size - 4096
    );
    assert_same_data(&c, 0, 1);
    // A value blockd cannot honour is refused with what to use.
    let bad = c.resource_text(0, RES, "64MiB", "test-secret-1234", "csums-alg = \"md5\"");
    c.nodes[0].write_conf(RES, &bad);
    let out = c.nodes[0].local(&["adjust"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("sha256"), "{err}");
}

#[test]
fn concurrent_aligned_and_unaligned_writes_verify_and_both_replicas_match() {
    // Aligned writes are answered from the volume's task while unaligned ones
    // read, patch and write whole blocks on the NBD threads: fio mixes both at depth
    // 16 with 512-byte alignment, then reads everything back through its checksums.
    require("fio", "fio");
    let c = three_nodes("");
    let uri0 = c.nodes[0].uri(RES, 0);
    fio_verify(
        &uri0,
        &[
            "--bsrange=512-64k",
            "--blockalign=512",
            "--iodepth=16",
            "--numjobs=2",
            "--size=16M",
            "--offset_increment=16M",
        ],
    );
    // A flush, then the last client leaves: both copies hold the same bytes.
    let (o, ok) = common::qemu_io_try(&uri0, &["flush"]);
    assert!(ok, "{o}\n{}", c.logs());
    c.wait(0, RES, "secondary again", |v| v["role"] == "Secondary");
    c.wait_in_sync(0, RES);
    c.wait_in_sync(1, RES);
    assert_same_data(&c, 0, 1);
}

#[test]
fn an_unaligned_write_sent_right_behind_an_aligned_one_keeps_the_rest_of_the_block() {
    // The aligned write is answered from the volume's task, the unaligned one reads,
    // patches and writes the whole block on an NBD thread. Whatever their order, the
    // bytes only the aligned write covers must hold its data on both replicas.
    use common::nbd_raw::{go, reply, request};
    let c = three_nodes("");
    let sock = c.nodes[0].volume(RES, 0)["nbd_socket"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut s = go(&sock);
    const PAIRS: u64 = 64;
    for i in 0..PAIRS {
        let offset = i * 8192;
        request(&mut s, 1, 2 * i, offset, 4096);
        s.write_all(&[0xbb; 4096]).unwrap();
        request(&mut s, 1, 2 * i + 1, offset + 1024, 512);
        s.write_all(&[0xaa; 512]).unwrap();
    }
    let mut answered = std::collections::BTreeSet::new();
    for _ in 0..2 * PAIRS {
        let (errno, cookie) = reply(&mut s);
        assert_eq!(errno, 0, "request {cookie} failed");
        answered.insert(cookie);
    }
    assert_eq!(answered.len() as u64, 2 * PAIRS);
    request(&mut s, 3, 999, 0, 0); // flush
    assert_eq!(reply(&mut s), (0, 999));
    request(&mut s, 2, 1000, 0, 0); // disconnect
    drop(s);
    c.wait(0, RES, "secondary again", |v| v["role"] == "Secondary");
    c.wait_in_sync(1, RES);
    for node in [0, 1] {
        let d = std::fs::read(c.nodes[node].path(&format!("data/{RES}.img"))).unwrap();
        for i in 0..PAIRS as usize {
            let b = &d[i * 8192..i * 8192 + 4096];
            let patched = &b[1024..1536];
            assert!(
                patched.iter().all(|x| *x == 0xaa) || patched.iter().all(|x| *x == 0xbb),
                "node {node} block {i}: the unaligned write's bytes are torn"
            );
            assert!(
                b[..1024].iter().chain(&b[1536..]).all(|x| *x == 0xbb),
                "node {node} block {i}: bytes only the aligned write covers lost its data"
            );
        }
    }
    assert_same_data(&c, 0, 1);
}

#[test]
fn primary_right_after_the_other_node_steps_down_succeeds() {
    // The peers handshake again when a primary steps down; `primary` on the other
    // node issued at that moment waits for it instead of failing with "retry".
    let c = three_nodes("");
    for round in 0..6 {
        let (from, to) = if round % 2 == 0 { (0, 1) } else { (1, 0) };
        c.local_ok(from, &["primary", RES]);
        c.local_ok(from, &["secondary", RES]);
        c.local_ok(to, &["primary", RES]);
        c.local_ok(to, &["secondary", RES]);
    }
}
