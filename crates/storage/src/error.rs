//! The storage errors. Each says what happened and what to do; errors that come from a
//! tool name the command line and quote its stderr.

use std::fmt;
use std::path::PathBuf;

use model::ProviderKind;

/// How much of a tool's stderr an error quotes.
const MAX_QUOTED_STDERR: usize = 2000;

/// A command that ran and failed: the command line (shell-quoted, for a human to
/// re-run), its exit code (None: killed by a signal) and its stderr.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandFailure {
    pub command: String,
    pub code: Option<i32>,
    pub stderr: String,
}

impl CommandFailure {
    pub(crate) fn new(program: &str, args: &[String], code: Option<i32>, stderr: &str) -> Self {
        Self {
            command: command_line(program, args),
            code,
            stderr: quote_stderr(stderr),
        }
    }
}

impl fmt::Display for CommandFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` ", self.command)?;
        match self.code {
            Some(c) => write!(f, "exited with status {c}")?,
            None => f.write_str("was killed by a signal")?,
        }
        if self.stderr.is_empty() {
            f.write_str(" and printed nothing on stderr")
        } else {
            write!(f, ": {}", self.stderr)
        }
    }
}

/// ` (<failure>)` after a message when a command caused it, nothing otherwise.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Cause(pub Option<CommandFailure>);

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(c) => write!(f, " ({c})"),
            None => Ok(()),
        }
    }
}

/// The command line as a shell would take it back: arguments with anything but
/// `[A-Za-z0-9_./=:,%+-]` are single-quoted.
pub(crate) fn command_line(program: &str, args: &[String]) -> String {
    let mut out = quote_arg(program);
    for a in args {
        out.push(' ');
        out.push_str(&quote_arg(a));
    }
    out
}

fn quote_arg(a: &str) -> String {
    let plain = !a.is_empty()
        && a.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_./=:,%+-@".contains(&b));
    if plain {
        a.to_owned()
    } else {
        format!("'{}'", a.replace('\'', r"'\''"))
    }
}

/// Stderr trimmed, its lines joined with "; ", at most [`MAX_QUOTED_STDERR`] bytes.
fn quote_stderr(s: &str) -> String {
    let joined = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    truncate(&joined, MAX_QUOTED_STDERR)
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StorageError {
    /// A pool property is missing or invalid.
    #[error(
        "storage pool {pool} ({kind}): {problem}; set the pool property {key}, e.g. {key}={example}"
    )]
    PoolConfig {
        pool: String,
        kind: &'static str,
        key: &'static str,
        example: &'static str,
        problem: String,
    },

    #[error(
        "storage pool {pool} is {}, which has no backing volumes: only diskful pools \
         (FILE, FILE_THIN, LVM, LVM_THIN, ZFS, ZFS_THIN) have a provider", kind.as_str()
    )]
    Unsupported { pool: String, kind: ProviderKind },

    #[error(
        "{name:?} is not a tandem backing volume name (<resource>_<5-digit volume>, e.g. \
         r1_00000); tandem refuses to touch volumes it did not name"
    )]
    InvalidName { name: String },

    #[error("invalid size {size} bytes for {name}: {reason}")]
    InvalidSize {
        name: String,
        size: u64,
        reason: &'static str,
    },

    #[error("{what} does not exist: create it, or point the storage pool at the right one{cause}")]
    PoolMissing { what: String, cause: Cause },

    #[error("backing volume {name} already exists in {pool}: use it, or delete it first{cause}")]
    AlreadyExists {
        name: String,
        pool: String,
        cause: Cause,
    },

    #[error("backing volume {name} does not exist in {pool}: create it first{cause}")]
    NotFound {
        name: String,
        pool: String,
        cause: Cause,
    },

    #[error(
        "not enough free space in {pool} for {name} ({size} bytes): free space in the pool, \
         make it larger, or place the volume in another pool{cause}"
    )]
    NoSpace {
        name: String,
        pool: String,
        size: u64,
        cause: Cause,
    },

    #[error(
        "backing volume {name} is {current} bytes; {requested} bytes would shrink it, which \
         tandem never does (ask for at least the current size)"
    )]
    Shrink {
        name: String,
        current: u64,
        requested: u64,
    },

    #[error(
        "backing volume {name} is in use: stop what uses it (blockd, a mount, a VM) and retry{cause}"
    )]
    Busy { name: String, cause: Cause },

    #[error(
        "backing volume {name} has snapshots or clones: tandem does not remove them; remove \
         them by hand, then retry{cause}"
    )]
    HasDependents { name: String, cause: Cause },

    #[error(
        "backing volume {name} was created but its device {} did not appear within {waited_ms} ms: \
         check udev (`udevadm settle`) and, for ZFS, the volmode property; raise \
         StorDriver/WaitTimeoutAfterCreate if the system is just slow", path.display()
    )]
    DeviceMissing {
        name: String,
        path: PathBuf,
        waited_ms: u64,
    },

    #[error(
        "{} is not a regular file: tandem only manages the files it created; move it out of \
         the pool directory", path.display()
    )]
    ForeignFile { path: PathBuf },

    #[error(
        "`{program}` was not found: install {package} on this node, or use another provider kind"
    )]
    ToolMissing {
        program: String,
        package: &'static str,
    },

    #[error("could not run `{command}`: {source}")]
    ToolRun {
        command: String,
        #[source]
        source: std::io::Error,
    },

    #[error("{0}; see the tool's message for what to fix")]
    ToolFailed(CommandFailure),

    #[error(
        "unexpected output from `{command}`: {problem}; output starts {excerpt:?} (this version \
         of the tool may print something tandem does not parse: report it with this message)"
    )]
    BadOutput {
        command: String,
        problem: String,
        excerpt: String,
    },

    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl StorageError {
    pub(crate) fn io(what: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Self::Io {
            what,
            path: path.to_owned(),
            source,
        }
    }

    pub(crate) fn bad_output(command: &str, problem: impl Into<String>, output: &str) -> Self {
        Self::BadOutput {
            command: command.to_owned(),
            problem: problem.into(),
            excerpt: truncate(output, 200),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_lines_quote_what_a_shell_would_split() {
        let args: Vec<String> = ["--size", "1024k", "a b", "it's", ""]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        assert_eq!(
            command_line("lvcreate", &args),
            r"lvcreate --size 1024k 'a b' 'it'\''s' ''"
        );
    }

    #[test]
    fn failures_quote_stderr_bounded() {
        let f = CommandFailure::new("zfs", &["destroy".into()], Some(1), "  a\n\n  b  \n");
        assert_eq!(f.to_string(), "`zfs destroy` exited with status 1: a; b");
        let f = CommandFailure::new("zfs", &[], None, "");
        assert_eq!(
            f.to_string(),
            "`zfs` was killed by a signal and printed nothing on stderr"
        );
        let long = "é".repeat(5000);
        let f = CommandFailure::new("x", &[], Some(1), &long);
        assert!(f.stderr.len() <= MAX_QUOTED_STDERR + 3);
    }
}
