//! The hybrid logical clock (HLC) that stamps every change.
//!
//! A stamp is `(ts, node)`: `ts` packs wall-clock milliseconds in the high 48 bits and a logical
//! counter in the low 16, `node` is the writing instance. Stamps are totally ordered by
//! `(ts, node)`, so "latest HLC, ties by instance id" is just `max`. The clock never goes
//! backwards and always moves past every stamp it has observed from peers, so an edit made after
//! receiving a change orders after that change even when this laptop's wall clock is wrong.

use chrono::{DateTime, TimeZone, Utc};
use serde::{Deserialize, Serialize};
use std::fmt;
use uuid::Uuid;

/// Bits of `ts` that hold the logical counter.
const LOGICAL_BITS: u32 = 16;

/// One hybrid-logical-clock stamp: unique per event across all instances.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch << 16 | logical counter.
    #[serde(rename = "ts")]
    pub ts: u64,
    /// The instance that made the stamp.
    #[serde(rename = "node")]
    pub node: Uuid,
}

impl Hlc {
    /// The wall-clock part in milliseconds since the epoch.
    pub fn millis(&self) -> u64 {
        self.ts >> LOGICAL_BITS
    }

    /// The wall-clock part as a UTC time (for display).
    pub fn time(&self) -> DateTime<Utc> {
        millis_to_time(self.millis())
    }

    /// 24 bytes, big-endian `ts` then the node id: sorts like the stamp itself.
    pub fn to_key_bytes(&self) -> [u8; 24] {
        let mut out = [0u8; 24];
        out[..8].copy_from_slice(&self.ts.to_be_bytes());
        out[8..].copy_from_slice(self.node.as_bytes());
        out
    }
}

impl fmt::Display for Hlc {
    /// `2026-11-24T14:00:00.123Z#0003@<node>`: readable and still totally ordered per node.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}#{:04}@{}",
            self.time().format("%Y-%m-%dT%H:%M:%S%.3fZ"),
            self.ts & ((1 << LOGICAL_BITS) - 1),
            self.node
        )
    }
}

/// Converts epoch milliseconds to a UTC time, clamping out-of-range values.
pub fn millis_to_time(ms: u64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms.min(i64::MAX as u64) as i64)
        .single()
        .unwrap_or_default()
}

/// The current wall clock in epoch milliseconds.
pub fn wall_millis() -> u64 {
    Utc::now().timestamp_millis().max(0) as u64
}

/// Packs wall-clock milliseconds into the `ts` layout (logical counter 0).
pub fn ts_from_millis(ms: u64) -> u64 {
    ms << LOGICAL_BITS
}

/// A node's clock: strictly increasing, never behind wall time or anything observed.
#[derive(Clone, Debug)]
pub struct Clock {
    node: Uuid,
    last: u64,
}

impl Clock {
    /// A clock for `node` that resumes after `last` (persisted by the store).
    pub fn new(node: Uuid, last: u64) -> Self {
        Self { node, last }
    }

    /// The last `ts` handed out or observed.
    pub fn last(&self) -> u64 {
        self.last
    }

    /// A fresh stamp, given the wall clock in milliseconds (a parameter so tests are exact).
    pub fn tick(&mut self, wall_ms: u64) -> Hlc {
        self.last = (self.last + 1).max(ts_from_millis(wall_ms));
        Hlc {
            ts: self.last,
            node: self.node,
        }
    }

    /// Moves the clock past a stamp seen from a peer, so later local stamps order after it.
    pub fn observe(&mut self, ts: u64) {
        self.last = self.last.max(ts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_strictly_increasing_even_when_wall_clock_goes_back() {
        let mut c = Clock::new(Uuid::nil(), 0);
        let a = c.tick(1_000);
        let b = c.tick(900); // wall clock stepped back
        let d = c.tick(900);
        assert!(a < b && b < d);
        assert_eq!(b.millis(), 1_000);
    }

    #[test]
    fn observing_a_future_stamp_moves_local_stamps_past_it() {
        let mut c = Clock::new(Uuid::nil(), 0);
        let remote = ts_from_millis(5_000_000) + 7;
        c.observe(remote);
        assert!(c.tick(1_000).ts > remote);
    }

    #[test]
    fn stamps_order_by_time_then_node() {
        let lo = Uuid::from_u128(1);
        let hi = Uuid::from_u128(2);
        let a = Hlc { ts: 10, node: hi };
        let b = Hlc { ts: 11, node: lo };
        let c = Hlc { ts: 11, node: hi };
        assert!(a < b && b < c);
        assert!(a.to_key_bytes() < b.to_key_bytes() && b.to_key_bytes() < c.to_key_bytes());
    }
}
