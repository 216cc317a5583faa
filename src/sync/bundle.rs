//! Sync by USB stick: what goes into a bundle, and reading one through the one receive path.
//!
//! Writing is a session's pull answered ahead of time: the pages `outgoing` would serve the
//! target from feed position 0 with this laptop's knowledge of it (the knowledge the target
//! reported at its last hello, or put in a bundle we read), echo suppression for the target
//! included; `--all` leaves knowledge and echo suppression out, so the bundle suits anyone.
//! The file format and its cryptography are `crate::bundle`.
//!
//! Reading is a pull replayed: the writer is noted like a hello (without a clock offset or an
//! address: a bundle is not a connection), then every page goes through
//! [`receive_page`](super::receive::receive_page) — admission, future stamps, the brake, merge
//! rules, conflicts, history — and commits with the writer's feed position it advances to, in
//! one batch per page. So a read killed mid-way resumes after the last whole page, a bundle read
//! twice skips what is in, and the writer's knowledge is adopted with the last page only. Those
//! positions are valid only for the laptop the bundle was written for, and only if it still
//! holds what the writer believed it had; otherwise (another reader, a restored reader, a
//! bundle from a retired incarnation) the pages are merged without moving any position or
//! knowledge, which is always safe: the next network session re-sends what is not known.

use super::receive::{bounded, receive_page, ReceiveError};
use crate::bundle::{self, BundleError, Header, PageData, Verified, Writer};
use crate::change::ApplyStats;
use crate::mesh::Credential;
use crate::protocol::{self, Page, ENC_ZSTD};
use crate::store::{judge, CommitError, Knowledge, Store, StoreError, Verdict};
use crate::tls::Transport;
use base64::Engine;
use serde::Serialize;
use std::collections::BTreeSet;
use uuid::Uuid;

/// What a bundle was written from and for.
#[derive(Clone, Debug)]
pub struct BundleTarget {
    /// The laptop it is for (`None`: everything, for anyone).
    pub instance: Option<Uuid>,
}

fn store_err(e: StoreError) -> BundleError {
    BundleError::Io(format!("the database failed, nothing more applied: {e}"))
}

/// Builds a bundle's bytes: every change of this laptop's feed that `target` has not received
/// as far as this laptop knows (all of them for `None`), in sealed pages.
pub fn write(
    store: &Store,
    cred: &Credential,
    target: &BundleTarget,
) -> Result<Vec<u8>, BundleError> {
    let me = store.instance();
    let identity = crate::tls::Identity::from_credential(cred)
        .map_err(|e| BundleError::Credential(format!("this laptop's credential: {e}")))?;
    let pos = store.position().map_err(store_err)?;
    let (known, target_name) = match target.instance {
        Some(id) => match store.peer(&id).map_err(store_err)? {
            Some(row) => (row.knowledge.clone(), Some(row.name)),
            None => (Knowledge::new(), None),
        },
        None => (Knowledge::new(), None),
    };
    let cfg = &store.config().sync;
    let limit = cfg.page_records.min(protocol::MAX_PAGE_RECORDS);
    let skip = BTreeSet::new();
    let mut pages = Vec::new();
    let mut since = 0u64;
    // Bounded: every page advances `next` past `since`, and the feed is finite.
    for _ in 0..u32::MAX {
        let out = store
            .outgoing(since, limit, cfg.page_bytes, &known, &skip, target.instance)
            .map_err(store_err)?;
        let raw = protocol::pack::pack(&out.changes)
            .map_err(|e| BundleError::Io(format!("encoding a page: {e}")))?;
        let body = zstd::bulk::compress(&raw, bundle::ZSTD_LEVEL)
            .map_err(|e| BundleError::Io(format!("compressing a page: {e}")))?;
        let proofs =
            super::signed::proofs_with(store, &identity, &out.changes).map_err(store_err)?;
        pages.push(PageData {
            since,
            next: out.next,
            more: out.more,
            count: out.changes.len() as u32,
            body,
            proofs: base64::engine::general_purpose::STANDARD
                .decode(proofs)
                .map_err(|e| BundleError::Io(format!("encoding a page's proofs: {e}")))?,
        });
        if !out.more || out.next <= since {
            since = out.next;
            break;
        }
        since = out.next;
    }
    let header = Header {
        kind: String::new(),
        deployment: crate::mesh::mesh_id(&cred.ca_cert)
            .map_err(|e| BundleError::Credential(e.to_string()))?,
        deployment_name: cred.deployment.clone(),
        writer: Writer {
            instance: me.id,
            name: me.name,
            owner: me.owner,
            contact: me.contact,
        },
        writer_cert: cred.cert.clone(),
        incarnation: store.incarnation(),
        written_at: chrono::Utc::now(),
        target: target.instance,
        target_name,
        target_knowledge: known,
        knowledge: pos.knowledge,
        since: 0,
        next: since,
        head: pos.head,
        pages: 0,
        records: 0,
        body_bytes: 0,
        encoding: ENC_ZSTD.into(),
        cipher: String::new(),
        salt: String::new(),
    };
    bundle::seal(header, &pages, cred)
}

/// What reading a bundle did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReadReport {
    /// The writer's instance id.
    pub from: Uuid,
    /// The writer's name.
    pub from_name: String,
    /// When it was written.
    pub written_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Pages in the bundle.
    pub pages: u64,
    /// Pages already read before (by an earlier read of this or a newer bundle, or a sync).
    pub pages_skipped: u64,
    /// Records in the pages read.
    pub records: u64,
    /// Records that changed here.
    pub applied: u64,
    /// Conflicts logged.
    pub conflicts: u64,
    /// Deletes held by the mass-delete brake (`fieldsync held list`).
    pub held: u64,
    /// Records dropped on admission (bad revocations, revoked writers).
    pub quarantined: u64,
    /// True if the writer's feed position and knowledge were adopted (the next network sync
    /// with it sends nothing twice).
    pub positions_adopted: bool,
    /// Why they were not, if so.
    pub note: Option<String>,
}

/// Checks `bytes` (the file `file`) and applies it page by page. `after_page` runs after each
/// page is committed (progress, tests).
pub fn read(
    store: &Store,
    transport: &Transport,
    cred: &Credential,
    bytes: &[u8],
    file: &str,
    mut after_page: impl FnMut(usize, usize),
) -> Result<ReadReport, BundleError> {
    let revoked = |id: &Uuid| match transport {
        Transport::Tls { revoked, .. } => revoked.get(id),
        Transport::Plaintext => None,
    };
    let v = bundle::verify(bytes, file, cred, &revoked)?;
    let h = v.header.clone();
    // The key is checked before anything is written: every page uses the same one.
    let first = if v.is_empty() {
        None
    } else {
        Some(v.page(bytes, 0, file)?)
    };
    let me = store.id();
    let mine = store.position().map_err(store_err)?.knowledge;
    let mut note = None;
    let mut valid = true;
    if h.target.is_some_and(|t| t != me) {
        valid = false;
        note = Some(format!(
            "written for {} ({}), not this laptop: records merged, positions not adopted",
            h.target_name.as_deref().unwrap_or("another laptop"),
            h.target.map(|t| t.to_string()).unwrap_or_default()
        ));
    } else if !h
        .target_knowledge
        .iter()
        .all(|(n, ts)| mine.get(n).is_some_and(|m| m >= ts))
    {
        valid = false;
        note = Some(
            "written when the writer believed this laptop held more than it does now (restored \
             since?): records merged, positions not adopted; sync over the network to fill in"
                .into(),
        );
    }
    let old = note_writer(store, &h)?;
    if old && valid {
        valid = false;
        note = Some(format!(
            "written by an earlier life of {} (before it was restored): records merged, \
             positions not adopted",
            h.writer.name
        ));
    }
    let had = store
        .peer(&h.writer.instance)
        .map_err(store_err)?
        .map_or(0, |r| r.received_upto);
    let mut report = ReadReport {
        from: h.writer.instance,
        from_name: h.writer.name.clone(),
        written_at: Some(h.written_at),
        pages: v.len() as u64,
        positions_adopted: valid,
        note,
        ..Default::default()
    };
    let mut stats = ApplyStats::default();
    let mut first = first;
    for i in 0..v.len() {
        let p = match first.take() {
            Some(p) => p,
            None => v.page(bytes, i, file)?,
        };
        if valid && p.next <= had && !(p.since == 0 && p.next == 0 && had == 0) {
            report.pages_skipped += 1;
            continue;
        }
        apply_page(
            store,
            transport,
            &v,
            &p,
            valid,
            i,
            file,
            &mut report,
            &mut stats,
        )?;
        after_page(i + 1, v.len());
    }
    report.applied = stats.applied;
    report.conflicts = stats.conflicts;
    Ok(report)
}

#[allow(clippy::too_many_arguments)]
fn apply_page(
    store: &Store,
    transport: &Transport,
    v: &Verified,
    p: &PageData,
    valid: bool,
    i: usize,
    file: &str,
    report: &mut ReadReport,
    stats: &mut ApplyStats,
) -> Result<(), BundleError> {
    let h = &v.header;
    // Outside its target the page moves no position: (0, 0, more) merges records only.
    let (since, next, more) = if valid {
        (p.since, p.next, p.more)
    } else {
        (0, 0, true)
    };
    let page = Page {
        since,
        next,
        more,
        count: p.count,
        encoding: ENC_ZSTD.into(),
        data: serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&p.body)),
        proofs: (!p.proofs.is_empty())
            .then(|| base64::engine::general_purpose::STANDARD.encode(&p.proofs)),
        knowledge: None,
    };
    let knowledge = valid.then_some(&h.knowledge);
    let got = receive_page(store, transport, h.writer.instance, &page, knowledge, valid).map_err(
        |e| {
            let applied = if i == 0 {
                String::new()
            } else {
                format!(" (pages 1 to {i} were applied)")
            };
            match e {
                ReceiveError::Commit(CommitError::Store(e)) => BundleError::Io(format!(
                    "{file}: the database failed on page {}{applied}, nothing of that page \
                 written: {e}",
                    i + 1
                )),
                other => BundleError::Refused(format!(
                    "{file}: page {} refused{applied}: {}",
                    i + 1,
                    other.to_protocol().message
                )),
            }
        },
    )?;
    report.records += got.records;
    report.held += got.committed.held;
    report.quarantined += got.quarantined;
    stats.applied += got.committed.stats.applied;
    stats.conflicts += got.committed.stats.conflicts;
    Ok(())
}

/// Notes the writer in its peer row, like a hello but without a clock offset or address.
/// Returns true if the bundle comes from a retired incarnation of it (written before it was
/// restored): its records are still good, its positions are not.
fn note_writer(store: &Store, h: &Header) -> Result<bool, BundleError> {
    let inc = h.incarnation;
    let out = store
        .update_peer_with(&h.writer.instance, |row, seq| {
            if let Some(d) = &row.duplicate {
                return (Err(d.reason.clone()), false);
            }
            let new = row.name.is_empty() && row.sync_count == 0 && row.incarnation.is_none();
            row.name = bounded(&h.writer.name);
            row.owner = bounded(&h.writer.owner);
            row.contact = bounded(&h.writer.contact);
            match judge(row.incarnation.as_ref(), &row.retired, &inc) {
                Verdict::Known => {
                    let durable = row.incarnation.is_none() || new;
                    row.incarnation = Some(inc);
                    crate::model::vv_join(&mut row.knowledge, &h.knowledge);
                    (Ok(false), durable)
                }
                Verdict::Newer => {
                    let old = row.incarnation.replace(inc).map(|o| o.id);
                    row.retired.extend(old);
                    row.echo_from = seq;
                    row.received_upto = 0;
                    row.knowledge = h.knowledge.clone();
                    (Ok(false), true)
                }
                // An old bundle from before a restore is harmless: no identity is judged on it.
                Verdict::Duplicate(_) if row.retired.contains(&inc.id) => (Ok(true), false),
                Verdict::Duplicate(reason) => (Err(reason), false),
            }
        })
        .map_err(store_err)?;
    out.map_err(|reason| {
        BundleError::Refused(format!(
            "{} ({}) is used by two data directories at once ({reason}): nothing applied; \
             fix: {}",
            h.writer.name,
            h.writer.instance,
            super::receive::DUPLICATE_FIX
        ))
    })
}
