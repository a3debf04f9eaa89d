//! tern-onnx: models from elsewhere and to elsewhere. torchvision ResNets saved as
//! safetensors (`safetensors.torch.save_file(model.state_dict(), path)`) become tern models
//! and checkpoints; tern models leave as ONNX graphs (`proto` holds the schema's messages,
//! `export` and `import` the two directions).

pub mod export;
pub mod graph;
pub mod import;
pub mod proto;
pub mod torchvision;
