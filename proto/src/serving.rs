//! What every Fenceflake gRPC server needs around tonic: accepting from a listener the caller
//! bound, with TCP_NODELAY, and one stop signal shared by all the servers of a process.

use tokio::sync::watch;

/// Accepted sockets with TCP_NODELAY. The server builder's `tcp_nodelay` does not apply to
/// sockets from a caller's listener, and Nagle then holds small replies back: forwarded
/// registry requests paid ~45 ms each before this (BENCHMARKS.md).
pub fn nodelay(listener: tokio::net::TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Tells every server of a process to stop; dropping it stops them too.
#[derive(Debug)]
pub struct Stop(watch::Sender<bool>);

/// Resolves (via [`Stopped::wait`]) once [`Stop::stop`] was called or the `Stop` dropped.
#[derive(Debug, Clone)]
pub struct Stopped(watch::Receiver<bool>);

pub fn stop_signal() -> (Stop, Stopped) {
    let (tx, rx) = watch::channel(false);
    (Stop(tx), Stopped(rx))
}

impl Stop {
    pub fn stop(&self) {
        let _ = self.0.send(true);
    }
}

impl Stopped {
    pub async fn wait(mut self) {
        let _ = self.0.wait_for(|stopped| *stopped).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_stop() {
        let (stop, stopped) = stop_signal();
        let waiters: Vec<_> = (0..3).map(|_| tokio::spawn(stopped.clone().wait())).collect();
        stop.stop();
        for w in waiters {
            w.await.expect("waiter finishes");
        }
    }
}
