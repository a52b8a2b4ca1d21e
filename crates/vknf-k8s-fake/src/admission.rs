//! Defaulting and validation the real registries apply to the resources the fake serves.
//!
//! Only the rules a client can observe in ordinary use are implemented: name formats, label
//! syntax, Service IP/port allocation and immutability, and the required fields of
//! EndpointSlices, Leases, ConfigMaps and events.k8s.io Events.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde_json::{Value, json};

use crate::object::meta_str;
use crate::resources::ResourceType;
use crate::status::ApiError;

/// Field path and message of one validation failure.
type Cause = (String, String);

/// Hands out Service cluster IPs (10.96.0.0/12) and node ports (30000-32767).
#[derive(Debug)]
pub(crate) struct Allocator {
    next_ip: u32,
    ips: BTreeSet<String>,
    next_node_port: u16,
    node_ports: BTreeSet<u16>,
}

impl Default for Allocator {
    fn default() -> Self {
        Self {
            // 10.96.0.1 belongs to the `kubernetes` Service in a real cluster.
            next_ip: u32::from(Ipv4Addr::new(10, 96, 0, 10)),
            ips: BTreeSet::new(),
            next_node_port: 30000,
            node_ports: BTreeSet::new(),
        }
    }
}

impl Allocator {
    fn allocate_ip(&mut self) -> Option<String> {
        let last = u32::from(Ipv4Addr::new(10, 111, 255, 254));
        while self.next_ip <= last {
            let candidate = Ipv4Addr::from(self.next_ip).to_string();
            self.next_ip += 1;
            if self.ips.insert(candidate.clone()) {
                return Some(candidate);
            }
        }
        None
    }

    fn allocate_node_port(&mut self) -> Option<u16> {
        while self.next_node_port <= 32767 {
            let candidate = self.next_node_port;
            self.next_node_port += 1;
            if self.node_ports.insert(candidate) {
                return Some(candidate);
            }
        }
        None
    }

    /// Returns the addresses and ports a deleted Service held.
    pub(crate) fn release(&mut self, resource: &ResourceType, object: &Value) {
        if !is_service(resource) {
            return;
        }
        if let Some(ip) = object.pointer("/spec/clusterIP").and_then(Value::as_str) {
            self.ips.remove(ip);
        }
        for port in service_ports(object) {
            if let Some(node_port) = port.get("nodePort").and_then(Value::as_u64) {
                if let Ok(node_port) = u16::try_from(node_port) {
                    self.node_ports.remove(&node_port);
                }
            }
        }
    }
}

fn is_service(resource: &ResourceType) -> bool {
    resource.group.is_empty() && resource.kind == "Service"
}

fn service_ports(object: &Value) -> Vec<Value> {
    object
        .pointer("/spec/ports")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.ends_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

/// Rejects names the resource's registry would reject (Services need DNS-1035 labels).
pub(crate) fn validate_name(resource: &ResourceType, name: &str) -> Result<(), ApiError> {
    let (valid, rule) = if is_service(resource) {
        let starts_alpha = name.starts_with(|c: char| c.is_ascii_lowercase());
        (
            is_dns_label(name) && starts_alpha,
            "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character",
        )
    } else {
        (
            is_dns_subdomain(name),
            "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character",
        )
    };
    if valid {
        Ok(())
    } else {
        Err(ApiError::invalid(
            resource,
            name,
            &[("metadata.name".into(), format!("Invalid value: \"{name}\": {rule}"))],
        ))
    }
}

fn valid_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn valid_qualified_key(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    prefix.is_none_or(is_dns_subdomain) && !name.is_empty() && valid_label_value(name)
}

fn validate_metadata(object: &Value, causes: &mut Vec<Cause>) {
    if let Some(labels) = object.pointer("/metadata/labels") {
        match labels.as_object() {
            Some(labels) => {
                for (key, value) in labels {
                    if !valid_qualified_key(key) {
                        causes.push(("metadata.labels".to_string(), format!("Invalid value: \"{key}\": name part must consist of alphanumeric characters, '-', '_' or '.'")));
                    }
                    match value.as_str() {
                        Some(value) if valid_label_value(value) => {}
                        _ => causes.push((
                            "metadata.labels".to_string(),
                            format!("Invalid value: {value}: a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.'"),
                        )),
                    }
                }
            }
            None => causes.push(("metadata.labels".into(), "must be a map of strings".into())),
        }
    }
    if let Some(annotations) = object.pointer("/metadata/annotations") {
        match annotations.as_object() {
            Some(annotations) => {
                for (key, value) in annotations {
                    if !valid_qualified_key(key) || !value.is_string() {
                        causes.push(("metadata.annotations".into(), format!("Invalid value: \"{key}\"")));
                    }
                }
            }
            None => causes.push(("metadata.annotations".into(), "must be a map of strings".into())),
        }
    }
}

fn admit_service(object: &mut Value, old: Option<&Value>, allocator: &mut Allocator, causes: &mut Vec<Cause>) {
    let Some(spec) = object
        .as_object_mut()
        .map(|o| o.entry("spec").or_insert_with(|| json!({})))
        .and_then(Value::as_object_mut)
    else {
        return;
    };
    let service_type = spec
        .entry("type")
        .or_insert_with(|| json!("ClusterIP"))
        .as_str()
        .unwrap_or_default()
        .to_string();
    if !["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"].contains(&service_type.as_str()) {
        causes.push((
            "spec.type".into(),
            format!("Unsupported value: \"{service_type}\": supported values: \"ClusterIP\", \"ExternalName\", \"LoadBalancer\", \"NodePort\""),
        ));
        return;
    }
    let external = service_type == "ExternalName";
    if external {
        if spec
            .get("externalName")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            causes.push(("spec.externalName".into(), "Required value".into()));
        }
    } else {
        spec.entry("sessionAffinity").or_insert_with(|| json!("None"));
        spec.entry("internalTrafficPolicy").or_insert_with(|| json!("Cluster"));
    }

    // Cluster IPs are allocated once; an update that omits them keeps the old ones.
    let old_ip = old
        .and_then(|o| o.pointer("/spec/clusterIP"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let requested = spec
        .get("clusterIP")
        .and_then(Value::as_str)
        .filter(|ip| !ip.is_empty())
        .map(str::to_string);
    let headless = requested.as_deref() == Some("None");
    if !external {
        let ip = match (&old_ip, requested) {
            (Some(old_ip), Some(new_ip)) if *old_ip != new_ip => {
                causes.push((
                    "spec.clusterIPs[0]".into(),
                    format!("Invalid value: \"{new_ip}\": may not change once set"),
                ));
                return;
            }
            (Some(old_ip), _) => Some(old_ip.clone()),
            (None, Some(ip)) if ip == "None" => Some(ip),
            (None, Some(ip)) => {
                if ip.parse::<Ipv4Addr>().is_err() {
                    causes.push((
                        "spec.clusterIPs[0]".into(),
                        format!("Invalid value: \"{ip}\": must be a valid IP address"),
                    ));
                    return;
                }
                if !allocator.ips.insert(ip.clone()) {
                    causes.push((
                        "spec.clusterIPs".into(),
                        format!("Invalid value: []string{{\"{ip}\"}}: failed to allocate IP {ip}: provided IP is already allocated"),
                    ));
                    return;
                }
                Some(ip)
            }
            (None, None) => allocator.allocate_ip(),
        };
        if let Some(ip) = ip {
            spec.insert("clusterIP".into(), json!(ip));
            spec.insert("clusterIPs".into(), json!([ip]));
            spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
            spec.entry("ipFamilyPolicy").or_insert_with(|| json!("SingleStack"));
        }
    }

    let old_ports = old.map(service_ports).unwrap_or_default();
    let needs_node_ports = service_type == "NodePort" || service_type == "LoadBalancer";
    let mut names = BTreeSet::new();
    let ports = spec
        .get_mut("ports")
        .and_then(Value::as_array_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    if ports.is_empty() && !external && !headless {
        causes.push(("spec.ports".into(), "Required value".into()));
    }
    let count = ports.len();
    let mut defaulted = Vec::with_capacity(count);
    for (index, mut port) in ports.into_iter().enumerate() {
        let Some(fields) = port.as_object_mut() else {
            causes.push((format!("spec.ports[{index}]"), "must be an object".into()));
            continue;
        };
        let number = fields.get("port").and_then(Value::as_u64).unwrap_or(0);
        if !(1..=65535).contains(&number) {
            causes.push((
                format!("spec.ports[{index}].port"),
                format!("Invalid value: {number}: must be between 1 and 65535, inclusive"),
            ));
        }
        let protocol = fields.entry("protocol").or_insert_with(|| json!("TCP")).clone();
        if !["TCP", "UDP", "SCTP"].contains(&protocol.as_str().unwrap_or_default()) {
            causes.push((
                format!("spec.ports[{index}].protocol"),
                format!("Unsupported value: {protocol}: supported values: \"SCTP\", \"TCP\", \"UDP\""),
            ));
        }
        fields.entry("targetPort").or_insert_with(|| json!(number));
        let name = fields.get("name").and_then(Value::as_str).unwrap_or("");
        if count > 1 && name.is_empty() {
            causes.push((format!("spec.ports[{index}].name"), "Required value".into()));
        } else if !name.is_empty() && !names.insert(name.to_string()) {
            causes.push((
                format!("spec.ports[{index}].name"),
                format!("Duplicate value: \"{name}\""),
            ));
        }
        if needs_node_ports && fields.get("nodePort").is_none() {
            let kept = old_ports
                .iter()
                .find(|p| p.get("port") == fields.get("port") && p.get("protocol") == Some(&protocol))
                .and_then(|p| p.get("nodePort"))
                .cloned();
            match kept.or_else(|| allocator.allocate_node_port().map(|p| json!(p))) {
                Some(node_port) => {
                    fields.insert("nodePort".into(), node_port);
                }
                None => causes.push((
                    format!("spec.ports[{index}].nodePort"),
                    "Internal error: range is full".into(),
                )),
            }
        }
        defaulted.push(port);
    }
    if !defaulted.is_empty() {
        spec.insert("ports".into(), Value::Array(defaulted));
    }
}

fn admit_endpoint_slice(object: &mut Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    let address_type = object.get("addressType").and_then(Value::as_str);
    match address_type {
        Some("IPv4" | "IPv6" | "FQDN") => {}
        Some(other) => causes.push((
            "addressType".into(),
            format!("Unsupported value: \"{other}\": supported values: \"FQDN\", \"IPv4\", \"IPv6\""),
        )),
        None => causes.push(("addressType".into(), "Required value".into())),
    }
    if let Some(old_type) = old.and_then(|o| o.get("addressType")) {
        if object.get("addressType") != Some(old_type) {
            causes.push(("addressType".into(), "field is immutable".into()));
        }
    }
    if let Some(endpoints) = object.get("endpoints").and_then(Value::as_array) {
        for (index, endpoint) in endpoints.iter().enumerate() {
            let addresses = endpoint.get("addresses").and_then(Value::as_array).map_or(0, Vec::len);
            if !(1..=100).contains(&addresses) {
                causes.push((
                    format!("endpoints[{index}].addresses"),
                    "must contain between 1 and 100 addresses".into(),
                ));
            }
        }
    }
    if let Some(ports) = object.get_mut("ports").and_then(Value::as_array_mut) {
        for port in ports.iter_mut().filter_map(Value::as_object_mut) {
            port.entry("protocol").or_insert_with(|| json!("TCP"));
        }
    }
}

fn admit_lease(object: &Value, causes: &mut Vec<Cause>) {
    if let Some(duration) = object.pointer("/spec/leaseDurationSeconds") {
        if duration.as_i64().is_none_or(|d| d <= 0) {
            causes.push((
                "spec.leaseDurationSeconds".into(),
                format!("Invalid value: {duration}: must be greater than 0"),
            ));
        }
    }
    if let Some(transitions) = object.pointer("/spec/leaseTransitions") {
        if transitions.as_i64().is_none_or(|t| t < 0) {
            causes.push((
                "spec.leaseTransitions".into(),
                format!("Invalid value: {transitions}: must be greater than or equal to 0"),
            ));
        }
    }
}

fn admit_config_map(object: &Value, causes: &mut Vec<Cause>) {
    let keys = |field: &str| -> Vec<String> {
        object
            .get(field)
            .and_then(Value::as_object)
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    };
    let data = keys("data");
    let binary = keys("binaryData");
    for key in data.iter().chain(&binary) {
        let valid =
            !key.is_empty() && key.len() <= 253 && key.chars().all(|c| c.is_ascii_alphanumeric() || "-._".contains(c));
        if !valid {
            causes.push((
                format!("data[{key}]"),
                format!("Invalid value: \"{key}\": a valid config key must consist of alphanumeric characters, '-', '_' or '.'"),
            ));
        }
    }
    for key in data.iter().filter(|k| binary.contains(k)) {
        causes.push((
            format!("data[{key}]"),
            "Invalid value: duplicate of key present in binaryData".into(),
        ));
    }
}

fn admit_events_v1(object: &Value, old: Option<&Value>, causes: &mut Vec<Cause>) {
    // These are required of new-style events when they are created (ValidateEventCreate).
    if old.is_some() {
        return;
    }
    for field in [
        "eventTime",
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
    ] {
        let present = match object.get(field) {
            Some(Value::String(s)) => !s.is_empty(),
            Some(Value::Null) | None => false,
            Some(_) => true,
        };
        if !present {
            causes.push((field.into(), "Required value".into()));
        }
    }
}

/// Defaults `object` and validates it; `old` is the stored object on updates.
pub(crate) fn admit(
    resource: &ResourceType,
    object: &mut Value,
    old: Option<&Value>,
    allocator: &mut Allocator,
) -> Result<(), ApiError> {
    let mut causes = Vec::new();
    validate_metadata(object, &mut causes);
    match (resource.group.as_str(), resource.kind.as_str()) {
        ("", "Service") => admit_service(object, old, allocator, &mut causes),
        ("", "ConfigMap") => admit_config_map(object, &mut causes),
        ("discovery.k8s.io", "EndpointSlice") => admit_endpoint_slice(object, old, &mut causes),
        ("coordination.k8s.io", "Lease") => admit_lease(object, &mut causes),
        ("events.k8s.io", "Event") => admit_events_v1(object, old, &mut causes),
        _ => {}
    }
    if causes.is_empty() {
        Ok(())
    } else {
        let name = meta_str(object, "name").unwrap_or_default().to_string();
        Err(ApiError::invalid(resource, &name, &causes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::Service;

    fn services() -> ResourceType {
        ResourceType::of::<Service>()
    }

    #[test]
    fn services_get_an_ip_and_port_defaults() {
        let mut allocator = Allocator::default();
        let mut service = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
        admit(&services(), &mut service, None, &mut allocator).expect("valid service");
        assert_eq!(service["spec"]["clusterIP"], "10.96.0.10");
        assert_eq!(service["spec"]["clusterIPs"], json!(["10.96.0.10"]));
        assert_eq!(service["spec"]["type"], "ClusterIP");
        assert_eq!(service["spec"]["ports"][0]["protocol"], "TCP");
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 80);

        let mut second =
            json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "10.96.0.10", "ports": [{"port": 5432}]}});
        let error = admit(&services(), &mut second, None, &mut allocator).expect_err("IP taken");
        assert_eq!(error.code, 422);
    }

    #[test]
    fn service_updates_keep_and_protect_the_cluster_ip() {
        let mut allocator = Allocator::default();
        let mut service = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 80}]}});
        admit(&services(), &mut service, None, &mut allocator).expect("valid");
        let mut update = json!({"metadata": {"name": "web"}, "spec": {"ports": [{"port": 81}]}});
        admit(&services(), &mut update, Some(&service), &mut allocator).expect("valid update");
        assert_eq!(update["spec"]["clusterIP"], service["spec"]["clusterIP"]);
        let mut change =
            json!({"metadata": {"name": "web"}, "spec": {"clusterIP": "10.96.9.9", "ports": [{"port": 81}]}});
        let error = admit(&services(), &mut change, Some(&service), &mut allocator).expect_err("immutable");
        assert!(error.message.contains("may not change once set"), "{}", error.message);
    }

    #[test]
    fn invalid_objects_list_every_cause() {
        let mut allocator = Allocator::default();
        let mut service = json!({"metadata": {"name": "web", "labels": {"bad key": "x"}}, "spec": {"ports": [{"port": 0}, {"port": 80}]}});
        let error = admit(&services(), &mut service, None, &mut allocator).expect_err("invalid");
        let causes = error
            .details
            .as_ref()
            .and_then(|d| d["causes"].as_array())
            .map(Vec::len);
        assert_eq!(causes, Some(4), "{}", error.message);
    }

    #[test]
    fn names_follow_each_registry_rule() {
        assert!(validate_name(&services(), "web-1").is_ok());
        assert_eq!(validate_name(&services(), "1web").map_err(|e| e.code), Err(422));
        let leases = ResourceType::of::<k8s_openapi::api::coordination::v1::Lease>();
        assert!(validate_name(&leases, "node.example-1").is_ok());
        assert!(validate_name(&leases, "Upper").is_err());
        assert!(validate_name(&leases, "").is_err());
    }

    #[test]
    fn endpoint_slices_and_leases_are_validated() {
        let mut allocator = Allocator::default();
        let slices = ResourceType::of::<k8s_openapi::api::discovery::v1::EndpointSlice>();
        let mut slice = json!({"metadata": {"name": "s"}, "endpoints": [{"addresses": []}]});
        let error = admit(&slices, &mut slice, None, &mut allocator).expect_err("invalid");
        assert!(error.message.contains("addressType"));
        let leases = ResourceType::of::<k8s_openapi::api::coordination::v1::Lease>();
        let mut lease = json!({"metadata": {"name": "l"}, "spec": {"leaseDurationSeconds": 0}});
        assert!(admit(&leases, &mut lease, None, &mut allocator).is_err());
    }
}
