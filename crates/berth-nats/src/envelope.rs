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
//! lease in JetStream: it is acked, nak'ed, redelivered and termed as a whole. Per-input acks
//! stay honest with several inputs in a message only when the inputs succeed or fail together
//! (a `@batched()` method's batch, which runs as one execution) or when the worker acks the
//! message only after every input in it is settled, republishing an input that needs a retry
//! as a message of its own with its `attempt` carried forward — the `attempt` field exists for
//! that. A nak of a multi-input message runs its finished inputs again; their results are
//! dropped by the front ([`crate::ResultRouter`]), but their side effects are not undone, so
//! fronts publish one input per message unless one of those conditions holds.
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;

use crate::error::{Error, ErrorKind};

#[allow(clippy::all, missing_docs)]
mod pb {
    include!(concat!(env!("OUT_DIR"), "/berth.v1.rs"));
}
pub use pb::{broker_result::Outcome, BrokerError, BrokerInput, BrokerInputs, BrokerResult};

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
    /// Where the result goes (core NATS subject); empty for a `spawn`.
    pub reply: String,
    /// After it the caller no longer waits.
    pub deadline: Option<SystemTime>,
    /// A class's parameters (CBOR map, canonical); empty for a function.
    pub params: Bytes,
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
        Self { version: VERSION, input_id: input_id.into(), attempt, outcome: Some(Outcome::Value(value.into())) }
    }

    /// A failure of `attempt` of `input_id`.
    pub fn error(input_id: impl Into<String>, attempt: u32, error: BrokerError) -> Self {
        Self { version: VERSION, input_id: input_id.into(), attempt, outcome: Some(Outcome::Error(error)) }
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
    fn results_round_trip() {
        let r = BrokerResult::value("a", 2, vec![1, 2]);
        assert_eq!(decode_result(&r.encode_to_vec()).expect("decodes"), r);
        assert!(decode_result(b"junk junk").is_err());
    }
}
