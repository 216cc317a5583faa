//! `fieldsync.toml` in the data directory → a validated [`Config`] with defaults.
//!
//! Every setting is optional: a data directory with no config file runs on the defaults.
//! Unknown keys are rejected so a typo does not silently change nothing.

use crate::model::validate_table;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// File name of the config inside the data directory.
pub const CONFIG_FILE: &str = "fieldsync.toml";

/// Default TCP port of the sync agent.
pub const DEFAULT_PORT: u16 = 7437;

/// A config file that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// Path of the file.
        path: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// TOML syntax or an unknown/mistyped key.
    #[error("{path}: {message}")]
    Parse {
        /// Path of the file.
        path: String,
        /// What toml said.
        message: String,
    },
    /// A value that parses but makes no sense.
    #[error("{path}: {message}")]
    Invalid {
        /// Path of the file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    unique: Vec<String>,
    #[serde(default)]
    local_only: Vec<String>,
    #[serde(default)]
    sync: SyncConfig,
    #[serde(default)]
    discovery: DiscoveryConfig,
    #[serde(default)]
    snapshots: SnapshotConfig,
    #[serde(default)]
    api: ApiConfig,
    #[serde(default)]
    brake: BrakeConfig,
}

/// When an incoming batch of deletes is held for a person to decide (`[brake]`, with
/// per-table overrides under `[brake.tables.NAME]`; see `store/held.rs`).
///
/// A batch trips the brake for a table when it would delete more than `percent` % of the
/// table's live records *and* at least `min_records` of them.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrakeConfig {
    /// False turns the brake off for every table.
    pub enabled: bool,
    /// Share of a table's live records, in percent (0-100), that a batch may delete unheld.
    pub percent: u64,
    /// A batch deleting fewer records than this is never held.
    pub min_records: u64,
    /// Per-table overrides.
    pub tables: BTreeMap<String, BrakeRule>,
}

/// The brake's thresholds for one table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrakeRule {
    /// Share of the table's live records, in percent, that a batch may delete unheld.
    pub percent: u64,
    /// A batch deleting fewer records than this is never held.
    pub min_records: u64,
}

impl Default for BrakeConfig {
    fn default() -> Self {
        BrakeConfig {
            enabled: true,
            percent: 20,
            min_records: 50,
            tables: BTreeMap::new(),
        }
    }
}

impl BrakeConfig {
    /// The thresholds for `table` (its override, else the defaults).
    pub fn rule(&self, table: &str) -> BrakeRule {
        self.tables.get(table).copied().unwrap_or(BrakeRule {
            percent: self.percent,
            min_records: self.min_records,
        })
    }

    /// True if deleting `deletes` of `live` live records of `table` in one batch must be held.
    pub fn trips(&self, table: &str, deletes: u64, live: u64) -> bool {
        let r = self.rule(table);
        // Integer arithmetic: more than percent % of live, i.e. deletes*100 > percent*live.
        self.enabled
            && deletes >= r.min_records
            && u128::from(deletes) * 100 > u128::from(r.percent) * u128::from(live)
    }
}

/// Settings of the agent's automatic snapshots (`[snapshots]`; see `autosnapshot.rs`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Keep automatic snapshots while the agent runs.
    pub enabled: bool,
    /// Take one after this many changes (feed positions) since the last one.
    pub every_changes: u64,
    /// Otherwise take one this many seconds after the last, if anything changed.
    pub every_secs: u64,
    /// How many to keep (the oldest beyond this are removed after a new one is written).
    pub keep: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            every_changes: 1_000,
            every_secs: 3_600,
            keep: 3,
        }
    }
}

/// Settings of the HTTP API for local applications (`[api]`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Serve the API at all.
    pub enabled: bool,
    /// `IP:PORT` to serve it on; `None`: 127.0.0.1:7438, and a busy port is only a warning.
    /// Another interface than loopback only when set here explicitly.
    pub listen: Option<String>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: None,
        }
    }
}

/// Settings of mDNS discovery.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// Advertise and browse with mDNS.
    pub enabled: bool,
    /// Deployment id: agents with another one ignore each other.
    pub mesh: String,
    /// UDP port for mDNS (5353 on a real network; another port isolates test groups).
    pub mdns_port: u16,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mesh: "default".into(),
            mdns_port: 5353,
        }
    }
}

/// Default seconds between anti-entropy rounds with each online peer (`[sync]
/// anti_entropy_secs`): in sync, a round costs one session and one small reconcile request.
pub const DEFAULT_ANTI_ENTROPY_SECS: u64 = 600;

/// Settings of the sync protocol and agent.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SyncConfig {
    /// Address the agent listens on.
    pub listen: String,
    /// Static peers (`host:port`), for networks without multicast.
    pub peers: Vec<String>,
    /// Most records in one page of changes (default 1,000). The receiver applies a page as one
    /// sled batch, and sled keeps a copy of every leaf the batch changes until it ends: 2,000
    /// made the receiver of a 100,000-record sync peak 20–35 MB higher, at the same CPU time
    /// (bench/RESULTS.md, session 7).
    pub page_records: usize,
    /// Most bytes (encoded, before compression) in one page of changes.
    pub page_bytes: usize,
    /// Seconds between fallback syncs with every known peer.
    pub interval_secs: u64,
    /// Seconds between anti-entropy rounds with each online peer (a session, then set
    /// reconciliation that repairs whatever knowledge hid), jittered by ±20% so laptops do not
    /// all reconcile at once. 0 turns it off.
    pub anti_entropy_secs: u64,
    /// Tell every reachable peer right after local changes (debounced 200 ms), so it pulls at
    /// once. `false` leaves local changes to the periodic sync and to `fieldsync sync`; the
    /// sync benchmark sets it so that the sync it times is the one that moves the changes.
    pub notify: bool,
}

impl Default for SyncConfig {
    fn default() -> Self {
        Self {
            listen: format!("0.0.0.0:{DEFAULT_PORT}"),
            peers: Vec::new(),
            page_records: 1_000,
            page_bytes: 4 << 20,
            interval_secs: 60,
            anti_entropy_secs: DEFAULT_ANTI_ENTROPY_SECS,
            notify: true,
        }
    }
}

/// The validated configuration.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// Table → fields whose values should be unique across records (clashes are logged).
    pub unique: BTreeMap<String, BTreeSet<String>>,
    /// Tables that never leave this instance and are never accepted from peers.
    pub local_only: BTreeSet<String>,
    /// Sync settings.
    pub sync: SyncConfig,
    /// Discovery settings.
    pub discovery: DiscoveryConfig,
    /// Automatic snapshot settings.
    pub snapshots: SnapshotConfig,
    /// HTTP API settings.
    pub api: ApiConfig,
    /// Mass-delete brake thresholds.
    pub brake: BrakeConfig,
}

impl Config {
    /// Loads `fieldsync.toml` from `dir`, or the defaults when there is none.
    pub fn load(dir: &Path) -> Result<Config, ConfigError> {
        let path = dir.join(CONFIG_FILE);
        let shown = path.display().to_string();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Config::default()),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: shown,
                    source,
                })
            }
        };
        Self::parse(&text, &shown)
    }

    /// Parses config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            // toml's Display spans several lines with an excerpt; errors here are one line.
            let line = e
                .span()
                .map(|sp| text[..sp.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().trim().replace('\n', " ");
            ConfigError::Parse {
                path: origin.to_string(),
                message: match line {
                    Some(l) => format!("line {l}: {msg}"),
                    None => msg,
                },
            }
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: origin.to_string(),
            message,
        };
        let mut unique: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for entry in raw.unique {
            let (table, field) = entry
                .split_once('.')
                .filter(|(_, f)| !f.is_empty())
                .ok_or_else(|| invalid(format!("unique entry {entry:?} must be TABLE.FIELD")))?;
            validate_table(table).map_err(|e| invalid(format!("unique entry {entry:?}: {e}")))?;
            unique
                .entry(table.to_string())
                .or_default()
                .insert(field.to_string());
        }
        let mut local_only = BTreeSet::new();
        for t in raw.local_only {
            validate_table(&t).map_err(|e| invalid(format!("local_only: {e}")))?;
            local_only.insert(t);
        }
        if raw.sync.page_records == 0 || raw.sync.page_bytes < 1024 {
            return Err(invalid(
                "sync.page_records must be > 0 and sync.page_bytes >= 1024".into(),
            ));
        }
        let snap = &raw.snapshots;
        if snap.every_changes == 0 || snap.every_secs == 0 || snap.keep == 0 {
            return Err(invalid(
                "snapshots.every_changes, snapshots.every_secs and snapshots.keep must be > 0 \
                 (set snapshots.enabled = false to turn automatic snapshots off)"
                    .into(),
            ));
        }
        let brake_rules = std::iter::once(("brake".to_string(), raw.brake.percent)).chain(
            raw.brake
                .tables
                .iter()
                .map(|(t, r)| (format!("brake.tables.{t}"), r.percent)),
        );
        for (name, percent) in brake_rules {
            if percent > 100 {
                return Err(invalid(format!(
                    "{name}.percent is {percent}: use 0-100 (percent of a table's live records)"
                )));
            }
        }
        for t in raw.brake.tables.keys() {
            validate_table(t).map_err(|e| invalid(format!("brake.tables: {e}")))?;
        }
        Ok(Config {
            brake: raw.brake,
            unique,
            local_only,
            sync: raw.sync,
            discovery: raw.discovery,
            snapshots: raw.snapshots,
            api: raw.api,
        })
    }

    /// Unique fields declared for `table`.
    pub fn unique_fields(&self, table: &str) -> impl Iterator<Item = &String> {
        self.unique.get(table).into_iter().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_unique_and_local_only() {
        let c = Config::parse(
            "unique = [\"package.name\", \"person.ref\"]\nlocal_only = [\"settings\"]\n",
            "t",
        )
        .unwrap();
        assert!(c.unique["package"].contains("name"));
        assert!(c.local_only.contains("settings"));
        assert_eq!(c.sync.page_records, SyncConfig::default().page_records);
    }

    #[test]
    fn agents_notify_peers_of_local_changes_unless_turned_off() {
        assert!(Config::parse("", "t").unwrap().sync.notify);
        let c = Config::parse("[sync]\nnotify = false\n", "t").unwrap();
        assert!(!c.sync.notify);
    }

    #[test]
    fn automatic_snapshots_are_on_by_default_and_configurable() {
        let d = Config::parse("", "t").unwrap().snapshots;
        assert!(d.enabled);
        assert_eq!((d.every_changes, d.every_secs, d.keep), (1_000, 3_600, 3));
        let c = Config::parse(
            "[snapshots]\nenabled = false\nevery_changes = 50\nkeep = 5\n",
            "t",
        )
        .unwrap()
        .snapshots;
        assert!(!c.enabled);
        assert_eq!((c.every_changes, c.every_secs, c.keep), (50, 3_600, 5));
        let e = Config::parse("[snapshots]\nkeep = 0\n", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("snapshots.keep"), "{e}");
        assert!(Config::parse("[snapshots]\nevry = 1\n", "t").is_err());
    }

    #[test]
    fn the_brake_defaults_to_20_percent_and_50_records_and_is_set_per_table() {
        let c = Config::parse("", "t").unwrap();
        assert!(
            !c.brake.trips("person", 49, 100),
            "fewer than 50 never trips"
        );
        assert!(c.brake.trips("person", 50, 100));
        assert!(!c.brake.trips("person", 60, 300), "exactly 20% is allowed");
        assert!(c.brake.trips("person", 61, 300));
        let c = Config::parse(
            "[brake]\npercent = 50\n[brake.tables.person]\npercent = 5\nmin_records = 2\n",
            "t",
        )
        .unwrap();
        assert!(c.brake.trips("person", 2, 10));
        assert!(!c.brake.trips("family", 50, 100));
        assert!(c.brake.trips("family", 51, 100));
        let off = Config::parse("[brake]\nenabled = false\n", "t").unwrap();
        assert!(!off.brake.trips("person", 100, 100));
        let e = Config::parse("[brake]\npercent = 120\n", "t").unwrap_err();
        assert!(e.to_string().contains("brake.percent is 120"), "{e}");
    }

    #[test]
    fn rejects_typos_and_bad_entries() {
        let e = Config::parse("uniqe = []", "t").unwrap_err().to_string();
        assert!(e.contains("uniqe"), "{e}");
        let e = Config::parse("unique = [\"nodot\"]", "t")
            .unwrap_err()
            .to_string();
        assert!(e.contains("TABLE.FIELD"), "{e}");
        assert!(Config::parse("local_only = [\"Bad!\"]", "t").is_err());
    }
}
