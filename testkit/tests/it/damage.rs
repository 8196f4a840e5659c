//! Damaged files: a torn tail is cut cleanly; damage anywhere else is a
//! clear error, never wrong balances.

use std::sync::Arc;

use wallet_actors::ports::ManualClock;
use wallet_storage::StorageError;
use wallet_testkit::*;

async fn write_some(dir: &std::path::Path, transfers: u128) -> anyhow::Result<()> {
    let node = open(dir, test_options(4, Arc::new(ManualClock::new(1)))).await?;
    node.ledger.open_account(unlimited(1, usd())).await?;
    node.ledger.open_account(wallet(2, usd())).await?;
    for id in 1..=transfers {
        node.ledger.submit_one(posted(id, 1, 2, 10)).await??;
    }
    // No final checkpoint: everything stays in the journal.
    node.stop_without_checkpoint().await;
    Ok(())
}

fn segment(dir: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let mut segments: Vec<_> = std::fs::read_dir(dir.join("journal"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segments.sort();
    segments.pop().ok_or_else(|| anyhow::anyhow!("no segment"))
}

async fn balance_of_2(dir: &std::path::Path) -> Result<u128, StorageError> {
    let node =
        wallet_storage::EmbeddedLedger::open(dir, test_options(4, Arc::new(ManualClock::new(1)))).await?;
    let view = node.ledger.account(account(2)).await?;
    node.shutdown().await;
    Ok(view.map_or(0, |v| v.account.balances.credits_posted))
}

/// Where each frame of the journal starts, in order (one segment here).
fn frame_starts(dir: &std::path::Path) -> anyhow::Result<Vec<usize>> {
    let mut starts = Vec::new();
    wallet_storage::journal::read_journal(&dir.join("journal"), |_, at| {
        starts.push(at.offset as usize);
        Ok(())
    })?;
    Ok(starts)
}

/// Offset where frames start in a segment (after its header).
const HEADER_LEN: usize = wallet_storage::segment::HEADER_LEN as usize;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_tail_is_cut_at_the_last_whole_record() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_some(dir.path(), 20).await?;
    let path = segment(dir.path())?;
    let original = std::fs::read(&path)?;
    // A torn write is what a crash leaves of a batch that was never
    // acknowledged: part of a frame after the acknowledged end. Every such
    // tail is cut, and the acknowledged transfers all stay.
    // The first bytes of a real frame: the longest one (a transfer's).
    let mut bounds = frame_starts(dir.path())?;
    bounds.push(original.len());
    let frame = bounds.windows(2).map(|w| &original[w[0]..w[1]]).max_by_key(|f| f.len()).unwrap_or_default();
    anyhow::ensure!(frame.len() > 40, "the longest frame is {} bytes", frame.len());
    for kept in [1usize, 5, 17, 40] {
        let copy = tempfile::tempdir()?;
        copy_dir(dir.path(), copy.path())?;
        let mut bytes = original.clone();
        bytes.extend_from_slice(&frame[..kept]);
        std::fs::write(segment(copy.path())?, bytes)?;
        assert_eq!(balance_of_2(copy.path()).await?, 200, "torn tail of {kept} bytes");
        // And the ledger keeps working after the cut.
        let node = open(copy.path(), test_options(4, Arc::new(ManualClock::new(1)))).await?;
        node.ledger.submit_one(posted(1_000, 1, 2, 5)).await??;
        node.shutdown().await;
    }
    // Zeros after the last record (a preallocated or half-written block) are cut too.
    let mut bytes = original.clone();
    bytes.extend([0u8; 512]);
    std::fs::write(&path, bytes)?;
    assert_eq!(balance_of_2(dir.path()).await?, 200);
    Ok(())
}

/// The last frame was acknowledged: cutting or damaging it is the loss of an
/// acknowledged transfer, an error naming the place, never a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_acknowledged_last_frame_is_an_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_some(dir.path(), 20).await?;
    let path = segment(dir.path())?;
    let original = std::fs::read(&path)?;
    let frame_starts = frame_starts(dir.path())?;
    let last_frame_starts = frame_starts.last().copied().unwrap_or_default();
    for cut in [1usize, 5, 17, 40] {
        std::fs::write(&path, &original[..original.len() - cut])?;
        // The frame the cut falls in is the one reported.
        let cut_frame = frame_starts.iter().rev().find(|&&start| start < original.len() - cut).copied();
        match balance_of_2(dir.path()).await {
            Err(StorageError::Corrupt { offset, .. }) => {
                assert!(Some(offset as usize) >= cut_frame, "cut of {cut}")
            }
            other => panic!("cut of {cut} bytes: expected a corruption error, got {other:?}"),
        }
    }
    for position in (last_frame_starts..original.len()).step_by(3) {
        let mut bytes = original.clone();
        bytes[position] ^= 0x55;
        std::fs::write(&path, &bytes)?;
        match balance_of_2(dir.path()).await {
            Err(StorageError::Corrupt { .. } | StorageError::Decode { .. }) => {}
            other => panic!("flip at {position}: expected a corruption error, got {other:?}"),
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damage_before_the_tail_is_an_error() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    write_some(dir.path(), 20).await?;
    let path = segment(dir.path())?;
    let original = std::fs::read(&path)?;
    // Flip bytes all over the frames: payloads, checksums and length fields alike.
    for position in (HEADER_LEN..original.len()).step_by(7) {
        let mut bytes = original.clone();
        bytes[position] ^= 0x55;
        std::fs::write(&path, &bytes)?;
        match balance_of_2(dir.path()).await {
            Err(StorageError::Corrupt { offset, .. }) => assert!(offset as usize <= position),
            Err(StorageError::Decode { .. }) | Err(StorageError::UnsupportedVersion { .. }) => {}
            other => panic!("flip at {position}: expected a corruption error, got {other:?}"),
        }
    }
    // The header keeps two slots: damage to one leaves the other, and the
    // journal reads whole; damage to both is an error.
    for slots in [vec![0usize], vec![2048], vec![0, 2048]] {
        // On a copy: a start that succeeds takes a checkpoint, after which
        // this segment is no longer read.
        let copy = tempfile::tempdir()?;
        copy_dir(dir.path(), copy.path())?;
        let mut bytes = original.clone();
        for at in &slots {
            for byte in &mut bytes[at + 8..at + 16] {
                *byte ^= 0x55;
            }
        }
        std::fs::write(segment(copy.path())?, &bytes)?;
        let read = balance_of_2(copy.path()).await;
        match slots.len() {
            1 => assert_eq!(read?, 200, "slot {slots:?} damaged"),
            _ => assert!(matches!(read, Err(StorageError::Corrupt { offset: 0, .. })), "{read:?}"),
        }
    }
    Ok(())
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&target)?;
            copy_dir(&entry.path(), &target)?;
        } else if entry.file_name() != "LOCK" {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_transfer_index_never_lets_an_id_apply_twice() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = open(dir.path(), test_options(4, Arc::new(ManualClock::new(1)))).await?;
    node.ledger.open_account(unlimited(1, usd())).await?;
    node.ledger.open_account(wallet(2, usd())).await?;
    for id in 1..=40 {
        node.ledger.submit_one(posted(id, 1, 2, 10)).await??;
    }
    // The checkpoint moves the transfers out of the journal into an index run.
    node.checkpoint().await?;
    node.shutdown().await;
    let run = std::fs::read_dir(dir.path().join("index"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "run"))
        .ok_or_else(|| anyhow::anyhow!("no index run"))?;
    let original = std::fs::read(&run)?;
    for position in (0..original.len()).step_by(11) {
        let mut bytes = original.clone();
        bytes[position] ^= 0x55;
        std::fs::write(&run, &bytes)?;
        let options = test_options(4, Arc::new(ManualClock::new(1)));
        let node = match wallet_storage::EmbeddedLedger::open(dir.path(), options).await {
            // Damage in the footer stops the open.
            Err(StorageError::Corrupt { .. }) | Err(StorageError::Decode { .. }) => continue,
            Err(other) => panic!("flip at {position}: {other}"),
            Ok(node) => node,
        };
        // Damage in a block: each id is either recognised or refused, never
        // applied again.
        for id in 1..=40 {
            match node.ledger.submit_one(posted(id, 1, 2, 10)).await {
                Ok(Ok(outcome)) => assert!(outcome.replayed, "flip at {position}: id {id} applied twice"),
                Err(wallet_actors::LedgerError::Unavailable) => {}
                other => panic!("flip at {position}: id {id}: {other:?}"),
            }
        }
        let balance = node.ledger.account(account(2)).await?.map(|v| v.account.balances.credits_posted);
        assert_eq!(balance, Some(400), "flip at {position}");
        node.stop_without_checkpoint().await;
    }
    Ok(())
}

/// Whether an error opening a damaged data directory is the clear refusal
/// damage must give: corruption found, a record that does not decode or
/// replay, or an I/O error reading the damaged store; not some unrelated
/// failure (the directory locked, the wrong settings) passing for one.
fn refuses_damage(error: &StorageError) -> bool {
    match error {
        StorageError::Corrupt { .. }
        | StorageError::Decode { .. }
        | StorageError::UnsupportedVersion { .. }
        | StorageError::Replay { .. }
        | StorageError::JournalGap { .. }
        | StorageError::Completion(_) => true,
        StorageError::Io { path, .. } => {
            path.starts_with("snapshot") || path.components().any(|c| c.as_os_str() == "history")
        }
        _ => false,
    }
}

/// What a reopened ledger says about accounts 1 to 5 and their history:
/// `Ok(None)` when it refuses to answer with a clear error (see
/// [`refuses_damage`]; a read that fails is `unavailable`), never a guess.
async fn books_after_damage(dir: &std::path::Path) -> anyhow::Result<Option<Vec<(u128, i128, Vec<u64>)>>> {
    let options = test_options(4, Arc::new(ManualClock::new(1)));
    let node = match wallet_storage::EmbeddedLedger::open(dir, options).await {
        Ok(node) => node,
        Err(error) if refuses_damage(&error) => return Ok(None),
        Err(error) => anyhow::bail!("not a refusal of damage: {error}"),
    };
    let mut books = Vec::new();
    for id in 1..=5 {
        let read = match node.ledger.account(account(id)).await {
            Ok(view) => node.ledger.history(account(id), 0, 1000).await.map(|history| (view, history)),
            Err(error) => Err(error),
        };
        let (view, history) = match read {
            Ok((view, entries)) => (view, entries.iter().map(|e| e.sequence).collect()),
            Err(wallet_actors::LedgerError::Unavailable) => {
                node.stop_without_checkpoint().await;
                return Ok(None);
            }
            Err(other) => anyhow::bail!("not a refusal of damage: {other}"),
        };
        books.push((id, view.map_or(0, |v| v.account.balances.posted()), history));
    }
    node.stop_without_checkpoint().await;
    Ok(Some(books))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_snapshot_and_history_files_give_an_error_or_the_true_books() -> anyhow::Result<()> {
    let pristine = tempfile::tempdir()?;
    let node = open(pristine.path(), test_options(4, Arc::new(ManualClock::new(1)))).await?;
    node.ledger.open_account(unlimited(1, usd())).await?;
    for id in 2..=5 {
        node.ledger.open_account(wallet(id, usd())).await?;
    }
    for id in 1..=60u128 {
        let (debit, credit) = if id <= 20 { (1, 2 + id % 4) } else { (2 + id % 4, 2 + (id + 1) % 4) };
        node.ledger.submit_one(posted(id, debit, credit, 7)).await??;
    }
    // Everything moves to the snapshot, the index and the history runs.
    node.shutdown().await;
    // The truth from an undamaged copy: opening a directory changes it, and
    // every damaged copy below starts from the same untouched files.
    let undamaged = tempfile::tempdir()?;
    copy_dir(pristine.path(), undamaged.path())?;
    let truth = books_after_damage(undamaged.path()).await?.ok_or_else(|| anyhow::anyhow!("no books"))?;
    anyhow::ensure!(truth.iter().map(|(_, posted, _)| posted).sum::<i128>() == 0);

    let mut targets = Vec::new();
    for folder in ["snapshot", "history"] {
        for entry in std::fs::read_dir(pristine.path().join(folder))? {
            let path = entry?.path();
            if path.is_file() && std::fs::metadata(&path)?.len() > 0 {
                targets.push(path.strip_prefix(pristine.path())?.to_path_buf());
            }
        }
    }
    anyhow::ensure!(targets.len() >= 2, "found {targets:?}");
    let (mut refused, mut whole) = (0, 0);
    for target in &targets {
        let length = std::fs::metadata(pristine.path().join(target))?.len() as usize;
        // Flips spread over the file, and cuts at a few lengths.
        let step = (length / 40).max(1);
        let flips = (0..length).step_by(step).map(|position| (position, true));
        let cuts = [length / 3, length / 2, length - 1].into_iter().map(|keep| (keep, false));
        for (place, flip) in flips.chain(cuts) {
            let work = tempfile::tempdir()?;
            copy_dir(pristine.path(), work.path())?;
            let path = work.path().join(target);
            let mut bytes = std::fs::read(&path)?;
            if flip {
                bytes[place] ^= 0x5a;
            } else {
                bytes.truncate(place);
            }
            std::fs::write(&path, &bytes)?;
            match books_after_damage(work.path()).await? {
                None => refused += 1,
                Some(books) => {
                    anyhow::ensure!(books == truth, "{}: wrong books {books:?}", target.display());
                    whole += 1;
                }
            }
        }
    }
    // Some damage hits bytes nothing reads (free space, padding): those
    // open whole; the rest is refused. Neither may ever be wrong.
    anyhow::ensure!(refused > 0, "no damage was noticed ({whole} whole)");
    Ok(())
}
