//! Generations of shards: starting one on recovered state, stopping it,
//! noticing that it failed, and replacing it by one rebuilt from durable
//! state (`docs/ARCHITECTURE.md`, "Supervision").

use super::*;

/// Starts one generation of shards on recovered state, supervised.
pub(super) async fn spawn_generation(
    recovered: Recovered,
    completions: Vec<Record>,
    cell: &Base,
) -> Result<Inner, LedgerError> {
    let ports = cell.ports();
    let router = Arc::new(LocalRouter::default());
    let gate = Arc::new(JournalGate::new(ports.journal));
    let decisions = DecisionLog::new(recovered.next_decision_id, recovered.decisions);
    decisions.set_index(ports.stored.decisions);
    let mut shared = Shared::new(
        router.clone(),
        gate.clone(),
        recovered.registry,
        decisions,
        ports.clock,
        cell.failed.clone(),
    );
    shared.events = ports.events;
    shared.history = std::sync::RwLock::new(ports.stored.history);
    let shared = Arc::new(shared);
    let timeout = Duration::from_millis(cell.config.request_timeout_ms);
    // The epoch first: once it is durable no later start takes it, so no
    // commit id this generation gives is ever given again.
    let epoch = Record::Epoch(recovered.epoch);
    for record in std::iter::once(epoch).chain(completions) {
        let origin = match &record {
            Record::CommitApplied { shard_id, .. } => Origin::Shard(*shard_id),
            _ => Origin::Node,
        };
        append_durable(shared.journal.as_ref(), origin, record)
            .await
            .map_err(|_| LedgerError::Unavailable)?;
    }
    let shard_ids: Arc<std::sync::Mutex<Vec<ractor::ActorId>>> = Default::default();
    let (supervisor, _) = Actor::spawn(None, ShardSupervisor, (shared.clone(), shard_ids.clone()))
        .await
        .map_err(|_| LedgerError::Unavailable)?;
    let mut shards = Vec::with_capacity(recovered.shards.len());
    for state in recovered.shards {
        let args = ShardArgs { state, shared: shared.clone() };
        match Actor::spawn_linked(None, ShardActor, args, supervisor.get_cell()).await {
            Ok((actor, _)) => {
                if let Ok(mut ids) = shard_ids.lock() {
                    ids.push(actor.get_id());
                }
                shards.push(actor);
            }
            Err(error) => {
                tracing::error!(%error, "a shard did not start");
                stop_shards(&shared, &shards, &supervisor, timeout).await;
                return Err(LedgerError::Unavailable);
            }
        }
    }
    router.set(shards.clone());
    let rules = cell.rules.read().map(|r| r.clone()).unwrap_or_default();
    for shard in &shards {
        let rules = rules.clone();
        if let Err(error) = ask_shard(shard, timeout, |port| ShardMsg::SetRules(rules, port)).await {
            stop_shards(&shared, &shards, &supervisor, timeout).await;
            return Err(error);
        }
    }
    Ok(Inner {
        shards,
        supervisor,
        gate,
        shared,
        timeout,
        commit_ids: crate::ids::CommitIds::new(recovered.epoch),
        config: cell.config.clone(),
        account_source: std::sync::RwLock::new(recovered.account_source),
    })
}

/// Sends `message` to `shard` and waits up to `timeout` for its answer.
pub(super) async fn ask_shard<T: Send + 'static>(
    shard: &ActorRef<ShardMsg>,
    timeout: Duration,
    message: impl FnOnce(ractor::RpcReplyPort<T>) -> ShardMsg,
) -> Result<T, LedgerError> {
    let (tx, rx) = oneshot::channel();
    shard.cast(message(tx.into())).map_err(|_| LedgerError::Unavailable)?;
    match tokio::time::timeout(timeout, rx).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(_)) => Err(LedgerError::Unavailable),
        Err(_) => Err(LedgerError::Timeout),
    }
}

impl Inner {
    /// Lets go of storage's indexes and account source. (Not of its
    /// registry's index: work still finishing on a replaced generation may
    /// look transfers up there, and the index is the same storage the new
    /// generation reads; only the shutdown detaches it.)
    fn detach_storage(&self) {
        if let Ok(mut slot) = self.shared.history.write() {
            *slot = None;
        }
        if let Ok(mut slot) = self.account_source.write() {
            *slot = None;
        }
        self.shared.decisions.set_index(None);
    }

    /// Refuses work once this generation failed.
    pub(super) fn check_serving(&self) -> Result<(), LedgerError> {
        if self.shared.poisoned.load(Ordering::SeqCst) {
            Err(LedgerError::Unavailable)
        } else {
            Ok(())
        }
    }
}

/// Stops a generation's shards on purpose and waits (up to `timeout` each)
/// until they have.
async fn stop_shards(
    shared: &Shared,
    shards: &[ActorRef<ShardMsg>],
    supervisor: &ActorRef<SupervisorMsg>,
    timeout: Duration,
) {
    shared.stopping.store(true, Ordering::SeqCst);
    for shard in shards {
        shard.stop(None);
    }
    for shard in shards {
        let deadline = tokio::time::Instant::now() + timeout;
        while shard.get_status() != ractor::ActorStatus::Stopped && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // A stopped shard hands its state to its supervisor; waiting for the
    // supervisor drops it, so storage the shards held can close.
    let _ = supervisor.stop_and_wait(None, Some(timeout)).await;
    // Messages the stopped shards never handled name answers that will
    // never come.
    shared.router.close_replies();
}

impl Ledger {
    /// Stops the shard actors. Records already appended still become durable.
    pub async fn shutdown(&self) {
        self.cell.stopped.store(true, Ordering::SeqCst);
        let inner = self.inner();
        stop_shards(&inner.shared, &inner.shards, &inner.supervisor, inner.timeout).await;
    }

    /// Waits until the current generation of shards fails, and says why.
    /// The owner of the storage then rebuilds them: [`Ledger::halt`], make
    /// the journal's queue durable, recover from storage, [`Ledger::restart`].
    pub async fn failed(&self) -> Failure {
        loop {
            let notified = self.cell.base.failed.notified();
            if let Some(failure) = self.inner().shared.failure.get() {
                return *failure;
            }
            notified.await;
        }
    }

    /// Stops the current generation of shards for a rebuild: it refuses
    /// work, its shards stop, and once this returns nothing it still has in
    /// flight can reach the journal. Its callers whose outcome was not yet
    /// durable get `unavailable` (retrying with the same id is safe).
    pub async fn halt(&self) {
        let inner = self.inner();
        inner.shared.poisoned.store(true, Ordering::SeqCst);
        inner.gate.close();
        stop_shards(&inner.shared, &inner.shards, &inner.supervisor, inner.timeout).await;
    }

    /// Replaces the halted shards by new ones started on `recovered` (state
    /// read back from storage after [`Ledger::halt`]), on the same ports and
    /// rules. Every clone of this ledger serves from the new shards once
    /// this returns.
    pub async fn restart(&self, recovered: Recovered, completions: Vec<Record>) -> Result<(), LedgerError> {
        let _rules = self.cell.base.rules_change.lock().await;
        // Stopped (storage may be closing): a rebuild would take it back.
        if self.cell.stopped.load(Ordering::SeqCst) {
            return Err(LedgerError::Unavailable);
        }
        let old = self.inner();
        let inner = spawn_generation(recovered, completions, &self.cell.base).await?;
        self.cell.current.store(Arc::new(inner));
        // The old generation lets go of storage, which must be able to close.
        old.detach_storage();
        self.cell.rebuilds.fetch_add(1, Ordering::SeqCst);
        metrics::counter!("wallet_shard_rebuilds_total").increment(1);
        Ok(())
    }

    /// How many times the shards were rebuilt since the ledger started.
    pub fn rebuilds(&self) -> u64 {
        self.cell.rebuilds.load(Ordering::SeqCst)
    }

    /// Why the current shards failed, if they did and are not rebuilt yet.
    pub fn failure(&self) -> Option<Failure> {
        self.cell.current.load().shared.failure.get().copied()
    }

    /// Whether the process must restart to serve again: a journal write
    /// failed, and whether its records are durable only the files can say
    /// (an fsync that failed may have lost pages the page cache still
    /// shows), so no rebuild in the process is trusted. A record refused
    /// for a shard lease this node does not hold is not such a failure:
    /// nothing was written, and the rebuild takes the lease back.
    pub fn needs_restart(&self) -> bool {
        matches!(self.failure(), Some(Failure::Journal(error)) if error != crate::ports::JournalError::NotHeld)
    }

    /// Whether the shards serve (false between a failure and its rebuild).
    pub fn is_serving(&self) -> bool {
        self.check_poisoned().is_ok() && !self.cell.stopped.load(Ordering::Relaxed)
    }

    /// Panics a shard, as a broken invariant would (crash tests).
    #[cfg(feature = "fault-injection")]
    pub fn crash_shard(&self, shard: crate::ids::ShardId) {
        if let Some(actor) = self.inner().shards.get(shard.0 as usize) {
            let _ = actor.cast(ShardMsg::Crash);
        }
    }

    /// Lets go of every stored part of its ports (at shutdown, after the
    /// shards stopped), so storage can close. From then on no transfer id
    /// can be claimed and no older history, decision or account read.
    pub fn detach_storage(&self) {
        let mut ports = self.cell.base.ports.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        ports.stored = Stored::default();
        drop(ports);
        let inner = self.inner();
        inner.shared.registry.detach_index();
        inner.detach_storage();
    }
}
