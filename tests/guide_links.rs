//! docs/GUIDE.md points readers at code; this test keeps every pointer true.
//!
//! Every relative link `[text](path)` must name an existing file. When the link text is code (in
//! backticks) such as `` [`Tensor::conv2d`](../src/ops/conv2d.rs) ``, the last path segment (`conv2d`) must
//! be defined in that file as a `fn`, `struct`, `enum`, `trait`, `type`, `const`, `mod` or `macro_rules!`,
//! so a renamed or moved function breaks this test rather than the guide. Link text that is a path in backticks
//! (`` [`src/tensor.rs`](../src/tensor.rs) ``) only needs its file to exist.

use std::path::Path;

fn links(markdown: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut rest = markdown;
    while let Some(start) = rest.find("](") {
        let text_start = rest[..start].rfind('[').map(|i| i + 1).unwrap_or(start);
        let text = rest[text_start..start].to_string();
        let after = &rest[start + 2..];
        let Some(end) = after.find(')') else { break };
        out.push((text, after[..end].to_string()));
        rest = &after[end..];
    }
    out
}

/// The code item a link's text names: `` `Tensor::conv2d` `` names `Tensor::conv2d`. Text that is a path
/// (`` `src/ops/conv2d.rs` ``) or not code at all names no item; only its file is checked.
fn code_item(text: &str) -> Option<&str> {
    let code = text.strip_prefix('`')?.strip_suffix('`')?;
    (!code.contains('/') && !code.contains('.')).then_some(code)
}

fn defines(source: &str, name: &str) -> bool {
    let keywords = [
        "fn",
        "struct",
        "enum",
        "trait",
        "type",
        "const",
        "mod",
        "macro_rules!",
    ];
    keywords.iter().any(|kw| {
        let head = format!("{kw} {name}");
        source.match_indices(&head).any(|(i, _)| {
            let next = source[i + head.len()..].chars().next();
            matches!(next, Some('(' | '<' | ' ' | ';' | ':' | '{'))
        })
    })
}

#[test]
fn every_guide_link_points_to_an_existing_file_and_item() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let guide_path = root.join("docs/GUIDE.md");
    let guide = std::fs::read_to_string(&guide_path).expect("docs/GUIDE.md exists");
    let mut checked = 0;
    let mut problems = Vec::new();
    for (text, target) in links(&guide) {
        if target.starts_with("http") || target.starts_with('#') {
            continue;
        }
        let file = target.split('#').next().unwrap();
        let path = guide_path.parent().unwrap().join(file);
        let Ok(source) = std::fs::read_to_string(&path) else {
            if !path.is_dir() {
                problems.push(format!("[{text}]({target}): no such file"));
            }
            continue;
        };
        checked += 1;
        if let Some(code) = code_item(&text) {
            let name = code.rsplit("::").next().unwrap().trim_end_matches("()");
            if !defines(&source, name) {
                problems.push(format!(
                    "[{text}]({target}): `{name}` is not defined in {file}"
                ));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "broken guide links:\n{}",
        problems.join("\n")
    );
    assert!(
        checked >= 20,
        "the guide should point at the code; only {checked} links found"
    );
}

#[test]
fn the_checker_catches_a_broken_link() {
    let src = "pub fn conv2d_input_grad(x: f32) {}\nstruct Tape {}";
    assert!(defines(src, "conv2d_input_grad"));
    assert!(defines(src, "Tape"));
    assert!(!defines(src, "conv2d"));
    assert_eq!(code_item("`Tensor::conv2d`"), Some("Tensor::conv2d"));
    assert_eq!(code_item("`src/ops/conv2d.rs`"), None);
    assert_eq!(code_item("the op"), None);
    assert_eq!(
        links("see [`a::b`](../src/x.rs) and [y](z.md)"),
        vec![
            ("`a::b`".to_string(), "../src/x.rs".to_string()),
            ("y".into(), "z.md".into())
        ]
    );
}
