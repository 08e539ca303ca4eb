//! How much memory to give an enclave, from the EIF and the models it will load.
//!
//! An enclave has no disk: everything it holds lives in the memory `nitro-cli run-enclave
//! --memory` gives it, and that memory is carved out of the parent instance at boot by the
//! allocator (`/etc/nitro_enclaves/allocator.yaml`). Too little and the enclave dies with an
//! out-of-memory kill in the middle of loading a model; too much and the parent starves. The
//! estimate below is deliberately simple so that an operator can redo it by hand:
//!
//! - **nitro-cli's floor**: `run-enclave` refuses less than four times the EIF's size (error E26).
//! - **the image**: the ramdisks are unpacked into an in-memory root filesystem, so count the EIF
//!   twice (packed while booting, unpacked afterwards).
//! - **each model**: its bytes arrive from the parent and are decrypted in place (1x, held until
//!   every session is built), ONNX Runtime holds a transient copy while it builds a session (about
//!   1x), and every session keeps its own copy of the weights (1x per session; the enclave runs
//!   one session per vCPU by default): `model x (2 + sessions)`. Measured (docs/RELIABILITY.md §7,
//!   scripts/startup.sh): a 576 MiB FP32 model with 2 sessions peaks at 3.9x its size, 2.1x once
//!   loaded. Quantized models can hold more per session than their file (ONNX Runtime unpacks
//!   their weights: MiniLM int8, 22 MiB, holds about 125 MiB a session), which the 512 MiB below
//!   covers for small models; measure large quantized ones.
//! - **the rest**: 512 MiB for the kernel, the runtime, buffers and headroom.
//!
//! The result is rounded up to a multiple of 256 MiB. Models are kept outside the EIF on purpose
//! (they would otherwise count against the image, change PCR0/PCR2 with every model update, and
//! be readable by anyone holding the EIF), which is why they are a separate input here.

use serde::Serialize;

const MIB: u64 = 1024 * 1024;
/// nitro-cli's `run-enclave` requires at least this many times the EIF size.
pub const NITRO_CLI_EIF_FACTOR: u64 = 4;
/// Fixed allowance for the kernel, the enclave runtime and headroom, MiB.
pub const BASE_OVERHEAD_MIB: u64 = 512;
/// Granularity of the recommendation, MiB.
pub const ROUND_MIB: u64 = 256;

/// A memory recommendation and how it was reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sizing {
    /// Memory to pass to `nitro-cli run-enclave --memory`, MiB.
    pub memory_mib: u64,
    /// The least nitro-cli accepts for this EIF (4x its size), MiB.
    pub nitro_cli_minimum_mib: u64,
    /// The EIF's size, MiB (rounded up).
    pub eif_mib: u64,
    /// Sum of the model sizes, MiB (rounded up).
    pub models_mib: u64,
    /// ONNX Runtime sessions per model assumed (the enclave's default is one per vCPU).
    pub sessions: u64,
    /// vCPUs to pass to `--cpu-count`.
    pub cpus: u64,
    /// The estimate before rounding: `2 x eif + models x (2 + sessions) + 512`, MiB.
    pub estimate_mib: u64,
}

fn mib_ceil(bytes: u64) -> u64 {
    bytes.div_ceil(MIB)
}

/// Recommends enclave memory for an EIF of `eif_bytes` serving models of `model_bytes`, on
/// `cpus` vCPUs with `sessions` ONNX Runtime sessions per model. Saturates instead of
/// overflowing on absurd inputs.
pub fn recommend_memory(eif_bytes: u64, model_bytes: &[u64], cpus: u64, sessions: u64) -> Sizing {
    let eif_mib = mib_ceil(eif_bytes);
    let models_mib = model_bytes.iter().fold(0u64, |acc, b| acc.saturating_add(mib_ceil(*b)));
    let floor = eif_mib.saturating_mul(NITRO_CLI_EIF_FACTOR);
    let estimate = eif_mib
        .saturating_mul(2)
        .saturating_add(models_mib.saturating_mul(sessions.saturating_add(2)))
        .saturating_add(BASE_OVERHEAD_MIB);
    let wanted = floor.max(estimate);
    let memory_mib = wanted.div_ceil(ROUND_MIB).saturating_mul(ROUND_MIB);
    Sizing { memory_mib, nitro_cli_minimum_mib: floor, eif_mib, models_mib, sessions, cpus, estimate_mib: estimate }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_image_small_model_gets_the_overhead_rounded_up() {
        // 30 MiB EIF, iris (1 KiB), 2 vCPUs/sessions: 60 + 1*4 + 512 = 576 -> 768; floor 120.
        let s = recommend_memory(30 * MIB, &[1024], 2, 2);
        assert_eq!(s.eif_mib, 30);
        assert_eq!(s.models_mib, 1);
        assert_eq!(s.estimate_mib, 576);
        assert_eq!(s.memory_mib, 768);
        assert_eq!(s.nitro_cli_minimum_mib, 120);
    }

    #[test]
    fn models_scale_with_sessions() {
        // 100 MiB EIF, a 23 MiB model, 4 sessions: 200 + 23*6 + 512 = 850 -> 1024.
        let s = recommend_memory(100 * MIB, &[23 * MIB], 4, 4);
        assert_eq!(s.estimate_mib, 850);
        assert_eq!(s.memory_mib, 1024);
        // A 2 GiB model with 2 sessions: 200 + 2048*4 + 512 = 8904 -> 35 * 256 = 8960.
        let s = recommend_memory(100 * MIB, &[2048 * MIB], 2, 2);
        assert_eq!(s.memory_mib, 8960);
    }

    #[test]
    fn nitro_cli_floor_wins_for_large_images() {
        // 600 MiB EIF, no model: floor 2400 > 1200 + 512 -> 2560.
        let s = recommend_memory(600 * MIB, &[], 2, 2);
        assert_eq!(s.nitro_cli_minimum_mib, 2400);
        assert_eq!(s.memory_mib, 2560);
        assert!(s.memory_mib >= s.nitro_cli_minimum_mib);
    }

    #[test]
    fn absurd_inputs_saturate() {
        let s = recommend_memory(u64::MAX, &[u64::MAX, u64::MAX], u64::MAX, u64::MAX);
        assert!(s.memory_mib >= s.nitro_cli_minimum_mib);
    }
}
