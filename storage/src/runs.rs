//! The on-disk transfer index: immutable sorted runs, each with an xor
//! filter kept in memory, so that "was this id ever used?" costs a memory
//! probe for a new id, and a checkpoint writes one sequential file instead of
//! one B-tree entry per transfer (what bounded throughput with sled).
//!
//! Layout of `<data-dir>/index/`:
//! - `run-<id>.run`: transfer records sorted by id, in blocks of
//!   [`BLOCK_RECORDS`] (one checksummed frame each), then a footer frame (the
//!   first id and place of every block, and the filter), then the footer's
//!   offset (8 bytes, little endian);
//! - `MANIFEST`: one frame listing the runs in force, oldest first. It is
//!   replaced atomically (write, fsync, rename, fsync the directory); a run
//!   it does not list is garbage from an interrupted write or merge, and is
//!   deleted at open.
//!
//! The same id may be in several runs (a pending transfer's later status, or
//! a checkpoint repeated after a crash): the newest run wins. Runs are merged
//! so there are few of them: after a run is added, the newest two are merged
//! while the older holds at most twice as many records as the newer, which
//! keeps about log(total / run size) runs and rewrites each record about as
//! many times.
//!
//! Damage: a footer or manifest that fails its checksum stops the open with
//! an error; a block that fails it makes that look-up an error (the request
//! is refused as unavailable), never a "not found".

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use serde::{Deserialize, Serialize};
use wallet_actors::ids::stable_hash;
use wallet_actors::registry::{TransferIndex, TransferIndexError, TransferRecord};
use wallet_actors::TransferId;
use xorf::{BinaryFuse8, Descriptor, Filter};

use crate::frame::{self, Decoded};
use crate::StorageError;

/// Version of run and manifest frames.
pub const RUN_FORMAT_VERSION: u8 = 1;
/// Records per block: a look-up decodes one block.
pub const BLOCK_RECORDS: usize = 32;

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Manifest {
    runs: Vec<u64>,
    next_run_id: u64,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
struct BlockRef {
    first: u128,
    offset: u64,
    len: u32,
}

/// The filter's parts, stored field by field (xorf's own serde form uses
/// `flatten`, which postcard does not support).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredFilter {
    seed: u64,
    segment_length: u32,
    segment_length_mask: u32,
    segment_count_length: u32,
    fingerprints: Vec<u8>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Footer {
    count: u64,
    blocks: Vec<BlockRef>,
    filter: StoredFilter,
}

struct Run {
    id: u64,
    path: PathBuf,
    file: File,
    count: u64,
    blocks: Vec<BlockRef>,
    filter: BinaryFuse8,
}

fn key(id: TransferId) -> u64 {
    stable_hash(id.get())
}

fn run_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("run-{id:016}.run"))
}

impl Run {
    fn open(dir: &Path, id: u64) -> Result<Run, StorageError> {
        let path = run_path(dir, id);
        let file = File::open(&path).map_err(|e| StorageError::io(&path, e))?;
        let len = file.metadata().map_err(|e| StorageError::io(&path, e))?.len();
        let corrupt = |offset| StorageError::Corrupt { path: path.clone(), offset };
        if len < 8 {
            return Err(corrupt(0));
        }
        let mut tail = [0u8; 8];
        file.read_exact_at(&mut tail, len - 8).map_err(|e| StorageError::io(&path, e))?;
        let footer_offset = u64::from_le_bytes(tail);
        if footer_offset >= len - 8 {
            return Err(corrupt(len - 8));
        }
        let mut bytes = vec![0u8; (len - 8 - footer_offset) as usize];
        file.read_exact_at(&mut bytes, footer_offset).map_err(|e| StorageError::io(&path, e))?;
        let footer: Footer = match frame::decode_at(&bytes, 0, RUN_FORMAT_VERSION) {
            Ok(Decoded::Frame(footer, _)) => footer,
            _ => return Err(corrupt(footer_offset)),
        };
        let stored = footer.filter;
        let filter = BinaryFuse8 {
            descriptor: Descriptor {
                seed: stored.seed,
                segment_length: stored.segment_length,
                segment_length_mask: stored.segment_length_mask,
                segment_count_length: stored.segment_count_length,
            },
            fingerprints: stored.fingerprints.into_boxed_slice(),
        };
        Ok(Run { id, path, file, count: footer.count, blocks: footer.blocks, filter })
    }

    fn block(&self, block: &BlockRef) -> Result<Vec<TransferRecord>, StorageError> {
        let mut bytes = vec![0u8; block.len as usize];
        self.file.read_exact_at(&mut bytes, block.offset).map_err(|e| StorageError::io(&self.path, e))?;
        match frame::decode_at(&bytes, 0, RUN_FORMAT_VERSION)? {
            Decoded::Frame(records, _) => Ok(records),
            _ => Err(StorageError::Corrupt { path: self.path.clone(), offset: block.offset }),
        }
    }

    fn get(&self, id: TransferId) -> Result<Option<TransferRecord>, StorageError> {
        if !self.filter.contains(&key(id)) {
            return Ok(None);
        }
        let wanted = id.get();
        let after = self.blocks.partition_point(|b| b.first <= wanted);
        let Some(block) = after.checked_sub(1).and_then(|i| self.blocks.get(i)) else { return Ok(None) };
        let records = self.block(block)?;
        Ok(records
            .binary_search_by_key(&wanted, |r| r.transfer.id.get())
            .ok()
            .and_then(|i| records.into_iter().nth(i)))
    }

    /// Every record, in id order, block by block.
    fn records(&self) -> impl Iterator<Item = Result<Vec<TransferRecord>, StorageError>> + '_ {
        self.blocks.iter().map(|block| self.block(block))
    }
}

/// Writes one run from records sorted by id without repeats.
struct RunWriter {
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    pending: Vec<TransferRecord>,
    blocks: Vec<BlockRef>,
    keys: Vec<u64>,
    buffer: Vec<u8>,
}

impl RunWriter {
    fn create(path: PathBuf) -> Result<RunWriter, StorageError> {
        let file = File::create(&path).map_err(|e| StorageError::io(&path, e))?;
        Ok(RunWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            offset: 0,
            pending: Vec::with_capacity(BLOCK_RECORDS),
            blocks: Vec::new(),
            keys: Vec::new(),
            buffer: Vec::new(),
        })
    }

    fn push(&mut self, record: TransferRecord) -> Result<(), StorageError> {
        self.keys.push(key(record.transfer.id));
        self.pending.push(record);
        if self.pending.len() == BLOCK_RECORDS {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), StorageError> {
        let Some(first) = self.pending.first() else { return Ok(()) };
        let first = first.transfer.id.get();
        self.buffer.clear();
        frame::encode_into(&self.pending, RUN_FORMAT_VERSION, &mut self.buffer)?;
        self.out.write_all(&self.buffer).map_err(|e| StorageError::io(&self.path, e))?;
        let len = self.buffer.len() as u32;
        self.blocks.push(BlockRef { first, offset: self.offset, len });
        self.offset += u64::from(len);
        self.pending.clear();
        Ok(())
    }

    /// Writes the footer and makes the file durable; returns the record count.
    fn finish(mut self) -> Result<u64, StorageError> {
        self.flush_block()?;
        let count = self.keys.len() as u64;
        // Distinct ids may share a 64-bit hash; the filter wants distinct keys.
        self.keys.sort_unstable();
        self.keys.dedup();
        let filter = BinaryFuse8::try_from(&self.keys).map_err(|_| StorageError::Encode)?;
        let footer = Footer {
            count,
            blocks: std::mem::take(&mut self.blocks),
            filter: StoredFilter {
                seed: filter.descriptor.seed,
                segment_length: filter.descriptor.segment_length,
                segment_length_mask: filter.descriptor.segment_length_mask,
                segment_count_length: filter.descriptor.segment_count_length,
                fingerprints: filter.fingerprints.into_vec(),
            },
        };
        let bytes = frame::encode(&footer, RUN_FORMAT_VERSION)?;
        self.out.write_all(&bytes).map_err(|e| StorageError::io(&self.path, e))?;
        self.out.write_all(&self.offset.to_le_bytes()).map_err(|e| StorageError::io(&self.path, e))?;
        let file = self.out.into_inner().map_err(|e| StorageError::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| StorageError::io(&self.path, e))?;
        Ok(count)
    }
}

/// The runs in force, oldest first, and the writer's lock.
pub struct TransferRuns {
    dir: PathBuf,
    runs: RwLock<Arc<Vec<Arc<Run>>>>,
    /// Held by whoever adds or merges runs (one checkpoint at a time).
    writing: Mutex<Manifest>,
}

impl TransferRuns {
    /// Opens (or creates) the index in `dir`, deleting files of runs the
    /// manifest does not list.
    pub fn open(dir: &Path) -> Result<TransferRuns, StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let manifest_path = dir.join("MANIFEST");
        let manifest = match fs::read(&manifest_path) {
            Ok(bytes) => match frame::decode_at(&bytes, 0, RUN_FORMAT_VERSION)? {
                Decoded::Frame(manifest, _) => manifest,
                _ => return Err(StorageError::Corrupt { path: manifest_path, offset: 0 }),
            },
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Manifest::default(),
            Err(error) => return Err(StorageError::io(&manifest_path, error)),
        };
        let mut runs = Vec::with_capacity(manifest.runs.len());
        for &id in &manifest.runs {
            runs.push(Arc::new(Run::open(dir, id)?));
        }
        for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
            let path = entry.map_err(|e| StorageError::io(dir, e))?.path();
            let listed = manifest.runs.iter().any(|&id| run_path(dir, id) == path);
            if !listed && path != manifest_path {
                fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            }
        }
        Ok(TransferRuns {
            dir: dir.to_path_buf(),
            runs: RwLock::new(Arc::new(runs)),
            writing: Mutex::new(manifest),
        })
    }

    fn current(&self) -> Arc<Vec<Arc<Run>>> {
        self.runs.read().map(|runs| runs.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The record of `id`, from the newest run that has it.
    pub fn get(&self, id: TransferId) -> Result<Option<TransferRecord>, StorageError> {
        for run in self.current().iter().rev() {
            if let Some(record) = run.get(id)? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// Number of runs and records in them (records counted once per run).
    pub fn stats(&self) -> (usize, u64) {
        let runs = self.current();
        (runs.len(), runs.iter().map(|r| r.count).sum())
    }

    /// Every record, the newest of each id, in id order (audits and tests).
    pub fn all(&self) -> Result<Vec<TransferRecord>, StorageError> {
        let mut by_id = std::collections::BTreeMap::new();
        for run in self.current().iter() {
            for block in run.records() {
                for record in block? {
                    by_id.insert(record.transfer.id, record);
                }
            }
        }
        Ok(by_id.into_values().collect())
    }

    /// Adds `records` (any order; for an id given twice the last wins) as
    /// a new run, durable when this returns, then merges runs as needed.
    pub fn add(&self, mut records: Vec<TransferRecord>) -> Result<(), StorageError> {
        let mut manifest = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A stable sort keeps the later of two records with the same id last.
        records.sort_by_key(|r| r.transfer.id);
        let mut unique: Vec<TransferRecord> = Vec::with_capacity(records.len());
        for record in records {
            match unique.last_mut() {
                Some(last) if last.transfer.id == record.transfer.id => *last = record,
                _ => unique.push(record),
            }
        }
        if unique.is_empty() {
            return Ok(());
        }
        let id = manifest.next_run_id;
        let mut writer = RunWriter::create(run_path(&self.dir, id))?;
        for record in unique {
            writer.push(record)?;
        }
        writer.finish()?;
        let run = Arc::new(Run::open(&self.dir, id)?);
        let mut runs: Vec<Arc<Run>> = self.current().iter().cloned().collect();
        runs.push(run);
        manifest.next_run_id = id + 1;
        manifest.runs = runs.iter().map(|r| r.id).collect();
        self.install(&manifest, runs)?;
        self.merge_as_needed(&mut manifest)
    }

    fn merge_as_needed(&self, manifest: &mut Manifest) -> Result<(), StorageError> {
        loop {
            let runs = self.current();
            let n = runs.len();
            if n < 2 || runs[n - 2].count > 2 * runs[n - 1].count {
                return Ok(());
            }
            let (older, newer) = (runs[n - 2].clone(), runs[n - 1].clone());
            let id = manifest.next_run_id;
            let mut writer = RunWriter::create(run_path(&self.dir, id))?;
            merge(&older, &newer, &mut writer)?;
            writer.finish()?;
            let merged = Arc::new(Run::open(&self.dir, id)?);
            let mut next: Vec<Arc<Run>> = runs[..n - 2].to_vec();
            next.push(merged);
            manifest.next_run_id = id + 1;
            manifest.runs = next.iter().map(|r| r.id).collect();
            self.install(manifest, next)?;
            for gone in [older, newer] {
                // Readers holding the run keep their open file; the name goes.
                let _ = fs::remove_file(&gone.path);
            }
        }
    }

    /// Makes `manifest` durable, then puts `runs` in force.
    fn install(&self, manifest: &Manifest, runs: Vec<Arc<Run>>) -> Result<(), StorageError> {
        let path = self.dir.join("MANIFEST");
        let temporary = self.dir.join("MANIFEST.tmp");
        let bytes = frame::encode(manifest, RUN_FORMAT_VERSION)?;
        let mut file = File::create(&temporary).map_err(|e| StorageError::io(&temporary, e))?;
        file.write_all(&bytes).map_err(|e| StorageError::io(&temporary, e))?;
        file.sync_all().map_err(|e| StorageError::io(&temporary, e))?;
        fs::rename(&temporary, &path).map_err(|e| StorageError::io(&path, e))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::io(&self.dir, e))?;
        let mut slot = self.runs.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Arc::new(runs);
        Ok(())
    }
}

/// Streams two runs into `writer` in id order; for an id in both, the newer's record.
fn merge(older: &Run, newer: &Run, writer: &mut RunWriter) -> Result<(), StorageError> {
    let mut a = older.records().flat_map(flatten);
    let mut b = newer.records().flat_map(flatten);
    let (mut next_a, mut next_b) = (a.next().transpose()?, b.next().transpose()?);
    loop {
        match (next_a.take(), next_b.take()) {
            (None, None) => return Ok(()),
            (Some(x), None) => {
                writer.push(x)?;
                next_a = a.next().transpose()?;
            }
            (None, Some(y)) => {
                writer.push(y)?;
                next_b = b.next().transpose()?;
            }
            (Some(x), Some(y)) => match x.transfer.id.cmp(&y.transfer.id) {
                std::cmp::Ordering::Less => {
                    writer.push(x)?;
                    next_a = a.next().transpose()?;
                    next_b = Some(y);
                }
                std::cmp::Ordering::Greater => {
                    writer.push(y)?;
                    next_b = b.next().transpose()?;
                    next_a = Some(x);
                }
                std::cmp::Ordering::Equal => {
                    writer.push(y)?;
                    next_a = a.next().transpose()?;
                    next_b = b.next().transpose()?;
                }
            },
        }
    }
}

fn flatten(
    block: Result<Vec<TransferRecord>, StorageError>,
) -> Box<dyn Iterator<Item = Result<TransferRecord, StorageError>>> {
    match block {
        Ok(records) => Box::new(records.into_iter().map(Ok)),
        Err(error) => Box::new(std::iter::once(Err(error))),
    }
}

impl TransferIndex for TransferRuns {
    fn get(&self, id: TransferId) -> Result<Option<TransferRecord>, TransferIndexError> {
        TransferRuns::get(self, id).map_err(|error| {
            tracing::error!(%error, %id, "transfer index read failed");
            TransferIndexError
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wallet_actors::transfer::{Transfer, TransferKind, TransferRequest};
    use wallet_actors::{AccountId, Amount, TransferStatus};

    fn record(id: u128, status: TransferStatus) -> TransferRecord {
        let tid = TransferId::new(id).unwrap_or_else(|_| unreachable!());
        let account = |n| AccountId::new(n).unwrap_or_else(|_| unreachable!());
        let request = TransferRequest::VoidPending { id: tid, pending_id: tid };
        TransferRecord {
            transfer: Arc::new(Transfer {
                id: tid,
                kind: TransferKind::Pending,
                debit_account_id: account(1),
                credit_account_id: account(2),
                amount: Amount::new(id).unwrap_or_default(),
                pending_id: None,
                expires_at_ms: None,
                timestamp_ms: 0,
                review: None,
                request: Arc::new(request),
            }),
            status,
        }
    }

    #[test]
    fn newest_run_wins_and_merges_keep_it() -> Result<(), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io(Path::new("tmp"), e))?;
        let runs = TransferRuns::open(dir.path())?;
        runs.add((1..=1000).map(|i| record(i * 2, TransferStatus::Pending)).collect())?;
        runs.add(vec![record(10, TransferStatus::Posted), record(7, TransferStatus::Posted)])?;
        for round in 0..5u128 {
            runs.add((0..300).map(|i| record(10_000 + round * 1000 + i, TransferStatus::Posted)).collect())?;
        }
        let get = |id| runs.get(TransferId::new(id).unwrap_or_else(|_| unreachable!()));
        assert_eq!(get(10)?.map(|r| r.status), Some(TransferStatus::Posted));
        assert_eq!(get(12)?.map(|r| r.status), Some(TransferStatus::Pending));
        assert_eq!(get(7)?.map(|r| r.status), Some(TransferStatus::Posted));
        assert_eq!(get(9)?, None);
        assert_eq!(get(14_299)?.map(|r| r.transfer.amount.get()), Some(14_299));
        let (count, _) = runs.stats();
        assert!(count <= 3, "{count} runs");
        drop(runs);
        // Reopened: the same answers, and every id once.
        let runs = TransferRuns::open(dir.path())?;
        assert_eq!(
            runs.get(TransferId::new(10).unwrap_or_else(|_| unreachable!()))?.map(|r| r.status),
            Some(TransferStatus::Posted)
        );
        assert_eq!(runs.all()?.len(), 1000 + 1 + 1500);
        Ok(())
    }
}
