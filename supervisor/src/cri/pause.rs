//! The sandbox (pause) image. By default supd makes its own, once, from the `sup-pause`
//! binary installed beside it: one layer holding `/pause` and the shared libraries it needs
//! (the dynamic loader and libc), imported through the ordinary import path as an in-memory
//! OCI image layout. A configured pause image is used instead when set.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::json;

use crate::content::digest;
use crate::error::{Error, Result};
use crate::image::oci;
use crate::service::images::import::ImportOptions;
use crate::service::Services;

/// Namespace of every CRI object.
pub const NAMESPACE: &str = "k8s.io";
/// Repository of the built-in pause image; the tag is supd's version.
pub const REPOSITORY: &str = "sup.local/pause";
/// Largest file put into the image (the binary and each library).
const MAX_FILE: u64 = 64 << 20;

/// Serialises the first build: concurrent RunPodSandbox calls must not import twice.
static BUILD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Name of the built-in pause image.
pub fn builtin_name() -> String {
    format!("{REPOSITORY}:{}", env!("CARGO_PKG_VERSION"))
}

/// The pause binary: beside supd's own binary, else looked up in PATH.
pub fn pause_binary() -> Result<PathBuf> {
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join("sup-pause");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("sup-pause"))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Error::precondition("pause binary sup-pause: not found beside supd nor in PATH")
        })
}

/// Makes sure the built-in pause image is in namespace "k8s.io"; returns its name.
pub async fn ensure_image(services: &Arc<Services>) -> Result<String> {
    let name = builtin_name();
    if services.image_get(NAMESPACE, &name).is_ok() {
        return Ok(name);
    }
    let _building = BUILD.lock().await;
    if services.image_get(NAMESPACE, &name).is_ok() {
        return Ok(name);
    }
    import_builtin(services, &name, pause_binary()?).await?;
    tracing::info!(image = %name, "built the pause image");
    Ok(name)
}

/// Builds the image from `binary` and imports it as `name`, through the import path every
/// other import takes (so under the GC lock).
async fn import_builtin(services: &Arc<Services>, name: &str, binary: PathBuf) -> Result<()> {
    let archive = tokio::task::spawn_blocking(move || build_archive(&binary))
        .await
        .map_err(|e| Error::internal(format!("building the pause image: {e}")))?
        .map_err(|e| e.context("building the pause image"))?;
    let opts = ImportOptions {
        name: Some(name.to_string()),
        unpack: true,
        ..Default::default()
    };
    services
        .image_import(NAMESPACE, opts, Cursor::new(archive), |_| {})
        .await
        .map_err(|e| e.context("importing the pause image"))?;
    Ok(())
}

/// The sandbox image to use: `configured` when set (pulled if absent), else the built-in.
pub async fn sandbox_image(services: &Arc<Services>, configured: &str) -> Result<String> {
    if configured.is_empty() {
        return ensure_image(services).await;
    }
    if let Ok(img) = services.image_get(NAMESPACE, configured) {
        return Ok(img.name);
    }
    let opts = crate::service::images::pull::PullOptions {
        reference: configured.to_string(),
        unpack: true,
        ..Default::default()
    };
    let (_keep, cancel) = tokio::sync::watch::channel(false);
    let pulled = services
        .image_pull(NAMESPACE, opts, Arc::new(|_| {}), cancel)
        .await
        .map_err(|e| e.context("pulling the configured pause image"))?;
    Ok(pulled.image.name)
}

/// Files the binary needs at run time: the loader and libraries `ldd` names (none for a
/// static binary).
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = std::process::Command::new("ldd")
        .arg(binary)
        .output()
        .map_err(|e| Error::io("running ldd on the pause binary", e))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": nothing to add.
        return Ok(Vec::new());
    }
    Ok(parse_ldd(&text))
}

/// Absolute paths in `ldd` output: `name => /path (addr)` and `/path (addr)`.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') && !out.iter().any(|p: &PathBuf| p == Path::new(path)) {
            out.push(PathBuf::from(path));
        }
    }
    out
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    let what = format!("pause image file {}", path.display());
    let meta = std::fs::metadata(path).map_err(|e| Error::io(&what, e))?;
    if meta.len() > MAX_FILE {
        return Err(Error::precondition(format!(
            "{what}: larger than {MAX_FILE} bytes"
        )));
    }
    std::fs::read(path).map_err(|e| Error::io(&what, e))
}

fn tar_err(e: std::io::Error) -> Error {
    Error::io("writing the pause image archive", e)
}

/// Appends a regular file (or a directory when `data` is None) with fixed metadata, so the
/// same inputs always make the same layer digest.
fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    mode: u32,
    data: Option<&[u8]>,
) -> Result<()> {
    let mut h = tar::Header::new_ustar();
    h.set_entry_type(match data {
        Some(_) => tar::EntryType::Regular,
        None => tar::EntryType::Directory,
    });
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_size(data.map_or(0, |d| d.len() as u64));
    tar.append_data(&mut h, path, data.unwrap_or_default())
        .map_err(tar_err)
}

/// The layer: `/pause` and each library at its own absolute path, parents first.
fn build_layer(binary: &Path) -> Result<Vec<u8>> {
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "pause", 0o755, Some(&read_file(binary)?))?;
    let mut dirs: Vec<String> = Vec::new();
    for lib in shared_libraries(binary)? {
        let rel = lib.strip_prefix("/").unwrap_or(&lib);
        let mut parent = PathBuf::new();
        for comp in rel.parent().into_iter().flat_map(Path::components) {
            parent.push(comp);
            let d = format!("{}/", parent.display());
            if !dirs.contains(&d) {
                append(&mut tar, &d, 0o755, None)?;
                dirs.push(d);
            }
        }
        // Symlinks (the loader's usually is one) are followed: the image gets the bytes.
        append(
            &mut tar,
            &rel.display().to_string(),
            0o755,
            Some(&read_file(&lib)?),
        )?;
    }
    tar.into_inner().map_err(tar_err)
}

/// An OCI image layout (as a tar archive) of the pause image.
fn build_archive(binary: &Path) -> Result<Vec<u8>> {
    let layer = build_layer(binary)?;
    let layer_digest = digest::of_bytes(&layer);
    let host = crate::image::platform::host();
    let config = serde_json::to_vec(&json!({
        "architecture": host.architecture,
        "os": host.os,
        "config": {"Entrypoint": ["/pause"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
    }))
    .map_err(|e| Error::internal(e.to_string()))?;
    let config_digest = digest::of_bytes(&config);
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_MANIFEST,
        "config": {"mediaType": oci::OCI_CONFIG, "digest": config_digest, "size": config.len()},
        "layers": [{"mediaType": oci::OCI_LAYER_TAR, "digest": layer_digest, "size": layer.len()}],
    }))
    .map_err(|e| Error::internal(e.to_string()))?;
    let manifest_digest = digest::of_bytes(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": oci::OCI_INDEX,
        "manifests": [{
            "mediaType": oci::OCI_MANIFEST,
            "digest": manifest_digest,
            "size": manifest.len(),
        }],
    }))
    .map_err(|e| Error::internal(e.to_string()))?;
    let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
    let mut tar = tar::Builder::new(Vec::new());
    append(&mut tar, "oci-layout", 0o644, Some(layout))?;
    append(&mut tar, "index.json", 0o644, Some(&index))?;
    for (d, data) in [
        (&layer_digest, &layer),
        (&config_digest, &config),
        (&manifest_digest, &manifest),
    ] {
        let hex = d.trim_start_matches("sha256:");
        append(&mut tar, &format!("blobs/sha256/{hex}"), 0o644, Some(data))?;
    }
    tar.into_inner().map_err(tar_err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_pause_import_waits_for_a_collection_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::config::Config {
            root: dir.path().join("root"),
            state: dir.path().join("state"),
            default_snapshotter: "native".into(),
            ..Default::default()
        };
        let services = Arc::new(crate::daemon::open_services(&cfg).unwrap());
        let name = "sup.local/pause:gc-test";
        let collecting = services.gc_lock.write().await;
        let s = services.clone();
        let import =
            tokio::spawn(async move { import_builtin(&s, name, PathBuf::from("/bin/true")).await });
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert!(
            !import.is_finished(),
            "imported while a collection held the lock"
        );
        assert!(services.image_get(NAMESPACE, name).is_err());
        drop(collecting);
        import.await.unwrap().unwrap();
        services.image_get(NAMESPACE, name).unwrap();
    }

    #[test]
    fn ldd_output_gives_library_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }
}
