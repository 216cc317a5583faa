//! What a hung process was doing: its threads' stacks, for a test that gives up on it.
//!
//! A command or agent that never answers fails its test after a bound; without its stacks
//! the cause is lost with the process (CI keeps only the test's output). `gdb` is installed by
//! `.ci/run` for this; where it is missing the dump says so and the test fails the same way.

#![allow(dead_code)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long gdb may take to attach and print (it is killed after).
const GDB_LIMIT: Duration = Duration::from_secs(30);

/// The stacks of every thread of process `pid` (12 frames each), or why there are none.
pub fn dump(pid: u32) -> String {
    let child = Command::new("gdb")
        .args(["-p", &pid.to_string(), "-batch", "-nx"])
        .args(["-ex", "set print frame-arguments none"])
        .args(["-ex", "thread apply all bt 12"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return format!("(no thread dump of {pid}: gdb: {e})"),
    };
    let deadline = Instant::now() + GDB_LIMIT;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return format!("(no thread dump of {pid}: gdb did not finish in {GDB_LIMIT:?})");
            }
        }
    }
    let mut out = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut o, &mut out);
    }
    // Only the stacks: gdb's banner and symbol-loading chatter say nothing about the hang.
    out.lines()
        .filter(|l| l.starts_with("Thread ") || l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
