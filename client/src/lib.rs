//! Veil client library (placeholder, being written).
pub mod cli;
