//! The README's main command: `tandem playground` brings up a replicated three-node
//! cluster that a real client can write to and fail over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TANDEM, require, run};

fn status(dir: &std::path::Path, node: &str) -> serde_json::Value {
    let out = Command::new(TANDEM)
        .args(["local", "--admin-socket"])
        .arg(dir.join(node).join("run/admin.sock"))
        .args(["status", "--json"])
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn in_sync(v: &serde_json::Value) -> bool {
    let vol = &v["resources"][0]["volumes"][0];
    (vol["disk_state"] == "UpToDate" || vol["disk_state"] == "Diskless")
        && vol["peers"].as_array().is_some_and(|ps| {
            ps.iter()
                .all(|p| p["connection"] == "Connected" && p["out_of_sync_bytes"] == 0)
        })
}

#[test]
fn the_playground_replicates_and_fails_over() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::Builder::new()
        .prefix("tandem-pg-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut pg = Command::new(TANDEM)
        .args(["playground", "--size", "64MiB", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let out = BufReader::new(pg.stdout.take().unwrap());
    let mut uri = None;
    for line in out.lines().map_while(Result::ok) {
        if line.starts_with("nbd+unix://") && uri.is_none() {
            uri = Some(line.clone());
        }
        if line.contains("initial sync n0 -> n1 started") {
            break;
        }
    }
    let uri0 = uri.expect("the playground prints n0's NBD URI");
    let start = Instant::now();
    while !["n0", "n1", "n2"]
        .iter()
        .all(|n| in_sync(&status(dir.path(), n)))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not in sync: {:#}",
            status(dir.path(), "n0")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0x5c 0 1M",
            "-c",
            "flush",
            &uri0,
        ],
    );
    // n0 leaves; n1 (with the tiebreaker) serves the same data.
    let admin0 = dir.path().join("n0/run/admin.sock");
    run(
        TANDEM,
        &[
            "local",
            "--admin-socket",
            admin0.to_str().unwrap(),
            "down",
            "demo",
        ],
    );
    let uri1 = format!(
        "nbd+unix:///demo/0?socket={}",
        dir.path().join("n1/run/nbd/demo-0.sock").display()
    );
    let text = common::stdout(&run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x5c 0 1M", &uri1],
    ));
    assert!(!text.contains("failed"), "{text}");
    // Stopping the playground stops every node it started.
    run("kill", &["-TERM", &pg.id().to_string()]);
    assert!(pg.wait().unwrap().success());
    let left = Command::new("pgrep")
        .args(["-f", &format!("--config-dir {}", dir.path().display())])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "blockd processes left behind");
}
