//! The reconciler's reports to the cluster and to the operator: the status annotation, Events,
//! and cold-start timings.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use k8s_openapi::api::core::v1::Service;
use sha2::{Digest as _, Sha256};
use vknf_manifest::{FunctionKey, SpecError, hex};
use vknf_server::{FunctionStatus, HostStatus};

use super::{PassTimings, Reconciler, probe_ip};
use crate::agent::publish;
use crate::agent::{COLD_STARTS_KEPT, ColdStart};
use crate::keys;
use crate::plan::{Plan, object_key};
use crate::status::{FailureReason, FunctionPhase, HostDevice, HostFunctionStatus};

impl Reconciler {
    /// What this host reports for each function placed here or draining.
    pub(super) fn reports(
        &self,
        plan: &Plan,
        status: &HostStatus,
        rejected: &BTreeMap<FunctionKey, SpecError>,
        fetch_failures: &BTreeMap<FunctionKey, String>,
    ) -> BTreeMap<FunctionKey, HostFunctionStatus> {
        let mut reports = BTreeMap::new();
        for key in plan.placed.keys() {
            let answering = self.answering.get(key).map(|addr| self.advertised(*addr));
            let (model_sha256, spirv_sha256) = self.versions(key);
            let mut report = HostFunctionStatus {
                phase: FunctionPhase::Pending,
                address: None,
                model_sha256: None,
                spirv_sha256: None,
                reason: None,
                message: None,
                devices: Vec::new(),
            };
            let devices: Vec<HostDevice> = status.devices.iter().map(HostDevice::of).collect();
            match status.functions.get(key) {
                Some(FunctionStatus::Serving { .. }) if answering.is_some() => {
                    report.phase = FunctionPhase::Serving;
                    report.devices = devices;
                    report.address = answering;
                    report.model_sha256 = model_sha256;
                    report.spirv_sha256 = spirv_sha256;
                }
                Some(FunctionStatus::Serving { .. }) => {}
                Some(FunctionStatus::Failed {
                    reason,
                    serving_previous,
                }) => {
                    report.phase = FunctionPhase::Failed;
                    report.reason = Some(match rejected.get(key) {
                        Some(error) => FailureReason::of_spec_error(error),
                        None => FailureReason::of_server_failure(reason),
                    });
                    report.message = Some(reason.clone());
                    if serving_previous.is_some() && answering.is_some() {
                        report.devices = devices;
                        report.address = answering;
                        report.model_sha256 = model_sha256;
                        report.spirv_sha256 = spirv_sha256;
                    }
                }
                None => {
                    if let Some(error) = fetch_failures.get(key) {
                        report.reason = Some(FailureReason::ModelFetchFailed);
                        report.message = Some(error.clone());
                    }
                }
            }
            reports.insert(key.clone(), report);
        }
        for key in self.draining.keys() {
            let (model_sha256, spirv_sha256) = self.versions(key);
            reports.insert(
                key.clone(),
                HostFunctionStatus {
                    phase: FunctionPhase::Draining,
                    address: self.answering.get(key).map(|addr| self.advertised(*addr)),
                    model_sha256,
                    spirv_sha256,
                    reason: None,
                    message: None,
                    devices: Vec::new(),
                },
            );
        }
        reports
    }

    fn advertised(&self, addr: SocketAddr) -> String {
        SocketAddr::new(probe_ip(addr.ip(), self.config.host.advertise), addr.port()).to_string()
    }

    fn versions(&self, key: &FunctionKey) -> (Option<String>, Option<String>) {
        let Some(function) = self.running.get(key) else {
            return (None, None);
        };
        let model = function.spec.model.as_ref().map(|m| hex(&m.sha256));
        (model, Some(hex(&Sha256::digest(&function.spec.function.spirv))))
    }

    /// Writes the host's status annotation where it differs, and removes it from Services this
    /// host no longer serves.
    pub(super) async fn publish_status(
        &mut self,
        services: &[Arc<Service>],
        reports: &BTreeMap<FunctionKey, HostFunctionStatus>,
        write_failed: &mut bool,
    ) {
        let annotation = keys::status_annotation(&self.config.host.name);
        for service in services {
            let Some(key) = object_key(&service.metadata) else {
                continue;
            };
            let current = service.metadata.annotations.as_ref().and_then(|a| a.get(&annotation));
            let wanted = reports.get(&key).map(HostFunctionStatus::to_json);
            if current == wanted.as_ref() {
                continue;
            }
            if let Err(error) =
                publish::set_status_annotation(&self.client, service, &annotation, wanted.as_deref()).await
            {
                tracing::warn!(function = %key, error = %publish::error_text(&error), "cannot write the status annotation; retrying");
                self.shared.metrics.error("status");
                *write_failed = true;
            }
        }
    }

    /// Records an Event whenever a function's state changes.
    pub(super) async fn record_events(&mut self, plan: &Plan, reports: &BTreeMap<FunctionKey, HostFunctionStatus>) {
        let mut events = Vec::new();
        for (key, report) in reports {
            let previous = self.reported.get(key);
            if previous == Some(report) {
                continue;
            }
            let Some(service) = plan
                .placed
                .get(key)
                .map(|p| p.service.clone())
                .or_else(|| self.draining.get(key).map(|d| d.service.clone()))
            else {
                continue;
            };
            let host = &self.config.host.name;
            let event = match (report.phase, report.reason) {
                (FunctionPhase::Serving, _) => {
                    let was_serving = previous.is_some_and(|p| p.model_sha256.is_some() || p.spirv_sha256.is_some());
                    let reason = if was_serving { "Reloaded" } else { "Serving" };
                    let address = report.address.clone().unwrap_or_default();
                    Some((false, reason, "Load", format!("serving on {host} at {address}")))
                }
                (FunctionPhase::Failed, Some(reason)) => {
                    let message = report.message.clone().unwrap_or_default();
                    let fallback = if report.address.is_some() {
                        " (the previous version keeps serving)"
                    } else {
                        ""
                    };
                    Some((
                        true,
                        reason.as_str(),
                        reason.action(),
                        format!("{host}: {message}{fallback}"),
                    ))
                }
                (FunctionPhase::Pending, Some(reason)) => {
                    let message = report.message.clone().unwrap_or_default();
                    Some((true, reason.as_str(), reason.action(), format!("{host}: {message}")))
                }
                (FunctionPhase::Draining, _) => Some((
                    false,
                    "Draining",
                    "Drain",
                    format!("{host} no longer serves it: draining"),
                )),
                _ => None,
            };
            if let Some(event) = event {
                events.push((key.clone(), service, event));
            }
            self.reported.insert(key.clone(), report.clone());
        }
        for (key, unplaceable) in &plan.unplaceable {
            let report = HostFunctionStatus {
                phase: FunctionPhase::Failed,
                address: None,
                model_sha256: None,
                spirv_sha256: None,
                reason: Some(FailureReason::InvalidPlacement),
                message: Some(unplaceable.error.to_string()),
                devices: Vec::new(),
            };
            if self.reported.get(key) != Some(&report) {
                let note = format!("{}: {}", self.config.host.name, unplaceable.error);
                let reason = FailureReason::InvalidPlacement;
                events.push((
                    key.clone(),
                    unplaceable.service.clone(),
                    (true, reason.as_str(), reason.action(), note),
                ));
                self.reported.insert(key.clone(), report);
            }
        }
        self.reported
            .retain(|key, _| reports.contains_key(key) || plan.unplaceable.contains_key(key));
        for (key, service, (warning, reason, action, note)) in events {
            if warning {
                tracing::warn!(function = %key, reason, %note, "event");
            } else {
                tracing::info!(function = %key, reason, %note, "event");
            }
            if let Err(error) = publish::record(&self.recorder, &service, warning, reason, action, &note).await {
                tracing::warn!(function = %key, error = %publish::error_text(&error), "cannot record an event");
                self.shared.metrics.error("event");
            }
        }
    }

    pub(super) fn record_cold_starts(
        &self,
        pass_start: Instant,
        newly_answering: &BTreeSet<FunctionKey>,
        was_running: &BTreeSet<FunctionKey>,
        timings: &PassTimings,
    ) {
        let first_seen = self.first_seen.lock();
        for key in newly_answering.iter().filter(|k| !was_running.contains(*k)) {
            let seen = first_seen.get(key).copied().unwrap_or(pass_start).min(pass_start);
            let cold = ColdStart {
                function: key.clone(),
                watch_delay: pass_start - seen,
                model_fetch: timings.model_fetch.get(key).copied().unwrap_or_default(),
                validation: timings.validation,
                load: timings.load,
                probe: timings.probe.get(key).copied().unwrap_or_default(),
                total: timings.answered_at.get(key).copied().unwrap_or(pass_start) - seen,
            };
            tracing::info!(
                function = %key,
                watch_delay_ms = cold.watch_delay.as_secs_f64() * 1e3,
                model_fetch_ms = cold.model_fetch.as_secs_f64() * 1e3,
                validation_ms = cold.validation.as_secs_f64() * 1e3,
                load_ms = cold.load.as_secs_f64() * 1e3,
                probe_ms = cold.probe.as_secs_f64() * 1e3,
                total_ms = cold.total.as_secs_f64() * 1e3,
                "cold start"
            );
            let metrics = &self.shared.metrics;
            for (phase, duration) in [
                ("watch_delay", cold.watch_delay),
                ("model_fetch", cold.model_fetch),
                ("validation", cold.validation),
                ("load", cold.load),
                ("probe", cold.probe),
                ("total", cold.total),
            ] {
                metrics.observe_phase(phase, duration.as_secs_f64());
            }
            let mut kept = self.shared.cold_starts.lock();
            if kept.len() == COLD_STARTS_KEPT {
                kept.pop_front();
            }
            kept.push_back(cold);
        }
    }

    /// A cold start is timed from the first event since the function last settled (serving,
    /// failed, draining, or not placed here); transient trouble such as a failed model fetch
    /// counts towards it.
    pub(super) fn forget_first_seen(&self, plan: &Plan, reports: &BTreeMap<FunctionKey, HostFunctionStatus>) {
        self.first_seen.lock().retain(|key, _| {
            plan.placed.contains_key(key) && reports.get(key).is_some_and(|r| r.phase == FunctionPhase::Pending)
        });
    }
}
