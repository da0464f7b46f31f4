//! Named dicts in broker mode (README "Dict"): each dict is a JetStream key-value bucket
//! (`berth_dict__<name>`), so every front, every worker and their containers share it. Keys are
//! the hex of their CBOR bytes (key-value keys allow few characters), values their CBOR bytes.
//! `pop` is atomic (a purge that expects the revision read, tried again when another writer came
//! first); `update` puts its entries one by one, and `len` and `items` read the keys first:
//! neither is one step, as they are on one server.
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::TryStreamExt as _;

use crate::{broker::Broker, error::Error};

/// A dict's bucket: `berth_dict__` and its name with every byte outside `[A-Za-z0-9-]` escaped.
pub fn dict_bucket(name: &str) -> String {
    format!("berth_dict__{}", berth_core::broker::escape(name))
}

fn key_of(key: &[u8]) -> String {
    let mut s = String::with_capacity(key.len() * 2);
    for b in key {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

fn bytes_of(key: &str) -> Option<Vec<u8>> {
    (0..key.len()).step_by(2).map(|i| u8::from_str_radix(key.get(i..i + 2)?, 16).ok()).collect()
}

/// One dict, opened.
pub struct KvDict {
    store: kv::Store,
    bucket: String,
}

impl Broker {
    /// Dict `name`'s bucket; made when absent if `create`, else `Ok(None)`.
    pub async fn dict(&self, name: &str, create: bool) -> Result<Option<KvDict>, Error> {
        let bucket = dict_bucket(name);
        let js = jetstream::new(self.client().clone());
        if let Ok(store) = js.get_key_value(&bucket).await {
            return Ok(Some(KvDict { store, bucket }));
        }
        if !create {
            return Ok(None);
        }
        // Made directly by the key-value conventions, as the results bucket is (spawned.rs).
        let config = jetstream::stream::Config {
            name: format!("KV_{bucket}"),
            description: Some(format!("berth dict {name}")),
            subjects: vec![format!("$KV.{bucket}.>")],
            max_messages_per_subject: 1,
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            storage: jetstream::stream::StorageType::File,
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        };
        js.get_or_create_stream(config)
            .await
            .map_err(|e| Error::request(format!("creating dict bucket {bucket}"), e))?;
        let store =
            js.get_key_value(&bucket).await.map_err(|e| Error::request(format!("opening dict bucket {bucket}"), e))?;
        Ok(Some(KvDict { store, bucket }))
    }

    /// Removes dict `name`; false when there was none.
    pub async fn drop_dict(&self, name: &str) -> Result<bool, Error> {
        let js = jetstream::new(self.client().clone());
        match js.delete_stream(format!("KV_{}", dict_bucket(name))).await {
            Ok(_) => Ok(true),
            Err(e) if e.to_string().contains("not found") => Ok(false),
            Err(e) => Err(Error::request(format!("removing dict {name}"), e)),
        }
    }
}

impl KvDict {
    fn err(&self, what: &str, e: impl std::fmt::Display) -> Error {
        Error::request(format!("{what} in dict bucket {}", self.bucket), e)
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        Ok(self.store.get(key_of(key)).await.map_err(|e| self.err("reading a key", e))?.map(|b| b.to_vec()))
    }

    /// Sets `key`; with `only_new`, only when absent: `Ok(false)` when it was there.
    pub async fn put(&self, key: &[u8], value: Vec<u8>, only_new: bool) -> Result<bool, Error> {
        let k = key_of(key);
        if only_new {
            return match self.store.create(&k, Bytes::from(value)).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(self.err("putting a key", e)),
            };
        }
        self.store.put(k, Bytes::from(value)).await.map_err(|e| self.err("putting a key", e))?;
        Ok(true)
    }

    /// Removes `key` and gives its value, once: of two pops of one key, one gets it.
    pub async fn pop(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        let k = key_of(key);
        loop {
            let entry = self.store.entry(k.clone()).await.map_err(|e| self.err("reading a key", e))?;
            let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else { return Ok(None) };
            match self.store.purge_expect_revision(&k, Some(entry.revision)).await {
                Ok(()) => return Ok(Some(entry.value.to_vec())),
                // Another writer came first: read again.
                Err(e) if e.to_string().contains("wrong last sequence") => continue,
                Err(e) => return Err(self.err("removing a key", e)),
            }
        }
    }

    /// The keys (their CBOR bytes).
    pub async fn keys(&self) -> Result<Vec<Vec<u8>>, Error> {
        let keys = match self.store.keys().await {
            Ok(k) => k,
            Err(e) => return Err(self.err("listing the keys", e)),
        };
        let keys: Vec<String> = keys.try_collect().await.map_err(|e| self.err("listing the keys", e))?;
        Ok(keys.iter().filter_map(|k| bytes_of(k)).collect())
    }

    /// Every entry (what is there as each key is read).
    pub async fn items(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>, Error> {
        let mut out = Vec::new();
        for k in self.keys().await? {
            if let Some(v) = self.get(&k).await? {
                out.push((k, v));
            }
        }
        Ok(out)
    }

    /// Removes every entry.
    pub async fn clear(&self) -> Result<(), Error> {
        for k in self.keys().await? {
            self.store.purge(key_of(&k)).await.map_err(|e| self.err("removing a key", e))?;
        }
        Ok(())
    }
}
