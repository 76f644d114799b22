//! Every WGSL module the GPU backend can build (each kernel family with every specialisation its launchers
//! use) parses and validates with naga, so a shader error is a test failure naming the file and line, not a
//! runtime panic. The modules are assembled by `ShaderVariant::source`, the function the runtime compiles,
//! so the WGSL generated from Rust (op-code constants, `ConvParams`) is validated with them. Runs without
//! any GPU.

use liera::backend::gpu::shaders::{all_variants, ConvParams, Family, ShaderVariant, ALL_FILES};
use liera::backend::op_codes::{self, wgsl_name};
use liera::backend::{BinaryOp, UnaryOp};

/// Parses and validates one assembled module (subgroup operations allowed only in the subgroup form of the
/// GEMM modules, which the runtime builds only where the adapter has them); the error names the variant,
/// file, line and naga's message.
fn validate(v: &ShaderVariant) -> Result<(), String> {
    let source = v.source();
    let located = |loc: Option<naga::SourceLocation>, msg: String| {
        let (file, line) = loc.map_or(("?", 0), |l| v.locate(l.line_number as usize));
        format!("{} — {file}:{line}: {msg}", v.name())
    };
    let module = naga::front::wgsl::parse_str(&source)
        .map_err(|e| located(e.location(&source), e.emit_to_string(&source)))?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        if v.subgroups {
            naga::valid::Capabilities::default() | naga::valid::Capabilities::SUBGROUP
        } else {
            naga::valid::Capabilities::default()
        },
    )
    .validate(&module)
    .map_err(|e| located(e.location(&source), e.emit_to_string(&source)))?;
    Ok(())
}

#[test]
fn every_shader_variant_parses_and_validates() {
    let errors: Vec<String> = all_variants()
        .iter()
        .filter_map(|v| validate(v).err())
        .collect();
    assert!(errors.is_empty(), "{}", errors.join("\n\n"));
}

#[test]
fn every_wgsl_file_is_used_and_starts_with_a_comment() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("shaders");
    let variants = all_variants();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".wgsl") {
            continue;
        }
        assert!(
            ALL_FILES.iter().any(|(f, _)| *f == name),
            "shaders/{name} is not included by the GPU backend"
        );
        assert!(
            variants
                .iter()
                .any(|v| v.files().iter().any(|(f, _)| *f == name)),
            "shaders/{name} is in no validated module"
        );
    }
    for (name, text) in ALL_FILES {
        assert!(
            text.starts_with(&format!("// {name}")),
            "shaders/{name} must start with a comment naming it and its kernels"
        );
    }
}

#[test]
fn locate_maps_lines_back_to_files() {
    let v = &all_variants()[0];
    assert_eq!(v.family, Family::Elementwise);
    let files = v.family.files();
    let first_len = files[0].1.lines().count();
    assert_eq!(v.locate(1), (files[0].0, 1));
    assert_eq!(v.locate(first_len + 1), (files[1].0, 1));
    // After the files: the `// generated ...` header (line 0) and the generated prelude, then the
    // `// specialisation` header (line 0) and the specialisation constants.
    let total: usize = files.iter().map(|(_, t)| t.lines().count()).sum();
    let prelude = v.family.prelude().lines().count();
    assert!(prelude > 0);
    let lines: Vec<String> = v.source().lines().map(str::to_string).collect();
    assert!(lines[total].starts_with("// generated"));
    assert_eq!(v.locate(total + 1), ("<generated prelude>", 0));
    assert_eq!(v.locate(total + 2), ("<generated prelude>", 1));
    assert!(lines[total + 1].starts_with("const OP_"));
    assert_eq!(lines[total + prelude + 1], "// specialisation");
    assert_eq!(
        v.locate(total + prelude + 3),
        ("<specialisation constants>", 1)
    );
    assert!(lines[total + prelude + 2].starts_with("const OP: u32 = OP_"));
    // A family without a prelude goes straight to its specialisation constants.
    let m = ShaderVariant::matmul(false, true);
    let total: usize = m
        .family
        .files()
        .iter()
        .map(|(_, t)| t.lines().count())
        .sum();
    assert!(m.family.prelude().is_empty());
    assert_eq!(m.locate(total + 2), ("<specialisation constants>", 1));
    assert!(m
        .source()
        .lines()
        .nth(total + 1)
        .unwrap()
        .starts_with("const TRANS_A"));
}

/// The `case` labels of elementwise.wgsl's switches, in order.
fn case_labels(wgsl: &str) -> Vec<String> {
    wgsl.lines()
        .filter_map(|l| l.trim_start().strip_prefix("case "))
        .flat_map(|rest| {
            let labels = rest.split(':').next().unwrap();
            labels
                .split(',')
                .map(|l| l.trim().to_string())
                .collect::<Vec<_>>()
        })
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn every_op_code_is_declared_and_switched_on_exactly_once_by_name() {
    let elementwise = ALL_FILES
        .iter()
        .find(|(name, _)| *name == "elementwise.wgsl")
        .unwrap()
        .1;
    let labels = case_labels(elementwise);
    let numeric: Vec<&String> = labels
        .iter()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_digit()))
        .collect();
    assert!(
        numeric.is_empty(),
        "elementwise.wgsl has bare numeric case labels {numeric:?}; use the OP_* constants"
    );
    let constants = op_codes::wgsl_constants();
    let rows: Vec<op_codes::OpCode> = op_codes::all().collect();
    assert_eq!(rows.len(), UnaryOp::TABLE.len() + BinaryOp::TABLE.len());
    for row in &rows {
        let same_code = rows.iter().filter(|r| r.code == row.code).count();
        assert_eq!(
            same_code, 1,
            "op code {} is used {same_code} times",
            row.code
        );
        let name = wgsl_name(row.name);
        let declaration = format!("const {name}: u32 = {}u;", row.code);
        assert_eq!(
            constants.lines().filter(|l| *l == declaration).count(),
            1,
            "{declaration} must be generated exactly once"
        );
        assert_eq!(
            constants
                .lines()
                .filter(|l| l.contains(&format!("= {}u;", row.code)))
                .count(),
            1,
            "code {} must be generated exactly once",
            row.code
        );
        assert_eq!(
            labels.iter().filter(|l| **l == name).count(),
            1,
            "elementwise.wgsl must have exactly one `case {name}:` (for {})",
            row.name
        );
    }
    // Every label names an op of the tables.
    for label in &labels {
        assert!(
            rows.iter().any(|r| wgsl_name(r.name) == *label),
            "elementwise.wgsl switches on `{label}`, which no op table declares"
        );
    }
    // The names are the variants' own (as Debug prints them), e.g. LieRA's fused op.
    assert_eq!(BinaryOp::MulExpScaled(1.0).name(), "MulExpScaled");
    assert_eq!(
        wgsl_name(BinaryOp::MulExpScaled(1.0).name()),
        "OP_MUL_EXP_SCALED"
    );
    for op in [UnaryOp::Exp, UnaryOp::AddScalar(1.0)] {
        assert!(format!("{op:?}").starts_with(op.name()));
        assert!(UnaryOp::TABLE
            .iter()
            .any(|r| r.name == op.name() && r.code == op.code()));
    }
    for op in [BinaryOp::GeluBackward, BinaryOp::MulAffineScaled(0.5)] {
        assert!(format!("{op:?}").starts_with(op.name()));
        assert!(BinaryOp::TABLE
            .iter()
            .any(|r| r.name == op.name() && r.code == op.code()));
    }
}

#[test]
fn generated_preludes_are_in_the_validated_sources() {
    let variants = all_variants();
    for op in op_codes::all() {
        let v = ShaderVariant::elementwise(op.name);
        assert!(variants.contains(&v), "{} is not validated", v.name());
        assert!(v.source().contains(&op_codes::wgsl_constants()));
    }
    for v in variants
        .iter()
        .filter(|v| matches!(v.family, Family::Conv2d | Family::Depthwise))
    {
        assert!(v.source().contains(&ConvParams::wgsl()), "{}", v.name());
    }
}

#[test]
fn conv_params_match_their_wgsl_struct() {
    let wgsl = ConvParams::wgsl();
    let fields: Vec<&str> = wgsl
        .lines()
        .filter_map(|l| l.trim().strip_suffix(": u32,"))
        .collect();
    assert_eq!(fields, ConvParams::FIELDS);
    assert!(wgsl.starts_with("struct ConvParams {"));
    // One u32 per field, and a size the uniform address space accepts (a multiple of 16 bytes).
    assert_eq!(
        std::mem::size_of::<ConvParams>(),
        4 * ConvParams::FIELDS.len()
    );
    assert_eq!(std::mem::size_of::<ConvParams>() % 16, 0);
    let p = ConvParams {
        batch: 1,
        splits: 7,
        _pad: 9,
        ..Default::default()
    };
    let words = p.words();
    assert_eq!(words.len(), ConvParams::FIELDS.len());
    let at = |f: &str| ConvParams::FIELDS.iter().position(|x| *x == f).unwrap();
    assert_eq!(
        (words[at("batch")], words[at("splits")], words[at("_pad")]),
        (1, 7, 9)
    );
    // No shader declares its own parameter block for the convolutions any more.
    for (name, text) in ALL_FILES {
        if *name == "conv2d.wgsl" || *name == "depthwise.wgsl" {
            assert!(text.contains("var<uniform> params: ConvParams;"), "{name}");
            assert!(
                !text
                    .lines()
                    .any(|l| l.starts_with("struct ") && l.contains("Params")),
                "{name} declares its own parameter struct"
            );
        }
    }
}
