//! Bad input and faults on the sync endpoint: raw HTTP/JSON-RPC against a real agent, and a
//! `fieldsync sync` against peers that speak something else. Every refusal must name the
//! problem, write nothing, and leave the agent serving.

mod common;

use base64::Engine;
use common::agent::*;
use serde_json::{json, Map, Value};
use std::path::PathBuf;
use uuid::Uuid;

// Error codes of src/protocol/mod.rs (`codes`), and the standard JSON-RPC ones.
const INCOMPATIBLE_VERSION: i64 = 1001;
const SAME_INSTANCE: i64 = 1002;
const POSITION_FROM_FUTURE: i64 = 1003;
const INVALID_PAGE: i64 = 1004;
const POSITION_GAP: i64 = 1005;
const PAGE_TOO_LARGE: i64 = 1006;
const UNKNOWN_PEER: i64 = 1008;
const PARSE_ERROR: i64 = -32700;
const METHOD_NOT_FOUND: i64 = -32601;
const INVALID_PARAMS: i64 = -32602;
const INVALID_REQUEST: i64 = -32600;

/// An agent with some data, a second instance to sync with it afterwards, and what the agent
/// looked like before the test poked it.
struct Fixture {
    _tmp: tempfile::TempDir,
    b: PathBuf,
    agent: Agent,
    other: PathBuf,
    digest: Value,
    feed_seq: Value,
}

impl Fixture {
    fn new() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let b = plaintext_data_dir(tmp.path(), "b");
        let other = plaintext_data_dir(tmp.path(), "other");
        import(&b, "person", &people(20));
        import(&other, "person", &people(5));
        let agent = Agent::start_plaintext(&b);
        let digest = digest(&b);
        let feed_seq = status(&b)["feed_seq"].clone();
        Fixture {
            _tmp: tmp,
            b,
            agent,
            other,
            digest,
            feed_seq,
        }
    }

    fn addr(&self) -> &str {
        self.agent.addr()
    }

    /// Says hello as a made-up instance, as a real peer must before pushing.
    fn hello_as(&self, instance: Uuid) {
        let v = fieldsync::protocol::PROTOCOL_VERSION;
        let r = rpc(self.addr(), "fieldsync_hello", hello(instance, v, v));
        assert!(r.get("result").is_some(), "hello refused: {r}");
    }

    /// Nothing written, and the agent still syncs normally with a well-behaved peer.
    #[track_caller]
    fn assert_unharmed(&mut self) {
        assert_eq!(digest(&self.b), self.digest, "records changed");
        assert_eq!(status(&self.b)["feed_seq"], self.feed_seq, "the feed moved");
        assert!(self.agent.alive(), "agent died:\n{}", self.agent.log_text());
        let s = sync(&self.other, self.agent.addr());
        assert_eq!(s.sent.records, 5, "{:?}", s.sent.raw);
        assert_eq!(s.received.records, 20, "{:?}", s.received.raw);
        assert_same(&self.other, &self.b, self.agent.addr());
    }
}

/// Asserts a JSON-RPC error with `code` whose message (or data) mentions `phrase`.
#[track_caller]
fn assert_refused(reply: &Value, code: i64, phrase: &str) {
    let err = reply
        .get("error")
        .unwrap_or_else(|| panic!("expected an error, got {reply}"));
    assert!(reply.get("result").is_none(), "{reply}");
    assert_eq!(err["code"], code, "error code: {reply}");
    // jsonrpsee puts the serde detail of invalid params into `data`; ours is all in `message`.
    let as_text = |v: &Value| v.as_str().map(str::to_string).unwrap_or_default();
    let text = format!("{} {}", as_text(&err["message"]), as_text(&err["data"]));
    assert!(
        text.to_lowercase().contains(&phrase.to_lowercase()),
        "error should mention {phrase:?}: {reply}"
    );
}

fn now_ts() -> u64 {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    ms << 16
}

fn hello(instance: Uuid, min: u32, max: u32) -> Value {
    json!({
        "protocol_min": min, "protocol_max": max,
        "peer": {"instance": instance, "name": "test-peer"},
        "clock_ms": now_ts() >> 16, "head": 0, "knowledge": {},
        "encodings": ["json"],
        "incarnation": {"id": Uuid::new_v4(), "since": 1, "parent": null},
    })
}

/// One record state as it travels in a page (`RemoteChange`), written by `node`.
fn change(table: &str, node: Uuid, fields: Value) -> Value {
    let ts = now_ts();
    let fields: Map<String, Value> = fields
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| {
            let state = json!({"value": v, "stamp": {"ts": ts, "node": node}});
            (k.clone(), state)
        })
        .collect();
    json!({
        "table": table, "id": Uuid::new_v4(),
        "state": {"fields": fields, "vv": {node.to_string(): ts}, "del_seen": {}, "deleted": null},
    })
}

fn json_page(since: u64, changes: Vec<Value>) -> Value {
    json!({
        "since": since, "next": since + changes.len() as u64, "more": false,
        "count": changes.len(), "encoding": "json", "data": changes,
    })
}

fn push(from: Uuid, page: Value) -> Value {
    json!({"from": from, "page": page})
}

#[test]
fn a_well_formed_raw_push_is_accepted() {
    // The control case: the hand-built pages below are refused for their one fault only.
    let fx = Fixture::new();
    let me = Uuid::new_v4();
    fx.hello_as(me);
    let ch = change("person", me, json!({"name": "Raw Push", "age": 3}));
    let id = ch["id"].as_str().unwrap().parse::<Uuid>().unwrap();
    let r = rpc(
        fx.addr(),
        "fieldsync_push",
        push(me, json_page(0, vec![ch])),
    );
    assert_eq!(r["result"]["received_upto"], 1, "{r}");
    assert_eq!(r["result"]["stats"]["applied"], 1, "{r}");
    assert!(alive(&fx.b, "person", &id));
}

#[test]
fn malformed_json_is_a_parse_error() {
    let mut fx = Fixture::new();
    let r = rpc_raw(
        fx.addr(),
        br#"{"jsonrpc":"2.0","id":1,"method":"fieldsync_pull","params":[{"from":"#,
    );
    assert_refused(&r, PARSE_ERROR, "parse error");
    fx.assert_unharmed();
}

#[test]
fn a_request_whose_id_is_an_object_or_missing_is_an_invalid_request() {
    let mut fx = Fixture::new();
    for body in [
        &br#"{"jsonrpc":"2.0","id":{"a":1},"method":"fieldsync_pull","params":[]}"#[..],
        br#"{"jsonrpc":"2.0","id":[1],"method":"fieldsync_notify","params":[]}"#,
        br#"{"jsonrpc":"2.0","method":"fieldsync_notify","params":[]}"#,
    ] {
        let r = rpc_raw(fx.addr(), body);
        assert_refused(&r, INVALID_REQUEST, "invalid request");
        assert_eq!(r["id"], Value::Null, "{r}");
    }
    fx.assert_unharmed();
}

#[test]
fn a_parameter_of_the_wrong_type_is_invalid_params() {
    let mut fx = Fixture::new();
    let pull = json!({
        "from": Uuid::new_v4(), "since": "abc", "limit": 10, "max_bytes": 100000,
        "knowledge": {}, "encoding": "json",
    });
    let r = rpc(fx.addr(), "fieldsync_pull", pull);
    assert_refused(
        &r,
        INVALID_PARAMS,
        "invalid type: string \"abc\", expected u64",
    );
    fx.assert_unharmed();
}

#[test]
fn an_unknown_method_is_method_not_found() {
    let mut fx = Fixture::new();
    let r = rpc(fx.addr(), "fieldsync_delete_everything", json!({}));
    assert_refused(&r, METHOD_NOT_FOUND, "method not found");
    fx.assert_unharmed();
}

#[test]
fn a_page_whose_count_does_not_match_its_records_is_refused() {
    let mut fx = Fixture::new();
    let me = Uuid::new_v4();
    fx.hello_as(me);
    let mut page = json_page(0, vec![change("person", me, json!({"name": "One"}))]);
    page["count"] = json!(2);
    let r = rpc(fx.addr(), "fieldsync_push", push(me, page));
    assert_refused(&r, INVALID_PAGE, "page says 2 records but holds 1");
    fx.assert_unharmed();
}

#[test]
fn page_data_that_is_not_base64_is_refused() {
    let mut fx = Fixture::new();
    let me = Uuid::new_v4();
    fx.hello_as(me);
    let page = json!({
        "since": 0, "next": 1, "more": false, "count": 1,
        "encoding": "msgpack+zstd", "data": "this is *not* base64!",
    });
    let r = rpc(fx.addr(), "fieldsync_push", push(me, page));
    assert_refused(&r, INVALID_PAGE, "not base64");
    fx.assert_unharmed();
}

#[test]
fn page_data_that_is_base64_but_not_zstd_is_refused_as_invalid() {
    let mut fx = Fixture::new();
    let me = Uuid::new_v4();
    fx.hello_as(me);
    let garbage = base64::engine::general_purpose::STANDARD.encode(b"no zstd frame in here");
    let page = json!({
        "since": 0, "next": 1, "more": false, "count": 1,
        "encoding": "msgpack+zstd", "data": garbage,
    });
    let r = rpc(fx.addr(), "fieldsync_push", push(me, page));
    // Corrupt data is an invalid page, not an oversized one (PAGE_TOO_LARGE is for limits).
    assert_refused(&r, INVALID_PAGE, "zstd");
    fx.assert_unharmed();
}

#[test]
fn a_page_that_decompresses_beyond_the_limit_is_refused_as_too_large() {
    let mut fx = Fixture::new();
    let me = Uuid::new_v4();
    fx.hello_as(me);
    // A few KiB on the wire that would expand to 65 MiB: refused before it is inflated.
    let bomb = zstd::bulk::compress(&vec![0u8; 65 << 20], 3).unwrap();
    let page = json!({
        "since": 0, "next": 1, "more": false, "count": 1, "encoding": "msgpack+zstd",
        "data": base64::engine::general_purpose::STANDARD.encode(bomb),
    });
    let r = rpc(fx.addr(), "fieldsync_push", push(me, page));
    assert_refused(
        &r,
        PAGE_TOO_LARGE,
        "does not decompress within 67108864 bytes",
    );
    fx.assert_unharmed();
}

#[test]
fn a_page_with_an_invalid_table_name_is_refused_whole() {
    let mut fx = Fixture::new();
    let me = Uuid::new_v4();
    fx.hello_as(me);
    // A valid record first: the bad one must take the whole page down with it.
    let page = json_page(
        0,
        vec![
            change("person", me, json!({"name": "Fine"})),
            change("Bad!", me, json!({"name": "Bad"})),
        ],
    );
    let r = rpc(fx.addr(), "fieldsync_push", push(me, page));
    assert_refused(&r, INVALID_PAGE, "table name \"Bad!\" is invalid");
    fx.assert_unharmed();
}

#[test]
fn a_page_with_a_record_over_one_mib_is_refused_whole() {
    let mut fx = Fixture::new();
    let me = Uuid::new_v4();
    fx.hello_as(me);
    let big = "x".repeat((1 << 20) + 10);
    let page = json_page(
        0,
        vec![
            change("person", me, json!({"name": "Fine"})),
            change("person", me, json!({"name": "Huge", "notes": big})),
        ],
    );
    let r = rpc(fx.addr(), "fieldsync_push", push(me, page));
    assert_refused(&r, INVALID_PAGE, "over the 1 MiB limit");
    fx.assert_unharmed();
}

#[test]
fn a_pull_from_a_position_beyond_the_feed_head_is_refused() {
    let mut fx = Fixture::new();
    let pull = json!({
        "from": Uuid::new_v4(), "since": 1_000_000, "limit": 10, "max_bytes": 100000,
        "knowledge": {}, "encoding": "json",
    });
    let r = rpc(fx.addr(), "fieldsync_pull", pull);
    assert_refused(&r, POSITION_FROM_FUTURE, "beyond this instance's feed head");
    fx.assert_unharmed();
}

#[test]
fn a_hello_with_the_agents_own_instance_id_is_refused() {
    let mut fx = Fixture::new();
    let own: Uuid = fx.agent.instance().parse().unwrap();
    let v = fieldsync::protocol::PROTOCOL_VERSION;
    let r = rpc(fx.addr(), "fieldsync_hello", hello(own, v, v));
    assert_refused(&r, SAME_INSTANCE, "our own instance id");
    fx.assert_unharmed();
    assert!(
        run(&fx.b, &["peers"])
            .ok()
            .lines()
            .iter()
            .all(|p| p["instance"] != fx.agent.instance()),
        "the agent recorded itself as a peer"
    );
}

#[test]
fn a_push_from_an_instance_that_never_said_hello_is_refused() {
    let mut fx = Fixture::new();
    let stranger = Uuid::new_v4();
    let page = json_page(0, vec![change("person", stranger, json!({"name": "Who"}))]);
    let r = rpc(fx.addr(), "fieldsync_push", push(stranger, page));
    assert_refused(&r, UNKNOWN_PEER, "must say hello");
    fx.assert_unharmed();
}

#[test]
fn a_push_that_leaves_a_gap_in_positions_is_refused() {
    let mut fx = Fixture::new();
    let me = Uuid::new_v4();
    fx.hello_as(me);
    // The agent has received nothing from us, so a page after position 5 skips 1..=5.
    let page = json_page(5, vec![change("person", me, json!({"name": "Later"}))]);
    let r = rpc(fx.addr(), "fieldsync_push", push(me, page));
    assert_refused(&r, POSITION_GAP, "resend from 0");
    fx.assert_unharmed();
    let row = run(&fx.b, &["peers"])
        .ok()
        .lines()
        .into_iter()
        .find(|p| p["instance"] == me.to_string())
        .expect("hello recorded the peer");
    assert_eq!(
        row["received_upto"], 0,
        "the refused page moved the position"
    );
}

#[test]
fn a_hello_with_no_protocol_version_in_common_is_refused() {
    let mut fx = Fixture::new();
    let v = fieldsync::protocol::PROTOCOL_VERSION;
    let r = rpc(
        fx.addr(),
        "fieldsync_hello",
        hello(Uuid::new_v4(), v + 1, v + 3),
    );
    assert_refused(&r, INCOMPATIBLE_VERSION, "incompatible protocol version");
    assert_refused(&r, INCOMPATIBLE_VERSION, &format!("{}..={}", v + 1, v + 3));
    fx.assert_unharmed();
}

#[test]
fn a_version_1_peer_is_refused_by_version_not_as_malformed() {
    // Version 1 hellos carry no incarnation: such a peer cannot tell a restored laptop from
    // the one it replaced, so it is refused with the version error, naming both ranges.
    let mut fx = Fixture::new();
    let mut h = hello(Uuid::new_v4(), 1, 1);
    h.as_object_mut().unwrap().remove("incarnation");
    let r = rpc(fx.addr(), "fieldsync_hello", h);
    assert_refused(&r, INCOMPATIBLE_VERSION, "incompatible protocol version");
    assert_refused(&r, INCOMPATIBLE_VERSION, "1..=1");
    fx.assert_unharmed();
}

#[test]
fn a_protocol_3_peer_is_refused_by_version() {
    // Protocol 3 reads a hello without knowledge as "knows nothing" (protocol 4 leaves known
    // knowledge out), so it is refused, naming both ranges, with a hello it would send.
    let mut fx = Fixture::new();
    let r = rpc(fx.addr(), "fieldsync_hello", hello(Uuid::new_v4(), 2, 3));
    assert_refused(
        &r,
        INCOMPATIBLE_VERSION,
        "peer speaks 2..=3, this instance speaks 4..=4",
    );
    fx.assert_unharmed();
}

/// A data dir with records, and what it looked like before a failed sync.
fn initiator(root: &std::path::Path) -> (PathBuf, Value, Value) {
    let a = plaintext_data_dir(root, "a");
    import(&a, "person", &people(5));
    let d = digest(&a);
    let seq = status(&a)["feed_seq"].clone();
    (a, d, seq)
}

#[track_caller]
fn assert_initiator_unchanged(a: &std::path::Path, d: &Value, seq: &Value) {
    assert_eq!(&digest(a), d);
    assert_eq!(&status(a)["feed_seq"], seq);
    let peers = run(a, &["peers"]).ok().stdout;
    assert!(peers.trim() == "[]", "a refused peer was recorded: {peers}");
}

#[test]
fn sync_refuses_a_peer_that_answers_with_another_protocol_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, d, seq) = initiator(tmp.path());
    // A future agent that accepts our hello but says it will speak a newer version only.
    let future = fieldsync::protocol::PROTOCOL_VERSION + 1;
    let peer = FakePeer::start(move |body| {
        let req: Value = serde_json::from_str(body).unwrap_or_default();
        let mut knowledge = Map::new();
        let id = Uuid::new_v4();
        knowledge.insert(id.to_string(), json!(now_ts()));
        http_json(&json!({"jsonrpc": "2.0", "id": req["id"], "result": {
            "protocol": future, "peer": {"instance": id, "name": "future"}, "clock_ms": now_ts() >> 16,
            "head": 100, "knowledge": knowledge, "received_upto": 0, "encoding": "json",
        }}))
    });
    let out = run(&a, &["sync", "--insecure-plaintext", peer.addr()]);
    let served = peer.finish();
    assert_eq!(out.code, 3, "{out}");
    assert!(
        out.stderr.contains("incompatible protocol version"),
        "{out}"
    );
    assert_eq!(served, 1, "the session went on after the hello");
    assert_initiator_unchanged(&a, &d, &seq);
}

#[test]
fn sync_relays_a_peer_refusing_our_protocol_version() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, d, seq) = initiator(tmp.path());
    let peer = FakePeer::start(|body| {
        let req: Value = serde_json::from_str(body).unwrap_or_default();
        http_json(&json!({"jsonrpc": "2.0", "id": req["id"], "error": {
            "code": 1001,
            "message": "incompatible protocol version: peer speaks 1..=1, this instance speaks 4..=4",
        }}))
    });
    let out = run(&a, &["sync", "--insecure-plaintext", peer.addr()]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stderr.contains("peer refused"), "{out}");
    assert!(
        out.stderr.contains("incompatible protocol version"),
        "{out}"
    );
    drop(peer);
    assert_initiator_unchanged(&a, &d, &seq);
}

#[test]
fn sync_with_something_that_is_not_a_fieldsync_agent_fails_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, d, seq) = initiator(tmp.path());
    let peer = FakePeer::start(|_| b"SSH-2.0-OpenSSH_9.6 garbage\r\n\r\n".to_vec());
    let out = run(&a, &["sync", "--insecure-plaintext", peer.addr()]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stderr.contains("cannot reach"), "{out}");
    assert!(out.stderr.contains(peer.addr()), "{out}");
    drop(peer);
    assert_initiator_unchanged(&a, &d, &seq);
    // And verify, which speaks the same protocol, refuses it the same way.
    let peer = FakePeer::start(|_| b"\x00\x01garbage".to_vec());
    let out = run(&a, &["verify", "--insecure-plaintext", peer.addr()]);
    assert_eq!(out.code, 3, "{out}");
    assert!(out.stderr.contains("cannot reach"), "{out}");
}
