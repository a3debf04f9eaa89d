//! tern-onnx: models from elsewhere. Today: torchvision ResNets saved as safetensors
//! (`safetensors.torch.save_file(model.state_dict(), path)`) become tern models and
//! checkpoints. ONNX import and export are the next steps of this crate.

pub mod torchvision;
