//! Helpers for process-level tests: start real `fenceflake` binaries on loopback, kill them
//! with SIGKILL, restart them, and talk to them over gRPC. Everything runs on mutual TLS with
//! certificates of the role it needs ([`certs`]); nothing here runs `--insecure`.
//!
//! The binary is found at `$FENCEFLAKE_BIN`, else next to the test executable's `deps/`
//! directory (`target/<profile>/fenceflake`); `scripts/test-all` builds it first.

pub mod certs;
pub mod cluster;
pub mod runbook;
pub mod worker;

use std::path::PathBuf;
use std::time::Duration;

/// Path of the `fenceflake` binary under test.
pub fn fenceflake_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("FENCEFLAKE_BIN") {
        return PathBuf::from(path);
    }
    let exe = std::env::current_exe().expect("test executable has a path");
    let profile_dir =
        exe.parent().and_then(|deps| deps.parent()).expect("test executable lives in target/<profile>/deps");
    let bin = profile_dir.join("fenceflake");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p fenceflake-cli`, or run `scripts/test-all`), or set FENCEFLAKE_BIN",
        bin.display()
    );
    bin
}

/// Ports handed out by [`free_port`]: below the kernel's ephemeral range (32768–60999 by
/// default), so that no outgoing connection of any process is given one as its source port
/// between the moment we pick it and the moment a server binds it (which happened: a node
/// then failed with "Address already in use").
const TEST_PORTS: std::ops::Range<u16> = 10_000..30_000;

/// A loopback port nobody listens on right now, outside the ephemeral range. Each test
/// process starts at its own place in the range (by pid) and walks on, so concurrent tests
/// rarely try the same port, and a port found busy is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let start = std::process::id().wrapping_mul(7919) % span;
    for _ in 0..span {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
        let port = TEST_PORTS.start + u16::try_from(offset).expect("offset below the span");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {TEST_PORTS:?}");
}

/// Poll `f` every 50 ms until it returns `Some`, or fail after `timeout` with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = f().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// libfaketime's preload library, if installed (Debian `libfaketime`).
pub fn libfaketime() -> Option<PathBuf> {
    ["/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1", "/usr/lib/faketime/libfaketime.so.1"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// A test that cannot run here (a tool or package is missing) says so and passes, except
/// where every test must run (`CI=true` or `FENCEFLAKE_REQUIRE_ALL=1`): there it fails, so
/// a green run can never hide a skipped check. The caller returns right after.
pub fn skip_unless_required(what: &str, needs: &str) {
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("FENCEFLAKE_REQUIRE_ALL").is_ok_and(|v| v == "1");
    assert!(!required, "{what} cannot run: it needs {needs} (scripts/test-all installs it as root)");
    eprintln!("SKIPPED: {what} needs {needs} (scripts/test-all installs it as root)");
}
