//! mDNS from a hostile LAN (issue #18 item 7), in network namespaces (tests/common/netns.rs):
//! an outsider who copied the deployment id from an advert forges adverts of its own. Adverts
//! are crafted as raw mDNS packets and multicast from the outsider's namespace; the test's
//! sockets are created in a thread moved into the namespace (`setns`), which is where they
//! stay. Needs root; skipped locally otherwise, fails in CI.

#[path = "common/netns.rs"]
mod netns;

use netns::{poll, sh, Lab};
use serde_json::{json, Value};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::Duration;
use uuid::Uuid;

/// Generous bound for anything that should happen "within seconds".
const SETTLE: Duration = Duration::from_secs(60);
const EVERY: Duration = Duration::from_millis(200);

/// Runs `f` on a thread inside network namespace `ns`; sockets it creates stay there.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    std::thread::scope(|s| {
        s.spawn(|| {
            let file = std::fs::File::open(format!("/run/netns/{ns}")).expect("netns file");
            // SAFETY: setns on a valid namespace fd changes only this thread's namespace.
            let r = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(r, 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .expect("namespace thread")
    })
}

/// A DNS name, uncompressed.
fn dns_name(out: &mut Vec<u8>, name: &str) {
    for label in name.trim_end_matches('.').split('.') {
        out.push(label.len() as u8);
        out.extend(label.as_bytes());
    }
    out.push(0);
}

/// One resource record; class 0x8001 is IN with the cache-flush bit.
fn rr(out: &mut Vec<u8>, name: &str, rtype: u16, class: u16, rdata: &[u8]) {
    dns_name(out, name);
    out.extend(rtype.to_be_bytes());
    out.extend(class.to_be_bytes());
    out.extend(120u32.to_be_bytes());
    out.extend((rdata.len() as u16).to_be_bytes());
    out.extend(rdata);
}

/// An unsolicited mDNS response announcing a fieldsync agent `instance` of deployment `mesh`
/// at `ip:port`, as a real agent's advert looks (PTR, SRV, TXT, A).
fn advert(instance: Uuid, mesh: &str, ip: Ipv4Addr, port: u16) -> Vec<u8> {
    const SVC: &str = "_fieldsync._tcp.local";
    let inst = format!("{}.{SVC}", instance.simple());
    let host = format!("spoof-{}.local", instance.simple());
    let mut p = vec![0, 0, 0x84, 0, 0, 0, 0, 4, 0, 0, 0, 0];
    let mut ptr = vec![];
    dns_name(&mut ptr, &inst);
    rr(&mut p, SVC, 12, 1, &ptr);
    let mut srv = vec![0, 0, 0, 0];
    srv.extend(port.to_be_bytes());
    dns_name(&mut srv, &host);
    rr(&mut p, &inst, 33, 0x8001, &srv);
    let proto = format!(
        "{}-{}",
        fieldsync::protocol::MIN_PROTOCOL_VERSION,
        fieldsync::protocol::PROTOCOL_VERSION
    );
    let mut txt = vec![];
    for kv in [
        format!("id={instance}"),
        format!("mesh={mesh}"),
        format!("proto={proto}"),
        "name=spoof".to_string(),
    ] {
        txt.push(kv.len() as u8);
        txt.extend(kv.as_bytes());
    }
    rr(&mut p, &inst, 16, 0x8001, &txt);
    rr(&mut p, &host, 1, 0x8001, &ip.octets());
    p
}

/// Connections waiting on `l` (never accepted before: each is one dial by the agent).
fn dials(l: &TcpListener) -> usize {
    let mut n = 0;
    while l.accept().is_ok() {
        n += 1;
    }
    n
}

fn status(lab: &Lab, i: usize) -> Value {
    lab.cli_json(i, &["status"])
}

fn peer_rows(lab: &Lab, i: usize) -> Vec<Value> {
    let out = lab.cli(i, &["peers"]);
    assert_eq!(out.code, 0, "peers: {}", out.stderr);
    out.json_lines()
}

/// 300 forged adverts of the deployment leave no peer rows and a bounded candidate set; an
/// advert naming an address off the subnet it arrived on, or loopback, is not dialled, while
/// one naming an on-subnet address is (so the filter, not a dead network, spared the others);
/// afterwards a real member still discovers the agent and they converge.
#[test]
fn forged_adverts_leave_no_peers_and_off_subnet_addresses_are_not_dialled() {
    let Some(lab) = Lab::new("forged_adverts", 2) else {
        return;
    };
    let (agent, outsider) = (0, 1);
    lab.start(agent, &[]);
    let ca: Value = serde_json::from_str(
        &std::fs::read_to_string(lab.scratch("ca-lab.fsca")).expect("the lab's CA"),
    )
    .expect("CA file");
    let mesh = fieldsync::mesh::mesh_id(ca["ca_cert"].as_str().expect("ca_cert")).unwrap();

    // The outsider's extra, off-subnet address, which the agent could reach if it dialled it.
    sh(&[
        "ip",
        "-n",
        lab.ns(outsider),
        "addr",
        "add",
        "192.0.2.1/24",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        lab.ns(agent),
        "route",
        "add",
        "192.0.2.0/24",
        "dev",
        "eth0",
    ]);
    sh(&[
        "ip",
        "-n",
        lab.ns(outsider),
        "route",
        "add",
        "224.0.0.0/4",
        "dev",
        "eth0",
    ]);
    let on_subnet: Ipv4Addr = lab.ip(outsider).parse().unwrap();
    let (control, off, mdns) = in_netns(lab.ns(outsider), || {
        let control = TcpListener::bind((on_subnet, 7001)).unwrap();
        let off = TcpListener::bind(("192.0.2.1", 7002)).unwrap();
        let mdns = UdpSocket::bind(("0.0.0.0", 5353)).unwrap();
        (control, off, mdns)
    });
    let looped = in_netns(lab.ns(agent), || {
        TcpListener::bind(("127.0.0.1", 7003)).unwrap()
    });
    for l in [&control, &off, &looped] {
        l.set_nonblocking(true).unwrap();
    }
    let group: SocketAddr = "224.0.0.251:5353".parse().unwrap();
    // Ids above any real one, so the agent dials at once (the smaller id dials first).
    let forged = |i: u128| Uuid::from_u128(u128::MAX - i);
    let send = |id: Uuid, ip: Ipv4Addr, port: u16| {
        mdns.send_to(&advert(id, &mesh, ip, port), group).unwrap();
    };
    send(forged(0), on_subnet, 7001);
    send(forged(1), "192.0.2.1".parse().unwrap(), 7002);
    send(forged(2), Ipv4Addr::LOCALHOST, 7003);
    let mut dialled = 0;
    poll(SETTLE, EVERY, || {
        dialled += dials(&control);
        (dialled > 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the on-subnet advert was never dialled:\n{}", lab.logs(40)));
    for i in 3..303 {
        send(forged(i), on_subnet, 7004);
        std::thread::sleep(Duration::from_millis(5));
    }
    // Every advert reached the agent: all 303 heard, 2 of them off the subnet.
    let mut disc = Value::Null;
    poll(SETTLE, EVERY, || {
        disc = status(&lab, agent)["agent"]["discovery"].clone();
        (disc["peers_heard"].as_u64() >= Some(303)).then_some(())
    })
    .unwrap_or_else(|| panic!("adverts not all heard: {disc}\n{}", lab.logs(40)));
    eprintln!("discovery after the forged adverts: {disc}");
    assert!(disc["off_subnet"].as_u64() >= Some(2), "{disc}");
    let max = fieldsync::discovery::MAX_CANDIDATES as u64;
    assert!(disc["candidates"].as_u64().unwrap() <= max, "{disc}");
    // Give the sessions started for the last adverts time to fail.
    std::thread::sleep(Duration::from_secs(3));
    let st = status(&lab, agent);
    assert!(
        st["agent"]["online_peers"].as_array().unwrap().len() as u64 <= max,
        "{st}"
    );
    assert_eq!(
        peer_rows(&lab, agent),
        Vec::<Value>::new(),
        "no forged peer stored"
    );
    assert_eq!(dials(&off), 0, "an off-subnet address was dialled");
    assert_eq!(
        dials(&looped),
        0,
        "a loopback address from a LAN advert was dialled"
    );

    // A real member on the same LAN (the outsider's namespace, without its extra socket on
    // 5353) is still found, and they converge.
    drop(mdns);
    lab.start(outsider, &[]);
    let id = Uuid::new_v4().to_string();
    lab.cli_ok(
        agent,
        &[
            "put",
            "person",
            "--id",
            &id,
            &json!({"name": "real"}).to_string(),
        ],
    );
    poll(SETTLE, EVERY, || {
        (lab.cli(outsider, &["get", "person", &id]).code == 0).then_some(())
    })
    .unwrap_or_else(|| panic!("the real member never got the record:\n{}", lab.logs(60)));
    let rows = peer_rows(&lab, agent);
    assert_eq!(rows.len(), 1, "{rows:?}");
    eprintln!(
        "303 forged adverts: {} candidates kept, {} off-subnet, 0 peer rows; real member synced; \
         discovery now {}",
        disc["candidates"],
        disc["off_subnet"],
        status(&lab, agent)["agent"]["discovery"]
    );
}
