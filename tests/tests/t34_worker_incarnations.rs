//! Incarnations with real processes (issue 9): copies of one state dir — a cloned VM or
//! volume, a `cp -a` restore — started at once under restart-always supervision never mint
//! one ID twice, and they converge (one takes a new holder ID and, with an explicit worker
//! ID, stops naming the other holder) instead of fencing each other in turns.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::worker::{WorkerProcess, SHORT_LEASE};

/// How long the two copies run under the test's supervisor.
const SUPERVISED_FOR: Duration = Duration::from_secs(14);
/// A supervisor's pause before restarting an exited process (systemd's `RestartSec`).
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// What the supervisor saw of one copy.
#[derive(Default)]
struct Seen {
    ids: Vec<u64>,
    exits: u32,
    /// (worker ID, token) of every lease it served under.
    leases: BTreeSet<(u32, u64)>,
}

/// Goal: two processes started at once on copies of one used state dir (same holder ID, same
/// certificate identity) mint no ID twice; the registry gives the later incarnation the lease
/// (or, `auto`, a free worker ID) and tells the earlier one SUPERSEDED, which exits non-zero
/// and gives its holder ID up, so its restart is a stranger: with `auto` both end up serving
/// distinct worker IDs; with an explicit one, exactly one serves and the other exits naming
/// the holder that has the ID. Neither is superseded more than once (no ping-pong).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_of_one_state_dir_converge_and_repeat_no_id() {
    // A 2 s renew window: the next holder of an ID whose holder vanished waits up to a window
    // past the old mark (30 s by default), and this test waits for it within 15 s.
    let cluster = Cluster::start(5, &["--renew-window", "2s"]).await;
    let registry = cluster.client_addrs();
    for (label, id_args) in [("auto", &[][..]), ("explicit", &["--worker-id", "3"][..])] {
        let args: Vec<&str> = SHORT_LEASE.iter().copied().chain(id_args.iter().copied()).collect();
        let identity = format!("{label}-clone");
        let mut origin = WorkerProcess::spawn_as(&cluster, &format!("{label}-origin"), &identity, &registry, &args);
        origin.wait_serving(Duration::from_secs(15)).await;
        let mut all_ids = origin.batch(1_000).await.expect("origin mints");
        origin.signal("TERM");
        assert!(origin.wait_exit(Duration::from_secs(10)).await.success());
        for copy in ["a", "b"] {
            copy_dir(&origin.state_dir, &cluster.dir.path().join(format!("{label}-{copy}-state")));
        }
        eprintln!("phase ({label}): two copies of one state dir start at once");
        let mut copies = [
            WorkerProcess::spawn_as(&cluster, &format!("{label}-a"), &identity, &registry, &args),
            WorkerProcess::spawn_as(&cluster, &format!("{label}-b"), &identity, &registry, &args),
        ];
        let seen = supervise(&mut copies).await;
        for (copy, s) in copies.iter().zip(&seen) {
            eprintln!("{label}: {} exited {} times, leases {:?}, {} IDs", copy.name, s.exits, s.leases, s.ids.len());
            all_ids.extend(&s.ids);
        }
        let unique: BTreeSet<u64> = all_ids.iter().copied().collect();
        assert_eq!(unique.len(), all_ids.len(), "{label}: an ID was minted twice");
        let logs: Vec<String> = copies.iter().map(WorkerProcess::log).collect();
        let superseded = logs.iter().map(|l| l.matches("another process of this holder took the lease over").count());
        assert_eq!(superseded.sum::<usize>(), 1, "{label}: exactly one copy is superseded, once (no ping-pong)");
        let serving = serving_now(&copies).await;
        if id_args.is_empty() {
            assert_eq!(serving.len(), 2, "{label}: both copies serve in the end: {serving:?}");
            assert_ne!(serving[0].0, serving[1].0, "{label}: under distinct worker IDs");
        } else {
            assert_eq!(serving.len(), 1, "{label}: exactly one copy serves worker ID 3: {serving:?}");
            assert!(
                logs.iter().any(|l| l.contains("worker ID 3 is already held by another worker: worker ID is held by")),
                "{label}: the other copy names the holder of worker ID 3"
            );
        }
    }
}

/// Run both processes for [`SUPERVISED_FOR`] like restart-always supervisors would, minting
/// from whichever serves.
async fn supervise(copies: &mut [WorkerProcess; 2]) -> [Seen; 2] {
    let mut seen = [Seen::default(), Seen::default()];
    let mut restart_at: [Option<Instant>; 2] = [None, None];
    let until = Instant::now() + SUPERVISED_FOR;
    while Instant::now() < until {
        for (i, copy) in copies.iter_mut().enumerate() {
            if let Some(at) = restart_at[i] {
                if Instant::now() >= at {
                    restart_at[i] = None;
                    copy.start();
                }
                continue;
            }
            if copy.exited().is_some() {
                seen[i].exits += 1;
                restart_at[i] = Some(Instant::now() + RESTART_PAUSE);
                continue;
            }
            let Some(status) = copy.status().await.filter(|s| s.state == "SERVING") else { continue };
            if let Ok(ids) = copy.batch(500).await {
                seen[i].leases.insert((status.worker_id, status.token));
                seen[i].ids.extend(ids);
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}

/// (worker ID, token) of each copy serving now.
async fn serving_now(copies: &[WorkerProcess; 2]) -> Vec<(u32, u64)> {
    let mut serving = Vec::new();
    for copy in copies {
        if let Some(status) = copy.status().await.filter(|s| s.state == "SERVING") {
            serving.push((status.worker_id, status.token));
        }
    }
    serving
}

/// `cp -a from to`: what a cloned VM or volume snapshot does (the lock file comes along, the
/// lock does not).
fn copy_dir(from: &Path, to: &Path) {
    let status = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("run cp");
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}
