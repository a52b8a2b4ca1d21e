//! Turning the cluster's objects for this host into the server's desired state with the very
//! reader `vknf serve` uses: the objects are written as a manifest directory (the agent's
//! state directory, which an operator can inspect or serve with `vknf serve --manifests`) and
//! read back with [`vknf_server::manifest::load_dir`]. Validation, model assembly, digest checks
//! and port clashes are therefore exactly those of `vknf serve`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServiceSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use vknf_server::manifest::{
    FunctionKey, HostManifest, ManifestError, ParseOptions, Placement, RejectedFunction, load_dir,
};

use crate::keys::STATUS_PREFIX;

/// Why the desired state could not be rendered.
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
    /// The server's reader refused the directory as a whole.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
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

/// The parts of a ConfigMap the reader uses.
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
/// `dir`, replacing what an earlier render left, and reads them back as the server will serve
/// them. Blocking: run it off the async runtime.
pub fn render(
    dir: &Path,
    services: &[Service],
    configmaps: &[Arc<ConfigMap>],
    options: &ParseOptions,
) -> Result<HostManifest, RenderError> {
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
    // Placement was decided by the agent; every rendered function is for this host.
    Ok(load_dir(dir, &Placement::All, options)?)
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
    fn rendering_replaces_the_previous_render_and_reports_invalid_functions_per_function() {
        let dir = tempfile::tempdir().unwrap();
        let leftover = dir.path().join("service.prod.gone.yaml");
        std::fs::write(&leftover, "not: yaml: [").unwrap();
        let configmap = Arc::new(ConfigMap {
            metadata: ObjectMeta {
                name: Some("m".into()),
                namespace: Some("prod".into()),
                ..Default::default()
            },
            binary_data: Some([("model.vkf.part0".to_owned(), ByteString(vec![1, 2, 3]))].into()),
            ..Default::default()
        });
        let manifest = render(
            dir.path(),
            &[function_service(&service_with_status())],
            &[configmap],
            &ParseOptions::default(),
        )
        .unwrap();
        assert!(!leftover.exists());
        assert!(dir.path().join("configmap.prod.m.yaml").exists());
        // The service lacks its SPIR-V: rejected on its own, the directory as a whole is fine.
        assert!(manifest.functions.is_empty());
        assert_eq!(manifest.rejected.len(), 1);
        assert_eq!(manifest.rejected[0].key.to_string(), "prod/web");
        let copy = clone_manifest(&manifest);
        assert_eq!(manifest_keys(&copy), manifest_keys(&manifest));
    }
}
