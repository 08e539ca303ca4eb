// Test-vector generator: AWS's own EIF builder and reader (aws-nitro-enclaves-image-format 0.2.0,
// which needs OpenSSL), used as an oracle for veil-eif. Not part of the workspace; see ../README.md.
use aws_nitro_enclaves_image_format::defs::{EifBuildInfo, EifIdentityInfo};
use aws_nitro_enclaves_image_format::utils::eif_reader::EifReader;
use aws_nitro_enclaves_image_format::utils::{get_pcrs, EifBuilder, SignEnclaveInfo};
use sha2::{Digest, Sha384};
use std::path::Path;

fn main() {
    let a: Vec<String> = std::env::args().collect();
    match a[1].as_str() {
        // build OUT KERNEL CMDLINE BUILD_TIME [--sign KEY CERT] RAMDISK...
        "build" => {
            let mut rest = &a[6..];
            let mut sign = None;
            if rest.first().map(|s| s.as_str()) == Some("--sign") {
                sign = Some(SignEnclaveInfo::new(&rest[2], &rest[1]).unwrap());
                rest = &rest[3..];
            }
            let info = EifIdentityInfo {
                img_name: "veil-enclave".into(),
                img_version: "1.0".into(),
                build_info: EifBuildInfo {
                    build_time: a[5].clone(),
                    build_tool: "veil eif build".into(),
                    build_tool_version: "0.1.0".into(),
                    img_os: "Linux".into(),
                    img_kernel: "unknown".into(),
                },
                docker_info: serde_json::Value::Null,
                custom_info: serde_json::Value::Null,
            };
            let mut b = EifBuilder::new(Path::new(&a[3]), a[4].clone(), sign, Sha384::new(), 0, info);
            for r in rest {
                b.add_ramdisk(Path::new(r));
            }
            let mut f = std::fs::File::create(&a[2]).unwrap();
            let m = b.write_to(&mut f);
            println!("{}", serde_json::to_string(&m).unwrap());
        }
        "read" => {
            let mut r = EifReader::from_eif(a[2].clone()).unwrap();
            let signed = r.signature_section.is_some();
            let m = get_pcrs(&mut r.image_hasher, &mut r.bootstrap_hasher, &mut r.app_hasher, &mut r.cert_hasher, Sha384::new(), signed).unwrap();
            let crc = r.check_crc();
            let sig = if r.signature_section.is_some() {
                r.get_certificate_info(m.clone()).map(|_| r.sign_check).unwrap_or(Some(false))
            } else {
                None
            };
            println!("{}", serde_json::json!({"m": m, "crc_ok": crc, "sign_check": sig}));
        }
        _ => panic!(),
    }
}
