//! The web UI's attention syntax (`modules/prompt_parser.py`, `parse_prompt_attention`): a prompt
//! to pieces of text with the weight each gets, and `BREAK` markers.
//!
//! - `(x)` multiplies by 1.1, `[x]` divides by 1.1, `(x:w)` multiplies by `w`; nesting multiplies.
//! - `\(`, `\)`, `\[`, `\]`, `\\` are the literal characters; a lone `\` is dropped.
//! - Unbalanced brackets are no error: an unopened `)`/`]` or `:w)` is text, an unclosed `(`/`[`
//!   applies its factor to the rest of the prompt.
//! - `BREAK` (a whole word, surrounding whitespace taken with it) outside any bracket starts a
//!   new chunk. Inside brackets it is multiplied like text and so, as in the web UI, stops being
//!   a marker and is encoded as the word.
//! - Neighbouring pieces of equal weight merge.
use anyhow::{bail, Result};

/// One piece of a parsed prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    /// The product of the brackets around it; the web UI marks `BREAK` with weight -1.
    pub weight: f64,
}

impl Piece {
    /// Whether this piece is a chunk break (text `BREAK` with its unmultiplied weight -1).
    pub fn is_break(&self) -> bool {
        self.text == "BREAK" && self.weight == -1.0
    }
}

const ROUND: f64 = 1.1;

/// One lexical token of the attention syntax (the alternatives of the web UI's `re_attention`,
/// tried in its order at each position).
enum Lexeme<'a> {
    /// `\(` and the other escapes: the character after the backslash (empty for a lone `\`).
    Escaped(&'a str),
    Open,
    OpenSquare,
    /// `:w)`: the number as written, and the whole match (text when no `(` is open).
    Weight(&'a str, &'a str),
    Close,
    CloseSquare,
    /// Anything else, `:` alone included.
    Text(&'a str),
}

/// The lexeme at the start of `s` and its byte length.
fn lex(s: &str) -> (Lexeme<'_>, usize) {
    let mut chars = s.chars();
    let c = chars.next().expect("lex of a non-empty string");
    match c {
        '\\' => match chars.next() {
            Some(n @ ('(' | ')' | '[' | ']' | '\\')) => (Lexeme::Escaped(&s[1..1 + n.len_utf8()]), 1 + n.len_utf8()),
            _ => (Lexeme::Escaped(""), 1),
        },
        '(' => (Lexeme::Open, 1),
        '[' => (Lexeme::OpenSquare, 1),
        ')' => (Lexeme::Close, 1),
        ']' => (Lexeme::CloseSquare, 1),
        ':' => {
            // `:([+-]?[.\d]+)\)`: a run of digits and dots (after an optional sign) then `)`.
            let rest = &s[1..];
            let sign = usize::from(rest.starts_with(['+', '-']));
            let run = rest[sign..].bytes().take_while(|b| b.is_ascii_digit() || *b == b'.').count();
            if run > 0 && rest[sign + run..].starts_with(')') {
                let end = 1 + sign + run + 1;
                (Lexeme::Weight(&rest[..sign + run], &s[..end]), end)
            } else {
                (Lexeme::Text(&s[..1]), 1)
            }
        }
        _ => {
            let end = s.find(['\\', '(', ')', '[', ']', ':']).unwrap_or(s.len());
            (Lexeme::Text(&s[..end]), end)
        }
    }
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// `re.split(r"\s*\bBREAK\b\s*", text)`.
fn split_breaks(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut start = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find("BREAK") {
        let b = search + found;
        let e = b + "BREAK".len();
        let before_ok = text[..b].chars().next_back().is_none_or(|c| !is_word(c));
        let after_ok = text[e..].chars().next().is_none_or(|c| !is_word(c));
        if !(before_ok && after_ok) {
            search = b + 1;
            continue;
        }
        // The whitespace before it (back to where this part started) and after it goes too.
        let ws_start = text[start..b].trim_end().len() + start;
        let ws_end = e + (text[e..].len() - text[e..].trim_start().len());
        parts.push(&text[start..ws_start]);
        start = ws_end;
        search = ws_end;
    }
    parts.push(&text[start..]);
    parts
}

/// Parses `prompt` as the web UI does (see the module doc). Fails only on a weight that is no
/// number (`(x:1.2.3)`), where the web UI itself raises.
pub fn parse(prompt: &str) -> Result<Vec<Piece>> {
    let mut res: Vec<Piece> = Vec::new();
    let mut round: Vec<usize> = Vec::new();
    let mut square: Vec<usize> = Vec::new();
    let multiply = |res: &mut Vec<Piece>, from: usize, by: f64| res[from..].iter_mut().for_each(|p| p.weight *= by);
    let mut rest = prompt;
    while !rest.is_empty() {
        let (lexeme, len) = lex(rest);
        let whole = &rest[..len];
        rest = &rest[len..];
        match lexeme {
            Lexeme::Escaped(c) => res.push(Piece { text: c.to_string(), weight: 1.0 }),
            Lexeme::Open => round.push(res.len()),
            Lexeme::OpenSquare => square.push(res.len()),
            Lexeme::Weight(w, _) if !round.is_empty() => {
                let Ok(w) = w.parse::<f64>() else {
                    bail!("the prompt's weight `{whole}` is not a number (expected `(text:1.3)`)");
                };
                let from = round.pop().unwrap_or_default();
                multiply(&mut res, from, w);
            }
            Lexeme::Close if !round.is_empty() => {
                let from = round.pop().unwrap_or_default();
                multiply(&mut res, from, ROUND);
            }
            Lexeme::CloseSquare if !square.is_empty() => {
                let from = square.pop().unwrap_or_default();
                multiply(&mut res, from, 1.0 / ROUND);
            }
            Lexeme::Weight(_, text) | Lexeme::Text(text) => push_text(&mut res, text),
            Lexeme::Close | Lexeme::CloseSquare => push_text(&mut res, whole),
        }
    }
    for from in round {
        multiply(&mut res, from, ROUND);
    }
    for from in square {
        multiply(&mut res, from, 1.0 / ROUND);
    }
    if res.is_empty() {
        res.push(Piece { text: String::new(), weight: 1.0 });
    }
    let mut merged: Vec<Piece> = Vec::with_capacity(res.len());
    for p in res {
        match merged.last_mut() {
            Some(last) if last.weight == p.weight => last.text.push_str(&p.text),
            _ => merged.push(p),
        }
    }
    Ok(merged)
}

fn push_text(res: &mut Vec<Piece>, text: &str) {
    for (i, part) in split_breaks(text).into_iter().enumerate() {
        if i > 0 {
            res.push(Piece { text: "BREAK".into(), weight: -1.0 });
        }
        res.push(Piece { text: part.to_string(), weight: 1.0 });
    }
}
