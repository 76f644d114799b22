//! What a job reads besides flags: pretrained weights with their architecture and preprocessing, and the
//! image tasks of a data folder.
//!
//! Architecture facts come from the weights ([`crate::io::open_pretrained`]); a flag that contradicts them
//! (`--preset`, `--in-chans`) is an error naming both values. Preprocessing comes from the folder's
//! `pretrained_cfg` (timm's defaults otherwise), and a preprocessing flag (`--size`, `--crop-pct`, ...)
//! overrides it: evaluating at another resolution is a legitimate choice, a different network is not.

use crate::data::images::{BadImages, CropMode, ImageSet, Preprocess};
use crate::data::layout::{self, ImageList, Layout};
use crate::data::transform::Interpolation;
use crate::data::Examples;
use crate::error::{Error, Result};
use crate::io::{open_pretrained, PretrainedCfg, PretrainedModel};
use crate::nn::ConvNeXtConfig;
use std::path::{Path, PathBuf};

/// The architecture flags a user may give beside the weights.
#[derive(Clone, Debug, Default)]
pub struct ModelFlags {
    /// `--preset`.
    pub preset: Option<String>,
    /// `--in-chans`.
    pub in_chans: Option<usize>,
}

/// Pretrained weights, their architecture checked against the flags.
pub fn resolve_model(weights: &Path, flags: &ModelFlags) -> Result<PretrainedModel> {
    let model = open_pretrained(weights)?;
    if let Some(p) = &flags.preset {
        let named = ConvNeXtConfig::preset(p)?;
        let got = &model.config;
        if (&named.dims, &named.depths, named.conv_mlp, named.use_grn)
            != (&got.dims, &got.depths, got.conv_mlp, got.use_grn)
        {
            return Err(Error::invalid(
                "weights",
                format!(
                    "--preset {p} (dims {:?}, depths {:?}{}) contradicts {} (dims {:?}, depths {:?}{}{})",
                    named.dims,
                    named.depths,
                    if named.use_grn { ", v2" } else { "" },
                    weights.display(),
                    got.dims,
                    got.depths,
                    if got.use_grn { ", v2" } else { "" },
                    model
                        .architecture
                        .as_ref()
                        .map_or(String::new(), |a| format!(": {a}")),
                ),
            ));
        }
    }
    if let Some(c) = flags.in_chans {
        if c != model.config.in_chans {
            return Err(Error::invalid(
                "weights",
                format!(
                    "--in-chans {c} contradicts {}, whose stem takes {} channels",
                    weights.display(),
                    model.config.in_chans
                ),
            ));
        }
    }
    Ok(model)
}

/// Preprocessing flags; each overrides the weights' `pretrained_cfg`.
#[derive(Clone, Debug, Default)]
pub struct PreprocessFlags {
    /// `--preprocess vtab|imagenet`: a named preset instead of the weights' config.
    pub preset: Option<String>,
    /// `--size`.
    pub size: Option<usize>,
    /// `--crop-pct`.
    pub crop_pct: Option<f64>,
    /// `--crop-mode`.
    pub crop_mode: Option<String>,
    /// `--interpolation`.
    pub interpolation: Option<String>,
    /// `--mean`.
    pub mean: Option<Vec<f32>>,
    /// `--std`.
    pub std: Option<Vec<f32>>,
    /// `--augment`.
    pub augment: bool,
}

/// The preprocessing for `model`: the named preset if given, else the weights' `pretrained_cfg` (timm's
/// ImageNet defaults where it is silent), then each flag on top.
pub fn resolve_preprocess(model: &PretrainedModel, flags: &PreprocessFlags) -> Result<Preprocess> {
    let mut p = match &flags.preset {
        Some(name) => Preprocess::preset(name)?,
        None => {
            let mut p = Preprocess::imagenet(224);
            if let Some(cfg) = &model.pretrained_cfg {
                if let Some(size) = &cfg.input_size {
                    match size.as_slice() {
                        [_, h, w] if h == w => p.size = *h,
                        other => {
                            return Err(Error::invalid(
                                "preprocess",
                                format!(
                                    "{}: input_size {other:?} is not (C, S, S) with a square side; \
                                     give --size",
                                    model.weights.display()
                                ),
                            ))
                        }
                    }
                }
                if let Some(c) = cfg.crop_pct {
                    p.crop_pct = c;
                }
                if let Some(m) = &cfg.crop_mode {
                    p.crop_mode = CropMode::parse(m)?;
                }
                if let Some(i) = &cfg.interpolation {
                    p.interpolation = Interpolation::parse(i)?;
                }
                if let Some(m) = &cfg.mean {
                    p.mean = m.clone();
                }
                if let Some(s) = &cfg.std {
                    p.std = s.clone();
                }
            }
            p
        }
    };
    p.channels = model.config.in_chans;
    if p.channels == 1 && p.mean.len() == 3 {
        // A grey network with RGB statistics: the mean of the three channels' values.
        p.mean = vec![p.mean.iter().sum::<f32>() / 3.0];
        p.std = vec![p.std.iter().sum::<f32>() / 3.0];
    }
    if let Some(s) = flags.size {
        p.size = s;
    }
    if let Some(c) = flags.crop_pct {
        p.crop_pct = c;
    }
    if let Some(m) = &flags.crop_mode {
        p.crop_mode = CropMode::parse(m)?;
    }
    if let Some(i) = &flags.interpolation {
        p.interpolation = Interpolation::parse(i)?;
    }
    if let Some(m) = &flags.mean {
        p.mean = m.clone();
    }
    if let Some(s) = &flags.std {
        p.std = s.clone();
    }
    p.augment = flags.augment;
    p.check()?;
    Ok(p)
}

/// The training and evaluation images of a task folder.
#[derive(Debug)]
pub struct ImageTask {
    /// The task's folder.
    pub dir: PathBuf,
    /// How it is laid out.
    pub layout: Layout,
    /// What training draws from (augmented if the preprocessing says so).
    pub train: ImageSet,
    /// What is scored.
    pub test: ImageSet,
}

/// How to load the images of a task.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// The preprocessing (its `augment` applies to the training split only).
    pub preprocess: Preprocess,
    /// Fail on an unreadable image, or skip it and count it.
    pub bad_images: BadImages,
    /// Show progress bars.
    pub progress: bool,
}

/// The two lists of a task folder: (train, test). ImageFolder: `train/` with `val/` or `test/`, or one
/// flat folder of classes, of which a stratified tenth is held out for evaluation (said on stderr).
/// VTAB-1k: `train800val200.txt` and `test.txt`, or the `train`/`test` lists named.
pub fn task_lists(dir: &Path, vtab_lists: (&str, &str)) -> Result<(Layout, ImageList, ImageList)> {
    let layout = layout::detect(dir)?;
    let (train, test) = match layout {
        Layout::Idx => {
            return Err(Error::invalid(
                "data",
                format!(
                "{} holds IDX files: images of this layout go through --data-dir on the IDX path",
                dir.display()
            ),
            ))
        }
        Layout::VtabLists => {
            let mut lists = layout::vtab_lists(dir, &[vtab_lists.0, vtab_lists.1])?;
            let test = lists.pop().expect("two lists were read");
            (lists.pop().expect("two lists were read"), test)
        }
        Layout::ImageFolder => {
            let train_dir = dir.join("train");
            let eval_dir = ["val", "test"]
                .iter()
                .map(|s| dir.join(s))
                .find(|d| d.is_dir());
            let (train_root, eval_root) = if train_dir.is_dir() {
                let Some(e) = eval_dir else {
                    return Err(Error::invalid(
                        "data",
                        format!(
                            "{} has train/ but neither val/ nor test/ to evaluate on",
                            dir.display()
                        ),
                    ));
                };
                (train_dir, Some(e))
            } else {
                (dir.to_path_buf(), None)
            };
            let (train, skipped) = layout::image_folder(&train_root, None)?;
            let mut skipped_total = skipped;
            let test = match eval_root {
                Some(e) => {
                    let (t, s) = layout::image_folder(&e, Some(&train.class_names))?;
                    skipped_total += s;
                    t
                }
                None => ImageList {
                    items: Vec::new(),
                    class_names: train.class_names.clone(),
                },
            };
            if skipped_total > 0 {
                eprintln!(
                    "data: skipped {skipped_total} file(s) that are not .jpg, .jpeg or .png in {}",
                    dir.display()
                );
            }
            (train, test)
        }
    };
    Ok((layout, train, test))
}

/// Loads a task folder's images (see [`task_lists`]): decoded in parallel, preprocessed, kept in memory
/// as 8-bit pixels. Says on stderr which layout it found and what it loaded.
pub fn load_task(dir: &Path, vtab: (&str, &str), opts: &LoadOptions) -> Result<ImageTask> {
    let (layout, train_list, test_list) = task_lists(dir, vtab)?;
    eprintln!("data: {} in {}", layout.describe(), dir.display());
    let eval_pre = Preprocess {
        augment: false,
        ..opts.preprocess.clone()
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let train = ImageSet::load(
        train_list,
        opts.preprocess.clone(),
        opts.bad_images,
        &format!("{name} train"),
        opts.progress,
    )?;
    let (train, test) = if test_list.items.is_empty() {
        // A flat ImageFolder: hold out a stratified tenth (at least one image per class) for evaluation.
        let smallest = train.class_counts().into_iter().min().unwrap_or(0);
        if smallest < 2 {
            return Err(Error::invalid(
                "data",
                format!(
                    "{} has no val/ or test/ folder and a class with {smallest} image(s): nothing can be \
                     held out for evaluation",
                    dir.display()
                ),
            ));
        }
        let k = (smallest / 10).max(1);
        // Every class has at least 2k images (k ≤ smallest / 10, at least 1), so at least k stay.
        let (held, rest) =
            crate::data::per_class_indices(train.labels(), train.classes(), "data", k, 1, 0x5A11D)?;
        let (rest, held) = (train.subset(&rest)?, train.subset(&held)?);
        eprintln!(
            "data: no val/ or test/ folder: holding out {k} image(s) per class ({} in all) for evaluation",
            held.len()
        );
        let held = held.with_augment(false)?;
        (rest, held)
    } else {
        let test = ImageSet::load(
            test_list,
            eval_pre,
            opts.bad_images,
            &format!("{name} test"),
            opts.progress,
        )?;
        (train, test)
    };
    for (what, set) in [("train", &train), ("test", &test)] {
        if !set.skipped.is_empty() {
            eprintln!(
                "warning: {what}: skipped {} unreadable image(s) (--skip-bad-images); first: {}",
                set.skipped.len(),
                set.skipped[0]
            );
        }
    }
    eprintln!(
        "data: {} training and {} test images, {} classes, {}",
        train.len(),
        test.len(),
        train.classes(),
        opts.preprocess.describe()
    );
    Ok(ImageTask {
        dir: dir.to_path_buf(),
        layout,
        train,
        test,
    })
}

/// The file beside a fine-tuned adapter or model that says how its inputs were preprocessed and what its
/// classes are called (`{"label_names": [...], "pretrained_cfg": {...}}`, timm's field names).
pub const DATA_CONFIG_FILE: &str = "data_config.json";

/// What [`DATA_CONFIG_FILE`] holds.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DataConfig {
    /// The class names, indexed by label.
    pub label_names: Vec<String>,
    /// The preprocessing the network was fine-tuned with.
    pub pretrained_cfg: PretrainedCfg,
}

/// `p` in timm's `pretrained_cfg` fields.
pub fn pretrained_cfg_of(p: &Preprocess) -> PretrainedCfg {
    PretrainedCfg {
        input_size: Some(vec![p.channels, p.size, p.size]),
        crop_pct: Some(p.crop_pct),
        crop_mode: Some(p.crop_mode.name().into()),
        interpolation: Some(p.interpolation.name().into()),
        mean: Some(p.mean.clone()),
        std: Some(p.std.clone()),
    }
}

/// Writes [`DATA_CONFIG_FILE`] into `dir` (atomically).
pub fn write_data_config(dir: &Path, label_names: &[String], p: &Preprocess) -> Result<()> {
    let cfg = DataConfig {
        label_names: label_names.to_vec(),
        pretrained_cfg: pretrained_cfg_of(p),
    };
    let json = serde_json::to_string_pretty(&cfg).expect("the config serialises");
    crate::io::atomic_write(&dir.join(DATA_CONFIG_FILE), json.as_bytes())
}

/// Reads [`DATA_CONFIG_FILE`] from `dir` if it is there.
pub fn read_data_config(dir: &Path) -> Result<Option<DataConfig>> {
    crate::io::read_json_file(&dir.join(DATA_CONFIG_FILE), "a liera data config")
}

/// Loads only the evaluation split of a task folder (`test.txt` of a VTAB-1k task, `val/` or `test/` of
/// an ImageFolder, or every image of a flat ImageFolder).
pub fn load_test(dir: &Path, opts: &LoadOptions) -> Result<ImageSet> {
    let (layout, train, test) = task_lists(dir, ("train800val200.txt", "test.txt"))?;
    eprintln!("data: {} in {}", layout.describe(), dir.display());
    let list = if test.items.is_empty() { train } else { test };
    let pre = Preprocess {
        augment: false,
        ..opts.preprocess.clone()
    };
    let set = ImageSet::load(list, pre, opts.bad_images, "test", opts.progress)?;
    if !set.skipped.is_empty() {
        eprintln!(
            "warning: skipped {} unreadable image(s) (--skip-bad-images); first: {}",
            set.skipped.len(),
            set.skipped[0]
        );
    }
    Ok(set)
}

/// The class count of the head an adapter folder saves (`head.fc` in `modules_to_save`), if it saves one.
pub fn adapter_head_classes(adapter: &Path) -> Result<Option<usize>> {
    let shapes = crate::io::model_folder::read_safetensors_shapes(
        &adapter.join(crate::peft::ADAPTER_WEIGHTS_FILE),
    )?;
    Ok(shapes
        .get("base_model.model.head.fc.weight")
        .and_then(|s| s.first().copied()))
}

/// The network for evaluation or prediction: `model`'s weights, then the adapter. Its head has the class
/// count of the adapter's saved head, else of the weights. When `data_classes` differs from that, it is an
/// error naming both counts, unless `allow_new_head`, which scores a freshly initialised head instead
/// (said on stderr).
pub fn load_for_inference(
    model: &PretrainedModel,
    adapter: Option<&Path>,
    data_classes: Option<usize>,
    allow_new_head: bool,
    device: &crate::backend::Device,
) -> Result<crate::nn::ConvNeXt> {
    let (head, source) = match adapter.map(adapter_head_classes).transpose()?.flatten() {
        Some(k) => (
            k,
            format!("the adapter {}", adapter.expect("given").display()),
        ),
        None => (
            model.config.num_classes,
            model.weights.display().to_string(),
        ),
    };
    let classes = match data_classes {
        Some(k) if k != head && !allow_new_head => {
            return Err(Error::invalid(
                "eval",
                format!(
                    "the data has {k} classes but the classifier of {source} has {head}; pass \
                     --allow-new-head to score a freshly initialised {k}-class head (chance accuracy)"
                ),
            ))
        }
        Some(k) if k != head => {
            eprintln!(
                "warning: --allow-new-head: the {head}-class head of {source} is replaced by a random \
                 {k}-class one"
            );
            k
        }
        _ => head,
    };
    let mut net = crate::nn::ConvNeXt::new(model.config.clone().with_classes(classes), device)?;
    for note in crate::io::load_model(&mut net, &model.weights)? {
        if adapter.is_none() || classes == model.config.num_classes {
            eprintln!("note: {note}");
        }
    }
    if let Some(dir) = adapter {
        if classes != head {
            return Err(Error::invalid(
                "eval",
                "--allow-new-head with an adapter that saves its own head: the adapter's head would not fit",
            ));
        }
        let cfg = crate::peft::load_adapter(&mut net, dir)?;
        eprintln!("adapter: {}", cfg.describe());
    }
    Ok(net)
}
