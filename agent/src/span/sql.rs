//! SQL text helpers for database spans: literal sanitising, the operation
//! name and the single collection a statement names.
//!
//! Everything here works on one small tokenizer that knows the MySQL lexical
//! rules that matter for these jobs (quotes and their escapes, backticked
//! names, comments, executable comments, numbers, hex and bit literals).
//! It does not parse SQL: the operation and collection are read from the
//! token sequence with a few conservative patterns, and when a statement
//! does not match one plainly (joins, subqueries, unions, several
//! statements) nothing is reported rather than a guess.
//!
//! All functions are pure, never panic on any input and cost time linear
//! in the length of the text.

/// What one token is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A keyword or plain identifier.
    Word,
    /// A backticked identifier.
    QuotedIdent,
    /// A string literal, including hex, bit and charset-introduced forms.
    Str,
    /// A numeric literal (decimal, float, `0x..`, `0b..`).
    Num,
    /// `?`, a placeholder of a prepared statement.
    Placeholder,
    /// `@name`, `@@name`: a user or system variable.
    Var,
    /// A comment, including optimizer hints.
    Comment,
    /// The opening `/*!NNNNN` or closing `*/` of an executable comment: the
    /// text between is SQL.
    ExecMark,
    Space,
    /// Any other single byte.
    Punct(u8),
}

#[derive(Clone, Copy, Debug)]
struct Token {
    kind: Kind,
    start: usize,
    end: usize,
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80
}

fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

/// Splits `sql` into tokens. Every byte belongs to exactly one token, and
/// token boundaries always fall on ASCII bytes or the ends, so slicing the
/// text at them keeps it valid UTF-8.
fn tokenize(sql: &str) -> Vec<Token> {
    let b = sql.as_bytes();
    let at = |i: usize| b.get(i).copied();
    let mut out = Vec::with_capacity(sql.len() / 4 + 1);
    let mut i = 0;
    let mut in_exec = false;
    while let Some(c) = at(i) {
        let start = i;
        let kind = match c {
            _ if is_space(c) => {
                while at(i).is_some_and(is_space) {
                    i += 1;
                }
                Kind::Space
            }
            b'#' => {
                i = line_end(b, i);
                Kind::Comment
            }
            b'-' if at(i + 1) == Some(b'-') && at(i + 2).is_none_or(is_space) => {
                i = line_end(b, i);
                Kind::Comment
            }
            b'/' if at(i + 1) == Some(b'*') && at(i + 2) == Some(b'!') && !in_exec => {
                i += 3;
                while at(i).is_some_and(|d| d.is_ascii_digit()) {
                    i += 1;
                }
                in_exec = true;
                Kind::ExecMark
            }
            b'/' if at(i + 1) == Some(b'*') => {
                i += 2;
                loop {
                    match at(i) {
                        None => break,
                        Some(b'*') if at(i + 1) == Some(b'/') => {
                            i += 2;
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
                Kind::Comment
            }
            b'*' if in_exec && at(i + 1) == Some(b'/') => {
                i += 2;
                in_exec = false;
                Kind::ExecMark
            }
            b'\'' | b'"' => {
                i = quoted_end(b, i, true);
                Kind::Str
            }
            b'`' => {
                i = quoted_end(b, i, false);
                Kind::QuotedIdent
            }
            b'?' => {
                i += 1;
                Kind::Placeholder
            }
            b'@' => {
                i += 1;
                if at(i) == Some(b'@') {
                    i += 1;
                }
                match at(i) {
                    Some(q @ (b'\'' | b'"' | b'`')) => i = quoted_end(b, i, q != b'`'),
                    _ => {
                        while at(i).is_some_and(|d| is_ident_byte(d) || d == b'.') {
                            i += 1;
                        }
                    }
                }
                Kind::Var
            }
            b'0'..=b'9' => match number_end(b, i) {
                Some(end) => {
                    i = end;
                    Kind::Num
                }
                None => {
                    i = word_end(b, i);
                    Kind::Word
                }
            },
            b'.' if at(i + 1).is_some_and(|d| d.is_ascii_digit())
                && !out
                    .last()
                    .is_some_and(|t: &Token| matches!(t.kind, Kind::Word | Kind::QuotedIdent)) =>
            {
                match number_end(b, i) {
                    Some(end) => {
                        i = end;
                        Kind::Num
                    }
                    None => {
                        i += 1;
                        Kind::Punct(b'.')
                    }
                }
            }
            _ if is_ident_byte(c) => {
                i = word_end(b, i);
                // X'..', B'..', N'..' and _charset'..' are string literals.
                let word = b.get(start..i).unwrap_or_default();
                let introducer = word.len() == 1 && b"xXbBnN".contains(&c) || c == b'_';
                if introducer && at(i) == Some(b'\'') {
                    i = quoted_end(b, i, true);
                    Kind::Str
                } else {
                    Kind::Word
                }
            }
            _ => {
                i += 1;
                Kind::Punct(c)
            }
        };
        out.push(Token {
            kind,
            start,
            end: i,
        });
    }
    out
}

/// End of a `#` or `-- ` comment: the newline is not part of it.
fn line_end(b: &[u8], from: usize) -> usize {
    b.iter()
        .skip(from)
        .position(|&c| c == b'\n')
        .map_or(b.len(), |p| from + p)
}

/// End of the quoted text starting at `from` (the opening quote). Doubled
/// quotes stand for one; in strings a backslash escapes the next byte. An
/// unterminated quote runs to the end.
fn quoted_end(b: &[u8], from: usize, backslash: bool) -> usize {
    let Some(&q) = b.get(from) else {
        return b.len();
    };
    let mut i = from + 1;
    while let Some(&c) = b.get(i) {
        if backslash && c == b'\\' {
            i += 2;
        } else if c == q {
            if b.get(i + 1) == Some(&q) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    b.len()
}

fn word_end(b: &[u8], from: usize) -> usize {
    let mut i = from;
    while b.get(i).is_some_and(|&c| is_ident_byte(c)) {
        i += 1;
    }
    i
}

/// End of the number starting at `from`, or `None` when the digits are the
/// start of an identifier (MySQL names may start with a digit: `1st_col`).
fn number_end(b: &[u8], from: usize) -> Option<usize> {
    let at = |i: usize| b.get(i).copied();
    let digits = |mut i: usize, ok: fn(u8) -> bool| {
        while at(i).is_some_and(ok) {
            i += 1;
        }
        i
    };
    let mut i = from;
    if at(i) == Some(b'0') && matches!(at(i + 1), Some(b'x' | b'X')) {
        i = digits(i + 2, |c| c.is_ascii_hexdigit());
        if i == from + 2 {
            return None;
        }
    } else if at(i) == Some(b'0') && matches!(at(i + 1), Some(b'b' | b'B')) {
        i = digits(i + 2, |c| c == b'0' || c == b'1');
        if i == from + 2 {
            return None;
        }
    } else {
        i = digits(i, |c| c.is_ascii_digit());
        if at(i) == Some(b'.') {
            i = digits(i + 1, |c| c.is_ascii_digit());
        }
        if matches!(at(i), Some(b'e' | b'E')) {
            let mut j = i + 1;
            if matches!(at(j), Some(b'+' | b'-')) {
                j += 1;
            }
            if at(j).is_some_and(|c| c.is_ascii_digit()) {
                i = digits(j, |c| c.is_ascii_digit());
            }
        }
    }
    if at(i).is_some_and(is_ident_byte) {
        None
    } else {
        Some(i)
    }
}

fn text<'a>(sql: &'a str, t: &Token) -> &'a str {
    sql.get(t.start..t.end).unwrap_or_default()
}

fn is_word(sql: &str, t: &Token, w: &str) -> bool {
    t.kind == Kind::Word && text(sql, t).eq_ignore_ascii_case(w)
}

/// Words after which `-` or `+` is a sign rather than an operator.
const SIGN_AFTER: &[&str] = &[
    "SELECT", "WHERE", "AND", "OR", "NOT", "XOR", "BETWEEN", "THEN", "ELSE", "WHEN", "CASE",
    "RETURN", "LIMIT", "OFFSET", "HAVING", "ON", "IN", "IS", "LIKE", "INTERVAL", "DIV", "MOD",
    "BY", "VALUES", "VALUE", "SET", "DEFAULT",
];

/// Is a `+`/`-` whose previous significant token is `prev` a sign?
fn is_sign(sql: &str, prev: Option<&Token>) -> bool {
    let Some(prev) = prev else {
        return true;
    };
    match prev.kind {
        Kind::Punct(b')') => false,
        Kind::Punct(_) | Kind::ExecMark => true,
        Kind::Word => SIGN_AFTER
            .iter()
            .any(|w| text(sql, prev).eq_ignore_ascii_case(w)),
        _ => false,
    }
}

fn is_literal(sql: &str, t: &Token) -> bool {
    match t.kind {
        Kind::Str | Kind::Num => true,
        Kind::Word => is_any_word(sql, t, &["TRUE", "FALSE"]),
        _ => false,
    }
}

fn is_insignificant(t: &Token) -> bool {
    matches!(t.kind, Kind::Space | Kind::Comment)
}

/// Replaces literals with `?`: quoted strings (with their escapes), hex and
/// bit literals, numbers (with their sign), `TRUE` and `FALSE`. A list of
/// only literals or placeholders after `IN` becomes `(?)`. Comments are
/// dropped (the SQL inside executable comments `/*! ... */` is kept);
/// keywords, names, backticked names, variables and placeholders are kept,
/// and so is the spacing.
pub fn sanitize(sql: &str) -> String {
    sanitize_tokens(sql, &tokenize(sql))
}

fn sanitize_tokens(sql: &str, toks: &[Token]) -> String {
    // For each token, the next significant token at or after it.
    let mut next_sig = vec![None; toks.len() + 1];
    for i in (0..toks.len()).rev() {
        let here = toks.get(i).filter(|t| !is_insignificant(t)).map(|_| i);
        let after = next_sig.get(i + 1).copied().flatten();
        if let Some(slot) = next_sig.get_mut(i) {
            *slot = here.or(after);
        }
    }
    let mut out = String::with_capacity(sql.len());
    let mut prev: Option<Token> = None;
    let mut i = 0;
    while let Some(&t) = toks.get(i) {
        match t.kind {
            Kind::Comment | Kind::ExecMark => {
                if !out.is_empty() && !out.ends_with(|c: char| c.is_ascii_whitespace()) {
                    out.push(' ');
                }
                if t.kind == Kind::ExecMark {
                    prev = Some(t);
                }
                i += 1;
                // Keep a single separator.
                while toks.get(i).is_some_and(|t| t.kind == Kind::Space) && out.ends_with(' ') {
                    i += 1;
                }
                continue;
            }
            Kind::Punct(b'-' | b'+') if is_sign(sql, prev.as_ref()) => {
                if let Some(n) = next_sig.get(i + 1).copied().flatten()
                    && let Some(&num) = toks.get(n).filter(|t| t.kind == Kind::Num)
                {
                    out.push('?');
                    prev = Some(num);
                    i = n + 1;
                    continue;
                }
            }
            Kind::Word if is_word(sql, &t, "IN") => {
                if let Some(end) = literal_list_end(sql, toks, &next_sig, i) {
                    out.push_str(text(sql, &t));
                    out.push_str(" (?)");
                    prev = toks.get(end).copied();
                    i = end + 1;
                    continue;
                }
            }
            _ => {}
        }
        if is_literal(sql, &t) {
            out.push('?');
        } else {
            out.push_str(text(sql, &t));
        }
        if !is_insignificant(&t) {
            prev = Some(t);
        }
        i += 1;
    }
    let trimmed = out.trim();
    if trimmed.len() == out.len() {
        out
    } else {
        trimmed.to_owned()
    }
}

/// For `IN` at token `in_at`: the index of the `)` closing a following list
/// made only of literals, signed numbers and placeholders.
fn literal_list_end(
    sql: &str,
    toks: &[Token],
    next_sig: &[Option<usize>],
    in_at: usize,
) -> Option<usize> {
    let next = |k: usize| next_sig.get(k + 1).copied().flatten();
    let open = next(in_at)?;
    if toks.get(open)?.kind != Kind::Punct(b'(') {
        return None;
    }
    let mut k = open;
    let mut expect_item = true;
    loop {
        k = next(k)?;
        let t = toks.get(k)?;
        match (expect_item, t.kind) {
            (true, Kind::Placeholder) => expect_item = false,
            (true, _) if is_literal(sql, t) => expect_item = false,
            (true, Kind::Punct(b'-' | b'+')) => {
                k = next(k)?;
                if toks.get(k)?.kind != Kind::Num {
                    return None;
                }
                expect_item = false;
            }
            (false, Kind::Punct(b',')) => expect_item = true,
            (false, Kind::Punct(b')')) => return Some(k),
            _ => return None,
        }
    }
}

/// A statement's tokens without spaces, comments and executable-comment marks.
fn statements(toks: &[Token]) -> Vec<Vec<Token>> {
    let mut all = Vec::new();
    let mut cur = Vec::new();
    for &t in toks {
        match t.kind {
            Kind::Space | Kind::Comment | Kind::ExecMark => {}
            Kind::Punct(b';') => {
                if !cur.is_empty() {
                    all.push(std::mem::take(&mut cur));
                }
            }
            _ => cur.push(t),
        }
    }
    if !cur.is_empty() {
        all.push(cur);
    }
    all
}

/// What a statement does, read from its tokens.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Analysis {
    /// The statement's first keyword, upper-cased (`SELECT`, `INSERT`,
    /// ...); for `WITH ... SELECT` the main statement's keyword.
    pub operation: Option<String>,
    /// The one table the statement names plainly.
    pub collection: Option<String>,
}

/// Operation and collection of `sql`. Several statements share an
/// operation only when they all have the same one, and never a collection.
pub fn analyze(sql: &str) -> Analysis {
    analyze_tokens(sql, &tokenize(sql))
}

fn analyze_tokens(sql: &str, toks: &[Token]) -> Analysis {
    let stmts = statements(toks);
    let mut ops = stmts.iter().map(|s| statement_operation(sql, s));
    let first = ops.next().flatten();
    let operation = if ops.all(|op| op == first) {
        first
    } else {
        None
    };
    let collection = match stmts.as_slice() {
        [only] => operation
            .as_deref()
            .and_then(|op| statement_collection(sql, only, op)),
        _ => None,
    };
    Analysis {
        operation,
        collection,
    }
}

/// What a span needs of one statement's text, tokenized once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Described {
    pub analysis: Analysis,
    /// The text sanitised, or as it was when `sanitize` is off.
    pub text: String,
}

/// [`analyze`] and, when `sanitize` is set, [`sanitize`] over one
/// tokenization of `sql`.
pub fn describe(sql: &str, sanitize: bool) -> Described {
    let toks = tokenize(sql);
    Described {
        analysis: analyze_tokens(sql, &toks),
        text: if sanitize {
            sanitize_tokens(sql, &toks)
        } else {
            sql.to_owned()
        },
    }
}

/// The operation name of `sql` (see [`analyze`]).
pub fn operation(sql: &str) -> Option<String> {
    analyze(sql).operation
}

/// The table `sql` names plainly (see [`analyze`]).
pub fn collection(sql: &str) -> Option<String> {
    analyze(sql).collection
}

const DML: &[&str] = &["SELECT", "INSERT", "UPDATE", "DELETE", "REPLACE"];

fn statement_operation(sql: &str, toks: &[Token]) -> Option<String> {
    let first = toks
        .iter()
        .find(|t| t.kind != Kind::Punct(b'('))
        .filter(|t| t.kind == Kind::Word)?;
    let word = text(sql, first).to_ascii_uppercase();
    if let Some(op) = table_ddl(sql, toks, &word) {
        return Some(op.0);
    }
    if word != "WITH" {
        return Some(word);
    }
    // WITH [RECURSIVE] name AS (...), ... main-statement
    let mut depth = 0usize;
    for t in toks {
        match t.kind {
            Kind::Punct(b'(') => depth += 1,
            Kind::Punct(b')') => depth = depth.saturating_sub(1),
            Kind::Word if depth == 0 => {
                if let Some(op) = DML.iter().find(|w| text(sql, t).eq_ignore_ascii_case(w)) {
                    return Some((*op).to_owned());
                }
            }
            _ => {}
        }
    }
    Some(word)
}

/// Words that may follow a plain single table (and its alias) in a
/// statement that names only that table.
#[rustfmt::skip]
const AFTER_TABLE: &[&str] = &[
    "WHERE", "GROUP", "ORDER", "LIMIT", "HAVING", "FOR", "LOCK", "WINDOW", "INTO",
    "PROCEDURE", "USE", "FORCE", "IGNORE", "PARTITION", "SET", "VALUES", "VALUE",
    "RETURNING", "ON", "OFFSET", "FETCH",
];

/// Words that cannot be a table's name or alias.
#[rustfmt::skip]
const RESERVED: &[&str] = &[
    "SELECT", "FROM", "WHERE", "JOIN", "INNER", "LEFT", "RIGHT", "CROSS", "NATURAL",
    "STRAIGHT_JOIN", "OUTER", "UNION", "EXCEPT", "INTERSECT", "DUAL", "LATERAL",
    "USING", "AS", "SET", "VALUES", "VALUE", "GROUP", "ORDER", "LIMIT", "HAVING",
    "FOR", "LOCK", "WINDOW", "INTO", "ON", "USE", "FORCE", "IGNORE", "PARTITION",
    "RETURNING",
];

fn is_reserved(sql: &str, t: &Token) -> bool {
    is_any_word(sql, t, RESERVED)
}

/// Whether `t` is one of `words` (upper-case; the token in any case).
/// Only words of the token's length and first letter are compared.
fn is_any_word(sql: &str, t: &Token, words: &[&str]) -> bool {
    if t.kind != Kind::Word {
        return false;
    }
    let Some(token) = sql.as_bytes().get(t.start..t.end) else {
        return false;
    };
    let Some(first) = token.first().map(u8::to_ascii_uppercase) else {
        return false;
    };
    words.iter().any(|w| {
        let w = w.as_bytes();
        w.len() == token.len() && w.first() == Some(&first) && w.eq_ignore_ascii_case(token)
    })
}

/// A table reference at `toks[i..]`: `name`, `db.name`, backticked parts.
/// Returns the name as written without its quotes, and the next index.
fn table_name(sql: &str, toks: &[Token], mut i: usize) -> Option<(String, usize)> {
    let mut name = String::new();
    loop {
        let t = toks.get(i)?;
        let part = match t.kind {
            Kind::Word if !is_reserved(sql, t) => text(sql, t).to_owned(),
            Kind::QuotedIdent => {
                let inner = text(sql, t);
                let inner = inner.strip_prefix('`').unwrap_or(inner);
                let inner = inner.strip_suffix('`').unwrap_or(inner);
                if inner.is_empty() {
                    return None;
                }
                inner.replace("``", "`")
            }
            _ => return None,
        };
        name.push_str(&part);
        i += 1;
        if toks.get(i).is_some_and(|t| t.kind == Kind::Punct(b'.')) {
            name.push('.');
            i += 1;
        } else {
            return Some((name, i));
        }
    }
}

/// After a table at `toks[i..]`: skips an alias and checks that what
/// follows fits a single-table statement; `extra` are further allowed
/// follow-ups (as token kinds).
fn plain_after_table(sql: &str, toks: &[Token], mut i: usize, extra: &[Kind]) -> bool {
    if toks.get(i).is_some_and(|t| is_word(sql, t, "AS")) {
        i += 1;
        if !toks
            .get(i)
            .is_some_and(|t| matches!(t.kind, Kind::Word | Kind::QuotedIdent | Kind::Str))
        {
            return false;
        }
        i += 1;
    } else if toks.get(i).is_some_and(|t| {
        (t.kind == Kind::Word && !is_reserved(sql, t)) || t.kind == Kind::QuotedIdent
    }) {
        i += 1;
    }
    match toks.get(i) {
        None => true,
        Some(t) if extra.contains(&t.kind) => true,
        Some(t) => AFTER_TABLE.iter().any(|w| is_word(sql, t, w)),
    }
}

fn count_words(sql: &str, toks: &[Token], words: &[&str]) -> usize {
    toks.iter().filter(|t| is_any_word(sql, t, words)).count()
}

/// Table DDL (`CREATE [TEMPORARY] TABLE [IF NOT EXISTS] t`, `DROP TABLE
/// [IF EXISTS] t`, `ALTER TABLE t`, `TRUNCATE [TABLE] t`): the two-word
/// operation name and the index of the token after `TABLE` and any
/// `IF [NOT] EXISTS`.
fn table_ddl(sql: &str, toks: &[Token], first: &str) -> Option<(String, usize)> {
    if !matches!(first, "CREATE" | "DROP" | "ALTER" | "TRUNCATE") {
        return None;
    }
    let start = toks.iter().position(|t| t.kind == Kind::Word)?;
    let mut i = start + 1;
    if toks.get(i).is_some_and(|t| is_word(sql, t, "TEMPORARY")) {
        i += 1;
    }
    if toks.get(i).is_some_and(|t| is_word(sql, t, "TABLE")) {
        i += 1;
    } else if first != "TRUNCATE" {
        return None;
    }
    for w in ["IF", "NOT", "EXISTS"] {
        if toks.get(i).is_some_and(|t| is_word(sql, t, w)) {
            i += 1;
        }
    }
    Some((format!("{first} TABLE"), i))
}

fn statement_collection(sql: &str, toks: &[Token], op: &str) -> Option<String> {
    if op.ends_with(" TABLE") {
        let first = toks.iter().find(|t| t.kind == Kind::Word)?;
        let (_, at) = table_ddl(sql, toks, &text(sql, first).to_ascii_uppercase())?;
        let (name, next) = table_name(sql, toks, at)?;
        // `DROP TABLE a, b` names more than one.
        return (!toks.get(next).is_some_and(|t| t.kind == Kind::Punct(b','))).then_some(name);
    }
    let selects = count_words(sql, toks, &["SELECT"]);
    if count_words(sql, toks, &["UNION", "EXCEPT", "INTERSECT", "JOIN"]) > 0 {
        return None;
    }
    let word_at = |i: usize, w: &str| toks.get(i).is_some_and(|t| is_word(sql, t, w));
    match op {
        "SELECT" => {
            let start = toks
                .iter()
                .position(|t| t.kind != Kind::Punct(b'('))
                .unwrap_or(0);
            if selects != 1 || !word_at(start, "SELECT") {
                return None;
            }
            let mut depth = 0usize;
            let from = toks.iter().position(|t| {
                match t.kind {
                    Kind::Punct(b'(') => depth += 1,
                    Kind::Punct(b')') => depth = depth.saturating_sub(1),
                    _ => {}
                }
                depth == start && is_word(sql, t, "FROM")
            })?;
            let (name, next) = table_name(sql, toks, from + 1)?;
            plain_after_table(sql, toks, next, &[Kind::Punct(b')')]).then_some(name)
        }
        "INSERT" | "REPLACE" => {
            if selects != 0 {
                return None;
            }
            let mut i = 1;
            while ["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"]
                .iter()
                .any(|w| word_at(i, w))
            {
                i += 1;
            }
            let (name, next) = table_name(sql, toks, i)?;
            let ok = match toks.get(next) {
                None => true,
                Some(t) if t.kind == Kind::Punct(b'(') => true,
                Some(t) => ["VALUES", "VALUE", "SET", "PARTITION"]
                    .iter()
                    .any(|w| is_word(sql, t, w)),
            };
            ok.then_some(name)
        }
        "UPDATE" => {
            if selects != 0 {
                return None;
            }
            let mut i = 1;
            while ["LOW_PRIORITY", "IGNORE"].iter().any(|w| word_at(i, w)) {
                i += 1;
            }
            let (name, mut next) = table_name(sql, toks, i)?;
            if word_at(next, "AS") {
                next += 1;
            }
            if !word_at(next, "SET") {
                next += 1;
            }
            word_at(next, "SET").then_some(name)
        }
        "DELETE" => {
            if selects != 0 {
                return None;
            }
            let mut i = 1;
            while ["LOW_PRIORITY", "QUICK", "IGNORE"]
                .iter()
                .any(|w| word_at(i, w))
            {
                i += 1;
            }
            if !word_at(i, "FROM") {
                return None;
            }
            let (name, next) = table_name(sql, toks, i + 1)?;
            let ok = match toks.get(next) {
                None => true,
                Some(t) => ["WHERE", "ORDER", "LIMIT", "PARTITION", "RETURNING", "AS"]
                    .iter()
                    .any(|w| is_word(sql, t, w)),
            };
            ok.then_some(name)
        }
        _ => None,
    }
}

/// The `traceparent` a sqlcommenter-style comment carries
/// (`/*traceparent='00-...-01'*/`), if any.
pub fn traceparent(sql: &str) -> Option<&str> {
    // Most statements carry none; skip tokenizing those.
    if !sql.contains("traceparent=") {
        return None;
    }
    tokenize(sql)
        .iter()
        .filter(|t| t.kind == Kind::Comment)
        .find_map(|t| {
            let comment = text(sql, t);
            let at = comment.find("traceparent=")?;
            let rest = comment.get(at + "traceparent=".len()..)?;
            let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
            let value = rest.get(1..)?;
            let end = value.find(quote)?;
            value.get(..end)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sanitize_table() {
        let cases: &[(&str, &str)] = &[
            ("SELECT 1", "SELECT ?"),
            (
                "SELECT * FROM users WHERE id = 42",
                "SELECT * FROM users WHERE id = ?",
            ),
            (
                "SELECT * FROM t WHERE name = 'o''neil' AND x = 'a\\'b'",
                "SELECT * FROM t WHERE name = ? AND x = ?",
            ),
            (
                r#"SELECT "it\"s", 'back\\slash\\' FROM t"#,
                "SELECT ?, ? FROM t",
            ),
            ("SELECT 'unterminated", "SELECT ?"),
            (
                "SELECT 3.14, .5, 1e10, 2.5E-3, 0x1F, 0b101, X'ABCD', b'01', N'x', _utf8mb4'y'",
                "SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?",
            ),
            (
                "SELECT * FROM t WHERE a = -5 AND b > - 3 AND c < +7",
                "SELECT * FROM t WHERE a = ? AND b > ? AND c < ?",
            ),
            (
                "SELECT a - 1, (b) - 2, a-3 FROM t",
                "SELECT a - ?, (b) - ?, a-? FROM t",
            ),
            ("SELECT -1", "SELECT ?"),
            (
                "UPDATE t SET n = n + 1 WHERE id = 7",
                "UPDATE t SET n = n + ? WHERE id = ?",
            ),
            (
                "INSERT INTO t (a, b) VALUES (-1, 'x'), (2, \"y\")",
                "INSERT INTO t (a, b) VALUES (?, ?), (?, ?)",
            ),
            (
                "SELECT * FROM t WHERE id IN (1, 2, -3, 'four')",
                "SELECT * FROM t WHERE id IN (?)",
            ),
            (
                "SELECT * FROM t WHERE id in (?, ?, ?)",
                "SELECT * FROM t WHERE id in (?)",
            ),
            (
                "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE k = 1)",
                "SELECT * FROM t WHERE id IN (SELECT id FROM u WHERE k = ?)",
            ),
            (
                "SELECT t1.c2, col_3, `table 9`.`x1` FROM t1 JOIN `table 9`",
                "SELECT t1.c2, col_3, `table 9`.`x1` FROM t1 JOIN `table 9`",
            ),
            ("SELECT 1abc, a1b2 FROM t9", "SELECT 1abc, a1b2 FROM t9"),
            (
                "SELECT `it``s 5` FROM t WHERE v = TRUE OR w = false OR z IS NULL",
                "SELECT `it``s 5` FROM t WHERE v = ? OR w = ? OR z IS NULL",
            ),
            (
                "SELECT /* hint 42 */ a FROM t -- trailing 'x'\nWHERE b = 1 # 99",
                "SELECT a FROM t WHERE b = ?",
            ),
            ("/* leading */ SELECT 1", "SELECT ?"),
            ("SELECT--1\n", "SELECT-?"),
            ("/*!40101 SET NAMES utf8mb4 */", "SET NAMES utf8mb4"),
            (
                "SELECT @x := 5, @@session.sql_mode, @`q`",
                "SELECT @x := ?, @@session.sql_mode, @`q`",
            ),
            (
                "SELECT * FROM t WHERE d > '2024-01-01' LIMIT 10 OFFSET 20",
                "SELECT * FROM t WHERE d > ? LIMIT ? OFFSET ?",
            ),
            (
                "SELECT 'é', name FROM café WHERE x = 'ü'",
                "SELECT ?, name FROM café WHERE x = ?",
            ),
            ("  ", ""),
            ("", ""),
        ];
        for (input, want) in cases {
            assert_eq!(sanitize(input), *want, "input: {input:?}");
        }
    }

    #[test]
    fn operation_and_collection_table() {
        #[rustfmt::skip]
        let cases: &[(&str, Option<&str>, Option<&str>)] = &[
            ("SELECT * FROM users WHERE id = 1", Some("SELECT"), Some("users")),
            ("select id from `shop`.`users` u where u.id = ?", Some("SELECT"), Some("shop.users")),
            ("SELECT a FROM t AS x ORDER BY a LIMIT 5", Some("SELECT"), Some("t")),
            ("SELECT * FROM t1 JOIN t2 ON t1.a = t2.a", Some("SELECT"), None),
            ("SELECT * FROM t1, t2", Some("SELECT"), None),
            ("SELECT * FROM t1 LEFT OUTER JOIN t2 USING (a)", Some("SELECT"), None),
            ("SELECT * FROM (SELECT 1) d", Some("SELECT"), None),
            ("SELECT * FROM t WHERE a IN (SELECT b FROM u)", Some("SELECT"), None),
            ("SELECT 1 FROM t UNION SELECT 2 FROM u", Some("SELECT"), None),
            ("SELECT 1", Some("SELECT"), None),
            ("SELECT 1 FROM DUAL", Some("SELECT"), None),
            ("SELECT COUNT(*) FROM users", Some("SELECT"), Some("users")),
            ("SELECT * FROM t FOR UPDATE", Some("SELECT"), Some("t")),
            ("INSERT INTO users (a) VALUES (1)", Some("INSERT"), Some("users")),
            ("insert ignore into logs values (1)", Some("INSERT"), Some("logs")),
            ("INSERT users SET a = 1", Some("INSERT"), Some("users")),
            ("INSERT INTO t2 SELECT * FROM t1", Some("INSERT"), None),
            ("REPLACE INTO kv (k, v) VALUES ('a', 'b')", Some("REPLACE"), Some("kv")),
            ("UPDATE users SET age = 1 WHERE id = 2", Some("UPDATE"), Some("users")),
            ("UPDATE LOW_PRIORITY t AS x SET x.a = 1", Some("UPDATE"), Some("t")),
            ("UPDATE t1, t2 SET t1.a = t2.a", Some("UPDATE"), None),
            ("UPDATE t1 JOIN t2 ON t1.id = t2.id SET t1.a = 1", Some("UPDATE"), None),
            ("DELETE FROM sessions WHERE expires < NOW()", Some("DELETE"), Some("sessions")),
            ("DELETE t1 FROM t1 JOIN t2 ON t1.a = t2.a", Some("DELETE"), None),
            ("DELETE FROM t1 USING t1, t2", Some("DELETE"), None),
            ("WITH r AS (SELECT 1) SELECT * FROM r", Some("SELECT"), None),
            ("  (SELECT a FROM t)  ", Some("SELECT"), Some("t")),
            ("/* app=x */ update t9 set a = 1", Some("UPDATE"), Some("t9")),
            ("CREATE TABLE items (id INT PRIMARY KEY, name VARCHAR(20))", Some("CREATE TABLE"), Some("items")),
            ("create temporary table if not exists `shop`.`tmp` (a int)", Some("CREATE TABLE"), Some("shop.tmp")),
            ("DROP TABLE IF EXISTS old", Some("DROP TABLE"), Some("old")),
            ("DROP TABLE a, b", Some("DROP TABLE"), None),
            ("ALTER TABLE t ADD COLUMN c INT", Some("ALTER TABLE"), Some("t")),
            ("TRUNCATE t", Some("TRUNCATE TABLE"), Some("t")),
            ("CREATE INDEX i ON t (a)", Some("CREATE"), None),
            ("CREATE DATABASE shop", Some("CREATE"), None),
            ("BEGIN", Some("BEGIN"), None),
            ("set autocommit=1", Some("SET"), None),
            ("SHOW TABLES", Some("SHOW"), None),
            ("CALL shop.two_results()", Some("CALL"), None),
            ("SELECT 1; SELECT 2", Some("SELECT"), None),
            ("SELECT COUNT(*) FROM users; UPDATE users SET age = 1", None, None),
            ("SELECT * FROM users;", Some("SELECT"), Some("users")),
            ("", None, None),
            ("42", None, None),
            ("'x'", None, None),
        ];
        for (sql, op, coll) in cases {
            let a = analyze(sql);
            assert_eq!(a.operation.as_deref(), *op, "operation of {sql:?}");
            assert_eq!(a.collection.as_deref(), *coll, "collection of {sql:?}");
        }
    }

    #[test]
    fn sqlcommenter_traceparent() {
        let sql = "SELECT 1 /*action='list',traceparent='00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01'*/";
        assert_eq!(
            traceparent(sql),
            Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        );
        assert_eq!(traceparent("SELECT 'traceparent=''x'''"), None);
        assert_eq!(traceparent("SELECT 1 /* traceparent=unquoted */"), None);
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut seed = 0x9e37_79b9_u32;
        let alphabet = b"'\"`\\-#/*!?@.0123456789xXbB_ aA(),;\n\xc3\xa9";
        for len in 0..200 {
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 17;
                    seed ^= seed << 5;
                    alphabet[seed as usize % alphabet.len()]
                })
                .collect();
            let s = String::from_utf8_lossy(&bytes);
            // One tokenization gives what the separate calls give.
            let described = describe(&s, true);
            assert_eq!(described.text, sanitize(&s), "{s:?}");
            assert_eq!(described.analysis, analyze(&s), "{s:?}");
            assert_eq!(describe(&s, false).text, s, "{s:?}");
            let _ = traceparent(&s);
        }
    }
}
