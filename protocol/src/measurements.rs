//! nitro-cli's measurements file: the PCRs of an enclave image, as `nitro-cli build-enclave` prints them.
//!
//! ```text
//! { "Measurements": { "HashAlgorithm": "Sha384 { ... }", "PCR0": "<96 hex digits>", "PCR1": ..., "PCR2": ...,
//!                     "PCR8": ... (signed images) } }
//! ```
//!
//! One type reads and writes it. `veil eif pcrs` and `veil eif build` write it from the PCRs `veil-eif`
//! computes; `veil attest verify --measurements` and `veil kms policy` read it, and neither needs the EIF
//! code to do so. That is why it lives here, in the crate every side already depends on (`veil-eif`
//! included), rather than in `veil-eif`.
//!
//! Reading is as lenient as the files in the wild need and no more: `HashAlgorithm` may be missing but, when
//! present, must name SHA-384; keys that do not start with `PCR` are ignored; every `PCRn` must be a string of
//! 96 hex digits; at least one must be present. Writing matches nitro-cli byte for byte: keys in its
//! (sorted) order, and, with [`Measurements::to_json_pretty`], its two-space indentation.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::attestation::PCR_LEN;

/// What nitro-cli writes as `HashAlgorithm`: the `Debug` text of the `sha2` crate's SHA-384 hasher, kept
/// byte for byte so that tools diffing measurements files see no difference.
pub const NITRO_HASH_ALGORITHM: &str = "Sha384 { ... }";

/// The SHA-384 PCRs of one enclave image, by index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Measurements {
    pcrs: BTreeMap<u16, [u8; PCR_LEN]>,
}

/// Why a JSON value is not a measurements file. The messages name the key at fault; callers add the file.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum MeasurementsError {
    /// There is no `"Measurements"` object at the top.
    #[error("no \"Measurements\" object (expected nitro-cli build-enclave's output)")]
    NoMeasurements,
    /// `HashAlgorithm` names something other than SHA-384.
    #[error("HashAlgorithm {0:?} is not SHA-384")]
    HashAlgorithm(String),
    /// A key starting with `PCR` is not `PCR` and a number.
    #[error("{0:?} is not a PCR name")]
    PcrName(String),
    /// A PCR's value is not a JSON string.
    #[error("{0} is not a string")]
    NotAString(String),
    /// A PCR's value is not hex.
    #[error("{key} is not hex: {error}")]
    NotHex { key: String, error: hex::FromHexError },
    /// A PCR's value is not 48 bytes.
    #[error("{key} is {len} bytes, not 48")]
    Length { key: String, len: usize },
    /// No `PCRn` entry at all.
    #[error("no PCRn entries in \"Measurements\"")]
    Empty,
}

impl Measurements {
    /// Measurements of these PCRs.
    pub fn from_pcrs(pcrs: impl IntoIterator<Item = (u16, [u8; PCR_LEN])>) -> Self {
        Measurements { pcrs: pcrs.into_iter().collect() }
    }

    /// Every PCR, by index.
    pub fn pcrs(&self) -> &BTreeMap<u16, [u8; PCR_LEN]> {
        &self.pcrs
    }

    /// PCR `index`, if measured.
    pub fn pcr(&self, index: u16) -> Option<&[u8; PCR_LEN]> {
        self.pcrs.get(&index)
    }

    /// The PCRs, by index.
    pub fn into_pcrs(self) -> BTreeMap<u16, [u8; PCR_LEN]> {
        self.pcrs
    }

    /// Reads a measurements file already parsed as JSON.
    pub fn from_json(json: &Value) -> Result<Self, MeasurementsError> {
        let m = json.get("Measurements").and_then(Value::as_object).ok_or(MeasurementsError::NoMeasurements)?;
        if let Some(alg) = m.get("HashAlgorithm").and_then(Value::as_str)
            && !alg.to_ascii_lowercase().contains("sha384")
        {
            return Err(MeasurementsError::HashAlgorithm(alg.to_owned()));
        }
        let mut pcrs = BTreeMap::new();
        for (key, value) in m {
            let Some(index) = key.strip_prefix("PCR") else {
                continue;
            };
            let index: u16 = index.parse().map_err(|_| MeasurementsError::PcrName(key.clone()))?;
            let hex_value = value.as_str().ok_or_else(|| MeasurementsError::NotAString(key.clone()))?;
            let bytes =
                hex::decode(hex_value).map_err(|error| MeasurementsError::NotHex { key: key.clone(), error })?;
            let pcr: [u8; PCR_LEN] =
                bytes.try_into().map_err(|b: Vec<u8>| MeasurementsError::Length { key: key.clone(), len: b.len() })?;
            pcrs.insert(index, pcr);
        }
        if pcrs.is_empty() {
            return Err(MeasurementsError::Empty);
        }
        Ok(Measurements { pcrs })
    }

    /// The file's JSON: `{"Measurements": {"HashAlgorithm": ..., "PCR0": ..., ...}}`.
    pub fn to_json(&self) -> Value {
        // nitro-cli keeps the entries in a BTreeMap<String, String>: sorted as text ("PCR10" before "PCR2").
        let mut entries: BTreeMap<String, String> =
            self.pcrs.iter().map(|(i, v)| (format!("PCR{i}"), hex::encode(v))).collect();
        entries.insert("HashAlgorithm".into(), NITRO_HASH_ALGORITHM.into());
        let inner: serde_json::Map<String, Value> = entries.into_iter().map(|(k, v)| (k, Value::String(v))).collect();
        let mut outer = serde_json::Map::new();
        outer.insert("Measurements".into(), Value::Object(inner));
        Value::Object(outer)
    }

    /// [`Self::to_json`] as nitro-cli prints it (two-space indentation, no trailing newline).
    pub fn to_json_pretty(&self) -> String {
        let json = self.to_json();
        // Serializing a Value of strings cannot fail; compact output is the fallback all the same.
        serde_json::to_string_pretty(&json).unwrap_or_else(|_| json.to_string())
    }
}

impl Serialize for Measurements {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Measurements {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let json = Value::deserialize(deserializer)?;
        Measurements::from_json(&json).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use serde_json::json;

    use super::*;

    fn hex48(byte: &str) -> String {
        byte.repeat(48)
    }

    #[test]
    fn writes_nitro_clis_bytes() {
        let m = Measurements::from_pcrs([(0, [1; 48]), (1, [2; 48]), (2, [3; 48]), (8, [8; 48])]);
        let expected = format!(
            "{{\n  \"Measurements\": {{\n    \"HashAlgorithm\": \"Sha384 {{ ... }}\",\n    \"PCR0\": \"{}\",\n    \"PCR1\": \"{}\",\n    \"PCR2\": \"{}\",\n    \"PCR8\": \"{}\"\n  }}\n}}",
            hex48("01"),
            hex48("02"),
            hex48("03"),
            hex48("08")
        );
        assert_eq!(m.to_json_pretty(), expected);
        assert_eq!(serde_json::to_string_pretty(&m).unwrap(), expected);
    }

    #[test]
    fn keys_sort_as_text_like_nitro_clis_map() {
        let m = Measurements::from_pcrs([(2, [2; 48]), (10, [10; 48])]);
        let text = m.to_json().to_string();
        assert!(text.find("PCR10").unwrap() < text.find("PCR2").unwrap(), "{text}");
    }

    #[test]
    fn reads_what_it_writes_and_what_nitro_cli_writes() {
        let m = Measurements::from_pcrs([(0, [0xab; 48]), (1, [0xcd; 48]), (2, [0xef; 48])]);
        assert_eq!(Measurements::from_json(&m.to_json()).unwrap(), m);
        let parsed: Measurements = serde_json::from_str(&m.to_json_pretty()).unwrap();
        assert_eq!(parsed, m);
        // No HashAlgorithm, and keys that are not PCRs: accepted.
        let loose = json!({"Measurements": {"PCR0": hex48("ab"), "Note": [1, 2]}});
        assert_eq!(Measurements::from_json(&loose).unwrap().pcr(0), Some(&[0xab; 48]));
    }

    #[test]
    fn refusals_name_the_key_at_fault() {
        let refused = |json: Value| Measurements::from_json(&json).unwrap_err().to_string();
        assert!(refused(json!({"PCR0": "00"})).contains("no \"Measurements\" object"));
        assert!(refused(json!({"Measurements": 5})).contains("no \"Measurements\" object"));
        assert_eq!(
            refused(json!({"Measurements": {"HashAlgorithm": "Sha256"}})),
            "HashAlgorithm \"Sha256\" is not SHA-384"
        );
        assert_eq!(refused(json!({"Measurements": {"PCRx": "00"}})), "\"PCRx\" is not a PCR name");
        assert_eq!(refused(json!({"Measurements": {"PCR0": 5}})), "PCR0 is not a string");
        assert!(refused(json!({"Measurements": {"PCR0": "zz"}})).starts_with("PCR0 is not hex: "));
        assert_eq!(refused(json!({"Measurements": {"PCR0": "00"}})), "PCR0 is 1 bytes, not 48");
        assert_eq!(
            refused(json!({"Measurements": {"HashAlgorithm": "Sha384 { ... }"}})),
            "no PCRn entries in \"Measurements\""
        );
        let err = serde_json::from_value::<Measurements>(json!({"Measurements": {}})).unwrap_err();
        assert!(err.to_string().contains("no PCRn entries"), "{err}");
    }
}
