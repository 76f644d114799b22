//! The `liera` command as a specification of its reliability:
//! - bad input (weights files, data folders, flags, devices, checkpoints) exits non-zero with a message that
//!   names the problem, and never panics;
//! - a run killed with SIGKILL resumes from its last checkpoint to the very weights, bit for bit, of an
//!   uninterrupted run with the same seed;
//! - a diverging run stops with the step number and leaves its last good checkpoint intact and loadable.

mod common;

use common::temp::TempDir;
use liera::data::idx::write_idx;
use liera::io::{read_safetensors, save_model, write_safetensors_host, HostTensor};
use liera::job::checkpoint::read_checkpoint;
use liera::nn::{ConvNeXt, ConvNeXtConfig};
use liera::Device;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_liera");

fn liera_with_env(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("LIERA_DEVICE")
        .env_remove("LIERA_REQUIRE_GPU");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("the liera binary runs")
}

fn liera(args: &[&str]) -> Output {
    liera_with_env(args, &[])
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Asserts the command failed cleanly (non-zero exit, no panic, no signal) with every needle in stderr;
/// returns the error line.
fn assert_fails(out: &Output, needles: &[&str]) -> String {
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "expected failure, got success; stderr:\n{stderr}"
    );
    assert_eq!(
        out.status.code(),
        Some(1),
        "expected exit code 1 (a clean error), got {:?}; stderr:\n{stderr}",
        out.status
    );
    assert!(
        !stderr.contains("panicked"),
        "the command panicked:\n{stderr}"
    );
    for n in needles {
        assert!(
            stderr.contains(n),
            "stderr does not mention {n:?}:\n{stderr}"
        );
    }
    stderr
        .lines()
        .rfind(|l| l.starts_with("error: "))
        .unwrap_or_default()
        .to_string()
}

fn assert_ok(out: &Output) {
    assert!(
        out.status.success(),
        "command failed: {:?}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
}

/// Weights of a fresh micro ConvNeXt (1 channel, 10 classes) saved to `path`: what `--weights` expects.
fn good_weights(path: &Path) {
    let net = ConvNeXt::new(ConvNeXtConfig::micro(), &Device::cpu()).unwrap();
    save_model(&net, path).unwrap();
}

/// A raw safetensors file with one tensor of `dtype`.
fn raw_safetensors(name: &str, dtype: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let header = serde_json::json!({
        name: {"dtype": dtype, "shape": shape, "data_offsets": [0, data.len()]}
    })
    .to_string();
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend_from_slice(data);
    bytes
}

/// Every tensor of `src` rewritten to `dst` after `edit` (drop or reshape keys).
fn edited(src: &Path, dst: &Path, edit: impl FnOnce(&mut Vec<(String, HostTensor)>)) {
    let mut tensors = read_safetensors(src).unwrap();
    edit(&mut tensors);
    write_safetensors_host(dst, &tensors, None).unwrap();
}

#[test]
fn bad_weights_files_are_named_errors() {
    let dir = TempDir::new("weights");
    let good = dir.path("good.safetensors");
    good_weights(&good);
    let bytes = std::fs::read(&good).unwrap();
    let missing = dir.path("missing.safetensors");
    let truncated = dir.write("truncated.safetensors", &bytes[..bytes.len() / 2]);
    let header_cut = dir.write("header_cut.safetensors", &bytes[..20]);
    let mut garbage = bytes.clone();
    for b in garbage[8..60].iter_mut() {
        *b = b'#';
    }
    let corrupt = dir.write("corrupt.safetensors", &garbage);
    let empty = dir.write("empty.safetensors", b"");
    let wrong_dtype = dir.write(
        "i64.safetensors",
        &raw_safetensors("stem.0.weight", "I64", &[2], &[0u8; 16]),
    );
    let no_key = dir.path("no_key.safetensors");
    edited(&good, &no_key, |t| t.retain(|(n, _)| n != "stem.0.weight"));
    let bad_shape = dir.path("bad_shape.safetensors");
    edited(&good, &bad_shape, |t| {
        for (n, h) in t.iter_mut() {
            if n == "stages.0.blocks.0.conv_dw.weight" {
                h.shape = vec![16, 49];
            }
        }
    });
    let extra_key = dir.path("extra_key.safetensors");
    edited(&good, &extra_key, |t| {
        t.push((
            "stages.9.blocks.0.gamma".into(),
            HostTensor {
                shape: vec![2],
                data: vec![1.0, 2.0],
            },
        ))
    });

    let p = |p: &Path| p.display().to_string();
    let cases: Vec<(&str, PathBuf, Vec<&str>)> = vec![
        (
            "missing file",
            missing,
            vec!["missing.safetensors", "No such file"],
        ),
        (
            "truncated file",
            truncated,
            vec!["truncated.safetensors", "not a valid safetensors file"],
        ),
        (
            "header cut short",
            header_cut,
            vec!["header_cut.safetensors", "not a valid safetensors file"],
        ),
        (
            "corrupt header",
            corrupt,
            vec!["corrupt.safetensors", "not a valid safetensors file"],
        ),
        (
            "empty file",
            empty,
            vec!["empty.safetensors", "not a valid safetensors file"],
        ),
        (
            "wrong dtype",
            wrong_dtype,
            vec!["i64.safetensors", "`stem.0.weight`", "I64"],
        ),
        ("missing key", no_key, vec!["missing key `stem.0.weight`"]),
        (
            "mis-shaped key",
            bad_shape,
            vec![
                "`stages.0.blocks.0.conv_dw.weight` has shape",
                "expects [16, 1, 7, 7]",
            ],
        ),
        (
            "unexpected key",
            extra_key,
            vec!["unexpected key `stages.9.blocks.0.gamma`"],
        ),
    ];
    for (what, path, needles) in cases {
        for sub in ["eval", "finetune"] {
            let mut args = vec![sub, "--device", "cpu", "--weights"];
            let path_text = p(&path);
            args.push(&path_text);
            if sub == "finetune" {
                args.extend(["--steps", "1", "--quiet", "--out"]);
            }
            let out_dir = p(&dir.path("never"));
            if sub == "finetune" {
                args.push(&out_dir);
            }
            let line = assert_fails(&liera(&args), &needles);
            eprintln!("{sub} {what}: {line}");
        }
    }
}

/// A four-file IDX folder of `n` tiny 4×3 images per split; `tweak` edits the file contents first.
fn idx_dir(dir: &TempDir, tweak: impl FnOnce(&mut [Vec<u8>; 4])) -> PathBuf {
    let n = 20;
    let pixels: Vec<u8> = (0..n * 12).map(|i| (i * 37 % 256) as u8).collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 10) as u8).collect();
    let mut files = [
        write_idx(&[n, 4, 3], &pixels).unwrap(),
        write_idx(&[n], &labels).unwrap(),
        write_idx(&[n, 4, 3], &pixels).unwrap(),
        write_idx(&[n], &labels).unwrap(),
    ];
    tweak(&mut files);
    let names = [
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ];
    for (name, bytes) in names.iter().zip(&files) {
        dir.write(name, bytes);
    }
    dir.root().to_path_buf()
}

#[test]
fn bad_data_folders_are_named_errors() {
    let weights_dir = TempDir::new("idx-weights");
    let weights = weights_dir.path("w.safetensors");
    good_weights(&weights);
    let w = weights.display().to_string();

    // A valid folder evaluates (so the failures below are the files' fault).
    let ok = TempDir::new("idx-ok");
    let ok_path = idx_dir(&ok, |_| {});
    assert_ok(&liera(&[
        "eval",
        "--device",
        "cpu",
        "--weights",
        &w,
        "--data-dir",
        &ok_path.display().to_string(),
    ]));

    type Tweak = Box<dyn FnOnce(&mut [Vec<u8>; 4])>;
    let cases: Vec<(&str, Tweak, Vec<&str>)> = vec![
        (
            "bad magic number",
            Box::new(|f| f[0][0] = 0x12),
            vec!["train-images-idx3-ubyte", "bad IDX magic number"],
        ),
        (
            "wrong dtype",
            Box::new(|f| f[2][2] = 0x0D),
            vec!["t10k-images-idx3-ubyte", "unsupported IDX dtype 0x0d"],
        ),
        (
            "truncated data",
            Box::new(|f| {
                let n = f[0].len() - 5;
                f[0].truncate(n)
            }),
            vec!["train-images-idx3-ubyte", "truncated data"],
        ),
        (
            "extra bytes",
            Box::new(|f| f[1].extend_from_slice(&[1, 2, 3])),
            vec!["train-labels-idx1-ubyte", "size mismatch"],
        ),
        (
            "image/label count mismatch",
            Box::new(|f| {
                f[3] = write_idx(&[19], &[0; 19]).unwrap();
            }),
            vec!["t10k-labels-idx1-ubyte", "19", "20"],
        ),
        (
            "label out of range",
            Box::new(|f| {
                let last = f[1].len() - 1;
                f[1][last] = 10;
            }),
            vec!["train-labels-idx1-ubyte", "label 10"],
        ),
        (
            "labels where images belong",
            Box::new(|f| f[0] = f[1].clone()),
            vec!["train-images-idx3-ubyte"],
        ),
        (
            "missing file",
            Box::new(|f| f[2].clear()),
            vec!["t10k-images-idx3-ubyte"],
        ),
    ];
    for (what, tweak, needles) in cases {
        let dir = TempDir::new("idx");
        let path = idx_dir(&dir, tweak);
        if what == "missing file" {
            std::fs::remove_file(path.join("t10k-images-idx3-ubyte")).unwrap();
        }
        let out = liera(&[
            "eval",
            "--device",
            "cpu",
            "--weights",
            &w,
            "--data-dir",
            &path.display().to_string(),
        ]);
        let line = assert_fails(&out, &needles);
        eprintln!("data {what}: {line}");
    }
    // A data folder that does not exist, and pretraining on a bad folder.
    let line = assert_fails(
        &liera(&[
            "pretrain",
            "--device",
            "cpu",
            "--data-dir",
            "/nonexistent/liera-data",
        ]),
        &["/nonexistent/liera-data", "not a directory"],
    );
    eprintln!("data missing folder: {line}");
}

#[test]
fn invalid_flags_are_named_errors_before_any_work() {
    let dir = TempDir::new("flags");
    let weights = dir.path("w.safetensors");
    good_weights(&weights);
    let w = weights.display().to_string();
    let out = dir.path("out").display().to_string();
    let ft = |extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "finetune",
            "--device",
            "cpu",
            "--quiet",
            "--steps",
            "1",
            "--weights",
            &w,
            "--out",
            &out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let cases: Vec<(&str, Vec<String>, Vec<&str>)> = vec![
        (
            "rank 0",
            ft(&["--rank", "0"]),
            vec!["--rank must be at least 1"],
        ),
        (
            "rank above the layer's dimensions",
            ft(&["--rank", "17"]),
            vec!["rank 17", "conv_dw"],
        ),
        (
            "alpha 0",
            ft(&["--alpha", "0"]),
            vec!["--alpha must be positive"],
        ),
        (
            "alpha negative",
            ft(&["--alpha=-2"]),
            vec!["--alpha must be positive, got -2"],
        ),
        (
            "batch 0",
            ft(&["--batch-size", "0"]),
            vec!["--batch-size must be positive"],
        ),
        (
            "steps 0",
            vec!["pretrain".into(), "--steps".into(), "0".into()],
            vec!["--steps must be positive"],
        ),
        ("lr 0", ft(&["--lr", "0"]), vec!["--lr must be positive"]),
        (
            "lr NaN",
            ft(&["--lr", "NaN"]),
            vec!["--lr must be positive"],
        ),
        (
            "target matching no layer",
            ft(&["--target", "conv_dw,nosuchlayer"]),
            vec!["target pattern `nosuchlayer` matches no Conv2d or Linear layer"],
        ),
        (
            "unknown method",
            ft(&["--method", "dora"]),
            vec!["unknown method `dora`"],
        ),
        (
            "unknown ΔW generator",
            ft(&["--method", "liera", "--delta", "dora"]),
            vec!["--delta", "unknown ΔW generator `dora` (lora, loha, lokr)"],
        ),
        (
            "a generator for a method without adapters",
            ft(&["--method", "full", "--delta", "loha"]),
            vec!["--delta loha needs an adapter method, not `full`"],
        ),
        (
            "a generator that contradicts the method's",
            ft(&["--method", "liera_lokr", "--delta", "loha"]),
            vec!["--delta loha contradicts method `liera_lokr`"],
        ),
        (
            "a generator that makes a method list repeat itself",
            vec![
                "compare".into(),
                "--methods".into(),
                "lora,loha".into(),
                "--delta".into(),
                "loha".into(),
            ],
            vec!["--methods with --delta lists `loha` twice"],
        ),
        (
            "unknown preset",
            ft(&["--preset", "huge"]),
            vec!["unknown preset `huge`"],
        ),
        (
            "unknown method in compare",
            vec!["compare".into(), "--methods".into(), "lora,dora".into()],
            vec!["unknown method `dora`"],
        ),
        (
            "compare batch 0",
            vec!["compare".into(), "--batch-size".into(), "0".into()],
            vec!["--batch-size must be positive"],
        ),
        (
            "unknown device",
            vec![
                "eval".into(),
                "--device".into(),
                "tpu".into(),
                "--weights".into(),
                w.clone(),
            ],
            vec!["--device must be auto, cpu or gpu, got `tpu`"],
        ),
        (
            "pretrain weight decay negative",
            vec!["pretrain".into(), "--weight-decay=-1".into()],
            vec!["--weight-decay must be ≥ 0"],
        ),
        (
            "a method listed twice",
            vec![
                "compare".into(),
                "--methods".into(),
                "lora,liera,lora".into(),
            ],
            vec!["--methods lists `lora` twice"],
        ),
        (
            "seeds past u64::MAX",
            vec![
                "compare".into(),
                "--seed".into(),
                "18446744073709551615".into(),
                "--seeds".into(),
                "2".into(),
            ],
            vec!["runs past the largest seed"],
        ),
        (
            "one image per class with learning-rate tuning",
            vec![
                "compare".into(),
                "--per-class".into(),
                "1".into(),
                "--quiet".into(),
            ],
            vec!["learning rates cannot be tuned", "--no-tune-lr"],
        ),
        (
            "compare with no tuning seeds",
            vec![
                "compare".into(),
                "--tune-seeds".into(),
                "0".into(),
                "--quiet".into(),
            ],
            vec!["at least one tuning seed", "--tune-seeds"],
        ),
        (
            "compare with a negative head learning rate",
            vec!["compare".into(), "--head-lr=-0.1".into(), "--quiet".into()],
            vec!["the head's learning rate must be positive, got -0.1"],
        ),
        (
            "in-chans other than 1 or 3",
            ft(&["--in-chans", "2"]),
            vec!["--in-chans must be 1 or 3"],
        ),
    ];
    for (what, args, needles) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let line = assert_fails(&liera(&args), &needles);
        eprintln!("flag {what}: {line}");
    }
    // clap's own errors (exit code 2) do not panic either.
    let out = liera(&["finetune", "--rank", "many"]);
    assert!(!out.status.success());
    assert!(!text(&out.stderr).contains("panicked"));
}

#[test]
fn gpu_without_an_adapter_is_an_error_not_a_hang() {
    let dir = TempDir::new("nogpu");
    let weights = dir.path("w.safetensors");
    good_weights(&weights);
    // Vulkan only, with no Vulkan driver to load: no adapter exists.
    let hide = [
        ("VK_ICD_FILENAMES", "/nonexistent/icd.json"),
        ("WGPU_BACKEND", "vulkan"),
    ];
    let out = liera_with_env(
        &[
            "eval",
            "--device",
            "gpu",
            "--weights",
            &weights.display().to_string(),
        ],
        &hide,
    );
    let line = assert_fails(&out, &["no GPU adapter"]);
    eprintln!("device gpu without adapter: {line}");
    // `auto` with LIERA_REQUIRE_GPU=1 insists on a GPU: an error, not a quiet fall-back to the CPU.
    let mut env = hide.to_vec();
    env.push(("LIERA_REQUIRE_GPU", "1"));
    let out = liera_with_env(
        &[
            "eval",
            "--weights",
            &weights.display().to_string(),
            "--mnist",
        ],
        &env,
    );
    let line = assert_fails(&out, &["LIERA_REQUIRE_GPU=1", "no GPU"]);
    eprintln!("auto with LIERA_REQUIRE_GPU=1 and no adapter: {line}");
    // The same through LIERA_DEVICE.
    let out = liera_with_env(
        &[
            "eval",
            "--device",
            "auto",
            "--weights",
            &weights.display().to_string(),
        ],
        &[hide[0], hide[1], ("LIERA_DEVICE", "gpu")],
    );
    let line = assert_fails(&out, &["no GPU adapter"]);
    eprintln!("LIERA_DEVICE=gpu without adapter: {line}");
    // auto falls back to the CPU instead.
    let out = liera_with_env(
        &[
            "eval",
            "--weights",
            &weights.display().to_string(),
            "--mnist",
        ],
        &hide,
    );
    assert_ok(&out);
    assert!(text(&out.stderr).contains("device: cpu"));
}

/// A GPU setting the user got wrong (a GEMM tile side the kernels lack) is an error on a machine with a GPU
/// adapter, not a quiet fall-back to the CPU; without an adapter, `auto` falls back as usual.
#[test]
fn a_wrong_gpu_setting_is_an_error_not_a_cpu_fall_back() {
    let dir = TempDir::new("gpusetting");
    let weights = dir.path("w.safetensors");
    good_weights(&weights);
    let out = liera_with_env(
        &[
            "eval",
            "--weights",
            &weights.display().to_string(),
            "--mnist",
        ],
        &[("LIERA_GPU_GEMM_TILE", "96")],
    );
    let stderr = text(&out.stderr);
    if out.status.success() {
        // Only a machine with no adapter at all may run: the setting was never read, so the fall-back
        // message does not name it.
        assert!(
            stderr.contains("no GPU adapter")
                && stderr.contains("device: cpu")
                && !stderr.contains("tile side"),
            "LIERA_GPU_GEMM_TILE=96 ran on the CPU instead of failing:\n{stderr}"
        );
        eprintln!("skipped: no GPU adapter, so the setting is never read");
    } else {
        let line = assert_fails(&out, &["LIERA_GPU_GEMM_TILE", "96 is not a GEMM tile side"]);
        eprintln!("LIERA_GPU_GEMM_TILE=96: {line}");
    }
}

fn pretrain_args<'a>(out: &'a str, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "pretrain",
        "--device",
        "cpu",
        "--quiet",
        "--seed",
        "3",
        "--steps",
        steps,
        "--batch-size",
        "8",
        "--checkpoint-every",
        "5",
        "--out",
        out,
    ];
    v.extend_from_slice(extra);
    v
}

/// The tensors of a safetensors file as raw bits, by name.
fn bits(path: &Path) -> Vec<(String, Vec<usize>, Vec<u32>)> {
    read_safetensors(path)
        .unwrap()
        .into_iter()
        .map(|(n, t)| (n, t.shape, t.data.iter().map(|v| v.to_bits()).collect()))
        .collect()
}

/// Starts `args`, waits until its checkpoint (in `out`) exists at a step before `steps`, and SIGKILLs it.
/// Returns the step of the checkpoint it left.
fn start_and_kill(args: &[&str], out: &Path, steps: u64) -> u64 {
    let mut child = Command::new(BIN)
        .args(args)
        .env_remove("LIERA_DEVICE")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok(c) = read_checkpoint(out) {
            assert!(
                c.meta.step < steps,
                "the run finished before it could be killed"
            );
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before writing a checkpoint");
        }
        assert!(Instant::now() < deadline, "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL on Unix: no destructor, no flush, nothing runs.
    let status = child.wait().unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(
            status.signal(),
            Some(9),
            "the run was not killed mid-way ({status})"
        );
    }
    let c = read_checkpoint(out).expect("the checkpoint survives SIGKILL intact");
    assert!(c.meta.step >= 5 && c.meta.step < steps);
    c.meta.step
}

#[test]
fn a_killed_pretraining_run_resumes_to_bit_identical_weights() {
    let dir = TempDir::new("resume-pretrain");
    let (a, b) = (dir.path("a"), dir.path("b"));
    let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
    // Enough steps that the kill, right after the first checkpoint, lands well before the end.
    let steps = 120;
    assert_ok(&liera(&pretrain_args(&a_s, "120", &[])));
    let killed_at = start_and_kill(&pretrain_args(&b_s, "120", &[]), &b, steps);
    assert!(!b.join("model.safetensors").exists());
    let out = liera(&pretrain_args(&b_s, "120", &["--resume", &b_s]));
    assert_ok(&out);
    eprintln!("killed after checkpoint step {killed_at}, resumed");
    assert!(
        bits(&a.join("model.safetensors")) == bits(&b.join("model.safetensors")),
        "resumed weights differ from the uninterrupted run's"
    );
    // The final checkpoints (weights and optimizer state) agree too.
    assert!(bits(&a.join("checkpoint.safetensors")) == bits(&b.join("checkpoint.safetensors")));
    let c = read_checkpoint(&b).unwrap();
    assert_eq!(
        (c.meta.step, c.meta.data_position, c.meta.optimizer_steps),
        (120, 120, 120)
    );
}

#[test]
fn a_killed_finetuning_run_resumes_to_bit_identical_adapters() {
    let dir = TempDir::new("resume-finetune");
    let weights = dir.path("base.safetensors");
    good_weights(&weights);
    let w = weights.display().to_string();
    let (a, b) = (dir.path("a"), dir.path("b"));
    let (a_s, b_s) = (a.display().to_string(), b.display().to_string());
    let args = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = [
            "finetune",
            "--device",
            "cpu",
            "--quiet",
            "--method",
            "liera",
            "--rank",
            "4",
            "--seed",
            "5",
            "--steps",
            "100",
            "--batch-size",
            "8",
            "--checkpoint-every",
            "5",
            "--weights",
            &w,
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    };
    let run = |v: Vec<String>| liera(&v.iter().map(String::as_str).collect::<Vec<_>>());
    assert_ok(&run(args(&a_s, &[])));
    let b_args = args(&b_s, &[]);
    let killed_at = start_and_kill(
        &b_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &b,
        100,
    );
    assert_ok(&run(args(&b_s, &["--resume", &b_s])));
    eprintln!("killed after checkpoint step {killed_at}, resumed");
    let file = liera::peft::ADAPTER_WEIGHTS_FILE;
    assert!(
        bits(&a.join(file)) == bits(&b.join(file)),
        "resumed adapters differ from the uninterrupted run's"
    );
    // Resuming with another method or seed is refused, naming why.
    let line = assert_fails(
        &run({
            let mut v = args(&b_s, &["--resume", &b_s]);
            v[5] = "lora".into();
            v
        }),
        &["cannot resume", "`finetune:liera` run, not `finetune:lora`"],
    );
    eprintln!("resume other method: {line}");
    let mut other_seed = args(&b_s, &["--resume", &b_s]);
    other_seed[9] = "6".into();
    let line = assert_fails(&run(other_seed), &["its seed is 5, this run's 6"]);
    eprintln!("resume other seed: {line}");
}

#[test]
fn bad_resume_targets_are_named_errors() {
    let dir = TempDir::new("resume-bad");
    let weights = dir.path("w.safetensors");
    good_weights(&weights);
    let w = weights.display().to_string();
    let empty = dir.path("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let e = empty.display().to_string();
    let cases: Vec<(&str, String, Vec<&str>)> = vec![
        (
            "missing file",
            "/nonexistent/ckpt.safetensors".into(),
            vec!["/nonexistent/ckpt.safetensors", "no such checkpoint"],
        ),
        (
            "folder without a checkpoint",
            e.clone(),
            vec!["no checkpoint.safetensors in this folder"],
        ),
        ("a weights file", w.clone(), vec!["not a liera checkpoint"]),
    ];
    for (what, target, needles) in cases {
        let out = dir.path("o").display().to_string();
        let line = assert_fails(
            &liera(&pretrain_args(&out, "10", &["--resume", &target])),
            &needles,
        );
        eprintln!("resume {what}: {line}");
    }
    // A truncated checkpoint.
    let out = dir.path("t");
    let out_s = out.display().to_string();
    assert_ok(&liera(&pretrain_args(&out_s, "5", &[])));
    let ckpt = out.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ckpt).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() - 100]).unwrap();
    let line = assert_fails(
        &liera(&pretrain_args(&out_s, "10", &["--resume", &out_s])),
        &["checkpoint.safetensors", "not a valid safetensors file"],
    );
    eprintln!("resume truncated checkpoint: {line}");
}

#[test]
fn a_diverging_run_stops_with_the_step_and_keeps_the_last_good_checkpoint() {
    let dir = TempDir::new("diverge");
    let out = dir.path("run");
    let out_s = out.display().to_string();
    // A sane run leaves a checkpoint at step 10 ...
    assert_ok(&liera(&pretrain_args(&out_s, "10", &[])));
    let good = read_checkpoint(&out).unwrap();
    assert_eq!(good.meta.step, 10);
    // ... then continuing it with a learning rate of 10⁶ diverges.
    let diverged = liera(&pretrain_args(
        &out_s,
        "60",
        &["--resume", &out_s, "--lr", "1e6"],
    ));
    let line = assert_fails(&diverged, &["step"]);
    eprintln!("diverging run: {line}");
    // The resume says that its settings differ from the checkpoint's, so its result is its own.
    let said = text(&diverged.stderr);
    assert!(
        said.contains("changed settings (steps 10 → 60, lr 0.002 → 1000000"),
        "the resume does not name its changed settings: {said}"
    );
    assert!(
        line.contains("loss became") || line.contains("after step"),
        "the error does not say what became non-finite: {line}"
    );
    assert!(line.contains("last good checkpoint") || line.contains("previous one is kept"));
    // Whatever checkpoint is left is loadable and entirely finite, from before the failing step.
    let left = read_checkpoint(&out).expect("the last good checkpoint is loadable");
    assert!(left.meta.step >= 10 && left.meta.step < 60);
    assert!(left.meta.loss.is_finite());
    for (name, t) in left
        .params
        .iter()
        .chain(left.optimizer.iter().map(|(n, t)| (n, t)))
    {
        assert!(
            t.data.iter().all(|v| v.is_finite()),
            "checkpoint tensor {name} is not finite"
        );
    }
    // And it can be resumed with a sane learning rate.
    assert_ok(&liera(&pretrain_args(&out_s, "60", &["--resume", &out_s])));
}

/// Scoring weights whose classifier has another class count than the data's is an error unless
/// `--allow-new-head`, which then scores a fresh head.
#[test]
fn eval_refuses_a_head_of_another_class_count_unless_allowed() {
    let dir = TempDir::new("new-head");
    let path = dir.path("five.safetensors");
    let net = ConvNeXt::new(ConvNeXtConfig::micro().with_classes(5), &Device::cpu()).unwrap();
    save_model(&net, &path).unwrap();
    let w = path.to_str().unwrap();
    let out = liera(&["eval", "--weights", w, "--device", "cpu", "--quiet"]);
    assert_fails(
        &out,
        &["does not have the data's 10 classes", "--allow-new-head"],
    );
    let out = liera(&[
        "eval",
        "--weights",
        w,
        "--device",
        "cpu",
        "--quiet",
        "--allow-new-head",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("test accuracy"));
}
