//! The Python package's ctypes declarations against the C header: every function
//! `python/npkio/_lib.py` declares with `_proto(name, restype, *argtypes)` exists in
//! `include/npkio.h` with as many parameters, each of a ctypes type that passes what the C
//! type is; every `lib.npkio_*` the package calls is declared; and every
//! `ctypes.Structure` there has the fields of the C struct of the same name (`Npkio` +
//! the class name), in order, of compatible types. Both files are read as text.
//!
//! Compatible means: `c_void_p` for any pointer (handles, buffers, function pointers);
//! `c_char_p` for `char *`; `POINTER(t)` for a pointer to what `t` is; `None` for `void`;
//! a scalar for the same C scalar (`uint32_t` is `c_uint32`, and so is a
//! `typedef uint32_t NpkioStatus`); a `ctypes.Structure` class for the struct it mirrors.

use std::collections::BTreeMap;
use std::path::Path;

/// A C type, as far as the ABI is concerned.
#[derive(Clone, Debug, PartialEq)]
enum CType {
    Void,
    /// A scalar, named by its ctypes counterpart (`c_uint32`).
    Scalar(String),
    /// A struct (only behind a pointer, in prototypes).
    Struct(String),
    /// A pointer to a function (a `typedef R (*Name)(...)`).
    Function,
    Pointer(Box<CType>),
}

/// A ctypes type expression, aliases resolved.
#[derive(Clone, Debug, PartialEq)]
enum PyType {
    /// `None`, `c_uint32`, `c_void_p`, a Structure class...
    Named(String),
    Pointer(Box<PyType>),
}

/// What the header declares.
#[derive(Default)]
struct Header {
    /// Function name to (return type, parameter types).
    functions: BTreeMap<String, (CType, Vec<CType>)>,
    /// Struct name to its fields (name, type).
    structs: BTreeMap<String, Vec<(String, CType)>>,
}

/// What `_lib.py` declares.
#[derive(Default)]
struct Bindings {
    /// Function name to (restype, argtypes).
    functions: BTreeMap<String, (PyType, Vec<PyType>)>,
    /// Structure class name to its `_fields_`.
    structs: BTreeMap<String, Vec<(String, PyType)>>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `text` split at the commas outside parentheses, brackets and braces; empty parts dropped.
fn split_top(text: &str, sep: char) -> Vec<String> {
    let (mut parts, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for ch in text.chars() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => depth -= 1,
            c if c == sep && depth == 0 => {
                parts.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        cur.push(ch);
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The text after `open` (an opening parenthesis or bracket at `text[start]`) up to its
/// matching close, and the index after the close.
fn balanced(text: &str, start: usize) -> (&str, usize) {
    let mut depth = 0;
    for (i, ch) in text[start..].char_indices() {
        match ch {
            '(' | '[' | '{' => depth += 1,
            ')' | ']' | '}' => {
                depth -= 1;
                if depth == 0 {
                    return (&text[start + 1..start + i], start + i + 1);
                }
            }
            _ => {}
        }
    }
    panic!(
        "unbalanced text from: {}",
        &text[start..text.len().min(start + 80)]
    );
}

// ---------------------------------------------------------------------------------------
// The C header

/// The ctypes name of a C scalar type.
fn c_scalar(name: &str) -> Option<&'static str> {
    Some(match name {
        "bool" => "c_bool",
        "char" => "c_char",
        "int" => "c_int",
        "unsigned" | "unsigned int" => "c_uint",
        "float" => "c_float",
        "double" => "c_double",
        "size_t" => "c_size_t",
        "int8_t" => "c_int8",
        "uint8_t" => "c_uint8",
        "int16_t" => "c_int16",
        "uint16_t" => "c_uint16",
        "int32_t" => "c_int32",
        "uint32_t" => "c_uint32",
        "int64_t" => "c_int64",
        "uint64_t" => "c_uint64",
        _ => return None,
    })
}

/// The header as a C99 compiler sees it: comments gone, and of each conditional block
/// only what a C (not C++) compiler before C23 keeps.
fn c99_view(header: &str) -> String {
    let mut text = String::new();
    let mut rest = header;
    while let Some(i) = rest.find("/*") {
        text.push_str(&rest[..i]);
        let end = rest[i..].find("*/").expect("an unterminated comment") + i + 2;
        rest = &rest[end..];
    }
    text.push_str(rest);
    let mut out = String::new();
    // One entry per open conditional: whether its current branch is kept.
    let mut keep: Vec<bool> = Vec::new();
    for line in text.lines() {
        let line = line.split("//").next().unwrap();
        let t = line.trim();
        if let Some(d) = t.strip_prefix('#') {
            let d = d.trim();
            if let Some(c) = d.strip_prefix("ifdef") {
                keep.push(c.trim() != "__cplusplus");
            } else if d.starts_with("ifndef") {
                keep.push(true);
            } else if let Some(c) = d.strip_prefix("if") {
                keep.push(!c.contains("__cplusplus") && !c.contains("__STDC_VERSION__"));
            } else if d.starts_with("else") {
                let k = keep.last_mut().expect("#else without #if");
                *k = !*k;
            } else if d.starts_with("endif") {
                keep.pop().expect("#endif without #if");
            }
            continue;
        }
        if keep.iter().all(|k| *k) {
            out.push_str(line);
            out.push('\n');
        }
    }
    assert!(
        keep.is_empty(),
        "unbalanced conditionals in include/npkio.h"
    );
    out
}

/// A declaration `type name` (a parameter or a field), as its type text and name.
fn split_decl(decl: &str) -> (String, String) {
    let decl = decl.trim();
    let cut = decl
        .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
        .map_or(0, |i| i + 1);
    (decl[..cut].trim().to_string(), decl[cut..].to_string())
}

fn parse_header(text: &str) -> Header {
    let text = c99_view(text);
    let mut aliases: BTreeMap<String, String> = BTreeMap::new();
    let mut functions_ptrs: Vec<String> = Vec::new();
    let mut raw_structs: Vec<(String, Vec<(String, String)>)> = Vec::new();
    let mut raw_functions: Vec<(String, String, Vec<String>)> = Vec::new();
    // Struct bodies first, replaced by nothing so that the rest splits at semicolons.
    let mut flat = String::new();
    let mut pos = 0;
    while let Some(i) = text[pos..].find('{').map(|i| i + pos) {
        let (body, end) = balanced(&text, i);
        let before = &text[pos..i];
        flat.push_str(before);
        let head = before.rsplit(';').next().unwrap_or("");
        let words: Vec<&str> = head.split_whitespace().collect();
        if let Some(k) = words.iter().position(|w| *w == "struct") {
            let name = words[k + 1].to_string();
            let fields = split_top(body, ';')
                .iter()
                .map(|f| {
                    let (ty, name) = split_decl(f);
                    (name, ty)
                })
                .collect();
            raw_structs.push((name, fields));
        }
        pos = end;
    }
    flat.push_str(&text[pos..]);
    for stmt in split_top(&flat, ';') {
        let stmt = stmt.split_whitespace().collect::<Vec<_>>().join(" ");
        if let Some(def) = stmt.strip_prefix("typedef ") {
            if let Some(i) = def.find("(*") {
                let name = def[i + 2..].split(')').next().unwrap().trim();
                functions_ptrs.push(name.to_string());
            } else if !def.starts_with("enum ") && !def.starts_with("struct ") {
                let (ty, name) = split_decl(def);
                aliases.insert(name, ty);
            }
        } else if let Some(open) = stmt.find('(') {
            let (params, _) = balanced(&stmt, open);
            let (ret, name) = split_decl(&stmt[..open]);
            let params = split_top(params, ',');
            raw_functions.push((name, ret, params));
        }
    }
    let structs: Vec<String> = text
        .split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .collect::<Vec<_>>()
        .windows(2)
        .filter(|w| w[0] == "struct")
        .map(|w| w[1].to_string())
        .collect();
    let resolve = |ty: &str| -> CType {
        let stars = ty.matches('*').count();
        let base: Vec<&str> = ty
            .split(|c: char| c == '*' || c.is_whitespace())
            .filter(|w| !w.is_empty() && !["const", "struct", "enum"].contains(w))
            .collect();
        let mut base = base.join(" ");
        while let Some(t) = aliases.get(&base) {
            base = t.clone();
        }
        let mut t = if base == "void" {
            CType::Void
        } else if let Some(s) = c_scalar(&base) {
            CType::Scalar(s.to_string())
        } else if functions_ptrs.contains(&base) {
            CType::Function
        } else if structs.contains(&base) {
            CType::Struct(base.clone())
        } else {
            panic!("include/npkio.h: unknown C type `{ty}`");
        };
        for _ in 0..stars {
            t = CType::Pointer(Box::new(t));
        }
        t
    };
    let mut header = Header::default();
    for (name, fields) in raw_structs {
        let fields = fields
            .into_iter()
            .map(|(f, ty)| (f, resolve(&ty)))
            .collect();
        header.structs.insert(name, fields);
    }
    for (name, ret, params) in raw_functions {
        let params = if params == ["void"] {
            Vec::new()
        } else {
            params.iter().map(|p| resolve(&split_decl(p).0)).collect()
        };
        header.functions.insert(name, (resolve(&ret), params));
    }
    header
}

// ---------------------------------------------------------------------------------------
// The ctypes declarations

/// `line` without a `#` comment (outside string literals).
fn strip_py_comment(line: &str) -> &str {
    let mut quote: Option<char> = None;
    for (i, ch) in line.char_indices() {
        match (quote, ch) {
            (None, '#') => return &line[..i],
            (None, '"' | '\'') => quote = Some(ch),
            (Some(q), c) if c == q => quote = None,
            _ => {}
        }
    }
    line
}

fn parse_py_type(expr: &str, aliases: &BTreeMap<String, String>) -> PyType {
    let e = expr.trim();
    let e = e.strip_prefix("ctypes.").unwrap_or(e);
    if let Some(inner) = e.strip_prefix("POINTER(").and_then(|i| i.strip_suffix(')')) {
        return PyType::Pointer(Box::new(parse_py_type(inner, aliases)));
    }
    match aliases.get(e) {
        Some(a) => parse_py_type(a, aliases),
        None => PyType::Named(e.to_string()),
    }
}

fn parse_bindings(text: &str) -> Bindings {
    let code: String = text
        .lines()
        .map(strip_py_comment)
        .collect::<Vec<_>>()
        .join("\n");
    // Module-level assignments of ctypes types: `_status = c_uint32`.
    let mut aliases = BTreeMap::new();
    for line in code.lines() {
        if let Some((name, value)) = line.split_once(" = ") {
            let value = value.trim();
            let is_type = value.starts_with("POINTER(")
                || value.starts_with("c_")
                || value.starts_with("ctypes.c_");
            if !line.starts_with(' ') && is_type && !name.contains(|c: char| c.is_whitespace()) {
                aliases.insert(name.to_string(), value.to_string());
            }
        }
    }
    let mut b = Bindings::default();
    // Structures: `class Name(ctypes.Structure):` ... `_fields_ = [(...), ...]`.
    for (i, _) in code.match_indices("\nclass ") {
        let head = &code[i + 7..];
        let name_end = head.find('(').unwrap();
        let line_end = head.find('\n').unwrap_or(head.len());
        if !head[..line_end].contains("Structure") {
            continue;
        }
        let name = head[..name_end].trim().to_string();
        let fields_at = head.find("_fields_").expect("a Structure without _fields_");
        let open = fields_at + head[fields_at..].find('[').unwrap();
        let (list, _) = balanced(head, open);
        let fields = split_top(list, ',')
            .iter()
            .map(|t| {
                let t = t.trim();
                let inner = t.strip_prefix('(').and_then(|t| t.strip_suffix(')'));
                let inner = inner.expect("a (name, type) field");
                let (f, ty) = inner.split_once(',').expect("a (name, type) field");
                let f = f.trim().trim_matches(|c| c == '"' || c == '\'').to_string();
                (f, parse_py_type(ty, &aliases))
            })
            .collect();
        b.structs.insert(name, fields);
    }
    // Prototypes: `_proto("name", restype, *argtypes)` at the start of a line.
    for (i, _) in code.match_indices("\n_proto(") {
        let (args, _) = balanced(&code, i + 7);
        let args = split_top(args, ',');
        let name = args[0].trim_matches(|c| c == '"' || c == '\'').to_string();
        let restype = parse_py_type(&args[1], &aliases);
        let argtypes = args[2..]
            .iter()
            .map(|a| parse_py_type(a, &aliases))
            .collect();
        assert!(
            b.functions
                .insert(name.clone(), (restype, argtypes))
                .is_none(),
            "_lib.py declares {name} twice"
        );
    }
    b
}

// ---------------------------------------------------------------------------------------
// The comparison

/// Whether ctypes type `py` passes (or receives) what C type `c` is.
fn compatible(c: &CType, py: &PyType) -> bool {
    match (c, py) {
        (CType::Void, PyType::Named(n)) => n == "None",
        (CType::Pointer(_) | CType::Function, PyType::Named(n)) if n == "c_void_p" => true,
        (CType::Pointer(to), PyType::Named(n)) if n == "c_char_p" => {
            **to == CType::Scalar("c_char".into())
        }
        (CType::Pointer(to), PyType::Pointer(py_to)) => compatible(to, py_to),
        (CType::Scalar(s), PyType::Named(n)) => s == n,
        (CType::Struct(s), PyType::Named(class)) => *s == format!("Npkio{class}"),
        _ => false,
    }
}

fn names<T>(fields: &[(String, T)]) -> Vec<&str> {
    fields.iter().map(|(n, _)| n.as_str()).collect()
}

/// Every disagreement between the bindings and the header, one line each.
fn mismatches(header: &Header, py: &Bindings) -> Vec<String> {
    let mut bad = Vec::new();
    for (name, (restype, argtypes)) in &py.functions {
        let Some((ret, params)) = header.functions.get(name) else {
            bad.push(format!(
                "{name}: declared in _lib.py, not in include/npkio.h"
            ));
            continue;
        };
        if !compatible(ret, restype) {
            bad.push(format!(
                "{name}: restype {restype:?}, the header returns {ret:?}"
            ));
        }
        if argtypes.len() != params.len() {
            bad.push(format!(
                "{name}: {} argtypes in _lib.py, {} parameters in include/npkio.h",
                argtypes.len(),
                params.len()
            ));
            continue;
        }
        for (i, (c, p)) in params.iter().zip(argtypes).enumerate() {
            if !compatible(c, p) {
                bad.push(format!("{name}: parameter {}: {p:?} for C {c:?}", i + 1));
            }
        }
    }
    for (class, fields) in &py.structs {
        let c_name = format!("Npkio{class}");
        let Some(c_fields) = header.structs.get(&c_name) else {
            bad.push(format!(
                "class {class}: no struct {c_name} in include/npkio.h"
            ));
            continue;
        };
        if names(fields) != names(c_fields) {
            bad.push(format!(
                "class {class}: fields {:?}, {c_name} has {:?}",
                names(fields),
                names(c_fields)
            ));
            continue;
        }
        for ((f, p), (_, c)) in fields.iter().zip(c_fields) {
            if !compatible(c, p) {
                bad.push(format!("class {class}: field {f}: {p:?} for C {c:?}"));
            }
        }
    }
    bad
}

/// Every `lib.npkio_*` the package's modules use.
fn called_functions() -> Vec<(String, String)> {
    let dir = root().join("python/npkio");
    let mut found = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let path = e.unwrap().path();
        if path.extension().is_none_or(|x| x != "py") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (i, _) in text.match_indices("lib.npkio_") {
            let name: String = text[i + 4..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            let file = path.file_name().unwrap().to_string_lossy().into_owned();
            found.push((file, name));
        }
    }
    found
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

#[test]
fn python_prototypes_match_the_c_header() {
    let header = parse_header(&read("include/npkio.h"));
    let lib = read("python/npkio/_lib.py");
    let py = parse_bindings(&lib);
    // The parsers found everything there is to find.
    assert_eq!(
        py.functions.len(),
        lib.matches("\n_proto(").count(),
        "_lib.py"
    );
    assert!(
        py.functions.len() >= 40,
        "{} prototypes",
        py.functions.len()
    );
    assert!(py.structs.len() >= 5, "{} structures", py.structs.len());
    // Declarations start at the beginning of a line: `NpkioStatus npkio_x(...`.
    let declared = read("include/npkio.h")
        .lines()
        .filter(|l| l.starts_with(|c: char| c.is_ascii_alphabetic()) && !l.starts_with("typedef"))
        .filter(|l| l.split('(').next().is_some_and(|h| h.contains("npkio_")))
        .count();
    assert_eq!(header.functions.len(), declared, "include/npkio.h");
    let mut bad = mismatches(&header, &py);
    for (file, name) in called_functions() {
        if !py.functions.contains_key(&name) {
            bad.push(format!("{name}: called in python/npkio/{file}, no _proto"));
        }
    }
    assert!(
        bad.is_empty(),
        "python/npkio/_lib.py disagrees with include/npkio.h:\n{}",
        bad.join("\n")
    );
}

/// The comparison refuses what it should: a parameter too many or too few, a pointer to the
/// wrong scalar, a scalar of the wrong width, a missing function, a struct's field order.
#[test]
fn the_comparison_catches_mismatches() {
    let header = parse_header(
        "#include <stdint.h>\n\
         typedef uint32_t NpkioStatus;\n\
         typedef struct NpkioThing NpkioThing;\n\
         typedef struct NpkioPair { uint32_t a; const uint64_t *b; } NpkioPair;\n\
         NpkioStatus npkio_f(const struct NpkioThing *t, size_t *n, struct NpkioPair *p);\n\
         const char *npkio_g(void);\n",
    );
    let good = "_status = c_uint32\n\
                class Pair(ctypes.Structure):\n    _fields_ = [(\"a\", c_uint32), (\"b\", POINTER(c_uint64))]\n\
                _proto(\"npkio_f\", _status, c_void_p, POINTER(c_size_t), POINTER(Pair))\n\
                _proto(\"npkio_g\", c_char_p)\n";
    let ok = mismatches(&header, &parse_bindings(&format!("\n{good}")));
    assert!(ok.is_empty(), "{ok:?}");
    let broken = [
        ("POINTER(c_size_t), POINTER(Pair))", "POINTER(c_size_t))"),
        (
            "POINTER(c_size_t), POINTER(Pair))",
            "POINTER(c_size_t), POINTER(Pair), c_bool)",
        ),
        ("POINTER(c_size_t)", "POINTER(c_uint32)"),
        ("POINTER(c_size_t)", "c_size_t"),
        ("_status = c_uint32", "_status = c_uint64"),
        ("POINTER(Pair)", "POINTER(Other)"),
        ("\"npkio_g\", c_char_p", "\"npkio_h\", c_char_p"),
        ("\"npkio_g\", c_char_p", "\"npkio_g\", c_uint64"),
        ("(\"a\", c_uint32), (\"b\"", "(\"b\", c_uint32), (\"a\""),
        ("(\"b\", POINTER(c_uint64))", "(\"b\", POINTER(c_uint32))"),
    ];
    for (from, to) in broken {
        assert!(good.contains(from), "{from}");
        let text = format!("\n{}", good.replacen(from, to, 1));
        let bad = mismatches(&header, &parse_bindings(&text));
        assert!(!bad.is_empty(), "{from} -> {to}: not caught");
    }
}

/// Python tells a URL from a local path by itself (before anything reaches the library):
/// its list of schemes must be the library's.
#[test]
fn python_url_schemes_are_the_library_s() {
    let text = read("python/npkio/_lib.py");
    let start = text
        .find("URL_SCHEMES = (")
        .expect("python/npkio/_lib.py defines URL_SCHEMES");
    let (tuple, _) = balanced(&text, start + "URL_SCHEMES = ".len());
    let py: Vec<String> = split_top(tuple, ',')
        .iter()
        .map(|s| s.trim_matches('"').to_string())
        .collect();
    assert_eq!(
        py,
        npkio::remote::SCHEMES,
        "python/npkio/_lib.py URL_SCHEMES"
    );
}
