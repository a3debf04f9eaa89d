//! The ternary quantizer of the paper's Eq. 1: w → {−1, 0, +1} (times an optional scale) with
//! a threshold Δ, and the straight-through gradient back onto the full-precision weights.

use crate::error::{Error, Result};

/// How Δ is chosen for a layer.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Threshold {
    /// TWN: Δ = factor · mean|W| (factor 0.7 in TWN).
    MeanAbs(f32),
    /// A fixed Δ.
    Fixed(f32),
    /// TTQ-style: Δ = fraction · max|W|.
    MaxFraction(f32),
    /// Δ chosen so that this fraction of the weights becomes zero.
    ZeroFraction(f32),
}

/// What multiplies the ternary values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scale {
    /// Pure {−1, 0, +1}, as in the paper.
    None,
    /// One α per layer: TWN's mean |W| over the kept weights.
    Layer,
    /// One α per output channel (row of the weight matrix).
    Channel,
}

#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TernaryConfig {
    pub threshold: Threshold,
    pub scale: Scale,
    /// Straight-through gradient only where |w| ≤ clip (None: everywhere).
    pub clip: Option<f32>,
}

impl Default for TernaryConfig {
    fn default() -> Self {
        TernaryConfig { threshold: Threshold::MeanAbs(0.7), scale: Scale::Layer, clip: None }
    }
}

impl TernaryConfig {
    /// Parses the flag values `--ternary-threshold` (twn[:F], fixed:D, max:F, zeros:F) and
    /// `--ternary-scale` (none, layer, channel).
    pub fn parse(threshold: &str, scale: &str, clip: Option<f32>) -> Result<Self> {
        let bad = |what: &str| Error::invalid("--ternary-threshold", format!("`{threshold}`: {what}"));
        let (kind, val) = match threshold.split_once(':') {
            Some((k, v)) => (k, Some(v.parse::<f32>().map_err(|_| bad("the value after ':' is not a number"))?)),
            None => (threshold, None),
        };
        let t = match (kind, val) {
            ("twn", v) => Threshold::MeanAbs(v.unwrap_or(0.7)),
            ("fixed", Some(v)) => Threshold::Fixed(v),
            ("max", Some(v)) => Threshold::MaxFraction(v),
            ("zeros", Some(v)) => Threshold::ZeroFraction(v),
            _ => return Err(bad("expected twn, twn:F, fixed:D, max:F or zeros:F")),
        };
        let ok = match t {
            Threshold::MeanAbs(v) | Threshold::Fixed(v) => v >= 0.0 && v.is_finite(),
            Threshold::MaxFraction(v) => (0.0..=1.0).contains(&v),
            Threshold::ZeroFraction(v) => (0.0..1.0).contains(&v),
        };
        if !ok {
            return Err(bad("out of range (fractions lie in [0, 1), thresholds are >= 0)"));
        }
        let scale = match scale {
            "none" => Scale::None,
            "layer" => Scale::Layer,
            "channel" => Scale::Channel,
            _ => return Err(Error::invalid("--ternary-scale", format!("`{scale}`: expected none, layer or channel"))),
        };
        if let Some(c) = clip {
            if !(c > 0.0) {
                return Err(Error::invalid("--ternary-clip", format!("{c}: expected a positive number")));
            }
        }
        Ok(TernaryConfig { threshold: t, scale, clip })
    }
}

/// The threshold Δ for weights `w` under `rule`.
pub fn threshold(w: &[f32], rule: Threshold) -> f32 {
    match rule {
        Threshold::MeanAbs(f) => f * w.iter().map(|v| v.abs()).sum::<f32>() / w.len().max(1) as f32,
        Threshold::Fixed(d) => d,
        Threshold::MaxFraction(f) => f * w.iter().fold(0.0f32, |m, v| m.max(v.abs())),
        Threshold::ZeroFraction(f) => {
            // Δ = the magnitude at rank f·n, so that the weights strictly below... are zeroed:
            // values with |w| ≤ Δ become 0, so take the largest of the k smallest.
            let k = (f * w.len() as f32).round() as usize;
            if k == 0 {
                return -1.0; // nothing zeroed, not even exact zeros
            }
            let mut a: Vec<f32> = w.iter().map(|v| v.abs()).collect();
            let (_, kth, _) = a.select_nth_unstable_by(k - 1, |x, y| x.total_cmp(y));
            *kth
        }
    }
}

/// Writes the ternary weights of `w: [rows, cols]` (rows = output channels) into `q`:
/// q = α·sign(w) where |w| > Δ, else 0 (Eq. 1, with α = 1 for `Scale::None`).
/// Returns the fraction of zeros.
pub fn ternarize(w: &[f32], rows: usize, cfg: &TernaryConfig, q: &mut [f32]) -> f64 {
    assert_eq!(w.len(), q.len());
    let delta = threshold(w, cfg.threshold);
    let cols = w.len() / rows.max(1);
    let kept_mean = |ws: &[f32]| {
        let (s, n) =
            ws.iter().filter(|v| v.abs() > delta).fold((0.0f64, 0usize), |(s, n), v| (s + v.abs() as f64, n + 1));
        if n == 0 {
            0.0
        } else {
            (s / n as f64) as f32
        }
    };
    let layer_alpha = match cfg.scale {
        Scale::None => 1.0,
        Scale::Layer => kept_mean(w),
        Scale::Channel => 0.0, // per row below
    };
    let mut zeros = 0usize;
    for (wr, qr) in w.chunks(cols).zip(q.chunks_mut(cols)) {
        let alpha = if cfg.scale == Scale::Channel { kept_mean(wr) } else { layer_alpha };
        for (&v, o) in wr.iter().zip(qr.iter_mut()) {
            *o = if v > delta {
                alpha
            } else if v < -delta {
                -alpha
            } else {
                zeros += 1;
                0.0
            };
        }
    }
    zeros as f64 / w.len().max(1) as f64
}

/// Straight-through estimator: the gradient with respect to the ternary weights becomes the
/// gradient of the full-precision shadow weights, zeroed where |w| > clip.
pub fn straight_through(w: &[f32], grad_q: &mut [f32], clip: Option<f32>) {
    if let Some(c) = clip {
        for (g, &v) in grad_q.iter_mut().zip(w) {
            if v.abs() > c {
                *g = 0.0;
            }
        }
    }
}

/// Output channels of one weight unit of block sparsity: one 512-bit register of s32 sums
/// in tern-infer's VNNI kernel.
pub const UNIT_OUT: usize = 16;
/// Input channels of one weight unit: the 4 bytes one `vpdpbusd` lane reduces.
pub const UNIT_IN: usize = 4;

/// The unit of block sparsity: 16 output channels × 4 input channels at one kernel tap
/// (ragged at the edges), the step tern-infer's VNNI kernel skips when all its weights are
/// zero. Returns a mask over `w: [c_out, c_in, taps]` that zeroes the `fraction` of units
/// with the smallest mean |w| (ties by position, so the choice is deterministic).
pub fn unit_mask(w: &[f32], c_out: usize, c_in: usize, taps: usize, fraction: f64) -> Vec<f32> {
    assert_eq!(w.len(), c_out * c_in * taps, "weights of a [{c_out}, {c_in}, {taps}] convolution");
    let (ob, cg) = (c_out.div_ceil(UNIT_OUT), c_in.div_ceil(UNIT_IN));
    let unit = |o: usize, c: usize, t: usize| (o / UNIT_OUT * cg + c / UNIT_IN) * taps + t;
    let mut sums = vec![(0.0f64, 0usize); ob * cg * taps];
    for o in 0..c_out {
        for c in 0..c_in {
            for t in 0..taps {
                let u = &mut sums[unit(o, c, t)];
                u.0 += w[(o * c_in + c) * taps + t].abs() as f64;
                u.1 += 1;
            }
        }
    }
    let mean: Vec<f64> = sums.iter().map(|&(s, n)| s / n.max(1) as f64).collect();
    let mut order: Vec<usize> = (0..mean.len()).collect();
    order.sort_by(|&a, &b| mean[a].total_cmp(&mean[b]).then(a.cmp(&b)));
    let zeroed = ((fraction.clamp(0.0, 1.0) * mean.len() as f64).round() as usize).min(mean.len());
    let mut keep = vec![true; mean.len()];
    for &u in &order[..zeroed] {
        keep[u] = false;
    }
    let mut mask = vec![0.0; w.len()];
    for o in 0..c_out {
        for c in 0..c_in {
            for t in 0..taps {
                if keep[unit(o, c, t)] {
                    mask[(o * c_in + c) * taps + t] = 1.0;
                }
            }
        }
    }
    mask
}

/// Fraction of the units (as [`unit_mask`] groups them) whose weights are all zero.
pub fn zero_unit_fraction(w: &[f32], c_out: usize, c_in: usize, taps: usize) -> f64 {
    let (ob, cg) = (c_out.div_ceil(UNIT_OUT), c_in.div_ceil(UNIT_IN));
    let mut nonzero = vec![false; ob * cg * taps];
    for o in 0..c_out {
        for c in 0..c_in {
            for t in 0..taps {
                if w[(o * c_in + c) * taps + t] != 0.0 {
                    nonzero[(o / UNIT_OUT * cg + c / UNIT_IN) * taps + t] = true;
                }
            }
        }
    }
    nonzero.iter().filter(|&&n| !n).count() as f64 / nonzero.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn twn_rule_on_gaussian_weights_zeroes_about_42_percent() {
        // For N(0, σ²): mean|W| = σ√(2/π), Δ = 0.7·0.798σ = 0.559σ, P(|W| ≤ Δ) = 0.424.
        let mut rng = Rng::new(1);
        let w: Vec<f32> = (0..200_000).map(|_| rng.normal() * 0.05).collect();
        let mut q = vec![0.0; w.len()];
        let z = ternarize(&w, 1, &TernaryConfig::default(), &mut q);
        assert!((z - 0.424).abs() < 0.005, "zero fraction {z}");
    }

    #[test]
    fn eq1_values_and_scales() {
        let w = [0.9f32, -0.2, 0.05, -0.8, 0.3, 0.0];
        let mut q = [0.0; 6];
        let fixed = |scale| TernaryConfig { threshold: Threshold::Fixed(0.25), scale, clip: None };
        let z = ternarize(&w, 2, &fixed(Scale::None), &mut q);
        assert_eq!(q, [1.0, 0.0, 0.0, -1.0, 1.0, 0.0]);
        assert!((z - 0.5).abs() < 1e-12);
        ternarize(&w, 2, &fixed(Scale::Layer), &mut q);
        let a = (0.9 + 0.8 + 0.3) / 3.0;
        assert_eq!(q, [a, 0.0, 0.0, -a, a, 0.0]);
        ternarize(&w, 2, &fixed(Scale::Channel), &mut q); // rows [0.9,-0.2,0.05] and [-0.8,0.3,0]
        assert_eq!(q, [0.9, 0.0, 0.0, -0.55, 0.55, 0.0]);
    }

    #[test]
    fn threshold_rules() {
        let w: Vec<f32> = (1..=10).map(|i| i as f32 * if i % 2 == 0 { 1.0 } else { -1.0 }).collect();
        assert!((threshold(&w, Threshold::MeanAbs(0.7)) - 0.7 * 5.5).abs() < 1e-6);
        assert_eq!(threshold(&w, Threshold::MaxFraction(0.5)), 5.0);
        let mut q = vec![0.0; 10];
        let z = ternarize(
            &w,
            1,
            &TernaryConfig { threshold: Threshold::ZeroFraction(0.3), scale: Scale::None, clip: None },
            &mut q,
        );
        assert!((z - 0.3).abs() < 1e-12, "{z}");
        let z = ternarize(
            &w,
            1,
            &TernaryConfig { threshold: Threshold::ZeroFraction(0.0), scale: Scale::None, clip: None },
            &mut q,
        );
        assert_eq!(z, 0.0);
    }

    #[test]
    fn straight_through_passes_or_clips() {
        let w = [0.5f32, -2.0, 1.0];
        let mut g = [1.0f32, 2.0, 3.0];
        straight_through(&w, &mut g, None);
        assert_eq!(g, [1.0, 2.0, 3.0]);
        straight_through(&w, &mut g, Some(1.0));
        assert_eq!(g, [1.0, 0.0, 3.0]);
    }

    #[test]
    fn flag_parsing() {
        assert_eq!(TernaryConfig::parse("twn", "layer", None).unwrap(), TernaryConfig::default());
        assert_eq!(TernaryConfig::parse("zeros:0.6", "none", None).unwrap().threshold, Threshold::ZeroFraction(0.6));
        assert!(TernaryConfig::parse("zeros:1.5", "none", None)
            .unwrap_err()
            .to_string()
            .contains("--ternary-threshold"));
        assert!(TernaryConfig::parse("magic", "none", None).is_err());
        assert!(TernaryConfig::parse("twn", "row", None).unwrap_err().to_string().contains("--ternary-scale"));
    }

    #[test]
    fn unit_masks_zero_the_weakest_whole_units() {
        let mut rng = Rng::new(3);
        // 20 output channels (two unit rows, one ragged), 6 inputs (two groups), 9 taps
        let (k, c, t) = (20, 6, 9);
        let mut w: Vec<f32> = (0..k * c * t).map(|_| rng.normal()).collect();
        // make unit (block 0, group 1, tap 4) the weakest by far
        for o in 0..16 {
            for ch in 4..6 {
                w[(o * c + ch) * t + 4] *= 1e-3;
            }
        }
        let m = unit_mask(&w, k, c, t, 0.25);
        let units = 2 * 2 * 9;
        let zeroed_units = (units as f64 * 0.25).round() as usize;
        let masked: Vec<f32> = w.iter().zip(&m).map(|(a, b)| a * b).collect();
        assert!((zero_unit_fraction(&masked, k, c, t) - zeroed_units as f64 / units as f64).abs() < 1e-12);
        assert_eq!(m[(3 * c + 5) * t + 4], 0.0, "the weakest unit is zeroed");
        // every unit is all kept or all zeroed
        for ob in 0..2 {
            for g in 0..2 {
                for tap in 0..t {
                    let vals: Vec<f32> = (ob * 16..(ob * 16 + 16).min(k))
                        .flat_map(|o| (g * 4..(g * 4 + 4).min(c)).map(move |ch| (o, ch)))
                        .map(|(o, ch)| m[(o * c + ch) * t + tap])
                        .collect();
                    assert!(vals.iter().all(|&v| v == vals[0]), "unit ({ob}, {g}, {tap}) split: {vals:?}");
                }
            }
        }
        assert!(unit_mask(&w, k, c, t, 0.0).iter().all(|&v| v == 1.0));
        assert!(unit_mask(&w, k, c, t, 1.0).iter().all(|&v| v == 0.0));
    }
}
