//! Transport security: TLS 1.3 with mutual authentication against the deployment CA (rustls).
//!
//! Both ends present a certificate signed by the CA; the certificate names the instance, so a
//! laptop cannot claim another's id. Peers are reached by IP address, so certificates carry one
//! fixed DNS name ([`SERVER_NAME`]) and the client verifies the chain against that name.
//! Revoked instances are refused by both verifiers.
//!
//! Session resumption (TLS 1.3 tickets, stateful on the server): a process keeps one client
//! config per peer address ([`client_config_for`]), so a new connection to a peer it reached
//! before resumes that session and neither side sends its certificate again. A resumed
//! handshake runs no certificate verifier, so revocation is enforced on the stored sessions
//! instead: the server forgets every stored session whenever the revoked set grows
//! ([`Revoked::generation`]), and the client never offers a ticket of a revoked peer. Either
//! way the connection falls back to a full handshake, where the verifiers refuse the revoked
//! certificate with the `certificate_revoked` alert. rustls keeps client sessions in memory
//! only (they are not serializable), so a one-shot CLI process always makes a full handshake.

use crate::mesh::{self, Credential, MeshError, SERVER_NAME};
use chrono::{DateTime, Utc};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::client::{ClientSessionStore, Tls12ClientSessionValue, Tls13ClientSessionValue};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::{ServerSessionMemoryCache, StoresServerSessions};
use rustls::NamedGroup;
use rustls::{
    ClientConfig, DigitallySignedStruct, DistinguishedName, Error as TlsError, RootCertStore,
    ServerConfig, SignatureScheme,
};
use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use uuid::Uuid;

/// This laptop's identity in its deployment.
pub struct Identity {
    /// The instance the certificate is for.
    pub instance: Uuid,
    /// Deployment name.
    pub deployment: String,
    /// Deployment id (derived from the CA certificate).
    pub mesh_id: String,
    /// CA certificate (PEM), to verify revocations.
    pub ca_pem: String,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    roots: Arc<RootCertStore>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("instance", &self.instance)
            .field("mesh_id", &self.mesh_id)
            .finish_non_exhaustive()
    }
}

fn bad(e: impl std::fmt::Display) -> MeshError {
    MeshError::Cert(e.to_string())
}

impl Identity {
    /// Loads an identity from a credential.
    pub fn from_credential(c: &Credential) -> Result<Self, MeshError> {
        let ca = CertificateDer::from_pem_slice(c.ca_cert.as_bytes()).map_err(bad)?;
        let cert = CertificateDer::from_pem_slice(c.cert.as_bytes()).map_err(bad)?;
        let key = PrivateKeyDer::from_pem_slice(c.key.as_bytes()).map_err(bad)?;
        if mesh::instance_of_der(&cert) != Some(c.instance) {
            return Err(MeshError::Invalid(
                "the credential's certificate is not for its instance id".into(),
            ));
        }
        let mut roots = RootCertStore::empty();
        roots.add(ca).map_err(bad)?;
        Ok(Self {
            instance: c.instance,
            deployment: c.deployment.clone(),
            mesh_id: mesh::mesh_id(&c.ca_cert)?,
            ca_pem: c.ca_cert.clone(),
            chain: vec![cert],
            key,
            roots: Arc::new(roots),
        })
    }
}

/// Revoked instances and when they were revoked (refreshed from the replicated table).
#[derive(Debug, Default)]
pub struct Revoked(RwLock<HashMap<Uuid, DateTime<Utc>>>, AtomicU64);

impl Revoked {
    /// Replaces the set.
    pub fn set(&self, all: HashMap<Uuid, DateTime<Utc>>) {
        let mut cur = self.0.write().unwrap_or_else(|e| e.into_inner());
        if *cur != all {
            // Stored TLS sessions were made before this change: see `ServerSessions`.
            self.1.fetch_add(1, Ordering::SeqCst);
        }
        *cur = all;
    }

    /// Counts changes of the set (starts at 0).
    pub fn generation(&self) -> u64 {
        self.1.load(Ordering::SeqCst)
    }

    /// When `id` was revoked, if it was.
    pub fn get(&self, id: &Uuid) -> Option<DateTime<Utc>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .copied()
    }

    /// Every revocation.
    pub fn all(&self) -> HashMap<Uuid, DateTime<Utc>> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// How sync connections are protected.
#[derive(Clone, Debug)]
pub enum Transport {
    /// Mutual TLS within a deployment.
    Tls {
        /// Our identity.
        identity: Arc<Identity>,
        /// Revoked instances.
        revoked: Arc<Revoked>,
    },
    /// No protection (`--insecure-plaintext`, for debugging only).
    Plaintext,
}

impl Transport {
    /// The deployment id for mDNS, if in a deployment.
    pub fn mesh_id(&self) -> Option<&str> {
        match self {
            Transport::Tls { identity, .. } => Some(&identity.mesh_id),
            Transport::Plaintext => None,
        }
    }
}

impl Identity {
    /// Checks that `cert_pem` is a member certificate issued by this deployment's CA (the same
    /// chain check as a TLS peer's, at the current time) and returns the instance it is for.
    /// Used for files signed by a member (USB bundles), where there is no handshake.
    pub fn verify_member(&self, cert_pem: &str) -> Result<Uuid, MeshError> {
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).map_err(bad)?;
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(bad)?;
        verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map_err(bad)?;
        mesh::instance_of_der(&cert)
            .ok_or_else(|| MeshError::Cert("certificate names no fieldsync instance".into()))
    }
}

/// Signatures of commits (`crate::signed`): the member credential's key (ECDSA P-256, which the
/// CA certified at enrolment) signs, fixed-size 64-byte signatures (r ‖ s).
impl Identity {
    /// This laptop's member certificate (DER), sent with its signed commits.
    pub fn cert_der(&self) -> Vec<u8> {
        self.chain.first().map(|c| c.to_vec()).unwrap_or_default()
    }

    /// Signs `msg` with the credential key (ECDSA P-256 SHA-256, 64 bytes).
    pub fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, MeshError> {
        use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
        let PrivateKeyDer::Pkcs8(p8) = &self.key else {
            return Err(MeshError::Cert(
                "the credential key is not a PKCS#8 key".into(),
            ));
        };
        let rng = ring::rand::SystemRandom::new();
        let kp = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            p8.secret_pkcs8_der(),
            &rng,
        )
        .map_err(bad)?;
        Ok(kp.sign(&rng, msg).map_err(bad)?.as_ref().to_vec())
    }

    /// Checks that `der` is a member certificate of this deployment (as [`Self::verify_member`])
    /// and returns its instance and public key (uncompressed P-256 point).
    pub fn member_key(&self, der: &[u8]) -> Result<(Uuid, Vec<u8>), MeshError> {
        let cert = CertificateDer::from(der.to_vec());
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .build()
            .map_err(bad)?;
        verifier
            .verify_client_cert(&cert, &[], UnixTime::now())
            .map_err(bad)?;
        let id = mesh::instance_of_der(&cert)
            .ok_or_else(|| MeshError::Cert("certificate names no fieldsync instance".into()))?;
        let (_, parsed) = x509_parser::parse_x509_certificate(der).map_err(bad)?;
        Ok((id, parsed.public_key().subject_public_key.data.to_vec()))
    }
}

/// True if `sig` is `key`'s ECDSA P-256 SHA-256 fixed-size signature of `msg`.
pub fn verify_signature(key: &[u8], msg: &[u8], sig: &[u8]) -> bool {
    ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, key)
        .verify(msg, sig)
        .is_ok()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Server side: require a client certificate from our CA, for an instance not revoked.
pub fn server_config(id: &Identity, revoked: Arc<Revoked>) -> Result<ServerConfig, MeshError> {
    let inner = WebPkiClientVerifier::builder_with_provider(id.roots.clone(), provider())
        .build()
        .map_err(bad)?;
    let verifier = Arc::new(ClientVerifier {
        inner,
        revoked: revoked.clone(),
    });
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(id.chain.clone(), id.key.clone_key())
        .map_err(bad)?;
    // Stateful tickets only (rustls' default ticketer makes none): a stateless ticket could not
    // be withdrawn when its client is revoked.
    cfg.session_storage = Arc::new(ServerSessions {
        revoked,
        current: Mutex::new((0, ServerSessionMemoryCache::new(SERVER_SESSIONS))),
    });
    // One ticket per handshake (rustls sends two): a client resumes with one ticket per new
    // connection and gets a fresh one on it, so one is enough and saves bytes.
    cfg.send_tls13_tickets = 1;
    Ok(cfg)
}

/// Sessions a server keeps for resumption (rustls' default size).
const SERVER_SESSIONS: usize = 256;
/// Tickets a client keeps per peer address.
const CLIENT_TICKETS: usize = 8;
/// Peer addresses a process keeps client configs (and so sessions) for.
const CLIENT_ADDRESSES: usize = 1024;

/// The server's resumable sessions, all forgotten whenever the revoked set changes, so a
/// session of a certificate revoked since can never be resumed (the client falls back to a
/// full handshake, which refuses it).
#[derive(Debug)]
struct ServerSessions {
    revoked: Arc<Revoked>,
    /// The revoked set's generation the cache was made for, and the cache.
    current: Mutex<(u64, Arc<ServerSessionMemoryCache>)>,
}

impl ServerSessions {
    fn cache(&self) -> Arc<ServerSessionMemoryCache> {
        let now = self.revoked.generation();
        let mut cur = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if cur.0 != now {
            *cur = (now, ServerSessionMemoryCache::new(SERVER_SESSIONS));
        }
        cur.1.clone()
    }
}

impl StoresServerSessions for ServerSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.cache().put(key, value)
    }

    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache().get(key)
    }

    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.cache().take(key)
    }

    fn can_cache(&self) -> bool {
        true
    }
}

/// A client's resumable sessions with the peer at one address, each tagged with the instance
/// its server certificate named (verified in the full handshake that made it).
#[derive(Debug)]
struct PeerSessions {
    revoked: Arc<Revoked>,
    /// The config's verifier slot: a resumed handshake verifies nothing, so taking a ticket
    /// puts the instance it was made with here.
    seen: SeenPeer,
    tickets: Mutex<VecDeque<(Uuid, Tls13ClientSessionValue)>>,
    kx: Mutex<Option<NamedGroup>>,
}

impl ClientSessionStore for PeerSessions {
    fn set_kx_hint(&self, _: ServerName<'static>, group: NamedGroup) {
        *self.kx.lock().unwrap_or_else(|e| e.into_inner()) = Some(group);
    }

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        *self.kx.lock().unwrap_or_else(|e| e.into_inner())
    }

    // TLS 1.2 is never negotiated (both configs are TLS 1.3 only).
    fn set_tls12_session(&self, _: ServerName<'static>, _: Tls12ClientSessionValue) {}

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(&self, _: ServerName<'static>, value: Tls13ClientSessionValue) {
        // Tickets arrive after the handshake, whose verifier (or resumed ticket) set `seen`.
        let Some(id) = *self.seen.lock().unwrap_or_else(|e| e.into_inner()) else {
            return;
        };
        let mut t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() >= CLIENT_TICKETS {
            t.pop_front();
        }
        t.push_back((id, value));
    }

    fn take_tls13_ticket(&self, _: &ServerName<'static>) -> Option<Tls13ClientSessionValue> {
        let mut t = self.tickets.lock().unwrap_or_else(|e| e.into_inner());
        while let Some((id, value)) = t.pop_back() {
            if self.revoked.get(&id).is_some() {
                // Never resume with a revoked peer: the full handshake refuses it.
                t.retain(|(other, _)| *other != id);
                continue;
            }
            *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
            return Some(value);
        }
        None
    }
}

type ConfigKey = (Uuid, usize, String);

fn client_configs() -> std::sync::MutexGuard<'static, HashMap<ConfigKey, (ClientConfig, SeenPeer)>>
{
    static CONFIGS: std::sync::OnceLock<Mutex<HashMap<ConfigKey, (ClientConfig, SeenPeer)>>> =
        std::sync::OnceLock::new();
    CONFIGS
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// [`client_config`] for connections to `addr`, shared by every connection this process opens
/// there with this identity and revoked set, so a new connection resumes the last session
/// (no certificates on the wire). The seen slot is shared too: it names the instance of the
/// last handshake with that address.
pub fn client_config_for(
    addr: &str,
    id: &Identity,
    revoked: Arc<Revoked>,
) -> Result<(ClientConfig, SeenPeer), MeshError> {
    let key = (
        id.instance,
        Arc::as_ptr(&revoked) as usize,
        addr.to_string(),
    );
    let mut m = client_configs();
    if let Some((cfg, seen)) = m.get(&key) {
        return Ok((cfg.clone(), seen.clone()));
    }
    let (mut cfg, seen) = client_config(id, revoked.clone())?;
    cfg.resumption = rustls::client::Resumption::store(Arc::new(PeerSessions {
        revoked,
        seen: seen.clone(),
        tickets: Mutex::default(),
        kx: Mutex::default(),
    }));
    if m.len() >= CLIENT_ADDRESSES {
        m.clear();
    }
    m.insert(key, (cfg.clone(), seen.clone()));
    Ok((cfg, seen))
}

/// Where a client's verifier records the instance the server's certificate is for.
pub type SeenPeer = Arc<Mutex<Option<Uuid>>>;

/// Client side: present our certificate, accept only a server of our CA that is not revoked,
/// and report which instance the server's certificate is for.
pub fn client_config(
    id: &Identity,
    revoked: Arc<Revoked>,
) -> Result<(ClientConfig, SeenPeer), MeshError> {
    let inner = WebPkiServerVerifier::builder_with_provider(id.roots.clone(), provider())
        .build()
        .map_err(bad)?;
    let seen = Arc::new(Mutex::new(None));
    let verifier = Arc::new(ServerVerifier {
        inner,
        revoked,
        seen: seen.clone(),
    });
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(bad)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
        .map_err(bad)?;
    Ok((cfg, seen))
}

/// The instance a verified peer certificate is for.
pub fn peer_instance(certs: Option<&[CertificateDer<'_>]>) -> Option<Uuid> {
    certs
        .and_then(|c| c.first())
        .and_then(|c| mesh::instance_of_der(c))
}

fn check_identity(end_entity: &CertificateDer<'_>, revoked: &Revoked) -> Result<Uuid, TlsError> {
    let id = mesh::instance_of_der(end_entity)
        .ok_or_else(|| TlsError::General("certificate names no fieldsync instance".into()))?;
    if revoked.get(&id).is_some() {
        tracing::info!(instance = %id, "certificate of a revoked instance refused");
        // `Revoked` (not a general error) makes rustls send the `certificate_revoked` alert:
        // the only thing a revoked laptop can still learn from a peer that refuses it.
        return Err(TlsError::InvalidCertificate(
            rustls::CertificateError::Revoked,
        ));
    }
    Ok(id)
}

thread_local! {
    /// The revoked instance whose client certificate this thread's last server handshake
    /// refused. The `certificate_revoked` error carries no instance, and rustls verifies in
    /// the same poll that fails the handshake, so the server reads it right after the failure
    /// on the same thread ([`take_refused_revoked`]) to name the laptop in its refusal log.
    static REFUSED_REVOKED: std::cell::Cell<Option<Uuid>> = const { std::cell::Cell::new(None) };
}

/// The revoked instance the last refused server handshake on this thread named, taken.
pub fn take_refused_revoked() -> Option<Uuid> {
    REFUSED_REVOKED.with(std::cell::Cell::take)
}

#[derive(Debug)]
struct ClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    revoked: Arc<Revoked>,
}

impl ClientCertVerifier for ClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, TlsError> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        check_identity(end_entity, &self.revoked).inspect_err(|_| {
            let id = mesh::instance_of_der(end_entity).filter(|i| self.revoked.get(i).is_some());
            REFUSED_REVOKED.with(|c| c.set(id));
        })?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct ServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    revoked: Arc<Revoked>,
    seen: SeenPeer,
}

impl ServerCertVerifier for ServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        // Peers are dialled by IP; every node certificate carries the fixed deployment name.
        let name = ServerName::try_from(SERVER_NAME).expect("valid DNS name");
        self.inner
            .verify_server_cert(end_entity, intermediates, &name, ocsp_response, now)?;
        let id = check_identity(end_entity, &self.revoked)?;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(id);
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
