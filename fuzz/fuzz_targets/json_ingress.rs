//! Arbitrary bytes through the HTTP JSON ingress, both ways: as a request body (parse_body ->
//! the CBOR arguments and params it sends on) and as a function's result (CBOR -> the JSON
//! answer). Never a panic; what the ingress builds always passes the server's own value
//! contract; a JSON body's arguments come back as the same JSON (what an echo function answers).
#![no_main]

use berth_proto::values::{check_args, check_params};
use berth_server::fuzzing::{parse_body, result_json};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok((args, params)) = parse_body(data) {
        if let Err(e) = check_args(&args) {
            panic!("the ingress built arguments the server refuses ({e}): {args:02x?}");
        }
        if let Err(e) = check_params(&params) {
            panic!("the ingress built params the server refuses ({e}): {params:02x?}");
        }
        let echoed = result_json(&args).expect("the arguments decode as a result");
        let body: serde_json::Value = serde_json::from_slice(data).unwrap_or(serde_json::Value::Null);
        let sent = match body {
            serde_json::Value::Array(a) => Some(serde_json::Value::Array(a)),
            serde_json::Value::Object(mut o) => match o.remove("args") {
                Some(serde_json::Value::Array(a)) => Some(serde_json::Value::Array(a)),
                _ => None,
            },
            _ => None,
        };
        if let Some(sent) = sent {
            let back: serde_json::Value = serde_json::from_slice(&echoed).expect("the answer is JSON");
            assert_eq!(back, sent, "arguments do not come back as sent");
        }
    }
    if let Some(json) = result_json(data) {
        match serde_json::from_slice::<serde_json::Value>(&json) {
            Ok(_) => {}
            // serde_json's reader stops at 128 levels; results may nest deeper (ciborium reads
            // 256), and JSON.parse takes them.
            Err(e) if e.to_string().starts_with("recursion limit exceeded") => {}
            Err(e) => panic!("the answer to a result is not JSON ({e}): {}", String::from_utf8_lossy(&json)),
        }
    }
});
