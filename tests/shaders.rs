//! Every WGSL module the GPU backend can build (each kernel family with every specialisation its launchers
//! use) parses and validates with naga, so a shader error is a test failure naming the file and line, not a
//! runtime panic. Runs without any GPU.

use liera::backend::gpu::shaders::{all_variants, ShaderVariant, ALL_FILES};

/// Parses and validates one assembled module; the error names the variant, file, line and naga's message.
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
        naga::valid::Capabilities::default(),
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
                .any(|v| v.family.files().iter().any(|(f, _)| *f == name)),
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
    let files = v.family.files();
    let first_len = files[0].1.lines().count();
    assert_eq!(v.locate(1), (files[0].0, 1));
    assert_eq!(v.locate(first_len + 1), (files[1].0, 1));
    // The first specialisation constant follows the files and the `// specialisation` header.
    let total: usize = files.iter().map(|(_, t)| t.lines().count()).sum();
    assert_eq!(v.locate(total + 2), ("<specialisation constants>", 1));
    assert!(v
        .source()
        .lines()
        .nth(total + 1)
        .unwrap()
        .starts_with("const "));
}
