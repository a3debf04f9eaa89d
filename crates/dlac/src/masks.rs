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

impl OpMasks {
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
