//! Where `vknf classify` runs the forest: in this process through `vknf_runtime` (GPU or CPU
//! loader), or in a served function through the binary protocol.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use vknf_functions::{CpuLoader, FunctionLoader, FunctionSpec, GpuLoader};
use vknf_protocol::blocking_client::BlockingClient;
use vknf_runtime::{Answer, Call, FunctionHandle, Rows, Runtime, RuntimeSettings};

/// Labels (one per row) and scores (`n_classes` per row) of one batch.
pub struct Scored {
    /// Class index per row.
    pub labels: Vec<u32>,
    /// Scores, row-major.
    pub scores: Vec<f32>,
}

/// The forest, wherever it runs.
pub enum Backend {
    /// Loaded into a `vknf_runtime::Runtime` of this process.
    InProcess(InProcess),
    /// A function served at an address.
    Remote(Remote),
}

/// A forest loaded in this process.
pub struct InProcess {
    runtime: Runtime,
    handle: FunctionHandle,
    gpu: Option<Arc<GpuLoader>>,
    spare: Answer,
}

/// A served function.
pub struct Remote {
    client: BlockingClient,
    addr: String,
    labels_index: usize,
    scores_index: usize,
}

/// Bit of the forest family's `scores` output in a call's output mask (output 0, `labels`, is
/// always returned).
const SCORES_MASK: u32 = 0b10;
/// Most row bytes per request to a served function (inside the server's default frame limit).
const REMOTE_REQUEST_BYTES: usize = 4 << 20;

impl InProcess {
    /// Loads `vkf` (a compiled forest) as a function of a new runtime on `tokio` (its batcher runs
    /// there; calls come from the caller's thread).
    pub fn load(
        tokio: &tokio::runtime::Runtime,
        vkf: Vec<u8>,
        gpu: Option<Arc<GpuLoader>>,
        max_batch_rows: usize,
    ) -> anyhow::Result<InProcess> {
        let loader: Arc<dyn FunctionLoader> = match &gpu {
            Some(gpu) => gpu.clone(),
            None => Arc::new(CpuLoader::default()),
        };
        let spirv = vknf_kernels::by_name("forest")
            .context("this build has no forest kernel")?
            .to_vec();
        let spec = FunctionSpec {
            max_batch_rows: Some(max_batch_rows.max(1)),
            ..FunctionSpec::new("classify", "forest", spirv)
        };
        let (runtime, handle) = tokio.block_on(async move {
            let runtime = Runtime::new(loader, RuntimeSettings::default());
            let handle = runtime.load(spec, Some(vkf.into()), None).await;
            (runtime, handle)
        });
        let handle = handle.context("loading the forest")?;
        Ok(InProcess {
            runtime,
            handle,
            gpu,
            spare: Answer::default(),
        })
    }

    /// The runtime, for its metrics.
    pub fn runtime(&self) -> &Runtime {
        &self.runtime
    }
}

impl Remote {
    /// Connects to the function at `addr` and checks that it takes `width` features and scores
    /// `n_classes` classes.
    pub fn connect(addr: &str, width: usize, n_classes: usize) -> anyhow::Result<Remote> {
        let mut client =
            BlockingClient::connect(addr, Duration::from_secs(30)).with_context(|| format!("connecting to {addr}"))?;
        let description = client
            .describe()
            .with_context(|| format!("describing the function at {addr}"))?;
        let info = &description.info;
        let labels_index = info.output_index("labels");
        let scores_index = info
            .output_index("scores")
            .filter(|i| info.outputs[*i].width == n_classes);
        match (labels_index, scores_index) {
            (Some(labels_index), Some(scores_index)) if info.input.width == width => Ok(Remote {
                client,
                addr: addr.to_owned(),
                labels_index,
                scores_index,
            }),
            _ => anyhow::bail!(
                "{} at {addr} takes {} features and has outputs {:?}; the schema selects {width} features of {n_classes} classes",
                description.name,
                info.input.width,
                info.outputs
                    .iter()
                    .map(|o| format!("{} x{}", o.name, o.width))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

impl Backend {
    /// Classifies `rows` (`width` values each).
    pub fn classify(&mut self, rows: Vec<f32>, width: usize) -> anyhow::Result<Scored> {
        match self {
            Backend::InProcess(local) => {
                let call = Call::new(Rows::f32(rows, width)?, SCORES_MASK);
                let answer = local
                    .handle
                    .call_blocking_reusing(call, std::mem::take(&mut local.spare))
                    .context("the forest refused a batch")?;
                let scored = Scored {
                    labels: answer.output(0).context("the answer lacks labels")?.as_u32().to_vec(),
                    scores: answer.output(1).context("the answer lacks scores")?.as_f32().to_vec(),
                };
                local.spare = answer;
                Ok(scored)
            }
            Backend::Remote(remote) => {
                let mut scored = Scored {
                    labels: Vec::new(),
                    scores: Vec::new(),
                };
                let chunk_rows = (REMOTE_REQUEST_BYTES / 4 / width.max(1)).max(1);
                for chunk in rows.chunks(chunk_rows * width.max(1)) {
                    let answer = remote
                        .client
                        .infer(width as u32, chunk, 1 << remote.scores_index)
                        .with_context(|| format!("the function at {} refused a request", remote.addr))?;
                    let labels = answer.output(remote.labels_index).context("the answer lacks labels")?;
                    scored.labels.extend(labels.to_u32());
                    let scores = answer.output(remote.scores_index).context("the answer lacks scores")?;
                    scored.scores.extend(scores.to_f32());
                }
                Ok(scored)
            }
        }
    }

    /// Stops the in-process function (its lanes release the device first), then fails if the
    /// validation layer reported errors (GPU in process under `--validate`).
    pub fn finish(self, tokio: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        if let Backend::InProcess(local) = self {
            drop(local.handle);
            tokio.block_on(local.runtime.shutdown());
            if let Some(gpu) = local.gpu {
                gpu.instance().check_validation()?;
            }
        }
        Ok(())
    }
}
