//! The pieces that make `liera compare` a comparison whose conclusions can be trusted:
//! - the learning-rate ladder widens until the best rate is interior (or says it stopped at a limit);
//! - the paired difference against LoRA and its Student-t 95% interval;
//! - the classifier's own learning rate (`RunOptions::head_lr`) changes the head's update and nothing else,
//!   and is recorded in checkpoints so that a resume with another one is flagged.

use liera::data::{embedded_fashion_mnist, Splits};
use liera::job::checkpoint::{read_checkpoint, CheckpointMeta, RunSettings};
use liera::job::{
    paired_difference, prepare_finetune, t_quantile_975, train_and_evaluate, widening_search,
    write_report, AdapterOptions, Checkpointing, CompareOptions, ComparisonReport, HeadLrSource,
    LadderEnd, Method, PairedDifference, Reading, RunOptions, RunResult, HEAD_PREFIX, IMAGE_SIZE,
};
use liera::nn::{ConvNeXt, ConvNeXtConfig, Module};
use liera::peft::AdapterKind;
use liera::train::{Evaluation, StepLog};
use liera::Device;
use std::path::PathBuf;

/// A score that peaks at `peak` and falls with the distance in log-rate.
fn peaked(peak: f64) -> impl FnMut(f32) -> liera::Result<Vec<Option<f64>>> {
    move |lr| Ok(vec![Some(1.0 - (lr as f64 / peak).ln().abs() / 10.0)])
}

fn lrs(search: &liera::job::LadderSearch) -> Vec<f32> {
    search.rungs.iter().map(|r| r.lr).collect()
}

#[test]
fn the_ladder_widens_upward_while_the_top_rung_wins() {
    let mut tried = Vec::new();
    let mut score = peaked(0.15);
    let search = widening_search(&[0.01, 0.02, 0.05], 3, &mut |lr| {
        tried.push(lr);
        score(lr)
    })
    .unwrap();
    // 0.05 wins → 0.125 (×2.5, the top step's ratio) wins → 0.312 loses: 0.125 is interior.
    assert_eq!(tried, vec![0.01, 0.02, 0.05, 0.125, 0.312]);
    assert_eq!(lrs(&search), tried);
    assert_eq!(search.best, 0.125);
    assert_eq!(search.end, LadderEnd::Interior);
    assert!(!search.end.at_limit());
    assert_eq!(search.added, (0, 2));
    assert_eq!(search.end_text(), "interior");
    assert!(search.rungs[3].added && !search.rungs[2].added);
}

#[test]
fn the_ladder_widens_downward_while_the_bottom_rung_wins() {
    let mut score = peaked(0.003);
    let search = widening_search(&[0.01, 0.02, 0.05], 3, &mut score).unwrap();
    // 0.01 wins → 0.005 (÷2, the bottom step's ratio) → 0.0025 → 0.00125 loses.
    assert_eq!(lrs(&search), vec![0.00125, 0.0025, 0.005, 0.01, 0.02, 0.05]);
    assert_eq!(search.best, 0.0025);
    assert_eq!(search.end, LadderEnd::Interior);
    assert_eq!(search.added, (3, 0));
}

#[test]
fn the_ladder_stops_at_its_limit_and_says_the_rate_may_be_under_tuned() {
    // The score keeps rising with the rate: three rungs are added above, then the search gives up.
    let mut calls = 0;
    let search = widening_search(&[1e-3, 3e-3, 1e-2], 3, &mut |lr| {
        calls += 1;
        Ok(vec![Some(lr as f64)])
    })
    .unwrap();
    assert_eq!(calls, 6);
    assert_eq!(search.added, (0, 3));
    assert_eq!(search.end, LadderEnd::TopLimit);
    assert!(search.end.at_limit());
    assert_eq!(search.best, *lrs(&search).last().unwrap());
    assert!(search.best > 0.3 && search.best < 0.4, "{}", search.best);
    let text = search.end_text();
    assert!(
        text.contains("top") && text.contains("under-tuned") && text.contains("3 widenings"),
        "{text}"
    );
    // Falling scores: the same at the bottom.
    let search =
        widening_search(&[1e-3, 3e-3, 1e-2], 2, &mut |lr| Ok(vec![Some(-lr as f64)])).unwrap();
    assert_eq!(search.end, LadderEnd::BottomLimit);
    assert_eq!(search.added, (2, 0));
    assert!(search.end_text().contains("bottom"));
    // No widening allowed (a rate list given by hand): searched as given, the edge still named.
    let search = widening_search(&[0.3, 0.1], 0, &mut |lr| Ok(vec![Some(lr as f64)])).unwrap();
    assert_eq!(lrs(&search), vec![0.1, 0.3]);
    assert_eq!(search.end, LadderEnd::TopLimit);
    // One rate: nothing to compare, no ratio to widen by.
    let search = widening_search(&[0.02], 3, &mut |_| Ok(vec![Some(0.5)])).unwrap();
    assert_eq!(search.end, LadderEnd::Single);
    assert_eq!(search.rungs.len(), 1);
}

#[test]
fn the_ladder_stops_at_once_when_the_best_is_interior_and_a_diverged_rung_loses() {
    let mut calls = 0;
    let mut score = peaked(0.02);
    let search = widening_search(&[0.01, 0.02, 0.05], 3, &mut |lr| {
        calls += 1;
        score(lr)
    })
    .unwrap();
    assert_eq!(
        (calls, search.best, search.end),
        (3, 0.02, LadderEnd::Interior)
    );
    // Rising scores until training diverges above 0.06: the diverged rung is a loser, so the best (0.05)
    // becomes interior and the widening stops.
    let search = widening_search(&[0.01, 0.02, 0.05], 3, &mut |lr| {
        Ok(if lr < 0.06 {
            vec![Some(lr as f64); 2]
        } else {
            vec![None, Some(0.01)]
        })
    })
    .unwrap();
    assert_eq!(lrs(&search), vec![0.01, 0.02, 0.05, 0.125]);
    assert_eq!(search.best, 0.05);
    assert_eq!(search.end, LadderEnd::Interior);
    let top = &search.rungs[3];
    assert_eq!(top.diverged(), 1);
    assert!(
        (top.mean() - 0.005).abs() < 1e-12,
        "a diverged seed counts as 0"
    );
    assert!(search.scores_text().contains("1 of 2 diverged"));
    // Ties go to the smaller rate; the score is the mean over the seeds.
    let search = widening_search(&[0.01, 0.02, 0.05], 3, &mut |lr| {
        Ok(if lr == 0.01 {
            vec![Some(0.1), Some(0.5)]
        } else {
            vec![Some(0.4), Some(0.4)]
        })
    })
    .unwrap();
    assert_eq!(search.best, 0.02);
    assert!((search.best_score - 0.4).abs() < 1e-12);
    // Bad ladders are errors.
    assert!(widening_search(&[], 3, &mut |_| Ok(vec![Some(0.0)])).is_err());
    assert!(widening_search(&[0.01, -1.0], 3, &mut |_| Ok(vec![Some(0.0)])).is_err());
    assert!(widening_search(&[0.01, 0.01], 3, &mut |_| Ok(vec![Some(0.0)])).is_err());
}

/// Student's t density with `df` degrees of freedom.
fn t_density(x: f64, df: usize) -> f64 {
    // Γ((ν+1)/2) / Γ(ν/2) by recursion from ν = 1 (1/√π) and ν = 2 (√π/2).
    let pi = std::f64::consts::PI;
    let mut ratio = if df % 2 == 1 {
        1.0 / pi.sqrt()
    } else {
        pi.sqrt() / 2.0
    };
    let mut nu = if df % 2 == 1 { 1 } else { 2 };
    while nu < df {
        // Γ((ν+3)/2)/Γ((ν+2)/2) = Γ((ν+1)/2)/Γ(ν/2) · ((ν+1)/2)/(ν/2).
        ratio *= (nu as f64 + 1.0) / nu as f64;
        nu += 2;
    }
    let n = df as f64;
    ratio / (n * pi).sqrt() * (1.0 + x * x / n).powf(-(n + 1.0) / 2.0)
}

/// P(T ≤ t) for t ≥ 0 by Simpson's rule.
fn t_cdf(t: f64, df: usize) -> f64 {
    let steps = 20_000;
    let h = t / steps as f64;
    let mut sum = t_density(0.0, df) + t_density(t, df);
    for i in 1..steps {
        sum += if i % 2 == 1 { 4.0 } else { 2.0 } * t_density(i as f64 * h, df);
    }
    0.5 + sum * h / 3.0
}

#[test]
fn t_quantiles_match_the_table_and_the_distribution() {
    assert_eq!(t_quantile_975(1), 12.706);
    assert_eq!(t_quantile_975(2), 4.303);
    assert_eq!(t_quantile_975(4), 2.776);
    assert_eq!(t_quantile_975(9), 2.262);
    assert_eq!(t_quantile_975(30), 2.042);
    assert!(t_quantile_975(0).is_nan());
    // Beyond the table: the expansion against the tables' 40, 60 and 120 degrees of freedom.
    for (df, want) in [(40, 2.021), (60, 2.000), (120, 1.980), (1000, 1.962)] {
        assert!(
            (t_quantile_975(df) - want).abs() < 6e-4,
            "t(0.975, {df}) = {}",
            t_quantile_975(df)
        );
    }
    // Every table entry is the 0.975 quantile to the table's three decimals.
    assert!(
        (t_cdf(1.0, 1) - 0.75).abs() < 1e-9,
        "the integration is off"
    );
    for df in 1..=30 {
        let q = t_quantile_975(df);
        let f = t_density(q, df);
        let err = (t_cdf(q, df) - 0.975) / f; // the error in t that the CDF error means
        assert!(err.abs() < 5.1e-4, "df {df}: table {q} is off by {err}");
    }
    // The expansion joins the table smoothly at 30.
    let n = 31;
    assert!(t_quantile_975(n) < 2.042 && t_quantile_975(n) > 2.035);
}

#[test]
fn the_paired_interval_and_its_reading() {
    // Mean 2, sample std 1, n = 3: half-width 4.303/√3.
    let (mean, ci) = paired_difference(&[1.0, 2.0, 3.0]);
    let half = 4.303 / 3f64.sqrt();
    let (lo, hi) = ci.unwrap();
    assert!((mean - 2.0).abs() < 1e-12);
    assert!((lo - (2.0 - half)).abs() < 1e-9 && (hi - (2.0 + half)).abs() < 1e-9);
    let d = PairedDifference::new("liera", vec![0, 1, 2], vec![1.0, 2.0, 3.0]);
    assert_eq!(d.reading(), Reading::NoSignificantDifference);
    assert!(
        d.sentence().contains("no significant difference") && d.sentence().contains("95% CI"),
        "{}",
        d.sentence()
    );
    // Five seeds, consistently ahead: the interval excludes 0.
    let d = PairedDifference::new("liera", (0..5).collect(), vec![1.0, 1.2, 0.9, 1.1, 1.0]);
    let (lo, _) = d.ci.unwrap();
    let half = 2.776 * mean_std_of(&d.diffs) / 5f64.sqrt();
    assert!((lo - (1.04 - half)).abs() < 1e-9);
    assert_eq!(d.reading(), Reading::Ahead);
    assert!(
        d.sentence().contains("ahead of lora by 1.04"),
        "{}",
        d.sentence()
    );
    let d = PairedDifference::new("linear", vec![0, 1], vec![-6.0, -6.5]);
    assert_eq!(d.reading(), Reading::Behind);
    assert!(
        d.sentence().contains("behind lora by 6.25"),
        "{}",
        d.sentence()
    );
    // One seed: no interval.
    let d = PairedDifference::new("liera", vec![0], vec![0.45]);
    assert_eq!((d.ci, d.reading()), (None, Reading::NoInterval));
    assert!(
        d.sentence().contains("no interval can be given"),
        "{}",
        d.sentence()
    );
}

fn mean_std_of(v: &[f64]) -> f64 {
    let m = v.iter().sum::<f64>() / v.len() as f64;
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (v.len() as f64 - 1.0)).sqrt()
}

/// A scratch folder removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("liera-compare-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A random micro ConvNeXt saved as base weights, and a small clothing task.
fn base_and_task(dir: &std::path::Path) -> (PathBuf, Splits) {
    let config = ConvNeXtConfig::micro().with_seed(7);
    let base = dir.join("base.safetensors");
    liera::io::save_model(&ConvNeXt::new(config, &Device::cpu()).unwrap(), &base).unwrap();
    let s = embedded_fashion_mnist().unwrap();
    let task = Splits {
        train: s.train.take_per_class(4, 1).unwrap(),
        test: s.test.take_per_class(2, 1).unwrap(),
    }
    .pad_to(IMAGE_SIZE)
    .unwrap();
    (base, task)
}

fn opts(steps: u64, lr: f32, head_lr: Option<f32>) -> RunOptions {
    RunOptions {
        steps,
        batch_size: 8,
        lr,
        head_lr,
        weight_decay: 0.01,
        warmup: 0,
        seed: 3,
        augment_shift: 0,
        log_every: 1,
        progress: false,
        grad_checkpointing: false,
    }
}

/// The trainable parameters' values, by name.
fn snapshot(model: &ConvNeXt) -> Vec<(String, Vec<f32>)> {
    model
        .trainable_parameters()
        .into_iter()
        .map(|(n, t)| (n, t.to_vec().unwrap()))
        .collect()
}

/// The largest change of any entry, over the head's parameters and over the others.
fn max_changes(before: &[(String, Vec<f32>)], after: &[(String, Vec<f32>)]) -> (f32, f32) {
    let (mut head, mut body) = (0.0f32, 0.0f32);
    for ((name, a), (_, b)) in before.iter().zip(after) {
        let d = a
            .iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        if name.starts_with(HEAD_PREFIX) {
            head = head.max(d);
        } else {
            body = body.max(d);
        }
    }
    (head, body)
}

#[test]
fn the_head_learning_rate_changes_only_the_heads_update() {
    let s = Scratch::new("head");
    let (base, task) = base_and_task(&s.0);
    let dev = Device::cpu();
    let one_step = |method: Method, head_lr: Option<f32>| {
        let (model, _, _) = prepare_finetune(
            &ConvNeXtConfig::micro(),
            &base,
            10,
            method,
            &AdapterOptions::default(),
            3,
            &dev,
        )
        .unwrap();
        let before = snapshot(&model);
        assert!(before.iter().any(|(n, _)| n.starts_with(HEAD_PREFIX)));
        train_and_evaluate(
            &model,
            method.name(),
            &(&task).into(),
            &opts(1, 1e-3, head_lr),
            &dev,
            &Checkpointing::default(),
        )
        .unwrap();
        (before, snapshot(&model))
    };
    // AdamW's first step moves each entry by lr·g/(|g| + ε) ≈ lr (plus the decay lr·λ·p, small here): in
    // full fine-tuning the head by head_lr, the rest (the stem's gradient is not damped by the blocks'
    // small layer scales) by lr.
    let (before, after) = one_step(Method::Full, Some(2e-2));
    let (head, body) = max_changes(&before, &after);
    assert!((head - 2e-2).abs() < 2e-2 * 0.02, "head moved {head}");
    assert!((body - 1e-3).abs() < 1e-3 * 0.02, "the rest moved {body}");
    let (before, after) = one_step(Method::Full, None);
    let (head, body) = max_changes(&before, &after);
    assert!((head - 1e-3).abs() < 1e-3 * 0.02, "head moved {head}");
    assert!((body - 1e-3).abs() < 1e-3 * 0.02, "the rest moved {body}");
    // With LieRA adapters: the adapter factors' update is the same bit for bit whatever the head's rate;
    // the head's is not, and at head_lr 0 the head stays put (its decay is scaled too).
    let method = Method::lora(AdapterKind::Liera);
    let (b1, a1) = one_step(method, Some(2e-2));
    let (b2, a2) = one_step(method, None);
    let (b3, a3) = one_step(method, Some(0.0));
    assert!(b1 == b2 && b2 == b3, "the same start");
    for (i, (name, before)) in b1.iter().enumerate() {
        if name.starts_with(HEAD_PREFIX) {
            assert_ne!(a1[i].1, a2[i].1, "{name}");
            assert_eq!(&a3[i].1, before, "{name} moved at head_lr 0");
        } else {
            assert_eq!(a1[i].1, a2[i].1, "{name} depends on the head's rate");
            assert_eq!(a3[i].1, a2[i].1, "{name} depends on the head's rate");
        }
    }
    assert!(
        b1.iter()
            .zip(&a2)
            .any(|((n, b), (_, a))| !n.starts_with(HEAD_PREFIX) && a != b),
        "the adapters did not train"
    );
}

#[test]
fn a_resume_with_another_head_learning_rate_is_flagged() {
    let s = Scratch::new("resume");
    let (base, task) = base_and_task(&s.0);
    let dev = Device::cpu();
    let (model, _, _) = prepare_finetune(
        &ConvNeXtConfig::micro(),
        &base,
        10,
        Method::Full,
        &AdapterOptions::default(),
        3,
        &dev,
    )
    .unwrap();
    let ckpt = s.0.join("checkpoint.safetensors");
    train_and_evaluate(
        &model,
        "full",
        &(&task).into(),
        &opts(2, 1e-3, Some(3e-2)),
        &dev,
        &Checkpointing {
            path: Some(ckpt.clone()),
            every: 1,
            resume: None,
        },
    )
    .unwrap();
    let c = read_checkpoint(&ckpt).unwrap();
    assert_eq!(c.meta.settings.head_lr, Some(3e-2));
    let resume_as = |head_lr: Option<f32>| CheckpointMeta {
        step: 0,
        data_position: 0,
        optimizer_steps: 0,
        drop_path_position: 0,
        settings: RunSettings {
            head_lr,
            ..c.meta.settings
        },
        ..c.meta.clone()
    };
    assert!(c.check_fits(&resume_as(Some(3e-2))).unwrap().is_empty());
    assert_eq!(
        c.check_fits(&resume_as(Some(0.1))).unwrap(),
        vec!["head lr 0.03 → 0.1".to_string()]
    );
    assert_eq!(
        c.check_fits(&resume_as(None)).unwrap(),
        vec!["head lr 0.03 → same as lr".to_string()]
    );
    // A head rate for a model whose head does not train is an error, not a silent no-op.
    let (mut frozen, _, _) = prepare_finetune(
        &ConvNeXtConfig::micro(),
        &base,
        10,
        Method::Full,
        &AdapterOptions::default(),
        3,
        &dev,
    )
    .unwrap();
    frozen.visit_mut("", &mut |path, p| {
        if path.starts_with(HEAD_PREFIX) {
            p.set_trainable(false)
        }
    });
    let err = train_and_evaluate(
        &frozen,
        "full",
        &(&task).into(),
        &opts(1, 1e-3, Some(3e-2)),
        &dev,
        &Checkpointing::default(),
    );
    assert!(err.is_err());
}

/// A finished run of `method` with this test accuracy (no training: the report's arithmetic only).
fn result(method: &str, accuracy: f64) -> RunResult {
    RunResult {
        method: method.into(),
        trainable: 100,
        total: 1000,
        eval: Evaluation {
            accuracy,
            loss: 0.5,
            examples: 2000,
        },
        seconds: 1.0,
        images_per_second: 100.0,
        logs: vec![StepLog {
            step: 10,
            loss: 0.5,
            lr: 0.01,
            elapsed: 1.0,
        }],
    }
}

#[test]
fn the_report_gives_each_method_its_paired_interval_against_lora() {
    let s = Scratch::new("report");
    let methods = ["full", "linear", "lora", "liera", "liera_first_order"];
    let acc: [[f64; 3]; 5] = [
        [0.790, 0.795, 0.785], // full: +4 points every seed → ahead
        [0.690, 0.685, 0.695], // linear: about −6 → behind
        [0.750, 0.755, 0.745],
        [0.752, 0.760, 0.741], // liera: +0.2, +0.5, −0.4 → no significant difference
        [0.770, 0.775, 0.765], // first order: +2 every seed → ahead
    ];
    let mut runs = Vec::new();
    for seed in 0..3u64 {
        for (m, a) in methods.iter().zip(&acc) {
            runs.push((seed, result(m, a[seed as usize])));
        }
    }
    let top_limited = widening_search(&[0.01, 0.02, 0.05], 1, &mut |lr| {
        Ok(vec![Some(lr as f64), Some(lr as f64)])
    })
    .unwrap();
    let interior = widening_search(&[0.01, 0.02, 0.05], 3, &mut |lr| {
        Ok(vec![Some(if lr == 0.02 { 0.8 } else { 0.7 }); 2])
    })
    .unwrap();
    let run_opts = opts(10, 1e-3, None);
    let report = ComparisonReport {
        device: "cpu".into(),
        model: "micro".into(),
        source_images: 100,
        target_images: 100,
        target_test_images: 2000,
        pretrain: None,
        checkpoint: s.0.join("base.safetensors"),
        opts: CompareOptions {
            config: ConvNeXtConfig::micro(),
            pretrain: run_opts.clone(),
            finetune: run_opts.clone(),
            adapter: AdapterOptions::default(),
            methods: methods.iter().map(|m| Method::parse(m).unwrap()).collect(),
            seeds: vec![0, 1, 2],
            lr_override: None,
            head_lr: None,
            tune_lr: true,
            tune_seeds: 2,
            tune_steps: Some(5),
            cache_dir: s.0.clone(),
            base_weights: None,
            fresh: false,
            out: s.0.clone(),
        },
        learning_rates: methods.iter().map(|m| (m.to_string(), 0.02)).collect(),
        head_lr: 0.03,
        head_lr_source: HeadLrSource::Tuned,
        head_tuning: Some(interior.clone()),
        tuning: vec![
            ("full".into(), top_limited.clone()),
            ("lora".into(), interior.clone()),
        ],
        tune_seeds: vec![0, 1],
        tune_steps: 5,
        tune_val_images: 200,
        runs,
    };
    let paired = report.paired_vs_lora().unwrap();
    let names: Vec<&str> = paired.iter().map(|p| p.method.as_str()).collect();
    assert_eq!(names, ["full", "linear", "liera", "liera_first_order"]);
    let readings: Vec<Reading> = paired.iter().map(PairedDifference::reading).collect();
    assert_eq!(
        readings,
        [
            Reading::Ahead,
            Reading::Behind,
            Reading::NoSignificantDifference,
            Reading::Ahead
        ]
    );
    let liera = &paired[2];
    assert_eq!(liera.seeds, vec![0, 1, 2]);
    let want = [0.2, 0.5, -0.4];
    assert!(liera
        .diffs
        .iter()
        .zip(want)
        .all(|(d, w)| (d - w).abs() < 1e-9));
    let half = 4.303 * mean_std_of(&want) / 3f64.sqrt();
    let (lo, hi) = liera.ci.unwrap();
    assert!((lo - (0.1 - half)).abs() < 1e-9 && (hi - (0.1 + half)).abs() < 1e-9);
    // The table (printed and in report.md) carries the Δ column; the verdict one sentence per method and a
    // line for the rate that may be under-tuned.
    let table = report.table();
    assert!(table.contains("Δ vs LoRA (mean, 95% CI)"), "{table}");
    assert!(
        table.contains("| lora |") && table.contains("(reference)"),
        "{table}"
    );
    assert!(table.contains(&liera.cell()), "{table}");
    let verdict = report.verdict();
    let lines: Vec<&str> = verdict.lines().collect();
    assert_eq!(lines.len(), 5, "{verdict}");
    assert!(
        lines[0].starts_with("full is ahead of lora by 4.00 points"),
        "{verdict}"
    );
    assert!(
        lines[1].starts_with("linear is behind lora by 6.00 points"),
        "{verdict}"
    );
    assert!(lines[2].contains("no significant difference"), "{verdict}");
    assert!(
        lines[4].starts_with("full: the learning rate chosen was 0.125")
            && lines[4].contains("may be under-tuned"),
        "{verdict}"
    );
    write_report(&report, &s.0).unwrap();
    let md = std::fs::read_to_string(s.0.join("report.md")).unwrap();
    for needle in [
        "| method | Δ vs LoRA per seed (points) | mean Δ | 95% CI | reading |",
        "seed 0: +0.20, seed 1: +0.50, seed 2: -0.40",
        "| liera_first_order |",
        "no significant difference",
        "the new classifier (`head.fc`) trains at 0.03 in every method (tuned on the linear probe, which",
        "| full | 0.02 | 0.03 |",
        "| head (linear probe) |",
        "0.125†",
        "at the top of the ladder (after 1 widening): may be under-tuned",
        "| lora | ",
        "interior",
        "over 2 seeds [0, 1]",
    ] {
        assert!(md.contains(needle), "report.md lacks `{needle}`:\n{md}");
    }
    // A lone LoRA-less comparison says so instead of inventing a reference.
    let mut no_lora = report.clone();
    no_lora.runs.retain(|(_, r)| r.method != "lora");
    assert!(no_lora.paired_vs_lora().is_none());
    assert!(no_lora.verdict().starts_with("LoRA was not run"));
}
