//! vknf-flow against dissectors nobody here wrote, on real TLS traffic: a loopback capture made
//! by tcpdump of Python ssl / openssl s_server serving and curl fetching (tests/scripts), and the
//! TLS 1.2 captures shipped by Debian's gopacket package.
//! - record sequences equal tshark's TLS dissector's, flow for flow;
//! - flow set, packets and bytes equal NFStream's;
//! - feature rows equal python/train_traffic.py's for the schema it trains.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use common::*;
use vknf_flow::{FeatureSchema, FlowKey, FlowRecord, SchemaError};

fn assert_matches_tshark(path: &Path, tls_ports: &[u16]) -> Vec<FlowRecord> {
    let flows = flows_of(path);
    let tshark = tshark_records(path, tls_ports);
    assert_eq!(
        flows.len(),
        tshark.len(),
        "{}: flow count (vknf vs tshark tcp.stream)",
        path.display()
    );
    for flow in &flows {
        let theirs = tshark
            .get(&key_of(flow))
            .unwrap_or_else(|| panic!("tshark has no stream for {flow:?}"));
        assert_eq!(
            flow.records,
            signed(theirs, flow.server),
            "{}: {} -> {}",
            path.display(),
            flow.client,
            flow.server
        );
    }
    flows
}

#[test]
fn loopback_records_match_tshark() {
    let Some(capture) = capture() else { return };
    for name in ["lo.pcap", "lo.pcapng", "any.pcap"] {
        let flows = assert_matches_tshark(&capture.dir.join(name), &capture.ports);
        // The traffic is what the script made: every connection whole, TLS 1.2 and 1.3, SNI seen.
        assert!(flows.len() >= 20, "{name}: {} flows", flows.len());
        // Unless the kernel dropped packets (a loaded machine), every connection is whole; when it
        // did, the flows that lost bytes are flagged, and tshark agreed with them above.
        let log = if name == "any.pcap" {
            "tcpdump-any.log"
        } else {
            "tcpdump-lo.log"
        };
        let log = std::fs::read_to_string(capture.dir.join(log)).unwrap();
        let dropped = !log.lines().any(|l| l.trim() == "0 packets dropped by kernel");
        for flow in &flows {
            assert!(
                flow.flags.complete() || (dropped && flow.flags.gap),
                "{name}: {flow:?}\n{log}"
            );
            assert!(
                flow.records.len() >= 8 || (dropped && flow.flags.gap),
                "{name}: {flow:?}"
            );
        }
        if dropped {
            eprintln!("note: tcpdump reported kernel drops for {name}: {log}");
        }
        let versions: Vec<_> = flows.iter().filter_map(|f| f.tls_version.as_deref()).collect();
        assert!(
            versions.contains(&"1.2") && versions.contains(&"1.3"),
            "{name}: {versions:?}"
        );
        let snis: std::collections::BTreeSet<_> = flows.iter().filter_map(|f| f.sni.as_deref()).collect();
        for sni in ["site0.test", "site1.test", "site2.test", "www.test"] {
            assert!(snis.contains(sni), "{name}: {snis:?}");
        }
        assert!(flows.iter().any(|f| f.server.addr.is_ipv6()), "{name}: the [::1] site");
        assert!(
            flows.iter().any(|f| f.alpn == ["http/1.1"]),
            "{name}: curl --http1.1 offers http/1.1 alone"
        );
    }
}

#[test]
fn gopacket_tls12_records_match_tshark() {
    let Some(files) = gopacket_files() else { return };
    if !has_tool("tshark") {
        skip::<()>("tshark is not installed");
        return;
    }
    for file in files {
        let flows = assert_matches_tshark(&file, &[]);
        let tls: Vec<_> = flows.iter().filter(|f| !f.records.is_empty()).collect();
        assert_eq!(tls.len(), 1, "{}", file.display());
        assert_eq!(tls[0].sni.as_deref(), Some("www.baidu.com"));
        assert_eq!(tls[0].alpn, ["h2", "http/1.1"]);
        assert_eq!(tls[0].tls_version.as_deref(), Some("1.2"));
        assert!(tls[0].flags.complete());
    }
}

#[test]
fn flows_packets_and_bytes_match_nfstream() {
    let Some(python) = nfstream_python() else { return };
    let mut files: Vec<_> = gopacket_files().unwrap_or_default();
    if let Some(capture) = capture() {
        // Not any.pcap: NFStream 6.6 reports no flow at all for Linux cooked capture v2 files.
        files.extend(["lo.pcap", "lo.pcapng"].map(|n| capture.dir.join(n)));
    }
    for file in files {
        let ours: BTreeMap<FlowKey, (u64, u64)> = flows_of(&file)
            .iter()
            .map(|f| (key_of(f), (f.counters.packets(), f.counters.bytes())))
            .collect();
        let theirs: BTreeMap<FlowKey, (u64, u64)> = nfstream_flows(&python, &file).into_iter().collect();
        assert_eq!(
            ours,
            theirs,
            "{}: (packets, IP bytes) per flow, vknf vs NFStream",
            file.display()
        );
    }
}

#[test]
fn snaplen_cut_keeps_counts_and_flags_records() {
    let Some(capture) = capture() else { return };
    let full = flows_of(&capture.dir.join("lo.pcap"));
    let cut_path = capture.dir.join("lo-snap120.pcap");
    let status = Command::new("editcap")
        .args(["-s", "120"])
        .arg(capture.dir.join("lo.pcap"))
        .arg(&cut_path)
        .status();
    assert!(status.unwrap().success());
    // 120 bytes keep every Ethernet + IP + TCP header whole (at most 14 + 40 + 60) and cut most
    // payloads.
    let cut = flows_of(&cut_path);
    assert_eq!(full.len(), cut.len());
    let mut truncated = 0;
    for (a, b) in full.iter().zip(&cut) {
        assert_eq!(key_of(a), key_of(b));
        // Lengths come from the IP header: the snaplen changes no count.
        assert_eq!(a.counters, b.counters);
        // Each direction's records are a prefix of the full ones: never a wrong length.
        for sign in [1, -1] {
            let dir = |r: &FlowRecord| {
                r.records
                    .iter()
                    .copied()
                    .filter(|x| x.signum() == sign)
                    .collect::<Vec<_>>()
            };
            let (whole, part) = (dir(a), dir(b));
            assert!(whole.starts_with(&part), "{part:?} is not a prefix of {whole:?}");
        }
        if b.records != a.records {
            assert!(b.flags.truncated, "records differ but the flow is not flagged: {b:?}");
            truncated += 1;
        }
    }
    assert!(truncated > 0, "a 120-byte snaplen cuts record headers in some flow");
}

#[test]
fn features_match_python_and_schema_binds_by_digest() {
    let Some(capture) = capture() else { return };
    let Some(python) = project_python() else { return };
    let dir = &capture.dir;
    let flows = flows_of(&dir.join("lo.pcapng"));
    let dataset = dir.join("train.jsonl");
    let mut writer = vknf_flow::DatasetWriter::new(std::fs::File::create(&dataset).unwrap());
    let labeler = vknf_flow::Labeler::Sni;
    for flow in &flows {
        writer.write(flow, labeler.label(flow)).unwrap();
    }
    writer.finish().unwrap();
    assert_eq!(vknf_flow::read_dataset(&dataset).unwrap().len(), flows.len());

    let script = workspace_root().join("python/train_traffic.py");
    let (model, schema_path, rows) = (dir.join("model.onnx"), dir.join("schema.json"), dir.join("rows.json"));
    let run = |args: &[&str]| {
        let out = Command::new(&python).arg(&script).args(args).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    let (d, m, s, r) = (
        dataset.to_str().unwrap(),
        model.to_str().unwrap(),
        schema_path.to_str().unwrap(),
        rows.to_str().unwrap(),
    );
    // Few features exist here, so a small cap exercises the selection: keep 40 of them.
    run(&[
        "train",
        "--dataset",
        d,
        "--model",
        m,
        "--schema",
        s,
        "--n-features",
        "40",
        "--n-estimators",
        "30",
    ]);
    run(&["features", "--dataset", d, "--schema", s, "-o", r]);

    let schema = FeatureSchema::load(&schema_path).unwrap();
    assert_eq!(schema.len(), 40);
    assert_eq!(schema.classes, ["site0.test", "site1.test", "site2.test", "www.test"]);
    // The vocabulary is the training set's: rebuilt here from the same flows, it is the same.
    let labelled: Vec<&[i32]> = flows
        .iter()
        .filter(|f| f.sni.is_some())
        .map(|f| f.records.as_slice())
        .collect();
    let rebuilt = FeatureSchema::from_training(labelled, schema.classes.clone());
    assert_eq!(
        (&rebuilt.server_sizes, &rebuilt.client_sizes),
        (&schema.server_sizes, &schema.client_sizes)
    );
    assert_eq!(rebuilt.feature_names, schema.feature_names);

    let theirs: Vec<Vec<f64>> = serde_json::from_str(&std::fs::read_to_string(&rows).unwrap()).unwrap();
    assert_eq!(theirs.len(), flows.len());
    for (flow, expected) in flows.iter().zip(&theirs) {
        let ours = schema.row(&flow.records);
        assert_eq!(ours.len(), expected.len());
        for (i, (a, b)) in ours.iter().zip(expected).enumerate() {
            let b = *b as f32;
            assert!(
                (a - b).abs() <= 1e-6 * b.abs().max(1.0),
                "feature {} of {flow:?}: {a} vs {b}",
                schema.selected_names()[i]
            );
        }
    }

    // The model carries the digest; another schema is refused by it, a damaged one on load.
    let onnx = std::fs::read(&model).unwrap();
    assert!(
        onnx.windows(schema.digest.len()).any(|w| w == schema.digest.as_bytes()),
        "digest in the ONNX metadata"
    );
    schema.check_model_digest(&schema.digest).unwrap();
    assert!(matches!(
        rebuilt.check_model_digest(&schema.digest),
        Err(SchemaError::ModelMismatch { .. })
    ));
    let text = std::fs::read_to_string(&schema_path)
        .unwrap()
        .replacen("\"selected\": [", "\"selected\": [0, ", 1);
    assert!(matches!(
        FeatureSchema::from_json(&text),
        Err(SchemaError::Corrupt { .. }) | Err(SchemaError::Invalid(_))
    ));
}
