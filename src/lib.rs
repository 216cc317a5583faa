//! fieldsync: a peer-to-peer record sync agent for laptops in the field.
//!
//! Each laptop keeps its own database of records; when two laptops share a network they exchange
//! what changed since they last met, in both directions, without losing an edit and without
//! resurrecting what someone deleted. ARCHITECTURE.md is the map; this is the module list.
//!
//! # Layout
//! - [`clock`]: the hybrid logical clock that stamps every change.
//! - [`model`]: plain data (records, fields, replicated state) and input validation.
//! - [`merge`]: the merge rules, pure functions with no I/O (conflict rules in `merge::conflicts`).
//! - [`change`]: what replicates: a record's state as sent to a peer, reported conflicts, counts.
//! - [`canonical`]: canonical JSON for digests and signatures.
//! - [`store`]: the sled database: records, feed, history, conflicts, peers; atomic batches.
//! - [`config`]: `fieldsync.toml` → validated settings.
//! - [`formats`]: JSONL/CSV export, op files, the canonical digest.
//! - [`import`]: `import`: CSV, JSONL and spreadsheets into a table by id or natural key, all
//!   or nothing in bounded memory.
//! - [`mesh`]: deployment CA, credentials, join files, signed revocations.
//! - [`tls`]: rustls configs for mutual TLS within a deployment.
//! - [`protocol`]: the JSON-RPC wire contract, its server (accept loop) and client.
//! - [`sync`]: sync sessions: the initiator loop over a `Peer`, the responder, the one receive
//!   path for pages, revocation admission, `verify`.
//! - [`presence`]: which peers are online (in memory: discovery, sessions, recent contact).
//! - [`progress`]: progress of sync sessions in flight (records, bytes, rate, time left).
//! - [`discovery`]: mDNS advertise/browse → peer events.
//! - [`app`]: the application layer: one typed function per operation, for every door.
//! - [`agent`]: the daemon: sync server, control endpoint, triggers, shutdown.
//! - [`control`]: the local control endpoint the CLI uses while an agent holds the database.
//! - [`control_gate`]: the control endpoint's door: token header before the body, body limits,
//!   per-connection deadline.
//! - [`http`]: the HTTP API for local applications (axum, OpenAPI by utoipa).
//! - [`gen`]: deterministic test and benchmark data (records and op files, gen.py's format).
//! - [`cli`]: the command line: clap definitions, and command bodies by group that call [`app`].
//! - [`build_info`]: version, git commit and build date fixed at build time.
//! - [`bundle`]: the USB bundle file: header, encrypted pages, signature.
//! - [`backup`]: `backup`/`restore`: the whole database in one file.
//! - [`fsutil`]: atomic, owner-only file writes (token and credential files).
//! - [`doctor`]: `doctor`: checks that this laptop can sync, with fixes.
//! - [`autosnapshot`]: the agent's rolling automatic snapshots in the data directory.
//! - [`repair`]: `repair`: replace a damaged database by the newest automatic snapshot.
//! - [`allocator`]: jemalloc, tuned, as the binary's and the benchmark's global allocator.

#![deny(unreachable_pub)]

pub mod agent;
pub mod allocator;
pub mod app;
pub mod autosnapshot;
pub mod backup;
pub mod backup_keys;
pub mod build_info;
pub mod bundle;
pub mod canonical;
pub mod change;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod control_gate;
pub mod discovery;
pub mod doctor;
pub mod formats;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod gen;
pub mod http;
pub mod import;
pub mod logfmt;
pub mod merge;
pub mod mesh;
pub mod model;
pub mod presence;
pub mod progress;
pub mod protocol;
pub mod reopen;
pub mod repair;
pub mod signed;
pub mod store;
pub mod sync;
pub mod tls;
