//! The packed `.tern` file: a quantised [`Plan`] with everything needed to run it and to
//! check it — 2-bit ternary weight codes (s8 for full-precision layers; a convolution's
//! all-zero 16×4 weight units left out behind a bitmap, from version 2), the folded BN and
//! activation scales, the graph, the input normalisation, a reference input with its
//! expected logits — behind a version and a checksum.
//!
//! Layout: `TERNPACK` · version (u32 LE) · header length (u64 LE) · header (JSON) · payload ·
//! FNV-1a 64 of every byte before it (u64 LE). The header names each tensor's place in the
//! payload; every size is checked against the graph before it is used.

use crate::conv::{ConvKernel, ConvShape, PackedConv, LANES};
use crate::plan::{Op, Plan, Pool, Shape, Storage};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tern_core::{Error, Result};

const MAGIC: &[u8; 8] = b"TERNPACK";
pub const VERSION: u32 = 2;
/// The oldest version this build reads (version 1 has no `ternary2-units` codes).
const OLDEST_VERSION: u32 = 1;

/// Weight i of a `[c_out][c_in][k][k]` convolution → its 16×4 unit (as [`PackedConv`] counts
/// them: block of 16 outputs, tap, group of 4 inputs), and the number of units.
fn unit_of(s: ConvShape) -> (impl Fn(usize) -> usize, usize) {
    let (kk, c4) = (s.k * s.k, s.c4());
    let unit = move |i: usize| {
        let (o, c, t) = (i / (s.c_in * kk), i / kk % s.c_in, i % kk);
        ((o / LANES) * kk + t) * c4 + c / 4
    };
    (unit, s.blocks() * kk * c4)
}

/// A tensor's place in the payload.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Blob {
    offset: u64,
    bytes: u64,
    /// `ternary2` (four 2-bit codes per byte: 0, +1, −1), `ternary2-units` (a conv's codes:
    /// one bit per 16×4 unit, 1 where stored, then the stored units' codes as `ternary2` in
    /// weight order), `i8` or `f32`.
    dtype: String,
    count: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
enum OpRecord {
    Conv {
        src: usize,
        dst: usize,
        residual: Option<usize>,
        shape: ConvShape,
        codes: Blob,
        mul: Blob,
        add: Blob,
        relu: Option<f32>,
    },
    Pool(Pool),
    GlobalAvgPool {
        src: usize,
        dst: usize,
    },
    Linear {
        src: usize,
        dst: usize,
        /// f32 values, or (with `row_scales`) ternary codes whose row r is scaled by
        /// `row_scales[r]`: a ternary classifier travels at 2 bits a weight.
        weights: Blob,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        row_scales: Option<Blob>,
        bias: Blob,
        d_out: usize,
        relu: Option<f32>,
    },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct Header {
    model: String,
    /// The input normalisation the plan expects (tern-data's `Normalize`).
    normalize: serde_json::Value,
    values: Vec<Shape>,
    storage: Vec<Storage>,
    ops: Vec<OpRecord>,
    reference_input: Blob,
    reference_logits: Blob,
}

/// A plan with what travels beside it.
#[derive(Clone, Debug)]
pub struct Packed {
    pub model: String,
    pub normalize: serde_json::Value,
    pub plan: Plan,
    /// One image `[c, h, w]`, normalised, and the logits the plan gave it when written.
    pub reference_input: Vec<f32>,
    pub reference_logits: Vec<f32>,
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}

struct Writer {
    payload: Vec<u8>,
}

impl Writer {
    fn blob(&mut self, dtype: &str, count: usize, bytes: Vec<u8>) -> Blob {
        let b = Blob {
            offset: self.payload.len() as u64,
            bytes: bytes.len() as u64,
            dtype: dtype.into(),
            count: count as u64,
        };
        self.payload.extend(bytes);
        b
    }
    fn f32s(&mut self, v: &[f32]) -> Blob {
        self.blob("f32", v.len(), v.iter().flat_map(|x| x.to_le_bytes()).collect())
    }
    /// A convolution's codes: without its all-zero units where that is smaller.
    fn conv_codes(&mut self, v: &[i8], shape: ConvShape) -> Blob {
        if !v.iter().all(|&c| (-1..=1).contains(&c)) {
            return self.codes(v);
        }
        let (unit, units) = unit_of(shape);
        let mut keep = vec![false; units];
        for (i, &c) in v.iter().enumerate() {
            keep[unit(i)] |= c != 0;
        }
        let stored: Vec<i8> = v.iter().enumerate().filter(|&(i, _)| keep[unit(i)]).map(|(_, &c)| c).collect();
        if units.div_ceil(8) + stored.len().div_ceil(4) >= v.len().div_ceil(4) {
            return self.codes(v);
        }
        let mut b = vec![0u8; units.div_ceil(8)];
        for (u, &k) in keep.iter().enumerate() {
            b[u / 8] |= (k as u8) << (u % 8);
        }
        b.extend(ternary2(&stored));
        self.blob("ternary2-units", v.len(), b)
    }
    fn codes(&mut self, v: &[i8]) -> Blob {
        if v.iter().all(|&c| (-1..=1).contains(&c)) {
            self.blob("ternary2", v.len(), ternary2(v))
        } else {
            self.blob("i8", v.len(), v.iter().map(|&c| c as u8).collect())
        }
    }
}

/// Four 2-bit codes per byte (0, 1 = +1, 3 = −1), the first in the low bits.
fn ternary2(v: &[i8]) -> Vec<u8> {
    let mut b = vec![0u8; v.len().div_ceil(4)];
    for (i, &c) in v.iter().enumerate() {
        let code = match c {
            0 => 0u8,
            1 => 1,
            _ => 3,
        };
        b[i / 4] |= code << (2 * (i % 4));
    }
    b
}

/// Decodes `count` 2-bit codes.
fn from_ternary2(raw: &[u8], count: usize, what: &str) -> std::result::Result<Vec<i8>, String> {
    (0..count)
        .map(|i| match (raw[i / 4] >> (2 * (i % 4))) & 3 {
            0 => Ok(0),
            1 => Ok(1),
            3 => Ok(-1),
            _ => Err(format!("{what}: code 2 at {i} (codes are 0, 1 = +1, 3 = −1)")),
        })
        .collect()
}

impl Packed {
    /// The file's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let (header, payload) = self.encode();
        let header = serde_json::to_vec(&header).expect("a plan serialises");
        let mut out = Vec::with_capacity(28 + header.len() + payload.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        out.extend_from_slice(&payload);
        let sum = fnv1a(&out);
        out.extend_from_slice(&sum.to_le_bytes());
        out
    }

    /// Bytes the weights take in the file (convolution codes, classifier weights and their
    /// row scales), as encoded: what compares with an int8 or FP32 model's weights.
    pub fn weight_bytes(&self) -> usize {
        let (h, _) = self.encode();
        h.ops
            .iter()
            .map(|op| match op {
                OpRecord::Conv { codes, .. } => codes.bytes,
                OpRecord::Linear { weights, row_scales, .. } => {
                    weights.bytes + row_scales.as_ref().map_or(0, |b| b.bytes)
                }
                _ => 0,
            })
            .sum::<u64>() as usize
    }

    /// The header and the payload it points into.
    fn encode(&self) -> (Header, Vec<u8>) {
        let mut w = Writer { payload: Vec::new() };
        let ops = self
            .plan
            .ops
            .iter()
            .map(|op| match op {
                Op::Conv { src, dst, residual, packed, mul, add, relu, .. } => OpRecord::Conv {
                    src: *src,
                    dst: *dst,
                    residual: *residual,
                    shape: packed.shape,
                    codes: w.conv_codes(&packed.codes, packed.shape),
                    mul: w.f32s(mul),
                    add: w.f32s(add),
                    relu: *relu,
                },
                Op::Pool(p) => OpRecord::Pool(*p),
                Op::GlobalAvgPool { src, dst } => OpRecord::GlobalAvgPool { src: *src, dst: *dst },
                Op::Linear { src, dst, weights, bias, d_out, relu } => {
                    let (weights, row_scales) = match ternary_rows(weights, *d_out) {
                        Some((codes, scales)) => (w.codes(&codes), Some(w.f32s(&scales))),
                        None => (w.f32s(weights), None),
                    };
                    OpRecord::Linear {
                        src: *src,
                        dst: *dst,
                        weights,
                        row_scales,
                        bias: w.f32s(bias),
                        d_out: *d_out,
                        relu: *relu,
                    }
                }
            })
            .collect();
        let header = Header {
            model: self.model.clone(),
            normalize: self.normalize.clone(),
            values: self.plan.values.clone(),
            storage: self.plan.storage.clone(),
            ops,
            reference_input: w.f32s(&self.reference_input),
            reference_logits: w.f32s(&self.reference_logits),
        };
        (header, w.payload)
    }

    /// Writes the file atomically; returns its size in bytes.
    pub fn write(&self, path: &Path) -> Result<usize> {
        let bytes = self.to_bytes();
        tern_core::checkpoint::write_atomic(path, &bytes)?;
        Ok(bytes.len())
    }

    /// Reads and checks a file: its checksum, then every size against the graph.
    pub fn read(path: &Path) -> Result<Packed> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Packed::from_bytes(&bytes).map_err(|what| Error::format(path, what))
    }

    pub fn from_bytes(bytes: &[u8]) -> std::result::Result<Packed, String> {
        if bytes.len() < 28 || &bytes[..8] != MAGIC {
            return Err("not a packed tern model (no TERNPACK signature)".into());
        }
        let version = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
        if !(OLDEST_VERSION..=VERSION).contains(&version) {
            return Err(format!("format version {version}; this build reads versions {OLDEST_VERSION} to {VERSION}"));
        }
        let (body, sum) = bytes.split_at(bytes.len() - 8);
        if fnv1a(body) != u64::from_le_bytes(sum.try_into().expect("8 bytes")) {
            return Err("checksum mismatch: the file is truncated or corrupt".into());
        }
        let header_len = u64::from_le_bytes(bytes[12..20].try_into().expect("8 bytes"));
        if header_len > (body.len() - 20) as u64 {
            return Err(format!("header length {header_len} exceeds the file"));
        }
        let header_end = 20 + header_len as usize;
        let h: Header = serde_json::from_slice(&body[20..header_end]).map_err(|e| format!("header: {e}"))?;
        let payload = &body[header_end..];
        let r = Reader { payload };
        let values = &h.values;
        if values.is_empty() || h.storage.len() != values.len() {
            return Err(format!("{} values but {} storage entries", values.len(), h.storage.len()));
        }
        let value = |i: usize, what: &str| -> std::result::Result<Shape, String> {
            values.get(i).copied().ok_or_else(|| format!("{what}: value {i} of {}", values.len()))
        };
        let mut ops = Vec::new();
        for (n, op) in h.ops.iter().enumerate() {
            let at = |what: &str| format!("op {n} ({what})");
            ops.push(match op {
                OpRecord::Conv { src, dst, residual, shape, codes, mul, add, relu } => {
                    let (s, d) = (value(*src, &at("conv input"))?, value(*dst, &at("conv output"))?);
                    if let Some(rv) = residual {
                        value(*rv, &at("residual"))?;
                    }
                    if shape.k == 0 || shape.stride == 0 || s.c != shape.c_in || s.h.min(s.w) + 2 * shape.pad < shape.k
                    {
                        return Err(format!("{}: {shape:?} on an input of {s:?}", at("conv")));
                    }
                    if shape.out_hw(s.h, s.w) != (d.h, d.w) || d.c != shape.c_out {
                        return Err(format!("{}: {shape:?} cannot give {d:?}", at("conv")));
                    }
                    let ks = shape.blocks() * LANES;
                    let codes = r.conv_codes(codes, *shape, &at("conv codes"))?;
                    Op::Conv {
                        src: *src,
                        dst: *dst,
                        residual: *residual,
                        packed: PackedConv::new(*shape, codes),
                        mul: r.f32s(mul, ks, &at("conv multipliers"))?,
                        add: r.f32s(add, ks, &at("conv offsets"))?,
                        relu: *relu,
                        kernel: ConvKernel::Dense,
                    }
                }
                OpRecord::Pool(p) => {
                    let (s, d) = (value(p.src, &at("pool input"))?, value(p.dst, &at("pool output"))?);
                    let g = tern_core::PoolGeometry::new(1, s.c, s.h, s.w, p.k, p.stride, p.pad)
                        .map_err(|e| format!("{}: {e}", at("pool")))?;
                    if (g.h_out(), g.w_out(), s.c) != (d.h, d.w, d.c) {
                        return Err(format!("{}: cannot give {d:?}", at("pool")));
                    }
                    Op::Pool(*p)
                }
                OpRecord::GlobalAvgPool { src, dst } => {
                    value(*src, &at("pool input"))?;
                    value(*dst, &at("pool output"))?;
                    Op::GlobalAvgPool { src: *src, dst: *dst }
                }
                OpRecord::Linear { src, dst, weights, row_scales, bias, d_out, relu } => {
                    let s = value(*src, &at("linear input"))?;
                    value(*dst, &at("linear output"))?;
                    let d_in = s.c * s.h * s.w;
                    let weights = match row_scales {
                        None => r.f32s(weights, d_out * d_in, &at("linear weights"))?,
                        Some(scales) => {
                            let codes = r.codes(weights, d_out * d_in, &at("linear codes"))?;
                            let scales = r.f32s(scales, *d_out, &at("linear row scales"))?;
                            codes.iter().enumerate().map(|(i, &c)| c as f32 * scales[i / d_in.max(1)]).collect()
                        }
                    };
                    Op::Linear {
                        src: *src,
                        dst: *dst,
                        weights,
                        bias: r.f32s(bias, *d_out, &at("linear bias"))?,
                        d_out: *d_out,
                        relu: *relu,
                    }
                }
            });
        }
        let s0 = values[0];
        let reference_input = r.f32s(&h.reference_input, s0.c * s0.h * s0.w, "reference input")?;
        let classes = values[values.len() - 1].c;
        let reference_logits = r.f32s(&h.reference_logits, classes, "reference logits")?;
        let plan = Plan { values: h.values.clone(), storage: h.storage.clone(), ops };
        plan.check().map_err(|e| format!("graph: {e}"))?;
        Ok(Packed { model: h.model, normalize: h.normalize, plan, reference_input, reference_logits })
    }

    /// Runs the reference input and compares with the logits stored beside it: the same
    /// kernels give the same bits; another CPU's kernel, at most rounding apart.
    pub fn verify(&self) -> std::result::Result<f32, String> {
        let got = self.plan.run(&self.reference_input, &mut crate::plan::Workspace::default());
        let scale = self.reference_logits.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = got.iter().zip(&self.reference_logits).fold(0.0f32, |m, (a, b)| m.max((a - b).abs())) / scale;
        if !(err <= 1e-4) {
            return Err(format!("the reference input gives logits {err:.2e} (relative) away from those stored"));
        }
        Ok(err)
    }
}

/// `weights` (`rows` rows) as ternary codes and one scale per row, when every row's non-zero
/// values share one magnitude (a ternary layer's ±α): exact, codes × scale gives them back.
fn ternary_rows(weights: &[f32], rows: usize) -> Option<(Vec<i8>, Vec<f32>)> {
    let cols = weights.len() / rows.max(1);
    let mut codes = vec![0i8; weights.len()];
    let mut scales = vec![0.0f32; rows];
    for r in 0..rows {
        let row = &weights[r * cols..(r + 1) * cols];
        let alpha = row.iter().find(|v| **v != 0.0).map_or(0.0, |v| v.abs());
        for (c, &v) in codes[r * cols..(r + 1) * cols].iter_mut().zip(row) {
            *c = match v {
                _ if v == 0.0 => 0,
                _ if v == alpha => 1,
                _ if v == -alpha => -1,
                _ => return None,
            };
        }
        scales[r] = alpha;
    }
    Some((codes, scales))
}

struct Reader<'a> {
    payload: &'a [u8],
}

impl Reader<'_> {
    fn bytes(&self, b: &Blob, dtype: &str, count: usize, what: &str) -> std::result::Result<&[u8], String> {
        if b.dtype != dtype || b.count != count as u64 {
            return Err(format!("{what}: {} × {} where {count} × {dtype} were expected", b.count, b.dtype));
        }
        let end = b.offset.checked_add(b.bytes).filter(|&e| e <= self.payload.len() as u64);
        match end {
            Some(end) => Ok(&self.payload[b.offset as usize..end as usize]),
            None => {
                Err(format!("{what}: bytes {}+{} lie outside the payload of {}", b.offset, b.bytes, self.payload.len()))
            }
        }
    }
    fn f32s(&self, b: &Blob, count: usize, what: &str) -> std::result::Result<Vec<f32>, String> {
        let raw = self.bytes(b, "f32", count, what)?;
        if raw.len() != 4 * count {
            return Err(format!("{what}: {} bytes for {count} floats", raw.len()));
        }
        Ok(raw.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().expect("4 bytes"))).collect())
    }
    /// A convolution's codes, with or without its zero units.
    fn conv_codes(&self, b: &Blob, shape: ConvShape, what: &str) -> std::result::Result<Vec<i8>, String> {
        let count = shape.c_out * shape.c_in * shape.k * shape.k;
        if b.dtype != "ternary2-units" {
            return self.codes(b, count, what);
        }
        let raw = self.bytes(b, "ternary2-units", count, what)?;
        let (unit, units) = unit_of(shape);
        let map = units.div_ceil(8);
        if raw.len() < map {
            return Err(format!("{what}: {} bytes, less than the bitmap of {units} units", raw.len()));
        }
        let keep = |i: usize| (raw[unit(i) / 8] >> (unit(i) % 8)) & 1 == 1;
        let stored = (0..count).filter(|&i| keep(i)).count();
        if raw.len() != map + stored.div_ceil(4) {
            return Err(format!("{what}: {} bytes for {units} units of which {stored} codes stored", raw.len()));
        }
        let mut codes = from_ternary2(&raw[map..], stored, what)?.into_iter();
        Ok((0..count).map(|i| if keep(i) { codes.next().expect("counted") } else { 0 }).collect())
    }
    fn codes(&self, b: &Blob, count: usize, what: &str) -> std::result::Result<Vec<i8>, String> {
        if b.dtype == "ternary2" {
            let raw = self.bytes(b, "ternary2", count, what)?;
            if raw.len() != count.div_ceil(4) {
                return Err(format!("{what}: {} bytes for {count} 2-bit codes", raw.len()));
            }
            from_ternary2(raw, count, what)
        } else {
            let raw = self.bytes(b, "i8", count, what)?;
            if raw.len() != count {
                return Err(format!("{what}: {} bytes for {count} codes", raw.len()));
            }
            Ok(raw.iter().map(|&v| v as i8).collect())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{FloatPlan, Workspace};
    use tern_core::Rng;
    use tern_train::ModelConfig;

    fn packed(name: &str, shape: [usize; 3]) -> Packed {
        packed_sparse(name, shape, 0.0)
    }

    /// With `block_sparsity` of each ternary conv's 16x4 weight units zero.
    fn packed_sparse(name: &str, shape: [usize; 3], block_sparsity: f64) -> Packed {
        let cfg =
            ModelConfig { name: name.into(), in_shape: shape, classes: 10, width: 16, small_input: false, spec: None };
        let mut m = tern_train::models::build(&cfg, &mut Rng::new(2)).unwrap();
        m.set_ternary(Some(Default::default()), true, false);
        if block_sparsity > 0.0 {
            m.set_unit_masks(&tern_core::CpuBackend, block_sparsity);
        }
        let mut rng = Rng::new(9);
        let per = shape.iter().product::<usize>();
        let x: Vec<f32> = (0..4 * per).map(|_| rng.normal()).collect();
        let plan = Plan::quantise(&FloatPlan::of(&mut m).unwrap(), &x, 4).unwrap();
        let reference_input = x[..per].to_vec();
        let reference_logits = plan.run(&reference_input, &mut Workspace::default());
        Packed {
            model: name.into(),
            normalize: serde_json::json!({"mean": [0.5], "std": [0.25]}),
            plan,
            reference_input,
            reference_logits,
        }
    }

    #[test]
    fn a_written_file_reads_back_to_the_same_logits() {
        for (name, shape) in [("vgg-small", [1, 28, 28]), ("resnet20", [3, 32, 32]), ("lenet5", [1, 28, 28])] {
            let p = packed(name, shape);
            let bytes = p.to_bytes();
            let q = Packed::from_bytes(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(q.verify().unwrap(), 0.0, "{name}: same kernels, same bits");
            assert_eq!(q.plan.values, p.plan.values);
            // ternary layers travel as 2-bit codes, the FP first layer as s8
            let hl = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
            let h: serde_json::Value = serde_json::from_slice(&bytes[20..20 + hl]).unwrap();
            let dtypes: Vec<&str> =
                h["ops"].as_array().unwrap().iter().filter_map(|o| o["Conv"]["codes"]["dtype"].as_str()).collect();
            assert_eq!(dtypes[0], "i8", "{name}");
            // the ternary classifier travels as codes with row scales
            let last = h["ops"].as_array().unwrap().iter().rev().find_map(|o| o.get("Linear")).unwrap();
            assert_eq!(last["weights"]["dtype"], "ternary2", "{name}");
            assert!(last["row_scales"].is_object(), "{name}");
            assert!(dtypes[1..].iter().all(|&d| d == "ternary2"), "{name}: {dtypes:?}");
        }
    }

    fn header_of(bytes: &[u8]) -> serde_json::Value {
        let hl = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
        serde_json::from_slice(&bytes[20..20 + hl]).unwrap()
    }

    /// `bytes` with header `h` and a fresh checksum.
    fn reseal(bytes: &[u8], h: &serde_json::Value) -> Vec<u8> {
        let hl = u64::from_le_bytes(bytes[12..20].try_into().unwrap()) as usize;
        let h = serde_json::to_vec(h).unwrap();
        let mut out = bytes[..12].to_vec();
        out.extend_from_slice(&(h.len() as u64).to_le_bytes());
        out.extend_from_slice(&h);
        out.extend_from_slice(&bytes[20 + hl..bytes.len() - 8]);
        let s = fnv1a(&out);
        out.extend_from_slice(&s.to_le_bytes());
        out
    }

    #[test]
    fn zero_weight_units_are_left_out_of_the_file() {
        let (dense, sparse) =
            (packed("resnet20", [3, 32, 32]).to_bytes(), packed_sparse("resnet20", [3, 32, 32], 0.75).to_bytes());
        let q = Packed::from_bytes(&sparse).unwrap();
        assert_eq!(q.verify().unwrap(), 0.0, "the same logits after the round trip");
        let h = header_of(&sparse);
        let dtypes: Vec<&str> =
            h["ops"].as_array().unwrap().iter().filter_map(|o| o["Conv"]["codes"]["dtype"].as_str()).collect();
        assert!(dtypes[1..].iter().all(|&d| d == "ternary2-units"), "{dtypes:?}");
        // the codes: 3/4 of the units left out, a bit per unit added
        assert!(sparse.len() < dense.len() * 2 / 3, "{} vs {} bytes", sparse.len(), dense.len());
        // every conv's zero units come back as zeros and the rest as written
        let p = packed_sparse("resnet20", [3, 32, 32], 0.75);
        for (a, b) in p.plan.ops.iter().zip(&q.plan.ops) {
            if let (Op::Conv { packed: pa, .. }, Op::Conv { packed: pb, .. }) = (a, b) {
                assert_eq!(pa.codes, pb.codes);
            }
        }
        // a stored-code count that disagrees with the bitmap is a clear error
        let mut h2 = h.clone();
        let idx =
            h["ops"].as_array().unwrap().iter().position(|o| o["Conv"]["codes"]["dtype"] == "ternary2-units").unwrap();
        h2["ops"][idx]["Conv"]["codes"]["bytes"] =
            (h["ops"][idx]["Conv"]["codes"]["bytes"].as_u64().unwrap() - 1).into();
        let e = Packed::from_bytes(&reseal(&sparse, &h2)).expect_err("an error");
        assert!(e.contains("units of which"), "{e}");
    }

    #[test]
    fn broken_files_are_clear_errors() {
        let bytes = packed("resnet20", [3, 32, 32]).to_bytes();
        let err = |b: &[u8]| Packed::from_bytes(b).expect_err("an error");
        assert!(err(&bytes[..bytes.len() / 2]).contains("truncated or corrupt"));
        assert!(err(&bytes[..10]).contains("TERNPACK"));
        assert!(err(b"hello world, this is not a model").contains("TERNPACK"));
        let mut flipped = bytes.clone();
        flipped[bytes.len() / 2] ^= 0x10;
        assert!(err(&flipped).contains("checksum"));
        let mut v2 = bytes.clone();
        v2[8] = 3;
        assert!(err(&v2).contains("version 3"));
        // a header that lies about a size, with a valid checksum: named, not a panic
        let resealed = |edit: &dyn Fn(&mut serde_json::Value)| {
            let mut h = header_of(&bytes);
            edit(&mut h);
            reseal(&bytes, &h)
        };
        let e = err(&resealed(&|h| h["ops"][0]["Conv"]["codes"]["count"] = 7.into()));
        assert!(e.contains("op 0 (conv codes)"), "{e}");
        let e = err(&resealed(&|h| h["ops"][0]["Conv"]["mul"]["offset"] = 1u64.wrapping_shl(62).into()));
        assert!(e.contains("outside the payload"), "{e}");
        let e = err(&resealed(&|h| h["ops"][1]["Conv"]["src"] = 99.into()));
        assert!(e.contains("value 99"), "{e}");
        let e = err(&resealed(&|h| h["values"][1]["c"] = 5.into()));
        assert!(e.contains("op 0") || e.contains("op 1"), "{e}");
        // a stored logit off: --verify catches it
        let mut p = Packed::from_bytes(&bytes).unwrap();
        p.reference_logits[0] += 1.0;
        assert!(p.verify().unwrap_err().contains("away from those stored"));
    }
}
