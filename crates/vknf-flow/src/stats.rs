//! Counters of everything read, decoded, dropped and evicted, so that nothing is lost silently.

use serde::{Deserialize, Serialize};

use crate::decode::DropReason;

/// Counters of a flow table and of the source feeding it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Frames read from the source.
    pub frames: u64,
    /// Frames decoded into TCP segments.
    pub tcp_segments: u64,
    /// Frames of a link type this crate does not decode.
    pub dropped_unsupported_link: u64,
    /// Frames whose headers were cut or inconsistent.
    pub dropped_malformed: u64,
    /// Frames that were not IP.
    pub dropped_not_ip: u64,
    /// IP packets that were not TCP.
    pub dropped_not_tcp: u64,
    /// IP fragments.
    pub dropped_fragment: u64,
    /// TCP segments whose payload the snaplen cut.
    pub cut_segments: u64,
    /// Flows created.
    pub flows_created: u64,
    /// Flows ended, by any reason.
    pub flows_finished: u64,
    /// Flows evicted because the table was full.
    pub flows_evicted: u64,
    /// Holes given up on because the table's reassembly memory budget was spent.
    pub budget_gaps: u64,
    /// Early events emitted.
    pub early_events: u64,
    /// Frames the kernel dropped before a live capture read them (libpcap's count).
    pub capture_dropped: u64,
}

impl Stats {
    /// Counts one dropped frame.
    pub fn count_drop(&mut self, reason: DropReason) {
        match reason {
            DropReason::UnsupportedLink => self.dropped_unsupported_link += 1,
            DropReason::Malformed => self.dropped_malformed += 1,
            DropReason::NotIp => self.dropped_not_ip += 1,
            DropReason::NotTcp => self.dropped_not_tcp += 1,
            DropReason::Fragment => self.dropped_fragment += 1,
        }
    }

    /// Adds another table's counters (shards of a live capture).
    pub fn add(&mut self, other: &Stats) {
        self.frames += other.frames;
        self.tcp_segments += other.tcp_segments;
        self.dropped_unsupported_link += other.dropped_unsupported_link;
        self.dropped_malformed += other.dropped_malformed;
        self.dropped_not_ip += other.dropped_not_ip;
        self.dropped_not_tcp += other.dropped_not_tcp;
        self.dropped_fragment += other.dropped_fragment;
        self.cut_segments += other.cut_segments;
        self.flows_created += other.flows_created;
        self.flows_finished += other.flows_finished;
        self.flows_evicted += other.flows_evicted;
        self.budget_gaps += other.budget_gaps;
        self.early_events += other.early_events;
        self.capture_dropped += other.capture_dropped;
    }
}
