//! The wire format of broker mode: `proto/berth/v1/broker.proto`, compiled by this crate's
//! build script with protox as crates/berth-proto compiles the gRPC contract (no protoc).
//!
//! Why protobuf and not a serde struct: the rest of berth's wire (README "gRPC",
//! proto/berth/v1) is protobuf already, so a front written against the `.proto` files alone can
//! speak broker mode too; proto3 gives the forward compatibility a rolling upgrade needs (an
//! older worker ignores a field a newer front adds), and prost is already in the build, where a
//! serde format would add a second encoding next to the CBOR of the arguments. The envelope
//! still carries an explicit `version`: a change of meaning bumps it, and a reader refuses a
//! version it does not know instead of misreading it.
//!
//! One JetStream message carries one input or several ([`BrokerInputs`]). A message is one
//! lease in JetStream: it is acked, nak'ed, redelivered and termed as a whole. Fronts put
//! several inputs of one pool that are ready at once in one message (berth-server's
//! `broker.rs`, `publish`; at most [`crate::broker::inputs_per_message`]), and per-input
//! semantics stay honest because a worker settles each input on its own
//! ([`crate::Delivery::settle`]): the message is acked only once every input in it has its
//! result or has been republished, and an input that must run again (a retry, or one the
//! worker could not start) is republished alone, as a new message carrying the attempts it
//! spent (`attempt`, [`Input::republished`]); the inputs that finished do not run again.
//! What stays per message: a worker that dies mid-message loses the whole lease, and JetStream
//! delivers the whole message again after its ack deadline, finished inputs included (at least
//! once: the front drops their second results, [`crate::ResultRouter`], but side effects are
//! not undone).
//!
//! Results go back one per input ([`BrokerResult`]) or several for one reply inbox in one core
//! NATS message ([`BrokerResults`], [`decode_results`] reads either); the caller still gets one
//! result per input.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;

use crate::error::{Error, ErrorKind};

#[allow(clippy::all, missing_docs)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/berth.v1.rs"));
}
pub use pb::{
    broker_result::Outcome, BrokerCredit, BrokerError, BrokerInput, BrokerInputs, BrokerItems, BrokerResult,
    BrokerResults, StreamChunk,
};

/// The envelope version this crate writes and reads.
pub const VERSION: u32 = 1;

/// One input as a worker sees it: the envelope's fields plus the attempt this delivery is.
#[derive(Clone, Debug, PartialEq)]
pub struct Input {
    pub input_id: String,
    pub function_call_id: String,
    /// 1 for the first run: the envelope's spent attempts plus JetStream's delivery count.
    pub attempt: u32,
    pub method: String,
    /// CBOR array of the positional arguments.
    pub args: Bytes,
    /// Where the result goes (core NATS subject); empty when nobody waits there.
    pub reply: String,
    /// After it the caller no longer waits.
    pub deadline: Option<SystemTime>,
    /// A class's parameters (CBOR map, canonical); empty for a function.
    pub params: Bytes,
    /// A `spawn`'s: its result is also stored in the app's results bucket
    /// ([`crate::SpawnResults`]), where any front finds it.
    pub keep_result: bool,
    /// The caller's W3C trace context, as the envelope carries it (all zero: none).
    pub trace: Trace,
    /// A generator's input or a web request: its items go to `reply` as they come
    /// ([`StreamChunk`]), then its result; never retried.
    pub stream: bool,
}

/// A W3C trace context as numbers (`BrokerInput`'s trace fields): the trace-id's big-endian
/// halves, a span id, the flags. berth-server reads it as `berth_proto::trace::TraceContext`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Trace {
    pub trace_id_high: u64,
    pub trace_id_low: u64,
    pub span_id: u64,
    pub flags: u32,
}

impl Input {
    /// This input as a new message carries it when it must run again apart from the others of
    /// its message (a retry, or a release by a stopping worker): the attempts it spent so far
    /// travel in `attempt`, so its next delivery is attempt `self.attempt + 1`, as after a nak.
    pub fn republished(&self) -> BrokerInput {
        BrokerInput {
            input_id: self.input_id.clone(),
            function_call_id: self.function_call_id.clone(),
            attempt: self.attempt,
            method: self.method.clone(),
            args: self.args.to_vec(),
            reply: self.reply.clone(),
            deadline_unix_ms: self.deadline.map_or(0, unix_ms),
            params: self.params.to_vec(),
            keep_result: self.keep_result,
            trace_id_high: self.trace.trace_id_high,
            trace_id_low: self.trace.trace_id_low,
            span_id: self.trace.span_id,
            trace_flags: self.trace.flags,
            stream: self.stream,
        }
    }
}

/// Milliseconds since the epoch of `t` (0 when before it), as the envelope carries deadlines.
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Encodes inputs into one message payload.
pub fn encode_inputs(inputs: Vec<BrokerInput>) -> Bytes {
    Bytes::from(BrokerInputs { version: VERSION, inputs }.encode_to_vec())
}

/// Decodes a message payload into typed inputs for delivery number `delivered` (1-based).
/// Anything that is not a berth envelope of a known version, or holds no input, is an error
/// of kind [`ErrorKind::Decode`] saying why.
pub fn decode_inputs(payload: &[u8], delivered: u32) -> Result<Vec<Input>, Error> {
    let m = BrokerInputs::decode(payload)
        .map_err(|e| Error::new(ErrorKind::Decode, format!("not a berth input envelope ({e})")))?;
    known_version("input envelope", m.version)?;
    if m.inputs.is_empty() {
        return Err(Error::new(ErrorKind::Decode, "input envelope holds no input"));
    }
    let mut out = Vec::with_capacity(m.inputs.len());
    for i in m.inputs {
        if i.input_id.is_empty() {
            return Err(Error::new(ErrorKind::Decode, "input envelope holds an input without an id"));
        }
        out.push(Input {
            input_id: i.input_id,
            function_call_id: i.function_call_id,
            attempt: i.attempt.saturating_add(delivered),
            method: i.method,
            args: Bytes::from(i.args),
            reply: i.reply,
            deadline: (i.deadline_unix_ms != 0).then(|| UNIX_EPOCH + Duration::from_millis(i.deadline_unix_ms)),
            params: Bytes::from(i.params),
            keep_result: i.keep_result,
            trace: Trace {
                trace_id_high: i.trace_id_high,
                trace_id_low: i.trace_id_low,
                span_id: i.span_id,
                flags: i.trace_flags,
            },
            stream: i.stream,
        });
    }
    Ok(out)
}

/// `what` (an envelope or a result) of `version` is one this berth reads, else why not.
fn known_version(what: &str, version: u32) -> Result<(), Error> {
    if version == VERSION {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Decode,
        format!(
            "{what} version {version} (this berth reads {VERSION}); run the same berth version on fronts and workers"
        ),
    ))
}

/// Encodes results for one reply inbox: a [`BrokerResult`] when there is one, else one
/// [`BrokerResults`].
pub fn encode_results(mut results: Vec<BrokerResult>) -> Bytes {
    if results.len() == 1 {
        if let Some(r) = results.pop() {
            return Bytes::from(r.encode_to_vec());
        }
    }
    Bytes::from(BrokerResults { version: VERSION, results }.encode_to_vec())
}

/// Encodes a stream input's items for its reply inbox ([`BrokerItems`]).
pub fn encode_chunk(chunk: StreamChunk) -> Bytes {
    Bytes::from(BrokerItems { version: VERSION, chunk: Some(chunk) }.encode_to_vec())
}

/// The items in what a worker published to a reply inbox, if it is a [`BrokerItems`] (told
/// apart from results by its field 7); `Ok(None)` for anything else (a result, to
/// [`decode_results`]).
pub fn decode_chunk(payload: &[u8]) -> Result<Option<StreamChunk>, Error> {
    let Ok(BrokerItems { version, chunk: Some(chunk) }) = BrokerItems::decode(payload) else {
        return Ok(None);
    };
    known_version("items", version)?;
    if chunk.input_id.is_empty() {
        return Err(Error::new(ErrorKind::Decode, "items without an input id"));
    }
    Ok(Some(chunk))
}

/// Encodes a front's credit for a stream input.
pub fn encode_credit(input_id: &str, attempt: u32, taken: u64) -> Bytes {
    Bytes::from(BrokerCredit { version: VERSION, input_id: input_id.to_owned(), attempt, taken }.encode_to_vec())
}

/// Decodes a front's credit.
pub fn decode_credit(payload: &[u8]) -> Result<BrokerCredit, Error> {
    let c = BrokerCredit::decode(payload)
        .map_err(|e| Error::new(ErrorKind::Decode, format!("not a berth credit ({e})")))?;
    known_version("credit", c.version)?;
    Ok(c)
}

/// Decodes what a worker published to a reply inbox: one [`BrokerResult`] or a
/// [`BrokerResults`] (told apart by field 6, which only the latter has).
pub fn decode_results(payload: &[u8]) -> Result<Vec<BrokerResult>, Error> {
    if let Ok(many) = BrokerResults::decode(payload) {
        if !many.results.is_empty() {
            known_version("results", many.version)?;
            for r in &many.results {
                known_version("result", r.version)?;
                if r.input_id.is_empty() {
                    return Err(Error::new(ErrorKind::Decode, "result without an input id"));
                }
            }
            return Ok(many.results);
        }
    }
    decode_result(payload).map(|r| vec![r])
}

/// Decodes a result published to a reply inbox.
pub fn decode_result(payload: &[u8]) -> Result<BrokerResult, Error> {
    let r = BrokerResult::decode(payload)
        .map_err(|e| Error::new(ErrorKind::Decode, format!("not a berth result ({e})")))?;
    known_version("result", r.version)?;
    if r.input_id.is_empty() {
        return Err(Error::new(ErrorKind::Decode, "result without an input id"));
    }
    Ok(r)
}

impl BrokerResult {
    /// A success of `attempt` of `input_id` returning CBOR `value`.
    pub fn value(input_id: impl Into<String>, attempt: u32, value: impl Into<Vec<u8>>) -> Self {
        Self {
            version: VERSION,
            input_id: input_id.into(),
            attempt,
            outcome: Some(Outcome::Value(value.into())),
            items: 0,
        }
    }

    /// A failure of `attempt` of `input_id`.
    pub fn error(input_id: impl Into<String>, attempt: u32, error: BrokerError) -> Self {
        Self { version: VERSION, input_id: input_id.into(), attempt, outcome: Some(Outcome::Error(error)), items: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(id: &str, attempt: u32) -> BrokerInput {
        BrokerInput {
            input_id: id.into(),
            function_call_id: "fc".into(),
            attempt,
            method: "m".into(),
            args: vec![0x80],
            reply: "_INBOX.x".into(),
            deadline_unix_ms: 1_700_000_000_000,
            params: Vec::new(),
            keep_result: true,
            trace_id_high: 0x4bf9_2f35_77b3_4da6,
            trace_id_low: 0xa3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
            trace_flags: 1,
            stream: false,
        }
    }

    #[test]
    fn round_trip_adds_the_delivery_count_to_the_spent_attempts() {
        let p = encode_inputs(vec![input("a", 0), input("b", 2)]);
        let got = decode_inputs(&p, 1).expect("decodes");
        assert_eq!(got.len(), 2);
        assert_eq!((got[0].input_id.as_str(), got[0].attempt), ("a", 1));
        assert_eq!((got[1].input_id.as_str(), got[1].attempt), ("b", 3));
        assert_eq!(got[0].args.as_ref(), &[0x80]);
        assert_eq!(got[0].deadline, Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_000)));
        let trace = Trace {
            trace_id_high: 0x4bf9_2f35_77b3_4da6,
            trace_id_low: 0xa3ce_929d_0e0e_4736,
            span_id: 0x00f0_67aa_0ba9_02b7,
            flags: 1,
        };
        assert_eq!(got[0].trace, trace, "the caller's trace context travels");
        assert_eq!(got[0].republished().span_id, trace.span_id, "and stays with an input published again");
    }

    #[test]
    fn foreign_payloads_are_refused_with_a_reason() {
        for bad in [&b"hello world"[..], &b""[..], &[0xff, 0xff, 0xff][..]] {
            let e = decode_inputs(bad, 1).expect_err("not berth's");
            assert_eq!(e.kind, ErrorKind::Decode, "{e}");
        }
        let other_version = BrokerInputs { version: 9, inputs: vec![input("a", 0)] }.encode_to_vec();
        assert!(decode_inputs(&other_version, 1).expect_err("v9").message.contains("version 9"));
    }

    #[test]
    fn a_republished_input_carries_its_spent_attempts() {
        let got = decode_inputs(&encode_inputs(vec![input("a", 0), input("b", 0)]), 2).expect("decodes");
        // Attempt 2 of "b" failed: alone in a new message, its next delivery is attempt 3.
        let again = decode_inputs(&encode_inputs(vec![got[1].republished()]), 1).expect("decodes");
        assert_eq!(again.len(), 1);
        assert_eq!((again[0].input_id.as_str(), again[0].attempt), ("b", 3));
        assert_eq!(Input { attempt: 2, ..again[0].clone() }, got[1]);
    }

    #[test]
    fn one_or_several_results_decode_alike() {
        let a = BrokerResult::value("a", 1, vec![1]);
        let b =
            BrokerResult::error("b", 2, BrokerError { name: "E".into(), message: "m".into(), stack: String::new() });
        assert_eq!(decode_results(&encode_results(vec![a.clone()])).expect("one"), vec![a.clone()]);
        // One alone is a plain BrokerResult, as decode_result reads it.
        assert_eq!(decode_result(&encode_results(vec![a.clone()])).expect("plain"), a);
        assert_eq!(decode_results(&encode_results(vec![a.clone(), b.clone()])).expect("two"), vec![a.clone(), b]);
        // Several are not mistaken for one result (no input id at field 2).
        assert!(decode_result(&encode_results(vec![a.clone(), a.clone()])).is_err());
        assert!(decode_results(b"junk junk").is_err());
        let v9 = BrokerResults { version: 9, results: vec![a.clone(), a] }.encode_to_vec();
        assert!(decode_results(&v9).expect_err("v9").message.contains("version 9"));
    }

    #[test]
    fn items_results_and_credit_are_told_apart() {
        let chunk = StreamChunk {
            input_id: "a".into(),
            attempt: 2,
            first: 8,
            values: vec![vec![1], vec![2]],
            credit_to: "_INBOX.w".into(),
        };
        let p = encode_chunk(chunk.clone());
        assert_eq!(decode_chunk(&p).expect("items"), Some(chunk));
        assert!(decode_results(&p).is_err(), "items are not a result");
        let one = BrokerResult { items: 3, ..BrokerResult::value("a", 1, vec![1]) };
        let two = vec![one.clone(), BrokerResult::value("b", 1, vec![2])];
        for results in [vec![one.clone()], two] {
            let p = encode_results(results.clone());
            assert_eq!(decode_chunk(&p).expect("not items"), None, "results are not items");
            assert_eq!(decode_results(&p).expect("results"), results);
        }
        let v9 = BrokerItems { version: 9, chunk: Some(StreamChunk { input_id: "a".into(), ..Default::default() }) };
        assert!(decode_chunk(&v9.encode_to_vec()).expect_err("v9").message.contains("version 9"));
        let c = decode_credit(&encode_credit("a", 2, 40)).expect("credit");
        assert_eq!((c.input_id.as_str(), c.attempt, c.taken), ("a", 2, 40));
    }

    #[test]
    fn results_round_trip() {
        let r = BrokerResult::value("a", 2, vec![1, 2]);
        assert_eq!(decode_result(&r.encode_to_vec()).expect("decodes"), r);
        assert!(decode_result(b"junk junk").is_err());
    }
}
