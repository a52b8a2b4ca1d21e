//! Exercises the fake API server through an ordinary `kube::Client`, as the node agent will.

mod apply;
mod auth;
mod crud;
mod lease;
mod watch;

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Service, ServicePort, ServiceSpec};
use kube::api::ObjectMeta;
use vknf_k8s_fake::FakeApiServer;

/// Guards against hangs only; no test asserts on how long anything takes.
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(30), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// A started fake and a client for it.
pub async fn fake() -> (FakeApiServer, kube::Client) {
    let fake = FakeApiServer::start().await.expect("fake apiserver starts");
    let client = fake.client().expect("client for the fake");
    (fake, client)
}

/// A ClusterIP Service with one TCP port and the given labels.
pub fn service(name: &str, labels: &[(&str, &str)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(vec![ServicePort {
                port: 80,
                ..ServicePort::default()
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// A ConfigMap with one data entry.
pub fn config_map(name: &str, value: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        data: Some([("key".to_string(), value.to_string())].into()),
        ..ConfigMap::default()
    }
}

/// The `Status` inside a client error, or a panic naming what was expected.
pub fn api_status(result: Result<impl std::fmt::Debug, kube::Error>) -> kube::core::Status {
    match result {
        Err(kube::Error::Api(status)) => *status,
        other => panic!("expected an API error status, got {other:?}"),
    }
}
