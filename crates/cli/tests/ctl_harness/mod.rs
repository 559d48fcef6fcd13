//! Starting a `tandem controller` process for a test.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Starts a controller on a free loopback port with the database `db`; returns the
/// process and the address it reported ("127.0.0.1:PORT"). Its log goes to `stderr`.
pub fn start_controller(db: &Path, stderr: Stdio) -> (Child, String) {
    let mut child = Command::new(TANDEM)
        .args(["controller", "--listen", "127.0.0.1:0", "--db"])
        .arg(db)
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .expect("start tandem controller");
    let stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(addr) = line.strip_prefix("listening on ") {
                let _ = tx.send(addr.to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| {
            let _ = child.kill();
            panic!("the controller did not report its address within 20 s")
        });
    (child, addr)
}
