//! List filters, as documented in `proto/sup/v1/images.proto`: the strings are ORed, the
//! comma-separated conditions inside one string are ANDed; a condition is `FIELD==VALUE`,
//! `FIELD!=VALUE`, `FIELD~=REGEX` or `FIELD` (present and not empty).

use regex::Regex;

use crate::error::{Error, Result};

/// An object that filters can look into. `field` gets the path split on dots, with label
/// keys kept whole: `labels.a.b` is `["labels", "a.b"]`.
pub trait Filterable {
    fn field(&self, path: &[&str]) -> Option<String>;
}

#[derive(Debug)]
enum Op {
    Present,
    Equal(String),
    NotEqual(String),
    Matches(Regex),
}

#[derive(Debug)]
struct Condition {
    path: Vec<String>,
    op: Op,
}

/// A parsed set of filters. The empty set matches everything.
#[derive(Debug, Default)]
pub struct Filter {
    any_of: Vec<Vec<Condition>>,
}

impl Filter {
    pub fn parse(filters: &[String]) -> Result<Filter> {
        let mut any_of = Vec::new();
        for f in filters {
            if f.trim().is_empty() {
                continue;
            }
            let mut all = Vec::new();
            for cond in split_unquoted(f, ',') {
                all.push(
                    parse_condition(cond.trim())
                        .map_err(|e| Error::invalid(format!("filter {f:?}: {e}")))?,
                );
            }
            any_of.push(all);
        }
        Ok(Filter { any_of })
    }

    pub fn matches(&self, obj: &dyn Filterable) -> bool {
        if self.any_of.is_empty() {
            return true;
        }
        self.any_of
            .iter()
            .any(|all| all.iter().all(|c| c.matches(obj)))
    }
}

impl Condition {
    fn matches(&self, obj: &dyn Filterable) -> bool {
        let path: Vec<&str> = self.path.iter().map(String::as_str).collect();
        let value = obj.field(&path);
        match &self.op {
            Op::Present => value.is_some_and(|v| !v.is_empty()),
            Op::Equal(want) => value.as_deref() == Some(want.as_str()),
            Op::NotEqual(want) => value.as_deref() != Some(want.as_str()),
            Op::Matches(re) => value.is_some_and(|v| re.is_match(&v)),
        }
    }
}

fn split_unquoted(s: &str, sep: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut quoted = false;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        if c == '"' {
            quoted = !quoted;
        } else if c == sep && !quoted {
            parts.push(&s[start..i]);
            start = i + c.len_utf8();
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(s: &str) -> String {
    let s = s.trim();
    if s.len() >= 2 && s.starts_with('"') && s.ends_with('"') {
        s[1..s.len() - 1].to_string()
    } else {
        s.to_string()
    }
}

fn parse_path(field: &str) -> std::result::Result<Vec<String>, String> {
    let field = field.trim();
    if field.is_empty() {
        return Err("empty field name".into());
    }
    // The first segment names the field; for labels/annotations the rest is one key.
    match field.split_once('.') {
        Some((head, rest)) if head == "labels" || head == "annotations" => {
            Ok(vec![head.to_string(), unquote(rest)])
        }
        _ => Ok(split_unquoted(field, '.')
            .into_iter()
            .map(unquote)
            .collect()),
    }
}

fn parse_condition(cond: &str) -> std::result::Result<Condition, String> {
    for (tok, kind) in [("==", 0), ("!=", 1), ("~=", 2)] {
        if let Some((field, value)) = split_op(cond, tok) {
            let path = parse_path(field)?;
            let value = unquote(value);
            let op = match kind {
                0 => Op::Equal(value),
                1 => Op::NotEqual(value),
                _ => Op::Matches(Regex::new(&value).map_err(|e| format!("bad regex: {e}"))?),
            };
            return Ok(Condition { path, op });
        }
    }
    if cond.contains('=') {
        return Err("operators are ==, != and ~=".into());
    }
    Ok(Condition {
        path: parse_path(cond)?,
        op: Op::Present,
    })
}

fn split_op<'a>(cond: &'a str, tok: &str) -> Option<(&'a str, &'a str)> {
    let mut quoted = false;
    let bytes = cond.as_bytes();
    for i in 0..bytes.len() {
        if bytes[i] == b'"' {
            quoted = !quoted;
        } else if !quoted && cond[i..].starts_with(tok) {
            return Some((&cond[..i], &cond[i + tok.len()..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Obj {
        name: String,
        labels: BTreeMap<String, String>,
    }

    impl Filterable for Obj {
        fn field(&self, path: &[&str]) -> Option<String> {
            match path {
                ["name"] => Some(self.name.clone()),
                ["labels", k] => self.labels.get(*k).cloned(),
                _ => None,
            }
        }
    }

    fn obj() -> Obj {
        Obj {
            name: "docker.io/library/busybox:latest".into(),
            labels: [("a.b".to_string(), "x,y".to_string())].into(),
        }
    }

    fn f(s: &[&str]) -> Filter {
        Filter::parse(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn equality_regex_and_presence() {
        let o = obj();
        assert!(f(&[]).matches(&o));
        assert!(f(&["name==docker.io/library/busybox:latest"]).matches(&o));
        assert!(!f(&["name!=docker.io/library/busybox:latest"]).matches(&o));
        assert!(f(&["name~=busybox"]).matches(&o));
        assert!(f(&[r#"labels."a.b"=="x,y""#]).matches(&o));
        assert!(f(&["labels.a.b"]).matches(&o));
        assert!(!f(&["labels.c"]).matches(&o));
    }

    #[test]
    fn strings_or_conditions_and() {
        let o = obj();
        assert!(f(&["name==nope", "name~=busy"]).matches(&o));
        assert!(!f(&["name~=busy,labels.c"]).matches(&o));
    }

    #[test]
    fn bad_filters_are_invalid() {
        assert!(Filter::parse(&["name=x".to_string()]).is_err());
        assert!(Filter::parse(&["name~=(".to_string()]).is_err());
    }
}
