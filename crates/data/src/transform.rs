//! Per-sample transforms: normalisation, fitting to the model's input size (centred zero
//! padding or centre crop), and augmentation (random crop with padding, horizontal flip).

use tern_core::Rng;

/// Per-channel (x/255 − mean) / std.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Normalize {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Training-time augmentation; `Augment::default()` does nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Augment {
    /// Pad by this many pixels on every side, then crop back at a random offset (0: off).
    pub crop_pad: usize,
    pub hflip: bool,
}

/// Where a sample lands in the model's input: the offsets of the source inside the
/// destination (negative: cropped) and whether it is mirrored. Drawn on the host in any case,
/// so that a device that renders the batch itself sees exactly the CPU's draws.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub oy: i32,
    pub ox: i32,
    pub flip: bool,
}

/// The placement of one sample: centred, then shifted and flipped by `rng`'s draws.
pub fn placement(src_shape: [usize; 3], dst_shape: [usize; 3], aug: &Augment, rng: Option<&mut Rng>) -> Placement {
    let ([_, sh, sw], [_, dh, dw]) = (src_shape, dst_shape);
    let mut oy = (dh as isize - sh as isize) / 2;
    let mut ox = (dw as isize - sw as isize) / 2;
    let mut flip = false;
    if let Some(rng) = rng {
        if aug.crop_pad > 0 {
            let p = aug.crop_pad as isize;
            oy += rng.below(2 * aug.crop_pad + 1) as isize - p;
            ox += rng.below(2 * aug.crop_pad + 1) as isize - p;
        }
        flip = aug.hflip && rng.below(2) == 1;
    }
    Placement { oy: oy as i32, ox: ox as i32, flip }
}

/// Writes one normalised sample of shape `src_shape` into `dst: [c, h, w]` of `dst_shape`,
/// centred (padding with 0, the mean after normalisation, or cropping), then augments it.
pub fn render_sample(
    src: &[u8],
    src_shape: [usize; 3],
    dst_shape: [usize; 3],
    norm: &Normalize,
    aug: &Augment,
    rng: Option<&mut Rng>,
    dst: &mut [f32],
) {
    let p = placement(src_shape, dst_shape, aug, rng);
    render_placed(src, src_shape, dst_shape, norm, p, dst)
}

/// Writes one normalised sample at placement `p`: v ↦ (v / 255 − mean) · (1 / std), zero
/// outside the source (tern-cuda's `render_batch` kernel does the same arithmetic).
pub fn render_placed(
    src: &[u8],
    src_shape: [usize; 3],
    dst_shape: [usize; 3],
    norm: &Normalize,
    p: Placement,
    dst: &mut [f32],
) {
    let [c, sh, sw] = src_shape;
    let [_, dh, dw] = dst_shape;
    let (oy, ox, flip) = (p.oy as isize, p.ox as isize, p.flip);
    dst.fill(0.0);
    for ch in 0..c {
        let (m, inv) = (norm.mean[ch], 1.0 / norm.std[ch]);
        for y in 0..dh {
            let sy = y as isize - oy;
            if sy < 0 || sy >= sh as isize {
                continue;
            }
            let row = &src[(ch * sh + sy as usize) * sw..(ch * sh + sy as usize + 1) * sw];
            let out = &mut dst[(ch * dh + y) * dw..(ch * dh + y + 1) * dw];
            for (x, o) in out.iter_mut().enumerate() {
                let xx = if flip { dw - 1 - x } else { x };
                let sx = xx as isize - ox;
                if sx >= 0 && sx < sw as isize {
                    *o = (row[sx as usize] as f32 / 255.0 - m) * inv;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_norm(c: usize) -> Normalize {
        Normalize { mean: vec![0.0; c], std: vec![1.0; c] }
    }

    /// Back to pixel values, so tests can compare exactly.
    fn px(v: &[f32]) -> Vec<f32> {
        v.iter().map(|x| (x * 255.0).round()).collect()
    }

    #[test]
    fn pads_centred_and_crops_centred() {
        let src: Vec<u8> = (1..=4).collect(); // 1x2x2
        let mut dst = vec![0.0; 16];
        render_sample(&src, [1, 2, 2], [1, 4, 4], &id_norm(1), &Augment::default(), None, &mut dst);
        let dst = px(&dst);
        assert_eq!(&dst[4..8], &[0.0, 1.0, 2.0, 0.0]);
        assert_eq!(&dst[8..12], &[0.0, 3.0, 4.0, 0.0]);
        let src: Vec<u8> = (0..16).collect();
        let mut small = vec![0.0; 4];
        render_sample(&src, [1, 4, 4], [1, 2, 2], &id_norm(1), &Augment::default(), None, &mut small);
        assert_eq!(px(&small), vec![5.0, 6.0, 9.0, 10.0]);
    }

    #[test]
    fn flip_mirrors_and_crop_shifts_are_bounded() {
        let src: Vec<u8> = (1..=9).collect();
        let aug = Augment { crop_pad: 0, hflip: true };
        let mut seen_flip = false;
        let mut rng = Rng::new(1);
        for _ in 0..20 {
            let mut d = vec![0.0; 9];
            render_sample(&src, [1, 3, 3], [1, 3, 3], &id_norm(1), &aug, Some(&mut rng), &mut d);
            let d = px(&d);
            if d[0] == 3.0 {
                seen_flip = true;
                assert_eq!(&d[..3], &[3.0, 2.0, 1.0]);
            } else {
                assert_eq!(&d[..3], &[1.0, 2.0, 3.0]);
            }
        }
        assert!(seen_flip);
        let aug = Augment { crop_pad: 1, hflip: false };
        for _ in 0..20 {
            let mut d = vec![0.0; 9];
            render_sample(&src, [1, 3, 3], [1, 3, 3], &id_norm(1), &aug, Some(&mut rng), &mut d);
            assert!(d.iter().filter(|&&v| v != 0.0).count() >= 4, "a 1-pixel shift keeps at least 4 of 9 pixels");
        }
    }
}
