//! The `liera` command. With no arguments it runs the main job: pretrain a small ConvNeXt on real digits
//! (MNIST), then fine-tune it on real clothing images (Fashion-MNIST, 100 per class) with full fine-tuning,
//! linear probing, LoRA, LieRA and LieRA first-order at equal rank, and print the comparison table.

mod cli;

use clap::{Parser, Subcommand};
use cli::args::{check_adapter_args, check_positive, check_train_args, seed_range, Common};
use cli::bench::{run_bench, BenchArgs};
use cli::idx::{
    run_compare, run_eval, run_finetune, run_merge, run_pretrain, CompareArgs, EvalArgs,
    FinetuneArgs, MergeArgs, PretrainArgs,
};
use cli::images::{run_predict, run_vtab, PredictArgs, VtabArgs};
use liera::job::{self, Method};
use liera::{Error, Result};

#[derive(Parser, Debug)]
#[command(
    name = "liera",
    version,
    about = "Fine-tune ConvNeXt with LoRA and the Lie-group adapter LieRA (W' = W ⊙ exp(ΔW)) on CPU or any GPU",
    after_help = "Examples:\n  liera                                  # the main job: pretrain on digits, compare methods on clothing\n  liera compare --seeds 3                # the same, over 3 seeds (mean ± std)\n  liera pretrain --out runs/base         # pretrain only\n  liera finetune --weights runs/base/model.safetensors --method liera --rank 8\n  liera eval --weights runs/base/model.safetensors --data-dir path/to/fashion-mnist\n  liera merge --weights base.safetensors --adapter runs/x/adapters/liera-seed0 --out merged.safetensors\n  liera bench --json"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    common: Common,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Pretrain on the source task, then compare fine-tuning methods on the target task (the default job).
    Compare(CompareArgs),
    /// Pretrain a ConvNeXt on the source task (MNIST by default) and save its weights.
    Pretrain(PretrainArgs),
    /// Fine-tune pretrained weights on the target task with one method.
    Finetune(FinetuneArgs),
    /// Evaluate weights (and optionally an adapter) on a test set.
    Eval(EvalArgs),
    /// Merge an adapter into its base weights and write the merged model.
    Merge(MergeArgs),
    /// Print the top classes of images under fine-tuned weights (and adapter).
    Predict(PredictArgs),
    /// Run the VTAB-1k protocol over every task folder of a root and write the table.
    Vtab(VtabArgs),
    /// Measure matmul, convolution and training-step speed on the chosen device.
    Bench(BenchArgs),
}

fn main() {
    // Before any thread allocates: the pool's threads must share the main heap's arena.
    liera::backend::cpu::keep_freed_memory();
    let cli = Cli::parse();
    if let Err(e) = run_on_pool(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Runs the command on a thread of rayon's pool (`RAYON_NUM_THREADS` or the machine's cores), so that the
/// CPU kernels' parallel loops start on the calling thread, which then takes part in them. Called from
/// outside the pool, each parallel loop was handed to the pool's threads while the caller slept. On the
/// 2-core AMD EPYC (Zen 3) development machine, `liera bench --device cpu --step convnext_atto --kinds
/// full,liera --batch 64 --size 32 --reps 10` (binaries alternated, six runs each) took 107.9 and 91.5 ms
/// (full, LieRA; medians) handed off against 92.2 and 78.6 in a pool; the 224 LieRA step (`--batch 32
/// --size 224 --reps 4`, four runs each) 886 against 902 ms, level. At one thread the 32×32 LieRA step took
/// 112–132 ms handed off against 94–98 ms. (The pool's threads allocate from the main arena,
/// [`liera::backend::cpu::keep_freed_memory`]; with arenas of their own the 224 step was slower in the pool.)
///
/// With several threads the command runs on a thread of the global pool (`rayon::scope` from outside the
/// pool runs its body there), which the training's batch producer, a thread of its own, also hands its
/// decoding to: while the command waits for a batch, the other threads decode it. With one thread that
/// would deadlock (the pool's only thread would wait for a batch only it can decode), so the command gets a
/// one-thread pool of its own and the producer the global one.
fn run_on_pool(cli: Cli) -> Result<()> {
    if rayon::current_num_threads() > 1 {
        return rayon::scope(|_| run(cli));
    }
    match rayon::ThreadPoolBuilder::new().num_threads(1).build() {
        Ok(pool) => pool.install(|| run(cli)),
        Err(_) => run(cli),
    }
}

fn run(cli: Cli) -> Result<()> {
    let common = cli.common.clone();
    // No subcommand: the comparison with every default (parsed, so the defaults live in one place).
    let command = match cli.command {
        Some(c) => c,
        None => Cli::try_parse_from(["liera", "compare"])
            .map_err(|e| Error::invalid("liera", e.to_string()))?
            .command
            .expect("`compare` parses to a command"),
    };
    // Flags are checked before any device or data work, so a typo costs nothing.
    match &command {
        Command::Compare(a) => {
            check_adapter_args(&a.adapter)?;
            check_positive("--steps", a.steps as f64)?;
            check_positive("--pretrain-steps", a.pretrain_steps as f64)?;
            check_positive("--batch-size", a.batch_size as f64)?;
            check_positive("--seeds", a.seeds as f64)?;
            check_positive("--per-class", a.per_class as f64)?;
            if let Some(lr) = a.lr {
                check_positive("--lr", lr as f64)?;
            }
            a.adapter.methods(&a.methods)?;
            seed_range(common.seed, a.seeds)?;
        }
        Command::Finetune(a) => {
            check_adapter_args(&a.adapter)?;
            check_train_args(&a.train)?;
            check_positive("--per-class", a.per_class as f64)?;
            a.adapter.method(Method::parse(&a.method)?, true)?;
        }
        Command::Pretrain(a) => check_train_args(&a.train)?,
        Command::Vtab(a) => {
            check_adapter_args(&a.adapter)?;
            check_positive("--batch-size", a.batch_size as f64)?;
            if let Some(s) = a.steps {
                check_positive("--steps", s as f64)?;
            }
            if let Some(lr) = a.lr {
                check_positive("--lr", lr as f64)?;
            }
            for lr in a.lr_grid.iter().flatten() {
                check_positive("--lr-grid", *lr as f64)?;
            }
            a.adapter.methods(&a.methods)?;
        }
        Command::Predict(a) => check_positive("--top", a.top as f64)?,
        Command::Eval(_) | Command::Merge(_) | Command::Bench(_) => {}
    }
    let device = job::select_device(&common.device)?;
    match command {
        Command::Compare(a) => run_compare(a, &common, &device),
        Command::Pretrain(a) => run_pretrain(a, &common, &device),
        Command::Finetune(a) => run_finetune(a, &common, &device),
        Command::Eval(a) => run_eval(a, &common, &device),
        Command::Merge(a) => run_merge(a, &device),
        Command::Predict(a) => run_predict(a, &common, &device),
        Command::Vtab(a) => run_vtab(a, &common, &device),
        Command::Bench(a) => run_bench(a, &device),
    }
}
