//! A scripted [`Runner`] for the providers' tests: it expects exact command lines, in
//! order, and answers each with a recorded output (tests/data/*/*.txt).
//!
//! A recording is a text file:
//!
//! ```text
//! # comment lines (where it was recorded, or that it was written by hand)
//! $ lvs --reportformat json ... tandemvg
//! exit 5
//! --- stdout
//! ...verbatim...
//! --- stderr
//! ...verbatim...
//! ```

use std::collections::VecDeque;
use std::io;
use std::sync::Mutex;

use crate::{CmdOutput, Runner};

#[derive(Debug, Clone)]
pub(crate) struct Recording {
    pub argv: Vec<String>,
    pub output: CmdOutput,
}

/// Parses a recording; panics on a malformed file (test data).
pub(crate) fn recording(text: &str) -> Recording {
    let mut argv = None;
    let mut code = None;
    let (head, rest) = text.split_once("--- stdout\n").expect("--- stdout");
    let (stdout, stderr) = rest.split_once("--- stderr\n").expect("--- stderr");
    for line in head.lines() {
        if let Some(cmd) = line.strip_prefix("$ ") {
            argv = Some(cmd.split(' ').map(str::to_owned).collect::<Vec<_>>());
        } else if let Some(c) = line.strip_prefix("exit ") {
            code = Some(c.trim().parse::<i32>().expect("exit code"));
        } else {
            assert!(line.starts_with('#') || line.is_empty(), "{line:?}");
        }
    }
    let code = code.expect("exit line");
    Recording {
        argv: argv.expect("$ line"),
        output: CmdOutput {
            success: code == 0,
            code: Some(code),
            stdout: stdout.to_owned(),
            stderr: stderr.to_owned(),
        },
    }
}

#[derive(Debug)]
enum Answer {
    Output(CmdOutput),
    Error(io::ErrorKind),
}

#[derive(Debug, Default)]
pub(crate) struct Scripted {
    steps: Mutex<VecDeque<(Vec<String>, Answer)>>,
}

impl Scripted {
    pub fn new() -> Self {
        Self::default()
    }

    /// Expects the recording's command line and answers with its output.
    pub fn expect(self, text: &str) -> Self {
        let r = recording(text);
        self.push(r.argv, Answer::Output(r.output))
    }

    /// Expects `argv` and answers with the recording's output: for a recording whose
    /// command differs only in names or sizes from the one expected.
    pub fn expect_as(self, argv: &[&str], text: &str) -> Self {
        let r = recording(text);
        self.push(
            argv.iter().map(|s| (*s).to_owned()).collect(),
            Answer::Output(r.output),
        )
    }

    /// Expects `argv` and fails to run it with `kind`.
    pub fn expect_error(self, argv: &[&str], kind: io::ErrorKind) -> Self {
        self.push(
            argv.iter().map(|s| (*s).to_owned()).collect(),
            Answer::Error(kind),
        )
    }

    fn push(self, argv: Vec<String>, a: Answer) -> Self {
        self.steps.lock().unwrap().push_back((argv, a));
        self
    }

    /// Panics when an expected command did not run.
    pub fn done(&self) {
        let left = self.steps.lock().unwrap();
        assert!(
            left.is_empty(),
            "commands not run: {:?}",
            left.iter().map(|s| &s.0).collect::<Vec<_>>()
        );
    }
}

impl Runner for Scripted {
    fn run(&self, program: &str, args: &[String]) -> io::Result<CmdOutput> {
        let mut actual = vec![program.to_owned()];
        actual.extend(args.iter().cloned());
        let (expected, answer) = self
            .steps
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| panic!("unexpected command: {}", actual.join(" ")));
        assert_eq!(actual.join(" "), expected.join(" "), "command line");
        assert_eq!(actual, expected, "arguments");
        match answer {
            Answer::Output(o) => Ok(o),
            Answer::Error(k) => Err(io::Error::new(k, "scripted failure")),
        }
    }
}
