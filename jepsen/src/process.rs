//! Real `fenceflake` processes inside the harness's network namespaces: start, SIGKILL,
//! SIGSTOP/SIGCONT, restart, with their stdout/stderr appended to a log file per process.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::net::Host;

/// The variable that makes the test binary's servers authorize nobody (only the binary built
/// by scripts/build-unsafe-test-binary reads it): set for registry nodes by the
/// `--unsafe-disable-authorization` self-test, never inherited.
pub const UNSAFE_DISABLE_AUTHORIZATION: &str = "FENCEFLAKE_UNSAFE_DISABLE_AUTHORIZATION";
/// The test binary's unsafe switches read from the environment: a process gets one only from
/// its spec (a self-test), never from the harness's own environment.
const UNSAFE_ENV_VARS: [&str; 2] = [UNSAFE_DISABLE_AUTHORIZATION, "FENCEFLAKE_UNSAFE_DISABLE_DEADLINE_CHECK"];

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
        Managed { spec, child: None, paused: false }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut().map(Child::try_wait) {
            Some(Ok(None)) => true,
            Some(_) => {
                self.child = None;
                false
            }
            None => false,
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

    /// SIGTERM, then SIGKILL if still running after `grace`.
    pub fn terminate(&mut self, grace: std::time::Duration) {
        let _ = self.resume();
        let _ = self.signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + grace;
        while self.is_running() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        self.kill();
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
