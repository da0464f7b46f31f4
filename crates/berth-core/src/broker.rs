//! The names a pool has in NATS JetStream (README "Deploy"): one work-queue stream per function
//! or class, the subject its inputs are published on, and the durable consumer its workers pull
//! from. `berth deploy` writes them into the KEDA scalers it generates; the JetStream broker
//! (issue 12) creates and uses the same ones, so they are defined here, once.
//!
//! Stream and consumer names must not contain spaces, `.`, `*`, `>` or path separators, and
//! subject tokens must not contain spaces, `.`, `*` or `>`. App and function names may contain
//! any of these, so each name is escaped into `[A-Za-z0-9-]` plus an escape character:
//!
//! - `A`–`Z`, `a`–`z`, `0`–`9` and `-` stay as they are;
//! - every other byte of the name's UTF-8, `_` included, becomes `_` and two upper-case hex
//!   digits: `.` is `_2E`, `_` is `_5F`, a space `_20`, `é` `_C3_A9`.
//!
//! An escaped name therefore has `_` only before two hex digits, which makes the escaping
//! one-to-one (`a.b` is `a_2Eb`, `a_b` is `a_5Fb`) and lets `__`, which no escaped name
//! contains, join app and function: stream `berth__{app}__{function}`. Two different
//! (app, function) pairs never get the same stream.
//!
//! A stream or consumer name is a directory of the NATS server's store, so it is kept to 255
//! bytes: a longer one keeps its first 237 bytes and ends in `_h` and 16 hex digits of a 64-bit
//! FNV-1a hash of the whole name (`_h` is no escape, so it cannot equal a name that was not
//! shortened). NATS recommends names under 32 characters; berth's are longer when the app and
//! function names are, which a Linux server's store takes.

/// A pool's names in JetStream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerNames {
    /// The work-queue stream holding the pool's inputs: `berth__{app}__{function}`.
    pub stream: String,
    /// The subject callers publish inputs on (the stream's one subject): `berth.{app}.{function}`.
    pub subject: String,
    /// The durable pull consumer the pool's workers share; KEDA's scaler reads its lag.
    pub consumer: String,
}

/// Longest stream or consumer name: one path component of the server's store.
pub const MAX_NAME_BYTES: usize = 255;

/// The durable consumer of every pool's stream. A work-queue stream has one consumer per
/// subject, and each pool has its own stream, so the name need not say which pool.
pub const CONSUMER: &str = "workers";

/// The names of `function` (a function or a class) of `app` in JetStream.
pub fn names(app: &str, function: &str) -> BrokerNames {
    let (app, function) = (escape(app), escape(function));
    BrokerNames {
        stream: bounded(format!("berth__{app}__{function}")),
        subject: format!("berth.{app}.{function}"),
        consumer: CONSUMER.to_string(),
    }
}

/// The core NATS subject on which fronts tell `app`'s workers which calls were cancelled:
/// `berth.{app}._cancel`. No pool's subject is it: an escaped function name has `_` only
/// before two hex digits.
pub fn cancel_subject(app: &str) -> String {
    format!("berth.{}._cancel", escape(app))
}

/// The JetStream key-value bucket of `app`'s `spawn` results, keyed by function call id, so
/// that `FunctionCall.fromId` finds a result on any front: `berth__{app}`. Its stream is
/// `KV_` and the bucket name, kept to [`MAX_NAME_BYTES`] like the others.
pub fn results_bucket(app: &str) -> String {
    bounded_to(format!("berth__{}", escape(app)), MAX_NAME_BYTES - "KV_".len())
}

/// `name` with every byte outside `[A-Za-z0-9-]` written `_XX` (module docs).
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(char::from(b));
        } else {
            out.push('_');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        }
    }
    out
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

/// `name` if it fits in [`MAX_NAME_BYTES`], else its start and a hash of the whole (module docs).
fn bounded(name: String) -> String {
    bounded_to(name, MAX_NAME_BYTES)
}

fn bounded_to(name: String, max: usize) -> String {
    if name.len() <= max {
        return name;
    }
    let hash =
        name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    // The escaped name is ASCII: any byte index is a character boundary.
    format!("{}_h{hash:016x}", &name[..max - 18])
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    /// What NATS takes as a stream or consumer name (module docs).
    fn valid_name(n: &str) -> bool {
        !n.is_empty()
            && n.len() <= MAX_NAME_BYTES
            && n.bytes().all(|b| b.is_ascii_graphic() && !matches!(b, b'.' | b'*' | b'>' | b'/' | b'\\'))
    }

    /// What NATS takes as a subject to publish on: tokens joined by `.`, none empty or a wildcard.
    fn valid_subject(s: &str) -> bool {
        s.split('.').all(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>'))
    }

    #[test]
    fn plain_names_read_as_they_are() {
        let n = names("my-app", "Embedder");
        assert_eq!(n.stream, "berth__my-app__Embedder");
        assert_eq!(n.subject, "berth.my-app.Embedder");
        assert_eq!(n.consumer, "workers");
    }

    #[test]
    fn escapes_what_nats_refuses() {
        assert_eq!(escape("a.b"), "a_2Eb");
        assert_eq!(escape("a_b"), "a_5Fb");
        assert_eq!(escape("a b*c>d/e\\f"), "a_20b_2Ac_3Ed_2Fe_5Cf");
        assert_eq!(escape("é"), "_C3_A9");
        for (app, f) in [("a.b", "c"), ("sp ace", "w*ld>"), ("x/y", "z\\w"), ("tab\t", "nul\0"), ("ünï", "cödé")] {
            let n = names(app, f);
            assert!(valid_name(&n.stream), "{n:?}");
            assert!(valid_name(&n.consumer), "{n:?}");
            assert!(valid_subject(&n.subject), "{n:?}");
            assert_eq!(n.subject.split('.').count(), 3, "{n:?}");
        }
    }

    #[test]
    fn different_pools_never_share_a_stream() {
        let pairs = [
            ("a.b", "c"),
            ("a_b", "c"),
            ("a-b", "c"),
            ("a", "b.c"),
            ("a", "b_c"),
            ("a", "b__c"),
            ("a__b", "c"),
            ("a_", "_b"),
            ("a", "_b"),
            ("a_", "b"),
            ("a", "_5Fb"),
            ("a_5F", "b"),
            ("A", "b"),
            ("a", "B"),
        ];
        let streams: HashSet<_> = pairs.iter().map(|(a, f)| names(a, f).stream).collect();
        assert_eq!(streams.len(), pairs.len(), "{streams:?}");
        let subjects: HashSet<_> = pairs.iter().map(|(a, f)| names(a, f).subject).collect();
        assert_eq!(subjects.len(), pairs.len(), "{subjects:?}");
        assert_ne!(names("a.b", "c").stream, names("a_b", "c").stream);
    }

    #[test]
    fn results_buckets_are_valid_and_per_app() {
        assert_eq!(results_bucket("my-app"), "berth__my-app");
        assert_ne!(results_bucket("a.b"), results_bucket("a_b"));
        let long = results_bucket(&"z".repeat(400));
        assert_eq!(long.len(), MAX_NAME_BYTES - 3);
        assert!(long.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{long}");
    }

    #[test]
    fn long_names_are_shortened_with_a_hash() {
        let long = "x".repeat(200);
        let a = names(&long, &format!("{long}a"));
        let b = names(&long, &format!("{long}b"));
        assert_eq!(a.stream.len(), MAX_NAME_BYTES);
        assert!(valid_name(&a.stream) && valid_name(&b.stream));
        assert_ne!(a.stream, b.stream);
        assert!(a.stream.contains("_h"));
        // A name that fits is never shortened.
        let fits = "y".repeat(MAX_NAME_BYTES - "berth____f".len());
        assert_eq!(names(&fits, "f").stream.len(), MAX_NAME_BYTES);
        assert!(!names(&fits, "f").stream.contains("_h"));
    }
}
