//! Reading a file on a second thread, a block ahead of the thread that parses it.
//!
//! A capture file's bytes are copied from the page cache by `read(2)`: on the benchmark capture
//! that copy was a third of the file pipeline's CPU time. Memory-mapping the file would remove it
//! but needs `unsafe`; this moves it off the parsing thread instead, so that it overlaps the
//! parsing. The CPU time is the same (both threads count); the wall time a packet costs drops
//! when a second core is free. Blocks are recycled between the threads, so memory stays at
//! [`DEPTH`] + 2 blocks.

use std::io::{self, Read};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};

/// Bytes read per block.
pub(crate) const BLOCK: usize = 1 << 20;
/// Bytes left free at the front of each block: the parser puts the unread end of the previous
/// block (the start of a frame that straddles the two) there, so blocks are never copied whole.
pub(crate) const HEADROOM: usize = 64 << 10;
/// Blocks read ahead at most.
const DEPTH: usize = 2;

/// One block: bytes at `HEADROOM..HEADROOM + len` of the buffer; `len` 0 at the end of the file.
pub(crate) struct Block {
    pub(crate) buf: Vec<u8>,
    pub(crate) len: usize,
}

/// The parser's end of a reading thread.
pub(crate) struct ReadAhead {
    blocks: Receiver<io::Result<Block>>,
    spare: SyncSender<Vec<u8>>,
}

impl ReadAhead {
    /// Starts a thread that reads `reader` to its end (or first error) in blocks.
    pub(crate) fn start(mut reader: impl Read + Send + 'static) -> io::Result<Self> {
        let (block_tx, blocks) = sync_channel::<io::Result<Block>>(DEPTH);
        let (spare, spare_rx) = sync_channel::<Vec<u8>>(DEPTH + 2);
        std::thread::Builder::new()
            .name("vknf-pcap-read".into())
            .spawn(move || {
                loop {
                    let mut buf = match spare_rx.try_recv() {
                        Ok(buf) if buf.len() == HEADROOM + BLOCK => buf,
                        Ok(_) | Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => {
                            vec![0; HEADROOM + BLOCK]
                        }
                    };
                    let message = read_some(&mut reader, &mut buf[HEADROOM..]).map(|len| Block { buf, len });
                    let last = !matches!(message, Ok(Block { len, .. }) if len > 0);
                    // A send fails once the parser is gone (the file was dropped): stop reading.
                    if block_tx.send(message).is_err() || last {
                        return;
                    }
                }
            })?;
        Ok(Self { blocks, spare })
    }

    /// The next block; `len` 0 at the end of the file.
    pub(crate) fn next_block(&mut self) -> io::Result<Block> {
        match self.blocks.recv() {
            Ok(block) => block,
            // The thread ended after an end or an error it already sent: nothing more to read.
            Err(_) => Ok(Block {
                buf: Vec::new(),
                len: 0,
            }),
        }
    }

    /// Gives a buffer back to the reading thread.
    pub(crate) fn recycle(&self, buf: Vec<u8>) {
        // Full (or the thread is gone): the buffer is simply freed.
        let _ = self.spare.try_send(buf);
    }
}

/// One `read` (retried when interrupted); 0 at the end. A block is what one read returns, not a
/// full buffer: a regular file fills it, and a pipe (`tcpdump -w - | ...`) hands on what it has
/// without waiting for a whole block, as reads on the parsing thread did.
fn read_some(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match reader.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}
