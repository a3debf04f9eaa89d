//! Zero masks of mmOp operands in a compact binary file, so the simulator can run on real
//! zeros. Format (little-endian):
//!
//! ```text
//! magic   8 bytes  "TERNMASK"
//! version u32      2 (1 is still read: it lacks stride and padding)
//! count   u32      number of records
//! record: name_len u16, name (UTF-8), operand u8 (0 weight, 1 input, 2 output_grad),
//!         ndim u8, dims u32 × ndim, [v2: stride u16, pad u16 of the layer, 0 0 if unknown],
//!         bits: ceil(Π dims / 8) bytes, bit i = element i != 0 (least significant bit first)
//! ```
//! Weights are `[k, c, r, s]` (as the forward used them), inputs `[n, c, h, w]`, output
//! gradients `[n, k, p, q]`. The layer's stride and padding travel with the records, since
//! shapes alone are ambiguous (a 3x3 kernel maps 5 to 3 with stride 1, pad 0 and with
//! stride 2, pad 1). Every size is checked against the bytes left before anything is
//! allocated, so a corrupt header cannot ask for more memory than the file holds.

use crate::error::{Error, Result};
use std::path::Path;

pub const MAGIC: &[u8; 8] = b"TERNMASK";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operand {
    Weight = 0,
    Input = 1,
    OutputGrad = 2,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MaskRecord {
    pub name: String,
    pub operand: Operand,
    pub dims: Vec<usize>,
    /// One bit per element, 1 = non-zero.
    pub bits: Vec<u8>,
    /// The layer's (stride, padding), where the writer knew them (version 2).
    pub stride_pad: Option<(usize, usize)>,
}

impl MaskRecord {
    pub fn from_values(name: &str, operand: Operand, dims: &[usize], values: &[f32]) -> Self {
        assert_eq!(dims.iter().product::<usize>(), values.len());
        let mut bits = vec![0u8; values.len().div_ceil(8)];
        for (i, &v) in values.iter().enumerate() {
            if v != 0.0 {
                bits[i / 8] |= 1 << (i % 8);
            }
        }
        MaskRecord { name: name.into(), operand, dims: dims.to_vec(), bits, stride_pad: None }
    }

    /// The same record, tagged with its layer's stride and padding.
    pub fn with_stride_pad(mut self, stride: usize, pad: usize) -> Self {
        self.stride_pad = Some((stride, pad));
        self
    }
    pub fn len(&self) -> usize {
        self.dims.iter().product()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn nonzero(&self, i: usize) -> bool {
        self.bits[i / 8] >> (i % 8) & 1 == 1
    }
    pub fn zero_fraction(&self) -> f64 {
        let ones: u64 = self.bits.iter().map(|b| b.count_ones() as u64).sum();
        1.0 - ones as f64 / self.len().max(1) as f64
    }
}

pub const VERSION: u32 = 2;

/// Panics on records the format cannot hold (names over 65535 bytes, dims or strides past
/// their field width): the profiler never makes such layers.
pub fn write(path: &Path, records: &[MaskRecord]) -> Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        let narrow = |v: usize| u16::try_from(v).expect("field fits 16 bits");
        out.extend_from_slice(&narrow(r.name.len()).to_le_bytes());
        out.extend_from_slice(r.name.as_bytes());
        out.push(r.operand as u8);
        out.push(u8::try_from(r.dims.len()).expect("at most 255 dims"));
        for &d in &r.dims {
            out.extend_from_slice(&u32::try_from(d).expect("dim fits 32 bits").to_le_bytes());
        }
        let (stride, pad) = r.stride_pad.unwrap_or((0, 0));
        out.extend_from_slice(&narrow(stride).to_le_bytes());
        out.extend_from_slice(&narrow(pad).to_le_bytes());
        out.extend_from_slice(&r.bits);
    }
    crate::checkpoint::write_atomic(path, &out)
}

pub fn read(path: &Path) -> Result<Vec<MaskRecord>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, path)
}

/// Parses the bytes of a masks.bin file (named `path` in errors).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Vec<MaskRecord>> {
    let bad = |what: String| Error::format(path, what);
    let mut at = 0usize;
    let mut take = |n: usize| -> Result<&[u8]> {
        let s = bytes.get(at..at + n).ok_or_else(|| bad(format!("file ends at byte {} (truncated?)", bytes.len())))?;
        at += n;
        Ok(s)
    };
    if take(8)? != MAGIC {
        return Err(bad("wrong magic: expected TERNMASK".into()));
    }
    let version = u32::from_le_bytes(take(4)?.try_into().unwrap());
    if version != 1 && version != 2 {
        return Err(bad(format!("version {version}: expected 1 or 2")));
    }
    let count = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
    // a record takes at least 4 bytes, so the file bounds how many it can hold
    let mut out = Vec::with_capacity(count.min(bytes.len() / 4));
    for _ in 0..count {
        let n = u16::from_le_bytes(take(2)?.try_into().unwrap()) as usize;
        let name = String::from_utf8(take(n)?.to_vec()).map_err(|_| bad("record name is not UTF-8".into()))?;
        let operand = match take(1)?[0] {
            0 => Operand::Weight,
            1 => Operand::Input,
            2 => Operand::OutputGrad,
            o => return Err(bad(format!("record {name}: operand {o}, expected 0, 1 or 2"))),
        };
        let ndim = take(1)?[0] as usize;
        let mut dims = Vec::with_capacity(ndim);
        for _ in 0..ndim {
            dims.push(u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize);
        }
        let stride_pad = if version >= 2 {
            let stride = u16::from_le_bytes(take(2)?.try_into().unwrap()) as usize;
            let pad = u16::from_le_bytes(take(2)?.try_into().unwrap()) as usize;
            (stride > 0).then_some((stride, pad))
        } else {
            None
        };
        let len = dims
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| bad(format!("record {name}: dims {dims:?} overflow")))?;
        let bits = take(len.div_ceil(8))?.to_vec();
        out.push(MaskRecord { name, operand, dims, bits, stride_pad });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("masks.bin");
        let vals = [0.0, 1.0, 0.0, -2.0, 3.0, 0.0, 0.0, 0.0, 5.0, 0.0, 1.0];
        let recs = vec![
            MaskRecord::from_values("conv1", Operand::Input, &[1, 1, 1, 11], &vals),
            MaskRecord::from_values("fc", Operand::Weight, &[2, 2], &[1.0, 0.0, 0.0, 1.0]),
        ];
        write(&p, &recs).unwrap();
        let back = read(&p).unwrap();
        assert_eq!(back, recs);
        assert!(back[0].nonzero(3) && !back[0].nonzero(2) && back[0].nonzero(10));
        assert!((back[0].zero_fraction() - 6.0 / 11.0).abs() < 1e-12);
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("truncated"));
    }

    #[test]
    fn stride_and_padding_roundtrip_and_huge_headers_are_refused_cheaply() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("masks.bin");
        let rec = MaskRecord::from_values("c", Operand::Weight, &[1, 1, 3, 3], &[1.0; 9]).with_stride_pad(2, 1);
        write(&p, std::slice::from_ref(&rec)).unwrap();
        assert_eq!(read(&p).unwrap(), vec![rec]);
        // a 16-byte file that claims 4 billion records, then one whose dims overflow
        let mut b = MAGIC.to_vec();
        b.extend_from_slice(&2u32.to_le_bytes());
        b.extend_from_slice(&u32::MAX.to_le_bytes());
        std::fs::write(&p, &b).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("truncated"));
        b.truncate(12);
        b.extend_from_slice(&1u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.push(b'x');
        b.push(0);
        b.push(4);
        for _ in 0..4 {
            b.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        b.extend_from_slice(&[0; 4]);
        std::fs::write(&p, &b).unwrap();
        assert!(read(&p).unwrap_err().to_string().contains("overflow"));
    }
}
