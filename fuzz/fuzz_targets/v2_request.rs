//! Open Inference Protocol (v2) requests: `v2::parse` (JSON alone, or a JSON header and binary tensor
//! data), then `Request::input` on each input, as the enclave does with an opened request. The first
//! input byte chooses: even, the rest is a JSON body; odd, the next two bytes are the
//! `Inference-Header-Content-Length` (big-endian) and the rest is the body.
//!
//! Never panics; a parsed request has 1 to 256 inputs whose binary data, when present, tiles the body
//! after the header exactly; a checked tensor holds exactly as many elements of its datatype as its shape
//! says, within the documented bounds; binary data of a fixed-size datatype is exactly that many bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::v2::{BINARY_DATA_SIZE, Datatype, MAX_ELEMENTS, MAX_RANK, MAX_TENSORS, parse};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let (header_length, body) = if mode & 1 == 1 {
        let Some((len, body)) = rest.split_first_chunk::<2>() else { return };
        (Some(u64::from(u16::from_be_bytes(*len))), body)
    } else {
        (None, rest)
    };
    let Ok(req) = parse(body, header_length) else { return };
    let inputs = &req.header.inputs;
    assert!(!inputs.is_empty() && inputs.len() <= MAX_TENSORS);
    let binary_total: u64 = inputs
        .iter()
        .filter_map(|i| i.parameters.as_ref()?.get(BINARY_DATA_SIZE)?.as_u64())
        .sum();
    match header_length {
        Some(n) => assert_eq!(n + binary_total, body.len() as u64, "binary data does not tile the body"),
        None => assert_eq!(binary_total, 0),
    }
    for (index, input) in inputs.iter().enumerate() {
        let Ok(t) = req.input(index) else { continue };
        assert_eq!(t.name, input.name);
        assert!(t.shape.len() <= MAX_RANK);
        let count = t.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).expect("the shape's product fits");
        assert_eq!(count, t.data.len() as u64);
        assert!(t.data.len() <= MAX_ELEMENTS);
        assert_eq!(t.data.datatype(), t.datatype);
        assert_eq!(t.datatype.as_str(), input.datatype);
        let size = input.parameters.as_ref().and_then(|p| p.get(BINARY_DATA_SIZE)?.as_u64());
        if let (Some(size), Some(each)) = (size, t.datatype.element_size()) {
            assert_eq!(size, count * each as u64);
        }
        if t.datatype == Datatype::Bytes && size.is_some() {
            assert!(size.unwrap() >= 4 * count);
        }
    }
});
