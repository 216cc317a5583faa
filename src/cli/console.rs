//! `console`: asks the running agent for a one-time login link to the console (the web page it
//! serves on its HTTP API port), prints it, and opens it on a desktop.
//!
//! Talks to the agent over its HTTP API (URL and bearer token from `api.json`), not through the
//! database: the agent must be running with the API on.

use super::CliError;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// Prints the login link (JSON `{"url","expires_in_secs"}` when `json`: `--json` or stdout not
/// a terminal) and, on a desktop, opens it in the browser.
pub fn console(dir: &Path, json: bool, out: &mut dyn Write) -> Result<(), CliError> {
    let api = crate::http::read_api_file(dir).map_err(|_| {
        CliError::Io(format!(
            "no agent with the HTTP API is running on {}: start it with `fieldsync run` \
             (without --no-api), then run `fieldsync console` again",
            dir.display()
        ))
    })?;
    let link = request_link(&api.url, &api.token)?;
    let url = link["url"].as_str().unwrap_or_default().to_string();
    if !json {
        writeln!(
            out,
            "Open the console: {url}\nThe link works once, within {} minutes; run \
             `fieldsync console` again for a new one.",
            link["expires_in_secs"].as_u64().unwrap_or(600) / 60
        )
        .map_err(CliError::Output)?;
        let desktop =
            std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
        if desktop {
            // Best effort: the link is printed either way.
            let _ = std::process::Command::new("xdg-open")
                .arg(&url)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn();
        }
    } else {
        writeln!(out, "{link}").map_err(CliError::Output)?;
    }
    Ok(())
}

/// `POST /v1/console/link` with the bearer token.
fn request_link(base: &str, token: &str) -> Result<Value, CliError> {
    request(base, token, "POST", "/v1/console/link")
}

/// `GET path` of the agent's API with the bearer token.
pub(crate) fn get_json(base: &str, token: &str, path: &str) -> Result<Value, CliError> {
    request(base, token, "GET", path)
}

/// One request to the agent's API over plain HTTP/1.1 on loopback; the JSON body of a 200.
fn request(base: &str, token: &str, method: &str, path: &str) -> Result<Value, CliError> {
    let addr = base.trim_start_matches("http://").trim_end_matches('/');
    let fail = |e: String| {
        CliError::Io(format!(
            "cannot reach the agent's HTTP API at {base}: {e} (is `fieldsync run` still running?)"
        ))
    };
    let sock: std::net::SocketAddr = addr.parse().map_err(|_| fail("bad address".into()))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(5))
        .map_err(|e| fail(e.to_string()))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| fail(e.to_string()))?;
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| fail(e.to_string()))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| fail(e.to_string()))?;
    let text = String::from_utf8_lossy(&resp);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| fail("incomplete answer".into()))?;
    let v: Value = serde_json::from_str(body.trim()).map_err(|e| fail(e.to_string()))?;
    if !head.starts_with("HTTP/1.1 200") {
        return Err(fail(v["message"].as_str().unwrap_or("refused").to_string()));
    }
    Ok(v)
}
