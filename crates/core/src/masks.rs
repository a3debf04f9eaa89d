//! Zero masks of mmOp operands in a compact binary file, so the simulator can run on real
//! zeros. Format (little-endian):
//!
//! ```text
//! magic   8 bytes  "TERNMASK"
//! version u32      1
//! count   u32      number of records
//! record: name_len u16, name (UTF-8), operand u8 (0 weight, 1 input, 2 output_grad),
//!         ndim u8, dims u32 × ndim, bits: ceil(Π dims / 8) bytes, bit i = element i != 0
//!         (least significant bit first)
//! ```
//! Weights are `[k, c, r, s]` (as the forward used them), inputs `[n, c, h, w]`, output
//! gradients `[n, k, p, q]`.

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
        MaskRecord { name: name.into(), operand, dims: dims.to_vec(), bits }
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

pub fn write(path: &Path, records: &[MaskRecord]) -> Result<()> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&1u32.to_le_bytes());
    out.extend_from_slice(&(records.len() as u32).to_le_bytes());
    for r in records {
        out.extend_from_slice(&(r.name.len() as u16).to_le_bytes());
        out.extend_from_slice(r.name.as_bytes());
        out.push(r.operand as u8);
        out.push(r.dims.len() as u8);
        for &d in &r.dims {
            out.extend_from_slice(&(d as u32).to_le_bytes());
        }
        out.extend_from_slice(&r.bits);
    }
    crate::checkpoint::write_atomic(path, &out)
}

pub fn read(path: &Path) -> Result<Vec<MaskRecord>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
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
    if version != 1 {
        return Err(bad(format!("version {version}: expected 1")));
    }
    let count = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
    let mut out = Vec::with_capacity(count);
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
        let len: usize = dims.iter().product();
        let bits = take(len.div_ceil(8))?.to_vec();
        out.push(MaskRecord { name, operand, dims, bits });
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
}
