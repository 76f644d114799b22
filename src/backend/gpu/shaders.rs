//! The WGSL sources and every specialisation the launchers use.
//!
//! A kernel's module is a list of files (common helpers, an optional shared core such as the tiled GEMM,
//! the family's own file), then WGSL generated from Rust so that host and shader share one definition
//! ([`Family::prelude`]: the elementwise op-code constants `OP_<VARIANT>` from `backend/op_codes.rs`, the
//! [`ConvParams`] struct of the convolutions), then a few `const` declarations (the specialisation, e.g. the
//! elementwise op or the matmul transposes). WGSL declarations may come in any order, so the generated
//! text goes after the files and line numbers inside each file are unchanged; [`ShaderVariant::locate`]
//! maps a line of the assembled source back to (file, line). The naga test validates exactly the sources
//! listed by [`all_variants`], assembled by the [`ShaderVariant::source`] the runtime compiles.

use crate::backend::op_codes;

/// One WGSL file, by name and text.
pub type ShaderFile = (&'static str, &'static str);

const COMMON: ShaderFile = ("common.wgsl", include_str!("../../../shaders/common.wgsl"));
const ELEMENTWISE: ShaderFile = (
    "elementwise.wgsl",
    include_str!("../../../shaders/elementwise.wgsl"),
);
const REDUCE: ShaderFile = ("reduce.wgsl", include_str!("../../../shaders/reduce.wgsl"));
const GEMM: ShaderFile = ("gemm.wgsl", include_str!("../../../shaders/gemm.wgsl"));
const GEMM_WORKGROUP: ShaderFile = (
    "gemm_workgroup.wgsl",
    include_str!("../../../shaders/gemm_workgroup.wgsl"),
);
const GEMM_SUBGROUP: ShaderFile = (
    "gemm_subgroup.wgsl",
    include_str!("../../../shaders/gemm_subgroup.wgsl"),
);
const MATMUL: ShaderFile = ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl"));
const CONV2D: ShaderFile = ("conv2d.wgsl", include_str!("../../../shaders/conv2d.wgsl"));
const DEPTHWISE: ShaderFile = (
    "depthwise.wgsl",
    include_str!("../../../shaders/depthwise.wgsl"),
);
const NORM: ShaderFile = ("norm.wgsl", include_str!("../../../shaders/norm.wgsl"));
const GRN: ShaderFile = ("grn.wgsl", include_str!("../../../shaders/grn.wgsl"));
const OPTIM: ShaderFile = ("optim.wgsl", include_str!("../../../shaders/optim.wgsl"));
const MULTI: ShaderFile = ("multi.wgsl", include_str!("../../../shaders/multi.wgsl"));
const SOFTMAX: ShaderFile = (
    "softmax.wgsl",
    include_str!("../../../shaders/softmax.wgsl"),
);

/// Every WGSL file of the backend.
pub const ALL_FILES: &[ShaderFile] = &[
    COMMON,
    ELEMENTWISE,
    REDUCE,
    GEMM,
    GEMM_WORKGROUP,
    GEMM_SUBGROUP,
    MATMUL,
    CONV2D,
    DEPTHWISE,
    NORM,
    GRN,
    SOFTMAX,
    OPTIM,
    MULTI,
];

/// A kernel family: the files its module is assembled from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Fill, unary and broadcasting binary kernels (elementwise.wgsl).
    Elementwise,
    /// Sums over an axis and permutes (reduce.wgsl).
    Reduce,
    /// Batched matmul on the shared tiled GEMM (gemm.wgsl + its entry file + matmul.wgsl).
    Matmul,
    /// Dense and grouped conv2d and its gradients as implicit GEMMs (gemm.wgsl + its entry file +
    /// conv2d.wgsl).
    Conv2d,
    /// Depthwise conv2d and its gradients (depthwise.wgsl).
    Depthwise,
    /// Layer norm forward and backward (norm.wgsl).
    Norm,
    /// Global Response Normalisation forward and backward (grn.wgsl).
    Grn,
    /// Log-softmax forward and backward (softmax.wgsl).
    Softmax,
    /// The fused AdamW update (optim.wgsl).
    Optim,
    /// Kernels over many tensors per launch (multi.wgsl) on the wide layout of `slots` read-write storage
    /// bindings (see [`multi_slots_wgsl`]).
    Multi {
        /// Storage bindings 1..=slots.
        slots: u32,
    },
}

impl Family {
    /// The files of this family's module, in order (the GEMM families with the workgroup-memory entry file;
    /// see [`ShaderVariant::files`] for the subgroup form).
    pub fn files(self) -> &'static [ShaderFile] {
        match self {
            Family::Elementwise => &[COMMON, ELEMENTWISE],
            Family::Reduce => &[COMMON, REDUCE],
            Family::Matmul => &[COMMON, GEMM, GEMM_WORKGROUP, MATMUL],
            Family::Conv2d => &[COMMON, GEMM, GEMM_WORKGROUP, CONV2D],
            Family::Depthwise => &[COMMON, DEPTHWISE],
            Family::Norm => &[COMMON, NORM],
            Family::Grn => &[COMMON, GRN],
            Family::Softmax => &[COMMON, SOFTMAX],
            Family::Optim => &[COMMON, OPTIM],
            Family::Multi { .. } => &[COMMON, MULTI],
        }
    }

    /// WGSL generated from Rust for this family's module (empty for most): the op-code constants
    /// (`const OP_EXP: u32 = 0u;` ..., see `backend/op_codes.rs`) for the elementwise family, the
    /// [`ConvParams`] struct for the convolutions, the storage bindings and their accessors for the
    /// multi-tensor kernels.
    pub fn prelude(self) -> String {
        match self {
            Family::Elementwise => op_codes::wgsl_constants(),
            Family::Conv2d => ConvParams::wgsl(),
            Family::Depthwise => ConvParams::wgsl() + &depthwise_tile_wgsl(),
            Family::Multi { slots } => multi_slots_wgsl(slots),
            _ => String::new(),
        }
    }
}

/// Threads per workgroup of depthwise.wgsl's tiled kernels.
pub const DW_THREADS: usize = 64;
/// f32 words of the tiled kernels' staged source tile (`dw_tile`; 8 KiB).
pub const DW_TILE_WORDS: usize = 2048;
/// f32 words of dw_weight_grad_tiled's dy tile (`dw_dy_tile`): at most this many outputs per tile.
pub const DW_DY_TILE_WORDS: usize = 256;

/// depthwise.wgsl's generated sizes of its tiled kernels' workgroup and workgroup memory.
fn depthwise_tile_wgsl() -> String {
    format!(
        "const DW_THREADS: u32 = {DW_THREADS}u;\nconst DW_TILE_WORDS: u32 = {DW_TILE_WORDS}u;\n\
         const DW_DY_TILE_WORDS: u32 = {DW_DY_TILE_WORDS}u;\n"
    )
}

/// multi.wgsl's generated part for a wide layout of `slots` bindings: the storage bindings s1 … s`slots`
/// (read_write arrays of f32), and the per-tensor work as a switch over the tensor t with one case per
/// tensor slot, since WGSL cannot index bindings (also `lowrank_reparam_problem` and
/// `lowrank_grads_problem`, one case per low-rank problem, see multi.wgsl):
/// - `adamw_tensor(t, i, has_moments, lr, weight_decay)`: element i of tensor t, whose p, g, m, v, p', m', v'
///   are s(7t+2) … s(7t+8) (s1 is the gradient scale), through multi.wgsl's `adamw_element`;
/// - `sum_squares_tensor(t, first, end) -> f32`: Σ x² over elements first, first + 256, … below end of
///   tensor t, s(t+2) (s1 takes the partial sums).
pub fn multi_slots_wgsl(slots: u32) -> String {
    let mut s = String::new();
    for k in 1..=slots {
        s.push_str(&format!(
            "@group(0) @binding({k}) var<storage, read_write> s{k}: array<f32>;\n"
        ));
    }
    s.push_str(
        "fn adamw_tensor(t: u32, i: u32, has_moments: bool, lr: f32, weight_decay: f32) {\n    switch t {\n",
    );
    for t in 0..adamw_tensors_per_launch(slots) {
        let b = 7 * t + 2;
        let [p, g, m, v, po, mo, vo] = [b, b + 1, b + 2, b + 3, b + 4, b + 5, b + 6];
        s.push_str(&format!(
            "        case {t}u: {{
            var m0 = 0.0;
            var v0 = 0.0;
            if (has_moments) {{
                m0 = s{m}[i];
                v0 = s{v}[i];
            }}
            let r = adamw_element(s{p}[i], s{g}[i], m0, v0, lr, weight_decay);
            s{po}[i] = r.x;
            s{mo}[i] = r.y;
            s{vo}[i] = r.z;
        }}\n"
        ));
    }
    s.push_str("        default: {}\n    }\n}\n");
    s.push_str("fn sum_squares_tensor(t: u32, first: u32, end: u32) -> f32 {\n    var acc = 0.0;\n    switch t {\n");
    for t in 0..sum_squares_tensors_per_launch(slots) {
        let k = t + 2;
        s.push_str(&format!(
            "        case {t}u: {{
            for (var j = first; j < end; j += 256u) {{
                acc += s{k}[j] * s{k}[j];
            }}
        }}\n"
        ));
    }
    s.push_str("        default: {}\n    }\n    return acc;\n}\n");
    s.push_str(
        "fn lowrank_reparam_problem(t: u32, i: u32, r: u32, n: u32, s: f32, form: u32) {\n    switch t {\n",
    );
    for t in 0..lowrank_problems_per_launch(slots, LOWRANK_REPARAM_SLOTS) {
        let [w, b, a, y] = std::array::from_fn(|k| LOWRANK_REPARAM_SLOTS * t + 1 + k as u32);
        s.push_str(&format!(
            "        case {t}u: {{
            let per_row = (n + 3u) / 4u;
            let row = i / per_row;
            let c0 = (i % per_row) * 4u;
            var p = vec4<f32>();
            for (var q = 0u; q < r; q++) {{
                let at = q * n;
                let a = vec4<f32>(s{a}[at + c0], s{a}[at + min(c0 + 1u, n - 1u)],
                                  s{a}[at + min(c0 + 2u, n - 1u)], s{a}[at + min(c0 + 3u, n - 1u)]);
                p += s{b}[row * r + q] * a;
            }}
            for (var j = 0u; j < 4u && c0 + j < n; j++) {{
                let e = row * n + c0 + j;
                s{y}[e] = lowrank_form(s{w}[e], s * p[j], form);
            }}
        }}\n"
        ));
    }
    s.push_str("        default: {}\n    }\n}\n");
    s.push_str(
        "fn lowrank_grads_problem(t: u32, i: u32, o: u32, r: u32, n: u32, s: f32, has_z: bool, nb: u32) {\n    switch t {\n",
    );
    for t in 0..lowrank_problems_per_launch(slots, LOWRANK_GRADS_SLOTS) {
        let [g, z, b, a, db, da] = std::array::from_fn(|k| LOWRANK_GRADS_SLOTS * t + 1 + k as u32);
        // g ⊙ z (or g) at (row, j).
        let gz = format!(
            "var gz = s{g}[row * n + j];\n                    if (has_z) {{ gz *= s{z}[row * n + j]; }}"
        );
        s.push_str(&format!(
            "        case {t}u: {{
            let r4 = (r + 3u) / 4u;
            var acc = vec4<f32>();
            if (i < nb) {{
                let row = i / r4;
                let q0 = (i % r4) * 4u;
                let aq = four_ranks(q0, r) * n;
                for (var j = 0u; j < n; j++) {{
                    {gz}
                    acc += gz * vec4<f32>(s{a}[aq.x + j], s{a}[aq.y + j], s{a}[aq.z + j], s{a}[aq.w + j]);
                }}
                for (var c = 0u; c < 4u && q0 + c < r; c++) {{
                    s{db}[row * r + q0 + c] = s * acc[c];
                }}
            }} else {{
                let k = i - nb;
                let q0 = (k / n) * 4u;
                let j = k % n;
                let bq = four_ranks(q0, r);
                for (var row = 0u; row < o; row++) {{
                    {gz}
                    let br = row * r;
                    acc += gz * vec4<f32>(s{b}[br + bq.x], s{b}[br + bq.y], s{b}[br + bq.z], s{b}[br + bq.w]);
                }}
                for (var c = 0u; c < 4u && q0 + c < r; c++) {{
                    s{da}[(q0 + c) * n + j] = s * acc[c];
                }}
            }}
        }}\n"
        ));
    }
    s.push_str("        default: {}\n    }\n}\n");
    s
}

/// Storage slots of one problem of multi.wgsl's lowrank_reparam_multi (W, B, A, W').
pub const LOWRANK_REPARAM_SLOTS: u32 = 4;
/// Storage slots of one problem of multi.wgsl's lowrank_grads_multi (g, z, B, A, ∂B, ∂A).
pub const LOWRANK_GRADS_SLOTS: u32 = 6;

/// Problems of `per` slots each that one low-rank launch takes on a wide layout of `slots` bindings: as
/// many as fit, at two table rows each.
pub fn lowrank_problems_per_launch(slots: u32, per: u32) -> u32 {
    (slots / per).min(MULTI_TABLE_ROWS / 2)
}

/// Rows of multi.wgsl's parameter table (`MultiParams::table`).
pub const MULTI_TABLE_ROWS: u32 = 13;

/// Parameters adamw_multi updates per launch on a wide layout of `slots` bindings: 7 each after the
/// gradient scale's, and one table row each.
pub fn adamw_tensors_per_launch(slots: u32) -> u32 {
    ((slots - 1) / 7).min(MULTI_TABLE_ROWS)
}

/// Tensors sum_squares_multi reduces per launch on a wide layout of `slots` bindings: one each after the
/// partial sums', and half a table row each.
pub fn sum_squares_tensors_per_launch(slots: u32) -> u32 {
    (slots - 1).min(2 * MULTI_TABLE_ROWS)
}

/// Declares a uniform parameter block of u32 fields once for host and WGSL: a `#[repr(C)]` Rust struct
/// (bytemuck `Pod`, so `words()` is its memory, field by field in order), `FIELDS` (the names in that
/// order) and `wgsl()`, the same fields in the same order as a WGSL `struct` of the same name, with each
/// field's doc comment as a WGSL comment.
macro_rules! wgsl_params {
    (
        $(#[$meta:meta])*
        $vis:vis struct $Name:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident,
            )*
        }
    ) => {
        $(#[$meta])*
        #[repr(C)]
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, bytemuck::Pod, bytemuck::Zeroable)]
        $vis struct $Name {
            $(
                $(#[doc = $doc])*
                pub $field: u32,
            )*
        }

        impl $Name {
            /// The field names in memory order.
            pub const FIELDS: &'static [&'static str] = &[$(stringify!($field)),*];

            /// The words the host uploads: the fields in order.
            pub fn words(&self) -> Vec<u32> {
                bytemuck::cast_slice(std::slice::from_ref(self)).to_vec()
            }

            /// The WGSL declaration of this struct (same name, same fields, same order).
            pub fn wgsl() -> String {
                let mut s = format!("struct {} {{\n", stringify!($Name));
                $(
                    $(s.push_str(&format!("    //{}\n", $doc));)*
                    s.push_str(concat!("    ", stringify!($field), ": u32,\n"));
                )*
                s.push_str("}\n");
                s
            }
        }
    };
}

wgsl_params! {
    /// The parameter block of the convolution kernels, shared by conv2d.wgsl and depthwise.wgsl (whose
    /// `params` is a `ConvParams`); filled by `conv.rs`. Sizes of the geometry (`Conv2dGeometry`), then the
    /// per-kernel words.
    pub struct ConvParams {
        /// Images N.
        batch,
        /// Input channels.
        c_in,
        /// Input height.
        h_in,
        /// Input width.
        w_in,
        /// Output channels.
        c_out,
        /// Kernel height.
        kh,
        /// Kernel width.
        kw,
        /// Output height.
        h_out,
        /// Output width.
        w_out,
        /// Vertical stride.
        stride_h,
        /// Horizontal stride.
        stride_w,
        /// Zero rows above (and below) the input.
        pad_h,
        /// Zero columns left (and right) of the input.
        pad_w,
        /// Vertical dilation.
        dil_h,
        /// Horizontal dilation.
        dil_w,
        /// Channel groups (C_in for a depthwise convolution).
        groups,
        /// K splits of the implicit GEMM (see gemm.wgsl); split s writes its partial result at
        /// s·(output length).
        splits,
        /// 1 when a bias is bound (read by dw_forward; conv2d uses its HAS_BIAS constant instead).
        has_bias,
        /// Images per chunk of dw_weight_grad (each chunk's partial sums are added by the host).
        chunk,
        /// Output columns of a workgroup tile of depthwise.wgsl's tiled kernels.
        tile_w,
        /// Output rows of a workgroup tile of the tiled kernels.
        tile_h,
        /// Planes (image, channel) of a workgroup tile of the tiled forward and input gradient.
        tile_planes,
        /// Words between the rows of the tiled kernels' staged source tile (its width padded to 1 mod 4,
        /// so that the 32 threads of 4 rows × 8 quads read 32 different banks).
        tile_stride,
        /// Pads the block to a multiple of 16 bytes.
        _pad,
    }
}

/// A family with its specialisation constants: one shader module.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShaderVariant {
    /// The kernel family (which files).
    pub family: Family,
    /// WGSL `const` declarations appended after the files.
    pub defines: String,
    /// The GEMM families' subgroup form (gemm_subgroup.wgsl in place of gemm_workgroup.wgsl), which needs
    /// an adapter with subgroups; the runtime picks it (see `GpuBackend::new`), launchers never do.
    pub subgroups: bool,
    /// The GEMM families' quad loads (`GEMM_QUADS`: interior tiles loaded 4 values at a time, as vec4 where
    /// aligned); the runtime picks it (see `GpuOptions::gemm_quads`), launchers never do.
    pub quads: bool,
    /// The GEMM families' tile side (`GEMM_TILE`, one of [`GEMM_TILES`]): the GEMM launchers pick it per
    /// product (`GpuBackend::gemm_tile_for`, from `GpuOptions::gemm_tile` and the product's size).
    pub tile: u32,
}

/// The GEMM's tile sides: a workgroup of (T/8)² threads computes a T×T tile of C, 8×8 results per thread.
pub const GEMM_TILES: [u32; 2] = [64, 128];

/// The workgroup memory, in bytes, of the GEMM with tile side `tile`: A's tile (16 rows of `tile` + 4
/// words) and B's (16 rows of `tile` words), as gemm.wgsl declares them.
pub fn gemm_workgroup_bytes(tile: u32) -> u32 {
    16 * ((tile + 4) + tile) * 4
}

impl ShaderVariant {
    /// A variant of `family` with the WGSL `const` declarations `defines`.
    pub fn new(family: Family, defines: impl Into<String>) -> Self {
        ShaderVariant {
            family,
            defines: defines.into(),
            subgroups: false,
            quads: false,
            tile: GEMM_TILES[0],
        }
    }
    /// True for the families built on the tiled GEMM (gemm.wgsl).
    pub fn uses_gemm(&self) -> bool {
        matches!(self.family, Family::Matmul | Family::Conv2d)
    }
    /// This variant in its subgroup form when `on` and it uses the GEMM; otherwise unchanged.
    pub fn with_subgroups(mut self, on: bool) -> Self {
        self.subgroups = on && self.uses_gemm();
        self
    }
    /// This variant with quad loads when `on` and it uses the GEMM; otherwise unchanged.
    pub fn with_quads(mut self, on: bool) -> Self {
        self.quads = on && self.uses_gemm();
        self
    }
    /// This variant with GEMM tiles of side `tile` (one of [`GEMM_TILES`]) when it uses the GEMM;
    /// otherwise unchanged.
    pub fn with_tile(mut self, tile: u32) -> Self {
        if self.uses_gemm() {
            self.tile = tile;
        }
        self
    }
    /// The files of this module, in order: the family's, with gemm_subgroup.wgsl in place of
    /// gemm_workgroup.wgsl in the subgroup form.
    pub fn files(&self) -> Vec<ShaderFile> {
        self.family
            .files()
            .iter()
            .map(|&f| {
                if self.subgroups && f == GEMM_WORKGROUP {
                    GEMM_SUBGROUP
                } else {
                    f
                }
            })
            .collect()
    }
    /// The elementwise module for the op variant named `op` (e.g. `"MulExpScaled"`, see
    /// [`UnaryOp::name`](crate::backend::UnaryOp::name)): `OP` is its generated op-code constant.
    pub fn elementwise(op: &str) -> Self {
        Self::new(
            Family::Elementwise,
            format!("const OP: u32 = {};\n", op_codes::wgsl_name(op)),
        )
    }
    /// The matmul module for the given transposes.
    pub fn matmul(trans_a: bool, trans_b: bool) -> Self {
        Self::matmul_fused(trans_a, trans_b, 0, 0, false)
    }
    /// The matmul module with matmul.wgsl's fused forms: `reparam` 1–3 (the adapters' W + c·P,
    /// W ⊙ exp(c·P), W ⊙ (1 + c·P) epilogues), `scaled_operand` 1 (A) or 2 (B) read as c·X·Z (`has_z`) or
    /// X·c.
    pub fn matmul_fused(
        trans_a: bool,
        trans_b: bool,
        reparam: u32,
        scaled_operand: u32,
        has_z: bool,
    ) -> Self {
        Self::new(
            Family::Matmul,
            format!(
                "const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};\nconst REPARAM: u32 = {reparam}u;\nconst SCALED_OPERAND: u32 = {scaled_operand}u;\nconst HAS_Z: bool = {has_z};\n"
            ),
        )
    }
    /// The implicit-GEMM convolution module: mode 0 forward, 1 input gradient, 2 weight gradient, 3 input
    /// gradient of a patchifying convolution (stride = kernel, no padding or dilation);
    /// `has_bias`: the forward adds the bias, the weight gradient also gives the bias gradient; `pointwise`
    /// for 1×1 kernels with stride 1 and no padding (no tap arithmetic).
    pub fn conv2d(mode: u32, has_bias: bool, pointwise: bool) -> Self {
        Self::conv2d_act(mode, has_bias, pointwise, false)
    }
    /// [`ShaderVariant::conv2d`] with `gelu`: the forward (mode 0) writes GELU of its result, and GELU′ of
    /// it into the second output.
    pub fn conv2d_act(mode: u32, has_bias: bool, pointwise: bool, gelu: bool) -> Self {
        Self::new(
            Family::Conv2d,
            format!(
                "const CONV_MODE: u32 = {mode}u;\nconst HAS_BIAS: bool = {has_bias};\nconst POINTWISE: bool = {pointwise};\nconst GELU: bool = {gelu};\n"
            ),
        )
    }
    /// A family without specialisation constants.
    pub fn plain(family: Family) -> Self {
        Self::new(family, "")
    }
    /// A readable name ("matmul [TRANS_A = true, ...]").
    pub fn name(&self) -> String {
        let consts: Vec<&str> = self
            .defines
            .lines()
            .map(|l| {
                l.trim_start_matches("const ")
                    .trim_end_matches(';')
                    .trim_end()
            })
            .collect();
        let mut forms = Vec::new();
        if self.uses_gemm() && self.tile != GEMM_TILES[0] {
            forms.push(format!("{0}×{0} tiles", self.tile));
        }
        if self.subgroups {
            forms.push("subgroups".into());
        }
        if self.quads {
            forms.push("quads".into());
        }
        let form = if forms.is_empty() {
            String::new()
        } else {
            format!(" ({})", forms.join(", "))
        };
        format!("{:?}{form} [{}]", self.family, consts.join(", "))
    }
    /// The parts of [`ShaderVariant::source`] in order, by name: the family's files, then (each under a
    /// one-line `//` header) the generated prelude, if any, and the specialisation constants.
    fn parts(&self) -> Vec<(&'static str, String)> {
        let mut parts: Vec<(&'static str, String)> = self
            .files()
            .into_iter()
            .map(|(name, text)| {
                let mut text = text.to_string();
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                (name, text)
            })
            .collect();
        let prelude = self.family.prelude();
        if !prelude.is_empty() {
            parts.push((
                GENERATED,
                format!("// generated from Rust (see Family::prelude)\n{prelude}"),
            ));
        }
        let quads = if self.uses_gemm() {
            format!(
                "const GEMM_QUADS: bool = {};\nconst GEMM_TILE: u32 = {}u;\n",
                self.quads, self.tile
            )
        } else {
            String::new()
        };
        parts.push((
            SPECIALISATION,
            format!("// specialisation\n{}{quads}", self.defines),
        ));
        parts
    }
    /// The assembled WGSL source: the files, the generated prelude and the specialisation constants. This
    /// is what the runtime compiles (and what the naga test validates).
    pub fn source(&self) -> String {
        self.parts().into_iter().map(|(_, text)| text).collect()
    }
    /// Maps a 1-based line of [`ShaderVariant::source`] to (file, line in that file); the generated
    /// prelude (`"<generated prelude>"`) and the specialisation constants (`"<specialisation constants>"`)
    /// count from 1 after their header line (which is line 0).
    pub fn locate(&self, line: usize) -> (&'static str, usize) {
        let mut start = 1;
        for (name, text) in self.parts() {
            let lines = text.lines().count();
            let header = usize::from(name == GENERATED || name == SPECIALISATION);
            // Past the end (naga's end-of-input) counts as the last part's.
            if line < start + lines || name == SPECIALISATION {
                return (name, (line + 1).saturating_sub(start + header));
            }
            start += lines;
        }
        unreachable!("the specialisation part is always last")
    }
}

/// The name [`ShaderVariant::locate`] gives the generated prelude.
const GENERATED: &str = "<generated prelude>";
/// The name [`ShaderVariant::locate`] gives the specialisation constants.
const SPECIALISATION: &str = "<specialisation constants>";

/// Every module the backend can build: all families with every specialisation a launcher requests.
pub fn all_variants() -> Vec<ShaderVariant> {
    let mut v: Vec<ShaderVariant> = op_codes::all()
        .map(|op| ShaderVariant::elementwise(op.name))
        .collect();
    for ta in [false, true] {
        for tb in [false, true] {
            v.push(ShaderVariant::matmul(ta, tb));
            for reparam in 1..=3 {
                v.push(ShaderVariant::matmul_fused(ta, tb, reparam, 0, false));
            }
            for scaled in 1..=2 {
                for has_z in [false, true] {
                    v.push(ShaderVariant::matmul_fused(ta, tb, 0, scaled, has_z));
                }
            }
        }
    }
    for mode in 0..4 {
        for bias in [false, true] {
            // A bias is added by the forward (mode 0) and differentiated by the weight gradient (mode 2).
            if bias && mode != 0 && mode != 2 {
                continue;
            }
            for pointwise in [false, true] {
                // Mode 3 (patchifying) never sees a 1×1 kernel: those take the pointwise mode 1.
                if !(mode == 3 && pointwise) {
                    v.push(ShaderVariant::conv2d(mode, bias, pointwise));
                }
                if mode == 0 {
                    v.push(ShaderVariant::conv2d_act(mode, bias, pointwise, true));
                }
            }
        }
    }
    for f in [
        Family::Reduce,
        Family::Depthwise,
        Family::Norm,
        Family::Grn,
        Family::Softmax,
        Family::Optim,
    ] {
        v.push(ShaderVariant::plain(f));
    }
    // The smallest wide layout any adapter gets (the 8 slots liera requires), and the caps used on adapters
    // with more.
    for slots in [8, 32, 64] {
        v.push(ShaderVariant::plain(Family::Multi { slots }));
    }
    // Every GEMM module in each form: subgroups, quad loads, both; each at every tile side.
    let forms: Vec<ShaderVariant> = v
        .iter()
        .filter(|x| x.uses_gemm())
        .flat_map(|x| {
            [(false, false), (true, false), (false, true), (true, true)]
                .into_iter()
                .flat_map(move |(sg, q)| {
                    GEMM_TILES.map(|t| x.clone().with_subgroups(sg).with_quads(q).with_tile(t))
                })
        })
        .filter(|x| x.subgroups || x.quads || x.tile != GEMM_TILES[0])
        .collect();
    v.extend(forms);
    v
}
