//! The file journal: segmented, append-only files of checksummed postcard
//! frames, written by one dedicated thread with group commit.
//!
//! Whatever arrives while the thread writes and syncs one batch goes into
//! the next batch, so one `fdatasync` covers many shards' records and the
//! number of syncs per second stays near the disk's sync rate whatever the
//! load. Callers never block: [`FileJournal::append`] queues and returns; the
//! record's callback runs on the completion thread once it is durable.
//!
//! Each segment starts with a header ([`crate::segment`]) recording where its
//! acknowledged frames end, so that the reader can tell a torn write (cut)
//! from damage to an acknowledged frame (an error).

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

use wallet_actors::ports::{Journal, JournalError, OnDurable, Origin};
use wallet_actors::record::{Record, RECORD_FORMAT_VERSION};

use crate::frame::{self, Decoded};
use crate::segment::{Header, HEADER_LEN};
use crate::StorageError;

const SEGMENT_SUFFIX: &str = ".wal";

/// How the journal writes.
#[derive(Clone, Debug)]
pub struct JournalOptions {
    /// A new segment starts once the current one passes this size.
    pub segment_bytes_max: u64,
    /// Most bytes written per sync.
    pub batch_bytes_max: usize,
    /// Skip `fdatasync` (benchmarks of the CPU path only; never in production).
    pub sync: bool,
}

impl Default for JournalOptions {
    fn default() -> Self {
        JournalOptions { segment_bytes_max: 64 << 20, batch_bytes_max: 8 << 20, sync: true }
    }
}

/// Counters of the journal thread, for metrics and benchmarks.
#[derive(Debug, Default)]
pub struct JournalStats {
    /// Records made durable.
    pub records: AtomicU64,
    /// Syncs done (one per batch).
    pub syncs: AtomicU64,
    /// Bytes written.
    pub bytes: AtomicU64,
    /// Total time spent in `fdatasync`, in microseconds.
    pub sync_micros: AtomicU64,
}

enum Message {
    /// Encoded frames, or why they could not be encoded; whether they hold
    /// a `Commit` (a point tests may stop the process at once it is durable).
    Append(Result<Vec<u8>, JournalError>, OnDurable, bool),
    /// No bytes: called back once everything before it is durable.
    WhenDurable(OnDurable),
    Close(mpsc::Sender<()>),
    /// Start a new segment; answers with its index. Every record appended
    /// before this message is in an earlier segment, every later one in it
    /// or after.
    Rotate(mpsc::Sender<Result<u64, JournalError>>),
}

/// A synced batch's callbacks, run on the completion thread so that the
/// writer can start the next write while callers are woken.
type Completed = (Result<(), JournalError>, Vec<OnDurable>);

/// The journal. Cheap to share behind an `Arc`.
pub struct FileJournal {
    sender: Sender<Message>,
    thread: Mutex<Option<JoinHandle<()>>>,
    stats: Arc<JournalStats>,
}

/// What reading a journal found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadSummary {
    /// Records read.
    pub records: u64,
    /// Segments read.
    pub segments: u64,
    /// Bytes cut off the end of the last segment (a torn write).
    pub torn_tail_bytes: u64,
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:016}{SEGMENT_SUFFIX}"))
}

/// Segment indexes found in `dir`, ascending.
pub fn segments(dir: &Path) -> Result<Vec<u64>, StorageError> {
    let mut found = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(found),
        Err(error) => return Err(StorageError::io(dir, error)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io(dir, e))?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)) else { continue };
        if let Ok(index) = stem.parse::<u64>() {
            found.push(index);
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Where a record was read: its segment file and the offset of its frame.
#[derive(Clone, Copy, Debug)]
pub struct RecordAt<'a> {
    /// The segment file.
    pub path: &'a Path,
    /// Where the frame starts.
    pub offset: u64,
}

/// Reads every record of the journal in `dir`, in order, handing each to
/// `on_record` (which may stop the read with an error). A torn write at the
/// end of the last segment is cut off (the file is truncated there); damage
/// anywhere else is an error, never skipped.
pub fn read_journal(
    dir: &Path,
    on_record: impl FnMut(Record, RecordAt<'_>) -> Result<(), StorageError>,
) -> Result<ReadSummary, StorageError> {
    read_journal_from(dir, 0, on_record)
}

/// Like [`read_journal`], from segment `first_segment` on. The segments
/// must start there and follow each other without a gap: a snapshot whose
/// meta names an older segment than the journal holds (a snapshot store
/// that silently lost its latest writes, as sled does when its log is
/// damaged) or a segment gone from the middle is an error, never a replay
/// of less than what was there.
pub fn read_journal_from(
    dir: &Path,
    first_segment: u64,
    on_record: impl FnMut(Record, RecordAt<'_>) -> Result<(), StorageError>,
) -> Result<ReadSummary, StorageError> {
    let all = segments(dir)?;
    let indexes: Vec<u64> = all.iter().copied().filter(|&i| i >= first_segment).collect();
    let fresh = all.is_empty() && first_segment == 0;
    let mut expected = first_segment;
    for &index in &indexes {
        if index != expected {
            return Err(StorageError::JournalGap { dir: dir.to_path_buf(), expected, found: Some(index) });
        }
        expected += 1;
    }
    if indexes.is_empty() && !fresh {
        return Err(StorageError::JournalGap { dir: dir.to_path_buf(), expected, found: None });
    }
    read_segments(dir, &indexes, true, on_record)
}

/// Reads the given segments in order. With `cut_torn_tail`, a torn write at
/// the end of the last one is cut off; otherwise any damage is an error.
pub fn read_segments(
    dir: &Path,
    indexes: &[u64],
    cut_torn_tail: bool,
    mut on_record: impl FnMut(Record, RecordAt<'_>) -> Result<(), StorageError>,
) -> Result<ReadSummary, StorageError> {
    let mut summary = ReadSummary::default();
    for (position, index) in indexes.iter().enumerate() {
        let path = segment_path(dir, *index);
        let bytes = fs::read(&path).map_err(|e| StorageError::io(&path, e))?;
        let is_last = cut_torn_tail && position + 1 == indexes.len();
        let header = match Header::read(&bytes) {
            Some(header) => header,
            // A crash while the last segment was being created: its header
            // is not whole, and nothing was written after it.
            None if is_last && (bytes.len() as u64) <= HEADER_LEN => {
                summary.segments += 1;
                continue;
            }
            None => return Err(StorageError::Corrupt { path, offset: 0 }),
        };
        let mut offset = HEADER_LEN as usize;
        loop {
            match frame::decode_at::<Record>(&bytes, offset, RECORD_FORMAT_VERSION)? {
                Decoded::Frame(record, next) => {
                    on_record(record, RecordAt { path: &path, offset: offset as u64 })?;
                    summary.records += 1;
                    offset = next;
                }
                // Bytes that were acknowledged are missing: an error, never
                // a silent loss.
                Decoded::End if (offset as u64) < header.acked_end => {
                    return Err(StorageError::Corrupt { path, offset: offset as u64 });
                }
                Decoded::End => break,
                Decoded::Invalid { .. } => {
                    // Before the acknowledged end it is damage, not a torn
                    // write. After it, a torn write leaves nothing whole
                    // behind it; a valid frame further on means damage.
                    let torn = is_last
                        && (offset as u64) >= header.acked_end
                        && !frame::any_frame_after(&bytes, offset);
                    if !torn {
                        return Err(StorageError::Corrupt { path, offset: offset as u64 });
                    }
                    let file =
                        OpenOptions::new().write(true).open(&path).map_err(|e| StorageError::io(&path, e))?;
                    file.set_len(offset as u64).map_err(|e| StorageError::io(&path, e))?;
                    file.sync_all().map_err(|e| StorageError::io(&path, e))?;
                    summary.torn_tail_bytes = (bytes.len() - offset) as u64;
                    tracing::warn!(path = %path.display(), offset, bytes = summary.torn_tail_bytes, "cut a torn write off the journal");
                    break;
                }
            }
        }
        summary.segments += 1;
    }
    Ok(summary)
}

impl FileJournal {
    /// Starts the journal thread, appending to the last segment in `dir`
    /// (read it with [`read_journal`] first, which cuts a torn tail).
    pub fn start(dir: &Path, options: JournalOptions) -> Result<FileJournal, StorageError> {
        fs::create_dir_all(dir).map_err(|e| StorageError::io(dir, e))?;
        let index = segments(dir)?.last().copied().unwrap_or(0);
        let (file, size, header) = open_segment(dir, index)?;
        let (sender, receiver) = mpsc::channel();
        let stats = Arc::new(JournalStats::default());
        let mut writer = Writer {
            dir: dir.to_path_buf(),
            options,
            index,
            file,
            size,
            // Everything in the segment now (recovery cut any torn tail and
            // replayed the rest) is served from, so it counts as
            // acknowledged from here on: record it before anything else.
            acked_end: size,
            header,
            stats: stats.clone(),
            failed: None,
        };
        writer.settle_header().map_err(|e| StorageError::io(dir, e))?;
        let thread = std::thread::Builder::new()
            .name("wallet-journal".into())
            .spawn(move || writer.run(receiver))
            .map_err(|e| StorageError::io(dir, e))?;
        Ok(FileJournal { sender, thread: Mutex::new(Some(thread)), stats })
    }

    /// The thread's counters.
    pub fn stats(&self) -> Arc<JournalStats> {
        self.stats.clone()
    }

    /// Starts a new segment and returns its index: records appended before
    /// this call are all in earlier segments.
    pub fn rotate(&self) -> Result<u64, JournalError> {
        let (reply, wait) = mpsc::channel();
        self.sender.send(Message::Rotate(reply)).map_err(|_| JournalError::Closed)?;
        wait.recv().map_err(|_| JournalError::Closed)?
    }

    /// Deletes the segments before `segment` (their records are in a snapshot).
    pub fn delete_before(dir: &Path, segment: u64) -> Result<usize, StorageError> {
        let mut deleted = 0;
        for index in segments(dir)?.into_iter().filter(|&i| i < segment) {
            let path = segment_path(dir, index);
            fs::remove_file(&path).map_err(|e| StorageError::io(&path, e))?;
            deleted += 1;
        }
        crate::faults::hit(crate::faults::points::DELETE_SEGMENTS)
            .and_then(|()| File::open(dir))
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::io(dir, e))?;
        Ok(deleted)
    }

    /// Makes everything appended so far durable, stops the thread, and
    /// refuses later appends.
    pub fn close(&self) {
        let (done, wait) = mpsc::channel();
        if self.sender.send(Message::Close(done)).is_ok() {
            let _ = wait.recv();
        }
        if let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) {
            let _ = thread.join();
        }
    }
}

impl Drop for FileJournal {
    fn drop(&mut self) {
        self.close();
    }
}

impl Journal for FileJournal {
    /// One order for every origin; the origin is not stored (one node holds
    /// every shard).
    fn append(&self, _origin: Origin, record: Record, on_durable: OnDurable) {
        // Encoding here spreads its cost over the callers' threads; the
        // journal thread only copies, writes and syncs.
        let frame = encode_frames(&record).map_err(|error| {
            tracing::error!(%error, "a journal record does not encode; refused before it could be acknowledged");
            JournalError::Io { kind: std::io::ErrorKind::InvalidData }
        });
        let holds_commit = cfg!(feature = "fault-injection") && holds_commit(&record);
        if let Err(mpsc::SendError(Message::Append(_, on_durable, _))) =
            self.sender.send(Message::Append(frame, on_durable, holds_commit))
        {
            on_durable(Err(JournalError::Closed));
        }
    }

    fn when_durable(&self, on_durable: OnDurable) {
        if let Err(mpsc::SendError(Message::WhenDurable(on_durable))) =
            self.sender.send(Message::WhenDurable(on_durable))
        {
            on_durable(Err(JournalError::Closed));
        }
    }
}

/// Opens segment `index`, creating it with an empty header if it does not
/// exist (or if a crash cut its creation short). Not opened in append mode:
/// the writer writes at explicit offsets (on Linux, `pwrite` on an
/// `O_APPEND` file appends whatever the offset, which the header needs).
fn holds_commit(record: &Record) -> bool {
    match record {
        Record::Commit(_) => true,
        Record::Batch(records) => records.iter().any(holds_commit),
        _ => false,
    }
}

/// Encodes a record as frames. A batch (a shard's outbox) becomes one frame
/// per record it holds, so no frame is larger than its largest record,
/// however many records a flush carries: a frame the reader would refuse
/// (over [`frame::PAYLOAD_LEN_MAX`]) is never written, and one record is
/// bounded far below that by the limits on a request (8,189 transfers of
/// at most about 1.5 KB each). A torn write of a batch so keeps a prefix of
/// its records, as a crash between two flushes would.
fn encode_frames(record: &Record) -> Result<Vec<u8>, StorageError> {
    let mut buffer = Vec::with_capacity(128);
    match record {
        Record::Batch(records) => {
            for record in records {
                encode_into_frames(record, &mut buffer)?;
            }
        }
        record => frame::encode_into(record, RECORD_FORMAT_VERSION, &mut buffer)?,
    }
    Ok(buffer)
}

fn encode_into_frames(record: &Record, buffer: &mut Vec<u8>) -> Result<(), StorageError> {
    match record {
        Record::Batch(records) => records.iter().try_for_each(|record| encode_into_frames(record, buffer)),
        record => frame::encode_into(record, RECORD_FORMAT_VERSION, buffer),
    }
}

fn open_segment(dir: &Path, index: u64) -> Result<(File, u64, Header), StorageError> {
    let path = segment_path(dir, index);
    let io = |e| StorageError::io(&path, e);
    let file =
        OpenOptions::new().create(true).truncate(false).read(true).write(true).open(&path).map_err(io)?;
    let mut size = file.metadata().map_err(io)?.len();
    let header = if size < HEADER_LEN {
        let header = Header::empty();
        file.set_len(0).map_err(io)?;
        file.write_all_at(&header.block(), 0).map_err(io)?;
        file.sync_all().map_err(io)?;
        size = HEADER_LEN;
        crate::faults::note_synced(&path, size);
        header
    } else {
        let mut block = vec![0u8; HEADER_LEN as usize];
        file.read_exact_at(&mut block, 0).map_err(io)?;
        Header::read(&block).ok_or(StorageError::Corrupt { path: path.clone(), offset: 0 })?
    };
    // The new file's name must be durable too, or a crash could lose the segment.
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StorageError::io(dir, e))?;
    Ok((file, size, header))
}

struct Writer {
    dir: PathBuf,
    options: JournalOptions,
    index: u64,
    file: File,
    size: u64,
    /// Where the synced bytes of the current segment end: every frame
    /// before it was acknowledged.
    acked_end: u64,
    /// What the segment's header says (durable once a sync covers it).
    header: Header,
    stats: Arc<JournalStats>,
    failed: Option<JournalError>,
}

/// How long the writer waits for more work before it records the
/// acknowledged end with a sync of its own (under load the next batch's
/// write carries it for free).
const IDLE_HEADER_MS: u64 = 10;

impl Writer {
    fn run(mut self, receiver: Receiver<Message>) {
        let (completions, completed) = mpsc::channel::<Completed>();
        let completer = std::thread::Builder::new().name("wallet-journal-done".into()).spawn(move || {
            for (result, callbacks) in completed {
                for on_durable in callbacks {
                    on_durable(result);
                }
            }
        });
        let completer = match completer {
            Ok(handle) => handle,
            Err(error) => {
                tracing::error!(%error, "cannot start the journal's completion thread");
                self.failed = Some(JournalError::Io { kind: error.kind() });
                std::thread::spawn(|| {})
            }
        };
        let mut buffer: Vec<u8> = Vec::with_capacity(1 << 20);
        let mut closing: Option<mpsc::Sender<()>> = None;
        let mut rotating: Option<mpsc::Sender<Result<u64, JournalError>>> = None;
        while closing.is_none() {
            let first = if self.header.acked_end != self.acked_end && self.failed.is_none() {
                match receiver.recv_timeout(std::time::Duration::from_millis(IDLE_HEADER_MS)) {
                    Ok(message) => message,
                    Err(mpsc::RecvTimeoutError::Timeout) => {
                        if let Err(error) = self.settle_header() {
                            tracing::error!(%error, "journal header write failed");
                            self.failed = Some(JournalError::Io { kind: error.kind() });
                        }
                        continue;
                    }
                    Err(mpsc::RecvTimeoutError::Disconnected) => break,
                }
            } else {
                let Ok(message) = receiver.recv() else { break };
                message
            };
            let mut callbacks: Vec<OnDurable> = Vec::with_capacity(1024);
            let mut frames = 0u64;
            let mut commits = false;
            let mut next = Some(first);
            while let Some(message) = next.take() {
                match message {
                    Message::Append(frame, on_durable, holds_commit) => {
                        commits |= holds_commit;
                        match frame {
                            Ok(frame) => buffer.extend_from_slice(&frame),
                            Err(error) => {
                                tracing::error!(%error, "cannot encode a journal record");
                                self.failed.get_or_insert(error);
                            }
                        }
                        callbacks.push(on_durable);
                        frames += 1;
                    }
                    // Callbacks run in order: this one after every earlier record's.
                    Message::WhenDurable(on_durable) => callbacks.push(on_durable),
                    Message::Close(done) => closing = Some(done),
                    Message::Rotate(reply) => rotating = Some(reply),
                }
                if closing.is_none() && rotating.is_none() && buffer.len() < self.options.batch_bytes_max {
                    next = receiver.try_recv().ok();
                }
            }
            let result = self.write_batch(&buffer, frames);
            if commits && result.is_ok() {
                // Only an abort makes sense here: the batch is durable.
                let _ = crate::faults::hit(crate::faults::points::COMMIT_DURABLE);
            }
            buffer.clear();
            if completions.send((result, callbacks)).is_err() {
                break;
            }
            if let Some(reply) = rotating.take() {
                let _ = reply.send(self.rotate());
            }
        }
        if self.failed.is_none() {
            if let Err(error) = self.settle_header() {
                tracing::error!(%error, "journal header write failed at close");
            }
        }
        drop(completions);
        let _ = completer.join();
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    fn rotate(&mut self) -> Result<u64, JournalError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        self.next_segment().map(|()| self.index).map_err(|error| {
            let failure = JournalError::Io { kind: error.kind() };
            self.failed = Some(failure);
            failure
        })
    }

    fn write_batch(&mut self, bytes: &[u8], records: u64) -> Result<(), JournalError> {
        if let Some(error) = self.failed {
            return Err(error);
        }
        if bytes.is_empty() {
            return Ok(());
        }
        let result = self.write_and_sync(bytes);
        match result {
            Ok(()) => {
                metrics::histogram!("wallet_journal_batch_records").record(records as f64);
                self.stats.records.fetch_add(records, Ordering::Relaxed);
                self.stats.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "journal write failed");
                let failure = JournalError::Io { kind: error.kind() };
                self.failed = Some(failure);
                Err(failure)
            }
        }
    }

    fn write_and_sync(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.size >= self.options.segment_bytes_max {
            self.next_segment()?;
        }
        // The end of the batch before goes in the header with this write:
        // the same sync makes both durable, and the header never claims
        // bytes that were not synced before it was written.
        self.record_acked()?;
        self.file.write_all_at(bytes, self.size)?;
        self.size += bytes.len() as u64;
        crate::faults::hit(crate::faults::points::JOURNAL_SYNC)?;
        self.sync()?;
        self.acked_end = self.size;
        Ok(())
    }

    fn sync(&mut self) -> std::io::Result<()> {
        if self.options.sync {
            let started = Instant::now();
            self.file.sync_data()?;
            let elapsed = started.elapsed();
            metrics::histogram!("wallet_journal_fsync_seconds").record(elapsed.as_secs_f64());
            self.stats.sync_micros.fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
            crate::faults::note_synced(&segment_path(&self.dir, self.index), self.size);
        }
        self.stats.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Writes the acknowledged end into the header if it moved (the next
    /// sync makes it durable).
    fn record_acked(&mut self) -> std::io::Result<()> {
        if self.header.acked_end != self.acked_end {
            let header = Header { generation: self.header.generation + 1, acked_end: self.acked_end };
            header.write_slot(&self.file)?;
            self.header = header;
        }
        Ok(())
    }

    /// Records the acknowledged end and makes it durable now (when idle,
    /// at close, and before leaving a segment).
    fn settle_header(&mut self) -> std::io::Result<()> {
        if self.header.acked_end == self.acked_end {
            return Ok(());
        }
        self.record_acked()?;
        self.sync()
    }

    /// Closes the current segment with its final acknowledged end and
    /// starts the next one.
    fn next_segment(&mut self) -> std::io::Result<()> {
        self.settle_header()?;
        let (file, size, header) = open_segment(&self.dir, self.index + 1).map_err(std::io::Error::other)?;
        self.index += 1;
        (self.file, self.size, self.header, self.acked_end) = (file, size, header, size);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(dir: &Path) -> Result<(Header, u64), StorageError> {
        let path = segment_path(dir, 0);
        let bytes = fs::read(&path).map_err(|e| StorageError::io(&path, e))?;
        let header = Header::read(&bytes).ok_or(StorageError::Corrupt { path, offset: 0 })?;
        Ok((header, bytes.len() as u64))
    }

    /// A shard's flush of many large records (here about 72 MiB in all,
    /// more than one frame may hold) is written as a frame per record and
    /// reads back whole.
    #[test]
    fn a_batch_larger_than_a_frame_reads_back_whole() -> Result<(), StorageError> {
        use wallet_actors::risk::{Decision, RuleAction, RuleKindCode};
        use wallet_actors::{AccountId, TransferId};
        let dir = tempfile::tempdir().map_err(|e| StorageError::io(Path::new("tmp"), e))?;
        let one = |n: u128| Decision {
            id: 0,
            at_ms: 1,
            transfer_id: TransferId::new(n).unwrap_or_else(|_| unreachable!()),
            account_id: AccountId::new(n).unwrap_or_else(|_| unreachable!()),
            rule_id: wallet_actors::ids::RuleId::new(1).unwrap_or_else(|_| unreachable!()),
            kind: RuleKindCode::MaxAmount,
            outcome: RuleAction::Reject,
        };
        let per_record = 300_000u128;
        let records: Vec<Record> = (0..6u128)
            .map(|r| {
                Record::Decisions((1..=per_record).map(|n| one(u128::MAX - r * per_record - n)).collect())
            })
            .collect();
        let batch = Record::Batch(records);
        let encoded = frame::encode(&batch, RECORD_FORMAT_VERSION).map(|b| b.len()).unwrap_or(usize::MAX);
        assert!(encoded > frame::PAYLOAD_LEN_MAX, "the batch must not fit one frame ({encoded} bytes)");
        let journal = FileJournal::start(dir.path(), JournalOptions::default())?;
        let (done, durable) = mpsc::channel();
        journal.append(
            Origin::Node,
            batch,
            Box::new(move |result| {
                let _ = done.send(result);
            }),
        );
        assert_eq!(durable.recv().ok(), Some(Ok(())));
        journal.close();
        let mut decisions = 0u128;
        let summary = read_journal(dir.path(), |record, _| {
            if let Record::Decisions(found) = record {
                decisions += found.len() as u128;
            }
            Ok(())
        })?;
        assert_eq!((summary.records, decisions), (6, 6 * per_record));
        Ok(())
    }

    /// The header never claims more than was synced, and catches up with
    /// what was acknowledged once the writer is idle, and at close.
    #[test]
    fn the_header_records_the_acknowledged_end() -> Result<(), StorageError> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::io(Path::new("tmp"), e))?;
        let journal = FileJournal::start(dir.path(), JournalOptions::default())?;
        assert_eq!(header(dir.path())?, (Header::empty(), HEADER_LEN));
        let (done, durable) = mpsc::channel();
        journal.append(
            Origin::Node,
            Record::Batch(Vec::new()),
            Box::new(move |result| {
                let _ = done.send(result);
            }),
        );
        assert_eq!(durable.recv().ok(), Some(Ok(())));
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let (header, len) = header(dir.path())?;
            assert!(header.acked_end <= len);
            if header.acked_end == len {
                break;
            }
            assert!(Instant::now() < deadline, "the idle writer never recorded the acknowledged end");
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        journal.close();
        let (header, len) = header(dir.path())?;
        assert_eq!(header.acked_end, len);
        Ok(())
    }
}
