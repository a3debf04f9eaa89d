//! Image folders (ImageNet style): one sub-folder per class holding JPEG/PNG files. Images are
//! resized so the shorter side is `size`, then centre-cropped to `size x size`, RGB.

use crate::Dataset;
use rayon::prelude::*;
use std::path::{Path, PathBuf};
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
    let scale = size as f64 / w.min(h) as f64;
    let (nw, nh) =
        (((w as f64 * scale).round() as u32).max(size as u32), ((h as f64 * scale).round() as u32).max(size as u32));
    let resized = image::imageops::resize(&img, nw, nh, image::imageops::FilterType::Triangle);
    let (x0, y0) = ((nw - size as u32) / 2, (nh - size as u32) / 2);
    let mut out = vec![0u8; 3 * size * size];
    for y in 0..size {
        for x in 0..size {
            let p = resized.get_pixel(x0 + x as u32, y0 + y as u32);
            for c in 0..3 {
                out[(c * size + y) * size + x] = p[c];
            }
        }
    }
    Ok(out)
}

/// Reads every image under `root/<class>/`, with the given class list (so train and test agree).
pub fn read_folder(root: &Path, classes: &[String], size: usize) -> Result<Dataset> {
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
    let decoded: Vec<Vec<u8>> = files.par_iter().map(|(p, _)| load_image(p, size)).collect::<Result<_>>()?;
    Ok(Dataset {
        images: decoded.concat(),
        labels: files.iter().map(|(_, l)| *l).collect(),
        shape: [3, size, size],
        classes: classes.len(),
    })
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
        let ds = read_folder(dir.path(), &classes, 6).unwrap();
        assert_eq!((ds.len(), ds.shape, ds.labels.clone()), (4, [3, 6, 6], vec![0, 0, 1, 1]));
        assert_eq!(ds.image(2)[36], 100); // green channel of a dog image

        std::fs::write(dir.path().join("dog/broken.jpg"), b"not a jpeg").unwrap();
        let e = read_folder(dir.path(), &classes, 6).unwrap_err().to_string();
        assert!(e.contains("broken.jpg") && e.contains("unreadable"), "{e}");
    }
}
