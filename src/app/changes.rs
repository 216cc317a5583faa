//! The changes feed: every change after a feed position, in feed order.
//!
//! The store's feed holds one entry per record at the position of its latest change, and
//! positions only grow (ARCHITECTURE.md), so "everything after N" misses nothing that changed
//! after N; a record that changed twice since N appears once, at its latest position. An
//! application that stores the `seq` of the last change it processed resumes there exactly,
//! also after an agent restart (positions are durable with the change they belong to).

use super::records::revision_stamp;
use super::{App, AppError};
use crate::store::Source;
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

/// Most changes one feed page returns.
pub const MAX_CHANGES: usize = 10_000;

/// One change of the feed.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct Change {
    /// Feed position: store it, and pass it as `since` to resume after this change.
    pub seq: u64,
    /// Table.
    pub table: String,
    /// Record id.
    pub id: Uuid,
    /// The stamp of the record's latest event (`time#counter@instance`).
    pub rev: Option<String>,
    /// True when the record is deleted now.
    pub deleted: bool,
    /// The instance that made the latest event (this one for a local write).
    pub origin: Option<Uuid>,
    /// `local`, `peer` (received as sent) or `merge` (merged with what a peer sent).
    pub source: String,
    /// The peer the change came through (absent for a local change).
    pub via: Option<Uuid>,
}

/// A page of the feed.
#[derive(Clone, Debug, PartialEq, Serialize, ToSchema)]
pub struct ChangesPage {
    /// Changes in feed order.
    pub changes: Vec<Change>,
    /// The position to ask from next (`since`): the last change's `seq`, or `since` itself.
    pub last_seq: u64,
}

impl App {
    /// Changes after position `since`, at most `limit` (≤ [`MAX_CHANGES`]).
    pub fn changes(&self, since: u64, limit: usize) -> Result<ChangesPage, AppError> {
        let rows = self
            .store
            .changes_since(since, limit.clamp(1, MAX_CHANGES))?;
        let mut changes = Vec::with_capacity(rows.len());
        for (seq, table, id, rec) in rows {
            // Which door the latest change came in by: the revision applied last here.
            let latest = self
                .store
                .history(&table, &id)?
                .into_iter()
                .max_by_key(|e| e.applied_at);
            let (source, via) = match latest.map(|e| e.source) {
                Some(Source::Peer(p)) => ("peer", Some(p)),
                Some(Source::Merge(p)) => ("merge", Some(p)),
                _ => ("local", None),
            };
            let stamp = revision_stamp(&rec);
            changes.push(Change {
                seq,
                deleted: !rec.state.is_alive(),
                rev: stamp.map(|s| s.to_string()),
                origin: stamp.map(|s| s.node),
                table,
                id,
                source: source.into(),
                via,
            });
        }
        let last_seq = changes.last().map_or(since, |c| c.seq);
        Ok(ChangesPage { changes, last_seq })
    }
}
