//! Risk rules on the API's side. The ledger checks them, with the debit, but
//! does not keep them: they are configuration, kept in the user store
//! (`risk_rules`, see [`wallet_storage::users`]) and handed to the ledger whole
//! ([`wallet_actors::Ledger::set_rules`]) at start, before serving, and after
//! every change. A change is durable before the ledger sees it, and in force
//! before it is answered.
//!
//! Default rules come from the configuration file (`[[risk_rules]]`): at
//! start, each one whose name no stored rule has is created. So an operator
//! starts with rules in place, and later edits through the API persist. A
//! configured rule deleted through the API is created again at the next
//! start unless it leaves the file too: the file says what should exist.

use std::collections::HashSet;

use uuid::Uuid;
use wallet_actors::risk::{Rule, RuleId};
use wallet_storage::users::{StoredRule, StoredRuleBody};

use crate::domain::now_ms;
use crate::error::ApiError;
use crate::state::AppState;
use crate::wire::risk::RuleBody;

/// Most rules at once: every debit is checked against each of them.
pub const RULES_MAX: usize = 256;

/// A stored rule, parsed.
#[derive(Clone, Debug)]
pub struct RuleEntry {
    /// The rule as the ledger checks it.
    pub rule: Rule,
    /// When it was created (ms since the Unix epoch).
    pub created_at_ms: u64,
}

/// Why the rules could not be put in place at start.
#[derive(Debug, thiserror::Error)]
pub enum RuleStartError {
    /// A stored or configured rule does not parse or is out of range.
    #[error("risk rule {rule:?}: {source}")]
    Invalid {
        /// The stored rule's id, or the configured rule's name.
        rule: String,
        /// What is wrong with it.
        source: ApiError,
    },
    /// Two configured rules have the same name, so they cannot be told apart.
    #[error("risk_rules: two configured rules are named {name:?}")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// The store or the ledger failed, or there would be too many rules.
    #[error("risk rules: {0}")]
    Failed(ApiError),
}

impl From<ApiError> for RuleStartError {
    fn from(error: ApiError) -> Self {
        RuleStartError::Failed(error)
    }
}

fn rule_id(id: Uuid) -> Result<RuleId, ApiError> {
    RuleId::new(id.as_u128()).map_err(|_| ApiError::InvalidId { field: "id" })
}

fn parse(stored: StoredRule) -> Result<RuleEntry, ApiError> {
    let rule = RuleBody::from(stored.rule).into_rule(rule_id(stored.id)?)?;
    Ok(RuleEntry { rule, created_at_ms: stored.created_at_ms })
}

/// Every stored rule, oldest first. Each parsed at start already, so one
/// that no longer parses is a fault here, not the client's.
pub fn all(state: &AppState) -> Result<Vec<RuleEntry>, ApiError> {
    let mut entries = Vec::new();
    for stored in state.users.rules()? {
        let id = stored.id;
        entries.push(parse(stored).map_err(|error| {
            tracing::error!(rule = %id, %error, "a stored risk rule does not parse");
            ApiError::Internal
        })?);
    }
    entries.sort_by_key(|entry| (entry.created_at_ms, entry.rule.id));
    Ok(entries)
}

fn not_found() -> ApiError {
    ApiError::NotFound { code: "rule_not_found", what: "rule" }
}

/// One stored rule.
pub fn get(state: &AppState, id: Uuid) -> Result<RuleEntry, ApiError> {
    let stored = state.users.rule(id)?.ok_or_else(not_found)?;
    parse(stored).map_err(|error| {
        tracing::error!(rule = %id, %error, "a stored risk rule does not parse");
        ApiError::Internal
    })
}

/// Hands every stored rule to the ledger. Callers hold `rule_changes`.
async fn install(state: &AppState) -> Result<(), ApiError> {
    let rules = all(state)?.into_iter().map(|entry| entry.rule).collect();
    state.ledger.set_rules(rules).await?;
    Ok(())
}

/// Stores a new rule with a fresh id. Callers hold `rule_changes`.
async fn insert(state: &AppState, body: RuleBody) -> Result<RuleEntry, ApiError> {
    let id = Uuid::new_v4();
    let rule = body.clone().into_rule(rule_id(id)?)?;
    if state.users.rule_count() >= RULES_MAX {
        return Err(ApiError::Conflict {
            code: "too_many_rules",
            detail: "the most risk rules allowed exist already; delete one first",
        });
    }
    let stored = StoredRule { id, created_at_ms: now_ms(), rule: body.into() };
    state.users.put_rule(&stored).await?;
    Ok(RuleEntry { rule, created_at_ms: stored.created_at_ms })
}

/// Creates a rule; durable and in force when this returns.
pub async fn create(state: &AppState, body: RuleBody) -> Result<RuleEntry, ApiError> {
    let _changing = state.rule_changes.lock().await;
    let entry = insert(state, body).await?;
    install(state).await?;
    Ok(entry)
}

/// Replaces a rule whole, keeping its id and creation time.
pub async fn replace(state: &AppState, id: Uuid, body: RuleBody) -> Result<RuleEntry, ApiError> {
    let rule = body.clone().into_rule(rule_id(id).map_err(|_| not_found())?)?;
    let _changing = state.rule_changes.lock().await;
    let body = StoredRuleBody::from(body);
    let stored = state
        .users
        .replace_rule(id, |old| StoredRule { id, created_at_ms: old.created_at_ms, rule: body.clone() })
        .await?
        .ok_or_else(not_found)?;
    install(state).await?;
    Ok(RuleEntry { rule, created_at_ms: stored.created_at_ms })
}

/// Removes a rule; out of force when this returns.
pub async fn remove(state: &AppState, id: Uuid) -> Result<(), ApiError> {
    let _changing = state.rule_changes.lock().await;
    if !state.users.remove_rule(id).await? {
        return Err(not_found());
    }
    install(state).await
}

/// In cluster mode, hands the rules to this node's ledger again whenever
/// they change, on any node (a rule made through another node is in force
/// here a few milliseconds later); stops when the node stops.
pub fn follow_shared_rules(state: &AppState) {
    let Some(mut changes) = state.users.rule_changes() else { return };
    // A change the copy took between `start`'s read and this subscription
    // has not moved the counter for it: install once more at once.
    changes.mark_changed();
    let state = state.clone();
    let mut stopping = state.stopping.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = changes.changed() => if changed.is_err() { return },
                _ = stopping.wait_for(|stopping| *stopping) => return,
            }
            let installed = {
                let _changing = state.rule_changes.lock().await;
                install(&state).await
            };
            if let Err(error) = installed {
                tracing::warn!(%error, "risk rules changed on another node are not in force here yet; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                changes.mark_changed();
            }
        }
    });
}

/// At start, before serving: checks every stored and configured rule,
/// creates each configured rule whose name no stored rule has, and hands
/// them all to the ledger. A rule that does not parse stops the start
/// rather than leave the ledger unguarded.
pub async fn start(state: &AppState, configured: &[RuleBody]) -> Result<(), RuleStartError> {
    let _changing = state.rule_changes.lock().await;
    let mut names = HashSet::new();
    for stored in state.users.rules().map_err(ApiError::from)? {
        let id = stored.id;
        let entry =
            parse(stored).map_err(|source| RuleStartError::Invalid { rule: id.to_string(), source })?;
        names.insert(entry.rule.name);
    }
    let mut configured_names = HashSet::new();
    for body in configured {
        // Checked even when it exists already, so a typo in the file shows.
        let rule = body
            .clone()
            .into_rule(rule_id(Uuid::new_v4())?)
            .map_err(|source| RuleStartError::Invalid { rule: body.name.clone(), source })?;
        if !configured_names.insert(rule.name.clone()) {
            return Err(RuleStartError::DuplicateName { name: rule.name });
        }
        if !names.contains(&rule.name) {
            let entry = insert(state, body.clone()).await?;
            tracing::info!(rule = %Uuid::from_u128(entry.rule.id.get()), name = %entry.rule.name, "created a configured risk rule");
        }
    }
    install(state).await?;
    Ok(())
}
