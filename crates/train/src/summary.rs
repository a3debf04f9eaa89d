//! Model cost accounting: parameters, multiply-adds (and how many have a ternary weight, so
//! need no multiplier), model size at FP32 and with ternary layers packed at 2 bits.

use crate::layer::SummaryRow;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Totals {
    pub params: usize,
    /// Forward multiply-adds per image.
    pub macs: u64,
    /// Of those, the ones whose weight is ternary.
    pub ternary_macs: u64,
    /// Size with every parameter at 32 bits.
    pub bytes_fp32: usize,
    /// Size with ternary weights packed at 2 bits (one FP32 scale per output channel at most)
    /// and everything else at 32 bits.
    pub bytes_packed: usize,
}

pub fn totals(rows: &[SummaryRow]) -> Totals {
    let params = rows.iter().map(|r| r.params).sum();
    let mut packed_bits = 0usize;
    for r in rows {
        if r.ternary {
            // weights at 2 bits; the scale(s) and bias at 32 bits (out channels bound both)
            let out_channels = r.out_shape.first().copied().unwrap_or(1);
            let weights = r.params.saturating_sub(out_channels);
            packed_bits += 2 * weights + 32 * 2 * out_channels;
        } else {
            packed_bits += 32 * r.params;
        }
    }
    Totals {
        params,
        macs: rows.iter().map(|r| r.macs).sum(),
        ternary_macs: rows.iter().filter(|r| r.ternary).map(|r| r.macs).sum(),
        bytes_fp32: params * 4,
        bytes_packed: packed_bits.div_ceil(8),
    }
}
