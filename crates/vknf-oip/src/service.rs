//! What both protocols serve, apart from how they encode it: health, server and model metadata, model
//! lookup by name, and inference through the function runtime.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use prometheus_client::metrics::counter::Counter;
use serde::Serialize;
use vknf_runtime::{Call, FunctionHandle, FunctionInfo, MemoryBudget, Rows, Runtime};

use crate::error::OipError;
use crate::names::{function_names, model_name};
use crate::reply::{Outputs, call};
use crate::schema::{ModelMetadata, output_mask};

/// The extension this server implements beyond the required API.
pub const BINARY_TENSOR_DATA: &str = "binary_tensor_data";

/// Server metadata, as the specification lays it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerMetadata {
    /// Always `vknf`.
    pub name: &'static str,
    /// vknf's version.
    pub version: &'static str,
    /// Extensions implemented.
    pub extensions: Vec<&'static str>,
}

/// The protocol of a request, for the metrics' `protocol` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/REST with JSON (and binary tensors).
    Rest,
    /// gRPC.
    Grpc,
}

impl Protocol {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            Protocol::Rest => "rest",
            Protocol::Grpc => "grpc",
        }
    }
}

/// Whether the host's functions are all loaded; the server that owns the functions knows.
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// A served model: its function and the schema of the version serving now.
#[derive(Clone)]
pub struct Model {
    /// The function.
    pub function: FunctionHandle,
    /// The schema requests are checked against (a hot reload may change it; the runtime checks
    /// every call against the version that runs it).
    pub info: FunctionInfo,
    counters: Arc<Counters>,
}

struct Counters {
    rest: Counter,
    grpc: Counter,
}

impl Model {
    /// The model's v2 name.
    pub fn name(&self) -> String {
        model_name(self.function.name())
    }

    /// Counts one request of `protocol`.
    pub fn count(&self, protocol: Protocol) {
        match protocol {
            Protocol::Rest => self.counters.rest.inc(),
            Protocol::Grpc => self.counters.grpc.inc(),
        };
    }
}

struct Known {
    function: FunctionHandle,
    counters: Arc<Counters>,
}

/// The inference service over a function runtime, shared by the REST and gRPC front ends.
pub struct Inference {
    runtime: Runtime,
    readiness: Readiness,
    /// Model names already resolved, so that a request does not wait on the runtime's lock (held while
    /// a function loads). Only names of loaded functions enter, so it holds at most one entry per
    /// function and name form.
    known: RwLock<HashMap<String, Known>>,
}

impl Inference {
    /// The service of `runtime`'s functions; `readiness` says whether the host is ready.
    pub fn new(runtime: Runtime, readiness: Readiness) -> Inference {
        Inference {
            runtime,
            readiness,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// The process's memory budget, which responses being sent are charged to.
    pub fn budget(&self) -> &MemoryBudget {
        self.runtime.budget()
    }

    /// The server answers.
    pub fn live(&self) -> bool {
        true
    }

    /// Every function the host should serve is loaded.
    pub fn ready(&self) -> bool {
        (self.readiness)()
    }

    /// Server metadata.
    pub fn server_metadata(&self) -> ServerMetadata {
        ServerMetadata {
            name: "vknf",
            version: env!("CARGO_PKG_VERSION"),
            extensions: vec![BINARY_TENSOR_DATA],
        }
    }

    /// The model called `name`; `version` must be empty (functions name no versions).
    pub async fn model(&self, name: &str, version: &str) -> Result<Model, OipError> {
        let function = self.lookup(name).await?;
        if !version.is_empty() {
            return Err(OipError::UnknownVersion {
                model: name.to_owned(),
                version: version.to_owned(),
            });
        }
        // A quarantined function has no engine, hence no schema, for a while: it is unavailable (503,
        // UNAVAILABLE), not unknown.
        let info = match function.function.info() {
            Some(info) => info,
            None => {
                return Err(match function.function.quarantined() {
                    Some(why) => OipError::Call(vknf_runtime::CallError::Quarantined(why)),
                    None => OipError::UnknownModel(name.to_owned()),
                });
            }
        };
        Ok(Model {
            function: function.function,
            info,
            counters: function.counters,
        })
    }

    /// Whether the model is ready: loaded, and not failed after a device loss.
    pub async fn model_ready(&self, name: &str, version: &str) -> Result<bool, OipError> {
        let model = match self.model(name, version).await {
            Err(OipError::Call(vknf_runtime::CallError::Quarantined(_))) => return Ok(false),
            other => other?,
        };
        Ok(!model.function.is_closing() && self.runtime.failure(model.function.name()).is_none())
    }

    /// The model's metadata.
    pub async fn model_metadata(&self, name: &str, version: &str) -> Result<ModelMetadata, OipError> {
        let model = self.model(name, version).await?;
        Ok(ModelMetadata::of(model.function.name(), &model.info))
    }

    /// Runs `rows` through the model, computing the outputs in `selected`.
    pub async fn infer(&self, model: &Model, rows: Rows, selected: &[usize]) -> Result<Outputs, OipError> {
        let call_outputs = output_mask(selected);
        Ok(call(&model.function, Call::new(rows, call_outputs)).await?)
    }

    /// Counts an error answer of `protocol` for `function` (`-` before a function is known).
    pub fn count_error(&self, protocol: Protocol, function: Option<&Model>, error: &OipError) {
        let function = function.map_or("-", |m| m.function.name());
        self.runtime
            .metrics()
            .front_end_error(protocol.label(), function, error.code_name());
    }

    async fn lookup(&self, name: &str) -> Result<Known, OipError> {
        if let Some(known) = self.known.read().get(name)
            && !known.function.is_closing()
        {
            return Ok(Known {
                function: known.function.clone(),
                counters: known.counters.clone(),
            });
        }
        for candidate in function_names(name) {
            if let Some(function) = self.runtime.get(&candidate).await {
                let metrics = self.runtime.metrics();
                let counters = Arc::new(Counters {
                    rest: metrics.front_end_requests(Protocol::Rest.label(), function.name()),
                    grpc: metrics.front_end_requests(Protocol::Grpc.label(), function.name()),
                });
                let mut known = self.known.write();
                // Names of removed functions go with them, so the map never outgrows the functions.
                known.retain(|_, k| !k.function.is_closing());
                known.insert(
                    name.to_owned(),
                    Known {
                        function: function.clone(),
                        counters: counters.clone(),
                    },
                );
                return Ok(Known { function, counters });
            }
        }
        Err(OipError::UnknownModel(name.to_owned()))
    }
}
