//! Writes the seed corpus of the fuzz targets that take Veil's own formats: real frames and link messages,
//! real sealed requests and answers (under the fixture key of `src/lib.rs`), padded plaintexts, the v2
//! request bodies of `examples/` and `tests/data/references`, a real encrypted model file, EIFs (one
//! built here with veil-eif's builder from small stand-in blobs, plus the images of `eif/tests/data`), and
//! for attested-key mode, real encapsulated OHTTP requests and responses (RFC 9458's worked example and
//! Veil's, under the fixture gateway keys), the gateways' key lists, and Binary HTTP messages of both
//! framings (Veil's, RFC 9458's and the `bhttp` crate's).
//!
//!     cargo run --manifest-path fuzz/Cargo.toml --example make_corpus -- REPO_ROOT CORPUS_DIR
//!
//! scripts/fuzz.sh runs it before fuzzing. Each seed is named by what it is; rerunning overwrites them with
//! the same bytes (everything here is deterministic).
use std::path::{Path, PathBuf};

use serde_bytes::ByteBuf;
use veil_eif::{BuildInfo, EifBuilder, EifIdentity};
use veil_fuzz::{
    data_key, model_file, model_plaintext, ohttp_exchanges, ohttp_gateways, rfc9458, seal_request, sealed_answer, unhex,
};
use veil_protocol::attestation::{ModelDigest, UserDataCommitment};
use veil_protocol::envelope::RequestMeta;
use veil_protocol::error::{ErrorKind, ErrorReply};
use veil_protocol::frame::{self, DEFAULT_MAX_FRAME};
use veil_protocol::message::{EnclaveRequest, EnclaveResponse, HostRequest, HostResponse, encode};
use veil_protocol::model_file::read_header;
use veil_protocol::pad;

struct Corpus(PathBuf);

impl Corpus {
    fn put(&self, target: &str, name: &str, bytes: &[u8]) {
        let dir = self.0.join(target);
        std::fs::create_dir_all(&dir).expect("corpus directory");
        std::fs::write(dir.join(name), bytes).expect("seed written");
    }
}

fn prefixed(prefix: &[u8], rest: &[u8]) -> Vec<u8> {
    let mut v = prefix.to_vec();
    v.extend_from_slice(rest);
    v
}

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(root), Some(out)) = (args.next(), args.next()) else {
        eprintln!("usage: make_corpus REPO_ROOT CORPUS_DIR");
        std::process::exit(2);
    };
    let root = PathBuf::from(root);
    let c = Corpus(PathBuf::from(out));
    let key = data_key();

    // Link messages, as the payloads of frames.
    let (sealed, _) = seal_request(&key, b"{\"inputs\":[]}", RequestMeta::default(), 100);
    let err = ErrorReply::new(ErrorKind::Unavailable, "overloaded").retry_after(2);
    let messages: Vec<(&str, Vec<u8>)> = vec![
        ("enclave-req-infer", encode(1, &EnclaveRequest::Infer { model: "iris".into() }, &sealed).unwrap()),
        ("enclave-req-metadata", encode(2, &EnclaveRequest::ModelMetadata { model: "minilm".into() }, b"").unwrap()),
        (
            "enclave-req-attestation",
            encode(3, &EnclaveRequest::Attestation { nonce: ByteBuf::from(vec![9; 32]) }, b"").unwrap(),
        ),
        ("enclave-req-status", encode(4, &EnclaveRequest::Status, b"").unwrap()),
        ("enclave-resp-infer", encode(1, &EnclaveResponse::Infer, &sealed).unwrap()),
        ("enclave-resp-metadata", encode(2, &EnclaveResponse::ModelMetadata, b"{\"name\":\"minilm\"}").unwrap()),
        ("enclave-resp-attestation", encode(3, &EnclaveResponse::Attestation, b"\xd2\x84\x44").unwrap()),
        (
            "enclave-resp-status",
            encode(4, &EnclaveResponse::Status { ready: true, models: vec!["iris".into()], kms_calls: 3 }, b"")
                .unwrap(),
        ),
        ("enclave-resp-error", encode(5, &EnclaveResponse::Error(err.clone()), b"").unwrap()),
        ("host-req-info", encode(6, &HostRequest::ModelInfo { name: "iris".into() }, b"").unwrap()),
        (
            "host-req-chunk",
            encode(7, &HostRequest::ModelChunk { name: "iris".into(), offset: 1 << 20, len: 4096 }, b"").unwrap(),
        ),
        ("host-req-credentials", encode(8, &HostRequest::Credentials, b"").unwrap()),
        (
            "host-req-relay",
            encode(9, &HostRequest::KmsRelay { endpoint: "kms.eu-west-1.amazonaws.com:443".into() }, b"").unwrap(),
        ),
        ("host-resp-info", encode(6, &HostResponse::ModelInfo { size: 123_456 }, b"").unwrap()),
        ("host-resp-chunk", encode(7, &HostResponse::ModelChunk, &[0xab; 64]).unwrap()),
        (
            "host-resp-credentials",
            encode(
                8,
                &HostResponse::Credentials {
                    access_key_id: "AKIDEXAMPLE".into(),
                    secret_access_key: "secret".into(),
                    session_token: Some("token".into()),
                    expiration: Some(1_750_003_600),
                },
                b"",
            )
            .unwrap(),
        ),
        ("host-resp-relay", encode(9, &HostResponse::RelayReady, b"").unwrap()),
        ("host-resp-error", encode(10, &HostResponse::Error(err), b"").unwrap()),
    ];
    let mut stream = Vec::new();
    for (name, m) in &messages {
        c.put("message_decode", name, m);
        let f = frame::encode(m, DEFAULT_MAX_FRAME).unwrap();
        // frame_decode takes a two-byte maximum first: one that admits the frame, one that does not.
        c.put("frame_decode", name, &prefixed(&u16::MAX.to_be_bytes(), &f));
        stream.extend_from_slice(&f);
    }
    c.put("frame_decode", "stream", &prefixed(&u16::MAX.to_be_bytes(), &stream));
    c.put("frame_decode", "too-large", &prefixed(&16u16.to_be_bytes(), &stream));
    c.put("frame_decode", "empty-frame", &[0xff, 0xff, 0, 0, 0, 0]);

    // Sealed requests (envelope_parse) and the fixture selectors of envelope_mutate.
    let requests: [(&str, &[u8], RequestMeta); 3] = [
        ("small", br#"{"inputs":[{"name":"x","shape":[1],"datatype":"FP32","data":[1.5]}]}"#, RequestMeta::default()),
        ("binary", b"{\"inputs\":[]}\x00\x01\x02\x03", RequestMeta { inference_header_length: Some(13) }),
        ("large", &[b'7'; 3000], RequestMeta::default()),
    ];
    for ((name, body, meta), seed) in requests.into_iter().zip(101..) {
        let (wire, _) = seal_request(&key, body, meta, seed);
        c.put("envelope_parse", name, &wire);
    }
    for which in 0..4u8 {
        c.put("envelope_mutate", &format!("fixture-{which}"), &[which]);
        // One XOR edit in the ciphertext's tag, one in the encrypted data key.
        c.put("envelope_mutate", &format!("fixture-{which}-edits"), &[which, 0, 0xff, 0xff, 1, 0, 0, 30, 7]);
    }

    // Plaintexts a client could seal (envelope_plaintext): valid padded forms, and one that is not.
    let ihl_meta = b"\xa1\x77inference_header_length\x0d";
    c.put("envelope_plaintext", "padded-json", &pad::pad(b"{\"inputs\":[]}", b"\xa0").unwrap());
    c.put("envelope_plaintext", "padded-binary", &pad::pad(b"{\"inputs\":[]}\x00\x01", ihl_meta).unwrap());
    c.put("envelope_plaintext", "padded-1500", &pad::pad(&[b'7'; 1500], b"\xa0").unwrap());
    c.put("envelope_plaintext", "unpadded", b"{\"inputs\":[]}");

    // Sealed answers: mode 0 (the answer itself) and mode 1 (a fixture, then edits).
    for (name, body, ihl, seed) in
        [("json", &b"{\"outputs\":[]}"[..], None, 1), ("binary", &[b'a'; 1200][..], Some(7), 3)]
    {
        let (wire, _) = sealed_answer(&key, body, ihl, seed);
        c.put("envelope_answer", name, &prefixed(&[0], &wire));
    }
    for which in 0..3u8 {
        c.put("envelope_answer", &format!("mutate-{which}"), &[1, which, 0, 0, 40, 1]);
    }

    // Padded plaintexts (unpad) and split bodies (pad).
    c.put("pad_unpad", "padded-small", &pad::pad(b"{\"data\":[true]}", b"\xa0").unwrap());
    c.put("pad_unpad", "padded-1025", &pad::pad(&[1; 1017], b"").unwrap());
    c.put("pad_unpad", "split", b"\x03hello\xa1\x01\x02");

    // v2 request bodies (after the target's mode byte: 0 for JSON alone; 1 and a two-byte header length
    // for binary tensor data): the examples, every request of the reference outputs, and each of those
    // again with its inputs as binary data.
    let json_seed = |body: &[u8]| [&[0u8][..], body].concat();
    let binary_seed = |request: &serde_json::Value| -> Option<Vec<u8>> {
        let mut header = request.clone();
        let mut blob = Vec::new();
        for input in header["inputs"].as_array_mut()? {
            let bytes: Vec<u8> = match input["datatype"].as_str()? {
                "FP32" => input["data"]
                    .as_array()?
                    .iter()
                    .flat_map(|x| (x.as_f64().unwrap_or(0.0) as f32).to_le_bytes())
                    .collect(),
                "INT64" => {
                    input["data"].as_array()?.iter().flat_map(|x| x.as_i64().unwrap_or(0).to_le_bytes()).collect()
                }
                _ => return None,
            };
            input.as_object_mut()?.remove("data");
            input["parameters"] = serde_json::json!({"binary_data_size": bytes.len()});
            blob.extend(bytes);
        }
        let json = serde_json::to_vec(&header).ok()?;
        let len = u16::try_from(json.len()).ok()?;
        Some([&[1u8][..], &len.to_be_bytes(), &json, &blob].concat())
    };
    for entry in std::fs::read_dir(root.join("examples")).expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "json") {
            c.put("v2_request", &file_name(&path), &json_seed(&std::fs::read(&path).expect("example")));
        }
    }
    for entry in std::fs::read_dir(root.join("tests/data/references")).expect("tests/data/references") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).expect("reference")).unwrap();
        for list in ["cases", "invalid_cases"] {
            for case in doc[list].as_array().into_iter().flatten() {
                let name = format!("{}-{}", file_name(&path).trim_end_matches(".json"), case["name"].as_str().unwrap());
                c.put("v2_request", &name, &json_seed(&serde_json::to_vec(&case["request"]).unwrap()));
                if let Some(binary) = binary_seed(&case["request"]) {
                    c.put("v2_request", &format!("{name}-binary"), &binary);
                }
            }
        }
    }

    // An encrypted model file: its header alone, and the whole file.
    let file = model_file(&model_plaintext());
    let (_, end) = read_header(&file).unwrap().unwrap();
    c.put("model_header", "header", &file[..end]);
    c.put("model_header", "file", &file);
    c.put("model_open", "chunks", &prefixed(&[0], &file[end..]));
    c.put("model_open", "file", &[1]);
    c.put("model_open", "file-edit", &[1, 0, 0, 200, 1]);

    // EIFs: one built from stand-in blobs (with metadata), and nitro-cli's images from eif/tests/data.
    let (kernel, init, app) = (vec![0x7f; 96], b"070701 init stand-in".to_vec(), b"070701 app stand-in".to_vec());
    let identity = EifIdentity {
        image_name: "veil-fuzz".into(),
        image_version: "0.0.0".into(),
        build: BuildInfo {
            build_time: "2026-01-01T00:00:00+00:00".into(),
            build_tool: "make_corpus".into(),
            build_tool_version: "0".into(),
            operating_system: "Linux".into(),
            kernel_version: "6.1".into(),
        },
        docker_info: serde_json::Value::Null,
        custom: serde_json::json!({"purpose": "fuzz seed"}),
    };
    let mut eif = Vec::new();
    EifBuilder::new(&kernel, "console=ttyS0 reboot=k")
        .unwrap()
        .ramdisk(&init)
        .ramdisk(&app)
        .metadata(&identity)
        .unwrap()
        .write_to(&mut eif)
        .unwrap();
    c.put("eif_read", "built-unsigned", &eif);
    for name in ["aws-signed.eif", "aws-unsigned.eif"] {
        c.put("eif_read", name, &std::fs::read(root.join("eif/tests/data").join(name)).expect("eif test data"));
    }

    // Ramdisks as scripts/reproduce.sh writes them: nitro-cli's bootstrap layout, an application root,
    // and the two concatenated (as the kernel sees them).
    let boot = veil_eif::ramdisk::bootstrap_ramdisk(b"\x7fELF init", b"nsm module", 0).unwrap();
    let mut app = veil_eif::ramdisk::AppRamdisk::new(vec!["/bin/app".into(), "--flag".into()]).mtime(1_700_000_000);
    app.file("/bin/app", 0o755, b"\x7fELF app").unwrap();
    app.file("/etc/app.toml", 0o644, b"[x]\ny = 1\n").unwrap();
    app.env("A", "1").unwrap();
    let app = app.to_bytes().unwrap();
    c.put("cpio_read", "bootstrap", &boot);
    c.put("cpio_read", "app", &app);
    c.put("cpio_read", "both", &[boot.as_slice(), app.as_slice()].concat());

    // A commitment with models and keys (commitment_decode; the script adds an empty one).
    let commitment = UserDataCommitment {
        ohttp_keys_sha384: Some([5; 48]),
        receipt_key: Some([4; 32]),
        recipient_rsa_spki_sha384: Some([6; 48]),
        models: vec![
            ModelDigest { name: "breast_cancer".into(), sha384: [1; 48] },
            ModelDigest { name: "iris".into(), sha384: [2; 48] },
        ],
        config_sha384: [7; 48],
    };
    c.put("commitment_decode", "full-v3", &commitment.encode().unwrap());

    evidence_seeds(&c);
    ohttp_seeds(&root, &c);
}

/// Evidence: a receipt and a tree head (signed with a fixed key), their claims, a log of records, a bundle,
/// and for the Merkle target, a tree and a real path.
fn evidence_seeds(c: &Corpus) {
    use veil_protocol::evidence::bundle::{Bundle, Inclusion};
    use veil_protocol::evidence::log::{RecordKind, write_record};
    use veil_protocol::evidence::{Mode, ReceiptClaims, ReceiptKey, TreeHeadClaims};
    let key = ReceiptKey::from_seed(&[9; 32]).expect("a fixed seed");
    let claims = ReceiptClaims {
        issuer: "i-0123456789abcdef0-enc0123456789abcdef".into(),
        issued_at: 1_796_000_000,
        boot_prefix: [0xb0; 8],
        model: "iris".into(),
        model_sha384: [1; 48],
        request_digest: [2; 32],
        response_digest: [3; 32],
        mode: Mode::Ohttp,
        attestation_sha384: [4; 48],
        seq: 7,
        prev: [5; 32],
    };
    let receipt = key.sign(&claims.encode());
    let head = TreeHeadClaims {
        issuer: claims.issuer.clone(),
        issued_at: 1_796_000_010,
        attestation_sha384: [4; 48],
        tree_size: 8,
        root_hash: [6; 32],
    };
    let signed_head = key.sign(&head.encode());
    c.put("evidence_parse", "receipt", &receipt);
    c.put("evidence_parse", "receipt-claims", &claims.encode());
    c.put("evidence_parse", "tree-head", &signed_head);
    c.put("evidence_parse", "tree-head-claims", &head.encode());
    let mut log = Vec::new();
    write_record(&mut log, RecordKind::Attestation, &[0x84, 0x40, 0xa0, 0x40, 0x40]);
    write_record(&mut log, RecordKind::Receipt, &receipt);
    write_record(&mut log, RecordKind::TreeHead, &signed_head);
    c.put("evidence_parse", "log-records", &log);
    let bundle = Bundle {
        receipt: receipt.clone(),
        salt: zeroize::Zeroizing::new([8; 32]),
        attestation_document: vec![0x84, 0x40, 0xa0, 0x40, 0x40],
        inclusion: Some(Inclusion {
            tree_head: signed_head,
            tree_size: 8,
            leaf_index: 7,
            path: vec![[1; 32], [2; 32]],
        }),
    };
    c.put("evidence_parse", "bundle.json", bundle.to_json().as_bytes());
    let mut merkle = vec![7u8, 3, 42];
    for h in [[1u8; 32], [2; 32], [3; 32]] {
        merkle.extend_from_slice(&h);
    }
    c.put("evidence_merkle", "eight-leaves", &merkle);
}

/// Attested-key mode: OHTTP requests, responses and key lists, and Binary HTTP messages.
fn ohttp_seeds(root: &Path, c: &Corpus) {
    // The fixtures transcribe RFC 9458's example: check them against the vector file the tests use.
    let vector: serde_json::Value = serde_json::from_slice(
        &std::fs::read(root.join("protocol/tests/vectors/rfc9458-appendix-a.json")).expect("the RFC 9458 vector"),
    )
    .unwrap();
    for (field, ours) in [
        ("skR", rfc9458::SK_R),
        ("key_config", rfc9458::KEY_CONFIG),
        ("request", rfc9458::REQUEST),
        ("encapsulated_request", rfc9458::ENCAPSULATED_REQUEST),
        ("response", rfc9458::RESPONSE),
        ("response_nonce", rfc9458::RESPONSE_NONCE),
        ("encapsulated_response", rfc9458::ENCAPSULATED_RESPONSE),
    ] {
        assert_eq!(vector[field].as_str(), Some(ours), "fuzz/src/lib.rs transcribes the RFC's {field} wrongly");
    }
    assert_eq!(vector["key_id"].as_u64(), Some(u64::from(rfc9458::KEY_ID)));

    // Encapsulated requests (ohttp_decapsulate): each real one as is, edited (a ciphertext byte, the key id,
    // the AEAD), and as a raw message; encapsulated responses (ohttp_response_open): each as is, edited,
    // raw, and its Binary HTTP response to seal.
    let exchanges = ohttp_exchanges();
    for (i, x) in exchanges.iter().enumerate() {
        let i = u8::try_from(i).unwrap();
        let last = u16::try_from(x.encapsulated_request.len() - 1).unwrap().to_be_bytes();
        c.put("ohttp_decapsulate", &format!("real-{i}"), &[0x80 + i]);
        c.put("ohttp_decapsulate", &format!("real-{i}-tag"), &[0x80 + i, 0, last[0], last[1], 0x01]);
        c.put("ohttp_decapsulate", &format!("real-{i}-key-id"), &[0x80 + i, 4, 0, 0, 8]);
        c.put("ohttp_decapsulate", &format!("real-{i}-aead"), &[0x80 + i, 4, 0, 6, 2]);
        c.put("ohttp_decapsulate", &format!("raw-{i}"), &prefixed(&[0], &x.encapsulated_request));
        c.put("ohttp_response_open", &format!("real-{i}"), &[i]);
        c.put("ohttp_response_open", &format!("real-{i}-nonce"), &[i, 0, 0, 0, 0x80]);
        c.put("ohttp_response_open", &format!("real-{i}-cut"), &[i, 3, 0, 40, 0]);
        c.put("ohttp_response_open", &format!("raw-{i}"), &prefixed(&[0x80 + i], &x.encapsulated_response));
        c.put("ohttp_response_open", &format!("seal-{i}"), &prefixed(&[0xc0 + i], &x.response));
        c.put("bhttp_request", &format!("exchange-{i}-request"), &x.request);
        c.put("bhttp_request", &format!("exchange-{i}-response"), &x.response);
    }

    // Key lists (ohttp_key_list): the gateways', both at once, the RFC's configuration, another KEM's
    // configuration skipped before one of X25519, and a configuration with no suite a client can use.
    let gateways = ohttp_gateways();
    let (rfc_list, veil_list) = (gateways[0].key_list(), gateways[1].key_list());
    c.put("ohttp_key_list", "rfc9458", rfc_list);
    c.put("ohttp_key_list", "veil-two-keys", veil_list);
    c.put("ohttp_key_list", "both", &[rfc_list, veil_list].concat());
    let config = unhex(rfc9458::KEY_CONFIG);
    let mut p256 = vec![0, 5, 9, 0x00, 0x10, 0xaa, 0xbb];
    p256.extend_from_slice(veil_list);
    c.put("ohttp_key_list", "p256-skipped", &p256);
    let mut unusable = config.clone();
    let n = unusable.len();
    unusable[n - 4..].copy_from_slice(&[0x00, 0x02, 0x00, 0x09]); // HKDF-SHA384, an unknown AEAD
    c.put("ohttp_key_list", "unusable-suites", &prefixed(&u16::try_from(n).unwrap().to_be_bytes(), &unusable));

    // Binary HTTP (bhttp_request): RFC 9458's messages, Veil's (plain and padded), and the bhttp crate's of
    // both framings, with chunked content, trailers and repeated cookies; an informational response; and
    // indeterminate-length messages truncated where a section starts.
    c.put("bhttp_request", "rfc9458-request", &unhex(rfc9458::REQUEST));
    c.put("bhttp_request", "rfc9458-response", &unhex(rfc9458::RESPONSE));
    let veil = |pad| {
        veil_protocol::ohttp::bhttp::encode_request(
            "POST",
            "https",
            "veil",
            "/v2/models/iris/infer",
            &[("date", b"Sun, 15 Jun 2025 15:06:40 GMT"), ("content-type", b"application/json")],
            br#"{"inputs":[]}"#,
            pad,
        )
    };
    c.put("bhttp_request", "veil-request", &veil(false));
    c.put("bhttp_request", "veil-request-padded", &veil(true));
    for (mode, name) in [(bhttp::Mode::KnownLength, "known"), (bhttp::Mode::IndeterminateLength, "indeterminate")] {
        let mut m = bhttp::Message::request(
            b"POST".to_vec(),
            b"https".to_vec(),
            b"veil".to_vec(),
            b"/v2/models/iris/infer".to_vec(),
        );
        m.put_header("content-type", "application/json");
        m.put_header("cookie", "a=1");
        m.put_header("cookie", "b=2");
        m.write_content(b"{\"inputs\":");
        m.write_content(b"[]}");
        m.put_trailer("x-trailer", "t");
        let mut enc = Vec::new();
        m.write_bhttp(mode, &mut enc).unwrap();
        c.put("bhttp_request", &format!("bhttp-{name}-request"), &enc);
        let mut r = bhttp::Message::response(bhttp::StatusCode::try_from(503u16).unwrap());
        r.put_header("retry-after", "1");
        r.write_content(b"{\"error\":\"busy\"}");
        let mut enc = Vec::new();
        r.write_bhttp(mode, &mut enc).unwrap();
        c.put("bhttp_request", &format!("bhttp-{name}-response"), &enc);
    }
    // 103 Early Hints (one link field), then 200 with no fields and "ok", known-length.
    c.put("bhttp_request", "informational", b"\x01\x40\x67\x0c\x04link\x06<a.js>\x40\xc8\x00\x02ok\x00");
    // Indeterminate-length GET /: truncated after the control data, and after the header section.
    c.put("bhttp_request", "indeterminate-truncated", b"\x02\x03GET\x05https\x00\x01/");
    c.put("bhttp_request", "indeterminate-no-trailer", b"\x02\x03GET\x05https\x00\x01/\x00\x00");
}

fn file_name(p: &Path) -> String {
    p.file_name().and_then(|n| n.to_str()).expect("a UTF-8 file name").to_owned()
}
