//! The header block at the start of every journal segment: where the
//! acknowledged part of the segment ends.
//!
//! Layout: the first [`HEADER_LEN`] bytes of a segment; frames follow. The
//! header holds two slots, in different 512-byte sectors, written in turn:
//! `[magic: 4][format: u8][0; 3][generation: u64 LE][acked_end: u64 LE][crc32: u32 LE]`.
//! A reader takes the valid slot with the higher generation, so a write of
//! one slot torn by a power loss leaves the other.
//!
//! Why: a frame that fails its checks at the end of the last segment is
//! either a torn write (never acknowledged, so cut off) or damage to a frame
//! that was acknowledged (an error: an acknowledged transfer would be lost).
//! Only a record of what was acknowledged tells them apart. The writer
//! writes `acked_end` only after the bytes before it were synced, so it is
//! never ahead of what was acknowledged; it lags by at most one batch under
//! load, since each batch's write carries the end of the batch before, and
//! by at most an idle pause otherwise, when the writer records it with a
//! sync of its own (see `journal::Writer`).

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes before the first frame of a segment.
pub const HEADER_LEN: u64 = 4096;
const SLOT_LEN: usize = 28;
const SLOT_OFFSETS: [u64; 2] = [0, 2048];
const MAGIC: [u8; 4] = *b"WJSH";
const FORMAT: u8 = 1;

/// What a segment's header says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// Counts header writes; the higher valid slot wins.
    pub generation: u64,
    /// Every frame before this offset was acknowledged durable.
    pub acked_end: u64,
}

impl Header {
    /// The header of a new, empty segment.
    pub fn empty() -> Header {
        Header { generation: 1, acked_end: HEADER_LEN }
    }

    fn slot(&self) -> [u8; SLOT_LEN] {
        let mut slot = [0u8; SLOT_LEN];
        slot[..4].copy_from_slice(&MAGIC);
        slot[4] = FORMAT;
        slot[8..16].copy_from_slice(&self.generation.to_le_bytes());
        slot[16..24].copy_from_slice(&self.acked_end.to_le_bytes());
        let crc = crc32fast::hash(&slot[..24]);
        slot[24..28].copy_from_slice(&crc.to_le_bytes());
        slot
    }

    fn from_slot(slot: &[u8]) -> Option<Header> {
        let slot = slot.get(..SLOT_LEN)?;
        let crc = u32::from_le_bytes(slot[24..28].try_into().ok()?);
        if slot[..4] != MAGIC || slot[4] != FORMAT || crc32fast::hash(&slot[..24]) != crc {
            return None;
        }
        Some(Header {
            generation: u64::from_le_bytes(slot[8..16].try_into().ok()?),
            acked_end: u64::from_le_bytes(slot[16..24].try_into().ok()?),
        })
    }

    /// The whole header block of a new segment (one slot written, the
    /// other empty).
    pub fn block(&self) -> Vec<u8> {
        let mut block = vec![0u8; HEADER_LEN as usize];
        let at = SLOT_OFFSETS[(self.generation % 2) as usize] as usize;
        block[at..at + SLOT_LEN].copy_from_slice(&self.slot());
        block
    }

    /// Writes this header's slot into `file` (not synced: the caller's
    /// next sync of the file covers it).
    pub fn write_slot(&self, file: &File) -> std::io::Result<()> {
        file.write_all_at(&self.slot(), SLOT_OFFSETS[(self.generation % 2) as usize])
    }

    /// Reads the header from a segment's bytes: `None` if neither slot is
    /// valid (or the file is shorter than a header).
    pub fn read(bytes: &[u8]) -> Option<Header> {
        if (bytes.len() as u64) < HEADER_LEN {
            return None;
        }
        SLOT_OFFSETS
            .iter()
            .filter_map(|&at| Header::from_slot(&bytes[at as usize..]))
            .max_by_key(|header| header.generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newer_valid_slot_wins_and_a_damaged_one_is_ignored() {
        let mut block = Header::empty().block();
        assert_eq!(Header::read(&block), Some(Header::empty()));
        let next = Header { generation: 2, acked_end: 9_000 };
        let at = SLOT_OFFSETS[0] as usize;
        block[at..at + SLOT_LEN].copy_from_slice(&next.slot());
        assert_eq!(Header::read(&block), Some(next));
        block[at + 17] ^= 1; // the newer slot torn: the older one stands
        assert_eq!(Header::read(&block), Some(Header::empty()));
        assert_eq!(Header::read(&block[..100]), None);
        assert_eq!(Header::read(&vec![0u8; HEADER_LEN as usize]), None);
    }
}
