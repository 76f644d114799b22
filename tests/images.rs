//! Image files end to end, on real images built from the embedded Fashion-MNIST data: decoding (every PNG
//! colour type exactly, JPEG within its error), the three data layouts and their errors, the preprocessed
//! image set, timm-layout model folders, and a short fine-tune through an image folder.

mod common;

use common::images::{
    colour, fashion, write_image_folder, write_jpeg, write_list, write_model_folder, write_png,
};
use common::temp::TempDir;
use image::ExtendedColorType;
use liera::data::images::{BadImages, ImageSet, Preprocess};
use liera::data::layout::{self, Layout};
use liera::data::transform::{normalize_into, Interpolation};
use liera::data::{decode_file, Examples, SplitMix64};
use liera::job::data::{load_task, resolve_model, resolve_preprocess, LoadOptions, ModelFlags};
use liera::job::{finetune, AdapterOptions, Checkpointing, Method, RunOptions, TaskData};
use liera::nn::ConvNeXtConfig;
use liera::Device;

fn err_text<T: std::fmt::Debug>(r: liera::Result<T>) -> String {
    r.unwrap_err().to_string()
}

#[test]
fn png_decodes_exactly_in_every_colour_type() {
    let s = TempDir::new("png");
    let (w, h) = (5, 3);
    let grey: Vec<u8> = (0..w * h).map(|i| (i * 17) as u8).collect();
    let rgb: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 % 256) as u8).collect();
    let luma = |p: &[u8]| {
        ((19595 * p[0] as u32 + 38470 * p[1] as u32 + 7471 * p[2] as u32 + 0x8000) >> 16) as u8
    };
    let as_rgb = |g: &[u8]| g.iter().flat_map(|&v| [v, v, v]).collect::<Vec<u8>>();

    // Grey: repeated into three channels, kept as is for one.
    let p = s.root().join("grey.png");
    write_png(&p, &grey, w, h, ExtendedColorType::L8);
    assert_eq!(decode_file(&p, 3).unwrap().pixels, as_rgb(&grey));
    assert_eq!(decode_file(&p, 1).unwrap().pixels, grey);
    // RGB, and its PIL luma for a one-channel network.
    let p = s.root().join("rgb.png");
    write_png(&p, &rgb, w, h, ExtendedColorType::Rgb8);
    let img = decode_file(&p, 3).unwrap();
    assert_eq!((img.width, img.height, img.channels), (w, h, 3));
    assert_eq!(img.pixels, rgb);
    assert_eq!(
        decode_file(&p, 1).unwrap().pixels,
        rgb.chunks(3).map(luma).collect::<Vec<_>>()
    );
    // RGBA and grey+alpha: alpha dropped, not composited.
    let rgba: Vec<u8> = rgb
        .chunks(3)
        .enumerate()
        .flat_map(|(i, c)| [c[0], c[1], c[2], (i * 40 % 256) as u8])
        .collect();
    let p = s.root().join("rgba.png");
    write_png(&p, &rgba, w, h, ExtendedColorType::Rgba8);
    assert_eq!(decode_file(&p, 3).unwrap().pixels, rgb);
    let la: Vec<u8> = grey.iter().flat_map(|&g| [g, 255 - g]).collect();
    let p = s.root().join("la.png");
    write_png(&p, &la, w, h, ExtendedColorType::La8);
    assert_eq!(decode_file(&p, 3).unwrap().pixels, as_rgb(&grey));
    // 16-bit: round(v·255/65535).
    let deep: Vec<u16> = (0..w * h * 3).map(|i| (i * 4099 % 65536) as u16).collect();
    // The encoder takes 16-bit samples in native byte order (it writes them big-endian).
    let bytes: Vec<u8> = deep.iter().flat_map(|v| v.to_ne_bytes()).collect();
    let p = s.root().join("rgb16.png");
    write_png(&p, &bytes, w, h, ExtendedColorType::Rgb16);
    let want: Vec<u8> = deep
        .iter()
        .map(|&v| ((v as u32 * 255 + 32767) / 65535) as u8)
        .collect();
    assert_eq!(decode_file(&p, 3).unwrap().pixels, want);
    let p = s.root().join("grey16.png");
    write_png(&p, &bytes[..w * h * 2], w, h, ExtendedColorType::L16);
    assert_eq!(decode_file(&p, 3).unwrap().pixels, as_rgb(&want[..w * h]));
    // Palette: looked up.
    let palette: Vec<u8> = vec![255, 0, 0, 0, 128, 0, 10, 20, 30];
    let indices: Vec<u8> = (0..w * h).map(|i| (i % 3) as u8).collect();
    let p = s.root().join("palette.png");
    {
        let f = std::fs::File::create(&p).unwrap();
        let mut enc = png::Encoder::new(f, w as u32, h as u32);
        enc.set_color(png::ColorType::Indexed);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_palette(palette.clone());
        enc.write_header()
            .unwrap()
            .write_image_data(&indices)
            .unwrap();
    }
    let want: Vec<u8> = indices
        .iter()
        .flat_map(|&i| palette[3 * i as usize..3 * i as usize + 3].to_vec())
        .collect();
    assert_eq!(decode_file(&p, 3).unwrap().pixels, want);
}

#[test]
fn jpeg_decodes_within_jpeg_error() {
    let s = TempDir::new("jpeg");
    let (grey, label) = &fashion(1, 1, 0)[0];
    let (w, h) = (40, 36);
    let rgb = colour(grey, *label, w, h);
    let p = s.root().join("x.jpg");
    write_jpeg(&p, &rgb, w, h);
    let img = decode_file(&p, 3).unwrap();
    assert_eq!((img.width, img.height), (w, h));
    let diffs: Vec<f64> = img
        .pixels
        .iter()
        .zip(&rgb)
        .map(|(&a, &b)| (a as f64 - b as f64).abs())
        .collect();
    let mean = diffs.iter().sum::<f64>() / diffs.len() as f64;
    // Quality 95 with 4:2:0 chroma subsampling on sharp edges: a few levels on average, never the picture
    // replaced (the worst pixels sit on colour edges that subsampling blurs).
    assert!(mean < 6.0, "mean abs error {mean}");
    assert!(diffs.iter().cloned().fold(0.0, f64::max) < 128.0);
}

#[test]
fn bad_image_files_are_named_errors() {
    let s = TempDir::new("bad");
    let (grey, label) = &fashion(1, 1, 0)[0];
    let good = s.root().join("good.png");
    write_png(
        &good,
        &colour(grey, *label, 28, 28),
        28,
        28,
        ExtendedColorType::Rgb8,
    );
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated.png",
            bytes[..bytes.len() / 2].to_vec(),
            "corrupt or truncated PNG",
        ),
        (
            "garbage.png",
            {
                let mut b = bytes.clone();
                for v in b.iter_mut().skip(40).take(60) {
                    *v ^= 0x5A;
                }
                b
            },
            "corrupt or truncated PNG",
        ),
        (
            "anim.png",
            b"GIF89a\x01\x00\x01\x00".to_vec(),
            "unsupported format",
        ),
        ("empty.jpg", Vec::new(), "empty"),
        (
            "cut.jpg",
            vec![0xFF, 0xD8, 0xFF, 0xE0, 0, 16],
            "corrupt or truncated JPEG",
        ),
        // A PNG whose header claims 0×0 pixels.
        (
            "zero.png",
            {
                let mut b = bytes.clone();
                b[16..24].copy_from_slice(&[0; 8]);
                b
            },
            "",
        ),
    ];
    for (name, content, phrase) in cases {
        let p = s.root().join(name);
        std::fs::write(&p, content).unwrap();
        let e = err_text(decode_file(&p, 3));
        assert!(e.contains(name), "{name}: {e}");
        assert!(e.contains(phrase), "{name}: {e}");
    }
    let e = err_text(decode_file(&s.root().join("missing.png"), 3));
    assert!(e.contains("missing.png"), "{e}");
}

#[test]
fn layouts_are_detected_and_ambiguous_or_unknown_folders_refused() {
    let s = TempDir::new("layouts");
    let imgs = fashion(2, 2, 0);
    // ImageFolder, flat and with train/ + val/.
    let flat = s.root().join("flat");
    write_image_folder(&flat, &imgs);
    assert_eq!(layout::detect(&flat).unwrap(), Layout::ImageFolder);
    let split = s.root().join("split");
    write_image_folder(&split.join("train"), &imgs);
    write_image_folder(&split.join("val"), &imgs[..1]);
    assert_eq!(layout::detect(&split).unwrap(), Layout::ImageFolder);
    // VTAB lists.
    let task = s.root().join("task");
    write_list(&task, "train800val200.txt", &imgs);
    write_list(&task, "test.txt", &imgs);
    assert_eq!(layout::detect(&task).unwrap(), Layout::VtabLists);
    // IDX.
    let idx = s.root().join("idx");
    std::fs::create_dir_all(&idx).unwrap();
    std::fs::write(idx.join("train-images-idx3-ubyte"), b"x").unwrap();
    assert_eq!(layout::detect(&idx).unwrap(), Layout::Idx);
    // Lists and IDX files in one folder: refused, saying both.
    std::fs::write(task.join("t10k-images-idx3-ubyte.gz"), b"x").unwrap();
    let e = err_text(layout::detect(&task));
    assert!(
        e.contains("ambiguous") && e.contains("VTAB-1k lists") && e.contains("IDX"),
        "{e}"
    );
    // Nothing recognisable: says what is there.
    let other = s.root().join("other");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("notes.txt"), b"x").unwrap();
    let e = err_text(layout::detect(&other));
    assert!(
        e.contains("no known layout") && e.contains("notes.txt"),
        "{e}"
    );
    // A folder of VTAB-1k tasks is not one task, and one task is not a root of tasks.
    let root = s.root().join("root");
    write_list(&root.join("cifar"), "train800val200.txt", &imgs);
    write_list(&root.join("cifar"), "test.txt", &imgs);
    let e = err_text(layout::detect(&root));
    assert!(
        e.contains("folder of VTAB-1k tasks (cifar)") && e.contains("liera vtab --root"),
        "{e}"
    );
    std::fs::remove_file(task.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let e = err_text(layout::vtab_tasks(&task));
    assert!(e.contains("it is a task itself"), "{e}");
    assert_eq!(layout::vtab_tasks(&root).unwrap(), vec![root.join("cifar")]);
    // An empty class folder.
    std::fs::create_dir_all(flat.join("class_9")).unwrap();
    let e = err_text(layout::image_folder(&flat, None));
    assert!(e.contains("class_9") && e.contains("holds no"), "{e}");
    // An evaluation folder with a class the training folder lacks.
    std::fs::remove_dir_all(flat.join("class_9")).unwrap();
    write_image_folder(&split.join("val"), &fashion(3, 1, 0)[2..]);
    let e = err_text(load_task(&split, ("", ""), &load_options(32, false)));
    assert!(
        e.contains("class_2") && e.contains("training split does not have"),
        "{e}"
    );
}

#[test]
fn list_errors_name_the_file_and_line() {
    let s = TempDir::new("lists");
    let imgs = fashion(2, 1, 0);
    let task = s.root().join("task");
    write_list(&task, "test.txt", &imgs);
    let list = task.join("test.txt");
    let good = std::fs::read_to_string(&list).unwrap();
    let first = good.lines().next().unwrap().to_string();
    let path = first.rsplit_once(' ').unwrap().0.to_string();
    let cases = [
        (
            format!("{first}\n{path} cat\n"),
            ":2",
            "not a non-negative integer",
        ),
        (
            format!("{first}\n{path} -1\n"),
            ":2",
            "not a non-negative integer",
        ),
        (
            format!("\n{first}\nimages/nothere.png 1\n"),
            ":3",
            "does not exist",
        ),
        (format!("{first}\n{path} 99999999\n"), ":2", "out of range"),
        (
            format!("{first}\nimages/only_a_path.png\n"),
            ":2",
            "is not `<path> <label>`",
        ),
        (String::new(), "test.txt", "no entries"),
    ];
    for (text, at, phrase) in cases {
        std::fs::write(&list, &text).unwrap();
        let e = err_text(layout::read_list(&list));
        assert!(
            e.contains(&format!("test.txt{at}")) || at == "test.txt",
            "{text:?}: {e}"
        );
        assert!(e.contains(phrase), "{text:?}: {e}");
    }
}

fn load_options(size: usize, augment: bool) -> LoadOptions {
    LoadOptions {
        preprocess: Preprocess {
            size,
            crop_pct: 1.0,
            crop_mode: liera::data::CropMode::Squash,
            augment,
            ..Preprocess::imagenet(size)
        },
        bad_images: BadImages::Fail,
        progress: false,
    }
}

#[test]
fn bad_images_stop_loading_or_are_skipped_and_counted() {
    let s = TempDir::new("skip");
    let root = s.root().join("folder");
    write_image_folder(&root, &fashion(2, 3, 0));
    let bad = root.join("class_1").join("broken.png");
    std::fs::write(&bad, b"\x89PNG\r\n\x1a\nnot really").unwrap();
    let (list, _) = layout::image_folder(&root, None).unwrap();
    let e = err_text(ImageSet::load(
        list.clone(),
        Preprocess::imagenet(32),
        BadImages::Fail,
        "t",
        false,
    ));
    assert!(e.contains("broken.png"), "{e}");
    let set = ImageSet::load(list, Preprocess::imagenet(32), BadImages::Skip, "t", false).unwrap();
    assert_eq!(set.len(), 6);
    assert_eq!(set.skipped.len(), 1);
    assert!(set.skipped[0].contains("broken.png"));
}

#[test]
fn image_set_batches_are_the_pipeline_and_augmentation_is_seeded() {
    let s = TempDir::new("set");
    let root = s.root().join("folder");
    write_image_folder(&root, &fashion(2, 2, 0));
    let (list, _) = layout::image_folder(&root, None).unwrap();
    let pre = Preprocess {
        interpolation: Interpolation::Bilinear,
        ..Preprocess::imagenet(24)
    };
    let set = ImageSet::load(list.clone(), pre.clone(), BadImages::Fail, "t", false).unwrap();
    assert_eq!(set.image_dims(), [3, 24, 24]);
    assert_eq!(set.class_names(), ["class_0", "class_1"]);
    let batch = set.gather(&[3, 1], None).unwrap();
    assert_eq!(batch.dims, [2, 3, 24, 24]);
    assert_eq!(batch.labels, vec![1, 0]);
    // Image 3 by hand: decode, resize the shorter side to ⌊24 / 0.875⌋ = 27, centre-crop 24, normalise.
    let img = decode_file(&list.items[3].path, 3).unwrap();
    let resized =
        liera::data::transform::resize_shorter(&img, 27, Interpolation::Bilinear).unwrap();
    let cropped = liera::data::transform::center_crop(&resized, 24, 24).unwrap();
    let mut want = vec![0f32; 3 * 24 * 24];
    normalize_into(&cropped, &pre.mean, &pre.std, &mut want).unwrap();
    assert_eq!(&batch.images[..want.len()], &want[..]);

    // Augmentation: the same generator gives the same batch; another gives another; evaluation batches of
    // an augmented set are the evaluation transform.
    let aug = ImageSet::load(
        list,
        Preprocess {
            augment: true,
            ..pre
        },
        BadImages::Fail,
        "t",
        false,
    )
    .unwrap();
    let a = aug
        .gather(&[0, 1, 2], Some(&mut SplitMix64::new(5)))
        .unwrap();
    let b = aug
        .gather(&[0, 1, 2], Some(&mut SplitMix64::new(5)))
        .unwrap();
    let c = aug
        .gather(&[0, 1, 2], Some(&mut SplitMix64::new(6)))
        .unwrap();
    assert_eq!(a.images, b.images);
    assert_ne!(a.images, c.images);
    assert_eq!(
        aug.gather(&[3, 1], None).unwrap().images,
        batch.images,
        "an augmented set evaluates with the evaluation transform"
    );
}

#[test]
fn a_timm_model_folder_gives_architecture_and_preprocessing() {
    let s = TempDir::new("folder");
    let dir = s.root().join("convnextv2_atto");
    let cfg = ConvNeXtConfig::preset("convnextv2_atto")
        .unwrap()
        .with_classes(7);
    write_model_folder(
        &dir,
        &cfg,
        "convnextv2_atto",
        serde_json::json!({
            "input_size": [3, 160, 160], "crop_pct": 0.95, "crop_mode": "center",
            "interpolation": "bilinear", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
            "num_classes": 7, "first_conv": "stem.0", "classifier": "head.fc"
        }),
    );
    let model = resolve_model(&dir, &ModelFlags::default()).unwrap();
    assert_eq!(
        model.config,
        ConvNeXtConfig {
            seed: 0,
            ..cfg.clone()
        }
    );
    assert_eq!(model.architecture.as_deref(), Some("convnextv2_atto"));
    let pre = resolve_preprocess(&model, &Default::default()).unwrap();
    assert_eq!(
        (
            pre.size,
            pre.crop_pct,
            pre.interpolation,
            pre.mean.clone(),
            pre.channels
        ),
        (160, 0.95, Interpolation::Bilinear, vec![0.5; 3], 3)
    );
    // A flag overrides the file's preprocessing...
    let flags = liera::job::data::PreprocessFlags {
        size: Some(96),
        ..Default::default()
    };
    assert_eq!(resolve_preprocess(&model, &flags).unwrap().size, 96);
    // ...but a flag that contradicts the weights' architecture is an error naming both.
    let e = err_text(resolve_model(
        &dir,
        &ModelFlags {
            preset: Some("convnext_atto".into()),
            in_chans: None,
        },
    ));
    assert!(
        e.contains("--preset convnext_atto") && e.contains("convnextv2_atto"),
        "{e}"
    );
    let e = err_text(resolve_model(
        &dir,
        &ModelFlags {
            preset: None,
            in_chans: Some(1),
        },
    ));
    assert!(
        e.contains("--in-chans 1") && e.contains("3 channels"),
        "{e}"
    );
    // A config whose architecture contradicts the weights.
    let bad = s.root().join("bad");
    write_model_folder(&bad, &cfg, "convnext_femto", serde_json::json!({}));
    let e = err_text(resolve_model(&bad, &ModelFlags::default()));
    assert!(
        e.contains("convnext_femto") && e.contains("contradicts"),
        "{e}"
    );
    // A folder without safetensors.
    let empty = s.root().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("pytorch_model.bin"), b"x").unwrap();
    let e = err_text(resolve_model(&empty, &ModelFlags::default()));
    assert!(
        e.contains("model.safetensors") && e.contains("pytorch_model.bin"),
        "{e}"
    );
}

#[test]
fn a_short_finetune_through_an_image_folder_beats_chance() {
    let s = TempDir::new("finetune");
    let root = s.root().join("data");
    let classes = 4;
    write_image_folder(&root.join("train"), &fashion(classes, 40, 0));
    write_image_folder(&root.join("val"), &fashion(classes, 25, 40));
    let weights = s.root().join("base");
    let config = ConvNeXtConfig::micro().with_in_chans(3).with_seed(3);
    write_model_folder(&weights, &config, "micro", serde_json::json!({}));
    let model = resolve_model(&weights, &ModelFlags::default()).unwrap();
    let task = load_task(&root, ("", ""), &load_options(32, false)).unwrap();
    assert_eq!((task.train.len(), task.test.len()), (160, 100));
    let opts = RunOptions {
        steps: 60,
        batch_size: 32,
        lr: 3e-3,
        head_lr: None,
        weight_decay: 0.01,
        warmup: 5,
        seed: 1,
        augment_shift: 0,
        log_every: 10,
        progress: false,
        grad_checkpointing: false,
    };
    let r = finetune(
        &model.config.clone().with_classes(classes),
        &model.weights,
        &TaskData {
            train: &task.train,
            test: &task.test,
        },
        Method::Full,
        &AdapterOptions::default(),
        &opts,
        &Device::cpu(),
        None,
        &Checkpointing::default(),
    )
    .unwrap();
    // Chance is 25%; the classes differ in shape and in colour.
    assert!(r.eval.accuracy > 0.5, "accuracy {}", r.eval.accuracy);
    assert_eq!(r.eval.examples, 100);
}
