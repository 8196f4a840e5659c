//! A node's snapshot as files another node can install (cluster mode's
//! shared snapshots, `docs/ARCHITECTURE.md`, "Snapshots any node can read"):
//! the sled snapshot exported into one file of frames ([`export_state`],
//! read back by [`import_state`]), and the runs in force (the transfer
//! index's and the history's, each with its `MANIFEST`) as they lie on
//! disk. Runs are immutable, so a later image reuses what an earlier one
//! shipped of them.
//!
//! Read these only while no checkpoint writes: a checkpoint is the only
//! writer of the sled snapshot and the runs.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::frame::{self, Decoded};
use crate::snapshot::SnapshotStore;
use crate::snapshots::LocalSnapshots;
use crate::StorageError;

/// Version of the exported state's frames.
pub const IMAGE_FORMAT_VERSION: u8 = 1;

/// Where the exported sled snapshot goes in an image.
pub const STATE_FILE: &str = "state";

/// Entries per frame of the exported state: frames stay far below a
/// frame's limit while the per-frame cost stays small.
const ENTRIES_PER_FRAME: usize = 4_096;

/// A file of an image, named by its place under the snapshots directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageFile {
    /// Its path under the snapshots directory (`index/run-….run`).
    pub relative: String,
    /// Where it is.
    pub path: PathBuf,
    /// Its size.
    pub bytes: u64,
}

/// One frame of the exported state.
#[derive(Serialize, Deserialize)]
enum StatePart {
    /// Entries of the tree named, in key order.
    Entries { tree: String, entries: Vec<(Vec<u8>, Vec<u8>)> },
    /// The end, with the number of entries before it: a cut file is told
    /// from a whole one.
    End { entries: u64 },
}

impl LocalSnapshots {
    /// The position the snapshot's replay starts at (0: no checkpoint yet).
    pub fn position(&self) -> Result<u64, StorageError> {
        Ok(self.store.load_meta()?.map_or(0, |meta| meta.replay_from_segment))
    }

    /// The run files in force and the manifests that list them.
    pub fn run_files(&self) -> Result<Vec<ImageFile>, StorageError> {
        let mut files = Vec::new();
        for (kind, paths) in [("index", self.runs.files()), ("history", self.history.files())] {
            for path in paths {
                let bytes = fs::metadata(&path).map_err(|e| StorageError::io(&path, e))?.len();
                let name =
                    path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
                files.push(ImageFile { relative: format!("{kind}/{name}"), path, bytes });
            }
        }
        Ok(files)
    }

    /// Writes the sled snapshot's every tree into the file `to`, synced.
    pub fn export_state(&self, to: &Path) -> Result<u64, StorageError> {
        let io = |e| StorageError::io(to, e);
        let mut out = BufWriter::new(File::create(to).map_err(io)?);
        let mut total = 0u64;
        let mut buffer = Vec::new();
        let mut put = |part: &StatePart, out: &mut BufWriter<File>| {
            buffer.clear();
            frame::encode_into(part, IMAGE_FORMAT_VERSION, &mut buffer)?;
            out.write_all(&buffer).map_err(io)
        };
        for (name, tree) in self.store.trees() {
            let mut entries = Vec::with_capacity(ENTRIES_PER_FRAME);
            for item in tree.iter() {
                let (key, value) = item.map_err(|e| StorageError::io(to, std::io::Error::other(e)))?;
                entries.push((key.to_vec(), value.to_vec()));
                if entries.len() == ENTRIES_PER_FRAME {
                    total += entries.len() as u64;
                    put(
                        &StatePart::Entries { tree: name.to_string(), entries: std::mem::take(&mut entries) },
                        &mut out,
                    )?;
                }
            }
            if !entries.is_empty() {
                total += entries.len() as u64;
                put(&StatePart::Entries { tree: name.to_string(), entries }, &mut out)?;
            }
        }
        put(&StatePart::End { entries: total }, &mut out)?;
        let file = out.into_inner().map_err(|e| StorageError::io(to, e.into_error()))?;
        file.sync_all().map_err(io)?;
        Ok(total)
    }
}

/// What an import made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Imported {
    /// Entries written.
    pub entries: u64,
    /// The position of the checkpoint the state is of (0: none).
    pub position: u64,
}

/// Makes a new sled snapshot at `snapshot_dir` (which must not exist yet)
/// holding what `from` exports, and flushes it. A file that is cut, holds a
/// tree this build does not know, or fails a checksum is an error.
pub fn import_state(from: &Path, snapshot_dir: &Path, cache_bytes: u64) -> Result<Imported, StorageError> {
    let mut input = BufReader::new(File::open(from).map_err(|e| StorageError::io(from, e))?);
    let store = SnapshotStore::open(snapshot_dir, cache_bytes)?;
    let trees = store.trees();
    let mut imported = 0u64;
    let mut offset = 0u64;
    loop {
        match read_frame(&mut input, from, offset)? {
            (StatePart::Entries { tree, entries }, len) => {
                let Some((_, target)) = trees.iter().find(|(name, _)| *name == tree) else {
                    return Err(StorageError::Corrupt { path: from.to_path_buf(), offset });
                };
                let mut batch = sled::Batch::default();
                imported += entries.len() as u64;
                for (key, value) in entries {
                    batch.insert(key, value);
                }
                target
                    .apply_batch(batch)
                    .map_err(|e| StorageError::io(snapshot_dir, std::io::Error::other(e)))?;
                offset += len;
            }
            (StatePart::End { entries }, _) if entries == imported => break,
            (StatePart::End { .. }, _) => {
                return Err(StorageError::Corrupt { path: from.to_path_buf(), offset })
            }
        }
    }
    store.flush()?;
    let position = store.load_meta()?.map_or(0, |meta| meta.replay_from_segment);
    Ok(Imported { entries: imported, position })
}

/// Reads the next frame of an exported state, and its length.
fn read_frame(input: &mut impl Read, path: &Path, offset: u64) -> Result<(StatePart, u64), StorageError> {
    let cut = || StorageError::Corrupt { path: path.to_path_buf(), offset };
    let mut frame_bytes = vec![0u8; frame::HEADER_LEN];
    input.read_exact(&mut frame_bytes).map_err(|_| cut())?;
    let len = u32::from_le_bytes([frame_bytes[0], frame_bytes[1], frame_bytes[2], frame_bytes[3]]) as usize;
    if len == 0 || len > frame::PAYLOAD_LEN_MAX {
        return Err(cut());
    }
    frame_bytes.resize(frame::HEADER_LEN + len, 0);
    input.read_exact(&mut frame_bytes[frame::HEADER_LEN..]).map_err(|_| cut())?;
    match frame::decode_at(&frame_bytes, 0, IMAGE_FORMAT_VERSION)? {
        Decoded::Frame(part, end) => Ok((part, end as u64)),
        _ => Err(cut()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a snapshot holds comes back whole from its export; a cut
    /// export is refused.
    #[test]
    fn an_exported_state_imports_whole_and_a_cut_one_is_refused() -> Result<(), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io(Path::new("tmp"), e))?;
        let snapshots = LocalSnapshots::open_blocking(&dir.path().join("a"), 1 << 20)?;
        let trees = snapshots.store.trees();
        for (index, (_, tree)) in trees.iter().enumerate() {
            for key in 0..(ENTRIES_PER_FRAME as u32 + index as u32) {
                tree.insert(key.to_be_bytes(), vec![index as u8; 3])
                    .map_err(|e| StorageError::io(dir.path(), std::io::Error::other(e)))?;
            }
        }
        let exported = dir.path().join("state");
        let count = snapshots.export_state(&exported)?;
        let imported = import_state(&exported, &dir.path().join("b"), 1 << 20)?;
        assert_eq!(imported.entries, count);
        let copy = SnapshotStore::open(&dir.path().join("b"), 1 << 20)?;
        for ((name, tree), (_, copied)) in trees.iter().zip(copy.trees().iter()) {
            let read = |tree: &sled::Tree| tree.iter().filter_map(Result::ok).collect::<Vec<_>>();
            assert_eq!(read(tree), read(copied), "tree {name}");
        }
        let bytes = fs::read(&exported).map_err(|e| StorageError::io(&exported, e))?;
        fs::write(&exported, &bytes[..bytes.len() - 3]).map_err(|e| StorageError::io(&exported, e))?;
        assert!(import_state(&exported, &dir.path().join("c"), 1 << 20).is_err(), "a cut export imported");
        Ok(())
    }
}
