//! Assets: a currency or token code with its scale (USD/2, BTC/8), and the
//! ISO 4217 table that gives a currency its scale.

use serde::{Deserialize, Serialize};
use std::fmt;

use crate::rejection::InvalidInput;

/// Longest asset code accepted.
pub const ASSET_CODE_LEN_MAX: usize = 12;
/// Largest scale accepted (number of minor-unit decimal places).
pub const ASSET_SCALE_MAX: u8 = 18;

/// The active ISO 4217 currency codes (List One, as published 2026-01-01)
/// with their minor units, sorted by code. Codes whose minor unit ISO gives
/// as "N.A." have no scale and are left out: the precious metals (XAG, XAU,
/// XPD, XPT), the bond market units (XBA to XBD), XDR, XSU, XUA, the testing
/// code XTS and XXX.
// Eight to a line: one a line (rustfmt's way) would take 165 lines.
#[rustfmt::skip]
const ISO4217_SCALES: &[(&str, u8)] = &[
    ("AED", 2), ("AFN", 2), ("ALL", 2), ("AMD", 2), ("AOA", 2), ("ARS", 2), ("AUD", 2), ("AWG", 2),
    ("AZN", 2), ("BAM", 2), ("BBD", 2), ("BDT", 2), ("BHD", 3), ("BIF", 0), ("BMD", 2), ("BND", 2),
    ("BOB", 2), ("BOV", 2), ("BRL", 2), ("BSD", 2), ("BTN", 2), ("BWP", 2), ("BYN", 2), ("BZD", 2),
    ("CAD", 2), ("CDF", 2), ("CHE", 2), ("CHF", 2), ("CHW", 2), ("CLF", 4), ("CLP", 0), ("CNY", 2),
    ("COP", 2), ("COU", 2), ("CRC", 2), ("CUP", 2), ("CVE", 2), ("CZK", 2), ("DJF", 0), ("DKK", 2),
    ("DOP", 2), ("DZD", 2), ("EGP", 2), ("ERN", 2), ("ETB", 2), ("EUR", 2), ("FJD", 2), ("FKP", 2),
    ("GBP", 2), ("GEL", 2), ("GHS", 2), ("GIP", 2), ("GMD", 2), ("GNF", 0), ("GTQ", 2), ("GYD", 2),
    ("HKD", 2), ("HNL", 2), ("HTG", 2), ("HUF", 2), ("IDR", 2), ("ILS", 2), ("INR", 2), ("IQD", 3),
    ("IRR", 2), ("ISK", 0), ("JMD", 2), ("JOD", 3), ("JPY", 0), ("KES", 2), ("KGS", 2), ("KHR", 2),
    ("KMF", 0), ("KPW", 2), ("KRW", 0), ("KWD", 3), ("KYD", 2), ("KZT", 2), ("LAK", 2), ("LBP", 2),
    ("LKR", 2), ("LRD", 2), ("LSL", 2), ("LYD", 3), ("MAD", 2), ("MDL", 2), ("MGA", 2), ("MKD", 2),
    ("MMK", 2), ("MNT", 2), ("MOP", 2), ("MRU", 2), ("MUR", 2), ("MVR", 2), ("MWK", 2), ("MXN", 2),
    ("MXV", 2), ("MYR", 2), ("MZN", 2), ("NAD", 2), ("NGN", 2), ("NIO", 2), ("NOK", 2), ("NPR", 2),
    ("NZD", 2), ("OMR", 3), ("PAB", 2), ("PEN", 2), ("PGK", 2), ("PHP", 2), ("PKR", 2), ("PLN", 2),
    ("PYG", 0), ("QAR", 2), ("RON", 2), ("RSD", 2), ("RUB", 2), ("RWF", 0), ("SAR", 2), ("SBD", 2),
    ("SCR", 2), ("SDG", 2), ("SEK", 2), ("SGD", 2), ("SHP", 2), ("SLE", 2), ("SOS", 2), ("SRD", 2),
    ("SSP", 2), ("STN", 2), ("SVC", 2), ("SYP", 2), ("SZL", 2), ("THB", 2), ("TJS", 2), ("TMT", 2),
    ("TND", 3), ("TOP", 2), ("TRY", 2), ("TTD", 2), ("TWD", 2), ("TZS", 2), ("UAH", 2), ("UGX", 0),
    ("USD", 2), ("USN", 2), ("UYI", 0), ("UYU", 2), ("UYW", 4), ("UZS", 2), ("VED", 2), ("VES", 2),
    ("VND", 0), ("VUV", 0), ("WST", 2), ("XAD", 2), ("XAF", 0), ("XCD", 2), ("XCG", 2), ("XOF", 0),
    ("XPF", 0), ("YER", 2), ("ZAR", 2), ("ZMW", 2), ("ZWG", 2),
];

/// The scale ISO 4217 gives a currency code (2 for "USD", 0 for "JPY", 3 for
/// "KWD"), or `None` for a code that is not an active currency with a minor
/// unit (a token such as "BTC", gold "XAU", or a lower-case "usd").
pub fn iso4217_scale(code: &str) -> Option<u8> {
    let index = ISO4217_SCALES.binary_search_by(|(known, _)| (*known).cmp(code)).ok()?;
    ISO4217_SCALES.get(index).map(|(_, scale)| *scale)
}

/// Why an asset could not be built from a code and an optional scale
/// ([`Asset::with_iso_scale`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AssetError {
    /// The code or the scale is out of range.
    #[error(transparent)]
    Malformed(#[from] InvalidInput),
    /// No scale given, and the code is not an ISO 4217 currency whose scale is known.
    #[error("scale is required for an asset that is not an ISO 4217 currency with a minor unit")]
    MissingScale,
    /// A scale other than the one ISO 4217 gives the currency.
    #[error("ISO 4217 gives this currency scale {expected}, not {given}")]
    ScaleMismatch {
        /// ISO 4217's minor unit.
        expected: u8,
        /// The scale given.
        given: u8,
    },
}

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

    /// Builds an asset whose scale, for an ISO 4217 currency, is the one
    /// ISO gives it: taken from the table when `scale` is `None`, and
    /// refused when it differs (USD is always scale 2, so two USD accounts
    /// can never disagree about what "100" means). Any other code needs its
    /// `scale`. A malformed code is reported as such before a missing scale.
    pub fn with_iso_scale(code: &str, scale: Option<u8>) -> Result<Self, AssetError> {
        let scale = match (iso4217_scale(code), scale) {
            (Some(expected), Some(given)) if expected != given => {
                return Err(AssetError::ScaleMismatch { expected, given })
            }
            (Some(expected), _) => expected,
            (None, Some(given)) => given,
            (None, None) => {
                Asset::new(code, 0)?;
                return Err(AssetError::MissingScale);
            }
        };
        Ok(Asset::new(code, scale)?)
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
    #[test]
    fn iso_currencies_have_their_minor_units() {
        let pairs: Vec<_> = ISO4217_SCALES.iter().map(|(code, _)| *code).collect();
        assert!(pairs.windows(2).all(|w| w[0] < w[1]), "sorted and unique, for the binary search");
        assert!(ISO4217_SCALES.iter().all(|(code, scale)| Asset::new(code, *scale).is_ok()));
        let cases = [
            ("USD", Some(2)),
            ("EUR", Some(2)),
            ("JPY", Some(0)),
            ("KWD", Some(3)),
            ("CLF", Some(4)),
            ("UYW", Some(4)),
            ("AED", Some(2)),
            ("ZWG", Some(2)),
            ("XAU", None),
            ("XDR", None),
            ("XXX", None),
            ("XTS", None),
            ("BTC", None),
            ("usd", None),
            ("", None),
        ];
        for (code, scale) in cases {
            assert_eq!(iso4217_scale(code), scale, "{code:?}");
        }
    }

    #[test]
    fn an_iso_currency_takes_the_scale_iso_gives_it() {
        let scale = |code, scale| Asset::with_iso_scale(code, scale).map(|a| a.scale());
        assert_eq!(scale("USD", None), Ok(2));
        assert_eq!(scale("USD", Some(2)), Ok(2));
        assert_eq!(scale("JPY", None), Ok(0));
        assert_eq!(scale("USD", Some(3)), Err(AssetError::ScaleMismatch { expected: 2, given: 3 }));
        assert_eq!(scale("BTC", Some(8)), Ok(8));
        assert_eq!(scale("BTC", None), Err(AssetError::MissingScale));
        assert_eq!(scale("usd", None), Err(AssetError::Malformed(InvalidInput::MalformedAsset)));
        assert_eq!(scale("BTC", Some(19)), Err(AssetError::Malformed(InvalidInput::MalformedAsset)));
    }
}
