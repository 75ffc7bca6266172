//! Real AF_XDP on a veth pair in a fresh namespace (needs root): the steering program attached,
//! one socket on queue 0, smoltcp answering ARP and ping from the namespace through the
//! `Device` over the rings, the host's own address untouched, and nothing left attached after.

#[allow(dead_code)]
#[path = "../../src/lab.rs"]
mod lab;

use std::process::Output;
use std::time::{Duration, Instant as StdInstant};

use dataplane::{
    attached_program_id, detach_leftover, interface_mac, DataplaneError, EdgeConfig, SteerConfig, SteerCounter, Steering,
    XdpMode, XskConfig, XskPort,
};
use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::time::Instant;
use smoltcp::wire::{EthernetAddress, IpAddress, IpCidr};

const PORT: u16 = 8443;

fn counter(steering: &Steering, name: &str) -> u64 {
    steering.counters().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).unwrap()
}

fn stdout(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// A smoltcp stack on `port` that serves until `done` returns true or `limit` passes.
struct Stack {
    iface: Interface,
    sockets: SocketSet<'static>,
    epoch: StdInstant,
}

impl Stack {
    fn new(port: &mut XskPort, mac: [u8; 6], cidr: IpCidr) -> Stack {
        let epoch = StdInstant::now();
        let config = Config::new(EthernetAddress(mac).into());
        let mut iface = Interface::new(config, port, Instant::from_millis(0));
        iface.update_ip_addrs(|addrs| addrs.push(cidr).unwrap());
        Stack { iface, sockets: SocketSet::new(vec![]), epoch }
    }

    fn turn(&mut self, port: &mut XskPort) {
        let now = Instant::from_millis(self.epoch.elapsed().as_millis() as i64);
        self.iface.poll(now, port, &mut self.sockets);
        port.service();
    }

    /// Serves while `child` (a command in the namespace) runs; returns its output.
    fn serve_while(&mut self, port: &mut XskPort, mut child: std::process::Child) -> Output {
        let limit = StdInstant::now() + Duration::from_secs(20);
        loop {
            self.turn(port);
            if child.try_wait().unwrap().is_some() || StdInstant::now() > limit {
                break;
            }
            port.wait(Duration::from_millis(5)).unwrap();
        }
        let _ = child.kill();
        child.wait_with_output().unwrap()
    }
}

#[test]
fn smoltcp_answers_arp_and_ping_through_af_xdp_and_nothing_is_left_attached() {
    let lab = lab::Lab::create(&lab::LabSpec::unique("afxdp", 1)).expect("lab");
    let spec = &lab.spec;
    let host_mac = interface_mac(&spec.host_if).unwrap();
    let mut steering = Steering::attach(&SteerConfig {
        ifname: spec.host_if.clone(),
        service_ipv4: spec.service_ipv4,
        service_port: PORT,
        mode: XdpMode::Auto,
        edge: EdgeConfig::default(),
    })
    .unwrap();
    assert_eq!(steering.mode(), XdpMode::Native, "veth supports native XDP");
    assert_ne!(attached_program_id(&spec.host_if).unwrap(), 0);
    let config = XskConfig { frame_count: 4096 + 1024 + 64, fill_ring: 2048, comp_ring: 1024, rx_ring: 1024, tx_ring: 1024, ..XskConfig::default() };
    let mut port = XskPort::open(&spec.host_if, 0, &config).unwrap();
    steering.register(0, &port).unwrap();
    let stats = port.stats();
    assert_eq!(stats.frames_in_fill, 2048, "fill ring stocked at open");
    assert_eq!(stats.frames_free + stats.frames_in_fill, stats.frames_total);

    let mut stack = Stack::new(&mut port, host_mac, IpCidr::new(IpAddress::Ipv4(spec.service_ipv4), spec.prefix_len));
    let service = spec.service_ipv4.to_string();
    let ping = lab.spawn_in_ns_piped(&["ping", "-c", "3", "-i", "0.2", "-W", "2", &service]);
    let out = stack.serve_while(&mut port, ping);
    assert!(
        out.status.success(),
        "ping of the service through AF_XDP failed:\n{}\ncounters {:?}\nport {:?}",
        stdout(&out),
        steering.counters(),
        port.stats()
    );

    // The client resolved the service to the host interface's MAC: our ARP reply arrived.
    let neigh = stdout(&lab.exec_in_ns(&["ip", "neigh", "show", &service]).unwrap());
    let mac_text = host_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    assert!(neigh.contains(&mac_text), "neighbour entry {neigh:?} lacks {mac_text}");

    assert!(counter(&steering, "redirect_arp_request") >= 1);
    assert!(counter(&steering, "redirect_icmp") >= 3);
    assert_eq!(counter(&steering, "drop_no_socket"), 0);
    let stats = port.stats();
    assert!(stats.rx_frames >= 4, "{stats:?}");
    assert!(stats.tx_frames >= 4, "{stats:?}");

    // The host's own address on the same link still works (XDP_PASS).
    let out = lab.exec_in_ns(&["ping", "-c", "1", "-W", "2", &spec.host_ipv4.to_string()]).unwrap();
    assert!(out.status.success(), "ping of the host address failed:\n{}", stdout(&out));
    assert!(counter(&steering, "pass_other") >= 1);

    // A closed port is filtered, not refused: the SYN vanishes (no RST), and is counted.
    let probe = lab.spawn_in_ns_piped(&["bash", "-c", &format!("timeout 1 bash -c '</dev/tcp/{service}/22'; echo rc=$?")]);
    let out = stack.serve_while(&mut port, probe);
    assert!(stdout(&out).contains("rc=124"), "connect to a closed port should time out: {}", stdout(&out));
    assert!(counter(&steering, "drop_port") >= 1);

    // Frame accounting on the real socket: once idle, every frame is free or in the fill ring.
    for _ in 0..10 {
        stack.turn(&mut port);
    }
    let stats = port.stats();
    assert_eq!(stats.ring_desc_invalid, 0, "{stats:?}");
    assert_eq!(stats.frames_in_tx, 0, "{stats:?}");
    assert_eq!(stats.frames_held, 0, "{stats:?}");
    assert_eq!(stats.frames_free + stats.frames_in_fill, stats.frames_total, "{stats:?}");
    assert_eq!(stats.frames_in_fill, 2048, "fill ring topped up again: {stats:?}");

    // A second attach on the same interface is refused while ours holds its link.
    match detach_leftover(&spec.host_if) {
        Err(DataplaneError::Busy { .. }) => {}
        other => panic!("expected Busy, got {other:?}"),
    }

    drop(steering);
    drop(port);
    assert_eq!(program_after_detach(&spec.host_if), 0);
    let link = String::from_utf8_lossy(&std::process::Command::new("ip").args(["-d", "link", "show", "dev", &spec.host_if]).output().unwrap().stdout).into_owned();
    assert!(!link.contains("prog/xdp"), "XDP still attached:\n{link}");
}

#[test]
fn a_netlink_leftover_is_removed_before_attach() {
    let lab = lab::Lab::create(&lab::LabSpec::unique("leftover", 1)).expect("lab");
    let ifname = lab.spec.host_if.clone();
    // What a killed run of another tool leaves: a program attached over netlink, in generic
    // mode, which survives its process.
    let dir = tempdir();
    let object = dir.join("steer.bpf.o");
    std::fs::write(&object, xdp_programs_object()).unwrap();
    let out = std::process::Command::new("ip")
        .args(["link", "set", "dev", &ifname, "xdpgeneric", "obj", object.to_str().unwrap(), "sec", "xdp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ip link set xdpgeneric: {}", stdout(&out));
    assert_ne!(attached_program_id(&ifname).unwrap(), 0);

    let steering = Steering::attach(&SteerConfig {
        ifname: ifname.clone(),
        service_ipv4: lab.spec.service_ipv4,
        service_port: PORT,
        mode: XdpMode::Generic,
        edge: EdgeConfig::default(),
    })
    .unwrap();
    assert_eq!(steering.mode(), XdpMode::Generic);
    assert_eq!(counter(&steering, SteerCounter::RedirectTcp.name()), 0);
    drop(steering);
    assert_eq!(program_after_detach(&ifname), 0, "leftover removed, ours detached");
    assert!(!detach_leftover(&ifname).unwrap(), "nothing left to remove");
    let _ = std::fs::remove_dir_all(dir);
}

/// The program attached to `ifname` once a detach has settled. Closing the last bpf_link fd
/// detaches the program, but the kernel may finish that release a moment after close(2)
/// returns (seen once under load in CI), so poll for a bounded time.
fn program_after_detach(ifname: &str) -> u32 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        let id = attached_program_id(ifname).unwrap();
        if id == 0 || std::time::Instant::now() > deadline {
            return id;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("dataplane-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn xdp_programs_object() -> &'static [u8] {
    xdp_programs::STEER_BPF_OBJECT
}

trait SpawnPiped {
    fn spawn_in_ns_piped(&self, args: &[&str]) -> std::process::Child;
}

impl SpawnPiped for lab::Lab {
    fn spawn_in_ns_piped(&self, args: &[&str]) -> std::process::Child {
        self.ns_command(args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

/// Environment variable naming the interface for the child half of the SIGKILL test.
const CHILD_IFNAME: &str = "DATAPLANE_TEST_CHILD_IFNAME";

#[test]
fn the_kernel_detaches_the_program_when_its_process_is_killed() {
    let lab = lab::Lab::create(&lab::LabSpec::unique("sigkill", 1)).expect("lab");
    let ifname = lab.spec.host_if.clone();
    // Re-run this test binary, only the ignored helper below, which attaches and sleeps.
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "attach_and_sleep_child", "--ignored", "--nocapture", "--test-threads", "1"])
        .env(CHILD_IFNAME, &ifname)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = StdInstant::now() + Duration::from_secs(20);
    while attached_program_id(&ifname).unwrap() == 0 {
        assert!(StdInstant::now() < deadline, "child never attached");
        assert!(child.try_wait().unwrap().is_none(), "child exited before attaching");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    // Closing the last fd of a bpf_link detaches it; give the kernel's release a moment.
    let deadline = StdInstant::now() + Duration::from_secs(5);
    while attached_program_id(&ifname).unwrap() != 0 {
        assert!(StdInstant::now() < deadline, "XDP program survived SIGKILL of its owner");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
#[ignore = "helper: run in a child process by the_kernel_detaches_the_program_when_its_process_is_killed"]
fn attach_and_sleep_child() {
    let Ok(ifname) = std::env::var(CHILD_IFNAME) else {
        return;
    };
    let _steering = Steering::attach(&SteerConfig {
        ifname,
        service_ipv4: std::net::Ipv4Addr::new(10, 99, 250, 2),
        service_port: PORT,
        mode: XdpMode::Auto,
        edge: EdgeConfig::default(),
    })
    .unwrap();
    // Bounded: the parent kills us long before this ends.
    std::thread::sleep(Duration::from_secs(30));
}

#[test]
fn misuse_is_an_error_not_a_panic() {
    let lab = lab::Lab::create(&lab::LabSpec::unique("misuse", 1)).expect("lab");
    let ifname = lab.spec.host_if.clone();
    let config = XskConfig { frame_count: 2048 + 1024 + 64, fill_ring: 2048, comp_ring: 1024, rx_ring: 1024, tx_ring: 1024, ..XskConfig::default() };
    assert_eq!(dataplane::interface_queues(&ifname).unwrap(), 1);
    match XskPort::open(&ifname, 3, &config) {
        Err(DataplaneError::Socket { queue_id: 3, .. }) => {}
        other => panic!("binding a queue the interface lacks: {other:?}"),
    }
    match Steering::attach(&SteerConfig {
        ifname: "pt-no-such-if".into(),
        service_ipv4: lab.spec.service_ipv4,
        service_port: PORT,
        mode: XdpMode::Auto,
        edge: EdgeConfig::default(),
    }) {
        Err(DataplaneError::Interface { .. }) => {}
        other => panic!("unknown interface: {other:?}"),
    }
    let mut steering = Steering::attach(&SteerConfig {
        ifname: ifname.clone(),
        service_ipv4: lab.spec.service_ipv4,
        service_port: PORT,
        mode: XdpMode::Native,
        edge: EdgeConfig::default(),
    })
    .unwrap();
    let port = XskPort::open(&ifname, 0, &config).unwrap();
    assert!(matches!(steering.register(1, &port), Err(DataplaneError::Config(_))));
    assert!(matches!(steering.program().insert_socket(dataplane::XSKS_MAX, port.fd()), Err(DataplaneError::Config(_))));
    steering.register(0, &port).unwrap();
}

#[test]
fn every_queue_of_a_multi_queue_link_gets_its_flows() {
    let lab = lab::Lab::create(&lab::LabSpec::unique("multiq", 2)).expect("lab");
    let spec = &lab.spec;
    assert_eq!(dataplane::interface_queues(&spec.host_if).unwrap(), 2);
    let mut steering = Steering::attach(&SteerConfig {
        ifname: spec.host_if.clone(),
        service_ipv4: spec.service_ipv4,
        service_port: PORT,
        mode: XdpMode::Auto,
        edge: EdgeConfig::default(),
    })
    .unwrap();
    let config = XskConfig { frame_count: 2048 + 1024 + 64, fill_ring: 2048, comp_ring: 1024, rx_ring: 1024, tx_ring: 1024, ..XskConfig::default() };
    let mut ports: Vec<XskPort> = (0..2).map(|q| XskPort::open(&spec.host_if, q, &config).unwrap()).collect();
    for port in &ports {
        steering.register(port.queue_id(), port).unwrap();
    }
    // The client does not know the service's MAC and nobody answers ARP here: give it one.
    let mac = interface_mac(&spec.host_if).unwrap().iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
    let service = spec.service_ipv4.to_string();
    let out = lab.exec_in_ns(&["ip", "neigh", "replace", &service, "lladdr", &mac, "dev", &spec.peer_if]).unwrap();
    assert!(out.status.success(), "{}", stdout(&out));
    // 32 connection attempts from different source ports: the SYNs hash over both queues.
    let script = format!("for i in $(seq 32); do timeout 0.1 bash -c '</dev/tcp/{service}/{PORT}' 2>/dev/null; done; true");
    let mut child = lab.spawn_in_ns_piped(&["bash", "-c", &script]);
    let limit = StdInstant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() && StdInstant::now() < limit {
        for port in &mut ports {
            while port.receive_raw(|_| None) {}
            port.service();
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    let _ = child.kill();
    let _ = child.wait();
    for port in &mut ports {
        while port.receive_raw(|_| None) {}
        port.service();
    }
    let received: Vec<u64> = ports.iter().map(|p| p.stats().rx_frames).collect();
    assert!(received.iter().all(|n| *n > 0), "each queue should receive SYNs: {received:?}");
    assert_eq!(counter(&steering, "drop_no_socket"), 0);
    assert_eq!(received.iter().sum::<u64>(), counter(&steering, "redirect_tcp"));
}

#[test]
fn a_queue_held_by_another_socket_is_reported_busy_after_a_bounded_wait() {
    let lab = lab::Lab::create(&lab::LabSpec::unique("busy", 1)).expect("lab");
    let ifname = lab.spec.host_if.clone();
    let config = XskConfig { frame_count: 2048 + 1024 + 64, fill_ring: 2048, comp_ring: 1024, rx_ring: 1024, tx_ring: 1024, ..XskConfig::default() };
    let held = XskPort::open(&ifname, 0, &config).expect("first socket");
    // Open retries while the queue is held (a restart right after SIGKILL needs that), then
    // names the cause.
    match XskPort::open(&ifname, 0, &config) {
        Err(DataplaneError::QueueBusy { queue_id: 0, .. }) => {}
        other => panic!("a second socket on a held queue: {other:?}"),
    }
    drop(held);
    let port = XskPort::open(&ifname, 0, &config).expect("the queue is free again");
    drop(port);
}
