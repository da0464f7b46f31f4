//! What a function's containers get besides who they are: its env, and GPUs from the machine's
//! (see `crate::gpu`), checked against its container counts before anything starts.
use std::collections::HashMap;
use std::process::{Command, Stdio};

use berth_core::PoolSpec;

use crate::gpu::{parse_nvidia_smi_list, parse_request, Choice, Device, GpuPool};

/// One function's env and GPU choices.
#[derive(Default)]
pub struct Placement {
    pub env: HashMap<String, String>,
    pub gpu: Vec<Choice>,
}

/// Every function's [`Placement`], and the machine's GPUs once a function asks for some.
#[derive(Default)]
pub struct Placements {
    by_function: HashMap<(String, String), Placement>,
    gpus: Option<GpuPool>,
}

impl Placements {
    /// Placements on these GPUs instead of the ones [`detect_gpus`] finds.
    pub fn with_gpus(devices: Vec<Device>) -> Self {
        Self { by_function: HashMap::new(), gpus: Some(GpuPool::new(devices)) }
    }

    /// Places `app.name`: its env, and its `gpu` option (choices in order of preference, e.g.
    /// `["A100:2", "any:4"]`). A container holds its GPUs whole, so `spec.max_containers` is
    /// lowered to what the machine's GPUs hold at once. The error is the message for the user.
    pub fn add(
        &mut self,
        app: &str,
        name: &str,
        env: HashMap<String, String>,
        gpu: &[String],
        spec: &mut PoolSpec,
    ) -> Result<(), String> {
        let choices = parse_request(gpu).map_err(|e| format!("berth: {name}: {e}"))?;
        if !choices.is_empty() {
            // A container holds its GPUs whole: no more containers than the machine can hold.
            let pool = self.gpus.get_or_insert_with(|| GpuPool::new(detect_gpus()));
            let fit = pool.capacity(name, gpu, &choices).map_err(|e| format!("berth: {e}"))?;
            if spec.min_containers > fit {
                return Err(format!(
                    "berth: {name} keeps minContainers {} warm, but the machine's GPUs fit {fit} such container(s) at once; lower minContainers",
                    spec.min_containers
                ));
            }
            spec.max_containers = spec.max_containers.min(fit);
        }
        self.by_function.insert((app.to_string(), name.to_string()), Placement { env, gpu: choices });
        Ok(())
    }

    pub(super) fn into_parts(self) -> (HashMap<(String, String), Placement>, GpuPool) {
        (self.by_function, self.gpus.unwrap_or_default())
    }
}

/// The GPUs on this machine, from `nvidia-smi -L` (`BERTH_NVIDIA_SMI` names another command,
/// which tests use); none when the command is missing or fails.
pub fn detect_gpus() -> Vec<Device> {
    let program = std::env::var("BERTH_NVIDIA_SMI").unwrap_or_else(|_| "nvidia-smi".into());
    match Command::new(program).arg("-L").stdin(Stdio::null()).stderr(Stdio::null()).output() {
        Ok(out) if out.status.success() => parse_nvidia_smi_list(&String::from_utf8_lossy(&out.stdout)),
        _ => Vec::new(),
    }
}
