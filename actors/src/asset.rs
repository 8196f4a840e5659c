//! Assets: a currency or token code with its scale (USD/2, BTC/8).

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::rejection::InvalidInput;

/// Longest asset code accepted.
pub const ASSET_CODE_LEN_MAX: usize = 12;
/// Largest scale accepted (number of minor-unit decimal places).
pub const ASSET_SCALE_MAX: u8 = 18;

/// An asset: an upper-case code of 1 to 12 ASCII letters, digits or `_`, and
/// a scale from 0 to 18. Fixed when an account opens; transfers only move
/// money between accounts of the same asset. Stored inline (no heap), since
/// every account carries one.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Asset {
    code: [u8; ASSET_CODE_LEN_MAX],
    scale: u8,
}

impl Asset {
    /// Builds an asset after checking its code and scale.
    pub fn new(code: &str, scale: u8) -> Result<Self, InvalidInput> {
        let bytes = code.as_bytes();
        let valid = !bytes.is_empty()
            && bytes.len() <= ASSET_CODE_LEN_MAX
            && bytes.iter().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || *b == b'_');
        if !valid {
            return Err(InvalidInput::MalformedAsset);
        }
        if scale > ASSET_SCALE_MAX {
            return Err(InvalidInput::MalformedAsset);
        }
        let mut stored = [0u8; ASSET_CODE_LEN_MAX];
        stored[..bytes.len()].copy_from_slice(bytes);
        Ok(Asset { code: stored, scale })
    }

    /// The code, e.g. "USD".
    pub fn code(&self) -> &str {
        let len = self.code.iter().position(|&b| b == 0).unwrap_or(ASSET_CODE_LEN_MAX);
        // Only ASCII was ever stored, so this cannot fail; fall back to "" to stay total.
        std::str::from_utf8(&self.code[..len]).unwrap_or("")
    }

    /// Decimal places of the minor unit (2 for USD).
    pub fn scale(&self) -> u8 {
        self.scale
    }
}

impl fmt::Debug for Asset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.code(), self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_checked() {
        let usd = Asset::new("USD", 2).map(|a| (a.code().to_string(), a.scale()));
        assert_eq!(usd, Ok(("USD".to_string(), 2)));
        for bad in ["", "usd", "US D", "ABCDEFGHIJKLM", "€"] {
            assert!(Asset::new(bad, 2).is_err(), "{bad:?}");
        }
        assert!(Asset::new("BTC", 19).is_err());
    }
}
