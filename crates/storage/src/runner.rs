//! Running the storage tools: the [`Runner`] seam (tests put a scripted runner there)
//! and [`SystemRunner`], which runs real commands with a timeout and bounded output.

use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::StorageError;
use crate::error::{CommandFailure, command_line};

/// Runs a storage tool. `Err` only when the command could not run or finish (not
/// found, timed out, too much output); a command that ran and failed is `Ok` with
/// `success: false`.
pub trait Runner: Send + Sync + std::fmt::Debug {
    fn run(&self, program: &str, args: &[String]) -> io::Result<CmdOutput>;
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdOutput {
    pub success: bool,
    /// The exit code; None when a signal ended the command.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs real commands: stdin closed, `LC_ALL=C` (messages and numbers in the form the
/// parsers expect), in a process group of their own that is killed after
/// [`SystemRunner::TIMEOUT`]; stdout beyond [`SystemRunner::MAX_OUTPUT`] bytes is an
/// error, stderr beyond it is cut.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl SystemRunner {
    /// How long one command may take. LVM and ZFS commands take well under a second
    /// on a healthy system; a hung device must not hang the satellite.
    pub const TIMEOUT: Duration = Duration::from_secs(60);
    /// Most bytes kept from stdout and from stderr.
    pub const MAX_OUTPUT: usize = 4 << 20;
}

impl Runner for SystemRunner {
    fn run(&self, program: &str, args: &[String]) -> io::Result<CmdOutput> {
        run_bounded(program, args, Self::TIMEOUT, Self::MAX_OUTPUT)
    }
}

/// How long to wait for the output pipes after the command exited (a grandchild that
/// kept them open is not waited for longer).
const PIPE_GRACE: Duration = Duration::from_secs(5);

/// A command's arguments as the [`Runner`] takes them.
pub(crate) fn args(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

pub(crate) fn run_bounded(
    program: &str,
    args: &[String],
    timeout: Duration,
    max_output: usize,
) -> io::Result<CmdOutput> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        // LVM warns about every inherited descriptor otherwise.
        .env("LVM_SUPPRESS_FD_WARNINGS", "1")
        .process_group(0)
        .spawn()?;
    let (tx, rx) = mpsc::channel::<(bool, io::Result<(Vec<u8>, bool)>)>();
    if let Some(out) = child.stdout.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((true, read_bounded(out, max_output)));
        });
    }
    if let Some(err) = child.stderr.take() {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let _ = tx.send((false, read_bounded(err, max_output)));
        });
    }
    drop(tx);

    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        let now = Instant::now();
        if now >= deadline {
            let pid = rustix::process::Pid::from_child(&child);
            let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no result after {} s; killed it (a hung device or a stuck lock?)",
                    timeout.as_secs_f64()
                ),
            ));
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(Duration::from_millis(50));
    };

    let mut stdout = None;
    let mut stderr = None;
    let pipes_deadline = Instant::now() + PIPE_GRACE;
    while stdout.is_none() || stderr.is_none() {
        let left = pipes_deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((true, r)) => stdout = Some(r?),
            Ok((false, r)) => stderr = Some(r?),
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "exited, but something it started keeps its output open",
                ));
            }
        }
    }
    let (out, out_cut) = stdout.unwrap_or_default();
    if out_cut {
        return Err(io::Error::other(format!(
            "printed more than {max_output} bytes on stdout"
        )));
    }
    let (err, err_cut) = stderr.unwrap_or_default();
    let mut stderr = String::from_utf8_lossy(&err).into_owned();
    if err_cut {
        stderr.push_str("\n[stderr cut]");
    }
    Ok(CmdOutput {
        success: status.success(),
        code: status.code(),
        stdout: String::from_utf8_lossy(&out).into_owned(),
        stderr,
    })
}

/// Reads `r` to its end, keeping at most `max` bytes; true when there was more.
fn read_bounded(mut r: impl Read, max: usize) -> io::Result<(Vec<u8>, bool)> {
    let mut kept = Vec::new();
    let mut cut = false;
    let mut buf = [0u8; 8192];
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok((kept, cut)),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        let room = max.saturating_sub(kept.len());
        if n > room {
            cut = true;
        }
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
}

/// The Debian package that has a storage tool.
fn package_of(program: &str) -> &'static str {
    match program {
        "zfs" | "zpool" => "zfsutils-linux (ZFS)",
        _ => "lvm2 (LVM)",
    }
}

/// Runs a tool; the output whatever the exit status, or the error that kept it from
/// running.
pub(crate) fn run(
    runner: &dyn super::Runner,
    program: &str,
    args: &[String],
) -> Result<CmdOutput, StorageError> {
    runner.run(program, args).map_err(|e| {
        if e.kind() == io::ErrorKind::NotFound {
            StorageError::ToolMissing {
                program: program.to_owned(),
                package: package_of(program),
            }
        } else {
            StorageError::ToolRun {
                command: command_line(program, args),
                source: e,
            }
        }
    })
}

/// The failure of a command that ran and did not succeed.
pub(crate) fn failure(program: &str, args: &[String], out: &CmdOutput) -> CommandFailure {
    CommandFailure::new(program, args, out.code, &out.stderr)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["-c".into(), script.into()]
    }

    #[test]
    fn captures_output_and_status() {
        let out = run_bounded(
            "sh",
            &sh("echo out; echo err >&2; echo $LC_ALL; exit 3"),
            Duration::from_secs(10),
            1024,
        )
        .unwrap();
        assert!(!out.success);
        assert_eq!(out.code, Some(3));
        assert_eq!(out.stdout, "out\nC\n");
        assert_eq!(out.stderr, "err\n");
        let out = run_bounded("true", &[], Duration::from_secs(10), 1024).unwrap();
        assert!(out.success);
        assert_eq!(out.code, Some(0));
    }

    #[test]
    fn stdin_is_closed() {
        let out = run_bounded("cat", &[], Duration::from_secs(10), 1024).unwrap();
        assert!(out.success);
        assert_eq!(out.stdout, "");
    }

    #[test]
    fn kills_a_command_that_runs_too_long_with_its_children() {
        let start = Instant::now();
        let e = run_bounded(
            "sh",
            &sh("sleep 30 & sleep 30; echo never"),
            Duration::from_millis(200),
            1024,
        )
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        assert!(start.elapsed() < Duration::from_secs(10));
    }

    #[test]
    fn bounds_the_output() {
        let e = run_bounded(
            "sh",
            &sh("head -c 100000 /dev/zero"),
            Duration::from_secs(10),
            1000,
        )
        .unwrap_err();
        assert!(e.to_string().contains("more than 1000 bytes"), "{e}");
        let out = run_bounded(
            "sh",
            &sh("head -c 100000 /dev/zero >&2; exit 1"),
            Duration::from_secs(10),
            1000,
        )
        .unwrap();
        assert!(out.stderr.len() < 1100);
        assert!(out.stderr.ends_with("[stderr cut]"));
    }

    #[test]
    fn a_missing_tool_says_what_to_install() {
        let e = run(&SystemRunner, "zfs-does-not-exist-here", &[]).unwrap_err();
        assert!(matches!(e, StorageError::ToolMissing { .. }), "{e}");
        let e = run(&SystemRunner, "zfs", &[]);
        if let Err(e) = e {
            // No ZFS on this machine: the message names the package.
            assert!(e.to_string().contains("zfsutils-linux"), "{e}");
        }
    }
}
