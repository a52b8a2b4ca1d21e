//! Leases (coordination.k8s.io/v1): the host Lease an agent renews while it runs, the
//! watchdog's leader election, and expiry judged from observed renewals.
//!
//! Expiry is decided the way Kubernetes' node lifecycle controller does it: by how long the
//! observer has gone without seeing the Lease change, on its own monotonic clock, never by
//! comparing another machine's `renewTime` with local time (clocks drift).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::PostParams;

/// What changes at every renewal: holder and renew time.
type RenewalMarker = Option<(Option<String>, Option<String>)>;

/// Remembers when each Lease was last seen to change.
#[derive(Debug, Default)]
pub struct LeaseObserver {
    seen: HashMap<String, (RenewalMarker, Instant)>,
}

fn marker(lease: Option<&Lease>) -> RenewalMarker {
    let spec = lease?.spec.as_ref();
    Some((
        spec.and_then(|s| s.holder_identity.clone()),
        spec.and_then(|s| s.renew_time.as_ref()).map(|t| t.0.to_string()),
    ))
}

/// The duration a Lease declares, or `default`.
pub fn lease_duration(lease: Option<&Lease>, default: Duration) -> Duration {
    lease
        .and_then(|l| l.spec.as_ref())
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .map_or(default, Duration::from_secs)
}

impl LeaseObserver {
    /// Records the Lease `name` as observed at `now` (`None`: it does not exist) and tells
    /// whether it has expired: unchanged for longer than its duration (`default_duration` when
    /// it declares none or does not exist). A Lease seen for the first time gets a full
    /// duration of grace.
    pub fn expired(&mut self, name: &str, lease: Option<&Lease>, default_duration: Duration, now: Instant) -> bool {
        let current = marker(lease);
        let duration = lease_duration(lease, default_duration);
        match self.seen.get_mut(name) {
            Some((previous, since)) if *previous == current => now.saturating_duration_since(*since) > duration,
            Some(entry) => {
                *entry = (current, now);
                false
            }
            None => {
                self.seen.insert(name.to_owned(), (current, now));
                false
            }
        }
    }

    /// Forgets Leases not named in `keep`.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        self.seen.retain(|name, _| keep(name));
    }
}

fn new_lease(name: &str, holder: &str, duration: Duration, now: Timestamp) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(duration_seconds(duration)),
            acquire_time: Some(MicroTime(now)),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(0),
            ..Default::default()
        }),
    }
}

fn duration_seconds(duration: Duration) -> i32 {
    i32::try_from(duration.as_secs().max(1)).unwrap_or(i32::MAX)
}

/// Renews the Lease `name` for `holder`, creating it when missing and taking it over whatever
/// its holder (a host owns its host Lease). Optimistic: a concurrent writer makes this fail
/// with 409 Conflict, and the caller retries.
pub async fn renew(api: &Api<Lease>, name: &str, holder: &str, duration: Duration) -> Result<Lease, kube::Error> {
    let now = Timestamp::now();
    match api.get_opt(name).await? {
        None => {
            api.create(&PostParams::default(), &new_lease(name, holder, duration, now))
                .await
        }
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            if spec.holder_identity.as_deref() != Some(holder) {
                spec.holder_identity = Some(holder.to_owned());
                spec.acquire_time = Some(MicroTime(now));
                spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            spec.lease_duration_seconds = Some(duration_seconds(duration));
            spec.renew_time = Some(MicroTime(now));
            api.replace(name, &PostParams::default(), &lease).await
        }
    }
}

/// Leader election over one Lease.
#[derive(Debug)]
pub struct LeaderElection {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observer: LeaseObserver,
}

impl LeaderElection {
    /// Competes for the Lease `name` in `api`'s namespace as `identity`.
    pub fn new(api: Api<Lease>, name: &str, identity: &str, duration: Duration) -> LeaderElection {
        LeaderElection {
            api,
            name: name.to_owned(),
            identity: identity.to_owned(),
            duration,
            observer: LeaseObserver::default(),
        }
    }

    /// Tries to hold the Lease now: renews it when held, acquires it when free or expired.
    /// Returns whether this process leads. Call it more often than the Lease duration.
    pub async fn try_lead(&mut self) -> Result<bool, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let holder = current
            .as_ref()
            .and_then(|l| l.spec.as_ref())
            .and_then(|s| s.holder_identity.as_deref());
        let mine = holder == Some(self.identity.as_str());
        let free = holder.is_none_or(str::is_empty);
        let expired = self
            .observer
            .expired(&self.name, current.as_ref(), self.duration, Instant::now());
        if !(mine || free || expired || current.is_none()) {
            return Ok(false);
        }
        match renew(&self.api, &self.name, &self.identity, self.duration).await {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Gives the Lease up so another candidate takes over at once.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let spec = lease.spec.get_or_insert_with(Default::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: &str, renewed_at_second: i64, duration: i32) -> Lease {
        Lease {
            metadata: ObjectMeta::default(),
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.to_owned()),
                renew_time: Some(MicroTime(Timestamp::from_second(renewed_at_second).unwrap())),
                lease_duration_seconds: Some(duration),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn a_lease_expires_only_after_going_unrenewed_for_its_duration() {
        let mut observer = LeaseObserver::default();
        let start = Instant::now();
        let default = Duration::from_secs(40);
        let at = |s: u64| start + Duration::from_secs(s);
        assert!(
            !observer.expired("h", Some(&lease("h", 100, 10)), default, at(0)),
            "first sight gets grace"
        );
        assert!(!observer.expired("h", Some(&lease("h", 100, 10)), default, at(9)));
        assert!(
            !observer.expired("h", Some(&lease("h", 110, 10)), default, at(11)),
            "renewed"
        );
        assert!(!observer.expired("h", Some(&lease("h", 110, 10)), default, at(20)));
        assert!(observer.expired("h", Some(&lease("h", 110, 10)), default, at(22)));
        // The renewer's clock may be far off: only change matters.
        assert!(!observer.expired("h", Some(&lease("h", 5, 10)), default, at(23)));
    }

    #[test]
    fn a_missing_lease_expires_after_the_default_duration() {
        let mut observer = LeaseObserver::default();
        let start = Instant::now();
        assert!(!observer.expired("gone", None, Duration::from_secs(5), start));
        assert!(!observer.expired("gone", None, Duration::from_secs(5), start + Duration::from_secs(5)));
        assert!(observer.expired("gone", None, Duration::from_secs(5), start + Duration::from_secs(6)));
        observer.retain(|name| name != "gone");
        assert!(!observer.expired("gone", None, Duration::from_secs(5), start + Duration::from_secs(7)));
    }

    #[test]
    fn durations_come_from_the_lease() {
        assert_eq!(
            lease_duration(Some(&lease("h", 0, 7)), Duration::from_secs(1)),
            Duration::from_secs(7)
        );
        assert_eq!(lease_duration(None, Duration::from_secs(3)), Duration::from_secs(3));
        assert_eq!(duration_seconds(Duration::from_millis(10)), 1);
    }
}
