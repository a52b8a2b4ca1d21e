//! The EndpointSlices of managed placement: one per (Service, host), naming the host's advertised
//! address and the Service's port, ready only while the function answers on it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use vknf_manifest::annotations::{OIP_APP_PROTOCOL, OIP_PORT_NAME};

use crate::host::HostIdentity;
use crate::keys;

/// The conditions of the host's endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointState {
    /// Traffic may be sent (loaded and the port accepts connections).
    pub ready: bool,
    /// The function still answers (also while draining).
    pub serving: bool,
    /// The host is draining the function.
    pub terminating: bool,
}

impl EndpointState {
    /// Loaded and answering.
    pub const READY: EndpointState = EndpointState {
        ready: true,
        serving: true,
        terminating: false,
    };
    /// Not (yet) answering.
    pub const NOT_READY: EndpointState = EndpointState {
        ready: false,
        serving: false,
        terminating: false,
    };
    /// Finishing what it admitted; takes no new traffic.
    pub const DRAINING: EndpointState = EndpointState {
        ready: false,
        serving: true,
        terminating: true,
    };
}

/// The slice `host` publishes for `service`; `None` for a Service without a name or port. With
/// `oip_port` (the host serves the Open Inference Protocol there) the slice lists it too, as the port
/// named `oip`: a Service that declares such a port routes v2 clients to the hosts serving it.
pub fn desired_slice(
    service: &Service,
    host: &HostIdentity,
    oip_port: Option<u16>,
    state: EndpointState,
) -> Option<EndpointSlice> {
    let name = service.metadata.name.as_deref()?;
    let port = service
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.name.as_deref() != Some(OIP_PORT_NAME))?;
    let owner = service.metadata.uid.as_ref().map(|uid| OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: name.to_owned(),
        uid: uid.clone(),
        // Lets Kubernetes' garbage collector delete the slice with its Service, even when no
        // agent is running; the agent never owns the Service itself.
        controller: Some(false),
        block_owner_deletion: Some(false),
    });
    Some(EndpointSlice {
        metadata: ObjectMeta {
            name: Some(keys::slice_name(name, &host.name)),
            namespace: service.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([
                (keys::SERVICE_NAME_LABEL.to_owned(), name.to_owned()),
                (keys::MANAGED_BY_LABEL.to_owned(), keys::MANAGED_BY_AGENT.to_owned()),
                (keys::HOST_LABEL.to_owned(), host.name.clone()),
            ])),
            owner_references: owner.map(|o| vec![o]),
            ..Default::default()
        },
        address_type: if host.advertise.is_ipv4() { "IPv4" } else { "IPv6" }.to_owned(),
        endpoints: vec![Endpoint {
            addresses: vec![host.advertise.to_string()],
            conditions: Some(EndpointConditions {
                ready: Some(state.ready),
                serving: Some(state.serving),
                terminating: Some(state.terminating),
            }),
            ..Default::default()
        }],
        ports: Some(
            std::iter::once(EndpointPort {
                // kube-proxy pairs slice ports with Service ports by name.
                name: Some(port.name.clone().unwrap_or_default()),
                port: Some(port.port),
                protocol: Some(port.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                app_protocol: None,
            })
            .chain(oip_port.map(|oip| EndpointPort {
                name: Some(OIP_PORT_NAME.to_owned()),
                port: Some(i32::from(oip)),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some(OIP_APP_PROTOCOL.to_owned()),
            }))
            .collect(),
        ),
    })
}

/// Whether the observed slice already says what `desired` says (labels, owner, address, port,
/// conditions), so no write is needed.
pub fn up_to_date(observed: &EndpointSlice, desired: &EndpointSlice) -> bool {
    let labels_present = desired
        .metadata
        .labels
        .iter()
        .flatten()
        .all(|(k, v)| observed.metadata.labels.as_ref().and_then(|l| l.get(k)) == Some(v));
    let owners_present = desired.metadata.owner_references.iter().flatten().all(|want| {
        observed
            .metadata
            .owner_references
            .iter()
            .flatten()
            .any(|have| have.uid == want.uid)
    });
    let endpoints = |slice: &EndpointSlice| {
        slice
            .endpoints
            .iter()
            .map(|e| (e.addresses.clone(), e.conditions.clone().unwrap_or_default()))
            .collect::<Vec<_>>()
    };
    labels_present
        && owners_present
        && observed.address_type == desired.address_type
        && endpoints(observed) == endpoints(desired)
        && observed.ports == desired.ports
}

/// Whether any endpoint of the slice is ready.
pub fn any_ready(slice: &EndpointSlice) -> bool {
    slice
        .endpoints
        .iter()
        .any(|e| e.conditions.as_ref().and_then(|c| c.ready).unwrap_or(false))
}

/// The slice with every endpoint marked neither ready nor serving (the host is gone).
pub fn marked_unreachable(slice: &EndpointSlice) -> EndpointSlice {
    let mut slice = slice.clone();
    for endpoint in &mut slice.endpoints {
        let conditions = endpoint.conditions.get_or_insert_with(Default::default);
        conditions.ready = Some(false);
        conditions.serving = Some(false);
    }
    slice
}

/// The host an agent-published slice describes.
pub fn slice_host(slice: &EndpointSlice) -> Option<&str> {
    let labels = slice.metadata.labels.as_ref()?;
    if labels.get(keys::MANAGED_BY_LABEL).map(String::as_str) != Some(keys::MANAGED_BY_AGENT) {
        return None;
    }
    labels.get(keys::HOST_LABEL).map(String::as_str)
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ServicePort, ServiceSpec};

    use super::*;

    fn service() -> Service {
        Service {
            metadata: ObjectMeta {
                name: Some("web".into()),
                namespace: Some("prod".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            spec: Some(ServiceSpec {
                ports: Some(vec![ServicePort {
                    name: Some("vknf".into()),
                    port: 7000,
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            status: None,
        }
    }

    fn host(ip: &str) -> HostIdentity {
        HostIdentity::new("gpu-1", vec![ip.parse().unwrap()], BTreeMap::new()).unwrap()
    }

    #[test]
    fn a_host_serving_the_open_inference_protocol_lists_its_port_by_name() {
        let mut with_oip = service();
        with_oip.spec.as_mut().unwrap().ports.as_mut().unwrap().insert(
            0,
            ServicePort {
                name: Some(OIP_PORT_NAME.into()),
                port: 80,
                ..Default::default()
            },
        );
        let slice = desired_slice(&with_oip, &host("10.0.0.1"), Some(8080), EndpointState::READY).unwrap();
        let ports: Vec<_> = slice
            .ports
            .unwrap()
            .into_iter()
            .map(|p| (p.name.unwrap(), p.port.unwrap(), p.app_protocol))
            .collect();
        assert_eq!(
            ports,
            [
                ("vknf".to_owned(), 7000, None),
                (OIP_PORT_NAME.to_owned(), 8080, Some(OIP_APP_PROTOCOL.to_owned()))
            ]
        );
    }

    #[test]
    fn the_slice_names_the_host_the_port_and_the_owner() {
        let slice = desired_slice(&service(), &host("10.0.0.1"), None, EndpointState::READY).unwrap();
        assert_eq!(slice.metadata.name.as_deref(), Some("web.gpu-1"));
        assert_eq!(slice.metadata.namespace.as_deref(), Some("prod"));
        assert_eq!(slice_host(&slice), Some("gpu-1"));
        assert_eq!(slice.metadata.labels.as_ref().unwrap()[keys::SERVICE_NAME_LABEL], "web");
        assert_eq!(slice.metadata.owner_references.as_ref().unwrap()[0].uid, "u-1");
        assert_eq!(slice.address_type, "IPv4");
        assert_eq!(slice.endpoints[0].addresses, ["10.0.0.1"]);
        let port = &slice.ports.as_ref().unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port, port.protocol.as_deref()),
            (Some("vknf"), Some(7000), Some("TCP"))
        );
        assert!(any_ready(&slice));
        let v6 = desired_slice(&service(), &host("fd00::1"), None, EndpointState::READY).unwrap();
        assert_eq!(v6.address_type, "IPv6");
    }

    #[test]
    fn only_a_change_of_substance_needs_a_write() {
        let host = host("10.0.0.1");
        let ready = desired_slice(&service(), &host, None, EndpointState::READY).unwrap();
        let mut observed = ready.clone();
        observed.metadata.resource_version = Some("7".into());
        observed
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("extra".into(), "x".into());
        assert!(up_to_date(&observed, &ready));
        let draining = desired_slice(&service(), &host, None, EndpointState::DRAINING).unwrap();
        assert!(!up_to_date(&observed, &draining));
        assert!(!any_ready(&draining));
        let unreachable = marked_unreachable(&observed);
        assert!(!any_ready(&unreachable));
        assert!(!up_to_date(&unreachable, &ready));
    }

    #[test]
    fn hand_written_slices_have_no_agent_host() {
        let mut slice = desired_slice(&service(), &host("10.0.0.1"), None, EndpointState::READY).unwrap();
        slice
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert(keys::MANAGED_BY_LABEL.into(), "vknf.io".into());
        assert_eq!(slice_host(&slice), None);
    }
}
