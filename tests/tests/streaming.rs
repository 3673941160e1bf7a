//! The CRI streaming server supd serves behind Exec, Attach and PortForward, driven by the
//! clients that use it. crictl v1.26.1 speaks SPDY/3.1 as a kubelet's clients do: under a
//! real terminal (tmux) whose size the container must follow, with stdin from a pipe, with
//! exit codes, attached to containers made with stdin (with and without a tty), forwarding
//! ports of a CNI pod and of a host-network pod. A WebSocket client speaks the Kubernetes
//! channel protocols (v5, v4, v4.base64, channel.k8s.io, base64.channel.k8s.io and port
//! forwarding). Then what must hold under load and misuse: 50 MB byte-exact, 50 concurrent
//! sessions, a client killed mid-session, single-use and expiring tokens, the RPCs'
//! validation, the cap on outstanding tokens, the idle timeout, TLS on a fixed port.
//!
//! Run as root; crictl is `SUP_CRICTL` or `../shared/cri-tools/crictl`, tmux and openssl come
//! from the host. Every test has its own supd, and leaves nothing behind.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use k8s_cri::v1 as cri;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sup_tests::cri::{container_config, pod_config, processes_of, wait_for, CriEnv};
use sup_tests::crictl::Crictl;
use sup_tests::task::show;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest, Message};

/// The container the exec tests run their commands in.
const SLEEPER: [&str; 3] = ["/bin/sh", "-c", "exec /bin/busybox sleep 1000"];
/// How long a WebSocket session may take before the test gives up on it.
const SESSION_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the server keeps a token (60 s), and a margin.
const TOKEN_LIFETIME: Duration = Duration::from_secs(61);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

// ---------------------------------------------------------------------------------------------
// A node: supd, a pod, a container, crictl.

/// A supd with one pod and one running busybox container in it, and crictl on its socket.
struct Node {
    env: CriEnv,
    crictl: Crictl,
    pod: String,
    container: String,
}

impl Node {
    /// A CNI pod whose container sleeps.
    async fn start(name: &str) -> Node {
        Node::start_in(CriEnv::start().await, name, false, sleeper()).await
    }

    async fn start_in(
        mut env: CriEnv,
        name: &str,
        host_network: bool,
        config: cri::ContainerConfig,
    ) -> Node {
        let crictl = Crictl::new(
            sup_tests::bins::crictl(),
            &env.daemon.socket(),
            env.daemon.dir(),
        );
        env.import_busybox().await;
        let pod_cfg = pod_config(name, &env.log_dir(name), host_network);
        let pod = env.run_pod(pod_cfg.clone()).await;
        let container = env.start_container(&pod, &pod_cfg, config).await;
        Node {
            env,
            crictl,
            pod,
            container,
        }
    }

    fn dir(&self) -> &Path {
        self.env.daemon.dir()
    }

    /// Removes the pod as a kubelet does and checks nothing is left: processes, mounts,
    /// cgroups, network namespaces, addresses.
    async fn finish(mut self) {
        let pod = self.pod.clone();
        self.env.remove_pod(&pod).await;
        self.env.assert_clean().await;
    }

    /// The command lines of the processes the container's pid namespace shows.
    async fn ps(&mut self) -> String {
        let id = self.container.clone();
        let out = self.env.exec(&id, &["/bin/busybox", "ps"]).await;
        assert_eq!(out.exit_code, 0, "ps: {}", show(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until no process in the container runs `args` (a client gone must take its
    /// exec with it).
    async fn wait_gone(&mut self, args: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let ps = self.ps().await;
            if !ps.contains(args) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{args}` still runs in the container after {timeout:?}:\n{ps}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_running(&mut self, args: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let ps = self.ps().await;
            if ps.contains(args) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "`{args}` never ran in the container:\n{ps}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn stop_container(&mut self) {
        self.env
            .runtime
            .stop_container(cri::StopContainerRequest {
                container_id: self.container.clone(),
                timeout: 1,
            })
            .await
            .unwrap_or_else(|s| panic!("StopContainer: {:?}: {}", s.code(), s.message()));
    }
}

fn sleeper() -> cri::ContainerConfig {
    container_config("main", &SLEEPER)
}

/// A container reading lines from its stdin and answering each: `got:LINE`.
fn reader(tty: bool) -> cri::ContainerConfig {
    let mut config = container_config(
        "reader",
        &["/bin/sh", "-c", "while read l; do echo got:$l; done"],
    );
    config.stdin = true;
    config.tty = tty;
    config
}

/// A port on loopback no one listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free port")
        .port()
}

// ---------------------------------------------------------------------------------------------
// The streaming RPCs.

fn exec_request(container: &str, cmd: &[&str]) -> cri::ExecRequest {
    cri::ExecRequest {
        container_id: container.to_string(),
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        tty: false,
        stdin: false,
        stdout: true,
        stderr: true,
    }
}

async fn exec_url(env: &mut CriEnv, req: cri::ExecRequest) -> String {
    env.runtime
        .exec(req)
        .await
        .unwrap_or_else(|s| panic!("Exec: {:?}: {}", s.code(), s.message()))
        .into_inner()
        .url
}

async fn attach_url(env: &mut CriEnv, req: cri::AttachRequest) -> String {
    env.runtime
        .attach(req)
        .await
        .unwrap_or_else(|s| panic!("Attach: {:?}: {}", s.code(), s.message()))
        .into_inner()
        .url
}

async fn port_forward_url(env: &mut CriEnv, pod: &str, ports: &[i32]) -> String {
    env.runtime
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: pod.to_string(),
            port: ports.to_vec(),
        })
        .await
        .unwrap_or_else(|s| panic!("PortForward: {:?}: {}", s.code(), s.message()))
        .into_inner()
        .url
}

/// The URL an RPC gave is the server's, on loopback, for the kind of session asked.
#[track_caller]
fn assert_stream_url(url: &str, kind: &str) {
    let rest = url
        .strip_prefix("http://127.0.0.1:")
        .unwrap_or_else(|| panic!("not a URL on http://127.0.0.1: {url}"));
    let (port, path) = rest.split_once('/').unwrap_or((rest, ""));
    assert!(port.parse::<u16>().is_ok_and(|p| p != 0), "port of {url}");
    let token = path
        .strip_prefix(kind)
        .and_then(|p| p.strip_prefix('/'))
        .unwrap_or_else(|| panic!("{url} is not a /{kind}/TOKEN URL"));
    assert!(!token.is_empty() && !token.contains('/'), "token of {url}");
}

// ---------------------------------------------------------------------------------------------
// A WebSocket client of the Kubernetes channel protocols.

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The Kubernetes channel protocols, as Sec-WebSocket-Protocol names them.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Proto {
    V5,
    V4,
    V4Base64,
    Channel,
    Base64Channel,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::V5 => "v5.channel.k8s.io",
            Proto::V4 => "v4.channel.k8s.io",
            Proto::V4Base64 => "v4.base64.channel.k8s.io",
            Proto::Channel => "channel.k8s.io",
            Proto::Base64Channel => "base64.channel.k8s.io",
        }
    }

    fn base64(self) -> bool {
        matches!(self, Proto::V4Base64 | Proto::Base64Channel)
    }

    /// The message carrying `data` on `channel`: the channel byte then the data, or for the
    /// base64 protocols a text message of the channel digit then the data in base64.
    fn message(self, channel: u8, data: &[u8]) -> Message {
        if self.base64() {
            Message::text(format!(
                "{}{}",
                char::from(b'0' + channel),
                B64.encode(data)
            ))
        } else {
            let mut bytes = vec![channel];
            bytes.extend_from_slice(data);
            Message::binary(bytes)
        }
    }

    /// What a server message says under this protocol; None for control frames.
    fn frame(self, msg: &Message) -> Option<Frame> {
        match msg {
            Message::Binary(bytes) => {
                assert!(
                    !self.base64(),
                    "{}: a binary message where base64 text is due",
                    self.name()
                );
                let (&channel, data) = bytes
                    .split_first()
                    .unwrap_or_else(|| panic!("{}: an empty message", self.name()));
                if self == Proto::V5 && channel == 255 {
                    assert_eq!(data.len(), 1, "v5 close message {bytes:?}");
                    return Some(Frame::Closed(data[0]));
                }
                Some(Frame::Data(channel, data.to_vec()))
            }
            Message::Text(text) => {
                assert!(
                    self.base64(),
                    "{}: a text message where binary is due: {text:?}",
                    self.name()
                );
                let digit = text
                    .as_bytes()
                    .first()
                    .copied()
                    .unwrap_or_else(|| panic!("{}: an empty text message", self.name()));
                assert!(
                    digit.is_ascii_digit(),
                    "{}: no channel digit in {text:?}",
                    self.name()
                );
                let data = B64
                    .decode(&text.as_bytes()[1..])
                    .unwrap_or_else(|e| panic!("{}: bad base64 ({e}) in {text:?}", self.name()));
                Some(Frame::Data(digit - b'0', data))
            }
            Message::Close(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => None,
        }
    }
}

/// One server message.
#[derive(Debug)]
enum Frame {
    Data(u8, Vec<u8>),
    /// v5: the server closed this channel.
    Closed(u8),
}

/// What the server sent in a session.
#[derive(Default)]
struct Session {
    /// Each channel's messages, in order.
    messages: BTreeMap<u8, Vec<Vec<u8>>>,
    /// Channels the server said it closed (v5).
    closed: Vec<u8>,
    /// The close frame's code; None when the server has not closed (yet), or dropped the
    /// connection without a close frame.
    close_code: Option<u16>,
    /// The connection is over (closed either way).
    ended: bool,
}

impl Session {
    /// All the data a channel carried.
    fn data(&self, channel: u8) -> Vec<u8> {
        self.messages
            .get(&channel)
            .map(|m| m.concat())
            .unwrap_or_default()
    }

    /// Port forwarding: the first message of a channel (the port), and the data after it.
    fn forwarded(&self, channel: u8) -> (Vec<u8>, Vec<u8>) {
        let msgs = self.messages.get(&channel).cloned().unwrap_or_default();
        match msgs.split_first() {
            Some((first, rest)) => (first.clone(), rest.concat()),
            None => (Vec::new(), Vec::new()),
        }
    }

    /// The v4/v5 Status on the error channel.
    #[track_caller]
    fn status(&self) -> Value {
        let raw = self.data(3);
        serde_json::from_slice(&raw).unwrap_or_else(|e| {
            panic!(
                "channel 3 holds no JSON Status ({e}): {}; {}",
                show(&raw),
                self.summary()
            )
        })
    }

    #[track_caller]
    fn assert_success(&self) {
        assert_eq!(
            self.status(),
            json!({"metadata": {}, "status": "Success"}),
            "{}",
            self.summary()
        );
    }

    #[track_caller]
    fn assert_exit_code(&self, code: i32) {
        let status = self.status();
        assert_eq!(status["status"], "Failure", "{status}");
        assert_eq!(status["reason"], "NonZeroExitCode", "{status}");
        assert_eq!(
            status["details"]["causes"],
            json!([{"reason": "ExitCode", "message": code.to_string()}]),
            "{status}"
        );
    }

    /// A readable account, without dumping megabytes.
    fn summary(&self) -> String {
        let channels: Vec<String> = self
            .messages
            .iter()
            .map(|(c, m)| {
                let all = m.concat();
                let head = &all[..all.len().min(200)];
                format!(
                    "channel {c}: {} messages, {} bytes, {}",
                    m.len(),
                    all.len(),
                    show(head)
                )
            })
            .collect();
        format!(
            "session: [{}], closed channels {:?}, close code {:?}, ended {}",
            channels.join("; "),
            self.closed,
            self.close_code,
            self.ended
        )
    }
}

/// The WebSocket address of a streaming URL.
fn ws_address(url: &str) -> String {
    let rest = url
        .strip_prefix("http://")
        .unwrap_or_else(|| panic!("not an http:// streaming URL: {url}"));
    format!("ws://{rest}")
}

/// Opens `url` offering `protocols` (in that order of preference); gives the socket and the
/// protocol the server chose.
async fn ws_open(
    url: &str,
    protocols: &[&str],
) -> Result<(Ws, Option<String>), tungstenite::Error> {
    let mut req = ws_address(url).into_client_request()?;
    if !protocols.is_empty() {
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            protocols.join(", ").parse().expect("a header value"),
        );
    }
    let (ws, resp) = tokio::time::timeout(SESSION_TIMEOUT, tokio_tungstenite::connect_async(req))
        .await
        .unwrap_or_else(|_| panic!("no WebSocket handshake with {url} in {SESSION_TIMEOUT:?}"))?;
    let chosen = resp
        .headers()
        .get("sec-websocket-protocol")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    Ok((ws, chosen))
}

/// Opens `url` with `proto`, which the server must choose.
async fn ws_session(url: &str, proto: Proto) -> Ws {
    let (ws, chosen) = ws_open(url, &[proto.name()])
        .await
        .unwrap_or_else(|e| panic!("WebSocket handshake with {url}: {e}"));
    assert_eq!(chosen.as_deref(), Some(proto.name()), "protocol chosen");
    ws
}

/// The HTTP status of a handshake the server must refuse.
async fn ws_refusal(url: &str) -> u16 {
    match ws_open(url, &[Proto::V4.name()]).await {
        Ok(_) => panic!("{url}: the server took the handshake"),
        Err(tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// Reads server messages into `session` until `done` holds, the connection ends, or
/// `deadline`.
async fn read_until(
    stream: &mut SplitStream<Ws>,
    proto: Proto,
    session: &mut Session,
    deadline: tokio::time::Instant,
    done: impl Fn(&Session) -> bool,
) {
    while !done(session) && !session.ended {
        let next = match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(next) => next,
            Err(_) => return,
        };
        match next {
            None => session.ended = true,
            // A reset, or an end without a close frame: the session is over all the same.
            Some(Err(e)) => {
                eprintln!("WebSocket read: {e}");
                session.ended = true;
            }
            Some(Ok(Message::Close(frame))) => {
                session.close_code = Some(frame.map(|f| u16::from(f.code)).unwrap_or(1005));
                session.ended = true;
            }
            Some(Ok(msg)) => match proto.frame(&msg) {
                Some(Frame::Data(channel, data)) => {
                    session.messages.entry(channel).or_default().push(data)
                }
                Some(Frame::Closed(channel)) => session.closed.push(channel),
                None => {}
            },
        }
    }
}

/// Sends `input` while reading whatever the server sends until it closes the session.
async fn converse(ws: Ws, proto: Proto, input: Vec<Message>) -> Session {
    let (mut sink, mut stream) = ws.split();
    // Sending and reading at once: a server that answers as it reads (cat) would block on a
    // client that reads only after sending it all.
    let sender = tokio::spawn(async move {
        for m in input {
            if sink.send(m).await.is_err() {
                break;
            }
        }
        sink
    });
    let mut session = Session::default();
    let deadline = tokio::time::Instant::now() + SESSION_TIMEOUT;
    read_until(&mut stream, proto, &mut session, deadline, |_| false).await;
    assert!(
        session.ended,
        "the server did not end the session in {SESSION_TIMEOUT:?}: {}",
        session.summary()
    );
    let _ = sender.await;
    session
}

async fn send(sink: &mut SplitSink<Ws, Message>, msg: Message) {
    sink.send(msg).await.expect("send a WebSocket message");
}

// ---------------------------------------------------------------------------------------------
// A terminal: tmux.

/// A tmux server of the test's own, its socket in the test's directory, with one session
/// whose pane runs a command on a real pseudo-terminal. Dropped, it kills that server through
/// its socket (and so the command).
struct Tmux {
    socket: PathBuf,
    /// Where the shell that runs the command writes its exit status. tmux's own
    /// `pane_dead_status` is not relied on: under load its server has been seen to close a
    /// pane on the pty's end and leave the command a zombie, its status unread, for good.
    status: PathBuf,
}

/// The session's name (the server is private, so any name does).
const PANE: &str = "stream";

impl Tmux {
    fn start(dir: &Path, cols: u16, rows: u16, argv: &[OsString]) -> Tmux {
        let conf = dir.join("tmux.conf");
        // No status line, so that the pane is the whole window; a pane that outlives its
        // command, so that what it showed last can still be read.
        std::fs::write(&conf, "set -g status off\nset -g remain-on-exit on\n")
            .expect("write tmux.conf");
        let tmux = Tmux {
            socket: dir.join("tmux.sock"),
            status: dir.join("tmux.status"),
        };
        let out = Command::new("tmux")
            .arg("-S")
            .arg(&tmux.socket)
            .arg("-f")
            .arg(&conf)
            .args(["new-session", "-d", "-s", PANE])
            .args(["-x", &cols.to_string(), "-y", &rows.to_string()])
            .args([
                "sh",
                "-c",
                "\"$@\"; echo $? >\"$0.new\" && mv \"$0.new\" \"$0\"",
            ])
            .arg(&tmux.status)
            .args(argv)
            .output()
            .expect("run tmux (is it installed?)");
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            show(&out.stderr)
        );
        tmux
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run tmux")
    }

    #[track_caller]
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tmux {}: {}",
            args.join(" "),
            show(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Types `text` and Enter.
    fn type_line(&self, text: &str) {
        self.ok(&["send-keys", "-t", PANE, "-l", text]);
        self.ok(&["send-keys", "-t", PANE, "Enter"]);
    }

    /// What the pane shows, history included.
    fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p", "-J", "-S", "-", "-t", PANE])
    }

    /// The command's exit status once it has ended.
    fn exit_status(&self) -> Option<i32> {
        std::fs::read_to_string(&self.status)
            .ok()
            .and_then(|s| s.trim().parse().ok())
    }

    async fn wait_screen(&self, what: &str, timeout: Duration, check: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            let screen = self.screen();
            if check(&screen) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no {what} on the terminal after {timeout:?}:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_exit(&self, timeout: Duration) -> i32 {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.exit_status() {
                return status;
            }
            if Instant::now() >= deadline {
                self.hung(timeout).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails with what the command in the pane is doing: its processes and, as a Go client
    /// prints them on SIGQUIT, where its goroutines wait.
    async fn hung(&self, timeout: Duration) -> ! {
        let shell = self.ok(&["display-message", "-p", "-t", PANE, "#{pane_pid}"]);
        let shell = shell.trim().to_string();
        let ps = Command::new("ps")
            .args([
                "-o",
                "pid,ppid,stat,wchan:32,args",
                "-p",
                &shell,
                "--ppid",
                &shell,
            ])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .unwrap_or_default();
        for pid in children.split_whitespace().filter_map(|p| p.parse().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGQUIT,
            );
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        panic!(
            "the command in the terminal still runs after {timeout:?}:\n{ps}\n{}",
            self.screen()
        );
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

/// Whether a line of `screen` is exactly `line`.
fn has_line(screen: &str, line: &str) -> bool {
    screen.lines().any(|l| l.trim() == line)
}

// ---------------------------------------------------------------------------------------------
// crictl as a child process.

/// Spawns `crictl ARGS...` with piped stdio, killed if the test drops it.
fn spawn_crictl(crictl: &Crictl, args: &[&str]) -> tokio::process::Child {
    let mut cmd = tokio::process::Command::from(crictl.command(args));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd.spawn().expect("spawn crictl")
}

/// Runs `crictl ARGS...` with `input` on its stdin, then its end; gives what it printed.
async fn crictl_with_input(crictl: &Crictl, args: &[&str], input: Vec<u8>) -> Output {
    let mut child = spawn_crictl(crictl, args);
    let mut stdin = child.stdin.take().expect("crictl's stdin");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&input).await;
        // Dropped here: crictl reads the end of its stdin.
    });
    let out = tokio::time::timeout(SESSION_TIMEOUT, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("crictl {args:?} still runs {SESSION_TIMEOUT:?} on"))
        .expect("wait for crictl");
    writer.await.expect("stdin writer");
    out
}

/// A line of the child's stdout, within `timeout`.
async fn next_line(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    what: &str,
    timeout: Duration,
) -> String {
    tokio::time::timeout(timeout, lines.next_line())
        .await
        .unwrap_or_else(|_| panic!("no {what} in {timeout:?}"))
        .expect("read crictl's stdout")
        .unwrap_or_else(|| panic!("crictl's stdout ended before {what}"))
}

/// `GET path` over HTTP/1.0 to 127.0.0.1:`port`: the response's head and body.
fn http_get(port: u16, path: &str) -> (String, Vec<u8>) {
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    write!(conn, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").expect("send the request");
    let mut response = Vec::new();
    conn.read_to_end(&mut response)
        .unwrap_or_else(|e| panic!("read the response from 127.0.0.1:{port}: {e}"));
    split_response(&response)
}

#[track_caller]
fn split_response(response: &[u8]) -> (String, Vec<u8>) {
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("not an HTTP response: {}", show(response)));
    (
        String::from_utf8_lossy(&response[..at]).into_owned(),
        response[at + 4..].to_vec(),
    )
}

/// `seq 1 n`'s output.
fn seq(n: u32) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 1..=n {
        writeln!(out, "{i}").expect("write to a Vec");
    }
    out
}

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A container serving files over HTTP with busybox's httpd on `listen` ([ADDR:]PORT):
/// `/index.html` holds `index`, `/seq.txt` is `seq 1 30000`.
fn web_server(listen: &str, index: &str) -> cri::ContainerConfig {
    let script = format!(
        "/bin/busybox mkdir -p /www && echo -n '{index}' > /www/index.html && \
         /bin/busybox seq 1 30000 > /www/seq.txt && \
         exec /bin/busybox httpd -f -p {listen} -h /www"
    );
    container_config("web", &["/bin/sh", "-c", &script])
}

/// Waits until the container's server answers on `port` from inside the pod.
async fn wait_serving(node: &mut Node, port: u16) {
    let url = format!("http://127.0.0.1:{port}/index.html");
    let id = node.container.clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let out = node
            .env
            .exec(
                &id,
                &["/bin/busybox", "wget", "-q", "-O", "/dev/null", &url],
            )
            .await;
        if out.exit_code == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the pod's server never answered on {port}: {}",
            show(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// =============================================================================================
// crictl.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_exec_tty_follows_the_terminal() {
    let node = Node::start("tty").await;
    let argv = node
        .crictl
        .argv(&["exec", "-it", &node.container, "/bin/sh"]);
    let tmux = Tmux::start(node.dir(), 80, 24, &argv);
    tmux.wait_screen("shell prompt", Duration::from_secs(30), |s| {
        s.contains("# ")
    })
    .await;

    // The container's terminal has the size of the one crictl runs in.
    tmux.type_line("/bin/busybox stty size");
    tmux.wait_screen("`24 80` from stty", Duration::from_secs(10), |s| {
        has_line(s, "24 80")
    })
    .await;

    // Resized, crictl gets SIGWINCH and sends the new size on; a command typed before it
    // got through sees the old one, so stty is asked again until the new size shows.
    tmux.ok(&["resize-window", "-t", PANE, "-x", "100", "-y", "40"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        tmux.type_line("/bin/busybox stty size");
        tokio::time::sleep(Duration::from_millis(300)).await;
        if has_line(&tmux.screen(), "40 100") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container's terminal never became 100x40:\n{}",
            tmux.screen()
        );
    }

    // The shell's exit ends crictl, successfully.
    tmux.type_line("exit");
    assert_eq!(tmux.wait_exit(Duration::from_secs(20)).await, 0);
    drop(tmux);
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_exec_stdin_from_a_pipe() {
    let node = Node::start("pipe").await;
    // Lines, then every byte value: cat must give back exactly what it read.
    let mut input = seq(100_000);
    input.extend(0..=255u8);
    let out = crictl_with_input(
        &node.crictl,
        &["exec", "-i", &node.container, "/bin/cat"],
        input.clone(),
    )
    .await;
    assert!(
        out.status.success(),
        "crictl exec -i cat: {}: {}",
        out.status,
        show(&out.stderr)
    );
    assert_eq!(out.stdout.len(), input.len(), "bytes back from cat");
    assert!(out.stdout == input, "cat's output differs from its input");
    assert_eq!(out.stderr, b"", "{}", show(&out.stderr));
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_exec_output_and_exit_code() {
    let node = Node::start("codes").await;
    let c = node.container.clone();

    let out = node
        .crictl
        .run(&["exec", &c, "/bin/sh", "-c", "echo out; echo err >&2"]);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        show(&out.stderr)
    );
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );

    // crictl 1.26 exits 1 whatever the code; it names the code in its error, which it reads
    // from the Status the server sent.
    let out = node.crictl.run(&[
        "exec",
        &c,
        "/bin/sh",
        "-c",
        "echo hi; echo oops >&2; exit 3",
    ]);
    assert!(!out.status.success(), "exec of exit 3: {}", out.status);
    assert_eq!(out.stdout, b"hi\n", "{}", show(&out.stdout));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with("oops\n") && stderr.contains("command terminated with exit code 3"),
        "exec of exit 3: {}: {stderr}",
        out.status
    );
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_attach_to_a_container_with_stdin() {
    let mut node = Node::start_in(CriEnv::start().await, "attach", false, reader(false)).await;
    let mut child = spawn_crictl(&node.crictl, &["attach", "-i", &node.container]);
    let mut stdin = child.stdin.take().expect("crictl's stdin");
    let mut lines = BufReader::new(child.stdout.take().expect("crictl's stdout")).lines();

    // What is typed reaches the container; what it prints then reaches crictl.
    for word in ["one", "two"] {
        stdin
            .write_all(format!("{word}\n").as_bytes())
            .await
            .expect("write to crictl");
        let line = next_line(&mut lines, "the container's answer", SESSION_TIMEOUT).await;
        assert_eq!(line, format!("got:{word}"));
    }

    // The container's end ends the attach session, and crictl with it.
    node.stop_container().await;
    let rest = tokio::time::timeout(SESSION_TIMEOUT, lines.next_line())
        .await
        .expect("crictl's stdout ends with the container")
        .expect("read crictl's stdout");
    assert_eq!(rest, None, "more output after the stop");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("crictl attach returns once the container has exited")
        .expect("wait for crictl");
    assert!(status.success(), "crictl attach: {status}");
    drop(stdin);
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_attach_to_a_container_with_a_tty() {
    let mut node = Node::start_in(CriEnv::start().await, "attach-tty", false, reader(true)).await;
    let argv = node.crictl.argv(&["attach", "-it", &node.container]);
    let tmux = Tmux::start(node.dir(), 80, 24, &argv);

    // Lines typed before the session is up may wait in the terminal until crictl reads them,
    // or go while it switches to raw mode: typed until one comes back.
    let deadline = Instant::now() + SESSION_TIMEOUT;
    let mut n = 0;
    loop {
        tmux.type_line(&format!("line{n}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        let screen = tmux.screen();
        if screen.contains("got:line") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the container never answered through crictl attach:\n{screen}"
        );
        n += 1;
    }
    tmux.type_line("last");
    tmux.wait_screen("the answer `got:last`", Duration::from_secs(10), |s| {
        has_line(s, "got:last")
    })
    .await;

    node.stop_container().await;
    let status = tmux.wait_exit(Duration::from_secs(20)).await;
    assert_eq!(status, 0, "crictl attach -it:\n{}", tmux.screen());
    drop(tmux);
    node.finish().await;
}

/// crictl port-forward to a web server in a pod, fetched through the local port it opens.
async fn crictl_port_forward(host_network: bool) {
    // In its own network namespace the pod's server takes port 80; on the node's, a free
    // port on loopback.
    let (port, listen) = if host_network {
        let p = free_port();
        (p, format!("127.0.0.1:{p}"))
    } else {
        (80, "80".to_string())
    };
    let index = "served from the pod";
    let name = if host_network { "pf-host" } else { "pf-cni" };
    let mut node = Node::start_in(
        CriEnv::start().await,
        name,
        host_network,
        web_server(&listen, index),
    )
    .await;
    wait_serving(&mut node, port).await;

    // `:PORT`: crictl picks the local port, and says which.
    let remote = format!(":{port}");
    let mut child = spawn_crictl(&node.crictl, &["port-forward", &node.pod, &remote]);
    let mut lines = BufReader::new(child.stdout.take().expect("crictl's stdout")).lines();
    let line = next_line(&mut lines, "`Forwarding from`", Duration::from_secs(30)).await;
    let local: u16 = line
        .strip_prefix("Forwarding from 127.0.0.1:")
        .and_then(|r| r.split_once(" -> "))
        .filter(|(_, to)| *to == port.to_string())
        .and_then(|(l, _)| l.parse().ok())
        .unwrap_or_else(|| panic!("crictl port-forward printed {line:?}"));

    // Two connections, one after the other, each a stream pair of its own.
    let (head, body) = tokio::task::spawn_blocking(move || http_get(local, "/index.html"))
        .await
        .expect("fetch");
    assert!(
        head.starts_with("HTTP/1.") && head.contains(" 200 "),
        "{head}"
    );
    assert_eq!(body, index.as_bytes(), "{}", show(&body));
    let (head, body) = tokio::task::spawn_blocking(move || http_get(local, "/seq.txt"))
        .await
        .expect("fetch");
    assert!(head.contains(" 200 "), "{head}");
    assert_eq!(
        sha256(&body),
        sha256(&seq(30000)),
        "/seq.txt through the forward"
    );

    child.kill().await.expect("kill crictl port-forward");
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_port_forward_to_a_cni_pod() {
    crictl_port_forward(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crictl_port_forward_to_a_host_network_pod() {
    crictl_port_forward(true).await;
}

// =============================================================================================
// WebSocket.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v4_exec() {
    let mut node = Node::start("ws-v4").await;
    let c = node.container.clone();

    let url = exec_url(
        &mut node.env,
        exec_request(&c, &["/bin/sh", "-c", "echo out; echo err >&2; exit 3"]),
    )
    .await;
    assert_stream_url(&url, "exec");
    let s = converse(ws_session(&url, Proto::V4).await, Proto::V4, vec![]).await;
    assert_eq!(s.data(1), b"out\n", "{}", s.summary());
    assert_eq!(s.data(2), b"err\n", "{}", s.summary());
    s.assert_exit_code(3);
    assert_eq!(s.close_code, Some(1000), "{}", s.summary());

    // stdin: v4 has no way to close it, so the command reads one line.
    let mut req = exec_request(&c, &["/bin/sh", "-c", "read l; echo got:$l"]);
    req.stdin = true;
    let url = exec_url(&mut node.env, req).await;
    let s = converse(
        ws_session(&url, Proto::V4).await,
        Proto::V4,
        vec![Proto::V4.message(0, b"hello\n")],
    )
    .await;
    assert_eq!(s.data(1), b"got:hello\n", "{}", s.summary());
    assert_eq!(s.data(2), b"", "{}", s.summary());
    s.assert_success();
    assert_eq!(s.close_code, Some(1000), "{}", s.summary());

    // A command that cannot be run at all fails the session, with a Status that says so.
    let url = exec_url(&mut node.env, exec_request(&c, &["/no/such/binary"])).await;
    let s = converse(ws_session(&url, Proto::V4).await, Proto::V4, vec![]).await;
    let status = s.status();
    assert_eq!(status["status"], "Failure", "{status}");
    assert_eq!(s.close_code, Some(1000), "{}", s.summary());
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v4_base64_exec() {
    let mut node = Node::start("ws-b64").await;
    let c = node.container.clone();
    let mut req = exec_request(
        &c,
        &[
            "/bin/sh",
            "-c",
            "read l; echo got:$l; echo err >&2; printf '\\001\\377'; exit 7",
        ],
    );
    req.stdin = true;
    let url = exec_url(&mut node.env, req).await;
    let proto = Proto::V4Base64;
    let s = converse(
        ws_session(&url, proto).await,
        proto,
        vec![proto.message(0, b"b64\n")],
    )
    .await;
    // Proto::frame has checked that every message was text.
    assert_eq!(s.data(1), b"got:b64\n\x01\xff", "{}", s.summary());
    assert_eq!(s.data(2), b"err\n", "{}", s.summary());
    s.assert_exit_code(7);
    assert_eq!(s.close_code, Some(1000), "{}", s.summary());
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_v5_stdin_close() {
    let mut node = Node::start("ws-v5").await;
    let c = node.container.clone();
    let mut req = exec_request(&c, &["/bin/cat"]);
    req.stdin = true;
    let url = exec_url(&mut node.env, req).await;

    // Offered as kubectl offers them, v5 first: the server takes v5.
    let (ws, chosen) = ws_open(&url, &[Proto::V5.name(), Proto::V4.name()])
        .await
        .expect("WebSocket handshake");
    assert_eq!(chosen.as_deref(), Some(Proto::V5.name()));

    // cat ends only when its stdin does: the close message [255, 0] is that end.
    let input = seq(200_000);
    let mut msgs: Vec<Message> = input
        .chunks(32 * 1024)
        .map(|chunk| Proto::V5.message(0, chunk))
        .collect();
    msgs.push(Message::binary(vec![255u8, 0]));
    let s = converse(ws, Proto::V5, msgs).await;
    assert_eq!(s.data(1).len(), input.len(), "{}", s.summary());
    assert!(s.data(1) == input, "cat's output differs from its input");
    assert_eq!(s.data(2), b"", "{}", s.summary());
    s.assert_success();
    assert_eq!(s.close_code, Some(1000), "{}", s.summary());
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_channel_k8s_io() {
    let mut node = Node::start("ws-v1").await;
    let c = node.container.clone();
    for proto in [Proto::Channel, Proto::Base64Channel] {
        // Success: no error at all.
        let url = exec_url(&mut node.env, exec_request(&c, &["/bin/echo", "ok"])).await;
        let s = converse(ws_session(&url, proto).await, proto, vec![]).await;
        assert_eq!(s.data(1), b"ok\n", "{proto:?}: {}", s.summary());
        assert_eq!(s.data(3), b"", "{proto:?}: {}", s.summary());

        // Failure: a plain-text error naming the code.
        let url = exec_url(
            &mut node.env,
            exec_request(&c, &["/bin/sh", "-c", "echo hi; exit 3"]),
        )
        .await;
        let s = converse(ws_session(&url, proto).await, proto, vec![]).await;
        assert_eq!(s.data(1), b"hi\n", "{proto:?}: {}", s.summary());
        let error = String::from_utf8_lossy(&s.data(3)).into_owned();
        assert!(
            !error.is_empty() && error.contains('3') && !error.trim_start().starts_with('{'),
            "{proto:?}: error channel {error:?}"
        );
    }
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_tty_resize() {
    let mut node = Node::start("ws-tty").await;
    let c = node.container.clone();
    let req = cri::ExecRequest {
        container_id: c.clone(),
        cmd: [
            "/bin/sh",
            "-c",
            "while read l; do [ \"$l\" = q ] && exit 0; /bin/busybox stty size; done",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        tty: true,
        stdin: true,
        stdout: true,
        stderr: false,
    };
    let url = exec_url(&mut node.env, req).await;
    let proto = Proto::V4;
    let (mut sink, mut stream) = ws_session(&url, proto).await.split();
    send(&mut sink, proto.message(4, br#"{"Width":100,"Height":40}"#)).await;

    // The resize and the lines take different ways in: lines are sent until one is answered
    // with the new size.
    let mut s = Session::default();
    let deadline = tokio::time::Instant::now() + SESSION_TIMEOUT;
    loop {
        send(&mut sink, proto.message(0, b"\n")).await;
        let soon = (tokio::time::Instant::now() + Duration::from_millis(300)).min(deadline);
        read_until(&mut stream, proto, &mut s, soon, |s| {
            String::from_utf8_lossy(&s.data(1)).contains("40 100")
        })
        .await;
        if String::from_utf8_lossy(&s.data(1)).contains("40 100") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline && !s.ended,
            "the terminal never became 100x40: {}",
            s.summary()
        );
    }
    send(&mut sink, proto.message(0, b"q\n")).await;
    read_until(&mut stream, proto, &mut s, deadline, |_| false).await;
    assert!(s.ended, "{}", s.summary());
    s.assert_success();
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_port_forward() {
    let mut config = web_server("80", "port80");
    // A second server, on 81, in the same pod.
    config.command[2] = format!(
        "/bin/busybox mkdir -p /www81 && echo -n port81 > /www81/index.html && \
         /bin/busybox httpd -p 81 -h /www81 && {}",
        config.command[2]
    );
    let mut node = Node::start_in(CriEnv::start().await, "ws-pf", false, config).await;
    wait_serving(&mut node, 80).await;
    wait_serving(&mut node, 81).await;
    let pod = node.pod.clone();
    let request = b"GET /index.html HTTP/1.0\r\n\r\n";

    // The ports of the CRI request, without a query; base64.
    let url = port_forward_url(&mut node.env, &pod, &[80]).await;
    assert_stream_url(&url, "portforward");
    let proto = Proto::V4Base64;
    let (mut sink, mut stream) = ws_session(&url, proto).await.split();
    send(&mut sink, proto.message(0, request)).await;
    let mut s = Session::default();
    let deadline = tokio::time::Instant::now() + SESSION_TIMEOUT;
    read_until(&mut stream, proto, &mut s, deadline, |s| {
        s.forwarded(0).1.ends_with(b"port80")
    })
    .await;
    let (port, data) = s.forwarded(0);
    assert_eq!(port, 80u16.to_le_bytes(), "data channel's first message");
    assert_eq!(
        s.forwarded(1).0,
        80u16.to_le_bytes(),
        "error channel's first"
    );
    let (head, body) = split_response(&data);
    assert!(head.contains(" 200 "), "{head}");
    assert_eq!(body, b"port80");
    drop((sink, stream));

    // Two ports from the query: channels 0/1 for the first, 2/3 for the second.
    let url = port_forward_url(&mut node.env, &pod, &[]).await;
    let url = format!("{url}?port=80&port=81");
    let proto = Proto::V4;
    let (mut sink, mut stream) = ws_session(&url, proto).await.split();
    send(&mut sink, proto.message(2, request)).await;
    send(&mut sink, proto.message(0, request)).await;
    let mut s = Session::default();
    read_until(&mut stream, proto, &mut s, deadline, |s| {
        s.forwarded(0).1.ends_with(b"port80") && s.forwarded(2).1.ends_with(b"port81")
    })
    .await;
    for (channel, port) in [(0u8, 80u16), (2, 81)] {
        let (first, data) = s.forwarded(channel);
        assert_eq!(
            first,
            port.to_le_bytes(),
            "channel {channel}: {}",
            s.summary()
        );
        assert_eq!(
            s.forwarded(channel + 1).0,
            port.to_le_bytes(),
            "channel {}: {}",
            channel + 1,
            s.summary()
        );
        let (head, body) = split_response(&data);
        assert!(head.contains(" 200 "), "{head}");
        assert_eq!(body, format!("port{port}").as_bytes());
        assert_eq!(s.forwarded(channel + 1).1, b"", "no error for {port}");
    }
    drop((sink, stream));

    // A port nothing listens on: the error channel says so, and the session ends.
    let url = port_forward_url(&mut node.env, &pod, &[82]).await;
    let s = converse(ws_session(&url, proto).await, proto, vec![]).await;
    let (first, error) = s.forwarded(1);
    assert_eq!(first, 82u16.to_le_bytes(), "{}", s.summary());
    assert!(
        !error.is_empty(),
        "no error for a closed port: {}",
        s.summary()
    );
    assert_eq!(s.forwarded(0).1, b"", "{}", s.summary());
    node.finish().await;
}

/// The WebSocket messages of `ws` as a byte stream (the SPDY tunnel's framing): what the
/// returned end is given goes out in binary messages, what comes in is written to it.
fn ws_byte_stream(ws: Ws) -> tokio::io::DuplexStream {
    use tokio::io::AsyncReadExt;
    let (ours, theirs) = tokio::io::duplex(64 << 10);
    let (mut sink, mut source) = ws.split();
    let (mut from_spdy, mut to_spdy) = tokio::io::split(theirs);
    tokio::spawn(async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if to_spdy.write_all(&b).await.is_err() => break,
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_spdy.shutdown().await;
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; 32 << 10];
        while let Ok(n) = from_spdy.read(&mut buf).await {
            if n == 0 || sink.send(Message::binary(buf[..n].to_vec())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });
    ours
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_spdy_tunnel_port_forward() {
    use sup_supervisor::cri::stream::spdy::{Connection, Headers};
    let mut node = Node::start_in(
        CriEnv::start().await,
        "ws-spdy",
        false,
        web_server("80", "tunnelled"),
    )
    .await;
    wait_serving(&mut node, 80).await;
    let pod = node.pod.clone();
    let url = port_forward_url(&mut node.env, &pod, &[80]).await;
    let protocol = "SPDY/3.1+portforward.k8s.io";
    let (ws, chosen) = ws_open(&url, &[protocol])
        .await
        .expect("WebSocket handshake");
    assert_eq!(chosen.as_deref(), Some(protocol));
    let (conn, _incoming) = Connection::client(ws_byte_stream(ws));

    let headers = |kind: &str, request: u32| {
        let mut h = Headers::new();
        h.add("streamtype", kind);
        h.add("port", "80");
        h.add("requestid", &request.to_string());
        h
    };
    // Two forwarded connections at once, their streams opened out of order: the server pairs
    // them by request id.
    let (err0, err0_tx) = conn
        .open(headers("error", 0))
        .await
        .expect("error stream 0");
    let (err1, err1_tx) = conn
        .open(headers("error", 1))
        .await
        .expect("error stream 1");
    // As kubectl does: nothing is sent on an error stream.
    err0_tx.finish().await.expect("close error stream 0");
    err1_tx.finish().await.expect("close error stream 1");
    let (data1, data1_tx) = conn.open(headers("data", 1)).await.expect("data stream 1");
    let (data0, data0_tx) = conn.open(headers("data", 0)).await.expect("data stream 0");
    data1_tx
        .send(b"GET /seq.txt HTTP/1.0\r\n\r\n")
        .await
        .expect("send request 1");
    data0_tx
        .send(b"GET /index.html HTTP/1.0\r\n\r\n")
        .await
        .expect("send request 0");

    let read_all = |mut rx: sup_supervisor::cri::stream::spdy::RecvHalf| async move {
        let mut out = Vec::new();
        while let Some(chunk) = tokio::time::timeout(SESSION_TIMEOUT, rx.recv())
            .await
            .expect("stream data in time")
        {
            out.extend_from_slice(&chunk);
        }
        out
    };
    let (resp0, resp1, e0, e1) = tokio::join!(
        read_all(data0),
        read_all(data1),
        read_all(err0),
        read_all(err1)
    );
    let (head, body) = split_response(&resp0);
    assert!(head.contains(" 200 "), "{head}");
    assert_eq!(body, b"tunnelled");
    let (head, body) = split_response(&resp1);
    assert!(head.contains(" 200 "), "{head}");
    assert_eq!(
        sha256(&body),
        sha256(&seq(30000)),
        "/seq.txt through the tunnel"
    );
    assert_eq!(
        (e0.as_slice(), e1.as_slice()),
        (&b""[..], &b""[..]),
        "errors"
    );
    drop((data0_tx, data1_tx, err0_tx, err1_tx));
    conn.go_away().await;
    node.finish().await;
}

// =============================================================================================
// Load and misuse.

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabytes_byte_exact() {
    let mut node = Node::start("big").await;
    let c = node.container.clone();
    let expected = seq(6_500_000);
    assert!(expected.len() > 50_000_000, "{}", expected.len());

    // Through crictl (SPDY).
    let out = node
        .crictl
        .run(&["exec", &c, "/bin/busybox", "seq", "1", "6500000"]);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        show(&out.stderr)
    );
    assert_eq!(out.stdout.len(), expected.len(), "bytes through crictl");
    assert_eq!(
        sha256(&out.stdout),
        sha256(&expected),
        "sha256 through crictl"
    );

    // Through WebSocket (v5).
    let url = exec_url(
        &mut node.env,
        exec_request(&c, &["/bin/busybox", "seq", "1", "6500000"]),
    )
    .await;
    let s = converse(ws_session(&url, Proto::V5).await, Proto::V5, vec![]).await;
    let got = s.data(1);
    assert_eq!(got.len(), expected.len(), "{}", s.summary());
    assert_eq!(sha256(&got), sha256(&expected), "sha256 through WebSocket");
    s.assert_success();
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_execs() {
    let node = Node::start("many").await;
    let expected = |n: usize| -> Vec<u8> {
        (0..300)
            .flat_map(|i| format!("s{n}-{i}\n").into_bytes())
            .collect()
    };
    let children: Vec<_> = (0..50)
        .map(|n| {
            let script = format!("i=0; while [ $i -lt 300 ]; do echo s{n}-$i; i=$((i+1)); done");
            let mut child = spawn_crictl(
                &node.crictl,
                &["exec", &node.container, "/bin/sh", "-c", &script],
            );
            drop(child.stdin.take());
            child
        })
        .collect();
    let outs = tokio::time::timeout(
        Duration::from_secs(120),
        futures::future::join_all(children.into_iter().map(|c| c.wait_with_output())),
    )
    .await
    .expect("50 crictl exec in 120 s");
    for (n, out) in outs.into_iter().enumerate() {
        let out = out.expect("wait for crictl");
        assert!(
            out.status.success(),
            "session {n}: {}: {}",
            out.status,
            show(&out.stderr)
        );
        assert!(
            out.stdout == expected(n),
            "session {n} got {} bytes, not its own output: {}",
            out.stdout.len(),
            show(&out.stdout[..out.stdout.len().min(300)])
        );
    }
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_client_leaves_no_exec() {
    let mut node = Node::start("killed").await;
    let c = node.container.clone();
    let dir = node.dir().to_path_buf();
    let mut before = processes_of(&dir);
    before.sort();
    // One exec first, so that whatever supd opens once (its connection to the shim, the
    // listener's first accept) is in the count taken before.
    let out = node.crictl.run(&["exec", &c, "/bin/busybox", "true"]);
    assert!(out.status.success(), "{}", show(&out.stderr));
    let supd = node.env.daemon.pid().expect("supd's pid");
    let fds_before = open_fds(supd);

    // crictl killed mid-session.
    let mut child = spawn_crictl(&node.crictl, &["exec", &c, "/bin/busybox", "sleep", "4321"]);
    node.wait_running("sleep 4321").await;
    child.kill().await.expect("kill crictl");
    node.wait_gone("sleep 4321", Duration::from_secs(15)).await;

    // A WebSocket client that drops its connection.
    let url = exec_url(
        &mut node.env,
        exec_request(&c, &["/bin/busybox", "sleep", "4322"]),
    )
    .await;
    let ws = ws_session(&url, Proto::V4).await;
    node.wait_running("sleep 4322").await;
    drop(ws);
    node.wait_gone("sleep 4322", Duration::from_secs(15)).await;

    // Nothing under the shim but what was there before: no exec, no runc left over.
    wait_for("the processes from before", Duration::from_secs(15), || {
        let mut now = processes_of(&dir);
        now.sort();
        let same = now == before;
        async move { same.then_some(()) }
    })
    .await;
    // No exec left in the task, and supd holds no more descriptors than before.
    let pids = node
        .env
        .runtime
        .exec_sync(cri::ExecSyncRequest {
            container_id: c.clone(),
            cmd: vec!["/bin/busybox".into(), "ps".into()],
            timeout: 10,
        })
        .await
        .expect("ExecSync ps")
        .into_inner();
    let ps = String::from_utf8_lossy(&pids.stdout);
    assert!(!ps.contains("sleep 432"), "{ps}");
    wait_for(
        "supd's descriptors back to before",
        Duration::from_secs(15),
        || {
            let now = open_fds(supd);
            async move { (now <= fds_before).then_some(()) }
        },
    )
    .await;
    // And the container still serves execs.
    let out = node.crictl.run(&["exec", &c, "/bin/echo", "still"]);
    assert_eq!(out.stdout, b"still\n", "{}", show(&out.stderr));
    node.finish().await;
}

/// How many file descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(usize::MAX)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_single_use() {
    let mut node = Node::start("tokens").await;
    let c = node.container.clone();
    let url = exec_url(&mut node.env, exec_request(&c, &["/bin/echo", "once"])).await;
    let s = converse(ws_session(&url, Proto::V4).await, Proto::V4, vec![]).await;
    assert_eq!(s.data(1), b"once\n", "{}", s.summary());
    s.assert_success();
    assert_eq!(ws_refusal(&url).await, 404, "a used token");

    // A token is good only for the kind of session it was given for.
    let url = exec_url(&mut node.env, exec_request(&c, &["/bin/echo", "elsewhere"])).await;
    let attach_path = url.replacen("/exec/", "/attach/", 1);
    assert_eq!(ws_refusal(&attach_path).await, 404, "{attach_path}");

    // Unknown tokens, on every path.
    let (base, token) = url.rsplit_once("/exec/").expect("an /exec/ URL");
    let bogus = "A".repeat(token.len().max(8));
    for path in ["exec", "attach", "portforward"] {
        let url = format!("{base}/{path}/{bogus}");
        assert_eq!(ws_refusal(&url).await, 404, "{url}");
    }
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tokens_refused() {
    let mut node = Node::start("expired").await;
    let c = node.container.clone();
    let pod = node.pod.clone();
    let exec = exec_url(&mut node.env, exec_request(&c, &["/bin/echo", "late"])).await;
    let attach = attach_url(
        &mut node.env,
        cri::AttachRequest {
            container_id: c.clone(),
            stdin: false,
            tty: false,
            stdout: true,
            stderr: true,
        },
    )
    .await;
    assert_stream_url(&attach, "attach");
    let forward = port_forward_url(&mut node.env, &pod, &[80]).await;
    tokio::time::sleep(TOKEN_LIFETIME).await;
    for url in [exec, attach, forward] {
        assert_eq!(ws_refusal(&url).await, 404, "an expired token: {url}");
    }
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_rpcs_validate_their_requests() {
    let mut node = Node::start("validate").await;
    let c = node.container.clone();
    let pod = node.pod.clone();
    // A container created and never started.
    let created = node
        .env
        .runtime
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: pod.clone(),
            config: Some(container_config("idle", &SLEEPER)),
            sandbox_config: Some(pod_config("validate", &node.env.log_dir("validate"), false)),
        })
        .await
        .expect("CreateContainer")
        .into_inner()
        .container_id;
    node.env.track(&created);

    let mut rt = node.env.runtime.clone();
    let exec = |id: &str, tty: bool, stdin: bool, stdout: bool, stderr: bool| cri::ExecRequest {
        container_id: id.to_string(),
        cmd: vec!["/bin/echo".to_string()],
        tty,
        stdin,
        stdout,
        stderr,
    };
    let attach =
        |id: &str, tty: bool, stdin: bool, stdout: bool, stderr: bool| cri::AttachRequest {
            container_id: id.to_string(),
            stdin,
            tty,
            stdout,
            stderr,
        };
    use tonic::Code;
    let cases = [
        (
            "unknown container",
            "no-such-container",
            false,
            false,
            true,
            true,
            Code::NotFound,
        ),
        (
            "not running",
            created.as_str(),
            false,
            false,
            true,
            true,
            Code::FailedPrecondition,
        ),
        (
            "tty with stderr",
            c.as_str(),
            true,
            true,
            true,
            true,
            Code::InvalidArgument,
        ),
        (
            "no stream",
            c.as_str(),
            false,
            false,
            false,
            false,
            Code::InvalidArgument,
        ),
    ];
    for (what, id, tty, stdin, stdout, stderr, code) in cases {
        let got = rt
            .exec(exec(id, tty, stdin, stdout, stderr))
            .await
            .map(|r| r.into_inner().url)
            .map_err(|s| s.code());
        assert_eq!(got, Err(code), "Exec, {what}");
        let got = rt
            .attach(attach(id, tty, stdin, stdout, stderr))
            .await
            .map(|r| r.into_inner().url)
            .map_err(|s| s.code());
        assert_eq!(got, Err(code), "Attach, {what}");
    }
    let got = rt
        .port_forward(cri::PortForwardRequest {
            pod_sandbox_id: "no-such-pod".to_string(),
            port: vec![80],
        })
        .await
        .map(|r| r.into_inner().url)
        .map_err(|s| s.code());
    assert_eq!(got, Err(Code::NotFound), "PortForward, unknown pod");
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_most_1000_outstanding_tokens() {
    let mut node = Node::start("cap").await;
    let c = node.container.clone();
    let mut urls = Vec::new();
    for _ in 0..1000 {
        urls.push(exec_url(&mut node.env, exec_request(&c, &["/bin/echo", "capped"])).await);
    }
    let distinct: std::collections::BTreeSet<&String> = urls.iter().collect();
    assert_eq!(distinct.len(), 1000, "tokens repeat");
    let got = node
        .env
        .runtime
        .exec(exec_request(&c, &["/bin/echo", "one too many"]))
        .await
        .map(|r| r.into_inner().url)
        .map_err(|s| s.code());
    assert_eq!(got, Err(tonic::Code::ResourceExhausted), "the 1001st Exec");

    // A token used is no longer outstanding: there is room for one more.
    let s = converse(ws_session(&urls[0], Proto::V4).await, Proto::V4, vec![]).await;
    assert_eq!(s.data(1), b"capped\n", "{}", s.summary());
    let url = exec_url(&mut node.env, exec_request(&c, &["/bin/echo", "room"])).await;
    assert_stream_url(&url, "exec");
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_end_after_the_idle_timeout() {
    let env = CriEnv::start_with_cri("stream_idle_timeout = \"2s\"\n", "").await;
    let mut node = Node::start_in(env, "idle", false, sleeper()).await;
    let c = node.container.clone();

    // A session with output every second is never idle for 2 s: it runs to its end.
    let url = exec_url(
        &mut node.env,
        exec_request(
            &c,
            &[
                "/bin/sh",
                "-c",
                "for i in 1 2 3 4; do echo $i; /bin/busybox sleep 1; done",
            ],
        ),
    )
    .await;
    let s = converse(ws_session(&url, Proto::V4).await, Proto::V4, vec![]).await;
    assert_eq!(s.data(1), b"1\n2\n3\n4\n", "{}", s.summary());
    s.assert_success();

    // A silent one is closed after about 2 s, and its process goes with it.
    let url = exec_url(
        &mut node.env,
        exec_request(&c, &["/bin/busybox", "sleep", "4323"]),
    )
    .await;
    let started = Instant::now();
    let s = converse(ws_session(&url, Proto::V4).await, Proto::V4, vec![]).await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500) && took < Duration::from_secs(15),
        "an idle session ended after {took:?}: {}",
        s.summary()
    );
    node.wait_gone("sleep 4323", Duration::from_secs(15)).await;

    // The same over SPDY: crictl's session is ended, and the exec with it.
    let started = Instant::now();
    let out = node
        .crictl
        .run(&["exec", &c, "/bin/busybox", "sleep", "4324"]);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(15),
        "crictl's idle session ended after {took:?}: {}: {}",
        out.status,
        show(&out.stderr)
    );
    node.wait_gone("sleep 4324", Duration::from_secs(15)).await;
    node.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_streaming_on_a_fixed_port() {
    let certs = tempfile::tempdir().expect("cert dir");
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ])
        .args(["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl: {}", show(&out.stderr));
    let port = free_port();
    let cri_keys = format!(
        "stream_address = \"127.0.0.1\"\nstream_port = {port}\n\
         stream_tls_cert_file = {:?}\nstream_tls_key_file = {:?}\n",
        cert.display().to_string(),
        key.display().to_string()
    );
    let env = CriEnv::start_with_cri(&cri_keys, "").await;
    let mut node = Node::start_in(env, "tls", false, sleeper()).await;
    let c = node.container.clone();

    let url = exec_url(&mut node.env, exec_request(&c, &["/bin/echo", "x"])).await;
    assert!(
        url.starts_with(&format!("https://127.0.0.1:{port}/exec/")),
        "{url}"
    );
    // Plain WebSocket to the TLS port: no upgrade.
    let plain = format!("http://{}", url.strip_prefix("https://").expect("https"));
    assert!(
        ws_open(&plain, &[Proto::V4.name()]).await.is_err(),
        "{plain}"
    );

    // crictl (which trusts any certificate) execs over TLS.
    let out = node
        .crictl
        .run(&["exec", &c, "/bin/sh", "-c", "echo secure; exit 0"]);
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        show(&out.stderr)
    );
    assert_eq!(out.stdout, b"secure\n");
    node.finish().await;
}
