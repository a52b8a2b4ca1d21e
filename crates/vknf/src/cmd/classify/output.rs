//! The JSON line `vknf classify` writes per decision, and the summary it prints at the end.

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use vknf_flow::{EndReason, FlowRecord};

/// One decision about one flow.
#[derive(Serialize)]
pub struct DecisionLine<'a> {
    /// `early` (after the first N records, the flow goes on) or `final` (at flow end).
    pub decision: &'static str,
    /// Client address.
    pub client_ip: IpAddr,
    /// Client port.
    pub client_port: u16,
    /// Server address.
    pub server_ip: IpAddr,
    /// Server port.
    pub server_port: u16,
    /// IP protocol (6).
    pub protocol: u8,
    /// First packet, ns since the epoch.
    pub first_ns: u64,
    /// Last packet so far, ns since the epoch.
    pub last_ns: u64,
    /// ClientHello server name, when visible.
    pub sni: Option<&'a str>,
    /// TLS records the decision saw.
    pub records: usize,
    /// No gap, cut or other flag: the records are the whole connection's so far.
    pub complete: bool,
    /// Why the flow ended (final decisions).
    pub end: Option<EndReason>,
    /// The predicted class.
    pub label: &'a str,
    /// The best classes with their scores, best first.
    pub top: Vec<ClassScore<'a>>,
    /// The label `--label-by` / `--labels` gives the flow, when asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub truth: Option<String>,
}

/// A class and its score.
#[derive(Serialize)]
pub struct ClassScore<'a> {
    /// Class name.
    pub label: &'a str,
    /// Its score (the forest's probability).
    pub score: f32,
}

impl<'a> DecisionLine<'a> {
    /// The line of `flow` given its scores (one per class, in `classes` order).
    pub fn new(
        flow: &'a FlowRecord,
        decision: &'static str,
        label: &'a str,
        scores: &[f32],
        classes: &'a [String],
        top_k: usize,
        truth: Option<String>,
    ) -> Self {
        let mut order: Vec<usize> = (0..scores.len().min(classes.len())).collect();
        // Best first; ties to the lower index, as the forest's argmax breaks them.
        order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
        let top = order
            .into_iter()
            .take(top_k)
            .map(|i| ClassScore {
                label: &classes[i],
                score: scores[i],
            })
            .collect();
        DecisionLine {
            decision,
            client_ip: flow.client.addr,
            client_port: flow.client.port,
            server_ip: flow.server.addr,
            server_port: flow.server.port,
            protocol: 6,
            first_ns: flow.first_ns,
            last_ns: flow.last_ns,
            sni: flow.sni.as_deref(),
            records: flow.records.len(),
            complete: flow.flags.complete(),
            end: flow.end,
            label,
            top,
            truth,
        }
    }
}

/// Counts for the summary line.
#[derive(Default)]
pub struct Summary {
    /// Early decisions.
    pub early: u64,
    /// Final decisions.
    pub final_: u64,
    /// Final decisions of flows with a truth label.
    pub with_truth: u64,
    /// Of those, how many were right.
    pub correct: u64,
    /// Batches sent to the forest.
    pub batches: u64,
    /// Time spent waiting for the forest's answers (the flows' reading stops meanwhile).
    pub forest: Duration,
}

impl Summary {
    /// Counts one decision.
    pub fn add(&mut self, early: bool, label: &str, truth: Option<&str>) {
        if early {
            self.early += 1;
            return;
        }
        self.final_ += 1;
        if let Some(truth) = truth {
            self.with_truth += 1;
            self.correct += u64::from(truth == label);
        }
    }

    /// Counts one batch the forest answered after `waited`.
    pub fn add_batch(&mut self, waited: Duration) {
        self.batches += 1;
        self.forest += waited;
    }

    /// The line printed at the end, after `elapsed` of reading and classifying: how much of it was
    /// the forest's tells whether the classifier or the packets bound the run.
    pub fn line(&self, elapsed: Duration) -> String {
        let mut line = format!("classified {} flows ({} early decisions)", self.final_, self.early);
        if self.with_truth > 0 {
            line.push_str(&format!(
                "; accuracy {}/{} = {:.1}%",
                self.correct,
                self.with_truth,
                100.0 * self.correct as f64 / self.with_truth as f64
            ));
        }
        line.push_str(&format!(
            "; {} batches, the forest {:.1} ms of {:.3} s",
            self.batches,
            self.forest.as_secs_f64() * 1e3,
            elapsed.as_secs_f64()
        ));
        line
    }
}
