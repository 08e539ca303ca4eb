//! The audit log's records: what the enclave sends the parent, and what the parent appends to its files.
//!
//! A boot's log is one stream of records, an RFC 8742 CBOR sequence (`application/cbor-seq`): each record a
//! two-element array `[kind, bytes]`:
//!
//! ```text
//! record = [1, bstr]   ; the attestation document that certifies the boot's receipt key (record 0)
//!        / [2, bstr]   ; a receipt (COSE_Sign1)
//!        / [3, bstr]   ; a signed tree head (COSE_Sign1) over the receipts before it
//! ```
//!
//! Records are numbered from 0 within their boot; receipts appear in sequence order and a tree head right
//! after the last receipt it covers. The parent stores a boot's stream in rotated files named by the number
//! of their first record; a reader concatenates them in that order. Nothing here trusts the parent: the
//! verifier ([`super::verify::AuditVerifier`]) checks every record against the signatures and the chain.
use super::EvidenceError;
use crate::cbor::{Len, Reader, write_bytes, write_head};

/// Largest record accepted (an attestation document is at most about 16 KiB).
pub const MAX_RECORD_LEN: usize = 64 * 1024;

/// What a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    Attestation,
    Receipt,
    TreeHead,
}

impl RecordKind {
    fn code(self) -> u64 {
        match self {
            RecordKind::Attestation => 1,
            RecordKind::Receipt => 2,
            RecordKind::TreeHead => 3,
        }
    }

    /// The record kind's name, as the verifier's reports print it.
    pub fn label(self) -> &'static str {
        match self {
            RecordKind::Attestation => "attestation document",
            RecordKind::Receipt => "receipt",
            RecordKind::TreeHead => "tree head",
        }
    }
}

/// Appends one record to `out`.
pub fn write_record(out: &mut Vec<u8>, kind: RecordKind, bytes: &[u8]) {
    write_head(out, 4, 2);
    write_head(out, 0, kind.code());
    write_bytes(out, bytes);
}

/// One record, borrowed from the buffer it was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record<'a> {
    pub kind: RecordKind,
    pub bytes: &'a [u8],
}

/// Reads records one after another from a buffer.
#[derive(Debug, Clone)]
pub struct RecordReader<'a> {
    data: &'a [u8],
    pos: usize,
}

/// A record that could not be read: where, and why. `truncated` is set when the data ends inside a record
/// (a file cut short, say by a crash while appending), as opposed to bytes that are not a record at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordError {
    pub offset: usize,
    pub truncated: bool,
    pub error: EvidenceError,
}

impl<'a> RecordReader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        RecordReader { data, pos: 0 }
    }

    /// Where the next record starts.
    pub fn offset(&self) -> usize {
        self.pos
    }

    /// The next record, `None` at the end of the data.
    pub fn next_record(&mut self) -> Option<Result<Record<'a>, RecordError>> {
        if self.pos >= self.data.len() {
            return None;
        }
        let start = self.pos;
        let rest = &self.data[start..];
        let mut r = Reader::new(rest);
        let fail = |reason: String, truncated: bool| {
            Some(Err(RecordError { offset: start, truncated, error: EvidenceError::malformed("log record", reason) }))
        };
        let read = (|| {
            if r.array()? != Len::Definite(2) {
                return Ok(None);
            }
            let code = r.uint()?;
            Ok(Some((code, r.bytes()?)))
        })();
        match read {
            Ok(None) => {
                self.pos = self.data.len();
                fail(
                    format!("a record is a two-element array [kind, bytes]; byte {start} starts something else"),
                    false,
                )
            }
            Ok(Some((code, bytes))) => {
                let kind = match code {
                    1 => RecordKind::Attestation,
                    2 => RecordKind::Receipt,
                    3 => RecordKind::TreeHead,
                    other => {
                        self.pos = self.data.len();
                        return fail(format!("unknown record kind {other} at byte {start}"), false);
                    }
                };
                if bytes.len() > MAX_RECORD_LEN {
                    self.pos = self.data.len();
                    return fail(
                        format!("a record of {} bytes at byte {start}, over {MAX_RECORD_LEN}", bytes.len()),
                        false,
                    );
                }
                self.pos = start + r.offset();
                Some(Ok(Record { kind, bytes }))
            }
            Err(e) => {
                let e: crate::cbor::CborError = e;
                let truncated = e.reason.contains("end of the data") || e.reason.contains("unexpected end");
                // Stop here: nothing after a bad record can be framed reliably.
                self.pos = self.data.len();
                fail(format!("{} at byte {}", e.reason, start + e.offset), truncated)
            }
        }
    }
}

impl<'a> Iterator for RecordReader<'a> {
    type Item = Result<Record<'a>, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        self.next_record()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_a_cut_tail_is_named_truncated() {
        let mut buf = Vec::new();
        write_record(&mut buf, RecordKind::Attestation, &[1; 300]);
        write_record(&mut buf, RecordKind::Receipt, b"r");
        write_record(&mut buf, RecordKind::TreeHead, b"");
        let got: Vec<_> = RecordReader::new(&buf).collect::<Result<_, _>>().unwrap();
        assert_eq!(got.len(), 3);
        assert_eq!((got[0].kind, got[0].bytes.len()), (RecordKind::Attestation, 300));
        assert_eq!((got[1].kind, got[1].bytes), (RecordKind::Receipt, &b"r"[..]));
        for cut in 1..buf.len() {
            let results: Vec<_> = RecordReader::new(&buf[..cut]).collect();
            if let Some(Err(e)) = results.last() {
                assert!(e.truncated, "cut at {cut}: {e:?}");
            }
        }
        let mut bad = buf.clone();
        bad[1] = 9; // kind 9
        let e = RecordReader::new(&bad).next().unwrap().unwrap_err();
        assert!(!e.truncated && e.error.to_string().contains("unknown record kind 9"));
    }
}
