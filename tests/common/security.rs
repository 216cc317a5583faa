//! Helpers for tests/security.rs: data directories, agents as real processes, a deployment,
//! raw TLS clients built from credential files, and a TCP relay that makes a client appear to
//! come from another loopback address.
//!
//! Every process is killed when its handle drops, and every wait is bounded, so a hung agent
//! fails a test instead of hanging the suite.

#![allow(dead_code)]

use fieldsync::clock::{ts_from_millis, wall_millis, Hlc};
use fieldsync::model::{FieldState, RecordState};
use fieldsync::protocol::{self, Hello, PeerInfo, ENC_JSON};
use fieldsync::store::RemoteChange;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use uuid::Uuid;

#[path = "threads.rs"]
pub mod threads;

/// Credential files of the laptops enrolled in this test process, by instance id, so that a
/// crafted page can be signed the way its sender could sign it ([`sign_as`]).
static ENROLLED: std::sync::Mutex<Vec<(String, PathBuf)>> = std::sync::Mutex::new(Vec::new());

/// Proofs (`Page::proofs`) for `changes` as member `instance` can make them: a commit over the
/// writes stamped by that instance, signed with its credential key. Writes stamped by anyone
/// else get no proof (a member cannot sign for them). `None` for an instance not enrolled here.
pub fn sign_as(instance: &str, changes: &[fieldsync::store::RemoteChange]) -> Option<String> {
    let path = ENROLLED
        .lock()
        .unwrap()
        .iter()
        .find(|(id, _)| id == instance)
        .map(|(_, p)| p.clone())?;
    let cred: fieldsync::mesh::Credential =
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()?;
    let identity = fieldsync::tls::Identity::from_credential(&cred).ok()?;
    fieldsync::sync::signed::sign_own(&identity, changes).ok()
}

/// How long one CLI command may take before the test gives up on it.
pub const CMD_LIMIT: Duration = Duration::from_secs(60);

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fieldsync")
}

/// A child process that is killed when dropped (also when a test panics).
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A fieldsync command with a clean environment: no inherited data dir or plaintext switch.
pub fn command(dir: &Path) -> Command {
    // Every command but init/run/restore refuses a directory with no database: a fresh test
    // directory starts with `init`, as a user's does.
    if !dir.join("db").is_dir() {
        let o = Command::new(bin())
            .arg("--data-dir")
            .arg(dir)
            .args(["--json", "init"])
            .env_remove("FIELDSYNC_DIR")
            .stdin(Stdio::null())
            .output()
            .expect("run fieldsync init");
        assert!(
            o.status.success(),
            "init: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let mut c = Command::new(bin());
    c.arg("--data-dir")
        .arg(dir)
        .env_remove("FIELDSYNC_DIR")
        .env_remove("FIELDSYNC_INSECURE_PLAINTEXT")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null());
    c
}

/// Runs a command to completion, killing it after `limit`.
pub fn output_within(mut cmd: Command, limit: Duration) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = Proc(cmd.spawn().expect("spawn fieldsync"));
    let mut out = child.0.stdout.take().expect("stdout");
    let mut err = child.0.stderr.take().expect("stderr");
    let o = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let e = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.0.try_wait().expect("wait") {
            break s;
        }
        if Instant::now() > deadline {
            // What it and this test's agents were doing, before killing it loses that.
            let stacks = threads::dump(child.0.id());
            let agents = agents_now();
            let _ = child.0.kill();
            let _ = child.0.wait();
            let said = text(&e.join().unwrap_or_default());
            panic!(
                "{cmd:?} did not finish within {limit:?}\n--- its stderr:\n{}\n--- its threads:\n{stacks}\n{agents}",
                threads::tail(&said, 60)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        stdout: o.join().unwrap_or_default(),
        stderr: e.join().unwrap_or_default(),
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Polls `f` until it returns `Some`, for at most `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One laptop: a data directory (and a scratch directory beside it for files and logs).
pub struct Node {
    pub tmp: tempfile::TempDir,
    pub name: String,
}

impl Node {
    pub fn new(name: &str) -> Node {
        let tmp = tempfile::Builder::new()
            .prefix(&format!("fs-sec-{name}-"))
            .tempdir()
            .expect("tempdir");
        let n = Node {
            tmp,
            name: name.to_string(),
        };
        n.ok(&["init", "--name", name]);
        n
    }

    pub fn dir(&self) -> PathBuf {
        self.tmp.path().join("data")
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = command(&self.dir());
        c.args(args);
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        output_within(self.cmd(args), CMD_LIMIT)
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            o.status.success(),
            "{} {args:?} failed ({}): {}",
            self.name,
            o.status,
            text(&o.stderr)
        );
        text(&o.stdout)
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let o = self.run(args);
        assert!(
            !o.status.success(),
            "{} {args:?} should have failed but printed {}",
            self.name,
            text(&o.stdout)
        );
        text(&o.stderr)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        serde_json::from_str(self.ok(args).trim()).expect("JSON output")
    }

    pub fn id(&self) -> String {
        self.json(&["status"])["instance"]
            .as_str()
            .expect("instance id")
            .to_string()
    }

    pub fn status(&self) -> Value {
        self.json(&["status"])
    }

    pub fn put(&self, table: &str, fields: Value) -> String {
        let out = self.ok(&["put", table, &fields.to_string()]);
        let v: Value = serde_json::from_str(out.trim()).expect("put prints a JSON object");
        v["id"].as_str().expect("put prints its id").to_string()
    }

    /// `(count, sha256)` of the live records of `tables`.
    pub fn digest(&self, tables: &[&str]) -> (u64, String) {
        let mut args = vec!["digest"];
        args.extend_from_slice(tables);
        let d = self.json(&args);
        (
            d["count"].as_u64().expect("count"),
            d["sha256"].as_str().expect("sha").to_string(),
        )
    }

    /// Instance ids this laptop's deployment has revoked (`mesh show`).
    pub fn revoked(&self) -> Vec<String> {
        self.json(&["mesh", "show"])["revoked"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r["instance"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Creates a deployment with this laptop as its coordinator.
    pub fn create_mesh(&self, name: &str) {
        self.ok(&["mesh", "create", "--name", name]);
    }

    /// Enrolls a new laptop into this coordinator's deployment (credential carried as a file).
    pub fn enroll(&self, name: &str) -> Node {
        let node = Node::new(name);
        let cred = node.file("credential.fsmesh");
        let id = node.id();
        self.ok(&[
            "mesh",
            "enroll",
            "--out",
            cred.to_str().unwrap(),
            "--name",
            name,
            "--instance",
            &id,
        ]);
        node.ok(&["init", "--mesh", cred.to_str().unwrap()]);
        ENROLLED.lock().unwrap().push((id, cred));
        node
    }

    /// This laptop's credential (JSON with PEM `cert`, `key`, `ca_cert`).
    pub fn credential(&self) -> Value {
        let text =
            std::fs::read_to_string(self.dir().join("credential.fsmesh")).expect("credential file");
        serde_json::from_str(&text).expect("credential JSON")
    }

    /// Starts `fieldsync run` on 127.0.0.1 (any port), without discovery.
    pub fn start(&self, extra: &[&str]) -> Agent {
        self.start_with(extra, &[])
    }

    pub fn start_with(&self, extra: &[&str], env: &[(&str, &str)]) -> Agent {
        let log = self.file(&format!("agent-{}.log", unique()));
        let mut c = self.cmd(&["run", "--listen", "127.0.0.1:0", "--no-discovery"]);
        c.args(extra);
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).expect("log file"));
        let mut child = Proc(c.spawn().expect("spawn agent"));
        let out = child.0.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(out).lines();
            if let Some(Ok(l)) = lines.next() {
                let _ = tx.send(l);
            }
            // Keep draining so the agent never blocks on a full pipe.
            for _ in lines {}
        });
        let line = match rx.recv_timeout(CMD_LIMIT) {
            Ok(l) => l,
            Err(_) => panic!(
                "agent of {} did not print its listening line: {}",
                self.name,
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        let v: Value = serde_json::from_str(&line).expect("listening line is JSON");
        assert_eq!(v["event"], "listening", "{line}");
        let addr = v["listen"].as_str().expect("listen").to_string();
        AGENTS.with(|a| {
            a.borrow_mut()
                .push((self.name.clone(), child.0.id(), log.clone()))
        });
        let agent = Agent {
            proc: child,
            addr,
            log,
            dir: self.dir(),
        };
        // The control endpoint is up once agent.json exists; commands are forwarded from then.
        wait_for("agent.json", CMD_LIMIT, || {
            self.dir().join("agent.json").exists().then_some(())
        });
        agent
    }
}

thread_local! {
    /// The agents this test (thread) started and has not dropped: name, PID, log file.
    static AGENTS: std::cell::RefCell<Vec<(String, u32, PathBuf)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// This test's running agents, each with the end of its log and its threads' stacks: what a
/// command that hung was waiting for.
fn agents_now() -> String {
    AGENTS.with(|a| {
        a.borrow()
            .iter()
            .map(|(name, pid, log)| {
                let log = std::fs::read_to_string(log).unwrap_or_default();
                format!(
                    "--- agent of {name} (pid {pid}), its log's end:\n{}\n--- its threads:\n{}\n",
                    threads::tail(&log, 40),
                    threads::dump(*pid)
                )
            })
            .collect()
    })
}

fn unique() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u64
}

/// A running agent.
pub struct Agent {
    pub proc: Proc,
    pub addr: String,
    pub log: PathBuf,
    pub dir: PathBuf,
}

impl Drop for Agent {
    fn drop(&mut self) {
        let pid = self.proc.0.id();
        let _ = AGENTS.try_with(|a| a.borrow_mut().retain(|(_, p, _)| *p != pid));
    }
}

impl Agent {
    pub fn sock(&self) -> SocketAddr {
        self.addr.parse().expect("socket address")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `status.agent`, as the agent last published it.
    pub fn live(&self) -> Value {
        let o = output_within(
            {
                let mut c = command(&self.dir);
                c.arg("status");
                c
            },
            CMD_LIMIT,
        );
        assert!(o.status.success(), "status: {}", text(&o.stderr));
        let v: Value = serde_json::from_slice(&o.stdout).expect("status JSON");
        v["agent"].clone()
    }

    /// Waits until the agent's published counter `name` reaches `n`.
    pub fn wait_counter(&self, name: &str, n: u64) -> u64 {
        wait_for(&format!("agent.{name} >= {n}"), CMD_LIMIT, || {
            let v = self.live()[name].as_u64().unwrap_or(0);
            (v >= n).then_some(v)
        })
    }

    /// Log lines about connections from `ip`.
    pub fn log_lines_from(&self, ip: &str) -> Vec<String> {
        let needle = format!("peer={ip}:");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_string)
            .collect()
    }
}

/// A TCP connection to `dst` from the loopback address `src` (127.0.0.0/8 is all local), so
/// the agent sees it as another host: its per-address back-off then never touches the
/// legitimate peers, which connect from 127.0.0.1.
pub fn connect_from(src: &str, dst: SocketAddr) -> std::io::Result<TcpStream> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let s = rt.block_on(async {
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(format!("{src}:0").parse().expect("ip"))?;
        sock.connect(dst).await?.into_std()
    })?;
    s.set_nonblocking(false)?;
    Ok(s)
}

/// Relays connections to `target` from loopback address `src`: a CLI client pointed at the
/// relay reaches the agent as a host of its own.
pub struct Relay {
    pub addr: String,
    pub connections: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl Relay {
    pub fn new(target: SocketAddr, src: &'static str) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        let addr = l.local_addr().unwrap().to_string();
        l.set_nonblocking(true).unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (n, s) = (connections.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((client, _)) => {
                        client.set_nonblocking(false).unwrap();
                        let Ok(server) = connect_from(src, target) else {
                            continue;
                        };
                        n.fetch_add(1, Ordering::SeqCst);
                        pipe(client, server);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Relay {
            addr,
            connections,
            stop,
        }
    }

    pub fn count(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn pipe(a: TcpStream, b: TcpStream) {
    let (a2, b2) = (a.try_clone().unwrap(), b.try_clone().unwrap());
    std::thread::spawn(move || copy(a, b));
    std::thread::spawn(move || copy(b2, a2));
}

fn copy(mut from: TcpStream, mut to: TcpStream) {
    let _ = std::io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
}

/// A rustls client config from a credential: trusts its CA, presents its certificate unless
/// `anonymous`.
pub fn tls_client(cred: &Value, anonymous: bool) -> Arc<rustls::ClientConfig> {
    let pem = |k: &str| cred[k].as_str().expect("PEM field").as_bytes().to_vec();
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(&pem("ca_cert")).expect("CA PEM"))
        .expect("CA cert");
    let b = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("TLS 1.3")
    .with_root_certificates(roots);
    let cfg = if anonymous {
        b.with_no_client_auth()
    } else {
        let cert = CertificateDer::from_pem_slice(&pem("cert")).expect("cert PEM");
        let key = PrivateKeyDer::from_pem_slice(&pem("key")).expect("key PEM");
        b.with_client_auth_cert(vec![cert], key)
            .expect("client cert")
    };
    Arc::new(cfg)
}

/// One JSON-RPC call over a fresh TLS connection (from loopback address `src`); the JSON-RPC
/// response object, or why there is none.
pub fn rpc_tls(
    cfg: &Arc<rustls::ClientConfig>,
    src: &str,
    dst: SocketAddr,
    method: &str,
    params: &Value,
) -> Result<Value, String> {
    let tcp = connect_from(src, dst).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    tcp.set_write_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let name = ServerName::try_from("fieldsync.mesh").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    http_call(&mut tls, method, params)
}

/// One JSON-RPC call over a plain TCP connection.
pub fn rpc_plain(dst: SocketAddr, method: &str, params: &Value) -> Result<Value, String> {
    let mut tcp = TcpStream::connect(dst).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    http_call(&mut tcp, method, params)
}

/// One JSON-RPC call over a plain TCP connection to `path`, with extra header lines (each
/// ending in `\r\n`), e.g. the control endpoint's `Authorization: Bearer TOKEN`.
pub fn rpc_plain_with(
    dst: SocketAddr,
    path: &str,
    headers: &str,
    method: &str,
    params: &Value,
) -> Result<Value, String> {
    let mut tcp = TcpStream::connect(dst).map_err(|e| format!("connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    http_call_with(&mut tcp, path, headers, method, params)
}

fn http_call(s: &mut impl ReadWrite, method: &str, params: &Value) -> Result<Value, String> {
    http_call_with(s, "/", "", method, params)
}

fn http_call_with(
    s: &mut impl ReadWrite,
    path: &str,
    headers: &str,
    method: &str,
    params: &Value,
) -> Result<Value, String> {
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": [params]}).to_string();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: fieldsync.mesh\r\nContent-Type: application/json\r\n\
         {headers}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes())
        .and_then(|()| s.flush())
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        if let Some(v) = parse_response(&buf)? {
            return Ok(v);
        }
        match s.read(&mut chunk) {
            Ok(0) => return Err(format!("connection closed after {} bytes", buf.len())),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A complete HTTP response's JSON body, `None` while more bytes are needed.
fn parse_response(buf: &[u8]) -> Result<Option<Value>, String> {
    Ok(parse_response_head(buf)?.map(|(_, v)| v))
}

/// A complete HTTP response's head (lowercase) and JSON body, `None` while more bytes are
/// needed.
fn parse_response_head(buf: &[u8]) -> Result<Option<(String, Value)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = text(&buf[..end]).to_ascii_lowercase();
    let body = &buf[end + 4..];
    let body = if head.contains("transfer-encoding: chunked") {
        match dechunk(body) {
            Some(b) => b,
            None => return Ok(None),
        }
    } else {
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("no content-length in {head}"))?;
        if body.len() < len {
            return Ok(None);
        }
        body[..len].to_vec()
    };
    match serde_json::from_slice(&body) {
        Ok(v) => Ok(Some((head, v))),
        Err(e) => Err(format!(
            "bad JSON ({e}) in response {head}: {}",
            text(&body)
        )),
    }
}

/// One TLS connection kept open across JSON-RPC calls (HTTP/1.1 keep-alive), as an agent keeps
/// its connection to a peer between sessions.
pub struct KeepAlive(rustls::StreamOwned<rustls::ClientConnection, TcpStream>);

impl KeepAlive {
    /// Connects from 127.0.0.1 and completes the handshake.
    pub fn open(cfg: &Arc<rustls::ClientConfig>, dst: SocketAddr) -> Result<KeepAlive, String> {
        let tcp = TcpStream::connect(dst).map_err(|e| format!("connect: {e}"))?;
        tcp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        tcp.set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let name = ServerName::try_from("fieldsync.mesh").unwrap();
        let conn = rustls::ClientConnection::new(cfg.clone(), name).map_err(|e| e.to_string())?;
        Ok(KeepAlive(rustls::StreamOwned::new(conn, tcp)))
    }

    /// One call on this connection: the response's head (lowercase) and JSON-RPC object.
    pub fn call(&mut self, method: &str, params: &Value) -> Result<(String, Value), String> {
        let body =
            json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": [params]}).to_string();
        let req = format!(
            "POST / HTTP/1.1\r\nHost: fieldsync.mesh\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        self.0
            .write_all(req.as_bytes())
            .and_then(|()| self.0.flush())
            .map_err(|e| format!("write: {e}"))?;
        let mut buf = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            if let Some(r) = parse_response_head(&buf)? {
                return Ok(r);
            }
            match self.0.read(&mut chunk) {
                Ok(0) => return Err(format!("connection closed after {} bytes", buf.len())),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                Err(e) => return Err(format!("read: {e}")),
            }
        }
    }

    /// True once the server has closed the connection (end of stream or reset), within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.0.sock.set_read_timeout(Some(limit)).unwrap();
        let mut chunk = [0u8; 1024];
        match self.0.read(&mut chunk) {
            Ok(0) => true,
            Ok(_) => false,
            Err(e) => !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let nl = b.windows(2).position(|w| w == b"\r\n")?;
        let n = usize::from_str_radix(text(&b[..nl]).trim(), 16).ok()?;
        b = &b[nl + 2..];
        if n == 0 {
            return Some(out);
        }
        if b.len() < n + 2 {
            return None;
        }
        out.extend_from_slice(&b[..n]);
        b = &b[n + 2..];
    }
}

/// The JSON-RPC error code of a response, if it is an error.
pub fn error_code(resp: &Value) -> Option<i64> {
    resp["error"]["code"].as_i64()
}

/// A TLS connection as a member that has sent the headers of a `fieldsync_push` and one byte
/// of its body, and then nothing more (a slow-body client). `None` if the agent closed it.
pub fn trickling_member(
    cfg: &Arc<rustls::ClientConfig>,
    dst: SocketAddr,
) -> Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    // From its own address, as a stolen laptop on the network would be: the legitimate member
    // syncing meanwhile connects from 127.0.0.1.
    let tcp = connect_from("127.0.0.10", dst).ok()?;
    tcp.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    let name = ServerName::try_from("fieldsync.mesh").unwrap();
    let conn = rustls::ClientConnection::new(cfg.clone(), name).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let head = "POST / HTTP/1.1\r\nHost: fieldsync\r\nContent-Type: application/json\r\n\
                Content-Length: 100000\r\n\r\n{";
    tls.write_all(head.as_bytes()).ok()?;
    tls.flush().ok()?;
    Some(tls)
}

/// A hello as `instance` would send it, speaking the current protocol as incarnation
/// `incarnation`.
pub fn crafted_hello(instance: &str, incarnation: Uuid) -> Value {
    serde_json::to_value(Hello {
        protocol_min: protocol::MIN_PROTOCOL_VERSION,
        protocol_max: protocol::PROTOCOL_VERSION,
        peer: PeerInfo {
            instance: instance.parse().unwrap(),
            name: "crafted".into(),
            ..Default::default()
        },
        clock_ms: wall_millis(),
        head: 1,
        knowledge: Default::default(),
        knowledge_hash: None,
        peer_knowledge_hash: None,
        received_upto: None,
        nothing_past: None,
        encodings: vec![ENC_JSON.into()],
        local_only: vec![],
        tables: vec!["person".into()],
        incarnation: Some(fieldsync::model::Incarnation {
            id: incarnation,
            since: 1,
            parent: None,
        }),
    })
    .unwrap()
}

/// A record of `table` stamped as `writer`'s write, now plus `bump` clock units.
pub fn crafted_change(
    table: &str,
    id: Uuid,
    writer: &str,
    fields: Value,
    bump: u64,
) -> RemoteChange {
    let node: Uuid = writer.parse().unwrap();
    let at = Hlc {
        ts: ts_from_millis(wall_millis()) + bump,
        node,
    };
    let mut state = RecordState::default();
    for (k, v) in fields.as_object().unwrap() {
        state.fields.insert(
            k.clone(),
            FieldState {
                value: Some(v.clone()),
                stamp: at,
            },
        );
    }
    state.vv.insert(node, at.ts);
    RemoteChange {
        table: table.into(),
        id,
        state,
        conflicts: vec![],
        history: vec![],
    }
}
