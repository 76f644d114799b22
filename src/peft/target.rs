//! Which layers an adapter wraps and which modules train fully, by module-path pattern.
//!
//! A pattern with `*` (any run of characters, dots included) or `?` (one character) must match the whole
//! path: `stages.*.blocks.*.conv_dw`. A pattern without wildcards matches a path equal to it or ending in
//! `.pattern` on a component boundary, as PEFT's `target_modules`: `mlp.fc1` matches
//! `stages.2.blocks.0.mlp.fc1`, `conv_dw` matches every depthwise conv, `fc` does not match `mlp.fc1`.
//! A pattern `re:<regex>` is a Python regular expression that must match the whole path, as PEFT applies a
//! string `target_modules` (`re.fullmatch`): `re:stages\.[23]\..*\.mlp\.fc[12]`. The syntax understood is
//! Python's minus back-references, inline flags and look-behind (which are errors). In a comma-separated list
//! ([`parse_patterns`]) a regex cannot contain a comma.

use super::regex::Regex;
use std::collections::BTreeSet;

/// The prefix of a regular-expression pattern.
pub const REGEX_PREFIX: &str = "re:";

/// Splits a comma-separated list (`conv_dw,mlp.fc1,mlp.fc2`), trimming blanks and dropping empty items.
pub fn parse_patterns(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(String::from)
        .collect()
}

/// Checks that `pattern` can be used: a `re:` pattern must compile (the error says why not).
pub fn check_pattern(pattern: &str) -> Result<(), String> {
    match pattern.strip_prefix(REGEX_PREFIX) {
        Some(re) => Regex::new(re).map(|_| ()),
        None => Ok(()),
    }
}

/// True if `path` (a module path) is selected by `pattern` (see the module docs; a `re:` pattern that does
/// not compile selects nothing, [`check_pattern`] reports it).
pub fn matches(pattern: &str, path: &str) -> bool {
    if let Some(re) = pattern.strip_prefix(REGEX_PREFIX) {
        return Regex::new(re).is_ok_and(|r| r.full_match(path));
    }
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

/// `s` with every character other than an ASCII letter, digit or `_` backslash-escaped (Python's
/// `re.escape`, for module paths).
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if !(c.is_ascii_alphanumeric() || c == '_') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// A Python regex that `re.fullmatch`es exactly the paths of `selected` among `all_modules` (every module path
/// of the model; `selected` is a subset). Numeric components (`stages.2.blocks.0`) are generalised to `\d+`
/// where that selects nothing else, so the default targets read
/// `stages\.\d+\.blocks\.\d+\.conv_dw|stages\.\d+\.blocks\.\d+\.mlp\.fc1|…`; other paths are listed literally.
pub fn exact_regex(selected: &[String], all_modules: &BTreeSet<String>) -> String {
    let shape = |p: &str| -> Vec<Option<String>> {
        p.split('.')
            .map(|c| {
                (c.is_empty() || !c.bytes().all(|b| b.is_ascii_digit())).then(|| c.to_string())
            })
            .collect()
    };
    let sel: BTreeSet<&str> = selected.iter().map(String::as_str).collect();
    let mut groups: Vec<(Vec<Option<String>>, Vec<&str>)> = Vec::new();
    for p in selected {
        let sh = shape(p);
        match groups.iter_mut().find(|(g, _)| *g == sh) {
            Some((_, members)) => members.push(p),
            None => groups.push((sh, vec![p])),
        }
    }
    let mut alts: Vec<String> = Vec::new();
    for (sh, members) in groups {
        let others = all_modules
            .iter()
            .chain(selected.iter())
            .any(|m| !sel.contains(m.as_str()) && shape(m) == sh);
        if others || !sh.iter().any(Option::is_none) {
            alts.extend(members.iter().map(|m| regex_escape(m)));
        } else {
            let parts: Vec<String> = sh
                .iter()
                .map(|c| match c {
                    Some(c) => regex_escape(c),
                    None => "\\d+".to_string(),
                })
                .collect();
            alts.push(parts.join("\\."));
        }
    }
    let mut seen = BTreeSet::new();
    alts.retain(|a| seen.insert(a.clone()));
    alts.join("|")
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
        assert!(matches(
            r"re:stages\.\d+\..*fc[12]",
            "stages.1.blocks.0.mlp.fc2"
        ));
        assert!(!matches(r"re:fc1", "stages.1.blocks.0.mlp.fc1"));
        assert!(matches_param(r"re:head\.fc", "head.fc.weight"));
        assert!(check_pattern("re:(a").is_err() && check_pattern("(a").is_ok());
    }

    #[test]
    fn exact_regexes_select_exactly_the_adapted_layers() {
        let all: BTreeSet<String> = [
            "stem",
            "stem.0",
            "stem.1",
            "stages.0.blocks.0.conv_dw",
            "stages.0.blocks.1.conv_dw",
            "stages.1.blocks.0.conv_dw",
            "stages.0.blocks.0.mlp.fc1",
            "stages.1.blocks.0.mlp.fc1",
            "stages.1.downsample.0",
            "stages.1.downsample.1",
            "head.fc",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let check = |sel: &[&str], want: &str| {
            let sel: Vec<String> = sel.iter().map(|s| s.to_string()).collect();
            let re = exact_regex(&sel, &all);
            assert_eq!(re, want);
            for m in &all {
                assert_eq!(
                    matches(&format!("re:{re}"), m),
                    sel.contains(m),
                    "{re} on {m}"
                );
            }
        };
        check(
            &[
                "stages.0.blocks.0.conv_dw",
                "stages.0.blocks.1.conv_dw",
                "stages.1.blocks.0.conv_dw",
                "stages.0.blocks.0.mlp.fc1",
                "stages.1.blocks.0.mlp.fc1",
            ],
            r"stages\.\d+\.blocks\.\d+\.conv_dw|stages\.\d+\.blocks\.\d+\.mlp\.fc1",
        );
        // Stage 1 only: generalising would select stage 0 too, so the paths are listed.
        check(
            &["stages.1.blocks.0.conv_dw", "stem.0", "head.fc"],
            r"stages\.1\.blocks\.0\.conv_dw|stem\.0|head\.fc",
        );
        check(&["stages.1.downsample.1"], r"stages\.1\.downsample\.1");
    }
}
