//! Annotation and label keys of function manifests (see docs/functions.md).

/// Label marking a Service as a vknf function (value `"true"`).
pub const FUNCTION_LABEL: &str = "vknf.io/function";
/// Name of a function Service's optional second port: the host's Open Inference Protocol port (REST
/// and gRPC for every function of the host), which agents list beside the function's own port.
pub const OIP_PORT_NAME: &str = "oip";
/// `appProtocol` of the Open Inference Protocol port: HTTP/2 without TLS (HTTP/1.1 is served too).
pub const OIP_APP_PROTOCOL: &str = "kubernetes.io/h2c";
/// Base64 SPIR-V of the kernel.
pub const SPIRV: &str = "vknf.io/spirv";
/// Kernel entry point (default `main`).
pub const ENTRY_POINT: &str = "vknf.io/entry-point";
/// The function family, for example `forest` or `generic`.
pub const KIND: &str = "vknf.io/kind";
/// Comma-separated ConfigMap names holding the model, in order.
pub const MODEL_CONFIGMAPS: &str = "vknf.io/model-configmaps";
/// Lower-case hex SHA-256 of the assembled model.
pub const MODEL_SHA256: &str = "vknf.io/model-sha256";
/// Lower-case hex SHA-256 of the feature schema the function's model was trained with (a traffic
/// classifier's `FeatureSchema` digest; `vknf manifest --schema` writes it). The model must carry the
/// same digest in its `.vkf` metadata ([`MODEL_SCHEMA_DIGEST`]), or the function is refused.
pub const FEATURE_SCHEMA_SHA256: &str = "vknf.io/feature-schema-sha256";
/// The `.vkf` metadata entry holding the digest of the feature schema the model was trained with
/// (`python/train_traffic.py` writes it into the ONNX model, `vknf compile-model` keeps it).
pub const MODEL_SCHEMA_DIGEST: &str = vknf_functions::families::forest::SCHEMA_DIGEST;
/// JSON object: specialization constant name or id to number or bool.
pub const SPEC_CONSTANTS: &str = "vknf.io/spec-constants";
/// JSON resource wiring of a generic kernel (the `generic` family's parameter `abi`).
pub const ABI: &str = "vknf.io/abi";
/// Prefix of the annotations that carry a family's own parameters.
pub const FAMILY_PARAM_PREFIX: &str = "vknf.io/";
/// Most rows per batch.
pub const MAX_BATCH_ROWS: &str = "vknf.io/max-batch-rows";
/// Longest a batch waits to fill up, in microseconds.
pub const MAX_WAIT_US: &str = "vknf.io/max-wait-us";
/// Label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Prefix of the binaryData key of model part `i` in the `i`-th ConfigMap.
pub const MODEL_PART_PREFIX: &str = "model.vkf.part";

/// Kubernetes' limit on the total size of an object's annotations (keys plus values).
pub const ANNOTATIONS_LIMIT: usize = 256 * 1024;
/// Kubernetes' limit on the size of a ConfigMap's data.
pub const CONFIGMAP_LIMIT: usize = 1024 * 1024;

/// The annotation carrying the family parameter `param`.
pub fn family_param(param: &str) -> String {
    format!("{FAMILY_PARAM_PREFIX}{param}")
}

/// The binaryData key of the `index`-th model part.
pub fn model_part_key(index: usize) -> String {
    format!("{MODEL_PART_PREFIX}{index}")
}
