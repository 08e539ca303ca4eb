//! The report and the document, as text for people or as JSON for scripts.
//!
//! Everything printed that came from a document goes through [`clean`] first, so that a hostile document
//! cannot drive the terminal. The JSON shapes are an interface: scripts read `verified`, `report.checks`
//! and the `document` fields by name.

use std::collections::BTreeMap;

use anyhow::Context;
use serde_json::json;
use veil_protocol::attestation::{
    CheckStatus, Rejected, Report, UnverifiedDocument, UserDataCommitment, VerifiedDocument,
};
use veil_protocol::time::{format_unix_millis, format_unix_seconds};

/// Prints the outcome of `veil attest verify`: the report, then the verified document (if it verified).
pub(super) fn verification(
    outcome: &Result<VerifiedDocument, Rejected>,
    as_json: bool,
    at_document: bool,
) -> anyhow::Result<()> {
    let (report, doc) = match outcome {
        Ok(doc) => (doc.report(), Some(doc)),
        Err(rejected) => (&*rejected.report, None),
    };
    report_and_document(report, doc, as_json, at_document)
}

/// Prints a report, then the verified document (if there is one): as [`verification`] does.
pub(crate) fn report_and_document(
    report: &Report,
    doc: Option<&VerifiedDocument>,
    as_json: bool,
    at_document: bool,
) -> anyhow::Result<()> {
    if as_json {
        let out = json!({
            "verified": report.verified,
            "report": report,
            "document": doc.map(document_json),
        });
        println!("{}", serde_json::to_string_pretty(&out).context("serializing the report")?);
    } else {
        print_report(report, at_document);
        if let Some(doc) = doc {
            print_verified(doc);
        }
    }
    Ok(())
}

fn print_report(report: &Report, at_document: bool) {
    println!(
        "Verification at {}{} against {} (SHA-256 {})",
        report.at,
        if at_document { " (the document's own timestamp)" } else { "" },
        clean(&report.root),
        report.root_sha256
    );
    for c in &report.checks {
        let tag = match c.status {
            CheckStatus::Passed => "PASS",
            CheckStatus::Failed => "FAIL",
            CheckStatus::Skipped => "skip",
        };
        println!("  {tag}  {:<11} {}", c.name, clean(&c.detail));
    }
    println!("{}", if report.verified { "VERIFIED: every check passed" } else { "NOT VERIFIED" });
}

fn print_verified(doc: &VerifiedDocument) {
    println!("  module      {}", doc.module_id());
    println!("  timestamp   {}", format_unix_millis(doc.timestamp_ms()));
    for i in [0u8, 1, 2, 3, 4, 8] {
        if let Some(v) = doc.pcr(i) {
            println!("  PCR{i:<2}       {}", hex::encode(v));
        }
    }
    if let Some(ud) = doc.user_data() {
        print_user_data(ud);
    }
}

fn print_user_data(ud: &[u8]) {
    match UserDataCommitment::decode(ud) {
        Ok(c) => {
            println!("  user_data   Veil commitment v3:");
            println!(
                "    ohttp_keys_sha384         {}",
                c.ohttp_keys_sha384.map(hex::encode).unwrap_or_else(|| "none".into())
            );
            println!(
                "    receipt key (Ed25519)     {}",
                c.receipt_key.map(hex::encode).unwrap_or_else(|| "none (receipts off)".into())
            );
            println!(
                "    recipient RSA SPKI SHA-384 {}",
                c.recipient_rsa_spki_sha384.map(hex::encode).unwrap_or_else(|| "none".into())
            );
            for m in &c.models {
                println!("    model {:<20} SHA-384 {}", m.name, hex::encode(m.sha384));
            }
            println!("    config SHA-384            {}", hex::encode(c.config_sha384));
        }
        Err(_) => println!("  user_data   {} bytes: {}", ud.len(), hex::encode(ud)),
    }
}

fn document_json(doc: &VerifiedDocument) -> serde_json::Value {
    let c = doc.claims();
    json!({
        "module_id": c.module_id,
        "timestamp_ms": c.timestamp_ms,
        "timestamp": format_unix_millis(c.timestamp_ms),
        "debug_mode": doc.is_debug(),
        "pcrs": c.pcrs.iter().map(|(i, v)| (i.to_string(), hex::encode(v))).collect::<BTreeMap<_, _>>(),
        "public_key": c.public_key.as_ref().map(hex::encode),
        "user_data": c.user_data.as_ref().map(hex::encode),
        "commitment": c.user_data.as_deref().and_then(|u| UserDataCommitment::decode(u).ok()).map(|c| c.to_json()),
        "nonce": c.nonce.as_ref().map(hex::encode),
        "certificates": doc.certificates(),
    })
}

/// Prints a decoded document for `veil attest show`, `bytes` long, loudly marked as not verified.
pub(super) fn document(bytes: &[u8], doc: &UnverifiedDocument, as_json: bool) -> anyhow::Result<()> {
    let c = doc.unverified_claims();
    let certs = doc.certificates();
    if as_json {
        let out = json!({
            "verified": false,
            "note": "decoded only, NOT verified: use `veil attest verify`",
            "tagged": doc.is_tagged(),
            "module_id": c.module_id,
            "digest": c.digest,
            "timestamp_ms": c.timestamp_ms,
            "timestamp": format_unix_millis(c.timestamp_ms),
            "debug_mode": doc.is_debug(),
            "pcrs": c.pcrs.iter().map(|(i, v)| (i.to_string(), hex::encode(v))).collect::<BTreeMap<_, _>>(),
            "certificates": certs.iter().map(|r| match r {
                Ok(s) => serde_json::to_value(s).unwrap_or(serde_json::Value::Null),
                Err(e) => json!({"error": e.to_string()}),
            }).collect::<Vec<_>>(),
            "public_key": c.public_key.as_ref().map(hex::encode),
            "user_data": c.user_data.as_ref().map(hex::encode),
            "commitment": c.user_data.as_deref().and_then(|u| UserDataCommitment::decode(u).ok()).map(|c| c.to_json()),
            "nonce": c.nonce.as_ref().map(hex::encode),
        });
        println!("{}", serde_json::to_string_pretty(&out).context("serializing")?);
        return Ok(());
    }
    println!(
        "Attestation document ({} bytes, COSE_Sign1 {}) -- NOT VERIFIED: check it with `veil attest verify`",
        bytes.len(),
        if doc.is_tagged() { "tagged" } else { "untagged" }
    );
    println!("  module      {}", c.module_id);
    println!("  timestamp   {} ({} ms)", format_unix_millis(c.timestamp_ms), c.timestamp_ms);
    println!("  digest      {}", c.digest);
    println!("  debug mode  {}", if doc.is_debug() { "YES (PCR0, PCR1, PCR2 are zero)" } else { "no" });
    println!("  PCRs");
    for (i, v) in &c.pcrs {
        println!("    {i:>2}  {}", hex::encode(v));
    }
    println!("  certificates (root first)");
    for (i, cert) in certs.iter().enumerate() {
        match cert {
            Ok(s) => {
                println!("    [{i}] {:<15} {}", s.role, clean(&s.subject));
                println!(
                    "        valid {} to {}   SHA-256 {}",
                    format_unix_seconds(s.not_before),
                    format_unix_seconds(s.not_after),
                    s.sha256
                );
            }
            Err(e) => println!("    [{i}] unparsable: {}", clean(&e.to_string())),
        }
    }
    let opt = |name: &str, v: &Option<Vec<u8>>| match v {
        None => println!("  {name:<11} none"),
        Some(b) => println!("  {name:<11} {} bytes: {}", b.len(), hex::encode(b)),
    };
    opt("public_key", &c.public_key);
    match &c.user_data {
        Some(ud) => print_user_data(ud),
        None => println!("  user_data   none"),
    }
    opt("nonce", &c.nonce);
    Ok(())
}

/// Escapes control characters in text that came from a document, so that it cannot drive the terminal.
pub(crate) fn clean(s: &str) -> String {
    s.chars().flat_map(|c| if c.is_control() { c.escape_debug().collect::<Vec<_>>() } else { vec![c] }).collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cleans_control_characters() {
        assert_eq!(clean("CN=a\u{1b}[31mb"), "CN=a\\u{1b}[31mb");
    }
}
