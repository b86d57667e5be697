//! `chainmail network`: network files for networks of many machines.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use chainmail_mixnet::Preset;
use chainmail_node::network::{
    AccountSection, EpochSection, MailboxSection, MixingSection, NetworkFile, NetworkSection,
    check_bootstrap,
};

#[derive(clap::Subcommand)]
pub(crate) enum NetworkCommand {
    /// Write the network file of a new network. Every node and user of the
    /// network needs this file: publish it where your users find it.
    ///
    /// The first node starts with a file without bootstrap nodes. Once it
    /// runs, read its peer id (`chainmail status --data-dir DIR`) and write
    /// the file again with its public address as --bootstrap (and --force);
    /// that file is the one to publish.
    New {
        /// Network id: part of every protocol name, so that networks never
        /// mix. Letters, digits and '-'; at most 64.
        #[arg(long)]
        id: String,
        /// The name users see.
        #[arg(long)]
        name: String,
        /// A node to join through, as a multiaddress ending in its peer id:
        /// /ip4/198.18.0.11/tcp/4001/p2p/12D3KooW…; repeat for several
        /// (two or more, so that one being down does not keep people out).
        /// None for the file the very first node starts with.
        #[arg(long = "bootstrap", value_name = "MULTIADDR")]
        bootstrap: Vec<String>,
        /// Anonymity preset: low-bandwidth, standard or strong.
        #[arg(long, default_value = "standard", value_parser = crate::parse_preset)]
        preset: Preset,
        /// A network on one machine or one LAN: nodes announce loopback and
        /// private addresses.
        #[arg(long)]
        local: bool,
        /// Where to write it.
        #[arg(long, default_value = "network.toml")]
        out: PathBuf,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
    },
}

pub(crate) fn run(command: NetworkCommand) -> Result<()> {
    match command {
        NetworkCommand::New {
            id,
            name,
            bootstrap,
            preset,
            local,
            out,
            force,
        } => {
            let file = NetworkFile {
                network: NetworkSection {
                    id,
                    name,
                    bootstrap,
                    local,
                },
                epochs: EpochSection::default(),
                mixing: MixingSection {
                    preset,
                    ..MixingSection::default()
                },
                mailboxes: MailboxSection::default(),
                accounts: AccountSection::default(),
            };
            for address in &file.network.bootstrap {
                check_bootstrap(address, file.network.scope()).map_err(anyhow::Error::msg)?;
            }
            file.params().map_err(anyhow::Error::msg)?;
            if out.exists() && !force {
                bail!(
                    "{} exists: choose another --out, or pass --force to replace it",
                    out.display()
                );
            }
            std::fs::write(&out, file.to_toml())
                .with_context(|| format!("cannot write {}", out.display()))?;
            println!("wrote {}", out.display());
            if file.network.bootstrap.is_empty() {
                println!(
                    "no bootstrap node yet: start the first node with this file, then write it again with that node's address (--bootstrap /ip4/ADDRESS/tcp/4001/p2p/PEER_ID --force) before giving it to anyone"
                );
            } else if file.network.bootstrap.len() < 2 {
                println!(
                    "note: with one bootstrap node, nobody can join while it is down; add more with `--bootstrap` when you can"
                );
            }
            Ok(())
        }
    }
}
