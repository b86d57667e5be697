//! The names of the tables the node keeps, in the node's store and in the
//! account's encrypted vault: one enum, so that a mistyped name is a
//! compile error and every table is listed in one place.

/// A table of the node's store or of the account's vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Table {
    /// Store: the hosted mixnet client's keys and fetch cursors.
    Client,
    /// Store: the client's log of raw mixnet messages.
    Events,
    /// Store: the newest valid advisory of unsafe versions.
    Advisory,
    /// Vault: the messenger's state (contacts, sessions).
    Messenger,
    /// Vault: what the user was shown, in order.
    History,
    /// Vault: the messages the user sent, with their states.
    Sent,
    /// Vault: community invitations received.
    Invites,
    /// Vault: the communities joined.
    Communities,
    /// Vault: the blocks of those communities.
    CommunityBlocks,
}

impl Table {
    /// The name stored on disk.
    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Table::Client => "client",
            Table::Events => "events",
            Table::Advisory => "advisory",
            Table::Messenger => "messenger",
            Table::History => "history",
            Table::Sent => "sent",
            Table::Invites => "invites",
            Table::Communities => "communities",
            Table::CommunityBlocks => "community-blocks",
        }
    }
}

impl From<Table> for String {
    fn from(table: Table) -> String {
        table.as_str().to_string()
    }
}
