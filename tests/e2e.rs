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
        head_lr: None,
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
        head_lr: None,
        tune_lr: false,
        tune_seeds: 2,
        tune_steps: None,
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
    // Without tuning, every method's head trains at the linear probe's default rate.
    assert_eq!(report.head_lr, job::DEFAULT_HEAD_LR);
    assert_eq!(report.head_lr_source, job::HeadLrSource::Default);
    assert!(report.tuning.is_empty() && report.head_tuning.is_none());
    // One seed: a paired difference against LoRA for every other method, but no interval.
    let paired = report.paired_vs_lora().expect("LoRA ran");
    assert_eq!(paired.len(), Method::ALL.len() - 1);
    assert!(paired.iter().all(|p| p.seeds == vec![0] && p.ci.is_none()));
    assert!(report.table().contains("Δ vs LoRA (mean, 95% CI)"));
    assert_eq!(
        report
            .verdict()
            .lines()
            .filter(|l| l.contains("no interval can be given"))
            .count(),
        paired.len()
    );
    let md = std::fs::read_to_string(opts.out.join("report.md")).unwrap();
    for needle in ["Δ vs LoRA per seed", "head learning rate"] {
        assert!(md.contains(needle), "report.md lacks `{needle}`:\n{md}");
    }
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
/// test set; the tuning first chooses the head's rate on the linear probe, then the method's with that head
/// rate, each candidate scored by the mean over two seeds with their own validation splits; every method's
/// final run trains its head at the tuned head rate.
#[test]
fn learning_rates_are_tuned_on_validation_splits() {
    let target = shrink(embedded_fashion_mnist().unwrap(), 10);
    let (train, val) = target.train.hold_out_per_class(20, 3).unwrap();
    assert_eq!(val.len(), 200);
    assert_eq!(train.len(), target.train.len() - 200);
    assert!(val.class_counts().iter().all(|&c| c == 20));
    // Disjoint: no validation image equals a remaining training image.
    let image = |d: &liera::data::Dataset, i: usize| d.image(i).unwrap().to_vec();
    let bits = |v: Vec<f32>| v.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let train_images: std::collections::HashSet<Vec<u32>> =
        (0..train.len()).map(|i| bits(image(&train, i))).collect();
    assert!((0..val.len()).all(|i| !train_images.contains(&bits(image(&val, i)))));
    assert!(
        target.train.hold_out_per_class(100, 3).is_err(),
        "holding out a whole class must fail"
    );
    // Each tuning seed holds out its own fifth.
    let (a, b) = (
        job::tuning_split(&target.train, 0).unwrap(),
        job::tuning_split(&target.train, 1).unwrap(),
    );
    assert_eq!(a.test.len(), target.train.len() / 5);
    let held: std::collections::HashSet<Vec<u32>> =
        (0..a.test.len()).map(|i| bits(image(&a.test, i))).collect();
    assert!((0..b.test.len()).any(|i| !held.contains(&bits(image(&b.test, i)))));

    let source = shrink(embedded_mnist().unwrap(), 10)
        .pad_to(IMAGE_SIZE)
        .unwrap();
    let target = Splits {
        train: target.train.take_per_class(30, 2).unwrap(),
        test: target.test,
    }
    .pad_to(IMAGE_SIZE)
    .unwrap();
    let dir = std::env::temp_dir().join(format!("liera-e2e-tune-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let liera_method = Method::lora(liera::peft::AdapterKind::Liera);
    let opts = CompareOptions {
        config: ConvNeXtConfig::micro(),
        pretrain: run_options(20, 2e-3),
        finetune: run_options(10, 1e-3),
        adapter: AdapterOptions::default(),
        methods: vec![Method::LinearProbe, liera_method],
        seeds: vec![0],
        lr_override: None,
        head_lr: None,
        tune_lr: true,
        tune_seeds: 2,
        tune_steps: Some(6),
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
    assert_eq!(report.tune_seeds, vec![0, 1]);
    assert_eq!(report.tune_steps, 6);
    assert_eq!(report.tune_val_images, 60);
    // The head's search ran on the linear probe over its ladder (widened or not) with two seeds each.
    let head = report
        .head_tuning
        .as_ref()
        .expect("the head rate was tuned");
    assert_eq!(report.head_lr_source, job::HeadLrSource::Tuned);
    assert_eq!(report.head_lr, head.best);
    let ladder = Method::LinearProbe.lr_grid();
    assert!(ladder
        .iter()
        .all(|lr| head.rungs.iter().any(|r| r.lr == *lr && !r.added)));
    assert!(head.rungs.iter().all(|r| r.scores.len() == 2));
    // The method's own search; the best is the rung with the highest mean (ties: the smaller rate).
    assert_eq!(
        report.tuning.len(),
        1,
        "the linear probe is not tuned twice"
    );
    let (name, search) = &report.tuning[0];
    assert_eq!(name, "liera");
    let best = search
        .rungs
        .iter()
        .fold(None::<&liera::job::Rung>, |b, r| match b {
            Some(b) if b.mean() >= r.mean() => Some(b),
            _ => Some(r),
        })
        .unwrap();
    assert_eq!(search.best, best.lr);
    assert!(search.rungs.windows(2).all(|w| w[0].lr < w[1].lr));
    assert!(
        search.end.at_limit()
            || (search.rungs[0].lr < best.lr && best.lr < search.rungs.last().unwrap().lr)
    );
    assert_eq!(
        report.learning_rates,
        vec![
            ("linear".to_string(), report.head_lr),
            ("liera".to_string(), search.best)
        ]
    );
    // Tuning runs log one line per rate with both seeds' scores.
    assert!(lines
        .iter()
        .any(|l| l.contains("head (linear probe)") && l.contains("chosen")));
    let md = std::fs::read_to_string(opts.out.join("report.md")).unwrap();
    assert!(
        md.contains("search ended") && md.contains("head (linear probe)"),
        "{md}"
    );
    // The final run trained on all training images and was evaluated on the untouched test set.
    assert_eq!(report.runs[0].1.eval.examples, target.test.len());
    // With one seed there is no interval.
    assert!(
        report.verdict().contains("no interval can be given")
            || report.verdict().contains("not run")
    );
    let _ = std::fs::remove_dir_all(&dir);
}
