//! Deployment membership: the deployment CA, per-laptop credentials, join files, and signed
//! revocations.
//!
//! A deployment is a CA (ECDSA P-256, made with rcgen). Each laptop holds a credential: a
//! certificate for its instance id signed by the CA, its private key, and the CA certificate.
//! The deployment (mesh) id is derived from the CA certificate, so laptops of different
//! deployments ignore each other on the LAN before any connection. A revocation is a record in
//! the replicated table [`REVOCATIONS`] signed with the CA key; every instance verifies the
//! signature on receipt, so only the coordinator can revoke.

use crate::formats::canonical_json;
use base64::Engine;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::Path;
use uuid::Uuid;

/// The replicated system table of revocations (record id = revoked instance id).
pub const REVOCATIONS: &str = crate::model::REVOCATIONS_TABLE;
/// The replicated system table of the coordinator's CA-signed decisions on held mass deletes
/// (record id: a fresh id per decision part; see [`CaFile::sign_hold_decision`]).
pub const HOLD_DECISIONS: &str = crate::model::HOLD_DECISIONS_TABLE;
/// Prefix of system tables: users cannot write them directly.
pub const SYSTEM_PREFIX: &str = crate::model::SYSTEM_PREFIX;
/// The DNS name every node certificate carries; peers are reached by IP, so the name is fixed.
pub const SERVER_NAME: &str = "fieldsync.mesh";
/// Credential file name inside the data directory.
pub const CREDENTIAL_FILE: &str = "credential.fsmesh";
/// CA file name inside the coordinator's data directory.
pub const CA_FILE: &str = "mesh-ca.fsca";

/// Membership failures.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Certificate generation or parsing failed.
    #[error("certificate: {0}")]
    Cert(String),
    /// A file could not be read or written.
    #[error("{path}: {message}")]
    File {
        /// The file.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// A revocation whose signature does not verify.
    #[error("revocation of {0} is not signed by this deployment's CA")]
    BadSignature(String),
    /// A decision on held deletes that is not the deployment CA's, or not a decision.
    #[error("{0}")]
    BadDecision(String),
    /// A file of the wrong kind was given.
    #[error("{0}")]
    Invalid(String),
}

fn cert_err(e: impl std::fmt::Display) -> MeshError {
    MeshError::Cert(e.to_string())
}

/// The deployment CA, kept only on the coordinator's laptop (and in join files).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CaFile {
    /// File kind marker.
    pub kind: String,
    /// Deployment name.
    pub deployment: String,
    /// CA certificate (PEM).
    pub ca_cert: String,
    /// CA private key (PEM).
    pub ca_key: String,
}

/// One laptop's membership: its certificate and key, and the CA to trust.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Credential {
    /// File kind marker.
    pub kind: String,
    /// Deployment name.
    pub deployment: String,
    /// The instance id the certificate is for.
    pub instance: Uuid,
    /// Display name given at enrolment.
    pub name: String,
    /// CA certificate (PEM).
    pub ca_cert: String,
    /// Node certificate (PEM).
    pub cert: String,
    /// Node private key (PEM).
    pub key: String,
    /// The deployment's bundle key (base64, 32 bytes): what every member holds and an outsider
    /// with a USB stick does not, so bundles are encrypted to the deployment (see
    /// `crate::bundle`). Derived from the CA key at enrolment ([`CaFile::bundle_key`]);
    /// `None` in credentials enrolled before bundles existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_key: Option<String>,
}

/// HKDF salt and info prefix of the deployment bundle key (fixed: changing them changes every
/// deployment's key).
const BUNDLE_KEY_SALT: &[u8] = b"fieldsync bundle key";
const BUNDLE_KEY_INFO: &str = "fieldsync bundle key v1 ";

const KIND_CA: &str = "fieldsync-ca";
const KIND_JOIN: &str = "fieldsync-join";
const KIND_CREDENTIAL: &str = "fieldsync-credential";

/// What `init --mesh FILE` was given.
pub enum MeshFile {
    /// A credential made by `mesh enroll`.
    Credential(Credential),
    /// A join file that lets a laptop enroll itself.
    Join(CaFile),
}

impl CaFile {
    /// Makes a new deployment CA.
    pub fn create(deployment: &str) -> Result<CaFile, MeshError> {
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut p = CertificateParams::new(Vec::<String>::new()).map_err(cert_err)?;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("fieldsync CA: {deployment}"));
        p.distinguished_name
            .push(DnType::OrganizationName, deployment.to_string());
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 12, 31);
        let cert = p.self_signed(&key).map_err(cert_err)?;
        Ok(CaFile {
            kind: KIND_CA.into(),
            deployment: deployment.to_string(),
            ca_cert: cert.pem(),
            ca_key: key.serialize_pem(),
        })
    }

    /// The same CA as a join file (anyone holding it can enroll).
    pub fn as_join_file(&self) -> CaFile {
        CaFile {
            kind: KIND_JOIN.into(),
            ..self.clone()
        }
    }

    /// The deployment id derived from the CA certificate.
    pub fn mesh_id(&self) -> Result<String, MeshError> {
        mesh_id(&self.ca_cert)
    }

    /// Issues a credential for `instance`.
    pub fn enroll(&self, instance: Uuid, name: &str) -> Result<Credential, MeshError> {
        let ca_key = KeyPair::from_pem(&self.ca_key).map_err(cert_err)?;
        let issuer = Issuer::from_ca_cert_pem(&self.ca_cert, ca_key).map_err(cert_err)?;
        let key = KeyPair::generate().map_err(cert_err)?;
        let mut p = CertificateParams::new(vec![SERVER_NAME.to_string()]).map_err(cert_err)?;
        p.distinguished_name
            .push(DnType::CommonName, instance.to_string());
        p.distinguished_name
            .push(DnType::OrganizationName, self.deployment.clone());
        // The name it was enrolled under, attested by the CA: a laptop holding this
        // certificate (every laptop that received writes it signed) can name it without ever
        // having met it (`laptop_name_of_der`).
        if !name.is_empty() {
            p.distinguished_name
                .push(DnType::OrganizationalUnitName, name.to_string());
        }
        p.subject_alt_names.push(SanType::URI(
            format!("urn:uuid:{instance}")
                .try_into()
                .map_err(cert_err)?,
        ));
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.not_before = rcgen::date_time_ymd(2024, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 12, 31);
        let cert = p.signed_by(&key, &issuer).map_err(cert_err)?;
        Ok(Credential {
            kind: KIND_CREDENTIAL.into(),
            deployment: self.deployment.clone(),
            instance,
            name: name.to_string(),
            ca_cert: self.ca_cert.clone(),
            cert: cert.pem(),
            key: key.serialize_pem(),
            bundle_key: Some(self.bundle_key()?),
        })
    }

    /// The deployment's bundle key (base64 of 32 bytes): HKDF-SHA256 of the CA private key
    /// (DER) with the deployment id as info. Deterministic, so a CA made before bundles existed
    /// gives its laptops the same key when they are enrolled again; only holders of the CA key
    /// can compute it, and every credential carries a copy.
    pub fn bundle_key(&self) -> Result<String, MeshError> {
        use rustls::pki_types::{pem::PemObject, PrivateKeyDer};
        let der = PrivateKeyDer::from_pem_slice(self.ca_key.as_bytes()).map_err(cert_err)?;
        let info = [BUNDLE_KEY_INFO.as_bytes(), self.mesh_id()?.as_bytes()].concat();
        let salt = ring::hkdf::Salt::new(ring::hkdf::HKDF_SHA256, BUNDLE_KEY_SALT);
        let mut out = [0u8; 32];
        salt.extract(der.secret_der())
            .expand(&[&info], ring::hkdf::HKDF_SHA256)
            .and_then(|okm| okm.fill(&mut out))
            .map_err(|_| MeshError::Cert("deriving the bundle key failed".into()))?;
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// Signs a revocation of `instance`; the result is the record's fields.
    pub fn revoke(
        &self,
        instance: Uuid,
        reason: &str,
    ) -> Result<serde_json::Map<String, Value>, MeshError> {
        let body = json!({
            "instance": instance.to_string(),
            "revoked_at": chrono::Utc::now().to_rfc3339(),
            "reason": reason,
            "mesh": self.mesh_id()?,
        });
        self.sign(body)
    }

    /// Signs one part of a decision on held deletes (`body`: what
    /// `crate::store::HoldVerdict::to_fields` makes) as record `record` of [`HOLD_DECISIONS`]: the
    /// body names the record id and the deployment, so a signed decision cannot be moved under
    /// another id or into another deployment. The result is the record's fields.
    pub fn sign_hold_decision(
        &self,
        record: Uuid,
        mut body: serde_json::Map<String, Value>,
    ) -> Result<serde_json::Map<String, Value>, MeshError> {
        body.insert("record".into(), Value::String(record.to_string()));
        body.insert("mesh".into(), Value::String(self.mesh_id()?));
        self.sign(Value::Object(body))
    }

    /// Adds the CA's signature over the canonical JSON of `body` (an object).
    fn sign(&self, body: Value) -> Result<serde_json::Map<String, Value>, MeshError> {
        let key = KeyPair::from_pem(&self.ca_key).map_err(cert_err)?;
        use rcgen::SigningKey;
        let sig = key
            .sign(canonical_json(&body).as_bytes())
            .map_err(cert_err)?;
        let mut fields = body.as_object().cloned().unwrap_or_default();
        fields.insert(
            "signature".into(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(sig)),
        );
        Ok(fields)
    }
}

/// Laptops this coordinator enrolled, by instance id: `enrolled.json` in its data directory
/// (`{"<uuid>": "name", ...}`, mode 0600, written by `mesh enroll`). Lets `mesh revoke` take a
/// name the coordinator knows only from enrolling it, and `sync NAME` say why it has no address.
pub const ENROLLED_FILE: &str = "enrolled.json";

/// Reads [`ENROLLED_FILE`] (empty when there is none). Errors: `Invalid` for a file that is not
/// such a map (with the fix), `File` when it cannot be read.
pub fn read_enrolled(dir: &Path) -> Result<std::collections::BTreeMap<Uuid, String>, MeshError> {
    let path = dir.join(ENROLLED_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
            MeshError::Invalid(format!(
                "{} is not a list of enrolled laptops ({e}): move it aside and enroll again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(MeshError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        }),
    }
}

/// The deployment id: the first 16 hex digits of the SHA-256 of the CA certificate (DER).
pub fn mesh_id(ca_cert_pem: &str) -> Result<String, MeshError> {
    let der = pem_der(ca_cert_pem)?;
    Ok(hex::encode(&Sha256::digest(&der)[..8]))
}

fn pem_der(pem: &str) -> Result<Vec<u8>, MeshError> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(cert_err)?;
    Ok(p.contents)
}

/// The instance id a node certificate is for (from its `urn:uuid:` SAN, else its CN).
pub fn instance_of_der(der: &[u8]) -> Option<Uuid> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(u) = n {
                if let Some(id) = u.strip_prefix("urn:uuid:") {
                    return id.parse().ok();
                }
            }
        }
    }
    let cn = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .and_then(|s| s.parse().ok());
    cn
}

/// The laptop name a member certificate was enrolled under (its subject's OU), if it has one
/// (certificates issued before session 9 do not).
pub fn laptop_name_of_der(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = cert
        .subject()
        .iter_organizational_unit()
        .next()
        .and_then(|ou| ou.as_str().ok())
        .map(str::to_string);
    name.filter(|n| !n.is_empty())
}

/// Subject, validity and SHA-256 fingerprint of a certificate, for `mesh show`.
pub fn describe_cert(pem: &str) -> Value {
    let Ok(der) = pem_der(pem) else {
        return Value::Null;
    };
    let fingerprint = hex::encode(Sha256::digest(&der));
    match x509_parser::parse_x509_certificate(&der) {
        Ok((_, c)) => json!({
            "subject": c.subject().to_string(),
            "issuer": c.issuer().to_string(),
            "not_after": c.validity().not_after.to_string(),
            "sha256": fingerprint,
        }),
        Err(_) => json!({"sha256": fingerprint}),
    }
}

/// Verifies a revocation record's fields against the CA certificate.
pub fn verify_revocation(
    ca_cert_pem: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<(Uuid, chrono::DateTime<chrono::Utc>), MeshError> {
    let who = fields
        .get("instance")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_string();
    let bad = || MeshError::BadSignature(who.clone());
    let body = check_ca_signature(ca_cert_pem, fields)?.ok_or_else(bad)?;
    let id: Uuid = who.parse().map_err(|_| bad())?;
    let at = body
        .get("revoked_at")
        .and_then(Value::as_str)
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok())
        .map(|t| t.with_timezone(&chrono::Utc))
        .ok_or_else(bad)?;
    Ok((id, at))
}

/// The signed body of `fields` (without its signature) when the deployment CA of
/// `ca_cert_pem` signed it for this deployment (`mesh`); `None` when it did not.
fn check_ca_signature(
    ca_cert_pem: &str,
    fields: &serde_json::Map<String, Value>,
) -> Result<Option<serde_json::Map<String, Value>>, MeshError> {
    let Some(sig) = fields
        .get("signature")
        .and_then(Value::as_str)
        .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
    else {
        return Ok(None);
    };
    let mut body = fields.clone();
    body.remove("signature");
    let der = pem_der(ca_cert_pem)?;
    let (_, ca) = x509_parser::parse_x509_certificate(&der).map_err(cert_err)?;
    let pk = ca.public_key().subject_public_key.data.to_vec();
    let signed =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_ASN1, pk)
            .verify(
                canonical_json(&Value::Object(body.clone())).as_bytes(),
                &sig,
            )
            .is_ok();
    if !signed || body.get("mesh").and_then(Value::as_str) != Some(&mesh_id(ca_cert_pem)?) {
        return Ok(None);
    }
    Ok(Some(body))
}

/// Verifies a decision on held deletes stored as record `record` of [`HOLD_DECISIONS`]: the
/// deployment CA's signature, the record id the body names, and a body that reads as a
/// decision. Returns the decision.
pub fn verify_hold_decision(
    ca_cert_pem: &str,
    record: Uuid,
    fields: &serde_json::Map<String, Value>,
) -> Result<crate::store::HoldVerdict, MeshError> {
    let bad = |why: &str| MeshError::BadDecision(format!("hold decision {record}: {why}"));
    let body = check_ca_signature(ca_cert_pem, fields)?
        .ok_or_else(|| bad("not signed by this deployment's CA"))?;
    if body.get("record").and_then(Value::as_str) != Some(&record.to_string()) {
        return Err(bad("signed for another record id"));
    }
    crate::store::HoldVerdict::from_fields(&body).ok_or_else(|| bad("not a decision"))
}

/// Every verified revocation in the store (deleted records included: a delete cannot un-revoke).
pub fn load_revocations(
    store: &crate::store::Store,
    ca_cert_pem: &str,
) -> std::collections::HashMap<Uuid, chrono::DateTime<chrono::Utc>> {
    let mut out = std::collections::HashMap::new();
    for (id, rec) in store.scan_table(REVOCATIONS).flatten() {
        match verify_revocation(ca_cert_pem, &rec.state.live_fields()) {
            Ok((who, at)) if who == id => {
                out.insert(who, at);
            }
            _ => tracing::warn!(%id, "ignoring an unverifiable revocation record"),
        }
    }
    out
}

/// This laptop's own revocation, when the signed revocation has reached it: when, and the
/// reason given ("no reason given" if empty).
pub fn own_revocation(
    store: &crate::store::Store,
) -> Option<(chrono::DateTime<chrono::Utc>, String)> {
    let cred = load_credential(store.dir()).ok().flatten()?;
    let me = store.id();
    let at = *load_revocations(store, &cred.ca_cert).get(&me)?;
    let reason = store
        .get(REVOCATIONS, &me)
        .ok()
        .flatten()
        .and_then(|r| {
            r.state
                .value("reason")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .filter(|r| !r.is_empty())
        .unwrap_or_else(|| "no reason given".into());
    Some((at, reason))
}

/// File in the data directory noting that a peer refused this laptop's certificate as revoked
/// (the TLS `certificate_revoked` alert) before the signed revocation reached it: JSON
/// `{"at": RFC 3339, "peer": ADDR, "cert_sha256": HEX}`. It speaks only for the certificate it
/// names, so joining with a new credential makes it moot.
pub const REVOKED_NOTICE_FILE: &str = "revoked-notice.json";

fn cert_sha256(pem: &str) -> Option<String> {
    pem_der(pem).ok().map(|d| hex::encode(Sha256::digest(&d)))
}

/// Notes (best effort) that the peer at `addr` refused this laptop's certificate as revoked.
pub fn note_refused_as_revoked(dir: &Path, addr: &str) {
    let Some(sha) = load_credential(dir)
        .ok()
        .flatten()
        .and_then(|c| cert_sha256(&c.cert))
    else {
        return;
    };
    let v = json!({"at": chrono::Utc::now().to_rfc3339(), "peer": addr, "cert_sha256": sha});
    if let Err(e) = write_private(&dir.join(REVOKED_NOTICE_FILE), &v.to_string()) {
        tracing::warn!(error = %e, "cannot note that a peer refused this laptop as revoked");
    }
}

/// When and by which address this laptop's current certificate was refused as revoked.
pub fn refused_as_revoked(dir: &Path) -> Option<(chrono::DateTime<chrono::Utc>, String)> {
    let text = std::fs::read_to_string(dir.join(REVOKED_NOTICE_FILE)).ok()?;
    let v: Value = serde_json::from_str(&text).ok()?;
    let cred = load_credential(dir).ok().flatten()?;
    if v["cert_sha256"].as_str()? != cert_sha256(&cred.cert)? {
        return None;
    }
    let at = chrono::DateTime::parse_from_rfc3339(v["at"].as_str()?).ok()?;
    Some((
        at.with_timezone(&chrono::Utc),
        v["peer"].as_str()?.to_string(),
    ))
}

fn write_private(path: &Path, text: &str) -> Result<(), MeshError> {
    // Atomic and owner-only: a credential or CA key is never half written or world-readable.
    crate::fsutil::write_private_atomic(path, text.as_bytes()).map_err(|e| MeshError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Writes any mesh file as JSON, readable only by its owner.
pub fn save<T: Serialize>(path: &Path, v: &T) -> Result<(), MeshError> {
    write_private(
        path,
        &serde_json::to_string_pretty(v).expect("plain struct"),
    )
}

/// Reads a CA file.
pub fn load_ca(path: &Path) -> Result<CaFile, MeshError> {
    let ca: CaFile = load_json(path)?;
    if ca.kind != KIND_CA && ca.kind != KIND_JOIN {
        return Err(MeshError::Invalid(format!(
            "{} is not a deployment CA file",
            path.display()
        )));
    }
    Ok(ca)
}

/// Reads a credential or a join file.
pub fn load_mesh_file(path: &Path) -> Result<MeshFile, MeshError> {
    let v: Value = load_json(path)?;
    match v.get("kind").and_then(Value::as_str) {
        Some(KIND_CREDENTIAL) => Ok(MeshFile::Credential(parse(path, v)?)),
        Some(KIND_JOIN) => Ok(MeshFile::Join(parse(path, v)?)),
        Some(KIND_CA) => Err(MeshError::Invalid(format!(
            "{} is the deployment CA itself: make a credential with `fieldsync mesh enroll`, \
             or a join file with `fieldsync mesh create --join-file`",
            path.display()
        ))),
        _ => Err(MeshError::Invalid(format!(
            "{} is not a fieldsync credential or join file",
            path.display()
        ))),
    }
}

/// Reads this laptop's credential from its data directory, if it has joined a deployment.
pub fn load_credential(dir: &Path) -> Result<Option<Credential>, MeshError> {
    let path = dir.join(CREDENTIAL_FILE);
    if !path.exists() {
        return Ok(None);
    }
    match load_mesh_file(&path)? {
        MeshFile::Credential(c) => Ok(Some(c)),
        MeshFile::Join(_) => Err(MeshError::Invalid(format!(
            "{} holds a join file, not a credential",
            path.display()
        ))),
    }
}

fn parse<T: serde::de::DeserializeOwned>(path: &Path, v: Value) -> Result<T, MeshError> {
    serde_json::from_value(v).map_err(|e| MeshError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

fn load_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, MeshError> {
    let text = std::fs::read_to_string(path).map_err(|e| MeshError::File {
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    serde_json::from_str(&text).map_err(|e| MeshError::File {
        path: path.display().to_string(),
        message: format!("not a fieldsync mesh file: {e}"),
    })
}

impl Credential {
    /// The deployment bundle key (32 bytes), or the one-line fix for a credential enrolled
    /// before bundles existed.
    pub fn bundle_key_bytes(&self) -> Result<[u8; 32], MeshError> {
        let fix = || {
            MeshError::Invalid(format!(
                "this laptop's credential was enrolled before USB bundles existed and holds no \
                 bundle key: on the coordinator's laptop run `fieldsync mesh enroll --instance {} \
                 --name {} --out NEW.fsmesh`, then here `fieldsync init --mesh NEW.fsmesh` (same \
                 instance, same data)",
                self.instance, self.name
            ))
        };
        let text = self.bundle_key.as_deref().ok_or_else(fix)?;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| fix())?;
        raw.try_into().map_err(|_| fix())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enrolled_certificates_name_their_instance_and_revocations_verify() {
        let ca = CaFile::create("Flood response 2026").unwrap();
        let id = Uuid::new_v4();
        let cred = ca.enroll(id, "laptop7").unwrap();
        let der = pem_der(&cred.cert).unwrap();
        assert_eq!(instance_of_der(&der), Some(id));
        let rev = ca.revoke(id, "stolen").unwrap();
        assert_eq!(verify_revocation(&ca.ca_cert, &rev).unwrap().0, id);
        // Tampering breaks the signature; another CA's signature does not verify.
        let mut forged = rev.clone();
        forged.insert("instance".into(), json!(Uuid::new_v4().to_string()));
        assert!(verify_revocation(&ca.ca_cert, &forged).is_err());
        let other = CaFile::create("Other").unwrap();
        let foreign = other.revoke(id, "x").unwrap();
        assert!(verify_revocation(&ca.ca_cert, &foreign).is_err());
        assert_ne!(ca.mesh_id().unwrap(), other.mesh_id().unwrap());
    }

    #[test]
    fn every_member_gets_the_same_bundle_key_and_another_deployment_another() {
        let ca = CaFile::create("Flood response 2026").unwrap();
        let a = ca.enroll(Uuid::new_v4(), "a").unwrap();
        let b = ca.enroll(Uuid::new_v4(), "b").unwrap();
        assert_eq!(a.bundle_key_bytes().unwrap(), b.bundle_key_bytes().unwrap());
        let other = CaFile::create("Flood response 2026").unwrap();
        let c = other.enroll(Uuid::new_v4(), "c").unwrap();
        assert_ne!(a.bundle_key_bytes().unwrap(), c.bundle_key_bytes().unwrap());
        // A credential from before bundles: a clear error naming the fix.
        let old = Credential {
            bundle_key: None,
            ..a
        };
        let e = old.bundle_key_bytes().unwrap_err().to_string();
        assert!(e.contains("mesh enroll --instance"), "{e}");
    }
}
