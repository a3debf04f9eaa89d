//! Every parser of outside input as a fuzz target: a valid seed file, the parse, and the
//! allocation bound it promises. Shared by the quick pass in `cargo test` (tests/fuzz.rs)
//! and the long run (examples/fuzz.rs, bench/fuzz.sh).

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use tern_core::fuzz::mutate;
use tern_core::Rng;

/// A global allocator that records the largest single allocation (the fuzz binaries install
/// it; each runs its targets on one thread, so nothing else allocates concurrently).
pub struct Peak;
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The largest single allocation since the last call.
pub fn take_peak() -> usize {
    PEAK.swap(0, Ordering::Relaxed)
}

// SAFETY: forwards to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        PEAK.fetch_max(l.size(), Ordering::Relaxed);
        // SAFETY: the caller's layout contract is forwarded.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        PEAK.fetch_max(n, Ordering::Relaxed);
        // SAFETY: as above.
        unsafe { System.realloc(p, l, n) }
    }
}

/// The name every error must carry.
pub const LABEL: &str = "fuzz-input.bin";

pub struct Target {
    pub name: &'static str,
    pub seed: Vec<u8>,
    /// Parses a (mutated) input; Err(message) for a rejection.
    pub parse: fn(&[u8]) -> Result<(), String>,
    /// The largest single allocation the parse may make for an input of this many bytes.
    pub bound: fn(usize) -> usize,
}

fn label() -> &'static Path {
    Path::new(LABEL)
}

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

fn idx_seed() -> Vec<u8> {
    let mut b = vec![0u8, 0, 0x08, 3];
    for d in [3u32, 4, 5] {
        b.extend_from_slice(&d.to_be_bytes());
    }
    b.extend((0..60).map(|i| i as u8));
    b
}

fn image_seed(format: image::ImageFormat) -> Vec<u8> {
    let img = image::RgbImage::from_fn(9, 7, |x, y| image::Rgb([(x * 20) as u8, (y * 30) as u8, 77]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, format).unwrap();
    out.into_inner()
}

fn checkpoint_seed() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.safetensors");
    let a = tern_core::Tensor::from_vec(&[2, 3], vec![1.0, -2.0, 0.5, 0.0, 3.0, 4.0]);
    let b = tern_core::Tensor::from_vec(&[1], vec![7.0]);
    let meta = serde_json::json!({
        "model": {"name": "lenet5", "in_shape": [1, 28, 28], "classes": 10, "width": 0, "small_input": false},
        "epoch": 1,
    });
    tern_core::checkpoint::save(&p, &[("a".into(), &a), ("b".into(), &b)], &meta).unwrap();
    std::fs::read(&p).unwrap()
}

fn masks_seed() -> Vec<u8> {
    use tern_core::masks::{MaskRecord, Operand};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("m.bin");
    let recs = [
        MaskRecord::from_values("conv1", Operand::Weight, &[2, 1, 3, 3], &[1.0; 18]).with_stride_pad(1, 1),
        MaskRecord::from_values("conv1", Operand::Input, &[1, 1, 4, 4], &[0.0; 16]),
    ];
    tern_core::masks::write(&p, &recs).unwrap();
    std::fs::read(&p).unwrap()
}

fn text(b: &[u8]) -> Result<&str, String> {
    std::str::from_utf8(b).map_err(|_| format!("{LABEL}: not UTF-8"))
}

fn small(len: usize) -> usize {
    16 * len + (1 << 20)
}

pub fn targets() -> Vec<Target> {
    vec![
        Target {
            name: "IDX",
            seed: idx_seed(),
            parse: |b| tern_data::idx::parse_idx(b.to_vec(), label()).map(drop).map_err(|e| e.to_string()),
            bound: small,
        },
        Target {
            name: "IDX gzip (mutated inside the stream)",
            seed: idx_seed(),
            parse: |b| tern_data::idx::parse_idx(gzip(b), label()).map(drop).map_err(|e| e.to_string()),
            bound: small,
        },
        Target {
            name: "IDX gzip (mutated stream)",
            seed: gzip(&idx_seed()),
            parse: |b| tern_data::idx::parse_idx(b.to_vec(), label()).map(drop).map_err(|e| e.to_string()),
            // inflating grows a buffer by doubling up to the declared-and-present data
            bound: |len| 64 * len + (1 << 20),
        },
        Target {
            name: "CIFAR-10 records",
            seed: {
                let mut v = vec![3u8];
                v.extend((0..3072).map(|i| i as u8));
                v.push(9);
                v.extend((0..3072).map(|i| (i * 7) as u8));
                v
            },
            parse: |b| {
                let mut ds =
                    tern_data::Dataset { images: Vec::new().into(), labels: Vec::new(), shape: [3, 32, 32], classes: 10 };
                tern_data::cifar::parse_records(b, label(), &mut ds).map_err(|e| e.to_string())
            },
            bound: small,
        },
        Target {
            name: "image-folder PNG",
            seed: image_seed(image::ImageFormat::Png),
            parse: |b| tern_data::folder::decode_image(b, label(), 8).map(drop).map_err(|e| e.to_string()),
            bound: |len| tern_data::folder::MAX_DECODE_BYTES as usize + small(len),
        },
        Target {
            name: "image-folder JPEG",
            seed: image_seed(image::ImageFormat::Jpeg),
            parse: |b| tern_data::folder::decode_image(b, label(), 8).map(drop).map_err(|e| e.to_string()),
            bound: |len| tern_data::folder::MAX_DECODE_BYTES as usize + small(len),
        },
        Target {
            name: "checkpoint (safetensors + metadata)",
            seed: checkpoint_seed(),
            parse: |b| {
                let c = tern_core::checkpoint::parse(b, label()).map_err(|e| e.to_string())?;
                tern_train::checkpoint::model_config(label(), &c).map(drop).map_err(|e| e.to_string())
            },
            bound: small,
        },
        Target {
            name: "masks.bin",
            seed: masks_seed(),
            parse: |b| tern_core::masks::parse(b, label()).map(drop).map_err(|e| e.to_string()),
            bound: small,
        },
        Target {
            name: "DLAC TOML config",
            seed: toml::to_string(&tern_dlac::DlacConfig::fp32_train()).unwrap().into_bytes(),
            parse: |b| tern_dlac::DlacConfig::from_toml(text(b)?, label()).map(drop).map_err(|e| e.to_string()),
            bound: small,
        },
        Target {
            name: "workload JSON",
            seed: br#"{"format": "tern-workload-v1", "mm_ops": [
                {"name": "conv1", "pass": "forward", "k": 16, "crs": 27, "pq": 1024, "zero_frac": [0.4, 0.0]},
                {"name": "conv1", "pass": "weight_grad", "k": 16, "crs": 27, "pq": 1024, "zero_frac": [0.1, 0.5]}],
                "pt_ops": [{"name": "bn1", "kind": "bn", "elements": 16384}]}"#
                .to_vec(),
            parse: |b| tern_dlac::Workload::from_json(label(), text(b)?).map(drop).map_err(|e| e.to_string()),
            bound: small,
        },
        Target {
            name: "workload CSV (Fig. 5 style)",
            seed: b"layer,weight_zero_pct,ifm_zero_pct,flops_per_cycle,k,crs,pq\n1,60.41,0.00,1974.86,64,147,12544\n2,40,51.5,2000,64,576,3136\n".to_vec(),
            parse: |b| tern_dlac::Workload::from_csv(label(), text(b)?).map(drop).map_err(|e| e.to_string()),
            bound: small,
        },
    ]
}

/// What a fuzz run of one target found.
#[derive(Debug, Default)]
pub struct Outcome {
    pub inputs: usize,
    pub accepted: usize,
    pub rejected: usize,
    /// Rejections whose message does not name the input.
    pub unnamed: Vec<String>,
    pub panics: Vec<String>,
    /// The largest single allocation seen, and its bound for that input.
    pub peak: (usize, usize),
    pub over_bound: usize,
}

/// Runs `n` mutated inputs of `t` from `seed`, measuring allocations with [`Peak`] (which
/// the calling binary installs as its global allocator).
pub fn run(t: &Target, n: usize, seed: u64) -> Outcome {
    let peak = take_peak;
    let mut rng = Rng::new(seed);
    let mut o = Outcome::default();
    // the seed itself must parse
    assert!((t.parse)(&t.seed).is_ok(), "{}: the seed file does not parse: {:?}", t.name, (t.parse)(&t.seed));
    for _ in 0..n {
        let input = mutate(&t.seed, &mut rng);
        peak();
        let r = std::panic::catch_unwind(|| (t.parse)(&input));
        let p = peak();
        let bound = (t.bound)(input.len());
        if p > o.peak.0 {
            o.peak = (p, bound);
        }
        if p > bound {
            o.over_bound += 1;
        }
        o.inputs += 1;
        match r {
            Ok(Ok(())) => o.accepted += 1,
            Ok(Err(e)) => {
                o.rejected += 1;
                if !e.contains(LABEL) && o.unnamed.len() < 5 {
                    o.unnamed.push(e);
                }
            }
            Err(p) => {
                let msg =
                    p.downcast_ref::<String>().cloned().or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
                if o.panics.len() < 5 {
                    o.panics.push(format!("{msg:?} on input {:?}", &input[..input.len().min(64)]));
                }
            }
        }
    }
    o
}
