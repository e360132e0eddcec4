//! `fenceflake certs`: make the cluster's CA (`init`) and a certificate for each registry
//! node, worker, client, operator and reader (`issue`), for mutual TLS.
//!
//! Layout of `--dir`: `ca.pem` + `ca.key`, then `<role>-<name>.pem` + `<role>-<name>.key`
//! per holder. Certificates are 0644, keys 0600 (PKCS#8 PEM); each leaf names its holder
//! with the SPIFFE ID `spiffe://<trust domain>/fenceflake/<role>/<name>`.

mod authority;
mod files;
mod names;
#[cfg(test)]
mod tests;

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use fenceflake_proto::duration::parse_duration;

use self::authority::{Authority, Issued, LeafSpec, Validity};
use self::files::{Output, CERT_MODE, KEY_MODE};
use self::names::Role;

/// Make a CA and issue certificates for mutual TLS.
#[derive(Debug, Args)]
pub struct CertsArgs {
    #[command(subcommand)]
    command: CertsCommand,
}

#[derive(Debug, Subcommand)]
enum CertsCommand {
    /// Make a self-signed CA: DIR/ca.pem (0644) and DIR/ca.key (0600).
    Init(InitArgs),
    /// Issue a certificate signed by DIR's CA: DIR/<role>-<name>.pem and .key (0600).
    Issue(IssueArgs),
}

#[derive(Debug, Args)]
#[command(after_help = crate::DURATION_HELP)]
struct InitArgs {
    /// Directory for the CA's files (created with mode 0700 if missing).
    #[arg(long, env = "FENCEFLAKE_CERTS_DIR")]
    dir: PathBuf,
    /// SPIFFE trust domain of the cluster: lowercase a-z 0-9 . - (every leaf's ID starts
    /// with spiffe://<trust domain>/).
    #[arg(long, env = "FENCEFLAKE_CERTS_TRUST_DOMAIN", default_value = names::DEFAULT_TRUST_DOMAIN,
          value_parser = names::parse_trust_domain)]
    trust_domain: String,
    /// How long the CA stays valid (10 years by default).
    #[arg(long, env = "FENCEFLAKE_CERTS_CA_VALID_FOR", default_value = "87600h", value_parser = parse_duration)]
    valid_for: Duration,
    /// Overwrite existing files.
    #[arg(long, env = "FENCEFLAKE_CERTS_FORCE")]
    force: bool,
}

#[derive(Debug, Args)]
#[command(after_help = crate::DURATION_HELP)]
struct IssueArgs {
    /// Directory holding ca.pem and ca.key (from `certs init`); the new files go there too.
    #[arg(long, env = "FENCEFLAKE_CERTS_DIR")]
    dir: PathBuf,
    /// What the holder is, which peers authorize by: node, worker, client, operator or reader.
    #[arg(long, env = "FENCEFLAKE_CERTS_ROLE", value_parser = names::parse_role)]
    role: Role,
    /// The holder's name, A-Z a-z 0-9 . _ - (1 to 64); for a node, its --node-id.
    #[arg(long, env = "FENCEFLAKE_CERTS_NAME")]
    name: String,
    /// DNS name the holder is reached at (repeatable; default: localhost, with 127.0.0.1).
    #[arg(long = "dns", value_name = "HOST", env = "FENCEFLAKE_CERTS_DNS", value_delimiter = ',',
          value_parser = names::parse_dns_name)]
    dns_names: Vec<String>,
    /// IP address the holder is reached at (repeatable; default: 127.0.0.1, with localhost).
    #[arg(long = "ip", value_name = "ADDR", env = "FENCEFLAKE_CERTS_IP", value_delimiter = ',')]
    ips: Vec<IpAddr>,
    /// How long the certificate stays valid (90 days by default).
    #[arg(long, env = "FENCEFLAKE_CERTS_VALID_FOR", default_value = "2160h", value_parser = parse_duration)]
    valid_for: Duration,
    /// Overwrite existing files.
    #[arg(long, env = "FENCEFLAKE_CERTS_FORCE")]
    force: bool,
}

pub fn run(args: CertsArgs) -> anyhow::Result<()> {
    print!("{}", execute(&args.command)?);
    Ok(())
}

/// Runs one `certs` command; returns what it prints.
fn execute(command: &CertsCommand) -> anyhow::Result<String> {
    match command {
        CertsCommand::Init(args) => init(args),
        CertsCommand::Issue(args) => issue(args),
    }
}

fn ca_paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("ca.pem"), dir.join("ca.key"))
}

/// The certificate (0644) and key (0600) files of `issued`, key first.
fn outputs(issued: Issued, cert_path: &Path, key_path: &Path) -> [Output; 2] {
    [
        Output { path: key_path.to_path_buf(), contents: issued.key_pem, mode: KEY_MODE },
        Output { path: cert_path.to_path_buf(), contents: issued.cert_pem, mode: CERT_MODE },
    ]
}

/// What a command prints: the files written, then the SPIFFE ID.
fn report(cert_path: &Path, key_path: &Path, spiffe_id: &str) -> String {
    format!("certificate  {}\nkey          {}\nSPIFFE ID    {spiffe_id}\n", cert_path.display(), key_path.display())
}

fn init(args: &InitArgs) -> anyhow::Result<String> {
    let (cert_path, key_path) = ca_paths(&args.dir);
    files::refuse_existing(&[&cert_path, &key_path], args.force)?;
    let ca = authority::new_ca(&args.trust_domain, Validity::from_now(args.valid_for)?)?;
    files::ensure_dir(&args.dir)?;
    files::write_all(&outputs(ca, &cert_path, &key_path), args.force)?;
    Ok(report(&cert_path, &key_path, &names::trust_domain_id(&args.trust_domain)))
}

fn issue(args: &IssueArgs) -> anyhow::Result<String> {
    names::validate_name(args.role, &args.name).map_err(|e| anyhow::anyhow!(e))?;
    let stem = format!("{}-{}", args.role, args.name);
    let cert_path = args.dir.join(format!("{stem}.pem"));
    let key_path = args.dir.join(format!("{stem}.key"));
    files::refuse_existing(&[&cert_path, &key_path], args.force)?;
    let authority = load_authority(&args.dir)?;
    let (dns_names, ips) = if args.dns_names.is_empty() && args.ips.is_empty() {
        (vec!["localhost".to_owned()], vec![IpAddr::V4(Ipv4Addr::LOCALHOST)])
    } else {
        (args.dns_names.clone(), args.ips.clone())
    };
    let leaf = LeafSpec { role: args.role, name: &args.name, dns_names: &dns_names, ips: &ips };
    let issued = authority
        .issue(&leaf, Validity::from_now(args.valid_for)?)
        .with_context(|| format!("cannot issue with the CA in {}", args.dir.display()))?;
    files::write_all(&outputs(issued, &cert_path, &key_path), args.force)?;
    Ok(report(&cert_path, &key_path, &names::identity(authority.trust_domain(), args.role, &args.name).uri()))
}

fn load_authority(dir: &Path) -> anyhow::Result<Authority> {
    let (cert_path, key_path) = ca_paths(dir);
    let cert_pem = files::read_pem(&cert_path)?;
    let key_pem = files::read_pem(&key_path)?;
    Authority::from_pem(&cert_pem, &key_pem)
        .with_context(|| format!("cannot use the CA in {} and {}", cert_path.display(), key_path.display()))
}
