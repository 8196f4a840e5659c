//! The risk rules the model knows, and the same rules for the engine.

use wallet_actors::risk::{RiskHit, RuleAction, RuleId, RuleKindCode};

/// A risk rule the model knows: `max_amount` of USD, `velocity_count` or `velocity_amount` of USD,
/// scoped globally, to a user or to an account, rejecting or holding for
/// review.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModelRule {
    /// Its id.
    pub id: u128,
    /// What it checks.
    pub kind: ModelRuleKind,
    /// Whose debits.
    pub scope: ModelScope,
    /// Reject, or hold for review.
    pub action: RuleAction,
    /// For review: when the hold voids itself.
    pub timeout_seconds: Option<u32>,
}

/// What a [`ModelRule`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelRuleKind {
    /// One USD transfer above this.
    MaxUsd(u128),
    /// More than `count` debits within `window_seconds`: of one account,
    /// or for a rule scoped to a user, of the user's home accounts.
    Velocity {
        /// The window.
        window_seconds: u32,
        /// Most debits in it.
        count: u32,
    },
    /// USD debits within `window_seconds` summing above `amount`: of one
    /// account, or for a rule scoped to a user, of the user's home USD
    /// accounts.
    VelocityUsd {
        /// The window.
        window_seconds: u32,
        /// Largest sum in it.
        amount: u128,
    },
}

/// Whose debits a [`ModelRule`] checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelScope {
    /// Everyone's.
    Global,
    /// This user's accounts'.
    User(u128),
    /// This account's.
    Account(u128),
}

impl ModelRule {
    /// The same rule for the engine.
    pub fn to_rule(self) -> wallet_actors::risk::Rule {
        use wallet_actors::risk::{Rule, RuleKind, RuleScope};
        let kind = match self.kind {
            ModelRuleKind::MaxUsd(limit) => RuleKind::MaxAmount {
                asset: "USD".into(),
                amount: wallet_actors::Amount::new(limit).unwrap_or_default(),
            },
            ModelRuleKind::Velocity { window_seconds, count } => {
                RuleKind::VelocityCount { window_seconds, count }
            }
            ModelRuleKind::VelocityUsd { window_seconds, amount } => RuleKind::VelocityAmount {
                asset: "USD".into(),
                window_seconds,
                amount: wallet_actors::Amount::new(amount).unwrap_or_default(),
            },
        };
        let scope = match self.scope {
            ModelScope::Global => RuleScope::Global,
            ModelScope::User(user) => RuleScope::User(crate::user(user)),
            ModelScope::Account(id) => RuleScope::Account(crate::account(id)),
        };
        Rule {
            id: RuleId::new(self.id).unwrap_or_else(|_| unreachable!()),
            name: format!("model rule {}", self.id),
            kind,
            scope,
            action: self.action,
            timeout_seconds: self.timeout_seconds,
        }
    }

    pub(super) fn kind_code(&self) -> RuleKindCode {
        match self.kind {
            ModelRuleKind::MaxUsd(_) => RuleKindCode::MaxAmount,
            ModelRuleKind::Velocity { .. } => RuleKindCode::VelocityCount,
            ModelRuleKind::VelocityUsd { .. } => RuleKindCode::VelocityAmount,
        }
    }

    pub(super) fn hit(&self) -> RiskHit {
        RiskHit {
            rule_id: RuleId::new(self.id).unwrap_or_else(|_| unreachable!()),
            kind: self.kind_code(),
            action: self.action,
            timeout_seconds: if self.action == RuleAction::Review { self.timeout_seconds } else { None },
        }
    }
}

/// The rules for the engine.
pub fn to_rules(rules: &[ModelRule]) -> Vec<wallet_actors::risk::Rule> {
    rules.iter().map(|rule| rule.to_rule()).collect()
}
