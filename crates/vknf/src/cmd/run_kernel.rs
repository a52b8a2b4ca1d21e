//! `vknf run-kernel`: runs a SPIR-V kernel on buffers from files, for trying a kernel by hand.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use vknf_vulkan::{Kernel, MemoryKind, QueueKind, SpecValue, Specialization};

/// Arguments of `vknf run-kernel`.
#[derive(clap::Args)]
pub struct RunKernelArgs {
    /// The SPIR-V module.
    spirv: PathBuf,
    /// Entry point.
    #[arg(long, default_value = "main")]
    entry: String,
    /// A buffer for binding N of set 0: `N=PATH` (contents of a file, raw little-endian),
    /// `N=zeros:BYTES`, `N=f32:1,2,3`, `N=u32:1,2,3`. Repeat for every binding the kernel declares.
    #[arg(long = "buffer", value_name = "N=SOURCE")]
    buffers: Vec<String>,
    /// A push-constant member: `NAME=VALUE`, typed by the value (`3` u32, `-3` i32, `3.5` f32).
    #[arg(long = "push", value_name = "NAME=VALUE")]
    push: Vec<String>,
    /// A specialization constant by name or id: `NAME=VALUE` or `0=VALUE` (`true`/`false` for bools).
    #[arg(long = "spec", value_name = "NAME=VALUE")]
    spec: Vec<String>,
    /// Workgroups along x (default: enough for --invocations).
    #[arg(long)]
    groups: Option<u32>,
    /// Invocations along x to cover (workgroups are derived from the workgroup size).
    #[arg(long, default_value_t = 1)]
    invocations: u64,
    /// Print each buffer afterwards, as this type.
    #[arg(long, value_parser = ["f32", "u32", "i32"], default_value = "f32")]
    print_as: String,
    /// Elements to print per buffer.
    #[arg(long, default_value_t = 16)]
    print: usize,
    /// Write every buffer after the run to DIR/binding-N.bin.
    #[arg(long)]
    out_dir: Option<PathBuf>,
    /// Device: index, UUID or part of the name (default: VKNF_DEVICE or the best device).
    #[arg(long)]
    device: Option<String>,
    /// Deadline for the kernel, in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

fn parse_number(text: &str) -> anyhow::Result<SpecValue> {
    let text = text.trim();
    Ok(match text {
        "true" => SpecValue::Bool(true),
        "false" => SpecValue::Bool(false),
        _ if text.contains(['.', 'e', 'E']) || text.contains("inf") || text.contains("nan") => {
            SpecValue::F32(text.parse().with_context(|| format!("{text:?} is not a number"))?)
        }
        _ if text.starts_with('-') => SpecValue::I32(text.parse().with_context(|| format!("{text:?} is not an i32"))?),
        _ => SpecValue::U32(text.parse().with_context(|| format!("{text:?} is not a u32"))?),
    })
}

fn split_assignment(text: &str) -> anyhow::Result<(&str, &str)> {
    text.split_once('=')
        .with_context(|| format!("expected NAME=VALUE, got {text:?}"))
}

fn buffer_bytes(source: &str) -> anyhow::Result<Vec<u8>> {
    let list = |items: &str, f: &dyn Fn(&str) -> anyhow::Result<[u8; 4]>| -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        for item in items.split(',').filter(|s| !s.trim().is_empty()) {
            out.extend_from_slice(&f(item.trim())?);
        }
        Ok(out)
    };
    if let Some(size) = source.strip_prefix("zeros:") {
        let size: usize = size
            .parse()
            .with_context(|| format!("zeros:{size}: not a byte count"))?;
        return Ok(vec![0; size]);
    }
    if let Some(items) = source.strip_prefix("f32:") {
        return list(items, &|s| {
            Ok(s.parse::<f32>()
                .with_context(|| format!("{s:?}: not an f32"))?
                .to_le_bytes())
        });
    }
    if let Some(items) = source.strip_prefix("u32:") {
        return list(items, &|s| {
            Ok(s.parse::<u32>()
                .with_context(|| format!("{s:?}: not a u32"))?
                .to_le_bytes())
        });
    }
    std::fs::read(source).with_context(|| format!("reading buffer file {source:?}"))
}

/// Runs the kernel once and prints (or writes) its buffers.
pub fn run(global: &super::Global, args: RunKernelArgs) -> anyhow::Result<()> {
    let spirv = std::fs::read(&args.spirv).with_context(|| format!("reading {}", args.spirv.display()))?;
    let instance = global.instance()?;
    let device = global.device(&instance, args.device.as_deref())?;
    let kernel = Kernel::new(&device, &spirv, &args.entry)?;
    let info = kernel.info().clone();

    let mut spec = Specialization::new();
    for item in &args.spec {
        let (name, value) = split_assignment(item)?;
        let value = parse_number(value)?;
        spec = match name.parse::<u32>() {
            Ok(id) => spec.id(id, value),
            Err(_) => spec.name(name, value),
        };
    }
    let pipeline = device.create_pipeline(&kernel, &spec)?;

    let mut push = vec![0u8; info.push_constant_size as usize];
    for item in &args.push {
        let (name, value) = split_assignment(item)?;
        let field = info.push_constant_field(name).with_context(|| {
            let names: Vec<_> = info
                .push_constant_fields
                .iter()
                .filter_map(|f| f.name.clone())
                .collect();
            format!("the kernel has no push constant {name:?} (it has {names:?})")
        })?;
        if field.size != 4 {
            bail!(
                "push constant {name:?} is {} bytes; only 32-bit scalars can be set here",
                field.size
            );
        }
        let bits = match parse_number(value)? {
            SpecValue::Bool(b) => b as u32,
            SpecValue::U32(v) => v,
            SpecValue::I32(v) => v as u32,
            SpecValue::F32(v) => v.to_bits(),
        };
        push[field.offset as usize..field.offset as usize + 4].copy_from_slice(&bits.to_le_bytes());
    }

    let mut buffers = Vec::new();
    for item in &args.buffers {
        let (binding, source) = split_assignment(item)?;
        let binding: u32 = binding
            .parse()
            .with_context(|| format!("{binding:?} is not a binding number"))?;
        let mut bytes = buffer_bytes(source)?;
        bytes.resize(bytes.len().next_multiple_of(4).max(4), 0);
        let buffer = device.create_buffer_with(&format!("binding {binding}"), &bytes, MemoryKind::Readback)?;
        buffers.push((binding, buffer));
    }
    let pairs: Vec<(u32, &vknf_vulkan::Buffer)> = buffers.iter().map(|(b, buf)| (*b, buf)).collect();
    let bind_group = pipeline.bind(&pairs)?;
    let groups = args.groups.unwrap_or_else(|| pipeline.groups_for(args.invocations));
    let mut stream = device.stream(QueueKind::Compute)?;
    let mut list = stream.record(|rec| rec.dispatch_bytes(&bind_group, &push, [groups, 1, 1]))?;
    let started = Instant::now();
    stream.run(&mut list, Duration::from_millis(args.timeout_ms))?;
    let elapsed = started.elapsed();
    eprintln!(
        "ran {} x {:?} invocations on {} in {:.3} ms (submit to completion)",
        groups,
        pipeline.workgroup_size(),
        device.info().name,
        elapsed.as_secs_f64() * 1e3
    );

    for (binding, buffer) in &buffers {
        let mut bytes = vec![0u8; buffer.size() as usize];
        buffer.read(0, &mut bytes)?;
        if let Some(dir) = &args.out_dir {
            std::fs::create_dir_all(dir)?;
            std::fs::write(dir.join(format!("binding-{binding}.bin")), &bytes)?;
        }
        let shown: Vec<String> = bytes
            .chunks_exact(4)
            .take(args.print)
            .map(|c| {
                let word = [c[0], c[1], c[2], c[3]];
                match args.print_as.as_str() {
                    "u32" => u32::from_le_bytes(word).to_string(),
                    "i32" => i32::from_le_bytes(word).to_string(),
                    _ => f32::from_le_bytes(word).to_string(),
                }
            })
            .collect();
        println!(
            "binding {binding}: [{}{}]",
            shown.join(", "),
            if bytes.len() / 4 > args.print { ", ..." } else { "" }
        );
    }
    global.finish(&instance)
}
