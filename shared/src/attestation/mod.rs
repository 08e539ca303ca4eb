//! Attestation document verification (being written).
