//! Writing DER (X.690): the one primitive Veil's hand-built ASN.1 needs.
//!
//! Two places assemble ASN.1 by hand from fixed templates: `veil-eif` wraps a SEC1 P-384 key in PKCS#8 for
//! ring, and the mock KMS lays out KMS's CMS EnvelopedData. Both only ever need a definite-length
//! tag-length-value with the shortest length encoding, which is what DER requires (X.690 §10.1). Reading
//! DER is not done here: certificates go through `x509-parser`.

/// `tag || length || content`, the length in DER's shortest form: one byte below 128, else `0x80 | n`
/// followed by the `n` big-endian bytes of the length, without leading zeros.
pub fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    let len = content.len();
    let len_bytes = len.to_be_bytes();
    let significant = &len_bytes[len_bytes.iter().take_while(|b| **b == 0).count()..];
    let mut out = Vec::with_capacity(content.len() + 2 + significant.len());
    out.push(tag);
    match u8::try_from(len) {
        Ok(short) if short < 0x80 => out.push(short),
        // At most size_of::<usize>() (8) length bytes, so the count fits the 7 bits it has.
        _ => {
            out.push(0x80 | significant.len() as u8);
            out.extend_from_slice(significant);
        }
    }
    out.extend_from_slice(content);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_use_the_shortest_form() {
        assert_eq!(tlv(0x05, &[]), [0x05, 0x00]);
        assert_eq!(tlv(0x04, &[7; 0x7f])[..2], [0x04, 0x7f]);
        assert_eq!(tlv(0x04, &[0; 0x80])[..3], [0x04, 0x81, 0x80]);
        assert_eq!(tlv(0x04, &[0; 0xff])[..3], [0x04, 0x81, 0xff]);
        assert_eq!(tlv(0x04, &[0; 0x100])[..4], [0x04, 0x82, 0x01, 0x00]);
        assert_eq!(tlv(0x04, &[0; 0xffff])[..4], [0x04, 0x82, 0xff, 0xff]);
        assert_eq!(tlv(0x04, &[0; 0x1_0000])[..5], [0x04, 0x83, 0x01, 0x00, 0x00]);
    }

    #[test]
    fn content_follows_the_header_unchanged() {
        let out = tlv(0x30, &tlv(0x02, &[0x01]));
        assert_eq!(out, [0x30, 0x03, 0x02, 0x01, 0x01]);
        let long = tlv(0x04, &[0xab; 300]);
        assert_eq!(long.len(), 4 + 300);
        assert!(long[4..].iter().all(|b| *b == 0xab));
    }
}
