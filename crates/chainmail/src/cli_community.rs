//! `chainmail community …`: the CLI side of communities. Every command
//! asks the running node (op `community` of `POST /v1/account`) and prints
//! for people, or JSON with `--json`.

use std::time::Duration;

use anyhow::Result;
use serde_json::{Value, json};

use crate::DataDirArg;

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

async fn ask(data: &DataDirArg, request: Value) -> Result<Value> {
    crate::api_client::post(
        &data.data_dir,
        "/v1/account",
        &json!({ "op": "community", "community": request }),
    )
    .await
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
            json!({ "request": "act", "community": a.community, "action": action, "target": a.target }),
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
            let v = ask(
                &data,
                json!({ "request": "create", "name": name, "me": me }),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print!("created ");
                print_summary(&v);
            }
            return Ok(());
        }
        CommunityCommand::List { data, json } => {
            let v = ask(&data, json!({ "request": "list" })).await?;
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
            let v = ask(&data, json!({ "request": "invites" })).await?;
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
            let v = ask(
                &data,
                json!({ "request": "join", "invite": invite, "me": me }),
            )
            .await?;
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
                    json!({ "request": "log", "community": community, "after": after }),
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
            let v = ask(
                &data,
                json!({ "request": "members", "community": community }),
            )
            .await?;
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
        CommunityCommand::Invite {
            data,
            community,
            contact,
            json,
        } => (
            data,
            json!({ "request": "invite", "community": community, "contact": contact }),
            json,
        ),
        CommunityCommand::Post {
            data,
            community,
            text,
            json,
        } => (
            data,
            json!({ "request": "post", "community": community, "text": text }),
            json,
        ),
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
            json!({ "request": "act", "community": community, "action": "leave", "target": "" }),
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
