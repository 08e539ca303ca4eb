use super::response::{self, Answer, Elements, Output};
use super::*;
use serde_json::Map;
use serde_json::json;

fn input(v: Value) -> RequestInput {
    serde_json::from_value(v).unwrap()
}

/// A binary request as tritonclient builds one: the JSON, then each binary input's bytes.
fn binary_request(header: Value, blobs: &[&[u8]]) -> (Vec<u8>, u64) {
    let mut body = serde_json::to_vec(&header).unwrap();
    let n = body.len() as u64;
    for b in blobs {
        body.extend_from_slice(b);
    }
    (body, n)
}

fn le_f32(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

#[test]
fn flat_and_nested_data_are_the_same_tensor() {
    let flat = check_input(&input(json!({"name":"x","shape":[2,2],"datatype":"FP32","data":[1,2.5,3,4]}))).unwrap();
    let nested =
        check_input(&input(json!({"name":"x","shape":[2,2],"datatype":"FP32","data":[[1,2.5],[3,4]]}))).unwrap();
    assert_eq!(flat, nested);
    assert_eq!(flat.data, TensorData::F32(vec![1.0, 2.5, 3.0, 4.0]));
    assert_eq!(flat.shape, vec![2, 2]);
}

#[test]
fn every_supported_datatype_converts_from_json() {
    let cases = [
        ("BOOL", json!([true, false]), TensorData::Bool(vec![true, false])),
        ("INT32", json!([-1, 2]), TensorData::I32(vec![-1, 2])),
        ("INT64", json!([-1, 9007199254740993i64]), TensorData::I64(vec![-1, 9007199254740993])),
        ("FP64", json!([0.1, 2]), TensorData::F64(vec![0.1, 2.0])),
        ("UINT8", json!([0, 255]), TensorData::U8(vec![0, 255])),
        ("UINT64", json!([0, u64::MAX]), TensorData::U64(vec![0, u64::MAX])),
        ("FP16", json!([0.5, -2]), TensorData::F16(vec![f16::from_f32(0.5), f16::from_f32(-2.0)])),
        ("BF16", json!([1.5, 3]), TensorData::Bf16(vec![bf16::from_f32(1.5), bf16::from_f32(3.0)])),
        ("BYTES", json!(["héllo", ""]), TensorData::Bytes(vec!["héllo".as_bytes().to_vec(), vec![]])),
    ];
    for (dt, data, want) in cases {
        let t = check_input(&input(json!({"name":"x","shape":[2],"datatype":dt,"data":data}))).unwrap();
        assert_eq!(t.data, want, "{dt}");
        assert_eq!(t.datatype.as_str(), dt);
        assert_eq!(t.data.datatype(), t.datatype);
    }
}

#[test]
fn bad_tensors_say_what_was_expected() {
    let cases = [
        (json!({"name":"x","shape":[3],"datatype":"FP32","data":[1,2]}), "shape [3] needs 3 elements, data has 2"),
        (json!({"name":"x","shape":[1],"datatype":"FP32","data":[1,2]}), "more elements than the shape's 1"),
        (json!({"name":"x","shape":[2],"datatype":"FP32","data":[1,"a"]}), "element 1 is not FP32: not a number"),
        (json!({"name":"x","shape":[1],"datatype":"INT32","data":[1.5]}), "element 0 is not INT32: not an integer"),
        (json!({"name":"x","shape":[1],"datatype":"INT8","data":[300]}), "element 0 is not INT8: out of range"),
        (json!({"name":"x","shape":[1],"datatype":"BOOL","data":[1]}), "not true or false"),
        (json!({"name":"x","shape":[1],"datatype":"FP32","data":[1e300]}), "out of FP32 range"),
        (json!({"name":"x","shape":[1],"datatype":"FP16","data":[70000]}), "out of FP16 range"),
        (json!({"name":"x","shape":[1],"datatype":"BYTES","data":[7]}), "element 0 is not BYTES: not a string"),
        (json!({"name":"x","shape":[1],"datatype":"STRING","data":["a"]}), "datatype \"STRING\" is not supported"),
        (json!({"name":"x","shape":[-1],"datatype":"FP32","data":[1]}), "negative dimension"),
        (json!({"name":"x","shape":[1u64<<40, 1u64<<40],"datatype":"FP32","data":[]}), "more than"),
        (json!({"name":"x","shape":[1],"datatype":"FP32"}), "has no data"),
    ];
    for (v, want) in cases {
        let e = check_input(&input(v.clone())).unwrap_err().to_string();
        assert!(e.contains(want), "{v}: got {e:?}, want {want:?}");
        assert!(e.starts_with("input \"x\""), "{e}");
    }
}

#[test]
fn deep_nesting_is_refused_without_recursion_trouble() {
    let mut data = json!(1);
    for _ in 0..40 {
        data = json!([data]);
    }
    let e = check_input(&input(json!({"name":"x","shape":[1],"datatype":"FP32","data":data}))).unwrap_err();
    assert!(e.to_string().contains("nested more than"), "{e}");
}

#[test]
fn request_level_checks() {
    assert!(parse_request(b"not json").unwrap_err().to_string().contains("not a valid Open Inference Protocol"));
    assert!(parse_request(br#"{"inputs":[]}"#).unwrap_err().to_string().contains("no inputs"));
    let dup = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]},{"name":"a","shape":[1],"datatype":"FP32","data":[1]}]}"#;
    assert!(parse_request(dup).unwrap_err().to_string().contains("appears twice"));
    let flag =
        br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"parameters":{"binary_data_output":1}}"#;
    assert!(parse_request(flag).unwrap_err().to_string().contains("binary_data_output must be true or false"));
    let out = br#"{"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1]}],"outputs":[{"name":"y","parameters":{"binary_data":"yes"}}]}"#;
    assert!(parse_request(out).unwrap_err().to_string().contains("output \"y\": parameters.binary_data must be"));
}

#[test]
fn binary_and_json_inputs_mix_in_one_request() {
    // As tritonclient sends it: JSON inputs inline, binary ones after the header in input order.
    let strings: Vec<u8> =
        [&b"ab"[..], b"", b"\xff\x00"].iter().flat_map(|s| [&(s.len() as u32).to_le_bytes()[..], s].concat()).collect();
    let (body, n) = binary_request(
        json!({"inputs":[
            {"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":8}},
            {"name":"b","shape":[2],"datatype":"INT64","data":[7,8]},
            {"name":"c","shape":[3],"datatype":"BYTES","parameters":{"binary_data_size": strings.len()}},
            {"name":"d","shape":[2],"datatype":"BOOL","parameters":{"binary_data_size":2}},
            {"name":"e","shape":[1],"datatype":"BF16","parameters":{"binary_data_size":2}}
        ]}),
        &[&le_f32(&[1.5, -2.0]), &strings, &[1, 0], &bf16::from_f32(0.75).to_le_bytes()],
    );
    let r = parse(&body, Some(n)).unwrap();
    assert_eq!(r.input(0).unwrap().data, TensorData::F32(vec![1.5, -2.0]));
    assert_eq!(r.input(1).unwrap().data, TensorData::I64(vec![7, 8]));
    assert_eq!(r.input(2).unwrap().data, TensorData::Bytes(vec![b"ab".to_vec(), vec![], b"\xff\x00".to_vec()]));
    assert_eq!(r.input(3).unwrap().data, TensorData::Bool(vec![true, false]));
    assert_eq!(r.input(4).unwrap().data, TensorData::Bf16(vec![bf16::from_f32(0.75)]));
}

#[test]
fn binary_requests_that_do_not_add_up_are_refused() {
    let one = |size: u64| json!({"inputs":[{"name":"a","shape":[2],"datatype":"FP32","parameters":{"binary_data_size":size}}]});
    let data = le_f32(&[1.0, 2.0]);
    let cases: Vec<(Vec<u8>, Option<u64>, &str)> = vec![
        {
            let (b, n) = binary_request(one(8), &[&data]);
            (b, Some(n + 100), "Inference-Header-Content-Length is")
        },
        {
            let (b, _) = binary_request(one(8), &[&data]);
            (b, None, "not a valid Open Inference Protocol")
        },
        {
            let b = serde_json::to_vec(&one(8)).unwrap();
            let n = b.len() as u64;
            (b, Some(n), "runs past the end of the body")
        },
        {
            let (b, n) = binary_request(one(8), &[&data, b"xx"]);
            (b, Some(n), "2 bytes after the JSON header")
        },
        {
            let (b, n) = binary_request(one(4), &[&data[..4]]);
            (b, Some(n), "binary_data_size is 4 bytes; 2 FP32 elements are 8")
        },
        {
            let (b, n) = binary_request(
                json!({"inputs":[{"name":"a","shape":[1],"datatype":"BOOL","parameters":{"binary_data_size":1}}]}),
                &[&[2]],
            );
            (b, Some(n), "BOOL element 0 is not the byte 0 or 1")
        },
        {
            let (b, n) = binary_request(
                json!({"inputs":[{"name":"a","shape":[2],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}),
                &[&[9, 0, 0, 0, b'a', b'b']],
            );
            (b, Some(n), "BYTES element 0 runs past the end")
        },
        {
            let (b, n) = binary_request(
                json!({"inputs":[{"name":"a","shape":[1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}),
                &[&[1, 0, 0, 0, b'a', b'b']],
            );
            (b, Some(n), "1 bytes after its 1 BYTES elements")
        },
        {
            let (b, n) = binary_request(
                json!({"inputs":[{"name":"a","shape":[1],"datatype":"FP32","data":[1],"parameters":{"binary_data_size":4}}]}),
                &[&data[..4]],
            );
            (b, Some(n), "has both \"data\" and parameters.binary_data_size")
        },
        {
            let (b, n) = binary_request(
                json!({"inputs":[{"name":"a","shape":[1],"datatype":"FP32","parameters":{"binary_data_size":-4}}]}),
                &[],
            );
            (b, Some(n), "must be a whole number of bytes")
        },
    ];
    for (body, n, want) in cases {
        let e = parse(&body, n).and_then(|r| r.input(0)).unwrap_err().to_string();
        assert!(e.contains(want), "got {e:?}, want {want:?}");
    }
    // binary_data_size without the header that says where the binary data starts.
    let json_only = serde_json::to_vec(&one(0)).unwrap();
    let e = parse(&json_only, None).unwrap_err().to_string();
    assert!(e.contains("no Inference-Header-Content-Length"), "{e}");
}

#[test]
fn binary_output_follows_the_output_then_the_request() {
    let r = |v: Value| {
        let body = serde_json::to_vec(&v).unwrap();
        let parsed = parse(&body, None).unwrap();
        (parsed.binary_output("y"), parsed.binary_output("z"))
    };
    let x = json!({"name":"x","shape":[1],"datatype":"FP32","data":[1]});
    assert_eq!(r(json!({"inputs":[x]})), (false, false));
    assert_eq!(r(json!({"inputs":[x],"parameters":{"binary_data_output":true}})), (true, true));
    assert_eq!(
        r(
            json!({"inputs":[x],"parameters":{"binary_data_output":true},"outputs":[{"name":"y","parameters":{"binary_data":false}}]})
        ),
        (false, true)
    );
    assert_eq!(
        r(json!({"inputs":[x],"outputs":[{"name":"y","parameters":{"binary_data":true}},{"name":"z"}]})),
        (true, false)
    );
}

#[test]
fn json_responses_are_v2() {
    let outputs =
        [Output { name: "y", shape: vec![2], data: Elements::F32(&[0.1, 2.0]), parameters: None, binary: false }];
    let mut out = Vec::new();
    let n =
        response::write(&mut out, &Answer { model_name: "m", model_version: None, id: Some("7"), outputs: &outputs })
            .unwrap();
    assert_eq!(n, None);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        r#"{"model_name":"m","id":"7","outputs":[{"name":"y","datatype":"FP32","shape":[2],"data":[0.1,2.0]}]}"#
    );
}

#[test]
fn binary_responses_carry_sizes_in_the_header_and_raw_data_after_it() {
    let mut keys = Map::new();
    keys.insert("zipmap_keys".into(), json!([0, 1]));
    let strings = [b"ok".to_vec(), b"\xff".to_vec()];
    let halves = [f16::from_f32(1.5)];
    let outputs = [
        Output {
            name: "p",
            shape: vec![1, 2],
            data: Elements::F32(&[0.25, 0.75]),
            parameters: Some(&keys),
            binary: true,
        },
        Output { name: "label", shape: vec![1], data: Elements::I64(&[1]), parameters: None, binary: false },
        Output { name: "s", shape: vec![2], data: Elements::Bytes(&strings), parameters: None, binary: true },
        Output { name: "h", shape: vec![1], data: Elements::F16(&halves), parameters: None, binary: true },
    ];
    let mut out = b"prefix".to_vec();
    let n =
        response::write(&mut out, &Answer { model_name: "m", model_version: Some("1"), id: None, outputs: &outputs })
            .unwrap()
            .unwrap();
    let body = &out[6..];
    let read = response::read(body, Some(n)).unwrap();
    assert_eq!(read.json["model_version"], "1");
    assert_eq!(read.json["outputs"][0]["parameters"], json!({"zipmap_keys":[0,1],"binary_data_size":8}));
    assert!(read.json["outputs"][0].get("data").is_none());
    assert_eq!(read.json["outputs"][1]["data"], json!([1]));
    assert_eq!(read.json["outputs"][2]["parameters"]["binary_data_size"], 4 + 2 + 4 + 1);
    assert_eq!(read.binary.len(), 3);
    assert_eq!(read.binary[0], ("p".to_owned(), &le_f32(&[0.25, 0.75])[..]));
    assert_eq!(read.binary[1].1, &[2, 0, 0, 0, b'o', b'k', 1, 0, 0, 0, 0xff][..]);
    assert_eq!(read.binary[2].1, &f16::from_f32(1.5).to_le_bytes()[..]);
}

#[test]
fn bytes_that_are_not_utf8_cannot_be_json_and_say_how_to_get_them() {
    let strings = [b"\xff".to_vec()];
    let outputs =
        [Output { name: "s", shape: vec![1], data: Elements::Bytes(&strings), parameters: None, binary: false }];
    let e =
        response::write(&mut Vec::new(), &Answer { model_name: "m", model_version: None, id: None, outputs: &outputs })
            .unwrap_err();
    assert!(e.to_string().contains("binary_data: true"), "{e}");
}

#[test]
fn half_precision_json_is_written_as_numbers() {
    let h = [f16::from_f32(0.5), f16::from_f32(-1.0)];
    let b = [bf16::from_f32(2.0)];
    let outputs = [
        Output { name: "h", shape: vec![2], data: Elements::F16(&h), parameters: None, binary: false },
        Output { name: "b", shape: vec![1], data: Elements::Bf16(&b), parameters: None, binary: false },
    ];
    let mut out = Vec::new();
    response::write(&mut out, &Answer { model_name: "m", model_version: None, id: None, outputs: &outputs }).unwrap();
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["outputs"][0]["data"], json!([0.5, -1.0]));
    assert_eq!(v["outputs"][1]["data"], json!([2.0]));
}

#[test]
fn the_largest_finite_values_as_printed_read_back_and_beyond_them_are_refused() {
    // 3.4028235e38 is how f32::MAX prints: above f32::MAX as an f64, yet it must round to it.
    let t = check_input(&input(json!({"name":"x","shape":[2],"datatype":"FP32","data":[3.4028235e38, -3.4028235e38]})))
        .unwrap();
    assert_eq!(t.data, TensorData::F32(vec![f32::MAX, f32::MIN]));
    let t = check_input(&input(json!({"name":"x","shape":[1],"datatype":"BF16","data":[3.3895314e38]}))).unwrap();
    assert_eq!(t.data, TensorData::Bf16(vec![bf16::MAX]));
    let e = check_input(&input(json!({"name":"x","shape":[1],"datatype":"FP32","data":[3.5e38]}))).unwrap_err();
    assert!(e.to_string().contains("out of FP32 range"), "{e}");
}

#[test]
fn a_zero_dimension_does_not_let_a_huge_one_through() {
    for shape in [json!([0, 9223372036854775807i64]), json!([9223372036854775807i64, 0])] {
        let e = check_input(&input(json!({"name":"x","shape":shape,"datatype":"FP32","data":[]}))).unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }
    let bytes = check_input(&input(json!({"name":"x","shape":[MAX_BYTES_ELEMENTS + 1],"datatype":"BYTES","data":[]})));
    assert!(bytes.unwrap_err().to_string().contains("BYTES elements"));
}

#[test]
fn triton_extensions_veil_does_not_serve_are_refused_not_ignored() {
    let x = json!({"name":"x","shape":[1],"datatype":"FP32","data":[1]});
    for body in [
        json!({"inputs":[x],"outputs":[{"name":"y","parameters":{"classification":3}}]}),
        json!({"inputs":[{"name":"x","shape":[1],"datatype":"FP32","parameters":{"shared_memory_region":"r"}}]}),
    ] {
        let e = parse(&serde_json::to_vec(&body).unwrap(), None).unwrap_err();
        assert!(e.to_string().contains("is not supported"), "{e}");
    }
}

#[test]
fn a_request_prints_its_input_names_not_its_data() {
    let body = br#"{"inputs":[{"name":"secret_input","shape":[1],"datatype":"FP32","data":[123456.75]}]}"#;
    let shown = format!("{:?}", parse(body, None).unwrap());
    assert!(shown.contains("secret_input") && !shown.contains("123456"), "{shown}");
}
