//! Leases: named, optionally expiring sets of content and snapshots that garbage collection
//! must keep.

use std::time::{Duration, SystemTime};

use crate::error::{Error, Result};
use crate::filters::{Filter, Filterable};
use crate::labels::{self, Labels};
use crate::store::{self, LeaseRecord};

use super::Services;

#[derive(Debug, Clone)]
pub struct Lease {
    pub id: String,
    pub labels: Labels,
    pub created_at: SystemTime,
    pub expires_at: Option<SystemTime>,
}

impl Filterable for Lease {
    fn field(&self, path: &[&str]) -> Option<String> {
        match path {
            ["id"] => Some(self.id.clone()),
            ["labels", k] => self.labels.get(*k).cloned(),
            _ => None,
        }
    }
}

fn to_lease(id: String, r: &LeaseRecord) -> Lease {
    Lease {
        id,
        labels: r.labels.clone(),
        created_at: r.created_at,
        expires_at: r.expires_at,
    }
}

fn validate_resource(kind: &str, id: &str) -> Result<()> {
    match kind {
        "content" => crate::content::digest::validate(id),
        k if k.starts_with("snapshots/") && k.len() > "snapshots/".len() => {
            if id.is_empty() || id.len() > 4096 || id.contains('\0') {
                Err(Error::invalid(format!(
                    "lease resource: snapshot key {id:?}"
                )))
            } else {
                Ok(())
            }
        }
        other => Err(Error::invalid(format!(
            "lease resource type {other:?}: must be \"content\" or \"snapshots/<snapshotter>\""
        ))),
    }
}

impl Services {
    fn lease_record(&self, ns: &str, id: &str) -> Result<LeaseRecord> {
        store::get(&self.store.leases, &store::key(ns, id))?
            .ok_or_else(|| Error::not_found(format!("lease {id:?} in namespace {ns:?}")))
    }

    pub async fn lease_create(
        &self,
        ns: &str,
        id: &str,
        labels: Labels,
        ttl: Option<Duration>,
    ) -> Result<Lease> {
        let id = if id.is_empty() {
            format!("lease-{}", super::images::unpack::random_suffix())
        } else {
            id.to_string()
        };
        super::containers::validate_id("lease", &id)?;
        labels::validate(&labels)?;
        self.namespace_ensure(ns)?;
        let now = SystemTime::now();
        let rec = LeaseRecord {
            labels,
            created_at: now,
            expires_at: ttl.map(|t| now + t),
            resources: Vec::new(),
        };
        let swapped = self.store.leases.compare_and_swap(
            store::key(ns, &id),
            None as Option<&[u8]>,
            Some(store::encode(&rec)?),
        )?;
        if swapped.is_err() {
            return Err(Error::already_exists(format!(
                "lease {id:?} in namespace {ns:?}"
            )));
        }
        self.store.flush().await?;
        Ok(to_lease(id, &rec))
    }

    pub async fn lease_delete(&self, ns: &str, id: &str) -> Result<()> {
        if self.store.leases.remove(store::key(ns, id))?.is_none() {
            return Err(Error::not_found(format!(
                "lease {id:?} in namespace {ns:?}"
            )));
        }
        self.store.flush().await
    }

    pub fn lease_list(&self, ns: &str, filters: &[String]) -> Result<Vec<Lease>> {
        let filter = Filter::parse(filters)?;
        Ok(
            store::scan::<LeaseRecord>(&self.store.leases, &store::ns_prefix(ns))?
                .into_iter()
                .map(|(id, r)| to_lease(id, &r))
                .filter(|l| filter.matches(l))
                .collect(),
        )
    }

    pub async fn lease_resource(
        &self,
        ns: &str,
        id: &str,
        kind: &str,
        rid: &str,
        add: bool,
    ) -> Result<()> {
        validate_resource(kind, rid)?;
        let key = store::key(ns, id);
        let mut rec = self.lease_record(ns, id)?;
        let entry = (kind.to_string(), rid.to_string());
        if add {
            if !rec.resources.contains(&entry) {
                rec.resources.push(entry);
            }
        } else {
            let before = rec.resources.len();
            rec.resources.retain(|r| *r != entry);
            if rec.resources.len() == before {
                return Err(Error::not_found(format!(
                    "resource {kind} {rid:?} of lease {id:?}"
                )));
            }
        }
        self.store.leases.insert(key, store::encode(&rec)?)?;
        self.store.flush().await
    }

    pub fn lease_resources(&self, ns: &str, id: &str) -> Result<Vec<(String, String)>> {
        Ok(self.lease_record(ns, id)?.resources)
    }
}
