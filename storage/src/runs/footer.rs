//! The footer of a run: where each block starts, and the filter of its keys.
//!
//! A run's footer grows with the run (about 40 bytes per block of records
//! and 9 bits per key), so a merged run of a hundred million transfers has a
//! footer of about 230 MB: more than one frame may hold. So it is written as
//! a sequence of frames, none larger than a few MiB: a head (counts and the
//! filter's parameters), then the block list in frames of at most
//! [`BLOCK_REFS_PER_FRAME`] entries, then the filter's fingerprints in frames
//! of at most [`FINGERPRINT_BYTES_PER_FRAME`] bytes. The run's last 8 bytes
//! give the offset of the head.

use serde::{Deserialize, Serialize};
use xorf::{BinaryFuse8, Descriptor};

use super::{RunKey, RUN_FORMAT_VERSION};
use crate::frame::{self, Decoded};
use crate::StorageError;

/// Block list entries per footer frame (small in unit tests, so that they
/// cross frames).
const BLOCK_REFS_PER_FRAME: usize = if cfg!(test) { 3 } else { 1 << 16 };
/// Filter bytes per footer frame.
const FINGERPRINT_BYTES_PER_FRAME: usize = if cfg!(test) { 100 } else { 16 << 20 };

/// Where one block of records is in the run.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub(super) struct BlockRef {
    /// The first key in it.
    pub first: RunKey,
    /// Its frame's offset.
    pub offset: u64,
    /// Its frame's length.
    pub len: u32,
}

/// The first frame of the footer. The filter's parts are stored field by
/// field (xorf's own serde form uses `flatten`, which postcard does not
/// support).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Head {
    count: u64,
    blocks: u64,
    seed: u64,
    segment_length: u32,
    segment_length_mask: u32,
    segment_count_length: u32,
    fingerprints: u64,
}

/// A run's footer, read.
pub(super) struct Footer {
    /// Records in the run.
    pub count: u64,
    /// Its blocks, in key order.
    pub blocks: Vec<BlockRef>,
    /// The filter over its keys' major parts.
    pub filter: BinaryFuse8,
}

impl Footer {
    /// The footer's frames, to append after the run's blocks.
    pub fn encode(&self) -> Result<Vec<u8>, StorageError> {
        let descriptor = &self.filter.descriptor;
        let head = Head {
            count: self.count,
            blocks: self.blocks.len() as u64,
            seed: descriptor.seed,
            segment_length: descriptor.segment_length,
            segment_length_mask: descriptor.segment_length_mask,
            segment_count_length: descriptor.segment_count_length,
            fingerprints: self.filter.fingerprints.len() as u64,
        };
        let mut bytes = Vec::new();
        frame::encode_into(&head, RUN_FORMAT_VERSION, &mut bytes)?;
        for blocks in self.blocks.chunks(BLOCK_REFS_PER_FRAME) {
            frame::encode_into(&blocks, RUN_FORMAT_VERSION, &mut bytes)?;
        }
        for fingerprints in self.filter.fingerprints.chunks(FINGERPRINT_BYTES_PER_FRAME) {
            frame::encode_into(&fingerprints, RUN_FORMAT_VERSION, &mut bytes)?;
        }
        Ok(bytes)
    }

    /// Reads a footer from its bytes; `corrupt(offset)` names damage at
    /// `offset` within them.
    pub fn decode(bytes: &[u8], corrupt: impl Fn(u64) -> StorageError) -> Result<Footer, StorageError> {
        let mut offset = 0;
        let head: Head = next_frame(bytes, &mut offset, &corrupt)?;
        let mut blocks = Vec::with_capacity(usize::try_from(head.blocks).unwrap_or(0).min(1 << 24));
        while (blocks.len() as u64) < head.blocks {
            blocks.extend(next_frame::<Vec<BlockRef>>(bytes, &mut offset, &corrupt)?);
        }
        let mut fingerprints =
            Vec::with_capacity(usize::try_from(head.fingerprints).unwrap_or(0).min(1 << 30));
        while (fingerprints.len() as u64) < head.fingerprints {
            fingerprints.extend(next_frame::<Vec<u8>>(bytes, &mut offset, &corrupt)?);
        }
        let whole = blocks.len() as u64 == head.blocks && fingerprints.len() as u64 == head.fingerprints;
        if !whole || offset != bytes.len() {
            return Err(corrupt(offset as u64));
        }
        let filter = BinaryFuse8 {
            descriptor: Descriptor {
                seed: head.seed,
                segment_length: head.segment_length,
                segment_length_mask: head.segment_length_mask,
                segment_count_length: head.segment_count_length,
            },
            fingerprints: fingerprints.into_boxed_slice(),
        };
        Ok(Footer { count: head.count, blocks, filter })
    }
}

/// The value of the frame at `offset`, moving `offset` past it.
fn next_frame<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    offset: &mut usize,
    corrupt: &impl Fn(u64) -> StorageError,
) -> Result<T, StorageError> {
    match frame::decode_at::<T>(bytes, *offset, RUN_FORMAT_VERSION) {
        Ok(Decoded::Frame(value, end)) => {
            *offset = end;
            Ok(value)
        }
        _ => Err(corrupt(*offset as u64)),
    }
}
