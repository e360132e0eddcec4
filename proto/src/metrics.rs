//! Prometheus text exposition helpers shared by every Fenceflake server: a lock-free
//! fixed-bucket latency histogram, writers for the `# HELP`/`# TYPE` preamble, and a one-route
//! HTTP/1.1 endpoint (`GET /metrics`, `GET /healthz`). Hand-rolled on purpose: one route does
//! not justify an HTTP framework. Knows nothing about what is measured.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Upper bounds (seconds) of the latency histogram buckets: 0.5 ms to 10 s.
pub const LATENCY_BUCKETS_S: [f64; 14] =
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// Longest request head read; a scraper's GET is a few hundred bytes.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// A scraper that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// A latency histogram with [`LATENCY_BUCKETS_S`] buckets, updated without locks.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per-bucket (not cumulative) counts; cumulated at render time.
    buckets: [AtomicU64; LATENCY_BUCKETS_S.len()],
    count: AtomicU64,
    /// Microseconds, so the sum stays an integer atomic.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        if let Some(b) = LATENCY_BUCKETS_S.iter().position(|le| seconds <= *le) {
            self.buckets[b].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// The `_bucket`, `_sum` and `_count` series of `name`; `labels` is empty or a list like
    /// `rpc="Renew"` (the caller writes the preamble once per name).
    pub fn render(&self, out: &mut String, name: &str, labels: &str) {
        self.render_with_instant(out, name, labels, 0);
    }

    /// [`Histogram::render`] with `instant` more observations that took no time, which the
    /// caller counted elsewhere (per thread, say, where one shared counter would be fought
    /// over): they fall in the first bucket and add nothing to the sum.
    pub fn render_with_instant(&self, out: &mut String, name: &str, labels: &str, instant: u64) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = instant;
        for (le, bucket) in LATENCY_BUCKETS_S.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed) + instant;
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        let braces = if labels.is_empty() { String::new() } else { format!("{{{labels}}}") };
        let _ = writeln!(out, "{name}_sum{braces} {sum}\n{name}_count{braces} {count}");
    }
}

/// The `# HELP` and `# TYPE` lines of one metric.
pub fn preamble(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A whole unlabelled metric: preamble and its one sample.
pub fn single(out: &mut String, name: &str, kind: &str, help: &str, value: f64) {
    preamble(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

/// Serve `GET /metrics` with whatever `render` returns, until `shutdown` resolves.
pub async fn serve_http<F, Fut>(listener: TcpListener, render: F, shutdown: impl Future<Output = ()>)
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = String> + Send,
{
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let render = render.clone();
                tokio::spawn(async move { let _ = answer(stream, render).await; });
            }
        }
    }
}

async fn answer<F, Fut>(mut stream: TcpStream, render: F) -> std::io::Result<()>
where
    F: Fn() -> Fut,
    Fut: Future<Output = String>,
{
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < REQUEST_HEAD_BYTES_MAX {
        let n = tokio::time::timeout(READ_TIMEOUT, stream.read(&mut buf)).await.map_err(std::io::Error::other)??;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, body) = match path {
        "/metrics" => ("200 OK", render().await),
        "/healthz" => ("200 OK", "ok\n".to_string()),
        _ => ("404 Not Found", "try /metrics\n".to_string()),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: buckets are cumulative, `+Inf` equals the count, and labels are spliced in
    /// whether or not there are any.
    #[test]
    fn histogram_renders_cumulative_buckets() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(700));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x_seconds", "rpc=\"A\"");
        assert!(out.contains("x_seconds_bucket{rpc=\"A\",le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{rpc=\"A\",le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("x_seconds_bucket{rpc=\"A\",le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("x_seconds_count{rpc=\"A\"} 3\n"), "{out}");
        let mut out = String::new();
        h.render(&mut out, "y_seconds", "");
        assert!(out.contains("y_seconds_bucket{le=\"10\"} 2\n") && out.contains("y_seconds_count 3\n"), "{out}");
    }

    /// Goal: the endpoint answers /metrics with the rendered text and 404s elsewhere.
    #[tokio::test]
    async fn serves_metrics_over_http() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve_http(listener, || async { "m 1\n".to_string() }, async {
            let _ = stopped.await;
        }));
        for (path, want) in [("/metrics", "200 OK"), ("/nope", "404")] {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\n\r\n").as_bytes()).await.expect("send");
            let mut reply = String::new();
            s.read_to_string(&mut reply).await.expect("read");
            assert!(reply.contains(want), "{path}: {reply}");
            if path == "/metrics" {
                assert!(reply.ends_with("m 1\n"), "{reply}");
            }
        }
        let _ = stop.send(());
        server.await.expect("server stops");
    }
}
