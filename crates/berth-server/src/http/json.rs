//! The ingress's JSON codec: request bodies to the CBOR arguments and params a gRPC caller
//! sends, and results (CBOR as cbor-x writes JavaScript values) to JSON.
use serde_json::Value as Json;

const SHAPE: &str =
    r#"send a JSON array of positional arguments (e.g. [3] for f(3)), or {"args": [...], "params": {...}}"#;

/// The body as CBOR arguments (an array) and CBOR params (a map; empty bytes when there are
/// none, as the TS client sends for a handle without parameters).
pub(crate) fn parse_body(body: &[u8]) -> Result<(Vec<u8>, Vec<u8>), String> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok((encode(&ciborium::Value::Array(Vec::new())), Vec::new()));
    }
    let value: Json = serde_json::from_slice(body).map_err(|e| format!("the body is not valid JSON ({e}): {SHAPE}"))?;
    let (args, params) = match value {
        Json::Array(args) => (args, None),
        Json::Object(mut obj) => {
            if let Some(key) = obj.keys().find(|k| *k != "args" && *k != "params") {
                return Err(format!("unknown key '{key}' in the body: {SHAPE}"));
            }
            let args = match obj.remove("args") {
                None | Some(Json::Null) => Vec::new(),
                Some(Json::Array(args)) => args,
                Some(other) => return Err(format!("`args` must be an array, not {}: {SHAPE}", kind(&other))),
            };
            let params = match obj.remove("params") {
                None | Some(Json::Null) => None,
                Some(Json::Object(params)) => Some(params),
                Some(other) => {
                    return Err(format!(
                        "`params` must be an object of class parameter names to values, not {}",
                        kind(&other)
                    ))
                }
            };
            (args, params)
        }
        other => return Err(format!("the body is {}: {SHAPE}", kind(&other))),
    };
    let args = encode(&ciborium::Value::Array(args.iter().map(json_to_cbor).collect()));
    let params = match params {
        Some(p) if !p.is_empty() => encode(&json_to_cbor(&Json::Object(p))),
        _ => Vec::new(),
    };
    Ok((args, params))
}

fn kind(v: &Json) -> &'static str {
    match v {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

fn encode(v: &ciborium::Value) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing a Value to a Vec does not fail.
    let _ = ciborium::into_writer(v, &mut out);
    out
}

/// JSON to the CBOR the containers decode: null, booleans, integers, floats, strings, arrays,
/// and objects as maps with text keys.
pub(crate) fn json_to_cbor(v: &Json) -> ciborium::Value {
    use ciborium::Value as C;
    match v {
        Json::Null => C::Null,
        Json::Bool(b) => C::Bool(*b),
        Json::Number(n) => {
            if let Some(u) = n.as_u64() {
                C::Integer(u.into())
            } else if let Some(i) = n.as_i64() {
                C::Integer(i.into())
            } else {
                C::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => C::Text(s.clone()),
        Json::Array(xs) => C::Array(xs.iter().map(json_to_cbor).collect()),
        Json::Object(m) => C::Map(m.iter().map(|(k, v)| (C::Text(k.clone()), json_to_cbor(v))).collect()),
    }
}

/// A result (CBOR as cbor-x writes JavaScript values) as JSON: Map (tag 259) and maps become
/// objects with stringified keys, Set (tag 258) an array, Date (tag 1) its epoch seconds,
/// bytes a base64 string, typed arrays (tags 64–87) arrays of numbers, integers and bignums
/// numbers when they fit 64 bits (else decimal strings); NaN and infinities become null, other
/// tags their content.
pub(crate) fn cbor_to_json(v: &ciborium::Value) -> Json {
    use ciborium::Value as C;
    match v {
        C::Null => Json::Null,
        C::Bool(b) => Json::Bool(*b),
        C::Integer(i) => int_json(i128::from(*i)),
        C::Float(f) => float_json(*f),
        C::Text(s) => Json::String(s.clone()),
        C::Bytes(b) => Json::String(base64(b)),
        C::Array(xs) => Json::Array(xs.iter().map(cbor_to_json).collect()),
        C::Map(entries) => {
            let mut obj = serde_json::Map::with_capacity(entries.len());
            for (k, v) in entries {
                obj.insert(key_text(cbor_to_json(k)), cbor_to_json(v));
            }
            Json::Object(obj)
        }
        C::Tag(tag @ (2 | 3), inner) => match inner.as_ref() {
            C::Bytes(b) => bignum_json(*tag == 3, b),
            other => cbor_to_json(other),
        },
        C::Tag(tag @ 64..=87, inner) => match inner.as_ref() {
            C::Bytes(b) => typed_array(*tag, b).map_or_else(|| Json::String(base64(b)), Json::Array),
            other => cbor_to_json(other),
        },
        C::Tag(_, inner) => cbor_to_json(inner),
        // ciborium's Value is non-exhaustive.
        #[allow(unreachable_patterns)]
        _ => Json::Null,
    }
}

/// A non-text key's JSON text is cut at this many bytes.
const MAX_KEY_TEXT: usize = 1024;

/// A JSON object key: text as it is; any other key (a Map's keys may be numbers, arrays, Maps)
/// as its JSON text, cut at [`MAX_KEY_TEXT`] bytes. Uncut, Maps nested as keys of Maps made
/// key text twice as long at each level (each level escapes the quotes and backslashes of the
/// one inside): a result of a few hundred bytes took the ingress's memory.
fn key_text(key: Json) -> String {
    let mut s = match key {
        Json::String(s) => return s,
        other => other.to_string(),
    };
    if s.len() > MAX_KEY_TEXT {
        let mut end = MAX_KEY_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn int_json(i: i128) -> Json {
    if let Ok(i) = i64::try_from(i) {
        Json::from(i)
    } else if let Ok(u) = u64::try_from(i) {
        Json::from(u)
    } else {
        Json::String(i.to_string())
    }
}

fn float_json(f: f64) -> Json {
    serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number)
}

/// Tag 2 (n) or 3 (-1 - n) around big-endian bytes n.
fn bignum_json(negative: bool, bytes: &[u8]) -> Json {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    let bytes = &bytes[start..];
    if bytes.len() <= 8 {
        let n = bytes.iter().fold(0u128, |acc, &b| acc << 8 | u128::from(b));
        return int_json(if negative { -1 - n as i128 } else { n as i128 });
    }
    if !negative {
        return Json::String(decimal(bytes));
    }
    // -1 - n = -(n + 1)
    let mut plus_one = bytes.to_vec();
    let mut carry = true;
    for b in plus_one.iter_mut().rev() {
        if !carry {
            break;
        }
        let (sum, overflow) = b.overflowing_add(1);
        *b = sum;
        carry = overflow;
    }
    if carry {
        plus_one.insert(0, 1);
    }
    Json::String(format!("-{}", decimal(&plus_one)))
}

/// A big-endian unsigned integer of any length in decimal.
fn decimal(bytes: &[u8]) -> String {
    let mut n = bytes.to_vec();
    let mut digits = Vec::new();
    while n.iter().any(|&b| b != 0) {
        let mut rem = 0u32;
        for b in n.iter_mut() {
            let cur = rem << 8 | u32::from(*b);
            *b = (cur / 10) as u8;
            rem = cur % 10;
        }
        digits.push(b'0' + rem as u8);
    }
    if digits.is_empty() {
        digits.push(b'0');
    }
    digits.reverse();
    String::from_utf8(digits).unwrap_or_default()
}

/// RFC 8746 typed arrays: tag 64 + (float << 4 | signed << 3 | little-endian << 2 | size),
/// size 0..3 being 1, 2, 4, 8 bytes for integers and 2, 4, 8, 16 for floats. None for the
/// unsupported ones (binary128, the reserved tag 76) and a length that is not a whole number
/// of elements.
fn typed_array(tag: u64, b: &[u8]) -> Option<Vec<Json>> {
    let t = tag.checked_sub(64).filter(|t| *t < 24)?;
    let (float, signed, little, size) = (t & 16 != 0, t & 8 != 0, t & 4 != 0, t & 3);
    let width = if float { 2usize << size } else { 1usize << size };
    if (float && width == 16) || tag == 76 || !b.chunks_exact(width).remainder().is_empty() {
        return None;
    }
    let values = b.chunks_exact(width).map(|chunk| {
        let mut raw = [0u8; 8];
        raw[..width].copy_from_slice(chunk);
        let bits =
            if little { u64::from_le_bytes(raw) } else { chunk.iter().fold(0u64, |acc, &x| acc << 8 | u64::from(x)) };
        let bits = bits & (u64::MAX >> (64 - 8 * width));
        if float {
            float_json(match width {
                2 => f16_to_f64(bits as u16),
                4 => f64::from(f32::from_bits(bits as u32)),
                _ => f64::from_bits(bits),
            })
        } else if signed {
            // Sign-extend from the element's width.
            let shift = 64 - 8 * width as u32;
            Json::from(((bits << shift) as i64) >> shift)
        } else {
            Json::from(bits)
        }
    });
    Some(values.collect())
}

fn f16_to_f64(h: u16) -> f64 {
    let sign = if h & 0x8000 != 0 { -1.0 } else { 1.0 };
    let exp = i32::from((h >> 10) & 0x1f);
    let frac = f64::from(h & 0x3ff);
    sign * match exp {
        0 => frac * 2f64.powi(-24),
        31 if frac == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1.0 + frac / 1024.0) * 2f64.powi(e - 15),
    }
}

/// Standard base64 with padding.
pub(super) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |acc, (i, &b)| acc | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use ciborium::Value as C;
    use serde_json::json;

    fn tag(t: u64, v: C) -> C {
        C::Tag(t, Box::new(v))
    }

    #[test]
    fn json_becomes_the_cbor_a_grpc_caller_sends() {
        let j: Json = serde_json::from_str(
            r#"[null, true, 3, -4, 18446744073709551615, -9223372036854775808, 1.5, "s", [1], {"b": 1, "a": {}}]"#,
        )
        .unwrap();
        let Json::Array(items) = j else { panic!() };
        let got: Vec<C> = items.iter().map(json_to_cbor).collect();
        assert_eq!(
            got,
            vec![
                C::Null,
                C::Bool(true),
                C::Integer(3.into()),
                C::Integer((-4).into()),
                C::Integer(u64::MAX.into()),
                C::Integer(i64::MIN.into()),
                C::Float(1.5),
                C::Text("s".into()),
                C::Array(vec![C::Integer(1.into())]),
                // Keys keep the caller's order.
                C::Map(vec![(C::Text("b".into()), C::Integer(1.into())), (C::Text("a".into()), C::Map(vec![]))]),
            ]
        );
    }

    #[test]
    fn bodies_become_an_args_array_and_a_params_map() {
        let (args, params) = parse_body(b"[3, \"x\"]").unwrap();
        assert_eq!(args, encode(&C::Array(vec![C::Integer(3.into()), C::Text("x".into())])));
        assert!(params.is_empty());
        let (args, params) = parse_body(br#"{"args": [1], "params": {"model": "mini"}}"#).unwrap();
        assert_eq!(args, encode(&C::Array(vec![C::Integer(1.into())])));
        assert_eq!(params, encode(&C::Map(vec![(C::Text("model".into()), C::Text("mini".into()))])));
        // No arguments: an empty body, an empty object, empty params.
        for body in [&b""[..], b" \n", b"{}", b"[]", br#"{"params": {}}"#] {
            assert_eq!(parse_body(body).unwrap(), (vec![0x80], vec![]), "{body:?}");
        }
        for (body, says) in [
            (&b"[1,"[..], "not valid JSON"),
            (b"3", "the body is a number"),
            (br#"{"arg": [1]}"#, "unknown key 'arg'"),
            (br#"{"args": 1}"#, "`args` must be an array"),
            (br#"{"params": [1]}"#, "`params` must be an object"),
        ] {
            let e = parse_body(body).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
    }

    #[test]
    fn json_numbers_are_parsed_exactly() {
        // Found by fuzz/ (json_ingress): serde_json's default float parsing is fast and may be
        // off by one unit in the last place, so an argument could reach the container as
        // another number than JSON.parse makes of the same text (and than the caller sent).
        for text in ["1844674410741910323274", "1.8446744107419102e21", "8.98846567431158e307", "0.30000000000000004"] {
            let (args, _) = parse_body(format!("[{text}]").as_bytes()).unwrap();
            let want: f64 = text.parse().unwrap();
            assert_eq!(ciborium::from_reader::<C, _>(&args[..]).unwrap(), C::Array(vec![C::Float(want)]), "{text}");
        }
    }

    #[test]
    fn cbor_x_values_become_json() {
        let cases: Vec<(C, Json)> = vec![
            (C::Null, json!(null)),
            (C::Bool(false), json!(false)),
            (C::Integer((-7).into()), json!(-7)),
            (C::Integer(u64::MAX.into()), json!(u64::MAX)),
            (C::Integer((-(1i128 << 64)).try_into().unwrap()), json!("-18446744073709551616")),
            (C::Float(0.25), json!(0.25)),
            (C::Float(f64::NAN), json!(null)),
            (C::Float(f64::NEG_INFINITY), json!(null)),
            (C::Text("hé".into()), json!("hé")),
            (C::Bytes(b"hello".to_vec()), json!("aGVsbG8=")),
            (C::Bytes(vec![]), json!("")),
            // A plain object, and a JS Map (tag 259) with int keys.
            (C::Map(vec![(C::Text("a".into()), C::Integer(1.into()))]), json!({"a": 1})),
            (
                tag(259, C::Map(vec![(C::Integer(2.into()), C::Text("two".into())), (C::Bool(true), C::Null)])),
                json!({"2": "two", "true": null}),
            ),
            // Set, Date, an unknown tag, an Error (tag 27).
            (tag(258, C::Array(vec![C::Integer(1.into()), C::Integer(2.into())])), json!([1, 2])),
            (tag(1, C::Integer(1_700_000_000.into())), json!(1_700_000_000)),
            (tag(1, C::Float(1.5)), json!(1.5)),
            (tag(27, C::Array(vec![C::Text("Error".into()), C::Text("m".into())])), json!(["Error", "m"])),
            // bigint: small bignums are numbers, large ones decimal strings.
            (tag(2, C::Bytes(vec![1, 0])), json!(256)),
            (tag(3, C::Bytes(vec![0xff])), json!(-256)),
            (tag(2, C::Bytes(vec![0xff; 8])), json!(u64::MAX)),
            (tag(3, C::Bytes(vec![0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff])), json!(i64::MIN)),
            (tag(3, C::Bytes(vec![0x80, 0, 0, 0, 0, 0, 0, 0])), json!("-9223372036854775809")),
            (tag(2, C::Bytes([vec![1], vec![0; 16]].concat())), json!("340282366920938463463374607431768211456")),
            (tag(3, C::Bytes(vec![0xff; 16])), json!("-340282366920938463463374607431768211456")),
            (tag(2, C::Bytes(vec![0; 20])), json!(0)),
        ];
        for (cbor, want) in cases {
            assert_eq!(cbor_to_json(&cbor), want, "{cbor:?}");
        }
    }

    #[test]
    fn maps_as_keys_of_maps_stay_small() {
        // Found by fuzz/ (json_ingress): new Map([[new Map([[new Map(...), 2]]), 2]]), 40
        // levels (280 bytes of CBOR), took the ingress terabytes of key text.
        let n = 40;
        let cbor = hex_bytes(&format!("{}0102{}", "d90103a1".repeat(n), "02".repeat(n - 1)));
        let v: C = ciborium::from_reader(&cbor[..]).unwrap();
        let json = serde_json::to_string(&cbor_to_json(&v)).unwrap();
        assert!(json.len() < 4 * MAX_KEY_TEXT, "{} bytes", json.len());
        assert!(json.starts_with(r#"{"{\"{\\\""#) && json.contains('…'), "{json}");
        // One level is its JSON text, as before.
        let one = tag(259, C::Map(vec![(C::Map(vec![(C::Integer(1.into()), C::Integer(2.into()))]), C::Null)]));
        assert_eq!(cbor_to_json(&one), json!({r#"{"1":2}"#: null}));
    }

    fn hex_bytes(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn typed_arrays_decode_per_rfc_8746() {
        let ta = |t: u64, b: &[u8]| cbor_to_json(&tag(t, C::Bytes(b.to_vec())));
        assert_eq!(ta(64, &[1, 255]), json!([1, 255]));
        assert_eq!(ta(68, &[0, 200]), json!([0, 200]), "Uint8ClampedArray");
        assert_eq!(ta(65, &[1, 2]), json!([258]));
        assert_eq!(ta(69, &[1, 2]), json!([513]));
        assert_eq!(ta(66, &[0, 0, 1, 0]), json!([256]));
        assert_eq!(ta(70, &[0, 1, 0, 0, 0xff, 0xff, 0xff, 0xff]), json!([256, 4294967295u32]));
        assert_eq!(ta(67, &[0xff; 8]), json!([u64::MAX]));
        assert_eq!(ta(71, &[1, 0, 0, 0, 0, 0, 0, 0]), json!([1]));
        assert_eq!(ta(72, &[0xff, 0x7f, 0x80]), json!([-1, 127, -128]));
        assert_eq!(ta(73, &[0xff, 0xfe]), json!([-2]));
        assert_eq!(ta(77, &[0xfe, 0xff]), json!([-2]));
        assert_eq!(ta(74, &[0x80, 0, 0, 0]), json!([i32::MIN]));
        assert_eq!(ta(78, &[0, 0, 0, 0x80]), json!([i32::MIN]));
        assert_eq!(ta(75, &[0xff; 8]), json!([-1]));
        assert_eq!(ta(79, &[0, 0, 0, 0, 0, 0, 0, 0x80]), json!([i64::MIN]));
        assert_eq!(ta(80, &[0x3c, 0x00, 0xc0, 0x00]), json!([1.0, -2.0]), "f16 BE");
        assert_eq!(ta(84, &[0x00, 0x7c, 0x01, 0x00]), json!([null, 2f64.powi(-24)]), "f16 LE: inf, subnormal");
        assert_eq!(ta(81, &1.5f32.to_be_bytes()), json!([1.5]));
        assert_eq!(ta(85, &[0.5f32.to_le_bytes(), f32::NAN.to_le_bytes()].concat()), json!([0.5, null]));
        assert_eq!(ta(82, &(-0.125f64).to_be_bytes()), json!([-0.125]));
        assert_eq!(ta(86, &1e300f64.to_le_bytes()), json!([1e300]));
        assert_eq!(ta(86, &[]), json!([]));
        // Not a whole number of elements, binary128, the reserved tag: the bytes as base64.
        assert_eq!(ta(70, &[1, 2, 3]), json!("AQID"));
        assert_eq!(ta(87, &[0; 16]), json!("AAAAAAAAAAAAAAAAAAAAAA=="));
        assert_eq!(ta(76, &[1]), json!("AQ=="));
        // Around something other than bytes: the content.
        assert_eq!(cbor_to_json(&tag(64, C::Array(vec![C::Integer(1.into())]))), json!([1]));
    }

    #[test]
    fn cbor_x_output_round_trips_through_ciborium() {
        // new Map([[1, 'a']]) and new Set(['x']) and new Date(1500) as cbor-x writes them.
        let bytes = [0xd9, 0x01, 0x03, 0xa1, 0x01, 0x61, b'a'];
        let v: C = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(cbor_to_json(&v), json!({"1": "a"}));
        let bytes = [0xd9, 0x01, 0x02, 0x81, 0x61, b'x'];
        let v: C = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(cbor_to_json(&v), json!(["x"]));
        let mut bytes = vec![0xc1, 0xfb];
        bytes.extend(1.5f64.to_be_bytes());
        let v: C = ciborium::from_reader(&bytes[..]).unwrap();
        assert_eq!(cbor_to_json(&v), json!(1.5));
        // undefined (0xf7) is null; 2n ** 64n is a 9-byte bignum.
        let v: C = ciborium::from_reader(&[0x82, 0xf7, 0xc2, 0x49, 1, 0, 0, 0, 0, 0, 0, 0, 0][..]).unwrap();
        assert_eq!(cbor_to_json(&v), json!([null, "18446744073709551616"]));
    }
}
