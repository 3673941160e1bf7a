//! Parsers for argument values shared by command groups: labels and platforms.

use std::collections::HashMap;

use sup_client::api::Platform;

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
}
