//! berth's broker mode on NATS JetStream (issue 12): inputs across machines.
//!
//! ARCHITECTURE.md ("Adding things" → "A broker") places it: a crate beside berth-server that
//! a front (`berth serve --broker`) and workers (`berth worker`) use to hand inputs over; its
//! streams, subjects and durable consumers are named by [`berth_core::broker::names`], the
//! same names the KEDA scalers `berth deploy` writes read (README "Deploy"). berth-server's
//! `broker.rs` drives it: the front publishes and routes results, workers pull and settle.
//!
//! The design:
//! - One work-queue stream per function or class, file storage, one subject
//!   ([`Broker::ensure_pool`]). Its workers share the durable pull consumer `workers`, with
//!   `ack_wait` from the pool's `timeout`, `max_deliver` from its retries (plus room for workers lost mid-run) and
//!   `max_ack_pending` from what its workers hold ([`PoolSettings::from_spec`]). A stream or consumer
//!   that exists with other settings, or was made by another app version (berth's version
//!   and the app's fingerprint are in the stream's description), is refused, never
//!   reconfigured under running workers.
//! - Inputs travel in a versioned protobuf envelope, `proto/berth/v1/broker.proto`
//!   ([`envelope`]), one or several of a pool per message ([`inputs_per_message`]: what one
//!   worker runs at once, at most 64), published with the stream's ack and `Nats-Msg-Id` from the
//!   input ids, and published again until the stream has it (a restart of the server).
//! - A [`Worker`] pulls the messages it asks for and settles each message's [`Lease`]: ack, nak
//!   with a delay (the Retries backoff), progress, term; [`Delivery::settle`] settles a message
//!   of several inputs per input (results, then a republish of each input that runs again,
//!   then the ack). A message that is not berth's is logged and termed.
//! - Results go to the caller's reply inbox as requests, those of one message for one front in
//!   one NATS message: the front's [`ResultRouter`] delivers the first result per input id,
//!   drops later duplicates (JetStream delivers at least once) and confirms each message; a
//!   worker acks an input only once its result is confirmed, sending it again meanwhile
//!   ([`Broker::reply_many`]), so a result lost in a NATS restart is sent again. A
//!   `spawn`'s result goes to the app's key-value bucket instead ([`SpawnResults`]), where the
//!   first write per call wins, so `FunctionCall.fromId` works on any front.
pub mod broker;
pub mod dicts;
pub mod envelope;
pub mod error;
pub mod queues;
pub mod results;
pub mod spawned;
pub mod volumes;
pub mod worker;

pub use broker::{inputs_per_message, max_read_ahead, worker_room, Broker, Patience, PendingPublish, PoolSettings};
pub use envelope::{BrokerError, BrokerInput, BrokerResult, BrokerResults, Input, Trace};
pub use error::{Error, ErrorKind};
pub use queues::{JsQueue, Taken};
pub use results::{Offered, ResultRouter, ResultTable};
pub use spawned::{SpawnResults, TickStart};
pub use worker::{Delivery, Fate, Lease, Settled, Worker};
