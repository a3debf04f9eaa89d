//! Accelerator configuration: typed, validated once, with the paper's two presets.

use std::path::Path;
use tern_core::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    Fp32,
    Fp16,
}

/// How the mapper orients an op on the grid: which of its two output dimensions runs along
/// the PE rows (one value per PE and step) and which along the PE columns (`out_buffers`
/// values per PE and step). The two sides skip zeros differently, so the orientation decides
/// which operand's zeros pay off (DLAC.md, validation).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Orientation {
    /// Every op as `swap_operands` says.
    #[default]
    Fixed,
    /// Per op, the orientation that needs fewer dense cycles (fewer PEs idle in edge tiles).
    FewestDenseCycles,
    /// Per op, the larger output dimension along the grid's longer side (the tile's height
    /// `rows` against its width `cols · out_buffers`).
    LargerAlongLonger,
}

impl Orientation {
    pub const ALL: [Orientation; 3] =
        [Orientation::Fixed, Orientation::FewestDenseCycles, Orientation::LargerAlongLonger];
    pub fn name(self) -> &'static str {
        match self {
            Orientation::Fixed => "fixed",
            Orientation::FewestDenseCycles => "fewest-dense-cycles",
            Orientation::LargerAlongLonger => "larger-along-longer",
        }
    }
}

/// A DLAC instance: a `rows x cols` grid of processing elements (PEs). Each PE owns
/// `out_buffers` outputs (one output row of the mmOp, `out_buffers` consecutive columns) and
/// `units` multiply-add units. Row operands (weights in the forward pass) are broadcast
/// along PE rows, column operands (input features) along PE columns.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DlacConfig {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    /// Multiply-add units per PE (FMA units, or multiplier+adder pairs in FP16 mode).
    pub units: usize,
    /// Output buffers per PE: the outputs it accumulates at once.
    pub out_buffers: usize,
    /// Look-ahead of the zero-skipping scheduler, in reduction steps: PEs run independently
    /// within a window of this many steps and meet at its end (operand FIFOs of this depth).
    pub window: usize,
    /// Reduction steps the scheduler can scan (and skip) per cycle.
    pub scan_rate: usize,
    /// Words the weight and IFM buffers deliver per cycle, all read ports together: a window
    /// cannot finish before its broadcast operands have been read.
    #[serde(default = "default_read_words")]
    pub read_words_per_cycle: usize,
    pub precision: Precision,
    /// Which operand the PE rows carry: `false` (the paper's reading) broadcasts the first
    /// operand (weights in the forward pass) along PE rows, one value per PE and step; `true`
    /// swaps them, so the first operand's values go `out_buffers` at a time down PE columns.
    #[serde(default)]
    pub swap_operands: bool,
    /// Whether the mapper orients each op on its own ([`Orientation`]); a tie, and
    /// `fixed`, keep `swap_operands`.
    #[serde(default)]
    pub orientation: Orientation,
    /// Event engine: the operand FIFOs hold only the steps that give their PE work (a zero
    /// weight, or all-zero inputs, never take a slot), so the broadcast waits only for the PEs
    /// it feeds. The fast engine has no FIFOs and refuses it.
    #[serde(default)]
    pub compressed_fifos: bool,
    /// Where Bernoulli input zeros are drawn: `false`, independently in the lowered (im2col)
    /// matrix; `true`, on the input feature map, then lowered as the convolution reads it —
    /// a zero input then appears at every window position that covers it, and padding adds
    /// zeros, as in a real network. Needs the forward op's convolution (given by the workload
    /// or inferred from K, CRS and PQ, see `masks::infer_conv`); other ops keep the lowered
    /// draw. Real masks (`--masks`) are used as they are either way.
    #[serde(default)]
    pub feature_map_zeros: bool,
    /// With `feature_map_zeros`: the share of the input zeros that come as whole dead
    /// channels (a channel all zero over the image, as ReLU leaves many), the rest drawn
    /// element by element at the rate that keeps the op's zero fraction (0: independent
    /// elements only). A structural candidate of the validation (DLAC.md).
    #[serde(default)]
    pub dead_channel_share: f64,
    /// Cycles between two accumulations into the same output buffer (the FP adder's pipeline
    /// depth, seen by the event engine; 1: forwarded, never a stall). The paper gives none.
    #[serde(default = "default_fma_latency")]
    pub fma_latency: usize,
    pub clock_mhz: f64,
    /// Weight and input-feature-map buffer sizes, KiB (used by the area model; the paper
    /// gives none, the presets' sizes close its reported areas).
    pub weight_buffer_kib: usize,
    pub ifm_buffer_kib: usize,
    /// Images that share one pass over the weights (the memory model's batch): each image's
    /// off-chip traffic is that of the batched op over the batch. 1: inference at batch 1.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Off-chip bandwidth, GB/s. The paper gives no memory system: the default, one 64-bit
    /// LPDDR4-3200 channel (25.6 GB/s), is an assumption.
    #[serde(default = "default_dram_gb_per_s")]
    pub dram_gb_per_s: f64,
    /// Off-chip energy, pJ per bit moved (default: HBM2's 3.9, O'Connor et al., MICRO 2017).
    #[serde(default = "default_dram_pj_per_bit")]
    pub dram_pj_per_bit: f64,
}

fn default_read_words() -> usize {
    240
}
fn default_batch() -> usize {
    1
}
fn default_fma_latency() -> usize {
    1
}
fn default_dram_gb_per_s() -> f64 {
    25.6
}
fn default_dram_pj_per_bit() -> f64 {
    3.9
}

impl DlacConfig {
    /// The paper's training instance: 512 FP32 FMA units, 32-bit datapaths, 500 MHz. The
    /// grid shape, buffers, window and scan rate are the calibrated set (DLAC.md): the best
    /// of a grid search against the odd rows of the paper's Fig. 5.
    pub fn fp32_train() -> Self {
        DlacConfig {
            name: "dlac-fp32-train".into(),
            rows: 64,
            cols: 8,
            units: 1,
            out_buffers: 2,
            window: 12,
            scan_rate: 3,
            // a full tile reads 64 + 8·2 words per step, 3 steps per cycle at the scan rate
            read_words_per_cycle: 240,
            precision: Precision::Fp32,
            swap_operands: false,
            orientation: Orientation::Fixed,
            compressed_fifos: false,
            feature_map_zeros: false,
            dead_channel_share: 0.0,
            fma_latency: default_fma_latency(),
            clock_mhz: 500.0,
            weight_buffer_kib: 216,
            ifm_buffer_kib: 216,
            batch: default_batch(),
            dram_gb_per_s: default_dram_gb_per_s(),
            dram_pj_per_bit: default_dram_pj_per_bit(),
        }
    }

    /// The paper's inference instance: 256 FP16 multipliers + 256 FP16 adders (256 multiply-add
    /// pairs), 16-bit datapaths; half the grid rows of the training instance.
    pub fn fp16_infer() -> Self {
        DlacConfig {
            name: "dlac-fp16-infer".into(),
            rows: 32,
            precision: Precision::Fp16,
            weight_buffer_kib: 144,
            ifm_buffer_kib: 144,
            ..Self::fp32_train()
        }
    }

    /// The training instance as the event engine fits it (`tern sim --engine event`): the
    /// best fit of the leave-one-out validation's best candidate (decoupled FIFOs, weights on
    /// PE rows) on the paper's 18 odd Fig. 5 rows (DLAC.md, "Validation"): 3 output buffers,
    /// FIFOs of 4 steps, scan rate 3, 192 buffer words per cycle. Fitted, like the others.
    pub fn fp32_event() -> Self {
        DlacConfig {
            name: "dlac-fp32-event".into(),
            out_buffers: 3,
            window: 4,
            read_words_per_cycle: 192,
            ..Self::fp32_train()
        }
    }

    /// The event engine with input zeros drawn on the feature map: that candidate's best fit on
    /// the 18 odd Fig. 5 rows (DLAC.md, "Validation"; LOO 8.6 % mean, 26.7 % max, against
    /// 8.3 / 31.8 for the lowered draw): 3 output buffers, FIFOs of 4 steps, scan rate 4,
    /// buffer reads never the limit (352 words per cycle: a full tile's 64 + 8·3 words per step
    /// at 4 steps a cycle). Fitted.
    pub fn fp32_fmap() -> Self {
        DlacConfig {
            name: "dlac-fp32-fmap".into(),
            out_buffers: 3,
            window: 4,
            scan_rate: 4,
            read_words_per_cycle: 352,
            feature_map_zeros: true,
            ..Self::fp32_train()
        }
    }

    /// The preset for prediction: the event engine on feature-map zeros with the mapper's
    /// orientation rule, the larger output dimension of each op along the grid's longer side
    /// (the 64 PE rows). The best fit of the validation's best candidate on the 18 odd Fig. 5
    /// rows (DLAC.md, "Validation"; LOO 5.6 % mean, 12.4 % max): otherwise `dlac-fp32-fmap`'s
    /// constants, which the search chose again. Fitted.
    pub fn fp32_orient() -> Self {
        DlacConfig { name: "dlac-fp32-orient".into(), orientation: Orientation::LargerAlongLonger, ..Self::fp32_fmap() }
    }

    pub const PRESETS: [&'static str; 5] =
        ["dlac-fp32-train", "dlac-fp16-infer", "dlac-fp32-event", "dlac-fp32-fmap", "dlac-fp32-orient"];

    /// A preset name or a TOML file.
    pub fn load(spec: &str) -> Result<Self> {
        let cfg = match spec {
            "dlac-fp32-train" => Self::fp32_train(),
            "dlac-fp16-infer" => Self::fp16_infer(),
            "dlac-fp32-event" => Self::fp32_event(),
            "dlac-fp32-fmap" => Self::fp32_fmap(),
            "dlac-fp32-orient" => Self::fp32_orient(),
            path => {
                let p = Path::new(path);
                if !p.is_file() {
                    return Err(Error::invalid(
                        "--config",
                        format!("`{spec}` is neither a preset {:?} nor a TOML file", Self::PRESETS),
                    ));
                }
                let text = std::fs::read_to_string(p).map_err(|e| Error::io(p, e))?;
                Self::from_toml(&text, p)?
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses and validates a TOML config (named `path` in errors).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| Error::format(path, format!("not a DLAC config: {e}")))?;
        // a bad value in a file names the file as well as the field
        cfg.validate().map_err(|e| Error::format(path, e.to_string()))?;
        Ok(cfg)
    }

    /// Rejects impossible configurations, naming the field and the rule.
    pub fn validate(&self) -> Result<()> {
        let positive = [
            ("rows", self.rows),
            ("cols", self.cols),
            ("units", self.units),
            ("out_buffers", self.out_buffers),
            ("window", self.window),
            ("scan_rate", self.scan_rate),
            ("read_words_per_cycle", self.read_words_per_cycle),
            ("fma_latency", self.fma_latency),
            ("batch", self.batch),
        ];
        for (field, v) in positive {
            if v == 0 {
                return Err(Error::invalid(field, "must be at least 1"));
            }
        }
        if !(0.0..=1.0).contains(&self.dead_channel_share) {
            return Err(Error::invalid(
                "dead_channel_share",
                format!("{}: expected a share in [0, 1]", self.dead_channel_share),
            ));
        }
        if self.dead_channel_share > 0.0 && !self.feature_map_zeros {
            return Err(Error::invalid(
                "dead_channel_share",
                "only with feature_map_zeros = true (channels live on the feature map)",
            ));
        }
        if self.units > self.out_buffers {
            return Err(Error::invalid(
                "units",
                format!(
                    "{} units per PE but only {} output buffers: a PE cannot feed more units than outputs",
                    self.units, self.out_buffers
                ),
            ));
        }
        for (field, v) in [
            ("clock_mhz", self.clock_mhz),
            ("dram_gb_per_s", self.dram_gb_per_s),
            ("dram_pj_per_bit", self.dram_pj_per_bit),
        ] {
            if !(v > 0.0 && v.is_finite()) {
                return Err(Error::invalid(field, format!("{v}: must be a positive number")));
            }
        }
        Ok(())
    }

    /// Width of a datapath word and of every stored value.
    pub fn word_bits(&self) -> usize {
        match self.precision {
            Precision::Fp32 => 32,
            Precision::Fp16 => 16,
        }
    }

    /// Multiply-add units in the grid.
    pub fn total_units(&self) -> usize {
        self.rows * self.cols * self.units
    }

    /// Peak FLOP/cycle without skipping (a multiply-add is 2 FLOP).
    pub fn dense_flops_per_cycle(&self) -> f64 {
        2.0 * self.total_units() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_the_paper() {
        let t = DlacConfig::fp32_train();
        assert_eq!((t.total_units(), t.precision, t.clock_mhz), (512, Precision::Fp32, 500.0));
        let i = DlacConfig::fp16_infer();
        assert_eq!((i.total_units(), i.precision), (256, Precision::Fp16));
        for name in DlacConfig::PRESETS {
            let c = DlacConfig::load(name).unwrap();
            assert_eq!((c.name.as_str(), c.total_units()), (name, if name == "dlac-fp16-infer" { 256 } else { 512 }));
        }
        assert_eq!(DlacConfig::load("dlac-fp32-orient").unwrap().orientation, Orientation::LargerAlongLonger);
    }

    #[test]
    fn every_config_error_names_its_field() {
        let base = DlacConfig::fp32_train();
        let cases: Vec<(DlacConfig, &str)> = vec![
            (DlacConfig { rows: 0, ..base.clone() }, "rows"),
            (DlacConfig { cols: 0, ..base.clone() }, "cols"),
            (DlacConfig { units: 0, ..base.clone() }, "units"),
            (DlacConfig { out_buffers: 0, ..base.clone() }, "out_buffers"),
            (DlacConfig { window: 0, ..base.clone() }, "window"),
            (DlacConfig { scan_rate: 0, ..base.clone() }, "scan_rate"),
            (DlacConfig { read_words_per_cycle: 0, ..base.clone() }, "read_words_per_cycle"),
            (DlacConfig { fma_latency: 0, ..base.clone() }, "fma_latency"),
            (DlacConfig { batch: 0, ..base.clone() }, "batch"),
            (DlacConfig { units: 3, out_buffers: 2, ..base.clone() }, "units"),
            (DlacConfig { clock_mhz: -1.0, ..base.clone() }, "clock_mhz"),
            (DlacConfig { dram_gb_per_s: 0.0, ..base.clone() }, "dram_gb_per_s"),
            (DlacConfig { dram_pj_per_bit: f64::NAN, ..base.clone() }, "dram_pj_per_bit"),
        ];
        for (cfg, field) in cases {
            let e = cfg.validate().unwrap_err().to_string();
            assert!(e.contains(field), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, toml::to_string(&DlacConfig { name: "mine".into(), ..base.clone() }).unwrap()).unwrap();
        assert_eq!(DlacConfig::load(p.to_str().unwrap()).unwrap().name, "mine");
        std::fs::write(&p, "rows = 4\nbogus = 1\n").unwrap();
        let e = DlacConfig::load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("c.toml") && e.contains("bogus"), "{e}");
        assert!(DlacConfig::load("dlac-huge").unwrap_err().to_string().contains("--config"));
    }
}
