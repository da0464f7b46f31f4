//! Arbitrary Attach frames through the server's handling of container messages: a control
//! plane serving one function (its scheduler included, no processes) takes calls, starts
//! containers, and reads what they send, frame by frame: hello with any id and token, credits,
//! hook_done for any phase, outputs for executions that exist or not, with too few or too many
//! results, output batches, and frames that do not decode (the stream ends). It never panics,
//! and a container's frames never touch another container's executions.
#![no_main]

use berth_proto::v1::{self as pb, container_message::Msg};
use berth_server::fuzzing::Plane;
use libfuzzer_sys::fuzz_target;
use prost::Message;

struct Bytes<'a>(&'a [u8]);

impl<'a> Bytes<'a> {
    fn u8(&mut self) -> Option<u8> {
        let (&b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(b)
    }
    fn u32(&mut self) -> Option<u32> {
        let (n, rest) = self.0.split_first_chunk::<4>()?;
        self.0 = rest;
        Some(u32::from_le_bytes(*n))
    }
    /// A length (one byte, or two when the first is 255) and that many bytes.
    fn frame(&mut self) -> Option<&'a [u8]> {
        let mut len = usize::from(self.u8()?);
        if len == 255 {
            len = usize::from(u16::from_le_bytes(*self.0.split_first_chunk::<2>()?.0));
            self.0 = &self.0[2..];
        }
        let len = len.min(self.0.len());
        let (f, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(f)
    }
}

fn result(kind: u8) -> pb::Result {
    use pb::result::Outcome;
    let outcome = match kind % 3 {
        0 => Outcome::Value(vec![0x81, kind]),
        1 => Outcome::Error(pb::Error { name: "Error".into(), message: "boom".into(), stack: String::new() }),
        _ => return pb::Result { outcome: None },
    };
    pb::Result { outcome: Some(outcome) }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Bytes(data);
    let Some(first) = b.u8() else { return };
    let mut plane = Plane::new(u32::from(first % 4) + 1);
    // Three calls waiting, one container attached, as a real start has it.
    for i in 0..3 {
        plane.spawn(vec![0x81, i]);
    }
    let mut attached = Vec::new();
    if let Some((cid, token)) = plane.started().first().cloned() {
        assert!(plane.hello(cid, &token), "the container's own hello is refused");
        attached.push(cid);
    }
    while let Some(op) = b.u8() {
        // Whose frame: an attached container, or any id at all.
        let who = |b: &mut Bytes, sel: u8| -> Option<u32> {
            match (sel >> 4) % 4 {
                3 => b.u32(),
                k => attached.get(usize::from(k)).or(attached.first()).copied(),
            }
        };
        let Some(cid) = who(&mut b, op) else { break };
        let msg = match op % 8 {
            0 => {
                let n = b.u8().unwrap_or(1) % 8;
                for i in 0..n {
                    plane.spawn(vec![0x81, i]);
                }
                continue;
            }
            1 => {
                let Some(frame) = b.frame() else { break };
                match pb::ContainerMessage::decode(frame) {
                    Ok(m) => m,
                    Err(_) => {
                        // The stream ends on a frame that does not decode.
                        plane.detach(cid);
                        continue;
                    }
                }
            }
            2 => {
                for (cid, token) in plane.started() {
                    if plane.hello(cid, &token) {
                        attached.push(cid);
                    }
                }
                continue;
            }
            3 => {
                let Some(frame) = b.frame() else { break };
                if let Ok(h) = pb::Hello::decode(frame) {
                    if plane.hello(h.container_id, &h.token) {
                        attached.push(h.container_id);
                    }
                }
                continue;
            }
            4 => {
                // Outputs for executions that exist, from their container or another.
                let execs = plane.execs();
                let Some(n) = b.u8() else { break };
                let mut outputs = Vec::new();
                for k in 0..=(n % 4) {
                    let pick = b.u8().unwrap_or(k);
                    let exec_id = execs.get(usize::from(pick) % execs.len().max(1)).map_or(u64::from(pick), |e| e.0);
                    let results = (0..pick % 5).map(|r| result(pick.wrapping_add(r))).collect();
                    outputs.push(pb::Output { exec_id, results, retryable_failure: pick & 0x80 != 0 });
                }
                let msg = if n & 0x80 != 0 || outputs.len() > 1 {
                    Msg::OutputBatch(pb::OutputBatch { outputs })
                } else {
                    Msg::Output(outputs.remove(0))
                };
                pb::ContainerMessage { msg: Some(msg) }
            }
            5 => {
                let Some(slots) = b.u32() else { break };
                pb::ContainerMessage { msg: Some(Msg::Credit(pb::Credit { slots })) }
            }
            6 => {
                plane.detach(cid);
                continue;
            }
            _ => {
                let Some(x) = b.u8() else { break };
                let error =
                    (x & 0x80 != 0).then(|| pb::Error { name: "E".into(), message: "m".into(), stack: String::new() });
                let h = pb::HookDone { phase: i32::from(x % 8) - 1, ok: x & 0x40 != 0, error };
                pb::ContainerMessage { msg: Some(Msg::HookDone(h)) }
            }
        };
        let others: Vec<_> = plane.execs().into_iter().filter(|e| e.1 != cid).collect();
        plane.message(cid, msg);
        let now = plane.execs();
        for e in others {
            assert!(now.contains(&e), "a frame from container {cid} touched execution {} of container {}", e.0, e.1);
        }
    }
});
