//! Transfer ids: which are taken, by what, and how each transfer stands.
//!
//! Checked before any shard sees a request, so a replay costs one map look-up
//! and an id can never be applied twice, whatever accounts it names.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::hash::HashMap;
use crate::ids::{stable_hash, TransferId};
use crate::ports::{ReadError, TransferIndex};
use crate::transfer::{Transfer, TransferRequest, TransferStatus};

const STRIPES: usize = 64;

/// A stored transfer and its current status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransferRecord {
    /// The transfer.
    pub transfer: Arc<Transfer>,
    /// Its status now (pending transfers move on).
    pub status: TransferStatus,
}

#[derive(Debug)]
enum Entry {
    InFlight,
    Done(TransferRecord),
}

/// What [`TransferRegistry::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The id is new and now claimed by this request.
    New,
    /// The id was applied by this very request: its first outcome.
    Replay(TransferRecord),
    /// The id was applied with different fields.
    Conflict,
    /// The id is being applied by another request right now.
    InFlight,
    /// Storage could not say whether the id was used.
    Unavailable,
}

/// The index after shutdown: it knows nothing, so it refuses every look-up.
struct Detached;

impl TransferIndex for Detached {
    fn get(&self, _id: TransferId) -> Result<Option<TransferRecord>, ReadError> {
        Err(ReadError)
    }
}

/// The id registry: a striped map so that shards of work do not contend,
/// in front of the storage's [`TransferIndex`].
pub struct TransferRegistry {
    stripes: Vec<Mutex<HashMap<TransferId, Entry>>>,
    index: std::sync::RwLock<Option<Arc<dyn TransferIndex>>>,
    /// Transfers recorded and not yet evicted (approximate: for admission).
    recorded: std::sync::atomic::AtomicUsize,
}

impl std::fmt::Debug for TransferRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TransferRegistry").field("in_memory", &self.len()).finish()
    }
}

impl Default for TransferRegistry {
    fn default() -> Self {
        TransferRegistry {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::default())).collect(),
            index: std::sync::RwLock::new(None),
            recorded: Default::default(),
        }
    }
}

impl TransferRegistry {
    fn stripe(&self, id: TransferId) -> MutexGuard<'_, HashMap<TransferId, Entry>> {
        let index = (stable_hash(id.get()) % STRIPES as u64) as usize;
        // A panic while holding a stripe leaves plain data behind, still valid.
        self.stripes[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets where older transfers are looked up.
    pub(crate) fn set_index(&self, index: Arc<dyn TransferIndex>) {
        if let Ok(mut slot) = self.index.write() {
            *slot = Some(index);
        }
    }

    /// Lets go of the index (at shutdown, so storage can close). From then
    /// on nothing may be claimed.
    pub(crate) fn detach_index(&self) {
        if let Ok(mut slot) = self.index.write() {
            *slot = Some(Arc::new(Detached));
        }
    }

    fn lookup_index(&self, id: TransferId) -> Result<Option<TransferRecord>, ReadError> {
        let index = self.index.read().map_err(|_| ReadError)?.clone();
        match index {
            Some(index) => index.get(id),
            None => Ok(None),
        }
    }

    /// Claims the request's id, or says why not.
    pub fn claim(&self, request: &Arc<TransferRequest>) -> Claim {
        let mut stripe = self.stripe(request.id());
        if let std::collections::hash_map::Entry::Vacant(slot) = stripe.entry(request.id()) {
            match self.lookup_index(request.id()) {
                Ok(Some(record)) => {
                    slot.insert(Entry::Done(record));
                }
                Ok(None) => {}
                Err(_) => return Claim::Unavailable,
            }
        }
        match stripe.get(&request.id()) {
            None => {
                stripe.insert(request.id(), Entry::InFlight);
                Claim::New
            }
            Some(Entry::InFlight) => Claim::InFlight,
            Some(Entry::Done(record)) if *record.transfer.request == **request => {
                Claim::Replay(record.clone())
            }
            Some(Entry::Done(_)) => Claim::Conflict,
        }
    }

    /// Frees a claim whose request was rejected: a rejected id may be reused.
    pub fn release(&self, id: TransferId) {
        let mut stripe = self.stripe(id);
        if matches!(stripe.get(&id), Some(Entry::InFlight)) {
            stripe.remove(&id);
        }
    }

    /// Records a durable transfer.
    pub fn complete(&self, transfer: Arc<Transfer>) {
        let status = transfer.initial_status();
        let previous =
            self.stripe(transfer.id).insert(transfer.id, Entry::Done(TransferRecord { transfer, status }));
        if !matches!(previous, Some(Entry::Done(_))) {
            self.recorded.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Records what durable records hold: new transfers, then resolutions.
    pub fn record_durable<'a>(
        &self,
        transfers: impl IntoIterator<Item = &'a Arc<Transfer>>,
        resolutions: impl IntoIterator<Item = &'a crate::record::Resolution>,
    ) {
        for transfer in transfers {
            self.complete(transfer.clone());
        }
        for resolution in resolutions {
            self.resolve(resolution.pending_id, resolution.status);
        }
    }

    /// Moves a pending transfer to its final status.
    pub fn resolve(&self, id: TransferId, status: TransferStatus) {
        let mut stripe = self.stripe(id);
        if let Some(Entry::Done(record)) = stripe.get_mut(&id) {
            record.status = status;
        } else if let Ok(Some(mut record)) = self.lookup_index(id) {
            record.status = status;
            stripe.insert(id, Entry::Done(record));
        }
    }

    /// A durable transfer by id.
    pub fn get(&self, id: TransferId) -> Option<TransferRecord> {
        match self.stripe(id).get(&id) {
            Some(Entry::Done(record)) => Some(record.clone()),
            Some(Entry::InFlight) => None,
            None => self.lookup_index(id).ok().flatten(),
        }
    }

    /// Forgets transfers that storage now holds (after a snapshot), unless
    /// they changed since: memory stays bounded by what happened lately.
    pub fn evict(&self, persisted: &[TransferRecord]) {
        let mut evicted = 0;
        for record in persisted {
            let id = record.transfer.id;
            let mut stripe = self.stripe(id);
            if matches!(stripe.get(&id), Some(Entry::Done(current)) if current.status == record.status) {
                stripe.remove(&id);
                evicted += 1;
            }
        }
        let _ = self.recorded.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| Some(n.saturating_sub(evicted)),
        );
    }

    /// Transfers recorded since they were last moved to storage (about):
    /// what a snapshot has yet to take out of memory.
    pub fn recorded(&self) -> usize {
        self.recorded.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Number of ids known.
    pub fn len(&self) -> usize {
        self.stripes.iter().map(|s| s.lock().map(|m| m.len()).unwrap_or(0)).sum()
    }

    /// Whether no id is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TransferRegistry {
    /// Every durable transfer with its status (tests and audits; takes each
    /// stripe's lock in turn).
    pub fn snapshot(&self) -> Vec<TransferRecord> {
        let mut all = Vec::new();
        for stripe in &self.stripes {
            let stripe = stripe.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            all.extend(stripe.values().filter_map(|entry| match entry {
                Entry::Done(record) => Some(record.clone()),
                Entry::InFlight => None,
            }));
        }
        all
    }
}
