//! Restart-always supervision of the worker processes, as systemd's `Restart=always` with a
//! `RestartSec` would do: a worker that exits on its own (a lost lease — FENCED, SUPERSEDED,
//! QUARANTINED — ends it non-zero, so that a new incarnation gets a new lease) is started
//! again with the same flags and state dir after a short pause. Each exit and restart is
//! reported so the run records it as a `process` event, apart from the nemesis's kills.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::history::ProcessEventKind;
use crate::process::Managed;

/// The pause before an exited worker is started again (a supervisor's restart delay).
pub const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// What one poll saw of one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub process: String,
    pub event: ProcessEventKind,
    /// `Exited`: the exit code (`None`: a signal ended it).
    pub code: Option<i32>,
}

/// The restarts that are due, by process name.
#[derive(Debug)]
pub struct Supervisor {
    pause: Duration,
    due: BTreeMap<String, Instant>,
}

impl Supervisor {
    pub fn new(pause: Duration) -> Supervisor {
        Supervisor { pause, due: BTreeMap::new() }
    }

    /// Look at each process once: note the ones that exited by themselves, and start the
    /// ones whose pause is over. One that something else started meanwhile (a nemesis's
    /// restart) is left alone. A start that fails is tried again at the next poll.
    pub fn poll<'a>(&mut self, processes: impl IntoIterator<Item = &'a mut Managed>, now: Instant) -> Vec<Seen> {
        let mut seen = Vec::new();
        for process in processes {
            let name = process.spec.name.clone();
            if let Some(status) = process.take_exit() {
                seen.push(Seen { process: name.clone(), event: ProcessEventKind::Exited, code: status.code() });
                self.due.insert(name.clone(), now + self.pause);
            }
            let Some(&at) = self.due.get(&name) else { continue };
            if process.is_running() {
                self.due.remove(&name);
            } else if now >= at {
                match process.start() {
                    Ok(()) => {
                        self.due.remove(&name);
                        seen.push(Seen { process: name, event: ProcessEventKind::Restarted, code: None });
                    }
                    Err(e) => println!("  supervisor: cannot restart {name}: {e}"),
                }
            }
        }
        seen
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::Host;
    use crate::process::Spec;

    /// A process that exits non-zero at once: `ip netns exec` of a namespace that does not
    /// exist (no root needed, nothing else runs).
    fn failing(dir: &std::path::Path, name: &str) -> Managed {
        let host = Host { name: name.into(), netns: "ffj-no-such-namespace".into(), ip: [10, 231, 0, 1].into() };
        let log = dir.join(format!("{name}.log"));
        Managed::new(Spec { name: name.into(), host, program: "/bin/true".into(), args: vec![], env: vec![], log })
    }

    fn wait_exit(process: &mut Managed) {
        let until = Instant::now() + Duration::from_secs(10);
        while process.is_running() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Goal: a process that exits by itself is reported once with its code and started again
    /// after the pause (not before); one the harness killed is neither reported nor restarted.
    #[test]
    fn exits_are_reported_and_restarted_after_the_pause_kills_are_not() {
        let dir = tempfile::tempdir().unwrap();
        let (mut exits, mut killed) = (failing(dir.path(), "w1"), failing(dir.path(), "w2"));
        exits.start().unwrap();
        wait_exit(&mut exits);
        killed.start().unwrap();
        killed.kill();
        let mut supervisor = Supervisor::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let first = supervisor.poll([&mut exits, &mut killed], t0);
        assert_eq!(first.len(), 1, "{first:?}");
        assert_eq!((first[0].process.as_str(), first[0].event), ("w1", ProcessEventKind::Exited));
        assert!(first[0].code.is_some_and(|c| c != 0), "{first:?}");
        assert_eq!(supervisor.poll([&mut exits, &mut killed], t0 + Duration::from_secs(1)), vec![]);
        let restarted = supervisor.poll([&mut exits, &mut killed], t0 + Duration::from_secs(5));
        assert_eq!(restarted, vec![Seen { process: "w1".into(), event: ProcessEventKind::Restarted, code: None }]);
    }
}
