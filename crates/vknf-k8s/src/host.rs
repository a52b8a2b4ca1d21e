//! Who this GPU host is: its name, the addresses that identify it in Endpoints, the address it
//! advertises in the EndpointSlices it publishes, and its labels for managed placement.

use std::collections::BTreeMap;
use std::net::IpAddr;

use crate::keys::{HOSTNAME_LABEL, valid_host_name};

/// Why a host identity is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostError {
    /// The name cannot be used in labels and object names.
    #[error("host name {0:?} is not a lower-case DNS name of at most 63 characters (set --host-name)")]
    BadName(String),
    /// A `--host-label` is not `key=value`.
    #[error("host label {0:?} is not key=value")]
    BadLabel(String),
    /// A host label key or value Kubernetes would refuse.
    #[error("host label {label:?}: {reason}")]
    InvalidLabel {
        /// The label as given.
        label: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No address to advertise.
    #[error("the host has no address to advertise (set --address)")]
    NoAddress,
    /// Listing the network interfaces failed.
    #[error("cannot list the network interfaces: {0}")]
    Interfaces(String),
}

/// The identity of the host an agent runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostIdentity {
    /// The host's name (in Leases, slice names, status annotations and [`HOSTNAME_LABEL`]).
    pub name: String,
    /// Every address of the host: a hand-written Endpoints naming one places a function here.
    pub addresses: Vec<IpAddr>,
    /// The address published in the host's EndpointSlices (one of `addresses`).
    pub advertise: IpAddr,
    /// Labels matched by the `vknf.io/hosts` selector of managed functions.
    pub labels: BTreeMap<String, String>,
}

impl HostIdentity {
    /// Builds and checks an identity. `addresses` must not be empty; the first one is advertised.
    /// [`HOSTNAME_LABEL`] is added to the labels.
    pub fn new(
        name: &str,
        addresses: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
    ) -> Result<HostIdentity, HostError> {
        if !valid_host_name(name) {
            return Err(HostError::BadName(name.to_owned()));
        }
        let advertise = *addresses.first().ok_or(HostError::NoAddress)?;
        let mut labels = labels;
        for (key, value) in &labels {
            check_label(key, value)?;
        }
        labels.insert(HOSTNAME_LABEL.to_owned(), name.to_owned());
        Ok(HostIdentity {
            name: name.to_owned(),
            addresses,
            advertise,
            labels,
        })
    }

    /// The identity of this machine: the system host name (lower-cased) unless `name` is given,
    /// the given addresses or else every local interface address (non-loopback first, IPv4
    /// before IPv6, so the advertised one is routable).
    pub fn detect(
        name: Option<&str>,
        addresses: Vec<IpAddr>,
        labels: BTreeMap<String, String>,
    ) -> Result<HostIdentity, HostError> {
        let name = match name {
            Some(name) => name.to_owned(),
            None => hostname::get()
                .map_err(|e| HostError::BadName(format!("<unreadable: {e}>")))?
                .to_string_lossy()
                .to_lowercase(),
        };
        let addresses = if addresses.is_empty() {
            let mut found: Vec<IpAddr> = if_addrs::get_if_addrs()
                .map_err(|e| HostError::Interfaces(e.to_string()))?
                .into_iter()
                .map(|iface| iface.ip())
                .collect();
            found.sort_by_key(|ip| (ip.is_loopback(), ip.is_ipv6(), *ip));
            found.dedup();
            found
        } else {
            addresses
        };
        HostIdentity::new(&name, addresses, labels)
    }
}

/// Parses `key=value` host labels.
pub fn parse_labels<'a>(labels: impl IntoIterator<Item = &'a str>) -> Result<BTreeMap<String, String>, HostError> {
    let mut parsed = BTreeMap::new();
    for label in labels {
        let (key, value) = label
            .split_once('=')
            .ok_or_else(|| HostError::BadLabel(label.to_owned()))?;
        check_label(key.trim(), value.trim())?;
        parsed.insert(key.trim().to_owned(), value.trim().to_owned());
    }
    Ok(parsed)
}

fn check_label(key: &str, value: &str) -> Result<(), HostError> {
    let invalid = |reason: &str| HostError::InvalidLabel {
        label: format!("{key}={value}"),
        reason: reason.to_owned(),
    };
    let name = key.rsplit_once('/').map_or(key, |(_, name)| name);
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.len() <= 63
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            && s.as_bytes()[0].is_ascii_alphanumeric()
            && s.as_bytes()[s.len() - 1].is_ascii_alphanumeric()
    };
    if !name_ok(name) {
        return Err(invalid("the key must be an alphanumeric name of at most 63 characters"));
    }
    if !value.is_empty() && !name_ok(value) {
        return Err(invalid(
            "the value must be empty or an alphanumeric name of at most 63 characters",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_parse_and_the_hostname_label_is_implicit() {
        let labels = parse_labels(["gpu=h100", "zone = a"]).unwrap();
        let host = HostIdentity::new("gpu-1", vec!["10.0.0.1".parse().unwrap()], labels).unwrap();
        assert_eq!(host.labels["gpu"], "h100");
        assert_eq!(host.labels["zone"], "a");
        assert_eq!(host.labels[HOSTNAME_LABEL], "gpu-1");
        assert_eq!(host.advertise, "10.0.0.1".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn bad_identities_are_refused_with_a_reason() {
        assert_eq!(parse_labels(["gpu"]), Err(HostError::BadLabel("gpu".into())));
        assert!(matches!(
            parse_labels(["gpu=h 100"]),
            Err(HostError::InvalidLabel { .. })
        ));
        assert!(matches!(parse_labels(["=x"]), Err(HostError::InvalidLabel { .. })));
        assert_eq!(
            HostIdentity::new("Gpu_1", vec!["10.0.0.1".parse().unwrap()], BTreeMap::new()),
            Err(HostError::BadName("Gpu_1".into()))
        );
        assert_eq!(
            HostIdentity::new("gpu-1", Vec::new(), BTreeMap::new()),
            Err(HostError::NoAddress)
        );
    }

    #[test]
    fn detection_prefers_a_routable_address() {
        let host = HostIdentity::detect(Some("gpu-1"), Vec::new(), BTreeMap::new()).unwrap();
        let has_routable = host.addresses.iter().any(|ip| !ip.is_loopback());
        assert_eq!(!host.advertise.is_loopback(), has_routable);
    }
}
