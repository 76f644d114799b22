//! Which layers an adapter wraps and which modules train fully, by module-path pattern.
//!
//! A pattern with `*` (any run of characters, dots included) or `?` (one character) must match the whole
//! path: `stages.*.blocks.*.conv_dw`. A pattern without wildcards matches a path equal to it or ending in
//! `.pattern` on a component boundary, as PEFT's `target_modules`: `mlp.fc1` matches
//! `stages.2.blocks.0.mlp.fc1`, `conv_dw` matches every depthwise conv, `fc` does not match `mlp.fc1`.

/// Splits a comma-separated list (`conv_dw,mlp.fc1,mlp.fc2`), trimming blanks and dropping empty items.
pub fn parse_patterns(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// True if `path` (a module path) is selected by `pattern` (see the module docs).
pub fn matches(pattern: &str, path: &str) -> bool {
    if pattern.contains(['*', '?']) {
        glob(pattern.as_bytes(), path.as_bytes())
    } else {
        path == pattern
            || path
                .strip_suffix(pattern)
                .is_some_and(|head| head.ends_with('.'))
    }
}

/// True if the parameter `param_path` belongs to a module selected by `pattern`: the module path is any
/// dotted prefix of the parameter path (`head` and `head.fc` both select `head.fc.weight`).
pub fn matches_param(pattern: &str, param_path: &str) -> bool {
    param_path
        .char_indices()
        .filter(|&(_, c)| c == '.')
        .any(|(i, _)| matches(pattern, &param_path[..i]))
}

fn glob(p: &[u8], s: &[u8]) -> bool {
    // Iterative wildcard matching with backtracking to the last `*`.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns() {
        assert!(matches("conv_dw", "stages.0.blocks.1.conv_dw"));
        assert!(matches("mlp.fc1", "stages.0.blocks.1.mlp.fc1"));
        assert!(!matches("fc1", "stages.0.blocks.1.mlp.xfc1"));
        assert!(!matches("fc", "head.fc1"));
        assert!(matches("head.fc", "head.fc"));
        assert!(matches("stages.*.conv_dw", "stages.3.blocks.0.conv_dw"));
        assert!(!matches("stages.?.conv_dw", "stages.3.blocks.0.conv_dw"));
        assert!(matches(
            "stages.1.blocks.?.mlp.fc?",
            "stages.1.blocks.0.mlp.fc2"
        ));
        assert!(matches_param("head", "head.fc.weight"));
        assert!(matches_param("head.fc", "head.fc.bias"));
        assert!(!matches_param("head.fc", "head.norm.weight"));
        assert_eq!(
            parse_patterns(" conv_dw, mlp.fc1,,"),
            ["conv_dw", "mlp.fc1"]
        );
    }
}
