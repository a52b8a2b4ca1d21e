//! Lanes that wait at a gate: tests fill queues, hold calls in flight and inject device loss
//! deterministically, over any loader.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use vknf_functions::{CpuLoader, ExecError, Function, FunctionInfo, FunctionLoader, FunctionSpec, Lane, LoadError};

/// Holds lanes in `run` while closed, so tests can fill queues and keep requests in flight
/// deterministically. Also counts runs, and can report device loss on a chosen run.
#[derive(Default)]
pub struct Gate {
    closed: Mutex<bool>,
    changed: Condvar,
    /// Lane runs started.
    pub runs: AtomicUsize,
    /// Lane runs currently waiting at the gate.
    pub waiting: AtomicUsize,
    /// Run number (0-based) that reports device loss; usize::MAX for none.
    pub lose_device_on_run: AtomicUsize,
    /// Calls of `FunctionLoader::reset`.
    pub resets: AtomicUsize,
    /// Functions loaded.
    pub loads: AtomicUsize,
}

impl Gate {
    /// An open gate that loses no device.
    pub fn new() -> Arc<Gate> {
        let gate = Gate::default();
        gate.lose_device_on_run.store(usize::MAX, Ordering::SeqCst);
        Arc::new(gate)
    }

    /// Holds every lane that reaches the gate from now on.
    pub fn close(&self) {
        *self.closed.lock().unwrap() = true;
    }

    /// Lets every held lane go on.
    pub fn open(&self) {
        *self.closed.lock().unwrap() = false;
        self.changed.notify_all();
    }

    /// Waits while the gate is closed.
    fn pass(&self) {
        let mut closed = self.closed.lock().unwrap();
        self.waiting.fetch_add(1, Ordering::SeqCst);
        while *closed {
            closed = self.changed.wait(closed).unwrap();
        }
        self.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A loader (the built-in CPU loader unless given another) whose every lane passes through a [`Gate`].
pub struct GatedLoader(pub Arc<Gate>, pub Option<Arc<dyn FunctionLoader>>);

impl GatedLoader {
    /// The built-in CPU loader behind `gate`.
    pub fn cpu(gate: Arc<Gate>) -> GatedLoader {
        GatedLoader(gate, None)
    }
}

impl FunctionLoader for GatedLoader {
    fn name(&self) -> &'static str {
        "gated-cpu"
    }

    fn load(&self, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
        let inner = match &self.1 {
            Some(loader) => loader.load(spec, model)?,
            None => CpuLoader::default().load(spec, model)?,
        };
        self.0.loads.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(GatedFunction {
            inner,
            gate: self.0.clone(),
        }))
    }

    fn reset(&self) -> Result<(), LoadError> {
        self.0.resets.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

struct GatedFunction {
    inner: Arc<dyn Function>,
    gate: Arc<Gate>,
}

impl Function for GatedFunction {
    fn info(&self) -> &FunctionInfo {
        self.inner.info()
    }

    fn new_lane(&self) -> Result<Box<dyn Lane>, ExecError> {
        Ok(Box::new(GatedLane {
            inner: self.inner.new_lane()?,
            gate: self.gate.clone(),
        }))
    }
}

struct GatedLane {
    inner: Box<dyn Lane>,
    gate: Arc<Gate>,
}

impl Lane for GatedLane {
    fn capacity_rows(&self) -> usize {
        self.inner.capacity_rows()
    }

    fn write_input(&mut self, write: &mut dyn FnMut(&mut [u8])) -> Result<(), ExecError> {
        self.inner.write_input(write)
    }

    fn run(&mut self, n_rows: usize, mask: u32) -> Result<(), ExecError> {
        self.gate.pass();
        let run = self.gate.runs.fetch_add(1, Ordering::SeqCst);
        if run == self.gate.lose_device_on_run.load(Ordering::SeqCst) {
            return Err(ExecError::DeviceLost("injected by the test".into()));
        }
        self.inner.run(n_rows, mask)
    }

    fn read_output(&self, index: usize, first_row: usize, dst: &mut [u8]) -> Result<(), ExecError> {
        self.inner.read_output(index, first_row, dst)
    }
}
