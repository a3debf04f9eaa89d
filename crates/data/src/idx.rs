//! The IDX format of (Fashion-)MNIST, raw or gzip-compressed (detected by magic bytes).
//! Header: two zero bytes, a type byte (0x08 = unsigned byte), a dimension count, then one
//! big-endian u32 per dimension, then the data.

use flate2::read::GzDecoder;
use std::io::Read;
use std::path::Path;
use tern_core::{Error, Result};

/// The largest IDX payload tern inflates from a gzip stream (4 GiB, more than any image
/// data set's file): a corrupt or hostile stream cannot make it allocate more.
pub const MAX_INFLATED_BYTES: u64 = 1 << 32;

/// Reads an IDX file of unsigned bytes; returns its dimensions and data.
pub fn read_idx(path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let raw = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_idx(raw, path)
}

/// Parses the bytes of an IDX file (raw or gzip); `path` names it in errors.
pub fn parse_idx(raw: Vec<u8>, path: &Path) -> Result<(Vec<usize>, Vec<u8>)> {
    let bytes = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        GzDecoder::new(&raw[..])
            .take(MAX_INFLATED_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| Error::format(path, format!("corrupt or truncated gzip stream: {e}")))?;
        if out.len() as u64 > MAX_INFLATED_BYTES {
            return Err(Error::format(path, format!("inflates to more than {MAX_INFLATED_BYTES} bytes")));
        }
        out
    } else {
        raw
    };
    if bytes.len() < 4 {
        return Err(Error::format(path, format!("file is {} bytes: too short for an IDX header", bytes.len())));
    }
    if bytes[0] != 0 || bytes[1] != 0 {
        return Err(Error::format(
            path,
            format!("wrong magic number {:02x}{:02x}: an IDX file starts with two zero bytes", bytes[0], bytes[1]),
        ));
    }
    if bytes[2] != 0x08 {
        return Err(Error::format(path, format!("data type 0x{:02x}: expected 0x08 (unsigned byte)", bytes[2])));
    }
    let ndim = bytes[3] as usize;
    if ndim == 0 || bytes.len() < 4 + 4 * ndim {
        return Err(Error::format(path, format!("header declares {ndim} dimensions but the file ends first")));
    }
    let dims: Vec<usize> =
        (0..ndim).map(|i| u32::from_be_bytes(bytes[4 + 4 * i..8 + 4 * i].try_into().unwrap()) as usize).collect();
    let data = &bytes[4 + 4 * ndim..];
    // checked: a corrupt header can declare dimensions whose product overflows
    let expected = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
    let Some(expected) = expected else {
        return Err(Error::format(path, format!("dimensions {dims:?} overflow")));
    };
    if data.len() != expected {
        return Err(Error::format(
            path,
            format!("dimensions {dims:?} need {expected} data bytes but the file holds {} (truncated?)", data.len()),
        ));
    }
    Ok((dims, data.to_vec()))
}

/// Writes an IDX file of unsigned bytes (gzip-compressed when `gz`); used by tests and tools.
pub fn write_idx(path: &Path, dims: &[usize], data: &[u8], gz: bool) -> Result<()> {
    let mut bytes = vec![0u8, 0, 0x08, dims.len() as u8];
    for &d in dims {
        bytes.extend_from_slice(&(d as u32).to_be_bytes());
    }
    bytes.extend_from_slice(data);
    let bytes = if gz {
        use flate2::write::GzEncoder;
        use std::io::Write;
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&bytes).map_err(|e| Error::io(path, e))?;
        enc.finish().map_err(|e| Error::io(path, e))?
    } else {
        bytes
    };
    std::fs::write(path, bytes).map_err(|e| Error::io(path, e))
}

/// Reads a pair of image and label IDX files into a data set of `classes` classes.
pub fn read_idx_pair(images: &Path, labels: &Path, classes: usize) -> Result<crate::Dataset> {
    let (idims, ibytes) = read_idx(images)?;
    let (ldims, lbytes) = read_idx(labels)?;
    let shape = match idims.as_slice() {
        [_, h, w] => [1, *h, *w],
        [_, c, h, w] => [*c, *h, *w],
        _ => return Err(Error::format(images, format!("dimensions {idims:?}: expected [count, rows, cols]"))),
    };
    if ldims.len() != 1 {
        return Err(Error::format(labels, format!("dimensions {ldims:?}: expected [count]")));
    }
    if ldims[0] != idims[0] {
        return Err(Error::format(
            labels,
            format!("{} labels for {} images in {}", ldims[0], idims[0], images.display()),
        ));
    }
    let ds =
        crate::Dataset { images: ibytes.into(), labels: lbytes.iter().map(|&b| b as u32).collect(), shape, classes };
    ds.validate_labels(labels)?;
    Ok(ds)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_raw_and_gz() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
        for gz in [false, true] {
            let p = dir.path().join(if gz { "a.gz" } else { "a" });
            write_idx(&p, &[2, 3, 4], &data, gz).unwrap();
            let (dims, got) = read_idx(&p).unwrap();
            assert_eq!(dims, vec![2, 3, 4]);
            assert_eq!(got, data);
        }
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad-idx");
        write_idx(&p, &[2, 3, 4], &[0u8; 24], false).unwrap();
        let full = std::fs::read(&p).unwrap();

        std::fs::write(&p, &full[..full.len() - 3]).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("bad-idx") && e.contains("truncated"), "{e}");

        let mut wrong = full.clone();
        wrong[0] = 0x12;
        std::fs::write(&p, &wrong).unwrap();
        let e = read_idx(&p).unwrap_err().to_string();
        assert!(e.contains("magic"), "{e}");

        let mut wrong = full.clone();
        wrong[2] = 0x0d;
        std::fs::write(&p, &wrong).unwrap();
        assert!(read_idx(&p).unwrap_err().to_string().contains("unsigned byte"));

        let gz = dir.path().join("bad.gz");
        write_idx(&gz, &[2, 3, 4], &[7u8; 24], true).unwrap();
        let bytes = std::fs::read(&gz).unwrap();
        std::fs::write(&gz, &bytes[..bytes.len() / 2]).unwrap();
        let e = read_idx(&gz).unwrap_err().to_string();
        assert!(e.contains("bad.gz") && e.contains("gzip"), "{e}");
    }

    #[test]
    fn labels_out_of_range_and_count_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (i, l) = (dir.path().join("img"), dir.path().join("lab"));
        write_idx(&i, &[3, 2, 2], &[0u8; 12], false).unwrap();
        write_idx(&l, &[3], &[0, 1, 10], false).unwrap();
        let e = read_idx_pair(&i, &l, 10).unwrap_err().to_string();
        assert!(e.contains("lab") && e.contains("label 10"), "{e}");
        write_idx(&l, &[2], &[0, 1], false).unwrap();
        let e = read_idx_pair(&i, &l, 10).unwrap_err().to_string();
        assert!(e.contains("2 labels for 3 images"), "{e}");
        write_idx(&l, &[3], &[0, 1, 9], false).unwrap();
        let ds = read_idx_pair(&i, &l, 10).unwrap();
        assert_eq!((ds.len(), ds.shape), (3, [1, 2, 2]));
    }
}
