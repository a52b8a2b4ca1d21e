//! Turning the cluster's objects for this host into the server's desired state with the very
//! resolver `vknf serve` uses ([`vknf_manifest::resolve`]), in memory: validation, model
//! assembly, digest checks and port clashes are exactly those of `vknf serve`, without a trip
//! through YAML and the disk. The same objects can also be written as a manifest directory (the
//! agent's state directory, which an operator can inspect or serve with `vknf serve
//! --manifests`); that copy is for people and is never read back.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vknf_manifest::{FunctionKey, HostManifest, ObjectSet, ParseOptions, Placement, RejectedFunction, resolve};

use crate::keys::STATUS_PREFIX;

/// Why the state directory could not be written.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// Writing the state directory failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// An object did not serialize.
    #[error("cannot serialize {object}: {source}")]
    Serialize {
        /// Which object.
        object: String,
        /// The YAML error.
        #[source]
        source: serde_norway::Error,
    },
}

/// The parts of a Service that describe a function; everything else (status annotations,
/// managed fields, cluster IPs) is dropped so that it neither triggers reloads nor ends up on
/// disk.
pub fn function_service(service: &Service) -> Service {
    let annotations = service.metadata.annotations.as_ref().map(|all| {
        all.iter()
            .filter(|(k, _)| !k.starts_with(STATUS_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
    });
    let spec = service.spec.as_ref().map(|spec| ServiceSpec {
        ports: spec.ports.clone(),
        selector: spec.selector.clone(),
        ..Default::default()
    });
    Service {
        metadata: ObjectMeta {
            name: service.metadata.name.clone(),
            namespace: service.metadata.namespace.clone(),
            uid: service.metadata.uid.clone(),
            labels: service.metadata.labels.clone(),
            annotations,
            ..Default::default()
        },
        spec,
        status: None,
    }
}

/// The parts of a ConfigMap the resolver uses.
pub fn model_configmap(configmap: &ConfigMap) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: configmap.metadata.name.clone(),
            namespace: configmap.metadata.namespace.clone(),
            ..Default::default()
        },
        binary_data: configmap.binary_data.clone(),
        data: configmap.data.clone(),
        immutable: None,
    }
}

/// The functions (trimmed with [`function_service`]) with their model ConfigMaps, as the server
/// will serve them. CPU-bound (SPIR-V decoding, model assembly and digests): run it off the
/// async runtime when models are large.
pub fn resolve_functions(services: &[Service], configmaps: &[Arc<ConfigMap>], options: &ParseOptions) -> HostManifest {
    let mut objects = ObjectSet::default();
    for service in services {
        objects.add_service(service.clone());
    }
    for configmap in configmaps {
        objects.add_configmap(model_configmap(configmap));
    }
    // Placement was decided by the agent; every given function is for this host.
    resolve(&objects, &Placement::All, options)
}

fn file_name(prefix: &str, meta: &ObjectMeta) -> String {
    format!(
        "{prefix}.{}.{}.yaml",
        meta.namespace.as_deref().unwrap_or("default"),
        meta.name.as_deref().unwrap_or("unnamed")
    )
}

fn write_yaml<T: serde::Serialize>(dir: &Path, name: &str, object: &T) -> Result<(), RenderError> {
    let text = serde_norway::to_string(object).map_err(|source| RenderError::Serialize {
        object: name.to_owned(),
        source,
    })?;
    // Write then rename, so that an operator reading the directory never sees half a file.
    let temporary = dir.join(format!(".{name}.tmp"));
    let path = dir.join(name);
    std::fs::write(&temporary, text).map_err(|source| RenderError::Write {
        path: temporary.clone(),
        source,
    })?;
    std::fs::rename(&temporary, &path).map_err(|source| RenderError::Write { path, source })
}

/// Writes the functions (trimmed with [`function_service`]) and their model ConfigMaps into
/// `dir` as a manifest directory that `vknf serve --manifests` reads, replacing what an earlier
/// write left. Blocking: run it off the async runtime.
pub fn write_state_dir(dir: &Path, services: &[Service], configmaps: &[Arc<ConfigMap>]) -> Result<(), RenderError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| RenderError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut written = Vec::new();
    for service in services {
        let name = file_name("service", &service.metadata);
        write_yaml(dir, &name, service)?;
        written.push(name);
    }
    for configmap in configmaps {
        let name = file_name("configmap", &configmap.metadata);
        write_yaml(dir, &name, &model_configmap(configmap))?;
        written.push(name);
    }
    for entry in std::fs::read_dir(dir).map_err(io(dir))? {
        let path = entry.map_err(io(dir))?.path();
        let stale = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| !written.iter().any(|w| w == n));
        if stale && path.is_file() {
            std::fs::remove_file(&path).map_err(io(&path))?;
        }
    }
    Ok(())
}

/// A copy of a host manifest (the server's type is not `Clone`).
pub fn clone_manifest(manifest: &HostManifest) -> HostManifest {
    HostManifest {
        functions: manifest.functions.clone(),
        rejected: manifest
            .rejected
            .iter()
            .map(|r| RejectedFunction {
                key: r.key.clone(),
                error: r.error.clone(),
            })
            .collect(),
        elsewhere: manifest.elsewhere.clone(),
    }
}

/// Keys of every function a manifest mentions (valid or rejected).
pub fn manifest_keys(manifest: &HostManifest) -> Vec<FunctionKey> {
    manifest
        .functions
        .iter()
        .map(|f| f.spec.key.clone())
        .chain(manifest.rejected.iter().map(|r| r.key.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::ByteString;
    use k8s_openapi::api::core::v1::ServicePort;
    use vknf_manifest::{ManifestRequest, build_objects, load_dir};

    use super::*;

    fn service_with_status() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                resource_version: Some("42".into()),
                labels: Some([("vknf.io/function".to_owned(), "true".to_owned())].into()),
                annotations: Some(
                    [
                        ("vknf.io/kind".to_owned(), "forest".to_owned()),
                        ("vknf.io/status-gpu-1".to_owned(), "{}".to_owned()),
                    ]
                    .into(),
                ),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.96.0.10".into()),
                ports: Some(vec![ServicePort {
                    port: 7000,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// A valid forest function `prod/classifier` on port 7001 whose model spans several
    /// ConfigMaps.
    fn valid_function(model: &[u8]) -> (Service, Vec<Arc<ConfigMap>>) {
        let values = build_objects(&ManifestRequest {
            name: "classifier".to_owned(),
            namespace: "prod".to_owned(),
            port: 7001,
            oip_port: None,
            kind: "forest".to_owned(),
            spirv: vknf_kernels::by_name("forest").expect("forest kernel"),
            entry_point: None,
            model: Some(model),
            spec_constants: None,
            params: Default::default(),
            max_batch_rows: Some(256),
            max_wait_us: Some(100),
            node_addresses: Vec::new(),
            part_bytes: model.len() / 3 + 1,
        })
        .unwrap();
        let mut service = None;
        let mut configmaps = Vec::new();
        for value in values {
            match value["kind"].as_str() {
                Some("Service") => service = Some(serde_norway::from_value(value).unwrap()),
                Some("ConfigMap") => configmaps.push(Arc::new(serde_norway::from_value(value).unwrap())),
                _ => {}
            }
        }
        (function_service(&service.unwrap()), configmaps)
    }

    #[test]
    fn status_annotations_and_cluster_fields_do_not_reach_the_loader() {
        let trimmed = function_service(&service_with_status());
        let annotations = trimmed.metadata.annotations.as_ref().unwrap();
        assert!(annotations.contains_key("vknf.io/kind"));
        assert!(!annotations.keys().any(|k| k.starts_with(STATUS_PREFIX)));
        assert_eq!(trimmed.metadata.resource_version, None);
        assert_eq!(trimmed.spec.as_ref().unwrap().cluster_ip, None);
        assert_eq!(trimmed.spec.as_ref().unwrap().ports.as_ref().unwrap()[0].port, 7000);
        // Another agent writing its status must not look like a change of the function.
        let mut other = service_with_status();
        other
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert("vknf.io/status-gpu-2".into(), "{}".into());
        other.metadata.resource_version = Some("43".into());
        assert_eq!(function_service(&other), trimmed);
    }

    #[test]
    fn functions_resolve_in_memory_as_vknf_serve_reads_them_from_the_state_directory() {
        let model: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (valid, configmaps) = valid_function(&model);
        assert!(configmaps.len() > 1, "the model spans several ConfigMaps");
        // Lacks its SPIR-V: rejected on its own, the others still resolve.
        let broken = function_service(&service_with_status());
        let services = [valid, broken];
        let options = ParseOptions::default();

        let resolved = resolve_functions(&services, &configmaps, &options);
        assert_eq!(resolved.functions.len(), 1);
        let function = &resolved.functions[0];
        assert_eq!(function.spec.key.to_string(), "prod/classifier");
        assert_eq!(function.spec.port, 7001);
        assert_eq!(function.model.as_deref(), Some(&model[..]));
        assert_eq!(resolved.rejected.len(), 1);
        assert_eq!(resolved.rejected[0].key.to_string(), "prod/web");

        let dir = tempfile::tempdir().unwrap();
        write_state_dir(dir.path(), &services, &configmaps).unwrap();
        let served = load_dir(dir.path(), &Placement::All, &options).unwrap();
        let specs = |m: &HostManifest| m.functions.iter().map(|f| f.spec.clone()).collect::<Vec<_>>();
        let models = |m: &HostManifest| m.functions.iter().map(|f| f.model.clone()).collect::<Vec<_>>();
        let rejected = |m: &HostManifest| {
            m.rejected
                .iter()
                .map(|r| (r.key.clone(), r.error.clone()))
                .collect::<Vec<_>>()
        };
        assert_eq!(specs(&served), specs(&resolved));
        assert_eq!(models(&served), models(&resolved));
        assert_eq!(rejected(&served), rejected(&resolved));
        let copy = clone_manifest(&resolved);
        assert_eq!(manifest_keys(&copy), manifest_keys(&resolved));
    }

    #[test]
    fn writing_the_state_directory_replaces_the_previous_write() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join("service.prod.gone.yaml");
        std::fs::write(&leftover, "not: yaml: [").unwrap();
        let configmap = Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some("m".into()),
                namespace: Some("prod".into()),
                resource_version: Some("7".into()),
                ..Default::default()
            },
            binary_data: Some([("model.vkf.part0".to_owned(), ByteString(vec![1, 2, 3]))].into()),
            ..Default::default()
        });
        write_state_dir(dir.path(), &[function_service(&service_with_status())], &[configmap]).unwrap();
        assert!(!leftover.exists());
        let written = std::fs::read_to_string(dir.path().join("configmap.prod.m.yaml")).unwrap();
        let read_back: ConfigMap = serde_norway::from_str(&written).unwrap();
        assert_eq!(read_back.binary_data.unwrap()["model.vkf.part0"].0, vec![1, 2, 3]);
        // Only what the resolver uses is kept.
        assert_eq!(read_back.metadata.resource_version, None);
        assert!(dir.path().join("service.prod.web.yaml").exists());
    }
}
