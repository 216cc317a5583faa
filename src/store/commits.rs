//! The store side of signed commits (`crate::signed`): every batch of local edits records a
//! commit of this instance, and the commits of other instances learned from verified pages are
//! kept, so that any laptop can prove to the next one what it relays.
//!
//! | prefix | key after the prefix              | value (rmp-serde, named)                      |
//! |--------|-----------------------------------|-----------------------------------------------|
//! | `K`    | origin (16), hi (u64 BE)          | [`StoredCommit`]: `lo`, `n`, `root`, `sig` (empty until signed), `cert` (SHA-256 of the signing certificate's DER), `leaves` (format ≤ 6 only: `n` × 32 bytes, all-zero = not known here; empty when `chunked`), `nodes` (subtree hashes learned from proofs: `[a, b, hash]`), `chunked` (true: the leaves are the `L` entries; absent = false) |
//! | `L`    | origin (16), hi (u64 BE), chunk (u32 BE) | raw leaf hashes of a `chunked` commit: leaves `chunk × 128 ..` up to 128 of them (the last chunk shorter), 32 bytes each, all-zero = not known here; an absent chunk knows none (format ≥ 7) |
//! | `S`    | origin (16), hi (u64 BE)          | [`CommitSignature`]: `sig`, `cert` of the `K` entry under the same key suffix, when that entry was written unsigned |
//! | `W`    | SHA-256 of the certificate (32)   | a member certificate (DER) that signed a commit held here (an instance enrolled again has several) |
//!
//! A commit of this instance is written in the batch of its edits, unsigned (the store holds no
//! key); the sync layer signs it the first time it is sent (`sync::signed`) and stores the
//! signature under `S` (about 110 bytes), so the `K` value, up to hundreds of kilobytes of leaf
//! hashes, is written once. Readers take `sig` and `cert` from the `K` value when they are
//! there (commits learned from peers, and own commits signed before `S` existed, which
//! rewrote the whole `K` value) and from `S` otherwise; a commit is unsigned when neither has
//! them.
//!
//! Leaves in chunks (format 7): a commit learned from peers keeps its leaf hashes in `L`
//! entries of 128 leaves (4 KiB) beside its `K` header, so a verified page that teaches a
//! relayed commit some leaves writes only the chunks they fall in (and the small header when
//! its signature or subtree hashes are new), in the page's own batch (`stage_learned`, called
//! by `commit_page_learning`): a crash leaves a page's records and what it taught together or
//! neither. Before, each page re-decoded and rewrote the whole `K` value (hundreds of
//! kilobytes, written by sled as a blob file of its own), 2–3 times per commit in an initial
//! sync. An own commit is written once, whole, with its edits, and stays inline in its `K`
//! value (chunking it only cost disk: bench/RESULTS.md session 7), as does a `K` value of an
//! older format; the first page that teaches an inline commit something moves it to chunks.
//! Proofs built from either layout are the same bytes: readers assemble the leaves into one
//! [`StoredCommit`] ([`Store::commit_covering`]). An older binary that finds an own `K` entry unsigned signs it again (a valid
//! signature too) and rewrites `K` as it always did. A store migrated
//! from format 3 gets one *legacy* commit (`lo` 0) over its own writes as they stand then, so
//! its older writes can be proved too once it has signed it (see `migrate_legacy_commit`).

use super::txn::Txn;
use super::{decode, encode, keys, Store, StoreError};
use crate::signed::{self, Hash, LeafKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

pub(crate) const COMMIT: u8 = b'K';
/// Leaf chunks of a chunked commit (see the module doc).
pub(crate) const LEAVES: u8 = b'L';
/// Leaves per `L` chunk: 4 KiB of hashes. sled 0.34 keeps up to 17 keys in a tree leaf and
/// writes a leaf node serialized over ~128 KiB as a blob file of its own, rewritten whole at
/// each consolidation: with 1,024 leaves (32 KiB) a node of adjacent chunks became a blob and
/// a learned commit took more disk than inline (measured, bench/RESULTS.md session 7); 17 × 4
/// KiB stays well under.
pub const CHUNK_LEAVES: u32 = 128;

/// What a verified page taught about one commit: its header (with signature and certificate
/// hash), leaves at their indices, and subtree hashes from the range proof.
pub type LearnedCommit = (StoredCommit, Vec<(u32, Hash)>, Vec<signed::Subtree>);
pub(crate) const CERT: u8 = b'W';
pub(crate) const SIGNATURE: u8 = b'S';

/// The signature of an own commit written unsigned (`S` entries; see the module doc).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitSignature {
    /// See [`StoredCommit::sig`].
    #[serde(rename = "sig", with = "crate::signed::serde_bytes")]
    pub sig: Vec<u8>,
    /// See [`StoredCommit::cert`].
    #[serde(rename = "cert", with = "crate::signed::serde_bytes")]
    pub cert: Vec<u8>,
}

/// One commit as this store knows it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoredCommit {
    /// The instance that made it.
    #[serde(rename = "origin")]
    pub origin: Uuid,
    /// Lowest stamp ts of its writes (0 for a legacy commit).
    #[serde(rename = "lo")]
    pub lo: u64,
    /// Highest stamp ts of its writes.
    #[serde(rename = "hi")]
    pub hi: u64,
    /// Number of leaves.
    #[serde(rename = "n")]
    pub n: u32,
    /// Merkle root over the leaves.
    #[serde(rename = "root", with = "crate::signed::serde_bytes")]
    pub root: Vec<u8>,
    /// The origin's signature of [`signed::signed_message`] (ECDSA P-256, fixed 64 bytes);
    /// empty while an own commit is not signed yet.
    #[serde(rename = "sig", with = "crate::signed::serde_bytes")]
    pub sig: Vec<u8>,
    /// SHA-256 of the DER of the certificate whose key made `sig` (an instance enrolled again
    /// signs later commits with another key); empty while unsigned.
    #[serde(rename = "cert", default, with = "crate::signed::serde_bytes")]
    pub cert: Vec<u8>,
    /// `n` leaf hashes of 32 bytes; all zero where not known here.
    #[serde(rename = "leaves", with = "crate::signed::serde_bytes")]
    pub leaves: Vec<u8>,
    /// Subtree hashes learned from proofs: (first leaf, end leaf, hash).
    #[serde(rename = "nodes")]
    pub nodes: Vec<(u32, u32, Hash)>,
    /// As stored: the leaves are in `L` chunks, not in `leaves` (format ≥ 7). Readers of this
    /// module fill `leaves` from the chunks, so elsewhere it only tells where they came from.
    #[serde(
        rename = "chunked",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub chunked: bool,
}

impl StoredCommit {
    /// Builds a commit of `origin` over `leaves` (any order: they are sorted here).
    pub fn build(origin: Uuid, lo: u64, mut leaves: Vec<(LeafKey, Hash)>) -> Option<Self> {
        leaves.sort_by(|a, b| a.0.cmp(&b.0));
        let hashes: Vec<Hash> = leaves.iter().map(|l| l.1).collect();
        let root = signed::root(&hashes)?;
        let hi = leaves.iter().map(|l| l.0 .0).max()?;
        Some(Self {
            origin,
            lo: lo.min(leaves.iter().map(|l| l.0 .0).min()?),
            hi,
            n: hashes.len() as u32,
            root: root.to_vec(),
            sig: Vec::new(),
            cert: Vec::new(),
            leaves: hashes.concat(),
            nodes: Vec::new(),
            chunked: false,
        })
    }

    /// The root as a hash.
    pub fn root_hash(&self) -> Hash {
        let mut h = [0u8; 32];
        if self.root.len() == 32 {
            h.copy_from_slice(&self.root);
        }
        h
    }

    /// Leaf `i`'s hash, if known here.
    pub fn leaf(&self, i: u32) -> Option<Hash> {
        let s = self.leaves.get(i as usize * 32..i as usize * 32 + 32)?;
        let mut h = [0u8; 32];
        h.copy_from_slice(s);
        (h != [0u8; 32]).then_some(h)
    }

    /// Index of every known leaf by its hash.
    pub fn index(&self) -> HashMap<Hash, u32> {
        (0..self.n)
            .filter_map(|i| self.leaf(i).map(|h| (h, i)))
            .collect()
    }

    /// The hash of the subtree over leaves `a..b`, from the known leaves and nodes.
    pub fn subtree(&self, a: u32, b: u32, nodes: &HashMap<(u32, u32), Hash>) -> Option<Hash> {
        signed::subtree_hash(a, b, &|i| self.leaf(i), nodes)
    }

    /// Adds what a verified proof taught (leaf hashes at indices, subtree hashes).
    pub fn learn(&mut self, leaves: &[(u32, Hash)], nodes: &[(u32, u32, Hash)]) {
        if self.leaves.len() != self.n as usize * 32 {
            self.leaves = vec![0u8; self.n as usize * 32];
        }
        for (i, h) in leaves {
            if *i < self.n {
                self.leaves[*i as usize * 32..*i as usize * 32 + 32].copy_from_slice(h);
            }
        }
        let have: std::collections::HashSet<(u32, u32)> =
            self.nodes.iter().map(|(a, b, _)| (*a, *b)).collect();
        for (a, b, h) in nodes {
            // A subtree whose leaves are all known adds nothing.
            if !have.contains(&(*a, *b)) && (*a..*b).any(|i| self.leaf(i).is_none()) {
                self.nodes.push((*a, *b, *h));
            }
        }
    }
}

pub(crate) fn commit_key(origin: &Uuid, hi: u64) -> Vec<u8> {
    keys::with_prefix(COMMIT, &[origin.as_bytes(), &hi.to_be_bytes()])
}

fn chunk_key(origin: &Uuid, hi: u64, chunk: u32) -> Vec<u8> {
    keys::with_prefix(
        LEAVES,
        &[origin.as_bytes(), &hi.to_be_bytes(), &chunk.to_be_bytes()],
    )
}

/// Leaves in chunk `i` of a commit of `n` leaves, as a range of leaf indices.
fn chunk_range(n: u32, i: u32) -> std::ops::Range<u32> {
    let a = i.saturating_mul(CHUNK_LEAVES).min(n);
    a..a.saturating_add(CHUNK_LEAVES).min(n)
}

/// The leaves of a stored commit being taught more (`stage_learned`): chunks loaded on demand
/// from the batch (which reads its own earlier writes), changed ones written back.
struct ChunkedLeaves {
    origin: Uuid,
    hi: u64,
    n: u32,
    /// An older-format `K` value's inline leaves: written out as chunks on the first change.
    inline: Option<Vec<u8>>,
    /// Loaded chunks: (hashes, changed).
    chunks: HashMap<u32, (Vec<u8>, bool)>,
}

impl ChunkedLeaves {
    fn chunk(&mut self, txn: &Txn<'_>, i: u32) -> Result<&mut (Vec<u8>, bool), StoreError> {
        if !self.chunks.contains_key(&i) {
            let r = chunk_range(self.n, i);
            let len = (r.end - r.start) as usize * 32;
            let mut v = match &self.inline {
                Some(all) => all
                    .get(r.start as usize * 32..r.end as usize * 32)
                    .map(<[u8]>::to_vec)
                    .unwrap_or_default(),
                None => txn
                    .get(&chunk_key(&self.origin, self.hi, i))?
                    .unwrap_or_default(),
            };
            v.resize(len, 0);
            self.chunks.insert(i, (v, false));
        }
        Ok(self.chunks.get_mut(&i).expect("inserted above"))
    }

    fn leaf(&mut self, txn: &Txn<'_>, i: u32) -> Result<Option<Hash>, StoreError> {
        if i >= self.n {
            return Ok(None);
        }
        let at = (i % CHUNK_LEAVES) as usize * 32;
        let (v, _) = self.chunk(txn, i / CHUNK_LEAVES)?;
        let h: Hash = v[at..at + 32].try_into().expect("32 bytes");
        Ok((h != [0u8; 32]).then_some(h))
    }

    /// Sets leaf `i`; true if that changed it.
    fn set(&mut self, txn: &Txn<'_>, i: u32, h: &Hash) -> Result<bool, StoreError> {
        if i >= self.n {
            return Ok(false);
        }
        let at = (i % CHUNK_LEAVES) as usize * 32;
        let (v, changed) = self.chunk(txn, i / CHUNK_LEAVES)?;
        if v[at..at + 32] == h[..] {
            return Ok(false);
        }
        v[at..at + 32].copy_from_slice(h);
        *changed = true;
        Ok(true)
    }

    /// Writes the changed chunks (every known chunk when the commit was inline until now).
    fn write(mut self, txn: &mut Txn<'_>) -> Result<usize, StoreError> {
        if self.inline.is_some() {
            for i in 0..self.n.div_ceil(CHUNK_LEAVES) {
                let (v, changed) = self.chunk(txn, i)?;
                *changed |= v.iter().any(|b| *b != 0);
            }
        }
        let mut written = 0;
        for (i, (v, changed)) in self.chunks {
            if changed {
                written += v.len();
                txn.put(chunk_key(&self.origin, self.hi, i), v);
            }
        }
        Ok(written)
    }
}

/// Adds what verified pages taught about commits (and their origins' certificates) to `txn`:
/// headers new here are stored, known leaves and subtrees added; only the leaf chunks that
/// changed are written (see the module doc). Returns (commits written, bytes of leaves
/// written).
pub(crate) fn stage_learned(
    txn: &mut Txn<'_>,
    learned: &[LearnedCommit],
    certs: &[Vec<u8>],
) -> Result<(usize, usize), StoreError> {
    let (mut rewritten, mut bytes) = (0usize, 0usize);
    for (header, leaves, nodes) in learned {
        let key = commit_key(&header.origin, header.hi);
        let held = txn.get(&key)?;
        let mut c = match &held {
            Some(v) => {
                let mut c: StoredCommit = decode(v)?;
                if c.sig.is_empty() {
                    if let Some(v) = txn.get(&signature_key(&c.origin, c.hi))? {
                        let s: CommitSignature = decode(&v)?;
                        c.sig = s.sig;
                        c.cert = s.cert;
                    }
                }
                c
            }
            None => StoredCommit {
                leaves: Vec::new(),
                nodes: Vec::new(),
                chunked: true,
                ..header.clone()
            },
        };
        if c.root != header.root || c.n != header.n {
            // Another commit under the same stamp: only its origin could sign both; keep
            // the first.
            continue;
        }
        let mut changed = held.is_none();
        if c.sig.is_empty() {
            c.sig = header.sig.clone();
            c.cert = header.cert.clone();
            changed = true;
        }
        let inline = (!c.chunked).then(|| std::mem::take(&mut c.leaves));
        let mut all = ChunkedLeaves {
            origin: c.origin,
            hi: c.hi,
            n: c.n,
            inline,
            chunks: HashMap::new(),
        };
        let mut leaves_changed = false;
        for (i, h) in leaves {
            leaves_changed |= all.set(txn, *i, h)?;
        }
        let have: std::collections::HashSet<(u32, u32)> =
            c.nodes.iter().map(|(a, b, _)| (*a, *b)).collect();
        for (a, b, h) in nodes {
            if have.contains(&(*a, *b)) {
                continue;
            }
            // A subtree whose leaves are all known adds nothing.
            let mut unknown = false;
            for i in *a..*b {
                if all.leaf(txn, i)?.is_none() {
                    unknown = true;
                    break;
                }
            }
            if unknown {
                c.nodes.push((*a, *b, *h));
                changed = true;
            }
        }
        // Own writes coming back, or a page already learned: nothing to rewrite.
        if !changed && !leaves_changed {
            continue;
        }
        rewritten += 1;
        let was_inline = all.inline.is_some();
        bytes += all.write(txn)?;
        if changed || was_inline {
            c.chunked = true;
            c.leaves = Vec::new();
            txn.put(key, encode(&c));
        }
    }
    for der in certs {
        let key = cert_key(&signed::cert_hash(der));
        if txn.get(&key)?.is_none() {
            txn.put(key, der.clone());
        }
    }
    Ok((rewritten, bytes))
}

fn signature_key(origin: &Uuid, hi: u64) -> Vec<u8> {
    keys::with_prefix(SIGNATURE, &[origin.as_bytes(), &hi.to_be_bytes()])
}

fn cert_key(hash: &[u8]) -> Vec<u8> {
    keys::with_prefix(CERT, &[hash])
}

impl Store {
    /// The commit of `origin` whose stamp range holds `ts`, if this store knows one.
    pub fn commit_covering(
        &self,
        origin: &Uuid,
        ts: u64,
    ) -> Result<Option<StoredCommit>, StoreError> {
        let end = keys::with_prefix(COMMIT, &[origin.as_bytes(), &u64::MAX.to_be_bytes()]);
        let mut it = self.tree().range(commit_key(origin, ts)..=end);
        match it.next() {
            Some(kv) => {
                let (_, v) = kv?;
                let c: StoredCommit = decode(&v)?;
                if c.lo > ts {
                    return Ok(None);
                }
                let c = self.with_leaves(self.with_signature(c)?)?;
                Ok(Some(c))
            }
            None => Ok(None),
        }
    }

    /// `c` as stored under `K`, with its signature from `S` if the `K` value has none.
    fn with_signature(&self, mut c: StoredCommit) -> Result<StoredCommit, StoreError> {
        if c.sig.is_empty() {
            if let Some(v) = self.tree().get(signature_key(&c.origin, c.hi))? {
                let s: CommitSignature = decode(&v)?;
                c.sig = s.sig;
                c.cert = s.cert;
            }
        }
        Ok(c)
    }

    /// `c` as stored under `K`, with its leaves from its `L` chunks when it is chunked.
    fn with_leaves(&self, mut c: StoredCommit) -> Result<StoredCommit, StoreError> {
        if !c.chunked {
            return Ok(c);
        }
        let mut leaves = vec![0u8; c.n as usize * 32];
        for i in 0..c.n.div_ceil(CHUNK_LEAVES) {
            if let Some(v) = self.tree().get(chunk_key(&c.origin, c.hi, i))? {
                let r = chunk_range(c.n, i);
                let dst = &mut leaves[r.start as usize * 32..r.end as usize * 32];
                let len = v.len().min(dst.len());
                dst[..len].copy_from_slice(&v[..len]);
            }
        }
        c.leaves = leaves;
        Ok(c)
    }

    /// Stores a commit in the layout of format ≤ 6 (all leaves inline in the `K` value,
    /// replacing the stored one of the same origin and `hi`): what older builds wrote, for
    /// tests of reading it.
    pub fn put_commit(&self, c: &StoredCommit) -> Result<(), StoreError> {
        self.tree().insert(commit_key(&c.origin, c.hi), encode(c))?;
        Ok(())
    }

    /// Stores the signature of the held commit `c` (`c.sig`, `c.cert`) and the certificate
    /// `der` that made it, in one batch, without rewriting the commit's leaves (the `S` entry,
    /// see the module doc).
    pub fn put_commit_signature(&self, c: &StoredCommit, der: &[u8]) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        let key = cert_key(&signed::cert_hash(der));
        if !self.tree().contains_key(&key)? {
            batch.insert(key, der);
        }
        let s = CommitSignature {
            sig: c.sig.clone(),
            cert: c.cert.clone(),
        };
        batch.insert(signature_key(&c.origin, c.hi), encode(&s));
        self.tree().apply_batch(batch)?;
        Ok(())
    }

    /// Merges what verified pages taught about commits (and their origins' certificates) in one
    /// batch of their own (see [`stage_learned`]; a received page does it in its own batch,
    /// `commit_page_learning`).
    pub fn learn_commits(
        &self,
        learned: &[LearnedCommit],
        certs: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let _writer = self.lock();
        let mut txn = Txn::new(self.tree());
        stage_learned(&mut txn, learned, certs)?;
        txn.commit()
    }

    /// The member certificate (DER) whose SHA-256 is `hash`, if held here.
    pub fn member_cert(&self, hash: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree().get(cert_key(hash))?.map(|v| v.to_vec()))
    }

    /// Keeps a member certificate (this laptop's own, once it signed a commit with it).
    pub fn put_member_cert(&self, der: &[u8]) -> Result<(), StoreError> {
        let key = cert_key(&signed::cert_hash(der));
        if !self.tree().contains_key(&key)? {
            self.tree().insert(key, der)?;
        }
        Ok(())
    }
}

/// The format-4 → 5 migration: one commit of this instance over its own writes as they stand
/// (stamp range `0..=clock`), unsigned until the sync layer first sends it. Other instances'
/// older writes are proved once their own stores have migrated and signed theirs.
pub(crate) fn migrate_legacy_commit(
    tree: &sled::Tree,
    batch: &mut sled::Batch,
) -> Result<(), StoreError> {
    let Some(info) = tree.get(keys::meta("instance"))? else {
        return Ok(());
    };
    let me = decode::<super::InstanceInfo>(&info)?.id;
    let mut leaves = Vec::new();
    for kv in super::fingerprint::raw_records(tree) {
        let (k, v) = kv?;
        let Some((table, id)) = keys::parse_record_suffix(&k[1..]) else {
            continue;
        };
        let rec = super::write::decode_record(&v)?;
        for (stamp, key, h) in signed::all_leaves(&table, &id, &rec.state) {
            if stamp.node == me {
                leaves.push((key, h));
            }
        }
    }
    if let Some(c) = StoredCommit::build(me, 0, leaves) {
        batch.insert(commit_key(&me, c.hi), encode(&c));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The first page of everything this store would send a new peer.
    fn all_outgoing(s: &Store) -> crate::store::OutgoingPage {
        s.outgoing(
            0,
            1000,
            1 << 24,
            &Default::default(),
            &Default::default(),
            None,
        )
        .unwrap()
    }
    use crate::config::Config;
    use crate::store::LocalOp;
    use serde_json::json;

    fn put(s: &Store, rows: &[(Uuid, serde_json::Value)]) {
        let ops: Vec<LocalOp> = rows
            .iter()
            .map(|(id, f)| LocalOp {
                table: "person".into(),
                id: *id,
                edit: crate::merge::Edit::Put(f.as_object().unwrap().clone()),
            })
            .collect();
        s.write_local(&ops).unwrap();
    }

    fn reopen(dir: &std::path::Path) -> Store {
        (0..100)
            .find_map(|_| match Store::open(dir, Config::default()) {
                Err(StoreError::Locked(_)) => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    None
                }
                other => Some(other.unwrap()),
            })
            .expect("the dropped store released its lock within 2 s")
    }

    /// Every leaf of `s`'s records written by `origin` is in a commit of `origin` whose root
    /// matches its leaves; returns how many leaves were checked.
    fn every_own_leaf_is_committed(s: &Store, origin: Uuid) -> usize {
        let mut n = 0;
        for kv in super::super::fingerprint::raw_records(&s.tree()) {
            let (k, v) = kv.unwrap();
            let (table, id) = keys::parse_record_suffix(&k[1..]).unwrap();
            let rec = super::super::write::decode_record(&v).unwrap();
            for (stamp, _, h) in signed::all_leaves(&table, &id, &rec.state) {
                if stamp.node != origin {
                    continue;
                }
                let c = s
                    .commit_covering(&origin, stamp.ts)
                    .unwrap()
                    .expect("a commit");
                assert!(c.index().contains_key(&h), "leaf of {id} missing");
                let leaves: Vec<Hash> = (0..c.n).map(|i| c.leaf(i).unwrap()).collect();
                assert_eq!(signed::root(&leaves).unwrap(), c.root_hash());
                n += 1;
            }
        }
        n
    }

    #[test]
    fn each_write_batch_is_one_commit_over_exactly_its_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::default()).unwrap();
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        put(
            &s,
            &[
                (a, json!({"name": "x", "age": 1})),
                (b, json!({"name": "y"})),
            ],
        );
        put(&s, &[(a, json!({"name": "x2"}))]);
        // Second batch: "name" set, "age" removed; the first batch's commit keeps 3 leaves.
        let me = s.id();
        assert_eq!(every_own_leaf_is_committed(&s, me), 3);
        let rec = s.get("person", &a).unwrap().unwrap();
        let c = s
            .commit_covering(&me, rec.state.fields["name"].stamp.ts)
            .unwrap()
            .unwrap();
        assert_eq!(c.n, 2, "the second batch wrote name and removed age");
        assert!(c.sig.is_empty(), "signed when first sent, not here");
    }

    #[test]
    fn a_format_3_store_gets_one_legacy_commit_over_its_own_writes() {
        let dir = tempfile::tempdir().unwrap();
        let me = {
            let s = Store::open(dir.path(), Config::default()).unwrap();
            put(&s, &[(Uuid::new_v4(), json!({"name": "old"}))]);
            put(&s, &[(Uuid::new_v4(), json!({"name": "older", "age": 3}))]);
            // A peer's write held here: its own store proves it, not ours.
            let peer = Uuid::new_v4();
            let mut state = crate::model::RecordState::default();
            let at = crate::clock::Hlc {
                ts: 5 << 16,
                node: peer,
            };
            state.fields.insert(
                "name".into(),
                crate::model::FieldState {
                    value: Some(json!("theirs")),
                    stamp: at,
                },
            );
            state.vv.insert(peer, at.ts);
            s.apply_remote(
                Some(peer),
                &[crate::change::RemoteChange {
                    table: "person".into(),
                    id: Uuid::new_v4(),
                    state,
                    ..Default::default()
                }],
            )
            .unwrap();
            // As format 3 left it: no commits.
            for k in s.tree().scan_prefix([COMMIT]).keys() {
                s.tree().remove(k.unwrap()).unwrap();
            }
            s.tree()
                .insert(keys::meta("format"), encode(&3u32))
                .unwrap();
            s.tree().flush().unwrap();
            s.id()
        };
        let s = reopen(dir.path());
        assert_eq!(
            super::super::recovery::stored_format(&s.tree()).unwrap(),
            super::super::recovery::FORMAT_VERSION
        );
        assert_eq!(every_own_leaf_is_committed(&s, me), 3);
        let commits: Vec<StoredCommit> = s
            .tree()
            .scan_prefix([COMMIT])
            .values()
            .map(|v| decode(&v.unwrap()).unwrap())
            .collect();
        assert_eq!(commits.len(), 1, "one legacy commit");
        assert_eq!((commits[0].lo, commits[0].origin, commits[0].n), (0, me, 3));
    }

    /// A member identity for `s`'s instance in a fresh test deployment.
    fn identity_for(s: &Store) -> crate::tls::Identity {
        let ca = crate::mesh::CaFile::create("Commits").unwrap();
        crate::tls::Identity::from_credential(&ca.enroll(s.id(), "a").unwrap()).unwrap()
    }

    fn raw(s: &Store, key: &[u8]) -> Option<Vec<u8>> {
        s.tree().get(key).unwrap().map(|v| v.to_vec())
    }

    #[test]
    fn signing_an_own_commit_stores_the_signature_beside_it_without_rewriting_its_leaves() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::default()).unwrap();
        let rows: Vec<(Uuid, serde_json::Value)> = (0..50)
            .map(|i| (Uuid::new_v4(), json!({"name": format!("p{i}"), "age": i})))
            .collect();
        put(&s, &rows);
        let me = s.id();
        let (key, unsigned) = {
            let (k, v) = s.tree().scan_prefix([COMMIT]).next().unwrap().unwrap();
            (k.to_vec(), v.to_vec())
        };
        let hi = decode::<StoredCommit>(&unsigned).unwrap().hi;
        assert!(raw(&s, &signature_key(&me, hi)).is_none());
        let id = identity_for(&s);
        let out = all_outgoing(&s);
        crate::sync::signed::proofs_with(&s, &id, &out.changes).unwrap();
        // The leaves are as the edits wrote them; the signature is its own small entry.
        assert_eq!(
            raw(&s, &key).unwrap(),
            unsigned,
            "the K value was rewritten"
        );
        let sig = raw(&s, &signature_key(&me, hi)).expect("an S entry");
        assert!(sig.len() < 200, "{} bytes for a signature", sig.len());
        let c = s.commit_covering(&me, hi).unwrap().unwrap();
        let msg = signed::signed_message(&me, c.lo, c.hi, c.n, &c.root_hash());
        let (_, key_der) = id.member_key(&id.cert_der()).unwrap();
        assert!(crate::tls::verify_signature(&key_der, &msg, &c.sig));
        assert_eq!(c.cert, signed::cert_hash(&id.cert_der()).to_vec());
        assert!(s.member_cert(&c.cert).unwrap().is_some());
        // Sent again: signed once (the same signature, nothing rewritten).
        crate::sync::signed::proofs_with(&s, &id, &out.changes).unwrap();
        assert_eq!(raw(&s, &signature_key(&me, hi)).unwrap(), sig);
        // The commit coming back from a peer that learned it rewrites nothing either.
        let back = (
            StoredCommit {
                leaves: Vec::new(),
                nodes: Vec::new(),
                ..c.clone()
            },
            (0..c.n)
                .map(|i| (i, c.leaf(i).unwrap()))
                .collect::<Vec<_>>(),
            Vec::new(),
        );
        s.learn_commits(&[back], &[]).unwrap();
        assert_eq!(raw(&s, &key).unwrap(), unsigned);
    }

    #[test]
    fn a_commit_signed_in_place_by_an_older_build_still_reads_as_signed() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(dir.path(), Config::default()).unwrap();
        put(&s, &[(Uuid::new_v4(), json!({"name": "old"}))]);
        // Older builds wrote the leaves inline (format ≤ 6).
        to_inline_layout(&s);
        let me = s.id();
        let v = s
            .tree()
            .scan_prefix([COMMIT])
            .values()
            .next()
            .unwrap()
            .unwrap();
        let mut c: StoredCommit = decode(&v).unwrap();
        let id = identity_for(&s);
        // What builds before the `S` entry did: the whole commit rewritten with its signature.
        c.sig = id
            .sign(&signed::signed_message(
                &me,
                c.lo,
                c.hi,
                c.n,
                &c.root_hash(),
            ))
            .unwrap();
        c.cert = signed::cert_hash(&id.cert_der()).to_vec();
        s.put_commit(&c).unwrap();
        s.put_member_cert(&id.cert_der()).unwrap();
        assert_eq!(s.commit_covering(&me, c.hi).unwrap().unwrap(), c);
        let out = all_outgoing(&s);
        let proofs = crate::sync::signed::proofs_with(&s, &id, &out.changes).unwrap();
        // Not signed again: no `S` entry, and the page carries the stored signature.
        assert!(raw(&s, &signature_key(&me, c.hi)).is_none());
        let p = crate::sync::signed::decode(&proofs).unwrap();
        assert_eq!(p.commits[0].sig.0, c.sig);
    }

    /// gen.py-like records as puts (about a dozen fields, so ~12 leaves each).
    fn gen_ops(count: u64, seed: u64) -> Vec<LocalOp> {
        crate::gen::record_lines(count, seed)
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(&l).unwrap();
                LocalOp {
                    table: v["table"].as_str().unwrap().into(),
                    id: v["id"].as_str().unwrap().parse().unwrap(),
                    edit: crate::merge::Edit::Put(v["fields"].as_object().unwrap().clone()),
                }
            })
            .collect()
    }

    /// Three members of one deployment, each with its own store.
    struct Trio {
        _dirs: Vec<tempfile::TempDir>,
        stores: Vec<Store>,
        ids: Vec<std::sync::Arc<crate::tls::Identity>>,
    }

    fn trio() -> Trio {
        let ca = crate::mesh::CaFile::create("Chunks").unwrap();
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let stores: Vec<Store> = dirs
            .iter()
            .map(|d| Store::open(d.path(), Config::default()).unwrap())
            .collect();
        let ids = stores
            .iter()
            .map(|s| {
                std::sync::Arc::new(
                    crate::tls::Identity::from_credential(&ca.enroll(s.id(), "x").unwrap())
                        .unwrap(),
                )
            })
            .collect();
        Trio {
            _dirs: dirs,
            stores,
            ids,
        }
    }

    fn tls(id: &std::sync::Arc<crate::tls::Identity>) -> crate::tls::Transport {
        crate::tls::Transport::Tls {
            identity: id.clone(),
            revoked: Default::default(),
        }
    }

    /// One page of `from`'s feed after `since` (at most `limit` records) with its proofs.
    fn page_of(
        from: &Store,
        id: &crate::tls::Identity,
        since: u64,
        limit: usize,
    ) -> (crate::store::OutgoingPage, String) {
        let out = from
            .outgoing(
                since,
                limit,
                1 << 24,
                &Default::default(),
                &Default::default(),
                None,
            )
            .unwrap();
        let p = crate::sync::signed::proofs_with(from, id, &out.changes).unwrap();
        (out, p)
    }

    /// Checks a page as receiver `to` (transport `t`) and commits it there with what it taught,
    /// in one batch; returns the page's records.
    fn receive(
        to: &Store,
        t: &crate::tls::Transport,
        from: Uuid,
        out: &crate::store::OutgoingPage,
        proofs: &str,
        since: u64,
    ) -> Result<usize, crate::store::CommitError> {
        let mut changes = out.changes.clone();
        let (bad, learned) = crate::sync::signed::check(t, Some(proofs), &mut changes).unwrap();
        assert_eq!(bad, 0, "records quarantined");
        to.commit_page_learning(
            crate::store::PageCommit {
                peer: from,
                changes: &changes,
                since,
                next: out.next,
                more: out.more,
                knowledge: None,
                ends_session: false,
            },
            &learned.0,
            &learned.1,
        )?;
        Ok(changes.len())
    }

    /// Keys and commits of `origin` held by `s`, as stored (`K` values decoded).
    fn stored_commits(s: &Store, origin: Uuid) -> Vec<StoredCommit> {
        s.tree()
            .scan_prefix([&[COMMIT][..], origin.as_bytes()].concat())
            .values()
            .map(|v| decode(&v.unwrap()).unwrap())
            .collect()
    }

    fn chunk_count(s: &Store, c: &StoredCommit) -> usize {
        s.tree()
            .scan_prefix([&[LEAVES][..], c.origin.as_bytes(), &c.hi.to_be_bytes()].concat())
            .count()
    }

    /// Rewrites every commit `s` holds in the layout of format 6 (leaves inline in `K`).
    fn to_inline_layout(s: &Store) {
        let headers: Vec<StoredCommit> = s
            .tree()
            .scan_prefix([COMMIT])
            .values()
            .map(|v| decode(&v.unwrap()).unwrap())
            .collect();
        for h in headers {
            let mut c = s.with_leaves(h).unwrap();
            c.chunked = false;
            for k in s
                .tree()
                .scan_prefix([&[LEAVES][..], c.origin.as_bytes(), &c.hi.to_be_bytes()].concat())
                .keys()
            {
                s.tree().remove(k.unwrap()).unwrap();
            }
            s.put_commit(&c).unwrap();
        }
        assert_eq!(s.tree().scan_prefix([LEAVES]).count(), 0);
    }

    #[test]
    fn a_page_writes_only_the_leaf_chunks_it_taught_and_a_relay_proves_the_same_bytes_from_chunks_as_from_inline_commits(
    ) {
        let t = trio();
        let (a, b, c) = (&t.stores[0], &t.stores[1], &t.stores[2]);
        // One commit of 1,000 records (~12,000 leaves, ~90 chunks) on A.
        a.write_local(&gen_ops(1_000, 42)).unwrap();
        let own = stored_commits(a, a.id());
        assert_eq!(own.len(), 1);
        // An own commit is written once, whole, with its edits: inline.
        assert!(!own[0].chunked && own[0].leaves.len() == own[0].n as usize * 32);
        let chunks = own[0].n.div_ceil(CHUNK_LEAVES) as usize;
        assert!(chunks >= 60, "{} leaves", own[0].n);
        // B takes the first 600 records in pages of 150: the first page teaches (and writes)
        // only the chunks its leaves fall in.
        b.update_peer(&a.id(), |_| {}).unwrap();
        let tb = tls(&t.ids[1]);
        let mut since = 0;
        for k in 0..4 {
            let (out, p) = page_of(a, &t.ids[0], since, 150);
            assert_eq!(receive(b, &tb, a.id(), &out, &p, since).unwrap(), 150);
            since = out.next;
            let held = stored_commits(b, a.id());
            assert_eq!(held.len(), 1);
            assert!(held[0].chunked && held[0].leaves.is_empty());
            let written = chunk_count(b, &held[0]);
            if k == 0 {
                assert!(
                    written * 4 <= chunks,
                    "{written} of {chunks} chunks after 150 records"
                );
            }
        }
        assert!(chunk_count(b, &stored_commits(b, a.id())[0]) < chunks);
        // What B knows equals A's leaves where known.
        let (on_a, on_b) = (
            a.commit_covering(&a.id(), own[0].hi).unwrap().unwrap(),
            b.commit_covering(&a.id(), own[0].hi).unwrap().unwrap(),
        );
        assert_eq!(
            (on_b.root.clone(), on_b.sig.clone()),
            (on_a.root.clone(), on_a.sig.clone())
        );
        let known = (0..on_b.n).filter(|i| on_b.leaf(*i).is_some()).count();
        assert!(
            known > 0 && known < on_a.n as usize,
            "{known} leaves known on B"
        );
        for i in 0..on_b.n {
            if let Some(h) = on_b.leaf(i) {
                assert_eq!(Some(h), on_a.leaf(i));
            }
        }
        assert!(
            !on_b.nodes.is_empty(),
            "a partly known commit keeps subtree hashes"
        );
        // B relays its 600 records to C in pages of 200 (part of A's commit: proofs use the
        // subtree hashes B learned). The proofs from chunks are byte for byte those from the
        // same commit stored inline, and C verifies them.
        let tc = tls(&t.ids[2]);
        c.update_peer(&b.id(), |_| {}).unwrap();
        let mut pages = Vec::new();
        let mut since = 0;
        for _ in 0..10 {
            let (out, p) = page_of(b, &t.ids[1], since, 200);
            since = out.next;
            let more = out.more;
            pages.push((out, p));
            if !more {
                break;
            }
        }
        assert_eq!(pages.iter().map(|p| p.0.changes.len()).sum::<usize>(), 600);
        to_inline_layout(b);
        let mut since = 0;
        for (out, chunked) in &pages {
            let inline = crate::sync::signed::proofs_with(b, &t.ids[1], &out.changes).unwrap();
            assert_eq!(&inline, chunked, "proofs differ between layouts");
            assert_eq!(
                receive(c, &tc, b.id(), out, chunked, since).unwrap(),
                out.changes.len()
            );
            since = out.next;
        }
        assert_eq!(
            crate::formats::digest(c, &["person".to_string()]).unwrap(),
            crate::formats::digest(b, &["person".to_string()]).unwrap()
        );
        // B's inline commit moves to chunks the first time a page teaches it more, and then
        // holds exactly A's leaves.
        let mut since = b.peer(&a.id()).unwrap().unwrap().received_upto;
        for _ in 0..10 {
            let (out, p) = page_of(a, &t.ids[0], since, 300);
            receive(b, &tb, a.id(), &out, &p, since).unwrap();
            since = out.next;
            if !out.more {
                break;
            }
        }
        let held = stored_commits(b, a.id());
        assert!(held[0].chunked && held[0].leaves.is_empty());
        let on_b = b.commit_covering(&a.id(), own[0].hi).unwrap().unwrap();
        assert_eq!(on_b.leaves, on_a.leaves);
        // A's own commit coming back learned from B rewrites nothing on A.
        let before: Vec<(sled::IVec, sled::IVec)> = a.tree().iter().map(|kv| kv.unwrap()).collect();
        a.update_peer(&b.id(), |_| {}).unwrap();
        let before_commits: Vec<_> = before
            .iter()
            .filter(|(k, _)| k[0] == COMMIT || k[0] == LEAVES)
            .cloned()
            .collect();
        let (out, p) = page_of(b, &t.ids[1], 0, 2_000);
        receive(a, &tls(&t.ids[0]), b.id(), &out, &p, 0).unwrap();
        let after_commits: Vec<_> = a
            .tree()
            .iter()
            .map(|kv| kv.unwrap())
            .filter(|(k, _)| k[0] == COMMIT || k[0] == LEAVES)
            .collect();
        assert_eq!(after_commits, before_commits);
    }

    #[test]
    fn a_refused_page_teaches_nothing_and_an_accepted_one_keeps_its_leaves_with_its_records() {
        let t = trio();
        let (a, b) = (&t.stores[0], &t.stores[1]);
        a.write_local(&gen_ops(300, 7)).unwrap();
        let tb = tls(&t.ids[1]);
        let (out, p) = page_of(a, &t.ids[0], 0, 100);
        // Unknown sender, then a gap: refused, and neither records nor commits are written.
        assert!(matches!(
            receive(b, &tb, a.id(), &out, &p, 0),
            Err(crate::store::CommitError::UnknownPeer(_))
        ));
        b.update_peer(&a.id(), |_| {}).unwrap();
        assert!(matches!(
            receive(b, &tb, a.id(), &out, &p, 5),
            Err(crate::store::CommitError::Gap { .. })
        ));
        let commit_keys = |s: &Store| {
            s.tree().scan_prefix([COMMIT]).count() + s.tree().scan_prefix([LEAVES]).count()
        };
        assert_eq!(commit_keys(b), 0);
        assert_eq!(
            crate::formats::digest(b, &["person".to_string()])
                .unwrap()
                .0,
            0
        );
        // Accepted: the page's records and what it taught arrive together, and the next page's
        // proof (which needs no more than what the first one taught) verifies on a third
        // laptop relayed from B.
        receive(b, &tb, a.id(), &out, &p, 0).unwrap();
        assert!(commit_keys(b) >= 2);
        assert_eq!(
            crate::formats::digest(b, &["person".to_string()])
                .unwrap()
                .0,
            100
        );
        let (c, tc) = (&t.stores[2], tls(&t.ids[2]));
        c.update_peer(&b.id(), |_| {}).unwrap();
        let (relay, rp) = page_of(b, &t.ids[1], 0, 1_000);
        assert_eq!(receive(c, &tc, b.id(), &relay, &rp, 0).unwrap(), 100);
    }

    #[test]
    fn a_format_6_store_with_inline_commits_opens_and_its_writes_still_prove() {
        let dir = tempfile::tempdir().unwrap();
        let t = trio();
        let ca_id = {
            let s = Store::open(dir.path(), Config::default()).unwrap();
            s.write_local(&gen_ops(200, 3)).unwrap();
            // As format 6 left it: the commit's leaves inline in its `K` value.
            to_inline_layout(&s);
            s.tree()
                .insert(keys::meta("format"), encode(&6u32))
                .unwrap();
            s.tree().flush().unwrap();
            s.id()
        };
        let s = reopen(dir.path());
        assert_eq!(
            super::super::recovery::stored_format(&s.tree()).unwrap(),
            super::super::recovery::FORMAT_VERSION
        );
        let held = stored_commits(&s, ca_id);
        assert!(
            !held[0].chunked && !held[0].leaves.is_empty(),
            "read as it is, not rewritten"
        );
        assert_eq!(every_own_leaf_is_committed(&s, ca_id), held[0].n as usize);
        // Its writes prove to a member of its deployment, which stores them chunked.
        let ca = crate::mesh::CaFile::create("Old").unwrap();
        let id = std::sync::Arc::new(
            crate::tls::Identity::from_credential(&ca.enroll(s.id(), "old").unwrap()).unwrap(),
        );
        let r = &t.stores[1];
        let rid = std::sync::Arc::new(
            crate::tls::Identity::from_credential(&ca.enroll(r.id(), "r").unwrap()).unwrap(),
        );
        r.update_peer(&s.id(), |_| {}).unwrap();
        let (out, p) = page_of(&s, &id, 0, 1_000);
        assert_eq!(receive(r, &tls(&rid), s.id(), &out, &p, 0).unwrap(), 200);
        let learned = stored_commits(r, s.id());
        assert!(learned[0].chunked);
        assert_eq!(
            r.commit_covering(&s.id(), learned[0].hi)
                .unwrap()
                .unwrap()
                .leaves,
            s.commit_covering(&s.id(), learned[0].hi)
                .unwrap()
                .unwrap()
                .leaves
        );
    }
}
