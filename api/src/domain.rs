//! The API's own domain values, parsed once at the edge: emails, passwords,
//! names, UUID ids, and timestamps on the wire.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use uuid::Uuid;
use wallet_actors::{AccountId, TransferId, UserId};

use crate::error::ApiError;

/// Longest email accepted (RFC 5321's path limit).
pub const EMAIL_LEN_MAX: usize = 254;
/// Shortest password accepted, in characters.
pub const PASSWORD_LEN_MIN: usize = 8;
/// Longest password accepted, in bytes (bounds the hashing work).
pub const PASSWORD_LEN_MAX: usize = 256;
/// Longest display name, in characters.
pub const NAME_LEN_MAX: usize = 100;

/// A normalised (trimmed, lower-case) email address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Checks the shape: one `@`, something on each side, a dot in the domain,
    /// no spaces or control characters.
    pub fn parse(text: &str) -> Result<Email, ApiError> {
        let text = text.trim().to_lowercase();
        let invalid = || ApiError::InvalidField {
            code: "invalid_email",
            detail: "email must look like name@example.com".to_string(),
        };
        if text.is_empty() || text.len() > EMAIL_LEN_MAX {
            return Err(invalid());
        }
        if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid());
        }
        let mut parts = text.split('@');
        let (Some(local), Some(domain), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(invalid());
        };
        if local.is_empty() || domain.len() < 3 || !domain.contains('.') || domain.starts_with('.') {
            return Err(invalid());
        }
        Ok(Email(text))
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that meets the length rules. Never shown by `Debug`.
#[derive(Clone, Debug)]
pub struct Password(Secret);

impl Password {
    /// Checks the length.
    pub fn parse(text: String) -> Result<Password, ApiError> {
        if text.chars().count() < PASSWORD_LEN_MIN || text.len() > PASSWORD_LEN_MAX {
            return Err(ApiError::InvalidField {
                code: "invalid_password",
                detail: format!(
                    "password must have at least {PASSWORD_LEN_MIN} characters and at most {PASSWORD_LEN_MAX} bytes"
                ),
            });
        }
        Ok(Password(Secret::new(text)))
    }

    /// The password itself.
    pub fn expose(&self) -> &str {
        self.0.expose()
    }
}

/// A display name: trimmed, 1 to [`NAME_LEN_MAX`] characters, no control characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserName(String);

impl UserName {
    /// Checks it.
    pub fn parse(text: &str) -> Result<UserName, ApiError> {
        let text = text.trim();
        let count = text.chars().count();
        if count == 0 || count > NAME_LEN_MAX || text.chars().any(char::is_control) {
            return Err(ApiError::InvalidField {
                code: "invalid_name",
                detail: format!("name must have 1 to {NAME_LEN_MAX} characters"),
            });
        }
        Ok(UserName(text.to_string()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses a UUID from the wire, naming the field when it is not one.
pub fn parse_uuid(field: &'static str, text: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(text).map_err(|_| ApiError::InvalidId { field })
}

/// An account id from its UUID text.
pub fn account_id(field: &'static str, text: &str) -> Result<AccountId, ApiError> {
    let uuid = parse_uuid(field, text)?;
    AccountId::new(uuid.as_u128()).map_err(|_| ApiError::InvalidId { field })
}

/// A transfer id from its UUID text.
pub fn transfer_id(field: &'static str, text: &str) -> Result<TransferId, ApiError> {
    let uuid = parse_uuid(field, text)?;
    TransferId::new(uuid.as_u128()).map_err(|_| ApiError::InvalidId { field })
}

/// The top bits of every transfer id the server derives, and of no id a
/// client may send: transfer ids in `ffffffff-…` are the server's, as
/// account ids there are the settlement accounts'
/// (`SETTLEMENT_ID_PREFIX` in `actors/src/ledger.rs`).
///
/// A post or void sent without an id gets [`derived_transfer_id`], so that
/// a retry is a replay and only one resolution of a hold can win. Were the
/// derived id an ordinary one, the other party of the hold could compute
/// it and spend it first on an unrelated transfer of their own, and the
/// rightful post would get 409 `exists_with_different_fields`; so
/// [`client_transfer_id`] refuses the range on every route that takes a
/// new transfer's id (400 `reserved_transfer_id`).
///
/// Why a reserved range rather than a keyed hash (the pending id under a
/// server secret): the derivation stays a function of the pending id
/// alone, so a retry after a restart, on another node, or after a secret
/// changed derives the same id and is still a replay; a keyed hash needs a
/// secret every node shares for the life of the ledger, and a changed one
/// would turn the retry into a second resolution. The cost is that a
/// random client id falls in the range once in 2^32 draws and is refused.
pub const RESERVED_TRANSFER_ID_PREFIX: u128 = 0xffff_ffff << 96;

/// Whether a transfer id is in the range reserved for derived ids.
pub fn is_reserved_transfer_id(id: TransferId) -> bool {
    id.get() & RESERVED_TRANSFER_ID_PREFIX == RESERVED_TRANSFER_ID_PREFIX
}

/// The id of a post (`what` = "post") or void ("void") of the pending
/// transfer `pending` sent without an id: a name-based UUID of the pending
/// id, moved into the reserved range (see [`RESERVED_TRANSFER_ID_PREFIX`]).
pub fn derived_transfer_id(pending: TransferId, what: &str) -> Result<TransferId, ApiError> {
    let name_based = Uuid::new_v5(&Uuid::from_u128(pending.get()), what.as_bytes()).as_u128();
    TransferId::new(RESERVED_TRANSFER_ID_PREFIX | name_based).map_err(|_| ApiError::Internal)
}

/// The id a client gives a new transfer (a body's `id`): a UUID, not zero,
/// and outside the range of derived ids.
pub fn client_transfer_id(field: &'static str, text: &str) -> Result<TransferId, ApiError> {
    let id = transfer_id(field, text)?;
    if is_reserved_transfer_id(id) {
        return Err(ApiError::ReservedTransferId { field });
    }
    Ok(id)
}

/// The ledger's owner id of a user: the user's UUID as an integer. User
/// UUIDs are random (v4), so never zero and never [`UserId::SYSTEM`].
pub fn ledger_user_id(user: Uuid) -> Result<UserId, ApiError> {
    UserId::new(user.as_u128()).map_err(|_| ApiError::Internal)
}

pub use wallet_actors::events::uuid_text;

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub use wallet_actors::events::rfc3339;

/// A secret string: never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The secret itself.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

impl FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(rfc3339(1_795_660_692_000), "2026-11-26T02:38:12.000Z");
    }

    #[test]
    fn emails_are_normalised_and_checked() {
        assert_eq!(Email::parse(" Ada@Example.COM ").ok(), Some(Email("ada@example.com".to_string())));
        for bad in ["", "ada", "ada@", "@example.com", "a b@example.com", "a@b@example.com", "ada@com"] {
            assert!(Email::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn derived_ids_are_reserved_and_client_ids_may_not_be() -> Result<(), ApiError> {
        let pending = transfer_id("id", &Uuid::new_v4().to_string())?;
        let post = derived_transfer_id(pending, "post")?;
        let void = derived_transfer_id(pending, "void")?;
        assert!(is_reserved_transfer_id(post) && is_reserved_transfer_id(void));
        assert_ne!(post, void);
        assert_eq!(derived_transfer_id(pending, "post")?, post, "a retry derives the same id");
        let refused = client_transfer_id("id", &uuid_text(post.get())).err().map(|e| e.status_and_code().1);
        assert_eq!(refused, Some("reserved_transfer_id"));
        let edge = client_transfer_id("id", "fffffffe-ffff-ffff-ffff-ffffffffffff")?;
        assert!(!is_reserved_transfer_id(edge));
        Ok(())
    }

    #[test]
    fn ids_are_uuids() {
        assert!(account_id("id", "not-a-uuid").is_err());
        assert!(account_id("id", "00000000-0000-0000-0000-000000000000").is_err());
        let id = Uuid::new_v4();
        assert_eq!(account_id("id", &id.to_string()).ok().map(|a| uuid_text(a.get())), Some(id.to_string()));
    }
}
