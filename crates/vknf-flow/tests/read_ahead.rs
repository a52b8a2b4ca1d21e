//! A classic pcap file opened by path is read a block ahead on a second thread; from any other
//! reader it is read on the calling thread. Both must hand out the same frames, and fail at the
//! same place with the same error, whatever the frames' sizes and wherever the 1 MiB blocks cut
//! them (frames straddling blocks, frames longer than the 64 KiB headroom a block keeps for the
//! previous block's tail, files that end inside a frame).

mod common;

use std::io::Cursor;
use std::path::Path;

use proptest::prelude::*;
use vknf_flow::{PacketSource, PcapFile, SourceError};

/// A frame as (time, link, bytes, length on the wire).
type Frame = (u64, String, Vec<u8>, u32);

/// What a source gave: its frames, then the error if any (its variant and offset).
type Read = (Vec<Frame>, Option<String>);

/// Every frame of a source, then the error if any.
fn drain(mut source: PcapFile) -> Read {
    let mut frames = Vec::new();
    loop {
        match source.next_packet() {
            Ok(Some(p)) => frames.push((p.ts_ns, format!("{:?}", p.link), p.data.to_vec(), p.orig_len)),
            Ok(None) => return (frames, None),
            Err(error) => {
                let error = match error {
                    SourceError::Truncated { offset, .. } => format!("truncated at {offset}"),
                    SourceError::BlockTooLarge { offset, limit, .. } => format!("too large at {offset} ({limit})"),
                    other => other.to_string(),
                };
                return (frames, Some(error));
            }
        }
    }
}

fn both_ways(path: &Path) -> [Read; 2] {
    let bytes = std::fs::read(path).unwrap();
    let ahead = drain(PcapFile::open(path).unwrap());
    let direct = drain(PcapFile::from_reader("mem", Cursor::new(bytes)).unwrap());
    [ahead, direct]
}

/// A classic little-endian, microsecond pcap file of Ethernet frames of the given captured
/// lengths (filled with a pattern that differs per frame).
fn pcap_with_frames(lengths: &[usize]) -> Vec<u8> {
    let mut file = Vec::new();
    file.extend(0xa1b2_c3d4u32.to_le_bytes());
    file.extend(2u16.to_le_bytes());
    file.extend(4u16.to_le_bytes());
    file.extend([0u8; 8]);
    file.extend(262_144u32.to_le_bytes());
    file.extend(1u32.to_le_bytes());
    for (i, &len) in lengths.iter().enumerate() {
        file.extend((1_700_000_000u32 + i as u32).to_le_bytes());
        file.extend((i as u32 % 1_000_000).to_le_bytes());
        file.extend((len as u32).to_le_bytes());
        file.extend((len as u32 + 4).to_le_bytes());
        file.extend((0..len).map(|b| (b as u8).wrapping_mul(31).wrapping_add(i as u8)));
    }
    file
}

#[test]
fn the_loopback_capture_reads_the_same_both_ways() {
    let Some(capture) = common::capture() else {
        eprintln!("skipped: the loopback capture could not be made here");
        return;
    };
    let path = capture.dir.join("lo.pcap");
    let [ahead, direct] = both_ways(&path);
    assert!(!ahead.0.is_empty());
    assert_eq!(ahead, direct);
}

/// Through a pipe, reads return little at a time: each block is what one read gave, and frames
/// straddle many blocks (some longer than a block's headroom).
#[test]
fn a_pipe_read_in_small_pieces_gives_the_same_frames() {
    let lengths: Vec<usize> = (0..300).map(|i| [60, 1514, 9000, 70_000, 150_000][i % 5] + i).collect();
    let file = pcap_with_frames(&lengths);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("frames.fifo");
    let made = std::process::Command::new("mkfifo").arg(&fifo).status();
    if !made.is_ok_and(|s| s.success()) {
        eprintln!("skipped: mkfifo failed");
        return;
    }
    let writer = {
        let (fifo, file) = (fifo.clone(), file.clone());
        std::thread::spawn(move || {
            use std::io::Write;
            let mut pipe = std::fs::OpenOptions::new().write(true).open(fifo).unwrap();
            for piece in file.chunks(3000) {
                pipe.write_all(piece).unwrap();
                pipe.flush().unwrap();
            }
        })
    };
    let ahead = drain(PcapFile::open(&fifo).unwrap());
    writer.join().unwrap();
    let direct = drain(PcapFile::from_reader("mem", Cursor::new(file)).unwrap());
    assert_eq!(ahead.0.len(), lengths.len());
    assert_eq!(ahead, direct);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    /// Files of several blocks, with frames of every size class, cut anywhere (or not at all).
    #[test]
    fn frames_and_errors_are_the_same_both_ways(
        lengths in proptest::collection::vec(
            prop_oneof![8 => 0usize..1600, 2 => 1600usize..70_000, 1 => 65_000usize..200_000],
            100..400,
        ),
        cut in proptest::option::of(0.0f64..1.0),
    ) {
        let mut file = pcap_with_frames(&lengths);
        if let Some(cut) = cut {
            file.truncate((file.len() as f64 * cut) as usize);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames.pcap");
        std::fs::write(&path, &file).unwrap();
        if file.len() < 24 {
            // Too short for a header: both refuse to open it.
            prop_assert!(PcapFile::open(&path).is_err());
            prop_assert!(PcapFile::from_reader("mem", Cursor::new(file)).is_err());
            return Ok(());
        }
        let [ahead, direct] = both_ways(&path);
        if cut.is_none() {
            prop_assert_eq!(ahead.0.len(), lengths.len());
            prop_assert!(ahead.1.is_none());
        }
        prop_assert_eq!(ahead, direct);
    }
}
