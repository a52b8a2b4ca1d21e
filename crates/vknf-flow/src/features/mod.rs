//! H2Classifier features (Brissaud et al., as used by Haavisto et al. 2021) and the schema that
//! carries their vocabulary with the model.

mod h2;
mod schema;

pub use h2::{RARE_SIZES, RowScratch, WINDOW, base_feature_names, base_features, base_features_into};
pub use schema::{FeatureSchema, SCHEMA_FORMAT, SCHEMA_VERSION, SchemaError, SizeCounts};
