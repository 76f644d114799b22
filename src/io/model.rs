//! Model weights ↔ safetensors with timm's key names (the paths of [`Module::visit`]): `stem.0.weight`,
//! `stages.1.downsample.1.weight`, `stages.N.blocks.M.conv_dw.weight`, `.mlp.fc1.weight` (either MLP
//! layout), `.mlp.grn.weight` (v2), `.gamma` (v1), `head.norm.weight`, `head.fc.weight`.
//!
//! Loading is strict: a key the model has but the file lacks, a key the file has but the model lacks, or a
//! shape that differs is an error naming every such key with both shapes. Two tolerated differences, each
//! reported in the returned [`LoadNotes`]:
//! - shapes equal up to size-1 axes (a Linear MLP weight (4C, C) into a 1×1 conv (4C, C, 1, 1), or an
//!   original-repo GRN (1, 1, 1, C) into timm's (C)): the data is reshaped;
//! - a classifier with another class count (`head.fc.weight` (K', C) vs (K, C), with its bias): the file's
//!   head is not loaded and the model keeps its freshly initialised K-class head.

use super::safetensors::{read_safetensors, write_safetensors, HostTensor};
use crate::error::{Error, Result};
use crate::nn::Module;
use crate::tensor::Tensor;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// What a load did besides copying tensors one to one (layout conversions, a replaced head).
pub type LoadNotes = Vec<String>;

/// Saves the model's base parameters (not adapter factors) under their timm names, atomically.
///
/// ```
/// use liera::io::{load_model, save_model};
/// use liera::nn::{ConvNeXt, ConvNeXtConfig, Module};
/// use liera::Device;
/// let dev = Device::cpu();
/// let cfg = ConvNeXtConfig { in_chans: 1, num_classes: 3, dims: vec![8, 16], depths: vec![1, 1],
///                            ..ConvNeXtConfig::atto() };
/// let saved = ConvNeXt::new(cfg.clone().with_seed(1), &dev)?;
/// let dir = std::env::temp_dir().join(format!("liera-doc-io-{}", std::process::id()));
/// std::fs::create_dir_all(&dir).unwrap();
/// let path = dir.join("model.safetensors");
/// save_model(&saved, &path)?;
///
/// let mut loaded = ConvNeXt::new(cfg.with_seed(2), &dev)?; // other weights, same layout
/// let notes = load_model(&mut loaded, &path)?;
/// assert!(notes.is_empty()); // every key copied one to one
/// let values = |m: &ConvNeXt| -> Vec<Vec<f32>> {
///     m.named_parameters().iter().map(|(_, t)| t.to_vec().unwrap()).collect()
/// };
/// assert_eq!(values(&loaded), values(&saved)); // bit-exact
/// std::fs::remove_dir_all(&dir).unwrap();
/// # Ok::<(), liera::Error>(())
/// ```
pub fn save_model(model: &dyn Module, path: &Path) -> Result<()> {
    let mut tensors = Vec::new();
    model.visit("", &mut |name, p| {
        tensors.push((name.to_string(), p.tensor().clone()))
    });
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    write_safetensors(path, &tensors, Some(meta))
}

fn squeeze(shape: &[usize]) -> Vec<usize> {
    shape.iter().copied().filter(|&d| d != 1).collect()
}

const HEAD_W: &str = "head.fc.weight";
const HEAD_B: &str = "head.fc.bias";

/// Loads weights saved by [`save_model`] or by timm (`safetensors` export) into `model`, in place (the
/// parameters keep their identity and trainable flags). Returns notes on anything not copied one to one.
pub fn load_model(model: &mut dyn Module, path: &Path) -> Result<LoadNotes> {
    let mut file: BTreeMap<String, HostTensor> = read_safetensors(path)?.into_iter().collect();
    let mut expected: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    model.visit("", &mut |name, p| {
        expected.insert(name.to_string(), p.shape().dims().to_vec());
    });
    let mut notes = Vec::new();

    // A classifier for another class count: same input features, different rows.
    let head = (
        expected.get(HEAD_W).cloned(),
        file.get(HEAD_W).map(|t| t.shape.clone()),
    );
    if let (Some(want), Some(got)) = head {
        if want.len() == 2 && got.len() == 2 && want[1] == got[1] && want[0] != got[0] {
            notes.push(format!(
                "{HEAD_W}: the file's classifier has {} classes, the model {}; the file's head.fc was not \
                 loaded and the model keeps its freshly initialised {}-class head",
                got[0], want[0], want[0]
            ));
            file.remove(HEAD_W);
            expected.remove(HEAD_W);
            if file.get(HEAD_B).is_some_and(|b| b.shape == [got[0]]) {
                file.remove(HEAD_B);
                expected.remove(HEAD_B);
            }
        }
    }

    let mut problems = Vec::new();
    for (name, want) in &expected {
        match file.get(name) {
            None => problems.push(format!("missing key `{name}` (expected shape {want:?})")),
            Some(t) if t.shape != *want => {
                if squeeze(&t.shape) == squeeze(want) {
                    notes.push(format!(
                        "{name}: reshaped {:?} from the file to the model's {want:?}",
                        t.shape
                    ));
                } else {
                    problems.push(format!(
                        "key `{name}` has shape {:?} in the file, the model expects {want:?}",
                        t.shape
                    ));
                }
            }
            Some(_) => {}
        }
    }
    for (name, t) in &file {
        if !expected.contains_key(name) {
            problems.push(format!(
                "unexpected key `{name}` (shape {:?}) that the model does not have",
                t.shape
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Format {
            path: path.display().to_string(),
            msg: format!("weights do not fit the model: {}", problems.join("; ")),
        });
    }

    // Everything checked: now copy (so a failed load leaves the model untouched).
    let mut result = Ok(());
    model.visit_mut("", &mut |name, p| {
        if result.is_err() {
            return;
        }
        let Some(t) = file.get(name) else { return };
        result = Tensor::from_slice(&t.data, p.shape().clone(), p.tensor().device())
            .and_then(|v| p.tensor().assign(&v));
    });
    result?;
    Ok(notes)
}
