//! Parsers for argument values shared by command groups: labels, platforms, environment
//! entries, signals, sizes, mounts and points in time.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use nix::sys::signal::Signal;
use sup_client::api::{MountSpec, Platform};

/// `KEY=VALUE`, or `KEY` alone for an empty value.
pub fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').unwrap_or((text, ""));
    if key.is_empty() {
        return Err(format!("label {text:?}: the key is empty (use KEY=VALUE)"));
    }
    if key.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "label {text:?}: the key holds white space or control characters"
        ));
    }
    Ok((key.to_string(), value.to_string()))
}

/// Labels as the API takes them; a key given twice keeps its last value, as a later flag
/// overrides an earlier one.
pub fn label_map(labels: &[(String, String)]) -> HashMap<String, String> {
    labels.iter().cloned().collect()
}

/// `OS/ARCH[/VARIANT]`, e.g. `linux/arm64/v8`, lower-cased, with the architecture names
/// `uname -m` prints mapped to the Go spelling images use.
pub fn parse_platform(text: &str) -> Result<Platform, String> {
    let lower = text.trim().to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('/').collect();
    let bad = || format!("platform {text:?}: expected OS/ARCH[/VARIANT], e.g. linux/amd64");
    if !(2..=3).contains(&parts.len()) {
        return Err(bad());
    }
    let valid = |part: &str| {
        !part.is_empty()
            && part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    };
    if !parts.iter().all(|part| valid(part)) {
        return Err(bad());
    }
    let (architecture, implied_variant) = match parts[1] {
        "x86_64" | "x86-64" => ("amd64", ""),
        "aarch64" => ("arm64", ""),
        "i386" | "i686" => ("386", ""),
        "armhf" => ("arm", "v7"),
        "armel" => ("arm", "v6"),
        other => (other, ""),
    };
    let variant = parts.get(2).copied().unwrap_or(implied_variant);
    Ok(Platform {
        os: parts[0].to_string(),
        architecture: architecture.to_string(),
        variant: variant.to_string(),
        os_version: String::new(),
    })
}

/// `os/arch[/variant]`, the form `parse_platform` reads.
pub fn platform_string(platform: &Platform) -> String {
    let mut text = format!("{}/{}", platform.os, platform.architecture);
    if !platform.variant.is_empty() {
        text.push('/');
        text.push_str(&platform.variant);
    }
    if !platform.os_version.is_empty() {
        text.push_str(&format!(" ({})", platform.os_version));
    }
    text
}

/// `KEY=VALUE` for a process's environment, or `KEY` alone to pass on the value supctl has
/// (see [`env_list`]).
pub fn parse_env(text: &str) -> Result<String, String> {
    let key = text.split_once('=').map_or(text, |(key, _)| key);
    if key.is_empty() {
        return Err(format!("env {text:?}: the name is empty (use KEY=VALUE)"));
    }
    if text.contains('\0') {
        return Err(format!("env {text:?}: holds a NUL byte"));
    }
    Ok(text.to_string())
}

/// The environment entries to send: `KEY` alone takes its value from supctl's own
/// environment, as `docker run -e KEY` does, and is left out when unset there too.
pub fn env_list(entries: &[String]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|entry| {
            if entry.contains('=') {
                return Some(entry.clone());
            }
            let value = std::env::var(entry).ok()?;
            Some(format!("{entry}={value}"))
        })
        .collect()
}

/// Highest signal number Linux has (the last real-time signal).
const MAX_SIGNAL: u32 = 64;

/// A signal by name (`TERM`, `SIGTERM`, `kill`) or number (`9`), as `kill -s` takes it.
pub fn parse_signal(text: &str) -> Result<u32, String> {
    let trimmed = text.trim();
    if let Ok(number) = trimmed.parse::<u32>() {
        if (1..=MAX_SIGNAL).contains(&number) {
            return Ok(number);
        }
        return Err(format!(
            "signal {text:?}: numbers go from 1 to {MAX_SIGNAL}"
        ));
    }
    let upper = trimmed.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name)
        .map(|signal| signal as u32)
        .map_err(|_| format!("signal {text:?}: unknown (try TERM, KILL, INT, HUP or a number)"))
}

/// A byte count: a plain number, or one with a binary unit as docker takes them: `512k`,
/// `64m`, `1.5g`, `2GiB`, `100MB` (k, m, g, t are powers of 1024).
pub fn parse_size(text: &str) -> Result<i64, String> {
    let bad = || format!("size {text:?}: expected bytes or a number with k, m, g or t (e.g. 64m)");
    let lower = text.trim().to_ascii_lowercase();
    let split = lower
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(lower.len());
    let (number, unit) = lower.split_at(split);
    let shift = match unit.trim_start() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(bad()),
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    let bytes = (value * (1u64 << shift) as f64).round();
    if !bytes.is_finite() || bytes < 1.0 {
        return Err(format!("size {text:?}: must be at least one byte"));
    }
    if bytes >= i64::MAX as f64 {
        return Err(format!("size {text:?}: too large"));
    }
    Ok(bytes as i64)
}

/// A CPU quota as a fraction of CPUs: `0.5`, `2`.
pub fn parse_cpus(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(cpus) if cpus.is_finite() && cpus > 0.0 && cpus <= 1_000_000.0 => Ok(cpus),
        _ => Err(format!(
            "cpus {text:?}: expected a positive number, e.g. 1.5"
        )),
    }
}

/// A positive count (a pids limit).
pub fn parse_positive(text: &str) -> Result<i64, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(format!("{text:?}: expected a positive whole number")),
    }
}

/// `SRC:DST[:OPTIONS]`, a bind mount. OPTIONS is a comma-separated list where `ro` makes it
/// read-only, `rw` is the default and anything else (`nosuid`, `rshared`) is passed on. A
/// relative SRC is taken from supctl's working directory, since the daemon has its own.
pub fn parse_mount(text: &str) -> Result<MountSpec, String> {
    let parts: Vec<&str> = text.split(':').collect();
    let bad = |why: &str| format!("mount {text:?}: {why} (use SRC:DST[:ro])");
    let (source, destination, options) = match parts.as_slice() {
        [src, dst] => (*src, *dst, ""),
        [src, dst, opts] => (*src, *dst, *opts),
        _ => return Err(bad("expected two or three fields separated by ':'")),
    };
    if source.is_empty() {
        return Err(bad("the source is empty"));
    }
    if !destination.starts_with('/') {
        return Err(bad("the destination must be an absolute path"));
    }
    let mut mount = MountSpec {
        source: absolute(source)?,
        destination: destination.to_string(),
        r#type: "bind".to_string(),
        ..Default::default()
    };
    for option in options.split(',').filter(|o| !o.is_empty()) {
        match option {
            "ro" | "readonly" => mount.readonly = true,
            "rw" => mount.readonly = false,
            other
                if other
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-=.".contains(c)) =>
            {
                mount.options.push(other.to_string());
            }
            other => return Err(bad(&format!("bad option {other:?}"))),
        }
    }
    Ok(mount)
}

fn absolute(path: &str) -> Result<String, String> {
    if Path::new(path).is_absolute() {
        return Ok(path.to_string());
    }
    let cwd = std::env::current_dir()
        .map_err(|err| format!("mount source {path:?}: the working directory: {err}"))?;
    let joined = cwd.join(path);
    joined
        .to_str()
        .map(str::to_string)
        .ok_or_else(|| format!("mount source {path:?}: not valid UTF-8"))
}

/// A point in time: RFC 3339 (`2024-05-01T12:00:00Z`), or a duration before now (`90s`,
/// `10m`, `1h30m`, `2d`).
pub fn parse_since(text: &str) -> Result<DateTime<Utc>, String> {
    since_at(text, Utc::now())
}

fn since_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    let millis = parse_duration_ms(text).ok_or_else(|| {
        format!("{text:?}: expected an RFC 3339 time or a duration such as 10m or 1h30m")
    })?;
    chrono::Duration::try_milliseconds(millis)
        .and_then(|ago| now.checked_sub_signed(ago))
        .ok_or_else(|| format!("{text:?}: too far back"))
}

/// `1h30m`, `90s`, `500ms`, `2d` in milliseconds.
fn parse_duration_ms(text: &str) -> Option<i64> {
    let mut rest = text;
    let mut total: i64 = 0;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let value: i64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let scale: i64 = match &rest[..unit_len] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total = total.checked_add(value.checked_mul(scale)?)?;
    }
    Some(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(parse_label("a=b"), Ok(("a".into(), "b".into())));
        assert_eq!(parse_label("a=b=c"), Ok(("a".into(), "b=c".into())));
        assert_eq!(parse_label("a="), Ok(("a".into(), "".into())));
        assert_eq!(parse_label("flag"), Ok(("flag".into(), "".into())));
        assert!(parse_label("=v").is_err());
        assert!(parse_label("").is_err());
        assert!(parse_label("a b=c").is_err());
    }

    #[test]
    fn later_label_wins() {
        let map = label_map(&[("k".into(), "1".into()), ("k".into(), "2".into())]);
        assert_eq!(map.get("k").map(String::as_str), Some("2"));
    }

    #[test]
    fn platforms() {
        let p = parse_platform("linux/amd64").expect("valid");
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "amd64"));
        assert_eq!(p.variant, "");
        let p = parse_platform("Linux/ARM64/v8").expect("valid");
        assert_eq!(platform_string(&p), "linux/arm64/v8");
        let p = parse_platform("linux/x86_64").expect("valid");
        assert_eq!(p.architecture, "amd64");
        let p = parse_platform("linux/armhf").expect("valid");
        assert_eq!(platform_string(&p), "linux/arm/v7");
        for bad in [
            "",
            "linux",
            "linux/",
            "/amd64",
            "linux/amd64/v8/x",
            "linux/am d64",
        ] {
            assert!(parse_platform(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn env_entries() {
        assert_eq!(parse_env("A=1"), Ok("A=1".into()));
        assert_eq!(parse_env("A="), Ok("A=".into()));
        assert_eq!(parse_env("A"), Ok("A".into()));
        assert!(parse_env("=1").is_err());
        assert!(parse_env("").is_err());
        assert!(parse_env("A=\0").is_err());
        let path = std::env::var("PATH").expect("PATH is set in tests");
        let entries = [
            "A=b=c".to_string(),
            "SUPCTL_TEST_SURELY_UNSET_VAR".to_string(),
            "PATH".to_string(),
        ];
        assert_eq!(
            env_list(&entries),
            vec!["A=b=c".to_string(), format!("PATH={path}")]
        );
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(15));
        assert_eq!(parse_signal("SIGTERM"), Ok(15));
        assert_eq!(parse_signal("kill"), Ok(9));
        assert_eq!(parse_signal("sigint"), Ok(2));
        assert_eq!(parse_signal("HUP"), Ok(1));
        assert_eq!(parse_signal("9"), Ok(9));
        assert_eq!(parse_signal("64"), Ok(64));
        for bad in ["0", "65", "-1", "", "SIG", "TERMINATE", "SIGFOO"] {
            assert!(parse_signal(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("512k"), Ok(512 * 1024));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("64MiB"), Ok(64 << 20));
        assert_eq!(parse_size("64mb"), Ok(64 << 20));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("1.5g"), Ok(3 << 29));
        assert_eq!(parse_size("2t"), Ok(2 << 40));
        assert_eq!(parse_size("10b"), Ok(10));
        for bad in [
            "",
            "0",
            "m",
            "-1m",
            "1x",
            "1.2.3m",
            "64 mm",
            "0.1b",
            "99999999t",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn cpus_and_counts() {
        assert_eq!(parse_cpus("1.5"), Ok(1.5));
        assert_eq!(parse_cpus("2"), Ok(2.0));
        for bad in ["0", "-1", "NaN", "inf", "x", ""] {
            assert!(parse_cpus(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(parse_positive("100"), Ok(100));
        for bad in ["0", "-1", "1.5", ""] {
            assert!(parse_positive(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mounts() {
        let m = parse_mount("/data:/mnt").expect("valid");
        assert_eq!(
            (m.source.as_str(), m.destination.as_str()),
            ("/data", "/mnt")
        );
        assert_eq!(m.r#type, "bind");
        assert!(!m.readonly && m.options.is_empty());
        let m = parse_mount("/data:/mnt:ro").expect("valid");
        assert!(m.readonly);
        let m = parse_mount("/data:/mnt:rw,nosuid").expect("valid");
        assert!(!m.readonly);
        assert_eq!(m.options, vec!["nosuid".to_string()]);
        let m = parse_mount("rel/dir:/mnt").expect("valid");
        assert!(m.source.starts_with('/') && m.source.ends_with("/rel/dir"));
        for bad in ["/data", "/a:rel", ":/mnt", "/a:/b:ro:x", "/a:/b:r o", ""] {
            assert!(parse_mount(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn since() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
        let at = |text: &str| since_at(text, now).map(|t| t.timestamp());
        assert_eq!(at("10m"), Ok(1_700_000_000 - 600));
        assert_eq!(at("1h30m"), Ok(1_700_000_000 - 5400));
        assert_eq!(at("2d"), Ok(1_700_000_000 - 172_800));
        assert_eq!(at("1500ms"), Ok(1_699_999_998));
        assert_eq!(at("2020-09-13T12:26:40Z"), Ok(1_600_000_000));
        assert_eq!(at("2020-09-13T14:26:40+02:00"), Ok(1_600_000_000));
        for bad in ["", "10", "m", "10x", "1h-5m", "yesterday"] {
            assert!(at(bad).is_err(), "{bad:?} accepted");
        }
    }
}
