//! End-to-end tests of CRI port mappings (hostPort): a pod asks for host ports, supd hands
//! them to CNI's portmap plugin, and the host reaches the pod's servers through them; when
//! the pod goes, so do the port forwards and every iptables rule and chain portmap made for
//! it. Traffic stays on this host: the test connects to its own bridge's gateway address,
//! a local address, so portmap's DNAT in the nat OUTPUT chain applies. Run as root.

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use k8s_cri::v1 as cri;
use sup_tests::cri::{container_config, pod_config, wait_for, CriEnv};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Ports the pod's servers listen on inside its network namespace.
const HTTP_PORT: u16 = 8080;
const ECHO_PORT: u16 = 9090;
/// How long one probe through a port may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// A port nothing on this host uses now (any local address: portmap forwards the port on all
/// of them), found by binding port 0 and letting it go again.
fn free_port(udp: bool) -> u16 {
    let any = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0));
    let addr = if udp {
        std::net::UdpSocket::bind(any).and_then(|s| s.local_addr())
    } else {
        std::net::TcpListener::bind(any).and_then(|s| s.local_addr())
    };
    addr.expect("a free port").port()
}

fn mapping(protocol: cri::Protocol, container_port: u16, host_port: u16) -> cri::PortMapping {
    cri::PortMapping {
        protocol: protocol as i32,
        container_port: container_port.into(),
        host_port: host_port.into(),
        host_ip: String::new(),
    }
}

/// `GET /<file>` over HTTP/1.0; the whole answer, headers included.
async fn http_get(addr: SocketAddr, file: &str) -> std::io::Result<Vec<u8>> {
    let mut s = tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    s.write_all(format!("GET /{file} HTTP/1.0\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    tokio::time::timeout(PROBE_TIMEOUT, s.read_to_end(&mut answer))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    Ok(answer)
}

/// Sends one datagram to `addr` from a fresh socket (so a fresh conntrack entry) and
/// returns the answer.
async fn udp_ask(addr: SocketAddr, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let s = tokio::net::UdpSocket::bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0))).await?;
    s.connect(addr).await?;
    s.send(msg).await?;
    let mut buf = vec![0; 512];
    let n = tokio::time::timeout(PROBE_TIMEOUT, s.recv(&mut buf))
        .await
        .map_err(|_| std::io::ErrorKind::TimedOut)??;
    buf.truncate(n);
    Ok(buf)
}

/// A UDP echo server inside a pod's network namespace (busybox's nc speaks no UDP): a thread
/// of this test that joined the namespace. It answers `echo <datagram>`.
struct PodUdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl PodUdpEcho {
    fn start(netns: &Path, port: u16) -> PodUdpEcho {
        let stop = Arc::new(AtomicBool::new(false));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let path = netns.to_path_buf();
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            // setns with CLONE_NEWNET moves this thread only; the socket stays in the pod.
            let bound = std::fs::File::open(&path)
                .and_then(|f| {
                    nix::sched::setns(&f, nix::sched::CloneFlags::CLONE_NEWNET)
                        .map_err(std::io::Error::from)
                })
                .and_then(|()| std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)))
                .and_then(|s| {
                    s.set_read_timeout(Some(Duration::from_millis(100)))
                        .map(|()| s)
                });
            let sock = match bound {
                Ok(s) => {
                    let _ = ready_tx.send(Ok(()));
                    s
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            let mut buf = [0u8; 512];
            while !flag.load(Ordering::SeqCst) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let mut reply = b"echo ".to_vec();
                    reply.extend_from_slice(&buf[..n]);
                    let _ = sock.send_to(&reply, from);
                }
            }
        });
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("UDP echo in {}: {e}", netns.display()),
            Err(_) => panic!("the UDP echo thread died"),
        }
        PodUdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for PodUdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `iptables-save` of every table (through the `iptables` the CNI plugins run).
fn iptables_save() -> Result<String, String> {
    let out = std::process::Command::new("iptables-save")
        .output()
        .map_err(|e| format!("run iptables-save (install iptables): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "iptables-save: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The rules of every iptables table, each line prefixed with its table; counters dropped so
/// that lines compare across time.
fn iptables_rules() -> BTreeSet<String> {
    parse_rules(&iptables_save().unwrap_or_else(|e| panic!("{e}")))
}

fn parse_rules(save: &str) -> BTreeSet<String> {
    let mut table = String::new();
    let mut rules = BTreeSet::new();
    for line in save.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.to_string();
        } else if let Some(chain) = line.strip_prefix(':') {
            // `:NAME POLICY [packets:bytes]`: the counters change all the time.
            let name = chain.split_whitespace().next().unwrap_or_default();
            rules.insert(format!("{table} :{name}"));
        } else if line.starts_with("-A ") || line.starts_with("-I ") {
            rules.insert(format!("{table} {line}"));
        }
    }
    rules
}

/// When the test fails, deletes what portmap made for the pod and would outlive it (a DNAT
/// of a host port to an address nobody has): the jumps naming the pod, then its chains.
struct ForwardsJanitor {
    pod: String,
}

impl Drop for ForwardsJanitor {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let Ok(save) = iptables_save() else {
            return;
        };
        let rules = parse_rules(&save);
        let jumps: Vec<&String> = rules
            .iter()
            .filter(|l| l.contains(self.pod.as_str()))
            .collect();
        let chains: BTreeSet<&str> = jumps.iter().flat_map(|l| pod_chains(l)).collect();
        for jump in &jumps {
            let (table, rule) = jump.split_once(' ').unwrap_or_default();
            let delete = rule.replacen("-A ", "-D ", 1);
            let _ = restore(&format!("*{table}\n{delete}\nCOMMIT\n"));
        }
        for line in rules.iter().filter(|l| l.contains(" :")) {
            let (table, chain) = line.split_once(" :").unwrap_or_default();
            if chains.contains(chain) {
                let _ = restore(&format!("*{table}\n-F {chain}\n-X {chain}\nCOMMIT\n"));
            }
        }
    }
}

/// `iptables-restore --noflush` of `input`.
fn restore(input: &str) -> std::io::Result<std::process::ExitStatus> {
    use std::io::Write;
    let mut child = std::process::Command::new("iptables-restore")
        .arg("--noflush")
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    child.wait()
}

/// The lines about CNI or naming `ip` (as an address, not as a prefix of a longer one).
fn cni_rules(rules: &BTreeSet<String>, ip: &str) -> BTreeSet<String> {
    rules
        .iter()
        .filter(|l| l.contains("CNI-") || mentions_ip(l, ip))
        .cloned()
        .collect()
}

fn mentions_ip(line: &str, ip: &str) -> bool {
    line.match_indices(ip).any(|(i, _)| {
        let next = line[i + ip.len()..].chars().next();
        let prev = line[..i].chars().next_back();
        !matches!(next, Some('0'..='9' | '.')) && !matches!(prev, Some('0'..='9' | '.'))
    })
}

/// Chain names in `line` that portmap makes per pod: `CNI-DN-<hash>`, `CNI-SN-<hash>`.
fn pod_chains(line: &str) -> impl Iterator<Item = &str> {
    line.split(|c: char| c.is_whitespace() || c == ':' || c == '"')
        .filter(|w| w.starts_with("CNI-DN-") || w.starts_with("CNI-SN-"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_ports_reach_the_pod_and_go_with_it() {
    let mut env = CriEnv::start().await;
    env.import_busybox().await;
    let gateway: Ipv4Addr = format!("{}.1", env.net.prefix())
        .parse()
        .expect("gateway address");
    let (tcp_port, udp_port) = (free_port(false), free_port(true));
    let http = SocketAddr::V4(SocketAddrV4::new(gateway, tcp_port));
    let echo = SocketAddr::V4(SocketAddrV4::new(gateway, udp_port));
    let before = iptables_rules();

    let log_dir = env.log_dir("ports");
    let mut pod_cfg = pod_config("ports", &log_dir, false);
    pod_cfg.port_mappings = vec![
        mapping(cri::Protocol::Tcp, HTTP_PORT, tcp_port),
        mapping(cri::Protocol::Udp, ECHO_PORT, udp_port),
    ];
    let pod = env.run_pod(pod_cfg.clone()).await;
    let _janitor = ForwardsJanitor { pod: pod.clone() };
    let ip = env.pod_ip(&pod).await;
    assert!(
        ip.starts_with(&format!("{}.", env.net.prefix())),
        "pod IP {ip:?} not in the test subnet"
    );

    // Nothing listens on the host ports on the host: only portmap's DNAT can answer.
    let token = format!("hostport {tcp_port} reached pod {pod}");
    let script = format!(
        "mkdir -p /www && echo '{token}' > /www/hello.txt && \
         exec /bin/busybox httpd -f -p {HTTP_PORT} -h /www"
    );
    env.start_container(
        &pod,
        &pod_cfg,
        container_config("web", &["/bin/sh", "-c", &script]),
    )
    .await;
    let answer = wait_for(
        "the pod's httpd through the TCP host port",
        Duration::from_secs(30),
        || async move { http_get(http, "hello.txt").await.ok() },
    )
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.") && text.contains(" 200 "),
        "not a 200 answer: {text:?}"
    );
    assert!(
        text.ends_with(&format!("\r\n\r\n{token}\n")),
        "wrong body: {text:?}"
    );

    let netns = env
        .daemon
        .state()
        .join("cri")
        .join("sandboxes")
        .join(&pod)
        .join("netns");
    let server = PodUdpEcho::start(&netns, ECHO_PORT);
    let question = format!("ping {udp_port}");
    let question = question.as_bytes();
    let reply = wait_for(
        "the pod's UDP echo through the UDP host port",
        Duration::from_secs(30),
        || async move { udp_ask(echo, question).await.ok() },
    )
    .await;
    assert_eq!(
        String::from_utf8_lossy(&reply),
        format!("echo ping {udp_port}")
    );

    // What portmap added for this pod: rules naming it (its id in their comments, its
    // address as the DNAT target) and the per-pod chains they use.
    let up = cni_rules(&iptables_rules(), &ip);
    let added: BTreeSet<String> = up.difference(&cni_rules(&before, &ip)).cloned().collect();
    let chains: BTreeSet<String> = up
        .iter()
        .filter(|l| l.contains(pod.as_str()) || mentions_ip(l, &ip))
        .flat_map(|l| pod_chains(l).map(str::to_string).collect::<Vec<_>>())
        .collect();
    assert!(
        added
            .iter()
            .any(|l| mentions_ip(l, &ip)
                && l.contains(&format!("--to-destination {ip}:{HTTP_PORT}"))),
        "no DNAT to {ip}:{HTTP_PORT} among the new rules: {added:#?}"
    );
    assert!(!chains.is_empty(), "no per-pod chain: {added:#?}");

    drop(server);
    env.remove_pod(&pod).await;

    // Every rule portmap added for the pod is gone. What is new since the start may only be
    // the skeleton portmap shares between all pods and keeps (the CNI-HOSTPORT-* chains and
    // the jumps into them), and the rules of other pods on this host, which name their own.
    let after = cni_rules(&iptables_rules(), &ip);
    let kept: Vec<&String> = after
        .iter()
        .filter(|l| {
            l.contains(pod.as_str())
                || mentions_ip(l, &ip)
                || pod_chains(l).any(|c| chains.contains(c))
        })
        .collect();
    assert!(
        kept.is_empty(),
        "portmap's rules for the pod outlived it: {kept:#?}"
    );
    let others: BTreeSet<&str> = after
        .iter()
        .filter(|l| l.contains(" id: "))
        .flat_map(|l| pod_chains(l))
        .collect();
    let before = cni_rules(&before, &ip);
    let unshared: Vec<&String> = after
        .difference(&before)
        .filter(|l| pod_chains(l).any(|c| !others.contains(c)))
        .collect();
    assert!(
        unshared.is_empty(),
        "per-pod rules of nobody, new since the test began: {unshared:#?}"
    );

    // The host ports are closed again: the host itself refuses them, as it did before the
    // pod (a DNAT left behind would send them to an address nobody has, and time out).
    match http_get(http, "hello.txt").await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("TCP host port {tcp_port} after the pod: {other:?}"),
    }
    match udp_ask(echo, b"anyone?").await {
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {}
        other => panic!("UDP host port {udp_port} after the pod: {other:?}"),
    }

    env.assert_clean().await;
}
