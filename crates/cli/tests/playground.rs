//! The README's main command: `tandem playground` brings up a replicated three-node
//! cluster that a real client can write to and fail over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{TANDEM, require, run};

#[test]
fn the_playground_replicates_and_fails_over() {
    require("qemu-io", "qemu-utils");
    let dir = tempfile::Builder::new()
        .prefix("tandem-pg-")
        .tempdir_in("/var/tmp")
        .unwrap();
    let mut pg = Command::new(TANDEM)
        .args(["playground", "--size", "64MiB", "--demo", "--dir"])
        .arg(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(pg.stdout.take().unwrap()).lines();
    let mut uris = Vec::new();
    let mut seen = Vec::new();
    let start = Instant::now();
    for line in out.by_ref().map_while(Result::ok) {
        if line.starts_with("nbd+unix://") {
            uris.push(line.clone());
        }
        seen.push(line.clone());
        if line.starts_with("Live status") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(180), "{seen:#?}");
    }
    // Keep reading, so the live status never writes into a closed pipe.
    let drain = std::thread::spawn(move || out.map_while(Result::ok).count());
    let text = seen.join("\n");
    assert!(
        text.contains("$ tandem resource-group spawn-resources"),
        "{text}"
    );
    assert_eq!(uris.len(), 3, "one NBD URI per node:\n{text}");
    assert!(text.contains("[demo] verified"), "{text}");
    // The diskless tiebreaker reads what the demo wrote, through its peers.
    let read = common::stdout(&run(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "read -P 0xab 0 8M",
            "-c",
            "read -P 0xcd 8M 4M",
            &uris[2],
        ],
    ));
    assert!(!read.contains("failed"), "{read}");
    // Stopping the playground stops every process it started.
    run("kill", &["-TERM", &pg.id().to_string()]);
    assert!(pg.wait().unwrap().success());
    drain.join().unwrap();
    let left = Command::new("pgrep")
        .args(["-f", &dir.path().display().to_string()])
        .output()
        .unwrap();
    assert!(
        left.stdout.is_empty(),
        "processes left behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
