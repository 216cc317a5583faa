//! fieldsync: a peer-to-peer record sync agent for laptops in the field.
//!
//! Each laptop keeps its own database of records; when two laptops share a network they exchange
//! what changed since they last met, in both directions, without losing an edit and without
//! resurrecting what someone deleted. ARCHITECTURE.md is the map; this is the module list.
//!
//! # Layout
//! - [`clock`]: the hybrid logical clock that stamps every change.
//! - [`model`]: plain data (records, fields, replicated state) and input validation.
//! - [`merge`]: the merge rules, pure functions with no I/O.
//! - [`store`]: the sled database: records, feed, history, conflicts, peers; atomic batches.
//! - [`config`]: `fieldsync.toml` → validated settings.
//! - [`formats`]: JSONL/CSV import and export, the canonical digest.
//! - [`mesh`]: deployment CA, credentials, join files, signed revocations.
//! - [`tls`]: rustls configs for mutual TLS within a deployment.
//! - [`protocol`]: the JSON-RPC wire contract, its server (accept loop) and client.
//! - [`sync`]: one sync session with a peer (initiator and responder), and `verify`.
//! - [`progress`]: progress of sync sessions in flight (records, bytes, rate, time left).
//! - [`discovery`]: mDNS advertise/browse → peer events.
//! - [`app`]: the application layer: one typed function per operation, for every door.
//! - [`agent`]: the daemon: sync server, control endpoint, triggers, shutdown.
//! - [`control`]: the local control endpoint the CLI uses while an agent holds the database.
//! - [`http`]: the HTTP API for local applications (axum, OpenAPI by utoipa).
//! - [`gen`]: deterministic test and benchmark data (records and op files, gen.py's format).
//! - [`cli`]: the command line: clap definitions, and command bodies by group that call [`app`].
//! - [`build_info`]: version, git commit and build date fixed at build time.
//! - [`backup`]: `backup`/`restore`: the whole database in one file.
//! - [`doctor`]: `doctor`: checks that this laptop can sync, with fixes.

#![deny(unreachable_pub)]

pub mod agent;
pub mod app;
pub mod backup;
pub mod build_info;
pub mod cli;
pub mod clock;
pub mod config;
pub mod control;
pub mod discovery;
pub mod doctor;
pub mod formats;
#[doc(hidden)]
pub mod fuzzing;
pub mod gen;
pub mod http;
pub mod merge;
pub mod mesh;
pub mod model;
pub mod progress;
pub mod protocol;
pub mod store;
pub mod sync;
pub mod tls;
