//! What the user gives `veil attest`: document and measurements files, and the flags that say what to
//! expect. All of it is read and validated here, before any network call, and every error names the flag
//! or file and the value at fault.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use base64::Engine as _;
use veil_protocol::attestation::TrustAnchor;
use veil_protocol::time::parse_rfc3339;

use super::VerifyArgs;

/// Largest input file read (a document is at most 16 KiB; base64 makes that about 22 KiB).
const MAX_INPUT_LEN: u64 = 64 * 1024;

/// What `veil attest verify`'s flags require of the document.
pub(super) struct Expectations {
    /// `--measurements` and `--expect-pcr`, merged: index to 48 bytes.
    pub(super) pcrs: BTreeMap<u16, Vec<u8>>,
    /// `--expect-model`: name and SHA-384.
    pub(super) models: Vec<(String, Vec<u8>)>,
    /// `--expect-config`: SHA-384.
    pub(super) config: Option<Vec<u8>>,
    pub(super) at: Option<At>,
    pub(super) max_age: Option<Duration>,
    pub(super) root: Option<TrustAnchor>,
}

impl Expectations {
    /// Reads and checks every flag, in the order `--help` lists them.
    pub(super) fn from_args(args: &VerifyArgs) -> anyhow::Result<Self> {
        let mut pcrs: BTreeMap<u16, Vec<u8>> = BTreeMap::new();
        if let Some(path) = &args.measurements {
            pcrs = veil_client::policy::read_measurements(path)?
                .into_pcrs()
                .into_iter()
                .map(|(i, v)| (i, v.to_vec()))
                .collect();
        }
        for s in &args.expect_pcr {
            let (i, v) = parse_expect_pcr(s)?;
            if let Some(prev) = pcrs.get(&i)
                && *prev != v
            {
                bail!("--expect-pcr {i}=... contradicts PCR{i} of the measurements file ({})", hex::encode(prev));
            }
            pcrs.insert(i, v);
        }
        let models = args.expect_model.iter().map(|s| parse_expect_model(s)).collect::<anyhow::Result<_>>()?;
        let config = args.expect_config.as_deref().map(parse_expect_config).transpose()?;
        let at = args.at.as_deref().map(parse_at).transpose()?;
        let max_age = args.max_age.as_deref().map(parse_duration).transpose()?;
        let root = match &args.root {
            Some(path) => {
                let pem = read_input(path)?;
                Some(TrustAnchor::from_pem(&pem).with_context(|| format!("--root {}", path.display()))?)
            }
            None => None,
        };
        Ok(Expectations { pcrs, models, config, at, max_age, root })
    }
}

/// A file, or standard input for `-`, of at most [`MAX_INPUT_LEN`] bytes: anything larger is not an input
/// of `veil attest`.
pub(super) fn read_input(path: &Path) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    if path == Path::new("-") {
        std::io::stdin().take(MAX_INPUT_LEN + 1).read_to_end(&mut buf).context("reading standard input")?;
    } else {
        let file = std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        file.take(MAX_INPUT_LEN + 1)
            .read_to_end(&mut buf)
            .with_context(|| format!("cannot read {}", path.display()))?;
    }
    if buf.len() as u64 > MAX_INPUT_LEN {
        bail!("{} is larger than {MAX_INPUT_LEN} bytes: not an attestation document", path.display());
    }
    Ok(buf)
}

/// Raw CBOR (starts with a 4-element array or tag 18), or else hex, or else base64 (standard or URL-safe,
/// padded or not), ignoring whitespace.
pub(super) fn decode_input(input: &[u8]) -> anyhow::Result<Vec<u8>> {
    match input.first() {
        None => bail!("the input is empty"),
        Some(0x84 | 0x9f | 0xd2) => return Ok(input.to_vec()),
        _ => {}
    }
    let text: String = std::str::from_utf8(input)
        .map_err(|_| anyhow!("the input is neither CBOR (COSE_Sign1), hex nor base64"))?
        .split_whitespace()
        .collect();
    if text.len().is_multiple_of(2)
        && text.bytes().all(|b| b.is_ascii_hexdigit())
        && let Ok(b) = hex::decode(&text)
    {
        return Ok(b);
    }
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        if let Ok(b) = engine.decode(&text) {
            return Ok(b);
        }
    }
    bail!("the input is neither CBOR (COSE_Sign1), hex nor base64")
}

/// `--at`: a time, or the document's own timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum At {
    Millis(u64),
    Document,
}

fn parse_at(s: &str) -> anyhow::Result<At> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("document") || s.eq_ignore_ascii_case("doc") {
        return Ok(At::Document);
    }
    if let Some(secs) = s.strip_prefix('@') {
        let (whole, frac) = secs.split_once('.').unwrap_or((secs, ""));
        let whole: u64 = whole.parse().map_err(|_| anyhow!("--at {s:?}: expected @UNIX_SECONDS"))?;
        let ms = parse_fraction_ms(frac).ok_or_else(|| anyhow!("--at {s:?}: bad fraction"))?;
        return whole
            .checked_mul(1000)
            .and_then(|v| v.checked_add(ms))
            .map(At::Millis)
            .ok_or_else(|| anyhow!("--at {s:?} is out of range"));
    }
    let since_epoch = parse_rfc3339(s).map_err(|_| {
        anyhow!("--at {s:?}: expected RFC 3339 (2025-01-06T16:07:05Z or with +01:00), @UNIX_SECONDS, or 'document'")
    })?;
    u64::try_from(since_epoch.as_millis()).map(At::Millis).map_err(|_| anyhow!("--at {s:?} is out of range"))
}

fn parse_fraction_ms(frac: &str) -> Option<u64> {
    if frac.is_empty() {
        return Some(0);
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let padded = format!("{frac:0<3}");
    padded.get(..3)?.parse().ok()
}

fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n.parse().map_err(|_| anyhow!("--max-age {s:?}: expected a number with a unit, e.g. 30s, 5m, 2h"))?;
    let ms = match unit.trim() {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" | "min" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        other => bail!("--max-age {s:?}: unknown unit {other:?} (use ms, s, m, h or d)"),
    };
    ms.map(Duration::from_millis).ok_or_else(|| anyhow!("--max-age {s:?} is too large"))
}

fn parse_expect_pcr(s: &str) -> anyhow::Result<(u16, Vec<u8>)> {
    let (i, v) = s.split_once('=').ok_or_else(|| anyhow!("--expect-pcr {s:?}: expected N=HEX, e.g. 0=f4d48b81..."))?;
    let i: u16 = i
        .trim()
        .trim_start_matches("PCR")
        .parse()
        .map_err(|_| anyhow!("--expect-pcr {s:?}: {i:?} is not a PCR number"))?;
    let v = hex::decode(v.trim()).map_err(|e| anyhow!("--expect-pcr {s:?}: the value is not hex: {e}"))?;
    if v.len() != 48 {
        bail!("--expect-pcr {s:?}: the value is {} bytes; a SHA-384 PCR is 48 bytes (96 hex digits)", v.len());
    }
    Ok((i, v))
}

/// `--nonce`: hex, at most the 1024 bytes an NSM accepts.
pub(super) fn parse_nonce(h: &str) -> anyhow::Result<Vec<u8>> {
    let n = hex::decode(h.trim()).map_err(|e| anyhow!("--nonce {h:?} is not hex: {e}"))?;
    if n.len() > 1024 {
        bail!("--nonce is {} bytes; the NSM accepts at most 1024", n.len());
    }
    Ok(n)
}

fn parse_expect_model(s: &str) -> anyhow::Result<(String, Vec<u8>)> {
    let (name, digest) = s.split_once('=').ok_or_else(|| anyhow!("--expect-model {s:?}: expected NAME=SHA384HEX"))?;
    let digest = hex::decode(digest.trim()).map_err(|e| anyhow!("--expect-model {s:?}: the digest is not hex: {e}"))?;
    if digest.len() != 48 {
        bail!("--expect-model {s:?}: the digest is {} bytes; SHA-384 is 48 bytes (96 hex digits)", digest.len());
    }
    Ok((name.trim().to_owned(), digest))
}

fn parse_expect_config(h: &str) -> anyhow::Result<Vec<u8>> {
    match hex::decode(h.trim()) {
        Ok(d) if d.len() == 48 => Ok(d),
        Ok(d) => Err(anyhow!("--expect-config: {} bytes; SHA-384 is 48 bytes (96 hex digits)", d.len())),
        Err(e) => Err(anyhow!("--expect-config {h:?} is not hex: {e}")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn parses_times() {
        assert_eq!(parse_at("2025-01-06T16:07:05.472Z").unwrap(), At::Millis(1_736_179_625_472));
        assert_eq!(parse_at("2025-01-06T17:07:05.472+01:00").unwrap(), At::Millis(1_736_179_625_472));
        assert_eq!(parse_at("@1736179625.472").unwrap(), At::Millis(1_736_179_625_472));
        assert_eq!(parse_at("@1736179625").unwrap(), At::Millis(1_736_179_625_000));
        assert_eq!(parse_at("document").unwrap(), At::Document);
        assert!(parse_at("yesterday").is_err());
        assert!(parse_at("2025-13-06T16:07:05Z").is_err());
        assert!(parse_at("2025-01-06T16:07:05").is_err());
    }

    #[test]
    fn parses_durations_and_pcrs() {
        assert_eq!(parse_duration("5m").unwrap(), Duration::from_secs(300));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("30").unwrap(), Duration::from_secs(30));
        assert!(parse_duration("5 parsecs").is_err());
        let (i, v) = parse_expect_pcr(&format!("PCR8={}", "ab".repeat(48))).unwrap();
        assert_eq!((i, v.len()), (8, 48));
        assert!(parse_expect_pcr("0=abcd").unwrap_err().to_string().contains("48 bytes"));
        assert!(parse_expect_pcr("zero=ab").is_err());
    }

    #[test]
    fn detects_input_encodings() {
        let raw = vec![0x84, 0x44, 0xa1, 0x01];
        assert_eq!(decode_input(&raw).unwrap(), raw);
        assert_eq!(decode_input(b"8444a101\n").unwrap(), raw);
        assert_eq!(decode_input(b"hEShAQ==").unwrap(), raw);
        assert_eq!(decode_input(b"hEShAQ").unwrap(), raw);
        assert!(decode_input(b"").is_err());
        assert!(decode_input(b"not a document!").is_err());
    }
}
