//! Transfer ids: which are taken, by what, and how each transfer stands.
//!
//! Checked before any shard sees a request, so a replay costs one map look-up
//! and an id can never be applied twice, whatever accounts it names.

use std::sync::{Arc, Mutex, MutexGuard};

use crate::hash::HashMap;
use crate::ids::{stable_hash, TransferId};
use crate::transfer::{Transfer, TransferRequest, TransferStatus};

const STRIPES: usize = 64;

/// A stored transfer and its current status.
#[derive(Clone, Debug, PartialEq, Eq)]
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
}

/// The id registry: a striped map so that shards of work do not contend.
#[derive(Debug)]
pub struct TransferRegistry {
    stripes: Vec<Mutex<HashMap<TransferId, Entry>>>,
}

impl Default for TransferRegistry {
    fn default() -> Self {
        TransferRegistry { stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::default())).collect() }
    }
}

impl TransferRegistry {
    fn stripe(&self, id: TransferId) -> MutexGuard<'_, HashMap<TransferId, Entry>> {
        let index = (stable_hash(id.get()) % STRIPES as u64) as usize;
        // A panic while holding a stripe leaves plain data behind, still valid.
        self.stripes[index].lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Claims the request's id, or says why not.
    pub fn claim(&self, request: &Arc<TransferRequest>) -> Claim {
        let mut stripe = self.stripe(request.id());
        match stripe.get(&request.id()) {
            None => {
                stripe.insert(request.id(), Entry::InFlight);
                Claim::New
            }
            Some(Entry::InFlight) => Claim::InFlight,
            Some(Entry::Done(record)) if record.transfer.request == **request => {
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
        self.stripe(transfer.id).insert(transfer.id, Entry::Done(TransferRecord { transfer, status }));
    }

    /// Moves a pending transfer to its final status.
    pub fn resolve(&self, id: TransferId, status: TransferStatus) {
        if let Some(Entry::Done(record)) = self.stripe(id).get_mut(&id) {
            record.status = status;
        }
    }

    /// A durable transfer by id.
    pub fn get(&self, id: TransferId) -> Option<TransferRecord> {
        match self.stripe(id).get(&id) {
            Some(Entry::Done(record)) => Some(record.clone()),
            _ => None,
        }
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
