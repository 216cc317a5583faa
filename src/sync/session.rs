//! The initiator's side of one session, generic over the transport: hello, pull every new page
//! of the peer's, push every new page of ours. No jsonrpsee and no TLS here: [`run`] talks to a
//! [`Peer`], so whole sessions run in one process against an in-memory peer (tests/session.rs)
//! exactly as they run against a real one.
//!
//! Each pulled page goes through the one receive path ([`receive_page`]): the page and the
//! position it advances to commit together, so an interrupted session resumes where it stopped.

use super::peer::Peer;
use super::receive::{note_hello, receive_page, HelloSeen, ReceiveError};
use super::reconcile::{AntiEntropyReport, Window};
use super::{blocking, our_hello, SessionOptions, SessionReport, SyncError};
use crate::change::RemoteChange;
use crate::progress::{Tracker, Way};
use crate::protocol::client::CallError;
use crate::protocol::{
    self, codes, Page, ProtocolError, PullRequest, PushReply, PushRequest, ENC_JSON,
    RECONCILE_PROTOCOL_VERSION,
};
use crate::store::{CommitError, Store};
use chrono::Utc;
use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Runs one full session with `peer` (called `label` in errors, usually its address): hello,
/// pull everything new, push everything new. Store work runs on blocking threads.
pub async fn run<P: Peer>(
    store: &Arc<Store>,
    peer: &P,
    label: &str,
    opts: &SessionOptions,
) -> Result<SessionReport, SyncError> {
    run_tracked(store, peer, label, opts, None).await
}

/// [`run`], reporting progress page by page to `tracker` (the console's live sessions, the
/// CLI's progress bar).
///
/// On the first session with a peer since the database was opened or an incarnation changed,
/// records are compared once everything was pulled and pushed (`check_records`); if that shows
/// this laptop was rolled back, the session runs once more under the new incarnation, so the
/// peer sends back everything it lacks, and the report counts both.
pub async fn run_tracked<P: Peer>(
    store: &Arc<Store>,
    peer: &P,
    label: &str,
    opts: &SessionOptions,
    tracker: Option<&Tracker>,
) -> Result<SessionReport, SyncError> {
    let (mut report, again) = run_once(store, peer, label, opts, tracker).await?;
    if again {
        let (more, _) = run_once(store, peer, label, opts, tracker).await?;
        report.compared = report.compared.take().or(more.compared);
        for (d, m) in [
            (&mut report.received, more.received),
            (&mut report.sent, more.sent),
        ] {
            d.pages += m.pages;
            d.records += m.records;
            d.applied += m.applied;
            d.conflicts += m.conflicts;
            d.bytes += m.bytes;
            d.ms += m.ms;
        }
    }
    Ok(report)
}

/// One session; true with it if comparing records afterwards started a new incarnation.
async fn run_once<P: Peer>(
    store: &Arc<Store>,
    peer: &P,
    label: &str,
    opts: &SessionOptions,
    tracker: Option<&Tracker>,
) -> Result<(SessionReport, bool), SyncError> {
    let me = store.instance();
    // The pull's time includes the hello(s), so a session that is one hello reports what it
    // cost instead of 0 ms.
    let started = Instant::now();
    // At most two hellos: if the peer holds more of our own events than we do, we were rolled
    // back; a new incarnation starts and is announced in a second hello, so the peer stops
    // trusting what it believed we hold and sends it all.
    let mut attempt = 0;
    let (pos, hello, reply, info, mut since) = loop {
        attempt += 1;
        let pos = blocking(store, |s| s.position()).await?;
        let hello = our_hello(
            store,
            &pos,
            opts.url.clone(),
            vec![opts.encoding.clone(), ENC_JSON.to_string()],
        )?;
        // Protocol 4: knowledge the other side already holds is named by its hash.
        let (hello, reply) = super::told::say_hello(store, peer, label, hello).await?;
        let info = reply.peer.clone();
        tracing::Span::current().record("peer", tracing::field::display(info.instance));
        peer.check_identity(&info.instance)
            .map_err(SyncError::Peer)?;
        if info.instance == me.id {
            return Err(SyncError::Peer(ProtocolError::new(
                codes::SAME_INSTANCE,
                format!("peer at {label} has our own instance id {}", me.id),
            )));
        }
        protocol::negotiate(reply.protocol, reply.protocol)?;
        let since = {
            let (info, addr) = (info.clone(), label.to_string());
            let (clock_ms, head, inc) = (reply.clock_ms, reply.head, reply.incarnation);
            let k = reply.knowledge.clone();
            blocking(store, move |s| {
                Ok(note_hello(
                    s,
                    &info,
                    clock_ms,
                    head,
                    &k,
                    inc.as_ref(),
                    HelloSeen::Outbound { addr: &addr },
                ))
            })
            .await?
            .map_err(|e| match e {
                ReceiveError::Commit(CommitError::Store(e)) => SyncError::Store(e),
                other => SyncError::Peer(other.to_protocol()),
            })?
        };
        let peer_has = reply.knowledge.get(&me.id).copied().unwrap_or(0);
        let pid = info.instance;
        let restarted = blocking(store, move |s| s.note_self_claim(&pid, peer_has)).await?;
        if restarted.is_none() || attempt >= 2 {
            // The peer now holds our knowledge as of this hello (`note_hello` stored it).
            super::told::note(me.id, pid, &hello.knowledge);
            break (pos, hello, reply, info, since);
        }
    };
    let mut report = SessionReport {
        peer: info.clone(),
        ..Default::default()
    };
    if let Some(t) = tracker {
        t.peer(info.instance, &info.name, reply.received_upto);
        t.direction(Way::Pull, since, reply.head);
    }

    // Pull: pages of the peer's changes, each committed with its position in one batch.
    // Nothing to pull when we hold its whole feed, or it ended the session (it has nothing we
    // lack past our position), and all it knows (a no-op session: the pull would return an
    // empty page and teach us nothing).
    let nothing_new = (reply.head <= since || reply.done)
        && super::told::covers(&pos.knowledge, &reply.knowledge);
    // Pipelined: page k+1 is asked for as soon as page k is in, and travels (and the peer
    // reads and encodes it) while page k is committed here. Reading the peer's feed commits
    // nothing there, so a failed commit only wastes that page; pages still commit strictly in
    // order, each with its position.
    let pull_req = |since: u64, nth: u32| PullRequest {
        from: me.id,
        since,
        limit: page_limit(opts.page_records, nth, reply.head.saturating_sub(since)) as u32,
        max_bytes: opts.page_bytes as u32,
        knowledge: pos.knowledge.clone(),
        encoding: reply.encoding.clone(),
        local_only: hello.local_only.clone(),
    };
    let mut fetched = if nothing_new {
        None
    } else {
        Some(peer.pull(&pull_req(since, 0)).await)
    };
    for _ in 0..u32::MAX {
        let Some(page) = fetched.take() else {
            break;
        };
        let page = page.map_err(|e| e.into_sync(label))?;
        if page.since != since || (page.more && page.next <= since) {
            return Err(SyncError::Peer(ProtocolError::new(
                codes::INVALID_PAGE,
                format!(
                    "peer sent a page for position {}..{} when asked for {since}",
                    page.since, page.next
                ),
            )));
        }
        let page_bytes = encoded_len(&page.data);
        report.received.pages += 1;
        report.received.bytes += page_bytes;
        let (next, more) = (page.next, page.more);
        // The last page may carry the peer's knowledge as of reading it (newer than its
        // hello's when its feed grew during the session): adopt that, joined with the hello's.
        let mut k = reply.knowledge.clone();
        if let Some(later) = &page.knowledge {
            crate::model::vv_join(&mut k, later);
        }
        let (pid, transport) = (info.instance, opts.transport.clone());
        let commit = blocking(store, move |s| {
            Ok(receive_page(s, &transport, pid, &page, Some(&k), false))
        });
        let got = if more {
            let req = pull_req(next, report.received.pages as u32);
            let (got, page) = tokio::join!(commit, peer.pull(&req));
            fetched = Some(page);
            got
        } else {
            commit.await
        };
        let got = got?.map_err(|e| match e {
            ReceiveError::Commit(CommitError::Store(e)) => SyncError::Store(e),
            other => SyncError::Peer(other.to_protocol()),
        })?;
        report.received.records += got.records;
        report.received.applied += got.committed.stats.applied;
        report.received.conflicts += got.committed.stats.conflicts;
        if let Some(t) = tracker {
            let conflicts = got.committed.stats.conflicts;
            t.page(Way::Pull, got.records, page_bytes, conflicts, next, !more);
        }
        since = next;
    }
    report.received.ms = started.elapsed().as_millis() as u64;

    // Push: our changes since what the peer has, skipping what it already knows. Pipelined:
    // while the peer decodes, merges and fsyncs one page, the next one is read and encoded
    // here (reading our own feed commits nothing, so a failed push only wastes that read; the
    // peer still takes pages strictly in order, one at a time, each with its position).
    let started = Instant::now();
    // The peer ended the session in its reply and we agree nothing is left to push: no push.
    let done = reply.done
        && nothing_new
        && pos.head <= reply.received_upto
        && super::told::covers(&reply.knowledge, &pos.knowledge);
    let skip: BTreeSet<String> = reply.local_only.iter().cloned().collect();
    let since = reply.received_upto;
    // The position of our feed the peer holds once the pushes are in (each page commits its
    // `next` there): what the records comparison afterwards may count on it having.
    let mut pushed_to = since;
    if let Some(t) = tracker {
        t.direction(Way::Push, since, pos.head);
    }
    let read_page = |since: u64, nth: u32| {
        let (k, sk, limit, bytes) = (
            reply.knowledge.clone(),
            skip.clone(),
            page_limit(
                opts.page_records.min(protocol::MAX_PAGE_RECORDS),
                nth,
                pos.head.saturating_sub(since),
            ),
            opts.page_bytes,
        );
        let (pid, encoding) = (info.instance, reply.encoding.clone());
        let transport = opts.transport.clone();
        blocking(store, move |s| {
            // Our knowledge before the read: sent with the last page (see `PushRequest`), it
            // covers what reached us during the session too (pulled from this peer, or
            // brought by another laptop), all of it in our feed at or before the page's end.
            let now_known = s.position()?.knowledge;
            let out = s.outgoing(since, limit, bytes, &k, &sk, Some(pid))?;
            let proofs = super::signed::proofs_for(s, &transport, &out.changes)?;
            let page = page_of(since, out.next, out.more, &out.changes, &encoding).map(|p| Page {
                proofs,
                knowledge: (!out.more).then_some(now_known),
                ..p
            });
            Ok((out, page))
        })
    };
    // Nothing is read when there is nothing to push (a no-op session is its hello alone).
    let mut current = if done {
        None
    } else {
        Some(read_page(since, 0).await?)
    };
    // Pipelined two deep: page k+1 is sent as soon as it is read, while the peer still
    // commits page k, and page k+2 is read meanwhile. The peer decodes and checks k+1 at once
    // and merges it in its turn, right after k's batch is applied (`Responder::wait_turn`);
    // answers are taken in order. A peer that does not wait for the turn refuses k+1 as a gap,
    // writing nothing: it is sent again once k is in, and the rest of the session goes one
    // page at a time.
    let mut flying: Option<Flying<'_>> = None;
    let mut serial = false;
    for _ in 0..u32::MAX {
        let Some((out, page)) = current.take() else {
            if let Some(mut f) = flying.take() {
                let r = f.answer().await;
                settle(peer, label, tracker, &mut report, f, r).await?;
            }
            break;
        };
        let mut page = page?;
        // Travels as the push's `knowledge`, not inside the page.
        let known_now = page
            .knowledge
            .take()
            .unwrap_or_else(|| pos.knowledge.clone());
        // One page at a time after a gap; and no page after one already refused.
        let failed = flying
            .as_ref()
            .is_some_and(|f| matches!(f.answer, Some(Err(_))));
        if serial || failed {
            if let Some(mut f) = flying.take() {
                let r = f.answer().await;
                serial |= settle(peer, label, tracker, &mut report, f, r).await?;
            }
        }
        let page_bytes = encoded_len(&page.data);
        pushed_to = pushed_to.max(out.next);
        report.sent.pages += 1;
        report.sent.records += out.changes.len() as u64;
        report.sent.bytes += page_bytes;
        // The last page carries our knowledge for the peer to adopt, unless it holds all of
        // it already (then adopting it would change nothing).
        let teach = !super::told::covers(&reply.knowledge, &known_now);
        let req = Arc::new(PushRequest {
            from: me.id,
            knowledge: (!out.more && teach).then_some(known_now),
            page,
        });
        let call_req = req.clone();
        let mut sent = Flying {
            req,
            after_another: flying.is_some(),
            records: out.changes.len() as u64,
            page_bytes,
            next: out.next,
            last: !out.more,
            answer: None,
            call: Box::pin(async move { peer.push(&call_req).await }),
        };
        // While this page travels: the answer to the one before, and the next page read.
        let before = flying.take();
        let earlier = async move {
            match before {
                Some(mut f) => {
                    let r = f.answer().await;
                    Some((f, r))
                }
                None => None,
            }
        };
        let nth = report.sent.pages as u32;
        let reading = async {
            if out.more {
                Some(read_page(out.next, nth).await)
            } else {
                None
            }
        };
        let both = async { tokio::join!(earlier, reading) };
        tokio::pin!(both);
        // This page's call is polled first, so pages leave in order (the peer takes each in
        // its turn, and a page it sees before the one ahead of it is refused as a gap).
        let (earlier, next) = loop {
            tokio::select! {
                biased;
                r = &mut sent.call, if sent.answer.is_none() => sent.answer = Some(r),
                done = &mut both => break done,
            }
        };
        if let Some((f, r)) = earlier {
            serial |= settle(peer, label, tracker, &mut report, f, r).await?;
        }
        flying = Some(sent);
        if let Some(next) = next {
            current = Some(next?);
        }
    }
    report.sent.ms = started.elapsed().as_millis() as u64;
    // The session's pages are freed: hand the memory back so an idle agent is small (on a
    // thread of its own: not on this async worker, and not before the session reports).
    crate::store::trim_heap_soon();

    let pid = info.instance;
    blocking(store, move |s| {
        s.update_peer(&pid, |row| {
            row.last_update = Some(Utc::now());
            row.sync_count += 1;
            row.last_error = None;
        })
    })
    .await?;
    // After the pages, so only records that knowledge kept apart are left to move.
    let mut again = false;
    if store.rollback_check_due(&pid) && reply.protocol >= RECONCILE_PROTOCOL_VERSION {
        let window = Window {
            ours: pos.knowledge.clone(),
            theirs: reply.knowledge.clone(),
            pushed_to,
        };
        let (compared, changed) =
            check_records(store, peer, label, opts, &hello, &reply, &window).await;
        report.compared = compared;
        again = changed;
    }
    Ok((report, again))
}

/// Compares records with the peer (range reconciliation) and moves those that differ both
/// ways, whole: a rollback that knowledge can no longer tell shows as a record the peer holds
/// with an own event of ours we lack, and the receive path then starts a new incarnation
/// (`store/rollback.rs`). Returns what it found (`None` if it failed) and true if our
/// incarnation changed meanwhile (run again). A failure is logged and tried again on the next
/// session; it does not fail this one.
///
/// Only records the session's pages should have moved (`window`, see [`Window::missed`]) are
/// a warning: the agent runs sessions with several peers at once, so a record that reached
/// either side from a third laptop (or a local write) while this session ran differs too, and
/// is only moved, logged at debug.
async fn check_records<P: Peer>(
    store: &Arc<Store>,
    peer: &P,
    label: &str,
    opts: &SessionOptions,
    hello: &protocol::Hello,
    reply: &protocol::HelloReply,
    window: &Window,
) -> (Option<AntiEntropyReport>, bool) {
    let pid = reply.peer.instance;
    let before = store.incarnation().id;
    let tables =
        super::reconcile::shared_tables(&hello.tables, &reply.tables, &reply.local_only, store);
    let r = super::reconcile::exchange(
        store,
        peer,
        label,
        &opts.transport,
        pid,
        &tables,
        &reply.encoding,
        Some(window),
    )
    .await;
    let compared = match r {
        Ok(r) => {
            store.rollback_checked(pid);
            let missed = r.missed.unwrap_or(r.differing);
            if missed > 0 {
                // Knowledge had kept them apart: a rollback, a bug or a member's wrong claim.
                tracing::warn!(peer = %pid, differing = r.differing, missed,
                    applied_here = r.applied, applied_there = r.applied_there,
                    "records compared after the session (first since start or an incarnation \
                     change): some differed although the session had finished; moved both ways");
            } else if r.differing > 0 {
                tracing::debug!(peer = %pid, differing = r.differing, applied_here = r.applied,
                    applied_there = r.applied_there,
                    "records compared after the session: some changed on one side while the \
                     session ran (another peer's page or a local write); moved both ways");
            }
            Some(r)
        }
        Err(e) => {
            tracing::warn!(peer = %pid, error = %e,
                "could not compare records with the peer (rollback check): trying again on \
                 the next session");
            None
        }
    };
    (compared, store.incarnation().id != before)
}

fn page_of(
    since: u64,
    next: u64,
    more: bool,
    changes: &[RemoteChange],
    encoding: &str,
) -> Result<Page, SyncError> {
    Ok(Page {
        since,
        next,
        more,
        count: changes.len() as u32,
        data: protocol::encode_changes(changes, encoding).map_err(SyncError::Peer)?,
        encoding: encoding.to_string(),
        proofs: None,
        knowledge: None,
    })
}

/// A pushed page whose answer is not taken yet (pipelined pushes in [`run_once`]).
struct Flying<'a> {
    req: Arc<PushRequest>,
    /// Sent while the page before it was not answered yet.
    after_another: bool,
    records: u64,
    page_bytes: u64,
    next: u64,
    last: bool,
    /// The answer, when it came while waiting for something else.
    answer: Option<Result<PushReply, CallError>>,
    call: std::pin::Pin<Box<dyn Future<Output = Result<PushReply, CallError>> + Send + 'a>>,
}

impl Flying<'_> {
    async fn answer(&mut self) -> Result<PushReply, CallError> {
        match self.answer.take() {
            Some(r) => r,
            None => (&mut self.call).await,
        }
    }
}

/// Takes the answer to a pushed page, in order, into the report. A page sent while the one
/// before was unanswered and refused as a gap (a peer that does not wait for its turn) is sent
/// again now that the one before is in; true then, so the rest of the session goes one page
/// at a time.
async fn settle<P: Peer>(
    peer: &P,
    label: &str,
    tracker: Option<&Tracker>,
    report: &mut SessionReport,
    f: Flying<'_>,
    r: Result<PushReply, CallError>,
) -> Result<bool, SyncError> {
    let (r, again) = match r {
        Err(CallError::Protocol(e)) if f.after_another && e.code == codes::POSITION_GAP => {
            tracing::debug!(next = f.next, "pipelined push refused as a gap: sent again");
            (peer.push(&f.req).await, true)
        }
        r => (r, false),
    };
    let r = r.map_err(|e| e.into_sync(label))?;
    report.sent.applied += r.stats.applied;
    report.sent.conflicts += r.stats.conflicts;
    if let Some(t) = tracker {
        t.page(
            Way::Push,
            f.records,
            f.page_bytes,
            r.stats.conflicts,
            f.next,
            f.last,
        );
    }
    Ok(again)
}

/// A page's encoded size: its base64 text as is (no copy), else its JSON.
fn encoded_len(data: &serde_json::Value) -> u64 {
    data.as_str()
        .map_or_else(|| data.to_string().len(), str::len) as u64
}

/// Records in the first page of a direction ([`FIRST_PAGE_RECORDS`]), doubling with each page up
/// to `limit`: the peer starts on a small page while the next is read and sent (pipelining
/// fills at once) in a sync of more than one full page ([`page_limit`] sends a smaller one
/// whole). The `nth` page (0-based) of a direction.
fn first_pages(limit: usize, nth: u32) -> usize {
    limit.min(FIRST_PAGE_RECORDS.saturating_mul(1 << nth.min(16)))
}

/// Records in the `nth` page of a direction with at most `remaining` feed entries to go from
/// its start: all of them in one page for a small sync ([`whole_small_sync`]: one batch, one
/// commit learned and one fsync on the receiver instead of three for a thousand records; there
/// is nothing to overlap a page with), else [`first_pages`].
fn page_limit(limit: usize, nth: u32, remaining: u64) -> usize {
    match whole_small_sync(limit, remaining) {
        Some(whole) if nth == 0 => whole,
        _ => first_pages(limit, nth),
    }
}

/// The size of the one page that holds a whole small sync of `remaining` feed entries (up to
/// [`SMALL_SYNC_PAGES`] pages of `limit`, never over [`protocol::MAX_PAGE_RECORDS`]), or `None`
/// when the sync is larger. The sender's first page and the responder's cap on a pull.
pub(crate) fn whole_small_sync(limit: usize, remaining: u64) -> Option<usize> {
    let whole = limit
        .saturating_mul(SMALL_SYNC_PAGES)
        .min(protocol::MAX_PAGE_RECORDS);
    (remaining <= whole as u64).then_some(whole)
}

/// A sync of up to this many pages' worth of records goes as one page. The page size is kept
/// small for the receiver's memory during a long, pipelined sync (session 7: 1,000 records);
/// a small sync holds one page at a time, and two pages' worth in one batch (the size pages
/// had before) keeps the 1 % incremental of 100,000 records (1,020) one batch.
const SMALL_SYNC_PAGES: usize = 2;

/// Records in the first page each direction of a session sends (see [`first_pages`]).
const FIRST_PAGE_RECORDS: usize = 250;
