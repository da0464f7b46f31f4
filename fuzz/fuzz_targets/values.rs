//! Arbitrary bytes into the value contract (berth_proto::values): it never panics or overflows
//! the stack, its three checks agree, and what it accepts is CBOR a real decoder (ciborium)
//! reads, and still passes once that decoder has written it back.
#![no_main]

use berth_proto::values::{check_args, check_params, check_value};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args = check_args(data);
    let params = check_params(data);
    let value = check_value(data);
    assert_eq!(check_args(data), args, "check_args is not deterministic");
    if args.is_ok() || (params.is_ok() && !data.is_empty()) {
        assert!(value.is_ok(), "args or params accepted, check_value refused: {value:?}");
    }
    if value.is_err() {
        return;
    }
    let v: ciborium::Value = match ciborium::from_reader(data) {
        Ok(v) => v,
        // ciborium's own limit: bignums (tags 2, 3) beyond 128 bits, which cbor-x decodes.
        Err(ciborium::de::Error::Semantic(_, m)) if m == "integer too large" => return,
        Err(e) => panic!("the contract accepts bytes ciborium cannot decode ({e}): {data:02x?}"),
    };
    let mut again = Vec::new();
    ciborium::into_writer(&v, &mut again).expect("ciborium writes what it read");
    assert_eq!(check_value(&again), Ok(()), "accepted, refused once re-encoded: {data:02x?} -> {again:02x?}");
    if let Ok(n) = args {
        assert_eq!(check_args(&again), Ok(n), "args re-check differently: {data:02x?} -> {again:02x?}");
    }
    if params.is_ok() && !data.is_empty() {
        assert_eq!(check_params(&again), Ok(()), "params re-check differently: {data:02x?} -> {again:02x?}");
    }
});
