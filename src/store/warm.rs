//! Reading ahead for an incoming page: the stored versions of its records, read once in key
//! order before the page's turn to merge (see `sync::responder`), so that the merge under the
//! writer lock finds their sled leaves in the cache instead of reading each from disk in the
//! page's (random) order. Reads only; the merge reads every record again from its batch.

use super::{keys, Store};
use uuid::Uuid;

impl Store {
    /// Reads the stored version of each record once, in key order, and drops it: sled keeps
    /// the leaves it read (present or not: an absent key's leaf is where the merge will write
    /// it) in its cache. Errors are ignored: the merge reads again and reports them.
    pub fn warm_records<'a>(&self, records: impl Iterator<Item = (&'a str, &'a Uuid)>) {
        let mut wanted: Vec<Vec<u8>> = records
            .map(|(table, id)| keys::record(&keys::record_suffix(table, id)))
            .collect();
        wanted.sort_unstable();
        wanted.dedup();
        let tree = self.tree();
        for k in wanted {
            let _ = tree.get(k);
        }
    }
}
