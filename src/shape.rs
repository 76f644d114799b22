//! Shapes, broadcasting and convolution geometry, each with an error for every invalid case.

use crate::error::{Error, Result};
use std::fmt;

/// The most dimensions a kernel sees after adjacent dimensions have been merged
/// (see [`merge_broadcast_dims`]); tensors themselves may have any rank.
pub const MAX_KERNEL_RANK: usize = 6;

/// The dimensions of a tensor, outermost first (row-major, contiguous).
#[derive(Clone, PartialEq, Eq, Hash, Default)]
pub struct Shape(Vec<usize>);

impl Shape {
    /// A shape from its dimensions.
    pub fn new(dims: impl Into<Vec<usize>>) -> Self {
        Shape(dims.into())
    }
    /// The shape of a scalar (rank 0, one element).
    pub fn scalar() -> Self {
        Shape(Vec::new())
    }
    /// The dimensions.
    pub fn dims(&self) -> &[usize] {
        &self.0
    }
    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.0.len()
    }
    /// The number of elements (1 for a scalar).
    pub fn numel(&self) -> usize {
        self.0.iter().product()
    }
    /// Row-major strides in elements.
    pub fn strides(&self) -> Vec<usize> {
        let mut strides = vec![1; self.0.len()];
        for i in (0..self.0.len().saturating_sub(1)).rev() {
            strides[i] = strides[i + 1] * self.0[i + 1];
        }
        strides
    }
    /// Dimension `axis`, with an error naming `op` if the axis is out of range.
    pub fn dim(&self, op: &'static str, axis: usize) -> Result<usize> {
        self.0
            .get(axis)
            .copied()
            .ok_or_else(|| Error::invalid(op, format!("axis {axis} out of range for shape {self}")))
    }

    /// The shape two operands broadcast to (NumPy rules: align trailing dimensions; each pair must be equal
    /// or contain a 1).
    pub fn broadcast(op: &'static str, a: &Shape, b: &Shape) -> Result<Shape> {
        let rank = a.rank().max(b.rank());
        let mut out = vec![0; rank];
        for (i, slot) in out.iter_mut().enumerate() {
            let da = if i + a.rank() >= rank {
                a.0[i + a.rank() - rank]
            } else {
                1
            };
            let db = if i + b.rank() >= rank {
                b.0[i + b.rank() - rank]
            } else {
                1
            };
            *slot = match (da, db) {
                (x, y) if x == y => x,
                (1, y) => y,
                (x, 1) => x,
                _ => {
                    return Err(Error::shape(op, format!("shapes {a} and {b} do not broadcast (dimension {i} of the result: {da} vs {db})")));
                }
            };
        }
        Ok(Shape(out))
    }

    /// Strides with which an operand of this shape is read when broadcast to `out` (0 on broadcast axes).
    /// `out` must be a broadcast of `self`.
    pub fn broadcast_strides(&self, out: &Shape) -> Vec<usize> {
        let own = self.strides();
        let offset = out.rank() - self.rank();
        (0..out.rank())
            .map(|i| {
                if i < offset || self.0[i - offset] == 1 {
                    0
                } else {
                    own[i - offset]
                }
            })
            .collect()
    }

    /// Normalises a list of axes (sorted, deduplicated, each checked against the rank).
    pub fn check_axes(&self, op: &'static str, axes: &[usize]) -> Result<Vec<usize>> {
        let mut sorted = axes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        if let Some(&bad) = sorted.iter().find(|&&a| a >= self.rank()) {
            return Err(Error::invalid(
                op,
                format!("axis {bad} out of range for shape {self}"),
            ));
        }
        Ok(sorted)
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}

impl fmt::Debug for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl From<&[usize]> for Shape {
    fn from(d: &[usize]) -> Self {
        Shape(d.to_vec())
    }
}
impl From<Vec<usize>> for Shape {
    fn from(d: Vec<usize>) -> Self {
        Shape(d)
    }
}
impl<const N: usize> From<[usize; N]> for Shape {
    fn from(d: [usize; N]) -> Self {
        Shape(d.to_vec())
    }
}

/// A strided view for an elementwise kernel: the output's dimensions and, for each operand, its strides
/// (0 on broadcast axes). Adjacent dimensions that are contiguous in every operand are merged, so a plain
/// same-shape operation has rank 1 and a bias add over NCHW has rank ≤ 3.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BroadcastLayout {
    /// Output dimensions after merging (at most [`MAX_KERNEL_RANK`]).
    pub dims: Vec<usize>,
    /// Strides of the first operand over `dims`.
    pub a_strides: Vec<usize>,
    /// Strides of the second operand over `dims`.
    pub b_strides: Vec<usize>,
}

impl BroadcastLayout {
    /// The number of output elements.
    pub fn numel(&self) -> usize {
        self.dims.iter().product()
    }
    /// True when both operands are read contiguously with the output's own indexing.
    pub fn is_contiguous(&self) -> bool {
        self.dims.len() <= 1
            && self.a_strides.iter().all(|&s| s == 1)
            && self.b_strides.iter().all(|&s| s == 1)
    }
}

/// Builds the merged [`BroadcastLayout`] of `a` and `b` broadcast to `out`.
pub fn merge_broadcast_dims(
    op: &'static str,
    a: &Shape,
    b: &Shape,
    out: &Shape,
) -> Result<BroadcastLayout> {
    let sa = a.broadcast_strides(out);
    let sb = b.broadcast_strides(out);
    let mut dims: Vec<usize> = Vec::new();
    let mut a_strides: Vec<usize> = Vec::new();
    let mut b_strides: Vec<usize> = Vec::new();
    for i in 0..out.rank() {
        let d = out.0[i];
        if d == 1 {
            continue; // a size-1 axis contributes nothing to indexing
        }
        if let (Some(&last_d), Some(&la), Some(&lb)) =
            (dims.last(), a_strides.last(), b_strides.last())
        {
            // Merge axis i into the previous one when, for both operands, stepping over the previous axis
            // equals stepping d times over this one.
            if la == sa[i] * d && lb == sb[i] * d {
                let n = dims.len();
                dims[n - 1] = last_d * d;
                a_strides[n - 1] = sa[i];
                b_strides[n - 1] = sb[i];
                continue;
            }
        }
        dims.push(d);
        a_strides.push(sa[i]);
        b_strides.push(sb[i]);
    }
    if dims.is_empty() {
        dims.push(1);
        a_strides.push(1);
        b_strides.push(1);
    }
    if dims.len() > MAX_KERNEL_RANK {
        return Err(Error::shape(
            op,
            format!("broadcasting {a} with {b} needs {} strided dimensions; at most {MAX_KERNEL_RANK} are supported", dims.len()),
        ));
    }
    Ok(BroadcastLayout {
        dims,
        a_strides,
        b_strides,
    })
}

/// Hyper-parameters of a 2-D convolution (each pair is (height, width)).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Step between output positions.
    pub stride: [usize; 2],
    /// Zeros added on each side of the input.
    pub padding: [usize; 2],
    /// Spacing between kernel taps.
    pub dilation: [usize; 2],
    /// Channel groups: input and output channels are split into `groups` independent convolutions
    /// (`groups == c_in == c_out` is a depthwise convolution).
    pub groups: usize,
}

impl Default for Conv2dParams {
    fn default() -> Self {
        Conv2dParams {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            groups: 1,
        }
    }
}

impl Conv2dParams {
    /// Stride `s` in both directions, otherwise defaults.
    pub fn stride(mut self, s: usize) -> Self {
        self.stride = [s, s];
        self
    }
    /// Padding `p` on every side.
    pub fn padding(mut self, p: usize) -> Self {
        self.padding = [p, p];
        self
    }
    /// Dilation `d` in both directions.
    pub fn dilation(mut self, d: usize) -> Self {
        self.dilation = [d, d];
        self
    }
    /// `g` channel groups.
    pub fn groups(mut self, g: usize) -> Self {
        self.groups = g;
        self
    }
}

/// Everything a conv2d kernel needs: input NCHW, weight OIHW (I = c_in / groups), output NCHW.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dGeometry {
    /// N: images.
    pub batch: usize,
    /// C: input channels.
    pub c_in: usize,
    /// Input height.
    pub h_in: usize,
    /// Input width.
    pub w_in: usize,
    /// O: output channels.
    pub c_out: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Output height.
    pub h_out: usize,
    /// Output width.
    pub w_out: usize,
    /// Stride, padding, dilation and groups.
    pub params: Conv2dParams,
}

impl Conv2dGeometry {
    /// Checks an input shape `x` (N, C, H, W) and a weight shape `w` (O, C/groups, kh, kw) against `params`
    /// and derives the output size: out = (in + 2·pad − dil·(k − 1) − 1) / stride + 1.
    pub fn new(x: &Shape, w: &Shape, params: Conv2dParams) -> Result<Self> {
        const OP: &str = "conv2d";
        if x.rank() != 4 {
            return Err(Error::shape(
                OP,
                format!("input must be NCHW (rank 4), got {x}"),
            ));
        }
        if w.rank() != 4 {
            return Err(Error::shape(
                OP,
                format!("weight must be OIHW (rank 4), got {w}"),
            ));
        }
        let p = params;
        if p.stride.contains(&0) || p.dilation.contains(&0) || p.groups == 0 {
            return Err(Error::invalid(
                OP,
                format!(
                    "stride {:?}, dilation {:?} and groups {} must all be at least 1",
                    p.stride, p.dilation, p.groups
                ),
            ));
        }
        let (n, c, h, wd) = (x.0[0], x.0[1], x.0[2], x.0[3]);
        let (o, i, kh, kw) = (w.0[0], w.0[1], w.0[2], w.0[3]);
        if c % p.groups != 0 || o % p.groups != 0 {
            return Err(Error::shape(
                OP,
                format!("groups {} must divide input channels {c} and output channels {o} (input {x}, weight {w})", p.groups),
            ));
        }
        if i != c / p.groups {
            return Err(Error::shape(
                OP,
                format!("weight {w} has {i} input channels per group but input {x} with groups {} needs {}", p.groups, c / p.groups),
            ));
        }
        if n == 0 || c == 0 || h == 0 || wd == 0 || o == 0 || kh == 0 || kw == 0 {
            return Err(Error::shape(OP, format!("empty input {x} or weight {w}")));
        }
        // Sizes a caller can make absurd: checked, so they are an error rather than a wrapped geometry.
        let span = |k: usize, d: usize| d.checked_mul(k - 1).and_then(|v| v.checked_add(1));
        let padded = |len: usize, pad: usize| pad.checked_mul(2).and_then(|v| v.checked_add(len));
        let (Some(span_h), Some(span_w), Some(padded_h), Some(padded_w)) = (
            span(kh, p.dilation[0]),
            span(kw, p.dilation[1]),
            padded(h, p.padding[0]),
            padded(wd, p.padding[1]),
        ) else {
            return Err(Error::shape(
                OP,
                format!(
                    "padding {:?} or dilation {:?} overflows the geometry of input {x} and weight {w}",
                    p.padding, p.dilation
                ),
            ));
        };
        if padded_h < span_h || padded_w < span_w {
            return Err(Error::shape(
                OP,
                format!(
                    "kernel {kh}x{kw} with dilation {:?} spans {span_h}x{span_w}, larger than the padded input {}x{} (input {x}, padding {:?})",
                    p.dilation,
                    h + 2 * p.padding[0],
                    wd + 2 * p.padding[1],
                    p.padding
                ),
            ));
        }
        let h_out = (padded_h - span_h) / p.stride[0] + 1;
        let w_out = (padded_w - span_w) / p.stride[1] + 1;
        Ok(Conv2dGeometry {
            batch: n,
            c_in: c,
            h_in: h,
            w_in: wd,
            c_out: o,
            kh,
            kw,
            h_out,
            w_out,
            params,
        })
    }
    /// Input channels per group.
    pub fn c_in_per_group(&self) -> usize {
        self.c_in / self.params.groups
    }
    /// Output channels per group.
    pub fn c_out_per_group(&self) -> usize {
        self.c_out / self.params.groups
    }
    /// True for a depthwise convolution (one input and one output channel per group).
    pub fn is_depthwise(&self) -> bool {
        self.params.groups == self.c_in && self.params.groups == self.c_out
    }
    /// Shape of the input (N, C, H, W).
    pub fn input_shape(&self) -> Shape {
        Shape::new([self.batch, self.c_in, self.h_in, self.w_in])
    }
    /// Shape of the weight (O, C/groups, kh, kw).
    pub fn weight_shape(&self) -> Shape {
        Shape::new([self.c_out, self.c_in_per_group(), self.kh, self.kw])
    }
    /// Shape of the output (N, O, H_out, W_out).
    pub fn output_shape(&self) -> Shape {
        Shape::new([self.batch, self.c_out, self.h_out, self.w_out])
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> usize {
        self.batch
            * self.c_out
            * self.h_out
            * self.w_out
            * self.c_in_per_group()
            * self.kh
            * self.kw
    }
}
