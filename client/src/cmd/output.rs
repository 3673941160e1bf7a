//! Rendering for people and for scripts: aligned tables, JSON documents, human sizes and
//! times, and the JSON shape of the API types several commands print.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use anyhow::Context as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};
use sup_client::api::{Descriptor, Image, Platform};

/// How a command prints what it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Aligned columns for a person
    Table,
    /// A JSON document for a program
    Json,
}

/// `-o/--output` on a command, overriding the one given before the command.
#[derive(Debug, Clone, clap::Args)]
pub struct OutputArg {
    /// Output format
    #[arg(short = 'o', long, value_enum)]
    pub output: Option<Format>,
}

/// Columns separated by three spaces, each as wide as its widest cell.
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(headers: &[&'static str]) -> Table {
        Table {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let width = cell.chars().count();
                match widths.get_mut(i) {
                    Some(w) => *w = (*w).max(width),
                    None => widths.push(width),
                }
            }
        }
        let mut text = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate() {
                if i > 0 {
                    line.push_str("   ");
                }
                line.push_str(cell);
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.extend(std::iter::repeat_n(' ', pad));
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    pub fn print(&self) -> anyhow::Result<()> {
        print_text(&self.render())
    }
}

/// Writes to stdout, reporting a closed pipe as an error instead of panicking as `print!`
/// does.
pub fn print_text(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("writing to stdout")
}

pub fn print_json(value: &Value) -> anyhow::Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("encoding JSON")?;
    text.push('\n');
    print_text(&text)
}

/// Sizes in binary units, as `du -h` and `ls -lh` count them: `512 B`, `1.5 KiB`, `2.0 GiB`.
pub fn human_size(bytes: i64) -> String {
    if bytes < 0 {
        return "-".to_string();
    }
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

pub fn to_datetime(ts: Option<&prost_types::Timestamp>) -> Option<DateTime<Utc>> {
    let ts = ts?;
    let nanos = u32::try_from(ts.nanos).ok()?;
    DateTime::from_timestamp(ts.seconds, nanos)
}

/// RFC 3339 in UTC, or null when the daemon sent no time.
pub fn time_json(ts: Option<&prost_types::Timestamp>) -> Value {
    match to_datetime(ts) {
        Some(t) => Value::String(t.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        None => Value::Null,
    }
}

/// "3 minutes ago" for recent times, the date beyond eight weeks (or in the future, when the
/// clocks disagree); "-" when unknown.
pub fn relative_time(ts: Option<&prost_types::Timestamp>, now: DateTime<Utc>) -> String {
    let Some(then) = to_datetime(ts) else {
        return "-".to_string();
    };
    let secs = (now - then).num_seconds();
    let ago = |n: i64, unit: &str| {
        if n == 1 {
            format!("1 {unit} ago")
        } else {
            format!("{n} {unit}s ago")
        }
    };
    match secs {
        s if s < 0 => then.to_rfc3339_opts(SecondsFormat::Secs, true),
        s if s < 60 => ago(s, "second"),
        s if s < 3600 => ago(s / 60, "minute"),
        s if s < 86_400 => ago(s / 3600, "hour"),
        s if s < 14 * 86_400 => ago(s / 86_400, "day"),
        s if s < 56 * 86_400 => ago(s / (7 * 86_400), "week"),
        _ => then.to_rfc3339_opts(SecondsFormat::Secs, true),
    }
}

/// The first 12 hex digits of a digest, as image ids are usually shown.
pub fn short_digest(digest: &str) -> String {
    let hex = digest.split_once(':').map_or(digest, |(_, hex)| hex);
    hex.chars().take(12).collect()
}

/// `a=1,b=2` in key order; "" for none.
pub fn labels_text(labels: &HashMap<String, String>) -> String {
    let sorted: BTreeMap<&String, &String> = labels.iter().collect();
    sorted
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

pub fn labels_json(labels: &HashMap<String, String>) -> Value {
    let sorted: serde_json::Map<String, Value> = labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    Value::Object(sorted)
}

pub fn platform_json(platform: &Platform) -> Value {
    let mut value = json!({
        "os": platform.os,
        "architecture": platform.architecture,
    });
    if !platform.variant.is_empty() {
        value["variant"] = json!(platform.variant);
    }
    if !platform.os_version.is_empty() {
        value["os_version"] = json!(platform.os_version);
    }
    value
}

pub fn descriptor_json(desc: Option<&Descriptor>) -> Value {
    let Some(desc) = desc else {
        return Value::Null;
    };
    let mut value = json!({
        "media_type": desc.media_type,
        "digest": desc.digest,
        "size": desc.size,
    });
    if !desc.annotations.is_empty() {
        value["annotations"] = labels_json(&desc.annotations);
    }
    if let Some(platform) = &desc.platform {
        value["platform"] = platform_json(platform);
    }
    value
}

pub fn image_json(image: &Image) -> Value {
    json!({
        "name": image.name,
        "target": descriptor_json(image.target.as_ref()),
        "labels": labels_json(&image.labels),
        "created_at": time_json(image.created_at.as_ref()),
        "updated_at": time_json(image.updated_at.as_ref()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(human_size(0), "0 B");
        assert_eq!(human_size(1023), "1023 B");
        assert_eq!(human_size(1024), "1.0 KiB");
        assert_eq!(human_size(1536), "1.5 KiB");
        assert_eq!(human_size(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(human_size(3 * 1024 * 1024 * 1024), "3.0 GiB");
        assert_eq!(human_size(i64::MAX), "8.0 EiB");
        assert_eq!(human_size(-1), "-");
    }

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(&["NAME", "SIZE", "LABELS"]);
        table.row(vec!["a".into(), "1.0 KiB".into(), "".into()]);
        table.row(vec!["longer-name".into(), "2 B".into(), "x=y".into()]);
        assert_eq!(
            table.render(),
            "NAME          SIZE      LABELS\n\
             a             1.0 KiB\n\
             longer-name   2 B       x=y\n"
        );
    }

    #[test]
    fn empty_table_has_header() {
        assert_eq!(Table::new(&["KEY", "PARENT"]).render(), "KEY   PARENT\n");
    }

    #[test]
    fn times() {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("valid");
        let at = |secs: i64| prost_types::Timestamp {
            seconds: secs,
            nanos: 0,
        };
        assert_eq!(
            relative_time(Some(&at(1_700_000_000)), now),
            "0 seconds ago"
        );
        assert_eq!(relative_time(Some(&at(1_699_999_940)), now), "1 minute ago");
        assert_eq!(relative_time(Some(&at(1_699_992_800)), now), "2 hours ago");
        assert_eq!(relative_time(Some(&at(1_699_000_000)), now), "11 days ago");
        assert_eq!(
            relative_time(Some(&at(1_600_000_000)), now),
            "2020-09-13T12:26:40Z"
        );
        assert_eq!(relative_time(None, now), "-");
        assert_eq!(
            time_json(Some(&at(1_600_000_000))),
            json!("2020-09-13T12:26:40Z")
        );
        let bad = prost_types::Timestamp {
            seconds: 0,
            nanos: -5,
        };
        assert_eq!(time_json(Some(&bad)), Value::Null);
    }

    #[test]
    fn digests_and_labels() {
        assert_eq!(short_digest("sha256:0123456789abcdef"), "0123456789ab");
        assert_eq!(short_digest("abc"), "abc");
        let labels: HashMap<String, String> = [
            ("b".to_string(), "2".to_string()),
            ("a".to_string(), "1".to_string()),
        ]
        .into();
        assert_eq!(labels_text(&labels), "a=1,b=2");
    }
}
