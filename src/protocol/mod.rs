//! The sync protocol's wire contract: method names, parameter and result types, error codes,
//! page encodings. docs/PROTOCOL.md is the prose version of this file; keep them equal.
//!
//! Only this module (with `server` and `client`) knows JSON-RPC. It never imports the store or
//! the sync layer: the application implements [`server::SyncService`] and drives sessions in the
//! types defined here.

pub mod client;
pub mod counters;
pub mod decodes;
pub mod pack;
pub mod server;

use crate::change::{ApplyStats, RemoteChange};
use crate::model::VersionVector;
use base64::Engine;
use jsonrpsee::types::ErrorObjectOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The protocol version this build speaks (2: `hello` carries the incarnation; pages
/// carry the revisions the receiver lacks; 3: `fieldsync_reconcile` and `fieldsync_fetch`,
/// range-based set reconciliation for `verify` and anti-entropy; 4: `hello` and its reply
/// leave out a knowledge vector the other side already holds, named by its hash, and pages
/// carry `proofs`, signed commits that attribute every write to the instance that made it).
pub const PROTOCOL_VERSION: u32 = 4;
/// The oldest version that answers `fieldsync_reconcile` and `fieldsync_fetch`: `verify` and
/// anti-entropy refuse a peer below it (sessions still run from [`MIN_PROTOCOL_VERSION`]).
pub const RECONCILE_PROTOCOL_VERSION: u32 = 3;
/// The oldest protocol version this build still speaks. Version 1 peers cannot tell a
/// restored laptop from the one it replaced; versions 2 and 3 read a hello without knowledge
/// as "knows nothing" and send no proofs (every write they relay would be quarantined), so
/// all of them are refused.
pub const MIN_PROTOCOL_VERSION: u32 = 4;

/// Method: exchange identities, versions, positions and knowledge.
pub const HELLO: &str = "fieldsync_hello";
/// Method: "your changes since feed position N", one page.
pub const PULL: &str = "fieldsync_pull";
/// Method: "here are my changes since the position you have", one page.
pub const PUSH: &str = "fieldsync_push";
/// Method: "I have new changes" (pull from me soon).
pub const NOTIFY: &str = "fieldsync_notify";
/// Method: per-table digest buckets (`verify` of protocol 2; kept for those peers).
pub const DIGEST: &str = "fieldsync_digest";
/// Method: range fingerprints for set reconciliation (protocol 3).
pub const RECONCILE: &str = "fieldsync_reconcile";
/// Method: whole records by id, for anti-entropy (protocol 3).
pub const FETCH: &str = "fieldsync_fetch";
/// Most ranges in one `fieldsync_reconcile` request.
pub const MAX_RECONCILE_RANGES: usize = 4096;
/// A range with at most this many records (on the responder) is answered with its items
/// rather than its 16 children's fingerprints.
pub const RECONCILE_ITEMS_MAX: u64 = 8;
/// Most ids in one `fieldsync_fetch` request.
pub const MAX_FETCH_IDS: usize = 1000;

/// Page encoding: changes as a JSON array (readable, for debugging).
pub const ENC_JSON: &str = "json";
/// Page encoding: base64 of zstd-compressed MessagePack (the default).
pub const ENC_ZSTD: &str = "msgpack+zstd";

/// Largest JSON-RPC request or response body accepted, in bytes.
pub const MAX_BODY_BYTES: u32 = 32 << 20;
/// Largest decompressed page accepted, in bytes.
pub const MAX_PAGE_BYTES: usize = 64 << 20;
/// Most records accepted in one page.
pub const MAX_PAGE_RECORDS: usize = 20_000;

/// Error codes of the protocol (JSON-RPC `error.code`); the standard -327xx codes also occur.
pub mod codes {
    /// Invalid params (JSON-RPC's own code), e.g. a hello without its incarnation.
    pub const INVALID_PARAMS: i32 = -32602;
    /// No protocol version in common.
    pub const INCOMPATIBLE_VERSION: i32 = 1001;
    /// The peer has our own instance id.
    pub const SAME_INSTANCE: i32 = 1002;
    /// A feed position beyond the feed head.
    pub const POSITION_FROM_FUTURE: i32 = 1003;
    /// A page that fails validation (bad table, bad record, local-only table, bad encoding).
    pub const INVALID_PAGE: i32 = 1004;
    /// A push that would leave a gap: its `since` is after what we have received.
    pub const POSITION_GAP: i32 = 1005;
    /// A page over the size or record limits.
    pub const PAGE_TOO_LARGE: i32 = 1006;
    /// The store failed; nothing was written.
    pub const STORE_FAILED: i32 = 1007;
    /// A request from an instance that has not said hello.
    pub const UNKNOWN_PEER: i32 = 1008;
    /// A table name that is invalid.
    pub const INVALID_TABLE: i32 = 1009;
    /// The request claims an instance other than the one its certificate is for.
    pub const IDENTITY_MISMATCH: i32 = 1010;
    /// The caller's (or responder's) instance id is used by two data directories at once.
    pub const DUPLICATE_INSTANCE: i32 = 1011;
    /// The caller's certificate was revoked after its connection opened (a keep-alive
    /// connection from before the revocation arrived): refused, and the connection is closed.
    pub const REVOKED: i32 = 1012;
    /// A hello left out its knowledge (`knowledge_hash`) but the responder does not hold a
    /// knowledge vector of the caller with that hash: say hello again with the knowledge.
    pub const KNOWLEDGE_NEEDED: i32 = 1013;
}

/// A protocol-level error: a code from [`codes`] and a message naming the problem.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (code {code})")]
pub struct ProtocolError {
    /// One of [`codes`] or a JSON-RPC code.
    pub code: i32,
    /// What went wrong.
    pub message: String,
}

impl ProtocolError {
    /// An error with a code and a message.
    pub fn new(code: i32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<ProtocolError> for ErrorObjectOwned {
    fn from(e: ProtocolError) -> Self {
        ErrorObjectOwned::owned(e.code, e.message, None::<()>)
    }
}

/// Who an instance is, as told to peers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Instance id.
    pub instance: Uuid,
    /// Display name.
    #[serde(default)]
    pub name: String,
    /// Owner (left out of the JSON when empty, like `contact` and `url`: every hello carries
    /// this, and a no-op sync is mostly hellos).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub owner: String,
    /// Contact.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub contact: String,
    /// Where its agent listens, if it runs one (`host:port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// `fieldsync_hello` params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Oldest protocol version the caller speaks.
    pub protocol_min: u32,
    /// Newest protocol version the caller speaks.
    pub protocol_max: u32,
    /// The caller.
    pub peer: PeerInfo,
    /// Caller's wall clock, epoch milliseconds (to measure the clock offset).
    pub clock_ms: u64,
    /// Caller's feed head.
    pub head: u64,
    /// Caller's knowledge vector (instance → ts); empty when `knowledge_hash` is given.
    pub knowledge: VersionVector,
    /// Given when `knowledge` is left out (version 4): the [`knowledge_hash`] of the caller's
    /// knowledge, which equals what it told the responder before (in a hello or a hello
    /// reply). The responder uses the knowledge it holds for the caller if its hash matches,
    /// and refuses with [`codes::KNOWLEDGE_NEEDED`] otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_hash: Option<String>,
    /// The [`knowledge_hash`] of the responder's knowledge as the caller holds it (from the
    /// responder's last hello or reply): when it equals the responder's current knowledge, the
    /// reply leaves its knowledge out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_knowledge_hash: Option<String>,
    /// The position of the responder's feed the caller has received up to (version 4): if the
    /// responder has nothing past it, has received the caller's feed up to the caller's head,
    /// and each side holds all the other knows, the session has nothing to move and the
    /// responder ends it in its reply (`HelloReply::done`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub received_upto: Option<u64>,
    /// Sent with `peer_knowledge_hash` (an optional field of version 4): the caller's feed
    /// holds nothing, after this position, that the responder's knowledge as named by
    /// `peer_knowledge_hash` lacks (what a push from there would send is an empty page). If that
    /// hash is the responder's current knowledge and this is at most what the responder has
    /// received from the caller, the responder counts the caller's feed as received up to its
    /// `head`, as the empty push would, and the session may end in the reply. A responder that
    /// does not know the field ignores it and the caller pushes the empty page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nothing_past: Option<u64>,
    /// Page encodings the caller accepts, preferred first.
    #[serde(default)]
    pub encodings: Vec<String>,
    /// Tables the caller never sends or accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_only: Vec<String>,
    /// Tables the caller has records in and syncs.
    #[serde(default)]
    pub tables: Vec<String>,
    /// The caller's data directory's incarnation (required from version 2; optional in the
    /// type only so that a version 1 hello is refused by version, not as malformed).
    #[serde(default)]
    pub incarnation: Option<crate::model::Incarnation>,
}

/// `fieldsync_hello` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The protocol version both will speak.
    pub protocol: u32,
    /// The responder.
    pub peer: PeerInfo,
    /// Responder's wall clock, epoch milliseconds.
    pub clock_ms: u64,
    /// Responder's feed head.
    pub head: u64,
    /// Responder's knowledge vector; empty when `knowledge_hash` is given.
    pub knowledge: VersionVector,
    /// Given when `knowledge` is left out because the hello's `peer_knowledge_hash` equals
    /// the hash of the responder's knowledge: the caller uses the knowledge it holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge_hash: Option<String>,
    /// The session had nothing to move either way and ended with this reply (version 4; see
    /// `Hello::received_upto`): the caller neither pulls nor pushes, unless its own view
    /// says otherwise (then it runs the session as usual).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub done: bool,
    /// The position of the caller's feed the responder has received up to (push from there).
    pub received_upto: u64,
    /// The page encoding to use.
    pub encoding: String,
    /// Tables the responder never sends or accepts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_only: Vec<String>,
    /// Tables the responder has records in and syncs.
    #[serde(default)]
    pub tables: Vec<String>,
    /// The responder's data directory's incarnation.
    #[serde(default)]
    pub incarnation: Option<crate::model::Incarnation>,
    /// Deletes the responder's mass-delete brake holds, per pending hold (at most
    /// [`MAX_HELD_SUMMARIES`]; optional, protocol 4): lets `verify` say that a difference is
    /// held deletes a sync does not move, and where to decide them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub held: Vec<HeldSummary>,
}

/// Most pending holds a hello reply names.
pub const MAX_HELD_SUMMARIES: usize = 16;

/// One pending hold as a hello reply names it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HeldSummary {
    /// The table.
    pub table: String,
    /// The laptop the held deletes came from (its name, else its instance id).
    pub from: String,
    /// How many deletes are held.
    pub deletes: u64,
}

/// `fieldsync_pull` params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    /// The caller's instance id.
    pub from: Uuid,
    /// Send changes after this position of your feed.
    pub since: u64,
    /// At most this many records (capped by the responder).
    pub limit: u32,
    /// About this many bytes at most (capped by the responder).
    pub max_bytes: u32,
    /// What the caller already has: changes it covers are not sent.
    pub knowledge: VersionVector,
    /// Page encoding wanted.
    pub encoding: String,
    /// Tables the caller does not accept.
    #[serde(default)]
    pub local_only: Vec<String>,
}

/// A page of changes, in either direction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Page {
    /// The sender's feed position this page starts after.
    pub since: u64,
    /// The sender's feed position to continue from.
    pub next: u64,
    /// More changes follow.
    pub more: bool,
    /// Number of records in the page.
    pub count: u32,
    /// Encoding of `data`: [`ENC_JSON`] or [`ENC_ZSTD`].
    pub encoding: String,
    /// The changes: a JSON array for `json`, a base64 string for `msgpack+zstd`.
    pub data: serde_json::Value,
    /// From protocol 4, within a deployment: the signed commits and range proofs that attribute
    /// every write in `data` to the instance that made it (base64 of zstd of MessagePack; see
    /// `sync::signed` and docs/PROTOCOL.md). Absent over plaintext.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proofs: Option<String>,
    /// On the last page of a pull (`more == false`), optional: the responder's knowledge as
    /// of just before it read that page, which the caller adopts instead of the responder's
    /// hello knowledge (it has now received every event the responder held then). Absent:
    /// the hello knowledge (older responders; pushes carry theirs in [`PushRequest`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub knowledge: Option<VersionVector>,
}

/// `fieldsync_push` params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PushRequest {
    /// The caller's instance id.
    pub from: Uuid,
    /// The page.
    pub page: Page,
    /// With the last page (`more == false`): the caller's knowledge as of just before it read
    /// that page (every event it then held is in its feed at or before `page.next`).
    #[serde(default)]
    pub knowledge: Option<VersionVector>,
}

/// `fieldsync_push` result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PushReply {
    /// The caller's feed position the responder now has.
    pub received_upto: u64,
    /// What applying the page did.
    pub stats: ApplyStats,
}

/// `fieldsync_notify` params.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Notify {
    /// The caller's instance id.
    pub from: Uuid,
    /// The caller's feed head.
    pub head: u64,
    /// The caller's agent is stopping: the responder shows it offline at once instead of at
    /// its next failed attempt (optional; older peers send and ignore nothing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// `fieldsync_digest` params: buckets of one table under an id prefix.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DigestRequest {
    /// Table.
    pub table: String,
    /// Lowercase hex prefix of the id (bytes), empty for the whole table.
    pub prefix: String,
}

/// One digest bucket: the records whose id starts with `prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Lowercase hex id prefix.
    pub prefix: String,
    /// Records in the bucket (deleted ones included).
    pub count: u64,
    /// SHA-256 over the bucket's records' content hashes, in id order (hex).
    pub hash: String,
}

/// `fieldsync_digest` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestReply {
    /// The requested bucket as a whole.
    pub total: Bucket,
    /// Sub-buckets one hex byte deeper (only non-empty ones); empty when `records` is given.
    pub buckets: Vec<Bucket>,
    /// For small buckets: every record id with its content hash.
    pub records: Option<Vec<(Uuid, String)>>,
}

/// `fieldsync_reconcile` params: id-prefix ranges of tables to compare.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReconcileRequest {
    /// The caller's instance id.
    pub from: Uuid,
    /// At most [`MAX_RECONCILE_RANGES`] ranges; answered in the same order.
    pub ranges: Vec<RangeQuery>,
}

/// One range: the records of `table` whose id (lowercase hex without dashes) starts with
/// `prefix`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeQuery {
    /// Table.
    pub table: String,
    /// 0 to 32 lowercase hex digits of the id.
    pub prefix: String,
    /// The caller's fingerprint of the range (hex, 16 bytes): when it equals the responder's,
    /// the answer is just `same`. Sent for whole tables; deeper ranges are known to differ.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fp: Option<String>,
}

/// `fieldsync_reconcile` result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileReply {
    /// One answer per requested range, in order.
    pub ranges: Vec<RangeAnswer>,
}

/// The responder's side of one range.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeAnswer {
    /// Records in the range on the responder (deleted ones included).
    pub count: u64,
    /// The caller's `fp` equals the responder's: nothing below differs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub same: bool,
    /// The 16 sub-ranges one hex digit deeper: base64 of 16 × 8-byte fingerprints (digit 0
    /// first; all zeros = empty). Given when the range holds more than
    /// [`RECONCILE_ITEMS_MAX`] records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub children: Option<String>,
    /// The range's records: base64 of (16-byte id, first 8 bytes of the content hash) per
    /// record, in id order. Given for small ranges.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<String>,
}

/// `fieldsync_fetch` params: whole records by id, whatever the caller's knowledge.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FetchRequest {
    /// The caller's instance id.
    pub from: Uuid,
    /// Table.
    pub table: String,
    /// At most [`MAX_FETCH_IDS`] ids; ids the responder lacks are left out of the page.
    pub ids: Vec<Uuid>,
    /// Page encoding wanted.
    pub encoding: String,
}

/// The hash that names a knowledge vector in a hello (version 4): the first 8 bytes of
/// SHA-256 over its entries in instance order (16 id bytes, then the stamp as 8 bytes
/// big-endian), as 16 lowercase hex digits.
pub fn knowledge_hash(k: &VersionVector) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for (id, ts) in k {
        h.update(id.as_bytes());
        h.update(ts.to_be_bytes());
    }
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Chooses the protocol version for a caller's range, or explains why there is none.
pub fn negotiate(min: u32, max: u32) -> Result<u32, ProtocolError> {
    let v = max.min(PROTOCOL_VERSION);
    if v < min.max(MIN_PROTOCOL_VERSION) {
        return Err(ProtocolError::new(
            codes::INCOMPATIBLE_VERSION,
            format!(
                "incompatible protocol version: peer speaks {min}..={max}, \
                 this instance speaks {MIN_PROTOCOL_VERSION}..={PROTOCOL_VERSION}"
            ),
        ));
    }
    Ok(v)
}

/// Encodes changes into a page body.
pub fn encode_changes(
    changes: &[RemoteChange],
    encoding: &str,
) -> Result<serde_json::Value, ProtocolError> {
    match encoding {
        ENC_JSON => serde_json::to_value(changes)
            .map_err(|e| ProtocolError::new(codes::INVALID_PAGE, format!("encoding page: {e}"))),
        ENC_ZSTD => {
            let raw = pack::pack(changes).map_err(|e| {
                ProtocolError::new(codes::INVALID_PAGE, format!("encoding page: {e}"))
            })?;
            let packed = zstd::bulk::compress(&raw, 3).map_err(|e| {
                ProtocolError::new(codes::INVALID_PAGE, format!("compressing page: {e}"))
            })?;
            Ok(serde_json::Value::String(
                base64::engine::general_purpose::STANDARD.encode(packed),
            ))
        }
        other => Err(unknown_encoding(other)),
    }
}

fn unknown_encoding(e: &str) -> ProtocolError {
    ProtocolError::new(
        codes::INVALID_PAGE,
        format!("unknown page encoding {e:?}: use {ENC_ZSTD:?} or {ENC_JSON:?}"),
    )
}

/// Latest stamp accepted from a peer: the start of the year 4000. The receiver's clock moves
/// past every stamp it accepts, so a stamp near `u64::MAX` would leave no room to order its next
/// edit (the packed layout also needs every ts to fit an `i64`).
pub const MAX_STAMP_TS: u64 = 64_060_588_800_000 << 16;

/// True if every stamp in `s` is at most [`MAX_STAMP_TS`].
pub fn stamps_in_range(s: &crate::model::RecordState) -> bool {
    s.max_ts() <= MAX_STAMP_TS
        && s.del_seen.values().all(|ts| *ts <= MAX_STAMP_TS)
        && s.deleted.is_none_or(|d| d.ts <= MAX_STAMP_TS)
}

/// Decodes and bounds-checks a page body.
pub fn decode_changes(page: &Page) -> Result<Vec<RemoteChange>, ProtocolError> {
    let invalid = |m: String| ProtocolError::new(codes::INVALID_PAGE, m);
    if page.count as usize > MAX_PAGE_RECORDS {
        return Err(ProtocolError::new(
            codes::PAGE_TOO_LARGE,
            format!(
                "page has {} records, over the limit of {MAX_PAGE_RECORDS}",
                page.count
            ),
        ));
    }
    // Bounds the memory of decodes in flight (see `decodes`): taken after the cheap checks.
    let _slot = decodes::acquire();
    let changes: Vec<RemoteChange> = match page.encoding.as_str() {
        ENC_JSON => serde_json::from_value(page.data.clone())
            .map_err(|e| invalid(format!("malformed page: {e}")))?,
        ENC_ZSTD => {
            let text = page
                .data
                .as_str()
                .ok_or_else(|| invalid("page data must be a base64 string".into()))?;
            let packed = base64::engine::general_purpose::STANDARD
                .decode(text)
                .map_err(|e| invalid(format!("page data is not base64: {e}")))?;
            let raw = zstd::bulk::decompress(&packed, MAX_PAGE_BYTES).map_err(|e| {
                // Only a frame that declares more than the limit is too large; anything else
                // that fails to decompress is corrupt data, i.e. an invalid page.
                match zstd::zstd_safe::get_frame_content_size(&packed) {
                    Ok(Some(n)) if n > MAX_PAGE_BYTES as u64 => ProtocolError::new(
                        codes::PAGE_TOO_LARGE,
                        format!("page does not decompress within {MAX_PAGE_BYTES} bytes: {e}"),
                    ),
                    _ => invalid(format!("page data is not valid zstd: {e}")),
                }
            })?;
            pack::unpack_declared(&raw, page.count as usize)
                .map_err(|e| invalid(format!("malformed page: {e}")))?
        }
        other => return Err(unknown_encoding(other)),
    };
    if changes.len() != page.count as usize {
        return Err(invalid(format!(
            "page says {} records but holds {}",
            page.count,
            changes.len()
        )));
    }
    if page.next < page.since {
        return Err(invalid(format!(
            "page goes backwards: since {} next {}",
            page.since, page.next
        )));
    }
    if let Some(ch) = changes.iter().find(|c| !stamps_in_range(&c.state)) {
        return Err(invalid(format!(
            "record {}/{} carries a stamp dated after the year 4000",
            ch.table, ch.id
        )));
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Hlc;
    use crate::model::{FieldState, RecordState};

    fn sample() -> Vec<RemoteChange> {
        let node = Uuid::new_v4();
        let mut state = RecordState::default();
        state.fields.insert(
            "name".into(),
            FieldState {
                value: Some(serde_json::json!("José")),
                stamp: Hlc { ts: 42, node },
            },
        );
        state.vv.insert(node, 42);
        vec![RemoteChange {
            table: "person".into(),
            id: Uuid::new_v4(),
            state,
            conflicts: vec![],
            history: vec![],
        }]
    }

    #[test]
    fn both_encodings_round_trip() {
        for enc in [ENC_JSON, ENC_ZSTD] {
            let ch = sample();
            let page = Page {
                since: 0,
                next: 1,
                more: false,
                count: 1,
                encoding: enc.into(),
                data: encode_changes(&ch, enc).unwrap(),
                proofs: None,
                knowledge: None,
            };
            assert_eq!(decode_changes(&page).unwrap(), ch, "{enc}");
        }
    }

    #[test]
    fn bad_pages_are_refused_with_a_reason() {
        let mut page = Page {
            since: 0,
            next: 1,
            more: false,
            count: 2,
            encoding: ENC_JSON.into(),
            data: encode_changes(&sample(), ENC_JSON).unwrap(),
            proofs: None,
            knowledge: None,
        };
        assert!(decode_changes(&page)
            .unwrap_err()
            .message
            .contains("says 2"));
        page.encoding = "xml".into();
        assert!(decode_changes(&page)
            .unwrap_err()
            .message
            .contains("unknown page encoding"));
        page.encoding = ENC_ZSTD.into();
        page.data = serde_json::json!("not base64!");
        assert_eq!(decode_changes(&page).unwrap_err().code, codes::INVALID_PAGE);
    }

    #[test]
    fn version_negotiation() {
        assert_eq!(negotiate(1, 5).unwrap(), PROTOCOL_VERSION);
        let e = negotiate(PROTOCOL_VERSION + 1, PROTOCOL_VERSION + 3).unwrap_err();
        assert_eq!(e.code, codes::INCOMPATIBLE_VERSION);
        assert!(e.message.contains("incompatible protocol version"));
        // Version 1 sent records without their history: such a peer is refused, clearly.
        let old = negotiate(1, 1).unwrap_err();
        assert_eq!(old.code, codes::INCOMPATIBLE_VERSION);
        assert!(old.message.contains("peer speaks 1..=1"), "{}", old.message);
        // Versions 2 and 3 would read a hello without knowledge as "knows nothing".
        let v3 = negotiate(2, 3).unwrap_err();
        assert_eq!(v3.code, codes::INCOMPATIBLE_VERSION);
        assert!(
            v3.message
                .contains("peer speaks 2..=3, this instance speaks 4..=4"),
            "{}",
            v3.message
        );
    }

    #[test]
    fn knowledge_hash_is_pinned() {
        // Part of the wire (protocol 4): both sides must compute the same 16 hex digits.
        let mut k = VersionVector::new();
        assert_eq!(knowledge_hash(&k), "e3b0c44298fc1c14", "SHA-256 of nothing");
        k.insert(Uuid::from_u128(1), 42);
        k.insert(Uuid::from_u128(2), 7);
        // Computed independently (Python's hashlib over the documented byte layout).
        let want = "97ed11f454a62a19";
        assert_eq!(knowledge_hash(&k), want);
        k.insert(Uuid::from_u128(2), 8);
        assert_ne!(knowledge_hash(&k), want, "any stamp changes the hash");
    }
}
