//! mDNS advertise and browse (mdns-sd) → peer events on a channel.
//!
//! The agent registers `_fieldsync._tcp.local.` on every up, multicast-capable, non-loopback
//! interface, with TXT properties naming the instance, deployment and protocol range. Browsing
//! turns mdns-sd's events into [`PeerEvent`]s: our own advert, other deployments and
//! incompatible versions are filtered out (logged once each), repeated resolutions of one peer
//! are deduplicated, and address-less resolutions are ignored.
//!
//! An advert is a claim by anyone on the LAN (the deployment id in it is public), so what it
//! says is a *candidate*, never a peer: only addresses on the subnet of the interface the
//! advert arrived on are passed on (no off-subnet address, no loopback: an outsider cannot
//! make the agent dial elsewhere), at most [`MAX_CANDIDATES`] candidates are remembered (the
//! least recently heard is forgotten first, with a `Lost` event), and a candidate not heard
//! for [`CANDIDATE_TTL`] is forgotten. The agent stores a peer row only after a session's TLS
//! handshake proved the instance ([`crate::agent`]).

use crate::protocol::{MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use mdns_sd::{IfKind, ScopedIp, ServiceDaemon, ServiceEvent, ServiceInfo};
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

/// Most unverified candidates remembered at once.
pub const MAX_CANDIDATES: usize = 64;
/// A candidate not heard again for this long is forgotten (mDNS re-announces well within it).
pub const CANDIDATE_TTL: Duration = Duration::from_secs(15 * 60);

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
    /// Adverts of our deployment naming no address on the subnet of the interface they
    /// arrived on (off-subnet or loopback): not dialled.
    pub off_subnet: u64,
    /// Unverified candidates remembered now (at most [`MAX_CANDIDATES`]).
    pub candidates: usize,
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
    off_subnet: u64,
    candidates: usize,
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
            let mut seen = Candidates::default();
            let mut logged: HashSet<String> = HashSet::new();
            let mut sweep = tokio::time::interval(Duration::from_secs(60));
            loop {
                let ev = tokio::select! {
                    ev = events.recv_async() => match ev { Ok(ev) => ev, Err(_) => break },
                    _ = sweep.tick() => {
                        let gone = seen.expire(Instant::now());
                        if !forget(&tx, &pe, &st, &seen, gone).await {
                            break;
                        }
                        continue;
                    }
                };
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
                            if logged.len() < MAX_CANDIDATES && logged.insert(svc.fullname.clone())
                            {
                                info!(%instance, %mesh, proto = ?get(TXT_PROTO),
                                      "ignoring a fieldsync agent of another deployment or protocol version");
                            }
                            lock(&st).ignored += 1;
                            continue;
                        }
                        {
                            let mut s = lock(&st);
                            s.peers_heard += 1;
                            s.last_peer = Some(Instant::now());
                        }
                        let nets = local_nets();
                        let mut addrs: Vec<SocketAddr> = svc
                            .get_addresses()
                            .iter()
                            .filter(|a| on_link(a, &nets))
                            .map(|a| a.to_ip_addr())
                            .filter(|ip| !ip.is_loopback() && !is_ipv6_link_local(ip))
                            .map(|ip| SocketAddr::new(ip, svc.get_port()))
                            .collect();
                        if addrs.is_empty() {
                            lock(&st).off_subnet += 1;
                            debug!(%instance, addrs = ?svc.get_addresses(),
                                   "advert names no address on the subnet it arrived on: not dialled");
                            continue;
                        }
                        // IPv4 first: link-local IPv6 needs a scope we do not carry.
                        addrs.sort_by_key(|a| (a.is_ipv6(), *a));
                        let name = get(TXT_NAME).unwrap_or_default();
                        let (changed, evicted) =
                            seen.heard(&svc.fullname, instance, &addrs, Instant::now());
                        if !forget(&tx, &pe, &st, &seen, evicted).await {
                            break;
                        }
                        if !changed {
                            continue;
                        }
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
                        let gone = seen.remove(&fullname).into_iter().collect();
                        if !forget(&tx, &pe, &st, &seen, gone).await {
                            break;
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
            off_subnet: s.off_subnet,
            candidates: s.candidates,
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

/// Sends `Lost` for forgotten candidates and updates the count; false once the agent is gone.
async fn forget(
    tx: &mpsc::Sender<PeerEvent>,
    peers: &Mutex<HashMap<Uuid, String>>,
    state: &Mutex<State>,
    seen: &Candidates,
    gone: Vec<Uuid>,
) -> bool {
    lock(state).candidates = seen.len();
    for instance in gone {
        lock(peers).remove(&instance);
        if tx.send(PeerEvent::Lost { instance }).await.is_err() {
            return false;
        }
    }
    true
}

/// What adverts claimed, bounded: advert full name → (instance, addresses, last heard).
#[derive(Default)]
struct Candidates {
    by_name: HashMap<String, (Uuid, Vec<SocketAddr>, Instant)>,
}

impl Candidates {
    /// Notes an advert heard at `now`. Returns whether it is new or its instance or addresses
    /// changed, and the instances forgotten to stay within [`MAX_CANDIDATES`] (least recently
    /// heard first).
    fn heard(
        &mut self,
        name: &str,
        instance: Uuid,
        addrs: &[SocketAddr],
        now: Instant,
    ) -> (bool, Vec<Uuid>) {
        let changed = self
            .by_name
            .get(name)
            .is_none_or(|(i, a, _)| *i != instance || a != addrs);
        self.by_name
            .insert(name.to_string(), (instance, addrs.to_vec(), now));
        let mut evicted = Vec::new();
        while self.by_name.len() > MAX_CANDIDATES {
            let oldest = self
                .by_name
                .iter()
                .filter(|(n, _)| n.as_str() != name)
                .min_by_key(|(_, (_, _, t))| *t)
                .map(|(n, _)| n.clone());
            let Some(oldest) = oldest else { break };
            if let Some((i, _, _)) = self.by_name.remove(&oldest) {
                evicted.push(i);
            }
        }
        (changed, evicted)
    }

    /// Forgets an advert (its goodbye); the instance it named, if it was remembered.
    fn remove(&mut self, name: &str) -> Option<Uuid> {
        self.by_name.remove(name).map(|(i, _, _)| i)
    }

    /// Forgets adverts not heard for [`CANDIDATE_TTL`] before `now`; their instances.
    fn expire(&mut self, now: Instant) -> Vec<Uuid> {
        let mut gone = Vec::new();
        self.by_name.retain(|_, (i, _, t)| {
            let keep = now.saturating_duration_since(*t) < CANDIDATE_TTL;
            if !keep {
                gone.push(*i);
            }
            keep
        });
        gone
    }

    fn len(&self) -> usize {
        self.by_name.len()
    }
}

/// One address of a local interface: (interface index, address, netmask).
type LocalNet = (u32, IpAddr, IpAddr);

/// The addresses and netmasks of this host's interfaces.
fn local_nets() -> Vec<LocalNet> {
    if_addrs::get_if_addrs()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|i| {
            let index = i.index?;
            Some(match i.addr {
                if_addrs::IfAddr::V4(a) => (index, IpAddr::V4(a.ip), IpAddr::V4(a.netmask)),
                if_addrs::IfAddr::V6(a) => (index, IpAddr::V6(a.ip), IpAddr::V6(a.netmask)),
            })
        })
        .collect()
}

/// True if an advertised address lies on the subnet of (one of) the interface(s) the advert
/// arrived on.
fn on_link(addr: &ScopedIp, nets: &[LocalNet]) -> bool {
    let ifaces: Vec<u32> = match addr {
        ScopedIp::V4(v4) => v4.interface_ids().iter().map(|i| i.index).collect(),
        ScopedIp::V6(v6) => vec![v6.scope_id().index],
        _ => return false,
    };
    let ip = addr.to_ip_addr();
    nets.iter()
        .any(|(index, net, mask)| ifaces.contains(index) && same_subnet(ip, *net, *mask))
}

/// True if `ip` and `net` agree on every bit of `mask` (and are of one family). A loopback
/// `ip` is never on a non-loopback subnet, and loopback interfaces do not take adverts.
fn same_subnet(ip: IpAddr, net: IpAddr, mask: IpAddr) -> bool {
    match (ip, net, mask) {
        (IpAddr::V4(ip), IpAddr::V4(net), IpAddr::V4(mask)) => {
            let m = u32::from(mask);
            !ip.is_loopback() && u32::from(ip) & m == u32::from(net) & m
        }
        (IpAddr::V6(ip), IpAddr::V6(net), IpAddr::V6(mask)) => {
            let m = u128::from(mask);
            !ip.is_loopback() && u128::from(ip) & m == u128::from(net) & m
        }
        _ => false,
    }
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
    fn subnets() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let (net, mask) = (ip("198.51.100.1"), ip("255.255.255.0"));
        assert!(same_subnet(ip("198.51.100.77"), net, mask));
        assert!(!same_subnet(ip("192.0.2.1"), net, mask), "off-subnet");
        assert!(!same_subnet(ip("127.0.0.1"), net, mask), "loopback");
        assert!(!same_subnet(ip("2001:db8::1"), net, mask), "other family");
        let (net6, mask6) = (ip("2001:db8:1::5"), ip("ffff:ffff:ffff:ffff::"));
        assert!(same_subnet(ip("2001:db8:1::99"), net6, mask6));
        assert!(!same_subnet(ip("2001:db8:2::99"), net6, mask6));
        assert!(
            !same_subnet(ip("::1"), ip("::"), ip("::")),
            "loopback, any mask"
        );
    }

    #[test]
    fn candidates_are_bounded_and_forgotten() {
        let t0 = Instant::now();
        let addr: Vec<SocketAddr> = vec!["198.51.100.2:7437".parse().unwrap()];
        let mut c = Candidates::default();
        let ids: Vec<Uuid> = (0..MAX_CANDIDATES + 10).map(|_| Uuid::new_v4()).collect();
        let mut evicted = vec![];
        for (n, id) in ids.iter().enumerate() {
            let at = t0 + Duration::from_millis(n as u64);
            let (changed, gone) = c.heard(&format!("a{n}"), *id, &addr, at);
            assert!(changed);
            evicted.extend(gone);
        }
        assert_eq!(c.len(), MAX_CANDIDATES);
        // The least recently heard went first.
        assert_eq!(evicted, ids[..10].to_vec());
        // Heard again unchanged: nothing new to dial.
        let last = MAX_CANDIDATES + 9;
        let again = t0 + Duration::from_secs(60);
        assert_eq!(
            c.heard(&format!("a{last}"), ids[last], &addr, again),
            (false, vec![])
        );
        // After the TTL everything not heard since is forgotten.
        let gone = c.expire(t0 + CANDIDATE_TTL + Duration::from_secs(1));
        assert_eq!(gone.len(), MAX_CANDIDATES - 1);
        assert_eq!(c.len(), 1);
        assert_eq!(c.remove(&format!("a{last}")), Some(ids[last]));
        assert_eq!(c.len(), 0);
    }

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
