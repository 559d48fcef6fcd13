//! Multi-process tests of the `tandem` client commands against a real `tandem
//! controller`: the command sequence of ../shared/seeds/004 typed with `tandem`, bad
//! input that changes nothing, controller fall-through and the client config file.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

mod ctl_harness;

use ctl_harness::TANDEM;

struct Ctl {
    child: Child,
    addr: String,
    home: tempfile::TempDir,
}

impl Ctl {
    fn start(db: &Path) -> Ctl {
        let (child, addr) = ctl_harness::start_controller(db, Stdio::null());
        Ctl {
            child,
            addr,
            home: tempfile::tempdir().unwrap(),
        }
    }

    /// `tandem ARGS` with no config file or LS_CONTROLLERS from the environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(TANDEM);
        c.env_remove("LS_CONTROLLERS")
            .env_remove("TANDEM_CLIENT_CONFIG")
            .env("HOME", self.home.path())
            .args(args);
        c
    }

    /// `tandem --controllers ADDR ARGS`.
    fn run(&self, args: &[&str]) -> Output {
        let mut full = vec!["--controllers", &self.addr];
        full.extend_from_slice(args);
        self.cmd(&full).output().expect("run tandem")
    }

    /// Runs and requires success; returns stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "tandem {args:?} failed ({:?}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// `-m` output of a list command: the REST objects (linstor wraps them in a list).
    fn json_list(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["-m"];
        full.extend_from_slice(args);
        let text = self.ok(&full);
        let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        v.as_array()
            .and_then(|outer| outer.first())
            .and_then(Value::as_array)
            .unwrap_or_else(|| panic!("not [[...]]: {text}"))
            .clone()
    }
}

impl Drop for Ctl {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn dead_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap().to_string();
    drop(l);
    a
}

/// Nodes, pools, a group with place-count 2 and diskless-on-remaining, a volume group
/// and a spawn, as in the seed.
fn seed_cluster(c: &Ctl) {
    for (i, n) in ["pve01", "pve02", "pve03"].iter().enumerate() {
        let out = c.ok(&["node", "create", n, &format!("10.100.4.10{}", i + 1)]);
        assert!(out.contains("SUCCESS:"), "{out}");
    }
    for n in ["pve01", "pve02", "pve03"] {
        let out = c.ok(&[
            "storage-pool",
            "create",
            "zfsthin",
            n,
            "sto-pool_zfs-01",
            "pool-nvme-01",
        ]);
        assert!(out.contains("SUCCESS:"), "{out}");
    }
    let out = c.ok(&[
        "resource-group",
        "create",
        "res-gr_pve",
        "--storage-pool",
        "sto-pool_zfs-01",
        "--place-count",
        "2",
        "--diskless-on-remaining",
        "true",
    ]);
    assert!(
        out.contains("SUCCESS:") && out.contains("res-gr_pve"),
        "{out}"
    );
    let out = c.ok(&["volume-group", "create", "res-gr_pve"]);
    assert!(out.contains("SUCCESS:"), "{out}");
    let out = c.ok(&[
        "resource-group",
        "spawn-resources",
        "res-gr_pve",
        "vm-100-disk-0",
        "10G",
    ]);
    assert!(out.contains("SUCCESS:"), "{out}");
    assert!(!out.contains("ERROR:"), "{out}");
}

#[test]
fn seed_004_sequence_with_tandem() {
    let dir = tempfile::tempdir().unwrap();
    let c = Ctl::start(&dir.path().join("ctl.sqlite"));
    seed_cluster(&c);

    // The second group of the seed: options flags and a spawn in MiB, with aliases.
    c.ok(&[
        "rg",
        "create",
        "--storage-pool",
        "sto-pool_zfs-01",
        "--place-count",
        "3",
        "--diskless-on-remaining",
        "true",
        "linstor-db-grp",
    ]);
    let out = c.ok(&[
        "rg",
        "drbd-options",
        "--auto-promote=no",
        "--quorum=majority",
        "--on-suspended-primary-outdated=force-secondary",
        "--on-no-quorum=io-error",
        "--on-no-data-accessible=io-error",
        "linstor-db-grp",
    ]);
    assert!(out.contains("SUCCESS:"), "{out}");
    let groups = c.json_list(&["rg", "l"]);
    let g = groups
        .iter()
        .find(|g| g["name"] == "linstor-db-grp")
        .unwrap();
    assert_eq!(g["props"]["DrbdOptions/Resource/quorum"], "majority");
    assert_eq!(g["props"]["DrbdOptions/Resource/on-no-quorum"], "io-error");
    c.ok(&["vg", "c", "linstor-db-grp"]);
    c.ok(&["rg", "spawn", "linstor-db-grp", "linstor_db", "200M"]);

    // -m r list: the REST objects; 2 diskful + 1 tiebreaker on distinct nodes.
    let rs = c.json_list(&["r", "l", "-r", "vm-100-disk-0"]);
    assert_eq!(rs.len(), 3, "{rs:?}");
    let flags = |r: &Value| -> Vec<String> {
        r["flags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap().to_owned())
            .collect()
    };
    let diskful = rs
        .iter()
        .filter(|r| !flags(r).contains(&"DRBD_DISKLESS".to_owned()))
        .count();
    let tiebreakers = rs
        .iter()
        .filter(|r| flags(r).contains(&"TIE_BREAKER".to_owned()))
        .count();
    assert_eq!((diskful, tiebreakers), (2, 1), "{rs:?}");
    let mut nodes: Vec<&str> = rs
        .iter()
        .map(|r| r["node_name"].as_str().unwrap())
        .collect();
    nodes.sort();
    nodes.dedup();
    assert_eq!(nodes.len(), 3);
    let db = c.json_list(&["r", "l", "-r", "linstor_db"]);
    assert_eq!(db.len(), 3);
    assert!(
        db.iter()
            .all(|r| !flags(r).contains(&"DRBD_DISKLESS".to_owned()))
    );
    let vds = c.json_list(&["vd", "l", "-r", "linstor_db"]);
    assert_eq!(vds[0]["volume_definitions"][0]["size_kib"], 200 * 1024);

    // Tables with linstor's header columns, UTF-8 and ASCII.
    let t = c.ok(&["node", "list"]);
    assert!(t.contains("┊ Node  ┊ NodeType  ┊ Addresses"), "{t}");
    assert!(
        t.contains("┊ State   ┊") && t.contains("╞═") && t.contains("╭─"),
        "{t}"
    );
    assert!(
        t.contains("10.100.4.101:3366 (PLAIN)") && t.contains("OFFLINE"),
        "{t}"
    );
    let t = c.ok(&["--no-utf8", "r", "l"]);
    assert!(
        t.contains("| ResourceName  | Node  | Layers       | Usage   | Conns   | State   |"),
        "{t}"
    );
    // No satellite answers (the nodes' addresses lead nowhere): every state is
    // Unknown, as the linstor client shows it, and a line under the table says why.
    assert!(
        t.contains("| Unknown | Unknown | Unknown |") && t.starts_with("+---"),
        "{t}"
    );
    assert!(
        t.contains("pve01 is OFFLINE: the state of its resources is unknown"),
        "{t}"
    );
    for (args, header) in [
        (&["sp", "l"][..], "StoragePool"),
        (&["rg", "l"][..], "ResourceGroup"),
        (&["rd", "l"][..], "ResourceName"),
        (&["vd", "l"][..], "VolumeNr"),
        (&["vg", "l", "res-gr_pve"][..], "VolumeNr"),
    ] {
        let t = c.ok(args);
        assert!(t.contains(header), "{args:?}: {t}");
    }
    let t = c.ok(&["rg", "l"]);
    assert!(
        t.contains("PlaceCount: 2") && t.contains("DisklessOnRemaining: True"),
        "{t}"
    );

    // The rest of the lifecycle: resize, manual placement, delete.
    c.ok(&["vd", "set-size", "vm-100-disk-0", "0", "20GiB"]);
    let vds = c.json_list(&["vd", "l", "-r", "vm-100-disk-0"]);
    assert_eq!(vds[0]["volume_definitions"][0]["size_kib"], 20 << 20);
    c.ok(&["rd", "c", "manual"]);
    c.ok(&["vd", "c", "manual", "1G"]);
    c.ok(&[
        "r",
        "c",
        "pve01",
        "pve02",
        "manual",
        "-s",
        "sto-pool_zfs-01",
    ]);
    // Two diskful replicas: the controller adds the tiebreaker on pve03.
    assert_eq!(c.json_list(&["r", "l", "-r", "manual"]).len(), 3);
    c.ok(&["rd", "c", "client"]);
    c.ok(&["vd", "c", "client", "1G"]);
    c.ok(&["r", "c", "pve01", "client", "-s", "sto-pool_zfs-01"]);
    c.ok(&["r", "c", "pve02", "client", "--drbd-diskless"]);
    assert_eq!(c.json_list(&["r", "l", "-r", "client"]).len(), 2);
    c.ok(&["r", "d", "pve02", "client"]);
    assert_eq!(c.json_list(&["r", "l", "-r", "client"]).len(), 1);
    // make-available places a replica where there was none.
    c.ok(&["r", "make-available", "pve03", "client"]);
    let placed = c.json_list(&["r", "l", "-r", "client"]);
    assert!(
        placed.iter().any(|r| r["node_name"] == "pve03"),
        "{placed:?}"
    );
    c.ok(&["rd", "d", "manual"]);
    assert!(c.json_list(&["r", "l", "-r", "manual"]).is_empty());
    let version = c.ok(&["controller", "version"]);
    assert!(version.contains("REST API 1."), "{version}");
    c.ok(&["c", "version"]);

    // Mutations with -m print the ApiCallRc list.
    let out = c.ok(&["-m", "n", "sp", "pve01", "Aux/rack", "r1"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(
        v.as_array().unwrap().iter().all(|e| e["ret_code"].is_i64()),
        "{out}"
    );
    let props = c.ok(&["n", "lp", "pve01"]);
    assert!(
        props.contains("Aux/rack") && props.contains("r1"),
        "{props}"
    );
}

/// The state as `-m` lists show it, to check that a refused command changed nothing.
fn snapshot(c: &Ctl) -> Vec<Vec<Value>> {
    ["n", "sp", "rg", "rd", "r"]
        .iter()
        .map(|o| c.json_list(&[o, "l"]))
        .collect()
}

#[test]
fn bad_input_is_an_error_block_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = Ctl::start(&dir.path().join("ctl.sqlite"));
    seed_cluster(&c);
    let before = snapshot(&c);
    let cases: [&[&str]; 6] = [
        &["node", "create", "pve01", "10.0.0.9"],        // exists
        &["node", "create", "bad name!", "10.0.0.9"],    // invalid name
        &["r", "c", "nope", "vm-100-disk-0"],            // unknown node
        &["sp", "c", "zfsthin", "nope", "p", "tank"],    // unknown node
        &["rg", "spawn", "no-such-group", "vm-1", "1G"], // unknown group
        &[
            "rg",
            "c",
            "-s",
            "sto-pool_zfs-01",
            "--place-count",
            "4",
            "g4",
        ], // fine...
    ];
    for args in &cases[..5] {
        let out = c.run(args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(10), "{args:?}: {stdout}");
        assert!(
            stdout.contains("ERROR:\nDescription:\n    "),
            "{args:?}: {stdout}"
        );
        assert!(stdout.contains("Correction:\n    "), "{args:?}: {stdout}");
        assert!(
            stdout.contains("Cause:\n    ") || stdout.contains("Details:\n    "),
            "{args:?}: {stdout}"
        );
    }
    assert_eq!(snapshot(&c), before, "a refused command changed something");

    // ...but spawning from a group that wants more nodes than exist is refused.
    c.ok(cases[5]);
    c.ok(&["vg", "c", "g4"]);
    let before = snapshot(&c);
    let out = c.run(&["rg", "spawn", "g4", "vm-4", "1G"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(10), "{stdout}");
    assert!(stdout.contains("ERROR:"), "{stdout}");
    assert_eq!(snapshot(&c), before);

    // Refused before anything is sent: exit 2 and an error on stderr.
    for args in [
        &["rg", "spawn", "res-gr_pve", "vm-9", "1.5G"][..],
        &["vd", "c", "vm-100-disk-0", "10X"][..],
        &["rg", "drbd-options", "--bogus", "1", "res-gr_pve"][..],
        &["sp", "c", "zfsthin", "pve01", "p2"][..],
    ] {
        let out = c.run(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.starts_with("ERROR:\nDescription:"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(snapshot(&c), before);

    // -m on a failed mutation: the ApiCallRc list, still exit 10.
    let out = c.run(&["-m", "n", "c", "pve01", "10.0.0.1"]);
    assert_eq!(out.status.code(), Some(10));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v[0]["ret_code"].as_i64().unwrap() < 0, "{v}");
}

#[test]
fn controllers_fall_through_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let c = Ctl::start(&dir.path().join("ctl.sqlite"));
    let dead = dead_addr();
    let list = format!("{dead},{}", c.addr);

    let out = c
        .cmd(&["--controllers", &list, "c", "version"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");

    // LS_CONTROLLERS, the config file named by TANDEM_CLIENT_CONFIG, ~/.config/tandem.
    let out = c
        .cmd(&["n", "c", "alpha", "10.0.0.1"])
        .env("LS_CONTROLLERS", &list)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let conf = dir.path().join("client.conf");
    std::fs::write(&conf, format!("# test\n[global]\ncontrollers = {list}\n")).unwrap();
    let out = c
        .cmd(&["n", "l"])
        .env("TANDEM_CLIENT_CONFIG", &conf)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("alpha"));
    let user = c.home.path().join(".config/tandem");
    std::fs::create_dir_all(&user).unwrap();
    std::fs::write(
        user.join("client.conf"),
        format!("[global]\ncontrollers={list}\n"),
    )
    .unwrap();
    let out = c.cmd(&["n", "l"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    // --disable-config ignores it (and localhost:3370 is not ours).
    let out = c
        .cmd(&["--disable-config", "--controllers", &dead, "n", "l"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(20));

    // Nothing reachable: exit 20 and every address named.
    let dead2 = dead_addr();
    let out = c
        .cmd(&["--controllers", &format!("{dead},{dead2}"), "n", "l"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no controller reachable"), "{stderr}");
    assert!(
        stderr.contains(&dead) && stderr.contains(&dead2),
        "{stderr}"
    );
}
