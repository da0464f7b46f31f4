//! berth's control plane.
//!
//! Callers reach functions through `berth.v1.Functions`; containers attach through
//! `berth.v1.Containers`, one bidirectional stream each, with credit-based flow control. The
//! berth-core scheduler decides everything (slots, batches, timeouts, retries, lifecycle); this
//! crate only moves its decisions and the CBOR payloads between the two sides. How a
//! container's process is started is a [`Spawner`]'s business. An optional HTTP/1.1 JSON
//! ingress (`ServeOptions::http_addr`) makes the same calls as `Invoke`.

mod auth;
pub mod broker;
mod catalog;
mod client;
mod conn;
mod containers;
mod dashboard;
mod datasock;
mod dicts;
mod driver;
mod functions;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod gpu;
mod http;
mod map;
mod metrics;
mod params;
mod plane;
mod proxy;
mod queues;
pub mod schedule;
mod server;
pub mod supervisor;

pub use catalog::{DeployAsk, Replaced};
pub use client::{Client, ConnectError, GenItems, MapResults};
pub use conn::ConnCounters;
pub use plane::{Arity, ExitReporter, FunctionDef, ParamKind, ParamSpec, Registry, Spawner, WebSpec};
pub use server::{serve_threads, ControlPlane, Killer, ServeOptions};
pub use supervisor::{Supervisor, SupervisorHandle, SupervisorOptions};
