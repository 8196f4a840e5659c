//! Which assets accounts may be opened in: the ISO 4217 currencies (with
//! the scale ISO gives them) and the assets the operator configures
//! (`--assets BTC:8,XAU:3`, each with its scale). Anything else is refused
//! with 400 `asset_not_allowed`: each new asset opens a settlement account
//! that stays for ever, so the set of assets is the operator's to choose,
//! not any user's.

use std::collections::BTreeMap;

use wallet_actors::Asset;
use wallet_actors::{iso4217_scale, AssetError};

use crate::error::ApiError;

/// The assets accounts may be opened in.
#[derive(Clone, Debug, Default)]
pub struct AllowedAssets {
    /// Configured assets that are not ISO 4217 currencies, by code, with their scale.
    configured: BTreeMap<String, u8>,
}

/// One configured asset: its code and scale.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfiguredAsset {
    /// The code (`BTC`).
    pub code: String,
    /// Digits after the point (8).
    pub scale: u8,
}

impl std::str::FromStr for ConfiguredAsset {
    type Err = String;

    /// `CODE:SCALE`, checked as an asset would be.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (code, scale) = text.trim().split_once(':').ok_or_else(|| format!("{text}: not CODE:SCALE"))?;
        let scale: u8 = scale.parse().map_err(|_| format!("{text}: the scale is not a number"))?;
        let asset = Asset::new(code, scale).map_err(|e| format!("{text}: {e}"))?;
        if iso4217_scale(code).is_some_and(|iso| iso != scale) {
            return Err(format!("{text}: ISO 4217 gives {code} another scale"));
        }
        Ok(ConfiguredAsset { code: asset.code().to_string(), scale })
    }
}

impl AllowedAssets {
    /// ISO 4217 and `configured`.
    pub fn new(configured: &[ConfiguredAsset]) -> AllowedAssets {
        AllowedAssets { configured: configured.iter().map(|a| (a.code.clone(), a.scale)).collect() }
    }

    /// The asset `code` names, with `scale` if given (it must be the
    /// asset's); 400 `asset_not_allowed` for a code neither ISO 4217 nor
    /// configured.
    pub fn asset(&self, code: &str, scale: Option<u8>) -> Result<Asset, ApiError> {
        if iso4217_scale(code).is_some() {
            return Asset::with_iso_scale(code, scale).map_err(ApiError::InvalidAsset);
        }
        // A malformed code is reported as such, not as one not allowed.
        Asset::new(code, scale.unwrap_or(0)).map_err(|e| ApiError::InvalidAsset(AssetError::Malformed(e)))?;
        let Some(&expected) = self.configured.get(code) else {
            return Err(ApiError::InvalidField {
                code: "asset_not_allowed",
                detail: format!(
                    "{code} is neither an ISO 4217 currency nor an asset this ledger is configured for"
                ),
            });
        };
        match scale {
            Some(given) if given != expected => {
                Err(ApiError::InvalidAsset(AssetError::ScaleMismatch { expected, given }))
            }
            _ => Asset::new(code, expected).map_err(|e| ApiError::InvalidAsset(AssetError::Malformed(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(result: Result<Asset, ApiError>) -> &'static str {
        match result {
            Ok(_) => "ok",
            Err(error) => error.status_and_code().1,
        }
    }

    #[test]
    fn iso_and_configured_assets_are_allowed_and_nothing_else() -> Result<(), String> {
        let allowed = AllowedAssets::new(&["BTC:8".parse()?, "XAU:3".parse()?]);
        let cases = [
            ("USD", None, "ok"),
            ("USD", Some(3), "scale_mismatch"),
            ("BTC", None, "ok"),
            ("BTC", Some(8), "ok"),
            ("BTC", Some(2), "scale_mismatch"),
            ("XAU", None, "ok"),
            ("DOGE", Some(8), "asset_not_allowed"),
            ("XTS", Some(2), "asset_not_allowed"),
            ("doge", Some(8), "malformed_asset"),
        ];
        for (asset, scale, expected) in cases {
            assert_eq!(code(allowed.asset(asset, scale)), expected, "{asset} {scale:?}");
        }
        assert_eq!(allowed.asset("BTC", None).map(|a| a.scale()).ok(), Some(8));
        assert!("USD:3".parse::<ConfiguredAsset>().is_err());
        assert!("BTC".parse::<ConfiguredAsset>().is_err());
        assert!("btc:8".parse::<ConfiguredAsset>().is_err());
        Ok(())
    }
}
