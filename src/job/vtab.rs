//! `liera vtab`: the VTAB-1k protocol of the PEFT-for-vision literature over every task folder of a root.
//!
//! For each task and method: the learning rate is chosen by training on `train800.txt` and scoring top-1
//! on `val200.txt` (the method's ladder, widened while the best rate is at its top or bottom, see
//! [`super::tune`]; or the `--lr-grid` rates as given), then the method is trained on `train800val200.txt`
//! with the chosen rate and scored on `test.txt`. The table has a row per method and a
//! column per task, plus the mean over tasks, as the paper's VTAB table does; it is written as `report.md`,
//! `results.csv` and `plot.svg` after every task, so a partial run already shows what it has.
//!
//! A run is resumable: `state.json` in the output folder records every finished tuning run and every
//! finished final run, and the final run of the task and method in progress writes a training checkpoint
//! (`<task>/<method>/checkpoint.safetensors`), so a killed `liera vtab` started again with the same flags
//! continues at the task, the method and the step it stopped at. Flags that would change the results are
//! recorded in the state, and a mismatch is an error naming them.

use super::checkpoint::{Checkpointing, CHECKPOINT_FILE};
use super::create_dir;
use super::data::{load_task, LoadOptions};
use super::method::{finetune, AdapterOptions, Method};
use super::run::{RunOptions, TaskData};
use super::tune::{validation_score, widening_search, MAX_LADDER_EXTENSIONS};
use crate::backend::Device;
use crate::data::images::ImageSet;
use crate::data::layout;
use crate::data::Examples;
use crate::error::{Error, Result};
use crate::io::{atomic_write, PretrainedModel};
use crate::report::{write_grouped_bars, BarSeries};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The state file of a run.
pub const STATE_FILE: &str = "state.json";

/// Everything `liera vtab` needs.
#[derive(Clone, Debug)]
pub struct VtabOptions {
    /// The folder holding one folder per task.
    pub root: PathBuf,
    /// Only these tasks (folder names); all when empty.
    pub tasks: Vec<String>,
    /// The pretrained network.
    pub model: PretrainedModel,
    /// How images are loaded (the VTAB preset by default).
    pub load: LoadOptions,
    /// The methods, in table order.
    pub methods: Vec<Method>,
    /// Rank, α and targets of the adapter methods.
    pub adapter: AdapterOptions,
    /// Steps, batch, weight decay, warmup, seed (the learning rate is set per method and task).
    pub run: RunOptions,
    /// One learning rate for every method and task (no tuning).
    pub lr: Option<f32>,
    /// The learning rates to try (default: each method's ladder).
    pub lr_grid: Option<Vec<f32>>,
    /// Checkpoint the final run every this many steps.
    pub checkpoint_every: u64,
    /// The output folder.
    pub out: PathBuf,
}

/// What a finished run of one (task, method) recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct FinalResult {
    /// The learning rate used.
    pub lr: f32,
    /// Top-1 accuracy on test.txt, in [0, 1].
    pub accuracy: f64,
    /// Test images scored.
    pub test_images: usize,
    /// Trainable parameters.
    pub trainable: usize,
    /// Seconds of the final run (training and scoring).
    pub seconds: f64,
}

/// The run's progress, saved after every finished training run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VtabState {
    /// The settings that decide the results (a resume must match them).
    pub settings: BTreeMap<String, String>,
    /// Validation accuracy per task, method and learning rate (as text, the key of a map in JSON).
    pub tuning: BTreeMap<String, BTreeMap<String, BTreeMap<String, f64>>>,
    /// Final results per task and method.
    pub results: BTreeMap<String, BTreeMap<String, FinalResult>>,
}

impl VtabState {
    fn read(path: &Path) -> Result<Option<VtabState>> {
        crate::io::read_json_file(path, "a liera vtab state file")
    }
    fn write(&self, path: &Path) -> Result<()> {
        let json = serde_json::to_string_pretty(self).expect("the state serialises");
        atomic_write(path, json.as_bytes())
    }
}

/// The settings that decide a run's results, as text.
fn settings(opts: &VtabOptions) -> BTreeMap<String, String> {
    let r = &opts.run;
    BTreeMap::from([
        ("weights".into(), opts.model.weights.display().to_string()),
        ("preprocess".into(), opts.load.preprocess.describe()),
        (
            "adapter".into(),
            format!(
                "r={} alpha={} targets={}",
                opts.adapter.rank, opts.adapter.alpha, opts.adapter.targets
            ),
        ),
        (
            "run".into(),
            format!(
                "steps={} batch={} weight_decay={} warmup={} seed={}",
                r.steps, r.batch_size, r.weight_decay, r.warmup, r.seed
            ),
        ),
        ("lr".into(), format!("{:?}", opts.lr)),
        ("lr_grid".into(), format!("{:?}", opts.lr_grid)),
    ])
}

/// The results table: a row per method, a column per task and the mean over the tasks a method finished.
#[derive(Clone, Debug, PartialEq)]
pub struct VtabTable {
    /// Task names (columns).
    pub tasks: Vec<String>,
    /// Method names (rows).
    pub methods: Vec<String>,
    /// Accuracy in percent per method and task (None: not run yet).
    pub cells: Vec<Vec<Option<f64>>>,
}

impl VtabTable {
    fn from_state(tasks: &[String], methods: &[Method], state: &VtabState) -> VtabTable {
        let cells = methods
            .iter()
            .map(|m| {
                tasks
                    .iter()
                    .map(|t| {
                        state
                            .results
                            .get(t)
                            .and_then(|r| r.get(m.name()))
                            .map(|r| 100.0 * r.accuracy)
                    })
                    .collect()
            })
            .collect();
        VtabTable {
            tasks: tasks.to_vec(),
            methods: methods.iter().map(|m| m.name().to_string()).collect(),
            cells,
        }
    }

    /// The mean of a row over its finished tasks (None if none finished).
    pub fn mean(&self, row: usize) -> Option<f64> {
        let done: Vec<f64> = self.cells[row].iter().flatten().copied().collect();
        (!done.is_empty()).then(|| done.iter().sum::<f64>() / done.len() as f64)
    }

    /// The table as Markdown.
    pub fn markdown(&self) -> String {
        let mut s = format!("| method | {} | mean |\n|---|", self.tasks.join(" | "));
        s.push_str(&"---:|".repeat(self.tasks.len() + 1));
        s.push('\n');
        for (i, m) in self.methods.iter().enumerate() {
            let _ = write!(s, "| {m} |");
            for c in &self.cells[i] {
                let _ = write!(s, " {} |", c.map_or("–".into(), |v| format!("{v:.1}")));
            }
            let _ = writeln!(
                s,
                " {} |",
                self.mean(i).map_or("–".into(), |v| format!("{v:.1}"))
            );
        }
        s
    }

    /// The table as CSV (empty cells for runs not finished).
    pub fn csv(&self) -> String {
        let mut s = format!("method,{},mean\n", self.tasks.join(","));
        for (i, m) in self.methods.iter().enumerate() {
            s.push_str(m);
            for c in &self.cells[i] {
                s.push(',');
                if let Some(v) = c {
                    let _ = write!(s, "{v:.2}");
                }
            }
            s.push(',');
            if let Some(v) = self.mean(i) {
                let _ = write!(s, "{v:.2}");
            }
            s.push('\n');
        }
        s
    }
}

fn task_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

/// Runs the protocol (see the module documentation), printing progress through `log`; returns the table.
pub fn vtab(opts: &VtabOptions, device: &Device, log: &mut dyn FnMut(&str)) -> Result<VtabTable> {
    if opts.methods.is_empty() {
        return Err(Error::invalid("vtab", "give at least one method"));
    }
    let mut task_dirs = layout::vtab_tasks(&opts.root)?;
    if !opts.tasks.is_empty() {
        let names: Vec<String> = task_dirs.iter().map(|d| task_name(d)).collect();
        if let Some(missing) = opts.tasks.iter().find(|t| !names.contains(t)) {
            return Err(Error::invalid(
                "vtab",
                format!(
                    "--tasks names `{missing}`, which is not a task folder of {} (tasks: {})",
                    opts.root.display(),
                    names.join(", ")
                ),
            ));
        }
        task_dirs.retain(|d| opts.tasks.contains(&task_name(d)));
    }
    let tasks: Vec<String> = task_dirs.iter().map(|d| task_name(d)).collect();
    create_dir(&opts.out)?;
    let state_path = opts.out.join(STATE_FILE);
    let wanted = settings(opts);
    let mut state = match VtabState::read(&state_path)? {
        Some(s) if s.settings != wanted => {
            let changed: Vec<String> = wanted
                .iter()
                .filter(|(k, v)| s.settings.get(*k) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k}: `{}` then, `{v}` now",
                        s.settings.get(k).map_or("", |s| s.as_str())
                    )
                })
                .collect();
            return Err(Error::invalid(
                "vtab",
                format!(
                    "{} holds a run with other settings ({}); use another --out or the same flags",
                    opts.out.display(),
                    changed.join("; ")
                ),
            ));
        }
        Some(s) => {
            log(&format!("resuming the run in {}", opts.out.display()));
            s
        }
        None => VtabState {
            settings: wanted,
            ..VtabState::default()
        },
    };
    for (dir, task) in task_dirs.iter().zip(&tasks) {
        let done = |state: &VtabState, m: &Method| {
            state
                .results
                .get(task)
                .is_some_and(|r| r.contains_key(m.name()))
        };
        if opts.methods.iter().all(|m| done(&state, m)) {
            continue;
        }
        let can_tune = dir.join("train800.txt").is_file() && dir.join("val200.txt").is_file();
        let tune = opts.lr.is_none() && can_tune;
        if opts.lr.is_none() && !can_tune {
            log(&format!(
                "{task}: no train800.txt/val200.txt, so no tuning: each method's default learning rate"
            ));
        }
        let tuning_sets = if tune {
            Some(load_task(dir, ("train800.txt", "val200.txt"), &opts.load)?)
        } else {
            None
        };
        let final_sets = load_task(dir, ("train800val200.txt", "test.txt"), &opts.load)?;
        for method in &opts.methods {
            if done(&state, method) {
                continue;
            }
            let lr = match (opts.lr, &tuning_sets) {
                (Some(lr), _) => lr,
                (None, Some(sets)) => tune_on_val(
                    opts,
                    task,
                    *method,
                    &sets.train,
                    &sets.test,
                    &mut state,
                    &state_path,
                    device,
                    log,
                )?,
                (None, None) => method.default_lr(),
            };
            let run_dir = opts.out.join(task).join(method.name());
            let ckpt_path = run_dir.join(CHECKPOINT_FILE);
            let ckpt = Checkpointing {
                path: Some(ckpt_path.clone()),
                every: opts.checkpoint_every,
                resume: ckpt_path.is_file().then(|| ckpt_path.clone()),
            };
            if ckpt.resume.is_some() {
                log(&format!(
                    "{task} {}: resuming from {}",
                    method.name(),
                    ckpt_path.display()
                ));
            }
            let run = RunOptions {
                lr,
                ..opts.run.clone()
            };
            let r = finetune(
                &opts
                    .model
                    .config
                    .clone()
                    .with_classes(final_sets.train.classes()),
                &opts.model.weights,
                &TaskData {
                    train: &final_sets.train,
                    test: &final_sets.test,
                },
                *method,
                &opts.adapter,
                &run,
                device,
                Some(&run_dir),
                &ckpt,
            )?;
            log(&format!(
                "{task:<16} {:<18} lr {lr:<8} test top-1 {:6.2}% ({} images)  {:.1}s",
                method.name(),
                100.0 * r.eval.accuracy,
                r.eval.examples,
                r.seconds
            ));
            super::data::write_data_config(
                &run_dir,
                final_sets.train.class_names(),
                &opts.load.preprocess,
            )?;
            state.results.entry(task.clone()).or_default().insert(
                method.name().to_string(),
                FinalResult {
                    lr,
                    accuracy: r.eval.accuracy,
                    test_images: r.eval.examples,
                    trainable: r.trainable,
                    seconds: r.seconds,
                },
            );
            state.write(&state_path)?;
            // The result is recorded: the training state is no longer needed.
            let _ = std::fs::remove_file(&ckpt_path);
        }
        write_outputs(opts, &tasks, &state)?;
    }
    let table = write_outputs(opts, &tasks, &state)?;
    Ok(table)
}

/// The method's learning rate with the best top-1 on val200 after training on train800: the method's ladder
/// widened while the best rate is at an end ([`widening_search`], at most [`MAX_LADDER_EXTENSIONS`] rungs a
/// side; a `--lr-grid` is searched as given), ties to the smaller rate. Every candidate's score is saved as
/// it finishes, so a resumed run does not train it again; a search that ends with the best rate at an edge
/// is logged and named in the report.
#[allow(clippy::too_many_arguments)]
fn tune_on_val(
    opts: &VtabOptions,
    task: &str,
    method: Method,
    train: &ImageSet,
    val: &ImageSet,
    state: &mut VtabState,
    state_path: &Path,
    device: &Device,
    log: &mut dyn FnMut(&str),
) -> Result<f32> {
    let (grid, extensions) = match &opts.lr_grid {
        Some(g) => (g.clone(), 0),
        None => (method.lr_grid(), MAX_LADDER_EXTENSIONS),
    };
    let search = widening_search(&grid, extensions, &mut |lr| {
        let key = format!("{lr}");
        let known = state
            .tuning
            .get(task)
            .and_then(|t| t.get(method.name()))
            .and_then(|m| m.get(&key))
            .copied();
        if let Some(a) = known {
            return Ok(vec![Some(a)]);
        }
        let run = RunOptions {
            lr,
            ..opts.run.clone()
        };
        // A rate at which training diverges lost (recorded as 0); any other error stops the run.
        let accuracy = validation_score(finetune(
            &opts.model.config.clone().with_classes(train.classes()),
            &opts.model.weights,
            &TaskData { train, test: val },
            method,
            &opts.adapter,
            &run,
            device,
            None,
            &Checkpointing::default(),
        ))?
        .unwrap_or(0.0);
        log(&format!(
            "{task:<16} {:<18} lr {lr:<8} val200 top-1 {:6.2}%",
            method.name(),
            100.0 * accuracy
        ));
        state
            .tuning
            .entry(task.to_string())
            .or_default()
            .entry(method.name().to_string())
            .or_default()
            .insert(key, accuracy);
        state.write(state_path)?;
        Ok(vec![Some(accuracy)])
    })?;
    if search.end.at_limit() {
        log(&format!(
            "{task:<16} {:<18} lr {} is {}",
            method.name(),
            search.best,
            search.end_text()
        ));
    }
    Ok(search.best)
}

/// Writes report.md, results.csv and plot.svg for the results so far; returns the table.
fn write_outputs(opts: &VtabOptions, tasks: &[String], state: &VtabState) -> Result<VtabTable> {
    let table = VtabTable::from_state(tasks, &opts.methods, state);
    let mut md = String::from("# VTAB-1k\n\n");
    let _ = writeln!(
        md,
        "Weights: `{}`{}. Preprocessing: {}. Each method's learning rate chosen on val200 after training \
         on train800, then trained on train800val200 and scored top-1 (%) on test.\n",
        opts.model.weights.display(),
        opts.model
            .architecture
            .as_ref()
            .map_or(String::new(), |a| format!(" ({a})")),
        opts.load.preprocess.describe()
    );
    md.push_str(&table.markdown());
    let _ = writeln!(md, "\n## Settings\n");
    for (k, v) in &state.settings {
        let _ = writeln!(md, "- {k}: {v}");
    }
    let _ = writeln!(md, "\n## Learning rates (val200 top-1 %)\n");
    for (task, methods) in &state.tuning {
        for (m, scores) in methods {
            // In increasing rate (the keys are the rates as text).
            let mut scores: Vec<(f32, f64)> = scores
                .iter()
                .filter_map(|(lr, a)| Some((lr.parse::<f32>().ok()?, *a)))
                .collect();
            scores.sort_by(|a, b| a.0.total_cmp(&b.0));
            let chosen = state.results.get(task).and_then(|r| r.get(m)).map(|r| r.lr);
            let edge = match (chosen, scores.first(), scores.last()) {
                (Some(c), Some(lo), Some(hi)) if scores.len() > 1 && (c == lo.0 || c == hi.0) => {
                    " (at an edge of the rates tried: may be under-tuned)"
                }
                _ => "",
            };
            let _ = writeln!(
                md,
                "- {task} {m}: {}{}{edge}",
                scores
                    .iter()
                    .map(|(lr, a)| format!("{lr}: {:.1}", 100.0 * a))
                    .collect::<Vec<_>>()
                    .join(", "),
                chosen.map_or(String::new(), |lr| format!(" → {lr}"))
            );
        }
    }
    atomic_write(&opts.out.join("report.md"), md.as_bytes())?;
    atomic_write(&opts.out.join("results.csv"), table.csv().as_bytes())?;
    let mut groups = tasks.to_vec();
    groups.push("mean".into());
    let series: Vec<BarSeries> = table
        .methods
        .iter()
        .enumerate()
        .map(|(i, m)| {
            let mut values = table.cells[i].clone();
            values.push(table.mean(i));
            BarSeries {
                name: m.clone(),
                values,
            }
        })
        .collect();
    write_grouped_bars(
        &opts.out.join("plot.svg"),
        "VTAB-1k top-1",
        &groups,
        &series,
    )?;
    Ok(table)
}
