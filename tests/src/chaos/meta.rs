//! Whether a namespace's metadata holds together: every image's blobs are there, every
//! container's snapshot is there, and nothing is left that no image or container refers to
//! (content, ingests, snapshots). Images are taken to be single manifests, as the tests make.

use std::collections::{BTreeMap, BTreeSet};

use sup_client::{api, Client};
use tonic::Status;

use crate::rpc;

async fn content_present(client: &Client, digest: &str) -> Result<(), Status> {
    client
        .content()
        .info(api::ContentInfoRequest {
            digest: digest.to_string(),
        })
        .await
        .map(|_| ())
}

/// Snapshots.Stat of `key` succeeds.
pub async fn snapshot_exists(client: &Client, snapshotter: &str, key: &str) -> Result<(), Status> {
    client
        .snapshots()
        .stat(api::StatSnapshotRequest {
            snapshotter: snapshotter.to_string(),
            key: key.to_string(),
        })
        .await
        .map(|_| ())
}

/// What is wrong with the namespace's metadata, one line each.
pub async fn metadata_problems(client: &Client) -> Vec<String> {
    let mut problems = Vec::new();
    let mut blobs_used: BTreeSet<String> = BTreeSet::new();
    // Snapshot names in use, per snapshotter: image tops and container keys.
    let mut roots: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for image in rpc::list_images(client).await {
        if let Some(target) = &image.target {
            blobs_used.insert(target.digest.clone());
        }
        let inspected = match rpc::inspect_platform(client, &image.name, None).await {
            Ok(i) => i,
            Err(s) => {
                problems.push(format!(
                    "image {}: Images.Inspect: {:?}: {}",
                    image.name,
                    s.code(),
                    s.message()
                ));
                continue;
            }
        };
        let descriptors = inspected
            .manifest
            .iter()
            .chain(inspected.config.iter())
            .chain(inspected.layers.iter());
        for d in descriptors {
            blobs_used.insert(d.digest.clone());
            if let Err(s) = content_present(client, &d.digest).await {
                problems.push(format!(
                    "image {}: blob {} ({}): Content.Info: {:?}: {}",
                    image.name,
                    d.digest,
                    d.media_type,
                    s.code(),
                    s.message()
                ));
            }
        }
        for sn in &inspected.unpacked {
            roots
                .entry(sn.clone())
                .or_default()
                .insert(inspected.chain_id.clone());
        }
    }
    for info in rpc::list_content(client).await {
        if !blobs_used.contains(&info.digest) {
            problems.push(format!(
                "blob {} ({} bytes) that no image uses",
                info.digest, info.size
            ));
        }
    }
    for ingest in rpc::list_ingests(client).await {
        problems.push(format!(
            "ingest {:?} left at {} of {} bytes",
            ingest.r#ref, ingest.offset, ingest.total
        ));
    }
    let containers = client
        .containers()
        .list(api::ListContainersRequest::default())
        .await
        .map(|r| r.into_inner().containers);
    match containers {
        Ok(containers) => {
            for c in containers {
                if let Err(s) = snapshot_exists(client, &c.snapshotter, &c.snapshot_key).await {
                    problems.push(format!(
                        "container {}: snapshot {} ({}): Snapshots.Stat: {:?}: {}",
                        c.id,
                        c.snapshot_key,
                        c.snapshotter,
                        s.code(),
                        s.message()
                    ));
                }
                roots
                    .entry(c.snapshotter.clone())
                    .or_default()
                    .insert(c.snapshot_key.clone());
            }
        }
        Err(s) => problems.push(format!("Containers.List: {:?}: {}", s.code(), s.message())),
    }
    for sn in crate::SNAPSHOTTERS {
        let snapshots = rpc::list_snapshots(client, sn).await;
        let parent: BTreeMap<&str, &str> = snapshots
            .iter()
            .map(|s| (s.name.as_str(), s.parent.as_str()))
            .collect();
        let mut used: BTreeSet<&str> = BTreeSet::new();
        for root in roots.get(sn).into_iter().flatten() {
            let mut name = root.as_str();
            while !name.is_empty() && used.insert(name) {
                name = parent.get(name).copied().unwrap_or_default();
            }
        }
        for s in &snapshots {
            if !used.contains(s.name.as_str()) {
                problems.push(format!(
                    "{sn} snapshot {} ({:?}) that no image or container uses",
                    s.name,
                    s.kind()
                ));
            }
        }
    }
    problems
}
