//! `chainmail community …`: the CLI side of communities. Every command
//! asks the running node (op `community` of `POST /v1/account`) and prints
//! for people, or JSON with `--json`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::DataDirArg;
use chainmail_client::{AccountRequest, CommunityRequest};

/// `chainmail community …`
#[derive(clap::Subcommand)]
pub(crate) enum CommunityCommand {
    /// Start a community; you are its owner. Members talk over a swarm of
    /// their nodes: joining one shows your node's network address to the
    /// other members' nodes (not to anyone else).
    Create {
        #[command(flatten)]
        data: DataDirArg,
        /// Its name.
        name: String,
        /// Your name in it (default: your account's name).
        #[arg(long)]
        me: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Your communities.
    List {
        #[command(flatten)]
        data: DataDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Invite a contact (moderators and above): the invitation travels in
    /// your end-to-end session with them.
    Invite {
        #[command(flatten)]
        data: DataDirArg,
        /// The community (name or id prefix).
        community: String,
        /// The contact's name.
        contact: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Invitations you received.
    Invites {
        #[command(flatten)]
        data: DataDirArg,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Accept an invitation (token, community id prefix or name): your
    /// node asks the inviter to add you and syncs the chain once added.
    Join {
        #[command(flatten)]
        data: DataDirArg,
        /// The invitation.
        invite: String,
        /// Your name in the community (default: your account's name).
        #[arg(long)]
        me: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Post a text (encrypted under the community key).
    Post {
        #[command(flatten)]
        data: DataDirArg,
        /// The community.
        community: String,
        /// The text.
        text: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// The community's log: posts and changes, oldest first.
    Log {
        #[command(flatten)]
        data: DataDirArg,
        /// The community.
        community: String,
        /// Keep printing new entries.
        #[arg(long)]
        follow: bool,
        /// Print JSON (one object per line).
        #[arg(long)]
        json: bool,
    },
    /// Members and their roles.
    Members {
        #[command(flatten)]
        data: DataDirArg,
        /// The community.
        community: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Raise a member of lower rank one role (member → moderator → admin),
    /// never to your own rank.
    Promote(ActArgs),
    /// Lower a member of lower rank one role.
    Demote(ActArgs),
    /// Remove a member of lower rank; the community key rotates, so they
    /// cannot read what is posted after.
    Remove(ActArgs),
    /// Remove a member of lower rank for good.
    Ban(ActArgs),
    /// Hide a post: your own, or (as a moderator) one of a lower rank.
    Redact(ActArgs),
    /// Write the community's blocks to a file: a copy that anyone in the
    /// community can verify from the genesis (a backup, or a way to hand
    /// the chain to a member's node without the swarm). It holds no keys;
    /// posts in it stay encrypted.
    Export {
        #[command(flatten)]
        data: DataDirArg,
        /// The community.
        community: String,
        /// The file to write.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add blocks from a file written by `community export`. Every block is
    /// verified as if it came from the swarm: a block that breaks a rule is
    /// refused (and counted in the node's metrics), the others are kept.
    /// Exits non-zero if any block was refused.
    Import {
        #[command(flatten)]
        data: DataDirArg,
        /// The file.
        file: std::path::PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Leave the community.
    Leave {
        #[command(flatten)]
        data: DataDirArg,
        /// The community.
        community: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A community, a target (member name or id prefix, or a record id prefix
/// for `redact`), `--json`.
#[derive(clap::Args)]
pub(crate) struct ActArgs {
    #[command(flatten)]
    data: DataDirArg,
    /// The community.
    community: String,
    /// The member (name or id prefix) or, for redact, the record id prefix.
    target: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

async fn ask(data: &DataDirArg, community: CommunityRequest) -> Result<Value> {
    crate::api_client::account(&data.data_dir, &AccountRequest::Community { community }).await
}

fn short(id: &str) -> &str {
    id.get(..12).unwrap_or(id)
}

fn print_summary(v: &Value) {
    println!(
        "{} {}  ({} as {}{}, {} members, height {}, epoch {})",
        short(v["id"].as_str().unwrap_or("")),
        v["name"].as_str().unwrap_or(""),
        v["my_name"].as_str().unwrap_or(""),
        v["role"].as_str().unwrap_or(""),
        if v["admitted"].as_bool() == Some(true) {
            ""
        } else {
            ", waiting to be admitted"
        },
        v["members"],
        v["height"],
        v["epoch"],
    );
    match v["pending"].as_u64() {
        Some(0) | None => {}
        Some(1) => println!("  1 record of yours waits for a block"),
        Some(n) => println!("  {n} records of yours wait for a block"),
    }
    for f in v["failed"].as_array().into_iter().flatten() {
        println!(
            "  not posted: {:?} ({})",
            f["text"].as_str().unwrap_or(""),
            f["reason"].as_str().unwrap_or("")
        );
    }
}

fn print_log_entry(e: &Value) {
    let who = e["author_name"].as_str().unwrap_or("?");
    let target = e["target_name"]
        .as_str()
        .or_else(|| e["target"].as_str().map(short))
        .unwrap_or("?");
    let text = e["text"].as_str().unwrap_or("");
    let record = short(e["record"].as_str().unwrap_or(""));
    match e["kind"].as_str().unwrap_or("") {
        "post" => println!("[{record}] {who}: {text}"),
        "post-unreadable" => println!("[{record}] {who}: (posted before you joined)"),
        "post-redacted" => println!("[{record}] {who}: (redacted)"),
        "added" => println!("[{record}] {who} added {text}"),
        "removed" => println!("[{record}] {who} removed {target}"),
        "banned" => println!("[{record}] {who} banned {target}"),
        "role" => println!("[{record}] {who} made {target} {text}"),
        "redact" => println!("[{record}] {who} redacted a post"),
        "key-rotated" => println!("[{record}] {who} rotated the key (epoch {text})"),
        "left" => println!("[{record}] {who} left"),
        other => println!("[{record}] {who} {other}"),
    }
}

pub(crate) async fn community(command: CommunityCommand) -> Result<()> {
    let act = |action: &str, a: ActArgs| {
        (
            a.data,
            CommunityRequest::Act {
                community: a.community,
                action: action.to_owned(),
                target: a.target,
            },
            a.json,
        )
    };
    let (data, request, json) = match command {
        CommunityCommand::Create {
            data,
            name,
            me,
            json,
        } => {
            let v = ask(&data, CommunityRequest::Create { name, me }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("created ");
                print_summary(&v);
            }
            return Ok(());
        }
        CommunityCommand::List { data, json } => {
            let v = ask(&data, CommunityRequest::List).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if v.as_array().is_none_or(Vec::is_empty) {
                println!(
                    "no communities yet: `chainmail community create NAME`, or join an invitation"
                );
            } else {
                v.as_array().into_iter().flatten().for_each(print_summary);
            }
            return Ok(());
        }
        CommunityCommand::Invites { data, json } => {
            let v = ask(&data, CommunityRequest::Invites).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else if v.as_array().is_none_or(Vec::is_empty) {
                println!("no invitations");
            } else {
                for i in v.as_array().into_iter().flatten() {
                    println!(
                        "{}  {} (community {}) from {}{}",
                        i["token"].as_str().unwrap_or(""),
                        i["name"].as_str().unwrap_or(""),
                        short(i["community"].as_str().unwrap_or("")),
                        i["from_name"].as_str().unwrap_or(""),
                        if i["joined"].as_bool() == Some(true) {
                            "  (joined)"
                        } else {
                            ""
                        }
                    );
                }
            }
            return Ok(());
        }
        CommunityCommand::Join {
            data,
            invite,
            me,
            json,
        } => {
            let v = ask(&data, CommunityRequest::Join { invite, me }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "asked to join {}; you are in once a moderator's node adds you (`chainmail community list`)",
                    v["name"].as_str().unwrap_or("")
                );
            }
            return Ok(());
        }
        CommunityCommand::Log {
            data,
            community,
            follow,
            json,
        } => {
            let mut after = 0u64;
            loop {
                let v = ask(
                    &data,
                    CommunityRequest::Log {
                        community: community.clone(),
                        after,
                    },
                )
                .await?;
                for e in v["entries"].as_array().into_iter().flatten() {
                    if json {
                        println!("{}", serde_json::to_string(e)?);
                    } else {
                        print_log_entry(e);
                    }
                }
                after = after.max(v["height"].as_u64().unwrap_or(after));
                if !follow {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        CommunityCommand::Members {
            data,
            community,
            json,
        } => {
            let v = ask(&data, CommunityRequest::Members { community }).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                for m in v.as_array().into_iter().flatten() {
                    println!(
                        "{:<10} {} {}{}",
                        m["role"].as_str().unwrap_or(""),
                        short(m["id"].as_str().unwrap_or("")),
                        m["name"].as_str().unwrap_or(""),
                        if m["me"].as_bool() == Some(true) {
                            " (you)"
                        } else {
                            ""
                        }
                    );
                }
            }
            return Ok(());
        }
        CommunityCommand::Export {
            data,
            community,
            out,
            json,
        } => return export(&data, &community, &out, json).await,
        CommunityCommand::Import { data, file, json } => {
            return import(&data, &file, json).await;
        }
        CommunityCommand::Invite {
            data,
            community,
            contact,
            json,
        } => (data, CommunityRequest::Invite { community, contact }, json),
        CommunityCommand::Post {
            data,
            community,
            text,
            json,
        } => (data, CommunityRequest::Post { community, text }, json),
        CommunityCommand::Promote(a) => act("promote", a),
        CommunityCommand::Demote(a) => act("demote", a),
        CommunityCommand::Remove(a) => act("remove", a),
        CommunityCommand::Ban(a) => act("ban", a),
        CommunityCommand::Redact(a) => act("redact", a),
        CommunityCommand::Leave {
            data,
            community,
            json,
        } => (
            data,
            CommunityRequest::Act {
                community,
                action: "leave".into(),
                target: String::new(),
            },
            json,
        ),
    };
    let v = ask(&data, request).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else if let Some(r) = v["record"].as_str() {
        println!(
            "record {} signed; it is in once a block includes it",
            short(r)
        );
    } else {
        println!("invitation sent to {}", v["invited"].as_str().unwrap_or(""));
    }
    Ok(())
}

/// First line of an export file.
const EXPORT_MAGIC: &str = "chainmail-community-blocks 1";
/// Most hex characters of blocks in one import request (the local API
/// takes bodies up to 2 MiB).
const IMPORT_CHUNK_CHARS: usize = 1 << 20;

async fn export(data: &DataDirArg, community: &str, out: &Path, json: bool) -> Result<()> {
    let request = CommunityRequest::Export {
        community: community.to_owned(),
    };
    let v = ask(data, request).await?;
    let id = v["community"]
        .as_str()
        .context("the node sent no community id")?;
    let blocks = v["blocks"].as_array().context("the node sent no blocks")?;
    let mut text = format!("{EXPORT_MAGIC}\ncommunity {id}\n");
    for b in blocks {
        text.push_str(b.as_str().context("a block that is not text")?);
        text.push('\n');
    }
    // Written whole or not at all.
    let dir = out.parent().filter(|p| !p.as_os_str().is_empty());
    let tmp = tempfile::NamedTempFile::new_in(dir.unwrap_or(Path::new(".")))
        .with_context(|| format!("cannot write next to {}", out.display()))?;
    std::fs::write(tmp.path(), &text)
        .with_context(|| format!("cannot write {}", tmp.path().display()))?;
    tmp.persist(out)
        .with_context(|| format!("cannot write {}", out.display()))?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "community": id,
                "blocks": blocks.len(),
                "height": v["height"],
                "file": out.display().to_string(),
            }))?
        );
    } else {
        println!(
            "wrote {} blocks of {} (height {}) to {}",
            blocks.len(),
            v["name"].as_str().unwrap_or(""),
            v["height"],
            out.display()
        );
    }
    Ok(())
}

/// Reads an export file: the community id and the blocks (hex), or what is
/// wrong with it and where.
fn read_export(file: &Path) -> Result<(String, Vec<String>)> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let mut lines = text.lines();
    if lines.next() != Some(EXPORT_MAGIC) {
        bail!(
            "{} is not a community export (its first line is not {EXPORT_MAGIC:?})",
            file.display()
        );
    }
    let id = lines
        .next()
        .and_then(|l| l.strip_prefix("community "))
        .filter(|id| id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit()))
        .with_context(|| format!("{}: line 2 must be `community ID`", file.display()))?;
    let mut blocks = Vec::new();
    for (i, line) in lines.enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if !line.len().is_multiple_of(2) || !line.bytes().all(|c| c.is_ascii_hexdigit()) {
            bail!("{}: line {} is not a hex block", file.display(), i + 3);
        }
        blocks.push(line.to_owned());
    }
    Ok((id.to_owned(), blocks))
}

async fn import(data: &DataDirArg, file: &Path, json: bool) -> Result<()> {
    let (id, blocks) = read_export(file)?;
    let (mut stored, mut known, mut waiting) = (0u64, 0u64, 0u64);
    let mut refused: Vec<Value> = Vec::new();
    let mut height = Value::Null;
    let mut start = 0;
    while start < blocks.len() {
        let mut end = start;
        let mut chars = 0;
        while end < blocks.len()
            && end - start < chainmail_client::MAX_IMPORT_BLOCKS
            && (end == start || chars + blocks[end].len() <= IMPORT_CHUNK_CHARS)
        {
            chars += blocks[end].len();
            end += 1;
        }
        let v = ask(
            data,
            CommunityRequest::Import {
                community: id.clone(),
                blocks: blocks[start..end].to_vec(),
            },
        )
        .await?;
        stored += v["stored"].as_u64().unwrap_or(0);
        known += v["known"].as_u64().unwrap_or(0);
        waiting += v["waiting_for_parent"].as_u64().unwrap_or(0);
        for r in v["refused"].as_array().into_iter().flatten() {
            let index = r["index"].as_u64().unwrap_or(0) + start as u64;
            refused.push(json!({ "block": index + 1, "error": r["error"] }));
        }
        height = v["height"].clone();
        start = end;
        if !json && blocks.len() > chainmail_client::MAX_IMPORT_BLOCKS {
            eprintln!("  {start}/{} blocks checked", blocks.len());
        }
    }
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({
                "stored": stored,
                "known": known,
                "waiting_for_parent": waiting,
                "refused": refused,
                "height": height,
            }))?
        );
    } else {
        println!(
            "{} blocks: {stored} new, {known} already here, {waiting} waiting for a parent not in the file, {} refused; height now {height}",
            blocks.len(),
            refused.len()
        );
        for r in &refused {
            eprintln!(
                "  block {} refused: {}",
                r["block"],
                r["error"].as_str().unwrap_or("")
            );
        }
    }
    if !refused.is_empty() {
        bail!(
            "{} of {} blocks in {} were refused (the others were kept)",
            refused.len(),
            blocks.len(),
            file.display()
        );
    }
    Ok(())
}
