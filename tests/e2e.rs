//! End to end, through the library: a shortened version of the main job (pretrain a micro ConvNeXt on the
//! embedded digits, then fine-tune it on the embedded clothing images with every method) lowers the
//! training loss and beats chance (10%) clearly for every method, and writes its report, plot and adapters.

use liera::data::{embedded_fashion_mnist, embedded_mnist, Splits};
use liera::job::{self, AdapterOptions, CompareOptions, Method, RunOptions, IMAGE_SIZE};
use liera::nn::ConvNeXtConfig;
use liera::Device;
use std::time::Instant;

fn run_options(steps: u64, lr: f32) -> RunOptions {
    RunOptions {
        steps,
        batch_size: 32,
        lr,
        weight_decay: 0.01,
        warmup: steps / 10,
        seed: 0,
        augment_shift: 1,
        log_every: 5,
        progress: false,
        grad_checkpointing: false,
    }
}

/// A smaller test split (balanced, `per_class` images per class) keeps evaluation cheap.
fn shrink(s: Splits, test_per_class: usize) -> Splits {
    Splits {
        test: s.test.take_per_class(test_per_class, 1).unwrap(),
        train: s.train,
    }
}

#[test]
fn a_short_comparison_lowers_the_loss_and_beats_chance_for_every_method() {
    let began = Instant::now();
    let source = shrink(embedded_mnist().unwrap(), 30)
        .pad_to(IMAGE_SIZE)
        .unwrap();
    let target = shrink(embedded_fashion_mnist().unwrap(), 30)
        .pad_to(IMAGE_SIZE)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("liera-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = CompareOptions {
        config: ConvNeXtConfig::micro(),
        pretrain: RunOptions {
            weight_decay: 0.05,
            ..run_options(40, 2e-3)
        },
        finetune: run_options(25, 1e-3),
        adapter: AdapterOptions::default(),
        methods: Method::ALL.to_vec(),
        seeds: vec![0],
        lr_override: None,
        tune_lr: false,
        cache_dir: dir.join("cache"),
        base_weights: None,
        fresh: true,
        out: dir.join("out"),
    };
    let mut lines = Vec::new();
    let report = job::compare(&source, &target, &opts, &Device::cpu(), &mut |l| {
        lines.push(l.to_string())
    })
    .unwrap();
    for l in &lines {
        eprintln!("{l}");
    }
    let pretrained = report.pretrain.as_ref().expect("pretrained afresh");
    eprintln!(
        "pretrain: source test accuracy {:.1}%",
        100.0 * pretrained.eval.accuracy
    );
    assert!(pretrained.eval.accuracy > 0.5, "pretraining did not learn");
    assert_eq!(report.runs.len(), Method::ALL.len());
    for (_, r) in &report.runs {
        let losses: Vec<f32> = r.logs.iter().map(|l| l.loss).collect();
        assert!(losses.len() >= 4, "{}: too few logged steps", r.method);
        // Mean of the first two logged losses vs the last two (single mini-batches are noisy).
        let early = (losses[0] + losses[1]) / 2.0;
        let late = (losses[losses.len() - 1] + losses[losses.len() - 2]) / 2.0;
        eprintln!(
            "{:<18} loss {early:.3} → {late:.3}  test accuracy {:.1}%",
            r.method,
            100.0 * r.eval.accuracy
        );
        assert!(
            late < early,
            "{}: loss did not go down ({losses:?})",
            r.method
        );
        assert!(
            r.eval.accuracy > 0.3,
            "{}: test accuracy {:.1}% is not clearly above chance",
            r.method,
            100.0 * r.eval.accuracy
        );
    }
    for f in ["report.md", "plot.svg", "config.json"] {
        assert!(opts.out.join(f).is_file(), "{f} was not written");
    }
    assert!(opts
        .out
        .join("adapters/liera-seed0/adapter_model.safetensors")
        .is_file());
    eprintln!("e2e took {:.1}s", began.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&dir);
}

/// The validation split is stratified, disjoint from the rest of the training set, and never touches the
/// test set; learning-rate tuning picks one of the grid's rates by validation accuracy and records every
/// candidate's score.
#[test]
fn learning_rates_are_tuned_on_a_validation_split() {
    let target = shrink(embedded_fashion_mnist().unwrap(), 10);
    let (train, val) = target.train.hold_out_per_class(20, 3).unwrap();
    assert_eq!(val.len(), 200);
    assert_eq!(train.len(), target.train.len() - 200);
    assert!(val.class_counts().iter().all(|&c| c == 20));
    // Disjoint: no validation image equals a remaining training image.
    let image = |d: &liera::data::Dataset, i: usize| d.image(i).unwrap().to_vec();
    let train_images: std::collections::HashSet<Vec<u32>> = (0..train.len())
        .map(|i| image(&train, i).iter().map(|v| v.to_bits()).collect())
        .collect();
    assert!((0..val.len()).all(|i| {
        !train_images.contains(
            &image(&val, i)
                .iter()
                .map(|v| v.to_bits())
                .collect::<Vec<_>>(),
        )
    }));
    assert!(
        target.train.hold_out_per_class(100, 3).is_err(),
        "holding out a whole class must fail"
    );

    let source = shrink(embedded_mnist().unwrap(), 10)
        .pad_to(IMAGE_SIZE)
        .unwrap();
    let target = target.pad_to(IMAGE_SIZE).unwrap();
    let dir = std::env::temp_dir().join(format!("liera-e2e-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = CompareOptions {
        config: ConvNeXtConfig::micro(),
        pretrain: run_options(20, 2e-3),
        finetune: run_options(10, 1e-3),
        adapter: AdapterOptions::default(),
        methods: vec![Method::lora(liera::peft::AdapterKind::Liera)],
        seeds: vec![0],
        lr_override: None,
        tune_lr: true,
        cache_dir: dir.join("cache"),
        base_weights: None,
        fresh: true,
        out: dir.join("out"),
    };
    let report = job::compare(&source, &target, &opts, &Device::cpu(), &mut |_| {}).unwrap();
    let grid = Method::lora(liera::peft::AdapterKind::Liera).lr_grid();
    assert_eq!(report.lr_scores.len(), 1);
    assert_eq!(report.lr_scores[0].1.len(), grid.len());
    let (best_lr, best_acc) = report.lr_scores[0].1.iter().fold(
        (0.0f32, -1.0f64),
        |b, &(lr, a)| if a > b.1 { (lr, a) } else { b },
    );
    assert_eq!(report.learning_rates, vec![("liera".to_string(), best_lr)]);
    assert!(best_acc >= 0.0);
    // The final run trained on all training images and was evaluated on the untouched test set.
    assert_eq!(report.runs[0].1.eval.examples, target.test.len());
    let _ = std::fs::remove_dir_all(&dir);
}
