//! The part of Python's `re` that PEFT's `target_modules` regexes use, for `re.fullmatch(pattern, name)` on
//! module paths: literals and escapes (`\.`, `\d`, `\w`, `\s` and their negations), `.`, classes (`[0-9a-z_]`,
//! `[^.]`), groups (`(…)`, `(?:…)`, `(?P<name>…)`), alternation, the quantifiers `*`, `+`, `?`, `{n}`, `{n,}`,
//! `{,m}`, `{n,m}` (lazy and possessive forms match the same set of strings under a full match), anchors `^`,
//! `$`, `\A`, `\Z`, `\b`, `\B`, and the lookarounds `(?=…)`, `(?!…)`. Anything else (back-references, inline
//! flags, look-behind) is an error naming it, never a silent mismatch.
//!
//! A backtracking matcher: exponential in the worst case, and module paths are short.

/// A compiled pattern.
#[derive(Clone, Debug, PartialEq)]
pub struct Regex {
    node: Node,
}

#[derive(Clone, Debug, PartialEq)]
enum Node {
    Empty,
    Char(char),
    Any,
    /// Inclusive ranges; `true` when negated.
    Class(Vec<(char, char)>, bool),
    Start,
    End,
    WordBoundary(bool),
    Concat(Vec<Node>),
    Alt(Vec<Node>),
    Repeat(Box<Node>, usize, Option<usize>),
    /// Lookahead; `true` when negative.
    Look(Box<Node>, bool),
}

const DIGIT: &[(char, char)] = &[('0', '9')];
const WORD: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];
const SPACE: &[(char, char)] = &[('\t', '\r'), (' ', ' ')];

struct Parser<'a> {
    src: &'a str,
    chars: Vec<char>,
    i: usize,
}

impl Regex {
    /// Compiles `pattern`, or says which construct is not supported or malformed (with its position).
    pub fn new(pattern: &str) -> Result<Regex, String> {
        let mut p = Parser {
            src: pattern,
            chars: pattern.chars().collect(),
            i: 0,
        };
        let node = p.alt()?;
        if p.i < p.chars.len() {
            return Err(p.err("unbalanced `)`"));
        }
        Ok(Regex { node })
    }

    /// `re.fullmatch(pattern, s) is not None`.
    pub fn full_match(&self, s: &str) -> bool {
        let s: Vec<char> = s.chars().collect();
        m(&self.node, &s, 0, &mut |j| j == s.len())
    }
}

impl Parser<'_> {
    fn err(&self, what: &str) -> String {
        format!(
            "regex `{}`: {what} at character {}",
            self.src,
            self.i.min(self.chars.len())
        )
    }
    fn peek(&self) -> Option<char> {
        self.chars.get(self.i).copied()
    }
    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    fn alt(&mut self) -> Result<Node, String> {
        let mut alts = vec![self.concat()?];
        while self.eat('|') {
            alts.push(self.concat()?);
        }
        Ok(if alts.len() == 1 {
            alts.pop().expect("one")
        } else {
            Node::Alt(alts)
        })
    }

    fn concat(&mut self) -> Result<Node, String> {
        let mut items = Vec::new();
        while let Some(c) = self.peek() {
            if c == '|' || c == ')' {
                break;
            }
            let atom = self.atom()?;
            items.push(self.quantified(atom)?);
        }
        Ok(match items.len() {
            0 => Node::Empty,
            1 => items.pop().expect("one"),
            _ => Node::Concat(items),
        })
    }

    fn number(&mut self) -> Option<usize> {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        (self.i > start).then(|| {
            self.chars[start..self.i]
                .iter()
                .collect::<String>()
                .parse()
                .unwrap_or(usize::MAX)
        })
    }

    /// `{n}`, `{n,}`, `{,m}`, `{n,m}` after `{`; `None` (and the position restored) if it is not a quantifier,
    /// in which case Python reads `{` literally.
    fn braces(&mut self) -> Option<(usize, Option<usize>)> {
        let save = self.i;
        let lo = self.number();
        let res = if self.eat(',') {
            let hi = self.number();
            self.eat('}').then_some((lo.unwrap_or(0), hi))
        } else {
            lo.filter(|_| self.eat('}')).map(|n| (n, Some(n)))
        };
        if res.is_none() {
            self.i = save;
        }
        res
    }

    fn quantified(&mut self, atom: Node) -> Result<Node, String> {
        let Some((lo, hi)) = self.quantifier() else {
            return Ok(atom);
        };
        if matches!(
            atom,
            Node::Start | Node::End | Node::WordBoundary(_) | Node::Look(..)
        ) {
            return Err(self.err("nothing to repeat"));
        }
        if hi.is_some_and(|h| h < lo) {
            return Err(self.err("min repeat greater than max repeat"));
        }
        // Lazy (`*?`) and possessive (`*+`) forms accept the same strings under a full match.
        if !self.eat('?') {
            self.eat('+');
        }
        let save = self.i;
        if self.quantifier().is_some() {
            self.i = save;
            return Err(self.err("multiple repeat"));
        }
        Ok(Node::Repeat(Box::new(atom), lo, hi))
    }

    /// Consumes a quantifier if one follows: `*`, `+`, `?` or a well-formed `{…}`.
    fn quantifier(&mut self) -> Option<(usize, Option<usize>)> {
        let q = match self.peek()? {
            '*' => (0, None),
            '+' => (1, None),
            '?' => (0, Some(1)),
            '{' => {
                self.i += 1;
                let q = self.braces();
                if q.is_none() {
                    self.i -= 1;
                }
                return q;
            }
            _ => return None,
        };
        self.i += 1;
        Some(q)
    }

    fn atom(&mut self) -> Result<Node, String> {
        let c = self.peek().ok_or_else(|| self.err("unexpected end"))?;
        self.i += 1;
        Ok(match c {
            '.' => Node::Any,
            '^' => Node::Start,
            '$' => Node::End,
            '[' => self.class()?,
            '(' => self.group()?,
            '*' | '+' | '?' => {
                self.i -= 1;
                return Err(self.err("nothing to repeat"));
            }
            '\\' => self.escape(false)?,
            c => Node::Char(c),
        })
    }

    fn group(&mut self) -> Result<Node, String> {
        let node = if self.eat('?') {
            match self.peek() {
                Some(':') => {
                    self.i += 1;
                    self.alt()?
                }
                Some('=') | Some('!') => {
                    let neg = self.peek() == Some('!');
                    self.i += 1;
                    Node::Look(Box::new(self.alt()?), neg)
                }
                Some('P') if self.chars.get(self.i + 1) == Some(&'<') => {
                    self.i += 2;
                    while self.peek().is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        self.i += 1;
                    }
                    if !self.eat('>') {
                        return Err(self.err("bad group name"));
                    }
                    self.alt()?
                }
                _ => return Err(self.err(
                    "unsupported group `(?…` (only `(?:…)`, `(?P<name>…)`, `(?=…)` and `(?!…)`)",
                )),
            }
        } else {
            self.alt()?
        };
        if !self.eat(')') {
            return Err(self.err("missing `)`"));
        }
        Ok(node)
    }

    /// After a backslash. In a class, `\b` is a backspace and anchors are not allowed.
    fn escape(&mut self, in_class: bool) -> Result<Node, String> {
        let c = self
            .peek()
            .ok_or_else(|| self.err("bad escape (end of pattern)"))?;
        self.i += 1;
        let class = |r: &[(char, char)], neg| Node::Class(r.to_vec(), neg);
        Ok(match c {
            'd' => class(DIGIT, false),
            'D' => class(DIGIT, true),
            'w' => class(WORD, false),
            'W' => class(WORD, true),
            's' => class(SPACE, false),
            'S' => class(SPACE, true),
            'n' => Node::Char('\n'),
            't' => Node::Char('\t'),
            'r' => Node::Char('\r'),
            'f' => Node::Char('\x0c'),
            'v' => Node::Char('\x0b'),
            'b' if in_class => Node::Char('\x08'),
            'A' if !in_class => Node::Start,
            'Z' if !in_class => Node::End,
            'b' if !in_class => Node::WordBoundary(false),
            'B' if !in_class => Node::WordBoundary(true),
            c if c.is_ascii_alphanumeric() => {
                self.i -= 1;
                return Err(self.err(&format!(
                    "unsupported escape `\\{c}` (back-references and other escapes are not supported)"
                )));
            }
            c => Node::Char(c),
        })
    }

    fn class(&mut self) -> Result<Node, String> {
        let neg = self.eat('^');
        let mut ranges: Vec<(char, char)> = Vec::new();
        let mut negated_parts: Vec<Vec<(char, char)>> = Vec::new();
        let mut first = true;
        loop {
            let c = self
                .peek()
                .ok_or_else(|| self.err("unterminated character set"))?;
            if c == ']' && !first {
                self.i += 1;
                break;
            }
            first = false;
            self.i += 1;
            let lo = if c == '\\' {
                match self.escape(true)? {
                    Node::Char(ch) => ch,
                    Node::Class(r, false) => {
                        ranges.extend(r);
                        continue;
                    }
                    Node::Class(r, true) => {
                        negated_parts.push(r);
                        continue;
                    }
                    _ => return Err(self.err("bad escape in character set")),
                }
            } else {
                c
            };
            if self.peek() == Some('-') && self.chars.get(self.i + 1).is_some_and(|&n| n != ']') {
                self.i += 1;
                let h = self.peek().expect("checked");
                self.i += 1;
                let hi = if h == '\\' {
                    match self.escape(true)? {
                        Node::Char(ch) => ch,
                        _ => return Err(self.err("bad character range")),
                    }
                } else {
                    h
                };
                if hi < lo {
                    return Err(self.err("bad character range"));
                }
                ranges.push((lo, hi));
            } else {
                ranges.push((lo, lo));
            }
        }
        if negated_parts.is_empty() {
            return Ok(Node::Class(ranges, neg));
        }
        // `[\W_]`-style sets: a union of a plain set and complemented sets.
        let mut alts = vec![Node::Class(ranges, false)];
        alts.extend(negated_parts.into_iter().map(|r| Node::Class(r, true)));
        let union = Node::Alt(alts);
        Ok(if neg {
            Node::Concat(vec![Node::Look(Box::new(union), true), Node::Any])
        } else {
            union
        })
    }
}

fn in_class(ranges: &[(char, char)], c: char) -> bool {
    ranges.iter().any(|&(lo, hi)| lo <= c && c <= hi)
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Matches `node` at `s[i..]`, calling `k` with every end position until it returns true.
fn m(node: &Node, s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match node {
        Node::Empty => k(i),
        Node::Char(c) => s.get(i) == Some(c) && k(i + 1),
        // Python's `.` matches anything but a newline.
        Node::Any => s.get(i).is_some_and(|&c| c != '\n') && k(i + 1),
        Node::Class(r, neg) => s.get(i).is_some_and(|&c| in_class(r, c) != *neg) && k(i + 1),
        Node::Start => i == 0 && k(i),
        Node::End => (i == s.len() || (i + 1 == s.len() && s[i] == '\n')) && k(i),
        Node::WordBoundary(not) => {
            let before = i > 0 && is_word(s[i - 1]);
            let after = i < s.len() && is_word(s[i]);
            ((before != after) != *not) && k(i)
        }
        Node::Concat(items) => concat(items, s, i, k),
        Node::Alt(alts) => alts.iter().any(|a| m(a, s, i, k)),
        Node::Repeat(inner, lo, hi) => repeat(inner, *lo, *hi, 0, s, i, k),
        Node::Look(inner, neg) => {
            let found = m(inner, s, i, &mut |_| true);
            found != *neg && k(i)
        }
    }
}

fn concat(items: &[Node], s: &[char], i: usize, k: &mut dyn FnMut(usize) -> bool) -> bool {
    match items.split_first() {
        None => k(i),
        Some((first, rest)) => m(first, s, i, &mut |j| concat(rest, s, j, k)),
    }
}

/// Greedy repetition; an iteration past the minimum must consume something (so `(a*)*` terminates).
fn repeat(
    inner: &Node,
    lo: usize,
    hi: Option<usize>,
    n: usize,
    s: &[char],
    i: usize,
    k: &mut dyn FnMut(usize) -> bool,
) -> bool {
    if hi.is_none_or(|h| n < h)
        && m(inner, s, i, &mut |j| {
            (j > i || n < lo) && repeat(inner, lo, hi, n + 1, s, j, k)
        })
    {
        return true;
    }
    n >= lo && k(i)
}

#[cfg(test)]
mod tests {
    use super::Regex;

    fn fm(p: &str, s: &str) -> bool {
        Regex::new(p).unwrap().full_match(s)
    }

    #[test]
    fn python_fullmatch_semantics() {
        let dw = "stages.0.blocks.1.conv_dw";
        assert!(fm(r"stages\.\d+\.blocks\.\d+\.conv_dw", dw));
        assert!(fm(r".*conv_dw", dw));
        assert!(!fm(r"conv_dw", dw)); // fullmatch, not search
        assert!(fm(
            r".*\.(conv_dw|mlp\.fc[12])",
            "stages.3.blocks.0.mlp.fc2"
        ));
        assert!(!fm(
            r".*\.(conv_dw|mlp\.fc[12])",
            "stages.3.blocks.0.mlp.fc3"
        ));
        assert!(fm(r"^stages\.[23]\..*$", "stages.2.downsample.1"));
        assert!(!fm(r"stages\.[^23]\..*", "stages.2.downsample.1"));
        assert!(fm(r"(?!head).*fc\d?", "stages.0.blocks.0.mlp.fc1"));
        assert!(!fm(r"(?!head).*fc\d?", "head.fc"));
        assert!(fm(r"(?P<s>stem)\.0", "stem.0"));
        assert!(fm(r"a{2,3}", "aaa") && !fm(r"a{2,3}", "aaaa") && fm(r"a{,1}b", "b"));
        assert!(fm(r"x{a}", "x{a}")); // not a quantifier: literal braces
        assert!(fm(r".*?fc1", "mlp.fc1") && fm(r"(a*)*b", "aaab"));
        assert!(fm(r"[\w.]+", "head.fc") && !fm(r"[\W]+", "head"));
        assert!(fm(r"\bfc1", "fc1") && fm(r".*\Bc1", "fc1"));
        assert!(fm(r"|x", "") && fm(r"a|", ""));
        assert!(fm(r"[]a]+", "]a]"));
        assert!(fm(r"[a-]+", "a-a"));
        for bad in [
            r"(a", r"a)", r"*a", r"a**", r"[a", r"\1", r"(?i)a", r"(?<=a)b", r"a{3,1}",
        ] {
            assert!(Regex::new(bad).is_err(), "{bad} should be an error");
        }
    }
}
