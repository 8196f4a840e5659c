//! Authentication: argon2id password hashes, HS256 access tokens (JWT),
//! and the [`Caller`] (found per request by [`crate::authenticate`]). Refresh tokens
//! belong to sessions ([`crate::sessions`]).
//!
//! An access token stops working before it expires when its user is
//! disabled (401 `user_disabled`) or every session of its user ended since
//! it was issued (401 `token_revoked`: logout, a password change).
//!
//! Access tokens must carry `exp`, `iss`, `aud` and `sub`, and are checked
//! for all four; only HS256 is accepted, so `alg: none` and algorithm
//! confusion are refused. The caller's role is read from the user store on
//! every request, not trusted from the token.
//!
//! Modules:
//! - [`passwords`]: argon2id hashes, computed off the async threads.
//! - [`tokens`]: signing and checking access tokens.
//! - [`caller`]: the [`Caller`]: who is calling, as stored now.

pub mod caller;
pub mod passwords;
pub mod tokens;

pub use caller::Caller;
pub use passwords::Passwords;
pub use tokens::{Claims, IssuedTokens, Tokens, Verified, SECRET_LEN_MIN};
