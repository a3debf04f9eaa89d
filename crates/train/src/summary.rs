//! Model summary totals: parameters, multiply-adds, sizes.

use crate::layer::SummaryRow;

#[derive(Clone, Debug, serde::Serialize)]
pub struct Totals {
    pub params: usize,
    /// Forward multiply-adds per image.
    pub macs: u64,
    pub bytes_fp32: usize,
}

pub fn totals(rows: &[SummaryRow]) -> Totals {
    let params = rows.iter().map(|r| r.params).sum();
    Totals { params, macs: rows.iter().map(|r| r.macs).sum(), bytes_fp32: params * 4 }
}
