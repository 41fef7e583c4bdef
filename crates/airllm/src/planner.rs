//! The planner: given a VRAM budget, decide where each execution unit runs
//! ([`Placement`]: resident on the GPU, streamed to the GPU through the ring,
//! or computed on the CPU) and how many slots the streaming ring gets. It is
//! the only place that decides placement and sizes; the engine allocates
//! exactly what the plan says, with the sizes of [`crate::sizing`].
//!
//! Fixed costs come first (KV pool, activations and step inputs, the final
//! norm, the ring and, on adapters whose mapped staging memory is VRAM, the
//! staging buffers). What is left holds resident units. Every byte kept resident is a byte not streamed per
//! forward pass, so the planner maximises resident bytes; the lm_head is the
//! largest unit of most models and competes with layers on equal terms. Resident
//! layers are spread evenly through the stack so the reader can run ahead while
//! the GPU computes them.

use airllm_format::{Unit, human_bytes};

use crate::error::{EngineError, Result};
use crate::sizing::FixedBytes;

/// Where a unit runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Placement {
    /// Loaded into VRAM once and kept there.
    Resident,
    /// Copied into a ring slot for every pass.
    Streamed,
    /// Computed on the CPU from its memory-mapped shard.
    Cpu,
}

impl Placement {
    /// Lower-case name (`resident`, `streamed`, `cpu`).
    pub fn name(self) -> &'static str {
        match self {
            Placement::Resident => "resident",
            Placement::Streamed => "streamed",
            Placement::Cpu => "cpu",
        }
    }
}

/// What the planner needs to know.
#[derive(Clone, Debug)]
pub struct PlanInput {
    /// Units run on the GPU per forward pass, in order, with their shard sizes
    /// (decoder layers, the final norm, the lm_head).
    pub units: Vec<(Unit, u64)>,
    /// The KV pool and the activation / step-input buffers ([`crate::sizing::fixed_bytes`]).
    pub fixed: FixedBytes,
    /// Whether mapped staging buffers occupy VRAM (discrete GPUs with a BAR mapping).
    pub staging_in_vram: bool,
    /// Shards read ahead (staging buffers in flight).
    pub prefetch_depth: usize,
    /// The budget in bytes (`u64::MAX` for unlimited).
    pub budget: u64,
    /// `--resident-layers`: keep exactly this many decoder layers resident.
    pub resident_layers: Option<usize>,
}

/// The plan.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Per unit of the input, where it runs.
    pub placement: Vec<Placement>,
    /// Units in the input order.
    pub units: Vec<(Unit, u64)>,
    /// Ring slots for streamed units (0 when everything is resident).
    pub ring_slots: usize,
    /// Bytes per ring slot (the largest streamed unit).
    pub slot_bytes: u64,
    /// Staging buffers (the prefetch depth) and their size each.
    pub staging_buffers: usize,
    /// Bytes of one staging buffer.
    pub staging_bytes: u64,
    /// Whether staging counts against VRAM.
    pub staging_in_vram: bool,
    /// KV cache bytes.
    pub kv_bytes: u64,
    /// The part of `kv_bytes` in sliding-window layers (sized to their window,
    /// [`crate::engine::kv::window`]).
    pub kv_sliding_bytes: u64,
    /// Activation bytes.
    pub activation_bytes: u64,
    /// The budget.
    pub budget: u64,
}

impl Plan {
    fn bytes_where(&self, p: Placement) -> u64 {
        self.units.iter().zip(&self.placement).filter(|(_, q)| **q == p).map(|((_, b), _)| b).sum()
    }
    /// Bytes of resident units.
    pub fn resident_bytes(&self) -> u64 {
        self.bytes_where(Placement::Resident)
    }
    /// Bytes streamed per forward pass.
    pub fn streamed_bytes(&self) -> u64 {
        self.bytes_where(Placement::Streamed)
    }
    /// Bytes computed on the CPU per pass (read from RAM, not streamed).
    pub fn cpu_bytes(&self) -> u64 {
        self.bytes_where(Placement::Cpu)
    }
    /// Where `unit` runs.
    pub fn placement_of(&self, unit: Unit) -> Option<Placement> {
        self.units.iter().zip(&self.placement).find(|((u, _), _)| *u == unit).map(|(_, p)| *p)
    }
    /// Total VRAM the plan uses.
    pub fn vram_bytes(&self) -> u64 {
        let staging = if self.staging_in_vram { self.staging_buffers as u64 * self.staging_bytes } else { 0 };
        self.resident_bytes()
            + self.ring_slots as u64 * self.slot_bytes
            + staging
            + self.kv_bytes
            + self.activation_bytes
    }
    /// Decoder layers kept resident.
    pub fn resident_layers(&self) -> usize {
        self.units
            .iter()
            .zip(&self.placement)
            .filter(|((u, _), p)| **p == Placement::Resident && matches!(u, Unit::Layer(_)))
            .count()
    }
    /// Whether a unit is resident.
    pub fn is_resident(&self, unit: Unit) -> bool {
        self.placement_of(unit) == Some(Placement::Resident)
    }
}

impl std::fmt::Display for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let budget = if self.budget == u64::MAX { "unlimited".to_string() } else { human_bytes(self.budget) };
        let layers = self.units.iter().filter(|(u, _)| matches!(u, Unit::Layer(_))).count();
        writeln!(f, "budget          {budget}")?;
        writeln!(f, "planned VRAM    {}", human_bytes(self.vram_bytes()))?;
        writeln!(
            f,
            "resident        {} ({} of {layers} layers{})",
            human_bytes(self.resident_bytes()),
            self.resident_layers(),
            if self.is_resident(Unit::LmHead) { ", lm_head" } else { "" }
        )?;
        writeln!(f, "streamed/pass   {}", human_bytes(self.streamed_bytes()))?;
        let cpu = self.placement.iter().filter(|p| **p == Placement::Cpu).count();
        if cpu > 0 {
            writeln!(f, "on the CPU      {} ({cpu} units, read from RAM each pass)", human_bytes(self.cpu_bytes()))?;
        }
        writeln!(f, "ring            {} slots x {}", self.ring_slots, human_bytes(self.slot_bytes))?;
        writeln!(
            f,
            "staging         {} x {} ({})",
            self.staging_buffers,
            human_bytes(self.staging_bytes),
            if self.staging_in_vram { "in VRAM" } else { "host memory" }
        )?;
        if self.kv_sliding_bytes > 0 {
            writeln!(
                f,
                "KV cache        {} ({} of it in sliding-window layers)",
                human_bytes(self.kv_bytes),
                human_bytes(self.kv_sliding_bytes)
            )?;
        } else {
            writeln!(f, "KV cache        {}", human_bytes(self.kv_bytes))?;
        }
        write!(f, "activations     {}", human_bytes(self.activation_bytes))?;
        let streamed: Vec<String> = self
            .units
            .iter()
            .zip(&self.placement)
            .filter(|(_, p)| **p == Placement::Streamed)
            .map(|((u, _), _)| u.to_string())
            .collect();
        if !streamed.is_empty() && streamed.len() <= 12 {
            write!(f, "\nstreamed units  {}", streamed.join(", "))?;
        }
        Ok(())
    }
}

/// Make the plan, or explain why the budget is too small.
pub fn plan(input: &PlanInput) -> Result<Plan> {
    let n = input.units.len();
    // Decoder layers and the parts of a split lm_head compete for residency alike;
    // a forced `--resident-layers` count applies to decoder layers only.
    let layer_idx: Vec<usize> = (0..n)
        .filter(|&i| match input.units[i].0 {
            Unit::Layer(_) => true,
            Unit::LmHeadPart(_) => input.resident_layers.is_none(),
            _ => false,
        })
        .collect();
    let base = Plan {
        placement: vec![Placement::Resident; n],
        units: input.units.clone(),
        ring_slots: 0,
        slot_bytes: 0,
        staging_buffers: 0,
        staging_bytes: 0,
        staging_in_vram: input.staging_in_vram,
        kv_bytes: input.fixed.kv,
        kv_sliding_bytes: input.fixed.kv_sliding,
        activation_bytes: input.fixed.activations,
        budget: input.budget,
    };
    // Everything fits and nothing forces streaming: all resident.
    if input.resident_layers.is_none_or(|r| r >= layer_idx.len()) && base.vram_bytes() <= input.budget {
        return Ok(base);
    }
    let depth_max = input.prefetch_depth.max(1);
    let mut best: Option<Plan> = None;
    let head = (0..n).find(|&i| input.units[i].0 == Unit::LmHead);
    // Deeper prefetch first: with staging in VRAM a smaller depth may be what fits.
    for depth in (1..=depth_max).rev() {
        for head_resident in [true, false] {
            if head.is_none() && !head_resident {
                continue;
            }
            for ring in [2usize, 1] {
                let mut resident = vec![false; n];
                for (i, (u, _)) in input.units.iter().enumerate() {
                    if matches!(u, Unit::FinalNorm | Unit::Embedding) {
                        resident[i] = true;
                    }
                }
                if let Some(h) = head {
                    resident[h] = head_resident;
                }
                // Number of resident layers: forced, or as many as fit.
                let want = input.resident_layers.unwrap_or(layer_idx.len()).min(layer_idx.len());
                let mut chosen = None;
                for k in (0..=want).rev() {
                    let mut r = resident.clone();
                    for &i in &spread(&layer_idx, k) {
                        r[i] = true;
                    }
                    let p = finish(&base, r, ring, depth);
                    if p.vram_bytes() <= input.budget {
                        chosen = Some(p);
                        break;
                    }
                    if input.resident_layers.is_some() {
                        break; // a forced count either fits or this option fails
                    }
                }
                if let Some(p) = chosen {
                    let key = |q: &Plan| {
                        (q.streamed_bytes(), std::cmp::Reverse(q.ring_slots), std::cmp::Reverse(q.staging_buffers))
                    };
                    if best.as_ref().is_none_or(|b| key(&p) < key(b)) {
                        best = Some(p);
                    }
                }
            }
        }
        // Prefer the deepest prefetch that reaches the best streamed bytes.
        if best.is_some() {
            break;
        }
    }
    best.ok_or_else(|| {
        // The minimum: no layer resident beyond a forced count, one slot, one
        // staging buffer, the lm_head resident or streamed, whichever is smaller.
        let want = input.resident_layers.unwrap_or(0).min(layer_idx.len());
        let min = [true, false]
            .into_iter()
            .map(|head_resident| {
                let mut r = vec![false; n];
                for (i, (u, _)) in input.units.iter().enumerate() {
                    r[i] = matches!(u, Unit::FinalNorm | Unit::Embedding) || (*u == Unit::LmHead && head_resident);
                }
                for &i in &spread(&layer_idx, want) {
                    r[i] = true;
                }
                finish(&base, r, 1, 1)
            })
            .min_by_key(Plan::vram_bytes)
            .unwrap_or_else(|| base.clone());
        let staging = if min.staging_in_vram { min.staging_buffers as u64 * min.staging_bytes } else { 0 };
        EngineError::BudgetTooSmall {
            budget_h: human_bytes(input.budget),
            minimum_h: human_bytes(min.vram_bytes()),
            breakdown: format!(
                "resident {} + one layer slot {} + KV cache {} + activations {} + staging {}",
                human_bytes(min.resident_bytes()),
                human_bytes(min.slot_bytes),
                human_bytes(min.kv_bytes),
                human_bytes(min.activation_bytes),
                human_bytes(staging)
            ),
        }
    })
}

/// Everything on the CPU executor: no VRAM at all.
pub fn all_cpu(units: Vec<(Unit, u64)>) -> Plan {
    Plan {
        placement: vec![Placement::Cpu; units.len()],
        units,
        ring_slots: 0,
        slot_bytes: 0,
        staging_buffers: 0,
        staging_bytes: 0,
        staging_in_vram: false,
        kv_bytes: 0,
        kv_sliding_bytes: 0,
        activation_bytes: 0,
        budget: u64::MAX,
    }
}

/// Bandwidths the CPU-or-stream choice rests on (measured: see
/// `engine::calibrate`).
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct CostModel {
    /// CPU matmul over weights in RAM, one token, GB/s.
    pub cpu_gbps: f64,
    /// Host memory to VRAM through the staging ring, GB/s.
    pub stream_gbps: f64,
}

impl CostModel {
    /// Predicted seconds one pass spends on `bytes` placed at `p` (a decode
    /// pass: weights read once; resident units cost their VRAM read, taken
    /// as free beside the other two).
    pub fn seconds(&self, p: Placement, bytes: u64) -> f64 {
        match p {
            Placement::Resident => 0.0,
            Placement::Streamed => bytes as f64 / (self.stream_gbps * 1e9),
            Placement::Cpu => bytes as f64 / (self.cpu_gbps * 1e9),
        }
    }
}

/// Moves units off the streaming ring onto the CPU: exactly `cpu_layers`
/// decoder layers when given (streamed ones first, then resident ones from
/// the top of the stack), else, with a cost model, every streamed unit the
/// CPU reads faster than the ring delivers. The ring shrinks to the units
/// still streamed.
pub fn place_cpu(plan: &mut Plan, cpu_layers: Option<usize>, cost: Option<&CostModel>) {
    let layers: Vec<usize> = (0..plan.units.len()).filter(|&i| matches!(plan.units[i].0, Unit::Layer(_))).collect();
    match cpu_layers {
        Some(n) => {
            let mut chosen: Vec<usize> =
                layers.iter().copied().filter(|&i| plan.placement[i] == Placement::Streamed).take(n).collect();
            for &i in layers.iter().rev() {
                if chosen.len() >= n {
                    break;
                }
                if !chosen.contains(&i) {
                    chosen.push(i);
                }
            }
            for i in chosen {
                plan.placement[i] = Placement::Cpu;
            }
        }
        None => {
            let Some(c) = cost else { return };
            for i in 0..plan.units.len() {
                let b = plan.units[i].1;
                if plan.placement[i] == Placement::Streamed
                    && c.seconds(Placement::Cpu, b) < c.seconds(Placement::Streamed, b)
                {
                    plan.placement[i] = Placement::Cpu;
                }
            }
        }
    }
    let slot = plan
        .units
        .iter()
        .zip(&plan.placement)
        .filter(|(_, p)| **p == Placement::Streamed)
        .map(|((_, b), _)| *b)
        .max()
        .unwrap_or(0);
    if slot == 0 {
        plan.ring_slots = 0;
        plan.staging_buffers = 0;
    }
    plan.slot_bytes = slot;
    plan.staging_bytes = slot;
}

fn finish(base: &Plan, resident: Vec<bool>, ring: usize, depth: usize) -> Plan {
    let slot_bytes = base.units.iter().zip(&resident).filter(|(_, r)| !**r).map(|((_, b), _)| *b).max().unwrap_or(0);
    let streaming = slot_bytes > 0;
    Plan {
        placement: resident.iter().map(|&r| if r { Placement::Resident } else { Placement::Streamed }).collect(),
        ring_slots: if streaming { ring } else { 0 },
        slot_bytes,
        staging_buffers: if streaming { depth } else { 0 },
        staging_bytes: slot_bytes,
        ..base.clone()
    }
}

/// `k` of `idx` spread evenly (first, ..., last-ish).
fn spread(idx: &[usize], k: usize) -> Vec<usize> {
    if k == 0 {
        return Vec::new();
    }
    let n = idx.len();
    (0..k).map(|j| idx[j * n / k]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(budget: u64, resident_layers: Option<usize>) -> PlanInput {
        let mut units: Vec<(Unit, u64)> = (0..8).map(|i| (Unit::Layer(i), 100)).collect();
        units.push((Unit::FinalNorm, 1));
        units.push((Unit::LmHead, 300));
        PlanInput {
            units,
            fixed: FixedBytes { kv: 50, kv_sliding: 0, activations: 20 },
            staging_in_vram: true,
            prefetch_depth: 2,
            budget,
            resident_layers,
        }
    }

    #[test]
    fn unlimited_keeps_everything() {
        let p = plan(&input(u64::MAX, None)).unwrap();
        assert!(p.placement.iter().all(|r| *r == Placement::Resident));
        assert_eq!(p.ring_slots, 0);
        assert_eq!(p.streamed_bytes(), 0);
    }

    #[test]
    fn budget_is_never_exceeded_and_resident_bytes_are_maximal() {
        for budget in [571u64, 700, 900, 1100, 1300] {
            let p = plan(&input(budget, None)).unwrap();
            assert!(p.vram_bytes() <= budget, "{budget}: {p}");
            assert!(p.ring_slots >= 1 || p.streamed_bytes() == 0, "{budget}: {p}");
        }
    }

    #[test]
    fn too_small_names_the_minimum() {
        let e = plan(&input(570, None)).unwrap_err().to_string();
        // lm_head (300) resident + one 100-byte slot + one staging + KV 50 + activations 20 + norm 1.
        assert!(e.contains("--max-vram") && e.contains("minimum 571 B"), "{e}");
    }

    #[test]
    fn forced_zero_streams_every_layer() {
        let p = plan(&input(u64::MAX, Some(0))).unwrap();
        assert_eq!(p.resident_layers(), 0);
        assert!(p.ring_slots >= 1);
        assert!(p.is_resident(Unit::FinalNorm));
    }

    #[test]
    fn forced_count_is_spread() {
        let p = plan(&input(u64::MAX, Some(2))).unwrap();
        assert_eq!(p.resident_layers(), 2);
        assert!(p.is_resident(Unit::Layer(0)) && p.is_resident(Unit::Layer(4)));
    }
}
