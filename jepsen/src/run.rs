//! One harness run: build the namespaces, start 5 registry nodes and the workers as real
//! processes, start the workload in the client namespace, play the scenario's nemesis
//! schedule, heal, stop everything, then check the history and write the report.
//!
//! The controller itself stays in the root namespace and never opens a connection to a
//! test address: everything that talks to the cluster (`ctl`, the workload) runs inside the
//! client namespace through `ip netns exec`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

use crate::adversary;
use crate::checker::{availability, check_all, CheckConfig, CheckResult, Valid};
use crate::clock::{wall_ms, RunClock};
use crate::delay::{self, DelayQueue};
use crate::history::{self, Event, HistoryWriter, NemesisEvent, NemesisPhase, ProcessEvent, ProcessEventKind};
use crate::net::{Faults, Network};
use crate::process::{Managed, Spec};
use crate::report::Provenance;
use crate::scenario::{
    adversary_window, clone_count, schedule, steps_registry_clocks, Action, DelayBudget, End, LinkDelay, Scenario,
    Shape, Sizes, Step,
};
use crate::supervise::{Seen, Supervisor, RESTART_PAUSE};
use crate::tcp_trace::{TcpTrace, Traced};
use crate::tls::{CertDir, Transport, CONTROLLER, WORKLOAD_CLIENT, WORKLOAD_REGISTRY};
use crate::workload::WorkloadClient;

const REGISTRY_CLIENT_PORT: u16 = 2379;
const REGISTRY_PEER_PORT: u16 = 2380;
const WORKER_PORT: u16 = 7379;
/// Workers' lease: short, so pauses and outages longer than it fit in a 20–30 s run.
const WORKER_TTL: Duration = Duration::from_secs(3);
const WORKER_MARGIN: Duration = Duration::from_millis(500);
/// Between two delays applied in place, how long nothing is delayed: a round trip begun under
/// the old delays ends (its request released at the change, the registry's commit, its
/// answer) before the new ones start, so none goes one way under each.
const DELAY_CHANGE_PAUSE: Duration = Duration::from_millis(250);
/// How often the controller looks for workers that exited on their own.
const SUPERVISE_EVERY: Duration = Duration::from_millis(100);
/// The workers' log filter (`RUST_LOG`): their own debug lines (each registry node a call
/// failed or timed out on, and why) and their registry client's connection events (tonic's
/// reconnects and connect errors, hyper's connection errors, the HTTP/2 frames of the client
/// side only: a new connection starts with SETTINGS, each call is HEADERS/DATA out and in), so
/// a worker that parks leaves in its log where its renewals went and what became of them.
/// About ten lines per renewal; the worker's server side (the ID load) logs nothing more.
const WORKER_LOG: &str = "info,fenceflake_worker=debug,tonic=debug,hyper=debug,h2[Connection{peer=Client}]=debug";

/// Everything a run needs to know; printed as the command that reproduces it.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub scenario: &'static Scenario,
    pub time_limit: Duration,
    pub seed: u64,
    pub workers: usize,
    pub rate: u32,
    pub store: PathBuf,
    /// The `fenceflake` binary under test.
    pub fenceflake: PathBuf,
    /// This harness binary (re-executed as the workload inside the client namespace).
    pub harness: PathBuf,
    /// Self-test: run workers with their deadline check off; the run must then fail.
    pub unsafe_disable_deadline_check: bool,
    /// Self-test: registry nodes authorize nobody (the test binary's switch); the `adversary`
    /// scenario must then fail.
    pub unsafe_disable_authorization: bool,
    /// Self-test: workers state no incarnation (the test binary's switch), so copies of one
    /// state dir share one token; the `clone-state` scenario must then fail.
    pub unsafe_disable_incarnations: bool,
    /// Self-test: registry nodes' clock check always says "within" (the test binary's switch),
    /// so a fast leader keeps leading; the `registry-clock-skew` scenario must then fail.
    pub unsafe_disable_clock_check: bool,
    /// Plaintext everywhere (`--insecure` on every process) instead of mutual TLS.
    pub insecure: bool,
    /// How the ID workload calls the workers.
    pub workload_client: WorkloadClient,
    /// The `availability` check's minimum, enforced in balanced mode only.
    pub min_availability: f64,
}

/// `d` as a flag value `parse_duration` reads back: `30s`, else `1500ms`, else in µs.
fn duration_flag(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else if d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}us", d.as_micros())
    }
}

impl RunOptions {
    pub fn reproduce(&self) -> String {
        let mut cmd = format!(
            "fenceflake-jepsen test --scenario {} --time-limit {} --seed {} --workers {} --rate {}",
            self.scenario.name,
            duration_flag(self.time_limit),
            self.seed,
            self.workers,
            self.rate
        );
        if self.unsafe_disable_deadline_check {
            cmd.push_str(" --unsafe-disable-deadline-check");
        }
        if self.unsafe_disable_authorization {
            cmd.push_str(" --unsafe-disable-authorization");
        }
        if self.unsafe_disable_incarnations {
            cmd.push_str(" --unsafe-disable-incarnations");
        }
        if self.unsafe_disable_clock_check {
            cmd.push_str(" --unsafe-disable-clock-check");
        }
        if self.insecure {
            cmd.push_str(" --insecure");
        }
        if self.workload_client != WorkloadClient::Direct {
            let _ = write!(cmd, " --workload-client {}", self.workload_client.as_str());
            let _ = write!(cmd, " --min-availability {}", self.min_availability);
        }
        cmd
    }

    /// The checkers' settings: the availability minimum holds only for a workload that routes
    /// around a hung worker (the direct one waits it out by design).
    fn check_config(&self) -> CheckConfig {
        let min = (self.workload_client == WorkloadClient::Balanced).then_some(self.min_availability);
        let availability = availability::Config { min, ..availability::Config::default() };
        CheckConfig { availability, ..CheckConfig::default() }
    }
}

/// The outcome of one run.
#[derive(Debug)]
pub struct Outcome {
    pub dir: PathBuf,
    /// Every process ran with mutual TLS.
    pub tls: bool,
    pub valid: Valid,
    pub results: Vec<CheckResult>,
}

struct Cluster {
    /// The latency nemesis's packet holder, while a delay is in place. First, so that it is
    /// dropped (its held packets released, its thread out of the bridge namespace) before
    /// the network is torn down.
    delay: Option<DelayQueue>,
    /// The workers' TCP connections to the registry, sampled from the first delay on
    /// (`logs/tcp-<worker>.log`).
    tcp_trace: Option<TcpTrace>,
    network: Network,
    registries: Vec<Managed>,
    workers: Vec<Managed>,
    /// Extra processes a nemesis started (duplicate manifests).
    extras: Vec<Managed>,
    /// The standby worker of the pause scenario (listed in the workload from the start).
    standby: Option<Managed>,
    /// Workers started on copies of another worker's state dir (`clone-state`; listed in
    /// the workload from the start, each in its namespace `c1`, `c2`...).
    clones: Vec<Managed>,
    /// Restarts the workers, the standby and the clones when they exit on their own.
    supervisor: Supervisor,
    /// Worker IDs seen held by each worker before a pause or a cut (a standby may claim them
    /// later, when the worker no longer reports its ID).
    claimable_ids: BTreeMap<usize, u64>,
    /// Self-test: workers (the standby included) run without their deadline check.
    unsafe_deadline: bool,
    /// Self-test: registry nodes run with authorization off.
    unsafe_authorization: bool,
    /// Self-test: workers state no incarnation.
    unsafe_incarnations: bool,
    /// Self-test: registry nodes run with their clock check off.
    unsafe_clock_check: bool,
    /// Each worker's libfaketime offset file.
    clock_files: Vec<PathBuf>,
    /// Each registry node's, when the scenario steps registry clocks (else empty).
    registry_clock_files: Vec<PathBuf>,
    dir: PathBuf,
    fenceflake: PathBuf,
    /// Mutual TLS (this run's certificates) or plaintext, for every process.
    transport: Transport,
    nemesis: HistoryWriter,
    clock: RunClock,
    /// Faults currently applied to the network (healed together).
    faults: Faults,
    /// Names of the faults started and not yet stopped.
    active: BTreeSet<String>,
    extra_results: Vec<CheckResult>,
}

fn ip_of(managed: &Managed) -> Ipv4Addr {
    managed.spec.host.ip
}

pub fn run(options: &RunOptions) -> anyhow::Result<Outcome> {
    let stamp = wall_ms();
    let dir = options.store.join(options.scenario.name).join(stamp.to_string());
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("create {}", dir.display()))?;
    std::fs::write(dir.join("command.txt"), format!("{}\n", options.reproduce()))?;
    let sizes = Sizes { registries: 5, workers: options.workers, ttl: WORKER_TTL, margin: WORKER_MARGIN };
    let steps = schedule(options.scenario, sizes, options.time_limit, options.seed);
    std::fs::write(dir.join("schedule.json"), serde_json::to_string_pretty(&steps)?)?;
    println!("run {} → {}", options.reproduce(), dir.display());

    let mut names: Vec<String> = (1..=5).map(|i| format!("n{i}")).collect();
    names.extend((1..=options.workers).map(|i| format!("w{i}")));
    names.extend((1..=clone_count(&steps)).map(|i| format!("c{i}")));
    names.push("client".into());
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let run_id = u8::try_from(std::process::id() % 200 + 20).unwrap_or(20);
    let network = Network::create(run_id, &name_refs).context("create the test network (are you root?)")?;
    let transport = transport(options, &dir, adversary_window(&steps, options.time_limit).is_some())?;
    let clock = RunClock::start();
    let mut cluster = Cluster {
        delay: None,
        tcp_trace: None,
        network,
        registries: Vec::new(),
        workers: Vec::new(),
        extras: Vec::new(),
        standby: None,
        clones: Vec::new(),
        supervisor: Supervisor::new(RESTART_PAUSE),
        claimable_ids: BTreeMap::new(),
        unsafe_deadline: options.unsafe_disable_deadline_check,
        unsafe_authorization: options.unsafe_disable_authorization,
        unsafe_incarnations: options.unsafe_disable_incarnations,
        unsafe_clock_check: options.unsafe_disable_clock_check,
        clock_files: Vec::new(),
        registry_clock_files: Vec::new(),
        nemesis: HistoryWriter::open(&dir.join("nemesis.jsonl"))?,
        dir: dir.clone(),
        fenceflake: options.fenceflake.clone(),
        transport,
        clock,
        faults: Faults::default(),
        active: BTreeSet::new(),
        extra_results: Vec::new(),
    };
    let result = cluster.drive(options, &steps);
    cluster.stop_all();
    let controller_checks = std::mem::take(&mut cluster.extra_results);
    drop(cluster);
    result?;

    let mut events = history::load(&dir.join("workload.jsonl")).unwrap_or_default();
    events.extend(history::load(&dir.join("nemesis.jsonl"))?);
    events.sort_by_key(Event::time_ns);
    let mut merged = HistoryWriter::open(&dir.join("history.jsonl"))?;
    for event in &events {
        merged.append(event)?;
    }
    merged.flush()?;
    let mut analysis = check_all(&events, &options.check_config());
    // Controller-side verdicts (e.g. the duplicate manifest was refused) join the checkers'.
    analysis.results.extend(controller_checks);
    let tls = !options.insecure;
    crate::report::write(&dir, &events, &analysis, &Provenance { reproduce: options.reproduce(), tls: Some(tls) })?;
    Ok(Outcome { dir, tls, valid: analysis.valid(), results: analysis.results })
}

/// The run's transport: plaintext, or a new CA in `<dir>/certs` with the certificates every
/// process of the run starts with issued up front (the standby's and a duplicate claimant's
/// are issued when they start). Issued in parallel: about a second in all. With an
/// `adversary`, also its own `worker` certificate and another CA (same trust domain) in
/// `certs/foreign-ca` with a `worker/adversary` certificate of its own.
fn transport(options: &RunOptions, dir: &std::path::Path, adversary: bool) -> anyhow::Result<Transport> {
    if options.insecure {
        return Ok(Transport::Insecure);
    }
    let certs = CertDir::init(&options.fenceflake, dir.join("certs"))
        .context("make the run's CA (`fenceflake certs init`); --insecure runs plaintext")?;
    let mut identities: Vec<(&str, String)> = (1..=5).map(|i| ("node", i.to_string())).collect();
    identities.extend((1..=options.workers).map(|i| ("worker", format!("w{i}"))));
    identities.extend([WORKLOAD_CLIENT, WORKLOAD_REGISTRY, CONTROLLER].map(|(role, name)| (role, name.to_string())));
    if adversary {
        identities.push((adversary::IDENTITY.0, adversary::IDENTITY.1.to_string()));
        let foreign = CertDir::init(&options.fenceflake, certs.dir().join(adversary::FOREIGN_CA_DIR))
            .context("make the adversary's foreign CA")?;
        foreign.issue(adversary::IDENTITY)?;
    }
    std::thread::scope(|scope| {
        let issuing: Vec<_> = identities
            .chunks(identities.len().div_ceil(4))
            .map(|chunk| {
                let certs = &certs;
                scope.spawn(move || chunk.iter().try_for_each(|(role, name)| certs.issue((role, name)).map(drop)))
            })
            .collect();
        issuing.into_iter().try_for_each(|t| t.join().unwrap_or_else(|_| bail!("a certificate thread panicked")))
    })?;
    Ok(Transport::Tls(certs))
}

impl Cluster {
    fn drive(&mut self, options: &RunOptions, steps: &[Step]) -> anyhow::Result<()> {
        self.start_registries(steps_registry_clocks(steps))?;
        self.wait_leader(Duration::from_secs(20))?;
        let clock_faults = steps.iter().any(|s| matches!(s.action, Action::ClockStep { .. }));
        self.start_workers(options, clock_faults)?;
        self.wait_workers_serving(Duration::from_secs(20))?;
        let mut workload = self.start_workload(options, steps)?;
        let mut rng = StdRng::seed_from_u64(options.seed ^ 0x5eed);
        for step in steps {
            self.sleep_until(step.at);
            if let Err(e) = self.apply(&step.action, &mut rng) {
                println!("  nemesis {:?} failed: {e:#}", step.action);
            }
        }
        self.sleep_until(options.time_limit * 8 / 10);
        self.heal_everything()?;
        let deadline = std::time::Instant::now() + options.time_limit + Duration::from_secs(30);
        while workload.is_running() {
            if std::time::Instant::now() > deadline {
                workload.kill();
                bail!("the workload did not finish in time");
            }
            self.supervise();
            std::thread::sleep(SUPERVISE_EVERY);
        }
        Ok(())
    }

    /// Sleep until `offset` into the run, supervising the workers meanwhile.
    fn sleep_until(&mut self, offset: Duration) {
        let target = offset.as_nanos() as u64;
        loop {
            self.supervise();
            let now = self.clock.now_ns();
            if now >= target {
                return;
            }
            std::thread::sleep(Duration::from_nanos(target - now).min(SUPERVISE_EVERY));
        }
    }

    /// Wait `d`, supervising the workers meanwhile (a nemesis that waits for something).
    fn wait(&mut self, d: Duration) {
        self.sleep_until(Duration::from_nanos(self.clock.now_ns()) + d);
    }

    /// Restart-always: record the workers that exited on their own, restart those due.
    fn supervise(&mut self) {
        let processes = self.workers.iter_mut().chain(self.standby.as_mut()).chain(self.clones.iter_mut());
        for seen in self.supervisor.poll(processes, std::time::Instant::now()) {
            let Seen { process, event, code } = seen;
            self.record_process(ProcessEvent {
                process,
                event,
                code,
                copy_of: None,
                cause: None,
                time_ns: self.clock.now_ns(),
                wall_ms: wall_ms(),
            });
        }
    }

    fn record_process(&mut self, event: ProcessEvent) {
        let detail = match (event.event, event.code, &event.copy_of) {
            (ProcessEventKind::Exited, Some(code), _) => format!("exit code {code}"),
            (ProcessEventKind::Exited, None, _) => "ended by a signal".to_string(),
            (ProcessEventKind::Cloned, _, Some(source)) => format!("on a copy of {source}'s state dir"),
            _ => String::new(),
        };
        println!("  {:>6} ms  process {} {:?} {detail}", event.time_ns / 1_000_000, event.process, event.event);
        if let Err(e) = self.nemesis.append(&Event::Process(event)).and_then(|()| self.nemesis.flush()) {
            println!("  cannot record the process event: {e}");
        }
    }

    fn spec(&self, name: &str, args: Vec<String>, env: Vec<(String, String)>) -> anyhow::Result<Spec> {
        let host = self.network.host(name).with_context(|| format!("no host {name}"))?.clone();
        Ok(Spec {
            name: name.to_string(),
            host,
            program: self.fenceflake.clone(),
            args,
            env,
            log: self.dir.join("logs").join(format!("{name}.log")),
        })
    }

    fn registry_client_addrs(&self) -> Vec<String> {
        (1..=5)
            .filter_map(|i| self.network.host(&format!("n{i}")))
            .map(|h| format!("{}:{REGISTRY_CLIENT_PORT}", h.ip))
            .collect()
    }

    /// Start the five registry nodes; under libfaketime, each with an offset file, if the
    /// scenario steps their clocks (a running process cannot be put under it later).
    fn start_registries(&mut self, clock_faults: bool) -> anyhow::Result<()> {
        let faketime = if clock_faults {
            Some(crate::faketime_library().context("this scenario needs libfaketime (apt-get install libfaketime)")?)
        } else {
            None
        };
        let initial: Vec<String> = (1..=5)
            .filter_map(|i| self.network.host(&format!("n{i}")).map(|h| (i, h.ip)))
            .map(|(i, ip)| format!("{i}={ip}:{REGISTRY_PEER_PORT}/{ip}:{REGISTRY_CLIENT_PORT}"))
            .collect();
        for i in 1..=5 {
            let name = format!("n{i}");
            let ip = self.network.host(&name).context("registry host")?.ip;
            let mut args = vec![
                "registry".into(),
                "--node-id".into(),
                i.to_string(),
                "--client-addr".into(),
                format!("{ip}:{REGISTRY_CLIENT_PORT}"),
                "--peer-addr".into(),
                format!("{ip}:{REGISTRY_PEER_PORT}"),
                "--data-dir".into(),
                self.dir.join("data").join(&name).display().to_string(),
                "--initial-cluster".into(),
                initial.join(","),
                // Stated, not left to the default: the registry-clock checker bounds every
                // `mint_until` by it.
                "--renew-window".into(),
                format!("{}ms", crate::checker::registry_clock::REGISTRY_RENEW_WINDOW_MS),
            ];
            if self.unsafe_clock_check {
                args.push("--unsafe-disable-clock-check".into());
            }
            let mut env = vec![("RUST_LOG".to_string(), "info,openraft=warn".to_string())];
            env.extend(self.transport.env(("node", &i.to_string()))?);
            if self.unsafe_authorization {
                env.push((crate::process::UNSAFE_DISABLE_AUTHORIZATION.to_string(), "1".to_string()));
            }
            if let Some(lib) = &faketime {
                let clock_file = self.dir.join(format!("clock-{name}"));
                crate::clock::write_offset(&clock_file, 0)?;
                env.extend(crate::clock::faketime_env(lib, &clock_file));
                self.registry_clock_files.push(clock_file);
            }
            let mut managed = Managed::new(self.spec(&name, args, env)?);
            managed.start()?;
            self.registries.push(managed);
        }
        Ok(())
    }

    fn start_workers(&mut self, options: &RunOptions, clock_faults: bool) -> anyhow::Result<()> {
        let faketime = crate::faketime_library();
        if clock_faults && faketime.is_none() {
            bail!("this scenario needs libfaketime (apt-get install libfaketime)");
        }
        for i in 1..=options.workers {
            let name = format!("w{i}");
            let ip = self.network.host(&name).context("worker host")?.ip;
            let clock_file = self.dir.join(format!("clock-{name}"));
            crate::clock::write_offset(&clock_file, 0)?;
            let mut args = self.worker_args(&name, &self.state_dir(&name), &format!("{ip}:{WORKER_PORT}"), None);
            args.extend(["--log-format".into(), "json".into()]);
            let mut env = vec![("RUST_LOG".to_string(), WORKER_LOG.to_string())];
            env.extend(self.transport.env(("worker", &name))?);
            if let (true, Some(lib)) = (clock_faults, &faketime) {
                env.extend(crate::clock::faketime_env(lib, &clock_file));
            }
            let mut managed = Managed::new(self.spec(&name, args, env)?);
            managed.start()?;
            self.workers.push(managed);
            self.clock_files.push(clock_file);
        }
        Ok(())
    }

    fn start_workload(&mut self, options: &RunOptions, steps: &[Step]) -> anyhow::Result<Managed> {
        let mut workers: Vec<String> =
            self.workers.iter().map(|w| format!("{}={}:{WORKER_PORT}", w.spec.name, ip_of(w))).collect();
        for step in steps {
            if let Action::ClaimId { worker } = step.action {
                workers.push(format!("standby={}:{}", ip_of(&self.workers[worker]), WORKER_PORT + 1));
            }
        }
        for i in 1..=clone_count(steps) {
            let name = format!("c{i}");
            let ip = self.network.host(&name).with_context(|| format!("no host {name}"))?.ip;
            workers.push(format!("{name}={ip}:{WORKER_PORT}"));
        }
        let mut args = vec![
            "workload".into(),
            "--workers".into(),
            workers.join(","),
            "--registry".into(),
            self.registry_client_addrs().join(","),
            "--rate".into(),
            options.rate.to_string(),
            "--duration-ms".into(),
            (options.time_limit.as_millis() as u64).saturating_sub(self.clock.now_ns() / 1_000_000).to_string(),
            "--seed".into(),
            options.seed.to_string(),
            "--origin-ns".into(),
            self.clock.origin_ns.to_string(),
            "--history".into(),
            self.dir.join("workload.jsonl").display().to_string(),
        ];
        args.extend(self.transport.workload_args());
        args.extend(["--client".into(), options.workload_client.as_str().into()]);
        if let Some((start, stop)) = adversary_window(steps, options.time_limit) {
            args.push("--adversary".into());
            args.push(format!("{}:{}", start.as_millis(), stop.as_millis()));
        }
        for step in steps {
            if let Action::Burst { worker, ids_per_call, calls } = step.action {
                args.push("--burst".into());
                args.push(format!("{worker}:{}:{ids_per_call}:{calls}", step.at.as_millis()));
            }
        }
        let host = self.network.host("client").context("client host")?.clone();
        let spec = Spec {
            name: "workload".into(),
            host,
            program: options.harness.clone(),
            args,
            env: vec![("RUST_LOG".into(), "warn".into())],
            log: self.dir.join("logs").join("workload.log"),
        };
        let mut workload = Managed::new(spec);
        workload.start()?;
        Ok(workload)
    }

    /// `fenceflake ctl ... --json` from inside the client namespace.
    fn ctl(&self, args: &[&str]) -> anyhow::Result<serde_json::Value> {
        let client = self.network.host("client").context("client host")?;
        let registry = self.registry_client_addrs().join(",");
        let fenceflake = self.fenceflake.display().to_string();
        let mut all =
            vec!["netns", "exec", &client.netns, &fenceflake, "ctl", "--registry", &registry, "--timeout", "2s"];
        all.extend_from_slice(args);
        all.push("--json");
        let out = crate::net::run_env("ip", &all, &self.transport.env(CONTROLLER)?)?;
        Ok(serde_json::from_str(&out)?)
    }

    fn leader_index(&self) -> Option<usize> {
        let status = self.ctl(&["status"]).ok()?;
        let leader = status["leader_id"].as_u64()?;
        (leader > 0).then(|| leader as usize - 1)
    }

    fn wait_leader(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if self.leader_index().is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("no registry leader within {timeout:?}; see {}", self.dir.join("logs").display())
    }

    fn worker_ids(&self) -> BTreeMap<String, u64> {
        let mut ids = BTreeMap::new();
        if let Ok(serde_json::Value::Array(leases)) = self.ctl(&["leases"]) {
            for lease in leases {
                let holder = lease["holder"].as_str().unwrap_or("");
                if let (Some(name), Some(id)) = (holder.split('/').next(), lease["worker_id"].as_u64()) {
                    if lease["state"] == "HELD" {
                        ids.insert(name.to_string(), id);
                    }
                }
            }
        }
        ids
    }

    fn wait_workers_serving(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let ids = self.worker_ids();
            if self.workers.iter().all(|w| ids.contains_key(&w.spec.name)) {
                // Leave the boot wait (past not_before / the ceiling) behind.
                std::thread::sleep(Duration::from_millis(500));
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        bail!("workers did not all get a lease within {timeout:?}; see {}", self.dir.join("logs").display())
    }

    fn record(&mut self, phase: NemesisPhase, name: &str, detail: String) {
        self.record_at(self.clock.now_ns(), phase, name, detail);
    }

    /// [`Cluster::record`] of something that happened at `time_ns` (earlier than now).
    fn record_at(&mut self, time_ns: u64, phase: NemesisPhase, name: &str, detail: String) {
        println!("  {:>6} ms  nemesis {:?} {name} {detail}", time_ns / 1_000_000, phase);
        let event = NemesisEvent { phase, name: name.to_string(), time_ns, wall_ms: wall_ms(), detail };
        if let Err(e) = self.nemesis.append(&Event::Nemesis(event)).and_then(|()| self.nemesis.flush()) {
            println!("  cannot record the nemesis event: {e}");
        }
        match phase {
            NemesisPhase::Start => {
                self.active.insert(name.to_string());
            }
            NemesisPhase::Stop => {
                self.active.remove(name);
            }
        }
    }

    fn stop_active(&mut self, prefix: &str) {
        let names: Vec<String> = self.active.iter().filter(|n| n.starts_with(prefix)).cloned().collect();
        for name in names {
            self.record(NemesisPhase::Stop, &name, String::new());
        }
    }

    fn registry_ips(&self) -> Vec<Ipv4Addr> {
        self.registries.iter().map(ip_of).collect()
    }

    fn worker_ips(&self) -> Vec<Ipv4Addr> {
        self.workers.iter().map(ip_of).collect()
    }

    fn apply(&mut self, action: &Action, rng: &mut StdRng) -> anyhow::Result<()> {
        match action {
            Action::Partition(shape) => self.partition(shape, rng),
            Action::Delay { budget, links } => self.delay(*budget, links, rng.gen()),
            Action::Loss(percent) => self.packet_loss(*percent),
            Action::Heal => self.heal(),
            Action::KillRegistry { node } => {
                self.registries[*node].kill();
                self.record(NemesisPhase::Start, &format!("kill-n{}", node + 1), "SIGKILL".into());
                Ok(())
            }
            Action::KillLeader => {
                let leader = self.leader_index().context("no leader to kill")?;
                self.registries[leader].kill();
                self.record(NemesisPhase::Start, &format!("kill-n{}", leader + 1), "SIGKILL of the leader".into());
                Ok(())
            }
            Action::RestartRegistries => self.restart_registries(),
            Action::KillWorker { worker, wipe_state } => self.kill_worker(*worker, *wipe_state),
            Action::RestartWorkers => {
                for i in 0..self.workers.len() {
                    if !self.workers[i].is_running() {
                        self.workers[i].start()?;
                    }
                }
                Ok(())
            }
            Action::Pause { worker } => {
                self.note_claimable(*worker);
                self.workers[*worker].pause()?;
                let name = format!("pause-{}", self.workers[*worker].spec.name);
                self.record(NemesisPhase::Start, &name, "SIGSTOP".into());
                Ok(())
            }
            Action::ResumeAll => self.resume_all(),
            Action::ClockStep { worker, offset_ms } => self.clock_step(*worker, *offset_ms),
            Action::RegistryClockStep { offset_ms } => self.registry_clock_step(*offset_ms),
            Action::ClockReset => {
                for file in self.clock_files.iter().chain(&self.registry_clock_files) {
                    crate::clock::write_offset(file, 0)?;
                }
                self.stop_active("clock-");
                self.stop_active("registry-clock-");
                Ok(())
            }
            Action::DuplicateManifest { worker } => self.duplicate_manifest(*worker),
            Action::CloneState { worker, copies } => self.clone_state(*worker, *copies),
            Action::ClaimId { worker } => self.claim_id(*worker),
            // Bursts run inside the workload (it was told at start).
            Action::Burst { worker, ids_per_call, calls } => {
                let name = format!("burst-w{}", worker + 1);
                self.record(NemesisPhase::Start, &name, format!("{calls} calls of {ids_per_call} IDs"));
                Ok(())
            }
            // The adversary runs inside the workload too; the controller marks its window.
            Action::Adversary => {
                let who = format!("{}/{}", adversary::IDENTITY.0, adversary::IDENTITY.1);
                self.record(
                    NemesisPhase::Start,
                    "adversary",
                    format!("{who} forges lease, operator and plaintext calls"),
                );
                Ok(())
            }
            Action::AdversaryStop => {
                self.stop_active("adversary");
                Ok(())
            }
        }
    }

    /// Drop `percent` of the packets between every pair of hosts.
    fn packet_loss(&mut self, percent: u8) -> anyhow::Result<()> {
        let all: Vec<Ipv4Addr> = self.registry_ips().into_iter().chain(self.worker_ips()).collect();
        for a in &all {
            for b in &all {
                if a != b {
                    self.faults.lossy.insert((*a, *b));
                }
            }
        }
        self.ensure_no_delay_held("packet loss")?;
        self.faults.loss_percent = percent;
        self.network.apply(&self.faults)?;
        self.record(NemesisPhase::Start, "packet-loss", format!("{percent}%"));
        Ok(())
    }

    /// Replacing the fault table unregisters a netfilter hook of the bridge namespace, and the
    /// kernel then drops every packet a delay thread holds: no scenario combines the two, and
    /// one that did would have to lift the delays first (`crate::delay`).
    fn ensure_no_delay_held(&self, what: &str) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.delay.is_none(),
            "{what} while a delay holds packets would drop them; heal the delay first"
        );
        Ok(())
    }

    /// Lift every network fault: the delays first, since replacing the fault table while a
    /// delay thread holds packets would make the kernel drop every one of them.
    fn heal(&mut self) -> anyhow::Result<()> {
        // The rest of the heal goes on if the delays could not be lifted cleanly (the thread
        // is gone either way), and the error is reported after it.
        let lifted = self.lift_delays();
        self.faults = Faults::default();
        self.network.apply(&self.faults)?;
        self.stop_active("partition");
        self.stop_active("packet-loss");
        self.stop_active("quorum-loss");
        lifted
    }

    /// The address of one end of a delayed link.
    fn end_ip(&self, end: End) -> anyhow::Result<Ipv4Addr> {
        let managed = match end {
            End::Registry(i) => self.registries.get(i),
            End::Worker(i) => self.workers.get(i),
        };
        managed.map(ip_of).with_context(|| format!("no host for {end:?}"))
    }

    /// Hold the packets of `links` (replacing any delay in place), its jitter seeded from the
    /// run's nemesis RNG. If the rules in place already send every direction of `links` to the
    /// running thread (as `latency`'s one-way window after its both-ways one), the thread ends
    /// the old delays (releasing what it holds), lets everything through for
    /// [`DELAY_CHANGE_PAUSE`] and takes the new ones, without leaving the queue: nothing dropped.
    /// Otherwise the old delay is lifted, then the thread is started (its queue bound and
    /// configured) before the rules that send it packets (see `crate::delay` for why).
    fn delay(&mut self, budget: DelayBudget, links: &[LinkDelay], seed: u64) -> anyhow::Result<()> {
        let held = links
            .iter()
            .map(|l| {
                Ok(delay::Link {
                    from: self.end_ip(l.from)?,
                    to: self.end_ip(l.to)?,
                    delay: Duration::from_millis(l.delay_ms),
                    jitter: Duration::from_millis(l.jitter_ms),
                })
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        if self.delay.as_ref().is_some_and(|q| q.covers(&held)) {
            // The old delays end as the held packets go; then a pause without delay, so that
            // no round trip goes one way under the old delays and back under the new ones
            // (up to TTL/8 + TTL/4 from both-ways to one-way: over the budget, and over a
            // worker's registry attempt).
            let at = self.clock.now_ns();
            let stats = self.delay.as_ref().map(DelayQueue::pause).transpose();
            let detail = match &stats {
                Ok(Some(stats)) => stats.to_string(),
                Ok(None) => String::new(),
                Err(e) => format!("the delay thread failed: {e}"),
            };
            let names: Vec<String> = self.active.iter().filter(|n| n.starts_with("latency-")).cloned().collect();
            for name in names {
                self.record_at(at, NemesisPhase::Stop, &name, detail.clone());
            }
            stats?;
            self.wait(DELAY_CHANGE_PAUSE);
            if let Some(queue) = self.delay.as_ref() {
                queue.retarget(&held, seed)?;
            }
            self.record(NemesisPhase::Start, budget.nemesis_name(), describe_delays(links));
            return Ok(());
        }
        self.lift_delays()?;
        self.trace_tcp();
        let trace = delay::PacketTrace {
            file: self.dir.join("logs").join("delay-packets.log"),
            origin_ns: self.clock.origin_ns,
            hosts: self.worker_ips().into_iter().collect(),
        };
        let queue = DelayQueue::start(self.network.bridge_ns(), &held, seed, Some(trace))?;
        if let Err(e) = self.network.apply_delays(&held) {
            let _ = queue.stop();
            let _ = self.network.apply_delays(&[]);
            return Err(e.into());
        }
        self.delay = Some(queue);
        self.record(NemesisPhase::Start, budget.nemesis_name(), describe_delays(links));
        Ok(())
    }

    /// Start sampling the workers' TCP connections to the registry, once (it runs until the
    /// processes stop); a trace that cannot start is said, never fatal.
    fn trace_tcp(&mut self) {
        if self.tcp_trace.is_some() {
            return;
        }
        let workers = self
            .workers
            .iter()
            .map(|w| Traced { name: w.spec.name.clone(), netns: w.spec.host.netns.clone() })
            .collect();
        match TcpTrace::start(workers, REGISTRY_CLIENT_PORT, self.dir.join("logs"), self.clock) {
            Ok(trace) => self.tcp_trace = Some(trace),
            Err(e) => println!("  cannot trace the workers' TCP connections: {e}"),
        }
    }

    /// Release every held packet and stop the thread, then remove the rules (in this order:
    /// replacing the table drops what is still queued; meanwhile the rules bypass).
    fn lift_delays(&mut self) -> anyhow::Result<()> {
        let Some(queue) = self.delay.take() else { return Ok(()) };
        // The fault ends as the held packets go (a worker may resume at once), not once the
        // rules are gone.
        let released_ns = self.clock.now_ns();
        let stats = queue.stop();
        let removed = self.network.apply_delays(&[]);
        let detail = match &stats {
            Ok(stats) => stats.to_string(),
            Err(e) => format!("the delay thread failed: {e}"),
        };
        let names: Vec<String> = self.active.iter().filter(|n| n.starts_with("latency-")).cloned().collect();
        for name in names {
            self.record_at(released_ns, NemesisPhase::Stop, &name, detail.clone());
        }
        removed?;
        stats?;
        Ok(())
    }

    fn restart_registries(&mut self) -> anyhow::Result<()> {
        for i in 0..self.registries.len() {
            if !self.registries[i].is_running() {
                self.registries[i].start()?;
                self.record(NemesisPhase::Stop, &format!("kill-n{}", i + 1), "restarted".into());
            }
        }
        Ok(())
    }

    /// SIGKILL a worker (wiping its state dir if asked) and restart it at once: the
    /// hot-millisecond replay case.
    fn kill_worker(&mut self, worker: usize, wipe_state: bool) -> anyhow::Result<()> {
        self.workers[worker].kill();
        let name = self.workers[worker].spec.name.clone();
        if wipe_state {
            let _ = std::fs::remove_dir_all(self.dir.join("data").join(&name));
        }
        let detail = if wipe_state { "SIGKILL, state dir wiped" } else { "SIGKILL" };
        self.record(NemesisPhase::Start, &format!("kill-{name}"), detail.into());
        self.workers[worker].start()?;
        self.record(NemesisPhase::Stop, &format!("kill-{name}"), "restarted".into());
        Ok(())
    }

    fn resume_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.workers.len() {
            if self.workers[i].paused {
                self.workers[i].resume()?;
                let name = format!("pause-{}", self.workers[i].spec.name);
                self.record(NemesisPhase::Stop, &name, "SIGCONT".into());
            }
        }
        Ok(())
    }

    /// Move the leading registry node's wall clock by `offset_ms` (libfaketime reads the file).
    fn registry_clock_step(&mut self, offset_ms: i64) -> anyhow::Result<()> {
        let leader = self.leader_index().context("no leader whose clock to step")?;
        let file = self.registry_clock_files.get(leader).context("registry nodes run without libfaketime")?;
        crate::clock::write_offset(file, offset_ms)?;
        let name = format!("registry-clock-n{}", leader + 1);
        self.record(NemesisPhase::Start, &name, format!("the leader's wall clock offset {offset_ms:+} ms"));
        Ok(())
    }

    /// Move a worker's wall clock by `offset_ms` (libfaketime reads the file).
    fn clock_step(&mut self, worker: usize, offset_ms: i64) -> anyhow::Result<()> {
        crate::clock::write_offset(&self.clock_files[worker], offset_ms)?;
        let name = format!("clock-{}", self.workers[worker].spec.name);
        self.record(NemesisPhase::Start, &name, format!("wall clock offset {offset_ms:+} ms"));
        Ok(())
    }

    fn partition(&mut self, shape: &Shape, rng: &mut StdRng) -> anyhow::Result<()> {
        let regs = self.registry_ips();
        let workers = self.worker_ips();
        let mut faults = Faults::default();
        let name = match shape {
            Shape::Halves => {
                let mut order = regs.clone();
                order.shuffle(rng);
                let (minority, majority) = order.split_at(2);
                faults.cut_between(minority, majority);
                faults.cut_between(minority, &workers);
                format!("partition-halves {minority:?} | {majority:?}")
            }
            Shape::MajoritiesRing => {
                for i in 0..regs.len() {
                    let far = (i + 2) % regs.len();
                    faults.cut_between(&[regs[i]], &[regs[far]]);
                }
                "partition-ring".into()
            }
            Shape::IsolateLeader => {
                let leader = self.leader_index().context("no leader to isolate")?;
                let others: Vec<Ipv4Addr> =
                    regs.iter().chain(&workers).copied().filter(|ip| *ip != regs[leader]).collect();
                faults.cut_between(&[regs[leader]], &others);
                format!("partition-leader n{}", leader + 1)
            }
            Shape::Bridge => {
                let mut order = regs.clone();
                order.shuffle(rng);
                faults.cut_between(&order[..2], &order[3..]);
                format!("partition-bridge via {}", order[2])
            }
            Shape::WorkerCut { worker } => {
                self.note_claimable(*worker);
                faults.cut_between(&[workers[*worker]], &regs);
                format!("partition-worker w{}", worker + 1)
            }
            Shape::QuorumLoss => {
                let groups = [&regs[..2], &regs[2..4], &regs[4..]];
                for (i, a) in groups.iter().enumerate() {
                    for b in &groups[i + 1..] {
                        faults.cut_between(a, b);
                    }
                }
                "quorum-loss".into()
            }
        };
        faults.lossy = self.faults.lossy.clone();
        faults.loss_percent = self.faults.loss_percent;
        self.ensure_no_delay_held("a partition")?;
        self.network.apply(&faults)?;
        self.faults = faults;
        let (label, detail) = name.split_once(' ').map_or((name.as_str(), ""), |(l, d)| (l, d));
        let label = label.to_string();
        self.record(NemesisPhase::Start, &label, detail.to_string());
        Ok(())
    }

    /// The state dir of the process named `name`.
    fn state_dir(&self, name: &str) -> PathBuf {
        self.dir.join("data").join(name)
    }

    /// Arguments of a `fenceflake worker` named `hostname` on `state_dir` listening on
    /// `listen`, with an explicit worker ID or `auto`.
    fn worker_args(
        &self,
        hostname: &str,
        state_dir: &std::path::Path,
        listen: &str,
        worker_id: Option<u64>,
    ) -> Vec<String> {
        let mut args: Vec<String> = vec![
            "worker".into(),
            "--registry".into(),
            self.registry_client_addrs().join(","),
            "--listen".into(),
            listen.into(),
            "--state-dir".into(),
            state_dir.display().to_string(),
            "--hostname".into(),
            hostname.into(),
            "--lease-ttl".into(),
            format!("{}ms", WORKER_TTL.as_millis()),
            "--margin".into(),
            duration_flag(WORKER_MARGIN),
        ];
        if let Some(id) = worker_id {
            args.extend(["--worker-id".into(), id.to_string()]);
        }
        if self.unsafe_deadline {
            args.push("--unsafe-disable-deadline-check".into());
        }
        if self.unsafe_incarnations {
            args.push("--unsafe-disable-incarnations".into());
        }
        args
    }

    /// Start the standby worker with the paused worker's ID; until the registry re-grants
    /// the ID it exits (ALREADY_EXISTS), so retry for up to two TTLs.
    /// Remember the worker ID `worker` holds now, for a later [`Action::ClaimId`].
    fn note_claimable(&mut self, worker: usize) {
        if let Some(id) = self.worker_ids().get(&self.workers[worker].spec.name) {
            self.claimable_ids.insert(worker, *id);
        }
    }

    fn claim_id(&mut self, worker: usize) -> anyhow::Result<()> {
        let name = self.workers[worker].spec.name.clone();
        let id = *self.claimable_ids.get(&worker).context("no worker ID was recorded for the worker to claim from")?;
        let ip = ip_of(&self.workers[worker]);
        let args =
            self.worker_args("standby", &self.state_dir("standby"), &format!("{ip}:{}", WORKER_PORT + 1), Some(id));
        let mut env = vec![("RUST_LOG".to_string(), WORKER_LOG.to_string())];
        env.extend(self.transport.env(("worker", "standby"))?);
        let mut spec = self.spec(&name, args, env)?;
        spec.name = "standby".into();
        spec.log = self.dir.join("logs").join("standby.log");
        let mut standby = Managed::new(spec);
        let deadline = std::time::Instant::now() + WORKER_TTL * 2;
        loop {
            standby.start()?;
            self.wait(Duration::from_millis(700));
            if standby.is_running() {
                break;
            }
            anyhow::ensure!(std::time::Instant::now() < deadline, "the standby never got worker ID {id}");
        }
        self.record(NemesisPhase::Start, "standby", format!("standby worker claimed worker ID {id}"));
        self.standby = Some(standby);
        Ok(())
    }

    /// `cp -a` the running `worker`'s state dir to `copies` new state dirs (the lock file comes
    /// along, the lock does not: a cloned VM or volume), then start a worker on each copy at
    /// once, in the next clone namespaces, with `worker`'s flags and certificate identity.
    fn clone_state(&mut self, worker: usize, copies: usize) -> anyhow::Result<()> {
        let source = self.workers[worker].spec.name.clone();
        let mut specs = Vec::new();
        for _ in 0..copies {
            let name = format!("c{}", self.clones.len() + specs.len() + 1);
            let copy = self.state_dir(&name);
            crate::net::run(
                "cp",
                &["-a", &self.state_dir(&source).display().to_string(), &copy.display().to_string()],
            )?;
            let ip = self.network.host(&name).with_context(|| format!("no host {name}"))?.ip;
            let mut args = self.worker_args(&source, &copy, &format!("{ip}:{WORKER_PORT}"), None);
            args.extend(["--log-format".into(), "json".into()]);
            let mut env = vec![("RUST_LOG".to_string(), WORKER_LOG.to_string())];
            env.extend(self.transport.env(("worker", &source))?);
            specs.push(self.spec(&name, args, env)?);
        }
        let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
        let detail = format!("cp -a of {source}'s state dir to {} (certificate worker/{source})", names.join(", "));
        self.record(NemesisPhase::Start, &format!("clone-state-{source}"), detail);
        for spec in specs {
            let mut clone = Managed::new(spec);
            clone.start()?;
            let time_ns = self.clock.now_ns();
            let process = clone.spec.name.clone();
            let copy_of = Some(source.clone());
            let kind = ProcessEventKind::Cloned;
            self.record_process(ProcessEvent {
                process,
                event: kind,
                code: None,
                copy_of,
                cause: None,
                time_ns,
                wall_ms: wall_ms(),
            });
            self.clones.push(clone);
        }
        Ok(())
    }

    /// Start a second worker claiming `worker`'s ID explicitly; it must refuse to start.
    fn duplicate_manifest(&mut self, worker: usize) -> anyhow::Result<()> {
        let name = self.workers[worker].spec.name.clone();
        let id = *self.worker_ids().get(&name).context("the original worker holds no ID")?;
        let ip = ip_of(&self.workers[worker]);
        let duplicate = format!("{name}-duplicate");
        let args =
            self.worker_args(&duplicate, &self.state_dir(&duplicate), &format!("{ip}:{}", WORKER_PORT + 1), Some(id));
        let mut spec = self.spec(&name, args, self.transport.env(("worker", &format!("{name}-duplicate")))?)?;
        spec.name = format!("{name}-duplicate");
        spec.log = self.dir.join("logs").join(format!("{name}-duplicate.log"));
        let log = spec.log.clone();
        let mut duplicate = Managed::new(spec);
        duplicate.start()?;
        self.record(NemesisPhase::Start, "duplicate-manifest", format!("second worker claims worker ID {id}"));
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while duplicate.is_running() && std::time::Instant::now() < deadline {
            self.wait(Duration::from_millis(100));
        }
        let refused = !duplicate.is_running();
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        let names_holder = said.contains(&format!("{name}/"));
        duplicate.kill();
        self.extras.push(duplicate);
        let valid = if refused && names_holder { Valid::True } else { Valid::False };
        let summary = if refused {
            format!("the duplicate claim of worker ID {id} exited; message names the holder: {names_holder}")
        } else {
            format!("the duplicate claim of worker ID {id} was still running after 15 s")
        };
        self.record(NemesisPhase::Stop, "duplicate-manifest", summary.clone());
        self.extra_results.push(CheckResult {
            name: "duplicate-manifest".into(),
            valid,
            summary,
            evidence: vec![serde_json::json!({ "log": log.display().to_string() })],
        });
        Ok(())
    }

    fn heal_everything(&mut self) -> anyhow::Result<()> {
        let mut rng = StdRng::seed_from_u64(0);
        for action in
            [Action::Heal, Action::ResumeAll, Action::ClockReset, Action::RestartRegistries, Action::RestartWorkers]
        {
            self.apply(&action, &mut rng)?;
        }
        self.stop_active("");
        Ok(())
    }

    fn stop_all(&mut self) {
        if let Err(e) = self.lift_delays() {
            println!("  lifting the delays failed: {e:#}");
        }
        self.tcp_trace = None;
        for worker in &mut self.workers {
            worker.terminate(Duration::from_secs(5));
        }
        for extra in &mut self.extras {
            extra.kill();
        }
        if let Some(standby) = self.standby.as_mut() {
            standby.terminate(Duration::from_secs(5));
        }
        for clone in &mut self.clones {
            clone.terminate(Duration::from_secs(5));
        }
        for registry in &mut self.registries {
            registry.terminate(Duration::from_secs(5));
        }
        let _ = self.nemesis.flush();
    }
}

/// A delay's nemesis detail: how many directions, how many one way only, and the worst hold
/// of a worker-registry and of a registry-registry direction.
fn describe_delays(links: &[LinkDelay]) -> String {
    let one_way = links.iter().filter(|l| !links.iter().any(|m| (m.from, m.to) == (l.to, l.from))).count();
    let worst = |registries_only: bool| {
        links
            .iter()
            .filter(|l| matches!((l.from, l.to), (End::Registry(_), End::Registry(_))) == registries_only)
            .map(|l| l.worst().as_millis())
            .max()
            .unwrap_or(0)
    };
    format!(
        "{} directions held ({one_way} one way only); worst hold: worker-registry {} ms, registry-registry {} ms",
        links.len(),
        worst(false),
        worst(true)
    )
}

#[cfg(test)]
mod tests {
    use fenceflake_proto::duration::parse_duration;

    use super::*;

    /// Goal: the reproduce command's --time-limit reads back as the same duration.
    #[test]
    fn duration_flags_read_back() {
        for d in [Duration::from_secs(30), Duration::from_millis(1500), Duration::from_micros(2_000_250)] {
            assert_eq!(parse_duration(&duration_flag(d)), Ok(d), "{}", duration_flag(d));
        }
        assert_eq!(duration_flag(Duration::from_secs(600)), "600s");
    }
}
