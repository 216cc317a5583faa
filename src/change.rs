//! What replicates between instances: one record's state as sent to a peer, the conflicts
//! reported with it, and the counts a receiver reports back.
//!
//! These types are part of two formats at once: the JSON page encoding and the packed page
//! (`protocol::pack`) carry them on the wire, and the store keeps [`ReportedConflict`]s'
//! conflicts in its log. Every field therefore has an explicit serde name, so renaming a Rust
//! field (here or in the merge engine) cannot silently change either format; the golden-bytes
//! tests in `tests/session.rs` pin the encodings.
//!
//! | type               | JSON / MessagePack map keys                               |
//! |--------------------|-----------------------------------------------------------|
//! | `RemoteChange`     | `table`, `id`, `state`, `conflicts`, `history` (absent = none) |
//! | `ReportedConflict` | `detected_by`, `conflict`                                 |
//! | `ApplyStats`       | `received`, `applied`, `inserted`, `conflicts`            |
//!
//! `state` is a [`RecordState`] (`fields`, `vv`, `del_seen`, `deleted`) and `conflict` a
//! [`Conflict`] (tagged by `kind`: `field` or `delete_edit`); `history` is a list of
//! [`Revision`]s (`at`, `kind`, `changes` of `field`/`old`/`new`, `cause`). All spell their
//! names out too.

use crate::merge::{Conflict, Revision};
use crate::model::RecordState;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// One record state received from (or sent to) a peer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RemoteChange {
    /// Table.
    #[serde(rename = "table")]
    pub table: String,
    /// Record id.
    #[serde(rename = "id")]
    pub id: Uuid,
    /// The sender's state of the record (possibly only the fields the receiver lacks).
    #[serde(rename = "state")]
    pub state: RecordState,
    /// Unresolved conflicts the sender holds for this record, so every instance's log shows
    /// them (receivers deduplicate by the writes involved).
    #[serde(rename = "conflicts", default)]
    pub conflicts: Vec<ReportedConflict>,
    /// The record's revisions the receiver lacks (stamps its knowledge does not cover), oldest
    /// first, exactly as their makers recorded them. Empty when the record's only revision is
    /// its creation: the state says it all (its one event, every field written by it).
    #[serde(rename = "history", default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<Revision>,
}

/// A conflict as reported by the instance that detected it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReportedConflict {
    /// The instance that detected it.
    #[serde(rename = "detected_by")]
    pub detected_by: Uuid,
    /// What it is.
    #[serde(rename = "conflict")]
    pub conflict: Conflict,
}

/// Counts from applying a page of remote changes (sent back in a push reply).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyStats {
    /// Changes received.
    #[serde(rename = "received")]
    pub received: u64,
    /// Records that changed here.
    #[serde(rename = "applied")]
    pub applied: u64,
    /// Of those, records new here.
    #[serde(rename = "inserted")]
    pub inserted: u64,
    /// Conflicts logged (including name clashes).
    #[serde(rename = "conflicts")]
    pub conflicts: u64,
}
