//! Flags shared by several subcommands: which data set, where, and the model input size.

use clap::Args;
use std::path::PathBuf;
use tern_data::{load_named, DataKind, DataSplit};

#[derive(Args, Clone, Debug)]
pub struct DataArgs {
    /// Data set (folder: an ImageNet-style folder of class sub-folders)
    #[arg(long, default_value = "fashion-mnist", value_parser = ["fashion-mnist", "mnist", "cifar10", "folder"])]
    pub data: String,
    /// Where the data set lives (fashion-mnist defaults to /usr/share/datasets/fashion-mnist)
    #[arg(long)]
    pub data_path: Option<PathBuf>,
    /// Side length image folders are resized and centre-cropped to
    #[arg(long, default_value_t = 64)]
    pub image_size: usize,
    /// Image folders: decode each batch's files when it is needed (on all cores) instead of
    /// every image once at start [default: only when the decoded images exceed 4 GiB]; the
    /// input normalisation is then estimated from 2048 evenly spaced images
    #[arg(long)]
    pub stream: bool,
}

impl DataArgs {
    pub fn load(&self) -> anyhow::Result<DataSplit> {
        if self.image_size == 0 {
            anyhow::bail!("invalid value for --image-size: must be at least 1");
        }
        let kind = DataKind::parse(&self.data)?;
        if self.stream && kind != DataKind::Folder {
            anyhow::bail!("invalid value for --stream: only image folders (--data folder) stream from their files");
        }
        let in_memory_max = if self.stream { 0 } else { tern_data::folder::IN_MEMORY_MAX_BYTES };
        Ok(load_named(kind, self.data_path.as_deref(), self.image_size, in_memory_max)?)
    }
}

/// Parses `--input-size N`: a square side length in pixels (channels come from the data).
pub fn parse_input_size(s: &str) -> Result<usize, String> {
    let v: usize = s.parse().map_err(|_| format!("`{s}`: expected a side length in pixels"))?;
    if v == 0 {
        return Err("must be at least 1".into());
    }
    Ok(v)
}

/// Refuses data whose channel or class count differs from what the checkpoint was trained
/// on (the loader would otherwise fail deep inside a batch).
pub fn check_data_fits(
    checkpoint: &std::path::Path,
    model: &tern_train::ModelConfig,
    data: &DataSplit,
    data_flag: &str,
) -> anyhow::Result<()> {
    if data.test.shape[0] != model.in_shape[0] || data.class_names.len() != model.classes {
        anyhow::bail!(
            "{} was trained on {}-channel images with {} classes, but --data {} has {}-channel images with {} classes",
            checkpoint.display(),
            model.in_shape[0],
            model.classes,
            data_flag,
            data.test.shape[0],
            data.class_names.len()
        );
    }
    Ok(())
}

/// `--precision`: the math of convolutions and matrix multiplies on a GPU.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PrecisionArg {
    /// Strict FP32 (no tensor cores)
    Fp32,
    /// TF32 tensor cores (FP32 storage and accumulation, 10-bit mantissa products)
    Tf32,
    /// Mixed precision like PyTorch's bf16 autocast: activations and their gradients stored
    /// as bfloat16, bf16 tensor-core convolutions with FP32 accumulation; weights, optimizer,
    /// BN statistics, classifier and loss in FP32
    Bf16,
}

impl PrecisionArg {
    /// The flag's value as typed.
    pub fn name(self) -> &'static str {
        match self {
            PrecisionArg::Fp32 => "fp32",
            PrecisionArg::Tf32 => "tf32",
            PrecisionArg::Bf16 => "bf16",
        }
    }
}

/// Where a command runs.
#[derive(Args, Clone, Debug)]
pub struct DeviceArgs {
    /// Where to run: cpu, cuda (GPU 0) or cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Math of convolutions and matrix multiplies on a GPU: fp32, tf32 or bf16 (mixed precision,
    /// as PyTorch's bf16 autocast) [default: tf32 on cuda, like PyTorch's convolutions on
    /// Hopper]; the CPU always computes in FP32
    #[arg(long, value_enum)]
    pub precision: Option<PrecisionArg>,
    /// GPU convolution algorithms: deterministic (the same bits for the same inputs; a resume
    /// reuses the run's saved choices) or fastest (as PyTorch's cudnn.benchmark: some add
    /// partial sums in varying order)
    #[arg(long, value_enum, default_value = "deterministic")]
    pub algorithms: AlgorithmsArg,
    /// How a GPU stores images and conv filters: nhwc (channels last, what cuDNN's tensor-core
    /// kernels read natively) or nchw [default: nhwc on cuda]; the CPU always uses NCHW.
    /// Results and checkpoints do not depend on it
    #[arg(long, value_enum)]
    pub layout: Option<LayoutArg>,
}

/// `--layout`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayoutArg {
    Nchw,
    Nhwc,
}

/// `--algorithms`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AlgorithmsArg {
    Deterministic,
    Fastest,
}

impl DeviceArgs {
    /// The backend, and a description of it for metrics and reports.
    pub fn backend(&self) -> anyhow::Result<(Box<dyn tern_core::Backend>, serde_json::Value)> {
        let device: tern_core::Device = self.device.parse()?;
        match device {
            tern_core::Device::Cpu => {
                if let Some(p @ (PrecisionArg::Tf32 | PrecisionArg::Bf16)) = self.precision {
                    let name = p.name();
                    anyhow::bail!(
                        "invalid value for --precision: {name} needs --device cuda (the CPU computes in FP32)"
                    );
                }
                if self.algorithms != AlgorithmsArg::Deterministic {
                    anyhow::bail!(
                        "invalid value for --algorithms: fastest needs --device cuda (the CPU is always deterministic)"
                    );
                }
                if self.layout == Some(LayoutArg::Nhwc) {
                    anyhow::bail!("invalid value for --layout: nhwc needs --device cuda (the CPU stores NCHW)");
                }
                let info =
                    serde_json::json!({"device": "cpu", "precision": "fp32", "threads": rayon::current_num_threads()});
                Ok((Box::new(tern_core::CpuBackend), info))
            }
            tern_core::Device::Cuda(i) => {
                let p = match self.precision.unwrap_or(PrecisionArg::Tf32) {
                    PrecisionArg::Fp32 => tern_cuda::Precision::Fp32,
                    PrecisionArg::Tf32 => tern_cuda::Precision::Tf32,
                    PrecisionArg::Bf16 => tern_cuda::Precision::Bf16,
                };
                let alg = match self.algorithms {
                    AlgorithmsArg::Deterministic => tern_cuda::Algorithms::Deterministic,
                    AlgorithmsArg::Fastest => tern_cuda::Algorithms::Fastest,
                };
                let layout = match self.layout.unwrap_or(LayoutArg::Nhwc) {
                    LayoutArg::Nchw => tern_cuda::Layout::Nchw,
                    LayoutArg::Nhwc => tern_cuda::Layout::Nhwc,
                };
                let be = tern_cuda::CudaBackend::new(i, p, alg, layout)?;
                let info = serde_json::json!({
                    "device": device.to_string(), "gpu": be.gpu_name(), "precision": p.name(),
                    "algorithms": format!("{alg:?}").to_lowercase(), "layout": layout.name(),
                });
                Ok((Box::new(be), info))
            }
        }
    }
}
