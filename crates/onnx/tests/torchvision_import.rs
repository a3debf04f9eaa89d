//! torchvision-shaped ResNets (state dicts with torchvision's names, seeded weights and BN
//! statistics; `fixtures/make_torchvision_fixtures.py`), imported into tern from their
//! safetensors state dicts and from PyTorch's ONNX exports, reproduce PyTorch's eval-mode
//! logits; files that do not fit are refused, naming the keys.

use std::path::{Path, PathBuf};
use tern_core::{CpuBackend, Tensor};
use tern_train::Ctx;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The fixture's input and PyTorch's logits.
fn reference(arch: &str) -> (Tensor, Vec<f32>) {
    let f: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture(&format!("{arch}_w8.json"))).unwrap()).unwrap();
    let shape: Vec<usize> = f["input_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let to_vec = |k: &str| f[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect::<Vec<f32>>();
    (Tensor::from_vec(&shape, to_vec("input")), to_vec("logits"))
}

/// ‖got − want‖ / ‖want‖.
fn relative(got: &[f32], want: &[f32]) -> f64 {
    let (num, den) = got
        .iter()
        .zip(want)
        .fold((0.0f64, 0.0f64), |(n, d), (a, b)| (n + ((a - b) as f64).powi(2), d + (*b as f64).powi(2)));
    (num / den).sqrt()
}

/// The VGG fixture's input and logits (kept in safetensors: a 224-px image is large for JSON).
fn vgg_reference() -> (Tensor, Vec<f32>) {
    let bytes = std::fs::read(fixture("vgg11_bn_w4_io.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |k: &str| -> (Vec<usize>, Vec<f32>) {
        let v = st.tensor(k).unwrap();
        let data = v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        (v.shape().to_vec(), data)
    };
    let ((shape, x), (_, y)) = (f32s("input"), f32s("logits"));
    (Tensor::from_vec(&shape, x), y)
}

#[test]
fn torchvision_vgg_bn_imports_from_its_state_dict_and_its_onnx_export() {
    let (x, want) = vgg_reference();
    let (mut a, report) = tern_onnx::torchvision::import("vgg11_bn", &fixture("vgg11_bn_w4.safetensors"), 224).unwrap();
    assert!(report.missing.is_empty() && report.unmatched.is_empty());
    let (mut b, r) = tern_onnx::import::import(&fixture("vgg11_bn_w4.onnx")).unwrap();
    assert_eq!((r.model.name.as_str(), r.model.width, r.model.classes), ("vgg11_bn", 4, 5));
    for (how, m) in [("state dict", &mut a), ("ONNX", &mut b)] {
        let got = m.forward(&Ctx::new(&CpuBackend, false), &x);
        let rel = relative(got.data(), &want);
        assert!(rel < 1e-4, "vgg11_bn from its {how}: logits differ from PyTorch's by {rel:.2e}");
    }
}

#[test]
fn pytorchs_onnx_exports_import_with_pytorchs_logits() {
    for arch in ["resnet18", "resnet50"] {
        let (x, want) = reference(arch);
        let (mut model, report) = tern_onnx::import::import(&fixture(&format!("{arch}_w8.onnx"))).unwrap();
        assert_eq!(report.model.name, arch);
        assert_eq!((model.config.width, model.config.classes, model.config.in_shape), (8, 5, [3, 32, 32]));
        let got = model.forward(&Ctx::new(&CpuBackend, false), &x);
        let rel = relative(got.data(), &want);
        assert!(rel < 1e-4, "{arch}: logits differ from PyTorch's by {rel:.2e} (relative)");
    }
}

#[test]
fn a_default_pytorch_export_with_folded_bns_imports_with_pytorchs_logits() {
    let (x, want) = reference("resnet18");
    let (mut model, r) = tern_onnx::import::import(&fixture("resnet18_w8_folded.onnx")).unwrap();
    assert_eq!((r.model.name.as_str(), r.model.width), ("resnet18", 8));
    let got = model.forward(&Ctx::new(&CpuBackend, false), &x);
    let rel = relative(got.data(), &want);
    assert!(rel < 1e-4, "folded resnet18: logits differ from PyTorch's by {rel:.2e}");
}

#[test]
fn imported_resnets_reproduce_pytorchs_logits() {
    for arch in ["resnet18", "resnet50"] {
        let f: serde_json::Value =
            serde_json::from_slice(&std::fs::read(fixture(&format!("{arch}_w8.json"))).unwrap()).unwrap();
        let shape: Vec<usize> =
            f["input_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        let to_vec =
            |k: &str| f[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect::<Vec<f32>>();
        let (x, want) = (Tensor::from_vec(&shape, to_vec("input")), to_vec("logits"));
        let (mut model, report) =
            tern_onnx::torchvision::import(arch, &fixture(&format!("{arch}_w8.safetensors")), shape[2]).unwrap();
        assert!(report.skipped.iter().all(|k| k.ends_with("num_batches_tracked")));
        assert_eq!((model.config.width, model.config.classes), (8, 5));
        let be = CpuBackend;
        let got = model.forward(&Ctx::new(&be, false), &x);
        let (num, den) = got
            .data()
            .iter()
            .zip(&want)
            .fold((0.0f64, 0.0f64), |(n, d), (a, b)| (n + ((a - b) as f64).powi(2), d + (*b as f64).powi(2)));
        let rel = (num / den).sqrt();
        assert!(rel < 1e-4, "{arch}: logits differ from PyTorch's by {rel:.2e} (relative)");
    }
}

#[test]
fn a_state_dict_that_does_not_fit_is_refused_by_name() {
    // resnet18's file read as resnet34: the missing blocks are listed
    let e = tern_onnx::torchvision::import("resnet34", &fixture("resnet18_w8.safetensors"), 32)
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("resnet18_w8.safetensors") && e.contains("layer1.2.1.conv.weight"), "{e}");
    // a truncated file
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cut.safetensors");
    let bytes = std::fs::read(fixture("resnet18_w8.safetensors")).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
    let e = tern_onnx::torchvision::import("resnet18", &p, 32).err().expect("refused").to_string();
    assert!(e.contains("cut.safetensors") && e.contains("truncated"), "{e}");
    let e = tern_onnx::torchvision::import("vgg99", &p, 32).err().expect("refused").to_string();
    assert!(e.contains("--arch"), "{e}");
}
