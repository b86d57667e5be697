//! `chainmail`: the node, the local network tools, the demo, and the
//! commands that talk to a running node.

mod api_client;
mod cli;
mod cli_community;
mod cli_network;
mod demo;
mod testnet;

use chainmail_node::{account, clock, network, runtime};

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use chainmail_mixnet::{Preset, Roles};
use chainmail_net::Multiaddr;
use chainmail_packet::NodeId;
use clap::{Parser, Subcommand};

use crate::network::NetworkFile;
use crate::runtime::NodeOptions;

/// Chainmail: a serverless, metadata-private messenger.
#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    /// Log filter, e.g. "info" or "chainmail=debug" (or set RUST_LOG).
    #[arg(long, global = true, default_value = "warn")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start a whole local network and two users, alice and bob: a contact
    /// request, its acceptance, a conversation, bob offline for a while,
    /// then back; print what happened. Exits non-zero if a message was lost.
    Demo {
        /// Nodes in the network (each is a mix and a provider).
        #[arg(long, default_value_t = 9)]
        nodes: usize,
        /// Messages each user sends.
        #[arg(long, default_value_t = 10)]
        messages: usize,
        /// Anonymity preset: low-bandwidth, standard or strong.
        #[arg(long, default_value = "standard", value_parser = parse_preset)]
        preset: Preset,
        /// Keep the network's files here (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Give up this many seconds after the last message was sent.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
        /// Milliseconds between two messages (the users take turns).
        #[arg(long, default_value_t = 1500)]
        interval_ms: u64,
        /// Seconds to measure the idle clients' upstream before talking.
        #[arg(long, default_value_t = 15)]
        idle_secs: u64,
    },
    /// Start N nodes on 127.0.0.1, write DIR/network.toml, say when the
    /// directory is complete, and run until interrupted.
    Testnet {
        /// Number of nodes.
        #[arg(long, default_value_t = 9)]
        nodes: usize,
        /// Directory for the network file and the nodes' data.
        #[arg(long)]
        dir: PathBuf,
        /// Anonymity preset: low-bandwidth, standard or strong.
        #[arg(long, default_value = "standard", value_parser = parse_preset)]
        preset: Preset,
        /// Mix-key epoch length, seconds.
        #[arg(long, default_value_t = 3600)]
        epoch_secs: u64,
    },
    /// Network files: `network new` writes one for a network of many
    /// machines.
    #[command(subcommand)]
    Network(cli_network::NetworkCommand),
    /// Run a node: a mix and provider for the network, and (with --client)
    /// its user's client. Runs until interrupted.
    Node(NodeArgs),
    /// Create your account in a data directory (before starting the node
    /// there). Without --passphrase-file or --key-file a key file is made
    /// in the data directory.
    Init {
        /// The network file.
        #[arg(long)]
        network: PathBuf,
        #[command(flatten)]
        data: DataDirArg,
        /// The name your contacts see in your requests.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        unlock: UnlockArgs,
        /// Keep the identity (and so the address) written by `whoami
        /// --export-identity` on another device; the keys of sessions are
        /// new, which contacts are warned of.
        #[arg(long)]
        identity_file: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show your address (give it to people who should reach you).
    Whoami {
        #[command(flatten)]
        data: DataDirArg,
        /// Write the identity's secret seed to this file (to move the
        /// account to another device with `init --identity-file`).
        #[arg(long)]
        export_identity: Option<PathBuf>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Contacts: add (a request), list, requests, accept, deny, ignore.
    #[command(subcommand)]
    Contact(cli::ContactCommand),
    /// Advisories of unsafe client versions: keygen, sign, publish.
    #[command(subcommand)]
    Advisory(cli::AdvisoryCommand),
    /// Communities: create, invite, join, post, log, members, promote,
    /// demote, remove, ban, redact, export, import, leave.
    #[command(subcommand)]
    Community(cli_community::CommunityCommand),
    /// Send a text to a contact (by name or address).
    Send {
        #[command(flatten)]
        data: DataDirArg,
        /// The contact.
        to: String,
        /// The text.
        text: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Messages and contact events, oldest first.
    Inbox {
        #[command(flatten)]
        data: DataDirArg,
        /// Only entries after this position.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// Keep waiting for new entries.
        #[arg(long)]
        follow: bool,
        /// Print JSON (one object per line).
        #[arg(long)]
        json: bool,
    },
    /// A contact's safety number, to compare with theirs in person;
    /// --mark records that you did and they matched.
    Verify {
        #[command(flatten)]
        data: DataDirArg,
        /// The contact.
        name: String,
        /// Mark the contact verified.
        #[arg(long)]
        mark: bool,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The nodes a running node knows: their roles and announced
    /// addresses.
    Directory {
        #[command(flatten)]
        data: DataDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// A running node's status, and the state of the messages you sent.
    Status {
        #[command(flatten)]
        data: DataDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(clap::Args)]
pub(crate) struct DataDirArg {
    /// The node's data directory.
    #[arg(long)]
    pub(crate) data_dir: PathBuf,
}

/// How the account's vault is unlocked.
#[derive(clap::Args, Clone, Debug)]
struct UnlockArgs {
    /// File whose first line is the passphrase of the account.
    #[arg(long)]
    passphrase_file: Option<PathBuf>,
    /// Key file of the account (default: account.key in the data
    /// directory, if there is one).
    #[arg(long, conflicts_with = "passphrase_file")]
    key_file: Option<PathBuf>,
}

impl UnlockArgs {
    fn unlock(&self) -> account::Unlock {
        account::Unlock {
            passphrase_file: self.passphrase_file.clone(),
            key_file: self.key_file.clone(),
        }
    }
}

#[derive(clap::Args)]
struct NodeArgs {
    /// The network file (see network.example.toml).
    #[arg(long)]
    network: PathBuf,
    /// Where the node keeps its keys, mailboxes and state.
    #[arg(long)]
    data_dir: PathBuf,
    /// An address to listen on, as a multiaddress; repeat for several.
    /// TCP: /ip4/0.0.0.0/tcp/4001; QUIC: /ip4/0.0.0.0/udp/4001/quic-v1;
    /// IPv6: /ip6/::/tcp/4001; port 0 takes any free port. Default for a
    /// mix or provider: TCP and QUIC on port 4001 of every interface,
    /// IPv4 and (where the machine has it) IPv6. Default for a client-only
    /// node: any free port (it announces none; community members and, in
    /// direct mode, contacts may dial it).
    #[arg(long = "listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,
    /// An address others reach this node at that it cannot learn itself
    /// (a public address on a host behind 1:1 NAT, a port forwarded by a
    /// router); repeat for several. It is announced without a test; on a
    /// public network it must be publicly routable. Other addresses are
    /// announced only once another node confirmed it could reach them.
    #[arg(long = "external-address", value_name = "MULTIADDR")]
    external_addresses: Vec<Multiaddr>,
    /// Port of the local API on 127.0.0.1 (0: any; see api.json).
    #[arg(long, default_value_t = 0)]
    api_port: u16,
    /// What the node does for the network: "mix,provider" (default),
    /// "mix", "provider", or "none" for a client-only node.
    #[arg(long, default_value = "mix,provider")]
    roles: String,
    /// Host the user's client in this node.
    #[arg(long)]
    client: bool,
    /// Providers for the client's mailboxes (node ids in hex, at least two);
    /// chosen from the directory if not given.
    #[arg(long, value_delimiter = ',')]
    providers: Vec<String>,
    /// Seconds between republications of the node's descriptor.
    #[arg(long, default_value_t = 60)]
    descriptor_refresh_secs: u64,
    /// Most packets per second accepted from one peer (more are dropped and
    /// counted; a peer that keeps flooding is cut off).
    #[arg(long, default_value_t = 1000)]
    peer_packet_rate: u32,
    #[command(flatten)]
    unlock: UnlockArgs,
}

pub(crate) fn parse_preset(text: &str) -> Result<Preset, String> {
    match text {
        "low-bandwidth" => Ok(Preset::LowBandwidth),
        "standard" => Ok(Preset::Standard),
        "strong" => Ok(Preset::Strong),
        other => Err(format!(
            "unknown preset {other:?}: use low-bandwidth, standard or strong"
        )),
    }
}

fn parse_roles(text: &str) -> Result<Roles> {
    let mut roles = Roles {
        mix: false,
        provider: false,
    };
    for part in text.split(',').map(str::trim) {
        match part {
            "mix" => roles.mix = true,
            "provider" => roles.provider = true,
            "none" => {}
            other => bail!("unknown role {other:?}: use mix, provider, or none"),
        }
    }
    Ok(roles)
}

/// Where a node listens unless told: a mix or provider on the well-known
/// port 4001 of every interface (TCP and QUIC, IPv4 and, where the machine
/// has it, IPv6); a client-only node on any free port.
fn default_listen(roles: &Roles) -> Vec<Multiaddr> {
    let (port, v6) = if roles.mix || roles.provider {
        // IPv6 only where the machine has it, so that a host without it
        // still starts with the defaults.
        let v6 = std::net::UdpSocket::bind((std::net::Ipv6Addr::UNSPECIFIED, 0)).is_ok();
        (4001, v6)
    } else {
        (0, false)
    };
    let mut addrs = vec![
        format!("/ip4/0.0.0.0/tcp/{port}"),
        format!("/ip4/0.0.0.0/udp/{port}/quic-v1"),
    ];
    if v6 {
        addrs.push(format!("/ip6/::/tcp/{port}"));
        addrs.push(format!("/ip6/::/udp/{port}/quic-v1"));
    }
    addrs.iter().filter_map(|a| a.parse().ok()).collect()
}

fn parse_node_id(text: &str) -> Result<NodeId> {
    chainmail_client::hex::unhex_array::<32>(text)
        .map(NodeId)
        .with_context(|| format!("provider {text:?} must be a node id: 64 hex digits"))
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cli.log));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<std::process::ExitCode> {
    match command {
        Command::Demo {
            nodes,
            messages,
            preset,
            dir,
            timeout_secs,
            interval_ms,
            idle_secs,
        } => {
            let ok = demo::run(demo::DemoOptions {
                nodes,
                messages,
                preset,
                dir,
                timeout: Duration::from_secs(timeout_secs),
                interval: Duration::from_millis(interval_ms),
                idle: Duration::from_secs(idle_secs),
            })
            .await?;
            if !ok {
                return Ok(std::process::ExitCode::FAILURE);
            }
        }
        Command::Testnet {
            nodes,
            dir,
            preset,
            epoch_secs,
        } => {
            testnet::run(
                &dir,
                testnet::TestnetOptions {
                    nodes,
                    preset,
                    epoch_secs,
                    mean_delay_ms: None,
                },
            )
            .await?;
        }
        Command::Network(command) => cli_network::run(command)?,
        Command::Node(args) => {
            let network = NetworkFile::load(&args.network)?;
            let roles = parse_roles(&args.roles)?;
            let opts = NodeOptions {
                network,
                data_dir: args.data_dir,
                listen: if args.listen.is_empty() {
                    default_listen(&roles)
                } else {
                    args.listen
                },
                external_addrs: args.external_addresses,
                roles,
                client: args.client,
                providers: args
                    .providers
                    .iter()
                    .map(|p| parse_node_id(p))
                    .collect::<Result<_>>()?,
                api_port: args.api_port,
                descriptor_refresh: Duration::from_secs(args.descriptor_refresh_secs.max(1)),
                peer_packet_rate: args.peer_packet_rate.max(1),
                unlock: args.unlock.unlock(),
            };
            if !opts.providers.is_empty() && opts.providers.len() < 2 {
                bail!("give at least two --providers, so that one can fail without losing mail");
            }
            runtime::run_node(opts, shutdown_signal()).await?;
        }
        Command::Init {
            network,
            data,
            name,
            unlock,
            identity_file,
            json,
        } => {
            let network = NetworkFile::load(&network)?;
            let (address, key_file) = account::init(
                &data.data_dir,
                &network,
                &name,
                &unlock.unlock(),
                identity_file.as_deref(),
            )?;
            cli::print_init(&address, key_file.as_deref(), json)?;
        }
        Command::Whoami {
            data,
            export_identity,
            json,
        } => cli::whoami(&data, export_identity.as_deref(), json).await?,
        Command::Contact(command) => cli::contact(command).await?,
        Command::Advisory(command) => cli::advisory(command).await?,
        Command::Community(command) => cli_community::community(command).await?,
        Command::Send {
            data,
            to,
            text,
            json,
        } => cli::send(&data, &to, &text, json).await?,
        Command::Inbox {
            data,
            after,
            follow,
            json,
        } => cli::inbox(&data, after, follow, json).await?,
        Command::Verify {
            data,
            name,
            mark,
            json,
        } => cli::verify(&data, &name, mark, json).await?,
        Command::Status { data, json } => cli::status(&data, json).await?,
        Command::Directory { data, json } => cli::directory(&data, json).await?,
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
    }
}
