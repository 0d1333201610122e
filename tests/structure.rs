//! The shape of the code, checked: no file under `src/` (or the Python package's `python/src/`)
//! longer than 500 lines, no function there longer than 80 (tests included: they are code too),
//! and no `.rs` file in the
//! repository that silences clippy's lint on long argument lists. Plain std, no GPU.
//!
//! Functions are found by a small scanner that relies on rustfmt's layout: a line whose code
//! starts with `fn name` (after `pub`, `pub(crate)`, `const`, `async`, `unsafe`, `extern "C"`,
//! `default`) begins a function; its length runs from that line to the line of the brace that
//! closes its body, braces in strings, char literals and comments not counted. A declaration
//! without a body (`fn f();`) is not a function.

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 500;
const MAX_FN_LINES: usize = 80;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Every `.rs` file under `dir`, sorted, build outputs and npm packages left out.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if !matches!(name.to_str(), Some("target" | "node_modules" | ".git")) {
                    dirs.push(path);
                }
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn relative(path: &Path) -> String {
    path.strip_prefix(root())
        .unwrap_or(path)
        .display()
        .to_string()
}

fn fail_with(offenders: &[String], what: &str) {
    assert!(
        offenders.is_empty(),
        "{what} ({}):\n  {}",
        offenders.len(),
        offenders.join("\n  ")
    );
}

/// The library's and the Python package's Rust sources.
fn source_files() -> Vec<PathBuf> {
    let mut files = rust_files(&root().join("src"));
    files.extend(rust_files(&root().join("python/src")));
    files
}

#[test]
fn source_files_are_at_most_500_lines() {
    let mut offenders = Vec::new();
    for path in source_files() {
        let lines = read(&path).lines().count();
        if lines > MAX_FILE_LINES {
            offenders.push(format!("{}: {lines} lines", relative(&path)));
        }
    }
    fail_with(
        &offenders,
        &format!("files under src/ and python/src/ longer than {MAX_FILE_LINES} lines"),
    );
}

#[test]
fn source_functions_are_at_most_80_lines() {
    let mut offenders = Vec::new();
    for path in source_files() {
        for f in functions(&read(&path)) {
            if f.lines > MAX_FN_LINES {
                offenders.push(format!(
                    "{}:{} fn {}: {} lines",
                    relative(&path),
                    f.line,
                    f.name,
                    f.lines
                ));
            }
        }
    }
    fail_with(
        &offenders,
        &format!("functions under src/ and python/src/ longer than {MAX_FN_LINES} lines"),
    );
}

#[test]
fn no_file_allows_long_argument_lists() {
    // Spelled in parts so that this file does not name the lint itself.
    let lint = ["too", "many", "arguments"].join("_");
    let mut offenders = Vec::new();
    for dir in ["src", "tests", "examples", "python/src"] {
        for path in rust_files(&root().join(dir)) {
            let source = read(&path);
            for (i, line) in source.lines().enumerate() {
                if line.contains(&lint) {
                    offenders.push(format!(
                        "{}:{}: {} ({} lines)",
                        relative(&path),
                        i + 1,
                        line.trim(),
                        source.lines().count()
                    ));
                }
            }
        }
    }
    fail_with(
        &offenders,
        &format!("lines naming `{lint}` (group the arguments instead; the file's length given)"),
    );
}

// ---------------------------------------------------------------------------------------------
// The scanner

/// A function of a source file: its name, the line of its `fn` (1-based) and its length in
/// lines, from that line to its closing brace.
#[derive(Debug, PartialEq)]
struct Function {
    name: String,
    line: usize,
    lines: usize,
}

/// Every function with a body in `source` (nested ones too, each counted whole), in order.
fn functions(source: &str) -> Vec<Function> {
    let code = code_mask(source);
    let bytes = source.as_bytes();
    let line_of = |i: usize| source[..i].matches('\n').count() + 1;
    let mut found = Vec::new();
    let mut start = 0;
    for line in source.split_inclusive('\n') {
        let indent = line.len() - line.trim_start().len();
        if let Some((name, after)) = fn_name(line.trim_start())
            && code[start + indent]
        {
            let from = start + indent + after;
            if let Some(close) = body_end(bytes, &code, from) {
                found.push(Function {
                    name,
                    line: line_of(start),
                    lines: line_of(close) - line_of(start) + 1,
                });
            }
        }
        start += line.len();
    }
    found
}

/// When `line` (trimmed) starts a function: its name and the byte offset just past it.
fn fn_name(line: &str) -> Option<(String, usize)> {
    let mut rest = line;
    loop {
        let before = rest;
        for prefix in ["pub ", "const ", "async ", "unsafe ", "default ", "extern "] {
            rest = rest.strip_prefix(prefix).unwrap_or(rest);
        }
        if let Some(r) = rest.strip_prefix("pub(") {
            rest = r.split_once(')')?.1.trim_start();
        }
        if rest.starts_with('"') {
            // The ABI of `extern "C" fn`.
            rest = rest[1..].split_once('"')?.1.trim_start();
        }
        if rest == before {
            break;
        }
    }
    let after_fn = rest.strip_prefix("fn ")?;
    let name: String = after_fn
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((name.clone(), line.len() - after_fn.len() + name.len()))
}

/// The offset of the brace closing the body that starts after `from`, or `None` when a `;`
/// comes first (a declaration) or the braces never balance.
fn body_end(bytes: &[u8], code: &[bool], from: usize) -> Option<usize> {
    // Parentheses and brackets of the signature: `[u8; 4]` holds a `;` that ends nothing.
    let mut nesting = 0i32;
    let mut depth = 0i32;
    for i in from..bytes.len() {
        if !code[i] {
            continue;
        }
        match bytes[i] {
            b'(' | b'[' if depth == 0 => nesting += 1,
            b')' | b']' if depth == 0 => nesting -= 1,
            b';' if depth == 0 && nesting == 0 => return None,
            b'{' => depth += 1,
            b'}' => {
                depth -= 1;
                if depth == 0 {
                    return Some(i);
                }
            }
            _ => {}
        }
    }
    None
}

/// For each byte of `source`, whether it is code: false inside comments, string literals
/// (plain, byte, raw) and char literals, true elsewhere (lifetimes and labels are code).
fn code_mask(source: &str) -> Vec<bool> {
    let b = source.as_bytes();
    let mut code = vec![true; b.len()];
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    let mut i = 0;
    while i < b.len() {
        let word_start = i == 0 || !ident(b[i - 1]);
        let literal_end = if b[i..].starts_with(b"//") {
            Some(
                b[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(b.len(), |p| i + p),
            )
        } else if b[i..].starts_with(b"/*") {
            Some(block_comment_end(b, i))
        } else if b[i] == b'"' {
            Some(string_end(b, i + 1))
        } else if word_start && let Some(end) = raw_string_end(b, i) {
            Some(end)
        } else if b[i] == b'\'' {
            char_end(source, i)
        } else {
            None
        };
        match literal_end {
            Some(end) => {
                code[i..end].fill(false);
                i = end;
            }
            None => i += 1,
        }
    }
    code
}

/// Past the `*/` that closes the (possibly nested) block comment opening at `i`.
fn block_comment_end(b: &[u8], mut i: usize) -> usize {
    let mut depth = 0;
    while i < b.len() {
        if b[i..].starts_with(b"/*") {
            depth += 1;
            i += 2;
        } else if b[i..].starts_with(b"*/") {
            depth -= 1;
            i += 2;
            if depth == 0 {
                return i;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

/// Past the `"` closing a string whose contents start at `i` (escapes skipped).
fn string_end(b: &[u8], mut i: usize) -> usize {
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    b.len()
}

/// When a raw string (`r"..."`, `r#"..."#`, `br"..."`) starts at `i`: past its end.
fn raw_string_end(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    if b.get(j) == Some(&b'b') {
        j += 1;
    }
    if b.get(j) != Some(&b'r') {
        return None;
    }
    j += 1;
    let hashes = b[j..].iter().take_while(|&&c| c == b'#').count();
    j += hashes;
    if b.get(j) != Some(&b'"') {
        return None; // `r#ident`, or an identifier that starts with r
    }
    let mut close = vec![b'"'];
    close.extend(std::iter::repeat_n(b'#', hashes));
    let end = b[j + 1..]
        .windows(close.len())
        .position(|w| w == close.as_slice())
        .map_or(b.len(), |p| j + 1 + p + close.len());
    Some(end)
}

/// When a char literal (`'{'`, `'\''`, `'\u{7b}'`, `b'x'` from its quote) starts at `i`: past
/// its closing quote; `None` for a lifetime or a label (`'a`, `'outer:`).
fn char_end(source: &str, i: usize) -> Option<usize> {
    let rest = &source[i + 1..];
    if let Some(escaped) = rest.strip_prefix('\\') {
        // An escape: up to the next quote after the escaped character.
        let skip = escaped.chars().next()?.len_utf8();
        let close = escaped[skip..].find('\'')?;
        return Some(i + 2 + skip + close + 1);
    }
    let c = rest.chars().next()?;
    (rest[c.len_utf8()..].starts_with('\'')).then(|| i + 1 + c.len_utf8() + 1)
}

#[test]
fn scanner_counts_a_function_from_its_fn_line_to_its_closing_brace() {
    let src =
        "fn a() {\n    let x = 1;\n}\n\npub(crate) async fn b(x: [u8; 4]) -> u8 {\n    x[0]\n}\n";
    assert_eq!(
        functions(src),
        [
            Function {
                name: "a".into(),
                line: 1,
                lines: 3
            },
            Function {
                name: "b".into(),
                line: 5,
                lines: 3
            },
        ]
    );
}

#[test]
fn scanner_counts_nested_functions_whole_and_alone() {
    let src = "pub fn outer() {\n    fn inner() {\n        let _ = 1;\n    }\n    inner();\n}\n";
    let f = functions(src);
    assert_eq!(
        f.iter()
            .map(|f| (f.name.as_str(), f.line, f.lines))
            .collect::<Vec<_>>(),
        [("outer", 1, 6), ("inner", 2, 3)]
    );
}

#[test]
fn scanner_ignores_braces_in_strings_chars_and_comments() {
    let src = r###"fn f() {
    let open = '{';
    let quote = '\'';
    let s = "}}} \" }";
    let raw = r#"}"#;
    let bytes = b'}';
    // }
    /* } /* nested } */ } */
    let life: &'static str = "";
    'outer: loop {
        break 'outer;
    }
}
fn g() {}
"###;
    let f = functions(src);
    assert_eq!(
        f.iter()
            .map(|f| (f.name.as_str(), f.line, f.lines))
            .collect::<Vec<_>>(),
        [("f", 1, 13), ("g", 14, 1)]
    );
}

#[test]
fn scanner_skips_declarations_without_a_body() {
    let src = "pub trait T {\n    fn f();\n    fn g(x: [u8; 2]) -> u8;\n    fn h(&self) -> u8 {\n        0\n    }\n}\n";
    let f = functions(src);
    assert_eq!(
        f.iter()
            .map(|f| (f.name.as_str(), f.line, f.lines))
            .collect::<Vec<_>>(),
        [("h", 4, 3)]
    );
}

#[test]
fn scanner_reads_signatures_over_several_lines_and_ignores_fn_in_text() {
    let src = "/// fn not_this() {}\nconst unsafe extern \"C\" fn long(\n    a: u32,\n    b: u32,\n) -> u32\nwhere\n    u32: Copy,\n{\n    let s = \"\nfn not_this_either() {\n\";\n    a + b\n}\nlet f: fn(u32) = drop;\n";
    let f = functions(src);
    assert_eq!(
        f.iter()
            .map(|f| (f.name.as_str(), f.line, f.lines))
            .collect::<Vec<_>>(),
        [("long", 2, 12)]
    );
}
