//! Pod networking through CNI: loads the network configuration list, runs its plugins in
//! order to attach a pod's network namespace (ADD) and in reverse to detach it (DEL), and
//! keeps each attachment's result beside the namespace so that DEL gets what ADD made.
//!
//! The protocol (environment variables, stdin config with `name`, `cniVersion`,
//! `prevResult` and `runtimeConfig`, result and error JSON on stdout) follows the CNI spec.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

use crate::error::{printable, Error, Result};

/// How long one plugin may run.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);
/// Largest configuration file read.
const MAX_CONFIG: u64 = 1 << 20;
/// The interface name pods get.
const IFNAME: &str = "eth0";

/// Where CNI configurations and plugins are.
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub conf_dirs: Vec<PathBuf>,
    pub bin_dirs: Vec<PathBuf>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            conf_dirs: vec![PathBuf::from("/etc/cni/net.d")],
            bin_dirs: vec![PathBuf::from("/usr/lib/cni"), PathBuf::from("/opt/cni/bin")],
        }
    }
}

impl NetConfig {
    /// The CNI locations of supd's configuration.
    pub fn from_config(cri: &crate::config::CriConfig) -> NetConfig {
        NetConfig {
            conf_dirs: vec![cri.cni_conf_dir.clone()],
            bin_dirs: cri.cni_bin_dir.clone(),
        }
    }
}

/// The pod a network attachment is for, as CNI_ARGS tells the plugins.
#[derive(Debug, Clone)]
pub struct PodRef {
    pub id: String,
    pub name: String,
    pub namespace: String,
    pub uid: String,
}

/// A loaded network configuration list.
#[derive(Debug, Clone)]
struct NetworkList {
    file: PathBuf,
    name: String,
    version: String,
    plugins: Vec<Map<String, Value>>,
}

impl NetworkList {
    fn plugin_type(p: &Map<String, Value>) -> &str {
        p.get("type").and_then(Value::as_str).unwrap_or_default()
    }
}

/// What ADD made, kept for DEL: the very configuration it ran (the conf dir may change
/// before the pod goes), its result (null until every plugin has run) and the port
/// mappings.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Cached {
    file: String,
    network: String,
    version: String,
    plugins: Vec<Map<String, Value>>,
    result: Value,
    port_mappings: Value,
}

/// Loads the first configuration (by file name) of the first directory that has one.
fn load(cfg: &NetConfig) -> Result<NetworkList> {
    for dir in &cfg.conf_dirs {
        let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
            Ok(entries) => entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    matches!(
                        p.extension().and_then(|e| e.to_str()),
                        Some("conflist" | "conf" | "json")
                    )
                })
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("CNI config dir {}", dir.display()), e)),
        };
        files.sort();
        if let Some(file) = files.into_iter().next() {
            return parse_file(&file);
        }
    }
    Err(Error::precondition(format!(
        "no CNI network configuration in {}",
        cfg.conf_dirs
            .iter()
            .map(|d| d.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )))
}

fn parse_file(file: &Path) -> Result<NetworkList> {
    let what = format!("CNI config {}", file.display());
    let meta = std::fs::metadata(file).map_err(|e| Error::io(&what, e))?;
    if meta.len() > MAX_CONFIG {
        return Err(Error::invalid(format!(
            "{what}: larger than {MAX_CONFIG} bytes"
        )));
    }
    let text = std::fs::read(file).map_err(|e| Error::io(&what, e))?;
    let doc: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::invalid(format!("{what}: not JSON: {e}")))?;
    let is_list = file.extension().is_some_and(|e| e == "conflist");
    parse_list(doc, is_list)
        .map(|mut l| {
            l.file = file.to_path_buf();
            l
        })
        .map_err(|e| e.context(what))
}

/// A `.conflist` has `plugins`; a single-plugin `.conf` is its own only plugin.
fn parse_list(doc: Value, is_list: bool) -> Result<NetworkList> {
    let Value::Object(mut obj) = doc else {
        return Err(Error::invalid("not a JSON object"));
    };
    let name = obj
        .get("name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .ok_or_else(|| Error::invalid("missing \"name\""))?
        .to_string();
    let version = obj
        .get("cniVersion")
        .and_then(Value::as_str)
        .unwrap_or("0.2.0")
        .to_string();
    let plugins = if is_list {
        match obj.remove("plugins") {
            Some(Value::Array(items)) => items
                .into_iter()
                .map(|p| match p {
                    Value::Object(m) => Ok(m),
                    _ => Err(Error::invalid("a plugin is not a JSON object")),
                })
                .collect::<Result<Vec<_>>>()?,
            _ => return Err(Error::invalid("missing \"plugins\" list")),
        }
    } else {
        vec![obj]
    };
    if plugins.is_empty() {
        return Err(Error::invalid("no plugins"));
    }
    for p in &plugins {
        let t = NetworkList::plugin_type(p);
        if t.is_empty() || t.contains('/') || t.starts_with('.') {
            return Err(Error::invalid(format!(
                "plugin type {:?} is not a plugin name",
                printable(t)
            )));
        }
    }
    Ok(NetworkList {
        file: PathBuf::new(),
        name,
        version,
        plugins,
    })
}

fn find_plugin(cfg: &NetConfig, kind: &str) -> Result<PathBuf> {
    cfg.bin_dirs
        .iter()
        .map(|d| d.join(kind))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::precondition(format!(
                "CNI plugin {kind:?} not found in {}",
                join_paths(&cfg.bin_dirs)
            ))
        })
}

fn join_paths(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Whether the network can be set up: a configuration is there and so are its plugins.
pub fn ready(cfg: &NetConfig) -> std::result::Result<(), String> {
    let list = load(cfg).map_err(|e| e.to_string())?;
    for p in &list.plugins {
        find_plugin(cfg, NetworkList::plugin_type(p)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn check_pod(pod: &PodRef) -> Result<()> {
    for (what, v) in [
        ("id", &pod.id),
        ("name", &pod.name),
        ("namespace", &pod.namespace),
        ("uid", &pod.uid),
    ] {
        if v.len() > 256 || v.chars().any(|c| c == ';' || c == '=' || c.is_control()) {
            return Err(Error::invalid(format!(
                "pod {what} {:?}: not usable in CNI_ARGS",
                printable(v)
            )));
        }
    }
    if pod.id.is_empty() {
        return Err(Error::invalid("pod id must not be empty"));
    }
    Ok(())
}

fn cache_path(netns: &Path) -> PathBuf {
    let name = netns
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    netns.with_file_name(format!(".{name}.cni.json"))
}

fn port_mappings_json(ports: &[k8s_cri::v1::PortMapping]) -> Value {
    Value::Array(
        ports
            .iter()
            .filter(|p| p.host_port > 0)
            .map(|p| {
                let proto = match k8s_cri::v1::Protocol::try_from(p.protocol) {
                    Ok(k8s_cri::v1::Protocol::Udp) => "udp",
                    Ok(k8s_cri::v1::Protocol::Sctp) => "sctp",
                    _ => "tcp",
                };
                let mut m = json!({
                    "hostPort": p.host_port,
                    "containerPort": p.container_port,
                    "protocol": proto,
                });
                if !p.host_ip.is_empty() {
                    m["hostIP"] = Value::String(p.host_ip.clone());
                }
                m
            })
            .collect(),
    )
}

/// The stdin of one plugin: its own object plus what the runtime injects.
fn plugin_config(
    list: &NetworkList,
    plugin: &Map<String, Value>,
    prev: Option<&Value>,
    ports: &Value,
) -> Value {
    let mut conf = plugin.clone();
    conf.insert("name".into(), Value::String(list.name.clone()));
    conf.insert("cniVersion".into(), Value::String(list.version.clone()));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let wants_ports = plugin
        .get("capabilities")
        .and_then(|c| c.get("portMappings"))
        .and_then(Value::as_bool)
        .unwrap_or(false);
    if wants_ports && ports.as_array().is_some_and(|a| !a.is_empty()) {
        let rc = conf
            .entry("runtimeConfig")
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(rc) = rc {
            rc.insert("portMappings".into(), ports.clone());
        }
    }
    Value::Object(conf)
}

/// One plugin invocation.
struct Invocation<'a> {
    cfg: &'a NetConfig,
    command: &'static str,
    netns: &'a Path,
    pod: &'a PodRef,
}

impl Invocation<'_> {
    async fn run(&self, kind: &str, stdin: &Value) -> Result<Value> {
        let what = format!("CNI plugin {kind:?} {}", self.command);
        let bin = find_plugin(self.cfg, kind)?;
        let input =
            serde_json::to_vec(stdin).map_err(|e| Error::internal(format!("{what}: {e}")))?;
        let netns = if self.netns.exists() {
            self.netns.display().to_string()
        } else {
            String::new()
        };
        let args = format!(
            "IgnoreUnknown=1;K8S_POD_NAMESPACE={};K8S_POD_NAME={};K8S_POD_INFRA_CONTAINER_ID={};K8S_POD_UID={}",
            self.pod.namespace, self.pod.name, self.pod.id, self.pod.uid
        );
        let mut child = tokio::process::Command::new(&bin)
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", &self.pod.id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", IFNAME)
            .env("CNI_PATH", join_paths(&self.cfg.bin_dirs))
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Error::io(format!("{what}: starting {}", bin.display()), e))?;
        if let Some(mut sin) = child.stdin.take() {
            sin.write_all(&input)
                .await
                .map_err(|e| Error::io(format!("{what}: writing its config"), e))?;
        }
        let out = tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output())
            .await
            .map_err(|_| Error::Unavailable(format!("{what}: no answer in {PLUGIN_TIMEOUT:?}")))?
            .map_err(|e| Error::io(&what, e))?;
        if !out.status.success() {
            return Err(Error::Unavailable(format!(
                "{what}: {}: {}",
                out.status,
                plugin_error(&out.stdout, &out.stderr)
            )));
        }
        if out.stdout.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| {
            Error::internal(format!(
                "{what}: result is not JSON ({e}): {}",
                printable(&String::from_utf8_lossy(&out.stdout))
            ))
        })
    }
}

/// The message of a plugin's error result, else its stderr.
fn plugin_error(stdout: &[u8], stderr: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(stdout) {
        let msg = v.get("msg").and_then(Value::as_str).unwrap_or_default();
        let details = v.get("details").and_then(Value::as_str).unwrap_or_default();
        let code = v.get("code").and_then(Value::as_u64).unwrap_or(0);
        if !msg.is_empty() {
            return printable(format!("code {code}: {msg} {details}").trim_end());
        }
    }
    printable(String::from_utf8_lossy(stderr).trim())
}

/// The first IPv4 address (without prefix length) in a result of any CNI version.
fn first_ipv4(result: &Value) -> Option<String> {
    let strip = |a: &str| a.split('/').next().unwrap_or(a).to_string();
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        for ip in ips {
            let addr = ip
                .get("address")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let v4 = ip.get("version").and_then(Value::as_str) == Some("4")
                || strip(addr).parse::<std::net::Ipv4Addr>().is_ok();
            if v4 && !addr.is_empty() {
                return Some(strip(addr));
            }
        }
    }
    result
        .get("ip4")
        .and_then(|v| v.get("ip"))
        .and_then(Value::as_str)
        .map(strip)
}

/// Attaches the pod's network namespace; returns its IPv4 address, if it got one. On
/// failure, what was added is deleted again.
pub async fn setup(
    cfg: &NetConfig,
    netns: &Path,
    pod: &PodRef,
    port_mappings: &[k8s_cri::v1::PortMapping],
) -> Result<Option<String>> {
    check_pod(pod)?;
    let list = load(cfg)?;
    let ports = port_mappings_json(port_mappings);
    let mut record = Cached {
        file: list.file.display().to_string(),
        network: list.name.clone(),
        version: list.version.clone(),
        plugins: list.plugins.clone(),
        result: Value::Null,
        port_mappings: ports.clone(),
    };
    // Recorded before ADD as well: if supd dies or the call is dropped halfway, plugins may
    // hold state that only a DEL with this very configuration undoes (portmap deletes its
    // rules only when DEL names the port mappings).
    let cache = cache_path(netns);
    keep_record(&cache, &record);
    let add = Invocation {
        cfg,
        command: "ADD",
        netns,
        pod,
    };
    let mut prev: Option<Value> = None;
    for (i, plugin) in list.plugins.iter().enumerate() {
        let kind = NetworkList::plugin_type(plugin);
        let conf = plugin_config(&list, plugin, prev.as_ref(), &ports);
        match add.run(kind, &conf).await {
            Ok(Value::Null) => {}
            Ok(result) => prev = Some(result),
            Err(e) => {
                tracing::info!(pod = %pod.id, plugin = kind, error = %e, "CNI ADD failed; undoing");
                let undo = del_plugins(
                    cfg,
                    netns,
                    pod,
                    &list,
                    &list.plugins[..=i],
                    prev.as_ref(),
                    &ports,
                )
                .await;
                // Undone: nothing is left for a later DEL. Else the record lets it retry.
                if undo.is_empty() {
                    remove_record(&cache);
                }
                return Err(e.context(format!("pod {:?}: network {:?}", pod.id, list.name)));
            }
        }
    }
    record.result = prev.unwrap_or(Value::Null);
    keep_record(&cache, &record);
    tracing::info!(pod = %pod.id, network = %list.name, "pod network attached");
    Ok(first_ipv4(&record.result))
}

/// Writes the record of an attachment whole (a new file renamed over the old), so that a
/// crash never leaves half of one; a failure is logged: DEL then uses the current config.
fn keep_record(path: &Path, record: &Cached) {
    let tmp = path.with_extension("json.new");
    let written = serde_json::to_vec(record)
        .map_err(std::io::Error::other)
        .and_then(|data| std::fs::write(&tmp, data))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        tracing::warn!(path = %path.display(), error = %e, "cannot keep the CNI record");
    }
}

fn remove_record(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %path.display(), error = %e, "cannot remove CNI record"),
    }
}

/// DEL for `plugins`, last first; errors are logged, not returned.
async fn del_plugins(
    cfg: &NetConfig,
    netns: &Path,
    pod: &PodRef,
    list: &NetworkList,
    plugins: &[Map<String, Value>],
    prev: Option<&Value>,
    ports: &Value,
) -> Vec<Error> {
    let del = Invocation {
        cfg,
        command: "DEL",
        netns,
        pod,
    };
    let mut errors = Vec::new();
    for plugin in plugins.iter().rev() {
        let kind = NetworkList::plugin_type(plugin);
        let conf = plugin_config(list, plugin, prev, ports);
        if let Err(e) = del.run(kind, &conf).await {
            tracing::warn!(pod = %pod.id, plugin = kind, error = %e, "CNI DEL failed");
            errors.push(e);
        }
    }
    errors
}

/// Detaches the pod's network namespace: DEL for every plugin, in reverse. The namespace
/// may already be gone; plugins then release what they hold outside it (addresses).
pub async fn teardown(cfg: &NetConfig, netns: &Path, pod: &PodRef) -> Result<()> {
    check_pod(pod)?;
    let cache = cache_path(netns);
    let cached: Option<Cached> = std::fs::read(&cache)
        .ok()
        .and_then(|d| serde_json::from_slice(&d).ok());
    // The configuration ADD used; without a record of it, the current one.
    let list = match &cached {
        Some(c) => NetworkList {
            file: PathBuf::from(&c.file),
            name: c.network.clone(),
            version: c.version.clone(),
            plugins: c.plugins.clone(),
        },
        None => match load(cfg) {
            Ok(list) => list,
            Err(e) => {
                // ADD never finished (it undoes itself) or its record is lost, and there
                // is no configuration to run DEL with: nothing can be released.
                tracing::warn!(pod = %pod.id, error = %e, "no CNI configuration for DEL; skipped");
                return Ok(());
            }
        },
    };
    let prev = cached.as_ref().map(|c| &c.result).filter(|r| !r.is_null());
    let ports = cached
        .as_ref()
        .map(|c| c.port_mappings.clone())
        .unwrap_or_else(|| Value::Array(Vec::new()));
    let errors = del_plugins(cfg, netns, pod, &list, &list.plugins, prev, &ports).await;
    if let Some(e) = errors.into_iter().next() {
        return Err(e.context(format!("pod {:?}: network {:?}", pod.id, list.name)));
    }
    remove_record(&cache);
    tracing::info!(pod = %pod.id, network = %list.name, "pod network detached");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn injects_name_version_prev_result_and_ports() {
        let list = parse_list(
            json!({"cniVersion": "1.0.0", "name": "n", "plugins": [
                {"type": "bridge"},
                {"type": "portmap", "capabilities": {"portMappings": true}}
            ]}),
            true,
        )
        .expect("valid list");
        let ports = port_mappings_json(&[k8s_cri::v1::PortMapping {
            protocol: k8s_cri::v1::Protocol::Udp as i32,
            container_port: 53,
            host_port: 5353,
            host_ip: String::new(),
        }]);
        let prev = json!({"ips": [{"address": "10.0.0.2/24"}]});
        let a = plugin_config(&list, &list.plugins[0], None, &ports);
        assert_eq!(a["name"], "n");
        assert_eq!(a["cniVersion"], "1.0.0");
        assert!(a.get("prevResult").is_none() && a.get("runtimeConfig").is_none());
        let b = plugin_config(&list, &list.plugins[1], Some(&prev), &ports);
        assert_eq!(b["prevResult"], prev);
        assert_eq!(b["runtimeConfig"]["portMappings"][0]["protocol"], "udp");
        assert_eq!(b["runtimeConfig"]["portMappings"][0]["hostPort"], 5353);
    }

    #[test]
    fn rejects_bad_lists_and_plugin_paths() {
        assert!(parse_list(json!({"name": "n"}), true).is_err());
        assert!(parse_list(json!({"name": "n", "plugins": []}), true).is_err());
        let bad = json!({"name": "n", "plugins": [{"type": "../x"}]});
        assert!(parse_list(bad, true).is_err());
        let single = parse_list(json!({"name": "n", "type": "bridge"}), false).expect("conf");
        assert_eq!(single.plugins.len(), 1);
    }

    #[test]
    fn first_ipv4_of_any_version() {
        let r = json!({"ips": [{"address": "fd00::2/64"}, {"address": "10.1.2.3/16"}]});
        assert_eq!(first_ipv4(&r).as_deref(), Some("10.1.2.3"));
        let old = json!({"ip4": {"ip": "10.9.9.9/8"}});
        assert_eq!(first_ipv4(&old).as_deref(), Some("10.9.9.9"));
        assert_eq!(first_ipv4(&json!({})), None);
    }

    /// A plugin that logs what it was given and answers ADD with an address.
    const FAKE_PLUGIN: &str = "#!/bin/sh\n\
        read -r conf\n\
        echo \"$CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME $CNI_ARGS $conf\" >> \"$(dirname \"$0\")/log\"\n\
        case \"$CNI_COMMAND\" in ADD) echo '{\"cniVersion\":\"1.0.0\",\"ips\":[{\"address\":\"10.3.4.5/24\"}]}';; esac\n";

    #[tokio::test]
    async fn add_then_del_with_a_fake_plugin() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("conf"));
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::create_dir_all(&conf).expect("conf dir");
        let plugin = bin.join("fake");
        std::fs::write(&plugin, FAKE_PLUGIN).expect("plugin");
        std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let list = json!({"cniVersion": "1.0.0", "name": "t", "plugins": [{"type": "fake"}]});
        std::fs::write(conf.join("1.conflist"), list.to_string()).expect("conflist");
        let cfg = NetConfig {
            conf_dirs: vec![conf.clone()],
            bin_dirs: vec![bin.clone()],
        };
        assert_eq!(ready(&cfg), Ok(()));
        let pod = PodRef {
            id: "p1".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u1".into(),
        };
        let netns = dir.path().join("netns");
        let ip = setup(&cfg, &netns, &pod, &[]).await.expect("ADD");
        assert_eq!(ip.as_deref(), Some("10.3.4.5"));
        // DEL runs with what ADD used, even after the configuration is gone.
        std::fs::remove_file(conf.join("1.conflist")).expect("rm conflist");
        assert!(ready(&cfg).is_err());
        teardown(&cfg, &netns, &pod).await.expect("DEL");
        assert!(!cache_path(&netns).exists());
        let log = std::fs::read_to_string(bin.join("log")).expect("plugin log");
        let lines: Vec<&str> = log.lines().collect();
        assert_eq!(lines.len(), 2, "{log}");
        assert!(lines[0].starts_with("ADD p1 eth0 IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web;K8S_POD_INFRA_CONTAINER_ID=p1;K8S_POD_UID=u1 "));
        assert!(lines[1].starts_with("DEL p1 eth0 "));
        assert!(lines[1].contains("\"prevResult\""), "{}", lines[1]);
        // Nothing recorded and no configuration: DEL has nothing to do.
        teardown(&cfg, &netns, &pod).await.expect("second DEL");
    }

    /// A plugin whose ADD never ends; it says when it has started.
    const HANGING_PLUGIN: &str = "#!/bin/sh\n\
        read -r conf\n\
        case \"$CNI_COMMAND\" in ADD) touch \"$(dirname \"$0\")/started\"; exec sleep 60;; esac\n";

    #[tokio::test]
    async fn del_after_an_interrupted_add_names_the_ports() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("temp dir");
        let (bin, conf) = (dir.path().join("bin"), dir.path().join("conf"));
        std::fs::create_dir_all(&bin).expect("bin dir");
        std::fs::create_dir_all(&conf).expect("conf dir");
        for (name, script) in [("fake", FAKE_PLUGIN), ("hang", HANGING_PLUGIN)] {
            let plugin = bin.join(name);
            std::fs::write(&plugin, script).expect("plugin");
            std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))
                .expect("chmod");
        }
        let list = json!({"cniVersion": "1.0.0", "name": "t", "plugins": [
            {"type": "fake", "capabilities": {"portMappings": true}},
            {"type": "hang"}
        ]});
        std::fs::write(conf.join("1.conflist"), list.to_string()).expect("conflist");
        let cfg = NetConfig {
            conf_dirs: vec![conf.clone()],
            bin_dirs: vec![bin.clone()],
        };
        let pod = PodRef {
            id: "p2".into(),
            name: "web".into(),
            namespace: "default".into(),
            uid: "u2".into(),
        };
        let ports = [k8s_cri::v1::PortMapping {
            protocol: k8s_cri::v1::Protocol::Tcp as i32,
            container_port: 80,
            host_port: 8081,
            host_ip: String::new(),
        }];
        let netns = dir.path().join("netns");
        let started = bin.join("started");
        // The ADD is dropped halfway, as when supd dies or the RPC is cancelled: the first
        // plugin has added its state, the second never answers.
        tokio::select! {
            r = setup(&cfg, &netns, &pod, &ports) => panic!("ADD finished: {r:?}"),
            () = async {
                while !started.exists() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            } => {}
        }
        teardown(&cfg, &netns, &pod).await.expect("DEL");
        let log = std::fs::read_to_string(bin.join("log")).expect("plugin log");
        let del = log
            .lines()
            .find(|l| l.starts_with("DEL p2 "))
            .unwrap_or_else(|| panic!("no DEL: {log}"));
        assert!(del.contains("\"hostPort\":8081"), "{del}");
        assert!(!cache_path(&netns).exists());
    }

    #[test]
    fn pod_fields_cannot_break_cni_args() {
        let pod = PodRef {
            id: "abc".into(),
            name: "x;K8S_POD_NAME=y".into(),
            namespace: "default".into(),
            uid: String::new(),
        };
        assert!(check_pod(&pod).is_err());
    }
}
