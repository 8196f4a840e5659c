//! Immutable sorted runs, each with an xor filter kept in memory: the
//! transfer index (`<data-dir>/index/`: "was this id ever used?" costs a
//! memory probe for a new id) and account history (`<data-dir>/history/`).
//! A checkpoint writes one sequential file instead of one B-tree entry per
//! transfer or history chunk (what bounded throughput with sled).
//!
//! Layout of a runs directory:
//! - `run-<id>.run`: records sorted by their [`RunKey`], in blocks of
//!   [`RunRecord::BLOCK_RECORDS`] (one checksummed frame each), then a footer
//!   frame (the first key and place of every block, and a filter of the
//!   keys' major parts), then the footer's offset (8 bytes, little endian);
//! - `MANIFEST`: one frame listing the runs in force, oldest first. It is
//!   replaced atomically (write, fsync, rename, fsync the directory); a run
//!   it does not list is garbage from an interrupted write or merge, and is
//!   deleted at open.
//!
//! The same key may be in several runs (a pending transfer's later status, or
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

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use wallet_actors::ids::stable_hash;
use wallet_actors::ports::{ReadError, TransferIndex};
use wallet_actors::registry::TransferRecord;
use wallet_actors::shard::HistoryEntry;
use wallet_actors::{AccountId, TransferId};
use xorf::{BinaryFuse8, Filter};

use crate::frame::{self, Decoded};
use crate::StorageError;

mod footer;
use footer::{BlockRef, Footer};

/// Version of run and manifest frames.
/// 3: the footer is a sequence of frames (`runs::footer`).
/// 5: ids are 16 fixed bytes.
pub const RUN_FORMAT_VERSION: u8 = 5;

/// Where a record sorts in a run: by `major` (the filter holds it), then
/// `minor`. Records with equal keys replace each other; the newest run wins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RunKey {
    /// A transfer id, or an account id.
    pub major: u128,
    /// Zero, or the first sequence number of a history chunk.
    pub minor: u64,
}

impl From<TransferId> for RunKey {
    /// A transfer's place in the index.
    fn from(id: TransferId) -> RunKey {
        RunKey { major: id.get(), minor: 0 }
    }
}

/// What runs hold.
pub trait RunRecord: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {
    /// Records per block: a look-up decodes one block.
    const BLOCK_RECORDS: usize;
    /// Its place.
    fn run_key(&self) -> RunKey;
}

impl RunRecord for TransferRecord {
    const BLOCK_RECORDS: usize = 32;
    fn run_key(&self) -> RunKey {
        self.transfer.id.into()
    }
}

/// Most entries in one [`HistoryChunk`]: an account with more history in
/// one checkpoint (a settlement account takes a leg of every deposit) gets
/// several chunks, so a block of chunks stays far below a frame's limit
/// (8 chunks of 512 entries of about 100 bytes: about 400 KB).
pub const HISTORY_CHUNK_ENTRIES_MAX: usize = 512;

/// One account's history entries of one checkpoint, in sequence order (at
/// most [`HISTORY_CHUNK_ENTRIES_MAX`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryChunk {
    /// The account.
    pub account_id: AccountId,
    /// Its entries, oldest first; never empty.
    pub entries: Vec<HistoryEntry>,
}

impl RunRecord for HistoryChunk {
    // Chunks hold several entries each: smaller blocks keep a read small.
    const BLOCK_RECORDS: usize = 8;
    fn run_key(&self) -> RunKey {
        RunKey { major: self.account_id.get(), minor: self.entries.first().map_or(0, |e| e.sequence) }
    }
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
struct Manifest {
    runs: Vec<u64>,
    next_run_id: u64,
}

struct Run<R> {
    id: u64,
    path: PathBuf,
    file: File,
    count: u64,
    blocks: Vec<BlockRef>,
    filter: BinaryFuse8,
    records: std::marker::PhantomData<fn() -> R>,
}

fn filter_key(major: u128) -> u64 {
    stable_hash(major)
}

fn run_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("run-{id:016}.run"))
}

impl<R: RunRecord> Run<R> {
    fn open(dir: &Path, id: u64) -> Result<Run<R>, StorageError> {
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
        let footer = Footer::decode(&bytes, |at| corrupt(footer_offset + at))?;
        Ok(Run {
            id,
            path,
            file,
            count: footer.count,
            blocks: footer.blocks,
            filter: footer.filter,
            records: std::marker::PhantomData,
        })
    }

    fn block(&self, block: &BlockRef) -> Result<Vec<R>, StorageError> {
        let mut bytes = vec![0u8; block.len as usize];
        self.file.read_exact_at(&mut bytes, block.offset).map_err(|e| StorageError::io(&self.path, e))?;
        match frame::decode_at(&bytes, 0, RUN_FORMAT_VERSION)? {
            Decoded::Frame(records, _) => Ok(records),
            _ => Err(StorageError::Corrupt { path: self.path.clone(), offset: block.offset }),
        }
    }

    fn get(&self, wanted: RunKey) -> Result<Option<R>, StorageError> {
        if !self.filter.contains(&filter_key(wanted.major)) {
            return Ok(None);
        }
        let after = self.blocks.partition_point(|b| b.first <= wanted);
        let Some(block) = after.checked_sub(1).and_then(|i| self.blocks.get(i)) else { return Ok(None) };
        let records = self.block(block)?;
        Ok(records.binary_search_by_key(&wanted, R::run_key).ok().and_then(|i| records.into_iter().nth(i)))
    }

    /// Records whose major part is `major`, in key order, from the last one
    /// whose minor part is at most `from_minor` (or the first); stops when
    /// `visit` says so.
    fn scan(
        &self,
        major: u128,
        from_minor: u64,
        mut visit: impl FnMut(R) -> bool,
    ) -> Result<(), StorageError> {
        if !self.filter.contains(&filter_key(major)) {
            return Ok(());
        }
        let from = RunKey { major, minor: from_minor };
        let start = self.blocks.partition_point(|b| b.first <= from).saturating_sub(1);
        let mut before: Option<R> = None;
        for block in &self.blocks[start..] {
            for record in self.block(block)? {
                let key = record.run_key();
                if key.major < major {
                    continue;
                }
                if key.major > major {
                    if let Some(earlier) = before {
                        visit(earlier);
                    }
                    return Ok(());
                }
                if key.minor <= from_minor {
                    before = Some(record);
                    continue;
                }
                if let Some(earlier) = before.take() {
                    if !visit(earlier) {
                        return Ok(());
                    }
                }
                if !visit(record) {
                    return Ok(());
                }
            }
        }
        if let Some(earlier) = before {
            visit(earlier);
        }
        Ok(())
    }

    /// Every record, in key order, block by block.
    fn records(&self) -> impl Iterator<Item = Result<Vec<R>, StorageError>> + '_ {
        self.blocks.iter().map(|block| self.block(block))
    }
}

/// Writes one run from records sorted by key without repeats.
struct RunWriter<R> {
    path: PathBuf,
    out: BufWriter<File>,
    offset: u64,
    pending: Vec<R>,
    blocks: Vec<BlockRef>,
    keys: Vec<u64>,
    buffer: Vec<u8>,
}

impl<R: RunRecord> RunWriter<R> {
    fn create(path: PathBuf) -> Result<RunWriter<R>, StorageError> {
        let file = File::create(&path).map_err(|e| StorageError::io(&path, e))?;
        Ok(RunWriter {
            path,
            out: BufWriter::with_capacity(1 << 20, file),
            offset: 0,
            pending: Vec::with_capacity(R::BLOCK_RECORDS),
            blocks: Vec::new(),
            keys: Vec::new(),
            buffer: Vec::new(),
        })
    }

    fn push(&mut self, record: R) -> Result<(), StorageError> {
        self.keys.push(filter_key(record.run_key().major));
        self.pending.push(record);
        if self.pending.len() == R::BLOCK_RECORDS {
            self.flush_block()?;
        }
        Ok(())
    }

    fn flush_block(&mut self) -> Result<(), StorageError> {
        let Some(first) = self.pending.first() else { return Ok(()) };
        let first = first.run_key();
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
        // Distinct keys may share a 64-bit hash, and history chunks of one
        // account share their major part; the filter wants distinct keys.
        self.keys.sort_unstable();
        self.keys.dedup();
        let filter = BinaryFuse8::try_from(&self.keys).map_err(|_| StorageError::Encode)?;
        let footer = Footer { count, blocks: std::mem::take(&mut self.blocks), filter };
        let bytes = footer.encode()?;
        self.out.write_all(&bytes).map_err(|e| StorageError::io(&self.path, e))?;
        self.out.write_all(&self.offset.to_le_bytes()).map_err(|e| StorageError::io(&self.path, e))?;
        let file = self.out.into_inner().map_err(|e| StorageError::io(&self.path, e.into_error()))?;
        file.sync_all().map_err(|e| StorageError::io(&self.path, e))?;
        Ok(count)
    }
}

/// The runs in force, oldest first, and the writer's lock.
pub struct Runs<R> {
    dir: PathBuf,
    runs: RwLock<Arc<Vec<Arc<Run<R>>>>>,
    /// Held by whoever adds or merges runs (one checkpoint at a time).
    writing: Mutex<Manifest>,
    /// Files no manifest listed, deleted when this opened.
    removed_at_open: usize,
}

/// The transfer index: transfers of retired journal segments, by id.
pub type TransferRuns = Runs<TransferRecord>;
/// Account history older than the last checkpoint, by account and sequence.
pub type HistoryRuns = Runs<HistoryChunk>;

impl<R: RunRecord> Runs<R> {
    /// Opens (or creates) the index in `dir`, deleting files of runs the
    /// manifest does not list.
    pub fn open(dir: &Path) -> Result<Runs<R>, StorageError> {
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
        let mut removed_at_open = 0;
        for entry in fs::read_dir(dir).map_err(|e| StorageError::io(dir, e))? {
            let path = entry.map_err(|e| StorageError::io(dir, e))?.path();
            let listed = manifest.runs.iter().any(|&id| run_path(dir, id) == path);
            if !listed && path != manifest_path {
                fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
                removed_at_open += 1;
            }
        }
        Ok(Runs {
            dir: dir.to_path_buf(),
            runs: RwLock::new(Arc::new(runs)),
            writing: Mutex::new(manifest),
            removed_at_open,
        })
    }

    /// Files of interrupted writes or merges deleted when this opened.
    pub fn removed_at_open(&self) -> usize {
        self.removed_at_open
    }

    fn current(&self) -> Arc<Vec<Arc<Run<R>>>> {
        self.runs.read().map(|runs| runs.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The record at `key`, from the newest run that has it.
    pub fn get(&self, key: RunKey) -> Result<Option<R>, StorageError> {
        for run in self.current().iter().rev() {
            if let Some(record) = run.get(key)? {
                return Ok(Some(record));
            }
        }
        Ok(None)
    }

    /// The files of the runs in force, oldest first, then the manifest
    /// listing them (none before the first run).
    pub fn files(&self) -> Vec<PathBuf> {
        let manifest = self.dir.join("MANIFEST");
        let mut files: Vec<PathBuf> = self.current().iter().map(|run| run.path.clone()).collect();
        if manifest.exists() {
            files.push(manifest);
        }
        files
    }

    /// Number of runs and records in them (records counted once per run).
    pub fn stats(&self) -> (usize, u64) {
        let runs = self.current();
        (runs.len(), runs.iter().map(|r| r.count).sum())
    }

    /// Every record, the newest of each key, in key order (audits and tests).
    pub fn all(&self) -> Result<Vec<R>, StorageError> {
        let mut by_key = std::collections::BTreeMap::new();
        for run in self.current().iter() {
            for block in run.records() {
                for record in block? {
                    by_key.insert(record.run_key(), record);
                }
            }
        }
        Ok(by_key.into_values().collect())
    }

    /// Adds `records` (any order; for a key given twice the last wins) as
    /// a new run, durable when this returns, then merges runs as needed.
    pub fn add(&self, mut records: Vec<R>) -> Result<(), StorageError> {
        let mut manifest = self.writing.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        // A stable sort keeps the later of two records with the same key last.
        records.sort_by_key(R::run_key);
        let mut unique: Vec<R> = Vec::with_capacity(records.len());
        for record in records {
            match unique.last_mut() {
                Some(last) if last.run_key() == record.run_key() => *last = record,
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
        let mut runs: Vec<Arc<Run<R>>> = self.current().iter().cloned().collect();
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
            let mut next: Vec<Arc<Run<R>>> = runs[..n - 2].to_vec();
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
    fn install(&self, manifest: &Manifest, runs: Vec<Arc<Run<R>>>) -> Result<(), StorageError> {
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

/// Streams two runs into `writer` in key order; for a key in both, the newer's record.
fn merge<R: RunRecord>(
    older: &Run<R>,
    newer: &Run<R>,
    writer: &mut RunWriter<R>,
) -> Result<(), StorageError> {
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
            (Some(x), Some(y)) => match x.run_key().cmp(&y.run_key()) {
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

fn flatten<R: RunRecord>(
    block: Result<Vec<R>, StorageError>,
) -> Box<dyn Iterator<Item = Result<R, StorageError>>> {
    match block {
        Ok(records) => Box::new(records.into_iter().map(Ok)),
        Err(error) => Box::new(std::iter::once(Err(error))),
    }
}

impl TransferIndex for TransferRuns {
    fn get(&self, id: TransferId) -> Result<Option<TransferRecord>, ReadError> {
        Runs::get(self, id.into()).map_err(|error| {
            tracing::error!(%error, %id, "transfer index read failed");
            ReadError
        })
    }
}

impl wallet_actors::ports::HistoryIndex for HistoryRuns {
    fn history(
        &self,
        account_id: AccountId,
        after_sequence: u64,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, ReadError> {
        let wanted = after_sequence.saturating_add(1);
        let mut entries = Vec::new();
        // Each run gives its first `limit` entries from `wanted` on; the
        // first `limit` of all of them are among those.
        for run in self.current().iter() {
            let mut found = 0;
            run.scan(account_id.get(), wanted, |chunk| {
                for entry in chunk.entries.into_iter().filter(|e| e.sequence >= wanted) {
                    entries.push(entry);
                    found += 1;
                }
                found < limit
            })
            .map_err(|error| {
                tracing::error!(%error, %account_id, "history read failed");
                ReadError
            })?;
        }
        entries.sort_by_key(|e| e.sequence);
        entries.dedup_by_key(|e| e.sequence);
        entries.truncate(limit);
        Ok(entries)
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
        let get = |id| runs.get(RunKey { major: id, minor: 0 });
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
        assert_eq!(runs.get(RunKey { major: 10, minor: 0 })?.map(|r| r.status), Some(TransferStatus::Posted));
        assert_eq!(runs.all()?.len(), 1000 + 1 + 1500);
        Ok(())
    }

    fn chunk(account: u128, sequences: std::ops::RangeInclusive<u64>) -> HistoryChunk {
        let account_id = AccountId::new(account).unwrap_or_else(|_| unreachable!());
        HistoryChunk {
            account_id,
            entries: sequences
                .map(|sequence| HistoryEntry {
                    account_id,
                    sequence,
                    event: wallet_actors::shard::HistoryEvent::Opened,
                    balances: wallet_actors::Balances {
                        credits_posted: u128::from(sequence),
                        ..Default::default()
                    },
                    at_ms: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn history_pages_across_runs_and_merges() -> Result<(), StorageError> {
        use wallet_actors::ports::HistoryIndex;
        let dir = tempfile::tempdir().map_err(|e| StorageError::io(Path::new("tmp"), e))?;
        let runs = HistoryRuns::open(dir.path())?;
        // Account 7 gets a chunk per checkpoint; its neighbours crowd the blocks.
        let mut next = [1u64; 3];
        for checkpoint in 0..12u64 {
            let mut chunks = Vec::new();
            for (slot, account) in [6u128, 7, 8].into_iter().enumerate() {
                let size = 1 + (checkpoint * 7 + slot as u64) % 5;
                chunks.push(chunk(account, next[slot]..=next[slot] + size - 1));
                next[slot] += size;
            }
            chunks.extend((100..140).map(|a| chunk(a, checkpoint + 1..=checkpoint + 1)));
            runs.add(chunks)?;
        }
        // A checkpoint written again after a crash: the same first key, more entries.
        runs.add(vec![chunk(7, next[1]..=next[1] + 2)])?;
        runs.add(vec![chunk(7, next[1]..=next[1] + 4)])?;
        let last = next[1] + 4;
        let account = AccountId::new(7).unwrap_or_else(|_| unreachable!());
        for after in 0..=last {
            for limit in [1usize, 2, 3, 10, 1000] {
                let got: Vec<u64> = runs
                    .history(account, after, limit)
                    .map_err(|_| StorageError::Encode)?
                    .iter()
                    .map(|e| e.sequence)
                    .collect();
                let want: Vec<u64> = (after + 1..=last).take(limit).collect();
                assert_eq!(got, want, "after {after}, limit {limit}");
            }
        }
        let nobody = AccountId::new(5).unwrap_or_else(|_| unreachable!());
        assert!(runs.history(nobody, 0, 10).map_err(|_| StorageError::Encode)?.is_empty());
        Ok(())
    }
}
