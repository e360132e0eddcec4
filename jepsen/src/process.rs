//! Real `fenceflake` processes inside the harness's network namespaces: start, SIGKILL,
//! SIGSTOP/SIGCONT, restart, with their stdout/stderr appended to a log file per process, and
//! whether one exited on its own (for the restart-always supervision of `crate::supervise`).

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::net::Host;

/// The variable that makes the test binary's servers authorize nobody (only the binary built
/// by scripts/build-unsafe-test-binary reads it): set for registry nodes by the
/// `--unsafe-disable-authorization` self-test, never inherited.
pub const UNSAFE_DISABLE_AUTHORIZATION: &str = "FENCEFLAKE_UNSAFE_DISABLE_AUTHORIZATION";
/// The variable of the test binary's workers that makes them state no incarnation, so that
/// copies of one state dir share one token (the `--unsafe-disable-incarnations` self-test).
pub const UNSAFE_DISABLE_INCARNATIONS: &str = "FENCEFLAKE_UNSAFE_DISABLE_INCARNATIONS";
/// The variable of the test binary's registry nodes that makes their clock check always say
/// "within", so a fast leader keeps leading and stamping (the `--unsafe-disable-clock-check`
/// self-test).
pub const UNSAFE_DISABLE_CLOCK_CHECK: &str = "FENCEFLAKE_UNSAFE_DISABLE_CLOCK_CHECK";
/// The test binary's unsafe switches read from the environment: a process gets one only from
/// its spec (a self-test), never from the harness's own environment.
const UNSAFE_ENV_VARS: [&str; 4] = [
    UNSAFE_DISABLE_AUTHORIZATION,
    "FENCEFLAKE_UNSAFE_DISABLE_DEADLINE_CHECK",
    UNSAFE_DISABLE_INCARNATIONS,
    UNSAFE_DISABLE_CLOCK_CHECK,
];

/// How to start one process; kept so it can be restarted identically (or with changes).
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub host: Host,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub log: PathBuf,
}

/// A process the harness controls. Dropping it SIGKILLs the process.
#[derive(Debug)]
pub struct Managed {
    pub spec: Spec,
    child: Option<Child>,
    /// SIGSTOPped and not yet continued.
    pub paused: bool,
    /// How it ended by itself, until [`Managed::take_exit`] is asked.
    unseen_exit: Option<ExitStatus>,
}

#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot start {name}: {source}")]
    Spawn { name: String, source: std::io::Error },
    #[error("cannot signal {name}: {source}")]
    Signal { name: String, source: nix::Error },
}

impl Managed {
    pub fn new(spec: Spec) -> Managed {
        Managed { spec, child: None, paused: false, unseen_exit: None }
    }

    pub fn is_running(&mut self) -> bool {
        self.reap();
        self.child.is_some()
    }

    /// The exit status, once, if the process ended by itself (not killed or terminated by the
    /// harness, which reaps those itself): kept until asked, even if it was started again.
    pub fn take_exit(&mut self) -> Option<ExitStatus> {
        self.reap();
        self.unseen_exit.take()
    }

    fn reap(&mut self) {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) | None => {}
            Some(Ok(Some(status))) => {
                self.child = None;
                self.unseen_exit = Some(status);
            }
            // Cannot be waited for: gone as far as the harness can tell.
            Some(Err(_)) => self.child = None,
        }
    }

    /// Start the process with `ip netns exec` (which execs it: the child pid is the process).
    pub fn start(&mut self) -> Result<(), ProcessError> {
        if self.is_running() {
            return Ok(());
        }
        let spawn_err = |source| ProcessError::Spawn { name: self.spec.name.clone(), source };
        let log = File::options().create(true).append(true).open(&self.spec.log).map_err(spawn_err)?;
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.spec.host.netns]).arg(&self.spec.program).args(&self.spec.args);
        // The transport (and any unsafe switch) is the spec's choice alone, never inherited
        // from the harness's shell.
        for var in crate::tls::ENV_VARS.into_iter().chain(UNSAFE_ENV_VARS) {
            command.env_remove(var);
        }
        let child = command
            .envs(self.spec.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(spawn_err)?)
            .stderr(log)
            .spawn()
            .map_err(spawn_err)?;
        self.child = Some(child);
        self.paused = false;
        Ok(())
    }

    fn signal(&mut self, signal: Signal) -> Result<(), ProcessError> {
        let Some(child) = self.child.as_ref() else { return Ok(()) };
        let pid = Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX));
        kill(pid, signal).map_err(|source| ProcessError::Signal { name: self.spec.name.clone(), source })
    }

    /// SIGKILL and reap: a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// SIGTERM, then SIGKILL if still running after `grace`. The exit this causes is the
    /// harness's doing, so [`Managed::take_exit`] does not report it.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        let earlier = self.take_exit();
        let _ = self.resume();
        let _ = self.signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while self.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill();
        self.unseen_exit = earlier;
    }

    /// SIGSTOP: the process freezes (the GC-pause case).
    pub fn pause(&mut self) -> Result<(), ProcessError> {
        self.signal(Signal::SIGSTOP)?;
        self.paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self) -> Result<(), ProcessError> {
        if self.paused {
            self.signal(Signal::SIGCONT)?;
            self.paused = false;
        }
        Ok(())
    }

    pub fn log_path(&self) -> &Path {
        &self.spec.log
    }
}

impl Drop for Managed {
    fn drop(&mut self) {
        let _ = self.resume();
        self.kill();
    }
}
