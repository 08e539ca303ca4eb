//! The document's bytes: from a file, or from a running Veil parent asked for a fresh one with a nonce.
//!
//! `--url` is the one network call of `veil attest`; it runs on a current-thread runtime of its own, since
//! the rest of the CLI is synchronous. A server that cannot be reached or answers with an error is reported
//! here, with its exit code, so that the callers only ever see a document or an exit.

use std::process::ExitCode;

use anyhow::{Context, anyhow, bail};
use veil_protocol::random;

use super::SourceArgs;
use super::input::{decode_input, parse_nonce, read_input};
use crate::cli::{EXIT_CONNECT, EXIT_FAILED};

/// Nonce size when `--url` is used without `--nonce`.
const NONCE_LEN: usize = 32;

/// The document's bytes, and the nonce to require (if any).
pub(super) enum Fetched {
    Document {
        bytes: Vec<u8>,
        nonce: Option<Vec<u8>>,
    },
    /// Already reported; exit with this code.
    Exit(ExitCode),
}

pub(super) fn fetch(source: &SourceArgs) -> anyhow::Result<Fetched> {
    let nonce = source.nonce.as_deref().map(parse_nonce).transpose()?;
    match (&source.file, &source.url) {
        (Some(path), None) => Ok(Fetched::Document { bytes: decode_input(&read_input(path)?)?, nonce }),
        (None, Some(url)) => {
            let nonce = match nonce {
                Some(n) => n,
                None => random_nonce()?,
            };
            let client = veil_client::Client::new(url).map_err(|e| anyhow!("{e}"))?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            match runtime.block_on(client.attestation(&nonce)) {
                Ok(body) => {
                    let bytes = decode_input(&body).with_context(|| format!("the answer of {url}"))?;
                    Ok(Fetched::Document { bytes, nonce: Some(nonce) })
                }
                Err(e) if e.is_connection() => {
                    eprintln!(
                        "veil attest: {e}\nIs the server running? Check the URL (http://HOST:PORT of the Veil parent)."
                    );
                    Ok(Fetched::Exit(ExitCode::from(EXIT_CONNECT)))
                }
                Err(e) => {
                    eprintln!("veil attest: {e}");
                    Ok(Fetched::Exit(ExitCode::from(EXIT_FAILED)))
                }
            }
        }
        _ => bail!("give either a document FILE or --url, not both"),
    }
}

fn random_nonce() -> anyhow::Result<Vec<u8>> {
    let nonce: [u8; NONCE_LEN] = random::array(&random::SystemRandom::new())
        .map_err(|_| anyhow!("the system random number generator failed"))?;
    Ok(nonce.to_vec())
}
