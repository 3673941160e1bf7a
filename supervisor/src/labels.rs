//! Labels (string maps on every object) and the field-mask rules for updating them.

use std::collections::BTreeMap;

use crate::error::{Error, Result};

pub type Labels = BTreeMap<String, String>;

const MAX_LABEL_KEY: usize = 1024;
const MAX_LABELS_SIZE: usize = 64 * 1024;

/// Checks label keys and the total size.
pub fn validate(labels: &Labels) -> Result<()> {
    let mut total = 0;
    for (k, v) in labels {
        if k.is_empty() || k.len() > MAX_LABEL_KEY {
            return Err(Error::invalid(format!(
                "label key {k:?}: must be 1 to {MAX_LABEL_KEY} bytes"
            )));
        }
        total += k.len() + v.len();
    }
    if total > MAX_LABELS_SIZE {
        return Err(Error::invalid(format!(
            "labels: {total} bytes in all, the limit is {MAX_LABELS_SIZE}"
        )));
    }
    Ok(())
}

/// Applies a label update under a field mask: "labels" replaces them all, "labels.KEY" sets
/// KEY from `new` or removes it when `new` lacks it. An empty mask means "labels". Paths
/// that are not about labels are left for the caller (returned).
pub fn apply_mask<'a>(current: &mut Labels, new: &Labels, paths: &'a [String]) -> Vec<&'a str> {
    let mut others = Vec::new();
    if paths.is_empty() {
        *current = new.clone();
        return others;
    }
    for path in paths {
        if path == "labels" {
            *current = new.clone();
        } else if let Some(key) = path.strip_prefix("labels.") {
            let key = key.trim_matches('"');
            match new.get(key) {
                Some(v) => {
                    current.insert(key.to_string(), v.clone());
                }
                None => {
                    current.remove(key);
                }
            }
        } else {
            others.push(path.as_str());
        }
    }
    others
}

#[cfg(test)]
mod tests {
    use super::*;

    fn l(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn mask_sets_and_removes_single_keys() {
        let mut cur = l(&[("a", "1"), ("b", "2")]);
        let paths = ["labels.a".into(), "labels.b".into(), "target".into()];
        let rest = apply_mask(&mut cur, &l(&[("a", "9")]), &paths);
        assert_eq!(cur, l(&[("a", "9")]));
        assert_eq!(rest, vec!["target"]);
    }

    #[test]
    fn empty_mask_replaces_all() {
        let mut cur = l(&[("a", "1")]);
        apply_mask(&mut cur, &l(&[("c", "3")]), &[]);
        assert_eq!(cur, l(&[("c", "3")]));
    }
}
