//! The server under soak: a real `vknf serve` process over a manifest directory holding the forest
//! and the drill function whose kernel misses its deadline.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use vknf_functions::families::generic::ABI_PARAM;
use vknf_manifest::{DEFAULT_PART_BYTES, ManifestRequest, build_objects};
use vknf_testkit::drill::busy_abi;

use super::net::{Dialer, http_once};

/// The forest function's name (and Open Inference model name).
pub const FOREST: &str = "forest";
/// The drill function's name.
pub const BUSY: &str = "busy";

/// How the drill function is declared.
#[derive(Debug, Clone)]
pub struct BusyFunction {
    /// `vknf.io/deadline-ms` of its kernel.
    pub deadline_ms: u64,
    /// Rows per batch (the heavy call is one batch).
    pub max_batch_rows: usize,
}

/// Ports and flags of the server.
#[derive(Debug, Clone)]
pub struct ServerSetup {
    /// The `vknf` binary.
    pub vknf: PathBuf,
    /// `--devices`, when given.
    pub devices: Option<String>,
    /// Serve with the CPU loader.
    pub cpu: bool,
    /// The forest's port.
    pub forest_port: u16,
    /// The drill function's port, when it is served.
    pub busy: Option<(u16, BusyFunction)>,
    /// `--oip-addr` port, when served.
    pub oip_port: Option<u16>,
    /// `--metrics-addr` port.
    pub ops_port: u16,
    /// Further flags of `vknf serve` (budgets, quarantine, TLS files).
    pub extra: Vec<String>,
    /// Where the server's log goes.
    pub log: PathBuf,
}

impl ServerSetup {
    /// The forest's address.
    pub fn forest_addr(&self) -> SocketAddr {
        loopback(self.forest_port)
    }

    /// The ops endpoint's address.
    pub fn ops_addr(&self) -> SocketAddr {
        loopback(self.ops_port)
    }
}

/// A loopback address.
pub fn loopback(port: u16) -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
}

/// A loopback port free right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Writes the manifests of the forest (`vkf`) and, when asked, of the drill function into `dir`.
pub fn write_manifests(dir: &Path, setup: &ServerSetup, vkf: &[u8]) -> anyhow::Result<()> {
    let node = vec![IpAddr::V4(Ipv4Addr::LOCALHOST)];
    let forest = ManifestRequest {
        name: FOREST.into(),
        namespace: "default".into(),
        port: setup.forest_port,
        oip_port: setup.oip_port,
        kind: "forest".into(),
        spirv: vknf_kernels::FOREST,
        entry_point: None,
        model: Some(vkf),
        spec_constants: None,
        params: Default::default(),
        max_batch_rows: Some(8192),
        max_wait_us: Some(50),
        node_addresses: node.clone(),
        part_bytes: DEFAULT_PART_BYTES,
    };
    write_objects(&dir.join("forest.yaml"), &forest)?;
    if let Some((port, busy)) = &setup.busy {
        let spirv = vknf_kernels::by_name("busy_rows").context("this build has no busy_rows kernel")?;
        let request = ManifestRequest {
            name: BUSY.into(),
            kind: "generic".into(),
            port: *port,
            spirv,
            model: None,
            params: [
                (ABI_PARAM.to_owned(), busy_abi().to_json()),
                ("deadline-ms".to_owned(), busy.deadline_ms.to_string()),
            ]
            .into(),
            max_batch_rows: Some(busy.max_batch_rows),
            max_wait_us: Some(0),
            ..forest
        };
        write_objects(&dir.join("busy.yaml"), &request)?;
    }
    Ok(())
}

fn write_objects(path: &Path, request: &ManifestRequest<'_>) -> anyhow::Result<()> {
    let objects = build_objects(request).with_context(|| format!("manifest of {}", request.name))?;
    let mut yaml = String::new();
    for object in &objects {
        yaml.push_str("---\n");
        yaml.push_str(&serde_norway::to_string(object)?);
    }
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))
}

/// The running server; killed when dropped, however the soak ends.
pub struct ServerProcess {
    child: Child,
    /// Its process id.
    pub pid: u32,
}

impl ServerProcess {
    /// Starts `vknf serve` on the manifests in `dir`.
    pub fn start(setup: &ServerSetup, dir: &Path) -> anyhow::Result<ServerProcess> {
        let mut command = Command::new(&setup.vknf);
        command
            .args(["--log", "info", "serve", "--manifests"])
            .arg(dir)
            .args(["--host-address", "127.0.0.1", "--poll-ms", "1000"])
            .args(["--metrics-addr", &setup.ops_addr().to_string()]);
        if let Some(port) = setup.oip_port {
            command.args(["--oip-addr", &loopback(port).to_string()]);
        }
        if let Some(devices) = &setup.devices {
            command.args(["--devices", devices]);
        }
        if setup.cpu {
            command.arg("--cpu");
        }
        command.args(&setup.extra);
        let log = std::fs::File::create(&setup.log).with_context(|| format!("creating {}", setup.log.display()))?;
        let child = command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", setup.vknf.display()))?;
        let pid = child.id();
        Ok(ServerProcess { child, pid })
    }

    /// Waits until `/readyz` answers 200 (every function loaded and listening), within `timeout`.
    pub async fn wait_ready(
        &mut self,
        dialer: &Dialer,
        ops: SocketAddr,
        timeout: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the server exited at start-up ({status})");
            }
            if let Ok(response) = http_once(dialer, ops, "/readyz", Duration::from_secs(2)).await {
                if response.status == 200 {
                    return Ok(started.elapsed());
                }
            }
            anyhow::ensure!(
                started.elapsed() < timeout,
                "the server was not ready within {timeout:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The exit status, if it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Sends SIGTERM and waits up to `timeout` for a clean exit (killing it past that): the exit
    /// status (None when it had to be killed) and how long the shutdown took.
    pub fn stop(&mut self, timeout: Duration) -> (Option<ExitStatus>, Duration) {
        let started = Instant::now();
        if let Some(status) = self.exited() {
            return (Some(status), Duration::ZERO);
        }
        let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
        while started.elapsed() < timeout {
            if let Some(status) = self.exited() {
                return (Some(status), started.elapsed());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        (None, started.elapsed())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if self.exited().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
