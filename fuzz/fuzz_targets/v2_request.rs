//! Open Inference Protocol (v2) JSON: `v2::parse_request`, then `v2::check_input` on each input, as the
//! enclave does with an opened request. Never panics; a checked tensor holds exactly as many elements of
//! its datatype as its shape says, within the documented bounds.
#![no_main]

use libfuzzer_sys::fuzz_target;
use veil_protocol::v2::{MAX_ELEMENTS, MAX_RANK, MAX_TENSORS, check_input, parse_request};

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_request(data) else { return };
    assert!(!req.inputs.is_empty() && req.inputs.len() <= MAX_TENSORS);
    for input in &req.inputs {
        let Ok(t) = check_input(input) else { continue };
        assert_eq!(t.name, input.name);
        assert!(t.shape.len() <= MAX_RANK);
        let count = t.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d)).expect("the shape's product fits");
        assert_eq!(count, t.data.len() as u64);
        assert!(t.data.len() <= MAX_ELEMENTS);
        assert_eq!(t.data.datatype(), t.datatype);
        assert_eq!(t.datatype.as_str(), input.datatype);
    }
});
