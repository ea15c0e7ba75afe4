//! The OCI image manifest of a cairn bundle, and what a reader checks in it
//! before anything is verified: it is a plain OCI image manifest of the
//! bundle `artifactType`, each layer titled with a bundle file name and of
//! that file's media type (all from `contract::bundle::oci`), no name twice.
//! None of this is trusted: it only says where the signed manifest is.

use std::collections::BTreeMap;

use contract::bundle::{self, oci};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default)]
    pub media_type: Option<String>,
    #[serde(default)]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// A `sha256:<64 lowercase hex>` digest.
pub fn digest_ok(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl ImageManifest {
    pub fn parse(bytes: &[u8]) -> Result<ImageManifest, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("not an OCI image manifest: {e}"))
    }

    /// Checks the manifest is a cairn bundle and returns its layers by
    /// title.
    pub fn bundle_layers(&self) -> Result<BTreeMap<String, Descriptor>, String> {
        if self.schema_version != 2 {
            return Err(format!(
                "schemaVersion {} (expected 2)",
                self.schema_version
            ));
        }
        if self.media_type.as_deref() != Some(oci::MANIFEST_MEDIA_TYPE) {
            return Err(format!(
                "mediaType {:?} (expected {})",
                self.media_type,
                oci::MANIFEST_MEDIA_TYPE
            ));
        }
        if self.artifact_type.as_deref() != Some(oci::ARTIFACT_TYPE) {
            return Err(format!(
                "artifactType {:?} (expected {}): not a cairn bundle",
                self.artifact_type,
                oci::ARTIFACT_TYPE
            ));
        }
        let mut out = BTreeMap::new();
        for (i, l) in self.layers.iter().enumerate() {
            let title = l
                .annotations
                .get(oci::ANNOTATION_TITLE)
                .ok_or_else(|| format!("layer {i} has no {} annotation", oci::ANNOTATION_TITLE))?;
            let want = oci::media_type(title)
                .ok_or_else(|| format!("layer {i} is titled {title:?}, not a bundle file"))?;
            if l.media_type != want {
                return Err(format!(
                    "layer {title}: mediaType {:?} (expected {want})",
                    l.media_type
                ));
            }
            if !digest_ok(&l.digest) {
                return Err(format!(
                    "layer {title}: digest {:?} is not sha256:<64 hex>",
                    l.digest
                ));
            }
            if out.insert(title.clone(), l.clone()).is_some() {
                return Err(format!("layer {title} appears twice"));
            }
        }
        for name in [bundle::MANIFEST, bundle::SIGNATURE] {
            if !out.contains_key(name) {
                return Err(format!("no {name} layer"));
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(title: &str, media_type: &str) -> Descriptor {
        Descriptor {
            media_type: media_type.into(),
            digest: format!("sha256:{}", "0".repeat(64)),
            size: 1,
            annotations: BTreeMap::from([(oci::ANNOTATION_TITLE.into(), title.into())]),
        }
    }

    fn image(layers: Vec<Descriptor>) -> ImageManifest {
        ImageManifest {
            schema_version: 2,
            media_type: Some(oci::MANIFEST_MEDIA_TYPE.into()),
            artifact_type: Some(oci::ARTIFACT_TYPE.into()),
            config: layer("x", oci::EMPTY_MEDIA_TYPE),
            layers,
            annotations: BTreeMap::new(),
        }
    }

    fn bundle() -> Vec<Descriptor> {
        bundle::FILES
            .iter()
            .map(|n| layer(n, oci::media_type(n).unwrap()))
            .collect()
    }

    #[test]
    fn accepts_a_bundle_and_refuses_what_is_not_one() {
        assert_eq!(image(bundle()).bundle_layers().unwrap().len(), 6);

        let mut i = image(bundle());
        i.artifact_type = Some("application/vnd.other".into());
        assert!(i
            .bundle_layers()
            .unwrap_err()
            .contains("not a cairn bundle"));

        let mut l = bundle();
        l[3].media_type = oci::MEDIA_UKI.into();
        let e = image(l).bundle_layers().unwrap_err();
        assert!(e.contains("layer rootfs.img: mediaType"), "{e}");

        let mut l = bundle();
        l.push(layer("evil.sh", oci::MEDIA_UKI));
        let e = image(l).bundle_layers().unwrap_err();
        assert!(e.contains("\"evil.sh\", not a bundle file"), "{e}");

        let mut l = bundle();
        l.push(l[2].clone());
        assert!(image(l)
            .bundle_layers()
            .unwrap_err()
            .contains("appears twice"));

        let e = image(bundle()[1..].to_vec()).bundle_layers().unwrap_err();
        assert!(e.contains("no manifest.json layer"), "{e}");
    }
}
