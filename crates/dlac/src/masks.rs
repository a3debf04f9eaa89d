//! Real operand masks: the profiler's `masks.bin` (weights, inputs and output gradients of
//! every mmOp layer, one training batch) lowered to the row and column operands of each
//! pass, for image 0 of the batch (a workload's PQ is per image). The cycle engine then
//! skips the zeros the network really has, spatial structure included, instead of
//! independent Bernoulli draws.

use crate::workload::MmOp;
use tern_core::masks::{MaskRecord, Operand};
use tern_core::{Error, Result};

/// A bit matrix, row-major, each row padded to whole 64-bit words (bit set = non-zero).
#[derive(Clone, Debug)]
pub struct BitMatrix {
    pub rows: usize,
    pub cols: usize,
    words_per_row: usize,
    words: Vec<u64>,
}

impl BitMatrix {
    pub fn from_fn(rows: usize, cols: usize, f: impl Fn(usize, usize) -> bool) -> Self {
        let wpr = cols.div_ceil(64).max(1);
        let mut words = vec![0u64; rows * wpr];
        for r in 0..rows {
            for c in 0..cols {
                if f(r, c) {
                    words[r * wpr + c / 64] |= 1 << (c % 64);
                }
            }
        }
        BitMatrix { rows, cols, words_per_row: wpr, words }
    }

    /// Bits `[c0, c0 + len)` of row `r` (len ≤ 64), bit 0 = column c0; 0 beyond the matrix.
    #[inline]
    pub fn bits(&self, r: usize, c0: usize, len: usize) -> u64 {
        if r >= self.rows || c0 >= self.cols {
            return 0;
        }
        let row = &self.words[r * self.words_per_row..(r + 1) * self.words_per_row];
        let (w, off) = (c0 / 64, c0 % 64);
        let mut v = row[w] >> off;
        if off > 0 && w + 1 < row.len() {
            v |= row[w + 1] << (64 - off);
        }
        if len < 64 {
            v &= (1u64 << len) - 1;
        }
        v
    }

    pub fn zero_fraction(&self) -> f64 {
        let ones: u64 = self.words.iter().map(|w| w.count_ones() as u64).sum();
        1.0 - ones as f64 / (self.rows * self.cols).max(1) as f64
    }
}

/// The two operands of one lowered mmOp `[m x red]·[red x n]`: `a` is m x red (row operand),
/// `bt` is n x red (the column operand, one row per output column).
#[derive(Clone, Debug)]
pub struct OpMasks {
    pub a: BitMatrix,
    pub bt: BitMatrix,
}

/// Every stride and (symmetric) padding up to half the kernel (as PyTorch allows) that map
/// `h` to `p` with a kernel of `r`.
fn stride_pad_candidates(h: usize, r: usize, p: usize) -> Vec<(usize, usize)> {
    (1..=r.max(4))
        .flat_map(|s| (0..=r / 2).map(move |pad| (s, pad)))
        .filter(|&(s, pad)| h + 2 * pad >= r && (h + 2 * pad - r) / s + 1 == p)
        .collect()
}

/// The one stride and padding that fit (version-1 mask files carry none); None when no
/// candidate or several fit both sides.
fn infer_stride_pad(h: usize, r: usize, p: usize, w: usize, s: usize, q: usize) -> Option<(usize, usize)> {
    let rows = stride_pad_candidates(h, r, p);
    let cols = stride_pad_candidates(w, s, q);
    let both: Vec<_> = rows.into_iter().filter(|c| cols.contains(c)).collect();
    (both.len() == 1).then(|| both[0])
}

/// The convolution behind a forward op, as the feature-map draw needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoweredConv {
    /// Input channels, kernel side, stride, padding, input side, output side.
    pub c: usize,
    pub kernel: usize,
    pub stride: usize,
    pub pad: usize,
    pub h_in: usize,
    pub side: usize,
}

/// The square convolution behind a forward op's (K, CRS, PQ), by the rules of ResNet-style
/// nets (what the paper's Fig. 5 lists): CRS 147 is the RGB stem (7x7, stride 2, padding 3);
/// a multiple of 9 is a 3x3 with padding 1, stride 2 where K = 2C (the first layer of a
/// stage); anything else a 1x1 (stride 2 where K = 2C: a shortcut). None for other passes,
/// a non-square PQ, or a result that contradicts the op's known input size.
pub fn infer_conv(op: &MmOp) -> Option<LoweredConv> {
    if op.pass != "forward" {
        return None;
    }
    let side = (op.pq as f64).sqrt().round() as usize;
    if side == 0 || side * side != op.pq {
        return None;
    }
    let (c, kernel, pad) = if op.crs == 147 {
        (3, 7, 3)
    } else if op.crs.is_multiple_of(9) {
        (op.crs / 9, 3, 1)
    } else {
        (op.crs, 1, 0)
    };
    let stride = if op.crs == 147 || op.k == 2 * c { 2 } else { 1 };
    let h_in = side * stride;
    if (h_in + 2 * pad - kernel) / stride + 1 != side || op.ifm_words.is_some_and(|w| w != (c * h_in * h_in) as u64) {
        return None;
    }
    Some(LoweredConv { c, kernel, stride, pad, h_in, side })
}

impl OpMasks {
    /// Bernoulli operands of a forward op with its input zeros drawn on the feature map
    /// (`[c][h][w]`, each zero with the op's column zero fraction) and lowered through
    /// im2col with zero padding; weights drawn independently. A share `dead` of the input
    /// zeros comes as whole dead channels (each channel dead with probability dead·z, the
    /// other elements zero with z(1 − dead)/(1 − dead·z), so the expected fraction stays z).
    /// None where the convolution cannot be inferred ([`infer_conv`]).
    pub fn bernoulli_feature_map(op: &MmOp, seed: u64, dead: f64) -> Option<OpMasks> {
        let conv = infer_conv(op)?;
        let LoweredConv { c, kernel: r, stride, pad, h_in: h, side } = conv;
        let mut rng = tern_core::Rng::new(seed);
        let weights: Vec<bool> = (0..op.k * op.crs).map(|_| rng.uniform() >= op.row_zero as f32).collect();
        let a = BitMatrix::from_fn(op.k, op.crs, |i, j| weights[i * op.crs + j]);
        let mut rng = tern_core::Rng::new(seed ^ 0x5EED);
        let z = op.col_zero.clamp(0.0, 1.0);
        let dead = dead.clamp(0.0, 1.0);
        let (p_dead, p_elem) =
            if dead > 0.0 && z < 1.0 { (dead * z, z * (1.0 - dead) / (1.0 - dead * z)) } else { (0.0, z) };
        let live: Vec<bool> = (0..c).map(|_| p_dead == 0.0 || rng.uniform() as f64 >= p_dead).collect();
        let fmap: Vec<bool> = (0..c * h * h).map(|i| rng.uniform() >= p_elem as f32 && live[i / (h * h)]).collect();
        let bt = BitMatrix::from_fn(op.pq, op.crs, |l, j| {
            let (p, q) = (l / side, l % side);
            let (ch, rr, ss) = (j / (r * r), (j / r) % r, j % r);
            let (ih, iw) = ((p * stride + rr).checked_sub(pad), (q * stride + ss).checked_sub(pad));
            match (ih, iw) {
                (Some(ih), Some(iw)) if ih < h && iw < h => fmap[(ch * h + ih) * h + iw],
                _ => false,
            }
        });
        Some(OpMasks { a, bt })
    }

    /// Lowers the records of `op.name` to the operands of `op.pass`.
    pub fn from_records(op: &MmOp, records: &[MaskRecord], source: &str) -> Result<OpMasks> {
        let find = |operand: Operand| {
            records.iter().find(|r| r.name == op.name && r.operand == operand).ok_or_else(|| {
                Error::format(
                    source,
                    format!("no {operand:?} mask for layer `{}` (needed by its {} pass)", op.name, op.pass),
                )
            })
        };
        let (w, x) = (find(Operand::Weight)?, find(Operand::Input)?);
        let dims4 = |r: &MaskRecord| -> Result<[usize; 4]> {
            r.dims.clone().try_into().map_err(|_| {
                Error::format(source, format!("{:?} mask of `{}` has dims {:?}, expected 4", r.operand, r.name, r.dims))
            })
        };
        let [k, c, kr, ks] = dims4(w)?;
        let [_, xc, h, wd] = dims4(x)?;
        let crs = c * kr * ks;
        if k != op.k || crs != op.crs || xc != c {
            return Err(Error::format(
                source,
                format!(
                    "masks of `{}` (K {k}, CRS {crs}) do not match the workload (K {}, CRS {})",
                    op.name, op.k, op.crs
                ),
            ));
        }
        let dy = find(Operand::OutputGrad).ok();
        let (p, q) = match dy {
            Some(d) => {
                let [_, _, p, q] = dims4(d)?;
                (p, q)
            }
            None => {
                // no gradient recorded: take the output size from the workload's PQ
                let side = (op.pq as f64).sqrt().round() as usize;
                (side, op.pq / side.max(1))
            }
        };
        if p * q != op.pq {
            return Err(Error::format(
                source,
                format!("`{}`: output {p}x{q} does not match the workload's PQ {}", op.name, op.pq),
            ));
        }
        let (stride, pad) = match w.stride_pad {
            Some(sp) => sp,
            None => infer_stride_pad(h, kr, p, wd, ks, q).ok_or_else(|| {
                Error::format(
                    source,
                    format!(
                        "`{}`: the file does not say its stride and padding, and no single choice maps {h}x{wd} to {p}x{q} with a {kr}x{ks} kernel (profile again to write version-2 masks)",
                        op.name
                    ),
                )
            })?,
        };
        let fits = |n: usize, k: usize, o: usize| n + 2 * pad >= k && (n + 2 * pad - k) / stride + 1 == o;
        if !(fits(h, kr, p) && fits(wd, ks, q)) {
            return Err(Error::format(
                source,
                format!("`{}`: stride {stride}, padding {pad} do not map {h}x{wd} to {p}x{q}", op.name),
            ));
        }
        let ((sh, ph), (sw, pw)) = ((stride, pad), (stride, pad));
        // image 0's im2col entry (crs, pq)
        let xcol = |ci: usize, pi: usize| -> bool {
            let (cc, rr, ss) = (ci / (kr * ks), ci / ks % kr, ci % ks);
            let (pp, qq) = (pi / q, pi % q);
            let (hh, ww) = ((pp * sh + rr) as isize - ph as isize, (qq * sw + ss) as isize - pw as isize);
            hh >= 0
                && ww >= 0
                && (hh as usize) < h
                && (ww as usize) < wd
                && x.nonzero((cc * h + hh as usize) * wd + ww as usize)
        };
        let weight = |kk: usize, ci: usize| w.nonzero(kk * crs + ci);
        let need_dy = || {
            dy.ok_or_else(|| {
                Error::format(
                    source,
                    format!("no OutputGrad mask for layer `{}` (needed by its {} pass)", op.name, op.pass),
                )
            })
        };
        Ok(match op.pass.as_str() {
            "backward" => {
                let d = need_dy()?;
                OpMasks {
                    a: BitMatrix::from_fn(crs, k, |ci, kk| weight(kk, ci)),
                    bt: BitMatrix::from_fn(op.pq, k, |pi, kk| d.nonzero(kk * op.pq + pi)),
                }
            }
            "weight_grad" => {
                let d = need_dy()?;
                OpMasks {
                    a: BitMatrix::from_fn(k, op.pq, |kk, pi| d.nonzero(kk * op.pq + pi)),
                    bt: BitMatrix::from_fn(crs, op.pq, xcol),
                }
            }
            _ => OpMasks {
                a: BitMatrix::from_fn(k, crs, weight),
                bt: BitMatrix::from_fn(op.pq, crs, |pi, ci| xcol(ci, pi)),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fwd(k: usize, crs: usize, pq: usize, wz: f64, iz: f64) -> MmOp {
        MmOp::new("l", "forward", k, crs, pq, wz, iz)
    }

    #[test]
    fn resnet_convolutions_are_inferred_from_k_crs_pq() {
        let conv = |c, kernel, stride, pad, h_in, side| Some(LoweredConv { c, kernel, stride, pad, h_in, side });
        assert_eq!(infer_conv(&fwd(64, 147, 12544, 0.0, 0.0)), conv(3, 7, 2, 3, 224, 112), "stem");
        assert_eq!(infer_conv(&fwd(64, 576, 3136, 0.0, 0.0)), conv(64, 3, 1, 1, 56, 56), "3x3");
        assert_eq!(infer_conv(&fwd(256, 1152, 196, 0.0, 0.0)), conv(128, 3, 2, 1, 28, 14), "3x3 stride 2");
        assert_eq!(infer_conv(&fwd(256, 128, 196, 0.0, 0.0)), conv(128, 1, 2, 0, 28, 14), "shortcut");
        assert_eq!(infer_conv(&fwd(64, 576, 3000, 0.0, 0.0)), None, "PQ not a square");
        assert_eq!(infer_conv(&MmOp::new("l", "backward", 64, 576, 3136, 0.0, 0.0)), None, "not forward");
        let known = MmOp { ifm_words: Some(64 * 56 * 56), ..fwd(64, 576, 3136, 0.0, 0.0) };
        assert!(infer_conv(&known).is_some(), "agrees with the workload's input size");
        let other = MmOp { ifm_words: Some(64 * 58 * 58), ..fwd(64, 576, 3136, 0.0, 0.0) };
        assert_eq!(infer_conv(&other), None, "contradicts the workload's input size");
    }

    #[test]
    fn feature_map_zeros_are_lowered_as_the_convolution_reads_them() {
        // 3x3, stride 1, padding 1 on 8 channels of 10x10 (K = 12: not a stage's first layer)
        let op = fwd(12, 72, 100, 0.4, 0.6);
        let m = OpMasks::bernoulli_feature_map(&op, 3, 0.0).expect("a 3x3 convolution");
        assert_eq!((m.a.rows, m.a.cols, m.bt.rows, m.bt.cols), (12, 72, 100, 72));
        let bit = |l: usize, j: usize| m.bt.bits(l, j, 1) == 1;
        let at = |p: usize, q: usize, c: usize, r: usize, s: usize| bit(p * 10 + q, (c * 3 + r) * 3 + s);
        let (mut nonzero, mut inside) = (0, 0);
        for c in 0..8 {
            for p in 0..10 {
                for q in 0..10 {
                    // the window centre reads input (p, q): so do the neighbours' other taps
                    let v = at(p, q, c, 1, 1);
                    if q + 1 < 10 {
                        assert_eq!(at(p, q + 1, c, 1, 0), v, "one input, two window positions");
                    }
                    if p + 1 < 10 {
                        assert_eq!(at(p + 1, q, c, 0, 1), v, "one input, two window positions");
                    }
                    nonzero += v as usize;
                    inside += 1;
                }
                // the padding column is zero
                assert!(!at(p, 0, c, 1, 0) && !at(p, 9, c, 1, 2), "padding reads zero");
            }
        }
        let frac = 1.0 - nonzero as f64 / inside as f64;
        assert!((frac - 0.6).abs() < 0.06, "feature-map zero fraction {frac}, asked 0.6");
        assert!((m.a.zero_fraction() - 0.4).abs() < 0.06, "weight zero fraction {}", m.a.zero_fraction());
        // the same seed draws the same masks
        let again = OpMasks::bernoulli_feature_map(&op, 3, 0.0).unwrap();
        assert!((0..100).all(|l| m.bt.bits(l, 0, 64) == again.bt.bits(l, 0, 64)));
    }

    #[test]
    fn dead_channels_keep_the_zero_fraction_and_zero_whole_channels() {
        // 3x3 on 64 channels of 14x14, 60 % zero inputs, half of them as dead channels
        let op = fwd(64, 576, 196, 0.4, 0.6);
        let m = OpMasks::bernoulli_feature_map(&op, 5, 0.5).expect("a 3x3 convolution");
        let centre = |l: usize, c: usize| m.bt.bits(l, (c * 3 + 1) * 3 + 1, 1) == 1;
        let nonzero: usize = (0..64).map(|c| (0..196).filter(|&l| centre(l, c)).count()).sum();
        let frac = 1.0 - nonzero as f64 / (64.0 * 196.0);
        assert!((frac - 0.6).abs() < 0.08, "zero fraction {frac}, asked 0.6");
        let dead = (0..64).filter(|&c| (0..196).all(|l| !centre(l, c))).count();
        // expected 0.3 · 64 ≈ 19 dead channels; without the share, none
        assert!((10..=30).contains(&dead), "{dead} dead channels");
        let plain = OpMasks::bernoulli_feature_map(&op, 5, 0.0).unwrap();
        let dead0 = (0..64).filter(|&c| (0..196).all(|l| plain.bt.bits(l, (c * 3 + 1) * 3 + 1, 1) == 0)).count();
        assert_eq!(dead0, 0);
    }

    #[test]
    fn the_engine_draws_on_the_feature_map_only_where_asked_and_known() {
        use crate::{DlacConfig, Engine};
        let op = fwd(64, 576, 196, 0.5, 0.7);
        let flat = DlacConfig { feature_map_zeros: false, ..DlacConfig::fp32_fmap() };
        let fmap = DlacConfig::fp32_fmap();
        for engine in [Engine::Fast, Engine::Event] {
            let a = engine.simulate_op(&op, &flat, 1, None);
            let b = engine.simulate_op(&op, &fmap, 1, None);
            let masks = OpMasks::bernoulli_feature_map(&op, 1, 0.0).unwrap();
            let c = engine.simulate_op_masked(&op, &flat, &masks, None);
            assert_eq!(b.cycles, c.cycles, "{engine:?}: the option is the feature-map masks");
            assert_ne!(a.cycles, b.cycles, "{engine:?}: and differs from the lowered draw");
            // a backward op has no inferable convolution: the lowered draw, unchanged
            let back = MmOp::new("l", "backward", 64, 576, 196, 0.5, 0.7);
            assert_eq!(engine.simulate_op(&back, &fmap, 1, None).cycles, {
                let plain = DlacConfig { feature_map_zeros: false, ..fmap.clone() };
                engine.simulate_op(&back, &plain, 1, None).cycles
            });
        }
    }

    #[test]
    fn bit_extraction_crosses_word_boundaries() {
        let m = BitMatrix::from_fn(2, 150, |r, c| (c * 7 + r) % 3 == 0);
        for r in 0..2 {
            for c0 in [0, 1, 63, 64, 100, 140] {
                for len in [1, 10, 64] {
                    let got = m.bits(r, c0, len);
                    for i in 0..len {
                        let want = c0 + i < 150 && ((c0 + i) * 7 + r) % 3 == 0;
                        assert_eq!(got >> i & 1 == 1, want, "r {r} c0 {c0} len {len} bit {i}");
                    }
                }
            }
        }
    }

    #[test]
    fn stride_and_padding_are_inferred_only_when_unambiguous() {
        assert_eq!(infer_stride_pad(56, 3, 56, 56, 3, 56), Some((1, 1)));
        assert_eq!(infer_stride_pad(56, 3, 28, 56, 3, 28), Some((2, 1)));
        assert_eq!(infer_stride_pad(224, 7, 112, 224, 7, 112), Some((2, 3)));
        // 5 -> 3 with a 3x3 kernel: stride 1 pad 0, or stride 2 pad 1
        assert_eq!(infer_stride_pad(5, 3, 3, 5, 3, 3), None);
        assert_eq!(infer_stride_pad(4, 3, 2, 4, 3, 2), None);
    }

    #[test]
    fn the_recorded_stride_decides_where_shapes_are_ambiguous() {
        // 3x3 on 5x5 -> 3x3: stride 2 pad 1 reads the padding at output (0,0), tap (0,0);
        // stride 1 pad 0 reads x[0][0]
        let xv = vec![1.0; 25];
        let wv = vec![1.0; 9];
        let op = MmOp::new("l", "forward", 1, 9, 9, 0.0, 0.0);
        let with = |sp: Option<(usize, usize)>| {
            let mut w = MaskRecord::from_values("l", Operand::Weight, &[1, 1, 3, 3], &wv);
            w.stride_pad = sp;
            vec![w, MaskRecord::from_values("l", Operand::Input, &[1, 1, 5, 5], &xv)]
        };
        let s2 = OpMasks::from_records(&op, &with(Some((2, 1))), "t").unwrap();
        assert_eq!(s2.bt.bits(0, 0, 1), 0);
        let s1 = OpMasks::from_records(&op, &with(Some((1, 0))), "t").unwrap();
        assert_eq!(s1.bt.bits(0, 0, 1), 1);
        let e = OpMasks::from_records(&op, &with(None), "old.bin").unwrap_err().to_string();
        assert!(e.contains("no single choice"), "{e}");
        let e = OpMasks::from_records(&op, &with(Some((3, 0))), "t").unwrap_err().to_string();
        assert!(e.contains("do not map"), "{e}");
    }

    #[test]
    fn lowered_operands_have_the_tensors_zeros() {
        // conv 2 -> 3 channels, 3x3, stride 1, pad 1, on 4x4; every value non-zero except a few
        let (k, c, h) = (3, 2, 4);
        let wv: Vec<f32> = (0..k * c * 9).map(|i| if i % 3 == 0 { 0.0 } else { 1.0 }).collect();
        let xv: Vec<f32> = (0..c * h * h).map(|i| if i % 5 == 0 { 0.0 } else { 1.0 }).collect();
        let dv: Vec<f32> = (0..k * h * h).map(|i| if i % 2 == 0 { 0.0 } else { 1.0 }).collect();
        let recs = vec![
            MaskRecord::from_values("l", Operand::Weight, &[k, c, 3, 3], &wv),
            MaskRecord::from_values("l", Operand::Input, &[1, c, h, h], &xv),
            MaskRecord::from_values("l", Operand::OutputGrad, &[1, k, h, h], &dv),
        ];
        let op = |pass: &str| MmOp::new("l", pass, k, c * 9, h * h, 0.0, 0.0);
        let f = OpMasks::from_records(&op("forward"), &recs, "t").unwrap();
        assert_eq!((f.a.rows, f.a.cols, f.bt.rows, f.bt.cols), (3, 18, 16, 18));
        assert!((f.a.zero_fraction() - 1.0 / 3.0).abs() < 1e-12);
        // output (0,0), kernel tap (c 0, r 0, s 0) reads the padding: zero
        assert_eq!(f.bt.bits(0, 0, 1), 0);
        // output (1,1), tap (c 0, r 1, s 1) reads x[0][1][1] = index 5: zero; tap s 2 reads index 6: non-zero
        assert_eq!(f.bt.bits(5, 4, 1), 0);
        assert_eq!(f.bt.bits(5, 5, 1), 1);
        let b = OpMasks::from_records(&op("backward"), &recs, "t").unwrap();
        assert_eq!((b.a.rows, b.a.cols, b.bt.rows, b.bt.cols), (18, 3, 16, 3));
        assert!((b.bt.zero_fraction() - 0.5).abs() < 1e-12);
        let g = OpMasks::from_records(&op("weight_grad"), &recs, "t").unwrap();
        assert_eq!((g.a.rows, g.a.cols, g.bt.rows, g.bt.cols), (3, 16, 18, 16));
        let missing = OpMasks::from_records(&MmOp::new("other", "forward", k, 18, 16, 0.0, 0.0), &recs, "m.bin");
        assert!(missing.unwrap_err().to_string().contains("`other`"));
    }
}
