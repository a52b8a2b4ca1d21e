//! Calls of a function whose outputs the runtime writes straight into the buffers that become the
//! response: gRPC's `raw_output_contents` and REST's binary tensors are these buffers, moved, not copied.

use tokio::sync::oneshot;
use vknf_runtime::{AnswerLayout, Call, CallError, FunctionHandle, Reply};

/// The outputs of one call, indexed like the function's outputs; an output not computed is empty.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Rows answered.
    pub n_rows: usize,
    buffers: Vec<Vec<u8>>,
}

impl Outputs {
    /// The little-endian bytes of output `index`.
    pub fn bytes(&self, index: usize) -> &[u8] {
        self.buffers.get(index).map_or(&[], Vec::as_slice)
    }

    /// Takes the buffer of output `index` out, leaving it empty.
    pub fn take(&mut self, index: usize) -> Vec<u8> {
        self.buffers.get_mut(index).map(std::mem::take).unwrap_or_default()
    }
}

struct OipReply {
    outputs: Outputs,
    sender: oneshot::Sender<Result<Outputs, CallError>>,
}

impl Reply for OipReply {
    fn prepare(&mut self, layout: &AnswerLayout<'_>) {
        self.outputs.n_rows = layout.n_rows;
        self.outputs.buffers = (0..layout.info.outputs.len())
            .map(|index| {
                if layout.mask & (1 << index) != 0 {
                    vec![0; layout.output_bytes(index)]
                } else {
                    Vec::new()
                }
            })
            .collect();
    }

    fn output(&mut self, index: usize) -> &mut [u8] {
        self.outputs.buffers.get_mut(index).map_or(&mut [], Vec::as_mut_slice)
    }

    fn complete(self: Box<Self>, _layout: &AnswerLayout<'_>) {
        let _ = self.sender.send(Ok(self.outputs));
    }

    fn fail(self: Box<Self>, error: CallError) {
        let _ = self.sender.send(Err(error));
    }

    fn is_cancelled(&self) -> bool {
        // The request's task is gone (client disconnected): queued work for it is skipped.
        self.sender.is_closed()
    }
}

/// Calls `function` and waits for its outputs.
pub async fn call(function: &FunctionHandle, call: Call) -> Result<Outputs, CallError> {
    let (sender, receiver) = oneshot::channel();
    function.submit(
        call,
        Box::new(OipReply {
            outputs: Outputs::default(),
            sender,
        }),
    );
    receiver
        .await
        .unwrap_or_else(|_| Err(CallError::Internal("the call was dropped".into())))
}
