//! The HTTP API end to end: a real `fieldsync run` agent serving on 127.0.0.1, spoken to over
//! real TCP with a minimal HTTP/1.1 client (so every byte on the wire is what an application
//! would send), checked the way an application would check it.

mod common;

use common::agent::*;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Longest any one request may take (a long poll included): a hang fails the test.
const REQ_TIMEOUT: Duration = Duration::from_secs(60);

/// An HTTP response.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Resp {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {} body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts an error response: status, the JSON {code, message, field} shape and the code.
    #[track_caller]
    fn error(&self, status: u16, code: &str) -> Value {
        let v = self.json();
        assert_eq!(self.status, status, "{v}");
        assert_eq!(v["code"], code, "{v}");
        let m = v["message"].as_str().expect("message");
        assert!(
            !m.is_empty() && !m.contains('\n'),
            "one-line message: {m:?}"
        );
        assert!(v.as_object().unwrap().contains_key("field"), "{v}");
        v
    }
}

/// The agent's API as an application finds it: URL and token from api.json.
#[derive(Clone)]
struct Api {
    addr: String,
    token: String,
}

impl Api {
    fn of(dir: &Path) -> Api {
        let f: Value =
            serde_json::from_slice(&std::fs::read(dir.join("api.json")).expect("api.json"))
                .expect("api.json is JSON");
        let url = f["url"].as_str().expect("url");
        Api {
            addr: url.trim_start_matches("http://").to_string(),
            token: f["token"].as_str().expect("token").to_string(),
        }
    }

    fn open(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(&self.addr).expect("connect to the API");
        s.set_read_timeout(Some(REQ_TIMEOUT)).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if !headers
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("authorization"))
        {
            head.push_str(&format!("Authorization: Bearer {}\r\n", self.token));
        }
        for (k, v) in headers {
            if !v.is_empty() {
                head.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).unwrap();
        s.write_all(body).unwrap();
        s
    }

    fn req(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        read_response(self.open(method, path, headers, body))
    }

    fn get(&self, path: &str) -> Resp {
        self.req("GET", path, &[], b"")
    }

    fn send(&self, method: &str, path: &str, body: &Value) -> Resp {
        self.req(method, path, &[], body.to_string().as_bytes())
    }
}

fn read_response(s: TcpStream) -> Resp {
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let mut body = Vec::new();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16).expect("chunk size");
            if n == 0 {
                break;
            }
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Resp {
        status,
        headers,
        body,
    }
}

fn read_head(r: &mut impl BufRead) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).expect("status line");
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').expect("header line");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    (status, headers)
}

/// An agent with the API on a free port of 127.0.0.1.
fn agent(dir: &Path) -> (Agent, Api) {
    let a = Agent::start_with(dir, &["--api-listen", "127.0.0.1:0"]);
    let api = Api::of(dir);
    (a, api)
}

fn rec_path(table: &str, id: &str) -> String {
    format!("/v1/tables/{table}/records/{id}")
}

fn new_root() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = data_dir(tmp.path(), "a");
    (tmp, dir)
}

#[test]
fn records_crud_paging_filters_history_and_batch() {
    let (_tmp, dir) = new_root();
    let (_a, api) = agent(&dir);

    // The token file is the owner's alone.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("api.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);

    // Create: server-made id, 201, Location and ETag.
    let r = api.send(
        "POST",
        "/v1/tables/person/records",
        &json!({"name": "Amina", "age": 34, "address": {"city": "Jos", "street": "Main"}}),
    );
    assert_eq!(r.status, 201, "{}", r.json());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let etag = r.header("etag").expect("ETag").to_string();
    assert_eq!(r.header("location"), Some(rec_path("person", &id).as_str()));

    // Get: the record, the same ETag, and the CLI sees the same record.
    let g = api.get(&rec_path("person", &id));
    assert_eq!(g.status, 200);
    assert_eq!(g.header("etag"), Some(etag.as_str()));
    assert_eq!(g.json()["fields"]["address"]["city"], "Jos");
    let cli = run(&dir, &["get", "person", &id]).ok().json();
    assert_eq!(cli["fields"], g.json()["fields"]);

    // Patch is a JSON merge patch: nested objects merge, null removes at any depth.
    let p = api.send(
        "PATCH",
        &rec_path("person", &id),
        &json!({"address": {"street": null, "zip": "930"}, "age": null, "status": "found"}),
    );
    assert_eq!(p.status, 200, "{}", p.json());
    assert_ne!(p.header("etag"), Some(etag.as_str()));
    let f = api.get(&rec_path("person", &id)).json()["fields"].clone();
    assert_eq!(
        f,
        json!({"name": "Amina", "status": "found", "address": {"city": "Jos", "zip": "930"}})
    );

    // Put replaces; same values again is "written": false with the same ETag.
    let id2 = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    let put = api.send(
        "PUT",
        &rec_path("person", id2),
        &json!({"name": "Bello", "age": 7}),
    );
    assert_eq!(put.status, 200);
    assert_eq!(put.json()["written"], true);
    let again = api.send(
        "PUT",
        &rec_path("person", id2),
        &json!({"name": "Bello", "age": 7}),
    );
    assert_eq!(again.json()["written"], false);
    assert_eq!(again.header("etag"), put.header("etag"));

    // History, and the record as of its first revision.
    let h = api
        .get(&format!("{}/history", rec_path("person", &id)))
        .json();
    let h = h.as_array().unwrap();
    assert_eq!(h.len(), 2, "{h:?}");
    let first = h[0]["at"].as_str().unwrap();
    let at = api.get(&format!(
        "{}?at={}",
        rec_path("person", &id),
        first.replace('#', "%23")
    ));
    assert_eq!(at.status, 200, "{}", at.json());
    assert_eq!(at.json()["fields"]["age"], 34);
    assert_eq!(at.json()["rev"], first);
    // By a time: `rev` is the revision shown (the latest at or before it), not the time.
    let time = first.split('#').next().unwrap();
    let by_time = api
        .get(&format!("{}?at={time}", rec_path("person", &id)))
        .json();
    let shown = by_time["rev"].as_str().unwrap_or_default();
    assert!(
        h.iter().any(|e| e["at"] == shown) && shown.starts_with(time),
        "{by_time} {h:?}"
    );

    // Paging by id and a field filter.
    let ops: Vec<Value> = (0..25)
        .map(|i| json!({"op": "put", "table": "shelter", "fields": {"n": i, "kind": if i % 5 == 0 {"school"} else {"tent"}}}))
        .collect();
    let b = api.send("POST", "/v1/batch", &json!({"ops": ops}));
    assert_eq!(b.status, 200, "{}", b.json());
    assert_eq!(b.json()["written"], 25);
    let mut seen = Vec::new();
    let mut after = String::new();
    for _ in 0..10 {
        let q = if after.is_empty() {
            "/v1/tables/shelter/records?limit=10".to_string()
        } else {
            format!("/v1/tables/shelter/records?limit=10&after={after}")
        };
        let page = api.get(&q).json();
        for r in page["records"].as_array().unwrap() {
            seen.push(r["id"].as_str().unwrap().to_string());
        }
        match page["next"].as_str() {
            Some(n) => after = n.to_string(),
            None => break,
        }
    }
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(
        (seen.len(), &sorted),
        (25, &seen),
        "ids once each, in order"
    );
    let schools = api
        .get("/v1/tables/shelter/records?field.kind=school")
        .json();
    assert_eq!(schools["records"].as_array().unwrap().len(), 5);
    let n3 = api.get("/v1/tables/shelter/records?field.n=3").json();
    assert_eq!(n3["records"][0]["fields"]["n"], 3);
    // The same number stored as text (an imported list mixes the two) meets the same filter,
    // written either way (trial 10: a phone number kept as text was not found).
    let text =
        json!({"ops": [{"op": "put", "table": "shelter", "fields": {"n": "3", "kind": "tent"}}]});
    assert_eq!(api.send("POST", "/v1/batch", &text).status, 200);
    for q in ["field.n=3", "field.n=%223%22", "field.n=3.0"] {
        let page = api.get(&format!("/v1/tables/shelter/records?{q}")).json();
        assert_eq!(page["records"].as_array().unwrap().len(), 2, "{q}: {page}");
    }
    // A batch names an existing record as a single request does: by the start of its id too
    // (trial 10: batches took only full UUIDs); one that names none is 404 at its op.
    let short = seen[0][..8].to_string();
    let b = api.send(
        "POST",
        "/v1/batch",
        &json!({"ops": [{"op": "patch", "table": "shelter", "id": short, "fields": {"kind": "clinic"}}]}),
    );
    assert_eq!(b.status, 200, "{}", b.json());
    assert_eq!(
        api.get(&rec_path("shelter", &seen[0])).json()["fields"]["kind"],
        "clinic"
    );
    let b = api.send(
        "POST",
        "/v1/batch",
        &json!({"ops": [{"op": "delete", "table": "shelter", "id": "ffffffff"}]}),
    );
    let e = b.error(404, "NOT_FOUND");
    assert_eq!(e["field"], "ops[0].id", "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("operation 1 (ops[0]): "),
        "{e}"
    );

    // Delete: then 404 RECORD_DELETED, visible with include_deleted.
    let d = api.req("DELETE", &rec_path("person", id2), &[], b"");
    assert_eq!(d.status, 200);
    api.get(&rec_path("person", id2))
        .error(404, "RECORD_DELETED");
    let dd = api.get(&format!("{}?include_deleted=true", rec_path("person", id2)));
    assert_eq!(dd.json()["deleted"], true);

    // Tables, status (with the API URL, also through the CLI), peers, OpenAPI.
    let t = api.get("/v1/tables").json();
    assert!(t
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["table"] == "shelter" && t["live"] == 26));
    let s = api.get("/v1/status").json();
    assert_eq!(s["tables"]["person"]["deleted"], 1);
    let url = format!("http://{}", api.addr);
    assert_eq!(s["agent"]["api"], url.as_str());
    assert_eq!(
        run(&dir, &["status"]).ok().json()["agent"]["api"],
        url.as_str()
    );
    assert_eq!(api.get("/v1/peers").json(), json!([]));
    let doc = api.get("/v1/openapi.json").json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for p in [
        "/v1/changes",
        "/v1/batch",
        "/v1/tables/{table}/records/{id}",
        "/v1/sync",
    ] {
        assert!(doc["paths"].get(p).is_some(), "{p} in the OpenAPI document");
    }
    // The ranges the server clamps to, as documented (a generator once read "minimum": 0).
    let limit = |path: &str| {
        doc["paths"][path]["get"]["parameters"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["name"] == "limit"))
            .map(|p| {
                (
                    p["schema"]["minimum"].clone(),
                    p["schema"]["maximum"].clone(),
                )
            })
    };
    assert_eq!(
        limit("/v1/tables/{table}/records"),
        Some((json!(1), json!(1000)))
    );
    assert_eq!(limit("/v1/changes"), Some((json!(1), json!(10000))));
}

#[test]
fn every_error_is_json_with_a_code_and_writes_nothing() {
    let (_tmp, dir) = new_root();
    std::fs::write(dir.join("fieldsync.toml"), "unique = [\"person.case\"]\n").unwrap();
    let (_a, api) = agent(&dir);
    let id = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    let ok = api.send("PUT", &rec_path("person", id), &json!({"case": "C1"}));
    assert_eq!(ok.status, 200);
    let head = api.get("/v1/status").json()["feed_seq"].clone();

    // 401: no token, wrong token.
    // (An empty Authorization value makes the test client send no Authorization header.)
    api.req("GET", "/v1/status", &[("Authorization", "")], b"")
        .error(401, "UNAUTHORIZED");
    let wrong = api.req(
        "GET",
        "/v1/status",
        &[("Authorization", "Bearer nope")],
        b"",
    );
    wrong.error(401, "UNAUTHORIZED");
    assert_eq!(wrong.header("www-authenticate"), Some("Bearer"));
    let lower = format!("bearer {}", api.token);
    let ok = api.req("GET", "/v1/status", &[("Authorization", &lower)], b"");
    assert_eq!(ok.status, 200, "the scheme name is case-insensitive");

    // 400s name the field.
    let e = api
        .send("POST", "/v1/tables/Bad!/records", &json!({}))
        .error(400, "INVALID_TABLE");
    assert_eq!(e["field"], "table");
    let e = api
        .send("PUT", &rec_path("person", "not-a-uuid"), &json!({}))
        .error(400, "INVALID_ID");
    assert_eq!(e["field"], "id");
    // A PUT by an import key says how to change a record by key, in the API's words.
    assert!(
        e["message"].as_str().unwrap().ends_with(
            "to change a record by its import key use PATCH /v1/tables/TABLE/records/KEY"
        ),
        "{e}"
    );
    api.req("PUT", &rec_path("person", id), &[], b"{not json")
        .error(400, "MALFORMED_JSON");
    // A number that would not be stored exactly is refused, naming the field; the message
    // suggests a string. Put, patch, create and batch alike.
    let e = api
        .req(
            "PUT",
            &rec_path("person", id),
            &[],
            b"{\"case\":\"C1\",\"phone\":123456789012345678901234567890}",
        )
        .error(400, "INEXACT_NUMBER");
    assert_eq!(e["field"], "fields.phone");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("123456789012345678901234567890") && m.contains("string"),
        "{m}"
    );
    api.req(
        "PATCH",
        &rec_path("person", id),
        &[],
        b"{\"w\":0.10000000000000000001}",
    )
    .error(400, "INEXACT_NUMBER");
    api.req(
        "POST",
        "/v1/tables/person/records",
        &[],
        b"{\"n\":9007199254740993.0}",
    )
    .error(400, "INEXACT_NUMBER");
    // Past f64's range: the same, naming the field (it was MALFORMED_JSON, "a number is too
    // large").
    let e = api
        .req("POST", "/v1/tables/person/records", &[], b"{\"n\":1e400}")
        .error(400, "INEXACT_NUMBER");
    assert_eq!(e["field"], "fields.n");
    api.req(
        "POST",
        "/v1/batch",
        &[],
        br#"{"ops":[{"op":"put","table":"person","fields":{"n":18446744073709551616}}]}"#,
    )
    .error(400, "INEXACT_NUMBER");
    api.send("PUT", &rec_path("person", id), &json!([1]))
        .error(400, "INVALID_FIELDS");
    api.send("PUT", &rec_path("fs_revocations", id), &json!({}))
        .error(400, "RESERVED_TABLE");
    api.get("/v1/tables/person/records?limit=x")
        .error(400, "BAD_QUERY");
    api.get("/v1/tables/person/records?bogus=1")
        .error(400, "UNKNOWN_PARAMETER");
    api.get("/v1/changes?feed=stream").error(400, "BAD_QUERY");
    let e = api
        .send(
            "POST",
            "/v1/batch",
            &json!({"ops": [
                {"op": "put", "table": "person", "fields": {"case": "C9"}},
                {"op": "patch", "table": "person", "id": "x", "fields": {}}]}),
        )
        // As for PATCH /v1/tables/person/records/x: "x" could be an import key, and no record
        // has it.
        .error(404, "NOT_FOUND");
    assert_eq!(e["field"], "ops[1].id");
    api.send(
        "POST",
        "/v1/batch",
        &json!({"ops": [{"op": "upsert", "table": "t"}]}),
    )
    .error(400, "INVALID_OP");
    let e = api
        .send(
            "POST",
            "/v1/batch",
            &json!({"ops": [
                {"op": "put", "table": "person", "fields": {"case": "C9"}},
                {"op": "delete", "table": "person", "id": "0f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b"}]}),
        )
        .error(404, "NOT_FOUND");
    let _ = e;
    api.get("/v1/conflicts/x/resolve")
        .error(405, "METHOD_NOT_ALLOWED");
    api.send("POST", "/v1/conflicts/x/resolve", &json!({"keep": "local"}))
        .error(400, "INVALID_ID");
    api.send("POST", "/v1/conflicts/7/resolve", &json!({"keep": 3}))
        .error(400, "INVALID_KEEP");

    // 404s.
    let other = "0f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    api.get(&rec_path("person", other)).error(404, "NOT_FOUND");
    api.send("PATCH", &rec_path("person", other), &json!({"a": 1}))
        .error(404, "NOT_FOUND");
    api.send("POST", "/v1/conflicts/7/resolve", &json!({"keep": "local"}))
        .error(404, "CONFLICT_NOT_FOUND");
    api.get("/v1/nothing").error(404, "NO_SUCH_ENDPOINT");

    // 409: a unique value already used.
    let e = api
        .send("POST", "/v1/tables/person/records", &json!({"case": "C1"}))
        .error(409, "UNIQUE_CLASH");
    assert_eq!(e["field"], "fields.case");

    // 412: If-Match with a stale revision, If-None-Match: * on an existing record.
    api.req(
        "PUT",
        &rec_path("person", id),
        &[("If-Match", "\"1234567\"")],
        b"{\"case\":\"C2\"}",
    )
    .error(412, "REVISION_MISMATCH");
    api.req(
        "PUT",
        &rec_path("person", id),
        &[("If-None-Match", "*")],
        b"{\"case\":\"C2\"}",
    )
    .error(412, "REVISION_MISMATCH");

    // 413: over the body limit, refused before the body is sent.
    let s = api.open(
        "PUT",
        &rec_path("person", id),
        &[("Content-Length", ""), ("Expect", "100-continue")],
        b"",
    );
    drop(s);
    let mut s = TcpStream::connect(&api.addr).unwrap();
    s.set_read_timeout(Some(REQ_TIMEOUT)).unwrap();
    write!(
        s,
        "PUT {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Length: {}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
        rec_path("person", id),
        api.token,
        17 << 20
    )
    .unwrap();
    read_response(s).error(413, "BODY_TOO_LARGE");

    // Nothing of all that was written, and the agent still serves.
    let s = api.get("/v1/status").json();
    assert_eq!(s["feed_seq"], head, "no failed request wrote anything");
    assert_eq!(
        api.get(&rec_path("person", id)).json()["fields"],
        json!({"case": "C1"})
    );
}

#[test]
fn if_match_lets_exactly_one_of_two_racing_writers_win() {
    let (_tmp, dir) = new_root();
    let (_a, api) = agent(&dir);
    let id = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    api.send("PUT", &rec_path("person", id), &json!({"n": 0}));
    for round in 0..20 {
        let etag = api
            .get(&rec_path("person", id))
            .header("etag")
            .unwrap()
            .to_string();
        let writers: Vec<_> = (0..2)
            .map(|w| {
                let (api, etag) = (api.clone(), etag.clone());
                std::thread::spawn(move || {
                    let body = json!({"n": round, "by": w}).to_string();
                    api.req(
                        "PUT",
                        &rec_path("person", id),
                        &[("If-Match", &etag)],
                        body.as_bytes(),
                    )
                    .status
                })
            })
            .collect();
        let mut codes: Vec<u16> = writers.into_iter().map(|t| t.join().unwrap()).collect();
        codes.sort();
        assert_eq!(
            codes,
            vec![200, 412],
            "round {round}: one wins, one is told"
        );
    }
    let h = api
        .get(&format!("{}/history", rec_path("person", id)))
        .json();
    assert_eq!(h.as_array().unwrap().len(), 21, "one revision per round");
}

/// Reads the feed from `since` until it is empty; returns (changes, last_seq).
fn drain(api: &Api, mut since: u64) -> (Vec<Value>, u64) {
    let mut out = Vec::new();
    for _ in 0..1000 {
        let page = api
            .get(&format!("/v1/changes?since={since}&limit=7"))
            .json();
        let changes = page["changes"].as_array().unwrap().clone();
        if changes.is_empty() {
            return (out, since);
        }
        since = page["last_seq"].as_u64().unwrap();
        out.extend(changes);
    }
    panic!("feed did not end");
}

#[test]
fn changes_feed_resumes_exactly_after_restarts_and_kill_9() {
    let (_tmp, dir) = new_root();
    let (mut a, api) = agent(&dir);
    let mut written = Vec::new();
    for i in 0..10 {
        let r = api.send("POST", "/v1/tables/person/records", &json!({"i": i}));
        written.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // The app processes the first page and stores its position.
    let page = api.get("/v1/changes?since=0&limit=4").json();
    let stored = page["last_seq"].as_u64().unwrap();
    let mut processed: Vec<String> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(processed, written[..4]);
    let c0 = &page["changes"][0];
    assert_eq!(c0["origin"], a.instance());
    assert_eq!(
        (c0["source"].as_str(), c0["via"].is_null()),
        (Some("local"), true)
    );
    assert_eq!(c0["deleted"], false);

    // An acknowledged write, then kill -9 at once: the change is durable and in the feed.
    let last = api.send("POST", "/v1/tables/person/records", &json!({"i": 10}));
    assert_eq!(last.status, 201);
    written.push(last.json()["id"].as_str().unwrap().to_string());
    a.kill9();
    // While the agent is down the CLI writes (a delete of an already processed record).
    run(&dir, &["delete", "person", &written[0]]).ok();
    let (_a2, api2) = agent(&dir);
    let (rest, _) = drain(&api2, stored);
    let ids: Vec<String> = rest
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    processed.extend(ids.clone());
    let mut expect = written[4..].to_vec();
    expect.push(written[0].clone());
    assert_eq!(
        ids, expect,
        "everything after the stored position, once, in order"
    );
    assert!(rest.iter().all(|c| c["seq"].as_u64().unwrap() > stored));
    assert_eq!(rest.last().unwrap()["deleted"], true);

    // A clean restart: nothing new, nothing repeated.
    let resume = rest.last().unwrap()["seq"].as_u64().unwrap();
    drop(_a2);
    let (_a3, api3) = agent(&dir);
    assert_eq!(drain(&api3, resume).0, Vec::<Value>::new());

    // A position past the head (another laptop's, or a typo) is refused, not answered with
    // "nothing yet" and `last_seq` = that position, which would skip the changes up to it.
    let ahead = resume + 1_000;
    for feed in ["normal", "longpoll"] {
        let r = api3.get(&format!(
            "/v1/changes?since={ahead}&feed={feed}&timeout_ms=100"
        ));
        assert_eq!(
            r.status,
            400,
            "{feed}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let e = r.json();
        assert_eq!(e["code"], "SINCE_AHEAD", "{e}");
        assert_eq!(e["field"], "since", "{e}");
        assert!(
            e["message"].as_str().unwrap().contains("since=0"),
            "the next step: {e}"
        );
    }
    let next = api3.send("POST", "/v1/tables/person/records", &json!({"i": 11}));
    assert_eq!(next.status, 201);
    let tail = api3.get(&format!("/v1/changes?since={resume}")).json();
    assert_eq!(tail["changes"].as_array().unwrap().len(), 1, "{tail}");
}

#[test]
fn peer_changes_reach_the_feed_longpoll_and_sse_with_their_origin() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    // No notifies: once the agents know each other's addresses, A's agent would hand its edit
    // below to B before B makes its own, and the conflict this test makes would not happen.
    for dir in [&a_dir, &b_dir] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("fieldsync.toml"), "[sync]\nnotify = false\n").unwrap();
    }
    let (mut a, api) = agent(&a_dir);
    ensure_member(&b_dir);
    run(&b_dir, &["init", "--name", "bravo"]).ok();
    let b = Agent::start(&b_dir);
    let head = api.get("/v1/status").json()["feed_seq"].as_u64().unwrap();

    // A long poll and an event stream wait for the next change.
    let poll = {
        let api = api.clone();
        std::thread::spawn(move || {
            api.get(&format!(
                "/v1/changes?since={head}&feed=longpoll&timeout_ms=50000"
            ))
            .json()
        })
    };
    let mut sse = BufReader::new(api.open(
        "GET",
        &format!("/v1/changes?feed=sse&since={head}"),
        &[],
        b"",
    ));
    let (status, headers) = read_head(&mut sse);
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("content-type")
                && v.starts_with("text/event-stream"))
    );

    let id = uuid::Uuid::new_v4();
    put(&b_dir, "person", &id, &json!({"name": "from B"}));
    // Sync now, through the API, naming the peer by address.
    let s = api.send("POST", "/v1/sync", &json!({"peer": b.addr()}));
    assert_eq!(s.status, 200, "{}", s.json());
    assert_eq!(s.json()["received"]["applied"], 1);

    let got = poll.join().unwrap();
    let c = &got["changes"][0];
    assert_eq!(c["id"], id.to_string());
    assert_eq!(c["origin"], b.instance());
    assert_eq!(c["via"], b.instance());
    assert_eq!(c["source"], "peer");

    // The event stream delivers the same change (chunked lines: skip chunk sizes).
    let deadline = Instant::now() + REQ_TIMEOUT;
    let mut data = None;
    while data.is_none() && Instant::now() < deadline {
        let mut line = String::new();
        if sse.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if let Some(d) = line.trim_end().strip_prefix("data: ") {
            data = Some(serde_json::from_str::<Value>(d).unwrap());
        }
    }
    let data = data.expect("an SSE change event");
    assert_eq!(data["id"], id.to_string());
    assert_eq!(data["via"], b.instance());

    // Sync by the peer's name (known after the first session), through the API and the CLI.
    let s = api.send("POST", "/v1/sync", &json!({"peer": "bravo"}));
    assert_eq!(s.status, 200, "{}", s.json());
    let lines = run(&a_dir, &["sync", "bravo"]).ok().lines();
    assert_eq!(lines[0]["peer"], b.instance());
    let v = api.send("POST", "/v1/verify", &json!({"peer": b.instance()}));
    assert_eq!(v.status, 200, "{}", v.json());
    assert_eq!(v.json()["in_sync"], true);
    api.send("POST", "/v1/sync", &json!({"peer": "127.0.0.1:1"}))
        .error(502, "PEER_FAILED");
    api.send(
        "POST",
        "/v1/sync",
        &json!({"peer": uuid::Uuid::new_v4().to_string()}),
    )
    .error(404, "PEER_NOT_FOUND");

    // Concurrent edits of one field on A (through the API) and B make a conflict on A.
    let rec = rec_path("person", &id.to_string());
    assert_eq!(
        api.send("PATCH", &rec, &json!({"name": "A side"})).status,
        200
    );
    patch(&b_dir, "person", &id, &json!({"name": "B side"}));
    assert_eq!(
        api.send("POST", "/v1/sync", &json!({"peer": "bravo"}))
            .status,
        200
    );
    let list = api.get("/v1/conflicts?table=person").json();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(
        (list[0]["type"].as_str(), list[0]["field"].as_str()),
        (Some("field"), Some("name"))
    );
    let cid = list[0]["id"].as_u64().unwrap();
    let resolved = api.send(
        "POST",
        &format!("/v1/conflicts/{cid}/resolve"),
        &json!({"keep_value": "agreed"}),
    );
    assert_eq!(resolved.status, 200, "{}", resolved.json());
    assert!(resolved.json()["resolved"].is_object());
    assert_eq!(api.get("/v1/conflicts").json(), json!([]));
    assert_eq!(
        api.get("/v1/conflicts?all=true")
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(api.get(&rec).json()["fields"]["name"], "agreed");

    // `mesh revoke` takes the peer's name too.
    let ca = tmp.path().join("test-ca.fsca");
    let ca = ca.to_str().unwrap();
    let r = run(
        &a_dir,
        &["mesh", "revoke", "bravo", "--reason", "lost", "--ca", ca],
    );
    assert_eq!(r.ok().json()["revoked"], b.instance());
    let unknown = run(&a_dir, &["mesh", "revoke", "nobody", "--ca", ca]);
    assert_eq!(unknown.code, 1, "{unknown:?}");

    // An open event stream does not hold up a clean stop; api.json goes with the agent.
    a.stop();
    assert!(!a_dir.join("api.json").exists());
    drop(sse);
}

#[test]
fn the_cli_runs_typed_operations_in_the_agent_with_the_same_output_and_exit_codes() {
    let (_tmp, dir) = new_root();
    let id = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    // Output without an agent, then the same commands while the agent holds the database.
    let script = |dir: &Path| -> Vec<String> {
        let mut out = Vec::new();
        for args in [
            vec![
                "put",
                "person",
                "--id",
                id,
                r#"{"name":"A","address":{"city":"Jos"}}"#,
            ],
            vec!["patch", "person", id, r#"{"address":{"zip":"1"}}"#],
            vec!["get", "person", id],
            vec!["tables"],
            vec!["conflicts"],
            vec!["peers"],
            vec!["delete", "person", id],
            vec!["get", "person", id, "--include-deleted"],
        ] {
            out.push(run(dir, &args).ok().stdout.trim().to_string());
        }
        out.push(
            run(dir, &["history", "person", id])
                .ok()
                .lines()
                .len()
                .to_string(),
        );
        out
    };
    let plain = script(&dir);
    assert_eq!(
        plain[2],
        format!(
            r#"{{"fields":{{"address":{{"zip":"1"}},"name":"A"}},"id":"{id}","table":"person"}}"#
        )
    );
    let other = dir.with_file_name("b");
    let _a = Agent::start_with(&other, &["--api-listen", "127.0.0.1:0"]);
    let through_agent = script(&other);
    assert_eq!(plain, through_agent);
    // The lists are one JSON document each (not JSON lines), exactly what the API answers.
    let api = Api::of(&other);
    for (args, path) in [
        (vec!["tables"], "/v1/tables".to_string()),
        (vec!["conflicts", "--all"], "/v1/conflicts?all=true".into()),
        (vec!["peers"], "/v1/peers".into()),
        (
            vec!["history", "person", id],
            format!("{}/history", rec_path("person", id)),
        ),
    ] {
        let cli = run(&other, &args).ok().json();
        assert!(cli.is_array(), "{args:?}: {cli}");
        assert_eq!(cli, api.get(&path).json(), "{args:?}");
    }
    assert_eq!(run(&other, &["held", "list"]).ok().json(), json!([]));
    // Errors keep their exit codes and messages.
    let e = run(
        &other,
        &["get", "person", "0f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b"],
    );
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("not found"), "{}", e.stderr);
    assert_eq!(run(&other, &["put", "Bad!", "{}"]).code, 2);
    let e = run(&other, &["get", "person", id]);
    assert_eq!(e.code, 1);
    assert!(e.stderr.contains("is deleted"), "{}", e.stderr);
}

/// Runs Python code with the standard library and returns its stdout (bounded in time).
fn python(code: &str, args: &[&str]) -> String {
    let mut c = std::process::Command::new("python3");
    c.arg("-c").arg(code).args(args);
    let out = run_bounded(c);
    assert!(
        out.status.success(),
        "python3 failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn run_bounded(mut c: std::process::Command) -> std::process::Output {
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = c.spawn().expect("python3 is needed for this test");
    let deadline = Instant::now() + REQ_TIMEOUT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("command did not finish within {REQ_TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The mirror's rows of one table: uuid → (deleted, name).
fn mirrored(db: &Path) -> Value {
    // The mirror adds a column when a field first appears: one not there yet reads as null
    // (selecting it would fail while the mirror is between two batches).
    let code = "import sqlite3,json,sys\n\
        d=sqlite3.connect(sys.argv[1])\n\
        cols=[r[1] for r in d.execute('pragma table_info(person)')]\n\
        pick=', '.join(c if c in cols else 'null' for c in ['uuid','deleted','name','age'])\n\
        rows=d.execute('select '+pick+' from person').fetchall() if cols else []\n\
        print(json.dumps({u:[x,n,a] for u,x,n,a in rows}))";
    serde_json::from_str(python(code, &[db.to_str().unwrap()]).trim()).unwrap()
}

#[test]
fn mirror_to_sqlite_follows_the_feed_while_a_peer_syncs() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let (_a, api) = agent(&a_dir);
    let b = Agent::start(&b_dir);
    let recs = people(40);
    import(&b_dir, "person", &recs);
    delete(&b_dir, "person", &recs[0].0);
    let local = api.send(
        "POST",
        "/v1/tables/person/records",
        &json!({"name": "local", "age": 1}),
    );
    let local_id = local.json()["id"].as_str().unwrap().to_string();

    let db = tmp.path().join("mirror.sqlite");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/mirror_to_sqlite.py");
    let follower = std::process::Command::new("python3")
        .arg(&script)
        .args([
            "--data-dir",
            a_dir.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
        ])
        .args(["--timeout-ms", "2000", "--batch", "7"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the mirror");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let pid_guard = Kill(follower);
    // The peer's records arrive while the mirror follows the feed.
    let s = api.send("POST", "/v1/sync", &json!({"peer": b.addr()}));
    assert_eq!(s.status, 200, "{}", s.json());
    let mut last = Value::Null;
    wait_until("the mirror has every record", REQ_TIMEOUT, || {
        last = mirrored(&db);
        let done = last.as_object().is_some_and(|m| m.len() == 41);
        if !done {
            std::thread::sleep(Duration::from_millis(200));
        }
        done
    });
    assert_eq!(
        last[recs[0].0.to_string()][0],
        1,
        "the deleted record is marked deleted"
    );
    assert_eq!(last[recs[1].0.to_string()][0], 0);
    assert_eq!(last[recs[1].0.to_string()][1], recs[1].1["name"]);
    assert_eq!(last[&local_id], json!([0, "local", 1]));
    drop(pid_guard);

    // Changes while the mirror is stopped are picked up by the next run, from its position.
    api.send(
        "PATCH",
        &rec_path("person", &local_id),
        &json!({"age": null, "name": "renamed"}),
    );
    let mut once = std::process::Command::new("python3");
    once.arg(&script).args([
        "--data-dir",
        a_dir.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
        "--once",
    ]);
    let out = run_bounded(once);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("mirrored 1 changes"),
        "only the one new change: {stdout}"
    );
    assert_eq!(mirrored(&db)[&local_id], json!([0, "renamed", null]));
}

/// PUT without panicking: the status, or `None` once the agent is gone (the kill below).
fn try_put(api: &Api, path: &str, body: &Value) -> Option<u16> {
    let mut s = TcpStream::connect(&api.addr).ok()?;
    s.set_read_timeout(Some(REQ_TIMEOUT)).ok()?;
    let body = body.to_string();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n\
         Authorization: Bearer {}\r\n\r\n",
        api.addr,
        body.len(),
        api.token
    );
    s.write_all(head.as_bytes()).ok()?;
    s.write_all(body.as_bytes()).ok()?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    // The whole response, so the write counts as acknowledged only once the client has it.
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).ok()?;
    Some(status)
}

#[test]
fn eight_concurrent_writers_are_acknowledged_readable_and_survive_kill_9() {
    const WRITERS: usize = 8;
    const PER_WRITER: usize = 40;
    let (_tmp, dir) = new_root();
    let (mut a, api) = agent(&dir);
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<(String, usize, usize)>::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (api, acked, stop) = (api.clone(), acked.clone(), stop.clone());
            std::thread::spawn(move || {
                for n in 0..PER_WRITER {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) {
                        return;
                    }
                    let id = uuid::Uuid::new_v4().to_string();
                    match try_put(&api, &rec_path("person", &id), &json!({"w": w, "n": n})) {
                        Some(s) if s == 200 || s == 201 => {
                            acked.lock().unwrap().push((id, w, n));
                        }
                        Some(s) => panic!("writer {w}: write {n} answered {s}"),
                        // The agent was killed: writes from here on may or may not be in.
                        None => return,
                    }
                }
            })
        })
        .collect();

    // Every writer's first writes are acknowledged and readable while the others write.
    wait_until("24 acknowledged writes", Duration::from_secs(60), || {
        acked.lock().unwrap().len() >= 24
    });
    let first: Vec<(String, usize, usize)> = acked.lock().unwrap()[..8].to_vec();
    for (id, w, n) in &first {
        let r = api.get(&rec_path("person", id));
        assert_eq!(r.status, 200, "acknowledged write {id} readable");
        assert_eq!(r.json()["fields"], json!({"w": w, "n": n}), "{}", r.json());
    }
    // kill -9 while the writers are still writing: what was acknowledged must be on disk.
    wait_until(
        "half of the writes acknowledged",
        Duration::from_secs(60),
        || acked.lock().unwrap().len() >= WRITERS * PER_WRITER / 2,
    );
    a.kill9();
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for t in writers {
        t.join().expect("a writer panicked");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() >= WRITERS * PER_WRITER / 2);
    for w in 0..WRITERS {
        assert!(
            acked.iter().any(|(_, aw, _)| *aw == w),
            "writer {w} was never acknowledged"
        );
    }

    // Reopened: every acknowledged write is there with its value (writes in flight at the
    // kill may be there too, never half).
    let stored: std::collections::HashMap<String, Value> = export(&dir, "person")
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (v["id"].as_str().unwrap().to_string(), v["fields"].clone())
        })
        .collect();
    for (id, w, n) in &acked {
        assert_eq!(
            stored.get(id),
            Some(&json!({"w": w, "n": n})),
            "acknowledged write {id} (writer {w}, #{n}) lost by kill -9"
        );
    }
    assert!(stored.len() <= WRITERS * PER_WRITER);
}

/// An application keeps its token: after a clean stop (api.json goes) and a restart, the token it
/// read before is still the one the agent accepts; it is also in api.token (0600) meanwhile.
#[test]
fn the_token_an_app_read_survives_a_clean_stop_and_restart() {
    let (_tmp, dir) = new_root();
    let (mut a, before) = agent(&dir);
    assert_eq!(before.get("/v1/status").status, 200);
    a.stop();
    assert!(!dir.join("api.json").exists());
    use std::os::unix::fs::PermissionsExt;
    let kept = std::fs::read_to_string(dir.join("api.token")).expect("api.token kept");
    assert_eq!(kept.trim(), before.token);
    let mode = std::fs::metadata(dir.join("api.token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let (_a, after) = agent(&dir);
    assert_eq!(after.token, before.token, "the same token after a restart");
    let old = Api {
        addr: after.addr.clone(),
        token: before.token.clone(),
    };
    assert_eq!(old.get("/v1/status").status, 200);
}

/// An application is told in the API's words: request fields, not CLI flags; the bare revision
/// number in If-Match is the revision it names (not a contradiction); fieldsync's own tables
/// (`fs_revocations`) are not in `tables` or the feed, but still readable by name.
#[test]
fn errors_speak_the_apis_words_and_fieldsyncs_own_tables_stay_out_of_sight() {
    let (tmp, dir) = new_root();
    let (_a, api) = agent(&dir);
    let id = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    let etag = api
        .send("PUT", &rec_path("person", id), &json!({"n": 1}))
        .header("etag")
        .unwrap()
        .to_string();
    let bare = etag.trim_matches('"').to_string();
    assert_ne!(bare, etag, "the ETag is quoted");
    let r = api.req(
        "PUT",
        &rec_path("person", id),
        &[("If-Match", &bare)],
        b"{\"n\":2}",
    );
    assert_eq!(r.status, 200, "the bare revision is the current one: {r:?}");
    let e = api
        .req(
            "PUT",
            &rec_path("person", id),
            &[("If-Match", &bare)],
            b"{\"n\":3}",
        )
        .error(412, "REVISION_MISMATCH");
    let m = e["message"].as_str().unwrap();
    assert!(m.contains(&format!("changed since revision {bare}")), "{m}");

    // A time whose `+` the URL made a space is said to be one, not a missing revision.
    let e = api
        .get(&format!(
            "{}?at=2026-11-24T14:00:00%2000:00",
            rec_path("person", id)
        ))
        .error(400, "UNKNOWN_REVISION");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("is not an RFC 3339 time") && m.contains("%2B"),
        "{m}"
    );
    let e = api
        .send("POST", "/v1/conflicts/7/resolve", &json!({"keep": "maybe"}))
        .error(400, "INVALID_KEEP");
    let m = e["message"].as_str().unwrap();
    assert!(!m.contains("--"), "no CLI flags in the API: {m}");
    // The brake's refusal, written once for every door, says the request field here.
    let ids: Vec<String> = (0..100)
        .map(|i| format!("00000000-0000-4000-8000-{i:012}"))
        .collect();
    let puts: Vec<Value> = ids
        .iter()
        .map(|i| json!({"op": "put", "table": "case", "id": i, "fields": {"n": 1}}))
        .collect();
    assert_eq!(
        api.send("POST", "/v1/batch", &json!({"ops": puts})).status,
        200
    );
    let deletes: Vec<Value> = ids[..60]
        .iter()
        .map(|i| json!({"op": "delete", "table": "case", "id": i}))
        .collect();
    let e = api
        .send("POST", "/v1/batch", &json!({"ops": deletes}))
        .error(409, "MASS_DELETE");
    let m = e["message"].as_str().unwrap();
    assert!(
        !m.contains("--") && m.contains("send it again with \"confirm_mass_delete\": true"),
        "{m}"
    );

    // A revocation (made through the CLI, which hands it to the agent) is fieldsync's own.
    let ca = tmp.path().join("test-ca.fsca");
    let gone = "0a1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d";
    run(
        &dir,
        &["mesh", "revoke", gone, "--ca", ca.to_str().unwrap()],
    )
    .ok();
    let tables = api.get("/v1/tables").json();
    assert_eq!(
        tables,
        json!([{"table": "case", "live": 100, "deleted": 0},
               {"table": "person", "live": 1, "deleted": 0}]),
        "{tables}"
    );
    let page = api.get("/v1/changes?since=0").json();
    let shown: std::collections::BTreeSet<&str> = page["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["table"].as_str().unwrap())
        .collect();
    assert_eq!(shown, ["case", "person"].into(), "{page}");
    let head = api.get("/v1/status").json()["feed_seq"].as_u64().unwrap();
    assert_eq!(
        page["last_seq"], head,
        "the page ends past the hidden change"
    );
    // Past the last change, the next page is empty at once (no change is skipped for good).
    let next = api.get(&format!("/v1/changes?since={head}")).json();
    assert_eq!(next["changes"], json!([]));
    // Asked for, they are there.
    let all = api.get("/v1/tables?system=true").json();
    assert!(
        all.as_array()
            .unwrap()
            .iter()
            .any(|t| t["table"] == "fs_revocations"),
        "{all}"
    );
    let page = api.get("/v1/changes?since=0&system=true").json();
    assert_eq!(
        page["changes"].as_array().unwrap().last().unwrap()["table"],
        "fs_revocations"
    );
    let asked = run(&dir, &["list", "fs_revocations"]).ok().lines();
    assert_eq!(asked.len(), 1, "readable by name");
    assert_eq!(asked[0]["id"], gone);
}

/// Apps writing on two laptops while their agents sync (trial 9, finding 1): every write
/// travels and both laptops end with the same records; none is quarantined as "altered or made
/// up". A record written while a page was read from the feed used to appear twice in that
/// page (its feed entry moved ahead of the reader), so its writes were counted twice against
/// their signed commit and the receiver dropped the record as forged; the laptops stayed
/// different until the next anti-entropy round, up to 12 minutes later.
#[test]
fn apps_writing_on_two_laptops_while_they_sync_converge_with_nothing_quarantined() {
    let tmp = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (data_dir(tmp.path(), "a"), data_dir(tmp.path(), "b"));
    let (a, api_a) = agent(&a_dir);
    let b = Agent::start_with(&b_dir, &["--api-listen", "127.0.0.1:0", "--peer", a.addr()]);
    let api_b = Api::of(&b_dir);
    let ids: Vec<String> = (0..40)
        .map(|i| {
            let r = api_a.send("POST", "/v1/tables/person/records", &json!({"n": i}));
            assert_eq!(r.status, 201, "{}", r.json());
            r.json()["id"].as_str().unwrap().to_string()
        })
        .collect();
    let same = || digest(&a_dir) == digest(&b_dir);
    wait_until("B has A's records", Duration::from_secs(60), same);

    // Two apps per laptop patch records as fast as they are answered, for about 3 s.
    let writers: Vec<_> = [(&api_a, "a"), (&api_a, "a2"), (&api_b, "b"), (&api_b, "b2")]
        .into_iter()
        .map(|(api, who)| {
            let (api, ids, who) = (api.clone(), ids.clone(), who.to_string());
            std::thread::spawn(move || {
                let start = Instant::now();
                for n in 0..3_000usize {
                    if start.elapsed() > Duration::from_secs(3) {
                        break;
                    }
                    let id = &ids[(n * 7 + who.len() * 13) % ids.len()];
                    let body = json!({"n": n, format!("by_{who}"): n});
                    let r = api.send("PATCH", &rec_path("person", id), &body);
                    assert_eq!(r.status, 200, "{who}: {}", r.json());
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    wait_until(
        "both laptops hold the same records after the writes",
        Duration::from_secs(120),
        same,
    );
    for (name, agent) in [("A", &a), ("B", &b)] {
        let log = agent.log_text();
        assert!(
            !log.contains("quarantined"),
            "{name} quarantined an honest write:\n{log}"
        );
        // Nor was a page refused for a revision newer than the state it carried (a write
        // between reading a record and reading its history: trial 9b).
        assert!(
            !log.contains("invalid history"),
            "{name} refused a page as invalid history:\n{log}"
        );
    }
}

/// A developer's mistakes against the API (trial 9, findings 8–11) are answered with the
/// documented code, the field at fault and the next step, in words rather than serde's.
#[test]
fn mistakes_get_the_documented_code_the_field_and_the_next_step() {
    let (_tmp, dir) = new_root();
    std::fs::write(dir.join("fieldsync.toml"), "unique = [\"person.case\"]\n").unwrap();
    let (_a, api) = agent(&dir);
    let msg = |e: &Value| e["message"].as_str().unwrap().to_string();
    let no_serde = |m: &str| {
        for rust in [
            "invalid type",
            "expected a sequence",
            "missing field",
            "unknown field `",
        ] {
            assert!(!m.contains(rust), "serde's words: {m}");
        }
    };

    let holder = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    let r = api.send("PUT", &rec_path("person", holder), &json!({"case": "C1"}));
    assert_eq!(r.status, 200);
    let etag = r.header("etag").unwrap().to_string();

    // Bodies that are JSON of the wrong shape: INVALID_BODY / UNKNOWN_FIELD, naming the field.
    let r = api.send("POST", "/v1/batch", &json!({"ops": {"op": "put"}}));
    let e = r.error(400, "INVALID_BODY");
    assert_eq!(e["field"], "ops");
    assert!(
        msg(&e).contains("\"ops\" must be a list of operations like [{\"op\": \"put\""),
        "{e}"
    );
    no_serde(&msg(&e));
    let r = api.send("POST", "/v1/batch", &json!({"ops": [], "confirm": true}));
    let e = r.error(400, "UNKNOWN_FIELD");
    assert_eq!(e["field"], "confirm");
    assert!(msg(&e).contains("confirm_mass_delete"), "{e}");
    let r = api.send(
        "POST",
        "/v1/batch",
        &json!({"ops": [{"op": "put", "fields": {}}]}),
    );
    let e = r.error(400, "INVALID_BODY");
    assert_eq!(e["field"], "ops[0].table");
    assert!(
        msg(&e).contains("operation 1 (ops[0]): \"table\" is missing"),
        "{e}"
    );
    let r = api.send("POST", "/v1/sync", &json!({}));
    let e = r.error(400, "INVALID_BODY");
    assert_eq!(e["field"], "peer");
    assert!(
        msg(&e).contains("\"peer\" is missing: give a peer's name"),
        "{e}"
    );
    no_serde(&msg(&e));
    let r = api.send("POST", "/v1/verify", &json!({"peer": "x", "deep": true}));
    assert_eq!(r.error(400, "UNKNOWN_FIELD")["field"], "deep");
    let r = api.send("POST", "/v1/verify", &json!({"peer": 7}));
    assert!(msg(&r.error(400, "INVALID_BODY")).contains("not a number"));

    // Nesting: 127 levels are stored, 128 are refused saying so, with the limit.
    let nested = |depth: usize| {
        format!(
            "{{\"a\":{}1{}}}",
            "[".repeat(depth - 1),
            "]".repeat(depth - 1)
        )
    };
    let deep = "0e1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    let r = api.req("PUT", &rec_path("deep", deep), &[], nested(127).as_bytes());
    assert_eq!(r.status, 200, "{}", r.json());
    for depth in [128, 5000] {
        let r = api.req(
            "PUT",
            &rec_path("deep", deep),
            &[],
            nested(depth).as_bytes(),
        );
        let e = r.error(400, "MALFORMED_JSON");
        assert!(
            msg(&e).contains("nested too deeply (at most 127 levels"),
            "{e}"
        );
    }
    let r = api.req("POST", "/v1/batch", &[], nested(5000).as_bytes());
    let e = r.error(400, "MALFORMED_JSON");
    assert_eq!(e["field"], "body");
    assert!(msg(&e).contains("nested too deeply"), "{e}");
    // Bytes that are not UTF-8 are said to be so (not "an invalid \u escape").
    let r = api.req(
        "PUT",
        &rec_path("person", holder),
        &[],
        b"{\"case\":\"C\xff1\"}",
    );
    let e = r.error(400, "MALFORMED_JSON");
    assert!(msg(&e).contains("not UTF-8 (byte 11 "), "{e}");

    // A malformed If-Match is the caller's mistake (400), not a changed record (412).
    let r = api.req(
        "PUT",
        &rec_path("person", holder),
        &[("If-Match", "garbage")],
        b"{}",
    );
    let e = r.error(400, "BAD_HEADER");
    assert_eq!(e["field"], "if-match");
    assert!(
        msg(&e).contains("send the ETag header a read or write of it returned"),
        "{e}"
    );
    for (method, body) in [("PATCH", &b"{\"x\":1}"[..]), ("DELETE", b"")] {
        let r = api.req(
            method,
            &rec_path("person", holder),
            &[("If-Match", "\"12\", v3")],
            body,
        );
        r.error(400, "BAD_HEADER");
    }
    let weak = format!("W/{etag}");
    let r = api.req(
        "PATCH",
        &rec_path("person", holder),
        &[("If-Match", &weak)],
        b"{\"x\":1}",
    );
    assert_eq!(
        r.status, 200,
        "a weak ETag of the current revision matches: {r:?}"
    );

    // NOT_FOUND and UNIQUE_CLASH give the next step, in the API's words.
    let absent = "0f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    let r = api.send("PATCH", &rec_path("person", absent), &json!({"a": 1}));
    let e = r.error(404, "NOT_FOUND");
    assert!(
        msg(&e).contains("(GET /v1/tables/person/records lists them)"),
        "{e}"
    );
    let r = api.send("POST", "/v1/tables/person/records", &json!({"case": "C1"}));
    let e = r.error(409, "UNIQUE_CLASH");
    assert!(
        msg(&e).ends_with(&format!(
            "give another value, or change that record's case first (GET \
             /v1/tables/person/records/{holder} shows it)"
        )),
        "{e}"
    );
    let other = api.send("POST", "/v1/tables/person/records", &json!({"case": "C2"}));
    let other = other.json()["id"].as_str().unwrap().to_string();
    let r = api.send("PATCH", &rec_path("person", &other), &json!({"case": "C1"}));
    r.error(409, "UNIQUE_CLASH");

    // A batch op on a missing record names the op.
    let r = api.send(
        "POST",
        "/v1/batch",
        &json!({"ops": [
            {"op": "put", "table": "person", "fields": {"case": "C9"}},
            {"op": "patch", "table": "person", "id": absent, "fields": {"n": 1}}]}),
    );
    let e = r.error(404, "NOT_FOUND");
    assert_eq!(e["field"], "ops[1].id", "{e}");
    assert!(
        msg(&e).starts_with("operation 2 (ops[1]): record person/"),
        "{e}"
    );

    // A write to a deleted record says how it comes back, and PUT brings it back.
    let r = api.req("DELETE", &rec_path("person", &other), &[], b"");
    assert_eq!(r.status, 200);
    let r = api.send("PATCH", &rec_path("person", &other), &json!({"n": 1}));
    let e = r.error(404, "RECORD_DELETED");
    let m = msg(&e);
    assert!(
        m.contains("is deleted, so a patch cannot change it; to bring it back, PUT it again with all its fields (GET it with ?include_deleted=true for its last ones)"),
        "{m}"
    );
    assert!(!m.contains("to see it"), "{m}");
    let r = api.req("DELETE", &rec_path("person", &other), &[], b"");
    let e = r.error(404, "RECORD_DELETED");
    assert!(
        msg(&e).contains("is already deleted: deleting it again changes nothing"),
        "{e}"
    );
    let r = api.send(
        "POST",
        "/v1/batch",
        &json!({"ops": [{"op": "delete", "table": "person", "id": other}]}),
    );
    assert_eq!(r.error(404, "RECORD_DELETED")["field"], "ops[0].id");
    let r = api.send(
        "PUT",
        &rec_path("person", &other),
        &json!({"case": "C2", "n": 1}),
    );
    assert_eq!(r.status, 200, "PUT brings it back: {}", r.json());
    assert_eq!(
        api.get(&rec_path("person", &other)).json()["fields"]["n"],
        1
    );

    // Listing: a table that never had a record is an empty 200 with a warning header; a
    // stray parameter is answered with the filters' form.
    let r = api.get("/v1/tables/nosuchtable/records");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"records": [], "next": null}));
    let w = r
        .header("x-fieldsync-warning")
        .expect("a warning for an unknown table");
    assert!(
        w.contains("table nosuchtable") && w.contains("GET /v1/tables"),
        "{w}"
    );
    for known in [
        "/v1/tables/person/records",
        "/v1/tables/person/records?field.case=none",
    ] {
        let r = api.get(known);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-fieldsync-warning"), None, "{known}");
    }
    let r = api.get("/v1/tables/person/records?fields.status=missing");
    let e = r.error(400, "UNKNOWN_PARAMETER");
    assert!(
        msg(&e).contains("or field.status=VALUE to keep only records"),
        "{e}"
    );
    let r = api.get("/v1/conflicts?bogus=1");
    r.error(400, "UNKNOWN_PARAMETER");
}

/// A body over 16 MiB sent without waiting for `100 Continue` (trial 9, finding 8: Python's
/// urllib got a broken pipe, as the agent closed the connection under the upload) is read,
/// dropped and answered `413 BODY_TOO_LARGE`; nothing is written.
#[test]
fn a_body_over_16_mib_is_answered_413_also_to_clients_that_do_not_wait_for_100_continue() {
    let (_tmp, dir) = new_root();
    let (_a, api) = agent(&dir);
    let id = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    assert_eq!(
        api.send("PUT", &rec_path("person", id), &json!({"n": 1}))
            .status,
        200
    );
    let head = api.get("/v1/status").json()["feed_seq"].clone();
    let big = vec![b' '; 17 << 20];
    api.req("PATCH", &rec_path("person", id), &[], &big)
        .error(413, "BODY_TOO_LARGE");
    let out = python(
        "import sys, urllib.request, urllib.error\n\
         req = urllib.request.Request(sys.argv[1] + '/v1/batch', data=b' ' * (17 << 20), \
           method='POST', headers={'Authorization': 'Bearer ' + sys.argv[2]})\n\
         try:\n    urllib.request.urlopen(req)\n\
         except urllib.error.HTTPError as e:\n    print(e.code, e.read().decode())\n",
        &[&format!("http://{}", api.addr), &api.token],
    );
    assert!(
        out.starts_with("413 ") && out.contains("BODY_TOO_LARGE"),
        "{out}"
    );
    assert_eq!(
        api.get("/v1/status").json()["feed_seq"],
        head,
        "nothing written"
    );
}

/// The statuses the OpenAPI document lists for `method` on the path template `path`.
fn documented(doc: &Value, method: &str, path: &str) -> Vec<u16> {
    let op = &doc["paths"][path][method];
    assert!(op.is_object(), "{method} {path} is in the OpenAPI document");
    op["responses"]
        .as_object()
        .unwrap()
        .keys()
        .filter_map(|k| k.parse().ok())
        .collect()
}

/// The OpenAPI document says what the server does (trial 9, finding 11): every status the
/// record, batch, conflicts, sync and verify endpoints answer below is listed for that
/// endpoint (401 on every one, PATCH's 409 and 413, the 400s of conflicts and verify, a batch
/// op's 404), `next` is documented as null on the last page, and the list filters are not
/// declared as one parameter literally named `field.NAME`.
#[test]
fn the_openapi_document_lists_every_status_the_server_answers() {
    let (_tmp, dir) = new_root();
    std::fs::write(dir.join("fieldsync.toml"), "unique = [\"person.case\"]\n").unwrap();
    let (_a, api) = agent(&dir);
    let doc = api.get("/v1/openapi.json").json();
    let rec = "/v1/tables/{table}/records/{id}";
    let list = "/v1/tables/{table}/records";
    let holder = "6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    let absent = "0f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b";
    assert_eq!(
        api.send("PUT", &rec_path("person", holder), &json!({"case": "C1"}))
            .status,
        200
    );
    let other = api.send("POST", "/v1/tables/person/records", &json!({"case": "C2"}));
    let other = other.json()["id"].as_str().unwrap().to_string();
    let gone = api.send("POST", "/v1/tables/person/records", &json!({"case": "C3"}));
    let gone = gone.json()["id"].as_str().unwrap().to_string();
    assert_eq!(
        api.req("DELETE", &rec_path("person", &gone), &[], b"")
            .status,
        200
    );
    let bad = [("Authorization", "Bearer nope")];
    let big = format!("{}", 17 << 20);
    let over = [("Content-Length", big.as_str()), ("Expect", "100-continue")];
    let h = |p: &str| format!("{p}/history");
    // (method, path template, path, headers, body, status)
    type Case<'a> = (
        &'a str,
        &'a str,
        String,
        &'a [(&'a str, &'a str)],
        String,
        u16,
    );
    let cases: Vec<Case> = vec![
        (
            "GET",
            list,
            "/v1/tables/person/records".into(),
            &[],
            String::new(),
            200,
        ),
        (
            "GET",
            list,
            "/v1/tables/person/records?bogus=1".into(),
            &[],
            String::new(),
            400,
        ),
        (
            "GET",
            list,
            "/v1/tables/person/records".into(),
            &bad,
            String::new(),
            401,
        ),
        (
            "POST",
            list,
            "/v1/tables/person/records".into(),
            &[],
            r#"{"case":"C1"}"#.into(),
            409,
        ),
        (
            "POST",
            list,
            "/v1/tables/person/records".into(),
            &bad,
            "{}".into(),
            401,
        ),
        (
            "GET",
            rec,
            rec_path("person", absent),
            &[],
            String::new(),
            404,
        ),
        (
            "GET",
            rec,
            rec_path("Bad!", holder),
            &[],
            String::new(),
            400,
        ),
        (
            "GET",
            rec,
            format!("{}?at=nope", rec_path("person", holder)),
            &[],
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/tables/{table}/records/{id}/history",
            h(&rec_path("Bad!", holder)),
            &[],
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/tables",
            "/v1/tables?system=x".into(),
            &[],
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/sessions",
            "/v1/sessions?feed=x".into(),
            &[],
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/sessions",
            "/v1/sessions".into(),
            &bad,
            String::new(),
            401,
        ),
        (
            "GET",
            "/v1/peers",
            "/v1/peers".into(),
            &bad,
            String::new(),
            401,
        ),
        (
            "GET",
            rec,
            rec_path("person", holder),
            &bad,
            String::new(),
            401,
        ),
        (
            "PUT",
            rec,
            rec_path("person", holder),
            &[("If-Match", "x")],
            "{}".into(),
            400,
        ),
        (
            "PUT",
            rec,
            rec_path("person", holder),
            &bad,
            "{}".into(),
            401,
        ),
        (
            "PUT",
            rec,
            rec_path("person", holder),
            &[("If-Match", "\"999999\"")],
            "{}".into(),
            412,
        ),
        (
            "PATCH",
            rec,
            rec_path("person", &other),
            &[],
            r#"{"case":"C1"}"#.into(),
            409,
        ),
        (
            "PATCH",
            rec,
            rec_path("person", absent),
            &[],
            "{}".into(),
            404,
        ),
        (
            "PATCH",
            rec,
            rec_path("person", &gone),
            &[],
            "{}".into(),
            404,
        ),
        (
            "PATCH",
            rec,
            rec_path("person", holder),
            &bad,
            "{}".into(),
            401,
        ),
        (
            "PATCH",
            rec,
            rec_path("person", holder),
            &[("If-Match", "\"999999\"")],
            "{}".into(),
            412,
        ),
        (
            "DELETE",
            rec,
            rec_path("person", &gone),
            &[],
            String::new(),
            404,
        ),
        (
            "DELETE",
            rec,
            rec_path("person", holder),
            &[("If-Match", "x")],
            String::new(),
            400,
        ),
        (
            "DELETE",
            rec,
            rec_path("person", holder),
            &bad,
            String::new(),
            401,
        ),
        (
            "GET",
            "/v1/tables/{table}/records/{id}/history",
            h(&rec_path("person", absent)),
            &[],
            String::new(),
            404,
        ),
        (
            "GET",
            "/v1/tables/{table}/records/{id}/history",
            h(&rec_path("person", holder)),
            &bad,
            String::new(),
            401,
        ),
        (
            "POST",
            "/v1/batch",
            "/v1/batch".into(),
            &[],
            r#"{"ops":{}}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/batch",
            "/v1/batch".into(),
            &[],
            format!(r#"{{"ops":[{{"op":"delete","table":"person","id":"{absent}"}}]}}"#),
            404,
        ),
        (
            "POST",
            "/v1/batch",
            "/v1/batch".into(),
            &[],
            r#"{"ops":[{"op":"put","table":"person","fields":{"case":"C1"}}]}"#.into(),
            409,
        ),
        (
            "POST",
            "/v1/batch",
            "/v1/batch".into(),
            &bad,
            "{}".into(),
            401,
        ),
        (
            "GET",
            "/v1/conflicts",
            "/v1/conflicts?bogus=1".into(),
            &[],
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/conflicts",
            "/v1/conflicts?all=maybe".into(),
            &[],
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/conflicts",
            "/v1/conflicts".into(),
            &bad,
            String::new(),
            401,
        ),
        (
            "POST",
            "/v1/verify",
            "/v1/verify".into(),
            &[],
            r#"{"peer":"x","y":1}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/verify",
            "/v1/verify".into(),
            &bad,
            "{}".into(),
            401,
        ),
        ("POST", "/v1/sync", "/v1/sync".into(), &[], "{}".into(), 400),
    ];
    let e = api
        .get(&rec_path("person", "C-404"))
        .error(404, "NOT_FOUND");
    assert_eq!(
        e["field"], "id",
        "a key that names no record is the id at fault: {e}"
    );
    for (method, template, path, headers, body, status) in cases {
        let r = api.req(method, &path, headers, body.as_bytes());
        assert_eq!(
            r.status,
            status,
            "{method} {path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        let listed = documented(&doc, &method.to_lowercase(), template);
        assert!(
            listed.contains(&status),
            "{method} {path} answered {status} but the OpenAPI document lists {listed:?}"
        );
    }
    // 413 before the body is read (Content-Length over the limit), on each writing endpoint.
    for (method, path, template) in [
        ("POST", "/v1/tables/person/records".to_string(), list),
        ("PUT", rec_path("person", holder), rec),
        ("PATCH", rec_path("person", holder), rec),
        ("POST", "/v1/batch".to_string(), "/v1/batch"),
        ("POST", "/v1/verify".to_string(), "/v1/verify"),
    ] {
        let mut s = TcpStream::connect(&api.addr).unwrap();
        s.set_read_timeout(Some(REQ_TIMEOUT)).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n",
            api.token
        );
        for (k, v) in over {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("Connection: close\r\n\r\n");
        s.write_all(head.as_bytes()).unwrap();
        read_response(s).error(413, "BODY_TOO_LARGE");
        let listed = documented(&doc, &method.to_lowercase(), template);
        assert!(
            listed.contains(&413),
            "{method} {template} lists 413: {listed:?}"
        );
    }

    let next = doc["components"]["schemas"]["ListPage"]["properties"]["next"].to_string();
    assert!(next.contains("`null` on the last page"), "{next}");
    let params = doc["paths"][list]["get"]["parameters"].to_string();
    assert!(!params.contains("field.NAME"), "{params}");
    let text = doc["paths"][list]["get"]["description"].to_string();
    assert!(
        text.contains("field.NAME=VALUE"),
        "the filters are described: {text}"
    );
}

/// Import keys over the API, as `fieldsync import-keys`: listed, and one made by mistake
/// dropped (404 naming the table's keys when it is not one), after which the table takes a
/// second record with that value.
#[test]
fn import_keys_are_listed_and_a_mistaken_one_dropped() {
    let (tmp, dir) = new_root();
    let (_a, api) = agent(&dir);
    let list = tmp.path().join("people.csv");
    std::fs::write(&list, "case_number,name\nC-1,Ann Lee\n").unwrap();
    run(
        &dir,
        &["import", "person", list.to_str().unwrap(), "--key", "name"],
    )
    .ok();
    assert_eq!(
        api.get("/v1/import-keys").json(),
        json!([{"table": "person", "key": ["name"]}])
    );
    let twin = json!({"case_number": "C-2", "name": "Ann Lee"});
    assert_eq!(
        api.send("POST", "/v1/tables/person/records", &twin).status,
        409,
        "refused while name is a key"
    );
    let e = api
        .req("DELETE", "/v1/import-keys/person/case_number", &[], b"")
        .error(404, "NOT_FOUND");
    assert!(
        e["message"]
            .as_str()
            .unwrap_or_default()
            .contains("case_number is not an import key of person: its import keys are name"),
        "{e}"
    );
    let r = api.req("DELETE", "/v1/import-keys/person/name", &[], b"");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.json(),
        json!({"table": "person", "key": ["name"], "dropped": true})
    );
    assert_eq!(api.get("/v1/import-keys").json(), json!([]));
    assert_eq!(
        api.send("POST", "/v1/tables/person/records", &twin).status,
        201
    );
}
