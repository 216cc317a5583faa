//! The store side of signed commits (`crate::signed`): every batch of local edits records a
//! commit of this instance, and the commits of other instances learned from verified pages are
//! kept, so that any laptop can prove to the next one what it relays.
//!
//! | prefix | key after the prefix              | value (rmp-serde, named)                      |
//! |--------|-----------------------------------|-----------------------------------------------|
//! | `K`    | origin (16), hi (u64 BE)          | [`StoredCommit`]: `lo`, `n`, `root`, `sig` (empty until signed), `cert` (SHA-256 of the signing certificate's DER), `leaves` (`n` × 32 bytes, all-zero = not known here), `nodes` (subtree hashes learned from proofs: `[a, b, hash]`) |
//! | `S`    | origin (16), hi (u64 BE)          | [`CommitSignature`]: `sig`, `cert` of the `K` entry under the same key suffix, when that entry was written unsigned |
//! | `W`    | SHA-256 of the certificate (32)   | a member certificate (DER) that signed a commit held here (an instance enrolled again has several) |
//!
//! A commit of this instance is written in the batch of its edits, unsigned (the store holds no
//! key); the sync layer signs it the first time it is sent (`sync::signed`) and stores the
//! signature under `S` (about 110 bytes), so the `K` value, up to hundreds of kilobytes of leaf
//! hashes, is written once. Readers take `sig` and `cert` from the `K` value when they are
//! there (commits learned from peers, and own commits signed before `S` existed, which
//! rewrote the whole `K` value) and from `S` otherwise; a commit is unsigned when neither has
//! them. An older binary that finds an own `K` entry unsigned signs it again (a valid
//! signature too) and rewrites `K` as it always did. A store migrated
//! from format 3 gets one *legacy* commit (`lo` 0) over its own writes as they stand then, so
//! its older writes can be proved too once it has signed it (see `migrate_legacy_commit`).

use super::{decode, encode, keys, Store, StoreError};
use crate::signed::{self, Hash, LeafKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use uuid::Uuid;

pub(crate) const COMMIT: u8 = b'K';

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
}

impl StoredCommit {
    /// Builds a commit of `origin` over `leaves` (any order: they are sorted here).
    pub fn build(origin: Uuid, lo: u64, mut leaves: Vec<(LeafKey, Hash)>) -> Option<Self> {
        leaves.sort_by(|a, b| a.0.cmp(&b.0));
        // Sorted by stamp first: the first and last leaves hold the lowest and highest.
        let (first, last) = (leaves.first()?.0 .0, leaves.last()?.0 .0);
        // One array of hashes, which becomes `leaves` as it is (an import chunk's ~11,000
        // leaves make ~350 KB: a second copy was another mmap, page faults and munmap per
        // chunk on the import's critical path, bench/RESULTS.md).
        let mut hashes: Vec<Hash> = Vec::with_capacity(leaves.len());
        hashes.extend(leaves.iter().map(|l| l.1));
        drop(leaves);
        let root = signed::root(&hashes)?;
        Some(Self {
            origin,
            lo: lo.min(first),
            hi: last,
            n: hashes.len() as u32,
            root: root.to_vec(),
            sig: Vec::new(),
            cert: Vec::new(),
            leaves: hashes.into_flattened(),
            nodes: Vec::new(),
        })
    }

    /// The commit as stored under `K` (rmp-serde, named): the same bytes as `encode`, written
    /// into a buffer sized for the leaves at once instead of one doubled from empty (copies
    /// and page faults of up to ~350 KB per import chunk).
    pub(crate) fn encoded(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.leaves.len() + 256 + 40 * self.nodes.len());
        rmp_serde::encode::write_named(&mut v, self).expect("in-memory values always encode");
        v
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
                let c = self.with_signature(decode(&v)?)?;
                Ok((c.lo <= ts).then_some(c))
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

    /// Stores a commit (replacing the stored one of the same origin and `hi`).
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
    /// batch: headers new here are stored, known leaves and subtrees added.
    pub fn learn_commits(
        &self,
        learned: &[LearnedCommit],
        certs: &[Vec<u8>],
    ) -> Result<(), StoreError> {
        let started = std::time::Instant::now();
        let mut rewritten = 0usize;
        let mut batch = sled::Batch::default();
        for (header, leaves, nodes) in learned {
            let key = commit_key(&header.origin, header.hi);
            let held = self.tree().get(&key)?;
            let mut c = match &held {
                Some(v) => self.with_signature(decode::<StoredCommit>(v)?)?,
                None => header.clone(),
            };
            if c.root != header.root || c.n != header.n {
                // Another commit under the same stamp: only its origin could sign both; keep
                // the first.
                continue;
            }
            let before = c.clone();
            if c.sig.is_empty() {
                c.sig = header.sig.clone();
                c.cert = header.cert.clone();
            }
            c.learn(leaves, nodes);
            // Own writes coming back, or a page already learned: nothing to rewrite.
            if c != before || held.is_none() {
                rewritten += 1;
                batch.insert(key, encode(&c));
            }
        }
        for der in certs {
            let key = cert_key(&signed::cert_hash(der));
            if !self.tree().contains_key(&key)? {
                batch.insert(key, der.clone());
            }
        }
        self.tree().apply_batch(batch)?;
        tracing::debug!(
            commits = learned.len(),
            rewritten,
            ms = started.elapsed().as_millis() as u64,
            "commits learned"
        );
        Ok(())
    }

    /// The member certificate (DER) whose SHA-256 is `hash`, if held here.
    pub fn member_cert(&self, hash: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.tree().get(cert_key(hash))?.map(|v| v.to_vec()))
    }

    /// Every member certificate held here (DER), in key order: the certificates that signed
    /// commits this laptop holds.
    pub fn member_certs(&self) -> Result<Vec<Vec<u8>>, StoreError> {
        self.tree()
            .scan_prefix([CERT])
            .map(|kv| Ok(kv?.1.to_vec()))
            .collect()
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

    #[test]
    fn a_built_commit_stores_the_bytes_encode_would_and_spans_its_lowest_to_highest_stamp() {
        let id = Uuid::new_v4();
        let leaf = |ts: u64, field: &str, b: u8| -> (LeafKey, Hash) {
            ((ts, "person".into(), id, b's', field.into()), [b; 32])
        };
        // Out of order, as a batch of remote and local edits may hand them over.
        let leaves = vec![
            leaf(7, "b", 2),
            leaf(3, "a", 1),
            leaf(9, "c", 3),
            leaf(7, "a", 4),
        ];
        let mut c = StoredCommit::build(id, u64::MAX, leaves).unwrap();
        assert_eq!((c.lo, c.hi, c.n), (3, 9, 4));
        assert_eq!(c.leaf(0), Some([1; 32]));
        assert_eq!(c.leaf(1), Some([4; 32]), "(7, a) sorts before (7, b)");
        assert_eq!(
            c.root_hash(),
            signed::root(&[[1; 32], [4; 32], [2; 32], [3; 32]]).unwrap()
        );
        assert_eq!(
            StoredCommit::build(id, 5, vec![leaf(8, "a", 1)])
                .unwrap()
                .lo,
            5
        );
        assert!(StoredCommit::build(id, 0, Vec::new()).is_none());
        c.nodes.push((0, 2, [5; 32]));
        c.sig = vec![6; 64];
        assert_eq!(c.encoded(), encode(&c));
        assert_eq!(decode::<StoredCommit>(&c.encoded()).unwrap(), c);
    }
}
