//! Lanes that wait at a gate: tests fill queues, hold calls in flight and inject device loss
//! deterministically, over any loader.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};

use vknf_functions::{
    CpuLoader, DeviceInfo, ExecError, Function, FunctionInfo, FunctionLoader, FunctionSpec, Lane, LoadError,
};

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
    /// Run number (0-based) whose kernel "misses its deadline" (the function is quarantined and the
    /// device reset); usize::MAX for none.
    pub miss_deadline_on_run: AtomicUsize,
    /// Calls of `FunctionLoader::reset`.
    pub resets: AtomicUsize,
    /// Functions loaded.
    pub loads: AtomicUsize,
    /// Devices whose lanes report device loss on every run until the device is reset (bit `d` for
    /// device `d`).
    pub lost_devices: AtomicUsize,
    /// Resets by device (the first 8 devices).
    pub resets_by_device: [AtomicUsize; 8],
    /// While set, resets fail (a device that does not come back).
    pub refuse_resets: AtomicBool,
}

impl Gate {
    /// An open gate that loses no device.
    pub fn new() -> Arc<Gate> {
        let gate = Gate::default();
        gate.lose_device_on_run.store(usize::MAX, Ordering::SeqCst);
        gate.miss_deadline_on_run.store(usize::MAX, Ordering::SeqCst);
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

    /// Makes every lane of `device` report device loss from its next run on, until the device is reset.
    pub fn lose_device(&self, device: usize) {
        self.lost_devices.fetch_or(1 << device, Ordering::SeqCst);
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
pub struct GatedLoader {
    gate: Arc<Gate>,
    inner: Option<Arc<dyn FunctionLoader>>,
    /// Devices this loader pretends to have over the CPU loader (with no inner loader).
    cpu_devices: usize,
}

impl GatedLoader {
    /// The built-in CPU loader behind `gate`, as one device.
    pub fn cpu(gate: Arc<Gate>) -> GatedLoader {
        GatedLoader::cpu_devices(gate, 1)
    }

    /// The built-in CPU loader behind `gate`, as `count` devices (at most 8), each failing and
    /// resetting on its own: multi-device serving without GPUs.
    pub fn cpu_devices(gate: Arc<Gate>, count: usize) -> GatedLoader {
        assert!((1..=8).contains(&count), "1 to 8 devices");
        GatedLoader {
            gate,
            inner: None,
            cpu_devices: count,
        }
    }

    /// `inner`'s devices behind `gate`.
    pub fn over(gate: Arc<Gate>, inner: Arc<dyn FunctionLoader>) -> GatedLoader {
        GatedLoader {
            gate,
            inner: Some(inner),
            cpu_devices: 0,
        }
    }
}

impl FunctionLoader for GatedLoader {
    fn name(&self) -> &'static str {
        "gated-cpu"
    }

    fn devices(&self) -> Vec<DeviceInfo> {
        match &self.inner {
            Some(loader) => loader.devices(),
            None => (0..self.cpu_devices)
                .map(|index| DeviceInfo {
                    name: format!("gated cpu {index}"),
                    device_type: "cpu".into(),
                })
                .collect(),
        }
    }

    fn load(&self, device: usize, spec: &FunctionSpec, model: Option<&[u8]>) -> Result<Arc<dyn Function>, LoadError> {
        let inner = match &self.inner {
            Some(loader) => loader.load(device, spec, model)?,
            None if device < self.cpu_devices => CpuLoader::default().load(0, spec, model)?,
            None => CpuLoader::default().load(device, spec, model)?,
        };
        if self.gate.lost_devices.load(Ordering::SeqCst) & (1 << device) != 0 {
            return Err(LoadError::Exec {
                function: spec.name.clone(),
                source: ExecError::DeviceLost(format!("device {device} is lost (injected by the test)")),
            });
        }
        self.gate.loads.fetch_add(1, Ordering::SeqCst);
        Ok(Arc::new(GatedFunction {
            inner,
            gate: self.gate.clone(),
            device,
        }))
    }

    fn reset(&self, device: usize) -> Result<(), LoadError> {
        if self.gate.refuse_resets.load(Ordering::SeqCst) {
            return Err(LoadError::Exec {
                function: "device".into(),
                source: ExecError::DeviceLost(format!("device {device} does not come back (the test refuses resets)")),
            });
        }
        if let Some(loader) = &self.inner {
            loader.reset(device)?;
        }
        self.gate.lost_devices.fetch_and(!(1 << device), Ordering::SeqCst);
        self.gate.resets.fetch_add(1, Ordering::SeqCst);
        if let Some(count) = self.gate.resets_by_device.get(device) {
            count.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }
}

struct GatedFunction {
    inner: Arc<dyn Function>,
    gate: Arc<Gate>,
    device: usize,
}

impl Function for GatedFunction {
    fn info(&self) -> &FunctionInfo {
        self.inner.info()
    }

    fn new_lane(&self) -> Result<Box<dyn Lane>, ExecError> {
        Ok(Box::new(GatedLane {
            inner: self.inner.new_lane()?,
            gate: self.gate.clone(),
            device: self.device,
        }))
    }
}

struct GatedLane {
    inner: Box<dyn Lane>,
    gate: Arc<Gate>,
    device: usize,
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
        if run == self.gate.miss_deadline_on_run.load(Ordering::SeqCst) {
            return Err(ExecError::DeadlineMissed(format!(
                "run {run} missed its deadline (injected by the test)"
            )));
        }
        if run == self.gate.lose_device_on_run.load(Ordering::SeqCst) {
            self.gate.lose_device(self.device);
        }
        if self.gate.lost_devices.load(Ordering::SeqCst) & (1 << self.device) != 0 {
            return Err(ExecError::DeviceLost(format!(
                "device {} lost (injected by the test)",
                self.device
            )));
        }
        self.inner.run(n_rows, mask)
    }

    fn read_output(&self, index: usize, first_row: usize, dst: &mut [u8]) -> Result<(), ExecError> {
        self.inner.read_output(index, first_row, dst)
    }
}
