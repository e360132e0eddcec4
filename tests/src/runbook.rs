//! Runbooks as tests: the shell lines of the operator docs' fenced code blocks, extracted with
//! their section, their placeholders (`H1:2379`, `/backups/`, …; docs/operations.md,
//! "Conventions in the commands") replaced by a local cluster's addresses and temp dirs, and
//! run with `sh -c` in the order the docs give them (`tests/tests/t47_runbooks.rs`).
//!
//! Every command runs on mutual TLS without the docs spelling it out: the executor gives each
//! line the `FENCEFLAKE_TLS_*` env vars of the identity its `fenceflake` subcommand needs
//! ([`identity_for`]: a registry node its node certificate, ctl an operator's, mint a client's,
//! a worker a worker's), from the CA of the cluster the test runs the doc against.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use fenceflake_proto::tls::Role;

use crate::certs::{Certs, ENV_INSECURE, TEST_NAME};
use crate::cluster::Cluster;
use crate::{fenceflake_bin, free_port};

/// Code block languages whose lines are shell commands.
const SHELL_LANGS: [&str; 4] = ["bash", "sh", "shell", "console"];

/// Lines that start like this are run by the tests (`$B` is the README's binary variable).
const RUN_PREFIXES: [&str; 3] = ["fenceflake ", "$B ", "curl "];

/// Shell lines the tests do not run, by a pattern they contain, and why. Any other line of a
/// code block that does not start with one of [`RUN_PREFIXES`] fails the coverage test.
pub const SKIPPED: [(&str, &str); 5] = [
    (
        "systemctl ",
        "a supervisor's restart: the runbook tests mirror it with SIGTERM and a start with the same command; the units are checked by deploy/check-manifests.sh",
    ),
    ("kubectl ", "Kubernetes: the manifests are checked by deploy/check-manifests.sh"),
    ("docker ", "compose: deploy/docker/test.sh"),
    (
        "fenceflake-jepsen ",
        "a harness run needs root and network namespaces (jepsen/ci.sh runs every scenario); here its scenario and flags are checked to exist",
    ),
    ("cargo ", "a build or this test suite itself; here the packages and tests it names are checked to exist"),
];

/// One command line of a doc's code block (continuation lines joined).
#[derive(Debug, Clone)]
pub struct DocLine {
    /// Path of the doc, relative to the workspace root.
    pub doc: &'static str,
    /// 1-based line of the command's first physical line.
    pub line: usize,
    /// The nearest heading above it.
    pub section: String,
    pub text: String,
}

/// How the tests treat a doc line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// Runs to completion.
    Run,
    /// Long-running (`fenceflake registry`, `fenceflake worker`, `… &`): started in the background.
    Daemon,
    /// Not run, with the reason from [`SKIPPED`].
    Skipped(&'static str),
}

impl DocLine {
    pub fn at(&self) -> String {
        format!("{}:{}", self.doc, self.line)
    }

    /// `None` for a line that is neither run nor skipped on purpose: a test failure.
    pub fn class(&self) -> Option<Class> {
        let t = self.text.as_str();
        if RUN_PREFIXES.iter().any(|p| t.starts_with(p)) {
            let daemon = ["fenceflake registry ", "$B registry ", "fenceflake worker ", "$B worker "]
                .iter()
                .any(|p| t.starts_with(p))
                || t.ends_with('&');
            return Some(if daemon { Class::Daemon } else { Class::Run });
        }
        SKIPPED.iter().find(|(pattern, _)| t.contains(pattern)).map(|(_, why)| Class::Skipped(why))
    }

    pub fn runs(&self) -> bool {
        matches!(self.class(), Some(Class::Run | Class::Daemon))
    }

    /// The same command for node `n` of a set of hosts: the per-node flags (`--node-id`, the
    /// three addresses, `--data-dir`) moved from node 1 to node `n`, everything else as is.
    pub fn for_node(&self, n: u64) -> DocLine {
        let per_node = ["--client-addr", "--peer-addr", "--metrics-addr", "--data-dir"];
        let words: Vec<&str> = self.text.split(' ').collect();
        let mut out = Vec::with_capacity(words.len());
        for (i, word) in words.iter().enumerate() {
            let flag = if i == 0 { "" } else { words[i - 1] };
            out.push(match flag {
                "--node-id" => n.to_string(),
                f if per_node.contains(&f) => {
                    word.replace("H1:", &format!("H{n}:")).replace("node-1", &format!("node-{n}"))
                }
                _ => (*word).to_string(),
            });
        }
        DocLine { text: out.join(" "), ..self.clone() }
    }
}

/// The workspace root (the docs are read from there).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

/// Every command line of the shell code blocks of `doc` (relative to the workspace root),
/// only under the heading `only` (and its subsections) if given.
pub fn extract(doc: &'static str, only: Option<&str>) -> Vec<DocLine> {
    let text = std::fs::read_to_string(workspace_root().join(doc)).unwrap_or_else(|e| panic!("read {doc}: {e}"));
    let mut parser = Parser { doc, only, ..Parser::default() };
    for (i, raw) in text.lines().enumerate() {
        parser.line(i + 1, raw);
    }
    assert!(parser.fence.is_none(), "{doc}: a code block is not closed");
    parser.out
}

#[derive(Default)]
struct Parser<'a> {
    doc: &'static str,
    only: Option<&'a str>,
    section: String,
    /// Level of the `only` heading while inside it.
    scope: Option<usize>,
    fence: Option<String>,
    /// A command continued with `\`: its first line and text so far.
    pending: Option<(usize, String)>,
    out: Vec<DocLine>,
}

impl Parser<'_> {
    fn line(&mut self, no: usize, raw: &str) {
        let line = raw.trim();
        if let Some(lang) = line.strip_prefix("```") {
            self.fence = match self.fence {
                None => Some(lang.trim().to_string()),
                Some(_) => None,
            };
            return;
        }
        match &self.fence {
            None if raw.starts_with('#') => self.heading(raw),
            Some(lang) if SHELL_LANGS.contains(&lang.as_str()) && self.in_scope() => {
                let console = lang == "console";
                self.command(no, line, console);
            }
            _ => {}
        }
    }

    fn in_scope(&self) -> bool {
        self.only.is_none() || self.scope.is_some()
    }

    fn heading(&mut self, raw: &str) {
        let level = raw.chars().take_while(|c| *c == '#').count();
        let title = raw[level..].trim().to_string();
        if self.scope.is_some_and(|l| level <= l) {
            self.scope = None;
        }
        if self.only == Some(title.as_str()) {
            self.scope = Some(level);
        }
        self.section = title;
    }

    fn command(&mut self, no: usize, line: &str, console: bool) {
        let line = match (console, self.pending.is_some()) {
            (true, false) => match line.strip_prefix("$ ") {
                Some(command) => command,
                None => return, // output shown in a console block
            },
            _ => line,
        };
        if self.pending.is_none() && (line.is_empty() || line.starts_with('#')) {
            return;
        }
        let (first, mut text) = self.pending.take().unwrap_or((no, String::new()));
        if !text.is_empty() {
            text.push(' ');
        }
        match line.strip_suffix('\\') {
            Some(part) => {
                text.push_str(part.trim_end());
                self.pending = Some((first, text));
            }
            None => {
                text.push_str(line);
                let section = self.section.clone();
                self.out.push(DocLine { doc: self.doc, line: first, section, text });
            }
        }
    }
}

/// What the placeholders stand for in one test, and the directory standing in for the
/// hosts' disks. Dropping it deletes the directory unless a test failed.
#[derive(Debug)]
pub struct Vars {
    dir: tempfile::TempDir,
    subs: BTreeMap<String, String>,
    env: BTreeMap<String, String>,
    /// The CA the commands' certificates come from: the cluster's the doc runs against
    /// ([`Vars::cluster`]), or one of its own for a cluster the doc's commands start.
    certs: Certs,
}

impl Default for Vars {
    fn default() -> Self {
        Self::new()
    }
}

impl Vars {
    /// The path placeholders point into a fresh temp dir (created, like `/backups/`).
    pub fn new() -> Vars {
        let dir = tempfile::Builder::new().prefix("fenceflake-runbook-").tempdir().expect("create a temp dir");
        let mut vars = Vars { dir, subs: BTreeMap::new(), env: BTreeMap::new(), certs: Certs::new() };
        for prefix in ["/var/lib/fenceflake/", "/backups/"] {
            let path = vars.dir.path().join(prefix.trim_matches('/'));
            std::fs::create_dir_all(&path).expect("create a placeholder dir");
            vars.set(prefix, &format!("{}/", path.display()));
        }
        vars
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn set(&mut self, placeholder: &str, value: &str) {
        self.subs.insert(placeholder.to_string(), value.to_string());
    }

    /// An environment variable for every command (the README's `$B`, `$IC`).
    pub fn env(&mut self, name: &str, value: &str) {
        self.env.insert(name.to_string(), value.to_string());
    }

    /// The CA and certificates the commands run with.
    pub fn certs(&self) -> &Certs {
        &self.certs
    }

    /// Run the commands with `certs` (the CA of the cluster they talk to).
    pub fn use_certs(&mut self, certs: &Certs) {
        self.certs = certs.clone();
    }

    /// The environment `command` runs with: the test's variables, and the TLS files of the
    /// identity its `fenceflake` subcommand needs ([`identity_for`]).
    pub fn env_for(&self, command: &str) -> BTreeMap<String, String> {
        let mut env = self.env.clone();
        if let Some((role, name)) = identity_for(command) {
            env.extend(self.certs.env(role, &name));
        }
        env
    }

    pub fn get(&self, placeholder: &str) -> &str {
        self.subs.get(placeholder).unwrap_or_else(|| panic!("no value for {placeholder}"))
    }

    /// Node `n` of host prefix `host` (`H`, `NEW`): client `:2379`, peer `:2380`, metrics `:2381`.
    pub fn node(&mut self, host: &str, n: u64, client: &str, peer: &str) {
        self.set(&format!("{host}{n}:2379"), client);
        self.set(&format!("{host}{n}:2380"), peer);
        self.set(&format!("{host}{n}:2381"), &format!("127.0.0.1:{}", free_port()));
    }

    /// Node `n` on fresh loopback ports (for a cluster the doc's own commands start).
    pub fn fresh_node(&mut self, host: &str, n: u64) {
        let (client, peer) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
        self.node(host, n, &client, &peer);
    }

    /// Every node `cluster` knows (running or only described) under host prefix `host`; the
    /// commands get certificates of its CA.
    pub fn cluster(&mut self, host: &str, cluster: &Cluster) {
        self.use_certs(&cluster.certs);
        for node in cluster.nodes.values() {
            self.node(host, node.node_id, &node.client_addr, &node.peer_addr);
        }
    }

    /// The README's by-hand cluster: `127.0.0.1:237N` client, `:238N` peer, `:239N`
    /// metrics of node N, and `$IC`, its `--initial-cluster` (nodes 1..5); the commands get
    /// certificates of its CA.
    pub fn readme_cluster(&mut self, cluster: &Cluster) {
        self.use_certs(&cluster.certs);
        let mut initial = Vec::new();
        for node in cluster.nodes.values() {
            let n = node.node_id;
            self.set(&format!("127.0.0.1:237{n}"), &node.client_addr);
            self.set(&format!("127.0.0.1:238{n}"), &node.peer_addr);
            self.set(&format!("127.0.0.1:239{n}"), &format!("127.0.0.1:{}", free_port()));
            if n <= 5 {
                initial.push(format!("{n}={}/{}", node.peer_addr, node.client_addr));
            }
        }
        self.env("IC", &initial.join(","));
    }

    /// `text` with every placeholder replaced (one pass, longest match first); panics on a
    /// placeholder-shaped word (`H9:2379`) that has no value here.
    pub fn substitute(&self, text: &str) -> String {
        let mut keys: Vec<&String> = self.subs.keys().collect();
        keys.sort_by_key(|k| std::cmp::Reverse(k.len()));
        let mut out = String::with_capacity(text.len() + 64);
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match keys.iter().find(|k| rest.starts_with(k.as_str())) {
                Some(key) => {
                    out.push_str(&self.subs[*key]);
                    rest = &rest[key.len()..];
                }
                None => {
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        let left = placeholders_in(&out);
        assert!(left.is_empty(), "placeholders without a value in this test: {left:?} in `{text}`");
        out
    }
}

/// The identity a doc command needs, from its first `fenceflake` (or `$B`) subcommand: a
/// registry node its node id, `worker` a worker's, `ctl` an operator's, `mint` a client's;
/// `None` for the subcommands that talk to no server (`decode`, `certs`) and other programs.
pub fn identity_for(command: &str) -> Option<(Role, String)> {
    let words: Vec<&str> = command.split_whitespace().collect();
    let at = words.iter().position(|w| {
        let w = w.trim_matches('"');
        w == "fenceflake" || w == "$B" || w.ends_with("/fenceflake")
    })?;
    let value_of = |flag: &str| {
        let eq = format!("{flag}=");
        words.iter().enumerate().find_map(|(i, w)| match w.strip_prefix(eq.as_str()) {
            Some(v) => Some(v.to_string()),
            None => (*w == flag).then(|| words.get(i + 1).map(|v| v.to_string())).flatten(),
        })
    };
    match *words.get(at + 1)? {
        "registry" => Some((Role::Node, value_of("--node-id").unwrap_or_else(|| "1".into()))),
        "worker" => Some((Role::Worker, "runbook".into())),
        "ctl" => Some((Role::Operator, TEST_NAME.into())),
        "mint" => Some((Role::Client, TEST_NAME.into())),
        _ => None,
    }
}

/// Words shaped like an address placeholder: capitals, digits, `:`, digits (`H6:2379`).
pub fn placeholders_in(text: &str) -> Vec<String> {
    let b = text.as_bytes();
    let mut found = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let starts = b[i].is_ascii_uppercase() && (i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let mut j = i;
        let run = |j: &mut usize, f: fn(&u8) -> bool| {
            let from = *j;
            while *j < b.len() && f(&b[*j]) {
                *j += 1;
            }
            *j > from
        };
        let shaped =
            run(&mut j, u8::is_ascii_uppercase) && run(&mut j, u8::is_ascii_digit) && j < b.len() && b[j] == b':' && {
                j += 1;
                run(&mut j, u8::is_ascii_digit)
            };
        if shaped {
            found.push(text[i..j].to_string());
        }
        i = j.max(i + 1);
    }
    found
}

/// A finished command.
#[derive(Debug, Clone)]
pub struct Ran {
    pub at: String,
    pub command: String,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for Ran {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} `{}` exited {:?}\n--- stdout\n{}--- stderr\n{}",
            self.at, self.command, self.code, self.stdout, self.stderr
        )
    }
}

/// Longest a command may run before the test calls it hung.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(90);

/// Run `command` with `sh -c` in `dir`, `fenceflake` first on the PATH, with `env`.
pub fn sh(command: &str, dir: &Path, env: &BTreeMap<String, String>) -> (Option<i32>, String, String) {
    let (out_path, err_path) = (dir.join(".stdout"), dir.join(".stderr"));
    let mut child = shell(command, dir, env)
        .stdout(File::create(&out_path).expect("create stdout file"))
        .stderr(File::create(&err_path).expect("create stderr file"))
        .spawn()
        .expect("run sh");
    let status = wait_bounded(&mut child, COMMAND_TIMEOUT);
    let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
    (status.and_then(|s| s.code()), read(&out_path), read(&err_path))
}

fn shell(command: &str, dir: &Path, env: &BTreeMap<String, String>) -> Command {
    let bin_dir = dir.join(".bin");
    if !bin_dir.exists() {
        std::fs::create_dir_all(&bin_dir).expect("create bin dir");
        std::os::unix::fs::symlink(fenceflake_bin(), bin_dir.join("fenceflake")).expect("link fenceflake");
    }
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut cmd = Command::new("sh");
    cmd.arg("-c").arg(command).current_dir(dir).env("PATH", path).env("B", fenceflake_bin());
    cmd.env_remove(ENV_INSECURE).envs(env);
    cmd.env("RUST_LOG", "info,openraft=warn").stdin(Stdio::null());
    cmd
}

/// Wait for `child` up to `timeout`; SIGKILL it after that (`None`).
fn wait_bounded(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("poll child") {
            return Some(status);
        }
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A long-running doc command started in the background.
#[derive(Debug)]
struct Daemon {
    command: String,
    log: PathBuf,
    child: Option<Child>,
}

/// The commands of one procedure, consumed in the order written: a test takes each next
/// line by a piece of its text (so it notices when the doc changes), runs it or starts it,
/// and in between does what the prose says (start a node, kill one). [`Runbook::finish`]
/// fails if any line was left unrun.
#[derive(Debug)]
pub struct Runbook {
    lines: VecDeque<DocLine>,
    vars: Vars,
    daemons: BTreeMap<String, Daemon>,
    transcript: Vec<String>,
}

impl Runbook {
    /// The runnable lines among `lines` (skipped ones are the coverage test's business).
    pub fn new(lines: Vec<DocLine>, vars: Vars) -> Runbook {
        let lines = lines.into_iter().filter(DocLine::runs).collect();
        Runbook { lines, vars, daemons: BTreeMap::new(), transcript: Vec::new() }
    }

    pub fn vars(&self) -> &Vars {
        &self.vars
    }

    pub fn vars_mut(&mut self) -> &mut Vars {
        &mut self.vars
    }

    /// The next line, which must contain `expect`.
    pub fn take(&mut self, expect: &str) -> DocLine {
        let line =
            self.lines.pop_front().unwrap_or_else(|| panic!("the doc has no more commands; expected `{expect}`"));
        assert!(
            line.text.contains(expect),
            "{}: expected a command with `{expect}` next, the doc has `{}`",
            line.at(),
            line.text
        );
        line
    }

    /// Run `line` to completion.
    pub fn exec(&mut self, line: &DocLine) -> Ran {
        let command = self.vars.substitute(&line.text);
        let (code, stdout, stderr) = sh(&command, self.vars.dir(), &self.vars.env_for(&command));
        self.transcript.push(format!("{} exit {code:?}: {command}", line.at()));
        Ran { at: line.at(), command, code, stdout, stderr }
    }

    /// Run the next line (it must contain `expect`), whatever its exit status.
    pub fn run(&mut self, expect: &str) -> Ran {
        let line = self.take(expect);
        self.exec(&line)
    }

    /// Run the next line; it must exit 0.
    pub fn ok(&mut self, expect: &str) -> Ran {
        let ran = self.run(expect);
        assert!(ran.ok(), "a documented command failed:\n{ran}");
        ran
    }

    /// Run the next line again and again until `done` says its result is the one the doc
    /// waits for ("repeat `status` until …").
    pub async fn until(&mut self, expect: &str, timeout: Duration, done: impl Fn(&Ran) -> bool) -> Ran {
        let line = self.take(expect);
        self.exec_until(&line, timeout, done).await
    }

    pub async fn exec_until(&mut self, line: &DocLine, timeout: Duration, done: impl Fn(&Ran) -> bool) -> Ran {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let ran = self.exec(line);
            if done(&ran) {
                return ran;
            }
            assert!(tokio::time::Instant::now() < deadline, "not as the doc says within {timeout:?}; last:\n{ran}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Start the next line (it must contain `expect`) in the background as `name`.
    pub fn start(&mut self, expect: &str, name: &str) -> DocLine {
        let line = self.take(expect);
        self.spawn(name, &line);
        line
    }

    /// Start `line` in the background as `name` (its output goes to `<dir>/<name>.log`).
    pub fn spawn(&mut self, name: &str, line: &DocLine) {
        let command = self.vars.substitute(&line.text);
        let command = command.trim_end().trim_end_matches('&').trim_end().to_string();
        let log = self.vars.dir().join(format!("{name}.log"));
        self.transcript.push(format!("{} started as {name}: {command}", line.at()));
        let mut daemon = Daemon { command, log, child: None };
        self.launch(&mut daemon);
        assert!(self.daemons.insert(name.to_string(), daemon).is_none(), "{name} started twice");
    }

    fn launch(&self, daemon: &mut Daemon) {
        let log = File::options().create(true).append(true).open(&daemon.log).expect("open daemon log");
        let env = self.vars.env_for(&daemon.command);
        let child = shell(&format!("exec {}", daemon.command), self.vars.dir(), &env)
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start a doc command");
        daemon.child = Some(child);
    }

    /// What a supervisor's restart does: SIGTERM, wait for a clean exit, start the same command.
    pub fn restart(&mut self, name: &str) {
        let status = self.stop(name, "TERM");
        assert!(
            status.is_some_and(|s| s.success()),
            "{name} did not exit 0 on SIGTERM: {status:?}\n{}",
            self.log(name)
        );
        let mut daemon = self.daemons.remove(name).unwrap_or_else(|| panic!("no daemon {name}"));
        self.launch(&mut daemon);
        self.transcript.push(format!("restarted {name}"));
        self.daemons.insert(name.to_string(), daemon);
    }

    /// Send `signal` to `name` and wait (bounded) for it to exit; SIGKILL if it does not.
    pub fn stop(&mut self, name: &str, signal: &str) -> Option<ExitStatus> {
        let daemon = self.daemons.get_mut(name).unwrap_or_else(|| panic!("no daemon {name}"));
        let mut child = daemon.child.take().unwrap_or_else(|| panic!("{name} is not running"));
        let pid = child.id().to_string();
        let _ = Command::new("kill").args(["-s", signal, &pid]).status();
        wait_bounded(&mut child, Duration::from_secs(20))
    }

    pub fn log(&self, name: &str) -> String {
        self.daemons.get(name).map(|d| std::fs::read_to_string(&d.log).unwrap_or_default()).unwrap_or_default()
    }

    /// Every line of the procedure was run.
    pub fn finish(mut self) {
        println!("commands run:\n  {}", self.transcript.join("\n  "));
        let left: Vec<String> = self.lines.drain(..).map(|l| format!("{}: {}", l.at(), l.text)).collect();
        assert!(left.is_empty(), "documented commands this test did not run:\n  {}", left.join("\n  "));
    }
}

impl Drop for Runbook {
    fn drop(&mut self) {
        for daemon in self.daemons.values_mut() {
            if let Some(mut child) = daemon.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            eprintln!("--- commands run:\n  {}", self.transcript.join("\n  "));
            for (name, daemon) in &self.daemons {
                let log = std::fs::read_to_string(&daemon.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- {name} ({}), last lines:", daemon.log.display());
                for line in tail.iter().rev() {
                    eprintln!("{line}");
                }
            }
            let kept = std::mem::replace(&mut self.vars.dir, tempfile::tempdir().expect("temp dir")).keep();
            eprintln!("runbook dirs and logs kept in {}", kept.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: each doc line gets the identity its first `fenceflake` subcommand needs, however
    /// the binary is named and wherever it stands in the line.
    #[test]
    fn doc_lines_get_the_identity_of_their_subcommand() {
        let of = |line: &str| identity_for(line).map(|(role, name)| format!("{role}/{name}"));
        assert_eq!(of("fenceflake registry --node-id 3 --client-addr H3:2379").as_deref(), Some("node/3"));
        assert_eq!(of("$B registry --node-id=4 --data-dir /d").as_deref(), Some("node/4"));
        assert_eq!(of("fenceflake worker --registry H1:2379 &").as_deref(), Some("worker/runbook"));
        assert_eq!(of("\"$B\" ctl --registry x status").as_deref(), Some("operator/test"));
        let import = "fenceflake ctl --registry NEW1:2379 snapshot import \"$(ls -t /backups/* | head -1)\"";
        assert_eq!(of(import).as_deref(), Some("operator/test"));
        assert_eq!(of("/usr/bin/fenceflake mint --workers W1:7379 -n 3").as_deref(), Some("client/test"));
        assert_eq!(of("fenceflake decode 55082955571372039"), None);
        assert_eq!(of("curl -s W1:7380/metrics"), None);
    }
}
