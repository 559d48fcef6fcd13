//! Bad input against a running blockd: broken NBD clients and broken resource files.
//! Each must get the protocol's error or a closed connection, leave the daemon serving
//! and leave other exports and the running configuration untouched.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::*;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::nbd_raw::*;

fn socket_of(b: &Blockd, res: &str) -> String {
    b.volume(res, 0)["nbd_socket"].as_str().unwrap().to_owned()
}

fn closed(s: &mut UnixStream) -> bool {
    let mut b = [0u8; 64];
    // Drain anything the server sent before closing; EOF or a reset means closed.
    loop {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) => {
                return e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut;
            }
        }
    }
}

fn pattern_intact(b: &Blockd, res: &str) {
    run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x77 0 1M", &b.uri(res, 0)],
    );
}

#[test]
fn broken_nbd_clients_get_errors_and_nothing_else_is_disturbed() {
    require("qemu-io", "qemu-utils");
    let mut b = Blockd::new();
    b.add_resource("victim", &[(0, "16M")]);
    b.add_resource("other", &[(0, "16M")]);
    b.start();
    for r in ["victim", "other"] {
        run(
            "qemu-io",
            &["-f", "raw", "-c", "write -P 0x77 0 1M", &b.uri(r, 0)],
        );
    }
    let sock = socket_of(&b, "victim");
    let size = b.size("victim", 0);

    // Unknown client flags: dropped.
    let mut s = connect(&sock);
    s.write_all(&0xffff_0000u32.to_be_bytes()).unwrap();
    assert!(closed(&mut s));

    // Wrong option magic: dropped.
    let mut s = connect(&sock);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    s.write_all(&[0x42; 16]).unwrap();
    assert!(closed(&mut s));

    // Unknown option: refused, and the handshake goes on; then an unknown export name.
    let mut s = connect(&sock);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    option(&mut s, 4242, b"xyz");
    assert_eq!(opt_reply(&mut s).0, (1 << 31) + 1);
    let mut d = 5u32.to_be_bytes().to_vec();
    d.extend_from_slice(b"nope!");
    d.extend_from_slice(&0u16.to_be_bytes());
    option(&mut s, 7, &d);
    let (kind, msg) = opt_reply(&mut s);
    assert_eq!(kind, (1 << 31) + 6);
    assert!(String::from_utf8_lossy(&msg).contains("nope!"));
    option(&mut s, 2, &[]);
    assert_eq!(opt_reply(&mut s).0, 1);

    // Oversized option: refused and dropped.
    let mut s = connect(&sock);
    s.write_all(&3u32.to_be_bytes()).unwrap();
    let mut m = IHAVEOPT.to_be_bytes().to_vec();
    m.extend_from_slice(&7u32.to_be_bytes());
    m.extend_from_slice(&(1u32 << 30).to_be_bytes());
    s.write_all(&m).unwrap();
    assert_eq!(opt_reply(&mut s).0, (1 << 31) + 9);
    assert!(closed(&mut s));

    // Transmission: out of range, oversized read, unknown command each get their error
    // and the connection keeps working.
    let mut s = go(&sock);
    request(&mut s, 0, 1, size - 100, 4096);
    assert_eq!(reply(&mut s), (22, 1));
    request(&mut s, 0, 2, 0, 64 << 20);
    assert_eq!(reply(&mut s), (22, 2));
    request(&mut s, 77, 3, 0, 0);
    assert_eq!(reply(&mut s), (22, 3));
    request(&mut s, 4, 4, u64::MAX - 10, 4096);
    assert_eq!(reply(&mut s), (22, 4));
    request(&mut s, 1, 5, size, 8);
    s.write_all(&[0u8; 8]).unwrap();
    assert_eq!(reply(&mut s), (28, 5));
    request(&mut s, 0, 6, 0, 4096);
    assert_eq!(reply(&mut s), (0, 6));
    let mut data = vec![0u8; 4096];
    s.read_exact(&mut data).unwrap();
    assert!(data.iter().all(|&x| x == 0x77));

    // Oversized write: the stream cannot be kept in step, so it is dropped.
    request(&mut s, 1, 7, 0, 64 << 20);
    assert!(closed(&mut s));

    // Bad request magic: dropped.
    let mut s = go(&sock);
    s.write_all(&[0x13; 28]).unwrap();
    assert!(closed(&mut s));

    // A client vanishing in the middle of a write's payload.
    let mut s = go(&sock);
    request(&mut s, 1, 8, 0, 1 << 20);
    s.write_all(&vec![0xee; 300_000]).unwrap();
    drop(s);

    // The daemon still serves both exports, with their data, and no connection leaked.
    assert!(b.alive());
    pattern_intact(&b, "victim");
    pattern_intact(&b, "other");
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(b.volume("victim", 0)["connections"], 0);
}

#[test]
fn malformed_resource_file_is_rejected_by_adjust_and_the_running_config_kept() {
    require("qemu-io", "qemu-utils");
    let mut b = Blockd::new();
    b.add_resource("keep", &[(0, "16M")]);
    b.start();
    run(
        "qemu-io",
        &["-f", "raw", "-c", "write -P 0x77 0 1M", &b.uri("keep", 0)],
    );
    // What adjust must keep: the resources and their volumes' configuration and state
    // (not the live connection count, which a just-closed client may still hold).
    let config_of = |s: serde_json::Value| -> Vec<serde_json::Value> {
        let res = s["resources"].as_array().unwrap();
        res.iter()
            .map(|r| {
                let vols: Vec<serde_json::Value> = r["volumes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| {
                        serde_json::json!([
                            v["number"],
                            v["backing"],
                            v["size"],
                            v["open"],
                            v["nbd_uri"]
                        ])
                    })
                    .collect();
                serde_json::json!([r["name"], r["file"], r["state"], r["error"], vols])
            })
            .collect()
    };
    let before = config_of(b.status());

    let cases = [
        (
            "broken",
            "[[volume]]\nnumber = 0\nbacking = \"/var/tmp/x.img\"\nsize = \"12 parsecs\"\n",
            "broken.toml:4:",
        ),
        (
            "broken",
            "[[volume]]\nnumber = 0\nbacking = \"/var/tmp/x.img\"\nsize = \"1G\n",
            "broken.toml:4:",
        ),
        (
            "broken",
            "[[volume]]\nnumber = 0\nbackng = \"/var/tmp/x.img\"\n",
            "broken.toml:3:",
        ),
        (
            "keep",
            "[[volume]]\nnumber = 0\nbacking = \"relative\"\n",
            "keep.toml:3:",
        ),
    ];
    for (file, text, want) in cases {
        let saved = std::fs::read_to_string(b.path("conf/keep.toml")).unwrap();
        b.write_conf(file, text);
        let out = b.local(&["adjust"]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "expected {want} in: {err}");
        assert!(err.contains("running configuration is kept"), "{err}");
        let _ = std::fs::remove_file(b.path("conf/broken.toml"));
        std::fs::write(b.path("conf/keep.toml"), saved).unwrap();
    }
    assert_eq!(config_of(b.status()), before);
    pattern_intact(&b, "keep");
}

#[test]
fn adjust_up_down_and_create_md_do_what_status_says() {
    require("qemu-io", "qemu-utils");
    let mut b = Blockd::new();
    b.add_resource("aa", &[(0, "16M")]);
    // A backing file that exists without metadata: the resource stays down and status
    // names the command that fixes it.
    let raw = b.path("data/raw-0.img");
    std::fs::write(&raw, vec![0x33u8; 8 << 20]).unwrap();
    b.write_conf(
        "raw",
        &format!("[[volume]]\nnumber = 0\nbacking = \"{}\"\n", raw.display()),
    );
    b.start();
    let s = b.status();
    let rawst = s["resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "raw")
        .unwrap()
        .clone();
    assert_eq!(rawst["state"], "down");
    assert!(
        rawst["error"]
            .as_str()
            .unwrap()
            .contains("tandem local create-md raw"),
        "{rawst:#}"
    );
    let out = b.local(&["create-md", "raw"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = b.local(&["create-md", "raw"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert!(b.local(&["up", "raw"]).status.success());
    // create-md kept the data at the start of the file.
    run(
        "qemu-io",
        &["-f", "raw", "-c", "read -P 0x33 0 64k", &b.uri("raw", 0)],
    );
    let out = b.local(&["create-md", "raw"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("is up"));

    // Hold a connection to aa open across an adjust that adds a resource and changes
    // raw: aa's connection must keep working.
    let aa_sock = socket_of(&b, "aa");
    let mut held = go(&aa_sock);
    b.add_resource("bb", &[(0, "16M"), (1, "16M")]);
    b.write_conf(
        "raw",
        &format!(
            "[[volume]]\nnumber = 0\nbacking = \"{}\"\nmax-peers = 3\n",
            raw.display()
        ),
    );
    let out = b.local(&["adjust"]);
    let msg = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        msg.contains("bb: added and up") && msg.contains("raw/0: reopened"),
        "{msg}"
    );
    assert!(!msg.contains("aa"), "untouched resource was touched: {msg}");
    request(&mut held, 3, 99, 0, 0);
    assert_eq!(reply(&mut held), (0, 99));
    assert_eq!(b.volume("bb", 1)["open"], true);

    // down: socket gone, status closed, the held connection ends; up: served again.
    assert!(b.local(&["down", "aa"]).status.success());
    assert!(closed(&mut held));
    assert_eq!(b.volume("aa", 0)["open"], false);
    assert!(!std::path::Path::new(&aa_sock).exists());
    assert!(b.local(&["up", "aa"]).status.success());
    assert_eq!(b.volume("aa", 0)["open"], true);

    // Removing a file and adjusting takes the resource down and forgets it.
    std::fs::remove_file(b.path("conf/bb.toml")).unwrap();
    assert!(b.local(&["adjust"]).status.success());
    let names: Vec<String> = b.status()["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, vec!["aa", "raw"]);

    // Unknown resource names are errors that change nothing.
    let out = b.local(&["down", "zz"]);
    assert!(
        !out.status.success()
            && String::from_utf8_lossy(&out.stderr).contains("no resource \"zz\"")
    );

    // A crash leaves the metadata marked; the next start reports an unclean shutdown.
    b.kill9();
    b.start();
    assert_eq!(b.volume("aa", 0)["previous_shutdown"], "unclean");
}
