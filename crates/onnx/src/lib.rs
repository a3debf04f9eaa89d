//! tern-onnx: models from elsewhere and to elsewhere. torchvision ResNets saved as
//! safetensors (`safetensors.torch.save_file(model.state_dict(), path)`) become tern models
//! and checkpoints; tern models leave as ONNX graphs (`proto` holds the schema's messages,
//! `export` the mapping). ONNX import is the next step of this crate.

pub mod export;
pub mod proto;
pub mod torchvision;
