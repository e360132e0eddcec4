//! The `fenceflake` binary: one CLI for every part of the product.

mod certs;
mod ctl;
mod decode_cmd;
mod dev_cmd;
mod hostname;
mod logging;
mod mint_cmd;
mod registry_cmd;
mod signals;
mod worker_cmd;

use clap::{Parser, Subcommand};

/// The one duration syntax of every flag (`fenceflake_proto::duration`), for `--help`.
const DURATION_HELP: &str = "Durations take a unit: 250ms, 1.5s, 2m, 1h (us, ms, s, m, h); a bare number is refused.";

/// Fenceflake: 64-bit, time-ordered IDs that are never duplicated, from workers holding
/// fenced leases granted by a 5-node Raft registry.
#[derive(Debug, Parser)]
#[command(name = "fenceflake", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=fenceflake_registry=debug).
    #[arg(long, global = true, env = "FENCEFLAKE_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: logging::LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one registry node.
    Registry(Box<registry_cmd::RegistryArgs>),
    /// Inspect and administer a registry cluster.
    Ctl(ctl::CtlArgs),
    /// Run one generator worker.
    Worker(Box<worker_cmd::WorkerArgs>),
    /// Run a 5-node registry and 2 workers in this process, for trying things out.
    Dev(dev_cmd::DevArgs),
    /// Mint IDs from workers and print them.
    Mint(mint_cmd::MintArgs),
    /// Decode IDs into timestamp, worker ID and sequence.
    Decode(decode_cmd::DecodeArgs),
    /// Make a CA and issue certificates for mutual TLS.
    Certs(certs::CertsArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let default_filter = match &cli.command {
        Command::Ctl(_) | Command::Mint(_) | Command::Decode(_) | Command::Certs(_) => "warn",
        // openraft logs every refused connection while the embedded nodes start and stop.
        Command::Dev(_) => "warn,openraft=off,fenceflake_registry=error",
        _ => "info,openraft=warn,sled=warn,h2=warn,tower=warn,hyper=warn",
    };
    logging::init(cli.log_format, default_filter);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Registry(args) => registry_cmd::run(*args).await.map(|()| 0),
            // ctl chooses its exit status (`ctl status`: 3 when the cluster cannot commit).
            Command::Ctl(args) => ctl::run(args).await,
            Command::Worker(args) => worker_cmd::run(*args).await.map(|()| 0),
            Command::Dev(args) => dev_cmd::run(args).await.map(|()| 0),
            Command::Mint(args) => mint_cmd::run(args).await.map(|()| 0),
            Command::Decode(args) => decode_cmd::run(args).map(|()| 0),
            Command::Certs(args) => certs::run(args).map(|()| 0),
        }
    });
    match result {
        Ok(code) => std::process::ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
