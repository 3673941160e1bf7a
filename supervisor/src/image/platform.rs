//! Platforms: the host's, `os/arch[/variant]` strings, and choosing an image index entry.
//!
//! Values are spelled as the OCI image index spec asks, with Go's `GOOS`/`GOARCH` names
//! (`amd64`, `arm64`, `386`), so the kernel's and Rust's names (`x86_64`, `aarch64`) are
//! accepted on input and translated.

use crate::error::{Error, Result};
use crate::store::{Descriptor, Platform};

/// Annotation that BuildKit puts on index entries which are not images but attestations
/// (provenance, SBOM) about another entry.
const REFERENCE_TYPE_ANNOTATION: &str = "vnd.docker.reference.type";
const ATTESTATION_MANIFEST: &str = "attestation-manifest";
/// What attestation entries carry as their platform, so that old clients skip them.
const UNKNOWN: &str = "unknown";

/// Longest platform string accepted; real ones are a few dozen bytes.
const PLATFORM_MAX: usize = 256;

/// Go's `GOOS` and `GOARCH` values, which the OCI spec uses. `parse` reads what people type,
/// where a name outside these lists is a typo that would otherwise match nothing, silently.
#[rustfmt::skip]
const KNOWN_OS: &[&str] = &[
    "aix", "android", "darwin", "dragonfly", "freebsd", "hurd", "illumos", "ios", "js", "linux",
    "nacl", "netbsd", "openbsd", "plan9", "solaris", "wasip1", "windows", "zos",
];

#[rustfmt::skip]
const KNOWN_ARCH: &[&str] = &[
    "386", "amd64", "amd64p32", "arm", "armbe", "arm64", "arm64be", "loong64", "mips", "mipsle",
    "mips64", "mips64le", "mips64p32", "mips64p32le", "ppc", "ppc64", "ppc64le", "riscv",
    "riscv64", "s390", "s390x", "sparc", "sparc64", "wasm",
];

/// Rank given to a variant that only matches because the caller asked for any variant.
/// It sorts after every variant the host can be sure to run.
const ANY_VARIANT_RANK: u32 = 1000;

/// The platform supd runs on, as images declare it.
pub fn host() -> Platform {
    let (architecture, variant) = goarch(std::env::consts::ARCH, cfg!(target_endian = "little"));
    Platform {
        os: "linux".to_string(),
        architecture: architecture.to_string(),
        variant: variant.to_string(),
        os_version: String::new(),
    }
}

/// Go's name (and the default variant) for a Rust `target_arch`.
fn goarch(rust_arch: &str, little_endian: bool) -> (&str, &'static str) {
    match (rust_arch, little_endian) {
        ("x86_64", _) => ("amd64", ""),
        ("x86", _) => ("386", ""),
        ("aarch64", true) => ("arm64", "v8"),
        ("aarch64", false) => ("arm64be", ""),
        // Which 32-bit Arm revision this is would need /proc/cpuinfo; v7 (armhf) is what
        // Rust's usual 32-bit Linux targets and almost all published images assume.
        ("arm", _) => ("arm", "v7"),
        ("powerpc64", true) => ("ppc64le", ""),
        ("powerpc64", false) => ("ppc64", ""),
        ("powerpc", _) => ("ppc", ""),
        ("mips", true) => ("mipsle", ""),
        ("mips", false) => ("mips", ""),
        ("mips64", true) => ("mips64le", ""),
        ("mips64", false) => ("mips64", ""),
        ("loongarch64", _) => ("loong64", ""),
        (other, _) => (other, ""),
    }
}

/// Parses `os/arch[/variant]` (`linux/arm64/v8`, `linux/amd64`). One component is an
/// architecture on Linux (`amd64`) or an OS on the host's architecture (`linux`). The OS
/// may carry a version in parentheses, as in `windows(10.0.17763)/amd64`.
pub fn parse(s: &str) -> Result<Platform> {
    if s.len() > PLATFORM_MAX {
        return Err(Error::invalid(format!(
            "platform of {} bytes: longer than any valid platform",
            s.len()
        )));
    }
    let bad = |why: String| Error::invalid(format!("platform {s:?}: {why}"));
    if s.is_empty() {
        return Err(bad("must not be empty".into()));
    }
    let parts: Vec<&str> = s.split('/').collect();
    if parts.len() > 3 {
        return Err(bad("must be os/arch or os/arch/variant".into()));
    }

    let (os_part, os_version) = split_os_version(parts[0]).map_err(bad)?;
    for part in std::iter::once(os_part).chain(parts[1..].iter().copied()) {
        if part.is_empty() {
            return Err(bad(
                "must be os/arch or os/arch/variant, without empty parts".into(),
            ));
        }
        if !part.bytes().all(is_name_byte) {
            return Err(bad(format!(
                "{part:?} must be letters, digits, '_', '.' or '-'"
            )));
        }
    }

    let (os, arch, variant) = match parts.as_slice() {
        [one] => {
            let os = normalize_os(os_part);
            if os_version.is_none() && is_known_arch(one) {
                ("linux".to_string(), *one, "")
            } else if KNOWN_OS.contains(&os.as_str()) {
                let host = host();
                return Ok(Platform {
                    os,
                    architecture: host.architecture,
                    variant: host.variant,
                    os_version: os_version.unwrap_or_default().to_string(),
                });
            } else {
                return Err(bad(
                    "is neither a known operating system nor a known architecture".into(),
                ));
            }
        }
        [_, arch] => (normalize_os(os_part), *arch, ""),
        [_, arch, variant] => (normalize_os(os_part), *arch, *variant),
        _ => return Err(bad("must be os/arch or os/arch/variant".into())),
    };
    if !KNOWN_OS.contains(&os.as_str()) {
        return Err(bad(format!("unknown operating system {os:?}")));
    }
    let (architecture, variant) = normalize_arch(arch, variant);
    if !KNOWN_ARCH.contains(&architecture.as_str()) {
        return Err(bad(format!("unknown architecture {arch:?}")));
    }
    Ok(Platform {
        os,
        architecture,
        variant,
        os_version: os_version.unwrap_or_default().to_string(),
    })
}

fn split_os_version(part: &str) -> std::result::Result<(&str, Option<&str>), String> {
    let Some((os, rest)) = part.split_once('(') else {
        return Ok((part, None));
    };
    match rest.strip_suffix(')') {
        Some(version) if !version.is_empty() && version.bytes().all(is_name_byte) => {
            Ok((os, Some(version)))
        }
        _ => Err(format!(
            "OS version in {part:?} must be letters, digits, '_', '.' or '-' inside '(' ')'"
        )),
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-')
}

fn is_known_arch(arch: &str) -> bool {
    KNOWN_ARCH.contains(&normalize_arch(arch, "").0.as_str())
}

/// `os[(version)]/arch[/variant]`, the form [`parse`] reads.
pub fn format(p: &Platform) -> String {
    let mut out = p.os.clone();
    if !p.os_version.is_empty() {
        out.push('(');
        out.push_str(&p.os_version);
        out.push(')');
    }
    out.push('/');
    out.push_str(&p.architecture);
    if !p.variant.is_empty() {
        out.push('/');
        out.push_str(&p.variant);
    }
    out
}

/// `p` with OS, architecture and variant in their canonical spelling (`aarch64` -> `arm64`,
/// `armhf` -> `arm`/`v7`, variant `8` -> `v8`).
pub fn normalize(p: &Platform) -> Platform {
    let (architecture, variant) = normalize_arch(&p.architecture, &p.variant);
    Platform {
        os: normalize_os(&p.os),
        architecture,
        variant,
        os_version: p.os_version.clone(),
    }
}

fn normalize_os(os: &str) -> String {
    let os = os.to_ascii_lowercase();
    match os.as_str() {
        "macos" => "darwin".to_string(),
        _ => os,
    }
}

fn normalize_arch(arch: &str, variant: &str) -> (String, String) {
    let arch = arch.to_ascii_lowercase();
    let mut variant = variant.to_ascii_lowercase();
    // Variants are written `v7`, but `7` is common in the wild.
    if variant.starts_with(|c: char| c.is_ascii_digit()) {
        variant.insert(0, 'v');
    }
    let arch = match arch.as_str() {
        "i386" | "i486" | "i586" | "i686" | "x86" => "386",
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        "armhf" | "armel" => {
            if variant.is_empty() {
                variant = if arch == "armhf" { "v7" } else { "v6" }.to_string();
            }
            "arm"
        }
        "powerpc64le" | "ppc64el" => "ppc64le",
        "loongarch64" => "loong64",
        other => other,
    }
    .to_string();
    match (arch.as_str(), variant.as_str()) {
        ("amd64", "v1") => variant.clear(),
        ("arm64", "v8.0") => variant = "v8".to_string(),
        ("arm64", "v9.0") => variant = "v9".to_string(),
        _ => {}
    }
    (arch, variant)
}

/// Whether an image built for `have` runs where `want` is asked for: the same OS and
/// architecture (aliases allowed), and a variant `want` can run. An empty `want` variant
/// accepts any variant; [`select`] still prefers the ones the architecture surely runs.
pub fn matches(want: &Platform, have: &Platform) -> bool {
    rank(want, have).is_some()
}

/// Picks the index entry that best fits `want`: the exact variant first, then the closest
/// older variant the CPU also runs (arm `v7` takes `v6`, then `v5`), first listed on ties.
/// Entries without a platform and attestation manifests are never chosen.
pub fn select<'a>(
    want: &Platform,
    candidates: impl IntoIterator<Item = &'a Descriptor>,
) -> Option<&'a Descriptor> {
    let mut best: Option<(u32, &'a Descriptor)> = None;
    for candidate in candidates {
        if is_attestation(candidate) {
            continue;
        }
        let Some(have) = &candidate.platform else {
            continue;
        };
        let Some(r) = rank(want, have) else {
            continue;
        };
        if best.is_none_or(|(b, _)| r < b) {
            best = Some((r, candidate));
        }
    }
    best.map(|(_, d)| d)
}

fn is_attestation(d: &Descriptor) -> bool {
    let annotated = d
        .annotations
        .get(REFERENCE_TYPE_ANNOTATION)
        .is_some_and(|v| v == ATTESTATION_MANIFEST);
    let unknown = d
        .platform
        .as_ref()
        .is_some_and(|p| p.os == UNKNOWN && p.architecture == UNKNOWN);
    annotated || unknown
}

/// How well `have` fits `want`: `None` when it does not run, otherwise lower is better.
fn rank(want: &Platform, have: &Platform) -> Option<u32> {
    let want_n = normalize(want);
    let have_n = normalize(have);
    if want_n.os != have_n.os || want_n.architecture != have_n.architecture {
        return None;
    }
    let arch = want_n.architecture.as_str();
    let base = if want_n.variant.is_empty() {
        let default = default_variant(arch);
        variant_distance(arch, default, &have_n.variant).unwrap_or(ANY_VARIANT_RANK)
    } else {
        variant_distance(arch, &want_n.variant, &have_n.variant)?
    };
    // Among equivalent spellings (arm64 `v8` and ``), the one written as asked wins.
    let spelled_differently = u32::from(want.variant != have.variant);
    Some(base * 2 + spelled_differently)
}

/// The variant an entry without one is built for, by the convention image builders follow.
fn default_variant(arch: &str) -> &'static str {
    match arch {
        "arm" => "v7",
        "arm64" => "v8",
        _ => "",
    }
}

/// How many revisions older than `want` the variant `have` is, if a `want` CPU runs it.
fn variant_distance(arch: &str, want: &str, have: &str) -> Option<u32> {
    let want = if want.is_empty() {
        default_variant(arch)
    } else {
        want
    };
    let have = if have.is_empty() {
        default_variant(arch)
    } else {
        have
    };
    if want == have {
        return Some(0);
    }
    match arch {
        // Each Arm revision runs the code of the ones before it; amd64 v2..v4 are
        // micro-architecture levels, each a superset of the one below.
        "arm" | "amd64" => {
            let w = numbered(want)?;
            let h = if arch == "amd64" && have.is_empty() {
                1
            } else {
                numbered(have)?
            };
            w.checked_sub(h)
        }
        "arm64" => {
            let w = arm64_level(want)?;
            let h = arm64_level(have)?;
            // Armv9.x is a superset of Armv8.(x+5), but not of later v8 revisions.
            if h.major > w.major {
                return None;
            }
            w.order.checked_sub(h.order)
        }
        _ => None,
    }
}

/// `v7` -> 7.
fn numbered(variant: &str) -> Option<u32> {
    variant.strip_prefix('v')?.parse().ok()
}

struct Arm64Level {
    major: u32,
    /// Position on one line where v9.x sits just above v8.(x+5).
    order: u32,
}

fn arm64_level(variant: &str) -> Option<Arm64Level> {
    let rest = variant.strip_prefix('v')?;
    let (major, minor) = match rest.split_once('.') {
        Some((major, minor)) => (major.parse().ok()?, minor.parse().ok()?),
        None => (rest.parse().ok()?, 0u32),
    };
    let order = match major {
        8 => minor * 2,
        9 => (minor + 5) * 2 + 1,
        _ => return None,
    };
    Some(Arm64Level { major, order })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::Labels;

    fn p(os: &str, arch: &str, variant: &str) -> Platform {
        Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.into(),
            os_version: String::new(),
        }
    }

    fn entry(digest: &str, platform: Option<Platform>) -> Descriptor {
        Descriptor {
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            digest: digest.into(),
            size: 1,
            annotations: Labels::new(),
            platform,
        }
    }

    fn pick<'a>(want: &Platform, index: &'a [Descriptor]) -> Option<&'a str> {
        select(want, index).map(|d| d.digest.as_str())
    }

    #[test]
    fn host_is_linux_with_a_go_architecture() {
        let h = host();
        assert_eq!(h.os, "linux");
        assert!(KNOWN_ARCH.contains(&h.architecture.as_str()), "{h:?}");
        assert!(matches(&h, &h));
        if cfg!(target_arch = "x86_64") {
            assert_eq!(h, p("linux", "amd64", ""));
        }
        if cfg!(target_arch = "aarch64") {
            assert_eq!(h, p("linux", "arm64", "v8"));
        }
    }

    #[test]
    fn rust_arch_names_map_to_go() {
        assert_eq!(goarch("x86_64", true), ("amd64", ""));
        assert_eq!(goarch("x86", true), ("386", ""));
        assert_eq!(goarch("aarch64", true), ("arm64", "v8"));
        assert_eq!(goarch("arm", true), ("arm", "v7"));
        assert_eq!(goarch("powerpc64", true), ("ppc64le", ""));
        assert_eq!(goarch("powerpc64", false), ("ppc64", ""));
        assert_eq!(goarch("s390x", false), ("s390x", ""));
        assert_eq!(goarch("riscv64", true), ("riscv64", ""));
        assert_eq!(goarch("loongarch64", true), ("loong64", ""));
        assert_eq!(goarch("mips64", true), ("mips64le", ""));
    }

    #[test]
    fn parse_full_and_short_forms() {
        assert_eq!(parse("linux/arm64/v8").unwrap(), p("linux", "arm64", "v8"));
        assert_eq!(parse("linux/amd64").unwrap(), p("linux", "amd64", ""));
        assert_eq!(parse("amd64").unwrap(), p("linux", "amd64", ""));
        assert_eq!(parse("linux/arm/7").unwrap(), p("linux", "arm", "v7"));
        assert_eq!(parse("Linux/AArch64").unwrap(), p("linux", "arm64", ""));
        assert_eq!(parse("linux/x86_64").unwrap(), p("linux", "amd64", ""));
        assert_eq!(parse("linux/armhf").unwrap(), p("linux", "arm", "v7"));
        assert_eq!(parse("aarch64").unwrap(), p("linux", "arm64", ""));
        assert_eq!(parse("linux").unwrap(), host());
        assert_eq!(
            parse("linux/loongarch64").unwrap(),
            p("linux", "loong64", "")
        );
        let win = parse("windows(10.0.17763)/amd64").unwrap();
        assert_eq!(win.os, "windows");
        assert_eq!(win.os_version, "10.0.17763");
    }

    #[test]
    fn parse_rejects_bad_input() {
        for bad in [
            "",
            "linux/",
            "/amd64",
            "linux//v7",
            "linux/amd64/v1/x",
            "linux/amd 64",
            "linux/amd46",
            "arm64/v8",
            "toaster",
            "linux(/amd64",
            "linux()/amd64",
        ] {
            match parse(bad) {
                Err(Error::InvalidArgument(msg)) => assert!(msg.contains("platform"), "{msg}"),
                other => panic!("{bad:?}: expected InvalidArgument, got {other:?}"),
            }
        }
        assert!(parse(&"a".repeat(10_000)).is_err());
    }

    #[test]
    fn format_round_trips() {
        for s in [
            "linux/arm64/v8",
            "linux/amd64",
            "windows(10.0.17763)/amd64",
            "linux/arm/v6",
        ] {
            assert_eq!(format(&parse(s).unwrap()), s);
        }
    }

    #[test]
    fn matching_normalizes_aliases() {
        assert!(matches(
            &p("linux", "arm64", ""),
            &p("linux", "aarch64", "")
        ));
        assert!(matches(&p("linux", "amd64", ""), &p("linux", "x86_64", "")));
        assert!(matches(&p("Linux", "386", ""), &p("linux", "i686", "")));
        assert!(!matches(
            &p("linux", "amd64", ""),
            &p("windows", "amd64", "")
        ));
        assert!(!matches(&p("linux", "amd64", ""), &p("linux", "arm64", "")));
    }

    #[test]
    fn matching_variants() {
        let arm64 = p("linux", "arm64", "");
        let arm64_v8 = p("linux", "arm64", "v8");
        assert!(matches(&arm64, &arm64_v8));
        assert!(matches(&arm64_v8, &arm64));
        assert!(matches(
            &p("linux", "arm64", "v9.0"),
            &p("linux", "arm64", "v8.5")
        ));
        assert!(!matches(
            &p("linux", "arm64", "v9.0"),
            &p("linux", "arm64", "v8.6")
        ));
        assert!(!matches(&arm64_v8, &p("linux", "arm64", "v9")));

        let v7 = p("linux", "arm", "v7");
        for ok in ["v7", "v6", "v5", ""] {
            assert!(matches(&v7, &p("linux", "arm", ok)), "{ok}");
        }
        assert!(!matches(&v7, &p("linux", "arm", "v8")));
        assert!(!matches(&p("linux", "arm", "v6"), &v7));

        assert!(matches(
            &p("linux", "amd64", "v3"),
            &p("linux", "amd64", "v2")
        ));
        assert!(matches(
            &p("linux", "amd64", "v3"),
            &p("linux", "amd64", "")
        ));
        assert!(!matches(
            &p("linux", "amd64", "v2"),
            &p("linux", "amd64", "v3")
        ));
        // Asking for no particular variant takes any.
        assert!(matches(&p("linux", "arm", ""), &p("linux", "arm", "v8")));
        assert!(matches(
            &p("linux", "amd64", ""),
            &p("linux", "amd64", "v4")
        ));
    }

    #[test]
    fn select_prefers_exact_then_older_variants() {
        let index = vec![
            entry("v5", Some(p("linux", "arm", "v5"))),
            entry("v6", Some(p("linux", "arm", "v6"))),
            entry("v7", Some(p("linux", "arm", "v7"))),
            entry("amd64", Some(p("linux", "amd64", ""))),
        ];
        assert_eq!(pick(&p("linux", "arm", "v7"), &index), Some("v7"));
        assert_eq!(pick(&p("linux", "arm", "v7"), &index[..2]), Some("v6"));
        assert_eq!(pick(&p("linux", "arm", "v7"), &index[..1]), Some("v5"));
        assert_eq!(pick(&p("linux", "arm", "v6"), &index), Some("v6"));
        assert_eq!(pick(&p("linux", "arm", "v5"), &index[1..]), None);
        assert_eq!(pick(&p("linux", "amd64", ""), &index), Some("amd64"));
        assert_eq!(pick(&p("linux", "arm64", ""), &index), None);
        // No variant asked: the default (v7) first, then what v7 runs, before anything else.
        assert_eq!(pick(&p("linux", "arm", ""), &index), Some("v7"));
        let newer = [
            entry("v8", Some(p("linux", "arm", "v8"))),
            entry("v6", Some(p("linux", "arm", "v6"))),
        ];
        assert_eq!(pick(&p("linux", "arm", ""), &newer), Some("v6"));
        assert_eq!(pick(&p("linux", "arm", ""), &newer[..1]), Some("v8"));
    }

    #[test]
    fn select_treats_arm64_blank_and_v8_alike() {
        let index = [
            entry("blank", Some(p("linux", "arm64", ""))),
            entry("v8", Some(p("linux", "arm64", "v8"))),
        ];
        assert_eq!(pick(&p("linux", "arm64", "v8"), &index), Some("v8"));
        assert_eq!(pick(&p("linux", "arm64", ""), &index), Some("blank"));
        assert_eq!(pick(&p("linux", "arm64", "v8"), &index[..1]), Some("blank"));
        assert_eq!(pick(&p("linux", "aarch64", ""), &index[1..]), Some("v8"));
    }

    #[test]
    fn select_skips_attestations_and_platformless_entries() {
        let mut attestation = entry("att", Some(p("linux", "amd64", "")));
        attestation.annotations.insert(
            REFERENCE_TYPE_ANNOTATION.into(),
            ATTESTATION_MANIFEST.into(),
        );
        let index = [
            entry("none", None),
            attestation,
            entry("unknown", Some(p("unknown", "unknown", ""))),
            entry("image", Some(p("linux", "amd64", ""))),
        ];
        assert_eq!(pick(&p("linux", "amd64", ""), &index), Some("image"));
        assert_eq!(pick(&p("linux", "amd64", ""), &index[..3]), None);
        assert_eq!(pick(&p("unknown", "unknown", ""), &index), None);
    }

    #[test]
    fn select_keeps_index_order_on_ties() {
        let index = [
            entry("first", Some(p("linux", "amd64", ""))),
            entry("second", Some(p("linux", "amd64", ""))),
        ];
        assert_eq!(pick(&p("linux", "amd64", ""), &index), Some("first"));
    }
}
