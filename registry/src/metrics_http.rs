//! A minimal HTTP/1.1 endpoint serving `GET /metrics` in the Prometheus text format (and
//! `GET /healthz`). Hand-rolled on purpose: one route does not justify an HTTP framework.

use std::future::Future;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::node::RegistryNode;

/// Longest request head read; a scraper's GET is a few hundred bytes.
const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
const READ_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve(listener: TcpListener, node: RegistryNode, shutdown: impl Future<Output = ()>) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let node = node.clone();
                tokio::spawn(async move { let _ = answer(stream, node).await; });
            }
        }
    }
}

async fn answer(mut stream: tokio::net::TcpStream, node: RegistryNode) -> std::io::Result<()> {
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
        "/metrics" => ("200 OK", node.metrics.render(&node.gauges().await)),
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
