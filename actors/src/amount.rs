//! Money: unsigned integers in minor units of an asset, checked arithmetic,
//! never a float.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::rejection::InvalidInput;

/// An amount of money in minor units (cents for USD/2, satoshis for BTC/8).
///
/// Guarantees: never negative; every sum is checked, so overflow is an error
/// and not a wrap. Parsing accepts only plain decimal digits of minor units.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Amount(u128);

/// The largest amount the ledger accepts in one transfer. Balances are sums of
/// many transfers, so a per-transfer cap of 2^96 leaves headroom for 2^32 of
/// them before any balance could overflow `u128`; overflow is still checked.
pub const AMOUNT_MAX: u128 = 1 << 96;

impl Amount {
    /// Zero.
    pub const ZERO: Amount = Amount(0);

    /// Builds an amount, refusing values above [`AMOUNT_MAX`].
    pub fn new(minor_units: u128) -> Result<Self, InvalidInput> {
        if minor_units > AMOUNT_MAX {
            return Err(InvalidInput::AmountTooLarge);
        }
        Ok(Amount(minor_units))
    }

    /// Parses a string of decimal digits ("1050"); signs, decimal points,
    /// exponents, spaces and leading "+" are refused.
    pub fn parse(text: &str) -> Result<Self, InvalidInput> {
        if text.is_empty() || text.len() > 40 || !text.bytes().all(|b| b.is_ascii_digit()) {
            return Err(InvalidInput::MalformedAmount);
        }
        let value: u128 = text.parse().map_err(|_| InvalidInput::AmountTooLarge)?;
        Amount::new(value)
    }

    /// The value in minor units.
    pub fn get(self) -> u128 {
        self.0
    }

    /// Whether this is zero.
    pub fn is_zero(self) -> bool {
        self.0 == 0
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_plain_digits() {
        assert_eq!(Amount::parse("1050").map(Amount::get), Ok(1050));
        assert_eq!(Amount::parse("0").map(Amount::get), Ok(0));
        for bad in ["", "-1", "1.5", "1e3", "+5", " 5", "0x10", "١"] {
            assert_eq!(Amount::parse(bad), Err(InvalidInput::MalformedAmount), "{bad:?}");
        }
        let too_big = (AMOUNT_MAX + 1).to_string();
        assert_eq!(Amount::parse(&too_big), Err(InvalidInput::AmountTooLarge));
        assert_eq!(Amount::parse(&"9".repeat(39)), Err(InvalidInput::AmountTooLarge));
        assert_eq!(Amount::parse(&AMOUNT_MAX.to_string()).map(Amount::get), Ok(AMOUNT_MAX));
    }
}
