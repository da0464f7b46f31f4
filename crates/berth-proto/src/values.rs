//! The value contract: which CBOR a container decodes.
//!
//! Arguments, class parameters and results cross as CBOR, and a container decodes them with
//! cbor-x (`src/shared/cbor.ts`). cbor-x accepts some CBOR that berth cannot use (tags it turns into
//! shared references, packed values, `Error` objects; simple values it throws on) and throws on
//! some well-formed CBOR (indefinite-length strings, map keys that are arrays, nesting deep
//! enough to overflow its recursion). The control plane checks every request against this one
//! contract, so a caller gets `INVALID_ARGUMENT` naming the problem instead of an input that
//! fails in the container. What the contract accepts, cbor-x decodes to a plain JavaScript
//! value (`scripts/fuzz-values.ts` checks that against cbor-x itself):
//!
//! - exactly one well-formed data item, no trailing bytes;
//! - integers, floats (half, single, double), `false`, `true`, `null`, `undefined`;
//! - byte and text strings of definite length, the length in a head of at most 4 bytes
//!   (text: valid UTF-8);
//! - arrays and maps, definite or indefinite length, nested at most [`MAX_DEPTH`] deep;
//!   a map's keys are text, numbers, booleans, `null` or `undefined` (they become object keys),
//!   except inside tag 259, where any value may be a key;
//! - the tags berth's encoder writes: 0 (date text) and 1 (epoch seconds: a float, or an integer
//!   of up to 32 bits, which cbor-x does not read as a bigint) for `Date`, 2 and 3
//!   (byte strings) for `bigint`, 258 (an array) for `Set`, 259 (a map) for `Map`, the RFC 8746
//!   typed arrays cbor-x knows (a byte string whose length is a whole number of elements), and
//!   55799 (self-described CBOR, ignored; not around `undefined`, which cbor-x makes a Tag of).
use std::fmt;

/// A value wrapped in more tags than this, one directly inside the other, is refused: each tag
/// is a level of the check's recursion (and of cbor-x's), and berth's encoder writes at most one
/// (55799 may come on top). Without a bound, a request of `0xc1` bytes (tag 1 in a row, one byte
/// each) took the check a million frames deep and overflowed the server's stack.
pub const MAX_TAGS_IN_A_ROW: usize = 16;

/// Arrays and maps nested deeper than this (inside the arguments array) are refused; cbor-x
/// decodes recursively, and at a few hundred levels of `Map`s it overflows the stack. The
/// TypeScript caller applies the same bound (`src/shared/serialize.ts`).
pub const MAX_DEPTH: usize = 128;

/// Why bytes are not a value berth passes on, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValueError {
    /// Offset of the offending byte.
    pub at: usize,
    pub problem: String,
}

impl fmt::Display for ValueError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.problem, self.at)
    }
}

impl std::error::Error for ValueError {}

/// Checks positional arguments: one CBOR array. Returns how many arguments it holds.
pub fn check_args(bytes: &[u8]) -> Result<usize, ValueError> {
    match check_one(bytes)? {
        Kind::Array(n) => Ok(n),
        k => Err(ValueError {
            at: 0,
            problem: format!(
                "arguments must be a CBOR array of positional arguments (e.g. [3] for f(3)), not {}",
                k.name()
            ),
        }),
    }
}

/// Checks class parameters: empty (none), or one CBOR map from text names to values.
pub fn check_params(bytes: &[u8]) -> Result<(), ValueError> {
    if bytes.is_empty() {
        return Ok(());
    }
    let mut r = Reader { b: bytes, i: 0, tags: 0 };
    let top = r.item(0)?;
    r.end()?;
    match top {
        Kind::Map { text_keys: true } => Ok(()),
        Kind::Map { .. } => Err(ValueError {
            at: 0,
            problem: "parameters must be a CBOR map whose keys are the parameter names (text)".into(),
        }),
        k => Err(ValueError {
            at: 0,
            problem: format!("parameters must be a CBOR map of parameter names to values, not {}", k.name()),
        }),
    }
}

/// One entry of a class's parameters map, as [`param_entries`] reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct ParamEntry<'a> {
    pub name: &'a str,
    pub value: ParamValue<'a>,
    /// The value's CBOR as it was sent: what a container decodes.
    pub raw: &'a [u8],
}

/// What a parameter's value is to JavaScript (cbor-x), as far as `@parameter()` types care:
/// `string | integer | boolean | Uint8Array` (src/define/decorators.ts).
#[derive(Debug, Clone, PartialEq)]
pub enum ParamValue<'a> {
    Text(&'a str),
    /// A JavaScript number: an integer of up to 32 bits, or a float.
    Number(f64),
    Bool(bool),
    /// A byte string (also tag 64): a `Uint8Array`.
    Bytes,
    Null,
    /// A parameter passed as `undefined` is one not passed.
    Undefined,
    /// Anything else, in the words src/define/decorators.ts uses for it ("an array", "a bigint",
    /// "an object (Date)").
    Other(&'static str),
}

/// The entries of class parameters (empty bytes: none), in the order they were sent, after
/// [`check_params`] accepted them.
pub fn param_entries(bytes: &[u8]) -> Result<Vec<ParamEntry<'_>>, ValueError> {
    check_params(bytes)?;
    let mut out = Vec::new();
    if bytes.is_empty() {
        return Ok(out);
    }
    let top = self_described(bytes);
    let mut r = Reader { b: top, i: 0, tags: 0 };
    let (_, _, len) = r.head()?;
    loop {
        let done = match len {
            Some(n) => out.len() as u64 == n,
            None => top.get(r.i) == Some(&0xff),
        };
        if done {
            break;
        }
        let k = r.i;
        let key = r.item(1)?;
        let ParamValue::Text(name) = param_value(key, &top[k..r.i]) else {
            return r.fail(k, "parameter names must be text");
        };
        let v = r.i;
        let kind = r.item(1)?;
        let raw = &top[v..r.i];
        out.push(ParamEntry { name, value: param_value(kind, raw), raw });
    }
    Ok(out)
}

/// An item without the self-described tags (55799) around it, which cbor-x ignores.
fn self_described(mut b: &[u8]) -> &[u8] {
    loop {
        let mut r = Reader { b, i: 0, tags: 0 };
        match r.head() {
            Ok((6, _, Some(55799))) => b = &b[r.i..],
            _ => return b,
        }
    }
}

/// What a checked item of `kind`, whose bytes are `raw`, is to JavaScript.
fn param_value(kind: Kind, raw: &[u8]) -> ParamValue<'_> {
    let raw = self_described(raw);
    let mut r = Reader { b: raw, i: 0, tags: 0 };
    let Ok((major, info, arg)) = r.head() else {
        return ParamValue::Other("a value");
    };
    let arg = arg.unwrap_or(0);
    match kind {
        Kind::Text => ParamValue::Text(std::str::from_utf8(&raw[r.i..]).unwrap_or_default()),
        // At most 32 bits (a wider head is Int64): exact as a double.
        Kind::Int if major == 0 => ParamValue::Number(arg as f64),
        Kind::Int => ParamValue::Number(-1.0 - arg as f64),
        Kind::Float => ParamValue::Number(match info {
            25 => half_float(arg as u16),
            26 => f64::from(f32::from_bits(arg as u32)),
            _ => f64::from_bits(arg),
        }),
        Kind::Bool => ParamValue::Bool(info == 21),
        Kind::Null => ParamValue::Null,
        Kind::Undefined => ParamValue::Undefined,
        Kind::Bytes => ParamValue::Bytes,
        Kind::TypedArray if arg == 64 => ParamValue::Bytes,
        Kind::TypedArray => ParamValue::Other(match arg {
            65 | 69 => "an object (Uint16Array)",
            66 | 70 => "an object (Uint32Array)",
            67 | 71 => "an object (BigUint64Array)",
            68 => "an object (Uint8ClampedArray)",
            72 => "an object (Int8Array)",
            73 | 77 => "an object (Int16Array)",
            74 | 78 => "an object (Int32Array)",
            75 | 79 => "an object (BigInt64Array)",
            81 | 85 => "an object (Float32Array)",
            _ => "an object (Float64Array)",
        }),
        Kind::Int64 | Kind::BigInt => ParamValue::Other("a bigint"),
        Kind::Array(_) => ParamValue::Other("an array"),
        Kind::Map { .. } => ParamValue::Other("an object"),
        Kind::Date => ParamValue::Other("an object (Date)"),
        Kind::Set => ParamValue::Other("an object (Set)"),
        Kind::JsMap => ParamValue::Other("an object (Map)"),
        Kind::Break => ParamValue::Other("a break code"),
    }
}

/// An IEEE 754 half-precision float.
fn half_float(bits: u16) -> f64 {
    let (exp, mant) = (i32::from((bits >> 10) & 0x1f), f64::from(bits & 0x3ff));
    let v = match exp {
        0 => mant * 2f64.powi(-24),
        31 if mant == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        _ => (mant + 1024.0) * 2f64.powi(exp - 25),
    };
    if bits & 0x8000 != 0 {
        -v
    } else {
        v
    }
}

/// Writes a CBOR head: major type `major` (0-7) with argument `n`, in the fewest bytes.
pub fn write_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

/// Checks one value of any shape (a result, an element).
pub fn check_value(bytes: &[u8]) -> Result<(), ValueError> {
    match check_one(bytes)? {
        Kind::Break => Err(ValueError { at: 0, problem: "a break code (0xff) alone is not a value".into() }),
        _ => Ok(()),
    }
}

fn check_one(bytes: &[u8]) -> Result<Kind, ValueError> {
    let mut r = Reader { b: bytes, i: 0, tags: 0 };
    let top = r.item(0)?;
    r.end()?;
    Ok(top)
}

/// What an item decodes to, as far as the contract cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    /// An integer with an 8-byte head: cbor-x reads it as a `bigint`, whatever its value.
    Int64,
    Float,
    Bytes,
    Text,
    /// With its element count.
    Array(usize),
    /// `text_keys`: every key is text (what parameters need).
    Map {
        text_keys: bool,
    },
    Bool,
    Null,
    Undefined,
    /// A tagged value, by what it becomes in JavaScript.
    Date,
    BigInt,
    Set,
    JsMap,
    TypedArray,
    /// A break code (only meaningful to the indefinite-length container reading it).
    Break,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Int => "an integer",
            Kind::Int64 => "an integer with an 8-byte head (a bigint in JavaScript)",
            Kind::Float => "a float",
            Kind::Bytes => "a byte string",
            Kind::Text => "a text string",
            Kind::Array(_) => "an array",
            Kind::Map { .. } => "a map",
            Kind::Bool => "a boolean",
            Kind::Null => "null",
            Kind::Undefined => "undefined",
            Kind::Date => "a date (tag 0 or 1)",
            Kind::BigInt => "a bignum (tag 2 or 3)",
            Kind::Set => "a Set (tag 258)",
            Kind::JsMap => "a Map (tag 259)",
            Kind::TypedArray => "a typed array",
            Kind::Break => "a break code",
        }
    }

    /// Keys of a plain map become JavaScript property names; cbor-x refuses objects there.
    fn is_property_key(self) -> bool {
        matches!(
            self,
            Kind::Int
                | Kind::Int64
                | Kind::Float
                | Kind::Text
                | Kind::Bool
                | Kind::Null
                | Kind::Undefined
                | Kind::BigInt
        )
    }
}

/// The typed-array tags cbor-x decodes, with their element size in bytes.
fn typed_array_element(tag: u64) -> Option<usize> {
    match tag {
        64 | 68 | 72 => Some(1),                // Uint8, Uint8Clamped, Int8
        65 | 69 | 73 | 77 => Some(2),           // Uint16 BE/LE, Int16 BE/LE
        66 | 70 | 74 | 78 | 81 | 85 => Some(4), // Uint32, Int32, Float32 (BE/LE)
        67 | 71 | 75 | 79 | 82 | 86 => Some(8), // BigUint64, BigInt64, Float64 (BE/LE)
        _ => None,
    }
}

/// cbor-x (with cbor-extract, which it loads where it can) throws "Unexpected end of buffer
/// reading string" on a string whose length has an 8-byte head once a non-ASCII text string came
/// before it. No string berth passes on is that long; encoders write the shortest head.
const WIDE_LENGTH: &str = "a string whose length has an 8-byte head (0x5b/0x7b): berth's decoder misreads those; \
                           write the length in the shortest head, as CBOR encoders do";

const TAGS: &str = "0/1 (Date), 2/3 (bigint), 258 (Set), 259 (Map), 64–86 (typed arrays), 55799";

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
    /// Tags around the item being read, one directly inside the other.
    tags: usize,
}

impl Reader<'_> {
    fn fail<T>(&self, at: usize, problem: impl Into<String>) -> Result<T, ValueError> {
        Err(ValueError { at, problem: problem.into() })
    }

    fn end(&self) -> Result<(), ValueError> {
        if self.i == self.b.len() {
            return Ok(());
        }
        self.fail(
            self.i,
            format!("{} byte(s) follow the end of the value: send exactly one CBOR value", self.b.len() - self.i),
        )
    }

    fn byte(&mut self) -> Result<u8, ValueError> {
        let Some(&b) = self.b.get(self.i) else {
            return self.fail(self.i, "the CBOR ends in the middle of a value (truncated?)");
        };
        self.i += 1;
        Ok(b)
    }

    fn take(&mut self, n: u64) -> Result<&[u8], ValueError> {
        let left = (self.b.len() - self.i) as u64;
        if n > left {
            return self
                .fail(self.i, format!("the CBOR ends in the middle of a value: {n} byte(s) announced, {left} left"));
        }
        let s = &self.b[self.i..self.i + n as usize];
        self.i += n as usize;
        Ok(s)
    }

    /// The head of an item: major type, and its argument (`None` for indefinite length).
    fn head(&mut self) -> Result<(u8, u8, Option<u64>), ValueError> {
        let at = self.i;
        let ib = self.byte()?;
        let (major, info) = (ib >> 5, ib & 0x1f);
        let arg = match info {
            0..=23 => Some(u64::from(info)),
            24..=27 => {
                let n = 1usize << (info - 24);
                let s = self.take(n as u64)?;
                Some(s.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)))
            }
            31 => None,
            _ => {
                return self
                    .fail(at, format!("additional information {info} is reserved: this is not well-formed CBOR"))
            }
        };
        Ok((major, info, arg))
    }

    fn item(&mut self, depth: usize) -> Result<Kind, ValueError> {
        let at = self.i;
        let (major, info, arg) = self.head()?;
        match (major, arg) {
            (0 | 1, Some(_)) if info == 27 => Ok(Kind::Int64),
            (0 | 1, Some(_)) => Ok(Kind::Int),
            (2 | 3, Some(_)) if info == 27 => self.fail(at, WIDE_LENGTH),
            (2, Some(n)) => self.take(n).map(|_| Kind::Bytes),
            (3, Some(n)) => {
                let s = self.take(n)?;
                match std::str::from_utf8(s) {
                    Ok(_) => Ok(Kind::Text),
                    Err(e) => self.fail(at, format!("a text string is not valid UTF-8 ({e})")),
                }
            }
            (2 | 3, None) => self.fail(
                at,
                "an indefinite-length string: berth's decoder takes strings of definite length only \
                 (most CBOR encoders write those)",
            ),
            (4, len) => {
                self.nested(at, depth)?;
                let tags = std::mem::take(&mut self.tags);
                let mut n = 0usize;
                loop {
                    if len.is_some_and(|len| n as u64 == len) {
                        break;
                    }
                    let el = self.i;
                    match self.item(depth + 1)? {
                        Kind::Break if len.is_none() => break,
                        Kind::Break => return self.fail(el, "a break code (0xff) inside a definite-length array"),
                        _ => n += 1,
                    }
                }
                self.tags = tags;
                Ok(Kind::Array(n))
            }
            (5, len) => {
                self.nested(at, depth)?;
                self.map(len, depth, true)
            }
            (6, Some(tag)) => {
                if self.tags == MAX_TAGS_IN_A_ROW {
                    return self.fail(at, format!("a value wrapped in more than {MAX_TAGS_IN_A_ROW} tags in a row"));
                }
                self.tags += 1;
                let k = self.tagged(at, tag, depth)?;
                self.tags -= 1;
                Ok(k)
            }
            (7, _) => match info {
                20 | 21 => Ok(Kind::Bool),
                22 => Ok(Kind::Null),
                23 => Ok(Kind::Undefined),
                25..=27 => Ok(Kind::Float),
                31 => Ok(Kind::Break),
                24 => self.fail(at, "a simple value: berth decodes false, true, null and undefined only"),
                _ => self.fail(at, format!("simple value {info}: berth decodes false, true, null and undefined only")),
            },
            _ => self.fail(at, format!("major type {major} cannot have an indefinite length: not well-formed CBOR")),
        }
    }

    fn nested(&self, at: usize, depth: usize) -> Result<(), ValueError> {
        if depth > MAX_DEPTH {
            return self.fail(at, format!("arrays and maps are nested more than {MAX_DEPTH} levels deep"));
        }
        Ok(())
    }

    /// A map's entries; `property_keys`: keys must be able to become object property names.
    fn map(&mut self, len: Option<u64>, depth: usize, property_keys: bool) -> Result<Kind, ValueError> {
        let tags = std::mem::take(&mut self.tags);
        let mut n = 0u64;
        let mut text_keys = true;
        loop {
            if len.is_some_and(|len| n == len) {
                break;
            }
            let k = self.i;
            let key = self.item(depth + 1)?;
            match key {
                Kind::Break if len.is_none() => break,
                Kind::Break => return self.fail(k, "a break code (0xff) inside a definite-length map"),
                key if property_keys && !key.is_property_key() => {
                    return self.fail(
                        k,
                        format!(
                            "a map key is {}: keys of a plain map become object keys and must be text or numbers \
                             (wrap the map in tag 259 for a Map with other keys)",
                            key.name()
                        ),
                    )
                }
                key => text_keys &= key == Kind::Text,
            }
            let v = self.i;
            if self.item(depth + 1)? == Kind::Break {
                return self.fail(v, "a map key without a value (break code where the value belongs)");
            }
            n += 1;
        }
        self.tags = tags;
        Ok(Kind::Map { text_keys })
    }

    fn tagged(&mut self, at: usize, tag: u64, depth: usize) -> Result<Kind, ValueError> {
        let content = self.i;
        let wrong = |me: &Self, what: &str, want: &str, got: Kind| {
            me.fail(content, format!("tag {tag} ({what}) must wrap {want}, not {}", got.name()))
        };
        match tag {
            0 => match self.item(depth)? {
                Kind::Text => Ok(Kind::Date),
                k => wrong(self, "date", "a text string", k),
            },
            1 => match self.item(depth)? {
                Kind::Int | Kind::Float => Ok(Kind::Date),
                // cbor-x computes `new Date(seconds * 1000)`, which throws on a bigint.
                k => wrong(self, "epoch date", "an integer of up to 32 bits or a float", k),
            },
            2 | 3 => match self.item(depth)? {
                Kind::Bytes => Ok(Kind::BigInt),
                k => wrong(self, "bignum", "a byte string", k),
            },
            258 => match self.item(depth)? {
                Kind::Array(_) => Ok(Kind::Set),
                k => wrong(self, "Set", "an array", k),
            },
            259 => {
                // Any value may be a Map's key: read the map here, without the key rule.
                let (major, _, len) = self.head()?;
                if major != 5 {
                    self.i = content;
                    let k = self.item(depth)?;
                    return wrong(self, "Map", "a map", k);
                }
                self.nested(content, depth)?;
                self.map(len, depth, false).map(|_| Kind::JsMap)
            }
            55799 => match self.item(depth)? {
                // cbor-x returns what the tag wraps, and makes a Tag object of the tag when
                // that is `undefined`.
                k @ (Kind::Break | Kind::Undefined) => {
                    wrong(self, "self-described CBOR", "a value other than undefined", k)
                }
                k => Ok(k),
            },
            t => match typed_array_element(t) {
                Some(size) => {
                    let (major, info, len) = self.head()?;
                    match (major, len) {
                        (2, Some(_)) if info == 27 => self.fail(content, WIDE_LENGTH),
                        (2, Some(n)) => {
                            self.take(n)?;
                            if n % size as u64 != 0 {
                                return self.fail(
                                    content,
                                    format!("tag {t} (typed array) holds {n} bytes, not a whole number of {size}-byte elements"),
                                );
                            }
                            Ok(Kind::TypedArray)
                        }
                        _ => {
                            self.i = content;
                            let k = self.item(depth)?;
                            wrong(self, "typed array", "a definite-length byte string", k)
                        }
                    }
                }
                None => self.fail(at, format!("CBOR tag {t} is not one berth decodes; values may use tags {TAGS}")),
            },
        }
    }
}

/// A dict operation's answer as one CBOR value, `[found, len, value or null, [[key, value], ...]]`,
/// the stored keys and values in it as they are: what src/data/dict.ts reads from the binding's
/// client and from the data socket (berth-server datasock.rs).
pub fn dict_answer(r: &crate::v1::DictResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        16 + r.value.len() + r.entries.iter().map(|e| e.key.len() + e.value.len() + 2).sum::<usize>(),
    );
    write_head(&mut out, 4, 4);
    out.push(if r.found { 0xf5 } else { 0xf4 });
    write_head(&mut out, 0, r.len);
    if r.found && !r.value.is_empty() {
        out.extend_from_slice(&r.value);
    } else {
        out.push(0xf6);
    }
    write_head(&mut out, 4, r.entries.len() as u64);
    for e in &r.entries {
        write_head(&mut out, 4, 2);
        out.extend_from_slice(&e.key);
        out.extend_from_slice(&e.value);
    }
    out
}

/// A queue operation's answer as one CBOR value, `[[item, ...], len, found, lease]`, its items in it
/// as they are (src/data/queue.ts reads the first three; the data socket's client acks the lease).
pub fn queue_answer(r: &crate::v1::QueueResponse) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + r.values.iter().map(Vec::len).sum::<usize>());
    write_head(&mut out, 4, 4);
    write_head(&mut out, 4, r.values.len() as u64);
    for v in &r.values {
        out.extend_from_slice(v);
    }
    write_head(&mut out, 0, r.len);
    out.push(if r.found { 0xf5 } else { 0xf4 });
    write_head(&mut out, 0, r.lease);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex")).collect()
    }

    fn args(s: &str) -> Result<usize, String> {
        check_args(&hex(s)).map_err(|e| e.to_string())
    }

    #[test]
    fn what_berths_encoder_writes_passes() {
        // [1, -2, 1.5, "a", h'01', null, undefined, true] and each JS type as cbor-x writes it.
        assert_eq!(args("88 01 21 fb3ff8000000000000 6161 4101 f6 f7 f5"), Ok(8));
        assert_eq!(args("81 c11a00000001"), Ok(1)); // Date
        assert_eq!(args("82 c249400000000000000000 c3493fffffffffffffffff"), Ok(2)); // bigint ±2^70
        assert_eq!(args("81 d90102 8101"), Ok(1)); // Set
        assert_eq!(args("81 d90103 a10102"), Ok(1)); // Map {1 => 2}
        assert_eq!(args("81 d90103 a1 8101 02"), Ok(1)); // Map with an array key
        assert_eq!(args("82 d845420100 d85648000000000000f03f"), Ok(2)); // Uint16Array, Float64Array
        assert_eq!(args("81 b90001 6161 01"), Ok(1)); // {a: 1}, as cbor-x writes objects
        assert_eq!(args("9f 01 bf 6161 01 ff ff"), Ok(2)); // indefinite array and map
        assert_eq!(args("80"), Ok(0));
        assert_eq!(args("d9d9f7 8101"), Ok(1)); // self-described
    }

    #[test]
    fn what_crashed_containers_is_refused_with_the_reason() {
        let e = args("8103 ffff").unwrap_err();
        assert!(e.contains("2 byte(s) follow the end of the value"), "{e}");
        for (cbor, says) in [
            ("81 d81d 00", "CBOR tag 29 is not one berth decodes"),
            ("81 d81b 820000", "CBOR tag 27"),
            ("81 d8e1 00", "CBOR tag 225"),
            ("81 d90102 01", "tag 258 (Set) must wrap an array, not an integer"),
            ("81 d90102 a0", "tag 258 (Set) must wrap an array, not a map"),
            ("81 c2 f6", "tag 2 (bignum) must wrap a byte string, not null"),
            ("81 c1 c24101", "tag 1 (epoch date) must wrap an integer of up to 32 bits or a float"),
            ("81 d845 4101", "holds 1 bytes, not a whole number of 2-byte elements"),
            ("81 d840 01", "tag 64 (typed array) must wrap a definite-length byte string"),
            ("81 5f4101ff", "indefinite-length string"),
            ("81 7f6161ff", "indefinite-length string"),
            ("81 e0", "simple value 0"),
            ("81 f820", "a simple value"),
            ("81 1c", "additional information 28 is reserved"),
            ("81 a1 8101 02", "a map key is an array"),
            ("81 a1 4101 02", "a map key is a byte string"),
            ("81 62c328", "not valid UTF-8"),
            ("82 01", "ends in the middle of a value"),
            ("81 5affffffff", "4294967295 byte(s) announced"),
            ("81 5bffffffffffffffff", "length has an 8-byte head"),
            ("9bffffffffffffffff 01", "ends in the middle"),
            ("81 ff", "break code (0xff) inside a definite-length array"),
            ("ff", "arguments must be a CBOR array"),
            ("9f bf 6161 ff ff", "a map key without a value"),
            ("", "ends in the middle"),
            ("03", "arguments must be a CBOR array of positional arguments (e.g. [3] for f(3)), not an integer"),
        ] {
            let e = args(cbor).expect_err(cbor);
            assert!(e.contains(says), "{cbor}: {e}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = |n: usize| format!("81{}01", "81".repeat(n));
        assert_eq!(args(&deep(MAX_DEPTH)), Ok(1));
        let e = args(&deep(MAX_DEPTH + 1)).unwrap_err();
        assert!(e.contains("nested more than 128 levels"), "{e}");
        // Maps and Maps-in-tags count the same, and a million levels cost no stack.
        let maps = format!("81{}01", "d90103a101".repeat(MAX_DEPTH + 1));
        assert!(args(&maps).unwrap_err().contains("nested more than"));
        assert!(args(&"81".repeat(1_000_000)).unwrap_err().contains("nested more than"));
    }

    #[test]
    fn tags_in_a_row_are_bounded() {
        // Found by fuzz/ (values): a million tags in a row took the check a million frames
        // deep, and a 3 MB request overflowed the server's stack.
        for tag in ["c1", "c0", "c2", "d90102", "d90103", "d9d9f7"] {
            let e = args(&format!("81{}01", tag.repeat(1_000_000))).unwrap_err();
            assert!(e.contains("more than 16 tags in a row"), "{tag}: {e}");
        }
        let wrapped = |n: usize| format!("81{}d90102 80", "d9d9f7".repeat(n));
        assert_eq!(args(&wrapped(MAX_TAGS_IN_A_ROW - 1)), Ok(1));
        assert!(args(&wrapped(MAX_TAGS_IN_A_ROW)).is_err());
        // The count starts again inside arrays and maps: a Set of Sets of Maps, 128 deep.
        let sets = format!("81{}01", "d90102 81 d90103 a1 01".repeat(MAX_DEPTH / 2));
        assert_eq!(args(&sets), Ok(1));
    }

    #[test]
    fn an_epoch_date_is_not_a_bigint() {
        // Found by scripts/fuzz-values.ts: cbor-x reads every integer with an 8-byte head as a
        // bigint, and its tag 1 handler (`new Date(seconds * 1000)`) throws on one: "Cannot mix
        // BigInt and other types". berth's encoder writes dates as uint32 or float64 seconds.
        for cbor in ["81 c1 1b0000000000000001", "81 c1 3b0000000000000001", "81 c1 d9d9f7 1b0000000000000001"] {
            let e = args(cbor).unwrap_err();
            assert!(
                e.contains("must wrap an integer of up to 32 bits or a float, not an integer with an 8-byte head"),
                "{e}"
            );
        }
        assert_eq!(args("81 c1 1affffffff"), Ok(1));
        assert_eq!(args("81 c1 3affffffff"), Ok(1));
        // Elsewhere a 64-bit integer is a bigint, which is fine: as a value, and as a key.
        assert_eq!(args("82 1bffffffffffffffff a1 3b0000000000000001 01"), Ok(2));
    }

    #[test]
    fn string_lengths_have_at_most_4_byte_heads() {
        // Found by scripts/fuzz-values.ts: ["é", h''] with the empty byte string's length in
        // an 8-byte head passed, and cbor-x threw "Unexpected end of buffer reading string".
        for cbor in
            ["82 62c3a9 5b0000000000000000", "82 62c3a9 7b0000000000000001 61", "82 62c3a9 d845 5b0000000000000000"]
        {
            let e = args(cbor).unwrap_err();
            assert!(e.contains("length has an 8-byte head"), "{cbor}: {e}");
        }
        assert_eq!(args("83 62c3a9 5a00000001 61 7a00000001 61"), Ok(3));
        // Arrays and maps may have one (cbor-x reads those).
        assert_eq!(args("82 62c3a9 9b0000000000000000"), Ok(2));
    }

    #[test]
    fn self_described_undefined_is_refused() {
        // Found by scripts/fuzz-values.ts: cbor-x decodes 55799(undefined) to a Tag object, not
        // to undefined, and a Tag is no value berth passes on.
        for cbor in ["81 d9d9f7 f7", "81 da0000d9f7 f7", "81 d9d9f7 d9d9f7 f7", "81 a1 6161 d9d9f7 f7"] {
            let e = args(cbor).unwrap_err();
            assert!(e.contains("must wrap a value other than undefined, not undefined"), "{cbor}: {e}");
        }
        assert_eq!(args("82 d9d9f7 f6 d9d9f7 8101"), Ok(2));
    }

    #[test]
    fn a_break_code_is_not_a_value() {
        // Found by fuzz/ (values): a lone break code passed check_value, and one inside tag
        // 55799 ended an indefinite array early: `[_ 55799(break)]` passed as `[]`.
        assert!(check_value(&hex("ff")).unwrap_err().to_string().contains("break code (0xff) alone"));
        let e = args("9f d9d9f7 ff").unwrap_err();
        assert!(
            e.contains("tag 55799 (self-described CBOR) must wrap a value other than undefined, not a break code"),
            "{e}"
        );
        assert!(args("9f bf d9d9f7 ff ff").is_err());
        assert!(args("81 d9d9f7 ff").is_err());
    }

    #[test]
    fn param_entries_read_what_javascript_sees() {
        // {model: "mini", n: 3, neg: -2, f: 1.5, h: 1.0 (half), ok: true, b: h'01', u: undefined,
        //  big: 2^32 with an 8-byte head, list: [], d: Date}, the name "model" self-described.
        let bytes = hex("ab d9d9f7 656d6f64656c 646d696e69  616e 03  636e6567 21  6166 fb3ff8000000000000  6168 f93c00
             626f6b f5  6162 4101  6175 f7  63626967 1b0000000100000000  646c697374 80  6164 c11a00000001");
        let got: Vec<(&str, ParamValue<'_>)> =
            param_entries(&bytes).unwrap().into_iter().map(|e| (e.name, e.value)).collect();
        assert_eq!(
            got,
            vec![
                ("model", ParamValue::Text("mini")),
                ("n", ParamValue::Number(3.0)),
                ("neg", ParamValue::Number(-2.0)),
                ("f", ParamValue::Number(1.5)),
                ("h", ParamValue::Number(1.0)),
                ("ok", ParamValue::Bool(true)),
                ("b", ParamValue::Bytes),
                ("u", ParamValue::Undefined),
                ("big", ParamValue::Other("a bigint")),
                ("list", ParamValue::Other("an array")),
                ("d", ParamValue::Other("an object (Date)")),
            ]
        );
        // The raw value is what was sent, and an indefinite map reads the same.
        let indefinite = hex("bf 6161 d840 4101 ff");
        let e = param_entries(&indefinite).unwrap();
        assert_eq!((e[0].name, e[0].raw, &e[0].value), ("a", &hex("d840 4101")[..], &ParamValue::Bytes));
        assert_eq!(param_entries(&[]).unwrap(), vec![]);
        assert!(param_entries(&hex("a1 01 02")).is_err());
    }

    #[test]
    fn params_are_a_map_of_names() {
        assert_eq!(check_params(&[]), Ok(()));
        assert_eq!(check_params(&hex("a1 656d6f64656c 646d696e69")), Ok(()));
        let e = check_params(&hex("a1 01 02")).unwrap_err().to_string();
        assert!(e.contains("keys are the parameter names"), "{e}");
        let e = check_params(&hex("80")).unwrap_err().to_string();
        assert!(e.contains("not an array"), "{e}");
    }
}
