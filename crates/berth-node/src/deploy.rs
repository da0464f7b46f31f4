//! What `berth deploy` (src/deploy/) takes from the crates: a pool's names in JetStream
//! (`berth_core::broker`, the ones the broker will use) and the `gpu` option parsed as the
//! control plane parses it (`berth_server::gpu::parse_request`, the same errors).
use napi::{Error, Result};
use napi_derive::napi;

/// A pool's stream, subject and durable consumer in NATS JetStream.
#[napi(object)]
pub struct BindingBrokerNames {
    pub stream: String,
    pub subject: String,
    pub consumer: String,
}

/// The JetStream names of `name` (a function or a class) of `app` (crates/berth-core/src/broker.rs).
#[napi]
pub fn broker_names(app: String, name: String) -> BindingBrokerNames {
    let n = berth_core::broker::names(&app, &name);
    BindingBrokerNames { stream: n.stream, subject: n.subject, consumer: n.consumer }
}

/// One choice of a `gpu` option: its kind, upper case (`ANY` for any device), and how many.
#[napi(object)]
pub struct BindingGpuChoice {
    pub kind: String,
    pub count: u32,
}

/// The `gpu` option's choices in order of preference; throws the control plane's message for
/// one that does not parse.
#[napi]
pub fn parse_gpu(gpu: Vec<String>) -> Result<Vec<BindingGpuChoice>> {
    let choices = berth_server::gpu::parse_request(&gpu).map_err(Error::from_reason)?;
    Ok(choices.into_iter().map(|c| BindingGpuChoice { kind: c.kind, count: c.count }).collect())
}
