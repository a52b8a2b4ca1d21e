//! The file pipeline: a packet source, the decoder and one flow table, as an iterator of flow
//! events.

use std::collections::VecDeque;

use crate::decode::{DropReason, decode_then};
use crate::flow::{FlowConfig, FlowEvent, FlowTable};
use crate::source::{PacketSource, SourceError};
use crate::stats::Stats;

/// Frames from a [`PacketSource`] in, [`FlowEvent`]s out.
///
/// A source error (a truncated or corrupt file) is yielded once, after which the flows still
/// open are ended ([`crate::EndReason::EndOfInput`]) and yielded: what was read is not lost.
pub struct FlowReader<S> {
    source: S,
    table: FlowTable,
    pending: VecDeque<FlowEvent>,
    scratch: Vec<FlowEvent>,
    done: bool,
}

impl<S: PacketSource> FlowReader<S> {
    /// A reader over `source` with a table configured by `config`.
    pub fn new(source: S, config: FlowConfig) -> Self {
        Self {
            source,
            table: FlowTable::new(config),
            pending: VecDeque::new(),
            scratch: Vec::new(),
            done: false,
        }
    }

    /// Counters so far (complete once the iterator has ended).
    pub fn stats(&self) -> &Stats {
        self.table.stats()
    }

    /// The source.
    pub fn source(&self) -> &S {
        &self.source
    }

    fn end_of_input(&mut self) {
        self.done = true;
        self.table.finish(&mut self.scratch);
        self.pending.extend(self.scratch.drain(..));
    }
}

impl<S: PacketSource> Iterator for FlowReader<S> {
    type Item = Result<FlowEvent, SourceError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                return Some(Ok(event));
            }
            if self.done {
                return None;
            }
            match self.source.next_packet() {
                Ok(Some(packet)) => {
                    let table = &mut self.table;
                    let scratch = &mut self.scratch;
                    table.stats_mut().frames += 1;
                    let processed = packet.link.ok_or(DropReason::UnsupportedLink).and_then(|link| {
                        decode_then(link, packet.data, |segment| {
                            table.process(packet.ts_ns, segment, scratch)
                        })
                    });
                    if let Err(reason) = processed {
                        table.stats_mut().count_drop(reason);
                    }
                    if !self.scratch.is_empty() {
                        self.pending.extend(self.scratch.drain(..));
                    }
                }
                Ok(None) => self.end_of_input(),
                Err(error) => {
                    self.end_of_input();
                    return Some(Err(error));
                }
            }
        }
    }
}
