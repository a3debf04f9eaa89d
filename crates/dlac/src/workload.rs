//! Workloads: the mmOps a network runs, with their operand zero fractions, read from the
//! profiler's `workload.json`, from a CSV in the format of the paper's Fig. 5 table, or from
//! a SCALE-Sim topology CSV (dense, or with the Fig. 5 zero-percentage columns added).
//!
//! Every pass of a conv/linear layer (K x CRS x PQ) is lowered to a matrix multiply
//! `[m x red] · [red x n]` whose first operand is broadcast along PE rows and the second
//! along PE columns:
//! forward `W·col`: m = K, red = CRS, n = PQ; backward `Wᵀ·dY`: m = CRS, red = K, n = PQ;
//! weight gradient `dY·colᵀ`: m = K, red = PQ, n = CRS.

use std::path::Path;
use tern_core::{Error, Result};

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct MmOp {
    pub name: String,
    pub pass: String,
    /// The layer's K, CRS, PQ (as the paper's table lists them).
    pub k: usize,
    pub crs: usize,
    pub pq: usize,
    /// Zero fractions of the row operand and the column operand.
    pub row_zero: f64,
    pub col_zero: f64,
    /// A measured FLOP/cycle to compare against (the paper's Fig. 5 column), if given.
    pub reference_flops_per_cycle: Option<f64>,
    /// Elements of the layer's input feature map per image (C·H·W), when the workload knows
    /// it: the DRAM size of the operand the engine sees lowered (im2col).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ifm_words: Option<u64>,
}

impl MmOp {
    /// An op without a reference measurement.
    pub fn new(name: &str, pass: &str, k: usize, crs: usize, pq: usize, row_zero: f64, col_zero: f64) -> Self {
        MmOp {
            name: name.into(),
            pass: pass.into(),
            k,
            crs,
            pq,
            row_zero,
            col_zero,
            reference_flops_per_cycle: None,
            ifm_words: None,
        }
    }

    /// (m, red, n) of the lowered matrix multiply.
    pub fn dims(&self) -> (usize, usize, usize) {
        match self.pass.as_str() {
            "backward" => (self.crs, self.k, self.pq),
            "weight_grad" => (self.k, self.pq, self.crs),
            _ => (self.k, self.crs, self.pq),
        }
    }
    /// Dense multiply-adds.
    pub fn macs(&self) -> u64 {
        (self.k * self.crs * self.pq) as u64
    }
}

/// A point-wise layer of the forward program (inference BN, ReLU, residual add), run as
/// ptWiseOps on the output buffers.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PtLayer {
    pub name: String,
    /// `bn`, `relu` or `add`.
    pub kind: String,
    /// Outputs it updates, per image.
    pub elements: usize,
}

#[derive(Clone, Debug, Default)]
pub struct Workload {
    pub ops: Vec<MmOp>,
    /// The forward program's point-wise layers (empty for a Fig. 5-style CSV).
    pub pt_layers: Vec<PtLayer>,
    pub source: String,
}

/// The largest K, CRS or PQ a workload may give (16.7 M), and the largest K·CRS·PQ (1.8e13
/// multiply-adds): sizes from files are checked before the simulator allocates or loops on them.
pub const MAX_DIM: usize = 1 << 24;
pub const MAX_MACS: u64 = 1 << 44;

/// Rejects an mmOp shape with a zero or an oversized dimension.
fn check_shape(path: &Path, what: &str, k: usize, crs: usize, pq: usize) -> Result<()> {
    for (n, v) in [("k", k), ("crs", crs), ("pq", pq)] {
        if v == 0 || v > MAX_DIM {
            return Err(Error::format(path, format!("{what}.{n} = {v}: expected 1..={MAX_DIM}")));
        }
    }
    if (k as u64) * (crs as u64) * (pq as u64) > MAX_MACS {
        return Err(Error::format(path, format!("{what}: K·CRS·PQ = {k}·{crs}·{pq} exceeds {MAX_MACS}")));
    }
    Ok(())
}

fn frac(path: &Path, what: &str, v: f64) -> Result<f64> {
    if !(0.0..=1.0).contains(&v) {
        return Err(Error::format(path, format!("{what} = {v}: expected a fraction in [0, 1]")));
    }
    Ok(v)
}

impl Workload {
    /// Reads `.json` (the profiler's workload) or `.csv` (columns `layer, weight_zero_pct,
    /// ifm_zero_pct, k, crs, pq`; others ignored; forward passes).
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        if path.extension().is_some_and(|e| e == "json") {
            Self::from_json(path, &text)
        } else {
            Self::from_csv(path, &text)
        }
    }

    /// Parses the profiler's workload JSON (named `path` in errors).
    pub fn from_json(path: &Path, text: &str) -> Result<Self> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::format(path, format!("not JSON: {e}")))?;
        let ops =
            v["mm_ops"].as_array().ok_or_else(|| Error::format(path, "no `mm_ops` array: not a tern workload"))?;
        let mut out = Vec::new();
        for (i, o) in ops.iter().enumerate() {
            let field = |k: &str| {
                o[k].as_u64()
                    .map(|x| x as usize)
                    .ok_or_else(|| Error::format(path, format!("mm_ops[{i}].{k}: expected a count")))
            };
            let z = |j: usize| {
                o["zero_frac"][j]
                    .as_f64()
                    .ok_or_else(|| Error::format(path, format!("mm_ops[{i}].zero_frac[{j}]: expected a number")))
            };
            let pass = o["pass"].as_str().unwrap_or("forward").to_string();
            if !["forward", "backward", "weight_grad"].contains(&pass.as_str()) {
                return Err(Error::format(
                    path,
                    format!("mm_ops[{i}].pass = `{pass}`: expected forward, backward or weight_grad"),
                ));
            }
            out.push(MmOp {
                name: o["name"].as_str().unwrap_or("?").to_string(),
                pass,
                k: field("k")?,
                crs: field("crs")?,
                pq: field("pq")?,
                row_zero: frac(path, "zero_frac[0]", z(0)?)?,
                col_zero: frac(path, "zero_frac[1]", z(1)?)?,
                reference_flops_per_cycle: None,
                ifm_words: match &o["ifm_elems"] {
                    serde_json::Value::Null => None,
                    v => Some(v.as_u64().filter(|&x| x > 0 && x <= MAX_MACS).ok_or_else(|| {
                        Error::format(path, format!("mm_ops[{i}].ifm_elems: expected a count in 1..={MAX_MACS}"))
                    })?),
                },
            });
        }
        let mut pt_layers = Vec::new();
        for (i, p) in v["pt_ops"].as_array().map(Vec::as_slice).unwrap_or(&[]).iter().enumerate() {
            let kind = p["kind"].as_str().unwrap_or("").to_string();
            if !["bn", "relu", "add"].contains(&kind.as_str()) {
                return Err(Error::format(path, format!("pt_ops[{i}].kind = `{kind}`: expected bn, relu or add")));
            }
            let elements = p["elements"]
                .as_u64()
                .ok_or_else(|| Error::format(path, format!("pt_ops[{i}].elements: expected a count")))?;
            pt_layers.push(PtLayer {
                name: p["name"].as_str().unwrap_or("?").to_string(),
                kind,
                elements: elements as usize,
            });
        }
        for (i, o) in out.iter().enumerate() {
            check_shape(path, &format!("mm_ops[{i}]"), o.k, o.crs, o.pq)?;
        }
        Ok(Workload { ops: out, pt_layers, source: path.display().to_string() })
    }

    /// Parses a Fig. 5-style or a SCALE-Sim topology CSV (named `path` in errors).
    pub fn from_csv(path: &Path, text: &str) -> Result<Self> {
        let mut lines = text.lines().filter(|l| !l.trim().is_empty());
        let header: Vec<String> = lines
            .next()
            .ok_or_else(|| Error::format(path, "empty file"))?
            .split(',')
            .map(|s| s.trim().to_lowercase())
            .collect();
        if header.iter().any(|h| h == "ifmap height") {
            return Self::from_scalesim(path, &header, lines);
        }
        let col = |name: &str| {
            header.iter().position(|h| h == name).ok_or_else(|| {
                Error::format(
                    path,
                    format!("no `{name}` column (need layer, weight_zero_pct, ifm_zero_pct, k, crs, pq)"),
                )
            })
        };
        let (cl, cw, ci, ck, cc, cp) =
            (col("layer")?, col("weight_zero_pct")?, col("ifm_zero_pct")?, col("k")?, col("crs")?, col("pq")?);
        let cf = header.iter().position(|h| h == "flops_per_cycle");
        let mut ops = Vec::new();
        for (row, line) in lines.enumerate() {
            let cells: Vec<&str> = line.split(',').map(|s| s.trim()).collect();
            let get = |c: usize, what: &str| -> Result<&str> {
                cells.get(c).copied().ok_or_else(|| Error::format(path, format!("row {}: no `{what}` value", row + 2)))
            };
            let num = |c: usize, what: &str| -> Result<f64> {
                get(c, what)?
                    .parse::<f64>()
                    .map_err(|_| Error::format(path, format!("row {}: `{what}` is not a number", row + 2)))
            };
            let count = |c: usize, what: &str| -> Result<usize> {
                get(c, what)?
                    .parse::<usize>()
                    .map_err(|_| Error::format(path, format!("row {}: `{what}` is not a whole number", row + 2)))
            };
            ops.push(MmOp {
                name: get(cl, "layer")?.to_string(),
                pass: "forward".into(),
                k: count(ck, "k")?,
                crs: count(cc, "crs")?,
                pq: count(cp, "pq")?,
                row_zero: frac(path, "weight_zero_pct/100", num(cw, "weight_zero_pct")? / 100.0)?,
                col_zero: frac(path, "ifm_zero_pct/100", num(ci, "ifm_zero_pct")? / 100.0)?,
                reference_flops_per_cycle: match cf {
                    Some(c) => Some(num(c, "flops_per_cycle")?),
                    None => None,
                },
                ifm_words: None,
            });
        }
        for (i, o) in ops.iter().enumerate() {
            check_shape(path, &format!("row {}", i + 2), o.k, o.crs, o.pq)?;
        }
        Ok(Workload { ops, pt_layers: Vec::new(), source: path.display().to_string() })
    }
}

impl Workload {
    /// A SCALE-Sim topology (`Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter
    /// Width, Channels, Num Filter, Strides`, trailing commas allowed) as forward ops: K = Num
    /// Filter, CRS = Channels·R·S, PQ = the output map SCALE-Sim computes (IFMAP already
    /// padded: P = (H − R)/stride + 1). Optional `weight_zero_pct` / `ifm_zero_pct` columns
    /// give the zero fractions (dense without them).
    fn from_scalesim<'a>(path: &Path, header: &[String], lines: impl Iterator<Item = &'a str>) -> Result<Self> {
        let col = |name: &str| header.iter().position(|h| h == name);
        let need = |name: &str| {
            col(name).ok_or_else(|| Error::format(path, format!("no `{name}` column in a SCALE-Sim topology")))
        };
        let (cl, ch, cw, cr, cs, cc, ck, cst) = (
            need("layer name")?,
            need("ifmap height")?,
            need("ifmap width")?,
            need("filter height")?,
            need("filter width")?,
            need("channels")?,
            need("num filter")?,
            need("strides")?,
        );
        let (czw, czi) = (col("weight_zero_pct"), col("ifm_zero_pct"));
        let mut ops = Vec::new();
        for (row, line) in lines.enumerate() {
            let cells: Vec<&str> = line.split(',').map(str::trim).collect();
            let get = |c: usize, what: &str| -> Result<&str> {
                cells
                    .get(c)
                    .copied()
                    .filter(|v| !v.is_empty())
                    .ok_or_else(|| Error::format(path, format!("row {}: no `{what}` value", row + 2)))
            };
            let count = |c: usize, what: &str| -> Result<usize> {
                get(c, what)?.parse::<usize>().ok().filter(|&v| v > 0 && v <= MAX_DIM).ok_or_else(|| {
                    Error::format(path, format!("row {}: `{what}` is not a whole number in 1..={MAX_DIM}", row + 2))
                })
            };
            let pct = |c: Option<usize>, what: &str| -> Result<f64> {
                match c {
                    None => Ok(0.0),
                    Some(c) => {
                        let v = get(c, what)?
                            .parse::<f64>()
                            .map_err(|_| Error::format(path, format!("row {}: `{what}` is not a number", row + 2)))?;
                        frac(path, &format!("row {}: {what}/100", row + 2), v / 100.0)
                    }
                }
            };
            let name = get(cl, "layer name")?.to_string();
            let (h, w, r, s, c, k, stride) = (
                count(ch, "ifmap height")?,
                count(cw, "ifmap width")?,
                count(cr, "filter height")?,
                count(cs, "filter width")?,
                count(cc, "channels")?,
                count(ck, "num filter")?,
                count(cst, "strides")?,
            );
            if r > h || s > w {
                return Err(Error::format(
                    path,
                    format!("row {}: a {r}x{s} filter does not fit a {h}x{w} input", row + 2),
                ));
            }
            let (p, q) = ((h - r) / stride + 1, (w - s) / stride + 1);
            let mut op = MmOp::new(
                &name,
                "forward",
                k,
                c * r * s,
                p * q,
                pct(czw, "weight_zero_pct")?,
                pct(czi, "ifm_zero_pct")?,
            );
            op.ifm_words = Some((c * h * w) as u64);
            check_shape(path, &format!("row {}", row + 2), op.k, op.crs, op.pq)?;
            ops.push(op);
        }
        if ops.is_empty() {
            return Err(Error::format(path, "a SCALE-Sim topology without layers"));
        }
        Ok(Workload { ops, pt_layers: Vec::new(), source: path.display().to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_scalesim_topologies() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("alexnet.csv");
        // SCALE-Sim's own layout: spaces around cells, a trailing comma
        std::fs::write(
            &csv,
            "Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides,\n\
             Conv1     ,224         ,224        ,11           ,11          ,3       ,96        ,4      ,\n\
             Conv2     ,27         ,27        ,5            ,5           ,96      ,256       ,1      ,\n",
        )
        .unwrap();
        let w = Workload::load(&csv).unwrap();
        assert_eq!(w.ops.len(), 2);
        // (224 − 11)/4 + 1 = 54
        assert_eq!((w.ops[0].k, w.ops[0].crs, w.ops[0].pq), (96, 3 * 11 * 11, 54 * 54));
        assert_eq!((w.ops[1].k, w.ops[1].crs, w.ops[1].pq), (256, 96 * 25, 23 * 23));
        assert_eq!((w.ops[0].row_zero, w.ops[0].col_zero), (0.0, 0.0));
        // the input feature map as stored (the memory model's size of the lowered operand)
        assert_eq!((w.ops[0].ifm_words, w.ops[1].ifm_words), (Some(3 * 224 * 224), Some(96 * 27 * 27)));
        // with zero percentages
        std::fs::write(
            &csv,
            "Layer name,IFMAP Height,IFMAP Width,Filter Height,Filter Width,Channels,Num Filter,Strides,weight_zero_pct,ifm_zero_pct\nc,8,8,3,3,4,16,1,40,25\n",
        )
        .unwrap();
        let w = Workload::load(&csv).unwrap();
        assert_eq!((w.ops[0].pq, w.ops[0].row_zero, w.ops[0].col_zero), (36, 0.4, 0.25));
        // bad rows are named
        std::fs::write(&csv, "Layer name,IFMAP Height,IFMAP Width,Filter Height,Filter Width,Channels,Num Filter,Strides\nc,2,8,3,3,4,16,1\n").unwrap();
        assert!(Workload::load(&csv).unwrap_err().to_string().contains("row 2: a 3x3 filter"));
        std::fs::write(&csv, "Layer name,IFMAP Height,IFMAP Width,Filter Height,Filter Width,Channels,Num Filter,Strides\nc,8,8,3,3,0,16,1\n").unwrap();
        assert!(Workload::load(&csv).unwrap_err().to_string().contains("channels"));
    }

    #[test]
    fn reads_fig5_csv_and_profiler_json() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("w.csv");
        std::fs::write(
            &csv,
            "layer,weight_zero_pct,ifm_zero_pct,flops_per_cycle,k,crs,pq\n1,60.41,0.00,1974.86,64,147,12544\n",
        )
        .unwrap();
        let w = Workload::load(&csv).unwrap();
        assert_eq!(w.ops[0].dims(), (64, 147, 12544));
        assert!((w.ops[0].row_zero - 0.6041).abs() < 1e-12);
        std::fs::write(&csv, "layer,k,crs,pq\n1,2,3,4\n").unwrap();
        assert!(Workload::load(&csv).unwrap_err().to_string().contains("weight_zero_pct"));
        std::fs::write(&csv, "layer,weight_zero_pct,ifm_zero_pct,k,crs,pq\n1,150,0,2,3,4\n").unwrap();
        assert!(Workload::load(&csv).unwrap_err().to_string().contains("fraction"));

        let js = dir.path().join("w.json");
        std::fs::write(
            &js,
            r#"{"mm_ops":[{"name":"c","pass":"backward","k":8,"crs":72,"pq":100,"zero_frac":[0.4,0.1]}]}"#,
        )
        .unwrap();
        let w = Workload::load(&js).unwrap();
        assert_eq!(w.ops[0].dims(), (72, 8, 100));
        assert!(w.pt_layers.is_empty());
        assert_eq!(w.ops[0].ifm_words, None);
        // the input feature map's size, when the profiler wrote it, and a bad one named
        let with_ifm = |v: &str| {
            format!(
                r#"{{"mm_ops":[{{"name":"c","pass":"forward","k":8,"crs":72,"pq":100,"zero_frac":[0,0],"ifm_elems":{v}}}]}}"#
            )
        };
        std::fs::write(&js, with_ifm("800")).unwrap();
        assert_eq!(Workload::load(&js).unwrap().ops[0].ifm_words, Some(800));
        for bad in ["0", "-3", "\"x\"", "1e30"] {
            std::fs::write(&js, with_ifm(bad)).unwrap();
            let e = Workload::load(&js).unwrap_err().to_string();
            assert!(e.contains("mm_ops[0].ifm_elems") && e.contains("w.json"), "{bad}: {e}");
        }
        std::fs::write(
            &js,
            r#"{"mm_ops":[],"pt_ops":[{"name":"b","kind":"bn","elements":800},{"name":"r","kind":"relu","elements":800}]}"#,
        )
        .unwrap();
        let w = Workload::load(&js).unwrap();
        assert_eq!(w.pt_layers[1], PtLayer { name: "r".into(), kind: "relu".into(), elements: 800 });
        std::fs::write(&js, r#"{"mm_ops":[],"pt_ops":[{"name":"b","kind":"pool","elements":8}]}"#).unwrap();
        assert!(Workload::load(&js).unwrap_err().to_string().contains("pt_ops[0].kind"));
        std::fs::write(&js, r#"{"layers":[]}"#).unwrap();
        assert!(Workload::load(&js).unwrap_err().to_string().contains("mm_ops"));
    }
}
