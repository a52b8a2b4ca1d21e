//! The feature schema: the vocabulary learnt from a training set, the selected features and
//! their names, with a digest that binds it to the model trained on it.
//!
//! It is written by `python/train_traffic.py` (or [`FeatureSchema::from_training`]) as JSON:
//!
//! ```json
//! {"format": "vknf-h2-schema", "version": 1, "window": 20, "rarest": 20,
//!  "server_sizes": [[size, count], ...], "client_sizes": [[size, count], ...],
//!  "feature_names": [...], "selected": [i, ...], "classes": [...], "digest": "<sha256 hex>"}
//! ```
//!
//! The digest is the SHA-256 of a canonical text, one `key=value` line each (sizes as
//! `size:count`, lists comma-separated, class labels as hex of their UTF-8), so that Python and
//! Rust compute it alike without agreeing on JSON formatting:
//!
//! ```text
//! vknf-h2-schema
//! version=1
//! window=20
//! rarest=20
//! server=<size:count,...>
//! client=<size:count,...>
//! selected=<i,...>
//! classes=<hex,...>
//! ```
//!
//! Feature names are derived from the vocabulary, so they are checked rather than hashed.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::h2::{RARE_SIZES, RowScratch, WINDOW, base_feature_names, base_features, base_features_into};

/// The schema file's `format` value.
pub const SCHEMA_FORMAT: &str = "vknf-h2-schema";
/// The schema file's `version` value.
pub const SCHEMA_VERSION: u32 = 1;

/// Record sizes of one direction seen in training, with how often, sorted by size.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SizeCounts(Vec<(u32, u64)>);

impl SizeCounts {
    /// From (size, count) pairs; sorted by size, and counts of repeated sizes added.
    pub fn new(pairs: impl IntoIterator<Item = (u32, u64)>) -> Self {
        let mut map: BTreeMap<u32, u64> = BTreeMap::new();
        for (size, count) in pairs {
            *map.entry(size).or_default() += count;
        }
        Self(map.into_iter().collect())
    }

    /// The position of `size` among the sizes (its histogram bin), `None` when never seen.
    pub fn index(&self, size: u32) -> Option<usize> {
        self.find(size).map(|(index, _)| index)
    }

    /// The position of `size` among the sizes and how often it was seen in training, `None`
    /// when never: [`SizeCounts::index`] and [`SizeCounts::count`] with one search.
    pub fn find(&self, size: u32) -> Option<(usize, u64)> {
        let i = self.0.binary_search_by_key(&size, |&(s, _)| s).ok()?;
        Some((i, self.0[i].1))
    }

    /// How often `size` was seen in training (0 when never).
    pub fn count(&self, size: u32) -> u64 {
        self.find(size).map_or(0, |(_, count)| count)
    }

    /// Sizes and counts, by size.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().copied()
    }

    /// Distinct sizes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when no size was seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn is_sorted_strictly(&self) -> bool {
        self.0.windows(2).all(|w| w[0].0 < w[1].0)
    }
}

/// Errors of loading or checking a schema.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The file could not be read.
    #[error("reading schema {path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// Not valid JSON of the schema's shape.
    #[error("schema is not valid: {0}")]
    Json(#[from] serde_json::Error),
    /// Another format or version.
    #[error(
        "schema has format {format:?} version {version}; this build reads {SCHEMA_FORMAT:?} version {SCHEMA_VERSION}"
    )]
    Version {
        /// The file's format.
        format: String,
        /// The file's version.
        version: u32,
    },
    /// The stored digest is not the digest of the content: the file was edited or damaged.
    #[error("schema digest {stored} does not match its content (computed {computed})")]
    Corrupt {
        /// The digest in the file.
        stored: String,
        /// The digest of the content.
        computed: String,
    },
    /// The schema and the model were not made together.
    #[error("schema digest {schema} does not match the model's {model}: the model was trained with another schema")]
    ModelMismatch {
        /// The schema's digest.
        schema: String,
        /// The digest the model was bound to.
        model: String,
    },
    /// Inconsistent content (names, indices, parameters).
    #[error("schema is inconsistent: {0}")]
    Invalid(String),
}

/// The vocabulary, selection and names of the features a model was trained on.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FeatureSchema {
    /// Always [`SCHEMA_FORMAT`].
    pub format: String,
    /// Always [`SCHEMA_VERSION`].
    pub version: u32,
    /// Records per chunk window (20).
    pub window: usize,
    /// Rarest sizes kept per direction (20).
    pub rarest: usize,
    /// Server (positive) record sizes of the training set.
    pub server_sizes: SizeCounts,
    /// Client (negative, stored as absolute) record sizes of the training set.
    pub client_sizes: SizeCounts,
    /// Names of all base features, in order.
    pub feature_names: Vec<String>,
    /// Indices of the base features the model takes, increasing.
    pub selected: Vec<usize>,
    /// Class labels, in the model's order.
    pub classes: Vec<String>,
    /// SHA-256 of the canonical text (see the module docs), lowercase hex.
    pub digest: String,
}

impl FeatureSchema {
    /// Builds a schema from training sequences, with every feature selected.
    pub fn from_training<'a>(sequences: impl IntoIterator<Item = &'a [i32]>, classes: Vec<String>) -> Self {
        let mut server: BTreeMap<u32, u64> = BTreeMap::new();
        let mut client: BTreeMap<u32, u64> = BTreeMap::new();
        for sequence in sequences {
            for &el in sequence {
                let map = if el >= 0 { &mut server } else { &mut client };
                *map.entry(el.unsigned_abs()).or_default() += 1;
            }
        }
        let server_sizes = SizeCounts::new(server);
        let client_sizes = SizeCounts::new(client);
        let feature_names = base_feature_names(&server_sizes, &client_sizes);
        let selected = (0..feature_names.len()).collect();
        let mut schema = Self {
            format: SCHEMA_FORMAT.into(),
            version: SCHEMA_VERSION,
            window: WINDOW,
            rarest: RARE_SIZES,
            server_sizes,
            client_sizes,
            feature_names,
            selected,
            classes,
            digest: String::new(),
        };
        schema.digest = schema.compute_digest();
        schema
    }

    /// Keeps only the base features at `indices` (sorted and deduplicated here).
    pub fn select(&mut self, mut indices: Vec<usize>) -> Result<(), SchemaError> {
        indices.sort_unstable();
        indices.dedup();
        if indices.last().is_some_and(|&i| i >= self.feature_names.len()) {
            return Err(SchemaError::Invalid("selected index past the last feature".into()));
        }
        self.selected = indices;
        self.digest = self.compute_digest();
        Ok(())
    }

    /// Loads and checks a schema file.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, SchemaError> {
        let name = path.as_ref().display().to_string();
        let text = std::fs::read_to_string(path.as_ref()).map_err(|source| SchemaError::Io { path: name, source })?;
        Self::from_json(&text)
    }

    /// Parses and checks a schema.
    pub fn from_json(text: &str) -> Result<Self, SchemaError> {
        let schema: Self = serde_json::from_str(text)?;
        schema.check()?;
        Ok(schema)
    }

    /// The schema as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Checks that a model bound to `model_digest` was trained with this schema.
    pub fn check_model_digest(&self, model_digest: &str) -> Result<(), SchemaError> {
        if self.digest.eq_ignore_ascii_case(model_digest.trim()) {
            Ok(())
        } else {
            Err(SchemaError::ModelMismatch {
                schema: self.digest.clone(),
                model: model_digest.trim().to_string(),
            })
        }
    }

    /// Features the model takes (the selected ones).
    pub fn len(&self) -> usize {
        self.selected.len()
    }

    /// True when no feature is selected.
    pub fn is_empty(&self) -> bool {
        self.selected.is_empty()
    }

    /// Names of the selected features, in the model's column order.
    pub fn selected_names(&self) -> Vec<&str> {
        self.selected.iter().map(|&i| self.feature_names[i].as_str()).collect()
    }

    /// All base features of a signed record sequence (before selection), as f64.
    pub fn base_row(&self, records: &[i32]) -> Vec<f64> {
        base_features(records, &self.server_sizes, &self.client_sizes)
    }

    /// The model's input row for a signed record sequence.
    pub fn row(&self, records: &[i32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.selected.len());
        self.row_into(records, &mut RowScratch::default(), &mut out);
        out
    }

    /// [`Self::row`] into `out` (cleared first), reusing `scratch`: no allocation per flow once
    /// the buffers have grown.
    pub fn row_into(&self, records: &[i32], scratch: &mut RowScratch, out: &mut Vec<f32>) {
        let mut base = std::mem::take(&mut scratch.base);
        base_features_into(records, &self.server_sizes, &self.client_sizes, scratch, &mut base);
        out.clear();
        out.extend(self.selected.iter().map(|&i| base[i] as f32));
        scratch.base = base;
    }

    /// The canonical text's SHA-256, lowercase hex.
    pub fn compute_digest(&self) -> String {
        let mut text = String::new();
        let pairs = |counts: &SizeCounts| {
            counts
                .iter()
                .map(|(s, c)| format!("{s}:{c}"))
                .collect::<Vec<_>>()
                .join(",")
        };
        let _ = writeln!(text, "{SCHEMA_FORMAT}");
        let _ = writeln!(text, "version={}", self.version);
        let _ = writeln!(text, "window={}", self.window);
        let _ = writeln!(text, "rarest={}", self.rarest);
        let _ = writeln!(text, "server={}", pairs(&self.server_sizes));
        let _ = writeln!(text, "client={}", pairs(&self.client_sizes));
        let selected: Vec<String> = self.selected.iter().map(|i| i.to_string()).collect();
        let _ = writeln!(text, "selected={}", selected.join(","));
        let classes: Vec<String> = self.classes.iter().map(|c| hex::encode(c.as_bytes())).collect();
        let _ = writeln!(text, "classes={}", classes.join(","));
        hex::encode(Sha256::digest(text.as_bytes()))
    }

    fn check(&self) -> Result<(), SchemaError> {
        if self.format != SCHEMA_FORMAT || self.version != SCHEMA_VERSION {
            return Err(SchemaError::Version {
                format: self.format.clone(),
                version: self.version,
            });
        }
        let computed = self.compute_digest();
        if !computed.eq_ignore_ascii_case(&self.digest) {
            return Err(SchemaError::Corrupt {
                stored: self.digest.clone(),
                computed,
            });
        }
        if self.window != WINDOW || self.rarest != RARE_SIZES {
            return Err(SchemaError::Invalid(format!(
                "window {} and rarest {} (this build computes {WINDOW} and {RARE_SIZES})",
                self.window, self.rarest
            )));
        }
        if !self.server_sizes.is_sorted_strictly() || !self.client_sizes.is_sorted_strictly() {
            return Err(SchemaError::Invalid(
                "size lists must be sorted by size, without repeats".into(),
            ));
        }
        if self.feature_names != base_feature_names(&self.server_sizes, &self.client_sizes) {
            return Err(SchemaError::Invalid("feature names do not match the vocabulary".into()));
        }
        if !self.selected.windows(2).all(|w| w[0] < w[1])
            || self.selected.last().is_some_and(|&i| i >= self.feature_names.len())
        {
            return Err(SchemaError::Invalid(
                "selected indices must increase and name existing features".into(),
            ));
        }
        Ok(())
    }
}
