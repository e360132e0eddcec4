//! Serves a [`Generator`] over gRPC (the Generator service and grpc.health.v1, which follows
//! the park state) and metrics over HTTP, then shuts the generator down cleanly: stop
//! serving, persist the exact last timestamp, release the lease.
//!
//! The gRPC port accepts through `fenceflake_proto::tls::incoming` with the generator's own
//! [`Security`](fenceflake_proto::tls::Security) (`WorkerConfig::security`): under TLS every
//! caller presents a certificate of the cluster CA and the service authorizes it per RPC
//! ([`crate::service`]); health checks need no certificate (probes), and a plaintext caller
//! of a TLS port is told that TLS is required.

use std::future::Future;
use std::sync::Arc;

use fenceflake_proto::tls;
use fenceflake_proto::v1::generator_server::GeneratorServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic_health::ServingStatus;

use crate::generator::Generator;
use crate::park::ParkCause;
use crate::rate_limit::RateLimiter;
use crate::service::GeneratorService;

/// The sockets a worker serves on, bound by the caller (tests and `fenceflake dev` bind port 0).
#[derive(Debug)]
pub struct Listeners {
    pub grpc: TcpListener,
    pub metrics: Option<TcpListener>,
}

/// Serve until `shutdown` resolves, then shut `generator` down.
pub async fn run(
    generator: Generator,
    listeners: Listeners,
    limiter: Arc<RateLimiter>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), tonic::transport::Error> {
    let (stop, stopped) = fenceflake_proto::serving::stop_signal();
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    tokio::spawn(follow_health(generator.subscribe(), health_reporter));
    if let Some(listener) = listeners.metrics {
        let g = generator.clone();
        let render = move || {
            let g = g.clone();
            async move { g.render_metrics() }
        };
        tokio::spawn(fenceflake_proto::metrics::serve_http(listener, render, stopped.clone().wait()));
    }
    let incoming = tls::incoming(listeners.grpc, generator.security().clone(), "grpc");
    let result = tonic::transport::Server::builder()
        .layer(tls::RefuseStrangersLayer::default())
        .add_service(health_service)
        .add_service(GeneratorServer::new(GeneratorService::new(generator.clone(), limiter)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await;
    tracing::info!("stopped serving; shutting the generator down");
    stop.stop();
    generator.shutdown().await;
    result
}

/// NOT_SERVING while parked, SERVING otherwise, for the overall server and the service.
async fn follow_health(mut park: watch::Receiver<Option<ParkCause>>, reporter: tonic_health::server::HealthReporter) {
    loop {
        let status =
            if park.borrow_and_update().is_none() { ServingStatus::Serving } else { ServingStatus::NotServing };
        reporter.set_service_status("", status).await;
        reporter.set_service_status("fenceflake.v1.Generator", status).await;
        if park.changed().await.is_err() {
            return;
        }
    }
}
