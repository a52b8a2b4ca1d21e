//! Prometheus metrics of the function runtime: what every caller's calls did, whichever front end made
//! them. Front ends register their own metrics in the same registry.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels naming a function.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FunctionLabels {
    /// `namespace/name`.
    pub function: String,
}

/// Labels naming a function and an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `namespace/name`, or `-` for errors before a function is known.
    pub function: String,
    /// Upper-case error name ([`crate::CallError::code_name`], or a front end's own code).
    pub code: String,
}

/// Labels naming a front end's protocol and a function.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    /// The front end's protocol: `binary`, `rest` or `grpc`.
    pub protocol: String,
    /// `namespace/name`, or `-` for requests before a function is known.
    pub function: String,
}

/// Labels naming a front end's protocol, a function and an error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolErrorLabels {
    /// The front end's protocol: `binary`, `rest` or `grpc`.
    pub protocol: String,
    /// `namespace/name`, or `-` for requests before a function is known.
    pub function: String,
    /// Upper-case error name (the front end's own, or [`crate::CallError::code_name`]).
    pub code: String,
}

/// Labels naming a device of the loader (its index in the loader's order).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceLabels {
    /// The device's index, from 0.
    pub device: String,
}

/// Labels describing a device.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceInfoLabels {
    /// The device's index, from 0.
    pub device: String,
    /// The device's name.
    pub name: String,
    /// The device's type (`discrete-gpu`, `cpu`, ...).
    pub device_type: String,
}

fn latency_histogram() -> Histogram {
    // 10 µs .. ~84 s
    Histogram::new(exponential_buckets(1e-5, 2.0, 24))
}

fn batch_rows_histogram() -> Histogram {
    Histogram::new(exponential_buckets(1.0, 2.0, 21))
}

/// Every metric of one function runtime.
#[derive(Clone)]
pub struct Metrics {
    /// Requests answered successfully.
    pub requests: Family<FunctionLabels, Counter>,
    /// Rows answered successfully.
    pub rows: Family<FunctionLabels, Counter>,
    /// Calls answered with an error, by error.
    pub errors: Family<ErrorLabels, Counter>,
    /// Rows per executed batch.
    pub batch_rows: Family<FunctionLabels, Histogram>,
    /// Input bytes admitted and not yet answered.
    pub queued_bytes: Family<FunctionLabels, Gauge>,
    /// Requests admitted and not yet answered.
    pub queued_requests: Family<FunctionLabels, Gauge>,
    /// Seconds from admission to answer.
    pub request_latency: Family<FunctionLabels, Histogram>,
    /// Seconds a lane spends running a batch.
    pub execution_time: Family<FunctionLabels, Histogram>,
    /// Lanes alive across all functions.
    pub live_lanes: Gauge,
    /// Device losses seen (one per loss of a device, however many lanes reported it).
    pub device_losses: Counter,
    /// Quarantines of a function after its kernel missed its deadline.
    pub quarantines: Family<FunctionLabels, Counter>,
    /// 1 for each device of the loader, with its name and type.
    pub device_info: Family<DeviceInfoLabels, Gauge>,
    /// 1 while a device serves, 0 while it is being recovered or could not be recovered.
    pub device_up: Family<DeviceLabels, Gauge>,
    /// Resets of a device after its loss.
    pub device_resets: Family<DeviceLabels, Counter>,
    /// Batches run on a device.
    pub device_batches: Family<DeviceLabels, Counter>,
    /// Rows run on a device.
    pub device_rows: Family<DeviceLabels, Counter>,
    /// Lanes alive on a device, across all functions.
    pub device_lanes: Family<DeviceLabels, Gauge>,
    /// Requests each front end received, by protocol: every front end counts here, so one registry
    /// compares them.
    pub front_end_requests: Family<ProtocolLabels, Counter>,
    /// Requests each front end answered with an error, by protocol and error: the runtime's errors
    /// for its calls and the front end's own (decoding, unknown model, limits).
    pub front_end_errors: Family<ProtocolErrorLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Family::default(),
            rows: Family::default(),
            errors: Family::default(),
            batch_rows: Family::new_with_constructor(batch_rows_histogram),
            queued_bytes: Family::default(),
            queued_requests: Family::default(),
            request_latency: Family::new_with_constructor(latency_histogram),
            execution_time: Family::new_with_constructor(latency_histogram),
            live_lanes: Gauge::default(),
            device_losses: Counter::default(),
            quarantines: Family::default(),
            device_info: Family::default(),
            device_up: Family::default(),
            device_resets: Family::default(),
            device_batches: Family::default(),
            device_rows: Family::default(),
            device_lanes: Family::default(),
            front_end_requests: Family::default(),
            front_end_errors: Family::default(),
        }
    }
}

impl Metrics {
    /// The labels of device `index`.
    pub fn device_labels(index: usize) -> DeviceLabels {
        DeviceLabels {
            device: index.to_string(),
        }
    }

    /// Registers every metric under the `vknf` prefix.
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("vknf");
        r.register("requests", "Requests answered successfully", self.requests.clone());
        r.register("rows", "Rows answered successfully", self.rows.clone());
        r.register("errors", "Calls answered with an error, by error", self.errors.clone());
        r.register("batch_rows", "Rows per executed batch", self.batch_rows.clone());
        r.register(
            "queued_bytes",
            "Input bytes admitted and not yet answered",
            self.queued_bytes.clone(),
        );
        r.register(
            "queued_requests",
            "Requests admitted and not yet answered",
            self.queued_requests.clone(),
        );
        r.register(
            "request_latency_seconds",
            "Seconds from admission to answer",
            self.request_latency.clone(),
        );
        r.register(
            "execution_seconds",
            "Seconds a lane spends running a batch",
            self.execution_time.clone(),
        );
        r.register(
            "live_lanes",
            "Lanes alive across all functions",
            self.live_lanes.clone(),
        );
        r.register("device_losses", "Device losses seen", self.device_losses.clone());
        r.register(
            "quarantines",
            "Quarantines of a function after its kernel missed its deadline",
            self.quarantines.clone(),
        );
        r.register(
            "device_info",
            "1 for each device functions run on, with its name and type",
            self.device_info.clone(),
        );
        r.register(
            "device_up",
            "1 while a device serves, 0 while it is recovered or could not be",
            self.device_up.clone(),
        );
        r.register(
            "device_resets",
            "Resets of a device after its loss",
            self.device_resets.clone(),
        );
        r.register("device_batches", "Batches run on a device", self.device_batches.clone());
        r.register("device_rows", "Rows run on a device", self.device_rows.clone());
        r.register(
            "device_lanes",
            "Lanes alive on a device, across all functions",
            self.device_lanes.clone(),
        );
        r.register(
            "front_end_requests",
            "Requests each front end received, by protocol",
            self.front_end_requests.clone(),
        );
        r.register(
            "front_end_errors",
            "Requests each front end answered with an error, by protocol and error",
            self.front_end_errors.clone(),
        );
    }

    /// The counter of requests `protocol`'s front end received for `function` (look it up once and
    /// keep it: the call path then allocates no label set).
    pub fn front_end_requests(&self, protocol: &str, function: &str) -> Counter {
        self.front_end_requests
            .get_or_create(&ProtocolLabels {
                protocol: protocol.to_owned(),
                function: function.to_owned(),
            })
            .clone()
    }

    /// Counts one error answer of `protocol`'s front end.
    pub fn front_end_error(&self, protocol: &str, function: &str, code: &str) {
        self.front_end_errors
            .get_or_create(&ProtocolErrorLabels {
                protocol: protocol.to_owned(),
                function: function.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Number of error answers named `code` that `protocol`'s front end counted for `function`.
    pub fn front_end_error_count(&self, protocol: &str, function: &str, code: &str) -> u64 {
        self.front_end_errors
            .get_or_create(&ProtocolErrorLabels {
                protocol: protocol.to_owned(),
                function: function.to_owned(),
                code: code.to_owned(),
            })
            .get()
    }

    /// Counts one error answer.
    pub fn error(&self, function: &str, code: &str) {
        self.errors
            .get_or_create(&ErrorLabels {
                function: function.to_owned(),
                code: code.to_owned(),
            })
            .inc();
    }

    /// Number of error answers named `code` counted for `function`.
    pub fn error_count(&self, function: &str, code: &str) -> u64 {
        self.errors
            .get_or_create(&ErrorLabels {
                function: function.to_owned(),
                code: code.to_owned(),
            })
            .get()
    }

    /// Label set of a function.
    pub fn function(name: &str) -> FunctionLabels {
        FunctionLabels {
            function: name.to_owned(),
        }
    }
}

/// One function's metrics, looked up once when its engine starts so that the call path allocates no
/// label sets (the handles share their values with the registry's families).
#[derive(Clone)]
pub(crate) struct FunctionMetrics {
    pub(crate) requests: Counter,
    pub(crate) rows: Counter,
    pub(crate) batch_rows: Histogram,
    pub(crate) queued_bytes: Gauge,
    pub(crate) queued_requests: Gauge,
    pub(crate) request_latency: Histogram,
    pub(crate) execution_time: Histogram,
}

impl FunctionMetrics {
    /// The handles of `function`'s metrics in `metrics`.
    pub(crate) fn of(metrics: &Metrics, function: &str) -> FunctionMetrics {
        let labels = Metrics::function(function);
        FunctionMetrics {
            requests: metrics.requests.get_or_create(&labels).clone(),
            rows: metrics.rows.get_or_create(&labels).clone(),
            batch_rows: metrics.batch_rows.get_or_create(&labels).clone(),
            queued_bytes: metrics.queued_bytes.get_or_create(&labels).clone(),
            queued_requests: metrics.queued_requests.get_or_create(&labels).clone(),
            request_latency: metrics.request_latency.get_or_create(&labels).clone(),
            execution_time: metrics.execution_time.get_or_create(&labels).clone(),
        }
    }
}
