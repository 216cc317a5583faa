//! Signed commits on the wire (issue #18 item 4; the scheme is in `crate::signed`): the proofs
//! a sender attaches to a page ([`proofs_for`]) and their check on receipt ([`check`]).
//!
//! A page's `proofs` (docs/PROTOCOL.md) is base64 of zstd of the MessagePack array [`Proofs`]:
//! the member certificate (DER) of every origin it draws on, and per commit the signed header,
//! the indices of the page's leaves in it (delta-coded) and the range proof's subtree hashes.
//! On receipt every field value, removal and delete of every record must be a leaf of a commit
//! of its stamp's instance whose signature verifies with that instance's CA-certified key and
//! whose root the proof rebuilds; a record with one that is not is *quarantined* (dropped,
//! logged, counted in the sender's peer row) and the rest of the page is taken. What a verified
//! page taught (headers, leaf and subtree hashes, certificates) is stored so that this laptop
//! can prove the same writes to the next one.
//!
//! Only within a deployment: over `--insecure-plaintext` there is no key and nothing is checked.

use crate::change::RemoteChange;
use crate::protocol::{codes, ProtocolError};
use crate::signed::{self, Hash, LeafKey};
use crate::store::commits::StoredCommit;
use crate::store::{Store, StoreError};
use crate::tls::Transport;
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use tracing::{debug, warn};
use uuid::Uuid;

/// The proofs section of a page (MessagePack array encoding, field order matters).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Proofs {
    /// Member certificates (DER) of the commits' origins.
    pub certs: Vec<ByteBuf>,
    /// One entry per commit the page draws on.
    pub commits: Vec<CommitProof>,
}

/// Bytes as one MessagePack binary.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ByteBuf(#[serde(with = "crate::signed::serde_bytes")] pub Vec<u8>);

/// One commit's header, signature and range proof for the leaves of a page.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct CommitProof {
    /// The instance that made (and signed) the commit.
    pub origin: Uuid,
    /// Its stamp range, `lo..=hi`.
    pub lo: u64,
    /// See `lo`.
    pub hi: u64,
    /// Its number of leaves.
    pub n: u32,
    /// Its Merkle root (32 bytes).
    pub root: ByteBuf,
    /// The origin's signature (64 bytes, ECDSA P-256 SHA-256 r ‖ s) of the header.
    pub sig: ByteBuf,
    /// Indices of the page's leaves in this commit, ascending: the first, then differences.
    pub idx: Vec<u32>,
    /// The range proof: subtree hashes, 32 bytes each, in `signed::prove`'s order.
    pub hashes: ByteBuf,
    /// Leaves of `history` revisions that the page's states do not hold (superseded writes):
    /// their indices, ascending, delta-coded like `idx` ...
    #[serde(default)]
    pub extra_idx: Vec<u32>,
    /// ... and their hashes, 32 bytes each, in the same order.
    #[serde(default)]
    pub extra: ByteBuf,
}

/// Most commits and certificates one page may draw on (a page holds at most 20,000 records;
/// beyond this a page is refused as malformed).
pub const MAX_PROOF_COMMITS: usize = 100_000;

fn invalid(m: String) -> ProtocolError {
    ProtocolError::new(codes::INVALID_PAGE, m)
}

/// The proofs for `changes` as a page's `proofs` string, or `None` outside a deployment.
/// Our own commits not yet signed are signed (and stored) here. A write this laptop cannot
/// prove (a relayed write from before its origin signed commits) is left out: the receiver
/// quarantines that record and logs it.
pub fn proofs_for(
    store: &Store,
    transport: &Transport,
    changes: &[RemoteChange],
) -> Result<Option<String>, StoreError> {
    let Transport::Tls { identity, .. } = transport else {
        return Ok(None);
    };
    proofs_with(store, identity, changes).map(Some)
}

/// [`proofs_for`] with this laptop's identity (a USB bundle's pages, written without a
/// connection).
pub fn proofs_with(
    store: &Store,
    identity: &crate::tls::Identity,
    changes: &[RemoteChange],
) -> Result<String, StoreError> {
    let started = std::time::Instant::now();
    let me = store.id();
    let mut commits: Vec<StoredCommit> = Vec::new();
    let mut by_origin: HashMap<Uuid, Vec<usize>> = HashMap::new();
    let mut present: Vec<Vec<Hash>> = Vec::new();
    // Leaves of history revisions the states do not hold: (origin, ts, hash).
    let mut extra: Vec<(Uuid, u64, Hash)> = Vec::new();
    let mut unproved = 0usize;
    for ch in changes {
        let leaves = signed::all_leaves(&ch.table, &ch.id, &ch.state);
        // Revisions' writes the state holds as they are are its leaves already (the latest
        // edit's, typically): only the others are hashed and looked up.
        let mut held: Option<std::collections::HashSet<Hash>> = None;
        for rev in &ch.history {
            for h in signed::revision_leaves_beyond(&ch.table, &ch.id, rev, &ch.state) {
                let held = held.get_or_insert_with(|| leaves.iter().map(|l| l.2).collect());
                if !held.contains(&h) {
                    extra.push((rev.at.node, rev.at.ts, h));
                }
            }
        }
        for (stamp, _, h) in leaves {
            let found = by_origin.get(&stamp.node).and_then(|v| {
                v.iter()
                    .copied()
                    .find(|i| commits[*i].lo <= stamp.ts && stamp.ts <= commits[*i].hi)
            });
            let i = match found {
                Some(i) => i,
                None => match store.commit_covering(&stamp.node, stamp.ts)? {
                    Some(c) => {
                        commits.push(c);
                        present.push(Vec::new());
                        by_origin
                            .entry(stamp.node)
                            .or_default()
                            .push(commits.len() - 1);
                        commits.len() - 1
                    }
                    None => {
                        unproved += 1;
                        continue;
                    }
                },
            };
            present[i].push(h);
        }
    }
    // History leaves join the commits of their origin (loading any not met yet); a revision
    // this laptop cannot prove travels without, and the receiver marks it unverified.
    let mut extras: Vec<Vec<Hash>> = vec![Vec::new(); commits.len()];
    for (node, ts, h) in extra {
        let found = by_origin.get(&node).and_then(|v| {
            v.iter()
                .copied()
                .find(|i| commits[*i].lo <= ts && ts <= commits[*i].hi)
        });
        let i = match found {
            Some(i) => i,
            None => match store.commit_covering(&node, ts)? {
                Some(c) => {
                    commits.push(c);
                    present.push(Vec::new());
                    extras.push(Vec::new());
                    by_origin.entry(node).or_default().push(commits.len() - 1);
                    commits.len() - 1
                }
                None => continue,
            },
        };
        extras[i].push(h);
    }
    let read_ms = started.elapsed().as_millis() as u64;
    let (held, mut signed_now) = (commits.len(), 0usize);
    let mut out = Proofs::default();
    let mut origins = Vec::new();
    for ((mut c, hashes), extra) in commits.into_iter().zip(present).zip(extras) {
        if c.sig.is_empty() {
            signed_now += 1;
            if c.origin != me {
                unproved += hashes.len();
                continue;
            }
            let msg = signed::signed_message(&c.origin, c.lo, c.hi, c.n, &c.root_hash());
            c.sig = identity
                .sign(&msg)
                .map_err(|e| StoreError::Decode(format!("signing a commit: {e}")))?;
            let der = identity.cert_der();
            c.cert = signed::cert_hash(&der).to_vec();
            // The signature alone: the commit's leaves (up to hundreds of kilobytes) stay as
            // written with the edits.
            store.put_commit_signature(&c, &der)?;
        }
        let index = c.index();
        let mut idx: Vec<u32> = Vec::with_capacity(hashes.len());
        for h in &hashes {
            match index.get(h) {
                Some(i) => idx.push(*i),
                None => unproved += 1,
            }
        }
        idx.sort_unstable();
        idx.dedup();
        let mut extra: Vec<(u32, Hash)> = extra
            .iter()
            .filter_map(|h| index.get(h).map(|i| (*i, *h)))
            .filter(|(i, _)| idx.binary_search(i).is_err())
            .collect();
        extra.sort_unstable_by_key(|e| e.0);
        extra.dedup_by_key(|e| e.0);
        if idx.is_empty() && extra.is_empty() {
            continue;
        }
        let mut all: Vec<u32> = idx
            .iter()
            .copied()
            .chain(extra.iter().map(|e| e.0))
            .collect();
        all.sort_unstable();
        let nodes: HashMap<(u32, u32), Hash> =
            c.nodes.iter().map(|(a, b, h)| ((*a, *b), *h)).collect();
        let Some(proof) = signed::prove(c.n, &all, &mut |a, b| c.subtree(a, b, &nodes)) else {
            unproved += idx.len();
            continue;
        };
        let extra_idx: Vec<u32> = extra.iter().map(|e| e.0).collect();
        if !origins.contains(&c.cert) {
            origins.push(c.cert.clone());
        }
        out.commits.push(CommitProof {
            origin: c.origin,
            lo: c.lo,
            hi: c.hi,
            n: c.n,
            root: ByteBuf(c.root.clone()),
            sig: ByteBuf(c.sig.clone()),
            idx: delta_code(&idx),
            hashes: ByteBuf(proof.iter().flat_map(|p| p.2).collect()),
            extra_idx: delta_code(&extra_idx),
            extra: ByteBuf(extra.iter().flat_map(|e| e.1).collect()),
        });
    }
    // The certificate that signed each commit (an instance enrolled again has several).
    for hash in origins {
        if let Some(der) = store.member_cert(&hash)? {
            out.certs.push(ByteBuf(der));
        }
    }
    if unproved > 0 {
        warn!(
            unproved,
            "some writes in a page cannot be proved (their origin never signed them here): \
             the receiver will quarantine those records"
        );
    }
    let encoded = encode(&out);
    debug!(
        records = changes.len(),
        commits = held,
        signed_now,
        read_ms,
        ms = started.elapsed().as_millis() as u64,
        bytes = encoded.len(),
        "page proofs built"
    );
    Ok(encoded)
}

/// Ascending indices as the first, then differences.
fn delta_code(idx: &[u32]) -> Vec<u32> {
    let mut prev = 0u32;
    idx.iter()
        .enumerate()
        .map(|(k, i)| {
            let d = if k == 0 { *i } else { i - prev };
            prev = *i;
            d
        })
        .collect()
}

/// The inverse of [`delta_code`] (saturating: a bad list fails the root check).
fn delta_decode(d: &[u32]) -> Vec<u32> {
    let mut at = 0u32;
    d.iter()
        .enumerate()
        .map(|(k, x)| {
            at = if k == 0 { *x } else { at.saturating_add(*x) };
            at
        })
        .collect()
}

/// Encodes a proofs section as a page's `proofs` string.
pub fn encode(p: &Proofs) -> String {
    let raw = rmp_serde::to_vec(p).expect("in-memory values always encode");
    let z = zstd::bulk::compress(&raw, 3).expect("compressing in memory");
    base64::engine::general_purpose::STANDARD.encode(z)
}

/// Proofs for the writes in `changes` stamped by `identity`'s own instance, as one fresh commit
/// signed with its key (nothing stored). What any member can do for its own writes, and all it
/// can do: writes stamped by another instance get no proof this way. Used by tools and tests
/// that craft pages.
pub fn sign_own(
    identity: &crate::tls::Identity,
    changes: &[RemoteChange],
) -> Result<String, crate::mesh::MeshError> {
    let me = identity.instance;
    let leaves: Vec<(LeafKey, Hash)> = changes
        .iter()
        .flat_map(|ch| signed::all_leaves(&ch.table, &ch.id, &ch.state))
        .filter(|(stamp, _, _)| stamp.node == me)
        .map(|(_, k, h)| (k, h))
        .collect();
    let mut out = Proofs::default();
    if let Some(c) = StoredCommit::build(me, u64::MAX, leaves) {
        let sig = identity.sign(&signed::signed_message(
            &me,
            c.lo,
            c.hi,
            c.n,
            &c.root_hash(),
        ))?;
        let mut idx = vec![1u32; c.n as usize];
        idx[0] = 0;
        out.commits.push(CommitProof {
            origin: me,
            lo: c.lo,
            hi: c.hi,
            n: c.n,
            root: ByteBuf(c.root.clone()),
            sig: ByteBuf(sig),
            idx,
            hashes: ByteBuf(Vec::new()),
            ..Default::default()
        });
        out.certs.push(ByteBuf(identity.cert_der()));
    }
    Ok(encode(&out))
}

/// Decodes a page's `proofs` string.
pub fn decode(proofs: &str) -> Result<Proofs, ProtocolError> {
    let z = base64::engine::general_purpose::STANDARD
        .decode(proofs)
        .map_err(|e| invalid(format!("page proofs are not base64: {e}")))?;
    let raw = zstd::bulk::decompress(&z, crate::protocol::MAX_PAGE_BYTES)
        .map_err(|e| invalid(format!("page proofs are not valid zstd: {e}")))?;
    let p: Proofs =
        rmp_serde::from_slice(&raw).map_err(|e| invalid(format!("malformed page proofs: {e}")))?;
    if p.commits.len() > MAX_PROOF_COMMITS || p.certs.len() > MAX_PROOF_COMMITS {
        return Err(invalid("page proofs list too many commits".into()));
    }
    Ok(p)
}

/// What [`check`] learned from a page, to store before the page's records.
pub type Learned = (Vec<crate::store::commits::LearnedCommit>, Vec<Vec<u8>>);

/// Checks every record of `changes` against the page's proofs (see the module doc), drops and
/// logs the records that fail, and returns how many were dropped and what the page taught.
/// A proofs section that does not decode refuses the whole page.
pub fn check(
    transport: &Transport,
    proofs: Option<&str>,
    changes: &mut Vec<RemoteChange>,
) -> Result<(usize, Learned), ProtocolError> {
    let Transport::Tls { identity, .. } = transport else {
        return Ok((0, Default::default()));
    };
    let started = std::time::Instant::now();
    let p = match proofs {
        Some(s) => decode(s)?,
        None => Proofs::default(),
    };
    // Per instance, the keys of its certificates in the page (one laptop enrolled again has
    // several): (public key, index into `p.certs`).
    let mut keys: HashMap<Uuid, Vec<(Vec<u8>, usize)>> = HashMap::new();
    for (i, der) in p.certs.iter().enumerate() {
        match identity.member_key(&der.0) {
            Ok((id, key)) => keys.entry(id).or_default().push((key, i)),
            Err(e) => warn!(error = %e, "a page carries a certificate that is not a member's"),
        }
    }
    // Which commits carry a valid signature, and by which certificate.
    let signed_by: Vec<Option<usize>> = p
        .commits
        .iter()
        .map(|c| {
            let root: Hash = c.root.0.as_slice().try_into().ok()?;
            if c.n == 0 || c.lo > c.hi {
                return None;
            }
            let msg = signed::signed_message(&c.origin, c.lo, c.hi, c.n, &root);
            keys.get(&c.origin)?
                .iter()
                .find(|(key, _)| crate::tls::verify_signature(key, &msg, &c.sig.0))
                .map(|(_, i)| *i)
        })
        .collect();
    let signed_ok: Vec<bool> = signed_by.iter().map(Option::is_some).collect();
    let mut by_origin: HashMap<Uuid, Vec<usize>> = HashMap::new();
    for (i, c) in p.commits.iter().enumerate() {
        by_origin.entry(c.origin).or_default().push(i);
    }
    let mut bad: HashMap<usize, String> = HashMap::new();
    let mut per_commit: Vec<Vec<(LeafKey, Hash, usize)>> = vec![Vec::new(); p.commits.len()];
    for (r, ch) in changes.iter().enumerate() {
        for (stamp, key, h) in signed::all_leaves(&ch.table, &ch.id, &ch.state) {
            let found = by_origin.get(&stamp.node).and_then(|v| {
                v.iter().copied().find(|i| {
                    let c = &p.commits[*i];
                    c.lo <= stamp.ts && stamp.ts <= c.hi
                })
            });
            match found {
                Some(i) if signed_ok[i] => per_commit[i].push((key, h, r)),
                Some(_) => {
                    bad.entry(r).or_insert_with(|| {
                        format!(
                            "the commit of {} holding its write of {:?} is not signed by a \
                             member of this deployment",
                            stamp.node, key.4
                        )
                    });
                }
                None => {
                    bad.entry(r).or_insert_with(|| {
                        format!(
                            "no signed commit of {} holds its write of {:?}",
                            stamp.node, key.4
                        )
                    });
                }
            }
        }
    }
    let mut learned = Vec::new();
    let mut origins = Vec::new();
    // Every leaf proved by this page: what history revisions are checked against.
    let mut proved: std::collections::HashSet<Hash> = std::collections::HashSet::new();
    for (i, mut leaves) in per_commit.into_iter().enumerate() {
        let c = &p.commits[i];
        if leaves.is_empty() && (c.extra_idx.is_empty() || !signed_ok[i]) {
            continue;
        }
        leaves.sort_by(|a, b| a.0.cmp(&b.0));
        let idx = delta_decode(&c.idx);
        let mut ok = c.idx.len() == leaves.len()
            && c.hashes.0.len() % 32 == 0
            && c.extra.0.len() == 32 * c.extra_idx.len();
        let mut present: Vec<(u32, Hash)> = idx
            .iter()
            .copied()
            .zip(leaves.iter().map(|l| l.1))
            .collect();
        present.extend(
            delta_decode(&c.extra_idx).into_iter().zip(
                c.extra
                    .0
                    .chunks_exact(32)
                    .map(|h| h.try_into().expect("32 bytes")),
            ),
        );
        present.sort_by_key(|p| p.0);
        let proof: Vec<Hash> = c
            .hashes
            .0
            .chunks_exact(32)
            .map(|h| h.try_into().expect("32-byte chunks"))
            .collect();
        let mut used = Vec::new();
        if ok {
            match signed::root_of(c.n, &present, &proof) {
                Some((root, u)) if root.as_slice() == c.root.0.as_slice() => used = u,
                _ => ok = false,
            }
        }
        if !ok {
            for (_, _, r) in &leaves {
                bad.entry(*r).or_insert_with(|| {
                    format!(
                        "its writes do not match the commit {} signed (altered or made up)",
                        c.origin
                    )
                });
            }
            continue;
        }
        let cert = signed_by[i].expect("only signed commits get here");
        if !origins.contains(&cert) {
            origins.push(cert);
        }
        proved.extend(present.iter().map(|p| p.1));
        learned.push((
            StoredCommit {
                origin: c.origin,
                lo: c.lo,
                hi: c.hi,
                n: c.n,
                root: c.root.0.clone(),
                sig: c.sig.0.clone(),
                cert: signed::cert_hash(&p.certs[signed_by[i].expect("signed")].0).to_vec(),
                leaves: Vec::new(),
                nodes: Vec::new(),
            },
            present,
            used,
        ));
    }
    if !bad.is_empty() {
        let mut r = 0usize;
        changes.retain(|ch| {
            let keep = match bad.get(&r) {
                Some(reason) => {
                    warn!(table = %ch.table, id = %ch.id, %reason,
                          "quarantined a record from a peer: dropped, the rest of the page is taken");
                    false
                }
                None => true,
            };
            r += 1;
            keep
        });
    }
    // History: a revision whose writes this page does not prove (made up, or from before its
    // maker signed commits) is kept but marked unverified (`reconstructed`, shown as approximate
    // by `history`), so no laptop's history presents it as that maker's exact record.
    let mut unverified = 0usize;
    // A kept record's state leaves are all proved (a record with one that is not was dropped
    // above), so a revision's writes the state holds as they are need no lookup.
    for ch in changes.iter_mut() {
        let state = &ch.state;
        for rev in ch.history.iter_mut() {
            let leaves = signed::revision_leaves_beyond(&ch.table, &ch.id, rev, state);
            if !rev.reconstructed && !leaves.iter().all(|h| proved.contains(h)) {
                rev.reconstructed = true;
                unverified += 1;
            }
        }
    }
    if unverified > 0 {
        warn!(
            unverified,
            "history revisions in a page are not proved by their makers' signed commits: \
             kept, marked approximate"
        );
    }
    let certs = origins.into_iter().map(|i| p.certs[i].0.clone()).collect();
    debug!(
        records = changes.len(),
        commits = p.commits.len(),
        ms = started.elapsed().as_millis() as u64,
        "page proofs checked"
    );
    Ok((bad.len(), (learned, certs)))
}
