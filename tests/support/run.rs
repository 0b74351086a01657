//! The outcome of one command a test ran (a fleetctl on the host or in a lab machine), with the
//! assertions every such test makes on it.
#![allow(dead_code)]

use std::process::Output;
use std::time::Duration;

/// What a command did.
pub struct Run {
    /// The command, as failure messages name it.
    pub what: String,
    pub code: Option<i32>,
    pub out: String,
    pub err: String,
    pub took: Duration,
}

impl Run {
    /// The outcome `output` of `what`, which took `took`.
    pub fn new(what: String, output: Output, took: Duration) -> Run {
        Run {
            what,
            code: output.status.code(),
            out: String::from_utf8_lossy(&output.stdout).into_owned(),
            err: String::from_utf8_lossy(&output.stderr).into_owned(),
            took,
        }
    }

    /// Asserts exit 0 and returns stdout.
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "{} failed\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.out,
            self.err
        );
        &self.out
    }

    /// Asserts exit 1 and returns stderr.
    pub fn fails(&self) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "{} should have failed\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.out,
            self.err
        );
        &self.err
    }
}
