//! Placement: which function Services this host serves, decided from the cluster's objects
//! alone (no I/O), so that every agent and every restart reaches the same answer.
//!
//! A function is placed on a host in one of two ways:
//! - **Endpoints** (the paper's way): a hand-written `Endpoints` or `EndpointSlice` of the
//!   Service lists one of the host's addresses.
//! - **Managed**: the Service carries `vknf.io/hosts` (a label selector over host labels) and/or
//!   `vknf.io/host-names` (a list); every matching host serves it and publishes its own
//!   EndpointSlice. When either annotation is present, Endpoints are not consulted.
//!
//! Slices the agents publish never count as hand-written placement, so a host that stops being
//! named by a managed Service drains even though its own slice still exists.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Endpoints, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use vknf_manifest::FunctionKey;

use crate::host::HostIdentity;
use crate::keys;
use crate::selector::{HostSelector, SelectorError};

/// How a function came to be placed on this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlacementMode {
    /// A hand-written Endpoints / EndpointSlice names one of the host's addresses.
    Endpoints,
    /// The Service's host selector or host-name list names this host; the agent publishes the
    /// host's EndpointSlice.
    Managed,
}

/// A function this host should serve.
#[derive(Debug, Clone)]
pub struct PlacedFunction {
    /// The function's Service.
    pub service: Arc<Service>,
    /// How it was placed here.
    pub mode: PlacementMode,
    /// ConfigMaps holding its model, in order (from `vknf.io/model-configmaps`; may be empty).
    pub model_configmaps: Vec<String>,
}

/// A function whose placement annotations cannot be understood.
#[derive(Debug, Clone)]
pub struct UnplaceableFunction {
    /// The function's Service.
    pub service: Arc<Service>,
    /// Why.
    pub error: SelectorError,
}

/// What this host should serve.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    /// Functions placed here.
    pub placed: BTreeMap<FunctionKey, PlacedFunction>,
    /// Managed functions whose host selector does not parse (placed nowhere).
    pub unplaceable: BTreeMap<FunctionKey, UnplaceableFunction>,
}

/// Namespace and name of an object (`default` when the namespace is absent).
pub fn object_key(meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Option<FunctionKey> {
    Some(FunctionKey {
        namespace: meta.namespace.clone().unwrap_or_else(|| "default".to_owned()),
        name: meta.name.clone()?,
    })
}

/// Whether a Service declares a network function.
pub fn is_function(service: &Service) -> bool {
    label(&service.metadata, keys::FUNCTION_LABEL) == Some("true")
}

fn label<'a>(meta: &'a k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'a>(service: &'a Service, key: &str) -> Option<&'a str> {
    service.metadata.annotations.as_ref()?.get(key).map(|v| v.trim())
}

/// The managed-placement rule of a Service, if it has one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedPlacement {
    /// Host labels that must match.
    pub selector: Option<HostSelector>,
    /// Host names allowed.
    pub names: Option<Vec<String>>,
}

impl ManagedPlacement {
    /// Reads the rule from the Service's annotations: `None` when neither is set.
    pub fn of(service: &Service) -> Option<Result<ManagedPlacement, SelectorError>> {
        let selector_text = annotation(service, keys::HOSTS_SELECTOR);
        let names_text = annotation(service, keys::HOST_NAMES);
        if selector_text.is_none() && names_text.is_none() {
            return None;
        }
        let selector = match selector_text.map(HostSelector::parse).transpose() {
            Ok(selector) => selector,
            Err(error) => return Some(Err(error)),
        };
        let names = names_text.map(|text| {
            text.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(str::to_owned)
                .collect()
        });
        Some(Ok(ManagedPlacement { selector, names }))
    }

    /// Whether `host` is one of the hosts this rule names.
    pub fn includes(&self, host: &HostIdentity) -> bool {
        self.selector.as_ref().is_none_or(|s| s.matches(&host.labels))
            && self.names.as_ref().is_none_or(|names| names.contains(&host.name))
    }
}

/// Addresses that hand-written Endpoints and EndpointSlices give a Service.
fn hand_written_addresses(
    key: &FunctionKey,
    slices: &[Arc<EndpointSlice>],
    endpoints: &[Arc<Endpoints>],
) -> Vec<IpAddr> {
    let mut addresses = Vec::new();
    for legacy in endpoints {
        if object_key(&legacy.metadata).as_ref() != Some(key) {
            continue;
        }
        for subset in legacy.subsets.iter().flatten() {
            addresses.extend(
                subset
                    .addresses
                    .iter()
                    .flatten()
                    .filter_map(|a| a.ip.parse::<IpAddr>().ok()),
            );
        }
    }
    for slice in slices {
        let same_service = slice.metadata.namespace.as_deref().unwrap_or("default") == key.namespace
            && label(&slice.metadata, keys::SERVICE_NAME_LABEL) == Some(key.name.as_str());
        let published_by_agent = label(&slice.metadata, keys::MANAGED_BY_LABEL) == Some(keys::MANAGED_BY_AGENT);
        if same_service && !published_by_agent {
            for endpoint in &slice.endpoints {
                addresses.extend(endpoint.addresses.iter().filter_map(|a| a.parse::<IpAddr>().ok()));
            }
        }
    }
    addresses
}

/// Decides what `host` serves. The result does not depend on the order of the inputs.
pub fn plan(
    services: &[Arc<Service>],
    slices: &[Arc<EndpointSlice>],
    endpoints: &[Arc<Endpoints>],
    host: &HostIdentity,
) -> Plan {
    let mut plan = Plan::default();
    for service in services {
        if !is_function(service) {
            continue;
        }
        let Some(key) = object_key(&service.metadata) else {
            continue;
        };
        let mode = match ManagedPlacement::of(service) {
            Some(Ok(rule)) => rule.includes(host).then_some(PlacementMode::Managed),
            Some(Err(error)) => {
                plan.unplaceable.insert(
                    key,
                    UnplaceableFunction {
                        service: service.clone(),
                        error,
                    },
                );
                continue;
            }
            None => hand_written_addresses(&key, slices, endpoints)
                .iter()
                .any(|ip| host.addresses.contains(ip))
                .then_some(PlacementMode::Endpoints),
        };
        if let Some(mode) = mode {
            let model_configmaps = annotation(service, keys::MODEL_CONFIGMAPS)
                .map(|names| {
                    names
                        .split(',')
                        .map(|n| n.trim().to_owned())
                        .filter(|n| !n.is_empty())
                        .collect()
                })
                .unwrap_or_default();
            plan.placed.insert(
                key,
                PlacedFunction {
                    service: service.clone(),
                    mode,
                    model_configmaps,
                },
            );
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use k8s_openapi::api::core::v1::{EndpointAddress, EndpointSubset};
    use k8s_openapi::api::discovery::v1::Endpoint;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use proptest::prelude::*;

    use super::*;
    use crate::host::parse_labels;

    fn service(name: &str, annotations: &[(&str, &str)]) -> Arc<Service> {
        Arc::new(Service {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("default".to_owned()),
                labels: Some([(keys::FUNCTION_LABEL.to_owned(), "true".to_owned())].into()),
                annotations: Some(
                    annotations
                        .iter()
                        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                        .collect(),
                ),
                ..Default::default()
            },
            ..Default::default()
        })
    }

    fn slice(service: &str, name: &str, managed_by: Option<&str>, ips: &[&str]) -> Arc<EndpointSlice> {
        let mut labels = BTreeMap::from([(keys::SERVICE_NAME_LABEL.to_owned(), service.to_owned())]);
        if let Some(manager) = managed_by {
            labels.insert(keys::MANAGED_BY_LABEL.to_owned(), manager.to_owned());
        }
        Arc::new(EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some("default".to_owned()),
                labels: Some(labels),
                ..Default::default()
            },
            address_type: "IPv4".to_owned(),
            endpoints: ips
                .iter()
                .map(|ip| Endpoint {
                    addresses: vec![(*ip).to_owned()],
                    ..Default::default()
                })
                .collect(),
            ports: None,
        })
    }

    fn legacy_endpoints(service: &str, ips: &[&str]) -> Arc<Endpoints> {
        Arc::new(Endpoints {
            metadata: ObjectMeta {
                name: Some(service.to_owned()),
                namespace: Some("default".to_owned()),
                ..Default::default()
            },
            subsets: Some(vec![EndpointSubset {
                addresses: Some(
                    ips.iter()
                        .map(|ip| EndpointAddress {
                            ip: (*ip).to_owned(),
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }]),
        })
    }

    fn host(name: &str, ip: &str, labels: &[&str]) -> HostIdentity {
        HostIdentity::new(
            name,
            vec![ip.parse().unwrap()],
            parse_labels(labels.iter().copied()).unwrap(),
        )
        .unwrap()
    }

    fn placed_names(plan: &Plan) -> Vec<(String, PlacementMode)> {
        plan.placed.iter().map(|(k, p)| (k.name.clone(), p.mode)).collect()
    }

    #[test]
    fn hand_written_endpoints_and_slices_place_functions_on_the_hosts_they_name() {
        let services = [service("a", &[]), service("b", &[]), service("c", &[])];
        let slices = [
            slice("a", "a-1", None, &["10.0.0.1"]),
            slice("b", "b-1", Some("vknf.io"), &["10.0.0.2"]),
        ];
        let endpoints = [legacy_endpoints("c", &["10.0.0.1", "10.0.0.2"])];
        let one = plan(&services, &slices, &endpoints, &host("gpu-1", "10.0.0.1", &[]));
        let two = plan(&services, &slices, &endpoints, &host("gpu-2", "10.0.0.2", &[]));
        let three = plan(&services, &slices, &endpoints, &host("gpu-3", "10.0.0.3", &[]));
        assert_eq!(
            placed_names(&one),
            [
                ("a".into(), PlacementMode::Endpoints),
                ("c".into(), PlacementMode::Endpoints)
            ]
        );
        assert_eq!(
            placed_names(&two),
            [
                ("b".into(), PlacementMode::Endpoints),
                ("c".into(), PlacementMode::Endpoints)
            ]
        );
        assert!(three.placed.is_empty());
    }

    #[test]
    fn managed_functions_follow_the_selector_and_the_name_list() {
        let services = [
            service("by-label", &[(keys::HOSTS_SELECTOR, "gpu=h100")]),
            service("by-name", &[(keys::HOST_NAMES, "gpu-2, gpu-3")]),
            service(
                "both",
                &[(keys::HOSTS_SELECTOR, "gpu=h100"), (keys::HOST_NAMES, "gpu-2")],
            ),
            service(
                "hostname-label",
                &[(keys::HOSTS_SELECTOR, "vknf.io/hostname in (gpu-1)")],
            ),
        ];
        let gpu1 = plan(&services, &[], &[], &host("gpu-1", "10.0.0.1", &["gpu=h100"]));
        let gpu2 = plan(&services, &[], &[], &host("gpu-2", "10.0.0.2", &["gpu=h100"]));
        let gpu3 = plan(&services, &[], &[], &host("gpu-3", "10.0.0.3", &["gpu=a100"]));
        let names = |p: &Plan| p.placed.keys().map(|k| k.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&gpu1), ["by-label", "hostname-label"]);
        assert_eq!(names(&gpu2), ["both", "by-label", "by-name"]);
        assert_eq!(names(&gpu3), ["by-name"]);
        assert!(gpu1.placed.values().all(|p| p.mode == PlacementMode::Managed));
    }

    #[test]
    fn slices_the_agents_publish_never_place_a_function() {
        // gpu-1 served "web" and still has its slice, but the selector no longer names it.
        let services = [service("web", &[(keys::HOSTS_SELECTOR, "gpu=h100")])];
        let own = [slice("web", "web.gpu-1", Some(keys::MANAGED_BY_AGENT), &["10.0.0.1"])];
        let plan = plan(&services, &own, &[], &host("gpu-1", "10.0.0.1", &["gpu=a100"]));
        assert!(plan.placed.is_empty());
        let unmanaged = [service("web", &[])];
        let still = super::plan(&unmanaged, &own, &[], &host("gpu-1", "10.0.0.1", &[]));
        assert!(
            still.placed.is_empty(),
            "an agent-published slice is not a hand-written placement"
        );
    }

    #[test]
    fn bad_selectors_make_the_function_unplaceable_not_the_agent_fail() {
        let services = [
            service("bad", &[(keys::HOSTS_SELECTOR, "gpu in (h100")]),
            service("good", &[(keys::HOST_NAMES, "gpu-1")]),
        ];
        let plan = plan(&services, &[], &[], &host("gpu-1", "10.0.0.1", &[]));
        assert_eq!(
            plan.placed.keys().map(|k| k.name.as_str()).collect::<Vec<_>>(),
            ["good"]
        );
        assert!(
            plan.unplaceable[&FunctionKey {
                namespace: "default".into(),
                name: "bad".into()
            }]
                .error
                .reason
                .contains("unbalanced")
        );
    }

    #[test]
    fn services_without_the_function_label_are_ignored_and_model_configmaps_are_listed() {
        let mut plain = (*service("plain", &[(keys::HOST_NAMES, "gpu-1")])).clone();
        plain.metadata.labels = None;
        let with_model = service(
            "model",
            &[(keys::HOST_NAMES, "gpu-1"), (keys::MODEL_CONFIGMAPS, "m-0, m-1")],
        );
        let plan = plan(
            &[Arc::new(plain), with_model],
            &[],
            &[],
            &host("gpu-1", "10.0.0.1", &[]),
        );
        assert_eq!(plan.placed.len(), 1);
        assert_eq!(plan.placed.values().next().unwrap().model_configmaps, ["m-0", "m-1"]);
    }

    /// A random cluster: services with either managed rules or hand-written endpoints.
    #[derive(Debug, Clone)]
    struct Cluster {
        services: Vec<Arc<Service>>,
        slices: Vec<Arc<EndpointSlice>>,
        endpoints: Vec<Arc<Endpoints>>,
    }

    const HOSTS: [(&str, &str, &str); 4] = [
        ("gpu-0", "10.0.0.10", "h100"),
        ("gpu-1", "10.0.0.11", "h100"),
        ("gpu-2", "10.0.0.12", "a100"),
        ("gpu-3", "10.0.0.13", "t4"),
    ];

    fn hosts() -> Vec<HostIdentity> {
        HOSTS
            .iter()
            .map(|(name, ip, gpu)| host(name, ip, &[&format!("gpu={gpu}")]))
            .collect()
    }

    #[derive(Debug, Clone)]
    enum Rule {
        Selector(&'static str),
        Names(BTreeSet<usize>),
        Slices(BTreeSet<usize>, bool),
        LegacyEndpoints(BTreeSet<usize>),
    }

    fn rule() -> impl Strategy<Value = Rule> {
        let hosts = || prop::collection::btree_set(0..HOSTS.len(), 0..=HOSTS.len());
        prop_oneof![
            prop::sample::select(vec!["gpu=h100", "gpu!=h100", "gpu in (a100,t4)", "!gpu", "gpu"])
                .prop_map(Rule::Selector),
            hosts().prop_map(Rule::Names),
            (hosts(), any::<bool>()).prop_map(|(h, own)| Rule::Slices(h, own)),
            hosts().prop_map(Rule::LegacyEndpoints),
        ]
    }

    fn cluster(rules: &[Rule]) -> Cluster {
        let mut cluster = Cluster {
            services: Vec::new(),
            slices: Vec::new(),
            endpoints: Vec::new(),
        };
        for (i, rule) in rules.iter().enumerate() {
            let name = format!("f{i}");
            let ips = |set: &BTreeSet<usize>| set.iter().map(|h| HOSTS[*h].1).collect::<Vec<_>>();
            match rule {
                Rule::Selector(selector) => cluster
                    .services
                    .push(service(&name, &[(keys::HOSTS_SELECTOR, selector)])),
                Rule::Names(set) => {
                    let names = set.iter().map(|h| HOSTS[*h].0).collect::<Vec<_>>().join(",");
                    cluster.services.push(service(&name, &[(keys::HOST_NAMES, &names)]));
                }
                Rule::Slices(set, published_by_agent) => {
                    cluster.services.push(service(&name, &[]));
                    let manager = published_by_agent.then_some(keys::MANAGED_BY_AGENT);
                    cluster
                        .slices
                        .push(slice(&name, &format!("{name}-s"), manager, &ips(set)));
                }
                Rule::LegacyEndpoints(set) => {
                    cluster.services.push(service(&name, &[]));
                    cluster.endpoints.push(legacy_endpoints(&name, &ips(set)));
                }
            }
        }
        cluster
    }

    fn expected_hosts(rule: &Rule) -> BTreeSet<usize> {
        let gpu = |h: usize| HOSTS[h].2;
        (0..HOSTS.len())
            .filter(|&h| match rule {
                Rule::Selector("gpu=h100") => gpu(h) == "h100",
                Rule::Selector("gpu!=h100") => gpu(h) != "h100",
                Rule::Selector("gpu in (a100,t4)") => matches!(gpu(h), "a100" | "t4"),
                Rule::Selector("!gpu") => false,
                Rule::Selector(_) => true,
                Rule::Names(set) | Rule::LegacyEndpoints(set) => set.contains(&h),
                Rule::Slices(set, published_by_agent) => !published_by_agent && set.contains(&h),
            })
            .collect()
    }

    proptest! {
        #[test]
        fn each_function_lands_on_exactly_the_hosts_its_rule_names(rules in prop::collection::vec(rule(), 1..8)) {
            let cluster = cluster(&rules);
            let plans: Vec<Plan> = hosts().iter().map(|h| plan(&cluster.services, &cluster.slices, &cluster.endpoints, h)).collect();
            for (i, rule) in rules.iter().enumerate() {
                let key = FunctionKey { namespace: "default".into(), name: format!("f{i}") };
                let actual: BTreeSet<usize> = (0..HOSTS.len()).filter(|h| plans[*h].placed.contains_key(&key)).collect();
                prop_assert_eq!(&actual, &expected_hosts(rule), "rule {:?}", rule);
                for p in &plans {
                    if let Some(placed) = p.placed.get(&key) {
                        let managed = matches!(rule, Rule::Selector(_) | Rule::Names(_));
                        prop_assert_eq!(placed.mode == PlacementMode::Managed, managed);
                    }
                }
            }
        }

        #[test]
        fn plans_do_not_depend_on_the_order_objects_arrive_in(rules in prop::collection::vec(rule(), 1..8), seed in any::<u64>()) {
            use rand::{SeedableRng as _, seq::SliceRandom as _};
            let cluster = cluster(&rules);
            let mut shuffled = cluster.clone();
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            shuffled.services.shuffle(&mut rng);
            shuffled.slices.shuffle(&mut rng);
            shuffled.endpoints.shuffle(&mut rng);
            for h in hosts() {
                let a = plan(&cluster.services, &cluster.slices, &cluster.endpoints, &h);
                let b = plan(&shuffled.services, &shuffled.slices, &shuffled.endpoints, &h);
                let modes = |p: &Plan| p.placed.iter().map(|(k, f)| (k.clone(), f.mode)).collect::<Vec<_>>();
                prop_assert_eq!(modes(&a), modes(&b));
            }
        }
    }
}
