//! The latency nemesis's TCP trace: while delays are in place (and a little after), every
//! worker's TCP connections to the registry's client port as the worker's kernel sees them,
//! sampled with `ss -tinO` in the worker's namespace and appended to `logs/tcp-<worker>.log`,
//! each sample stamped with the run's time and the wall clock (the workers' own logs carry
//! the wall clock). A line per connection: its ports (a new local port is a new connection),
//! state (`SYN-SENT` is a connect in progress), RTT and RTO, unacked segments, retransmits
//! (`retrans:now/total`), RTO backoff, and when it last sent and received.
//!
//! It is what a failed latency run needs to tell "the request waited on a TCP retransmit"
//! from "the connection was new and its handshake did not fit" from "it was never sent"; the
//! workers' debug log says which registry node each failed attempt went to.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::clock::{wall_ms, RunClock};

/// Between rounds of samples (one `ss` per worker each): a renewal round trip under the
/// latency nemesis is hundreds of ms; sampling more often costs the run's CPU more.
const EVERY: Duration = Duration::from_millis(200);

/// One traced worker: its name (for the log file) and its network namespace.
#[derive(Debug, Clone)]
pub struct Traced {
    pub name: String,
    pub netns: String,
}

/// The sampling thread. Dropping it stops it.
#[derive(Debug)]
pub struct TcpTrace {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpTrace {
    /// Sample the connections to `port` of every one of `workers` into `<logs>/tcp-<name>.log`.
    pub fn start(workers: Vec<Traced>, port: u16, logs: PathBuf, clock: RunClock) -> std::io::Result<TcpTrace> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new().name("tcp-trace".into()).spawn(move || {
            let filter = format!("( dport = :{port} )");
            let mut files: Vec<Option<std::fs::File>> = workers
                .iter()
                .map(|w| {
                    std::fs::File::options()
                        .create(true)
                        .append(true)
                        .open(logs.join(format!("tcp-{}.log", w.name)))
                        .ok()
                })
                .collect();
            while !flag.load(Ordering::Relaxed) {
                for (worker, file) in workers.iter().zip(files.iter_mut()) {
                    let Some(file) = file.as_mut() else { continue };
                    let (run_ms, wall) = (clock.now_ns() / 1_000_000, wall_ms());
                    let sockets = sample(&worker.netns, &filter);
                    let mut text = String::new();
                    for line in sockets.lines().filter(|l| !l.trim().is_empty()) {
                        let _ = writeln!(text, "{run_ms} {wall} {}", squeeze(line));
                    }
                    if text.is_empty() {
                        let _ = writeln!(text, "{run_ms} {wall} (no connection)");
                    }
                    let _ = file.write_all(text.as_bytes());
                }
                std::thread::sleep(EVERY);
            }
        })?;
        Ok(TcpTrace { stop, thread: Some(thread) })
    }
}

impl Drop for TcpTrace {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// `ss` in namespace `netns`: every TCP socket matching `filter`, one line each, with its
/// TCP info and timers; empty if `ss` fails (a trace must never fail a run).
fn sample(netns: &str, filter: &str) -> String {
    std::process::Command::new("ss")
        .args(["-N", netns, "-tinoOHa", filter])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// One line with runs of blanks made one space.
fn squeeze(line: &str) -> String {
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squeezes_blanks() {
        assert_eq!(squeeze("ESTAB  0\t 0   10.0.0.1:5 "), "ESTAB 0 0 10.0.0.1:5");
    }
}
