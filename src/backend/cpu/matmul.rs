//! CPU matrix product: a packed, cache-blocked, register-tiled GEMM (the BLIS scheme), no BLAS.
//!
//! C += op(A)·op(B) is cut into blocks: KC rows of op(B) × NC columns are packed once into panels NR
//! columns wide, and each rayon task packs an MC×KC block of op(A) into panels MR rows tall (transposes are
//! resolved while packing, so every layout costs the same). The micro-kernel keeps an MR×NR tile of C in
//! registers and adds one outer product of an A column and a B row per step of k; its fixed-size loops are
//! unrolled and vectorised by the compiler. It is compiled three times, with the instruction set chosen at
//! run time: AVX-512 (6×32 tile), AVX2+FMA (6×16) and portable code (4×8).

use crate::backend::MatmulSpec;
use rayon::prelude::*;

/// Depth of a packed block (k per pass): an A panel (MR·KC) and a B panel (KC·NR) stay in L1/L2.
const KC: usize = 256;
/// Rows of op(A) packed per task.
const MC: usize = 96;
/// Columns of op(B) packed per pass.
const NC: usize = 2048;
/// Below this many multiply-adds a product runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 16;

/// C[b] = op(A[b]) · op(B[b]), contiguous (batch, m, n).
pub fn matmul(a: &[f32], b: &[f32], spec: &MatmulSpec) -> Vec<f32> {
    let MatmulSpec { batch, m, k, n, .. } = *spec;
    let mut c = vec![0.0f32; batch * m * n];
    if m * n == 0 {
        return c;
    }
    c.par_chunks_mut(m * n).enumerate().for_each(|(bi, c_mat)| {
        let a_mat = &a[bi * spec.a_batch_stride..bi * spec.a_batch_stride + m * k];
        let b_mat = &b[bi * spec.b_batch_stride..bi * spec.b_batch_stride + k * n];
        gemm_acc(a_mat, b_mat, c_mat, m, k, n, spec.trans_a, spec.trans_b);
    });
    c
}

/// The instruction set the micro-kernel was compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Avx512,
    Avx2Fma,
    Portable,
}

fn isa() -> Isa {
    #[cfg(target_arch = "x86_64")]
    {
        if std::is_x86_feature_detected!("avx512f") {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

/// c += op(a)·op(b) for one m×k by k×n product; c is m×n row-major. Shared with the convolution kernels.
///
/// `a` is m×k row-major (k×m when `trans_a`); `b` is k×n row-major (n×k when `trans_b`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn gemm_acc(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
) {
    if m * n == 0 || k == 0 {
        return;
    }
    let view = Operands {
        a,
        b,
        m,
        k,
        n,
        trans_a,
        trans_b,
    };
    match isa() {
        Isa::Avx512 => gemm_blocked::<6, 32>(&view, c, tile_avx512),
        Isa::Avx2Fma => gemm_blocked::<6, 16>(&view, c, tile_avx2),
        Isa::Portable => gemm_blocked::<4, 8>(&view, c, tile_portable),
    }
}

/// Adds one MR×NR tile product (packed panels `a`, `b`) to C at `c` (row stride `ldc`), writing only the
/// leading `mr`×`nr` corner.
type TileFn = unsafe fn(a: &[f32], b: &[f32], c: *mut f32, ldc: usize, mr: usize, nr: usize);

/// The micro-kernel compiled for AVX-512. Closures do not inherit target features, so each instruction set
/// gets its own function and the blocked loop calls it through a pointer (one call per tile, ~kc·MR·NR
/// multiply-adds, so the indirection costs nothing measurable).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_avx512(a: &[f32], b: &[f32], c: *mut f32, ldc: usize, mr: usize, nr: usize) {
    tile::<6, 32, true>(a, b, c, ldc, mr, nr)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(a: &[f32], b: &[f32], c: *mut f32, ldc: usize, mr: usize, nr: usize) {
    tile::<6, 16, true>(a, b, c, ldc, mr, nr)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx512(a: &[f32], b: &[f32], c: *mut f32, ldc: usize, mr: usize, nr: usize) {
    tile::<6, 32, false>(a, b, c, ldc, mr, nr)
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn tile_avx2(a: &[f32], b: &[f32], c: *mut f32, ldc: usize, mr: usize, nr: usize) {
    tile::<6, 16, false>(a, b, c, ldc, mr, nr)
}

unsafe fn tile_portable(a: &[f32], b: &[f32], c: *mut f32, ldc: usize, mr: usize, nr: usize) {
    tile::<4, 8, false>(a, b, c, ldc, mr, nr)
}

/// C[0..mr, 0..nr] += the MR×NR tile Σ_p a[p][0..MR] ⊗ b[p][0..NR].
///
/// # Safety
/// `c` must point at a C element with `mr` rows of `nr` writable values at stride `ldc`, written by no one
/// else meanwhile.
#[inline(always)]
unsafe fn tile<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
) {
    let acc = micro_kernel::<MR, NR, FMA>(a, b);
    for (i, row) in acc.iter().enumerate().take(mr) {
        // SAFETY: the caller guarantees rows 0..mr × columns 0..nr at stride ldc are ours.
        let dst = unsafe { std::slice::from_raw_parts_mut(c.add(i * ldc), nr) };
        for (d, &t) in dst.iter_mut().zip(row) {
            *d += t;
        }
    }
}

/// The operands of one product with their layouts.
struct Operands<'a> {
    a: &'a [f32],
    b: &'a [f32],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
}

impl Operands<'_> {
    #[inline(always)]
    fn a_at(&self, i: usize, p: usize) -> f32 {
        if self.trans_a {
            self.a[p * self.m + i]
        } else {
            self.a[i * self.k + p]
        }
    }
}

/// A pointer to C that tasks share; each task writes a disjoint set of tiles.
#[derive(Clone, Copy)]
struct CPtr(*mut f32);
// SAFETY: tasks write disjoint regions of C (distinct row blocks × column ranges), see `gemm_blocked`.
unsafe impl Send for CPtr {}
unsafe impl Sync for CPtr {}

impl CPtr {
    /// The pointer (a method, so closures capture the whole Sync wrapper rather than its field).
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// Packs rows p0..p0+kc, columns j0..j0+nc of op(B) into panels of NR columns: panel q holds, for each p,
/// the NR values op(B)[p, j0 + q·NR ..], zero-padded past the last column.
fn pack_b<const NR: usize>(
    v: &Operands,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    out: &mut [f32],
) {
    out.par_chunks_mut(kc * NR)
        .enumerate()
        .for_each(|(q, panel)| {
            let jq = j0 + q * NR;
            let width = NR.min(j0 + nc - jq);
            for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                let pp = p0 + p;
                if v.trans_b {
                    for (j, r) in row.iter_mut().enumerate().take(width) {
                        *r = v.b[(jq + j) * v.k + pp];
                    }
                } else {
                    row[..width].copy_from_slice(&v.b[pp * v.n + jq..pp * v.n + jq + width]);
                }
                row[width..].fill(0.0);
            }
        });
}

/// Packs rows i0..i0+mc, columns p0..p0+kc of op(A) into panels of MR rows (zero-padded).
fn pack_a<const MR: usize>(
    v: &Operands,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    out: &mut [f32],
) {
    for (r, panel) in out.chunks_exact_mut(kc * MR).enumerate() {
        let ir = i0 + r * MR;
        let height = MR.min(i0 + mc - ir);
        for (p, col) in panel.chunks_exact_mut(MR).enumerate() {
            for (i, x) in col.iter_mut().enumerate() {
                *x = if i < height {
                    v.a_at(ir + i, p0 + p)
                } else {
                    0.0
                };
            }
        }
    }
}

fn gemm_blocked<const MR: usize, const NR: usize>(v: &Operands, c: &mut [f32], tile_fn: TileFn) {
    let (m, k, n) = (v.m, v.k, v.n);
    let c_ptr = CPtr(c.as_mut_ptr());
    let serial = m * n * k < PAR_MIN_MACS;
    let mut b_pack = Vec::new();
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        let b_panels = nc.div_ceil(NR);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            b_pack.clear();
            b_pack.resize(b_panels * kc * NR, 0.0);
            pack_b::<NR>(v, p0, kc, j0, nc, &mut b_pack);
            // Tasks: an MC row block × a range of B panels (a few, so that skinny products still split).
            let row_blocks = m.div_ceil(MC);
            let panels_per_task = if row_blocks >= 4 {
                b_panels
            } else {
                8.min(b_panels)
            };
            let col_tasks = b_panels.div_ceil(panels_per_task);
            let b_pack = &b_pack;
            let task = |t: usize| {
                let (rb, ct) = (t / col_tasks, t % col_tasks);
                let i0 = rb * MC;
                let mc = MC.min(m - i0);
                let a_panels = mc.div_ceil(MR);
                let mut a_pack = vec![0.0f32; a_panels * kc * MR];
                pack_a::<MR>(v, i0, mc, p0, kc, &mut a_pack);
                let q_end = ((ct + 1) * panels_per_task).min(b_panels);
                for q in ct * panels_per_task..q_end {
                    let jq = j0 + q * NR;
                    let nr = NR.min(n - jq);
                    let bp = &b_pack[q * kc * NR..(q + 1) * kc * NR];
                    for (r, ap) in a_pack.chunks_exact(kc * MR).enumerate() {
                        let ir = i0 + r * MR;
                        let mr = MR.min(m - ir);
                        // SAFETY: rows ir..ir+mr and columns jq..jq+nr lie inside C (m×n) and belong to
                        // this task alone (its row block and panel range); the tile function was chosen
                        // for an instruction set this CPU has.
                        unsafe { tile_fn(ap, bp, c_ptr.get().add(ir * n + jq), n, mr, nr) };
                    }
                }
            };
            let tasks = row_blocks * col_tasks;
            if serial {
                (0..tasks).for_each(task);
            } else {
                (0..tasks).into_par_iter().for_each(task);
            }
        }
    }
}

/// One MR×NR tile: Σ_p a[p][0..MR] ⊗ b[p][0..NR], kept in registers.
#[inline(always)]
fn micro_kernel<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    b: &[f32],
) -> [[f32; NR]; MR] {
    let mut acc = [[0.0f32; NR]; MR];
    for (ac, br) in a.chunks_exact(MR).zip(b.chunks_exact(NR)) {
        let ac: &[f32; MR] = ac.try_into().expect("chunks_exact yields MR values");
        let br: &[f32; NR] = br.try_into().expect("chunks_exact yields NR values");
        for i in 0..MR {
            let ai = ac[i];
            for j in 0..NR {
                acc[i][j] = if FMA {
                    ai.mul_add(br[j], acc[i][j])
                } else {
                    ai * br[j] + acc[i][j]
                };
            }
        }
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every instruction-set variant and blocking edge (partial tiles, k across KC, n across NC panels)
    /// agrees with the textbook triple loop.
    #[test]
    fn blocked_gemm_matches_the_triple_loop() {
        let mut seed = 1u64;
        let mut next = || {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        };
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 5, 33),
            (13, 300, 17),
            (100, 257, 70),
            (6, 16, 32),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<f32> = (0..m * k).map(|_| next()).collect();
                let b: Vec<f32> = (0..k * n).map(|_| next()).collect();
                let v = Operands {
                    a: &a,
                    b: &b,
                    m,
                    k,
                    n,
                    trans_a: ta,
                    trans_b: tb,
                };
                let mut want = vec![0.0f64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        for p in 0..k {
                            let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                            want[i * n + j] += v.a_at(i, p) as f64 * bv as f64;
                        }
                    }
                }
                let mut variants: Vec<Vec<f32>> = Vec::new();
                let mut c = vec![0.0f32; m * n];
                gemm_blocked::<4, 8>(&v, &mut c, tile_portable);
                variants.push(c);
                let mut c = vec![0.0f32; m * n];
                gemm_acc(&a, &b, &mut c, m, k, n, ta, tb);
                variants.push(c);
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let mut c = vec![0.0f32; m * n];
                    gemm_blocked::<6, 16>(&v, &mut c, tile_avx2);
                    variants.push(c);
                }
                for c in variants {
                    for (got, w) in c.iter().zip(&want) {
                        assert!(
                            (*got as f64 - w).abs() < 1e-4 * (1.0 + w.abs()) * (k as f64).sqrt(),
                            "{m}x{k}x{n} ta {ta} tb {tb}: {got} vs {w}"
                        );
                    }
                }
            }
        }
    }
}
