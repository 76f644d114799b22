//! The `liera` command on image data: finetune, eval and predict through an image folder, and the VTAB-1k
//! protocol (the table and CSV, resuming by task, refusing other settings, and resuming a killed run at its
//! step).

mod common;

use common::images::{fashion, write_image_folder, write_list, write_model_folder};
use common::temp::TempDir;
use liera::nn::ConvNeXtConfig;
use std::path::Path;

const BIN: &str = env!("CARGO_BIN_EXE_liera");

fn liera(args: &[&str]) -> std::process::Output {
    std::process::Command::new(BIN)
        .args(args)
        .env_remove("LIERA_DEVICE")
        .env_remove("LIERA_REQUIRE_GPU")
        .env("LIERA_DEVICE", "cpu")
        .output()
        .expect("the liera binary runs")
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A micro ConvNeXt with 3 input channels as a timm-layout folder whose config asks for 32×32 inputs.
fn small_model_folder(dir: &Path) {
    write_model_folder(
        dir,
        &ConvNeXtConfig::micro().with_in_chans(3).with_seed(4),
        "micro",
        serde_json::json!({"input_size": [3, 32, 32], "crop_pct": 1.0, "crop_mode": "squash",
                           "interpolation": "bicubic"}),
    );
}

/// A VTAB-1k root with tasks `names`, each with the four lists over 3 classes.
fn vtab_root(root: &Path, names: &[&str]) {
    for (t, name) in names.iter().enumerate() {
        let task = root.join(name);
        write_list(&task, "train800.txt", &fashion(3, 4, t * 12));
        write_list(&task, "val200.txt", &fashion(3, 2, t * 12 + 4));
        let mut both = fashion(3, 4, t * 12);
        both.extend(fashion(3, 2, t * 12 + 4));
        write_list(&task, "train800val200.txt", &both);
        write_list(&task, "test.txt", &fashion(3, 3, t * 12 + 6));
    }
}

/// A micro model folder and a VTAB-1k root of `tasks` in a scratch folder, and the `liera vtab` flags that
/// run them at 32×32 with batch 6.
struct VtabFixture {
    base: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl VtabFixture {
    fn new(s: &TempDir, tasks: &[&str]) -> VtabFixture {
        let fx = VtabFixture {
            base: s.root().join("base"),
            root: s.root().join("vtab"),
        };
        small_model_folder(&fx.base);
        vtab_root(&fx.root, tasks);
        fx
    }

    /// `vtab` with the shared flags, output into `out`, then `extra`.
    fn args(&self, out: &Path, extra: &[&str]) -> Vec<String> {
        let (root, base, out) = (
            self.root.to_str().unwrap(),
            self.base.to_str().unwrap(),
            out.to_str().unwrap(),
        );
        let shared = [
            "vtab",
            "--root",
            root,
            "--weights",
            base,
            "--batch-size",
            "6",
            "--size",
            "32",
            "--out",
            out,
            "--quiet",
        ];
        shared.iter().chain(extra).map(|s| s.to_string()).collect()
    }
}

#[test]
fn finetune_eval_and_predict_run_on_an_image_folder() {
    let s = TempDir::new("cli");
    let base = s.root().join("base");
    small_model_folder(&base);
    let data = s.root().join("data");
    write_image_folder(&data.join("train"), &fashion(3, 6, 0));
    write_image_folder(&data.join("val"), &fashion(3, 2, 6));
    let ft = s.root().join("ft");
    let (b, d, f) = (
        base.to_str().unwrap(),
        data.to_str().unwrap(),
        ft.to_str().unwrap(),
    );
    let o = liera(&[
        "finetune",
        "--weights",
        b,
        "--data",
        d,
        "--method",
        "liera",
        "--steps",
        "8",
        "--batch-size",
        "6",
        "--out",
        f,
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let t = text(&o);
    assert!(
        t.contains("data: ImageFolder in") && t.contains("18 training and 6 test images"),
        "{t}"
    );
    for file in [
        "adapter_model.safetensors",
        "adapter_config.json",
        "data_config.json",
    ] {
        assert!(ft.join(file).is_file(), "{file} missing");
    }
    let o = liera(&[
        "eval",
        "--weights",
        b,
        "--adapter",
        f,
        "--data",
        d,
        "--quiet",
    ]);
    assert!(
        o.status.success() && text(&o).contains("(6 images)"),
        "{}",
        text(&o)
    );
    // The base weights' 10-class head does not score 3 classes, unless asked.
    let o = liera(&["eval", "--weights", b, "--data", d, "--quiet"]);
    assert!(
        !o.status.success() && text(&o).contains("--allow-new-head"),
        "{}",
        text(&o)
    );
    let o = liera(&[
        "eval",
        "--weights",
        b,
        "--data",
        d,
        "--allow-new-head",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    // Predict names the classes from the adapter's data config.
    let image = std::fs::read_dir(data.join("val").join("class_1"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    let o = liera(&[
        "predict",
        "--weights",
        b,
        "--adapter",
        f,
        "--top",
        "3",
        image.to_str().unwrap(),
    ]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    let listed: Vec<&str> = t.lines().filter(|l| l.contains("%  class_")).collect();
    assert_eq!(listed.len(), 3, "{t}");
    // A contradicting flag is an error naming both values.
    let o = liera(&[
        "finetune",
        "--weights",
        b,
        "--data",
        d,
        "--preset",
        "convnext_atto",
        "--quiet",
    ]);
    assert!(
        !o.status.success() && text(&o).contains("--preset convnext_atto"),
        "{}",
        text(&o)
    );
}

#[test]
fn vtab_writes_the_table_resumes_and_refuses_other_settings() {
    let s = TempDir::new("vtab");
    let fx = VtabFixture::new(&s, &["alpha", "beta"]);
    let out = s.root().join("run");
    let args = |out: &Path, steps: &str| {
        fx.args(
            out,
            &[
                "--methods",
                "lora,liera",
                "--steps",
                steps,
                "--lr-grid",
                "0.001,0.01",
            ],
        )
    };
    let run = |a: Vec<String>| liera(&a.iter().map(|s| s.as_str()).collect::<Vec<_>>());
    // Only the first task, then all: the second run continues with what is missing.
    let mut first = args(&out, "6");
    first.extend(["--tasks".into(), "alpha".into()]);
    let o = run(first);
    assert!(o.status.success(), "{}", text(&o));
    let state_after_alpha = std::fs::read_to_string(out.join("state.json")).unwrap();
    let o = run(args(&out, "6"));
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("resuming the run"), "{t}");
    assert!(
        !t.contains("alpha            lora"),
        "alpha was run again: {t}"
    );
    let csv = std::fs::read_to_string(out.join("results.csv")).unwrap();
    let rows: Vec<&str> = csv.lines().collect();
    assert_eq!(rows[0], "method,alpha,beta,mean");
    assert_eq!(rows.len(), 3);
    for row in &rows[1..] {
        let cells: Vec<f64> = row.split(',').skip(1).map(|c| c.parse().unwrap()).collect();
        assert_eq!(cells.len(), 3, "{row}");
        assert!(cells.iter().all(|c| (0.0..=100.0).contains(c)), "{row}");
        assert!(
            (cells[2] - (cells[0] + cells[1]) / 2.0).abs() < 0.01,
            "{row}"
        );
    }
    // The first task's results were kept, not recomputed.
    let state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("state.json")).unwrap()).unwrap();
    let before: serde_json::Value = serde_json::from_str(&state_after_alpha).unwrap();
    assert_eq!(state["results"]["alpha"], before["results"]["alpha"]);
    assert!(out.join("report.md").is_file() && out.join("plot.svg").is_file());
    assert!(out.join("beta/liera/adapter_model.safetensors").is_file());
    // Other settings in the same folder: refused, naming what changed.
    let o = run(args(&out, "7"));
    assert!(!o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("other settings") && text(&o).contains("steps=7"),
        "{}",
        text(&o)
    );
}

#[test]
fn a_killed_vtab_run_resumes_at_its_step_to_the_same_adapter() {
    let s = TempDir::new("vtab-kill");
    let fx = VtabFixture::new(&s, &["alpha"]);
    let args = |out: &Path| {
        fx.args(
            out,
            &[
                "--methods",
                "liera",
                "--steps",
                "400",
                "--lr",
                "0.01",
                "--checkpoint-every",
                "20",
            ],
        )
    };
    let whole = s.root().join("whole");
    let o = liera(&args(&whole).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", text(&o));

    let killed = s.root().join("killed");
    let mut child = std::process::Command::new(BIN)
        .args(args(&killed))
        .env("LIERA_DEVICE", "cpu")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ckpt = killed.join("alpha/liera/checkpoint.safetensors");
    // Wait for the first checkpoint; the loop ends either way, because a run that ends first fails here.
    while !ckpt.is_file() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before its first checkpoint"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    child.kill().unwrap(); // SIGKILL: nothing runs after it.
    child.wait().unwrap();
    let o = liera(&args(&killed).iter().map(|s| s.as_str()).collect::<Vec<_>>());
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("resuming from"), "{t}");
    let file = "alpha/liera/adapter_model.safetensors";
    assert_eq!(
        std::fs::read(whole.join(file)).unwrap(),
        std::fs::read(killed.join(file)).unwrap(),
        "the resumed run's adapter differs from the uninterrupted run's"
    );
    let acc = |dir: &Path| {
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir.join("state.json")).unwrap())
                .unwrap();
        v["results"]["alpha"]["liera"]["accuracy"].as_f64().unwrap()
    };
    assert_eq!(acc(&whole), acc(&killed));
}
