//! The hardening soak: starts a real `vknf serve` (the forest and a drill function whose kernel misses
//! its deadline), runs good clients (binary protocol and Open Inference REST, every answer checked
//! against the CPU reference) beside every hostile client at once, samples the server every second,
//! and judges the run: it fails when an answer was lost or wrong, the server died, its peak RSS
//! passed the bound, or a hostile client saw the server break its protocol. See bench/README.md.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use vknf_bench::soak::counters::Counters;
use vknf_bench::soak::good::{GoodLoad, GoodStats, binary_client, oip_client};
use vknf_bench::soak::hostile::{self, Drill, Target};
use vknf_bench::soak::net::{Dialer, http_once};
use vknf_bench::soak::sampler::{ProcessSample, Sample, probe};
use vknf_bench::soak::server::{BUSY, BusyFunction, FOREST, ServerProcess, ServerSetup, free_port, loopback};
use vknf_bench::soak::summary::{ServerReport, Summary};
use vknf_bench::soak::workload::Workload;
use vknf_protocol::client::{Client, ClientConfig};
use vknf_tls::{ClientTls, ClientTlsFiles};

#[derive(Parser, Clone, Debug)]
struct Args {
    /// The `vknf` binary to serve with.
    #[arg(long)]
    vknf: PathBuf,
    /// Seconds of load (the GPU machine's runs: about 540, within its 600 s per command).
    #[arg(long, default_value_t = 60)]
    duration_s: u64,
    /// Devices of the server (`--devices` of `vknf serve`).
    #[arg(long)]
    device: Option<String>,
    /// Serve with the CPU loader (no drill function then: it needs a device).
    #[arg(long)]
    cpu: bool,
    /// Write the summary here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the time series here (one JSON object per second).
    #[arg(long)]
    series: Option<PathBuf>,
    /// The server's log (default: in a temporary directory, removed at the end).
    #[arg(long)]
    server_log: Option<PathBuf>,
    /// Serve the paper's tree (its CSV arrays' directory), repeated --trees times; default a synthetic forest.
    #[arg(long)]
    paper_tree: Option<PathBuf>,
    /// Copies of the paper tree.
    #[arg(long, default_value_t = 150)]
    trees: usize,
    /// Synthetic forest: features, classes, trees, depth.
    #[arg(long, num_args = 4, value_names = ["FEATURES", "CLASSES", "TREES", "DEPTH"], default_values_t = [32, 8, 64, 8])]
    synthetic: Vec<usize>,
    /// Rows in the pool the good clients draw from (labels computed once by the CPU reference).
    #[arg(long, default_value_t = 16384)]
    pool_rows: usize,
    /// Good binary clients sending one row per request.
    #[arg(long, default_value_t = 4)]
    one_row_clients: usize,
    /// Good binary clients sending --batch-rows rows per request.
    #[arg(long, default_value_t = 2)]
    batch_clients: usize,
    /// Rows per request of the batch clients.
    #[arg(long, default_value_t = 256)]
    batch_rows: usize,
    /// Good Open Inference Protocol (REST, JSON) clients (0: the OIP port is not served).
    #[arg(long, default_value_t = 2)]
    oip_clients: usize,
    /// Rows per OIP request.
    #[arg(long, default_value_t = 16)]
    oip_rows: usize,
    /// Seconds a good request may wait for its answer before it counts as lost.
    #[arg(long, default_value_t = 60)]
    answer_timeout_s: u64,
    /// The server's `--memory-budget-mib`.
    #[arg(long, default_value_t = 1024)]
    memory_budget_mib: u64,
    /// The server's `--max-frame-mib`.
    #[arg(long, default_value_t = 16)]
    max_frame_mib: usize,
    /// The server's `--quarantine-s` (first back-off of the drill function, doubling per miss).
    #[arg(long, default_value_t = 10)]
    quarantine_s: u64,
    /// The server's `--max-connections` (the data-port flood goes past it).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// The server's frame deadline (fixed at 10 s in `vknf serve`): how long a started frame may take.
    #[arg(long, default_value_t = 10)]
    frame_deadline_s: u64,
    /// Further flags for `vknf serve` (repeat the flag for each word).
    #[arg(long, allow_hyphen_values = true)]
    serve_arg: Vec<String>,
    /// TLS on every port (a throw-away CA made with openssl; the flood clients stay plain TCP).
    #[arg(long)]
    tls: bool,
    /// Fail when the server's peak RSS passes this many MiB (default: the memory budget + 1536).
    #[arg(long)]
    max_rss_mib: Option<u64>,
    /// Connections sending a frame at 1 byte/s.
    #[arg(long, default_value_t = 8)]
    slowloris: usize,
    /// Connections sending half of a large frame, then nothing.
    #[arg(long, default_value_t = 24)]
    half_frames: usize,
    /// Size of the half-sent frames, MiB (capped at the frame limit).
    #[arg(long, default_value_t = 16)]
    half_frame_mib: usize,
    /// Connections pipelining requests with large answers and never reading.
    #[arg(long, default_value_t = 4)]
    slow_readers: usize,
    /// Requests each slow reader sends at most per connection.
    #[arg(long, default_value_t = 4000)]
    slow_reader_requests: usize,
    /// Seconds a slow reader holds its connection.
    #[arg(long, default_value_t = 30)]
    slow_reader_hold_s: u64,
    /// Clients sending malformed frames (random bytes, crafted headers), one per connection.
    #[arg(long, default_value_t = 2)]
    malformed: usize,
    /// Pause between a malformed client's frames, ms.
    #[arg(long, default_value_t = 200)]
    malformed_interval_ms: u64,
    /// Connections of each data-port flood wave.
    #[arg(long, default_value_t = 1200)]
    flood_data: usize,
    /// Connections of each ops-port flood wave.
    #[arg(long, default_value_t = 400)]
    flood_ops: usize,
    /// Seconds between the starts of flood waves.
    #[arg(long, default_value_t = 30)]
    flood_every_s: u64,
    /// Seconds each flood connection is held.
    #[arg(long, default_value_t = 6)]
    flood_hold_s: u64,
    /// Clients sending NaN rows and wrong shapes.
    #[arg(long, default_value_t = 2)]
    bad_requests: usize,
    /// Pause between their requests, ms.
    #[arg(long, default_value_t = 100)]
    bad_request_interval_ms: u64,
    /// Clients that send requests and hang up before the answers.
    #[arg(long, default_value_t = 4)]
    disconnectors: usize,
    /// Pause between their connections, ms.
    #[arg(long, default_value_t = 100)]
    disconnect_interval_ms: u64,
    /// Do not serve the drill function (a kernel that misses its deadline).
    #[arg(long)]
    no_drill: bool,
    /// Rows of the drill's heavy call (one batch; at most 1048576).
    #[arg(long, default_value_t = 16384)]
    busy_rows: usize,
    /// Generator steps per row of the heavy call (lavapipe ends loops after 65,535 iterations).
    #[arg(long, default_value_t = 60_000)]
    busy_steps: u32,
    /// `vknf.io/deadline-ms` of the drill function.
    #[arg(long, default_value_t = 150)]
    busy_deadline_ms: u64,
    /// How often the drill's light call checks whether the function is back, ms.
    #[arg(long, default_value_t = 1000)]
    busy_interval_ms: u64,
    /// Seconds to wait, after every client has gone, for the server's connections and budget to
    /// return to zero.
    #[arg(long, default_value_t = 30)]
    quiet_s: u64,
    /// Seconds the server may take to exit after SIGTERM before it is killed (and the soak fails).
    #[arg(long, default_value_t = 40)]
    stop_timeout_s: u64,
    /// Seconds the server may take to become ready.
    #[arg(long, default_value_t = 180)]
    ready_timeout_s: u64,
    /// Threads of this harness.
    #[arg(long, default_value_t = 4)]
    threads: usize,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads.max(2))
        .enable_all()
        .build()?;
    let summary = runtime.block_on(soak(args.clone()))?;
    let json = serde_json::to_string_pretty(&summary)?;
    if let Some(path) = &args.json {
        std::fs::write(path, &json).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{json}");
    if summary.passed {
        println!("PASS");
    } else {
        println!("FAIL: {}", summary.failures.join("; "));
    }
    runtime.shutdown_timeout(Duration::from_secs(5));
    std::process::exit(if summary.passed { 0 } else { 1 });
}

/// The TLS files of a throw-away CA, and the server flags that use them.
fn tls_setup(dir: &std::path::Path) -> anyhow::Result<(ClientTls, Vec<String>)> {
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let output = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl")?;
        anyhow::ensure!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(())
    };
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ca.key.pem",
    ])?;
    openssl(&["pkcs8", "-topk8", "-nocrypt", "-in", "ca.key.pem", "-out", "ca.key"])?;
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-days",
        "2",
        "-subj",
        "/CN=soak-ca",
        "-out",
        "ca.crt",
    ])?;
    openssl(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "server.key.pem",
    ])?;
    openssl(&[
        "pkcs8",
        "-topk8",
        "-nocrypt",
        "-in",
        "server.key.pem",
        "-out",
        "server.key",
    ])?;
    openssl(&[
        "req",
        "-new",
        "-key",
        "server.key",
        "-subj",
        "/CN=localhost",
        "-out",
        "server.csr",
    ])?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ])?;
    let client = ClientTls::load(&ClientTlsFiles {
        ca: dir.join("ca.crt"),
        cert: None,
        key: None,
        server_name: None,
    })?;
    let flags = vec![
        "--tls-cert".into(),
        dir.join("server.crt").display().to_string(),
        "--tls-key".into(),
        dir.join("server.key").display().to_string(),
    ];
    Ok((client, flags))
}

/// The model name and input name the OIP port declares for the forest.
async fn oip_input_name(dialer: &Dialer, oip: SocketAddr) -> anyhow::Result<String> {
    let response = http_once(dialer, oip, &format!("/v2/models/{FOREST}"), Duration::from_secs(10)).await?;
    anyhow::ensure!(response.status == 200, "OIP metadata: HTTP {}", response.status);
    let metadata: serde_json::Value = serde_json::from_slice(&response.body)?;
    metadata["inputs"][0]["name"]
        .as_str()
        .map(str::to_owned)
        .context("OIP metadata without an input name")
}

async fn soak(args: Args) -> anyhow::Result<Summary> {
    let dir = tempfile::tempdir()?;
    let workload = Arc::new(match &args.paper_tree {
        Some(tree) => Workload::paper_tree(tree, args.trees, args.pool_rows)?,
        None => {
            let s = &args.synthetic;
            Workload::synthetic(s[0], s[1], s[2], s[3] as u32, args.pool_rows)?
        }
    });
    anyhow::ensure!(
        workload.n_rows() >= args.batch_rows.max(args.oip_rows),
        "--pool-rows must hold a whole request"
    );
    println!("soak: {} ({} pool rows)", workload.description, workload.n_rows());
    let (tls, tls_flags) = if args.tls {
        let (tls, flags) = tls_setup(dir.path())?;
        (Some(tls), flags)
    } else {
        (None, Vec::new())
    };
    let dialer = Dialer { tls: tls.clone() };
    let drill = !args.no_drill && !args.cpu;
    let mut extra = vec![
        "--memory-budget-mib".to_owned(),
        args.memory_budget_mib.to_string(),
        "--max-frame-mib".into(),
        args.max_frame_mib.to_string(),
        "--quarantine-s".into(),
        args.quarantine_s.to_string(),
        "--max-connections".into(),
        args.max_connections.to_string(),
    ];
    extra.extend(tls_flags);
    extra.extend(args.serve_arg.iter().cloned());
    let setup = ServerSetup {
        vknf: args.vknf.clone(),
        devices: args.device.clone(),
        cpu: args.cpu,
        forest_port: free_port()?,
        busy: if drill {
            Some((
                free_port()?,
                BusyFunction {
                    deadline_ms: args.busy_deadline_ms,
                    max_batch_rows: args.busy_rows,
                },
            ))
        } else {
            None
        },
        oip_port: if args.oip_clients > 0 { Some(free_port()?) } else { None },
        ops_port: free_port()?,
        extra: extra.clone(),
        log: args.server_log.clone().unwrap_or_else(|| dir.path().join("serve.log")),
    };
    let manifests = dir.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    vknf_bench::soak::server::write_manifests(&manifests, &setup, &workload.vkf)?;
    let mut server = ServerProcess::start(&setup, &manifests)?;
    let ready_after = server
        .wait_ready(&dialer, setup.ops_addr(), Duration::from_secs(args.ready_timeout_s))
        .await
        .with_context(|| format!("the server's log: {}", setup.log.display()))?;
    println!(
        "soak: server {} ready after {:.1} s",
        server.pid,
        ready_after.as_secs_f64()
    );

    let client_config = ClientConfig {
        tls: tls.clone(),
        ..ClientConfig::default()
    };
    let description = Client::connect_with(setup.forest_addr(), client_config)
        .await?
        .describe()
        .await
        .context("describing the forest")?;
    anyhow::ensure!(
        description.info.input.width == workload.n_features,
        "the served forest takes {} features, the workload {}",
        description.info.input.width,
        workload.n_features
    );
    let oip_input = match setup.oip_port {
        Some(port) => Some(oip_input_name(&dialer, loopback(port)).await?),
        None => None,
    };

    let mut series = match &args.series {
        Some(path) => Some(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?),
        None => None,
    };
    let start = Instant::now();
    let end = start + Duration::from_secs(args.duration_s);
    let mut samples = Vec::new();
    let good = Arc::new(GoodStats::default());
    let answer_timeout = Duration::from_secs(args.answer_timeout_s);
    let sample_now = |good: &GoodStats, process, probed: (Option<u16>, bool, BTreeMap<String, f64>)| Sample {
        t_s: start.elapsed().as_secs_f64(),
        process,
        readyz: probed.0,
        livez: probed.1,
        metrics: probed.2,
        good: good.take_interval(),
    };
    samples.push(sample_now(
        &good,
        ProcessSample::read(server.pid),
        probe(&dialer, setup.ops_addr()).await,
    ));

    let mut good_tasks = tokio::task::JoinSet::new();
    let sizes =
        std::iter::repeat_n(1, args.one_row_clients).chain(std::iter::repeat_n(args.batch_rows, args.batch_clients));
    for (seed, rows) in sizes.enumerate() {
        let load = GoodLoad {
            workload: workload.clone(),
            rows,
            seed: seed + 1,
            end,
            answer_timeout,
            stats: good.clone(),
        };
        good_tasks.spawn(binary_client(setup.forest_addr(), tls.clone(), load));
    }
    if let (Some(port), Some(input)) = (setup.oip_port, &oip_input) {
        for seed in 0..args.oip_clients {
            let load = GoodLoad {
                workload: workload.clone(),
                rows: args.oip_rows,
                seed: seed + 1,
                end,
                answer_timeout,
                stats: good.clone(),
            };
            good_tasks.spawn(oip_client(
                loopback(port),
                dialer.clone(),
                FOREST.to_owned(),
                input.clone(),
                load,
            ));
        }
    }

    let target = Target {
        dialer: dialer.clone(),
        forest: setup.forest_addr(),
        n_features: workload.n_features,
        accepts_nan: description.info.accepts_non_finite,
        frame_deadline: Duration::from_secs(args.frame_deadline_s),
        max_payload: args.max_frame_mib << 20,
        end,
    };
    let mut hostile_counters: BTreeMap<String, Arc<Counters>> = BTreeMap::new();
    let mut counters = |name: &str| hostile_counters.entry(name.to_owned()).or_default().clone();
    let mut hostile_tasks = tokio::task::JoinSet::new();
    for _ in 0..args.slowloris {
        hostile_tasks.spawn(hostile::slowloris(target.clone(), counters("slowloris")));
    }
    let prefix = hostile::half_frame_prefix(&target, args.half_frame_mib << 20);
    for _ in 0..args.half_frames {
        hostile_tasks.spawn(hostile::half_frame(
            target.clone(),
            prefix.clone(),
            counters("half_sent_frames"),
        ));
    }
    for _ in 0..args.slow_readers {
        hostile_tasks.spawn(hostile::slow_reader(
            target.clone(),
            args.slow_reader_requests,
            Duration::from_secs(args.slow_reader_hold_s),
            counters("slow_readers"),
        ));
    }
    for seed in 0..args.malformed {
        hostile_tasks.spawn(hostile::malformed(
            target.clone(),
            Duration::from_millis(args.malformed_interval_ms),
            seed as u64 * 5 + 1,
            counters("malformed_frames"),
        ));
    }
    let flood = |count| {
        (
            count,
            Duration::from_secs(args.flood_every_s),
            Duration::from_secs(args.flood_hold_s),
        )
    };
    if args.flood_data > 0 {
        let (count, every, hold) = flood(args.flood_data);
        hostile_tasks.spawn(hostile::flood(
            target.clone(),
            setup.forest_addr(),
            count,
            every,
            hold,
            counters("flood_data_port"),
        ));
    }
    if args.flood_ops > 0 {
        let (count, every, hold) = flood(args.flood_ops);
        hostile_tasks.spawn(hostile::flood(
            target.clone(),
            setup.ops_addr(),
            count,
            every,
            hold,
            counters("flood_ops_port"),
        ));
    }
    for _ in 0..args.bad_requests {
        hostile_tasks.spawn(hostile::bad_requests(
            target.clone(),
            Duration::from_millis(args.bad_request_interval_ms),
            counters("nan_and_wrong_shapes"),
        ));
    }
    for _ in 0..args.disconnectors {
        hostile_tasks.spawn(hostile::disconnector(
            target.clone(),
            Duration::from_millis(args.disconnect_interval_ms),
            counters("disconnect_mid_request"),
        ));
    }
    if let Some((port, _)) = &setup.busy {
        let drill = Drill {
            addr: loopback(*port),
            rows: args.busy_rows,
            steps: args.busy_steps,
            interval: Duration::from_millis(args.busy_interval_ms),
        };
        hostile_tasks.spawn(hostile::drill(target.clone(), drill, counters("deadline_drill")));
    }

    // Sample once a second until the end (or the server's death).
    let mut died = None;
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticks.tick().await;
    while Instant::now() < end {
        ticks.tick().await;
        if let Some(status) = server.exited() {
            println!("soak: the server exited: {status}");
            died = Some(status.to_string());
            break;
        }
        let sample = sample_now(
            &good,
            ProcessSample::read(server.pid),
            probe(&dialer, setup.ops_addr()).await,
        );
        if let Some(file) = &mut series {
            writeln!(file, "{}", serde_json::to_string(&sample)?)?;
        }
        if samples.len() % 10 == 0 {
            progress(&sample, &good);
        }
        samples.push(sample);
    }
    let duration = start.elapsed();

    // The good clients finish their last calls (each within the answer timeout).
    if died.is_some() {
        good_tasks.abort_all();
        hostile_tasks.abort_all();
    }
    let _ = tokio::time::timeout(answer_timeout + Duration::from_secs(10), async {
        while good_tasks.join_next().await.is_some() {}
    })
    .await;
    good_tasks.abort_all();
    // Hostile clients may be in the middle of a long wait (a heavy drill call, a frame being cut):
    // a few seconds, then they are dropped with their connections.
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while hostile_tasks.join_next().await.is_some() {}
    })
    .await;
    hostile_tasks.abort_all();
    while hostile_tasks.join_next().await.is_some() {}
    while good_tasks.join_next().await.is_some() {}

    // Left alone, the server must let go of every connection and every byte of its budget.
    let mut after_quiet = BTreeMap::new();
    if died.is_none() {
        let quiet = Instant::now();
        loop {
            let sample = sample_now(
                &good,
                ProcessSample::read(server.pid),
                probe(&dialer, setup.ops_addr()).await,
            );
            let connections = sample.metric_sum("vknf_connections");
            let used = sample.metric_sum("vknf_memory_used_bytes");
            let settled = connections == Some(0.0) && used == Some(0.0);
            if settled || quiet.elapsed() > Duration::from_secs(args.quiet_s) {
                after_quiet.insert("vknf_connections".to_owned(), connections.unwrap_or(f64::NAN));
                after_quiet.insert("vknf_memory_used_bytes".to_owned(), used.unwrap_or(f64::NAN));
                if let Some(file) = &mut series {
                    writeln!(file, "{}", serde_json::to_string(&sample)?)?;
                }
                samples.push(sample);
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
    let pid = server.pid;
    let (shutdown_exit, shutdown_time) =
        tokio::task::spawn_blocking(move || server.stop(Duration::from_secs(args.stop_timeout_s))).await?;

    let mut summary = Summary {
        duration_s: duration.as_secs_f64(),
        workload: workload.description.clone(),
        server_flags: extra,
        server: ServerReport {
            pid,
            ready_after_s: ready_after.as_secs_f64(),
            died,
            shutdown_exit: shutdown_exit.map(|s| s.to_string()),
            shutdown_s: shutdown_time.as_secs_f64(),
        },
        good: good.report(),
        rss_bound_kib: args.max_rss_mib.unwrap_or(args.memory_budget_mib + 1536) << 10,
        after_quiet,
        hostile: hostile_counters.iter().map(|(k, c)| (k.clone(), c.report())).collect(),
        ..Summary::default()
    };
    summary.tally(&samples);
    let drill_function = format!("default/{BUSY}");
    summary.judge(drill.then_some(drill_function.as_str()));
    if let Some(path) = &args.server_log {
        println!("soak: the server's log: {}", path.display());
    }
    Ok(summary)
}

/// One line of progress: the server now, and the good clients so far.
fn progress(sample: &Sample, good: &GoodStats) {
    let process = sample.process.unwrap_or_default();
    let report = good.report();
    let lost: u64 = report.values().map(|g| g.lost).sum();
    let kinds: Vec<String> = report
        .iter()
        .map(|(kind, g)| format!("{kind} {} answered, p99 {} us", g.answered, g.latency.p99_us))
        .collect();
    let metric = |name| sample.metric_sum(name).map_or("?".to_owned(), |v| v.to_string());
    println!(
        "t={:>4.0}s rss={} MiB threads={} fds={} readyz={} quarantines={} resets={} budget={} MiB | lost={lost} | {}",
        sample.t_s,
        process.rss_kib >> 10,
        process.threads,
        process.fds,
        sample.readyz.map_or("unanswered".to_owned(), |code| code.to_string()),
        metric("vknf_quarantines_total"),
        metric("vknf_device_resets_total"),
        sample
            .metric_sum("vknf_memory_used_bytes")
            .map_or("?".to_owned(), |b| format!("{:.0}", b / 1048576.0)),
        kinds.join(", ")
    );
}
