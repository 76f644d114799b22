//! CPU matrix product: a packed, cache-blocked, register-tiled GEMM (the BLIS scheme), no BLAS.
//!
//! C += A·B is cut into blocks: kc rows of B × nc columns are packed once into panels NR columns wide, and
//! each rayon task packs an mc×kc block of A into panels MR rows tall; the block sizes come from this CPU's
//! cache sizes, read at run time ([`blocking`]). How the threads share the blocks is the [`Split`]: each
//! packed block of B shared by all; for wide products, each task its own columns of C; for deep products
//! with a small C (weight gradients), each task its own range of k, the partial sums added at the end; a
//! small product, or any product when the pool has one thread, runs on the calling thread. Packing B asks
//! for the lines of the rows ahead of the one it copies ([`PACK_AHEAD_ROWS`]). The micro-kernel keeps an
//! MR×NR tile of C in registers and adds one outer product of an A column and a B row per step of k; its
//! fixed-size loops are unrolled and vectorised by the compiler. It prefetches its C tile before the k
//! loop, so the tile's cache misses overlap the arithmetic. It is compiled three times, with the
//! instruction set chosen at run time: AVX-512 (6×32 tile), AVX2+FMA (6×16, and row-exact tiles of 1 to 5
//! rows for a product's last rows) and portable code (4×8). A product of at most two rows of tiles (a
//! classifier head) reads B where it lies instead of packing it ([`b_in_place`]).
//!
//! How C is written is the [`Epilogue`]: added to (C += A·B), or overwritten on the first pass over k, so that
//! an output needs no zeroing pass before the product and no read of those zeros; with a per-row bias added
//! on that first pass, so a convolution's bias costs no pass of its own over the output.
//!
//! Operands are [`MatView`]s: any matrix whose row and column indices map to memory by a stride, where an
//! index may also be split into (block, offset) with a second stride. That covers plain and transposed
//! matrices and also "a batch of images seen as one wide matrix": the columns (n, pixel) of an NCHW tensor,
//! so a 1×1 convolution over the whole batch is one GEMM instead of one per image. Transposes and layouts
//! are resolved while packing, so every layout runs the same micro-kernel.

use super::caches::{caches, Caches};
use super::elementwise::{isa, Isa};
use super::{copy_pieces, vec_written};
use crate::backend::MatmulSpec;
use rayon::prelude::*;
use std::ops::Range;
use std::sync::OnceLock;

/// The block sizes of the packed product for one micro-kernel shape.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Blocking {
    /// Depth of a pass over k: the B micro-panel (kc × NR) each tile reads.
    pub kc: usize,
    /// Most rows of A packed per task (the A block, mc × kc).
    pub mc: usize,
    /// Columns of B packed per pass (the B block, kc × nc).
    pub nc: usize,
}

/// The blocking for an MR×NR micro-kernel on this machine's caches (see [`super::caches`]), after the
/// analytical model of BLIS:
/// - the B micro-panel (kc × NR floats) is reused by every A micro-panel of a block, so it should stay in
///   L1d: it gets two thirds of L1d, the rest holds the A micro-panel streaming past and the C tile;
/// - the packed A block (mc × kc) is reused for every B micro-panel, so it should stay in L2; but more
///   than `MC_MAX` rows per task leaves too few tasks to balance the threads on the products of a
///   ConvNeXt step (whose row count is a layer's channels), which measured slower;
/// - the packed B block (kc × nc) is reused by every row block, so it should stay in this core's share of
///   L3, at most `NC_MAX` columns (the pack is parallel, but the tasks wait for it).
///
/// On the development machine (48 KiB L1d, 2 MiB L2) this gives kc 256, mc 96, nc 2048 for the AVX-512
/// kernel; a 32 KiB L1d gives kc 160. `LIERA_GEMM_BLOCKING=kc,mc,nc` overrides it, for tuning experiments.
pub(crate) fn blocking<const MR: usize, const NR: usize>() -> Blocking {
    static OVERRIDE: OnceLock<Option<Blocking>> = OnceLock::new();
    let forced = *OVERRIDE.get_or_init(|| {
        let v = std::env::var("LIERA_GEMM_BLOCKING").ok()?;
        let parts: Vec<usize> = v.split(',').filter_map(|p| p.trim().parse().ok()).collect();
        match parts[..] {
            [kc, mc, nc] if kc > 0 && mc > 0 && nc > 0 => Some(Blocking { kc, mc, nc }),
            _ => None,
        }
    });
    forced.unwrap_or_else(|| blocking_for::<MR, NR>(caches()))
}

/// What the GEMM runs on this machine: the micro-kernel's instruction set and tile, the blocking, and the
/// caches it was derived from (for benchmark reports).
pub fn gemm_plan() -> String {
    let (name, tile, b) = match isa() {
        Isa::Avx512 => ("AVX-512", "6×32", blocking::<6, 32>()),
        Isa::Avx2Fma => ("AVX2+FMA", "6×16", blocking::<6, 16>()),
        Isa::Portable => ("portable", "4×8", blocking::<4, 8>()),
    };
    let c = caches();
    format!(
        "{name} {tile} tile, kc {} mc {} nc {} (caches from {}: L1d {} KiB, L2 {} KiB, L3 {} KiB per processor{})",
        b.kc,
        b.mc,
        b.nc,
        c.source,
        c.l1d >> 10,
        c.l2 >> 10,
        c.l3 >> 10,
        if std::env::var_os("LIERA_GEMM_BLOCKING").is_some() {
            "; blocking set by LIERA_GEMM_BLOCKING"
        } else {
            ""
        }
    )
}

fn blocking_for<const MR: usize, const NR: usize>(c: Caches) -> Blocking {
    const F: usize = std::mem::size_of::<f32>();
    const MC_MAX: usize = 96;
    const NC_MAX: usize = 2048;
    let kc = (c.l1d * 2 / 3 / (NR * F) / 16 * 16).clamp(64, 512);
    let mc = (c.l2 / 2 / (kc * F)).clamp(MR, MC_MAX) / MR * MR;
    let nc = (c.l3 / 2 / (kc * F)).clamp(NR * 8, NC_MAX) / NR * NR;
    Blocking { kc, mc, nc }
}

/// Below this many multiply-adds a product runs on the calling thread: handing work to the pool and
/// waking its threads costs tens of microseconds, as long as such a product takes on one core. At 2¹⁶
/// the classifier head's products (about 2·10⁵ multiply-adds) ran at 0.13–0.21 of the `gemm` crate's
/// speed on the 2-core AMD EPYC (Zen 3) development machine, at 2¹⁹ at 0.2–0.4 (`cargo bench --bench
/// matmul -- 32px 224px`; the `gemm` crate itself stays on one thread below 48·48·256).
const PAR_MIN_MACS: usize = 1 << 19;

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
    /// Offsets of `len` consecutive indices from `i0` into `out[..len]`, without a division per index.
    #[inline(always)]
    fn offsets(&self, i0: usize, len: usize, out: &mut [usize]) {
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

/// How a product is stored into C.
#[derive(Clone, Copy, Default)]
pub(crate) struct Epilogue<'a> {
    /// C = A·B (+ bias) instead of C += A·B: the first pass over k stores without reading C, so C may be
    /// uninitialised.
    pub overwrite: bool,
    /// bias[i] added to every element of row i (on the first pass over k), `m` values.
    pub row_bias: Option<&'a [f32]>,
}

impl Epilogue<'_> {
    /// C += A·B.
    pub const ADD: Epilogue<'static> = Epilogue {
        overwrite: false,
        row_bias: None,
    };
    /// C = A·B.
    pub const OVERWRITE: Epilogue<'static> = Epilogue {
        overwrite: true,
        row_bias: None,
    };
}

/// A vector of `len` floats written by `fill` through a raw pointer, without being zeroed first.
///
/// # Safety
/// `fill` must write all `len` floats through the pointer it is given before returning.
pub(crate) unsafe fn vec_written_by(len: usize, fill: impl FnOnce(*mut f32)) -> Vec<f32> {
    // SAFETY: the caller's promise is vec_written's.
    unsafe { vec_written(len, |v| fill(v.as_mut_ptr().cast())) }
}

/// C[b] = op(A[b]) · op(B[b]), contiguous (batch, m, n).
pub fn matmul(a: &[f32], b: &[f32], spec: &MatmulSpec) -> Vec<f32> {
    let MatmulSpec { batch, m, k, n, .. } = *spec;
    let fill = |c: CPtr| {
        let product = |bi: usize| {
            let a_mat = &a[bi * spec.a_batch_stride..bi * spec.a_batch_stride + m * k];
            let b_mat = &b[bi * spec.b_batch_stride..bi * spec.b_batch_stride + k * n];
            let out = OutView {
                rows: Axis::plain(n),
                cols: Axis::plain(1),
            };
            // SAFETY: matrix bi's m×n row-major block of the batch·m·n output, written by this task only.
            unsafe {
                gemm_view(
                    &MatView::dense(a_mat, m, k, spec.trans_a),
                    &MatView::dense(b_mat, k, n, spec.trans_b),
                    c.get().add(bi * m * n),
                    &out,
                    (m, k, n),
                    &Epilogue::OVERWRITE,
                )
            }
        };
        // One product is split among the threads by gemm_view itself (or kept on this thread when small):
        // a parallel loop over one item would only hand it to a pool thread and wait.
        if batch == 1 {
            product(0)
        } else {
            (0..batch).into_par_iter().for_each(product)
        }
    };
    // SAFETY: the products overwrite every element of each matrix (k = 0 included, as zeros).
    unsafe { vec_written_by(batch * m * n, |p| fill(CPtr(p))) }
}

/// C += A·B, or C = A·B with the extras of `epi`, for general views (A m×k, B k×n) into the output view at
/// `c`, on rayon's threads.
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
    dims: (usize, usize, usize),
    epi: &Epilogue,
) {
    // SAFETY: the caller's promise.
    unsafe { gemm_view_split(a, b, c, out, dims, epi, Split::Auto) }
}

/// [`gemm_view`] with the threads' share of the work chosen by the caller: [`Split::Serial`] keeps it on
/// the calling thread, for products that callers already run in parallel with each other (a product per
/// task), where splitting each one again would only add waits.
///
/// # Safety
/// As for [`gemm_view`].
pub(crate) unsafe fn gemm_view_split(
    a: &MatView,
    b: &MatView,
    c: *mut f32,
    out: &OutView,
    (m, k, n): (usize, usize, usize),
    epi: &Epilogue,
    split: Split,
) {
    if let Some(bias) = epi.row_bias {
        assert!(
            bias.len() >= m,
            "gemm: {} bias values for {m} rows",
            bias.len()
        );
    }
    if m * n == 0 {
        return;
    }
    if k == 0 {
        // An empty sum: C keeps its value (or becomes 0), plus the bias.
        for i in 0..m {
            let bias = epi.row_bias.map_or(0.0, |b| b[i]);
            for j in 0..n {
                let at = out.rows.at(i) + out.cols.at(j);
                // SAFETY: the caller guarantees element (i, j) of C is ours.
                unsafe {
                    let v = if epi.overwrite { 0.0 } else { *c.add(at) } + bias;
                    *c.add(at) = v;
                }
            }
        }
        return;
    }
    let c = CPtr(c);
    match isa() {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => gemm_blocked::<6, 32>(
            a,
            b,
            c,
            out,
            (m, k, n),
            epi,
            blocking::<6, 32>(),
            split,
            tile_avx512,
        ),
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2Fma => gemm_blocked::<6, 16>(
            a,
            b,
            c,
            out,
            (m, k, n),
            epi,
            blocking::<6, 16>(),
            split,
            tile_avx2,
        ),
        _ => gemm_blocked::<4, 8>(
            a,
            b,
            c,
            out,
            (m, k, n),
            epi,
            blocking::<4, 8>(),
            split,
            tile_portable,
        ),
    }
}

/// How one pass over k stores its tiles (the [`Epilogue`] resolved for that pass).
#[derive(Clone, Copy)]
struct TileStore<'a> {
    /// Store the product instead of adding it to C (the first pass of an overwriting product).
    overwrite: bool,
    /// Added to the tile's rows (first pass only): the bias of rows ir..ir+mr.
    bias: Option<&'a [f32]>,
    /// Whether the tile's columns are consecutive in C (`cols[j] = cols[0] + j`), found once per B panel
    /// by [`consecutive`].
    cols_contiguous: bool,
}

/// Whether `offsets` are consecutive (each one more than the last).
fn consecutive(offsets: &[usize]) -> bool {
    offsets.windows(2).all(|w| w[1] == w[0] + 1)
}

impl<'a> TileStore<'a> {
    /// The store of the tile at rows ir..ir+mr (its slice of the bias).
    fn rows(&self, ir: usize, mr: usize) -> TileStore<'a> {
        TileStore {
            bias: self.bias.map(|b| &b[ir..ir + mr]),
            ..*self
        }
    }
    /// The store of one pass over k of the whole epilogue: it overwrites and adds the bias on the first
    /// pass only.
    fn pass(&self, first: bool) -> TileStore<'a> {
        TileStore {
            overwrite: self.overwrite && first,
            bias: self.bias.filter(|_| first),
            ..*self
        }
    }
}

/// kc rows of NR consecutive values of B as the micro-kernel reads them: row p at `data[p·step..][..NR]`. A
/// packed panel (step NR), or NR columns of a B whose columns are consecutive in memory, read in place
/// (step = B's row stride; see [`b_in_place`]).
#[derive(Clone, Copy)]
struct BPanel<'a> {
    data: &'a [f32],
    step: usize,
    kc: usize,
}

impl<'a> BPanel<'a> {
    /// A packed panel: kc·NR values, row after row.
    fn packed<const NR: usize>(data: &'a [f32]) -> Self {
        BPanel {
            data,
            step: NR,
            kc: data.len() / NR,
        }
    }

    /// Checks that every row the micro-kernel reads, `data[p·step..p·step + NR]` for p < kc, lies inside
    /// `data`: once per tile rather than per row (kc ≥ 1).
    #[inline(always)]
    fn check_reach<const NR: usize>(&self) {
        let end = (self.kc - 1) * self.step + NR;
        assert!(
            end <= self.data.len(),
            "B panel reads {end} values of {}",
            self.data.len()
        );
    }
}

/// Adds (or stores) one MR×NR tile product (A's rows `a`, B's panel `b`) into C: element (i, j) of the tile
/// goes to `c + rows[i] + cols[j]`, for the leading `mr`×`nr` corner only.
type TileFn = unsafe fn(
    a: &[f32],
    a_rows: &[usize],
    a_step: usize,
    b: BPanel,
    c: *mut f32,
    rows: &[usize],
    cols: &[usize],
    mr: usize,
    nr: usize,
    store: &TileStore,
);

/// The micro-kernel compiled for AVX-512. Closures do not inherit target features, so each instruction set
/// gets its own function and the blocked loop calls it through a pointer (one call per tile, ~kc·MR·NR
/// multiply-adds, so the indirection costs nothing measurable).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx512(
    a: &[f32],
    a_rows: &[usize],
    a_step: usize,
    b: BPanel,
    c: *mut f32,
    r: &[usize],
    q: &[usize],
    mr: usize,
    nr: usize,
    store: &TileStore,
) {
    tile::<6, 32, true>(a, a_rows, a_step, b, c, r, q, mr, nr, store)
}

/// The AVX2+FMA micro-kernel, written with intrinsics rather than left to the compiler's vectoriser: the
/// 6×16 tile stays in twelve registers through the k loop and, for a whole tile whose rows are runs of 16
/// floats in C (most tiles), goes from those registers into C. Other tiles are
/// stored by [`store_tile`]. The same sums in the same order as [`tile`], so the same results.
///
/// A tile of fewer than 6 rows (the last of a product whose rows are not a multiple of 6) is computed for
/// its rows only ([`tile_avx2_rows`]), not padded to 6, and a tile of at most 8 columns for one vector of
/// columns, not two: a product with 10 rows (a classifier head) would otherwise spend a sixth of its
/// multiply-adds on rows it throws away, and one with 40 columns (the weight gradients of convnext_atto's
/// first stage, 40 channels) a sixth on columns.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2(
    a: &[f32],
    a_rows: &[usize],
    a_step: usize,
    b: BPanel,
    c: *mut f32,
    rows: &[usize],
    cols: &[usize],
    mr: usize,
    nr: usize,
    store: &TileStore,
) {
    // The kernel for R rows and V vectors of 8 columns.
    macro_rules! rows {
        ($v:literal) => {
            match mr {
                1 => tile_avx2_rows::<1, $v>(a, a_rows, a_step, b, c, rows, cols, nr, store),
                2 => tile_avx2_rows::<2, $v>(a, a_rows, a_step, b, c, rows, cols, nr, store),
                3 => tile_avx2_rows::<3, $v>(a, a_rows, a_step, b, c, rows, cols, nr, store),
                4 => tile_avx2_rows::<4, $v>(a, a_rows, a_step, b, c, rows, cols, nr, store),
                5 => tile_avx2_rows::<5, $v>(a, a_rows, a_step, b, c, rows, cols, nr, store),
                _ => tile_avx2_rows::<6, $v>(a, a_rows, a_step, b, c, rows, cols, nr, store),
            }
        };
    }
    // SAFETY (all arms): the caller's guarantee, passed on.
    unsafe {
        if nr <= 8 {
            rows!(1)
        } else {
            rows!(2)
        }
    }
}

/// [`tile_avx2`] for a tile of R ≤ 6 rows and V ≤ 2 vectors of 8 columns (nr ≤ 8·V): R·V accumulators.
///
/// # Safety
/// As for [`tile`], with mr = R.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_avx2_rows<const R: usize, const V: usize>(
    a: &[f32],
    a_rows: &[usize],
    a_step: usize,
    b: BPanel,
    c: *mut f32,
    rows: &[usize],
    cols: &[usize],
    nr: usize,
    store: &TileStore,
) {
    use std::arch::x86_64::*;
    const MR: usize = 6;
    const NR: usize = 16;
    prefetch_c(c, rows, cols, R, nr);
    let (kc, b_step) = (b.kc, b.step);
    let r: [usize; R] = a_rows[..R].try_into().expect("R row offsets");
    let mut acc = [[_mm256_setzero_ps(); V]; R];
    if kc > 0 {
        check_a_reach(a, &r, a_step, kc);
        b.check_reach::<NR>();
        let (ap, bp) = (a.as_ptr(), b.data.as_ptr());
        for p in 0..kc {
            // SAFETY: the A and B indices are bounded above.
            unsafe {
                // A loop, not `array::from_fn`: a closure would not inherit the target features.
                let mut bv = [_mm256_setzero_ps(); V];
                for (v, x) in bv.iter_mut().enumerate() {
                    *x = _mm256_loadu_ps(bp.add(p * b_step + 8 * v));
                }
                let off = p * a_step;
                for (row, &ri) in acc.iter_mut().zip(&r) {
                    let ai = _mm256_broadcast_ss(&*ap.add(ri + off));
                    for (x, &bj) in row.iter_mut().zip(&bv) {
                        *x = _mm256_fmadd_ps(ai, bj, *x);
                    }
                }
            }
        }
    }
    if nr == 8 * V && store.cols_contiguous {
        for (i, row) in acc.iter().enumerate() {
            let bias = store.bias.map(|b| b[i]);
            for (v, &x) in row.iter().enumerate() {
                // SAFETY: the caller guarantees row i's nr consecutive elements of C are ours.
                unsafe {
                    let dst = c.add(rows[i] + cols[0] + 8 * v);
                    let mut x = x;
                    if !store.overwrite {
                        x = _mm256_add_ps(x, _mm256_loadu_ps(dst));
                    }
                    if let Some(bias) = bias {
                        x = _mm256_add_ps(x, _mm256_set1_ps(bias));
                    }
                    _mm256_storeu_ps(dst, x);
                }
            }
        }
        return;
    }
    let mut tile = [[0.0f32; NR]; MR];
    for (t, row) in tile.iter_mut().zip(&acc) {
        for (v, &x) in row.iter().enumerate() {
            // SAFETY: each row of the array holds NR = 16 floats, 8·V ≤ 16.
            unsafe { _mm256_storeu_ps(t.as_mut_ptr().add(8 * v), x) };
        }
    }
    // SAFETY: the caller's guarantee, passed on.
    unsafe { store_tile::<MR, NR>(&tile, c, rows, cols, R, nr, store) }
}

#[allow(clippy::too_many_arguments)]
unsafe fn tile_portable(
    a: &[f32],
    a_rows: &[usize],
    a_step: usize,
    b: BPanel,
    c: *mut f32,
    r: &[usize],
    q: &[usize],
    mr: usize,
    nr: usize,
    store: &TileStore,
) {
    tile::<4, 8, false>(a, a_rows, a_step, b, c, r, q, mr, nr, store)
}

/// C[rows[i] + cols[j]] (+)= the MR×NR tile Σ_p a[p][0..MR] ⊗ b[p][0..NR] (+ bias[i]), for i < mr, j < nr.
///
/// # Safety
/// Those `mr·nr` elements of C must be valid, distinct and written by no one else meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    a_rows: &[usize],
    a_step: usize,
    b: BPanel,
    c: *mut f32,
    rows: &[usize],
    cols: &[usize],
    mr: usize,
    nr: usize,
    store: &TileStore,
) {
    prefetch_c(c, rows, cols, mr, nr);
    let acc = micro_kernel::<MR, NR, FMA>(a, a_rows, a_step, b);
    // SAFETY: the caller's guarantee, passed on.
    unsafe { store_tile::<MR, NR>(&acc, c, rows, cols, mr, nr, store) }
}

/// Asks for the cache lines of C's tile (rows `rows[..mr]`, columns `cols[..nr]`) before the k loop.
///
/// C's tile is read (or written) only after the k loop: asking for its lines now lets their misses
/// overlap with the multiply-adds instead of stalling the stores (a quarter of the kernel's time on large
/// products without this). The first, middle and last column cover every cache line of a row of up to 32
/// consecutive floats (128 bytes, at most three lines); a fixed list, as an iterator here cost a few
/// percent of the kernel on products with small k.
#[inline(always)]
fn prefetch_c(c: *mut f32, rows: &[usize], cols: &[usize], mr: usize, nr: usize) {
    for &row in &rows[..mr] {
        for j in [0, nr / 2, nr - 1] {
            prefetch(c.wrapping_add(row + cols[j]));
        }
    }
}

/// Asks for the cache line holding `at` (a hint: no effect off x86-64).
#[inline(always)]
fn prefetch(at: *const f32) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it never faults, whatever the address.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>(at.cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = at;
}

/// Stores the leading `mr`×`nr` corner of a computed tile into C as `store` says: added to C or
/// overwriting it, plus the bias.
///
/// # Safety
/// Those `mr·nr` elements of C must be valid, distinct and written by no one else meanwhile.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_tile<const MR: usize, const NR: usize>(
    acc: &[[f32; NR]; MR],
    c: *mut f32,
    rows: &[usize],
    cols: &[usize],
    mr: usize,
    nr: usize,
    store: &TileStore,
) {
    let contiguous = store.cols_contiguous;
    for (i, row) in acc.iter().enumerate().take(mr) {
        let bias = store.bias.map_or(0.0, |b| b[i]);
        // The row in a fixed-size array, so that every loop below has NR iterations and vectorises, whether
        // C's columns are consecutive or not (a tile that straddles two images of a batch-blocked output
        // reads and writes C element by element, but its arithmetic stays vectorised). Raw-pointer reads
        // and writes only: in an overwriting pass C may be uninitialised memory, which no slice may cover.
        // SAFETY (both blocks below): the caller guarantees these nr elements of C are ours.
        let mut v = *row;
        if !store.overwrite {
            unsafe { add_row(&mut v, c, rows[i], cols, nr, contiguous) };
        }
        for x in &mut v {
            *x += bias;
        }
        unsafe { store_row(&v, c, rows[i], cols, nr, contiguous) };
    }
}

/// Adds `src + row + cols[j]` to the first `nr` values of `v`: the counterpart of [`store_row`], with the
/// same three cases.
///
/// # Safety
/// Those `nr` elements must be valid for reads and written by no one else meanwhile.
#[inline(always)]
unsafe fn add_row<const NR: usize>(
    v: &mut [f32; NR],
    src: *const f32,
    row: usize,
    cols: &[usize],
    nr: usize,
    contiguous: bool,
) {
    // SAFETY: the caller's guarantee, element by element.
    unsafe {
        if contiguous && nr == NR {
            // A whole row: a fixed-size read (vector loads, no remainder loop).
            let old = src.add(row + cols[0]).cast::<[f32; NR]>().read_unaligned();
            for (x, o) in v.iter_mut().zip(old) {
                *x += o;
            }
        } else if contiguous {
            let src = src.add(row + cols[0]);
            for (j, x) in v.iter_mut().enumerate().take(nr) {
                *x += *src.add(j);
            }
        } else {
            for (x, &o) in v.iter_mut().zip(&cols[..nr]) {
                *x += *src.add(row + o);
            }
        }
    }
}

/// Writes the first `nr` values of `v` to `dst + row + cols[j]` (one copy when the columns are
/// consecutive).
///
/// # Safety
/// Those `nr` elements must be valid for writes and written by no one else meanwhile.
#[inline(always)]
unsafe fn store_row<const NR: usize>(
    v: &[f32; NR],
    dst: *mut f32,
    row: usize,
    cols: &[usize],
    nr: usize,
    contiguous: bool,
) {
    // SAFETY: the caller's guarantee, element by element.
    unsafe {
        if contiguous && nr == NR {
            // A whole row of the tile: a fixed-size write, a few vector stores (a copy of run-time length
            // `nr` is a call to memcpy per row).
            dst.add(row + cols[0])
                .cast::<[f32; NR]>()
                .write_unaligned(*v);
        } else if contiguous {
            copy_pieces(&v[..nr], dst.add(row + cols[0]));
        } else {
            for (&x, &o) in v.iter().zip(&cols[..nr]) {
                *dst.add(row + o) = x;
            }
        }
    }
}

/// Checks that a micro-kernel's A reads stay inside `a`: every index it reads, `rows[i] + p·a_step` for
/// p < kc, is at most max(rows) + (kc − 1)·a_step, checked once per tile rather than per element (kc ≥ 1).
#[inline(always)]
fn check_a_reach(a: &[f32], rows: &[usize], a_step: usize, kc: usize) {
    let last = rows.iter().max().copied().unwrap_or(0) + (kc - 1) * a_step;
    assert!(
        last < a.len(),
        "A panel index {last} past {} values",
        a.len()
    );
}

/// One MR×NR tile: Σ_p A(·, p) ⊗ B(p, 0..NR), kept in registers, where A(i, p) = a[a_rows[i] + p·a_step]
/// (a packed panel: a_rows = 0..MR, a_step = MR; or rows of a row-major A read in place: a_step = 1) and
/// B's row p is that of the [`BPanel`].
#[inline(always)]
fn micro_kernel<const MR: usize, const NR: usize, const FMA: bool>(
    a: &[f32],
    a_rows: &[usize],
    a_step: usize,
    b: BPanel,
) -> [[f32; NR]; MR] {
    let mut acc = [[0.0f32; NR]; MR];
    let rows: [usize; MR] = a_rows[..MR].try_into().expect("MR row offsets");
    if b.kc == 0 {
        return acc;
    }
    check_a_reach(a, &rows, a_step, b.kc);
    b.check_reach::<NR>();
    let (ap, bp) = (a.as_ptr(), b.data.as_ptr());
    for p in 0..b.kc {
        // SAFETY: p·step + NR ≤ b.data.len() (checked above).
        let br: &[f32; NR] = unsafe { &*bp.add(p * b.step).cast::<[f32; NR]>() };
        let off = p * a_step;
        for i in 0..MR {
            // SAFETY: rows[i] + p·a_step ≤ last < a.len() (asserted above).
            let ai = unsafe { *ap.add(rows[i] + off) };
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
/// NR values B[p, j0 + q·NR ..], zero-padded past the last column. With `in_place`, only the panels that
/// cannot be read in place (see [`in_place_panel`]) are packed; the others' slots are left as they are. On
/// rayon's threads when `parallel` (groups of panels per task), else on the calling thread.
#[allow(clippy::too_many_arguments)]
fn pack_b<const NR: usize>(
    b: &MatView,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    out: &mut [f32],
    parallel: bool,
    in_place: bool,
) {
    if in_place && b.cols == Axis::plain(1) && nc.is_multiple_of(NR) {
        // Every panel is NR consecutive columns, read in place: nothing to pack.
        return;
    }
    // B's row offsets, once for all panels (a blocked row axis would cost a division per row).
    let mut row_at = vec![0usize; kc];
    b.rows.offsets(p0, kc, &mut row_at);
    let row_at = &row_at;
    let panels = nc.div_ceil(NR);
    // Panels per group: PACK_GROUP, or fewer where that would leave the threads fewer than 4 groups each
    // (a small B, such as the transposed input of a weight gradient, 3 to 20 panels in ConvNeXt).
    let per_group = if parallel {
        (panels / (4 * rayon::current_num_threads().max(1))).clamp(1, PACK_GROUP)
    } else {
        PACK_GROUP
    };
    let group = |g: usize, chunk: &mut [f32]| {
        pack_b_panels::<NR>(b, row_at, j0 + g * per_group * NR, j0 + nc, chunk, in_place)
    };
    let len = panels * kc * NR;
    let group_len = kc * NR * per_group;
    if parallel {
        out[..len]
            .par_chunks_mut(group_len)
            .enumerate()
            .for_each(|(g, chunk)| group(g, chunk));
    } else {
        out[..len]
            .chunks_mut(group_len)
            .enumerate()
            .for_each(|(g, chunk)| group(g, chunk));
    }
}

/// Most panels packed together by [`pack_b_panels`]: their rows are read as one run of up to
/// PACK_GROUP·NR consecutive floats of each row of B.
const PACK_GROUP: usize = 8;

/// How many rows of B ahead [`pack_b_panels`] asks for the lines of a group's run while it copies the
/// current row. Each row's run is a few cache lines (a page or more away from the last row's in an NCHW
/// tensor), too short for the hardware prefetcher to follow, so without this every row's copy waited on
/// memory: on the 2-core AMD EPYC (Zen 3) development machine packing was 35% of the CPU samples of stage
/// 0's 1×1 input gradient at 224×224 (40 ← 160 channels, 100,352 columns). Asking 4 rows ahead made three
/// of stage 0's four products 8–9% faster (backend calls at batch 32, medians of 9 rounds interleaved in
/// one process, two runs: forward 40 → 160 channels 12.97, 13.20 → 12.08, 11.92 ms; input gradient 40 ←
/// 160 12.93, 12.93 → 11.86, 11.77; forward 160 → 40 13.01, 12.94 → 11.89, 12.02) and the fourth, whose B
/// has 40 rows, 2–3%; stages 1 to 3 measured level (their B rows are shorter runs of fewer columns per
/// task, or B is transposed while packed). 2 and 8 rows ahead measured like 4.
const PACK_AHEAD_ROWS: usize = 4;

/// Packs the panels of `out` (each kc·NR floats, kc = `row_at.len()`), the first starting at column `jq0`,
/// the columns ending at `j_end`. Panels of NR consecutive columns are copied row by row across the whole
/// group, so each row of B is read as one run (the reads stream along memory instead of jumping to a new
/// row of B every NR floats, a page apart in an NCHW tensor); other panels element by element. With
/// `in_place`, the panels of NR consecutive columns are skipped.
fn pack_b_panels<const NR: usize>(
    b: &MatView,
    row_at: &[usize],
    jq0: usize,
    j_end: usize,
    out: &mut [f32],
    in_place: bool,
) {
    let kc = row_at.len();
    let last_row = row_at.iter().copied().max().unwrap_or(0);
    let panels = out.len() / (kc * NR);
    // The first column of each whole, consecutive panel (None: scattered or partial).
    let mut firsts = [None; PACK_GROUP];
    for (q, first) in firsts.iter_mut().enumerate().take(panels) {
        let jq = jq0 + q * NR;
        let width = NR.min(j_end - jq);
        if let Some(c0) = whole_panel_start::<NR>(b, jq, width) {
            *first = Some(c0).filter(|_| !in_place);
            continue;
        }
        let mut cols = [0usize; NR];
        b.cols.offsets(jq, width, &mut cols);
        pack_b_panel_scattered::<NR>(
            b,
            row_at,
            last_row,
            &cols[..width],
            &mut out[q * kc * NR..(q + 1) * kc * NR],
        );
    }
    if firsts.iter().all(Option::is_none) {
        return;
    }
    for (p, &base) in row_at.iter().enumerate() {
        if let Some(&later) = row_at.get(p + PACK_AHEAD_ROWS) {
            for &c0 in firsts.iter().take(panels).flatten() {
                // One prefetch per 64-byte line (16 floats) of the panel's NR values.
                for line in (0..NR).step_by(16) {
                    prefetch(b.data.as_ptr().wrapping_add(later + c0 + line));
                }
            }
        }
        for (q, first) in firsts.iter().enumerate().take(panels) {
            if let Some(c0) = *first {
                // A fixed-size copy: a few vector moves (a copy of run-time length is a call to memcpy
                // per 128-byte row, a tenth of a product with k = 40).
                let src: &[f32; NR] = b.data[base + c0..base + c0 + NR]
                    .try_into()
                    .expect("NR values");
                let at = q * kc * NR + p * NR;
                let dst: &mut [f32; NR] = (&mut out[at..at + NR]).try_into().expect("NR values");
                *dst = *src;
            }
        }
    }
}

/// Packs one panel whose `cols` (at most NR) are not NR consecutive columns of B, zero-padded: a
/// transposed B (the Xᵀ of a weight gradient), a panel that straddles two images of a batch-blocked B, or
/// the last, partial panel.
fn pack_b_panel_scattered<const NR: usize>(
    b: &MatView,
    row_at: &[usize],
    last_row: usize,
    cols: &[usize],
    panel: &mut [f32],
) {
    let (kc, width) = (row_at.len(), cols.len());
    if consecutive(cols) {
        for (row, &base) in panel.chunks_exact_mut(NR).zip(row_at) {
            row[..width].copy_from_slice(&b.data[base + cols[0]..base + cols[0] + width]);
            row[width..].fill(0.0);
        }
        return;
    }
    // Element by element, in the order that reads memory along its contiguous axis: down each column when
    // k is (a transposed B), else along each row.
    let last_col = cols.iter().copied().max().unwrap_or(0);
    assert!(
        last_row + last_col < b.data.len(),
        "B index {} past {} values",
        last_row + last_col,
        b.data.len()
    );
    let src = b.data.as_ptr();
    if b.rows.stride == 1 {
        // k contiguous: 8 consecutive k of 8 columns are read as 8 runs and transposed through a
        // fixed-size block (about twice as fast as element by element); single rows where 8 k are not
        // consecutive (an image boundary of a blocked k axis) and the columns past the last 8.
        let w8 = width / 8 * 8;
        // The transpose for this CPU, chosen once per panel.
        let transpose: unsafe fn(*const f32, &[usize], &mut [f32]) = match isa() {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2Fma | Isa::Avx512 => transpose_blocks_avx2::<NR>,
            _ => transpose_blocks::<NR>,
        };
        let mut p = 0;
        while p < kc {
            let base = row_at[p];
            if p + 8 <= kc && consecutive(&row_at[p..p + 8]) {
                let rows = &mut panel[p * NR..(p + 8) * NR];
                // SAFETY: every index read is at most row_at[p + 7] + cols[j] ≤ last_row + last_col <
                // b.data.len() (asserted above); the AVX2 kernel only where the CPU has AVX2.
                unsafe { transpose(src.add(base), &cols[..w8], rows) };
                for (j, &o) in cols.iter().enumerate().skip(w8) {
                    for pp in 0..8 {
                        // SAFETY: as above.
                        panel[(p + pp) * NR + j] = unsafe { *src.add(base + pp + o) };
                    }
                }
                p += 8;
            } else {
                for (j, &o) in cols.iter().enumerate() {
                    // SAFETY: base + o ≤ last_row + last_col < b.data.len() (asserted above).
                    panel[p * NR + j] = unsafe { *src.add(base + o) };
                }
                p += 1;
            }
        }
    } else {
        for (row, &base) in panel.chunks_exact_mut(NR).zip(row_at) {
            for (r, &o) in row.iter_mut().zip(cols) {
                // SAFETY: as above.
                *r = unsafe { *src.add(base + o) };
            }
        }
    }
    if width < NR {
        for row in panel.chunks_exact_mut(NR) {
            row[width..].fill(0.0);
        }
    }
}

/// Writes 8 rows of a B panel (`rows`, 8·NR values) from a B whose k axis is contiguous: for each 8 columns
/// j0.. of `cols` (a multiple of 8 long), the 8 consecutive k values at `src + cols[j]` become column j of
/// the 8 rows, an 8×8 transpose per block.
///
/// # Safety
/// `src + cols[j] + 7` must be readable for every j.
#[inline(always)]
unsafe fn transpose_blocks<const NR: usize>(src: *const f32, cols: &[usize], rows: &mut [f32]) {
    for j0 in (0..cols.len()).step_by(8) {
        // SAFETY: the caller's guarantee.
        let block: [[f32; 8]; 8] = std::array::from_fn(|jj| unsafe {
            src.add(cols[j0 + jj]).cast::<[f32; 8]>().read_unaligned()
        });
        for pp in 0..8 {
            let row: [f32; 8] = std::array::from_fn(|jj| block[jj][pp]);
            rows[pp * NR + j0..pp * NR + j0 + 8].copy_from_slice(&row);
        }
    }
}

/// [`transpose_blocks`] with AVX2 shuffles: each 8×8 block in eight vector loads, 24 shuffles and eight
/// vector stores (the portable form, compiled for baseline x86-64, moves the 64 values one by one through
/// the stack). The same values in the same places.
///
/// # Safety
/// As for [`transpose_blocks`], on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transpose_blocks_avx2<const NR: usize>(
    src: *const f32,
    cols: &[usize],
    rows: &mut [f32],
) {
    use std::arch::x86_64::*;
    assert!(rows.len() >= 7 * NR + cols.len(), "8 panel rows");
    let dst = rows.as_mut_ptr();
    for j0 in (0..cols.len()).step_by(8) {
        // SAFETY: the caller's guarantee for the loads; the stores land in rows[pp·NR + j0..][..8], inside
        // `rows` (asserted above).
        unsafe {
            // A loop, not `array::from_fn`: a closure would not inherit the target features.
            let mut r = [_mm256_setzero_ps(); 8];
            for (x, &c) in r.iter_mut().zip(&cols[j0..j0 + 8]) {
                *x = _mm256_loadu_ps(src.add(c));
            }
            // Pairs of columns interleaved, then quadruples, then the 128-bit halves exchanged: out[pp]
            // holds value pp of every column.
            // (Loops of fixed count over register arrays, unrolled by the compiler.)
            let mut t = [_mm256_setzero_ps(); 8];
            for i in 0..4 {
                t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
                t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
            }
            let mut q = [_mm256_setzero_ps(); 8];
            for (h, s) in [(0, 0), (0, 1), (4, 0), (4, 1)] {
                q[h + 2 * s] = _mm256_shuffle_ps::<0x44>(t[h + s], t[h + s + 2]);
                q[h + 2 * s + 1] = _mm256_shuffle_ps::<0xEE>(t[h + s], t[h + s + 2]);
            }
            let mut out = [_mm256_setzero_ps(); 8];
            for i in 0..4 {
                out[i] = _mm256_permute2f128_ps::<0x20>(q[i], q[i + 4]);
                out[i + 4] = _mm256_permute2f128_ps::<0x31>(q[i], q[i + 4]);
            }
            for (pp, &v) in out.iter().enumerate() {
                _mm256_storeu_ps(dst.add(pp * NR + j0), v);
            }
        }
    }
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
    a.cols.offsets(p0, kc, &mut kcols);
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

/// Which of a thread's two packing buffers: B's block, or A's row block.
#[derive(Clone, Copy)]
enum PackBuffer {
    B,
    A,
}

thread_local! {
    /// Each thread's packing buffers ([`PackBuffer`]), kept between products.
    static PACK_BUFFERS: [std::cell::RefCell<Vec<f32>>; 2] = Default::default();
}

/// Runs `f` with this thread's packing buffer `which`, kept from earlier products so that a product
/// neither allocates nor zeroes one (packing overwrites every element it uses, so a buffer is only ever
/// resized, and grows only until it holds the largest block). For a small product the zeroing of a new
/// buffer was a tenth of the time (`perf record` of 10×320×64: `memset` 10%). A buffer already in use on
/// this thread (a product started by a task this thread took while waiting inside another product) is
/// replaced by a new one for that product.
fn with_pack_buffer<R>(which: PackBuffer, f: impl FnOnce(&mut Vec<f32>) -> R) -> R {
    PACK_BUFFERS.with(|bufs| match bufs[which as usize].try_borrow_mut() {
        Ok(mut buf) => f(&mut buf),
        Err(_) => f(&mut Vec::new()),
    })
}

/// How the threads share a product's work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Split {
    /// [`Split::Depth`] for deep products with a small C (see [`depth_split`]), [`Split::Columns`] for wide
    /// products (many more columns than rows, as a convolution over a batch; see [`columns_split`]), else
    /// [`Split::Shared`]; `LIERA_GEMM_SPLIT=shared|columns|depth` forces one, for tuning experiments.
    Auto,
    /// Per block of B (kc × nc): the threads pack it together, wait, then share its tiles, and wait again.
    /// The tiles go as jobs (a row block × a B panel), each task an equal, contiguous run of them
    /// ([`TASKS_PER_THREAD`] tasks per thread). Suits products with many rows.
    Shared,
    /// Each task owns a range of columns of C for the whole product: it packs its own B columns pass by
    /// pass and computes every row against them, with no wait between tasks. Suits wide products whose A
    /// (a layer's weights) is small: B is read once, A is shared from the caches.
    Columns,
    /// k cut into equal parts (see [`depth_parts`]), each summed by one task on its own into a partial
    /// C, the partial sums then added in order. Suits deep products with a small C (weight gradients),
    /// whose passes over k are too little work each to share among the threads. At most
    /// [`DEPTH_PARTS`] threads work on one such product.
    Depth,
    /// Everything on the calling thread (in the order of [`Split::Shared`]).
    Serial,
}

impl Split {
    fn forced() -> Option<Split> {
        static FORCED: OnceLock<Option<Split>> = OnceLock::new();
        *FORCED.get_or_init(|| match std::env::var("LIERA_GEMM_SPLIT").ok()?.as_str() {
            "shared" => Some(Split::Shared),
            "columns" => Some(Split::Columns),
            "depth" => Some(Split::Depth),
            _ => None,
        })
    }
}

/// One pass over k (rows p0..p0+kc of B) of a blocked product: what every tile of the pass needs.
struct Pass<'a> {
    a: &'a MatView<'a>,
    /// A is row-major and read in place (see [`gemm_blocked`]), else packed per row block.
    a_in_place: bool,
    b: &'a MatView<'a>,
    /// B's panels of NR consecutive columns are read in place (see [`b_in_place`]), the others packed.
    b_in_place: bool,
    c: CPtr,
    out: OutView,
    m: usize,
    n: usize,
    p0: usize,
    kc: usize,
    store: TileStore<'a>,
    tile_fn: TileFn,
}

impl Pass<'_> {
    /// Packs rows i0..i0+mc of this pass's A columns into `a_pack` (resized to fit), when A is not read
    /// in place.
    fn pack_a<const MR: usize>(&self, (i0, mc): (usize, usize), a_pack: &mut Vec<f32>) {
        if !self.a_in_place {
            a_pack.resize(mc.div_ceil(MR) * self.kc * MR, 0.0);
            pack_a::<MR>(self.a, i0, mc, self.p0, self.kc, a_pack);
        }
    }

    /// The tiles of rows i0..i0+mc × the B panels `panels` (global panel indices; panel q's column is
    /// q·NR), B packed in `b_pack` from panel `first_panel` on, and A's rows packed by [`Pass::pack_a`] in
    /// `a_pack` (unused when A is read in place).
    fn tiles<const MR: usize, const NR: usize>(
        &self,
        (i0, mc): (usize, usize),
        panels: std::ops::Range<usize>,
        (b_pack, first_panel): (&[f32], usize),
        a_pack: &[f32],
    ) {
        let (m, n, p0, kc) = (self.m, self.n, self.p0, self.kc);
        // What a row of tiles needs that no panel changes (C's row offsets, A's rows, the bias), worked
        // out once rather than for every tile: a product with a short k spends only a few hundred cycles
        // in each tile's multiply-adds.
        let row_tiles: Vec<RowTile<MR>> = (0..mc.div_ceil(MR))
            .map(|r| {
                let ir = i0 + r * MR;
                let mr = MR.min(m - ir);
                let mut rows = [0usize; MR];
                self.out.rows.offsets(ir, mr, &mut rows);
                let mut a_rows: [usize; MR] = std::array::from_fn(|i| i);
                let (a, a_step): (&[f32], usize) = if self.a_in_place {
                    // Row i of A from column p0 on; a partial panel repeats its last row (read, never
                    // stored).
                    self.a.rows.offsets(ir, mr, &mut a_rows);
                    let last = a_rows[mr - 1];
                    for (i, o) in a_rows.iter_mut().enumerate() {
                        *o = if i < mr { *o } else { last } + p0;
                    }
                    (self.a.data, 1)
                } else {
                    (&a_pack[r * kc * MR..(r + 1) * kc * MR], MR)
                };
                RowTile {
                    rows,
                    a_rows,
                    mr,
                    a,
                    a_step,
                    store: self.store.rows(ir, mr),
                }
            })
            .collect();
        let mut cols = [0usize; NR];
        for q in panels {
            let jq = q * NR;
            let nr = NR.min(n - jq);
            self.out.cols.offsets(jq, nr, &mut cols);
            let cols_contiguous = consecutive(&cols[..nr]);
            let at = (q - first_panel) * kc * NR;
            let packed = BPanel::packed::<NR>(&b_pack[at..at + kc * NR]);
            let bp = if self.b_in_place {
                in_place_panel::<NR>(self.b, p0, kc, jq, nr).unwrap_or(packed)
            } else {
                packed
            };
            for t in &row_tiles {
                let store = TileStore {
                    cols_contiguous,
                    ..t.store
                };
                // SAFETY: the tile's rows and columns jq..jq+nr of C belong to the calling task alone (its
                // row block and panel range), and the caller of `gemm_view` guarantees they are valid and
                // distinct; the tile function was chosen for this CPU's instruction set.
                unsafe {
                    (self.tile_fn)(
                        t.a,
                        &t.a_rows,
                        t.a_step,
                        bp,
                        self.c.get(),
                        &t.rows,
                        &cols,
                        t.mr,
                        nr,
                        &store,
                    )
                };
            }
        }
    }
}

/// B's rows p0..p0+kc, columns jq..jq+NR as a panel read where it lies, when those NR columns are
/// consecutive in memory: None for a partial panel (nr < NR) or one that straddles two blocks of a blocked
/// column axis, which [`pack_b`] packs. B's row axis must have one stride (see [`b_in_place`]).
fn in_place_panel<'a, const NR: usize>(
    b: &MatView<'a>,
    p0: usize,
    kc: usize,
    jq: usize,
    nr: usize,
) -> Option<BPanel<'a>> {
    whole_panel_start::<NR>(b, jq, nr).map(|c0| BPanel {
        data: &b.data[b.rows.at(p0) + c0..],
        step: b.rows.stride,
        kc,
    })
}

/// The offset of column jq of B when the panel's `width` columns from jq are NR consecutive ones in memory
/// (a whole panel that straddles no block of a blocked column axis): such a panel is copied row by row by
/// [`pack_b_panels`], or read where it lies by [`in_place_panel`]. None otherwise.
fn whole_panel_start<const NR: usize>(b: &MatView, jq: usize, width: usize) -> Option<usize> {
    if width < NR {
        return None;
    }
    let mut cols = [0usize; NR];
    b.cols.offsets(jq, NR, &mut cols);
    consecutive(&cols).then_some(cols[0])
}

/// Most rows of tiles (m / MR, rounded up) of a product that reads B in place: each B value is then read
/// by at most this many tiles, too few for a packed copy to pay for itself. On the 2-core AMD EPYC (Zen 3)
/// development machine a classifier head's forward, 10×320×64, ran at 0.55 and 0.56 of the `gemm` crate's
/// speed with B packed and at 0.98 and 0.96 read in place (`cargo bench --bench matmul -- --quick
/// --transposed 10x320x64`, two rounds, both builds with the row-exact AVX2 tiles). Up to 4 and 8 rows of
/// tiles (products of 16 to 48 rows: the 32×32 stem and stage 0) gave no difference beyond the run-to-run
/// spread, so the packed path, with its aligned, L1-resident panels, stays theirs.
const B_IN_PLACE_ROW_TILES: usize = 2;

/// Whether a product reads B in place rather than packing it: B's columns one apart (within each block of
/// a blocked axis) and its rows at one stride, and at most [`B_IN_PLACE_ROW_TILES`] rows of tiles.
fn b_in_place<const MR: usize>(b: &MatView, m: usize) -> bool {
    b.cols.stride == 1 && b.rows.block == usize::MAX && m.div_ceil(MR) <= B_IN_PLACE_ROW_TILES
}

/// One row of tiles of [`Pass::tiles`]: C's row offsets, A's rows (in place, or the packed panel), and the
/// store with the rows' bias.
struct RowTile<'s, const MR: usize> {
    rows: [usize; MR],
    a_rows: [usize; MR],
    mr: usize,
    a: &'s [f32],
    a_step: usize,
    store: TileStore<'s>,
}

/// The columns of one task of [`Split::Columns`] (a multiple of NR): at least 8 panels; at most nc, and
/// few enough that the task's packed B (kc × columns) fits in half of L2, where it is reused by every row
/// block; and small enough to give every thread 8 tasks, so that the last ones balance the threads.
fn column_task_width<const NR: usize>(n: usize, blocking: Blocking) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let l2_fit = caches().l2 / 2 / (blocking.kc * std::mem::size_of::<f32>());
    let balanced = n.div_ceil(8 * threads);
    balanced
        .min(l2_fit)
        .min(blocking.nc)
        .max(8 * NR)
        .div_ceil(NR)
        * NR
}

/// Fewest columns for [`Split::Columns`]. On the 2-core AMD EPYC (Zen 3) development machine the column
/// split made the 1×1 convolutions of convnext_atto at 224×224 (batch 32) 15–30% faster at stages 0 and
/// 1 (100,352 and 25,088 columns: `examples/pointwise_convs`, forward and input gradient). At stage 2
/// (6,272 columns) it first measured level; after the B-in-place, row-exact-tile and transposed-packing
/// changes of later sessions, the backend's calls at stage 2 (best of 20, three rounds, the split forced
/// by `LIERA_GEMM_SPLIT` alternating) ran 7–19% faster with it: fc1 with GELU 13.8–14.3 → 11.6–11.8 ms,
/// fc1's input gradient 11.3–11.9 → 9.0–9.6, fc2 10.6–11.5 → 9.6–10.1, fc2's input gradient 8.6–9.2 →
/// 7.7–8.7; and `cargo bench --bench matmul -- --quick --transposed 224px` put stage 2's forward and
/// input-gradient shapes at 1.09–1.20 of the `gemm` crate with it against 0.67–0.87 without. The 32×32
/// step's 4,096-column products measured level either way (its 1×1 share of the op profile, four runs
/// alternating, 0.594 against 0.583 on average; `-- --quick --transposed 32px` step sums 0.85, 0.93 against
/// 0.86, 0.89 of the `gemm` crate). Stage 3 (1,568 columns) is left to the shared split: its products
/// moved both ways beyond the spread.
const COLUMNS_MIN: usize = 4096;

/// Whether [`Split::Auto`] takes [`Split::Columns`]: a wide product (at least four times as many columns as
/// rows, and at least [`COLUMNS_MIN`]) with at least 4 column tasks per thread.
fn columns_split<const NR: usize>(m: usize, n: usize, blocking: Blocking) -> bool {
    let threads = rayon::current_num_threads().max(1);
    n >= COLUMNS_MIN.max(4 * m) && n.div_ceil(column_task_width::<NR>(n, blocking)) >= 4 * threads
}

/// Where a run of passes over k stores its tiles: C with the product's epilogue, or a partial sum of
/// [`Split::Depth`].
#[derive(Clone, Copy)]
struct Target<'a> {
    c: CPtr,
    out: OutView,
    store: TileStore<'a>,
}

/// Tasks per thread in a pass of [`Split::Shared`]: each takes an equal, contiguous run of the pass's
/// (row block, B panel) jobs. More than one, so that a thread the system delays does not hold up the
/// pass; 1 and 4 gave the same 32px step sums in `cargo bench --bench matmul` on the 2-core AMD EPYC
/// (liera/gemm 0.80, 0.83 and 0.79, 0.82).
const TASKS_PER_THREAD: usize = 4;

/// The tasks of one pass of [`Split::Shared`] with `jobs` (row block, B panel) jobs: one on the calling
/// thread when `serial`, else [`TASKS_PER_THREAD`] per thread, at most one per job.
fn pass_tasks(serial: bool, jobs: usize) -> usize {
    if serial {
        1
    } else {
        (rayon::current_num_threads().max(1) * TASKS_PER_THREAD).min(jobs)
    }
}

/// Fewest floats of a B block (kc × nc) packed on several threads; a smaller one is packed by the calling
/// thread, where a fork and join would cost more than the copy.
const PAR_PACK_MIN: usize = 1 << 15;

/// Parts of [`Split::Depth`]: a fixed count, so that the result does not depend on the threads.
const DEPTH_PARTS: usize = 8;

/// Most elements of C for [`Split::Depth`], whose parts each keep an m×n partial sum.
const DEPTH_MAX_OUTPUT: usize = 1 << 17;

/// The parts of a depth-split product with k rows of B: [`DEPTH_PARTS`], or one per pass over k if fewer.
fn depth_parts(k: usize, kc: usize) -> usize {
    k.div_ceil(kc).clamp(1, DEPTH_PARTS)
}

/// Whether [`Split::Auto`] takes [`Split::Depth`]: a deep product (at least four passes over k) with a
/// small C (at most [`DEPTH_MAX_OUTPUT`] elements), such as a weight gradient, where each pass is too
/// little work to share among the threads. Decided by the shape alone.
fn depth_split(m: usize, k: usize, n: usize, kc: usize) -> bool {
    k.div_ceil(kc) >= 4 && m * n <= DEPTH_MAX_OUTPUT
}

#[allow(clippy::too_many_arguments)]
fn gemm_blocked<'a, const MR: usize, const NR: usize>(
    a: &'a MatView<'a>,
    b: &MatView,
    c: CPtr,
    out: &OutView,
    (m, k, n): (usize, usize, usize),
    epi: &Epilogue<'a>,
    blocking: Blocking,
    split: Split,
    tile_fn: TileFn,
) {
    // On the calling thread also when the pool has one thread: handing each parallel region to that
    // thread and sleeping until it is done costs two thread switches per region, for no parallelism. With
    // `RAYON_NUM_THREADS=1`, `cargo bench --bench matmul -- --transposed 32px` put liera's 32px step sum at
    // 0.77 and 0.73 of the `gemm` crate (which runs on the caller) with the hand-off, 0.94 and 0.94
    // without (alternated binaries on the 2-core AMD EPYC, each ratio within one run).
    let serial =
        split == Split::Serial || m * n * k < PAR_MIN_MACS || rayon::current_num_threads() == 1;
    let Blocking {
        kc: kc_max,
        mc,
        nc: nc_max,
    } = blocking;
    // Row blocks of about equal height (a multiple of MR), at most mc rows each.
    let mc = m.div_ceil(m.div_ceil(mc)).div_ceil(MR) * MR;
    let row_blocks = m.div_ceil(mc);
    // A row-major A (columns one apart) is read in place by the micro-kernel: its broadcasts are scalar
    // loads anyway, and each row is a contiguous stream, so packing it would only copy it. Other layouts
    // (transposed, or a blocked k axis) are packed into MR-row panels.
    let a_in_place = a.cols == Axis::plain(1);
    let b_in_place = b_in_place::<MR>(b, m);
    // The epilogue as a store (shareable with the tasks); each pass keeps its part of it.
    let whole = TileStore {
        overwrite: epi.overwrite,
        bias: epi.row_bias,
        cols_contiguous: false,
    };
    // One pass over k, rows p0..p0+kc of B (kc ≤ kc_max), of a run of passes over `ks` into `target`: the
    // run's first pass overwrites and adds the bias (as far as the target asks).
    let pass = |target: Target<'a>, ks: &Range<usize>, p0: usize| {
        let kc = kc_max.min(ks.end - p0);
        Pass {
            a,
            a_in_place,
            b,
            b_in_place,
            c: target.c,
            out: target.out,
            m,
            n,
            p0,
            kc,
            store: target.store.pass(p0 == ks.start),
            tile_fn,
        }
    };
    let whole = Target {
        c,
        out: *out,
        store: whole,
    };
    let split = match split {
        Split::Auto => Split::forced().unwrap_or(if depth_split(m, k, n, kc_max) {
            Split::Depth
        } else if columns_split::<NR>(m, n, blocking) {
            Split::Columns
        } else {
            Split::Shared
        }),
        s => s,
    };
    // The shared split of the passes over `ks` into `target`, on the calling thread when `serial`.
    let shared = |target: Target<'a>, ks: Range<usize>, serial: bool| {
        // B's packing buffer, reused by all the passes.
        with_pack_buffer(PackBuffer::B, |b_pack| {
            for j0 in (0..n).step_by(nc_max) {
                let nc = nc_max.min(n - j0);
                let b_panels = nc.div_ceil(NR);
                let first = j0 / NR;
                // The pass's work as jobs (row block, B panel), row block by row block; each task takes a
                // contiguous run of them, so the threads' shares differ by at most one job.
                let jobs = row_blocks * b_panels;
                let tasks = pass_tasks(serial, jobs);
                for p0 in ks.clone().step_by(kc_max) {
                    let pass = pass(target, &ks, p0);
                    // Packing overwrites every element (padding included), so the buffer is only resized: no
                    // zeroing pass per block.
                    b_pack.resize(b_panels * pass.kc * NR, 0.0);
                    let pack_parallel = tasks > 1 && !b_in_place && pass.kc * nc >= PAR_PACK_MIN;
                    pack_b::<NR>(b, p0, pass.kc, j0, nc, b_pack, pack_parallel, b_in_place);
                    let b_pack = &*b_pack;
                    let pass = &pass;
                    // `a_pack` is reused by the tasks a thread runs (pack_a overwrites all of it, padding
                    // included); a task whose run starts or ends inside a row block packs that block's A too.
                    let task = |a_pack: &mut Vec<f32>, t: usize| {
                        let (mut job, end) = (t * jobs / tasks, (t + 1) * jobs / tasks);
                        while job < end {
                            let rb = job / b_panels;
                            let block_end = ((rb + 1) * b_panels).min(end);
                            let rows = (rb * mc, mc.min(m - rb * mc));
                            let panels =
                                first + job - rb * b_panels..first + block_end - rb * b_panels;
                            pass.pack_a::<MR>(rows, a_pack);
                            pass.tiles::<MR, NR>(rows, panels, (b_pack, first), a_pack);
                            job = block_end;
                        }
                    };
                    let task = |t: usize| with_pack_buffer(PackBuffer::A, |a_pack| task(a_pack, t));
                    if tasks == 1 {
                        task(0);
                    } else {
                        (0..tasks).into_par_iter().for_each(task);
                    }
                }
            }
        })
    };
    match split {
        Split::Columns => {
            let width = column_task_width::<NR>(n, blocking);
            let blocks: Vec<(usize, usize)> = (0..k)
                .step_by(kc_max)
                .flat_map(|p0| (0..m).step_by(mc).map(move |i0| (p0, i0)))
                .collect();
            // A packed once for all tasks (when it is not read in place): one block per pass and row block.
            let mut a_packs = vec![Vec::new(); blocks.len()];
            let pack = |(&(p0, i0), a_pack): (&(usize, usize), &mut Vec<f32>)| {
                pass(whole, &(0..k), p0).pack_a::<MR>((i0, mc.min(m - i0)), a_pack)
            };
            if serial {
                blocks.iter().zip(&mut a_packs).for_each(pack);
            } else {
                blocks.par_iter().zip(&mut a_packs).for_each(pack);
            }
            let a_packs = &a_packs;
            // A task: columns j0..j0+width, every pass over k and every row block; its B buffer is reused by
            // the tasks a thread runs (packing overwrites it, padding included).
            let task = |b_pack: &mut Vec<f32>, t: usize| {
                let j0 = t * width;
                let cols = width.min(n - j0);
                let panels = j0 / NR..(j0 + cols).div_ceil(NR);
                let mut a_blocks = a_packs.iter();
                for p0 in (0..k).step_by(kc_max) {
                    let pass = pass(whole, &(0..k), p0);
                    b_pack.resize(panels.len() * pass.kc * NR, 0.0);
                    pack_b::<NR>(b, p0, pass.kc, j0, cols, b_pack, false, b_in_place);
                    for i0 in (0..m).step_by(mc) {
                        let a_pack = a_blocks.next().expect("a block per pass and row block");
                        let rows = (i0, mc.min(m - i0));
                        pass.tiles::<MR, NR>(rows, panels.clone(), (b_pack, panels.start), a_pack);
                    }
                }
            };
            let tasks = n.div_ceil(width);
            let task = |t: usize| with_pack_buffer(PackBuffer::B, |b_pack| task(b_pack, t));
            if serial {
                (0..tasks).for_each(task);
            } else {
                (0..tasks).into_par_iter().for_each(task);
            }
        }
        Split::Depth => {
            let parts = depth_parts(k, kc_max);
            // Part q: k from q·k/parts, equal parts (in passes of at most kc from the part's start).
            let part_ks = |q: usize| q * k / parts..(q + 1) * k / parts;
            // Part 0 sums into C with the epilogue's overwrite and bias; parts 1.. overwrite partial sums of
            // their own, row-major m×n.
            let plain = OutView {
                rows: Axis::plain(n),
                cols: Axis::plain(1),
            };
            let mut partials = vec![0.0f32; (parts - 1) * m * n];
            let run = |q: usize, partial: Option<&mut [f32]>| match partial {
                None => shared(whole, part_ks(q), true),
                Some(partial) => shared(
                    Target {
                        c: CPtr(partial.as_mut_ptr()),
                        out: plain,
                        store: TileStore {
                            overwrite: true,
                            bias: None,
                            cols_contiguous: false,
                        },
                    },
                    part_ks(q),
                    true,
                ),
            };
            let chunks = std::iter::once(None).chain(partials.chunks_mut(m * n).map(Some));
            if serial {
                chunks.enumerate().for_each(|(q, p)| run(q, p));
            } else {
                chunks
                    .enumerate()
                    .collect::<Vec<_>>()
                    .into_par_iter()
                    .for_each(|(q, p)| run(q, p));
            }
            // C += the partial sums, in part order (so the result does not depend on the threads).
            let partials = &partials;
            let rows = |i: usize| {
                for j in 0..n {
                    let at = out.rows.at(i) + out.cols.at(j);
                    // SAFETY: element (i, j) of C is ours, the caller's promise; part 0 wrote it.
                    unsafe {
                        let cij = c.get().add(at);
                        let mut v = *cij;
                        for q in 1..parts {
                            v += partials[(q - 1) * m * n + i * n + j];
                        }
                        *cij = v;
                    }
                }
            };
            if serial {
                (0..m).for_each(rows);
            } else {
                (0..m).into_par_iter().for_each(rows);
            }
        }
        _ => shared(whole, 0..k, serial),
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

    type Kernel =
        fn(&MatView, &MatView, CPtr, &OutView, (usize, usize, usize), &Epilogue, Blocking, Split);

    /// Every micro-kernel this CPU can run, each with a small blocking that puts block edges (k across kc,
    /// rows across mc, columns across nc) inside modest shapes and with this machine's own blocking, and
    /// each with every way of splitting the work among threads.
    fn variants() -> Vec<(&'static str, Kernel, Blocking, Split)> {
        let mut kernels: Vec<(&str, Kernel, Blocking)> = vec![(
            "portable",
            |a, b, c, o, d, e, bl, s| gemm_blocked::<4, 8>(a, b, c, o, d, e, bl, s, tile_portable),
            blocking::<4, 8>(),
        )];
        #[cfg(target_arch = "x86_64")]
        if isa() != Isa::Portable {
            kernels.push((
                "avx2",
                |a, b, c, o, d, e, bl, s| gemm_blocked::<6, 16>(a, b, c, o, d, e, bl, s, tile_avx2),
                blocking::<6, 16>(),
            ));
        }
        #[cfg(target_arch = "x86_64")]
        if isa() == Isa::Avx512 {
            kernels.push((
                "avx512",
                |a, b, c, o, d, e, bl, s| {
                    gemm_blocked::<6, 32>(a, b, c, o, d, e, bl, s, tile_avx512)
                },
                blocking::<6, 32>(),
            ));
        }
        let small = Blocking {
            kc: 64,
            mc: 24,
            nc: 256,
        };
        let mut all = Vec::new();
        for split in [Split::Shared, Split::Columns, Split::Depth] {
            for &(name, kernel, own) in &kernels {
                all.push((name, kernel, small, split));
                all.push((name, kernel, own, split));
            }
        }
        all
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
            // the last row tile 2 and 5 rows tall (the AVX2 kernel's row-exact tiles), B read in place
            (8, 70, 50),
            (11, 33, 40),
            // n past one nc block, k past one kc block and m past one mc block, for every variant
            (40, 300, 2100),
            // wide enough for the dispatched product to take the column split (`columns_split`)
            (13, 37, COLUMNS_MIN + 33),
            // deep enough for it to take the depth split (`depth_split`: kc is at most 512), with k
            // not a multiple of the parts
            (9, 2100, 11),
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
                for (name, kernel, blocking, split) in variants() {
                    let mut c = vec![0.0f32; m * n];
                    let dims = (m, k, n);
                    kernel(
                        &va,
                        &vb,
                        CPtr(c.as_mut_ptr()),
                        &out,
                        dims,
                        &Epilogue::ADD,
                        blocking,
                        split,
                    );
                    check(
                        &c,
                        &want,
                        k,
                        &format!("{name} {blocking:?} {split:?} {what}"),
                    );
                }
                let mut c = vec![0.0f32; m * n];
                // SAFETY: `out` addresses every element of c exactly once.
                unsafe { gemm_view(&va, &vb, c.as_mut_ptr(), &out, (m, k, n), &Epilogue::ADD) };
                check(&c, &want, k, &format!("dispatched {what}"));
            }
        }
    }

    #[test]
    fn concurrent_products_keep_their_own_packing_buffers() {
        // Products of different shapes and splits started from many rayon tasks at once: a thread that
        // waits inside one product runs tasks of others, whose packing buffers must not be its own (a
        // shared one would mix their blocks or panic on a second borrow).
        let shapes = [
            (40, 300, 2100),
            (13, 37, COLUMNS_MIN + 33),
            (9, 2100, 11),
            (100, 257, 70),
            (7, 5, 33),
        ];
        type Product = (usize, usize, usize, Vec<f32>, Vec<f32>);
        let products: Vec<Product> = (0..16)
            .map(|i| {
                let (m, k, n) = shapes[i % shapes.len()];
                let mut seed = 7 + i as u64;
                let a = (0..m * k).map(|_| lcg(&mut seed)).collect();
                let b = (0..k * n).map(|_| lcg(&mut seed)).collect();
                (m, k, n, a, b)
            })
            .collect();
        let alone: Vec<Vec<f32>> = products
            .iter()
            .map(|(m, k, n, a, b)| matmul(a, b, &MatmulSpec::single(*m, *k, *n, false, false)))
            .collect();
        // The same products run by a thread that holds its own buffers (as one that took another
        // product's task while packing into them): they get buffers of their own.
        let nested: Vec<Vec<f32>> = with_pack_buffer(PackBuffer::B, |b| {
            with_pack_buffer(PackBuffer::A, |a| {
                b.push(1.0);
                a.push(2.0);
                products
                    .iter()
                    .map(|(m, k, n, a, b)| {
                        matmul(a, b, &MatmulSpec::single(*m, *k, *n, false, false))
                    })
                    .collect()
            })
        });
        assert_eq!(nested, alone);
        for _ in 0..3 {
            let together: Vec<Vec<f32>> = products
                .par_iter()
                .map(|(m, k, n, a, b)| matmul(a, b, &MatmulSpec::single(*m, *k, *n, false, false)))
                .collect();
            assert_eq!(together, alone);
        }
    }

    /// The automatic split follows the shape: deep products with a small C (weight gradients) split k,
    /// wide ones with few rows (convolutions over a batch) split columns, the rest share each pass.
    #[test]
    fn the_split_follows_the_shape() {
        let kc = 336;
        assert!(depth_split(160, 100_352, 40, kc));
        assert!(depth_split(9, 2100, 11, 512));
        // Too shallow (three passes), or C too large for a partial per part.
        assert!(!depth_split(160, 3 * kc, 40, kc));
        assert!(!depth_split(1024, 1024, 1024, kc));
        assert_eq!(depth_parts(100_352, kc), DEPTH_PARTS);
        assert_eq!(depth_parts(3 * kc + 1, kc), 4);
        let b = Blocking {
            kc,
            mc: 96,
            nc: 2048,
        };
        assert!(columns_split::<16>(40, 100_352, b));
        assert!(!columns_split::<16>(4096, 4096, b));
        // convnext_atto at 224×224, batch 32: stage 2's forward (6,272 columns) splits columns, stage 3's
        // (1,568) shares its passes.
        assert!(columns_split::<16>(640, 6272, b));
        assert!(!columns_split::<16>(320, 1568, b));
        // A serial product (Split::Serial, or one too small to share) runs its passes as one task on the
        // calling thread; a shared one gives each thread work.
        assert_eq!(pass_tasks(true, 40), 1);
        assert!(pass_tasks(false, 40) >= rayon::current_num_threads().min(40));
        assert_eq!(pass_tasks(false, 1), 1);
    }

    /// Blocked axes: the batch of an NCHW tensor as the columns of one matrix, written back into NCHW. With
    /// few output channels B is read in place (see [`b_in_place`]): with 10 pixels per image every panel
    /// of 16 columns straddles two images and is packed, with 40 two of every three panels are read in
    /// place and the third is packed; with 20 output channels B is packed.
    #[test]
    fn blocked_axes_compute_a_batched_pointwise_product() {
        for (c_out, hw) in [(7usize, 10usize), (7, 40), (20, 40)] {
            let (batch, c_in) = (3usize, 5usize);
            let mut seed = 9u64;
            let w: Vec<f32> = (0..c_out * c_in).map(|_| lcg(&mut seed)).collect();
            let x: Vec<f32> = (0..batch * c_in * hw).map(|_| lcg(&mut seed)).collect();
            let mut y = vec![0.0f32; batch * c_out * hw];
            let xv = MatView {
                data: &x,
                rows: Axis::plain(hw),
                cols: Axis::blocked(1, hw, c_in * hw),
            };
            assert_eq!(b_in_place::<6>(&xv, c_out), c_out <= 12);
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
                    (c_out, c_in, batch * hw),
                    &Epilogue::ADD,
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
            check(&y, &want, c_in, &format!("batched pointwise {c_out} {hw}"));
        }
    }

    /// The AVX2 8×8 transposes of a k-contiguous B write the same panel rows as the portable ones, for
    /// columns in any order and at any offsets (a transposed B's columns, or a batch-blocked one's).
    #[test]
    fn both_transposes_pack_the_same_panel_rows() {
        let src: Vec<f32> = (0..4000).map(|i| i as f32 * 0.5 - 7.0).collect();
        let cols: Vec<usize> = (0..16).map(|j| (j * 211 + j * j * 7) % 3900).collect();
        for width in [8, 16] {
            let mut portable = vec![f32::NAN; 8 * 16];
            // SAFETY: every column offset + 7 < 3907 < 4000.
            unsafe { transpose_blocks::<16>(src.as_ptr(), &cols[..width], &mut portable) };
            for (pp, row) in portable.chunks(16).enumerate() {
                for (j, &v) in row[..width].iter().enumerate() {
                    assert_eq!(v, src[cols[j] + pp], "row {pp} column {j}");
                }
            }
            #[cfg(target_arch = "x86_64")]
            if isa() != Isa::Portable {
                let mut avx2 = vec![f32::NAN; 8 * 16];
                // SAFETY: as above; this CPU has AVX2.
                unsafe { transpose_blocks_avx2::<16>(src.as_ptr(), &cols[..width], &mut avx2) };
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same(&avx2, &portable), "width {width}");
            }
        }
    }

    /// B is read in place only for products of at most two rows of tiles whose B has consecutive columns
    /// and one row stride: not for a transposed B, a blocked row axis, or more rows.
    #[test]
    fn b_is_read_in_place_only_where_it_can_be() {
        let data = vec![0.0f32; 64 * 64];
        let plain = MatView::dense(&data, 64, 64, false);
        assert!(b_in_place::<6>(&plain, 1));
        assert!(b_in_place::<6>(&plain, 12));
        assert!(!b_in_place::<6>(&plain, 13));
        assert!(!b_in_place::<6>(&MatView::dense(&data, 64, 64, true), 10));
        let blocked_rows = MatView {
            rows: Axis::blocked(64, 8, 1024),
            ..plain
        };
        assert!(!b_in_place::<6>(&blocked_rows, 10));
        // A panel is read in place only where its 16 columns are consecutive: a partial panel or one that
        // straddles a block of the column axis is not.
        let blocked_cols = MatView {
            cols: Axis::blocked(1, 24, 100),
            ..plain
        };
        let at = |jq, nr| in_place_panel::<16>(&blocked_cols, 2, 5, jq, nr).map(|p| p.data.len());
        assert_eq!(at(0, 16), Some(data.len() - 2 * 64));
        assert_eq!(at(16, 16), None);
        assert_eq!(at(24, 16), Some(data.len() - 2 * 64 - 100));
        assert_eq!(at(48, 8), None);
    }

    /// The overwriting epilogue ignores what C held (NaN here) and adds the row bias once: for k = 0, k
    /// inside one KC block and k across several, into a strided NCHW-like output, on every instruction-set
    /// variant.
    #[test]
    fn the_epilogue_overwrites_and_adds_the_bias_once() {
        let mut seed = 5u64;
        for &(m, k, hw, images) in &[
            (5, 0, 7, 2),
            (13, 40, 9, 3),
            (7, 600, 33, 2),
            (40, 300, 64, 1),
        ] {
            let n = hw * images;
            let a: Vec<f32> = (0..m * k).map(|_| lcg(&mut seed)).collect();
            let b: Vec<f32> = (0..k * n).map(|_| lcg(&mut seed)).collect();
            let bias: Vec<f32> = (0..m).map(|_| lcg(&mut seed)).collect();
            let (va, vb) = (
                MatView::dense(&a, m, k, false),
                MatView::dense(&b, k, n, false),
            );
            // C as NCHW: row i = channel, column j = (image j / hw, pixel j % hw).
            let out = OutView {
                rows: Axis::plain(hw),
                cols: Axis::blocked(1, hw, m * hw),
            };
            let at = |i: usize, j: usize| out.rows.at(i) + out.cols.at(j);
            let mut want = vec![0.0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    let dot: f64 = (0..k)
                        .map(|p| a[i * k + p] as f64 * b[p * n + j] as f64)
                        .sum();
                    want[at(i, j)] = dot + bias[i] as f64;
                }
            }
            for (name, kernel, blocking, split) in variants() {
                let what = format!("{name} {blocking:?} {split:?} {m}x{k}x{n}");
                // k = 0 never reaches the blocked loop: gemm_view handles it.
                let run = |c: &mut [f32], epi: &Epilogue| {
                    if k == 0 {
                        // SAFETY: `out` addresses every element of c once.
                        unsafe { gemm_view(&va, &vb, c.as_mut_ptr(), &out, (m, k, n), epi) };
                    } else {
                        kernel(
                            &va,
                            &vb,
                            CPtr(c.as_mut_ptr()),
                            &out,
                            (m, k, n),
                            epi,
                            blocking,
                            split,
                        );
                    }
                };
                let mut c = vec![f32::NAN; m * n];
                let epi = Epilogue {
                    overwrite: true,
                    row_bias: Some(&bias),
                };
                run(&mut c, &epi);
                check(&c, &want, k.max(1), &format!("{what} C"));
                // Adding instead: C starts at 1 and gains the product and the bias once.
                let mut c1 = vec![1.0f32; m * n];
                let add = Epilogue {
                    row_bias: Some(&bias),
                    ..Epilogue::ADD
                };
                run(&mut c1, &add);
                let want1: Vec<f64> = want.iter().map(|v| v + 1.0).collect();
                check(&c1, &want1, k.max(1), &format!("{what} C + 1"));
            }
        }
    }
}
