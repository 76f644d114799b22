//! Matrix-product benchmark: liera's CPU GEMM against two pure-Rust peers in the same run and on the same
//! number of threads:
//!
//! - the `gemm` crate (faer's GEMM), with `Parallelism::Rayon(n)`;
//! - the `matrixmultiply` crate, built with its `threading` feature, with `MATMUL_NUM_THREADS = n`.
//!
//! n is liera's thread count, the size of rayon's global pool (`rayon::current_num_threads()`, so
//! `RAYON_NUM_THREADS` sets it for all three). `matrixmultiply` supports only 1, 2 or 4 threads (3 runs as
//! 2, more than 4 as 4); the table says so when that makes its count differ. Each library may also use
//! fewer threads on a small product by its own heuristic.
//!
//! **Shapes.** The squares 1024³ and 2048³, then every distinct GEMM shape of a convnext_atto training
//! step (full fine-tuning; forward and backward) at 1×32×32 with batch 64 and at 3×224×224 with batch 32,
//! derived in [`atto_step_gemms`] from the atto dims [40, 80, 160, 320], depths [2, 2, 6, 2] and the spatial
//! sizes (stem /4, then /2 at each later stage). The GEMMs of a step are (rows = batch·H·W at that stage,
//! C the stage's channels, C′ the previous stage's; m×k×n means (m×k)·(k×n)):
//!
//! ```text
//!   stem conv 4×4/4 (im2col, K = in·16)   fwd (rows, K, C)                       dW (C, rows, K)   (no dX: the input is data)
//!   downsample conv 2×2/2 (K = 4C′)       fwd (rows, K, C)    dX (rows, C, K)    dW (C, rows, K)
//!   block fc1, 1×1 conv C → 4C            fwd (rows, C, 4C)   dX (rows, 4C, C)   dW (4C, rows, C)
//!   block fc2, 1×1 conv 4C → C            fwd (rows, 4C, C)   dX (rows, C, 4C)   dW (C, rows, 4C)
//!   head fc, Linear 320 → 10              fwd (N, 320, 10)    dX (N, 10, 320)    dW (10, N, 320)
//! ```
//!
//! (fc1's dX has fc2's forward shape and the other way round; a shape that occurs several times is timed
//! once, with all its uses listed.) The depthwise 7×7 convolutions are direct loops in liera, not GEMMs, and
//! the LoRA/LieRA factor products (rank 8, independent of the batch) are left out. liera runs the
//! convolutions as W·X̃, the transpose of the row-major form above, with the batch folded into strided
//! columns; here all three libraries compute the same plain row-major product of those dimensions. liera's
//! figure includes allocating its output tensor (its API returns a new tensor; the previous call's output is
//! freed first, so the allocator hands back the same memory), the peers write into a buffer allocated once.
//!
//! **The ceiling.** First the bench times 12 independent vector multiply-adds on registers on every thread
//! ([`fma_peak`]): the most any product can reach on this machine, against which each figure reads as a
//! share of the machine.
//!
//! **Timing.** After one warm-up call each, the three are timed in rounds, one sample of each per round
//! (the order rotates every round), so a change in machine load affects all three alike and does not bias
//! their ratios. A sample is the mean of enough calls to last a few milliseconds. The table gives the
//! median GFLOP/s of each, the threads each may use, and the ratios liera/gemm and liera/matrixmultiply
//! (above 1: liera is faster). For each step configuration, the sum over its GEMMs of count × median time
//! gives the GEMM time of one step per library. Every shape's results are compared across the three.
//!
//! Run with `cargo bench --bench matmul` (`-- --quick` for fewer rounds; `-- 224px` or `-- square 32px`
//! for those groups of shapes only, `-- 64x10x320` for one shape; `-- --transposed` for every shape as
//! its transpose n×k×m, the orientation of liera's convolutions, whose rows are channels).

use liera::{Device, Tensor};
use std::time::Instant;

/// convnext_atto: channels and blocks per stage, and the classes of the benchmarked head.
const ATTO_DIMS: [usize; 4] = [40, 80, 160, 320];
const ATTO_DEPTHS: [usize; 4] = [2, 2, 6, 2];
const CLASSES: usize = 10;

/// The step configurations benchmarked: (tag, batch, input channels, input side).
const STEPS: [(&str, usize, usize, usize); 2] = [("32px", 64, 1, 32), ("224px", 32, 3, 224)];

/// One use of a GEMM shape: which step configuration, what it computes, and how often per step.
struct Use {
    step: &'static str,
    what: String,
    count: usize,
}

/// A distinct product C (m×n) = A (m×k) · B (k×n) and where it occurs.
struct Gemm {
    m: usize,
    k: usize,
    n: usize,
    uses: Vec<Use>,
}

fn add(list: &mut Vec<Gemm>, (m, k, n): (usize, usize, usize), step: &'static str, what: String) {
    add_n(list, (m, k, n), step, what, 1)
}

fn add_n(
    list: &mut Vec<Gemm>,
    (m, k, n): (usize, usize, usize),
    step: &'static str,
    what: String,
    count: usize,
) {
    let u = Use { step, what, count };
    match list.iter_mut().find(|g| (g.m, g.k, g.n) == (m, k, n)) {
        Some(g) => g.uses.push(u),
        None => list.push(Gemm {
            m,
            k,
            n,
            uses: vec![u],
        }),
    }
}

/// Appends the GEMMs of one convnext_atto training step (full fine-tuning, forward and backward) at
/// `batch` images of `in_chans`×`size`×`size` to `list` (see the module docs for the table).
fn atto_step_gemms(
    list: &mut Vec<Gemm>,
    step: &'static str,
    batch: usize,
    in_chans: usize,
    size: usize,
) {
    // Stem: conv 4×4 stride 4, in_chans → dims[0], as an im2col GEMM with K = in_chans·4·4. The input
    // needs no gradient, so the stem has no dX product.
    let mut side = size / 4;
    let rows = batch * side * side;
    let (k, c0) = (in_chans * 16, ATTO_DIMS[0]);
    add(list, (rows, k, c0), step, "stem fwd".into());
    add(list, (c0, rows, k), step, "stem dW".into());
    for (i, (&c, &depth)) in ATTO_DIMS.iter().zip(&ATTO_DEPTHS).enumerate() {
        if i > 0 {
            // Downsample: LayerNorm2d then conv 2×2 stride 2, dims[i−1] → c, K = 4·dims[i−1].
            side /= 2;
            let rows = batch * side * side;
            let k = 4 * ATTO_DIMS[i - 1];
            add(list, (rows, k, c), step, format!("s{i} down fwd"));
            add(list, (rows, c, k), step, format!("s{i} down dX"));
            add(list, (c, rows, k), step, format!("s{i} down dW"));
        }
        // Each of the stage's `depth` blocks: the 1×1 convs fc1 (c → 4c) and fc2 (4c → c).
        let rows = batch * side * side;
        let d = depth;
        add_n(list, (rows, c, 4 * c), step, format!("s{i} fc1 fwd"), d);
        add_n(list, (rows, 4 * c, c), step, format!("s{i} fc1 dX"), d);
        add_n(list, (4 * c, rows, c), step, format!("s{i} fc1 dW"), d);
        add_n(list, (rows, 4 * c, c), step, format!("s{i} fc2 fwd"), d);
        add_n(list, (rows, c, 4 * c), step, format!("s{i} fc2 dX"), d);
        add_n(list, (c, rows, 4 * c), step, format!("s{i} fc2 dW"), d);
    }
    // Head: Linear(dims[3] → classes) on the pooled features.
    let c = ATTO_DIMS[3];
    add(list, (batch, c, CLASSES), step, "head fwd".into());
    add(list, (batch, CLASSES, c), step, "head dX".into());
    add(list, (CLASSES, batch, c), step, "head dW".into());
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let h = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[h - 1] + v[h]) / 2.0
    } else {
        v[h]
    }
}

/// Deterministic values in [−0.5, 0.5) without short periods.
fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

/// Largest |x − y| and largest |y|.
fn max_diff(x: &[f32], y: &[f32]) -> (f32, f32) {
    x.iter().zip(y).fold((0.0f32, 0.0f32), |(d, m), (a, b)| {
        (d.max((a - b).abs()), m.max(b.abs()))
    })
}

/// Threads `matrixmultiply` runs on when allowed `n`: its thread tree has 1, 2 or 4 leaves.
fn matrixmultiply_threads(n: usize) -> usize {
    match n {
        0 | 1 => 1,
        2 | 3 => 2,
        _ => 4,
    }
}

/// One peer under test: a name and a call computing C = A·B for the current shape.
type Run<'a> = Box<dyn FnMut() + 'a>;

/// Medians (seconds per call) of the peers in `runs`, timed in `rounds` interleaved rounds of one sample
/// each (`inner` calls per sample), after one warm-up call each.
fn time_interleaved(runs: &mut [Run<'_>], rounds: usize, inner: usize) -> Vec<f64> {
    for r in runs.iter_mut() {
        r();
    }
    let mut samples = vec![Vec::with_capacity(rounds); runs.len()];
    for round in 0..rounds {
        for j in 0..runs.len() {
            let p = (round + j) % runs.len();
            let t = Instant::now();
            for _ in 0..inner {
                runs[p]();
            }
            samples[p].push(t.elapsed().as_secs_f64() / inner as f64);
        }
    }
    samples.into_iter().map(median).collect()
}

/// `iters` rounds of 12 independent L-wide multiply-adds on registers (no memory traffic); the flops done.
#[inline(always)]
fn register_fmas<const L: usize, const FUSED: bool>(iters: u64) -> f64 {
    let (b, c) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    let mut acc = [[1.0f32; L]; 12];
    for _ in 0..iters {
        for a in &mut acc {
            for x in a.iter_mut() {
                *x = if FUSED { x.mul_add(b, c) } else { *x * b + c };
            }
        }
    }
    std::hint::black_box(&acc);
    (iters as usize * 12 * L * 2) as f64
}

/// The machine's multiply-add ceiling in GFLOP/s: [`register_fmas`] on every thread of rayon's pool at
/// once, with the vectors liera's GEMM kernel uses here (16 floats with AVX-512, 8 with AVX2+FMA, 4 without:
/// baseline x86-64 and other targets are not tuned here, so their figure is only indicative). No product
/// can beat it; a GEMM's figure over it is the share of the machine the product uses.
fn fma_peak() -> f64 {
    #[cfg(target_arch = "x86_64")]
    {
        #[target_feature(enable = "avx512f,avx2,fma")]
        fn avx512(iters: u64) -> f64 {
            register_fmas::<16, true>(iters)
        }
        #[target_feature(enable = "avx2,fma")]
        fn avx2(iters: u64) -> f64 {
            register_fmas::<8, true>(iters)
        }
        let fma = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
        let run: fn(u64) -> f64 = if fma && is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F, AVX2 and FMA (checked just above).
            |iters| unsafe { avx512(iters) }
        } else if fma {
            // SAFETY: the CPU has AVX2 and FMA (checked just above).
            |iters| unsafe { avx2(iters) }
        } else {
            register_fmas::<4, false>
        };
        time_on_every_thread(run)
    }
    #[cfg(not(target_arch = "x86_64"))]
    time_on_every_thread(register_fmas::<4, true>)
}

/// GFLOP/s of `run` on every thread of rayon's pool at once, after a warm-up (the best of 3 timings).
fn time_on_every_thread(run: fn(u64) -> f64) -> f64 {
    const ITERS: u64 = 20_000_000;
    rayon::broadcast(|_| run(ITERS / 10));
    (0..3)
        .map(|_| {
            let t = Instant::now();
            let flops: f64 = rayon::broadcast(|_| run(ITERS)).into_iter().sum();
            flops / t.elapsed().as_secs_f64() / 1e9
        })
        .fold(0.0, f64::max)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let threads = rayon::current_num_threads();
    // matrixmultiply reads this once, at its first call.
    std::env::set_var("MATMUL_NUM_THREADS", threads.to_string());
    let mm_threads = matrixmultiply_threads(threads);
    let dev = Device::cpu();
    println!("device: {}", dev.name());
    println!("liera's GEMM: {}", liera::backend::cpu::gemm_plan());
    println!(
        "threads: liera {threads} (rayon's global pool), gemm {threads} (Parallelism::Rayon({threads})), \
         matrixmultiply {mm_threads} (MATMUL_NUM_THREADS={threads}{})",
        if mm_threads != threads {
            "; it supports 1, 2 or 4"
        } else {
            ""
        }
    );
    if let Ok(cpu) = std::fs::read_to_string("/proc/cpuinfo") {
        if let Some(model) = cpu.lines().find_map(|l| l.strip_prefix("model name")) {
            println!("cpu: {}", model.trim_start_matches([' ', '\t', ':']));
        }
    }
    println!(
        "multiply-add ceiling: {:.1} GFLOP/s on {threads} threads (12 independent vector FMAs on registers, \
         no memory: no product can be faster)",
        fma_peak()
    );

    let mut gemms = Vec::new();
    add(&mut gemms, (1024, 1024, 1024), "square", "1024³".into());
    add(&mut gemms, (2048, 2048, 2048), "square", "2048³".into());
    for (tag, batch, chans, size) in STEPS {
        atto_step_gemms(&mut gemms, tag, batch, chans, size);
    }
    // Arguments that are not flags pick groups of shapes (square, 32px, 224px) or single shapes (`64x10x320`).
    let only: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    // `--transposed`: every shape as its transpose, Cᵀ = Bᵀ·Aᵀ (n×k×m), which is the form liera's
    // convolutions compute (rows = channels, columns = batch × pixels).
    if std::env::args().any(|a| a == "--transposed") {
        for g in &mut gemms {
            std::mem::swap(&mut g.m, &mut g.n);
        }
    }
    gemms.retain(|g| {
        let shape = format!("{}x{}x{}", g.m, g.k, g.n);
        only.is_empty()
            || only
                .iter()
                .any(|o| *o == shape || g.uses.iter().any(|u| o == u.step))
    });

    println!(
        "\n{:<20} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8}  uses (×count per step)",
        "m×k×n", "liera", "gemm", "mmul", "thr", "l/gemm", "l/mmul"
    );
    println!(
        "{:<20} {:>9} {:>9} {:>9} {:>7} {:>8} {:>8}",
        "", "GFLOP/s", "GFLOP/s", "GFLOP/s", "l/g/m", "", ""
    );
    let par = gemm::Parallelism::Rayon(threads);
    // Per step configuration: GEMM seconds of one step for liera, gemm and matrixmultiply.
    let mut step_time = vec![[0.0f64; 3]; STEPS.len()];
    // Worst disagreement (relative to the largest |C|) of gemm and matrixmultiply with liera.
    let mut worst = (0.0f32, 0.0f32, String::new());
    for (idx, g) in gemms.iter().enumerate() {
        let (m, k, n) = (g.m, g.k, g.n);
        let a = fill(m * k, 2 * idx as u64 + 1);
        let b = fill(k * n, 2 * idx as u64 + 2);
        let ta = Tensor::from_slice(&a, [m, k], &dev).unwrap();
        let tb = Tensor::from_slice(&b, [k, n], &dev).unwrap();
        let flops = 2.0 * (m * k * n) as f64;
        // Sizing only: assume ~50 GFLOP/s, make a sample last ≥ 2 ms and a peer's samples about 0.25 s.
        let call_s = flops / 50e9;
        let inner = ((2e-3 / call_s).ceil() as usize).max(1);
        let rounds = if quick {
            3
        } else {
            ((0.25 / (inner as f64 * call_s)).round() as usize).clamp(5, 21)
        };
        let mut c_liera: Option<Tensor> = None;
        let mut c_gemm = vec![0.0f32; m * n];
        let mut c_mm = vec![0.0f32; m * n];
        let medians = {
            let mut runs: Vec<Run<'_>> = vec![
                Box::new(|| {
                    // The previous output is freed first, as a training step frees a buffer before the
                    // next step asks for one of its size: kept alive, the peers' allocations between the
                    // calls split its hole, and every new 64 MB output grew the heap with fresh pages
                    // (page faults, not the product) for most of the rounds.
                    c_liera = None;
                    c_liera = Some(std::hint::black_box(ta.matmul(&tb).unwrap()));
                }),
                // SAFETY: a (m×k), b (k×n) and c (m×n) are dense row-major buffers of those sizes.
                Box::new(|| unsafe {
                    gemm::gemm(
                        m,
                        n,
                        k,
                        c_gemm.as_mut_ptr(),
                        1,
                        n as isize,
                        false,
                        a.as_ptr(),
                        1,
                        k as isize,
                        b.as_ptr(),
                        1,
                        n as isize,
                        0.0,
                        1.0,
                        false,
                        false,
                        false,
                        par,
                    );
                    std::hint::black_box(&c_gemm);
                }),
                // SAFETY: as above.
                Box::new(|| unsafe {
                    matrixmultiply::sgemm(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        k as isize,
                        1,
                        b.as_ptr(),
                        n as isize,
                        1,
                        0.0,
                        c_mm.as_mut_ptr(),
                        n as isize,
                        1,
                    );
                    std::hint::black_box(&c_mm);
                }),
            ];
            time_interleaved(&mut runs, rounds, inner)
        };
        let c_liera = c_liera.expect("timed at least once").to_vec().unwrap();
        for (peer, c) in [("gemm", &c_gemm), ("matrixmultiply", &c_mm)] {
            let (d, big) = max_diff(c, &c_liera);
            if d / big.max(f32::MIN_POSITIVE) > worst.0 / worst.1.max(f32::MIN_POSITIVE) {
                worst = (d, big, format!("{peer} on {m}×{k}×{n}"));
            }
        }
        let gf: Vec<f64> = medians.iter().map(|t| flops / t / 1e9).collect();
        let uses: Vec<String> = g
            .uses
            .iter()
            .map(|u| {
                let count = if u.count > 1 {
                    format!(" ×{}", u.count)
                } else {
                    String::new()
                };
                format!("{} {}{count}", u.step, u.what)
            })
            .collect();
        println!(
            "{:<20} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>8.2} {:>8.2}  {}",
            format!("{m}×{k}×{n}"),
            gf[0],
            gf[1],
            gf[2],
            format!("{threads}/{threads}/{mm_threads}"),
            gf[0] / gf[1],
            gf[0] / gf[2],
            uses.join(", ")
        );
        for u in &g.uses {
            if let Some(s) = STEPS.iter().position(|s| s.0 == u.step) {
                for (acc, t) in step_time[s].iter_mut().zip(&medians) {
                    *acc += u.count as f64 * t;
                }
            }
        }
    }

    println!(
        "\nGEMM time of one convnext_atto training step (full fine-tuning), Σ count × median:"
    );
    for ((tag, batch, chans, size), [l, g, mm]) in STEPS.iter().zip(&step_time) {
        if *l == 0.0 {
            continue;
        }
        println!(
            "  {tag} ({chans}×{size}×{size}, batch {batch}): liera {:.2} ms, gemm {:.2} ms, \
             matrixmultiply {:.2} ms (liera/gemm {:.2}, liera/matrixmultiply {:.2} in speed)",
            1e3 * l,
            1e3 * g,
            1e3 * mm,
            g / l,
            mm / l
        );
    }
    let (d, big, at) = worst;
    if at.is_empty() {
        // No shape's difference was above zero, so none was recorded.
        println!(
            "\nagreement with liera over all {} shapes: both peers' products equal liera's exactly",
            gemms.len()
        );
    } else {
        println!(
            "\nagreement with liera over all {} shapes: worst max |Δ| = {d:.3e} ({at}; max |C| there \
             {big:.3e}, relative {:.1e})",
            gemms.len(),
            d / big.max(f32::MIN_POSITIVE)
        );
    }
    assert!(
        d <= 1e-3 * big.max(1.0),
        "a peer computes something else than liera: max |Δ| {d} ({at})"
    );
}
