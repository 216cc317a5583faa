//! Signed commits: how a write is attributed to the instance that made it (issue #18 item 4).
//! Pure: hashing, the Merkle tree, range proofs and the signed message; no I/O, no keys.
//!
//! Every local write transaction (one store batch of local edits: a put, a batch, an import
//! chunk) is a *commit* of its instance: the leaves are the field values, removals and deletes
//! it wrote, each hashed with the record, the field and the write's stamp ([`leaf_hash`]), in
//! [`LeafKey`] order; the Merkle root over them is signed by the instance's credential key.
//! Because each local edit takes its own clock tick, a commit covers a stamp range `lo..=hi` of
//! its instance and a receiver finds the commit of a field by its stamp alone.
//!
//! A page carries, per commit it draws on, the signed header once and a *range proof* for the
//! leaves it holds: the indices of those leaves and the hashes of the maximal subtrees holding
//! none of them ([`prove`], [`root_of`]); for a contiguous run that is at most two hashes per
//! tree level. A relay that re-forms pages builds such proofs from the leaf and subtree hashes
//! it received, so it can pass on another laptop's writes but cannot invent or alter one: the
//! root would not match the signed one.
//!
//! | item          | bytes hashed (SHA-256)                                                    |
//! |---------------|---------------------------------------------------------------------------|
//! | leaf          | `0x00`, "fsleaf1", ts (u64 BE), node (16), table, 0x00, id (16), kind (`s` set, `r` removed, `d` delete), field, 0x00, canonical JSON of the value (set only) |
//! | inner node    | `0x01`, left hash (32), right hash (32)                                   |
//! | signed header | "fieldsync commit v1", 0x00, origin (16), lo (u64 BE), hi (u64 BE), n (u32 BE), root (32) |
//!
//! The tree is RFC 6962's: a range of `n > 1` leaves splits at the largest power of two below
//! `n`; a single leaf's hash is its node hash.

use crate::canonical::canonical_json;
use crate::clock::Hlc;
use crate::model::RecordState;
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// A SHA-256 hash.
pub type Hash = [u8; 32];

/// A subtree of a commit's tree: (first leaf, end leaf, hash).
pub type Subtree = (u32, u32, Hash);

/// Where a leaf sorts in its commit: stamp ts, table, id, kind, field. Each local edit has its
/// own ts, so this is a total order that the receiver can rebuild from the data it holds.
pub type LeafKey = (u64, String, Uuid, u8, String);

/// The leaves of `state` that were written by the edit stamped `at` (its fields and, if it
/// deleted the record, the delete), as (order key, hash).
pub fn leaves_of_edit(
    table: &str,
    id: &Uuid,
    state: &RecordState,
    at: &Hlc,
) -> Vec<(LeafKey, Hash)> {
    all_leaves(table, id, state)
        .into_iter()
        .filter(|(stamp, _, _)| stamp == at)
        .map(|(_, k, h)| (k, h))
        .collect()
}

/// Every leaf `state` holds: (the write's stamp, order key, hash) per field and for the delete.
pub fn all_leaves(table: &str, id: &Uuid, state: &RecordState) -> Vec<(Hlc, LeafKey, Hash)> {
    let mut out = Vec::with_capacity(state.fields.len() + 1);
    for (name, f) in &state.fields {
        let kind = if f.value.is_some() { b's' } else { b'r' };
        let value = f.value.as_ref().map(canonical_json);
        out.push((
            f.stamp,
            (f.stamp.ts, table.to_string(), *id, kind, name.clone()),
            leaf_hash(&f.stamp, table, id, kind, name, value.as_deref()),
        ));
    }
    if let Some(d) = &state.deleted {
        out.push((
            *d,
            (d.ts, table.to_string(), *id, b'd', String::new()),
            leaf_hash(d, table, id, b'd', "", None),
        ));
    }
    out
}

/// The leaves a revision claims its maker wrote: one per field change (set or removed) and, for
/// a delete, the delete; each with the revision's stamp. A genuine revision's leaves are leaves
/// of its maker's commit (a local edit records exactly the fields it wrote).
pub fn revision_leaves(table: &str, id: &Uuid, rev: &crate::merge::Revision) -> Vec<Hash> {
    let mut out: Vec<Hash> = rev
        .changes
        .iter()
        .map(|c| change_leaf(table, id, &rev.at, c))
        .collect();
    if rev.kind == crate::merge::RevisionKind::Delete {
        out.push(leaf_hash(&rev.at, table, id, b'd', "", None));
    }
    out
}

/// The leaf of one field write of a revision stamped `at`: set (`s`, with its value's
/// canonical JSON) or removed (`r`).
fn change_leaf(table: &str, id: &Uuid, at: &Hlc, c: &crate::merge::FieldChange) -> Hash {
    let (kind, value) = match &c.new {
        Some(v) => (b's', Some(canonical_json(v))),
        None => (b'r', None),
    };
    leaf_hash(at, table, id, kind, &c.field, value.as_deref())
}

/// The leaves of `rev` that `state` does not hold as they are: [`revision_leaves`] less the
/// writes `state` still holds with the revision's stamp and value (the record's latest edit,
/// and any field not written again since), which are leaves of the state already. What a page
/// must prove for a revision beyond its record's state, without hashing every write twice.
pub fn revision_leaves_beyond(
    table: &str,
    id: &Uuid,
    rev: &crate::merge::Revision,
    state: &RecordState,
) -> Vec<Hash> {
    let mut out: Vec<Hash> = rev
        .changes
        .iter()
        .filter(|c| {
            state
                .fields
                .get(&c.field)
                .is_none_or(|f| f.stamp != rev.at || f.value != c.new)
        })
        .map(|c| change_leaf(table, id, &rev.at, c))
        .collect();
    if rev.kind == crate::merge::RevisionKind::Delete && state.deleted != Some(rev.at) {
        out.push(leaf_hash(&rev.at, table, id, b'd', "", None));
    }
    out
}

/// The hash of one leaf (layout in the module table).
pub fn leaf_hash(
    stamp: &Hlc,
    table: &str,
    id: &Uuid,
    kind: u8,
    field: &str,
    value: Option<&str>,
) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(b"fsleaf1");
    h.update(stamp.ts.to_be_bytes());
    h.update(stamp.node.as_bytes());
    h.update(table.as_bytes());
    h.update([0u8]);
    h.update(id.as_bytes());
    h.update([kind]);
    h.update(field.as_bytes());
    h.update([0u8]);
    if let Some(v) = value {
        h.update(v.as_bytes());
    }
    h.finalize().into()
}

/// SHA-256 of a certificate's DER: how a commit names the certificate that signed it.
pub fn cert_hash(der: &[u8]) -> Hash {
    Sha256::digest(der).into()
}

/// The hash of an inner node.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Where a range of `n > 1` leaves splits: the largest power of two below `n`.
fn split(n: u32) -> u32 {
    let mut k = 1u32;
    while k << 1 < n {
        k <<= 1;
    }
    k
}

/// The Merkle root over all `leaves` (in order); `None` for no leaves.
pub fn root(leaves: &[Hash]) -> Option<Hash> {
    match leaves.len() {
        0 => None,
        1 => Some(leaves[0]),
        n => {
            let k = split(n as u32) as usize;
            Some(node_hash(&root(&leaves[..k])?, &root(&leaves[k..])?))
        }
    }
}

/// The message an instance signs for a commit (layout in the module table).
pub fn signed_message(origin: &Uuid, lo: u64, hi: u64, n: u32, root: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(20 + 16 + 20 + 32);
    m.extend_from_slice(b"fieldsync commit v1\0");
    m.extend_from_slice(origin.as_bytes());
    m.extend_from_slice(&lo.to_be_bytes());
    m.extend_from_slice(&hi.to_be_bytes());
    m.extend_from_slice(&n.to_be_bytes());
    m.extend_from_slice(root);
    m
}

/// Builds the range proof for the leaves at `present` (strictly increasing, each `< n`) of a
/// tree of `n` leaves: the hashes of the maximal subtrees holding none of them, in the order
/// [`root_of`] reads them. `hash_of(a, b)` gives the hash of the subtree over leaves `a..b`
/// (`None` if the prover cannot compute it, then so is the result).
pub fn prove(
    n: u32,
    present: &[u32],
    hash_of: &mut dyn FnMut(u32, u32) -> Option<Hash>,
) -> Option<Vec<Subtree>> {
    fn go(
        a: u32,
        b: u32,
        present: &[u32],
        hash_of: &mut dyn FnMut(u32, u32) -> Option<Hash>,
        out: &mut Vec<Subtree>,
    ) -> Option<()> {
        if present.is_empty() {
            out.push((a, b, hash_of(a, b)?));
            return Some(());
        }
        if b - a == 1 {
            return Some(());
        }
        let mid = a + split(b - a);
        let cut = present.partition_point(|i| *i < mid);
        go(a, mid, &present[..cut], hash_of, out)?;
        go(mid, b, &present[cut..], hash_of, out)
    }
    if n == 0 {
        return None;
    }
    let mut out = Vec::new();
    go(0, n, present, hash_of, &mut out)?;
    Some(out)
}

/// Recomputes the root of a tree of `n` leaves from the leaves present (index, hash; strictly
/// increasing indices below `n`) and a proof's hashes in [`prove`]'s order. Returns the root
/// and the subtrees the proof supplied (`a`, `b`, hash), or `None` if the proof does not fit.
pub fn root_of(n: u32, present: &[(u32, Hash)], proof: &[Hash]) -> Option<(Hash, Vec<Subtree>)> {
    fn go(
        a: u32,
        b: u32,
        present: &[(u32, Hash)],
        proof: &mut std::slice::Iter<'_, Hash>,
        used: &mut Vec<Subtree>,
    ) -> Option<Hash> {
        if present.is_empty() {
            let h = *proof.next()?;
            used.push((a, b, h));
            return Some(h);
        }
        if b - a == 1 {
            return (present.len() == 1 && present[0].0 == a).then_some(present[0].1);
        }
        let mid = a + split(b - a);
        let cut = present.partition_point(|(i, _)| *i < mid);
        let l = go(a, mid, &present[..cut], proof, used)?;
        let r = go(mid, b, &present[cut..], proof, used)?;
        Some(node_hash(&l, &r))
    }
    if n == 0 || present.windows(2).any(|w| w[0].0 >= w[1].0) {
        return None;
    }
    if present.last().is_some_and(|(i, _)| *i >= n) {
        return None;
    }
    let mut it = proof.iter();
    let mut used = Vec::new();
    let r = go(0, n, present, &mut it, &mut used)?;
    if it.next().is_some() {
        return None;
    }
    Some((r, used))
}

/// The hash of the subtree over leaves `a..b` from what is known: leaf hashes (`None` =
/// unknown) and subtree hashes learned from proofs (`nodes`).
pub fn subtree_hash(
    a: u32,
    b: u32,
    leaves: &dyn Fn(u32) -> Option<Hash>,
    nodes: &std::collections::HashMap<(u32, u32), Hash>,
) -> Option<Hash> {
    if let Some(h) = nodes.get(&(a, b)) {
        return Some(*h);
    }
    if b - a == 1 {
        return leaves(a);
    }
    let mid = a + split(b - a);
    Some(node_hash(
        &subtree_hash(a, mid, leaves, nodes)?,
        &subtree_hash(mid, b, leaves, nodes)?,
    ))
}

/// Serializes `Vec<u8>` as one msgpack binary (not an array of integers); reads either.
pub mod serde_bytes {
    use serde::{Deserializer, Serializer};

    /// Writes the bytes as one binary.
    pub fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Reads a binary (or, leniently, an array of integers).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Vec<u8>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Vec<u8>, E> {
                Ok(v.to_vec())
            }
            fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<Vec<u8>, E> {
                Ok(v)
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<Vec<u8>, A::Error> {
                let mut out = Vec::new();
                while let Some(b) = a.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(out)
            }
        }
        d.deserialize_bytes(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn leaves(n: u32) -> Vec<Hash> {
        (0..n)
            .map(|i| Sha256::digest(i.to_be_bytes()).into())
            .collect()
    }

    #[test]
    fn a_revision_beyond_its_state_is_exactly_the_writes_the_state_does_not_hold() {
        use crate::merge::{FieldChange, Revision, RevisionKind};
        use crate::model::FieldState;
        use serde_json::json;
        let (id, node) = (Uuid::new_v4(), Uuid::new_v4());
        let at = |ts| Hlc { ts, node };
        let mut state = RecordState::default();
        // "name" last written by the revision at 2; "age" written again at 3; "note" removed at 2.
        for (f, v, ts) in [
            ("name", Some(json!("b")), 2),
            ("age", Some(json!(4)), 3),
            ("note", None, 2),
        ] {
            let stamp = at(ts);
            state
                .fields
                .insert(f.into(), FieldState { value: v, stamp });
        }
        let change = |f: &str, new: Option<serde_json::Value>| FieldChange {
            field: f.into(),
            old: None,
            new,
        };
        let rev = |ts, kind, changes| Revision {
            at: at(ts),
            kind,
            changes,
            cause: Default::default(),
            reconstructed: false,
        };
        let held: Vec<Hash> = all_leaves("t", &id, &state)
            .into_iter()
            .map(|l| l.2)
            .collect();
        let cases = [
            // The latest edit: every write is a state leaf.
            rev(
                2,
                RevisionKind::Update,
                vec![change("name", Some(json!("b"))), change("note", None)],
            ),
            // Superseded: "age" at 2 was written again at 3; "name" at 1 is older.
            rev(2, RevisionKind::Update, vec![change("age", Some(json!(3)))]),
            rev(
                1,
                RevisionKind::Create,
                vec![change("name", Some(json!("a")))],
            ),
            // Same stamp, another value (not a genuine revision): hashed, never assumed.
            rev(
                2,
                RevisionKind::Update,
                vec![change("name", Some(json!("x")))],
            ),
            // A delete the state does not hold.
            rev(5, RevisionKind::Delete, vec![]),
        ];
        let beyond: Vec<usize> = cases
            .iter()
            .map(|r| revision_leaves_beyond("t", &id, r, &state).len())
            .collect();
        assert_eq!(beyond, [0, 1, 1, 1, 1]);
        for r in &cases {
            let all = revision_leaves("t", &id, r);
            let extra = revision_leaves_beyond("t", &id, r, &state);
            for h in &all {
                assert!(
                    held.contains(h) || extra.contains(h),
                    "a leaf left unaccounted"
                );
            }
            for h in &extra {
                assert!(all.contains(h) && !held.contains(h));
            }
        }
    }

    #[test]
    fn every_subset_proves_and_nothing_else_does() {
        for n in 1..=9u32 {
            let l = leaves(n);
            let r = root(&l).unwrap();
            for mask in 1u32..(1 << n) {
                let present: Vec<u32> = (0..n).filter(|i| mask & (1 << i) != 0).collect();
                let none = HashMap::new();
                let proof = prove(n, &present, &mut |a, b| {
                    subtree_hash(a, b, &|i| Some(l[i as usize]), &none)
                })
                .unwrap();
                let hashes: Vec<Hash> = proof.iter().map(|p| p.2).collect();
                let with: Vec<(u32, Hash)> = present.iter().map(|i| (*i, l[*i as usize])).collect();
                let (got, used) = root_of(n, &with, &hashes).unwrap();
                assert_eq!(got, r);
                assert_eq!(used, proof);
                // One altered leaf changes the root.
                let mut bad = with.clone();
                bad[0].1[0] ^= 1;
                assert_ne!(root_of(n, &bad, &hashes).map(|x| x.0), Some(r));
            }
        }
    }

    #[test]
    fn a_relay_proves_from_what_two_partial_proofs_taught_it() {
        let n = 13;
        let l = leaves(n);
        let r = root(&l).unwrap();
        let none = HashMap::new();
        let mut known: Vec<Option<Hash>> = vec![None; n as usize];
        let mut nodes = HashMap::new();
        for part in [vec![0u32, 1, 2, 3, 4], vec![9u32, 10]] {
            let proof = prove(n, &part, &mut |a, b| {
                subtree_hash(a, b, &|i| Some(l[i as usize]), &none)
            })
            .unwrap();
            for i in &part {
                known[*i as usize] = Some(l[*i as usize]);
            }
            for (a, b, h) in proof {
                nodes.insert((a, b), h);
            }
        }
        let want = [2u32, 10];
        let proof = prove(n, &want, &mut |a, b| {
            subtree_hash(a, b, &|i| known[i as usize], &nodes)
        })
        .unwrap();
        let hashes: Vec<Hash> = proof.iter().map(|p| p.2).collect();
        let with: Vec<(u32, Hash)> = want.iter().map(|i| (*i, l[*i as usize])).collect();
        assert_eq!(root_of(n, &with, &hashes).unwrap().0, r);
    }
}
