//! W3C Trace Context (README "Tracing"): the `traceparent` a caller sends, and the one each
//! input carries.
//!
//! `traceparent` is `00-<32 hex trace-id>-<16 hex parent-id>-<2 hex flags>`. A caller's is
//! continued ([`continued`]): its inputs keep the trace-id and flags and get a parent-id of their
//! own, a new span id the container makes from the input id (src/run/trace.ts `spanHex`). A
//! header that does not parse is ignored (a new trace starts), never an error. Held as bytes, 25
//! per input in the control plane, and formatted only when asked for.

/// One span's place in a trace: the trace it belongs to, its own id (the parent-id of what it
/// calls) and the trace flags (bit 0: sampled). All zero is "none".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TraceContext {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

/// The flags of a trace berth starts: sampled, so that a tracer inside the input (one that
/// follows its parent's decision) records it.
pub const SAMPLED: u8 = 1;

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

impl TraceContext {
    /// Parses a `traceparent` header value as W3C Trace Context level 1 says: version `00`
    /// exactly 55 characters; a later version (not `ff`) at least that, with `-` after the flags
    /// if longer (its fields are read as version 00's); lowercase hex; trace-id and parent-id not
    /// all zero. Anything else is `None`.
    pub fn parse(header: &[u8]) -> Option<Self> {
        if header.len() < TRACEPARENT_LEN {
            return None;
        }
        let version = hex_byte(&header[0..2])?;
        match version {
            0 if header.len() != TRACEPARENT_LEN => return None,
            0xff => return None,
            _ if header.len() > TRACEPARENT_LEN && header[TRACEPARENT_LEN] != b'-' => return None,
            _ => {}
        }
        if header[2] != b'-' || header[35] != b'-' || header[52] != b'-' {
            return None;
        }
        let mut trace_id = [0u8; 16];
        for (i, b) in trace_id.iter_mut().enumerate() {
            *b = hex_byte(&header[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0u8; 8];
        for (i, b) in span_id.iter_mut().enumerate() {
            *b = hex_byte(&header[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&header[53..55])?;
        let ctx = Self { trace_id, span_id, flags };
        ctx.is_valid().then_some(ctx)
    }

    /// Neither id all zero (W3C: such a traceparent is invalid).
    pub fn is_valid(&self) -> bool {
        self.trace_id != [0; 16] && self.span_id != [0; 8]
    }

    /// The version-00 `traceparent` of this context, written into `out`.
    pub fn write(&self, out: &mut [u8; TRACEPARENT_LEN]) {
        out[0..3].copy_from_slice(b"00-");
        for (i, b) in self.trace_id.iter().enumerate() {
            out[3 + 2 * i..5 + 2 * i].copy_from_slice(&hex(*b));
        }
        out[35] = b'-';
        for (i, b) in self.span_id.iter().enumerate() {
            out[36 + 2 * i..38 + 2 * i].copy_from_slice(&hex(*b));
        }
        out[52] = b'-';
        out[53..55].copy_from_slice(&hex(self.flags));
    }

    /// The trace-id as two big-endian halves, as `ExecInput` and `BrokerInput` carry it.
    pub fn trace_id_halves(&self) -> (u64, u64) {
        let (hi, lo) = self.trace_id.split_at(8);
        (u64::from_be_bytes(hi.try_into().unwrap_or_default()), u64::from_be_bytes(lo.try_into().unwrap_or_default()))
    }

    /// From the numbers `ExecInput` and `BrokerInput` carry (all zero: none).
    pub fn from_parts(trace_high: u64, trace_low: u64, span: u64, flags: u32) -> Self {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&trace_high.to_be_bytes());
        trace_id[8..].copy_from_slice(&trace_low.to_be_bytes());
        Self { trace_id, span_id: span.to_be_bytes(), flags: flags as u8 }
    }

    /// The span id as a number.
    pub fn span(&self) -> u64 {
        u64::from_be_bytes(self.span_id)
    }
}

impl std::fmt::Display for TraceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut out = [0u8; TRACEPARENT_LEN];
        self.write(&mut out);
        // Only ASCII hex digits and dashes were written.
        f.write_str(std::str::from_utf8(&out).unwrap_or_default())
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    Some(nibble(two[0])? << 4 | nibble(two[1])?)
}

fn hex(b: u8) -> [u8; 2] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    [DIGITS[usize::from(b >> 4)], DIGITS[usize::from(b & 15)]]
}

/// Span and trace ids for this process: a keyed bijection of a number unique in the process
/// (an input id, a call number), so ids never repeat within it and are unpredictable across
/// processes, at the cost of one hash each and no allocation.
pub struct IdSource {
    keys: [u64; 3],
}

impl IdSource {
    /// Keys from the standard library's random hasher seed (the operating system's randomness).
    pub fn random() -> Self {
        use std::hash::{BuildHasher, Hasher};
        let mut keys = [0u64; 3];
        for (i, k) in keys.iter_mut().enumerate() {
            let mut h = std::collections::hash_map::RandomState::new().build_hasher();
            h.write_usize(i);
            *k = h.finish();
        }
        Self { keys }
    }

    /// Fixed keys, for tests.
    pub fn with_keys(keys: [u64; 3]) -> Self {
        Self { keys }
    }

    /// The span id of number `n` (never zero).
    pub fn span(&self, n: u64) -> u64 {
        nonzero(mix(n ^ self.keys[0]))
    }

    /// A new trace (sampled) for number `n`, with `span` as its span id.
    pub fn new_trace(&self, n: u64, span: u64) -> TraceContext {
        let hi = mix(n ^ self.keys[1]);
        let lo = nonzero(mix(n ^ self.keys[2]));
        TraceContext::from_parts(hi, lo, nonzero(span), u32::from(SAMPLED))
    }
}

/// This process's [`IdSource`], keyed once.
pub fn process_ids() -> &'static IdSource {
    static IDS: std::sync::OnceLock<IdSource> = std::sync::OnceLock::new();
    IDS.get_or_init(IdSource::random)
}

/// The trace a call continues: its caller's, or, without one (or with one that does not
/// parse), a new trace (sampled), numbered by a counter of this process.
pub fn continued(caller: Option<TraceContext>) -> TraceContext {
    static TRACES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    match caller {
        Some(t) if t.is_valid() => t,
        _ => {
            let n = TRACES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            process_ids().new_trace(n, n)
        }
    }
}

/// splitmix64's finalizer: a bijection on u64 that spreads every input bit.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn nonzero(x: u64) -> u64 {
    if x == 0 {
        1
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_and_formats_the_w3c_example() {
        let t = TraceContext::parse(EXAMPLE.as_bytes()).expect("valid");
        assert_eq!(t.trace_id[0], 0x4b);
        assert_eq!(t.trace_id[15], 0x36);
        assert_eq!(t.span(), 0x00f0_67aa_0ba9_02b7);
        assert_eq!(t.flags, 1);
        assert_eq!(t.to_string(), EXAMPLE);
        let (hi, lo) = t.trace_id_halves();
        assert_eq!(TraceContext::from_parts(hi, lo, t.span(), u32::from(t.flags)), t);
    }

    #[test]
    fn keeps_flags_and_trace_id_through_its_parts() {
        let t = TraceContext::parse(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00").expect("valid");
        let (hi, lo) = t.trace_id_halves();
        let c = TraceContext::from_parts(hi, lo, 0x1234, u32::from(t.flags));
        assert_eq!(c.to_string(), "00-0af7651916cd43dd8448eb211c80319c-0000000000001234-00");
        assert!(continued(Some(t)) == t, "a valid caller's is continued as it is");
        let started = continued(TraceContext::parse(b"00-0af7651916cd43dd8448eb211c80319c-0000000000000000-00"));
        assert!(started.is_valid() && started.trace_id != t.trace_id && started.flags == SAMPLED);
    }

    #[test]
    fn refuses_what_w3c_calls_invalid() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0", // short
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-", // 00 with more
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01", // upper case
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // zero trace-id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // zero parent-id
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version ff
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // separator
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7_01", // separator
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // not hex
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01", // not hex
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x", // later version, no dash
            "not a traceparent at all, but just as long as one is...",
        ];
        for b in bad {
            assert_eq!(TraceContext::parse(b.as_bytes()), None, "{b:?}");
        }
    }

    #[test]
    fn reads_a_later_version_as_version_00() {
        let t = TraceContext::parse(b"01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next")
            .expect("a later version's first fields");
        assert_eq!(t.to_string(), EXAMPLE);
        assert!(TraceContext::parse(EXAMPLE.as_bytes()).is_some());
    }

    #[test]
    fn ids_differ_per_number_and_never_zero() {
        let ids = IdSource::with_keys([1, 2, 3]);
        let spans: std::collections::HashSet<u64> = (0..10_000).map(|n| ids.span(n)).collect();
        assert_eq!(spans.len(), 10_000);
        assert!(!spans.contains(&0));
        let a = ids.new_trace(1, ids.span(1));
        let b = ids.new_trace(2, ids.span(2));
        assert!(a.is_valid() && b.is_valid());
        assert_ne!(a.trace_id, b.trace_id);
        assert_eq!(a.flags, SAMPLED);
        // Two processes' sources start different traces for the same number.
        assert_ne!(IdSource::random().new_trace(1, 1).trace_id, IdSource::random().new_trace(1, 1).trace_id);
    }
}
