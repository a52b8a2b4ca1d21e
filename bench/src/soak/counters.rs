//! Named counters of one client kind, and the anomalies it saw (what the server should not have done).

use std::collections::BTreeMap;

use parking_lot::Mutex;
use serde::Serialize;

/// How many anomaly messages are kept per client kind (all are counted).
const KEPT_ANOMALIES: usize = 20;

/// Counters of one client kind.
#[derive(Default)]
pub struct Counters {
    inner: Mutex<CountersInner>,
}

#[derive(Default, Clone, Serialize)]
struct CountersInner {
    counts: BTreeMap<String, u64>,
    anomalies: u64,
    anomaly_examples: Vec<String>,
}

/// What one client kind did, for the summary.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct CountersReport {
    /// Events by name.
    pub counts: BTreeMap<String, u64>,
    /// Things the server did that it should not have (each fails the run).
    pub anomalies: u64,
    /// The first anomalies, described.
    pub anomaly_examples: Vec<String>,
}

impl Counters {
    /// Adds `n` to the counter `name`.
    pub fn add(&self, name: &str, n: u64) {
        let mut inner = self.inner.lock();
        match inner.counts.get_mut(name) {
            Some(count) => *count += n,
            None => {
                inner.counts.insert(name.to_owned(), n);
            }
        }
    }

    /// Adds one to the counter `name`.
    pub fn inc(&self, name: &str) {
        self.add(name, 1);
    }

    /// Records an anomaly: the server did what it should not have.
    pub fn anomaly(&self, what: String) {
        let mut inner = self.inner.lock();
        inner.anomalies += 1;
        if inner.anomaly_examples.len() < KEPT_ANOMALIES {
            inner.anomaly_examples.push(what);
        }
    }

    /// The counters now.
    pub fn report(&self) -> CountersReport {
        let inner = self.inner.lock().clone();
        CountersReport {
            counts: inner.counts,
            anomalies: inner.anomalies,
            anomaly_examples: inner.anomaly_examples,
        }
    }
}
