//! Seccomp for CRI containers: the profile a security context names (RuntimeDefault,
//! Unconfined, or a Localhost file in the OCI format or Docker's), as a typed filter.

use std::path::Path;

use k8s_cri::v1 as cri;
use oci_spec::runtime::LinuxSeccomp;
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Largest seccomp profile file read.
const MAX_PROFILE: u64 = 1 << 20;

/// The filter a container gets; unconfined containers get none.
#[derive(Debug, Clone, PartialEq)]
pub enum Filter {
    /// sup's default profile for the capabilities the container holds (see `spec::seccomp`).
    RuntimeDefault,
    /// A profile read from the node's files.
    Profile(LinuxSeccomp),
}

/// The filter for a security profile, or for the deprecated profile path older kubelets
/// send (`legacy`); None for unconfined.
pub fn filter(profile: Option<&cri::SecurityProfile>, legacy: &str) -> Result<Option<Filter>> {
    use cri::security_profile::ProfileType;
    let path = match profile {
        Some(p) => match ProfileType::try_from(p.profile_type) {
            Ok(ProfileType::RuntimeDefault) => return Ok(Some(Filter::RuntimeDefault)),
            Ok(ProfileType::Unconfined) => return Ok(None),
            Ok(ProfileType::Localhost) => p.localhost_ref.clone(),
            Err(_) => {
                return Err(Error::invalid(format!(
                    "seccomp profile type {}: unknown",
                    p.profile_type
                )))
            }
        },
        None => match legacy {
            "" | "unconfined" => return Ok(None),
            "runtime/default" | "docker/default" => return Ok(Some(Filter::RuntimeDefault)),
            l => match l.strip_prefix("localhost/") {
                Some(p) => p.to_string(),
                None => {
                    return Err(Error::invalid(format!(
                        "seccomp profile {:?}: unknown",
                        crate::error::printable(l)
                    )))
                }
            },
        },
    };
    load_profile(Path::new(&path)).map(|f| Some(Filter::Profile(f)))
}

impl Filter {
    /// The filter for a process holding `capabilities` (names such as "CAP_SYS_ADMIN").
    pub fn resolve(&self, capabilities: &[String]) -> Result<LinuxSeccomp> {
        match self {
            Filter::RuntimeDefault => {
                serde_json::from_value(crate::spec::seccomp::runtime_default(capabilities))
                    .map_err(|e| Error::internal(format!("the default seccomp profile: {e}")))
            }
            Filter::Profile(f) => Ok(f.clone()),
        }
    }
}

/// Reads a profile: the OCI `linux.seccomp` object, or Docker's format, whose `archMap`
/// becomes `architectures` and whose per-rule filters (includes, excludes, comments) go.
fn load_profile(path: &Path) -> Result<LinuxSeccomp> {
    use std::io::Read;
    let what = format!("seccomp profile {}", path.display());
    if !path.is_absolute() {
        return Err(Error::invalid(format!("{what}: want an absolute path")));
    }
    let mut text = Vec::new();
    std::fs::File::open(path)
        .map_err(|e| Error::io(&what, e))?
        .take(MAX_PROFILE + 1)
        .read_to_end(&mut text)
        .map_err(|e| Error::io(&what, e))?;
    if text.len() as u64 > MAX_PROFILE {
        return Err(Error::invalid(format!("{what}: larger than 1 MiB")));
    }
    let v: Value = serde_json::from_slice(&text)
        .map_err(|e| Error::invalid(format!("{what}: not JSON: {e}")))?;
    let Some(obj) = v.as_object() else {
        return Err(Error::invalid(format!("{what}: not a JSON object")));
    };
    if !obj.get("defaultAction").is_some_and(Value::is_string) {
        return Err(Error::invalid(format!("{what}: no defaultAction")));
    }
    let mut out = Map::new();
    for key in [
        "defaultAction",
        "defaultErrnoRet",
        "architectures",
        "flags",
        "listenerPath",
        "listenerMetadata",
        "syscalls",
    ] {
        if let Some(val) = obj.get(key) {
            out.insert(key.into(), val.clone());
        }
    }
    if !out.contains_key("architectures") {
        if let Some(map) = obj.get("archMap").and_then(Value::as_array) {
            let mut arches = Vec::new();
            for entry in map {
                if let Some(a) = entry.get("architecture") {
                    arches.push(a.clone());
                }
                if let Some(subs) = entry.get("subArchitectures").and_then(Value::as_array) {
                    arches.extend(subs.iter().cloned());
                }
            }
            out.insert("architectures".into(), Value::Array(arches));
        }
    }
    if let Some(rules) = out.get_mut("syscalls").and_then(Value::as_array_mut) {
        for r in rules.iter_mut() {
            if let Some(o) = r.as_object_mut() {
                o.retain(|k, _| matches!(k.as_str(), "names" | "action" | "errnoRet" | "args"));
            }
        }
    }
    serde_json::from_value(Value::Object(out)).map_err(|e| {
        Error::invalid(format!(
            "{what}: not a seccomp profile the runtime takes: {}",
            crate::error::printable(&e.to_string())
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_spec::runtime::{Arch, LinuxSeccompAction};

    #[test]
    fn profiles() {
        use cri::security_profile::ProfileType;
        let p = |t: ProfileType, r: &str| cri::SecurityProfile {
            profile_type: t as i32,
            localhost_ref: r.into(),
        };
        let default = filter(Some(&p(ProfileType::RuntimeDefault, "")), "")
            .unwrap()
            .unwrap();
        assert_eq!(default, Filter::RuntimeDefault);
        let resolved = default.resolve(&[]).unwrap();
        assert_eq!(resolved.default_action(), LinuxSeccompAction::ScmpActAllow);
        assert!(filter(None, "unconfined").unwrap().is_none());
        assert_eq!(
            filter(None, "runtime/default").unwrap(),
            Some(Filter::RuntimeDefault)
        );
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.json");
        std::fs::write(
            &f,
            r#"{"defaultAction":"SCMP_ACT_ERRNO","archMap":[{"architecture":"SCMP_ARCH_X86_64","subArchitectures":["SCMP_ARCH_X86"]}],
               "syscalls":[{"names":["read"],"action":"SCMP_ACT_ALLOW","comment":"x"}]}"#,
        )
        .unwrap();
        let Some(Filter::Profile(v)) =
            filter(Some(&p(ProfileType::Localhost, f.to_str().unwrap())), "").unwrap()
        else {
            panic!("no profile");
        };
        assert_eq!(v.default_action(), LinuxSeccompAction::ScmpActErrno);
        assert_eq!(
            v.architectures().as_deref(),
            Some(&[Arch::ScmpArchX86_64, Arch::ScmpArchX86][..])
        );
        let rules = v.syscalls().clone().unwrap();
        assert_eq!(rules[0].names(), &vec!["read".to_string()]);
        assert_eq!(rules[0].action(), LinuxSeccompAction::ScmpActAllow);
        assert!(filter(Some(&p(ProfileType::Localhost, "rel.json")), "").is_err());
        std::fs::write(&f, r#"{"defaultAction":"SCMP_ACT_NOSUCH"}"#).unwrap();
        let e = filter(Some(&p(ProfileType::Localhost, f.to_str().unwrap())), "").unwrap_err();
        assert!(matches!(e, Error::InvalidArgument(_)), "{e}");
    }
}
