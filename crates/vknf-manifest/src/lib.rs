//! # vknf-manifest
//!
//! Functions described as Kubernetes objects (the paper's Fig. 4 as valid manifests): a
//! selector-less `Service` labelled `vknf.io/function: "true"` whose annotations carry the kernel
//! and its configuration, ConfigMaps carrying the model, and Endpoints or EndpointSlices naming
//! the hosts that serve it. The schema is documented in docs/functions.md.

pub mod annotations;
mod generate;
mod parse;
mod spec;

pub use generate::{DEFAULT_PART_BYTES, GenerateError, ManifestRequest, build_objects, generate_yaml};
pub use parse::{
    HostManifest, MAX_BATCH_ROWS_LIMIT, MAX_WAIT_US_LIMIT, ManifestError, ManifestFunction, ObjectSet, ParseOptions,
    Placement, RejectedFunction, SpecError, hex, load_dir, manifest_files, model_schema_digest, parse_spirv,
    read_objects, resolve, resolve_function,
};
pub use spec::{FunctionKey, ModelRef, SchemaBinding, ServedSpec};
