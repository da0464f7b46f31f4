//! `spawn` results in a JetStream key-value bucket per app
//! ([`berth_core::broker::results_bucket`]), keyed by function call id, so that
//! `FunctionCall.fromId(id).get()` finds the result on any front, not only the one that
//! spawned it. The first result written for a call is the one kept (`create` fails when the
//! key exists), which is the bucket's side of "exactly one result per input". Entries expire
//! after the bucket's `max_age` (the server's `--result-ttl`; README, `FunctionCall.fromId`).
use std::time::Duration;

use async_nats::jetstream::kv;
use bytes::Bytes;
use futures_util::StreamExt;
use prost::Message as _;

use crate::{
    broker::Broker,
    envelope::{decode_result, BrokerResult},
    error::{Error, ErrorKind},
};

/// An app's bucket of `spawn` results.
#[derive(Clone)]
pub struct SpawnResults {
    store: kv::Store,
    bucket: String,
}

impl Broker {
    /// Opens (creating it when absent) the bucket of `app`'s `spawn` results, whose entries
    /// live `ttl`.
    pub async fn spawn_results(&self, app: &str, ttl: Duration) -> Result<SpawnResults, Error> {
        let bucket = berth_core::broker::results_bucket(app);
        let js = async_nats::jetstream::new(self.client().clone());
        if js.get_key_value(&bucket).await.is_err() {
            // The bucket's stream made directly, by the key-value conventions (`KV_` + bucket,
            // subjects `$KV.<bucket>.>`, one value per key): async-nats's `create_key_value`
            // first reads the account's info, which it cannot parse from nats-server 2.9.
            let config = async_nats::jetstream::stream::Config {
                name: format!("KV_{bucket}"),
                description: Some(format!("berth spawn results of app {app}")),
                subjects: vec![format!("$KV.{bucket}.>")],
                max_messages_per_subject: 1,
                max_age: ttl,
                discard: async_nats::jetstream::stream::DiscardPolicy::New,
                allow_rollup: true,
                deny_delete: true,
                allow_direct: true,
                storage: async_nats::jetstream::stream::StorageType::File,
                duplicate_window: ttl.min(Duration::from_secs(120)),
                ..Default::default()
            };
            js.get_or_create_stream(config)
                .await
                .map_err(|e| Error::request(format!("creating key-value bucket {bucket}"), e))?;
        }
        let store = js
            .get_key_value(&bucket)
            .await
            .map_err(|e| Error::request(format!("opening key-value bucket {bucket}"), e))?;
        Ok(SpawnResults { store, bucket })
    }
}

impl SpawnResults {
    fn key(function_call_id: &str) -> String {
        berth_core::broker::escape(function_call_id)
    }

    /// Records the result of spawned call `function_call_id`. `Ok(false)`: the call already
    /// had one (a late duplicate), which is kept.
    pub async fn put(&self, function_call_id: &str, result: &BrokerResult) -> Result<bool, Error> {
        match self.store.create(Self::key(function_call_id), Bytes::from(result.encode_to_vec())).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::request(format!("storing the result of {function_call_id} in {}", self.bucket), e)),
        }
    }

    /// Claims `key` for the caller (`Ok(true)`), unless someone claimed it first (`Ok(false)`):
    /// fronts of one app claim each schedule tick here, so that one of them fires it
    /// (berth-server's schedule.rs). The claim lives as long as results do.
    pub async fn claim(&self, key: &str) -> Result<bool, Error> {
        match self.store.create(berth_core::broker::escape(key), Bytes::new()).await {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
            Err(e) => Err(Error::request(format!("claiming {key} in {}", self.bucket), e)),
        }
    }

    /// The result of `function_call_id` if there is one yet.
    pub async fn get(&self, function_call_id: &str) -> Result<Option<BrokerResult>, Error> {
        let v =
            self.store.get(Self::key(function_call_id)).await.map_err(|e| {
                Error::request(format!("reading the result of {function_call_id} in {}", self.bucket), e)
            })?;
        v.map(|b| decode_result(&b)).transpose()
    }

    /// Waits up to `timeout` for the result of `function_call_id`; `Ok(None)` on timeout.
    pub async fn wait(&self, function_call_id: &str, timeout: Duration) -> Result<Option<BrokerResult>, Error> {
        let key = Self::key(function_call_id);
        // Watch first, then read: a result written between the two is seen by the watch.
        let mut watch =
            self.store.watch(&key).await.map_err(|e| {
                Error::request(format!("watching the result of {function_call_id} in {}", self.bucket), e)
            })?;
        if let Some(r) = self.get(function_call_id).await? {
            return Ok(Some(r));
        }
        let next = async {
            while let Some(entry) = watch.next().await {
                let entry = entry.map_err(|e| Error::request(format!("watching {}", self.bucket), e))?;
                if entry.operation == kv::Operation::Put {
                    return decode_result(&entry.value).map(Some);
                }
            }
            Err(Error::new(
                ErrorKind::Request,
                format!("the watch of {} ended; check the NATS connection", self.bucket),
            ))
        };
        match tokio::time::timeout(timeout, next).await {
            Ok(r) => r,
            Err(_) => Ok(None),
        }
    }
}
