//! mDNS advertise and browse (mdns-sd) → peer events on a channel.
//!
//! The agent registers `_fieldsync._tcp.local.` on every up, multicast-capable, non-loopback
//! interface, with TXT properties naming the instance, deployment and protocol range. Browsing
//! turns mdns-sd's events into [`PeerEvent`]s: our own advert, other deployments and
//! incompatible versions are filtered out (logged once each), repeated resolutions of one peer
//! are deduplicated, and address-less resolutions are ignored.

use crate::protocol::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use mdns_sd::{IfKind, ServiceDaemon, ServiceEvent, ServiceInfo};
use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tracing::{debug, info};
use uuid::Uuid;

/// The DNS-SD service type.
pub const SERVICE_TYPE: &str = "_fieldsync._tcp.local.";
/// TXT keys.
const TXT_INSTANCE: &str = "id";
const TXT_MESH: &str = "mesh";
const TXT_PROTO: &str = "proto";
const TXT_NAME: &str = "name";

/// A change in who is on the network.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A peer of our deployment is reachable at these addresses (new, or its addresses changed).
    Found {
        /// Its instance id.
        instance: Uuid,
        /// Its display name.
        name: String,
        /// Addresses to try, in order.
        addrs: Vec<SocketAddr>,
    },
    /// A peer said goodbye or its record expired.
    Lost {
        /// Its instance id.
        instance: Uuid,
    },
}

/// Discovery failures.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// mdns-sd refused.
    #[error("mDNS: {0}")]
    Mdns(#[from] mdns_sd::Error),
}

/// What this instance advertises.
#[derive(Clone, Debug)]
pub struct Advert {
    /// Instance id.
    pub instance: Uuid,
    /// Deployment (mesh) id: peers with another one are ignored.
    pub mesh: String,
    /// Display name.
    pub name: String,
    /// Sync port.
    pub port: u16,
}

/// What discovery has seen, for `status` ("nobody is here" vs "discovery is blocked").
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Health {
    /// Up, multicast-capable, non-loopback interfaces.
    pub interfaces: Vec<String>,
    /// Whether our own advert has been heard back (multicast works at least locally).
    pub heard_self: bool,
    /// Peers of our deployment heard since start.
    pub peers_heard: u64,
    /// Adverts of other deployments or versions ignored.
    pub ignored: u64,
    /// Seconds since the last peer advert was heard (None: never).
    pub secs_since_peer: Option<u64>,
    /// A human explanation when no peer has been heard.
    pub diagnosis: Option<String>,
}

#[derive(Default)]
struct State {
    heard_self: bool,
    peers_heard: u64,
    ignored: u64,
    last_peer: Option<Instant>,
    started: Option<Instant>,
}

/// A running advertiser/browser.
pub struct Discovery {
    daemon: ServiceDaemon,
    fullname: String,
    state: Arc<Mutex<State>>,
    peers: Arc<Mutex<HashMap<Uuid, String>>>,
}

impl Discovery {
    /// Starts advertising and browsing on `mdns_port` (5353 on a real network); events go to `tx`.
    pub fn start(
        advert: &Advert,
        mdns_port: u16,
        tx: mpsc::Sender<PeerEvent>,
    ) -> Result<Self, DiscoveryError> {
        let daemon = ServiceDaemon::new_with_port(mdns_port)?;
        // A peer on loopback is this machine; field laptops find each other on real links.
        let _ = daemon.disable_interface(vec![IfKind::LoopbackV4, IfKind::LoopbackV6]);
        let _ = daemon.set_ip_check_interval(2);
        let instance_name = advert.instance.simple().to_string();
        let host = format!("fs-{}.local.", advert.instance.simple());
        let proto = format!("{MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION}");
        let props = [
            (TXT_INSTANCE, advert.instance.to_string()),
            (TXT_MESH, advert.mesh.clone()),
            (TXT_PROTO, proto),
            (TXT_NAME, advert.name.chars().take(60).collect::<String>()),
        ];
        let info = ServiceInfo::new(
            SERVICE_TYPE,
            &instance_name,
            &host,
            "",
            advert.port,
            &props[..],
        )?
        .enable_addr_auto();
        let fullname = info.get_fullname().to_string();
        daemon.register(info)?;
        let events = daemon.browse(SERVICE_TYPE)?;
        let state = Arc::new(Mutex::new(State {
            started: Some(Instant::now()),
            ..Default::default()
        }));
        let peers = Arc::new(Mutex::new(HashMap::new()));
        let me = advert.clone();
        let (st, pe) = (state.clone(), peers.clone());
        tokio::spawn(async move {
            let mut seen: HashMap<String, (Uuid, Vec<SocketAddr>)> = HashMap::new();
            let mut logged: HashSet<String> = HashSet::new();
            while let Ok(ev) = events.recv_async().await {
                match ev {
                    ServiceEvent::ServiceResolved(svc) => {
                        let get = |k: &str| svc.get_property_val_str(k).map(str::to_string);
                        let Some(instance) = get(TXT_INSTANCE).and_then(|s| s.parse().ok()) else {
                            continue;
                        };
                        if instance == me.instance {
                            lock(&st).heard_self = true;
                            continue;
                        }
                        let mesh = get(TXT_MESH).unwrap_or_default();
                        let compatible = get(TXT_PROTO).is_some_and(|p| proto_overlaps(&p));
                        if mesh != me.mesh || !compatible {
                            if logged.insert(svc.fullname.clone()) {
                                lock(&st).ignored += 1;
                                info!(%instance, %mesh, proto = ?get(TXT_PROTO),
                                      "ignoring a fieldsync agent of another deployment or protocol version");
                            }
                            continue;
                        }
                        let mut addrs: Vec<SocketAddr> = svc
                            .get_addresses()
                            .iter()
                            .map(|a| a.to_ip_addr())
                            .filter(|ip| !ip.is_loopback() && !is_ipv6_link_local(ip))
                            .map(|ip| SocketAddr::new(ip, svc.get_port()))
                            .collect();
                        if addrs.is_empty() {
                            continue;
                        }
                        // IPv4 first: link-local IPv6 needs a scope we do not carry.
                        addrs.sort_by_key(|a| (a.is_ipv6(), *a));
                        {
                            let mut s = lock(&st);
                            s.peers_heard += 1;
                            s.last_peer = Some(Instant::now());
                        }
                        let name = get(TXT_NAME).unwrap_or_default();
                        if seen.get(&svc.fullname) == Some(&(instance, addrs.clone())) {
                            continue;
                        }
                        seen.insert(svc.fullname.clone(), (instance, addrs.clone()));
                        lock(&pe).insert(instance, svc.fullname.clone());
                        debug!(%instance, ?addrs, "peer resolved");
                        if tx
                            .send(PeerEvent::Found {
                                instance,
                                name,
                                addrs,
                            })
                            .await
                            .is_err()
                        {
                            break;
                        }
                    }
                    ServiceEvent::ServiceRemoved(_, fullname) => {
                        if let Some((instance, _)) = seen.remove(&fullname) {
                            lock(&pe).remove(&instance);
                            if tx.send(PeerEvent::Lost { instance }).await.is_err() {
                                break;
                            }
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Self {
            daemon,
            fullname,
            state,
            peers,
        })
    }

    /// Asks the network whether a peer is still there (after a failed session), so a crashed
    /// peer is dropped in seconds instead of at its TTL.
    pub fn verify(&self, instance: &Uuid) {
        let fullname = lock(&self.peers).get(instance).cloned();
        if let Some(f) = fullname {
            if let Err(e) = self.daemon.verify(f, Duration::from_secs(2)) {
                debug!(error = %e, "mDNS verify failed");
            }
        }
    }

    /// What discovery has seen so far.
    pub fn health(&self) -> Health {
        let s = lock(&self.state);
        let interfaces = multicast_interfaces();
        let secs_since_peer = s.last_peer.map(|t| t.elapsed().as_secs());
        let quiet = s
            .started
            .is_some_and(|t| t.elapsed() > Duration::from_secs(10));
        let diagnosis = if s.last_peer.is_some() || !quiet {
            None
        } else if interfaces.is_empty() {
            Some(
                "no up, multicast-capable network interface besides loopback: connect to a \
                  network, or list peers in fieldsync.toml"
                    .to_string(),
            )
        } else if !s.heard_self {
            Some(
                "mDNS traffic is not getting through (not even our own announcement came \
                  back): multicast to 224.0.0.251/ff02::fb port 5353 is probably blocked by a \
                  firewall; list peers in fieldsync.toml or use --peer"
                    .to_string(),
            )
        } else {
            Some(
                "no other fieldsync agent of this deployment heard on 5353: nobody may be \
                  here, or the network isolates clients (AP isolation); use --peer if you \
                  know an address"
                    .to_string(),
            )
        };
        Health {
            interfaces,
            heard_self: s.heard_self,
            peers_heard: s.peers_heard,
            ignored: s.ignored,
            secs_since_peer,
            diagnosis,
        }
    }

    /// Says goodbye on the network and stops the daemon (bounded wait).
    pub fn shutdown(self) {
        if let Ok(rx) = self.daemon.unregister(&self.fullname) {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
        if let Ok(rx) = self.daemon.shutdown() {
            let _ = rx.recv_timeout(Duration::from_secs(2));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn is_ipv6_link_local(ip: &IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// True if a TXT `proto` range `min-max` overlaps ours.
fn proto_overlaps(p: &str) -> bool {
    let Some((lo, hi)) = p.split_once('-') else {
        return false;
    };
    match (lo.parse::<u32>(), hi.parse::<u32>()) {
        (Ok(lo), Ok(hi)) => lo <= PROTOCOL_VERSION && hi >= MIN_PROTOCOL_VERSION,
        _ => false,
    }
}

/// Names of up, multicast-capable, non-loopback interfaces (from /sys/class/net).
pub fn multicast_interfaces() -> Vec<String> {
    const IFF_UP: u32 = 0x1;
    const IFF_LOOPBACK: u32 = 0x8;
    const IFF_MULTICAST: u32 = 0x1000;
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return vec![];
    };
    let mut out: Vec<String> = dir
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let flags = std::fs::read_to_string(e.path().join("flags")).ok()?;
            let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).ok()?;
            let ok = flags & IFF_UP != 0 && flags & IFF_MULTICAST != 0 && flags & IFF_LOOPBACK == 0;
            ok.then_some(name)
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protocol_ranges() {
        assert!(proto_overlaps(&format!(
            "{MIN_PROTOCOL_VERSION}-{PROTOCOL_VERSION}"
        )));
        assert!(proto_overlaps("0-99"));
        assert!(!proto_overlaps(&format!(
            "{}-{}",
            PROTOCOL_VERSION + 1,
            PROTOCOL_VERSION + 5
        )));
        assert!(!proto_overlaps("garbage"));
    }
}
