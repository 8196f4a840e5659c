//! Authentication: argon2id password hashes, HS256 access tokens (JWT),
//! and the [`Caller`] extractor every protected route takes. Refresh tokens
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
//! - [`caller`]: the [`Caller`] extractor, and the local users of an external issuer.

use rand_core::{OsRng, RngCore};

pub mod caller;
pub mod passwords;
pub mod tokens;

pub use caller::Caller;
pub use passwords::Passwords;
pub use tokens::{Claims, IssuedTokens, Tokens, Verified, SECRET_LEN_MIN};

/// `bytes` random bytes as lower-case hex.
pub fn random_token(bytes: usize) -> String {
    let mut buffer = vec![0u8; bytes];
    OsRng.fill_bytes(&mut buffer);
    hex(&buffer)
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_lower_case() {
        assert_eq!(hex(&[0x00, 0xab, 0x1f]), "00ab1f");
        assert_eq!(random_token(16).len(), 32);
    }
}
