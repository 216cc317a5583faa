//! The routes: decode, call [`crate::app`] on a blocking thread, encode. See docs/API.md.

use super::{same_token, ApiError, ApiState, ErrorBody, BODY_LIMIT};
use crate::app::changes::{Change, ChangesPage};
use crate::app::conflicts::ResolveRequest;
use crate::app::records::{
    etag, history_json, parse_json, parse_json_with, BatchOp, BatchOutcome, ListPage, PatchMode,
    Precondition, RecordView, TableInfo, WriteOutcome,
};
use crate::app::{App, AppError};
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use utoipa::OpenApi;

type St = State<Arc<ApiState>>;
type Body = Result<Bytes, BytesRejection>;
type Q = Result<Query<Vec<(String, String)>>, QueryRejection>;

/// The OpenAPI 3 document of the API, generated from the handlers and types.
#[derive(OpenApi)]
#[openapi(
    info(title = "fieldsync local API", version = "1", description = "Records, conflicts, sync and the changes feed of one fieldsync agent, for applications on the same machine. Every request needs `Authorization: Bearer TOKEN` (the token is in api.json in the data directory)."),
    paths(
        openapi, status, peers, sync_now, verify, tables, create, list, get_record, put_record,
        patch_record, delete_record, history, batch, conflicts, resolve, changes, console_link,
        overview, sessions, warnings, import_keys, drop_import_key
    ),
    components(schemas(
        ErrorBody, RecordView, WriteOutcome, ListPage, TableInfo, BatchOp, BatchOutcome, Change,
        ChangesPage, PeerRef, BatchRequest, ResolveRequest
    )),
    modifiers(&Bearer)
)]
pub struct ApiDoc;

struct Bearer;

impl utoipa::Modify for Bearer {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{
            HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
        };
        let c = doc.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        doc.security = Some(vec![SecurityRequirement::new(
            "bearer",
            Vec::<String>::new(),
        )]);
        // Every route sits behind the token check, and every body behind the size check (it
        // runs on the declared Content-Length before any handler): said once here rather than
        // on each path, so no operation can leave them out.
        let error = |description: &str| {
            use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for item in doc.paths.paths.values_mut() {
            for op in [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.patch,
                &mut item.delete,
            ]
            .into_iter()
            .flatten()
            {
                let r = &mut op.responses.responses;
                r.entry("401".into())
                    .or_insert_with(|| error("`UNAUTHORIZED`: no or a wrong bearer token").into());
                if op.request_body.is_some() {
                    r.entry("413".into()).or_insert_with(|| {
                        error("`BODY_TOO_LARGE`: the body is over 16 MiB").into()
                    });
                }
            }
        }
    }
}

pub(super) fn router(state: Arc<ApiState>) -> Router {
    let rec = "/v1/tables/{table}/records/{id}";
    Router::new()
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/status", get(status))
        .route("/v1/peers", get(peers))
        .route("/v1/sync", post(sync_now))
        .route("/v1/verify", post(verify))
        .route("/v1/tables", get(tables))
        .route("/v1/tables/{table}/records", post(create).get(list))
        .route(
            rec,
            get(get_record)
                .put(put_record)
                .patch(patch_record)
                .delete(delete_record),
        )
        .route(&format!("{rec}/history"), get(history))
        .route("/v1/batch", post(batch))
        .route("/v1/conflicts", get(conflicts))
        .route("/v1/conflicts/{id}/resolve", post(resolve))
        .route("/v1/changes", get(changes))
        .route("/v1/console/link", post(console_link))
        .route("/v1/overview", get(overview))
        .route("/v1/sessions", get(sessions))
        .route("/v1/warnings", get(warnings))
        .route("/v1/import-keys", get(import_keys))
        .route("/v1/import-keys/{table}/{key}", delete(drop_import_key))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .with_state(state.clone())
        .merge(super::console::router(state))
}

async fn auth(State(st): St, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 9110).
        .and_then(|v| {
            v.get(..7)
                .filter(|s| s.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        });
    // The console's session cookie stands for the token; a write with it must also carry a
    // header that a cross-site form cannot set.
    let session = given.is_none() && st.logins.session_of(req.headers());
    let console = session
        && (req.method() == axum::http::Method::GET
            || req.headers().contains_key(super::console::WRITE_HEADER));
    match given {
        _ if console => next.run(req).await,
        // A console session writing without the header: say which header, not "no token".
        None if session => ApiError::new(
            StatusCode::FORBIDDEN,
            "CONSOLE_HEADER_MISSING",
            None,
            "a write with the console's session cookie must also send `X-Fieldsync-Console: 1` \
             (or use `Authorization: Bearer TOKEN` from api.json)",
        )
        .into_response(),
        Some(t) if same_token(t.trim().as_bytes(), st.token.as_bytes()) => {
            // Refused before the body is read: a client that sent `Expect: 100-continue`
            // (curl does for large bodies) gets the answer without uploading anything.
            let declared = req
                .headers()
                .get(header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(n) = declared.filter(|n| *n > BODY_LIMIT as u64) {
                // A client that sends its body at once, without waiting for `100 Continue`
                // (Python's urllib, most libraries), would see the connection closed under its
                // upload (a broken pipe) and never read this answer: its body is read and
                // dropped first, up to a bound. Above it the answer is sent and the connection
                // closed (docs/API.md says so).
                let waits = req
                    .headers()
                    .get(header::EXPECT)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                if !waits && n <= BODY_DRAIN_LIMIT {
                    drain(req.into_body()).await;
                }
                return too_large().into_response();
            }
            next.run(req).await
        }
        Some(_) => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            None,
            "wrong bearer token: use the token in api.json in the agent's data directory",
        )
        .into_response(),
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            None,
            "missing `Authorization: Bearer TOKEN`: the token is in api.json in the agent's \
             data directory",
        )
        .into_response(),
    }
}

/// Largest body read and dropped to answer 413 to a client that does not wait for `100
/// Continue` (see [`auth`]): 4 times the limit, a fraction of a second on loopback.
const BODY_DRAIN_LIMIT: u64 = 4 * BODY_LIMIT as u64;

/// Reads a body to its end (at most [`BODY_DRAIN_LIMIT`] bytes, 30 s) and drops it.
async fn drain(body: axum::body::Body) {
    use http_body_util::BodyExt;
    let mut body = body;
    let mut read = 0u64;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while read <= BODY_DRAIN_LIMIT {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Ok(Some(Ok(f))) => read += f.data_ref().map_or(0, |d| d.len() as u64),
            _ => break,
        }
    }
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "NO_SUCH_ENDPOINT",
        None,
        "no such endpoint: see /v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        None,
        "this endpoint does not take that method: see /v1/openapi.json",
    )
}

/// Runs an application call on a blocking thread (sled reads, fsyncs).
async fn blocking<T: Send + 'static>(
    st: &Arc<ApiState>,
    f: impl FnOnce(&App) -> Result<T, AppError> + Send + 'static,
) -> Result<T, ApiError> {
    let app = st.app.clone();
    tokio::task::spawn_blocking(move || f(&app))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL",
                None,
                format!("the request's task failed: {e}"),
            )
        })?
        .map_err(ApiError::from)
}

fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "BODY_TOO_LARGE",
        None,
        format!(
            "request body over {} MiB: split it into smaller batches",
            BODY_LIMIT >> 20
        ),
    )
}

fn body_bytes(body: Body) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            too_large()
        } else {
            ApiError::bad(
                "BAD_BODY",
                "body",
                format!("cannot read the request body: {e}"),
            )
        }
    })
}

fn body_json(body: Body) -> Result<Value, ApiError> {
    parse_json(&body_bytes(body)?).map_err(ApiError::from)
}

/// A request body that must be one JSON object (batch, sync, verify, resolve). Malformed JSON
/// is `MALFORMED_JSON` in a person's words; JSON of another shape is `INVALID_BODY` showing the
/// form (`example`), and a key outside `allowed` (when given) is `UNKNOWN_FIELD` naming it:
/// never serde's text, which names Rust types. Numbers are checked as a record's are
/// (`INEXACT_NUMBER`): a batch's fields are stored exactly or refused.
fn body_object(
    body: Body,
    allowed: Option<&[&str]>,
    example: &str,
) -> Result<Map<String, Value>, ApiError> {
    let bytes = body_bytes(body)?;
    let hint = format!("send one JSON object like {example}");
    let v = parse_json_with(&bytes, &hint).map_err(|e| {
        let mut e = ApiError::from(e);
        if e.code == "MALFORMED_JSON" {
            e.field = Some("body".into());
        }
        e
    })?;
    let Value::Object(m) = v else {
        return Err(ApiError::bad(
            "INVALID_BODY",
            "body",
            format!(
                "the body must be a JSON object like {example}, not {}",
                kind(&v)
            ),
        ));
    };
    if let Some(allowed) = allowed {
        if let Some(k) = m.keys().find(|k| !allowed.contains(&k.as_str())) {
            return Err(ApiError::bad(
                "UNKNOWN_FIELD",
                k,
                format!(
                    "{k:?} is not a field of this body: use {}",
                    allowed.join(", ")
                ),
            ));
        }
    }
    Ok(m)
}

/// What kind of JSON value `v` is, for messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "true or false",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The form of an operation of a batch, for messages.
const OP_EXAMPLE: &str = r#"{"op": "put", "table": "person", "id": "…", "fields": {…}}"#;

/// The body of `POST /v1/batch`, checked field by field ([`body_object`]): each mistake is named
/// with the field at fault (`ops`, `ops[2].table`) and what it must be.
fn batch_request(body: Body) -> Result<(Vec<BatchOp>, bool), ApiError> {
    let example = format!(r#"{{"ops": [{OP_EXAMPLE}]}}"#);
    let mut m = body_object(body, Some(&["ops", "confirm_mass_delete"]), &example)?;
    let confirm = match m.remove("confirm_mass_delete") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => b,
        Some(v) => {
            return Err(ApiError::bad(
                "INVALID_BODY",
                "confirm_mass_delete",
                format!(
                    "\"confirm_mass_delete\" must be true or false, not {}",
                    kind(&v)
                ),
            ))
        }
    };
    let ops = match m.remove("ops") {
        Some(Value::Array(ops)) => ops,
        None | Some(Value::Null) => {
            return Err(ApiError::bad(
                "INVALID_BODY",
                "ops",
                format!("\"ops\" is missing: give a list of operations like [{OP_EXAMPLE}]"),
            ))
        }
        Some(v) => {
            return Err(ApiError::bad(
                "INVALID_BODY",
                "ops",
                format!(
                    "\"ops\" must be a list of operations like [{OP_EXAMPLE}], not {}",
                    kind(&v)
                ),
            ))
        }
    };
    let mut out = Vec::with_capacity(ops.len());
    for (i, op) in ops.into_iter().enumerate() {
        let at = format!("ops[{i}]");
        // Counted from 1 for a person, and named as the field the app sent (from 0).
        let n = format!("{} ({at})", i + 1);
        let Value::Object(mut o) = op else {
            return Err(ApiError::bad(
                "INVALID_BODY",
                &at,
                format!(
                    "operation {n} must be an object like {OP_EXAMPLE}, not {}",
                    kind(&op)
                ),
            ));
        };
        if let Some(k) = o
            .keys()
            .find(|k| !["op", "table", "id", "fields"].contains(&k.as_str()))
        {
            return Err(ApiError::bad(
                "UNKNOWN_FIELD",
                &format!("{at}.{k}"),
                format!("operation {n}: {k:?} is not a field of an operation: use op, table, id and fields"),
            ));
        }
        let mut text = |name: &str, what: &str| -> Result<Option<String>, ApiError> {
            match o.remove(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s)),
                Some(v) => Err(ApiError::bad(
                    "INVALID_BODY",
                    &format!("{at}.{name}"),
                    format!("operation {n}: {name:?} must be {what}, not {}", kind(&v)),
                )),
            }
        };
        let ops_words = "\"put\", \"patch\" or \"delete\"";
        let table_words = "a table name (a string such as \"person\")";
        let verb = text("op", ops_words)?;
        let table = text("table", table_words)?;
        let id = text("id", "a record id (a UUID string)")?;
        let has_table = table.is_some();
        let (Some(verb), Some(table)) = (verb, table) else {
            let (name, what) = if has_table {
                ("op", ops_words)
            } else {
                ("table", table_words)
            };
            return Err(ApiError::bad(
                "INVALID_BODY",
                &format!("{at}.{name}"),
                format!("operation {n}: {name:?} is missing: give {what}"),
            ));
        };
        out.push(BatchOp {
            op: verb,
            table,
            id,
            fields: o.remove("fields"),
        });
    }
    Ok((out, confirm))
}

/// The body of `POST /v1/sync` and `/v1/verify`: `{"peer": NAME_ID_OR_ADDRESS}`.
fn peer_ref(body: Body) -> Result<String, ApiError> {
    let example = r#"{"peer": "laptopA"}"#;
    let mut m = body_object(body, Some(&["peer"]), example)?;
    match m.remove("peer") {
        Some(Value::String(p)) => Ok(p),
        None | Some(Value::Null) => Err(ApiError::bad(
            "INVALID_BODY",
            "peer",
            format!(
                "\"peer\" is missing: give a peer's name, instance id or HOST:PORT, e.g. {example}"
            ),
        )),
        Some(v) => Err(ApiError::bad(
            "INVALID_BODY",
            "peer",
            format!(
                "\"peer\" must be a peer's name, instance id or HOST:PORT (a string), not {}",
                kind(&v)
            ),
        )),
    }
}

/// Query parameters as pairs; `known` are the only names allowed (plus `field.NAME` and
/// `contains.NAME` when `filters` is true).
struct Params(Vec<(String, String)>);

impl Params {
    fn new(q: Q, known: &[&str], filters: bool) -> Result<Self, ApiError> {
        let Query(pairs) = q.map_err(|e| {
            ApiError::bad("BAD_QUERY", "query", format!("malformed query string: {e}"))
        })?;
        for (k, _) in &pairs {
            let allowed = known.contains(&k.as_str())
                || (filters && (k.starts_with("field.") || k.starts_with("contains.")));
            if !allowed {
                // Where filters are taken they are what a stray name usually reached for
                // (`fields.status`, `status`): said, with the field it seems to mean.
                let filter = if filters {
                    let name = k
                        .rsplit('.')
                        .next()
                        .filter(|n| !n.is_empty())
                        .unwrap_or("NAME");
                    format!(
                        ", or field.{name}=VALUE to keep only records whose field {name} equals \
                         VALUE (contains.{name}=TEXT: whose field {name} contains TEXT)"
                    )
                } else {
                    String::new()
                };
                return Err(ApiError::bad(
                    "UNKNOWN_PARAMETER",
                    k,
                    format!(
                        "query parameter {k:?} is unknown here: use {}{filter}",
                        known.join(", ")
                    ),
                ));
            }
        }
        Ok(Params(pairs))
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.get(name) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(v) => Err(ApiError::bad(
                "BAD_QUERY",
                name,
                format!("{name}={v:?} is not a boolean: use true or false"),
            )),
        }
    }

    fn number(&self, name: &str, default: u64) -> Result<u64, ApiError> {
        match self.get(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ApiError::bad(
                    "BAD_QUERY",
                    name,
                    format!("{name}={v:?} is not a non-negative integer"),
                )
            }),
        }
    }
}

fn precondition(h: &HeaderMap) -> Result<Precondition, ApiError> {
    let text = |name: header::HeaderName| -> Result<Option<String>, ApiError> {
        h.get(&name)
            .map(|v| {
                v.to_str().map(str::to_string).map_err(|_| {
                    ApiError::bad("BAD_HEADER", name.as_str(), "header is not ASCII text")
                })
            })
            .transpose()
    };
    if let Some(m) = text(header::IF_MATCH)? {
        let tags: Vec<String> = m.split(',').map(|t| t.trim().to_string()).collect();
        // A revision is what an ETag of this API can be: `*`, `"42"`, `W/"42"` or the bare
        // `42`. Anything else could never match, and a 412 ("changed since revision
        // garbage") would send the caller to re-read a record that did not change.
        let revision = |t: &str| {
            let t = t.strip_prefix("W/").unwrap_or(t);
            let t = t
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .unwrap_or(t);
            !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit())
        };
        if let Some(bad) = tags.iter().find(|t| *t != "*" && !revision(t)) {
            return Err(ApiError::bad(
                "BAD_HEADER",
                "if-match",
                format!(
                    "If-Match: {bad} is not a revision of a record: send the ETag header a read \
                     or write of it returned, e.g. If-Match: \"42\" (or * for any revision of \
                     an existing record)"
                ),
            ));
        }
        return Ok(Precondition::Match(tags));
    }
    match text(header::IF_NONE_MATCH)?.as_deref() {
        None => Ok(Precondition::None),
        Some("*") => Ok(Precondition::NoneMatch),
        Some(_) => Err(ApiError::bad(
            "BAD_HEADER",
            "if-none-match",
            "only `If-None-Match: *` (create only) is supported on writes",
        )),
    }
}

fn with_etag(mut r: Response, seq: u64) -> Response {
    if let Ok(v) = HeaderValue::from_str(&etag(seq)) {
        r.headers_mut().insert(header::ETAG, v);
    }
    r
}

fn written(o: WriteOutcome, status: StatusCode) -> Response {
    let seq = o.seq;
    let loc = format!("/v1/tables/{}/records/{}", o.table, o.id);
    let mut r = with_etag((status, Json(o)).into_response(), seq);
    if status == StatusCode::CREATED {
        if let Ok(v) = HeaderValue::from_str(&loc) {
            r.headers_mut().insert(header::LOCATION, v);
        }
    }
    r
}

/// The OpenAPI 3 document of this API.
#[utoipa::path(get, path = "/v1/openapi.json", responses((status = 200, description = "The OpenAPI document", body = Object)))]
async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(ApiDoc::openapi())
}

/// This instance, record counts, conflicts, peers summary, agent state (as `fieldsync status`).
#[utoipa::path(get, path = "/v1/status", responses((status = 200, description = "Status", body = Object), (status = 401, body = ErrorBody)))]
async fn status(State(st): St) -> Result<Json<Value>, ApiError> {
    Ok(Json(blocking(&st, |a| a.status()).await?))
}

/// The sync_instance table: one row per peer instance (as `fieldsync peers`).
#[utoipa::path(get, path = "/v1/peers", responses((status = 200, description = "Peer rows", body = Vec<Object>)))]
async fn peers(State(st): St) -> Result<Json<Vec<Value>>, ApiError> {
    Ok(Json(blocking(&st, |a| a.peer_list()).await?))
}

/// A peer, by instance id, display name or `HOST:PORT`.
// The OpenAPI schema of the body only: [`peer_ref`] reads it field by field, to name a
// mistake in words rather than serde's.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct PeerRef {
    /// Instance id, display name of a known peer, or `HOST:PORT`.
    peer: String,
}

/// Runs one sync session with a peer now, both directions.
#[utoipa::path(post, path = "/v1/sync", request_body = PeerRef, responses(
    (status = 200, description = "Per direction: pages, records, applied, conflicts, bytes, ms", body = Object),
    (status = 400, body = ErrorBody), (status = 404, body = ErrorBody),
    (status = 502, description = "The peer could not be reached or refused", body = ErrorBody),
    (status = 503, description = "Sync is off (not joined)", body = ErrorBody)))]
async fn sync_now(State(st): St, body: Body) -> Result<Json<Value>, ApiError> {
    let peer = peer_ref(body)?;
    let r = st.app.sync(&peer, None).await?;
    Ok(Json(json!({
        "peer": r.peer.instance, "peer_name": r.peer.name,
        "received": r.received, "sent": r.sent,
    })))
}

/// Compares every table with a peer (digests only, no records copied).
#[utoipa::path(post, path = "/v1/verify", request_body = PeerRef, responses(
    (status = 200, description = "in_sync overall and per table", body = Object),
    (status = 400, description = "`MALFORMED_JSON`, `INVALID_BODY`, `UNKNOWN_FIELD`, `PEER_ADDRESS`, `AMBIGUOUS_PEER`", body = ErrorBody),
    (status = 404, description = "`PEER_NOT_FOUND`", body = ErrorBody),
    (status = 502, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn verify(State(st): St, body: Body) -> Result<Json<Value>, ApiError> {
    let peer = peer_ref(body)?;
    let checks = st.app.verify(&peer, None).await?;
    Ok(Json(json!({
        "in_sync": checks.iter().all(|c| c.in_sync), "tables": checks,
    })))
}

/// Table names with live and deleted counts (fieldsync's own tables only with `system=true`).
#[utoipa::path(get, path = "/v1/tables",
    params(("system" = Option<bool>, Query, description = "Also fieldsync's own tables (fs_revocations)")),
    responses((status = 200, body = Vec<TableInfo>),
        (status = 400, description = "`UNKNOWN_PARAMETER`, `BAD_QUERY`", body = ErrorBody)))]
async fn tables(State(st): St, q: Q) -> Result<Json<Vec<TableInfo>>, ApiError> {
    let system = Params::new(q, &["system"], false)?.flag("system")?;
    Ok(Json(blocking(&st, move |a| a.tables_with(system)).await?))
}

/// Creates a record with a server-made id. Body: the fields as a JSON object.
#[utoipa::path(post, path = "/v1/tables/{table}/records", request_body = Object,
    params(("table" = String, Path, description = "Table name: a-z, 0-9, _")),
    responses((status = 201, description = "Created; ETag and Location headers", body = WriteOutcome),
    (status = 400, body = ErrorBody), (status = 409, description = "A unique value is already used", body = ErrorBody),
    (status = 413, body = ErrorBody)))]
async fn create(
    State(st): St,
    Path(table): Path<String>,
    body: Body,
) -> Result<Response, ApiError> {
    let fields = body_json(body)?;
    let o = blocking(&st, move |a| {
        a.put(&table, None, fields, &Precondition::None)
    })
    .await?;
    Ok(written(o, StatusCode::CREATED))
}

/// One page of a table in id order.
///
/// Filters: any number of query parameters `field.NAME=VALUE` (e.g. `field.status=missing`):
/// only records whose field NAME equals VALUE (read as JSON if it parses, else as a string);
/// `contains.NAME=TEXT` (e.g. `contains.name=amina`): only records whose field NAME contains
/// TEXT in any letter case. Their names vary, so they are not declared as parameters here.
///
/// A table no record was ever written to here (a mistyped name, or before an application's
/// first write) answers an empty page with the header `X-Fieldsync-Warning` saying so.
#[utoipa::path(get, path = "/v1/tables/{table}/records",
    params(("table" = String, Path,),
        ("after" = Option<String>, Query, description = "Only ids after this one (the `next` of the previous page)"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 1000, description = "Records per page, 1-1000, default 100 (a value outside is clamped)"),
        ("include_deleted" = Option<bool>, Query, description = "Include deleted records")),
    responses((status = 200, body = ListPage, headers(("X-Fieldsync-Warning" = String, description = "Only for a table that never had a record here"))),
        (status = 400, body = ErrorBody)))]
async fn list(State(st): St, Path(table): Path<String>, q: Q) -> Result<Response, ApiError> {
    let p = Params::new(q, &["after", "limit", "include_deleted"], true)?;
    let limit = p.number("limit", 100)? as usize;
    let deleted = p.flag("include_deleted")?;
    let after = p.get("after").map(str::to_string);
    let filters: Vec<(String, Value)> =
        p.0.iter()
            .filter_map(|(k, v)| {
                let f = k.strip_prefix("field.")?;
                let val = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.clone()));
                Some((f.to_string(), val))
            })
            .collect();
    let contains: Vec<(String, String)> =
        p.0.iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("contains.")?.to_string(), v.clone())))
            .collect();
    let first = after.is_none();
    let (page, table, known) = blocking(&st, move |a| {
        let page = a.list(
            &table,
            after.as_deref(),
            limit,
            deleted,
            &filters,
            &contains,
        )?;
        // Only an empty first page asks: a table with records is known.
        let known = !first
            || !page.records.is_empty()
            || table.starts_with(crate::model::SYSTEM_PREFIX)
            || a.table_known(&table)?;
        Ok((page, table, known))
    })
    .await?;
    let mut r = Json(page).into_response();
    if !known {
        // Still 200: an application may list a table before its first write. The header says
        // what a mistyped name would otherwise hide.
        let warning = format!(
            "no record of table {table} was ever written here: check the name (GET /v1/tables \
             lists the tables)"
        );
        if let Ok(v) = HeaderValue::from_str(&warning) {
            r.headers_mut().insert("x-fieldsync-warning", v);
        }
    }
    Ok(r)
}

/// One record, with its revision as ETag; `at` shows it as of a revision from its history.
#[utoipa::path(get, path = "/v1/tables/{table}/records/{id}",
    params(("table" = String, Path,), ("id" = String, Path, description = "Record id (UUID)"),
        ("include_deleted" = Option<bool>, Query,), ("at" = Option<String>, Query, description = "A revision stamp (`at` of a history entry), or an RFC 3339 time: the record as of the latest revision at or before it (encode `+` as `%2B`, `#` as `%23`)")),
    responses((status = 200, description = "The record; ETag header", body = RecordView),
        (status = 400, description = "`INVALID_TABLE`, `INVALID_ID`, `UNKNOWN_PARAMETER`, `BAD_QUERY`, `UNKNOWN_REVISION`", body = ErrorBody),
        (status = 404, description = "NOT_FOUND or RECORD_DELETED", body = ErrorBody)))]
async fn get_record(
    State(st): St,
    Path((table, id)): Path<(String, String)>,
    q: Q,
) -> Result<Response, ApiError> {
    let p = Params::new(q, &["include_deleted", "at"], false)?;
    let deleted = p.flag("include_deleted")?;
    let at = p.get("at").map(str::to_string);
    let v = blocking(&st, move |a| match at {
        Some(at) => a.get_at(&table, &id, &at),
        None => a.get(&table, &id, deleted).map(|(v, _)| v),
    })
    .await?;
    let seq = v.seq;
    Ok(with_etag(Json(v).into_response(), seq))
}

/// Creates or replaces a record: fields not in the body are removed. If-Match: only if the
/// record is still at that revision (else 412); If-None-Match: * only if it does not exist.
#[utoipa::path(put, path = "/v1/tables/{table}/records/{id}", request_body = Object,
    params(("table" = String, Path,), ("id" = String, Path,),
        ("If-Match" = Option<String>, Header, description = "ETag from a read"),
        ("If-None-Match" = Option<String>, Header, description = "`*`: create only")),
    responses((status = 200, body = WriteOutcome), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 412, description = "The record changed", body = ErrorBody),
        (status = 413, body = ErrorBody)))]
async fn put_record(
    State(st): St,
    Path((table, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let fields = body_json(body)?;
    let o = blocking(&st, move |a| a.put(&table, Some(&id), fields, &pre)).await?;
    Ok(written(o, StatusCode::OK))
}

/// JSON merge patch (RFC 7396): given fields change, nested objects merge, null removes.
#[utoipa::path(patch, path = "/v1/tables/{table}/records/{id}", request_body = Object,
    params(("table" = String, Path,), ("id" = String, Path,), ("If-Match" = Option<String>, Header,)),
    responses((status = 200, body = WriteOutcome), (status = 400, body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`, or `RECORD_DELETED` (PUT brings a deleted record back)", body = ErrorBody),
        (status = 409, description = "`UNIQUE_CLASH`: a unique value is already used", body = ErrorBody),
        (status = 412, description = "The record changed", body = ErrorBody),
        (status = 413, body = ErrorBody)))]
async fn patch_record(
    State(st): St,
    Path((table, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let patch = body_json(body)?;
    let o = blocking(&st, move |a| {
        a.patch(&table, &id, patch, PatchMode::MergePatch, &pre)
    })
    .await?;
    Ok(written(o, StatusCode::OK))
}

/// Deletes a record (a tombstone that syncs; history stays).
#[utoipa::path(delete, path = "/v1/tables/{table}/records/{id}",
    params(("table" = String, Path,), ("id" = String, Path,), ("If-Match" = Option<String>, Header,)),
    responses((status = 200, body = WriteOutcome), (status = 400, description = "`BAD_HEADER`, `INVALID_TABLE`, `INVALID_ID`", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`, or `RECORD_DELETED` (already deleted: deleting again changes nothing)", body = ErrorBody),
        (status = 412, description = "The record changed", body = ErrorBody)))]
async fn delete_record(
    State(st): St,
    Path((table, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let pre = precondition(&headers)?;
    let o = blocking(&st, move |a| a.delete(&table, &id, &pre)).await?;
    Ok(written(o, StatusCode::OK))
}

/// Every table's import keys (`import --key`; every laptop keeps each unique in its table), as
/// `fieldsync import-keys list`: `[{"table","key":[fields]}]` in table order.
#[utoipa::path(get, path = "/v1/import-keys",
    responses((status = 200, body = Vec<Object>), (status = 401, body = ErrorBody)))]
async fn import_keys(State(st): St) -> Result<Json<Value>, ApiError> {
    let keys = blocking(&st, |a| a.import_keys()).await?;
    Ok(Json(Value::Array(
        keys.into_iter()
            .map(|(table, key)| json!({"table": table, "key": key}))
            .collect(),
    )))
}

/// Drops an import key made by mistake, on every laptop (the drop travels by sync), as
/// `fieldsync import-keys drop`: `{key}` is its fields, comma-separated, in order.
#[utoipa::path(delete, path = "/v1/import-keys/{table}/{key}",
    params(("table" = String, Path,), ("key" = String, Path, description = "The key's fields, comma-separated")),
    responses((status = 200, description = "`{\"table\",\"key\",\"dropped\": true}`", body = Object),
        (status = 400, description = "`INVALID_TABLE`", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`: not a key of the table (the message names its keys)", body = ErrorBody)))]
async fn drop_import_key(
    State(st): St,
    Path((table, key)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let fields: Vec<String> = key.split(',').map(str::to_string).collect();
    let (t, f) = (table.clone(), fields.clone());
    blocking(&st, move |a| a.drop_import_key(&t, &f)).await?;
    Ok(Json(
        json!({"table": table, "key": fields, "dropped": true}),
    ))
}

/// Every revision of a record, oldest first (as `fieldsync history`).
#[utoipa::path(get, path = "/v1/tables/{table}/records/{id}/history",
    params(("table" = String, Path,), ("id" = String, Path,)),
    responses((status = 200, body = Vec<Object>),
        (status = 400, description = "`INVALID_TABLE`, `INVALID_ID`", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn history(
    State(st): St,
    Path((table, id)): Path<(String, String)>,
) -> Result<Json<Vec<Value>>, ApiError> {
    let h = blocking(&st, move |a| a.history(&table, &id)).await?;
    Ok(Json(h.iter().map(history_json).collect()))
}

/// A batch of operations.
// The OpenAPI schema of the body only: [`batch_request`] reads it field by field, to name a
// mistake in words rather than serde's.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
struct BatchRequest {
    /// The operations, applied in order.
    ops: Vec<BatchOp>,
    /// Needed when the batch deletes more of a table's live records than `[brake]` allows
    /// (default: more than 20% and at least 50); otherwise it is refused with `MASS_DELETE`.
    confirm_mass_delete: Option<bool>,
}

/// Applies put/patch/delete operations all or nothing (like `fieldsync apply`).
#[utoipa::path(post, path = "/v1/batch", request_body = BatchRequest,
    responses((status = 200, body = BatchOutcome),
        (status = 400, description = "`field` names the failing op, e.g. ops[2].id; nothing written", body = ErrorBody),
        (status = 404, description = "`NOT_FOUND`, `RECORD_DELETED`: a patch or delete of a record that is not here or is deleted; `field` names the op (ops[2].id); nothing written", body = ErrorBody),
        (status = 409, description = "`MASS_DELETE`: deletes more than `[brake]` allows without `confirm_mass_delete`; `UNIQUE_CLASH`: a unique value already used; nothing written", body = ErrorBody),
        (status = 413, body = ErrorBody)))]
async fn batch(State(st): St, body: Body) -> Result<Json<BatchOutcome>, ApiError> {
    let (ops, confirm) = batch_request(body)?;
    Ok(Json(blocking(&st, move |a| a.batch(ops, confirm)).await?))
}

/// The conflict log, unresolved first (as `fieldsync conflicts`).
#[utoipa::path(get, path = "/v1/conflicts",
    params(("table" = Option<String>, Query,), ("all" = Option<bool>, Query, description = "Include resolved ones")),
    responses((status = 200, body = Vec<Object>),
        (status = 400, description = "`UNKNOWN_PARAMETER`, `BAD_QUERY`", body = ErrorBody)))]
async fn conflicts(State(st): St, q: Q) -> Result<Json<Vec<Value>>, ApiError> {
    let p = Params::new(q, &["table", "all"], false)?;
    let all = p.flag("all")?;
    let table = p.get("table").map(str::to_string);
    let list = blocking(&st, move |a| a.conflict_views(table.as_deref(), all)).await?;
    Ok(Json(list.into_iter().map(|c| json!(c)).collect()))
}

/// Settles a conflict, relative to this laptop, by writing the kept value as a new revision
/// (which syncs). Body: exactly one of `{"keep": "mine" | "theirs" | "deleted" | "alive"}`,
/// `{"keep_from": "NAME_OR_ID"}`, `{"keep_value": V}` (with `"record": ID` to pick which
/// record of a name clash is renamed) — the options of `fieldsync conflicts resolve`.
#[utoipa::path(post, path = "/v1/conflicts/{id}/resolve", request_body = ResolveRequest,
    params(("id" = u64, Path, description = "Conflict id")),
    responses((status = 200, description = "The conflict as this laptop now tells it", body = Object),
        (status = 400, description = "`INVALID_KEEP`, `INVALID_KEEP_FROM`, `INVALID_RECORD`, `UNKNOWN_FIELD`, `INVALID_BODY`, `BAD_RESOLUTION`: `field` names the body field at fault", body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn resolve(
    State(st): St,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id: u64 = id.parse().map_err(|_| {
        ApiError::bad(
            "INVALID_ID",
            "id",
            format!("conflict id {id:?} is not a number"),
        )
    })?;
    let example = r#"{"keep": "mine"}"#;
    let req = ResolveRequest::from_json(Value::Object(body_object(body, None, example)?))?;
    let c = blocking(&st, move |a| a.resolve_with(id, &req)).await?;
    Ok(Json(json!(c)))
}

/// Every change after `since`, in feed order. `feed=longpoll` waits (up to `timeout_ms`) for
/// a change when there is none; `feed=sse` streams changes as server-sent events (`id` = seq,
/// `event: change`, `data` = the change) and resumes from `Last-Event-ID`.
#[utoipa::path(get, path = "/v1/changes",
    params(("since" = Option<u64>, Query, description = "Feed position; 0 for everything"),
        ("limit" = Option<u64>, Query, minimum = 1, maximum = 10000, description = "Most changes per page, 1-10000, default 1000 (a value outside is clamped)"),
        ("feed" = Option<String>, Query, description = "normal (default), longpoll or sse"),
        ("timeout_ms" = Option<u64>, Query, description = "longpoll: longest wait, default 30000, at most 300000"),
        ("system" = Option<bool>, Query, description = "Also changes of fieldsync's own tables (fs_revocations)")),
    responses((status = 200, body = ChangesPage), (status = 400, body = ErrorBody)))]
async fn changes(State(st): St, headers: HeaderMap, q: Q) -> Result<Response, ApiError> {
    let p = Params::new(
        q,
        &["since", "limit", "feed", "timeout_ms", "system"],
        false,
    )?;
    let system = p.flag("system")?;
    let mut since = p.number("since", 0)?;
    let limit = p.number("limit", 1000)? as usize;
    let timeout = Duration::from_millis(p.number("timeout_ms", 30_000)?.min(300_000));
    match p.get("feed").unwrap_or("normal") {
        "normal" => {
            let page = blocking(&st, move |a| a.changes_with(since, limit, system)).await?;
            Ok(Json(page).into_response())
        }
        "longpoll" => {
            let mut rx = st.app.store().subscribe();
            let mut stopping = st.stopping.clone();
            let deadline = tokio::time::Instant::now() + timeout;
            loop {
                rx.borrow_and_update();
                let page = blocking(&st, move |a| a.changes_with(since, limit, system)).await?;
                if !page.changes.is_empty() || tokio::time::Instant::now() >= deadline {
                    return Ok(Json(page).into_response());
                }
                tokio::select! {
                    r = rx.changed() => if r.is_err() { return Ok(Json(page).into_response()) },
                    _ = tokio::time::sleep_until(deadline) => {}
                    _ = stopping.wait_for(|s| *s) => return Ok(Json(page).into_response()),
                }
            }
        }
        "sse" => {
            if let Some(last) = headers
                .get("last-event-id")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                since = since.max(last);
            }
            Ok(sse(st, since, limit, system).into_response())
        }
        other => Err(ApiError::bad(
            "BAD_QUERY",
            "feed",
            format!("feed={other:?} is unknown: use normal, longpoll or sse"),
        )),
    }
}

struct Stream {
    st: Arc<ApiState>,
    rx: tokio::sync::watch::Receiver<u64>,
    since: u64,
    limit: usize,
    system: bool,
    buf: VecDeque<Change>,
    done: bool,
}

fn sse(
    st: Arc<ApiState>,
    since: u64,
    limit: usize,
    system: bool,
) -> Sse<impl futures_util::Stream<Item = Result<Event, std::convert::Infallible>>> {
    let rx = st.app.store().subscribe();
    let s = Stream {
        st,
        rx,
        since,
        limit,
        system,
        buf: VecDeque::new(),
        done: false,
    };
    let stream = futures_util::stream::unfold(s, |mut s| async move {
        loop {
            if s.done {
                return None;
            }
            if let Some(c) = s.buf.pop_front() {
                let ev = Event::default()
                    .id(c.seq.to_string())
                    .event("change")
                    .json_data(&c)
                    .unwrap_or_else(|_| Event::default().comment("unencodable change"));
                return Some((Ok(ev), s));
            }
            s.rx.borrow_and_update();
            let (since, limit, system) = (s.since, s.limit, s.system);
            match blocking(&s.st, move |a| a.changes_with(since, limit, system)).await {
                Ok(page) if !page.changes.is_empty() => {
                    s.since = page.last_seq;
                    s.buf.extend(page.changes);
                }
                Ok(_) => {
                    let mut stopping = s.st.stopping.clone();
                    tokio::select! {
                        r = s.rx.changed() => if r.is_err() { return None },
                        _ = stopping.wait_for(|v| *v) => return None,
                    }
                }
                Err(e) => {
                    s.done = true;
                    let ev = Event::default()
                        .event("error")
                        .json_data(json!({"code": e.code, "message": e.message}))
                        .unwrap_or_default();
                    return Some((Ok(ev), s));
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}

/// A one-time login link for the console (what `fieldsync console` prints): opening it within
/// 10 minutes sets a session cookie; it works once.
#[utoipa::path(post, path = "/v1/console/link", responses(
    (status = 200, description = "`url` (the link) and `expires_in_secs`", body = Object),
    (status = 401, body = ErrorBody)))]
async fn console_link(State(st): St) -> Json<Value> {
    let token = st.logins.new_link();
    let base = st
        .app
        .agent()
        .and_then(|a| a.api_url.get().cloned())
        .unwrap_or_default();
    Json(json!({
        "url": format!("{base}/console/login?token={token}"),
        "expires_in_secs": super::console::LINK_TTL.as_secs(),
    }))
}

/// This laptop and every peer in words: online, last sync, changes it has not received yet.
#[utoipa::path(get, path = "/v1/overview", responses((status = 200, body = Object), (status = 401, body = ErrorBody)))]
async fn overview(State(st): St) -> Result<Json<Value>, ApiError> {
    Ok(Json(blocking(&st, |a| a.overview()).await?))
}

/// Clock offset warnings, failing peers and discovery's diagnosis.
#[utoipa::path(get, path = "/v1/warnings", responses((status = 200, body = Object), (status = 401, body = ErrorBody)))]
async fn warnings(State(st): St) -> Result<Json<Value>, ApiError> {
    Ok(Json(blocking(&st, |a| a.warnings()).await?))
}

/// Sync sessions of this agent, started by it or by peers (`role`): in flight (records and bytes done vs expected, rate,
/// seconds left) and the last 20 finished. `feed=sse` streams the same object as an event
/// named `sessions` whenever it changes (at most 5 a second), and every second while a
/// session runs (bytes move between pages).
#[utoipa::path(get, path = "/v1/sessions",
    params(("feed" = Option<String>, Query, description = "normal (default) or sse")),
    responses((status = 200, body = Object), (status = 400, description = "`UNKNOWN_PARAMETER`, `BAD_QUERY`", body = ErrorBody),
        (status = 401, body = ErrorBody)))]
async fn sessions(State(st): St, q: Q) -> Result<Response, ApiError> {
    let p = Params::new(q, &["feed"], false)?;
    match p.get("feed").unwrap_or("normal") {
        "normal" => Ok(Json(st.app.sessions()).into_response()),
        "sse" => {
            let rx = crate::progress::subscribe();
            let s = (st, rx, true);
            let stream = futures_util::stream::unfold(s, |(st, mut rx, first)| async move {
                if !first {
                    let mut stopping = st.stopping.clone();
                    // While a session runs its bytes move between pages: a tick a second.
                    let running = crate::progress::any_running();
                    tokio::select! {
                        r = rx.changed() => if r.is_err() { return None },
                        _ = tokio::time::sleep(Duration::from_secs(1)), if running => {}
                        _ = stopping.wait_for(|v| *v) => return None,
                    }
                    // Pages can come faster than a person reads: at most 5 updates a second.
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                rx.borrow_and_update();
                let ev = Event::default()
                    .event("sessions")
                    .json_data(st.app.sessions())
                    .unwrap_or_default();
                Some((Ok::<_, std::convert::Infallible>(ev), (st, rx, false)))
            });
            Ok(Sse::new(stream)
                .keep_alive(KeepAlive::default())
                .into_response())
        }
        other => Err(ApiError::bad(
            "BAD_QUERY",
            "feed",
            format!("feed={other:?} is unknown: use normal or sse"),
        )),
    }
}
