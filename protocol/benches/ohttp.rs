//! The cryptography of one attested-key request (OHTTP, RFC 9458), step by step, for an iris-sized request
//! and answer (each padded to the 1 KiB bucket) and a MiniLM-sized answer (~600 KB).
//!
//! `cargo bench -p veil-protocol --bench ohttp` prints a table and writes `target/bench/ohttp.json`
//! (p50/p99 in microseconds). Per request, the client encapsulates (an ephemeral X25519 key, one DH,
//! HKDF, AES-256-GCM), the gateway decapsulates (one DH, HKDF, AES-256-GCM) and seals the response
//! (HKDF, AES-256-GCM in place), and the client opens it. `--quick` runs fewer iterations.
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use veil_protocol::ohttp::{self, Gateway, GatewayKey, KeyConfig, bhttp};
use veil_protocol::random::SystemRandom;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let runs = if std::env::args().any(|a| a == "--quick") { 300 } else { 3000 };
    let rng = SystemRandom::new();
    let gateway = Gateway::new(vec![GatewayKey::generate(0, &ohttp::GATEWAY_AEADS, &rng).unwrap()]).unwrap();
    let config = KeyConfig::decode_list(gateway.key_list()).unwrap().remove(0);
    let iris =
        br#"{"inputs":[{"name":"float_input","shape":[3,2],"datatype":"FP32","data":[5.1,3.5,6.2,2.9,7.7,3.0]}]}"#;
    let request = bhttp::encode_request(
        "POST",
        "https",
        "veil",
        "/v2/models/iris/infer",
        &[("content-type", b"application/json"), ("veil-model-sha384", &[b'a'; 96])],
        iris,
        true,
    );
    let mut rows = Vec::new();
    let mut out = serde_json::Map::new();
    for (name, answer_len) in [("iris", 300usize), ("minilm", 600_000)] {
        let (mut enc, mut dec, mut seal, mut open, mut total) = (vec![], vec![], vec![], vec![], vec![]);
        for i in 0..runs + runs / 10 {
            let t0 = Instant::now();
            let (enc_request, client) = ohttp::encapsulate(&config, &request, &rng).unwrap();
            let t1 = Instant::now();
            let (plain, server) = gateway.decapsulate(&enc_request).unwrap();
            let t2 = Instant::now();
            std::hint::black_box(&plain);
            let mut w = bhttp::ResponseWriter::new(
                server.nonce_len(),
                200,
                &[("content-type", b"application/json")],
                answer_len,
            );
            let c = w.content();
            c.resize(c.len() + answer_len, b'1');
            let t3 = Instant::now();
            let mut buf = w.finish().unwrap();
            server.seal_in_place(&mut buf, &rng).unwrap();
            let t4 = Instant::now();
            let opened = client.open_in_place(&mut buf).unwrap();
            std::hint::black_box(opened);
            let t5 = Instant::now();
            if i >= runs / 10 {
                let us = |a: Instant, b: Instant| (b - a).as_secs_f64() * 1e6;
                enc.push(us(t0, t1));
                dec.push(us(t1, t2));
                seal.push(us(t3, t4));
                open.push(us(t4, t5));
                total.push(us(t0, t2) + us(t3, t5));
            }
        }
        let mut entry = serde_json::Map::new();
        for (step, v) in [
            ("client_encapsulate", &mut enc),
            ("gateway_decapsulate", &mut dec),
            ("gateway_seal_response", &mut seal),
            ("client_open_response", &mut open),
            ("total", &mut total),
        ] {
            let (p50, p99) = (percentile(v, 0.5), percentile(v, 0.99));
            rows.push(format!("| {name:<6} | {step:<22} | {p50:>9.1} | {p99:>9.1} |"));
            entry.insert(step.into(), serde_json::json!({"p50_us": p50, "p99_us": p99}));
        }
        entry.insert("answer_bytes".into(), answer_len.into());
        out.insert(name.into(), entry.into());
    }
    println!("| answer | step                   | p50 µs    | p99 µs    |");
    println!("|--------|------------------------|-----------|-----------|");
    for r in &rows {
        println!("{r}");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("bench");
    std::fs::create_dir_all(&dir).unwrap();
    let json =
        serde_json::json!({"bench": "ohttp", "runs": runs, "suite": "X25519 HKDF-SHA256 AES-256-GCM", "results": out});
    std::fs::write(dir.join("ohttp.json"), serde_json::to_vec_pretty(&json).unwrap()).unwrap();
    println!("\nwrote {}", dir.join("ohttp.json").display());
}
