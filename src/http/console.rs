//! The console: a web page for people, served by the agent on its local API port and talking
//! only to the API (so everything it does, a script can do too).
//!
//! Login: `fieldsync console` asks the agent (with the bearer token) for a one-time login link
//! (`POST /v1/console/link`). Opening `/console/login?token=T` spends `T` (once, within
//! [`LINK_TTL`]) and sets a session cookie (`HttpOnly; SameSite=Strict; Path=/`); the page and
//! the API then accept that cookie in place of the bearer token. A write made with the cookie
//! must also carry `X-Fieldsync-Console: 1`, which a cross-site form cannot send. Links and
//! sessions live in memory only: a restarted agent needs a new link.
//!
//! The page's files are compiled into the binary (`include_str!`): no CDN, no network.
//!
//! | path                      | auth            | what                                     |
//! |---------------------------|-----------------|------------------------------------------|
//! | `/console/login?token=T`  | one-time token  | sets the cookie, redirects to `/console/`|
//! | `/console/`               | cookie          | the page (index.html)                    |
//! | `/console/app.js`, `.css` | cookie          | its script and style                     |

use super::ApiState;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a login link can be used.
pub(super) const LINK_TTL: Duration = Duration::from_secs(600);
/// How long a console session lasts without being used.
pub(super) const SESSION_IDLE: Duration = Duration::from_secs(12 * 3600);
/// Name of the session cookie.
pub(super) const COOKIE: &str = "fieldsync_console";
/// Header a cookie-authenticated write must carry.
pub(super) const WRITE_HEADER: &str = "x-fieldsync-console";

const INDEX: &str = include_str!("console/index.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");

/// One-time login tokens and live sessions (in memory).
#[derive(Default)]
pub(crate) struct Logins {
    links: Mutex<HashMap<String, Instant>>,
    sessions: Mutex<HashMap<String, Instant>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Logins {
    /// A new one-time login token.
    pub(crate) fn new_link(&self) -> String {
        let t = super::new_token();
        let mut links = lock(&self.links);
        links.retain(|_, at| at.elapsed() < LINK_TTL);
        links.insert(t.clone(), Instant::now());
        t
    }

    /// Spends a login token; a new session id when it was valid and unused.
    fn spend(&self, token: &str) -> Option<String> {
        let at = lock(&self.links).remove(token)?;
        if at.elapsed() >= LINK_TTL {
            return None;
        }
        let s = super::new_token();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, used| used.elapsed() < SESSION_IDLE);
        sessions.insert(s.clone(), Instant::now());
        Some(s)
    }

    /// Whether the request carries a live session cookie (and keeps it alive).
    pub(crate) fn session_of(&self, h: &HeaderMap) -> bool {
        let Some(id) = cookie(h, COOKIE) else {
            return false;
        };
        let mut sessions = lock(&self.sessions);
        match sessions
            .iter_mut()
            .find(|(k, _)| super::same_token(k.as_bytes(), id.as_bytes()))
        {
            Some((_, used)) if used.elapsed() < SESSION_IDLE => {
                *used = Instant::now();
                true
            }
            _ => false,
        }
    }
}

fn cookie<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(super) fn router(state: Arc<ApiState>) -> Router {
    Router::new()
        .route("/console/login", get(login))
        .route("/console", get(|| async { redirect("/console/") }))
        .route("/console/", get(index))
        .route("/console/app.js", get(script))
        .route("/console/app.css", get(style))
        .with_state(state)
}

fn redirect(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title>\
         <link rel=\"icon\" href=\"data:,\"></head><body style=\"font:16px sans-serif;max-width:40em;margin:3em auto\">\
         <h1>{title}</h1><p>{text}</p></body></html>"
    );
    let mut r = (status, Html(body)).into_response();
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn refused() -> Response {
    page(
        StatusCode::UNAUTHORIZED,
        "Not logged in",
        "Open the console with the link that <code>fieldsync console</code> prints on this \
         laptop (each link works once, for 10 minutes).",
    )
}

async fn login(
    State(st): State<Arc<ApiState>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = q.get("token").and_then(|t| st.logins.spend(t)) else {
        tracing::info!("console login refused: no valid one-time token");
        return page(
            StatusCode::UNAUTHORIZED,
            "This login link does not work",
            "It was used already, has expired (10 minutes), or was never issued by this agent. \
             Run <code>fieldsync console</code> again for a new link.",
        );
    };
    let mut r = redirect("/console/");
    let c = format!("{COOKIE}={session}; HttpOnly; SameSite=Strict; Path=/");
    if let Ok(v) = HeaderValue::from_str(&c) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn asset(st: &ApiState, h: &HeaderMap, kind: &'static str, body: &'static str) -> Response {
    if !st.logins.session_of(h) {
        return refused();
    }
    let mut r = ([(header::CONTENT_TYPE, kind)], body).into_response();
    let hs = r.headers_mut();
    hs.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Everything the page loads comes from this agent; nothing runs from elsewhere.
    hs.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
    );
    hs.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

async fn index(State(st): State<Arc<ApiState>>, h: HeaderMap) -> Response {
    asset(&st, &h, "text/html; charset=utf-8", INDEX)
}

async fn script(State(st): State<Arc<ApiState>>, h: HeaderMap) -> Response {
    asset(&st, &h, "text/javascript; charset=utf-8", SCRIPT)
}

async fn style(State(st): State<Arc<ApiState>>, h: HeaderMap) -> Response {
    asset(&st, &h, "text/css; charset=utf-8", STYLE)
}
