//! The client commands: each asks the running node through its local API
//! and prints the answer for people, or as JSON with `--json`.

use std::path::Path;
use std::time::Duration;

use anyhow::Result;
use chainmail_session::Address;
use serde_json::{Value, json};

use crate::DataDirArg;
use chainmail_client::{
    AccountRequest, AdvisoryPublished, ContactChange, ContactView, DirectChange, HistoryEntry,
    IdentityExport, Queued, SafetyNumberView, SentMessage, Whoami,
};

/// `chainmail contact …`
#[derive(clap::Subcommand)]
pub(crate) enum ContactCommand {
    /// Ask someone to talk: looks up their address and sends a contact
    /// request (with proof of work) that they accept, deny or ignore.
    Add {
        #[command(flatten)]
        data: DataDirArg,
        /// Their address (cm1…).
        address: String,
        /// What you call them.
        #[arg(long)]
        name: String,
        /// A few words with the request.
        #[arg(long)]
        message: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Your contacts and where each stands.
    List {
        #[command(flatten)]
        data: DataDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Requests waiting for your answer.
    Requests {
        #[command(flatten)]
        data: DataDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept a request.
    Accept {
        #[command(flatten)]
        data: DataDirArg,
        /// The requester's name (as `contact requests` shows it).
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Deny a request (the requester is told).
    Deny {
        #[command(flatten)]
        data: DataDirArg,
        /// The requester's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ignore a request (nobody is told; nothing from them is shown).
    Ignore {
        #[command(flatten)]
        data: DataDirArg,
        /// The requester's name.
        name: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Direct mode with a contact: messages go over a direct connection
    /// between your two nodes instead of through the mixnet. It starts only
    /// when both of you turned it on, and then each of you can see the
    /// other's network (IP) address. If no direct connection can be made
    /// (some home routers prevent it), messages keep going through the
    /// mixnet. `off` withdraws it and closes the connection.
    Direct {
        #[command(flatten)]
        data: DataDirArg,
        /// The contact's name.
        name: String,
        /// `on` or `off`.
        #[arg(value_parser = ["on", "off"])]
        state: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `chainmail advisory …`
#[derive(clap::Subcommand)]
pub(crate) enum AdvisoryCommand {
    /// Make an advisory key; its public half goes into the network file
    /// as `[accounts] advisory_key`.
    Keygen {
        /// Where to write the secret key (64 hex digits).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Sign a list of unsafe client versions.
    Sign {
        /// The secret advisory key.
        #[arg(long)]
        key_file: std::path::PathBuf,
        /// The network file.
        #[arg(long)]
        network: std::path::PathBuf,
        /// Higher than the last advisory's.
        #[arg(long)]
        sequence: u64,
        /// Versions, as clients report them (e.g. "chainmail 0.1.0").
        #[arg(long = "unsafe", value_delimiter = ',')]
        versions: Vec<String>,
        /// Where to write the signed advisory (hex).
        #[arg(long)]
        out: std::path::PathBuf,
    },
    /// Give a signed advisory to a running node, which checks it and
    /// stores it in the network's DHT.
    Publish {
        #[command(flatten)]
        data: DataDirArg,
        /// The signed advisory (from `advisory sign`).
        file: std::path::PathBuf,
    },
}

pub(crate) async fn advisory(command: AdvisoryCommand) -> Result<()> {
    use anyhow::Context as _;
    match command {
        AdvisoryCommand::Keygen { out } => {
            let seed: [u8; 32] = rand::random();
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            let text = zeroize::Zeroizing::new(format!("{}\n", chainmail_client::hex::hex(&seed)));
            crate::runtime::write_private(&out, text.as_bytes())?;
            println!(
                "secret key written to {}; put this in the network file:",
                out.display()
            );
            println!("[accounts]");
            println!(
                "advisory_key = \"{}\"",
                chainmail_client::hex::hex(key.verifying_key().as_bytes())
            );
        }
        AdvisoryCommand::Sign {
            key_file,
            network,
            sequence,
            versions,
            out,
        } => {
            let network = crate::network::NetworkFile::load(&network)?;
            let text = zeroize::Zeroizing::new(
                std::fs::read_to_string(&key_file)
                    .with_context(|| format!("reading {}", key_file.display()))?,
            );
            let seed = chainmail_client::hex::unhex_array::<32>(text.trim())
                .with_context(|| format!("{} must hold 64 hex digits", key_file.display()))?;
            let key = ed25519_dalek::SigningKey::from_bytes(&seed);
            if network.advisory_key() != Some(key.verifying_key()) {
                anyhow::bail!("this key is not the network file's advisory_key");
            }
            let advisory = chainmail_session::AdvisoryBody {
                network: chainmail_mixnet::network_hash(&network.network.id),
                sequence,
                issued: crate::runtime::now(),
                unsafe_versions: versions,
            }
            .sign(&key)?;
            std::fs::write(&out, chainmail_client::hex::hex(&advisory.encode()?))?;
            println!("advisory {sequence} written to {}", out.display());
        }
        AdvisoryCommand::Publish { data, file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let request = AccountRequest::AdvisoryPublish {
                advisory: text.trim().to_owned(),
            };
            let v: AdvisoryPublished = account(&data.data_dir, &request).await?;
            println!("advisory {} published", v.sequence);
        }
    }
    Ok(())
}

use crate::api_client::account;

fn print_json(value: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// After `init`.
pub(crate) fn print_init(address: &Address, key_file: Option<&Path>, json: bool) -> Result<()> {
    if json {
        return print_json(&json!({
            "address": address.to_string(),
            "key_file": key_file.map(|p| p.display().to_string()),
        }));
    }
    println!("Your address (give it to the people who should reach you):");
    println!("  {address}");
    if let Some(path) = key_file {
        println!(
            "Your account is encrypted with the key file {}: keep it safe and private; \
             without it the account cannot be opened.",
            path.display()
        );
    }
    println!("Start your node with --client to go online.");
    Ok(())
}

pub(crate) async fn whoami(data: &DataDirArg, export: Option<&Path>, json: bool) -> Result<()> {
    if let Some(path) = export {
        let v: IdentityExport = account(&data.data_dir, &AccountRequest::ExportIdentity).await?;
        let seed = zeroize::Zeroizing::new(format!("{}\n", v.identity_seed));
        crate::runtime::write_private(path, seed.as_bytes())?;
        eprintln!(
            "identity written to {}: anyone with this file can be you; delete it once used",
            path.display()
        );
    }
    let v: Whoami = account(&data.data_dir, &AccountRequest::Whoami).await?;
    if json {
        return print_json(&serde_json::to_value(&v)?);
    }
    println!("{}", v.name);
    println!("  address  {}", v.address);
    println!(
        "  keys     {} (changes only if you move to a new device)",
        v.olm_identity_key
    );
    Ok(())
}

fn print_contacts(contacts: &[ContactView]) {
    if contacts.is_empty() {
        println!("(none)");
    }
    for c in contacts {
        let mut flags = Vec::new();
        if c.verified {
            flags.push("verified".to_string());
        }
        if c.key_changed {
            flags.push("KEYS CHANGED: compare safety numbers again".to_string());
        }
        if c.unsafe_version {
            flags.push(format!(
                "UNSAFE VERSION {}: ask them to update",
                c.client_version.as_deref().unwrap_or_default()
            ));
        }
        if c.direct.state != "off" {
            flags.push(format!("direct mode {}", c.direct.state));
        }
        println!(
            "{:<16} {:<17} {}{}",
            c.name,
            c.state,
            c.address,
            if flags.is_empty() {
                String::new()
            } else {
                format!("  [{}]", flags.join(", "))
            }
        );
        if let Some(text) = &c.request_text {
            println!("{:<16} “{text}”", "");
        }
        if c.direct.state != "off" {
            println!("{:<16} direct mode: {}", "", c.direct.detail);
        }
    }
}

pub(crate) async fn contact(command: ContactCommand) -> Result<()> {
    let (data, request, json) = match command {
        ContactCommand::Add {
            data,
            address,
            name,
            message,
            json,
        } => (
            data,
            AccountRequest::ContactAdd {
                address,
                name,
                message,
            },
            json,
        ),
        ContactCommand::List { data, json } => (data, AccountRequest::ContactList, json),
        ContactCommand::Requests { data, json } => (data, AccountRequest::ContactRequests, json),
        ContactCommand::Accept { data, name, json } => {
            (data, AccountRequest::ContactAccept { name }, json)
        }
        ContactCommand::Deny { data, name, json } => {
            (data, AccountRequest::ContactDeny { name }, json)
        }
        ContactCommand::Ignore { data, name, json } => {
            (data, AccountRequest::ContactIgnore { name }, json)
        }
        ContactCommand::Direct {
            data,
            name,
            state,
            json,
        } => {
            let on = state == "on";
            let request = AccountRequest::ContactDirect { name, on };
            let change: DirectChange = account(&data.data_dir, &request).await?;
            if json {
                return print_json(&serde_json::to_value(&change)?);
            }
            if on {
                println!(
                    "Direct mode with {name}: {state}. Once {name} turns it on too, your nodes \
                     connect directly and {name} can see your network (IP) address, and you \
                     theirs.",
                    name = change.name,
                    state = change.direct.state
                );
            } else {
                println!("Direct mode with {} is off.", change.name);
            }
            println!("{}", change.direct.detail);
            return Ok(());
        }
    };
    if matches!(
        request,
        AccountRequest::ContactList | AccountRequest::ContactRequests
    ) {
        let contacts: Vec<ContactView> = account(&data.data_dir, &request).await?;
        if json {
            return print_json(&serde_json::to_value(&contacts)?);
        }
        print_contacts(&contacts);
    } else {
        let change: ContactChange = account(&data.data_dir, &request).await?;
        if json {
            return print_json(&serde_json::to_value(&change)?);
        }
        println!("{}: {}", change.name, change.state);
    }
    Ok(())
}

pub(crate) async fn send(data: &DataDirArg, to: &str, text: &str, json: bool) -> Result<()> {
    let request = AccountRequest::Send {
        to: to.to_owned(),
        text: text.to_owned(),
    };
    let queued: Queued = account(&data.data_dir, &request).await?;
    if json {
        return print_json(&serde_json::to_value(&queued)?);
    }
    println!("{}", queued.id);
    Ok(())
}

fn print_entry(e: &HistoryEntry) {
    let when = e.at / 1000;
    let text = e.text.as_deref().unwrap_or_default();
    match e.kind.as_str() {
        "message" => println!("[{when}] {}: {text}", e.name),
        "request" => println!(
            "[{when}] contact request from {} ({}){}: accept with `chainmail contact accept {}`",
            e.name,
            e.contact,
            if text.is_empty() {
                String::new()
            } else {
                format!(" “{text}”")
            },
            e.name
        ),
        "accepted" => println!("[{when}] {} accepted your request", e.name),
        "denied" => println!("[{when}] {} denied your request", e.name),
        "key-changed" => println!(
            "[{when}] WARNING: {}'s keys changed. Someone may be in the middle, or they moved \
             to a new device: compare safety numbers (`chainmail verify {}`) before trusting them.",
            e.name, e.name
        ),
        "unsafe-version" => println!(
            "[{when}] WARNING: {} runs {text}, which this network's advisory lists as unsafe; \
             ask them to update before sending anything sensitive",
            e.name
        ),
        "community-invite" => println!(
            "[{when}] {} invited you to the community {text}: join with `chainmail community join {}`",
            e.name,
            e.id.as_deref().unwrap_or_default()
        ),
        "direct" => println!("[{when}] {text}"),
        "lookup-failed" => println!(
            "[{when}] {} was not found in the network yet; trying again",
            e.name
        ),
        "state" => println!(
            "[{when}] your message {} to {}: {}",
            e.id.as_deref().unwrap_or_default(),
            e.name,
            e.state.as_deref().unwrap_or_default()
        ),
        other => println!("[{when}] {other} {}", e.name),
    }
}

pub(crate) async fn inbox(data: &DataDirArg, after: u64, follow: bool, json: bool) -> Result<()> {
    let mut after = after;
    loop {
        let entries: Vec<HistoryEntry> =
            account(&data.data_dir, &AccountRequest::Inbox { after }).await?;
        for e in &entries {
            if json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                print_entry(e);
            }
            after = after.max(e.seq);
        }
        if !follow {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub(crate) async fn verify(data: &DataDirArg, name: &str, mark: bool, json: bool) -> Result<()> {
    let request = AccountRequest::Verify {
        name: name.to_owned(),
        mark,
    };
    let v: SafetyNumberView = account(&data.data_dir, &request).await?;
    if json {
        return print_json(&serde_json::to_value(&v)?);
    }
    println!(
        "Safety number with {} (compare it with theirs, in person or on a call):",
        v.name
    );
    for line in &v.lines {
        println!("  {line}");
    }
    if v.key_changed {
        println!("Their keys changed since you last verified them.");
    }
    println!(
        "{}",
        if v.verified {
            "Marked verified."
        } else {
            "Not verified: if the numbers match, run again with --mark."
        }
    );
    Ok(())
}

pub(crate) async fn status(data: &DataDirArg, json: bool) -> Result<()> {
    let status: Value = crate::api_client::get(&data.data_dir, "/v1/status").await?;
    let sent: Option<Vec<SentMessage>> = account(&data.data_dir, &AccountRequest::Sent).await.ok();
    if json {
        let mut out = status;
        out["messages"] = json!(sent);
        return print_json(&out);
    }
    println!(
        "node {} — {} peers, directory {}, epoch {}",
        status["peer_id"].as_str().unwrap_or_default(),
        status["peers"],
        if status["directory_complete"] == true {
            "complete"
        } else {
            "incomplete"
        },
        status["epoch"]
    );
    if let Some(line) = status["reachability"].as_str() {
        println!("{line}");
    }
    if let Some(line) = status["anonymity"].as_str().filter(|l| !l.is_empty()) {
        println!("{line}");
    }
    for d in status["direct"].as_array().into_iter().flatten() {
        println!(
            "direct mode with {}: {} — {}",
            d["contact"].as_str().unwrap_or_default(),
            d["state"].as_str().unwrap_or_default(),
            d["detail"].as_str().unwrap_or_default()
        );
    }
    for b in status["bootstrap"].as_array().into_iter().flatten() {
        if b["connected"] == true {
            continue;
        }
        let addr = b["addr"].as_str().unwrap_or_default();
        match b["last_error"].as_str() {
            Some(e) => println!(
                "bootstrap {addr}: not connected, {} attempts failed, next in {} s: {e}",
                b["failures"], b["retry_in_secs"]
            ),
            None => println!("bootstrap {addr}: not connected"),
        }
    }
    match sent {
        None => println!("(no account on this node)"),
        Some(sent) if sent.is_empty() => println!("no messages sent yet"),
        Some(sent) => {
            for m in sent {
                let text: String = m.text.chars().take(40).collect();
                println!("{:<10} {:<16} {text}", m.state, m.name);
            }
        }
    }
    Ok(())
}

/// `chainmail directory`: the node descriptors a running node knows.
pub(crate) async fn directory(data: &DataDirArg, json: bool) -> Result<()> {
    let entries: Vec<chainmail_node::api::DirectoryEntry> =
        crate::api_client::get(&data.data_dir, "/v1/directory").await?;
    if json {
        return print_json(&serde_json::to_value(&entries)?);
    }
    for e in entries {
        let roles = match (e.mix, e.provider) {
            (true, true) => "mix,provider",
            (true, false) => "mix",
            (false, true) => "provider",
            (false, false) => "none",
        };
        println!(
            "{}  {roles:<12}  {}",
            &e.node_id[..16.min(e.node_id.len())],
            e.addresses.join(" ")
        );
    }
    Ok(())
}
