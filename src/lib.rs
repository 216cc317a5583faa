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
//! - [`gen`]: deterministic test and benchmark data (records and op files, gen.py's format).
//! - [`cli`]: the command line (clap definitions and command bodies).

#![deny(unreachable_pub)]

pub mod cli;
pub mod clock;
pub mod config;
pub mod formats;
pub mod gen;
pub mod merge;
pub mod model;
pub mod store;
