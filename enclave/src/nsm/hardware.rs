//! The real NSM, through `aws-nitro-enclaves-nsm-api`'s driver (`/dev/nsm`, one ioctl per request).
//!
//! The crate's driver functions are safe to call (its ioctl `unsafe` lives inside the crate), so this
//! module has no `unsafe` of its own. The device serialises requests in the kernel driver, so one
//! descriptor is shared by all threads.

use aws_nitro_enclaves_nsm_api::api::{Request, Response};
use aws_nitro_enclaves_nsm_api::driver::{nsm_exit, nsm_init, nsm_process_request};
use serde_bytes::ByteBuf;

use super::{Nsm, NsmError, check_fields};

/// `/dev/nsm`, opened once and closed on drop.
#[derive(Debug)]
pub struct HardwareNsm {
    fd: i32,
}

impl HardwareNsm {
    /// Opens `/dev/nsm`. Fails outside a Nitro Enclave.
    pub fn open() -> Result<Self, NsmError> {
        let fd = nsm_init();
        if fd < 0 {
            return Err(NsmError::Unavailable);
        }
        Ok(HardwareNsm { fd })
    }

    fn request(&self, request: Request) -> Response {
        nsm_process_request(self.fd, request)
    }
}

impl Drop for HardwareNsm {
    fn drop(&mut self) {
        nsm_exit(self.fd);
    }
}

impl Nsm for HardwareNsm {
    fn attestation(
        &self,
        user_data: Option<&[u8]>,
        nonce: Option<&[u8]>,
        public_key: Option<&[u8]>,
    ) -> Result<Vec<u8>, NsmError> {
        check_fields(user_data, nonce, public_key)?;
        let buf = |v: Option<&[u8]>| v.map(|b| ByteBuf::from(b.to_vec()));
        match self.request(Request::Attestation {
            user_data: buf(user_data),
            nonce: buf(nonce),
            public_key: buf(public_key),
        }) {
            Response::Attestation { document } => Ok(document),
            Response::Error(code) => Err(NsmError::Device(format!("{code:?}"))),
            _ => Err(NsmError::UnexpectedResponse("Attestation")),
        }
    }

    fn random(&self, buf: &mut [u8]) -> Result<(), NsmError> {
        // GetRandom returns up to 256 bytes per call; loop until the buffer is full.
        let mut filled = 0;
        while filled < buf.len() {
            match self.request(Request::GetRandom) {
                Response::GetRandom { random } if !random.is_empty() => {
                    let n = random.len().min(buf.len() - filled);
                    buf[filled..filled + n].copy_from_slice(&random[..n]);
                    filled += n;
                }
                Response::GetRandom { .. } => return Err(NsmError::Random),
                Response::Error(code) => return Err(NsmError::Device(format!("{code:?}"))),
                _ => return Err(NsmError::UnexpectedResponse("GetRandom")),
            }
        }
        Ok(())
    }

    fn describe_pcr(&self, index: u16) -> Result<Vec<u8>, NsmError> {
        if index > 31 {
            return Err(NsmError::PcrIndex(index));
        }
        match self.request(Request::DescribePCR { index }) {
            Response::DescribePCR { data, .. } => Ok(data),
            Response::Error(code) => Err(NsmError::Device(format!("{code:?}"))),
            _ => Err(NsmError::UnexpectedResponse("DescribePCR")),
        }
    }

    fn is_mock(&self) -> bool {
        false
    }
}
