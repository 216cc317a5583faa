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
    /// The position to ask from next (`since`): the last position read (past the last change,
    /// when fieldsync's own tables' changes were left out after it), or `since` itself.
    pub last_seq: u64,
}

impl App {
    /// Changes after position `since`, at most `limit` (≤ [`MAX_CHANGES`]).
    pub fn changes(&self, since: u64, limit: usize) -> Result<ChangesPage, AppError> {
        self.changes_with(since, limit, false)
    }

    /// [`App::changes`], with changes of fieldsync's own tables too when `system`. Errors:
    /// `SINCE_AHEAD` (invalid, field `since`) when `since` is past the feed's head.
    pub fn changes_with(
        &self,
        since: u64,
        limit: usize,
        system: bool,
    ) -> Result<ChangesPage, AppError> {
        let limit = limit.clamp(1, MAX_CHANGES);
        // A position past the head would answer "nothing yet" with `last_seq` = `since`, and an
        // application storing that would skip every change up to it once the feed got there.
        let head = self.store.seq();
        if since > head {
            return Err(AppError::Invalid {
                code: "SINCE_AHEAD",
                message: format!(
                    "since={since} is past the last change on this laptop ({head}): it belongs to \
                     another laptop or to a database since replaced; read the feed again from \
                     since=0"
                ),
                field: Some("since".into()),
            });
        }
        let mut changes = Vec::new();
        // The page ends after the last row read, shown or not; rows of fieldsync's own tables
        // (`fs_revocations`) are not an application's data and are left out unless asked (still
        // readable by name), and reading goes on past them so a page is empty only at the
        // feed's end.
        let mut read_upto = since;
        loop {
            let rows = self.store.changes_since(read_upto, limit)?;
            let full = rows.len() == limit;
            for (seq, table, id, rec) in rows {
                read_upto = seq;
                if !system && table.starts_with(crate::model::SYSTEM_PREFIX) {
                    continue;
                }
                changes.push(self.change(seq, table, id, &rec)?);
            }
            if !changes.is_empty() || !full {
                break;
            }
        }
        Ok(ChangesPage {
            changes,
            last_seq: read_upto,
        })
    }

    /// One feed row as a [`Change`].
    fn change(
        &self,
        seq: u64,
        table: String,
        id: Uuid,
        rec: &crate::store::StoredRecord,
    ) -> Result<Change, AppError> {
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
        let stamp = revision_stamp(rec);
        Ok(Change {
            seq,
            deleted: !rec.state.is_alive(),
            rev: stamp.map(|s| s.to_string()),
            origin: stamp.map(|s| s.node),
            table,
            id,
            source: source.into(),
            via,
        })
    }
}
