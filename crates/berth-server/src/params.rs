//! A class's parameters, checked in the control plane before any container starts: the same
//! rules, in the same words, as `validateParams` in src/define/decorators.ts (which an embedded
//! `Cls.of` and each container apply), so that a remote caller's mistake reaches the caller as
//! INVALID_ARGUMENT (HTTP 400) instead of a container that exits at its start.
use berth_proto::values::{self, ParamValue};

use crate::functions::shown;
use crate::plane::{FunctionDef, ParamKind, ParamSpec};

/// What a call to `def` with these parameters (CBOR, as sent; empty: none) runs with: every
/// parameter of the class in declaration order, defaults filled in, as one CBOR map. Pools are
/// keyed by it, so a call that passes the defaults shares the pool of one that passes none,
/// and it is what the pool's containers get. A function has none (empty). The error is the
/// message for the caller.
pub(crate) fn canonical(def: &FunctionDef, sent: &[u8]) -> Result<Vec<u8>, String> {
    if !def.is_class {
        return Ok(Vec::new());
    }
    let name = &def.name;
    let entries = values::param_entries(sent).map_err(|e| format!("params of {name} are not valid: {e}"))?;
    let known: Vec<&str> = def.params.iter().map(|p| p.name.as_str()).collect();
    if let Some(e) = entries.iter().find(|e| !known.contains(&e.name)) {
        let key = shown(e.name);
        if known.is_empty() {
            return Err(format!(
                "{name}: unknown parameter '{key}': {name} declares no parameters. Declare one with: @parameter() {key} = <default>"
            ));
        }
        let guess = closest(e.name, &known).map(|g| format!(" Did you mean '{g}'?")).unwrap_or_default();
        return Err(format!("{name}: unknown parameter '{key}'.{guess} Known parameters: {}.", known.join(", ")));
    }
    let mut out = Vec::new();
    berth_proto::values::write_head(&mut out, 5, def.params.len() as u64);
    for p in &def.params {
        // As in a JavaScript object, the last of repeated keys counts; `undefined` is not passed.
        let value = entries.iter().rev().find(|e| e.name == p.name).filter(|e| e.value != ParamValue::Undefined);
        let raw = match (value, &p.default) {
            (Some(e), _) => {
                check_type(name, p, &e.value)?;
                e.raw
            }
            (None, Some(default)) => default.as_slice(),
            (None, None) => {
                return Err(format!(
                    "{name}: missing required parameter '{p}' ({any}). Pass it, e.g. Cls.fromName('{app}', '{name}', \
                     {{ {p}: ... }}) or {{\"params\": {{\"{p}\": ...}}}} over HTTP, or give the field a default.",
                    p = p.name,
                    any = kind_text(ParamKind::Any),
                    app = def.app,
                ))
            }
        };
        berth_proto::values::write_head(&mut out, 3, p.name.len() as u64);
        out.extend_from_slice(p.name.as_bytes());
        out.extend_from_slice(raw);
    }
    Ok(out)
}

fn check_type(class: &str, p: &ParamSpec, v: &ParamValue<'_>) -> Result<(), String> {
    let kind = match v {
        ParamValue::Text(_) => Some(ParamKind::String),
        ParamValue::Number(n) if is_safe_integer(*n) => Some(ParamKind::Integer),
        ParamValue::Bool(_) => Some(ParamKind::Boolean),
        ParamValue::Bytes => Some(ParamKind::Bytes),
        _ => None,
    };
    match kind {
        Some(k) if p.kind == ParamKind::Any || p.kind == k => Ok(()),
        _ => Err(format!("{class}: parameter '{}' must be {}, got {}.", p.name, kind_text(p.kind), describe(v))),
    }
}

/// Number.isSafeInteger.
fn is_safe_integer(n: f64) -> bool {
    n.fract() == 0.0 && n.abs() <= 9_007_199_254_740_991.0
}

fn kind_text(k: ParamKind) -> &'static str {
    match k {
        ParamKind::String => "a string",
        ParamKind::Integer => "an integer number",
        ParamKind::Boolean => "a boolean",
        ParamKind::Bytes => "a Uint8Array",
        ParamKind::Any => "a string, an integer number, a boolean or a Uint8Array",
    }
}

/// describeValue in src/define/decorators.ts.
fn describe(v: &ParamValue<'_>) -> String {
    match v {
        ParamValue::Null => "null".into(),
        ParamValue::Number(n) if is_safe_integer(*n) => format!("the number {}", js_number(*n)),
        ParamValue::Number(n) if n.is_finite() && n.fract() == 0.0 => format!("{} (too large)", js_number(*n)),
        ParamValue::Number(n) => format!("{} (not an integer)", js_number(*n)),
        ParamValue::Text(s) => serde_json::Value::String(shown(s)).to_string(),
        ParamValue::Bool(_) => "a boolean".into(),
        ParamValue::Bytes => "a Uint8Array".into(),
        ParamValue::Undefined => "undefined".into(),
        ParamValue::Other(what) => (*what).into(),
    }
}

/// A number as JavaScript writes it (`${n}`), for the cases a message meets.
fn js_number(n: f64) -> String {
    if n.is_nan() {
        return "NaN".into();
    }
    if n.is_infinite() {
        return if n > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    let a = n.abs();
    if a != 0.0 && !(1e-6..1e21).contains(&a) {
        let e = format!("{n:e}");
        return match e.split_once('e') {
            Some((m, x)) if !x.starts_with('-') => format!("{m}e+{x}"),
            _ => e,
        };
    }
    format!("{n}")
}

/// The candidate closest to `key`, or none when nothing is plausibly meant: a prefix either way
/// (3 characters or more), or a few typos, case aside (`closest` in src/define/options.ts, so that the
/// CLI, the embedded checks and the server suggest alike).
pub(crate) fn closest<'a, S: AsRef<str>>(key: &str, candidates: &'a [S]) -> Option<&'a str> {
    if key.len() > 256 {
        return None; // a name that long is no typo, and the distance costs its length per candidate
    }
    let lower = key.to_lowercase();
    let mut best = None;
    let mut best_d = usize::MAX;
    for c in candidates {
        let c = c.as_ref();
        let l = c.to_lowercase();
        if lower.chars().count() >= 3 && (lower.starts_with(&l) || l.starts_with(&lower)) {
            return Some(c);
        }
        let d = edit_distance(&lower, &l);
        if d < best_d {
            best = Some(c);
            best_d = d;
        }
    }
    best.filter(|_| best_d <= 2.max(key.chars().count() / 3))
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            cur.push((prev[j + 1] + 1).min(cur[j] + 1).min(prev[j] + usize::from(ca != *cb)));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use berth_core::{MethodSpec, PoolSpec};
    use ciborium::Value as C;

    use super::*;

    fn cbor(v: &C) -> Vec<u8> {
        let mut out = Vec::new();
        ciborium::into_writer(v, &mut out).unwrap();
        out
    }

    fn text(s: &str) -> C {
        C::Text(s.into())
    }

    fn map(entries: &[(&str, C)]) -> Vec<u8> {
        cbor(&C::Map(entries.iter().map(|(k, v)| (text(k), v.clone())).collect()))
    }

    /// class Model { @parameter() variant = 'base'; @parameter() size = 3; @parameter() fast = true;
    /// @parameter() key!: string }, or without `key`.
    fn model(required: bool) -> FunctionDef {
        let p = |name: &str, kind, default: Option<C>| ParamSpec {
            name: name.into(),
            kind,
            default: default.map(|d| cbor(&d)),
        };
        let mut params = vec![
            p("variant", ParamKind::String, Some(text("base"))),
            p("size", ParamKind::Integer, Some(C::Integer(3.into()))),
            p("fast", ParamKind::Boolean, Some(C::Bool(true))),
        ];
        if required {
            params.push(p("key", ParamKind::Any, None));
        }
        FunctionDef {
            app: "tiny".into(),
            name: "Model".into(),
            methods: vec!["info".into()],
            is_class: true,
            spec: PoolSpec::new("Model", vec![MethodSpec::default()]),
            arity: Vec::new(),
            params,
            not_callable: Vec::new(),
            generators: Vec::new(),
            web: Vec::new(),
            schedule: None,
            tags: Vec::new(),
        }
    }

    #[test]
    fn unknown_names_get_a_did_you_mean_as_in_typescript() {
        let e = canonical(&model(false), &map(&[("varient", text("x"))])).unwrap_err();
        assert_eq!(
            e,
            "Model: unknown parameter 'varient'. Did you mean 'variant'? Known parameters: variant, size, fast."
        );
        let e = canonical(&model(false), &map(&[("zzzzzz", text("x"))])).unwrap_err();
        assert_eq!(e, "Model: unknown parameter 'zzzzzz'. Known parameters: variant, size, fast.");
        let mut none = model(false);
        none.params.clear();
        let e = canonical(&none, &map(&[("variant", text("x"))])).unwrap_err();
        assert!(e.contains("Model declares no parameters. Declare one with: @parameter() variant = <default>"), "{e}");
    }

    #[test]
    fn wrong_types_and_missing_required_ones_are_named() {
        for (value, got) in [
            (text("3"), "must be an integer number, got \"3\"."),
            (C::Float(1.5), "must be an integer number, got 1.5 (not an integer)."),
            (C::Float(1e300), "must be an integer number, got 1e+300 (too large)."),
            (C::Null, "must be an integer number, got null."),
            (C::Array(vec![]), "must be an integer number, got an array."),
        ] {
            let e = canonical(&model(false), &map(&[("size", value)])).unwrap_err();
            assert_eq!(e, format!("Model: parameter 'size' {got}"));
        }
        let e = canonical(&model(false), &map(&[("variant", C::Integer(3.into()))])).unwrap_err();
        assert_eq!(e, "Model: parameter 'variant' must be a string, got the number 3.");
        let e = canonical(&model(true), &[]).unwrap_err();
        assert!(e.starts_with("Model: missing required parameter 'key' (a string, an integer number, a boolean or a Uint8Array). Pass it"), "{e}");
        // A required parameter takes any of the four types; not others.
        assert!(canonical(&model(true), &map(&[("key", C::Bytes(vec![1]))])).is_ok());
        let e = canonical(&model(true), &map(&[("key", C::Map(vec![]))])).unwrap_err();
        assert!(e.ends_with("must be a string, an integer number, a boolean or a Uint8Array, got an object."), "{e}");
        // A float that is an integer is one, as in JavaScript.
        assert!(canonical(&model(false), &map(&[("size", C::Float(4.0))])).is_ok());
    }

    #[test]
    fn the_defaults_passed_or_not_make_one_pool_key() {
        let def = model(false);
        let none = canonical(&def, &[]).unwrap();
        assert_eq!(
            ciborium::from_reader::<C, _>(&none[..]).unwrap(),
            C::Map(vec![
                (text("variant"), text("base")),
                (text("size"), C::Integer(3.into())),
                (text("fast"), C::Bool(true))
            ])
        );
        for same in [
            map(&[]),
            map(&[("variant", text("base"))]),
            map(&[("fast", C::Bool(true)), ("size", C::Integer(3.into())), ("variant", text("base"))]),
            // {size: null, size: undefined}: the last counts, and undefined is not passed.
            vec![0xa2, 0x64, b's', b'i', b'z', b'e', 0xf6, 0x64, b's', b'i', b'z', b'e', 0xf7],
        ] {
            assert_eq!(canonical(&def, &same).unwrap(), none);
        }
        assert_ne!(canonical(&def, &map(&[("variant", text("large"))])).unwrap(), none);
        // A function has no parameters.
        let mut f = def.clone();
        f.is_class = false;
        assert_eq!(canonical(&f, &[]).unwrap(), Vec::<u8>::new());
    }
}
