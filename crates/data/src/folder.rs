//! Image folders (ImageNet style): one sub-folder per class holding JPEG/PNG files. Images are
//! resized so the shorter side is `size`, then centre-cropped to `size x size`, RGB.

use crate::{Dataset, ImageFiles, Images};
use fast_image_resize as fir;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tern_core::{Error, Result};

const EXTENSIONS: [&str; 4] = ["jpg", "jpeg", "png", "JPEG"];

/// Class sub-folders of `root`, sorted by name.
pub fn class_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    let rd = std::fs::read_dir(root).map_err(|e| Error::io(root, e))?;
    let mut dirs: Vec<(String, PathBuf)> = rd
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .collect();
    dirs.sort();
    if dirs.is_empty() {
        return Err(Error::format(root, "no class sub-folders: expected ROOT/<class>/<image>.{jpg,png}"));
    }
    Ok(dirs)
}

/// Images larger than this on a side are refused (a corrupt header must not allocate gigabytes).
pub const MAX_SIDE: u32 = 16384;
/// The most a decoder may allocate for one image.
pub const MAX_DECODE_BYTES: u64 = 256 << 20;

/// Reads an image file's header only: a readable JPEG/PNG within [`MAX_SIDE`].
fn check_header(path: &Path) -> Result<()> {
    let reader = image::ImageReader::open(path)
        .map_err(|e| Error::io(path, e))?
        .with_guessed_format()
        .map_err(|e| Error::format(path, format!("unreadable image: {e}")))?;
    let (w, h) = reader.into_dimensions().map_err(|e| Error::format(path, format!("unreadable image: {e}")))?;
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        return Err(Error::format(path, format!("an image of {w}x{h} pixels: expected 1..={MAX_SIDE} on each side")));
    }
    Ok(())
}

/// Decodes one image file into `[3, size, size]` bytes.
pub fn load_image(path: &Path, size: usize) -> Result<Vec<u8>> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    decode_image(&bytes, path, size)
}

/// Decodes the bytes of a JPEG or PNG file (named `path` in errors) into `[3, size, size]`
/// bytes, within [`MAX_SIDE`] and [`MAX_DECODE_BYTES`].
pub fn decode_image(bytes: &[u8], path: &Path, size: usize) -> Result<Vec<u8>> {
    let bad = |e: image::ImageError| Error::format(path, format!("unreadable image: {e}"));
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| Error::format(path, format!("unreadable image: {e}")))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(MAX_DECODE_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(bad)?.to_rgb8();
    if size == 0 || img.width() == 0 || img.height() == 0 {
        return Err(Error::format(path, "an image with no pixels"));
    }
    let (w, h) = img.dimensions();
    // the centred square of the shorter side, resized straight to size x size (bilinear, by
    // fast_image_resize's SIMD kernels: the `image` crate's resize was 2/3 of a decode)
    let side = w.min(h) as f64;
    let (left, top) = ((w as f64 - side) / 2.0, (h as f64 - side) / 2.0);
    let src = fir::images::Image::from_vec_u8(w, h, img.into_raw(), fir::PixelType::U8x3)
        .map_err(|e| Error::format(path, format!("image buffer: {e}")))?;
    let mut dst = fir::images::Image::new(size as u32, size as u32, fir::PixelType::U8x3);
    let opts = fir::ResizeOptions::new()
        .resize_alg(fir::ResizeAlg::Convolution(fir::FilterType::Bilinear))
        .crop(left, top, side, side);
    fir::Resizer::new().resize(&src, &mut dst, &opts).map_err(|e| Error::format(path, format!("resizing: {e}")))?;
    let px = dst.buffer();
    let mut out = vec![0u8; 3 * size * size];
    for (i, p) in px.chunks_exact(3).enumerate() {
        for c in 0..3 {
            out[c * size * size + i] = p[c];
        }
    }
    Ok(out)
}

/// Decoded folders larger than this stream from their files instead (one batch at a time).
pub const IN_MEMORY_MAX_BYTES: usize = 4 << 30;

/// Reads the images under `root/<class>/`, with the given class list (so train and test
/// agree): decoded into memory if they fit in `in_memory_max` bytes, else listed, to be
/// decoded batch by batch (each file's header is still read now, so a broken file is named
/// before training starts).
pub fn read_folder(root: &Path, classes: &[String], size: usize, in_memory_max: usize) -> Result<Dataset> {
    let mut files: Vec<(PathBuf, u32)> = Vec::new();
    for (label, name) in classes.iter().enumerate() {
        let dir = root.join(name);
        let rd = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut imgs: Vec<PathBuf> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().and_then(|e| e.to_str()).is_some_and(|e| EXTENSIONS.contains(&e)))
            .collect();
        imgs.sort();
        files.extend(imgs.into_iter().map(|p| (p, label as u32)));
    }
    if files.is_empty() {
        return Err(Error::format(root, "no .jpg/.jpeg/.png images in any class folder"));
    }
    let labels = files.iter().map(|(_, l)| *l).collect();
    if files.len().saturating_mul(3 * size * size) > in_memory_max {
        files.par_iter().try_for_each(|(p, _)| check_header(p))?;
        let paths = files.into_iter().map(|(p, _)| p).collect();
        return Ok(Dataset {
            images: Images::Files(Arc::new(ImageFiles { paths, size })),
            labels,
            shape: [3, size, size],
            classes: classes.len(),
        });
    }
    let decoded: Vec<Vec<u8>> = files.par_iter().map(|(p, _)| load_image(p, size)).collect::<Result<_>>()?;
    Ok(Dataset { images: Images::Memory(decoded.concat()), labels, shape: [3, size, size], classes: classes.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_classes_and_names_unreadable_files() {
        let dir = tempfile::tempdir().unwrap();
        for (ci, class) in ["cat", "dog"].iter().enumerate() {
            let d = dir.path().join(class);
            std::fs::create_dir(&d).unwrap();
            for i in 0..2 {
                let img = image::RgbImage::from_fn(12, 8, |x, _| image::Rgb([(x * 20) as u8, ci as u8 * 100, i as u8]));
                img.save(d.join(format!("{i}.png"))).unwrap();
            }
        }
        let classes: Vec<String> = class_dirs(dir.path()).unwrap().into_iter().map(|(n, _)| n).collect();
        assert_eq!(classes, vec!["cat", "dog"]);
        let ds = read_folder(dir.path(), &classes, 6, IN_MEMORY_MAX_BYTES).unwrap();
        assert_eq!((ds.len(), ds.shape, ds.labels.clone()), (4, [3, 6, 6], vec![0, 0, 1, 1]));
        assert_eq!(ds.image(2).unwrap()[36], 100); // green channel of a dog image
                                                   // the same folder streamed from its files: the same bytes, decoded when asked
        let streamed = read_folder(dir.path(), &classes, 6, 0).unwrap();
        assert!(streamed.bytes().is_none());
        for i in 0..4 {
            assert_eq!(streamed.image(i).unwrap(), ds.image(i).unwrap());
        }
        assert_eq!(streamed.channel_stats().unwrap(), ds.channel_stats().unwrap());

        std::fs::write(dir.path().join("dog/broken.jpg"), b"not a jpeg").unwrap();
        let e = read_folder(dir.path(), &classes, 6, IN_MEMORY_MAX_BYTES).unwrap_err().to_string();
        assert!(e.contains("broken.jpg") && e.contains("unreadable"), "{e}");
        // a streamed folder names a broken file when it is listed, before any training
        let e = read_folder(dir.path(), &classes, 6, 0).unwrap_err().to_string();
        assert!(e.contains("broken.jpg") && e.contains("unreadable"), "{e}");
    }
}
