//! Named dicts (proto/berth/v1/data.proto `Dicts`, README "Dict"): key-value maps shared by
//! every container and caller, as Modal's `Dict` is by an environment's apps. Keys and values
//! are CBOR, checked as arguments are (berth-proto's values.rs); a key is compared by its bytes
//! (the TypeScript client writes canonical CBOR). The server holds them in memory, each
//! operation under one lock (concurrent writers lose nothing, `update` is all at once), for as
//! long as it runs; in broker mode (a front, a worker) they are JetStream key-value buckets that
//! every machine shares (berth-nats `dicts.rs`).
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use berth_proto::v1::{self as pb, dicts_server::Dicts as DictsRpc};
use tonic::{Request, Response, Status};

use crate::plane::Shared;

/// One dict: values by key, both CBOR.
type Entries = HashMap<Vec<u8>, Vec<u8>>;

/// The dicts, by name.
#[derive(Default)]
pub(crate) struct Dicts(Mutex<HashMap<String, Entries>>);

/// A dict's name: what `Dict.fromName` takes.
pub(crate) fn check_name(name: &str) -> Result<(), Status> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(Status::invalid_argument(format!("dict name {name:?}: use 1 to 128 letters, digits, '-', '_' or '.'")))
    }
}

fn check_cbor(what: &str, bytes: &[u8]) -> Result<(), Status> {
    berth_proto::values::check_value(bytes).map_err(|e| Status::invalid_argument(format!("{what}: {e}")))
}

/// What `req` asks, once its name, key, value and entries are checked.
fn check(req: &pb::DictRequest) -> Result<pb::DictOp, Status> {
    check_name(&req.name)?;
    let op = pb::DictOp::try_from(req.op).unwrap_or(pb::DictOp::Unspecified);
    match op {
        pb::DictOp::Unspecified => return Err(Status::invalid_argument("DictRequest.op: say which operation")),
        pb::DictOp::Get | pb::DictOp::Put | pb::DictOp::Contains | pb::DictOp::Pop => check_cbor("key", &req.key)?,
        _ => {}
    }
    if op == pb::DictOp::Put {
        check_cbor("value", &req.value)?;
    }
    for e in &req.entries {
        check_cbor("an entry's key", &e.key)?;
        check_cbor("an entry's value", &e.value)?;
    }
    Ok(op)
}

/// A dict or queue (`kind`, as the TypeScript class is named) that does not exist, asked for
/// without `create_if_missing`.
pub(crate) fn not_found(kind: &str, name: &str) -> Status {
    Status::not_found(format!(
        "no {} named '{name}': create it with {kind}.fromName('{name}', {{ createIfMissing: true }})",
        kind.to_lowercase()
    ))
}

/// Applies `req` where this control plane keeps its dicts.
pub(crate) async fn answer(shared: &Shared, req: pb::DictRequest) -> Result<pb::DictResponse, Status> {
    match shared.dict_broker.get() {
        Some(broker) => in_buckets(broker, req).await,
        None => shared.dicts.apply(req),
    }
}

/// `req` on JetStream key-value buckets (broker mode).
async fn in_buckets(broker: &berth_nats::Broker, req: pb::DictRequest) -> Result<pb::DictResponse, Status> {
    let op = check(&req)?;
    let failed = |e: berth_nats::Error| Status::unavailable(e.message);
    if op == pb::DictOp::Delete {
        return Ok(pb::DictResponse {
            found: broker.drop_dict(&req.name).await.map_err(failed)?,
            ..Default::default()
        });
    }
    let Some(d) = broker.dict(&req.name, req.create_if_missing).await.map_err(failed)? else {
        return Err(not_found("Dict", &req.name));
    };
    let mut out = pb::DictResponse::default();
    match op {
        pb::DictOp::Unspecified | pb::DictOp::Delete | pb::DictOp::Ensure | pb::DictOp::Len => {}
        pb::DictOp::Get => {
            if let Some(v) = d.get(&req.key).await.map_err(failed)? {
                (out.found, out.value) = (true, v);
            }
        }
        pb::DictOp::Put => out.found = !d.put(&req.key, req.value, req.skip_if_exists).await.map_err(failed)?,
        pb::DictOp::Contains => out.found = d.get(&req.key).await.map_err(failed)?.is_some(),
        pb::DictOp::Update => {
            for e in req.entries {
                d.put(&e.key, e.value, false).await.map_err(failed)?;
            }
        }
        pb::DictOp::Pop => {
            if let Some(v) = d.pop(&req.key).await.map_err(failed)? {
                (out.found, out.value) = (true, v);
            }
        }
        pb::DictOp::Items => {
            out.entries =
                d.items().await.map_err(failed)?.into_iter().map(|(key, value)| pb::DictEntry { key, value }).collect();
        }
        pb::DictOp::Clear => d.clear().await.map_err(failed)?,
    }
    out.len = if op == pb::DictOp::Items { out.entries.len() } else { d.keys().await.map_err(failed)?.len() } as u64;
    Ok(out)
}

impl Dicts {
    /// Applies `req` to the dicts this server holds.
    pub(crate) fn apply(&self, req: pb::DictRequest) -> Result<pb::DictResponse, Status> {
        let op = check(&req)?;
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if op == pb::DictOp::Delete {
            return Ok(pb::DictResponse { found: all.remove(&req.name).is_some(), ..Default::default() });
        }
        if !all.contains_key(&req.name) {
            if !req.create_if_missing {
                return Err(not_found("Dict", &req.name));
            }
            all.insert(req.name.clone(), HashMap::new());
        }
        let Some(d) = all.get_mut(&req.name) else { return Err(Status::internal("the dict went away")) };
        let mut out = pb::DictResponse::default();
        match op {
            pb::DictOp::Unspecified | pb::DictOp::Ensure => {}
            pb::DictOp::Get => {
                if let Some(v) = d.get(&req.key) {
                    (out.found, out.value) = (true, v.clone());
                }
            }
            pb::DictOp::Put => {
                if req.skip_if_exists && d.contains_key(&req.key) {
                    out.found = true;
                } else {
                    d.insert(req.key, req.value);
                }
            }
            pb::DictOp::Contains => out.found = d.contains_key(&req.key),
            pb::DictOp::Len => {}
            pb::DictOp::Update => {
                for e in req.entries {
                    d.insert(e.key, e.value);
                }
            }
            pb::DictOp::Pop => {
                if let Some(v) = d.remove(&req.key) {
                    (out.found, out.value) = (true, v);
                }
            }
            pb::DictOp::Items => {
                out.entries = d.iter().map(|(k, v)| pb::DictEntry { key: k.clone(), value: v.clone() }).collect();
            }
            pb::DictOp::Clear => d.clear(),
            pb::DictOp::Delete => {}
        }
        out.len = d.len() as u64;
        Ok(out)
    }
}

/// The `Dicts` gRPC service.
pub(crate) struct DictsSvc {
    pub shared: Arc<Shared>,
}

#[tonic::async_trait]
impl DictsRpc for DictsSvc {
    async fn dict(&self, req: Request<pb::DictRequest>) -> Result<Response<pb::DictResponse>, Status> {
        answer(&self.shared, req.into_inner()).await.map(Response::new)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn req(name: &str, op: pb::DictOp) -> pb::DictRequest {
        pb::DictRequest { name: name.into(), op: op as i32, create_if_missing: true, ..Default::default() }
    }

    /// CBOR of a short text.
    fn text(s: &str) -> Vec<u8> {
        let mut v = vec![0x60 | s.len() as u8];
        v.extend_from_slice(s.as_bytes());
        v
    }

    #[test]
    fn operations_do_what_they_say() {
        let d = Dicts::default();
        let put = |k: &str, v: &str| {
            d.apply(pb::DictRequest { key: text(k), value: text(v), ..req("a", pb::DictOp::Put) }).unwrap()
        };
        put("x", "1");
        put("y", "2");
        let got = d.apply(pb::DictRequest { key: text("x"), ..req("a", pb::DictOp::Get) }).unwrap();
        assert_eq!((got.found, got.value, got.len), (true, text("1"), 2));
        let skipped = d
            .apply(pb::DictRequest {
                key: text("x"),
                value: text("9"),
                skip_if_exists: true,
                ..req("a", pb::DictOp::Put)
            })
            .unwrap();
        assert!(skipped.found, "already there: not replaced");
        let popped = d.apply(pb::DictRequest { key: text("x"), ..req("a", pb::DictOp::Pop) }).unwrap();
        assert_eq!((popped.found, popped.value, popped.len), (true, text("1"), 1));
        let entries = vec![
            pb::DictEntry { key: text("p"), value: text("q") },
            pb::DictEntry { key: text("y"), value: text("3") },
        ];
        d.apply(pb::DictRequest { entries, ..req("a", pb::DictOp::Update) }).unwrap();
        let mut items = d.apply(req("a", pb::DictOp::Items)).unwrap().entries;
        items.sort_by(|a, b| a.key.cmp(&b.key));
        assert_eq!(
            items.iter().map(|e| (e.key.clone(), e.value.clone())).collect::<Vec<_>>(),
            vec![(text("p"), text("q")), (text("y"), text("3"))]
        );
        assert_eq!(d.apply(req("a", pb::DictOp::Clear)).unwrap().len, 0);
        assert!(d.apply(req("a", pb::DictOp::Delete)).unwrap().found);
    }

    #[test]
    fn bad_requests_are_refused_saying_why() {
        let d = Dicts::default();
        let absent = pb::DictRequest { create_if_missing: false, ..req("nope", pb::DictOp::Len) };
        let e = d.apply(absent).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(e.message().contains("createIfMissing: true"), "{}", e.message());
        let e = d.apply(pb::DictRequest { key: vec![0xff, 0x00], ..req("a", pb::DictOp::Get) }).unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().starts_with("key:"), "{}", e.message());
        let e = d.apply(req("a b", pb::DictOp::Len)).unwrap_err();
        assert!(e.message().contains("letters, digits"), "{}", e.message());
        assert_eq!(d.apply(req("a", pb::DictOp::Unspecified)).unwrap_err().code(), tonic::Code::InvalidArgument);
    }
}
