//! `tern data`: what a data set holds — counts per class, shapes — and a PNG grid of samples.

use crate::common::DataArgs;
use crate::table::Table;
use clap::Args;
use std::path::PathBuf;
use tern_data::Dataset;

#[derive(Args, Debug)]
pub struct DataCmdArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Write a grid of the first training images per class to this PNG file
    #[arg(long)]
    pub grid: Option<PathBuf>,
    /// Images per class in the grid
    #[arg(long, default_value_t = 8)]
    pub per_class: usize,
}

pub fn run(a: DataCmdArgs) -> anyhow::Result<()> {
    let s = a.data.load()?;
    println!("{}: images {:?} (channels, height, width), {} classes", s.name, s.train.shape, s.class_names.len());
    let (tr, te) = (s.train.counts_per_class(), s.test.counts_per_class());
    let mut t = Table::new(&["class", "name", "train", "test"]);
    for (i, n) in s.class_names.iter().enumerate() {
        t.row(vec![i.to_string(), n.clone(), tr[i].to_string(), te[i].to_string()]);
    }
    t.row(vec!["all".into(), String::new(), s.train.len().to_string(), s.test.len().to_string()]);
    print!("{}", t.render());
    let (mean, std) = s.train.channel_stats()?;
    println!("per-channel mean {mean:.4?}, std {std:.4?} (of values scaled to [0, 1])");
    if let Some(path) = a.grid {
        grid(&s.train, a.per_class.max(1))?.save(&path).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
        println!("sample grid ({} per class, one row per class) -> {}", a.per_class, path.display());
    }
    Ok(())
}

/// One row per class, the first `per_class` images of each, 2-pixel gaps.
fn grid(ds: &Dataset, per_class: usize) -> tern_core::Result<image::RgbImage> {
    let [c, h, w] = ds.shape;
    let gap = 2;
    let mut img = image::RgbImage::from_pixel(
        (per_class * (w + gap) + gap) as u32,
        (ds.classes * (h + gap) + gap) as u32,
        image::Rgb([255, 255, 255]),
    );
    let mut filled = vec![0usize; ds.classes];
    for i in 0..ds.len() {
        let class = ds.labels[i] as usize;
        if filled[class] >= per_class {
            continue;
        }
        let (x0, y0) = (gap + filled[class] * (w + gap), gap + class * (h + gap));
        let px = ds.image(i)?;
        for y in 0..h {
            for x in 0..w {
                let ch = |k: usize| px[(k.min(c - 1) * h + y) * w + x];
                img.put_pixel((x0 + x) as u32, (y0 + y) as u32, image::Rgb([ch(0), ch(1), ch(2)]));
            }
        }
        filled[class] += 1;
    }
    Ok(img)
}
