//! The USB bundle file: sync pages carried on a stick instead of a network (issue #15). This
//! module owns the file format and its cryptography; what goes in and how it is applied (through
//! the one receive path) is `sync::bundle`.
//!
//! A bundle is self-describing and checked whole before anything is applied: a plaintext header
//! says who wrote it for whom and when; the pages are the wire's `msgpack+zstd` page bodies, each
//! encrypted with AES-256-GCM under a key only members of the deployment can derive; the writer
//! signs everything with its deployment credential (ECDSA P-256), so an altered or truncated file,
//! another deployment's file or a non-member's file is refused before a byte is written.
//!
//! File layout (integers big-endian):
//!
//! | offset         | size | field                                                          |
//! |----------------|------|----------------------------------------------------------------|
//! | 0              | 8    | magic `FSBUNDLE`                                               |
//! | 8              | 2    | format version (`2`; `1` had no proofs and is refused)         |
//! | 10             | 4    | `H`: header length                                             |
//! | 14             | H    | header: JSON object, [`Header`] (plaintext)                    |
//! | 14+H           | ...  | `pages` times: `u32` length `L`, then `L` bytes of ciphertext   |
//! |                |      | (AES-256-GCM, 16-byte tag at the end)                          |
//! | 14+H+B         | 2    | `S`: signature length (`B` = header's `body_bytes`)            |
//! | 16+H+B         | S    | ECDSA P-256 SHA-256 (ASN.1 DER) signature by the writer's      |
//! |                |      | credential over bytes `0 .. 14+H+B`                            |
//!
//! A page's plaintext: `since` u64, `next` u64, `more` u8 (0/1), `count` u32, `P` u32, then `P`
//! bytes of the page's proofs (the wire's `proofs` string base64-decoded: zstd of MessagePack,
//! see `sync::signed`; `P` = 0 for none), then the page body exactly as `msgpack+zstd` carries
//! it on the wire, unencoded (zstd of `protocol::pack`).
//!
//! Encryption: the credential's deployment bundle key `K` ([`Credential::bundle_key`], HKDF of
//! the CA key, same on every member) and the header's random 32-byte `salt` give the bundle's
//! key `HKDF-SHA256(salt, K, "fieldsync bundle v1")`; page `i` (from 0) uses the nonce
//! `0u32 ‖ i as u64` and the associated data `SHA-256(bytes 0 .. 14+H) ‖ i as u32`, so a page
//! cannot be moved to another position or another bundle.

use crate::mesh::Credential;
use crate::model::{Incarnation, VersionVector};
use crate::tls::Identity;
use chrono::{DateTime, Utc};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{EcdsaKeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

/// First 8 bytes of every bundle.
pub const MAGIC: &[u8; 8] = b"FSBUNDLE";
/// The format version this build writes and reads.
pub const FORMAT_VERSION: u16 = 2;
/// The header's `kind`.
pub const KIND: &str = "fieldsync-bundle";
/// The only page cipher.
pub const CIPHER: &str = "AES-256-GCM";
/// zstd level of bundle pages: higher than the wire's 3, since a stick is written once and
/// small files copy faster (decompression speed does not depend on it).
pub const ZSTD_LEVEL: i32 = 9;
/// Largest header accepted (the writer's certificate and knowledge fit easily).
const MAX_HEADER: usize = 4 << 20;
const HKDF_INFO: &[u8] = b"fieldsync bundle v1";
const PREFIX: usize = 14;

/// Why a bundle cannot be written or read. Every message names the file, the problem and what
/// to do; nothing was applied when reading fails.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// Not a bundle, an unknown format version, a header that does not parse.
    #[error("{0}")]
    Invalid(String),
    /// Shorter than its header says.
    #[error("{0}")]
    Truncated(String),
    /// The signature does not match the content, or a page does not decrypt.
    #[error("{0}")]
    Altered(String),
    /// Written in another deployment, by a non-member or a revoked member, or by this laptop.
    #[error("{0}")]
    Refused(String),
    /// This laptop's credential cannot write or read bundles.
    #[error("{0}")]
    Credential(String),
    /// The file could not be read or written.
    #[error("{0}")]
    Io(String),
}

/// Who wrote a bundle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Writer {
    /// Instance id.
    pub instance: Uuid,
    /// Display name.
    pub name: String,
    /// Who is responsible for the laptop.
    #[serde(default)]
    pub owner: String,
    /// How to reach the owner.
    #[serde(default)]
    pub contact: String,
}

/// The plaintext header (JSON).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`KIND`].
    pub kind: String,
    /// Deployment id (`mesh::mesh_id`) the bundle belongs to.
    pub deployment: String,
    /// Deployment name, for people.
    pub deployment_name: String,
    /// The writing laptop.
    pub writer: Writer,
    /// Its certificate (PEM): checked against the reader's CA; its key signed the file.
    pub writer_cert: String,
    /// The writer's incarnation when it wrote the bundle.
    pub incarnation: Incarnation,
    /// When it was written.
    pub written_at: DateTime<Utc>,
    /// The laptop it was written for; `None` for `--all` (everything, good for anyone).
    pub target: Option<Uuid>,
    /// That laptop's name as the writer knew it.
    pub target_name: Option<String>,
    /// What the writer believed the target already had (changes covered by it were left out);
    /// empty for `--all`.
    pub target_knowledge: VersionVector,
    /// The writer's knowledge when it wrote (the reader adopts it once every page is in).
    pub knowledge: VersionVector,
    /// Range of the writer's feed the pages cover: after `since` up to `next`.
    pub since: u64,
    /// See `since`.
    pub next: u64,
    /// The writer's feed head when it started writing.
    pub head: u64,
    /// Number of pages.
    pub pages: u32,
    /// Number of records over all pages.
    pub records: u64,
    /// Bytes of the page section (length prefixes included).
    pub body_bytes: u64,
    /// Page body encoding (`msgpack+zstd`).
    pub encoding: String,
    /// Always [`CIPHER`].
    pub cipher: String,
    /// Random per-bundle salt of the page key (hex, 32 bytes).
    pub salt: String,
}

/// One page in plaintext.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PageData {
    /// Writer's feed position the page starts after.
    pub since: u64,
    /// Writer's feed position the page ends at.
    pub next: u64,
    /// More pages follow.
    pub more: bool,
    /// Records in the page.
    pub count: u32,
    /// The page body: zstd of `protocol::pack`.
    pub body: Vec<u8>,
    /// The page's proofs (`Page::proofs` base64-decoded); empty for none.
    pub proofs: Vec<u8>,
}

impl PageData {
    fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(25 + self.proofs.len() + self.body.len() + 16);
        out.extend_from_slice(&self.since.to_be_bytes());
        out.extend_from_slice(&self.next.to_be_bytes());
        out.push(u8::from(self.more));
        out.extend_from_slice(&self.count.to_be_bytes());
        out.extend_from_slice(&(self.proofs.len() as u32).to_be_bytes());
        out.extend_from_slice(&self.proofs);
        out.extend_from_slice(&self.body);
        out
    }

    fn from_bytes(b: &[u8]) -> Option<PageData> {
        if b.len() < 25 {
            return None;
        }
        let p = u32::from_be_bytes(b[21..25].try_into().ok()?) as usize;
        let end = 25usize.checked_add(p).filter(|e| *e <= b.len())?;
        Some(PageData {
            since: u64::from_be_bytes(b[0..8].try_into().ok()?),
            next: u64::from_be_bytes(b[8..16].try_into().ok()?),
            more: b[16] != 0,
            count: u32::from_be_bytes(b[17..21].try_into().ok()?),
            proofs: b[25..end].to_vec(),
            body: b[end..].to_vec(),
        })
    }
}

fn key_of(cred: &Credential) -> Result<[u8; 32], BundleError> {
    cred.bundle_key_bytes()
        .map_err(|e| BundleError::Credential(e.to_string()))
}

fn page_key(bundle_key: &[u8; 32], salt: &[u8]) -> Result<LessSafeKey, BundleError> {
    let fail = || BundleError::Credential("deriving the bundle's page key failed".into());
    let prk = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, salt).extract(bundle_key);
    let okm = prk.expand(&[HKDF_INFO], &AES_256_GCM).map_err(|_| fail())?;
    Ok(LessSafeKey::new(UnboundKey::from(okm)))
}

fn nonce(i: u32) -> Nonce {
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&u64::from(i).to_be_bytes());
    Nonce::assume_unique_for_key(n)
}

fn aad(prefix_hash: &[u8; 32], i: u32) -> Aad<[u8; 36]> {
    let mut a = [0u8; 36];
    a[..32].copy_from_slice(prefix_hash);
    a[32..].copy_from_slice(&i.to_be_bytes());
    Aad::from(a)
}

fn signing_key(cred: &Credential) -> Result<EcdsaKeyPair, BundleError> {
    use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
    let bad = |e: String| BundleError::Credential(format!("this laptop's credential key: {e}"));
    let der = PrivateKeyDer::from_pem_slice(cred.key.as_bytes()).map_err(|e| bad(e.to_string()))?;
    let PrivateKeyDer::Pkcs8(p8) = der else {
        return Err(bad("not a PKCS#8 key".into()));
    };
    EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        p8.secret_pkcs8_der(),
        &SystemRandom::new(),
    )
    .map_err(|e| bad(e.to_string()))
}

/// Seals `pages` into a bundle file's bytes: fills in the header's `pages`, `records`,
/// `body_bytes`, `cipher` and `salt`, encrypts every page and signs the whole with `cred`.
pub fn seal(
    mut header: Header,
    pages: &[PageData],
    cred: &Credential,
) -> Result<Vec<u8>, BundleError> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 32];
    rng.fill(&mut salt)
        .map_err(|_| BundleError::Credential("no random numbers for the bundle salt".into()))?;
    let key = page_key(&key_of(cred)?, &salt)?;
    header.kind = KIND.into();
    header.cipher = CIPHER.into();
    header.salt = hex::encode(salt);
    header.pages = pages.len() as u32;
    header.records = pages.iter().map(|p| u64::from(p.count)).sum();
    // Each page: 4-byte length, plaintext, 16-byte tag.
    header.body_bytes = pages
        .iter()
        .map(|p| 4 + 25 + p.proofs.len() as u64 + p.body.len() as u64 + 16)
        .sum();
    let head_json = serde_json::to_vec(&header).expect("plain struct");
    let mut out = Vec::with_capacity(PREFIX + head_json.len() + header.body_bytes as usize + 80);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(head_json.len() as u32).to_be_bytes());
    out.extend_from_slice(&head_json);
    let prefix_hash: [u8; 32] = Sha256::digest(&out).into();
    for (i, p) in pages.iter().enumerate() {
        let i = i as u32;
        let mut buf = p.to_bytes();
        key.seal_in_place_append_tag(nonce(i), aad(&prefix_hash, i), &mut buf)
            .map_err(|_| BundleError::Credential("encrypting a page failed".into()))?;
        out.extend_from_slice(&(buf.len() as u32).to_be_bytes());
        out.extend_from_slice(&buf);
    }
    let sig = signing_key(cred)?
        .sign(&rng, &out)
        .map_err(|_| BundleError::Credential("signing the bundle failed".into()))?;
    out.extend_from_slice(&(sig.as_ref().len() as u16).to_be_bytes());
    out.extend_from_slice(sig.as_ref());
    Ok(out)
}

/// The header of a bundle's bytes, without checking anything else (`bundle show`).
pub fn read_header(bytes: &[u8], file: &str) -> Result<(Header, usize), BundleError> {
    if bytes.len() < PREFIX || &bytes[..8] != MAGIC {
        return Err(BundleError::Invalid(format!(
            "{file} is not a fieldsync bundle (it does not start with {:?}): give the file \
             written by `fieldsync bundle write`",
            std::str::from_utf8(MAGIC).unwrap_or("")
        )));
    }
    let version = u16::from_be_bytes([bytes[8], bytes[9]]);
    if version != FORMAT_VERSION {
        return Err(BundleError::Invalid(format!(
            "{file} is a bundle of format {version}, this fieldsync reads format \
             {FORMAT_VERSION}: read it with the fieldsync version that wrote it, or update"
        )));
    }
    let hlen = u32::from_be_bytes(bytes[10..14].try_into().expect("4 bytes")) as usize;
    if hlen > MAX_HEADER {
        return Err(BundleError::Altered(format!(
            "{file} has been altered or damaged (its header length {hlen} is impossible): \
             nothing applied; copy it again or ask for a new bundle"
        )));
    }
    if bytes.len() < PREFIX + hlen {
        return Err(truncated(file, bytes.len(), PREFIX + hlen));
    }
    let header: Header = serde_json::from_slice(&bytes[PREFIX..PREFIX + hlen]).map_err(|e| {
        BundleError::Altered(format!(
            "{file} has been altered or damaged (its header does not parse: {e}): nothing \
             applied; copy it again or ask for a new bundle"
        ))
    })?;
    if header.kind != KIND || header.cipher != CIPHER {
        return Err(BundleError::Invalid(format!(
            "{file} is not a fieldsync bundle this version reads (kind {:?}, cipher {:?})",
            header.kind, header.cipher
        )));
    }
    Ok((header, hlen))
}

fn truncated(file: &str, have: usize, need: usize) -> BundleError {
    BundleError::Truncated(format!(
        "{file} is truncated ({have} bytes, its header needs at least {need}): nothing applied; \
         copy it again from the stick, or ask for a new bundle"
    ))
}

/// A bundle whose deployment, writer and signature were checked.
#[derive(Debug)]
pub struct Verified {
    /// The header.
    pub header: Header,
    key: LessSafeKey,
    prefix_hash: [u8; 32],
    /// (offset, length) of each page's ciphertext.
    pages: Vec<(usize, usize)>,
}

/// What a bundle's header and checks say, without applying it.
#[derive(Debug)]
pub struct Checked {
    /// The header.
    pub header: Header,
    /// `Ok` with the checked bundle, or why this laptop would refuse it.
    pub verdict: Result<Verified, BundleError>,
}

/// Checks a bundle for this laptop: its deployment, the writer's certificate (issued by our
/// CA, not revoked per `revoked`), its length and its signature. Decrypts nothing yet.
pub fn verify(
    bytes: &[u8],
    file: &str,
    cred: &Credential,
    revoked: &dyn Fn(&Uuid) -> Option<DateTime<Utc>>,
) -> Result<Verified, BundleError> {
    let (header, hlen) = read_header(bytes, file)?;
    let identity = Identity::from_credential(cred)
        .map_err(|e| BundleError::Credential(format!("this laptop's credential: {e}")))?;
    let who = format!("{} ({})", header.writer.name, header.writer.instance);
    if header.deployment != identity.mesh_id {
        return Err(BundleError::Refused(format!(
            "{file} was written by {who} in another deployment ({} \"{}\"), not this laptop's \
             ({} \"{}\"): nothing applied; carry it to a laptop of that deployment",
            header.deployment, header.deployment_name, identity.mesh_id, identity.deployment
        )));
    }
    let cert_instance = identity.verify_member(&header.writer_cert).map_err(|e| {
        BundleError::Refused(format!(
            "{file} is not signed by a member of this deployment ({e}): nothing applied"
        ))
    })?;
    if cert_instance != header.writer.instance {
        return Err(BundleError::Altered(format!(
            "{file} names writer {} but its certificate is for {cert_instance}: nothing applied",
            header.writer.instance
        )));
    }
    let body_start = PREFIX + hlen;
    let sig_at =
        body_start.saturating_add(usize::try_from(header.body_bytes).unwrap_or(usize::MAX));
    if bytes.len() < sig_at.saturating_add(2) {
        return Err(truncated(file, bytes.len(), sig_at.saturating_add(2)));
    }
    let slen = u16::from_be_bytes([bytes[sig_at], bytes[sig_at + 1]]) as usize;
    let end = sig_at + 2 + slen;
    if bytes.len() < end {
        return Err(truncated(file, bytes.len(), end));
    }
    let altered = || {
        BundleError::Altered(format!(
            "{file} has been altered since {who} wrote it (its signature does not match): \
             nothing applied; copy it again or ask for a new bundle"
        ))
    };
    if bytes.len() > end {
        return Err(altered());
    }
    let cert_der = {
        use rustls::pki_types::{pem::PemObject, CertificateDer};
        CertificateDer::from_pem_slice(header.writer_cert.as_bytes()).map_err(|_| altered())?
    };
    let (_, cert) = x509_parser::parse_x509_certificate(&cert_der).map_err(|_| altered())?;
    let pk = cert.public_key().subject_public_key.data.to_vec();
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, pk)
        .verify(&bytes[..sig_at], &bytes[sig_at + 2..end])
        .map_err(|_| altered())?;
    if let Some(at) = revoked(&header.writer.instance) {
        return Err(BundleError::Refused(format!(
            "{file} was written by {who}, which the deployment revoked on {}: nothing applied",
            at.format("%Y-%m-%d %H:%M UTC")
        )));
    }
    if header.writer.instance == cred.instance {
        return Err(BundleError::Refused(format!(
            "{file} was written by this laptop: carry it to another laptop of the deployment"
        )));
    }
    // Page boundaries (the signature already vouches for them; checked anyway, no panics).
    let mut pages = Vec::with_capacity(header.pages as usize);
    let mut at = body_start;
    for _ in 0..header.pages {
        if at + 4 > sig_at {
            return Err(altered());
        }
        let len = u32::from_be_bytes(bytes[at..at + 4].try_into().expect("4 bytes")) as usize;
        if at + 4 + len > sig_at {
            return Err(altered());
        }
        pages.push((at + 4, len));
        at += 4 + len;
    }
    if at != sig_at {
        return Err(altered());
    }
    let salt = hex::decode(&header.salt).map_err(|_| altered())?;
    let key = page_key(&key_of(cred)?, &salt)?;
    let prefix_hash: [u8; 32] = Sha256::digest(&bytes[..body_start]).into();
    Ok(Verified {
        header,
        key,
        prefix_hash,
        pages,
    })
}

/// [`verify`], keeping the header even when the checks fail (`bundle show`).
pub fn check(
    bytes: &[u8],
    file: &str,
    cred: &Credential,
    revoked: &dyn Fn(&Uuid) -> Option<DateTime<Utc>>,
) -> Result<Checked, BundleError> {
    let (header, _) = read_header(bytes, file)?;
    Ok(Checked {
        header,
        verdict: verify(bytes, file, cred, revoked),
    })
}

impl Verified {
    /// Number of pages.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    /// True if the bundle has no page.
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// Decrypts page `i` of `bytes` (the same bytes [`verify`] checked).
    pub fn page(&self, bytes: &[u8], i: usize, file: &str) -> Result<PageData, BundleError> {
        let (off, len) = self.pages[i];
        let mut buf = bytes[off..off + len].to_vec();
        let n = i as u32;
        let plain = self
            .key
            .open_in_place(nonce(n), aad(&self.prefix_hash, n), &mut buf)
            .map_err(|_| {
                BundleError::Credential(format!(
                    "{file}: page {} does not decrypt with this laptop's bundle key (a credential \
                     from an older enrolment?): nothing of it applied; enroll this laptop again \
                     with `fieldsync mesh enroll --instance ID` on the coordinator's laptop",
                    i + 1
                ))
            })?;
        PageData::from_bytes(plain)
            .ok_or_else(|| BundleError::Altered(format!("{file}: page {} is malformed", i + 1)))
    }
}
