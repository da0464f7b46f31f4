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

/// What a front finds when it comes to fire a schedule's tick ([`SpawnResults::start_tick`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TickStart {
    /// This front fires it; its run is recorded as running, at this revision, until marked ended.
    Fire(u64),
    /// Another front fired this tick (or a later one).
    Taken,
    /// The run of the tick at this time (ms) still runs, on this front or another: this tick is
    /// skipped.
    Running(i64),
}

/// A tick's record: its time (ms since the epoch, big-endian) and 1 while its run runs, else 0.
fn tick_value(at_ms: i64, running: bool) -> Bytes {
    let mut v = at_ms.to_be_bytes().to_vec();
    v.push(u8::from(running));
    Bytes::from(v)
}

fn read_tick(v: &[u8]) -> Option<(i64, bool)> {
    let (at, rest) = v.split_first_chunk::<8>()?;
    Some((i64::from_be_bytes(*at), rest.first() == Some(&1)))
}

/// An app's bucket of `spawn` results (and of its schedules' ticks).
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

    /// Starts the run of schedule tick `at_ms` (ms since the epoch) of `function`, unless it is
    /// not this front's to start: fronts of one app keep, per scheduled function, the tick of
    /// its last run and whether that run still runs under one key of this bucket
    /// (`run.<function>`), changed only by compare-and-set, so that of several fronts one fires
    /// each tick, and none while the last tick's run still runs on any of them (berth-server's
    /// schedule.rs). A run whose front stopped marking it ([`SpawnResults::mark_tick`]) for
    /// `stale_after` is taken as ended (that front is gone). The key lives as long as results
    /// do, longer when marked again.
    pub async fn start_tick(&self, function: &str, at_ms: i64, stale_after: Duration) -> Result<TickStart, Error> {
        let key = Self::tick_key(function);
        let running = tick_value(at_ms, true);
        // Each pass either decides or loses a compare-and-set to another front, which then
        // decided: the next pass reads what it wrote.
        for _ in 0..8 {
            let failed = |e: &dyn std::fmt::Display| {
                Error::request(format!("starting tick {at_ms} of {function} in {}", self.bucket), e)
            };
            let last = self.store.entry(key.clone()).await.map_err(|e| failed(&e))?;
            let last = last.filter(|e| e.operation == kv::Operation::Put);
            let set = match last {
                None => self
                    .store
                    .create(&key, running.clone())
                    .await
                    .map_err(|e| (e.kind() != kv::CreateErrorKind::AlreadyExists).then(|| failed(&e))),
                Some(entry) => {
                    let (tick, runs) = read_tick(&entry.value).unwrap_or((i64::MIN, false));
                    if tick >= at_ms {
                        return Ok(TickStart::Taken);
                    }
                    let marked_lately = async_nats::datetime::add_std_duration(entry.created, stale_after)
                        .map_or(true, |until| until > async_nats::datetime::now());
                    if runs && marked_lately {
                        return Ok(TickStart::Running(tick));
                    }
                    self.store
                        .update(&key, running.clone(), entry.revision)
                        .await
                        .map_err(|e| (e.kind() != kv::UpdateErrorKind::WrongLastRevision).then(|| failed(&e)))
                }
            };
            match set {
                Ok(revision) => return Ok(TickStart::Fire(revision)),
                Err(Some(e)) => return Err(e),
                Err(None) => continue,
            }
        }
        Err(Error::new(
            ErrorKind::Request,
            format!("starting tick {at_ms} of {function} in {}: other fronts kept changing it", self.bucket),
        ))
    }

    /// Marks the run of tick `at_ms` of `function` that this front started (its record at
    /// `revision`) as still running (`running`: every few seconds, so that other fronts do not
    /// take it as ended) or as ended. The record's new revision, or `None` when another front
    /// changed it meanwhile (it took this front's run as ended after `stale_after`).
    pub async fn mark_tick(
        &self,
        function: &str,
        at_ms: i64,
        running: bool,
        revision: u64,
    ) -> Result<Option<u64>, Error> {
        match self.store.update(Self::tick_key(function), tick_value(at_ms, running), revision).await {
            Ok(revision) => Ok(Some(revision)),
            Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => Ok(None),
            Err(e) => Err(Error::request(format!("marking tick {at_ms} of {function} in {}", self.bucket), e)),
        }
    }

    fn tick_key(function: &str) -> String {
        berth_core::broker::escape(&format!("run.{function}"))
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
