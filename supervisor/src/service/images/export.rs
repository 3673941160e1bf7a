//! Export of images as an OCI image layout archive (a tar stream): `oci-layout`,
//! `index.json` naming each image, then every blob the images reach. Import reads it back.

use std::collections::BTreeSet;
use std::io::Write;

use crate::error::{Error, Result};
use crate::image::oci::{self, Index, JsonDescriptor};
use crate::image::platform;
use crate::service::Services;
use crate::store::{Descriptor, Platform};

use super::{parse_doc, Doc};

fn header(path: &str, size: u64, mode: u32) -> Result<tar::Header> {
    let mut h = tar::Header::new_ustar();
    h.set_path(path)
        .map_err(|e| Error::internal(format!("tar header {path:?}: {e}")))?;
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    Ok(h)
}

impl Services {
    /// Writes the archive of `names` (blocking). With `want`, only that platform's manifests
    /// and blobs are written (the indexes are kept whole).
    pub fn export_blocking(
        &self,
        ns: &str,
        names: &[String],
        want: Option<&Platform>,
        out: &mut dyn Write,
    ) -> Result<()> {
        if names.is_empty() {
            return Err(Error::invalid("export: name at least one image"));
        }
        let present = |d: &str| self.content.has(ns, d);
        let mut index = Index {
            schema_version: 2,
            media_type: oci::OCI_INDEX.to_string(),
            manifests: Vec::new(),
            annotations: Default::default(),
        };
        let mut blobs = BTreeSet::new();
        for n in names {
            let image = self.image_get(ns, n)?;
            self.collect(&image.target, want, &present, &mut blobs)?;
            let mut d = JsonDescriptor::from_store(&image.target);
            d.annotations
                .insert(oci::ANNOTATION_IMAGE_NAME.to_string(), image.name.clone());
            let tag = crate::image::reference::parse_normalized(&image.name)?
                .tag
                .unwrap_or_else(|| "latest".to_string());
            d.annotations
                .insert(oci::ANNOTATION_REF_NAME.to_string(), tag);
            index.manifests.push(d);
        }
        let mut tar = tar::Builder::new(out);
        let layout = br#"{"imageLayoutVersion":"1.0.0"}"#;
        tar.append(
            &header("oci-layout", layout.len() as u64, 0o644)?,
            &layout[..],
        )
        .map_err(|e| Error::io("writing the archive", e))?;
        let index_json = serde_json::to_vec(&index)?;
        tar.append(
            &header("index.json", index_json.len() as u64, 0o644)?,
            &index_json[..],
        )
        .map_err(|e| Error::io("writing the archive", e))?;
        for d in blobs {
            let hex = crate::content::digest::hex_of(&d)?;
            let f = self.content.open(ns, &d)?;
            let len = f
                .metadata()
                .map_err(|e| Error::io(format!("blob {d}"), e))?
                .len();
            let h = header(&format!("blobs/sha256/{hex}"), len, 0o444)?;
            tar.append(&h, std::io::BufReader::with_capacity(1 << 20, f))
                .map_err(|e| Error::io("writing the archive", e))?;
        }
        tar.finish()
            .map_err(|e| Error::io("writing the archive", e))?;
        Ok(())
    }

    /// Adds what `target` reaches to `blobs`; index entries are limited to `want` if given.
    fn collect(
        &self,
        target: &Descriptor,
        want: Option<&Platform>,
        present: &dyn Fn(&str) -> Result<bool>,
        blobs: &mut BTreeSet<String>,
    ) -> Result<()> {
        let mut todo = vec![target.clone()];
        while let Some(desc) = todo.pop() {
            if !blobs.insert(desc.digest.clone()) {
                continue;
            }
            let data = self.read_document(&desc)?;
            match parse_doc(&desc, &data)? {
                Doc::Index(ix) => {
                    let children: Vec<Descriptor> =
                        ix.manifests.iter().map(|m| m.to_store()).collect();
                    for c in &children {
                        if !present(&c.digest)? {
                            continue;
                        }
                        let wanted = match (want, &c.platform) {
                            (Some(w), Some(p)) => platform::matches(w, p),
                            _ => true,
                        };
                        if wanted {
                            todo.push(c.clone());
                        }
                    }
                }
                Doc::Manifest(m) => {
                    for d in std::iter::once(&m.config).chain(m.layers.iter()) {
                        if !present(&d.digest)? {
                            return Err(Error::precondition(format!(
                                "manifest {} refers to {}, which is not in the content store",
                                desc.digest, d.digest
                            )));
                        }
                        blobs.insert(d.digest.clone());
                    }
                }
            }
        }
        Ok(())
    }
}
