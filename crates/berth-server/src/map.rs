//! A Map call: the task that reads its requests into the scheduler, as far as the caller's
//! window allows, and the stream of its results. The request stream is any stream of
//! `MapRequest`s: tonic's `Streaming` for a gRPC caller, a channel for a caller in this
//! process (`client.rs`), so both get the same checks, window and backpressure.
use std::sync::Arc;

use berth_proto::v1::{self as pb, map_request};
use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tonic::Status;

use crate::functions::{bad, FunctionsSvc};
use crate::plane::{cancel_map, MapCall, Shared, Waiter};

/// Polls the request stream once: a message that has already arrived, or Pending.
fn ready<S: Stream + Unpin>(inbound: &mut S) -> std::task::Poll<Option<S::Item>> {
    let waker = std::task::Waker::noop();
    std::pin::Pin::new(inbound).poll_next(&mut std::task::Context::from_waker(waker))
}

impl FunctionsSvc {
    /// Opens a Map call on `inbound` (the function first, then inputs): its results, and its
    /// function call id (what `Cancel` takes).
    /// `trace`: the caller's trace context (one trace per Map call: README "Tracing").
    pub(crate) async fn open_map<S>(
        &self,
        mut inbound: S,
        trace: Option<berth_proto::trace::TraceContext>,
    ) -> Result<(MapResponses, String), Status>
    where
        S: Stream<Item = Result<pb::MapRequest, Status>> + Unpin + Send + 'static,
    {
        let first = inbound
            .next()
            .await
            .ok_or_else(|| bad("empty Map stream: send the function first"))?
            .map_err(|s| self.inbound_status(s))?;
        let Some(map_request::Item::Function(f)) = first.item else {
            return Err(bad("the first Map message must name the function (`function`), then inputs follow"));
        };
        let target = self.resolve(Some(&f))?;
        target.not_generator("Map")?;
        let (pool, method) = (target.pool, target.method);
        let fc = self.new_call_id();
        // One trace for every input of the call, whichever submission takes it.
        let map_trace = berth_proto::trace::continued(trace);
        let call = Arc::new(MapCall::new(self.shared.map_window));
        self.shared.lock().maps.insert(fc.clone(), call.clone());
        let (out, rx) = mpsc::unbounded_channel();
        let responses =
            MapResponses { rx, shared: self.shared.clone(), fc: fc.clone(), call: call.clone(), ended: false };
        let svc = self.clone();
        let id = fc.clone();
        tokio::spawn(async move {
            // Each input holds a sender, and so does this task while it reads: once it stops
            // and every input is answered, the last sender goes and the response stream ends.
            let mut stopping = false;
            loop {
                // Backpressure: a caller that does not read its results stops being read
                // (HTTP/2 flow control then stops a gRPC caller's sender; an in-process
                // caller's inputs wait in its channel) instead of the server holding every
                // result it has not taken.
                if !stopping && !call.has_room() {
                    let room = call.room.notified();
                    tokio::pin!(room);
                    room.as_mut().enable();
                    if !call.has_room() {
                        tokio::select! {
                            biased;
                            () = call.stop.notified() => stopping = true,
                            () = room => {}
                        }
                        continue;
                    }
                }
                let next = if stopping {
                    // Cancelled: what has already arrived is answered too, without waiting.
                    match ready(&mut inbound) {
                        std::task::Poll::Ready(m) => m,
                        std::task::Poll::Pending => None,
                    }
                } else {
                    tokio::select! {
                        biased;
                        () = call.stop.notified() => {
                            stopping = true;
                            continue;
                        }
                        m = inbound.next() => m,
                    }
                };
                let Some(first) = next else { break };
                // Everything that has already arrived goes to the scheduler as one submission,
                // as far as the window allows.
                let room = if stopping { 4096 } else { call.room_left().clamp(1, 4096) };
                let mut msgs = vec![first];
                while msgs.len() < room {
                    match ready(&mut inbound) {
                        std::task::Poll::Ready(Some(m)) => msgs.push(m),
                        _ => break,
                    }
                }
                let mut batch = Vec::with_capacity(msgs.len());
                let mut end = None;
                for msg in msgs {
                    let input = match msg.map(|m| m.item) {
                        Ok(Some(map_request::Item::Input(i))) => i,
                        Ok(_) => {
                            end = Some(bad("after the first message, Map messages carry inputs only"));
                            break;
                        }
                        Err(status) => {
                            end = Some(svc.inbound_status(status));
                            break;
                        }
                    };
                    if let Err(status) = target.check_args(&input.args, &format!("args of input {}", input.index)) {
                        end = Some(status);
                        break;
                    }
                    batch.push((input.args, Waiter::Map(out.clone(), input.index, call.clone())));
                }
                // The inputs before a bad message still run and get their results; the
                // stream ends with the status after them.
                if !batch.is_empty() {
                    call.accepted(batch.len());
                    svc.submit_many(pool, method, id.clone(), batch, true, Some(map_trace));
                }
                if let Some(status) = end {
                    *call.end.lock().unwrap_or_else(|e| e.into_inner()) = Some(status);
                    break;
                }
            }
        });
        Ok((responses, fc))
    }
}
/// A Map call's results, as they finish. It ends once the requests have ended (or the call was
/// cancelled) and every accepted input is answered: OK, or with the status of a request
/// message the server could not take. Dropped before that (the caller went away), it cancels
/// the call's inputs that are still queued or running.
pub struct MapResponses {
    rx: mpsc::UnboundedReceiver<Result<pb::MapResponse, Status>>,
    shared: Arc<Shared>,
    fc: String,
    call: Arc<MapCall>,
    ended: bool,
}

impl MapResponses {
    fn forget(&self) {
        let mut st = self.shared.lock();
        if st.maps.get(&self.fc).is_some_and(|c| Arc::ptr_eq(c, &self.call)) {
            st.maps.remove(&self.fc);
        }
    }
}

impl tokio_stream::Stream for MapResponses {
    type Item = Result<pb::MapResponse, Status>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        if self.ended {
            return std::task::Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            std::task::Poll::Ready(None) => {
                self.ended = true;
                self.forget();
                let end = self.call.end.lock().unwrap_or_else(|e| e.into_inner()).take();
                std::task::Poll::Ready(end.map(Err))
            }
            std::task::Poll::Ready(Some(Ok(r))) => {
                // Taken by the transport (which pulls only as the caller's window allows).
                self.call.taken(&r);
                std::task::Poll::Ready(Some(Ok(r)))
            }
            other => other,
        }
    }
}

impl Drop for MapResponses {
    fn drop(&mut self) {
        if !self.ended {
            // Nobody reads the results any more: the inputs are not run for nobody.
            cancel_map(&self.shared, &self.fc, &self.call);
        }
        self.forget();
    }
}
