//! The WGSL sources and every specialisation the launchers use.
//!
//! A kernel's module is a list of files (common helpers, an optional shared core such as the tiled GEMM,
//! the family's own file) followed by a few `const` declarations (the specialisation, e.g. the elementwise
//! op or the matmul transposes). The constants go at the end, so line numbers inside each file are
//! unchanged; [`ShaderVariant::locate`] maps a line of the assembled source back to (file, line). The naga
//! test validates exactly the sources listed by [`all_variants`].

/// One WGSL file, by name and text.
pub type ShaderFile = (&'static str, &'static str);

const COMMON: ShaderFile = ("common.wgsl", include_str!("../../../shaders/common.wgsl"));
const ELEMENTWISE: ShaderFile = (
    "elementwise.wgsl",
    include_str!("../../../shaders/elementwise.wgsl"),
);
const REDUCE: ShaderFile = ("reduce.wgsl", include_str!("../../../shaders/reduce.wgsl"));
const GEMM: ShaderFile = ("gemm.wgsl", include_str!("../../../shaders/gemm.wgsl"));
const MATMUL: ShaderFile = ("matmul.wgsl", include_str!("../../../shaders/matmul.wgsl"));
const CONV2D: ShaderFile = ("conv2d.wgsl", include_str!("../../../shaders/conv2d.wgsl"));
const DEPTHWISE: ShaderFile = (
    "depthwise.wgsl",
    include_str!("../../../shaders/depthwise.wgsl"),
);
const NORM: ShaderFile = ("norm.wgsl", include_str!("../../../shaders/norm.wgsl"));
const OPTIM: ShaderFile = ("optim.wgsl", include_str!("../../../shaders/optim.wgsl"));
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
    MATMUL,
    CONV2D,
    DEPTHWISE,
    NORM,
    SOFTMAX,
    OPTIM,
];

/// A kernel family: the files its module is assembled from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Family {
    /// Fill, unary and broadcasting binary kernels (elementwise.wgsl).
    Elementwise,
    /// Sums over an axis and permutes (reduce.wgsl).
    Reduce,
    /// Batched matmul on the shared tiled GEMM (gemm.wgsl + matmul.wgsl).
    Matmul,
    /// Dense and grouped conv2d and its gradients as implicit GEMMs (gemm.wgsl + conv2d.wgsl).
    Conv2d,
    /// Depthwise conv2d and its gradients (depthwise.wgsl).
    Depthwise,
    /// Layer norm forward and backward (norm.wgsl).
    Norm,
    /// Log-softmax forward and backward (softmax.wgsl).
    Softmax,
    /// The fused AdamW update (optim.wgsl).
    Optim,
}

impl Family {
    /// The files of this family's module, in order.
    pub fn files(self) -> &'static [ShaderFile] {
        match self {
            Family::Elementwise => &[COMMON, ELEMENTWISE],
            Family::Reduce => &[COMMON, REDUCE],
            Family::Matmul => &[COMMON, GEMM, MATMUL],
            Family::Conv2d => &[COMMON, GEMM, CONV2D],
            Family::Depthwise => &[COMMON, DEPTHWISE],
            Family::Norm => &[COMMON, NORM],
            Family::Softmax => &[COMMON, SOFTMAX],
            Family::Optim => &[COMMON, OPTIM],
        }
    }
}

/// Op codes of the elementwise specialisation constant `OP` (see elementwise.wgsl).
pub mod op_code {
    use crate::backend::{BinaryOp, UnaryOp};
    /// The `OP` code of a unary op (0–7).
    pub fn unary(op: UnaryOp) -> u32 {
        match op {
            UnaryOp::Exp => 0,
            UnaryOp::Log => 1,
            UnaryOp::Neg => 2,
            UnaryOp::Sqrt => 3,
            UnaryOp::Gelu => 4,
            UnaryOp::AddScalar(_) => 5,
            UnaryOp::MulScalar(_) => 6,
            UnaryOp::PowScalar(_) => 7,
        }
    }
    /// The `OP` code of a binary op (16–24).
    pub fn binary(op: BinaryOp) -> u32 {
        match op {
            BinaryOp::Add => 16,
            BinaryOp::Sub => 17,
            BinaryOp::Mul => 18,
            BinaryOp::Div => 19,
            BinaryOp::GeluBackward => 20,
            BinaryOp::AddScaled(_) => 21,
            BinaryOp::ExpMul(_) => 22,
            BinaryOp::AffineMul(_) => 23,
            BinaryOp::MulScaled(_) => 24,
        }
    }
    /// Every code the launchers use.
    pub const ALL: &[u32] = &[0, 1, 2, 3, 4, 5, 6, 7, 16, 17, 18, 19, 20, 21, 22, 23, 24];
}

/// A family with its specialisation constants: one shader module.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ShaderVariant {
    /// The kernel family (which files).
    pub family: Family,
    /// WGSL `const` declarations appended after the files.
    pub defines: String,
}

impl ShaderVariant {
    /// A variant of `family` with the WGSL `const` declarations `defines`.
    pub fn new(family: Family, defines: impl Into<String>) -> Self {
        ShaderVariant {
            family,
            defines: defines.into(),
        }
    }
    /// The elementwise module for op code `op`.
    pub fn elementwise(op: u32) -> Self {
        Self::new(Family::Elementwise, format!("const OP: u32 = {op}u;\n"))
    }
    /// The matmul module for the given transposes.
    pub fn matmul(trans_a: bool, trans_b: bool) -> Self {
        Self::new(
            Family::Matmul,
            format!("const TRANS_A: bool = {trans_a};\nconst TRANS_B: bool = {trans_b};\n"),
        )
    }
    /// The implicit-GEMM convolution module: mode 0 forward, 1 input gradient, 2 weight gradient, 3 input
    /// gradient of a patchifying convolution (stride = kernel, no padding or dilation);
    /// `pointwise` for 1×1 kernels with stride 1 and no padding (no tap arithmetic).
    pub fn conv2d(mode: u32, has_bias: bool, pointwise: bool) -> Self {
        Self::new(
            Family::Conv2d,
            format!(
                "const CONV_MODE: u32 = {mode}u;\nconst HAS_BIAS: bool = {has_bias};\nconst POINTWISE: bool = {pointwise};\n"
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
        format!("{:?} [{}]", self.family, consts.join(", "))
    }
    /// The assembled WGSL source.
    pub fn source(&self) -> String {
        let mut s = String::new();
        for (_, text) in self.family.files() {
            s.push_str(text);
            if !text.ends_with('\n') {
                s.push('\n');
            }
        }
        s.push_str("// specialisation\n");
        s.push_str(&self.defines);
        s
    }
    /// Maps a 1-based line of [`ShaderVariant::source`] to (file, line in that file); the specialisation
    /// constants count from 1 after their `// specialisation` header (which is line 0).
    pub fn locate(&self, line: usize) -> (&'static str, usize) {
        let mut start = 1;
        for (name, text) in self.family.files() {
            let lines = text.lines().count();
            if line < start + lines {
                return (name, line - start + 1);
            }
            start += lines;
        }
        ("<specialisation constants>", line - start)
    }
}

/// Every module the backend can build: all families with every specialisation a launcher requests.
pub fn all_variants() -> Vec<ShaderVariant> {
    let mut v: Vec<ShaderVariant> = op_code::ALL
        .iter()
        .map(|&op| ShaderVariant::elementwise(op))
        .collect();
    for ta in [false, true] {
        for tb in [false, true] {
            v.push(ShaderVariant::matmul(ta, tb));
        }
    }
    for mode in 0..4 {
        for bias in [false, true] {
            if bias && mode != 0 {
                continue;
            }
            for pointwise in [false, true] {
                // Mode 3 (patchifying) never sees a 1×1 kernel: those take the pointwise mode 1.
                if !(mode == 3 && pointwise) {
                    v.push(ShaderVariant::conv2d(mode, bias, pointwise));
                }
            }
        }
    }
    for f in [
        Family::Reduce,
        Family::Depthwise,
        Family::Norm,
        Family::Softmax,
        Family::Optim,
    ] {
        v.push(ShaderVariant::plain(f));
    }
    v
}
