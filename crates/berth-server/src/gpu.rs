//! GPUs for container processes: what `nvidia-smi -L` lists, what a function's `gpu` option asks
//! for, and which devices each container gets (through `CUDA_VISIBLE_DEVICES`). Devices are
//! handed out whole and exclusively, as Modal does: a container holds its GPUs until it ends.

/// One device as `nvidia-smi -L` lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    pub index: u32,
    pub name: String,
    /// `GPU-…`; CUDA_VISIBLE_DEVICES takes it, and unlike an index it does not depend on
    /// CUDA_DEVICE_ORDER (CUDA numbers fastest first, nvidia-smi by PCI bus).
    pub uuid: Option<String>,
}

impl Device {
    fn visible_id(&self) -> String {
        self.uuid.clone().unwrap_or_else(|| self.index.to_string())
    }
}

/// Lines like `GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-5a1c…)`; anything else is skipped
/// (MIG lines are indented and start with `MIG`).
pub fn parse_nvidia_smi_list(out: &str) -> Vec<Device> {
    out.lines()
        .filter_map(|line| {
            let rest = line.strip_prefix("GPU ")?;
            let (index, rest) = rest.split_once(':')?;
            let index = index.trim().parse().ok()?;
            let rest = rest.trim();
            let (name, uuid) = match rest.rfind(" (UUID: ") {
                Some(at) => (&rest[..at], rest[at + 8..].strip_suffix(')').map(str::to_string)),
                None => (rest, None),
            };
            Some(Device { index, name: name.trim().to_string(), uuid })
        })
        .collect()
}

/// One acceptable choice of a `gpu` option: a kind (`any` for any device) and how many.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub kind: String,
    pub count: u32,
}

/// `'A100'`, `'A100:2'`, `'any:4'`, or a list of them in order of preference.
pub fn parse_request(gpu: &[String]) -> Result<Vec<Choice>, String> {
    gpu.iter()
        .map(|g| {
            let (kind, count) = match g.rsplit_once(':') {
                Some((k, n)) => (
                    k,
                    n.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
                        format!("gpu '{g}': the count after ':' must be a whole number of at least 1, e.g. 'A100:2'")
                    })?,
                ),
                None => (g.as_str(), 1),
            };
            let kind = kind.trim();
            if kind.is_empty() {
                return Err(format!("gpu '{g}': name a GPU type before the count, e.g. 'A100:2' or 'any:2'"));
            }
            Ok(Choice { kind: kind.to_ascii_uppercase(), count })
        })
        .collect()
}

/// Whether a device is of `kind`: `ANY` matches all; otherwise one word of the device's name
/// starts with the kind and the next character is not a letter or digit, so `A10` matches
/// `NVIDIA A10` but not `NVIDIA A100-SXM4-80GB`, and `A100` matches the latter.
fn is_kind(device: &Device, kind: &str) -> bool {
    if kind == "ANY" {
        return true;
    }
    device
        .name
        .to_ascii_uppercase()
        .split_whitespace()
        .any(|word| word.strip_prefix(kind).is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_alphanumeric())))
}

/// The machine's GPUs and which are taken.
#[derive(Debug, Default)]
pub struct GpuPool {
    devices: Vec<Device>,
    taken: Vec<bool>,
}

impl GpuPool {
    pub fn new(devices: Vec<Device>) -> Self {
        let taken = vec![false; devices.len()];
        Self { devices, taken }
    }

    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    fn matching<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = usize> + 'a {
        self.devices.iter().enumerate().filter(move |(_, d)| is_kind(d, kind)).map(|(i, _)| i)
    }

    /// How many containers of this request the machine can hold at once (the best choice's),
    /// or an error that says what was asked, what exists, and what to change.
    pub fn capacity(&self, who: &str, gpu: &[String], choices: &[Choice]) -> Result<u32, String> {
        let best = choices.iter().map(|c| self.matching(&c.kind).count() as u32 / c.count).max().unwrap_or(0);
        if best > 0 {
            return Ok(best);
        }
        let asked = gpu.join("' or '");
        let found = if self.devices.is_empty() {
            "no GPU was found (`nvidia-smi -L` lists none)".to_string()
        } else {
            let names: Vec<String> = self.devices.iter().map(|d| format!("{}: {}", d.index, d.name)).collect();
            format!("this machine has {} GPU(s): {}", self.devices.len(), names.join(", "))
        };
        Err(format!(
            "{who} asks for gpu '{asked}' but {found}. Ask for fewer or another type (e.g. gpu: 'any'), \
             or remove the gpu option to run on CPU."
        ))
    }

    /// Devices for one new container: the first choice that has enough free ones. Returns the
    /// value for CUDA_VISIBLE_DEVICES and the slots to give back later.
    pub fn take(&mut self, choices: &[Choice]) -> Option<(String, Vec<usize>)> {
        for c in choices {
            let free: Vec<usize> = self.matching(&c.kind).filter(|&i| !self.taken[i]).take(c.count as usize).collect();
            if free.len() == c.count as usize {
                for &i in &free {
                    self.taken[i] = true;
                }
                let ids: Vec<String> = free.iter().map(|&i| self.devices[i].visible_id()).collect();
                return Some((ids.join(","), free));
            }
        }
        None
    }

    pub fn give_back(&mut self, slots: &[usize]) {
        for &i in slots {
            if let Some(t) = self.taken.get_mut(i) {
                *t = false;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIST: &str = "GPU 0: NVIDIA A100-SXM4-80GB (UUID: GPU-aaaa)\n\
                        GPU 1: NVIDIA A100-SXM4-80GB (UUID: GPU-bbbb)\n\
                        \x20 MIG 1g.10gb     Device  0: (UUID: MIG-cccc)\n\
                        GPU 2: Tesla T4 (UUID: GPU-dddd)\n";

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_nvidia_smi_list_skipping_mig_lines() {
        let d = parse_nvidia_smi_list(LIST);
        assert_eq!(d.len(), 3);
        assert_eq!(d[0], Device { index: 0, name: "NVIDIA A100-SXM4-80GB".into(), uuid: Some("GPU-aaaa".into()) });
        assert_eq!(d[2].name, "Tesla T4");
        assert_eq!(parse_nvidia_smi_list("GPU 3: Some GPU\n")[0].uuid, None);
        assert!(parse_nvidia_smi_list("NVIDIA-SMI has failed\n").is_empty());
    }

    #[test]
    fn parses_requests_and_rejects_bad_counts() {
        assert_eq!(
            parse_request(&strings(&["a100:2", "any"])).unwrap(),
            vec![Choice { kind: "A100".into(), count: 2 }, Choice { kind: "ANY".into(), count: 1 }]
        );
        assert!(parse_request(&strings(&["A100:0"])).unwrap_err().contains("at least 1"));
        assert!(parse_request(&strings(&["A100:x"])).is_err());
        assert!(parse_request(&strings(&[":2"])).unwrap_err().contains("name a GPU type"));
    }

    #[test]
    fn kinds_match_whole_model_names() {
        let d = parse_nvidia_smi_list("GPU 0: NVIDIA A100-SXM4-80GB\nGPU 1: NVIDIA A10\n");
        assert!(is_kind(&d[0], "A100") && !is_kind(&d[0], "A10"));
        assert!(is_kind(&d[1], "A10") && !is_kind(&d[1], "A100"));
        assert!(is_kind(&d[1], "ANY"));
    }

    #[test]
    fn capacity_counts_whole_containers_and_explains_shortfalls() {
        let pool = GpuPool::new(parse_nvidia_smi_list(LIST));
        let ask = |g: &[&str]| pool.capacity("Model", &strings(g), &parse_request(&strings(g)).unwrap());
        assert_eq!(ask(&["A100"]), Ok(2));
        assert_eq!(ask(&["A100:2"]), Ok(1));
        assert_eq!(ask(&["any:3"]), Ok(1));
        assert_eq!(ask(&["H100", "T4"]), Ok(1));
        let e = ask(&["A100:4"]).unwrap_err();
        assert!(e.contains("Model asks for gpu 'A100:4'") && e.contains("3 GPU(s)") && e.contains("Tesla T4"), "{e}");
        let none = GpuPool::new(vec![]).capacity("f", &strings(&["T4"]), &parse_request(&strings(&["T4"])).unwrap());
        assert!(none.unwrap_err().contains("no GPU was found"));
    }

    #[test]
    fn containers_get_distinct_devices_and_give_them_back() {
        let mut pool = GpuPool::new(parse_nvidia_smi_list(LIST));
        let a100 = parse_request(&strings(&["A100"])).unwrap();
        let (first, s1) = pool.take(&a100).unwrap();
        let (second, s2) = pool.take(&a100).unwrap();
        assert_eq!((first.as_str(), second.as_str()), ("GPU-aaaa", "GPU-bbbb"));
        assert!(pool.take(&a100).is_none(), "both A100s are taken");
        // A preference list falls through to what is free.
        let (t4, _) = pool.take(&parse_request(&strings(&["A100", "T4"])).unwrap()).unwrap();
        assert_eq!(t4, "GPU-dddd");
        pool.give_back(&s1);
        assert_eq!(pool.take(&a100).unwrap().0, "GPU-aaaa");
        pool.give_back(&s2);
        let two = parse_request(&strings(&["A100:2"])).unwrap();
        assert!(pool.take(&two).is_none(), "only one A100 is free");
    }
}
