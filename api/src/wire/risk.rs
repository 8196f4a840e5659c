//! Risk rules on the wire: a rule's body and parameters, a rule and a
//! decision as shown.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use wallet_actors::risk::{
    Decision, Rule, RuleAction, RuleError, RuleId, RuleKind, RuleKindCode, RuleScope, BLOCKED_ACCOUNTS_MAX,
};
use wallet_actors::UserId;
use wallet_storage::users::{StoredRuleAction, StoredRuleBody, StoredRuleScope};

use crate::domain::{account_id, parse_uuid, rfc3339, uuid_text};
use crate::error::ApiError;
use crate::wire::parse_amount;

/// Which debits a rule looks at: through the debited account and its owner.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum RuleScopeBody {
    /// Every user's account (settlement accounts are never checked). A
    /// struct variant: serde lets a unit variant carry unknown fields.
    Global {},
    /// The accounts of one user. Velocity rules with this scope count the
    /// debits of all of the user's accounts that the API opened (an account
    /// whose id an admin chose counts with them only if its id lands on the
    /// user's home shard, and on its own otherwise).
    User {
        /// The user's UUID.
        #[schema(format = "uuid")]
        user_id: String,
    },
    /// One account.
    Account {
        /// The account's UUID.
        #[schema(format = "uuid")]
        account_id: String,
    },
}

/// What a violated rule does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleActionBody {
    /// The transfer fails with a 422 and changes nothing.
    Reject,
    /// The transfer becomes a pending hold that only an admin may post or void.
    Review,
}

impl From<RuleAction> for RuleActionBody {
    fn from(action: RuleAction) -> Self {
        match action {
            RuleAction::Reject => RuleActionBody::Reject,
            RuleAction::Review => RuleActionBody::Review,
        }
    }
}

/// The kinds of rule, as `kind` names them. Each takes its own `parameters`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RuleKindName {
    /// A transfer from or to a listed account (`BlockedAccountParameters`).
    BlockedAccount,
    /// A large transfer from a young account (`NewAccountLimitParameters`).
    NewAccountLimit,
    /// One transfer above an amount (`MaxAmountParameters`).
    MaxAmount,
    /// Too many debits of one account in a window (`VelocityCountParameters`).
    VelocityCount,
    /// Too much debited from one account in a window (`VelocityAmountParameters`).
    VelocityAmount,
}

/// The kind `text` names, if any.
fn rule_kind_code(text: &str) -> Option<RuleKindCode> {
    use RuleKindCode::*;
    [BlockedAccount, NewAccountLimit, MaxAmount, VelocityCount, VelocityAmount]
        .into_iter()
        .find(|code| code.as_str() == text)
}

/// `max_amount`: a transfer above `amount` from an account of `asset` violates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MaxAmountParameters {
    /// Asset code; accounts of other assets are not checked.
    pub asset: String,
    /// Largest amount of one transfer, in minor units.
    pub amount: String,
}

/// `velocity_count`: more than `count` debits of one account (of one user, for a rule scoped
/// to a user) within the window violate it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VelocityCountParameters {
    /// Length of the sliding window, 1 s to 7 days.
    pub window_seconds: u32,
    /// Most debits allowed within it.
    pub count: u32,
}

/// `velocity_amount`: debits of one account (of one user, for a rule scoped to a user)
/// summing above `amount` within the window violate it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VelocityAmountParameters {
    /// Asset code; accounts of other assets are not checked.
    pub asset: String,
    /// Length of the sliding window, 1 s to 7 days.
    pub window_seconds: u32,
    /// Largest sum within it, in minor units.
    pub amount: String,
}

/// `blocked_account`: a transfer from or to a listed account violates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockedAccountParameters {
    /// Account UUIDs, 1 to 10,000; they need not exist yet.
    pub account_ids: Vec<String>,
}

/// `new_account_limit`: a transfer above `amount` from an account younger
/// than `seconds` violates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAccountLimitParameters {
    /// Age below which an account counts as new.
    pub seconds: u32,
    /// Asset code; accounts of other assets are not checked.
    pub asset: String,
    /// Largest amount of one transfer from a new account, in minor units.
    pub amount: String,
}

/// A rule's parameters: the object its `kind` takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum RuleParameters {
    /// For `max_amount`.
    MaxAmount(MaxAmountParameters),
    /// For `velocity_count`.
    VelocityCount(VelocityCountParameters),
    /// For `velocity_amount`.
    VelocityAmount(VelocityAmountParameters),
    /// For `blocked_account`.
    BlockedAccount(BlockedAccountParameters),
    /// For `new_account_limit`.
    NewAccountLimit(NewAccountLimitParameters),
}

/// `POST /v1/risk/rules` and `PUT /v1/risk/rules/{id}`; also a configured
/// `[[risk_rules]]` table, and a rule as the user store keeps it. `kind`
/// and `parameters` are read together, so `parameters` stays raw JSON until
/// [`RuleBody::into_rule`] knows which object to expect.
// The store keeps a rule in this JSON form, as a type of its own
// (`StoredRuleBody`, converted below); the doc above is the OpenAPI
// document's description too.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleBody {
    /// A name for people, 1 to 128 bytes; configured rules are matched by it.
    pub name: String,
    /// What the rule checks.
    #[schema(value_type = RuleKindName)]
    pub kind: String,
    /// Which debits it looks at.
    pub scope: RuleScopeBody,
    /// What a violation does.
    pub action: RuleActionBody,
    /// The kind's parameters.
    #[schema(value_type = RuleParameters)]
    pub parameters: serde_json::Value,
    /// Review rules only: void the hold by itself after this many seconds.
    #[serde(default)]
    pub timeout_seconds: Option<u32>,
}

/// Reads `parameters` as the object `kind` takes.
fn rule_parameters<T: DeserializeOwned>(kind: RuleKindCode, value: serde_json::Value) -> Result<T, ApiError> {
    serde_json::from_value(value).map_err(|error| {
        let detail = format!("parameters of a {} rule: {error}", kind.as_str());
        if detail.contains("unknown field") {
            ApiError::MalformedBody { code: "unknown_field", detail }
        } else {
            ApiError::InvalidField { code: "invalid_parameters", detail }
        }
    })
}

impl RuleBody {
    /// The domain rule, with id `id`: parameters read as `kind` says, ids
    /// and amounts parsed, then [`Rule::validate`]d. The one parser of
    /// rules from the API, the configuration and the store.
    pub fn into_rule(self, id: RuleId) -> Result<Rule, ApiError> {
        let code = rule_kind_code(&self.kind).ok_or_else(|| ApiError::InvalidField {
            code: "unknown_rule_kind",
            detail: format!(
                "kind must be blocked_account, new_account_limit, max_amount, velocity_count or velocity_amount, not {:?}",
                self.kind
            ),
        })?;
        let amount = |text: &str| parse_amount("parameters.amount", text);
        let kind = match code {
            RuleKindCode::BlockedAccount => {
                let p: BlockedAccountParameters = rule_parameters(code, self.parameters)?;
                // Checked before parsing: a huge list fails without parsing it.
                if p.account_ids.is_empty() || p.account_ids.len() > BLOCKED_ACCOUNTS_MAX {
                    return Err(ApiError::InvalidRule(RuleError::BlockedAccountsOutOfRange));
                }
                let account_ids = p
                    .account_ids
                    .iter()
                    .map(|text| account_id("parameters.account_ids", text))
                    .collect::<Result<Vec<_>, _>>()?;
                RuleKind::BlockedAccount { account_ids }
            }
            RuleKindCode::NewAccountLimit => {
                let p: NewAccountLimitParameters = rule_parameters(code, self.parameters)?;
                RuleKind::NewAccountLimit { seconds: p.seconds, asset: p.asset, amount: amount(&p.amount)? }
            }
            RuleKindCode::MaxAmount => {
                let p: MaxAmountParameters = rule_parameters(code, self.parameters)?;
                RuleKind::MaxAmount { asset: p.asset, amount: amount(&p.amount)? }
            }
            RuleKindCode::VelocityCount => {
                let p: VelocityCountParameters = rule_parameters(code, self.parameters)?;
                RuleKind::VelocityCount { window_seconds: p.window_seconds, count: p.count }
            }
            RuleKindCode::VelocityAmount => {
                let p: VelocityAmountParameters = rule_parameters(code, self.parameters)?;
                RuleKind::VelocityAmount {
                    asset: p.asset,
                    window_seconds: p.window_seconds,
                    amount: amount(&p.amount)?,
                }
            }
        };
        let scope = match self.scope {
            RuleScopeBody::Global {} => RuleScope::Global,
            RuleScopeBody::User { user_id } => {
                let field = "scope.user_id";
                let uuid = parse_uuid(field, &user_id)?;
                RuleScope::User(UserId::new(uuid.as_u128()).map_err(|_| ApiError::InvalidId { field })?)
            }
            RuleScopeBody::Account { account_id: text } => {
                RuleScope::Account(account_id("scope.account_id", &text)?)
            }
        };
        let action = match self.action {
            RuleActionBody::Reject => RuleAction::Reject,
            RuleActionBody::Review => RuleAction::Review,
        };
        let rule = Rule {
            id,
            name: self.name.trim().to_string(),
            kind,
            scope,
            action,
            timeout_seconds: self.timeout_seconds,
        };
        rule.validate().map_err(ApiError::InvalidRule)?;
        Ok(rule)
    }
}

/// A rule as the user store keeps it: as taken, so that it is parsed and
/// checked at each start exactly like a new one.
impl From<RuleBody> for StoredRuleBody {
    fn from(body: RuleBody) -> Self {
        StoredRuleBody {
            name: body.name,
            kind: body.kind,
            scope: match body.scope {
                RuleScopeBody::Global {} => StoredRuleScope::Global {},
                RuleScopeBody::User { user_id } => StoredRuleScope::User { user_id },
                RuleScopeBody::Account { account_id } => StoredRuleScope::Account { account_id },
            },
            action: match body.action {
                RuleActionBody::Reject => StoredRuleAction::Reject,
                RuleActionBody::Review => StoredRuleAction::Review,
            },
            parameters: body.parameters,
            timeout_seconds: body.timeout_seconds,
        }
    }
}

/// A stored rule as taken, to be parsed ([`RuleBody::into_rule`]).
impl From<StoredRuleBody> for RuleBody {
    fn from(stored: StoredRuleBody) -> Self {
        RuleBody {
            name: stored.name,
            kind: stored.kind,
            scope: match stored.scope {
                StoredRuleScope::Global {} => RuleScopeBody::Global {},
                StoredRuleScope::User { user_id } => RuleScopeBody::User { user_id },
                StoredRuleScope::Account { account_id } => RuleScopeBody::Account { account_id },
            },
            action: match stored.action {
                StoredRuleAction::Reject => RuleActionBody::Reject,
                StoredRuleAction::Review => RuleActionBody::Review,
            },
            parameters: stored.parameters,
            timeout_seconds: stored.timeout_seconds,
        }
    }
}

/// A rule as shown.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleView {
    /// UUID, chosen by the server.
    #[schema(format = "uuid")]
    pub id: String,
    /// A name for people.
    pub name: String,
    /// What the rule checks.
    #[schema(value_type = RuleKindName)]
    pub kind: String,
    /// Which debits it looks at.
    pub scope: RuleScopeBody,
    /// What a violation does.
    pub action: RuleActionBody,
    /// The kind's parameters.
    pub parameters: RuleParameters,
    /// Review rules: seconds after which the hold voids by itself; null for never.
    pub timeout_seconds: Option<u32>,
    /// RFC 3339.
    #[schema(format = DateTime)]
    pub created_at: String,
}

impl RuleView {
    /// The view of `rule`, created at `created_at_ms`.
    pub fn new(rule: &Rule, created_at_ms: u64) -> RuleView {
        let parameters = match &rule.kind {
            RuleKind::BlockedAccount { account_ids } => {
                RuleParameters::BlockedAccount(BlockedAccountParameters {
                    account_ids: account_ids.iter().map(|id| uuid_text(id.get())).collect(),
                })
            }
            RuleKind::NewAccountLimit { seconds, asset, amount } => {
                RuleParameters::NewAccountLimit(NewAccountLimitParameters {
                    seconds: *seconds,
                    asset: asset.clone(),
                    amount: amount.to_string(),
                })
            }
            RuleKind::MaxAmount { asset, amount } => RuleParameters::MaxAmount(MaxAmountParameters {
                asset: asset.clone(),
                amount: amount.to_string(),
            }),
            RuleKind::VelocityCount { window_seconds, count } => {
                RuleParameters::VelocityCount(VelocityCountParameters {
                    window_seconds: *window_seconds,
                    count: *count,
                })
            }
            RuleKind::VelocityAmount { asset, window_seconds, amount } => {
                RuleParameters::VelocityAmount(VelocityAmountParameters {
                    asset: asset.clone(),
                    window_seconds: *window_seconds,
                    amount: amount.to_string(),
                })
            }
        };
        let scope = match rule.scope {
            RuleScope::Global => RuleScopeBody::Global {},
            RuleScope::User(user_id) => RuleScopeBody::User { user_id: uuid_text(user_id.get()) },
            RuleScope::Account(id) => RuleScopeBody::Account { account_id: uuid_text(id.get()) },
        };
        RuleView {
            id: uuid_text(rule.id.get()),
            name: rule.name.clone(),
            kind: rule.kind.code().as_str().to_string(),
            scope,
            action: rule.action.into(),
            parameters,
            timeout_seconds: rule.timeout_seconds,
            created_at: rfc3339(created_at_ms),
        }
    }
}

/// `GET /v1/risk/decisions` query.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DecisionQuery {
    /// Only the decisions about debits of this account.
    #[param(format = "uuid")]
    pub account_id: Option<String>,
    /// Most items (default 100, at most 1000).
    pub limit: Option<usize>,
    /// The `next_cursor` of the previous page (a decision id).
    #[param(pattern = "^[0-9]+$")]
    pub cursor: Option<String>,
}

/// What a rule decided about a transfer.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct DecisionView {
    /// Position in the decision log, from 1, ascending.
    pub id: u64,
    /// When it was decided (RFC 3339).
    #[schema(format = DateTime)]
    pub at: String,
    /// The transfer (refused, or held for review).
    #[schema(format = "uuid")]
    pub transfer_id: String,
    /// The debited account.
    #[schema(format = "uuid")]
    pub account_id: String,
    /// The rule.
    #[schema(format = "uuid")]
    pub rule_id: String,
    /// The rule's kind.
    #[schema(value_type = RuleKindName)]
    pub kind: String,
    /// `reject` or `review`.
    pub outcome: RuleActionBody,
}

impl From<&Decision> for DecisionView {
    fn from(decision: &Decision) -> Self {
        DecisionView {
            id: decision.id,
            at: rfc3339(decision.at_ms),
            transfer_id: uuid_text(decision.transfer_id.get()),
            account_id: uuid_text(decision.account_id.get()),
            rule_id: uuid_text(decision.rule_id.get()),
            kind: decision.kind.as_str().to_string(),
            outcome: decision.outcome.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(text: &str) -> Result<Rule, &'static str> {
        let body: RuleBody = serde_json::from_str(text).map_err(|_| "does not deserialize")?;
        let id = RuleId::new(7).map_err(|_| "zero id")?;
        body.into_rule(id).map_err(|e| e.status_and_code().1)
    }

    #[test]
    fn rules_parse_by_kind_and_refuse_what_does_not_fit() {
        let velocity = r#"{"name":" ten a minute ","kind":"velocity_count","scope":{"type":"global"},
            "action":"reject","parameters":{"window_seconds":60,"count":10}}"#;
        let parsed = rule(velocity);
        assert!(parsed.as_ref().is_ok_and(|r| r.name == "ten a minute"
            && r.kind == RuleKind::VelocityCount { window_seconds: 60, count: 10 }));
        let cases = [
            (velocity.replace("velocity_count", "velocity_cnt"), Err("unknown_rule_kind")),
            (velocity.replace("\"window_seconds\":60", "\"window_seconds\":0"), Err("window_out_of_range")),
            (velocity.replace(",\"count\":10", ""), Err("invalid_parameters")),
            (velocity.replace("\"count\":10", "\"count\":-1"), Err("invalid_parameters")),
            (velocity.replace("\"count\":10", "\"count\":10,\"burst\":1"), Err("unknown_field")),
            (
                velocity.replace("\"action\":\"reject\"", "\"action\":\"reject\",\"timeout_seconds\":5"),
                Err("timeout_out_of_range"),
            ),
            (velocity.replace("\" ten a minute \"", "\"  \""), Err("name_out_of_range")),
            (
                velocity.replace("{\"type\":\"global\"}", "{\"type\":\"global\",\"x\":1}"),
                Err("does not deserialize"),
            ),
            (
                velocity.replace("{\"type\":\"global\"}", "{\"type\":\"account\",\"account_id\":\"x\"}"),
                Err("invalid_id"),
            ),
            (
                velocity.replace("{\"type\":\"global\"}", "{\"type\":\"user\",\"user_id\":\"7\",\"y\":2}"),
                Err("does not deserialize"),
            ),
        ];
        for (text, expected) in cases {
            assert_eq!(rule(&text).map(|_| ()), expected, "{text}");
        }
        let max = r#"{"name":"cap","kind":"max_amount","scope":{"type":"global"},"action":"review",
            "timeout_seconds":60,"parameters":{"asset":"USD","amount":"AMOUNT"}}"#;
        assert!(rule(&max.replace("AMOUNT", "1000")).is_ok());
        for (amount, code) in [
            ("-1", "malformed_amount"),
            ("1.5", "malformed_amount"),
            (&"9".repeat(39)[..], "amount_too_large"),
        ] {
            assert_eq!(rule(&max.replace("AMOUNT", amount)).map(|_| ()), Err(code), "{amount}");
        }
        assert_eq!(
            rule(&max.replace("USD", "usd").replace("AMOUNT", "1")).map(|_| ()),
            Err("malformed_asset")
        );
        let blocked = r#"{"name":"b","kind":"blocked_account","scope":{"type":"global"},"action":"reject",
            "parameters":{"account_ids":[]}}"#;
        assert_eq!(rule(blocked).map(|_| ()), Err("blocked_accounts_out_of_range"));
    }

    #[test]
    fn a_rule_view_reads_back_as_its_body() -> anyhow::Result<()> {
        let account = uuid::Uuid::new_v4().to_string();
        let text = format!(
            r#"{{"name":"young","kind":"new_account_limit","scope":{{"type":"account","account_id":"{account}"}},
            "action":"reject","parameters":{{"seconds":3600,"asset":"EUR","amount":"500"}}}}"#
        );
        let parsed = rule(&text).map_err(anyhow::Error::msg)?;
        let view = serde_json::to_value(RuleView::new(&parsed, 0))?;
        assert_eq!(view["scope"], serde_json::json!({"type": "account", "account_id": account}));
        assert_eq!(view["parameters"], serde_json::json!({"seconds": 3600, "asset": "EUR", "amount": "500"}));
        assert_eq!(view["timeout_seconds"], serde_json::Value::Null);
        let body = RuleBody {
            name: view["name"].as_str().unwrap_or_default().to_string(),
            kind: view["kind"].as_str().unwrap_or_default().to_string(),
            scope: serde_json::from_value(view["scope"].clone())?,
            action: serde_json::from_value(view["action"].clone())?,
            parameters: view["parameters"].clone(),
            timeout_seconds: None,
        };
        assert_eq!(body.into_rule(parsed.id).ok(), Some(parsed));
        Ok(())
    }

    #[test]
    fn a_rule_is_stored_in_the_json_of_its_body() -> anyhow::Result<()> {
        // Earlier versions stored the body itself: their data must read the same.
        let account = uuid::Uuid::new_v4();
        let texts = [
            r#"{"name":"ten","kind":"velocity_count","scope":{"type":"global"},"action":"reject",
                "parameters":{"window_seconds":60,"count":10}}"#
                .to_string(),
            format!(
                r#"{{"name":"cap","kind":"max_amount","scope":{{"type":"account","account_id":"{account}"}},
                "action":"review","timeout_seconds":60,"parameters":{{"asset":"USD","amount":"1000"}}}}"#
            ),
            r#"{"name":"u","kind":"blocked_account","scope":{"type":"user","user_id":"7"},"action":"reject",
                "parameters":{"account_ids":["x"]}}"#
                .to_string(),
        ];
        for text in texts {
            let body: RuleBody = serde_json::from_str(&text)?;
            let stored = StoredRuleBody::from(body.clone());
            assert_eq!(serde_json::to_string(&stored)?, serde_json::to_string(&body)?);
            let read: StoredRuleBody = serde_json::from_str(&serde_json::to_string(&body)?)?;
            assert_eq!(RuleBody::from(read), body);
        }
        Ok(())
    }
}
