//! What Kubernetes' streaming protocols say, apart from their framing: the versions a client
//! and the server agree on, the status a session ends with, and the resize messages.

use serde::Deserialize;

/// Exec and attach over SPDY (`X-Stream-Protocol-Version`), newest first.
pub const SPDY_EXEC: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// Port forwarding over SPDY.
pub const SPDY_PORTFORWARD: &[&str] = &["portforward.k8s.io"];
/// Exec and attach over WebSocket (`Sec-WebSocket-Protocol`).
pub const WS_EXEC: &[&str] = &[
    "v5.channel.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "channel.k8s.io",
    "base64.channel.k8s.io",
];
/// Port forwarding over WebSocket: SPDY carried in binary messages (the newer kubectl's
/// tunnel), or a data and an error channel per port.
pub const WS_PORTFORWARD: &[&str] = &[
    "SPDY/3.1+portforward.k8s.io",
    "v4.channel.k8s.io",
    "v4.base64.channel.k8s.io",
    "portforward.k8s.io",
];

pub const HEADER_VERSION: &str = "X-Stream-Protocol-Version";
pub const HEADER_ACCEPTED: &str = "X-Accepted-Stream-Protocol-Versions";

/// The protocol both sides speak: the first of the client's, in its order of preference,
/// that the server knows. `Ok(None)` when the client named none (the oldest protocol, as
/// the kubelet assumes); an error when it named only unknown ones.
pub fn negotiate<'a>(
    offered: &[String],
    known: &[&'a str],
) -> Result<Option<&'a str>, NoCommonProtocol> {
    let offered: Vec<&str> = offered
        .iter()
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect();
    if offered.is_empty() {
        return Ok(None);
    }
    offered
        .iter()
        .find_map(|o| known.iter().find(|k| k == &o).copied())
        .map(Some)
        .ok_or(NoCommonProtocol)
}

/// The client offered protocols, none of them known here.
#[derive(Debug, PartialEq, Eq)]
pub struct NoCommonProtocol;

/// Protocol generations, by what they change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Version {
    /// `channel.k8s.io` (and none): error text, no resize.
    V1,
    /// `v2.channel.k8s.io`: error text; streams made as options ask.
    V2,
    /// `v3.channel.k8s.io`: adds the resize stream.
    V3,
    /// `v4.channel.k8s.io`: the error stream carries a JSON Status with the exit code.
    V4,
    /// `v5.channel.k8s.io`: adds closing a single stream (WebSocket).
    V5,
}

impl Version {
    pub fn of(protocol: Option<&str>) -> Version {
        match protocol.unwrap_or("") {
            p if p.starts_with("v5.") => Version::V5,
            p if p.starts_with("v4.") => Version::V4,
            p if p.starts_with("v3.") => Version::V3,
            p if p.starts_with("v2.") => Version::V2,
            _ => Version::V1,
        }
    }

    pub fn has_resize(self) -> bool {
        self >= Version::V3
    }
}

/// How a session ended, for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The process exited with this code (not 0).
    Exited(i32),
    /// It could not be run or followed.
    Failed(String),
}

impl Outcome {
    /// What goes on the error stream for this protocol version; empty for nothing.
    pub fn encode(&self, version: Version, command: &[String]) -> Vec<u8> {
        if version < Version::V4 {
            return match self {
                Outcome::Success => Vec::new(),
                Outcome::Exited(code) => exit_message(command, *code).into_bytes(),
                Outcome::Failed(msg) => msg.clone().into_bytes(),
            };
        }
        let status = match self {
            Outcome::Success => serde_json::json!({
                "metadata": {}, "status": "Success",
            }),
            Outcome::Exited(code) => serde_json::json!({
                "metadata": {}, "status": "Failure",
                "message": exit_message(command, *code),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
            }),
            Outcome::Failed(msg) => serde_json::json!({
                "metadata": {}, "status": "Failure",
                "message": format!("Internal error occurred: {msg}"),
                "reason": "InternalError",
                "details": {"causes": [{"message": msg}]},
                "code": 500,
            }),
        };
        status.to_string().into_bytes()
    }
}

fn exit_message(command: &[String], code: i32) -> String {
    format!(
        "command terminated with non-zero exit code: error executing command {:?}, exit code {code}",
        command
    )
}

/// A terminal size, as clients send it on the resize stream (Go field names; Go's decoder
/// matches them in any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Size {
    #[serde(alias = "width", alias = "WIDTH")]
    #[serde(rename = "Width")]
    pub width: u16,
    #[serde(alias = "height", alias = "HEIGHT")]
    #[serde(rename = "Height")]
    pub height: u16,
}

/// Reads the JSON objects a resize stream carries back to back, whatever the chunks.
#[derive(Default)]
pub struct SizeReader {
    pending: Vec<u8>,
}

/// A resize stream that sends more than this without completing a message is broken.
const MAX_RESIZE_MESSAGE: usize = 4096;

impl SizeReader {
    /// The sizes completed by `data`; Err when the stream is not JSON sizes.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<Size>, String> {
        self.pending.extend_from_slice(data);
        let mut sizes = Vec::new();
        let mut used = 0;
        {
            let mut it = serde_json::Deserializer::from_slice(&self.pending).into_iter::<Size>();
            loop {
                match it.next() {
                    Some(Ok(s)) => {
                        sizes.push(s);
                        used = it.byte_offset();
                    }
                    Some(Err(e)) if e.is_eof() => break,
                    Some(Err(e)) => return Err(format!("resize message: {e}")),
                    None => {
                        used = self.pending.len();
                        break;
                    }
                }
            }
        }
        self.pending.drain(..used);
        if self.pending.len() > MAX_RESIZE_MESSAGE {
            return Err("resize message: too long".into());
        }
        Ok(sizes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn the_clients_first_known_protocol_wins() {
        assert_eq!(
            negotiate(&s(&["v4.channel.k8s.io", "v3.channel.k8s.io"]), SPDY_EXEC),
            Ok(Some("v4.channel.k8s.io"))
        );
        assert_eq!(
            negotiate(&s(&["v9.channel.k8s.io", "channel.k8s.io"]), SPDY_EXEC),
            Ok(Some("channel.k8s.io"))
        );
        assert_eq!(
            negotiate(&s(&["v2.channel.k8s.io, v5.channel.k8s.io"]), SPDY_EXEC),
            Ok(Some("v2.channel.k8s.io"))
        );
        assert_eq!(negotiate(&[], SPDY_EXEC), Ok(None));
        assert_eq!(negotiate(&s(&["nope"]), SPDY_EXEC), Err(NoCommonProtocol));
        assert_eq!(Version::of(Some("v4.base64.channel.k8s.io")), Version::V4);
        assert_eq!(Version::of(None), Version::V1);
        assert!(!Version::V2.has_resize() && Version::V3.has_resize());
    }

    #[test]
    fn status_carries_the_exit_code_from_v4_on() {
        let cmd = s(&["sh", "-c", "exit 3"]);
        let v: serde_json::Value =
            serde_json::from_slice(&Outcome::Exited(3).encode(Version::V4, &cmd)).unwrap();
        assert_eq!(v["status"], "Failure");
        assert_eq!(v["reason"], "NonZeroExitCode");
        assert_eq!(v["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(v["details"]["causes"][0]["message"], "3");
        let v: serde_json::Value =
            serde_json::from_slice(&Outcome::Success.encode(Version::V5, &cmd)).unwrap();
        assert_eq!(v["status"], "Success");
        assert!(Outcome::Success.encode(Version::V2, &cmd).is_empty());
        let text = String::from_utf8(Outcome::Exited(3).encode(Version::V1, &cmd)).unwrap();
        assert!(text.contains("exit code 3"), "{text}");
    }

    #[test]
    fn sizes_are_read_across_chunks() {
        let mut r = SizeReader::default();
        assert_eq!(r.push(b"{\"Width\":80,").unwrap(), vec![]);
        assert_eq!(
            r.push(b"\"Height\":24}\n{\"width\":100,\"height\":40}{\"Wid")
                .unwrap(),
            vec![
                Size {
                    width: 80,
                    height: 24
                },
                Size {
                    width: 100,
                    height: 40
                }
            ]
        );
        assert_eq!(
            r.push(b"th\":1,\"Height\":2}").unwrap(),
            vec![Size {
                width: 1,
                height: 2
            }]
        );
        assert!(r.push(b"]").is_err());
        assert!(SizeReader::default().push(&[b' '; 5000]).is_ok());
    }
}
