//! One name per elementwise op, from Rust to WGSL.
//!
//! [`UnaryOp`] and [`BinaryOp`] are declared (in `backend/mod.rs`) through `elementwise_ops!`, which
//! lists each variant once with its op code. From that one list come the enum itself, `code()` (the
//! variant's code), `name()` (its name) and `TABLE` (every variant with its code); [`wgsl_constants`]
//! turns the tables into the WGSL constants the GPU backend adds to every module that switches on an op
//! code (elementwise.wgsl), e.g. `const OP_MUL_EXP_SCALED: u32 = 22u;` for [`BinaryOp::MulExpScaled`].
//! The shader then says `case OP_MUL_EXP_SCALED:`, never a bare number, so the op, its enum variant, the
//! CPU kernel's match arm and the shader's case all go by one name (the constant is the variant's name in
//! SCREAMING_SNAKE_CASE, see [`wgsl_name`]).

use super::{BinaryOp, UnaryOp};

/// One row of an op table: a variant's name (as written in Rust) and its op code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpCode {
    /// The variant's name, e.g. `"MulExpScaled"`.
    pub name: &'static str,
    /// The code the WGSL specialisation constant `OP` takes for it.
    pub code: u32,
}

/// Declares an elementwise op enum from a table of `Variant = code` or `Variant(f32) = code` rows, each
/// with its doc comment. Generates the enum (`Clone, Copy, Debug, PartialEq`) and `code()`, `name()` and
/// `TABLE`, so a variant cannot exist without a code.
macro_rules! elementwise_ops {
    (
        $(#[$meta:meta])*
        $vis:vis enum $Enum:ident {
            $(
                $(#[$vmeta:meta])*
                $Variant:ident $(($Param:ty))? = $code:literal,
            )*
        }
    ) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq)]
        $vis enum $Enum {
            $(
                $(#[$vmeta])*
                $Variant $(($Param))?,
            )*
        }

        impl $Enum {
            /// Every variant with its op code, in declaration order (see `backend/op_codes.rs`).
            pub const TABLE: &'static [$crate::backend::op_codes::OpCode] = &[
                $($crate::backend::op_codes::OpCode {
                    name: stringify!($Variant),
                    code: $code,
                },)*
            ];

            /// The op code of this op: the value of the WGSL constant named by
            /// [`wgsl_name`]`(self.name())`.
            ///
            /// [`wgsl_name`]: crate::backend::op_codes::wgsl_name
            pub fn code(self) -> u32 {
                match self {
                    $(Self::$Variant { .. } => $code,)*
                }
            }

            /// The variant's name as written in Rust, e.g. `"MulExpScaled"`.
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$Variant { .. } => stringify!($Variant),)*
                }
            }
        }
    };
}
pub(crate) use elementwise_ops;

/// The WGSL constant of a variant: `OP_` and the name in SCREAMING_SNAKE_CASE
/// (`"MulExpScaled"` → `"OP_MUL_EXP_SCALED"`).
pub fn wgsl_name(variant: &str) -> String {
    let mut s = String::from("OP_");
    for (i, ch) in variant.chars().enumerate() {
        if ch.is_ascii_uppercase() && i > 0 {
            s.push('_');
        }
        s.push(ch.to_ascii_uppercase());
    }
    s
}

/// Every row of both tables: the unary ops, then the binary ops.
pub fn all() -> impl Iterator<Item = OpCode> {
    UnaryOp::TABLE.iter().chain(BinaryOp::TABLE).copied()
}

/// The WGSL declaration of every op code, one `const OP_NAME: u32 = CODEu;` a line.
pub fn wgsl_constants() -> String {
    all()
        .map(|op| format!("const {}: u32 = {}u;\n", wgsl_name(op.name), op.code))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wgsl_names_are_screaming_snake_case() {
        assert_eq!(wgsl_name("Exp"), "OP_EXP");
        assert_eq!(wgsl_name("MulExpScaled"), "OP_MUL_EXP_SCALED");
        assert_eq!(wgsl_name("GeluBackward"), "OP_GELU_BACKWARD");
    }

    #[test]
    fn codes_and_names_are_unique_and_match_the_variants() {
        let rows: Vec<OpCode> = all().collect();
        for (i, a) in rows.iter().enumerate() {
            for b in &rows[i + 1..] {
                assert_ne!(a.code, b.code, "{} and {} share a code", a.name, b.name);
                assert_ne!(a.name, b.name);
            }
        }
        assert_eq!(BinaryOp::MulExpScaled(2.0).code(), 22);
        assert_eq!(BinaryOp::MulExpScaled(2.0).name(), "MulExpScaled");
        assert_eq!(UnaryOp::Exp.code(), 0);
        // `name()` is the name Debug prints.
        for op in [UnaryOp::Gelu, UnaryOp::PowScalar(3.0)] {
            assert!(format!("{op:?}").starts_with(op.name()));
        }
        assert!(wgsl_constants().contains("const OP_MUL_AFFINE_SCALED: u32 = 23u;\n"));
    }
}
