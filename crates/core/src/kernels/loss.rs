//! Softmax cross-entropy over logits `[n, classes]`, and top-k correctness.

/// Returns the mean loss and writes dlogits = (softmax − onehot) / n.
/// `weights` (optional, [n]) scales each sample's loss and gradient: 0 drops a sample.
pub fn softmax_cross_entropy(
    logits: &[f32],
    labels: &[u32],
    classes: usize,
    weights: Option<&[f32]>,
    dlogits: &mut [f32],
) -> f32 {
    let n = labels.len();
    let mut total = 0.0f64;
    for (i, (row, drow)) in logits.chunks(classes).zip(dlogits.chunks_mut(classes)).enumerate() {
        let wgt = weights.map_or(1.0, |w| w[i]);
        let max = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let sum: f32 = row.iter().map(|v| (v - max).exp()).sum();
        let log_sum = sum.ln() + max;
        let y = labels[i] as usize;
        total += (wgt * (log_sum - row[y])) as f64;
        for (j, (d, &v)) in drow.iter_mut().zip(row).enumerate() {
            let p = (v - log_sum).exp();
            *d = wgt * (p - if j == y { 1.0 } else { 0.0 }) / n as f32;
        }
    }
    (total / n as f64) as f32
}

/// Whether each sample's label is among its `k` largest logits (ties broken towards the label
/// being outranked, so a constant output is never "correct"). A row with a NaN or an
/// infinity is wrong: every comparison with NaN is false, so a diverged model would
/// otherwise score 100 %.
pub fn top_k_correct(logits: &[f32], labels: &[u32], classes: usize, k: usize) -> Vec<bool> {
    logits
        .chunks(classes)
        .zip(labels)
        .map(|(row, &y)| {
            if !row.iter().all(|v| v.is_finite()) {
                return false;
            }
            let v = row[y as usize];
            let better = row.iter().enumerate().filter(|&(j, &o)| o > v || (o == v && j < y as usize)).count();
            better < k
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::kernels::testutil::*;
    use crate::rng::Rng;

    #[test]
    fn cross_entropy_agrees_with_reference() {
        let mut rng = Rng::new(8);
        for &(n, c) in &[(1, 2), (5, 10), (3, 1000)] {
            let logits: Vec<f32> = rand_vec(n * c, &mut rng).iter().map(|v| v * 5.0).collect();
            let labels: Vec<u32> = (0..n).map(|_| rng.below(c) as u32).collect();
            let (mut d, mut dr) = (vec![0.0; n * c], vec![0.0; n * c]);
            let l = softmax_cross_entropy(&logits, &labels, c, None, &mut d);
            let lr = reference::softmax_cross_entropy(&logits, &labels, c, &mut dr);
            assert!((l - lr).abs() < 1e-4 * (1.0 + lr.abs()), "{l} vs {lr}");
            assert_close(&d, &dr, 1e-5, "dlogits");
        }
    }

    #[test]
    fn top_k() {
        let logits = [0.1, 0.9, 0.0, 0.5, 0.5, 0.5];
        assert_eq!(top_k_correct(&logits, &[1, 0], 3, 1), vec![true, true]);
        assert_eq!(top_k_correct(&logits, &[0, 2], 3, 1), vec![false, false]);
        assert_eq!(top_k_correct(&logits, &[0, 2], 3, 2), vec![true, false]);
        // non-finite logits are wrong answers, whatever k
        let bad = [f32::NAN, f32::NAN, f32::NAN, 1.0, f32::INFINITY, 0.0, 0.3, f32::NAN, 0.9];
        assert_eq!(top_k_correct(&bad, &[0, 1, 2], 3, 1), vec![false; 3]);
        assert_eq!(top_k_correct(&bad, &[0, 1, 2], 3, 3), vec![false; 3]);
    }
}
