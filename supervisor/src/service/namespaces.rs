//! Namespaces: validation, implicit creation, and deletion only when empty.

use std::time::SystemTime;

use crate::error::{Error, Result};
use crate::events::{topic, Payload};
use crate::labels::{self, Labels};
use crate::store::{self, NamespaceRecord};

use super::Services;

pub const MAX_NAME: usize = 76;

#[derive(Debug, Clone)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub updated_at: SystemTime,
}

/// Namespace names: 1 to 76 of `[a-z0-9._-]`, starting and ending with a letter or digit.
pub fn validate(name: &str) -> Result<()> {
    let ok_edge = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let b = name.as_bytes();
    if b.is_empty()
        || b.len() > MAX_NAME
        || !ok_edge(b[0])
        || !ok_edge(b[b.len() - 1])
        || !b
            .iter()
            .all(|&c| ok_edge(c) || c == b'.' || c == b'_' || c == b'-')
    {
        return Err(Error::invalid(format!(
            "namespace {name:?}: must be 1 to {MAX_NAME} characters of [a-z0-9._-], \
             starting and ending with a letter or digit"
        )));
    }
    Ok(())
}

fn to_ns(name: String, rec: NamespaceRecord) -> Namespace {
    Namespace {
        name,
        labels: rec.labels,
        created_at: rec.created_at,
        updated_at: rec.updated_at,
    }
}

impl Services {
    pub fn namespace_get(&self, name: &str) -> Result<Namespace> {
        validate(name)?;
        let rec: NamespaceRecord = store::get(&self.store.namespaces, name.as_bytes())?
            .ok_or_else(|| Error::not_found(format!("namespace {name:?}")))?;
        Ok(to_ns(name.to_string(), rec))
    }

    pub fn namespace_list(&self) -> Result<Vec<Namespace>> {
        Ok(store::scan::<NamespaceRecord>(&self.store.namespaces, b"")?
            .into_iter()
            .map(|(n, r)| to_ns(n, r))
            .collect())
    }

    pub async fn namespace_create(&self, name: &str, labels: Labels) -> Result<Namespace> {
        validate(name)?;
        labels::validate(&labels)?;
        let now = SystemTime::now();
        let rec = NamespaceRecord {
            labels,
            created_at: now,
            updated_at: now,
        };
        let prev = self.store.namespaces.compare_and_swap(
            name.as_bytes(),
            None as Option<&[u8]>,
            Some(store::encode(&rec)?),
        )?;
        if prev.is_err() {
            return Err(Error::already_exists(format!("namespace {name:?}")));
        }
        self.store.flush().await?;
        self.events.publish(
            name,
            topic::NAMESPACE_CREATE,
            Payload::Namespace {
                name: name.to_string(),
                labels: rec.labels.clone(),
            },
        );
        Ok(to_ns(name.to_string(), rec))
    }

    /// Creates the namespace if it does not exist yet (objects may be created in a namespace
    /// nobody created explicitly). Does not flush: the caller's own write does.
    pub fn namespace_ensure(&self, name: &str) -> Result<()> {
        validate(name)?;
        if self.store.namespaces.contains_key(name.as_bytes())? {
            return Ok(());
        }
        let now = SystemTime::now();
        let rec = NamespaceRecord {
            labels: Labels::new(),
            created_at: now,
            updated_at: now,
        };
        let created = self
            .store
            .namespaces
            .compare_and_swap(
                name.as_bytes(),
                None as Option<&[u8]>,
                Some(store::encode(&rec)?),
            )?
            .is_ok();
        if created {
            self.events.publish(
                name,
                topic::NAMESPACE_CREATE,
                Payload::Namespace {
                    name: name.to_string(),
                    labels: Labels::new(),
                },
            );
        }
        Ok(())
    }

    pub async fn namespace_update(
        &self,
        name: &str,
        labels: Labels,
        paths: &[String],
    ) -> Result<Namespace> {
        validate(name)?;
        labels::validate(&labels)?;
        let mut rec: NamespaceRecord = store::get(&self.store.namespaces, name.as_bytes())?
            .ok_or_else(|| Error::not_found(format!("namespace {name:?}")))?;
        let others = labels::apply_mask(&mut rec.labels, &labels, paths);
        if let Some(p) = others.first() {
            return Err(Error::invalid(format!(
                "namespace {name:?}: field {p:?} cannot be updated"
            )));
        }
        labels::validate(&rec.labels)?;
        rec.updated_at = SystemTime::now();
        self.store
            .namespaces
            .insert(name.as_bytes(), store::encode(&rec)?)?;
        self.store.flush().await?;
        self.events.publish(
            name,
            topic::NAMESPACE_UPDATE,
            Payload::Namespace {
                name: name.to_string(),
                labels: rec.labels.clone(),
            },
        );
        Ok(to_ns(name.to_string(), rec))
    }

    pub async fn namespace_delete(&self, name: &str) -> Result<()> {
        validate(name)?;
        if !self.store.namespaces.contains_key(name.as_bytes())? {
            return Err(Error::not_found(format!("namespace {name:?}")));
        }
        let prefix = store::ns_prefix(name);
        let mut holds = Vec::new();
        for (what, tree) in [
            ("images", &self.store.images),
            ("containers", &self.store.containers),
            ("content", &self.store.content),
        ] {
            if tree.scan_prefix(&prefix).next().is_some() {
                holds.push(what.to_string());
            }
        }
        for s in self.snapshotters.values() {
            if !s.list(name)?.is_empty() {
                holds.push(format!("snapshots ({})", s.name()));
            }
        }
        if !holds.is_empty() {
            return Err(Error::precondition(format!(
                "namespace {name:?} is not empty: it holds {}",
                holds.join(", ")
            )));
        }
        self.store.namespaces.remove(name.as_bytes())?;
        self.store.flush().await?;
        self.events.publish(
            name,
            topic::NAMESPACE_DELETE,
            Payload::Namespace {
                name: name.to_string(),
                labels: Labels::new(),
            },
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn names() {
        for ok in ["default", "k8s.io", "a", "team-1_x"] {
            assert!(validate(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-x", "x-", "a/b", "a b", &"x".repeat(77)] {
            assert!(validate(bad).is_err(), "{bad}");
        }
    }
}
