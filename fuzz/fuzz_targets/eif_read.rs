//! The EIF reader (`veil_eif::read_eif`), on hostile bytes: auditors and operators measure images they
//! did not build. Never panics; an image that reads is laid out as its section table says, with nothing
//! after the last section; and reading it through a reader that returns a few bytes at a time gives the
//! same result as reading it from one slice.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use veil_eif::{SectionKind, read_eif, read_eif_bytes};

/// A reader that hands out at most `step` bytes per call, as a pipe or socket might.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl Read for Trickle<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = buf.len().min(self.step).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let whole = read_eif_bytes(data);
    let trickled = read_eif(Trickle { data, step: 1 + data.len() % 7 });
    match (&whole, &trickled) {
        (Ok(a), Ok(b)) => {
            assert_eq!(a.measurements, b.measurements);
            assert_eq!(a.total_size, b.total_size);
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("slice and trickle readers disagree: {:?} vs {:?}", whole.is_ok(), trickled.is_ok()),
    }
    let Ok(info) = whole else { return };
    assert_eq!(info.total_size, data.len() as u64);
    assert_eq!(info.sections.first().map(|s| s.kind), Some(SectionKind::Kernel));
    assert_eq!(info.sections.get(1).map(|s| s.kind), Some(SectionKind::Cmdline));
    assert!(info.sections.iter().any(|s| s.kind == SectionKind::Ramdisk));
    let mut next = info.sections[0].offset;
    for s in &info.sections {
        assert_eq!(s.offset, next, "sections are contiguous");
        next = s.offset + 12 + s.size;
    }
    assert_eq!(next, info.total_size);
    assert_eq!(info.signature.is_some(), info.measurements.pcr(8).is_some());
});
