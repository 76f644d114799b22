//! CPU matrix product: a packed, cache-blocked, register-tiled GEMM (the BLIS scheme), no BLAS.
//!
//! C += A·B is cut into blocks: KC rows of B × NC columns are packed once into panels NR columns wide, and
//! each rayon task packs an MC×KC block of A into panels MR rows tall. The micro-kernel keeps an MR×NR tile
//! of C in registers and adds one outer product of an A column and a B row per step of k; its fixed-size
//! loops are unrolled and vectorised by the compiler. It is compiled three times, with the instruction set
//! chosen at run time: AVX-512 (6×32 tile), AVX2+FMA (6×16) and portable code (4×8).
//!
//! Operands are [`MatView`]s: any matrix whose row and column indices map to memory by a stride, where an
//! index may also be split into (block, offset) with a second stride. That covers plain and transposed
//! matrices and also "a batch of images seen as one wide matrix": the columns (n, pixel) of an NCHW tensor,
//! so a 1×1 convolution over the whole batch is one GEMM instead of one per image. Transposes and layouts
//! are resolved while packing, so every layout runs the same micro-kernel.

use crate::backend::MatmulSpec;
use rayon::prelude::*;

/// Depth of a packed block (k per pass): an A panel (MR·KC) and a B panel (KC·NR) stay in L1/L2.
const KC: usize = 256;
/// Rows of A packed per task.
const MC: usize = 96;
/// Columns of B packed per pass.
const NC: usize = 2048;
/// Below this many multiply-adds a product runs on the calling thread.
const PAR_MIN_MACS: usize = 1 << 16;

/// How one matrix index maps to memory: index i lies at `(i / block)·block_stride + (i % block)·stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Axis {
    pub stride: usize,
    pub block: usize,
    pub block_stride: usize,
}

impl Axis {
    /// An ordinary axis with one stride.
    pub fn plain(stride: usize) -> Axis {
        Axis {
            stride,
            block: usize::MAX,
            block_stride: 0,
        }
    }
    /// An axis that runs over `block` entries with `stride`, then jumps by `block_stride` (e.g. the
    /// (image, pixel) columns of an NCHW tensor: block = H·W, stride 1, block_stride = C·H·W).
    pub fn blocked(stride: usize, block: usize, block_stride: usize) -> Axis {
        Axis {
            stride,
            block: block.max(1),
            block_stride,
        }
    }
    #[inline(always)]
    fn at(&self, i: usize) -> usize {
        if self.block == usize::MAX {
            i * self.stride
        } else {
            (i / self.block) * self.block_stride + (i % self.block) * self.stride
        }
    }
    /// Offsets of `len` consecutive indices from `i0`, without a division per index.
    #[inline(always)]
    fn offsets<const L: usize>(&self, i0: usize, len: usize, out: &mut [usize; L]) {
        if self.block == usize::MAX {
            for (j, o) in out.iter_mut().enumerate().take(len) {
                *o = (i0 + j) * self.stride;
            }
            return;
        }
        let (mut blk, mut off) = (i0 / self.block, i0 % self.block);
        for o in out.iter_mut().take(len) {
            *o = blk * self.block_stride + off * self.stride;
            off += 1;
            if off == self.block {
                off = 0;
                blk += 1;
            }
        }
    }
}

/// A read-only matrix of `rows`×`cols` over `data` (see [`Axis`]).
#[derive(Clone, Copy, Debug)]
pub(crate) struct MatView<'a> {
    pub data: &'a [f32],
    pub rows: Axis,
    pub cols: Axis,
}

impl<'a> MatView<'a> {
    /// A row-major r×c matrix, or its transpose when `transposed` (then `data` holds c×r row-major).
    pub fn dense(data: &'a [f32], r: usize, c: usize, transposed: bool) -> Self {
        if transposed {
            MatView {
                data,
                rows: Axis::plain(1),
                cols: Axis::plain(r),
            }
        } else {
            MatView {
                data,
                rows: Axis::plain(c),
                cols: Axis::plain(1),
            }
        }
    }
}

/// The writable output of a product: C[i, j] lives at `ptr + rows.at(i) + cols.at(j)`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct OutView {
    pub rows: Axis,
    pub cols: Axis,
}

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
        // The AVX-512 kernel is compiled with AVX2 and FMA enabled too, so all three must be present.
        let avx2_fma =
            std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        if std::is_x86_feature_detected!("avx512f") && avx2_fma {
            return Isa::Avx512;
        }
        if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
            return Isa::Avx2Fma;
        }
    }
    Isa::Portable
}

/// c += op(a)·op(b) for one m×k by k×n product; c is m×n row-major.
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
    assert!(
        c.len() >= m * n,
        "gemm_acc: output of {} values for a {m}×{n} product",
        c.len()
    );
    let out = OutView {
        rows: Axis::plain(n),
        cols: Axis::plain(1),
    };
    // SAFETY: `out` addresses exactly the m×n row-major elements of `c` (checked above), which we borrow
    // mutably.
    unsafe {
        gemm_view(
            &MatView::dense(a, m, k, trans_a),
            &MatView::dense(b, k, n, trans_b),
            c.as_mut_ptr(),
            &out,
            m,
            k,
            n,
        )
    }
}

/// C += A·B for general views (A m×k, B k×n) into the output view at `c`.
///
/// # Safety
/// Every element `c + out.rows.at(i) + out.cols.at(j)` for i < m, j < n must be valid for writes, distinct
/// for distinct (i, j), and not accessed by anyone else during the call; the views' offsets must lie inside
/// their slices (they are bounds-checked).
pub(crate) unsafe fn gemm_view(
    a: &MatView,
    b: &MatView,
    c: *mut f32,
    out: &OutView,
    m: usize,
    k: usize,
    n: usize,
) {
    if m * n == 0 || k == 0 {
        return;
    }
    let c = CPtr(c);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => gemm_blocked::<6, 32>(a, b, c, out, (m, k, n), tile_avx512),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => gemm_blocked::<6, 16>(a, b, c, out, (m, k, n), tile_avx2),
        _ => gemm_blocked::<4, 8>(a, b, c, out, (m, k, n), tile_portable),
    }
}

/// Adds one MR×NR tile product (packed panels `a`, `b`) into C: element (i, j) of the tile goes to
/// `c + rows[i] + cols[j]`, for the leading `mr`×`nr` corner only.
type TileFn = unsafe fn(
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    rows: &[usize],
    cols: &[usize],
    mr: usize,
    nr: usize,
);

/// The micro-kernel compiled for AVX-512. Closures do not inherit target features, so each instruction set
/// gets its own function and the blocked loop calls it through a pointer (one call per tile, ~kc·MR·NR
/// multiply-adds, so the indirection costs nothing measurable).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn tile_avx512(
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    r: &[usize],
    q: &[usize],
    mr: usize,
    nr: usize,
) {
    tile::<6, 32, true>(a, b, c, r, q, mr, nr)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn tile_avx2(
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    r: &[usize],
    q: &[usize],
    mr: usize,
    nr: usize,
) {
    tile::<6, 16, true>(a, b, c, r, q, mr, nr)
}

unsafe fn tile_portable(
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    r: &[usize],
    q: &[usize],
    mr: usize,
    nr: usize,
) {
    tile::<4, 8, false>(a, b, c, r, q, mr, nr)
}

/// C[rows[i] + cols[j]] += the MR×NR tile Σ_p a[p][0..MR] ⊗ b[p][0..NR], for i < mr, j < nr.
///
/// # Safety
/// Those `mr·nr` elements of C must be valid, distinct and written by no one else meanwhile.
#[inline(always)]
unsafe fn tile<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    b: &[f32],
    c: *mut f32,
    rows: &[usize],
    cols: &[usize],
    mr: usize,
    nr: usize,
) {
    let acc = micro_kernel::<MR, NR, FMA>(a, b);
    let contiguous = cols[..nr]
        .iter()
        .enumerate()
        .all(|(j, &o)| o == cols[0] + j);
    for (i, row) in acc.iter().enumerate().take(mr) {
        if contiguous {
            // SAFETY: the caller guarantees these nr elements are ours; they are consecutive.
            let dst = unsafe { std::slice::from_raw_parts_mut(c.add(rows[i] + cols[0]), nr) };
            for (d, &t) in dst.iter_mut().zip(row) {
                *d += t;
            }
        } else {
            for (j, &t) in row.iter().enumerate().take(nr) {
                // SAFETY: as above, element by element.
                unsafe { *c.add(rows[i] + cols[j]) += t };
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

/// Packs rows p0..p0+kc, columns j0..j0+nc of B into panels of NR columns: panel q holds, for each p, the
/// NR values B[p, j0 + q·NR ..], zero-padded past the last column.
fn pack_b<const NR: usize>(
    b: &MatView,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    out: &mut [f32],
) {
    out.par_chunks_mut(kc * NR)
        .with_min_len(4)
        .enumerate()
        .for_each(|(q, panel)| {
            let jq = j0 + q * NR;
            let width = NR.min(j0 + nc - jq);
            let mut cols = [0usize; NR];
            b.cols.offsets(jq, width, &mut cols);
            let contiguous = cols[..width]
                .iter()
                .enumerate()
                .all(|(j, &o)| o == cols[0] + j);
            for (p, row) in panel.chunks_exact_mut(NR).enumerate() {
                let base = b.rows.at(p0 + p);
                if contiguous {
                    row[..width].copy_from_slice(&b.data[base + cols[0]..base + cols[0] + width]);
                } else {
                    for (r, &o) in row.iter_mut().zip(&cols[..width]) {
                        *r = b.data[base + o];
                    }
                }
                row[width..].fill(0.0);
            }
        });
}

/// Packs rows i0..i0+mc, columns p0..p0+kc of A into panels of MR rows (zero-padded).
fn pack_a<const MR: usize>(
    a: &MatView,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    out: &mut [f32],
) {
    let mut kcols = vec![0usize; kc];
    for (p, o) in kcols.iter_mut().enumerate() {
        *o = a.cols.at(p0 + p);
    }
    for (r, panel) in out.chunks_exact_mut(kc * MR).enumerate() {
        let ir = i0 + r * MR;
        let height = MR.min(i0 + mc - ir);
        let mut rows = [0usize; MR];
        a.rows.offsets(ir, height, &mut rows);
        let rows_contiguous =
            height == MR && rows.iter().enumerate().all(|(i, &o)| o == rows[0] + i);
        for (col, &kp) in panel.chunks_exact_mut(MR).zip(&kcols) {
            if rows_contiguous {
                // A transposed (column-major) block: the MR values are consecutive.
                col.copy_from_slice(&a.data[rows[0] + kp..rows[0] + kp + MR]);
            } else {
                for (i, x) in col.iter_mut().enumerate() {
                    *x = if i < height {
                        a.data[rows[i] + kp]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

fn gemm_blocked<const MR: usize, const NR: usize>(
    a: &MatView,
    b: &MatView,
    c: CPtr,
    out: &OutView,
    (m, k, n): (usize, usize, usize),
    tile_fn: TileFn,
) {
    let serial = m * n * k < PAR_MIN_MACS;
    let mut b_pack = Vec::new();
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        let b_panels = nc.div_ceil(NR);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            // Packing overwrites every element (padding included), so the buffer is only resized: no
            // zeroing pass per block.
            b_pack.resize(b_panels * kc * NR, 0.0);
            pack_b::<NR>(b, p0, kc, j0, nc, &mut b_pack);
            // Tasks: an MC row block × a range of B panels (a few, so that skinny products still split).
            let row_blocks = m.div_ceil(MC);
            let panels_per_task = if row_blocks >= 4 {
                b_panels
            } else {
                8.min(b_panels)
            };
            let col_tasks = b_panels.div_ceil(panels_per_task);
            let b_pack = &b_pack;
            // `a_pack` is reused by the tasks a thread runs (pack_a overwrites all of it, padding included).
            let task = |a_pack: &mut Vec<f32>, t: usize| {
                let (rb, ct) = (t / col_tasks, t % col_tasks);
                let i0 = rb * MC;
                let mc = MC.min(m - i0);
                let a_panels = mc.div_ceil(MR);
                a_pack.resize(a_panels * kc * MR, 0.0);
                pack_a::<MR>(a, i0, mc, p0, kc, a_pack);
                let q_end = ((ct + 1) * panels_per_task).min(b_panels);
                let mut rows = [0usize; MR];
                let mut cols = [0usize; NR];
                for q in ct * panels_per_task..q_end {
                    let jq = j0 + q * NR;
                    let nr = NR.min(n - jq);
                    out.cols.offsets(jq, nr, &mut cols);
                    let bp = &b_pack[q * kc * NR..(q + 1) * kc * NR];
                    for (r, ap) in a_pack.chunks_exact(kc * MR).enumerate() {
                        let ir = i0 + r * MR;
                        let mr = MR.min(m - ir);
                        out.rows.offsets(ir, mr, &mut rows);
                        // SAFETY: rows ir..ir+mr and columns jq..jq+nr of C belong to this task alone (its
                        // row block and panel range), and the caller of `gemm_view` guarantees they are
                        // valid and distinct; the tile function was chosen for this CPU's instruction set.
                        unsafe { tile_fn(ap, bp, c.get(), &rows, &cols, mr, nr) };
                    }
                }
            };
            let tasks = row_blocks * col_tasks;
            if serial {
                let mut a_pack = Vec::new();
                (0..tasks).for_each(|t| task(&mut a_pack, t));
            } else {
                (0..tasks)
                    .into_par_iter()
                    .for_each_init(Vec::new, |a_pack, t| task(a_pack, t));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(seed: &mut u64) -> f32 {
        *seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((*seed >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    }

    fn check(got: &[f32], want: &[f64], k: usize, what: &str) {
        for (g, w) in got.iter().zip(want) {
            assert!(
                (*g as f64 - w).abs() < 1e-4 * (1.0 + w.abs()) * (k as f64).sqrt(),
                "{what}: {g} vs {w}"
            );
        }
    }

    /// Every instruction-set variant and blocking edge (partial tiles, k across KC blocks, n across NC
    /// blocks) agrees with the textbook triple loop, for every transpose combination.
    #[test]
    fn blocked_gemm_matches_the_triple_loop() {
        let mut seed = 1u64;
        for &(m, k, n) in &[
            (1, 1, 1),
            (7, 5, 33),
            (13, 300, 17),
            (100, 257, 70),
            (6, 16, 32),
            // n past one NC block and k past one KC block, for every variant
            (20, 300, 2100),
        ] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
                let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
                let (va, vb) = (MatView::dense(&a, m, k, ta), MatView::dense(&b, k, n, tb));
                let mut want = vec![0.0f64; m * n];
                for i in 0..m {
                    for j in 0..n {
                        for p in 0..k {
                            want[i * n + j] += va.data[va.rows.at(i) + va.cols.at(p)] as f64
                                * vb.data[vb.rows.at(p) + vb.cols.at(j)] as f64;
                        }
                    }
                }
                let out = OutView {
                    rows: Axis::plain(n),
                    cols: Axis::plain(1),
                };
                let what = format!("{m}x{k}x{n} ta {ta} tb {tb}");
                let mut c = vec![0.0f32; m * n];
                gemm_blocked::<4, 8>(
                    &va,
                    &vb,
                    CPtr(c.as_mut_ptr()),
                    &out,
                    (m, k, n),
                    tile_portable,
                );
                check(&c, &want, k, &format!("portable {what}"));
                let mut c = vec![0.0f32; m * n];
                gemm_acc(&a, &b, &mut c, m, k, n, ta, tb);
                check(&c, &want, k, &format!("dispatched {what}"));
                #[cfg(target_arch = "x86_64")]
                if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
                    let mut c = vec![0.0f32; m * n];
                    gemm_blocked::<6, 16>(
                        &va,
                        &vb,
                        CPtr(c.as_mut_ptr()),
                        &out,
                        (m, k, n),
                        tile_avx2,
                    );
                    check(&c, &want, k, &format!("avx2 {what}"));
                }
            }
        }
    }

    /// Blocked axes: the batch of an NCHW tensor as the columns of one matrix, written back into NCHW.
    #[test]
    fn blocked_axes_compute_a_batched_pointwise_product() {
        let (batch, c_in, c_out, hw) = (3usize, 5usize, 7usize, 10usize);
        let mut seed = 9u64;
        let w: Vec<f32> = (0..c_out * c_in).map(|_| lcg(&mut seed)).collect();
        let x: Vec<f32> = (0..batch * c_in * hw).map(|_| lcg(&mut seed)).collect();
        let mut y = vec![0.0f32; batch * c_out * hw];
        let xv = MatView {
            data: &x,
            rows: Axis::plain(hw),
            cols: Axis::blocked(1, hw, c_in * hw),
        };
        let out = OutView {
            rows: Axis::plain(hw),
            cols: Axis::blocked(1, hw, c_out * hw),
        };
        // SAFETY: `out` addresses every element of y exactly once.
        unsafe {
            gemm_view(
                &MatView::dense(&w, c_out, c_in, false),
                &xv,
                y.as_mut_ptr(),
                &out,
                c_out,
                c_in,
                batch * hw,
            )
        };
        let mut want = vec![0.0f64; y.len()];
        for n in 0..batch {
            for o in 0..c_out {
                for p in 0..hw {
                    want[(n * c_out + o) * hw + p] = (0..c_in)
                        .map(|c| w[o * c_in + c] as f64 * x[(n * c_in + c) * hw + p] as f64)
                        .sum();
                }
            }
        }
        check(&y, &want, c_in, "batched pointwise");
    }
}
