//! STIX 2.x patterning: a parser for the whole expression grammar
//! (observation expressions with AND/OR/FOLLOWEDBY and qualifiers,
//! comparison expressions with AND/OR/NOT and every operator), and the
//! translation of the subset a source-address filter can enforce into
//! entries. See [`super::stix`] for the mapping.

use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

use crate::entry::{PortMatch, Proto, Side};
use crate::intel::blocklist::parse_net;

/// A literal value.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum Literal {
    Str(String),
    Int(i64),
    Float(f64),
    Bool(bool),
    /// `t'...'`
    Time(String),
    /// `h'...'`
    Hex(String),
    /// `b'...'`
    Bin(String),
}

impl fmt::Display for Literal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Literal::Str(s) => write!(f, "'{s}'"),
            Literal::Int(n) => write!(f, "{n}"),
            Literal::Float(x) => write!(f, "{x}"),
            Literal::Bool(b) => write!(f, "{b}"),
            Literal::Time(s) => write!(f, "t'{s}'"),
            Literal::Hex(s) => write!(f, "h'{s}'"),
            Literal::Bin(s) => write!(f, "b'{s}'"),
        }
    }
}

/// `object-type:property.path`, the property path in canonical form
/// (`src_ref.value`, `hashes.'SHA-256'`, `protocols[*]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ObjectPath {
    pub object: String,
    pub prop: String,
}

impl fmt::Display for ObjectPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.object, self.prop)
    }
}

/// A comparison operator.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    In,
    Like,
    Matches,
    IsSubset,
    IsSuperset,
    Exists,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Op::Eq => "=",
            Op::Ne => "!=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::In => "IN",
            Op::Like => "LIKE",
            Op::Matches => "MATCHES",
            Op::IsSubset => "ISSUBSET",
            Op::IsSuperset => "ISSUPERSET",
            Op::Exists => "EXISTS",
        })
    }
}

/// One comparison. `values` has one element, several for `IN`, none for
/// `EXISTS`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Comparison {
    pub path: ObjectPath,
    pub negated: bool,
    pub op: Op,
    pub values: Vec<Literal>,
}

/// Inside `[...]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum CmpExpr {
    Cmp(Comparison),
    And(Vec<CmpExpr>),
    Or(Vec<CmpExpr>),
}

/// Between observations.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum ObsExpr {
    Obs(CmpExpr),
    And(Vec<ObsExpr>),
    Or(Vec<ObsExpr>),
    FollowedBy(Vec<ObsExpr>),
    /// `WITHIN n SECONDS`, `REPEATS n TIMES`, `START t'..' STOP t'..'`.
    Qualified(Box<ObsExpr>, String),
}

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    LBrack,
    RBrack,
    LParen,
    RParen,
    Comma,
    Cmp(Op),
    Word(String),
    Path(ObjectPath),
    Lit(Literal),
}

impl fmt::Display for Tok {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Tok::LBrack => f.write_str("'['"),
            Tok::RBrack => f.write_str("']'"),
            Tok::LParen => f.write_str("'('"),
            Tok::RParen => f.write_str("')'"),
            Tok::Comma => f.write_str("','"),
            Tok::Cmp(op) => write!(f, "'{op}'"),
            Tok::Word(w) => write!(f, "'{w}'"),
            Tok::Path(p) => write!(f, "'{p}'"),
            Tok::Lit(l) => write!(f, "{l}"),
        }
    }
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

struct Lexer {
    chars: Vec<char>,
    pos: usize,
}

impl Lexer {
    fn peek(&self, ahead: usize) -> Option<char> {
        self.chars.get(self.pos + ahead).copied()
    }

    fn ident(&mut self) -> String {
        let start = self.pos;
        while self.peek(0).is_some_and(is_ident) {
            self.pos += 1;
        }
        self.chars[start..self.pos].iter().collect()
    }

    /// A quoted string; `pos` is at the opening quote.
    fn string(&mut self) -> Result<String, String> {
        let start = self.pos;
        self.pos += 1;
        let mut out = String::new();
        loop {
            match self.peek(0) {
                None => return Err(format!("unterminated string starting at offset {start}")),
                Some('\'') => {
                    self.pos += 1;
                    return Ok(out);
                }
                Some('\\') => {
                    match self.peek(1) {
                        Some(c @ ('\'' | '\\')) => out.push(c),
                        Some(c) => {
                            out.push('\\');
                            out.push(c);
                        }
                        None => {
                            return Err(format!("unterminated string starting at offset {start}"));
                        }
                    }
                    self.pos += 2;
                }
                Some(c) => {
                    out.push(c);
                    self.pos += 1;
                }
            }
        }
    }

    /// The property path after `type:`; `pos` is after the colon.
    fn path(&mut self, object: String) -> Result<ObjectPath, String> {
        let mut prop = String::new();
        loop {
            match self.peek(0) {
                Some('\'') => {
                    let s = self.string()?;
                    prop.push('\'');
                    prop.push_str(&s);
                    prop.push('\'');
                }
                Some(c) if is_ident(c) => prop.push_str(&self.ident()),
                _ => {
                    return Err(format!(
                        "expected a property name after '{object}:{prop}' at offset {}",
                        self.pos
                    ));
                }
            }
            while self.peek(0) == Some('[') {
                let start = self.pos;
                self.pos += 1;
                let mut index = String::new();
                while let Some(c) = self.peek(0).filter(|&c| c != ']') {
                    index.push(c);
                    self.pos += 1;
                }
                if self.peek(0) != Some(']')
                    || !(index == "*"
                        || (!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit())))
                {
                    return Err(format!("invalid list index at offset {start}"));
                }
                self.pos += 1;
                prop.push('[');
                prop.push_str(&index);
                prop.push(']');
            }
            if self.peek(0) == Some('.') {
                self.pos += 1;
                prop.push('.');
                continue;
            }
            return Ok(ObjectPath { object, prop });
        }
    }

    fn number(&mut self) -> Result<Literal, String> {
        let start = self.pos;
        if matches!(self.peek(0), Some('-' | '+')) {
            self.pos += 1;
        }
        while self.peek(0).is_some_and(|c| c.is_ascii_digit() || c == '.') {
            self.pos += 1;
        }
        let text: String = self.chars[start..self.pos].iter().collect();
        if let Ok(n) = text.parse::<i64>() {
            return Ok(Literal::Int(n));
        }
        text.parse::<f64>()
            .map(Literal::Float)
            .map_err(|_| format!("invalid number '{text}' at offset {start}"))
    }
}

fn lex(pattern: &str) -> Result<Vec<Tok>, String> {
    let mut lx = Lexer {
        chars: pattern.chars().collect(),
        pos: 0,
    };
    let mut toks = Vec::new();
    while let Some(c) = lx.peek(0) {
        let next = lx.peek(1);
        let tok = match c {
            c if c.is_whitespace() => {
                lx.pos += 1;
                continue;
            }
            '[' => Tok::LBrack,
            ']' => Tok::RBrack,
            '(' => Tok::LParen,
            ')' => Tok::RParen,
            ',' => Tok::Comma,
            '=' => {
                if next == Some('=') {
                    lx.pos += 1;
                }
                Tok::Cmp(Op::Eq)
            }
            '!' if next == Some('=') => {
                lx.pos += 1;
                Tok::Cmp(Op::Ne)
            }
            '<' => match next {
                Some('=') => {
                    lx.pos += 1;
                    Tok::Cmp(Op::Le)
                }
                Some('>') => {
                    lx.pos += 1;
                    Tok::Cmp(Op::Ne)
                }
                _ => Tok::Cmp(Op::Lt),
            },
            '>' => {
                if next == Some('=') {
                    lx.pos += 1;
                    Tok::Cmp(Op::Ge)
                } else {
                    Tok::Cmp(Op::Gt)
                }
            }
            '\'' => {
                toks.push(Tok::Lit(Literal::Str(lx.string()?)));
                continue;
            }
            't' | 'h' | 'b' if next == Some('\'') => {
                lx.pos += 1;
                let s = lx.string()?;
                toks.push(Tok::Lit(match c {
                    't' => Literal::Time(s),
                    'h' => Literal::Hex(s),
                    _ => Literal::Bin(s),
                }));
                continue;
            }
            c if c.is_ascii_digit()
                || (matches!(c, '-' | '+') && next.is_some_and(|n| n.is_ascii_digit())) =>
            {
                toks.push(Tok::Lit(lx.number()?));
                continue;
            }
            c if c.is_ascii_alphabetic() || c == '_' => {
                let word = lx.ident();
                if lx.peek(0) == Some(':') {
                    lx.pos += 1;
                    toks.push(Tok::Path(lx.path(word)?));
                } else if word.eq_ignore_ascii_case("true") || word.eq_ignore_ascii_case("false") {
                    toks.push(Tok::Lit(Literal::Bool(word.eq_ignore_ascii_case("true"))));
                } else {
                    toks.push(Tok::Word(word));
                }
                continue;
            }
            c => return Err(format!("unexpected character '{c}' at offset {}", lx.pos)),
        };
        lx.pos += 1;
        toks.push(tok);
    }
    Ok(toks)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn is_word(&self, w: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(x)) if x.eq_ignore_ascii_case(w))
    }

    fn found(&self) -> String {
        match self.peek() {
            Some(t) => t.to_string(),
            None => "the end".to_string(),
        }
    }

    fn expect(&mut self, tok: &Tok, what: &str) -> Result<(), String> {
        if self.peek() == Some(tok) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {what}, found {}", self.found()))
        }
    }

    fn literal(&mut self) -> Result<Literal, String> {
        match self.peek() {
            Some(Tok::Lit(l)) => {
                let l = l.clone();
                self.pos += 1;
                Ok(l)
            }
            _ => Err(format!("expected a literal, found {}", self.found())),
        }
    }

    fn list<T>(
        &mut self,
        sep: &str,
        mut item: impl FnMut(&mut Self) -> Result<T, String>,
    ) -> Result<Vec<T>, String> {
        let mut items = vec![item(self)?];
        while self.is_word(sep) {
            self.pos += 1;
            items.push(item(self)?);
        }
        Ok(items)
    }

    fn obs_followed(&mut self) -> Result<ObsExpr, String> {
        let mut v = self.list("FOLLOWEDBY", Self::obs_or)?;
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            ObsExpr::FollowedBy(v)
        })
    }

    fn obs_or(&mut self) -> Result<ObsExpr, String> {
        let mut v = self.list("OR", Self::obs_and)?;
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            ObsExpr::Or(v)
        })
    }

    fn obs_and(&mut self) -> Result<ObsExpr, String> {
        let mut v = self.list("AND", Self::obs_qualified)?;
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            ObsExpr::And(v)
        })
    }

    fn obs_qualified(&mut self) -> Result<ObsExpr, String> {
        let mut expr = self.obs_primary()?;
        loop {
            let qualifier = if self.is_word("WITHIN") {
                self.pos += 1;
                let n = self.literal()?;
                self.keyword("SECONDS")?;
                format!("WITHIN {n} SECONDS")
            } else if self.is_word("REPEATS") {
                self.pos += 1;
                let n = self.literal()?;
                self.keyword("TIMES")?;
                format!("REPEATS {n} TIMES")
            } else if self.is_word("START") {
                self.pos += 1;
                let a = self.literal()?;
                self.keyword("STOP")?;
                let b = self.literal()?;
                format!("START {a} STOP {b}")
            } else {
                return Ok(expr);
            };
            expr = ObsExpr::Qualified(Box::new(expr), qualifier);
        }
    }

    fn keyword(&mut self, w: &str) -> Result<(), String> {
        if self.is_word(w) {
            self.pos += 1;
            Ok(())
        } else {
            Err(format!("expected {w}, found {}", self.found()))
        }
    }

    fn obs_primary(&mut self) -> Result<ObsExpr, String> {
        match self.peek() {
            Some(Tok::LBrack) => {
                self.pos += 1;
                let e = self.cmp_or()?;
                self.expect(&Tok::RBrack, "']'")?;
                Ok(ObsExpr::Obs(e))
            }
            Some(Tok::LParen) => {
                self.pos += 1;
                let e = self.obs_followed()?;
                self.expect(&Tok::RParen, "')'")?;
                Ok(e)
            }
            _ => Err(format!("expected '[' or '(', found {}", self.found())),
        }
    }

    fn cmp_or(&mut self) -> Result<CmpExpr, String> {
        let mut v = self.list("OR", Self::cmp_and)?;
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            CmpExpr::Or(v)
        })
    }

    fn cmp_and(&mut self) -> Result<CmpExpr, String> {
        let mut v = self.list("AND", Self::cmp_primary)?;
        Ok(if v.len() == 1 {
            v.remove(0)
        } else {
            CmpExpr::And(v)
        })
    }

    fn cmp_primary(&mut self) -> Result<CmpExpr, String> {
        if self.peek() == Some(&Tok::LParen) {
            self.pos += 1;
            let e = self.cmp_or()?;
            self.expect(&Tok::RParen, "')'")?;
            return Ok(e);
        }
        if self.is_word("EXISTS") {
            self.pos += 1;
            let path = self.path()?;
            return Ok(CmpExpr::Cmp(Comparison {
                path,
                negated: false,
                op: Op::Exists,
                values: vec![],
            }));
        }
        let path = self.path()?;
        let negated = self.is_word("NOT");
        if negated {
            self.pos += 1;
        }
        let (op, values) = match self.peek().cloned() {
            Some(Tok::Cmp(op)) => {
                self.pos += 1;
                (op, vec![self.literal()?])
            }
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("IN") => {
                self.pos += 1;
                self.expect(&Tok::LParen, "'(' after IN")?;
                // `IN ()` is grammatical (an empty set, matching nothing).
                let mut values = Vec::new();
                if self.peek() != Some(&Tok::RParen) {
                    values.push(self.literal()?);
                    while self.peek() == Some(&Tok::Comma) {
                        self.pos += 1;
                        values.push(self.literal()?);
                    }
                }
                self.expect(&Tok::RParen, "')'")?;
                (Op::In, values)
            }
            Some(Tok::Word(w)) => {
                let op = match w.to_ascii_uppercase().as_str() {
                    "LIKE" => Op::Like,
                    "MATCHES" => Op::Matches,
                    "ISSUBSET" => Op::IsSubset,
                    "ISSUPERSET" => Op::IsSuperset,
                    _ => return Err(format!("expected an operator, found '{w}'")),
                };
                self.pos += 1;
                (op, vec![self.literal()?])
            }
            _ => {
                return Err(format!(
                    "expected an operator after '{path}', found {}",
                    self.found()
                ));
            }
        };
        Ok(CmpExpr::Cmp(Comparison {
            path,
            negated,
            op,
            values,
        }))
    }

    fn path(&mut self) -> Result<ObjectPath, String> {
        match self.peek() {
            Some(Tok::Path(p)) => {
                let p = p.clone();
                self.pos += 1;
                Ok(p)
            }
            _ => Err(format!("expected an object path, found {}", self.found())),
        }
    }
}

/// Parse a STIX pattern.
pub(crate) fn parse(pattern: &str) -> Result<ObsExpr, String> {
    let mut p = Parser {
        toks: lex(pattern)?,
        pos: 0,
    };
    let e = p.obs_followed()?;
    if p.pos != p.toks.len() {
        return Err(format!("unexpected {} after the pattern", p.found()));
    }
    Ok(e)
}

/// Why a pattern gives no entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Fail {
    /// Well-formed, not expressible.
    Unsupported(String),
    /// Self-contradictory or holding an invalid value.
    Invalid(String),
}

/// One entry's match part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Target {
    pub net: IpNet,
    pub port: Option<PortMatch>,
}

/// Most conjunctions an expression may expand to.
const MAX_TERMS: usize = 1024;

/// What a pattern becomes: its entries, and the reasons of the OR
/// alternatives that could not be enforced and were left out (empty: the
/// whole pattern is enforced).
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Translation {
    pub targets: Vec<Target>,
    pub dropped: Vec<String>,
}

impl Translation {
    fn extend(&mut self, other: Translation) {
        self.targets.extend(other.targets);
        self.dropped.extend(other.dropped);
    }
}

/// Translate a pattern into entries.
///
/// An OR (of observations, or of comparisons inside one) is kept in part:
/// an alternative that cannot be expressed is left out (its reason in
/// [`Translation::dropped`]) as long as another one gives entries, since
/// enforcing some alternatives of an OR matches a subset of what the
/// pattern matches. Nothing else is narrowed: AND, FOLLOWEDBY and
/// qualifiers need every part, so one inexpressible part makes the whole
/// expression unsupported, and an invalid value anywhere rejects the
/// pattern.
pub(crate) fn translate(expr: &ObsExpr, url_ip_hosts: bool) -> Result<Translation, Fail> {
    match expr {
        ObsExpr::Obs(c) => translate_cmp(c, url_ip_hosts),
        ObsExpr::Or(v) => any_of(v.iter().map(|e| translate(e, url_ip_hosts))),
        ObsExpr::And(_) => Err(Fail::Unsupported(
            "observation expressions joined by AND need several observations; a per-packet filter cannot express that".to_string(),
        )),
        ObsExpr::FollowedBy(_) => Err(Fail::Unsupported(
            "FOLLOWEDBY needs an ordered sequence of observations; a per-packet filter cannot express that".to_string(),
        )),
        ObsExpr::Qualified(_, q) => Err(Fail::Unsupported(format!(
            "qualifier {q} cannot be expressed"
        ))),
    }
}

/// The alternatives of an OR: the expressible ones are kept, the others
/// listed as dropped; unsupported (with the first reason) when none is
/// expressible; an invalid alternative invalidates the whole.
fn any_of(
    alternatives: impl Iterator<Item = Result<Translation, Fail>>,
) -> Result<Translation, Fail> {
    let mut out = Translation::default();
    let mut first_unsupported = None;
    let mut kept = 0usize;
    for alt in alternatives {
        match alt {
            Ok(t) => {
                kept += 1;
                out.extend(t);
                if out.targets.len() > MAX_TERMS {
                    return Err(Fail::Unsupported(format!(
                        "pattern expands to more than {MAX_TERMS} alternatives"
                    )));
                }
            }
            Err(Fail::Unsupported(reason)) => {
                first_unsupported.get_or_insert_with(|| reason.clone());
                out.dropped.push(reason);
            }
            Err(e @ Fail::Invalid(_)) => return Err(e),
        }
    }
    match first_unsupported {
        Some(reason) if kept == 0 => Err(Fail::Unsupported(reason)),
        _ => Ok(out),
    }
}

/// One observation's comparison expression: an OR is kept in part (see
/// [`translate`]), anything else is expressed whole or not at all.
fn translate_cmp(expr: &CmpExpr, url_ip_hosts: bool) -> Result<Translation, Fail> {
    if let CmpExpr::Or(v) = expr {
        return any_of(v.iter().map(|e| translate_cmp(e, url_ip_hosts)));
    }
    let mut out = Translation::default();
    for term in dnf(expr)? {
        out.targets.extend(conjunction(&term, url_ip_hosts)?);
    }
    Ok(out)
}

/// Disjunctive normal form; `IN` becomes an OR of `=`.
fn dnf(expr: &CmpExpr) -> Result<Vec<Vec<Comparison>>, Fail> {
    let too_complex = || {
        Fail::Unsupported(format!(
            "pattern expands to more than {MAX_TERMS} alternatives"
        ))
    };
    match expr {
        CmpExpr::Cmp(c) if c.op == Op::In && c.values.is_empty() => Err(Fail::Unsupported(
            format!("'{} IN ()' is an empty set: it matches nothing", c.path),
        )),
        CmpExpr::Cmp(c) if c.op == Op::In && !c.negated => Ok(c
            .values
            .iter()
            .map(|v| {
                vec![Comparison {
                    op: Op::Eq,
                    values: vec![v.clone()],
                    ..c.clone()
                }]
            })
            .collect()),
        CmpExpr::Cmp(c) => Ok(vec![vec![c.clone()]]),
        CmpExpr::Or(v) => {
            let mut out = Vec::new();
            for e in v {
                out.extend(dnf(e)?);
                if out.len() > MAX_TERMS {
                    return Err(too_complex());
                }
            }
            Ok(out)
        }
        CmpExpr::And(v) => {
            let mut out: Vec<Vec<Comparison>> = vec![vec![]];
            for e in v {
                let right = dnf(e)?;
                if out.len() * right.len() > MAX_TERMS {
                    return Err(too_complex());
                }
                out = out
                    .iter()
                    .flat_map(|l| {
                        right.iter().map(move |r| {
                            let mut t = l.clone();
                            t.extend(r.iter().cloned());
                            t
                        })
                    })
                    .collect();
            }
            Ok(out)
        }
    }
}

const SRC: usize = 0;
const DST: usize = 1;
const SIDES: [&str; 2] = ["src", "dst"];

/// What one AND-ed group of comparisons says.
#[derive(Default)]
struct Conj {
    /// `ipv4-addr:value` / `ipv6-addr:value`.
    plain: Option<(String, IpNet)>,
    /// `network-traffic:{src,dst}_ref.value`.
    refs: [Option<IpNet>; 2],
    /// `network-traffic:{src,dst}_ref.type`.
    ref_types: [Option<String>; 2],
    /// `network-traffic:{src,dst}_port`.
    ports: [Option<u16>; 2],
    proto: Option<Proto>,
    url: Option<String>,
    /// Any network-traffic comparison seen.
    traffic: bool,
}

fn string_value(c: &Comparison) -> Result<&str, Fail> {
    match c.values.as_slice() {
        [Literal::Str(s)] => Ok(s),
        [v] => Err(Fail::Invalid(format!(
            "{} compared with {v}, expected a string",
            c.path
        ))),
        _ => Err(Fail::Invalid(format!("{} needs one value", c.path))),
    }
}

fn need_eq(c: &Comparison, also_subset: bool) -> Result<(), Fail> {
    if c.op == Op::Eq || (also_subset && c.op == Op::IsSubset) {
        Ok(())
    } else {
        Err(Fail::Unsupported(format!(
            "operator {} on '{}' cannot be expressed",
            c.op, c.path
        )))
    }
}

fn address(c: &Comparison) -> Result<IpNet, Fail> {
    need_eq(c, true)?;
    parse_net(string_value(c)?.trim()).map_err(|e| Fail::Invalid(format!("{}: {e}", c.path)))
}

fn family(net: &IpNet) -> &'static str {
    match net {
        IpNet::V4(_) => "ipv4-addr",
        IpNet::V6(_) => "ipv6-addr",
    }
}

fn set_once<T: PartialEq + Copy>(slot: &mut Option<T>, value: T, what: &str) -> Result<(), Fail> {
    match slot {
        Some(old) if *old != value => Err(Fail::Unsupported(format!(
            "two different {what} AND-ed in one observation"
        ))),
        _ => {
            *slot = Some(value);
            Ok(())
        }
    }
}

fn conjunction(terms: &[Comparison], url_ip_hosts: bool) -> Result<Vec<Target>, Fail> {
    let mut k = Conj::default();
    for c in terms {
        if c.negated || c.op == Op::Ne {
            return Err(Fail::Unsupported(format!(
                "negated comparison on '{}' cannot be expressed",
                c.path
            )));
        }
        let prop = c.path.prop.as_str();
        match c.path.object.as_str() {
            "ipv4-addr" | "ipv6-addr" if prop == "value" => {
                let net = address(c)?;
                if family(&net) != c.path.object {
                    return Err(Fail::Invalid(format!(
                        "{} holds an {} value '{}'",
                        c.path,
                        if c.path.object == "ipv4-addr" {
                            "IPv6"
                        } else {
                            "IPv4"
                        },
                        string_value(c)?
                    )));
                }
                match &k.plain {
                    Some((_, old)) if *old != net => {
                        return Err(Fail::Unsupported(
                            "two different addresses AND-ed in one observation".to_string(),
                        ));
                    }
                    _ => k.plain = Some((c.path.object.clone(), net)),
                }
            }
            "network-traffic" => {
                k.traffic = true;
                match prop {
                    "src_ref.value" | "dst_ref.value" => {
                        let side = if prop.starts_with("src") { SRC } else { DST };
                        set_once(&mut k.refs[side], address(c)?, "addresses")?;
                    }
                    "src_ref.type" | "dst_ref.type" => {
                        need_eq(c, false)?;
                        let t = string_value(c)?;
                        if t != "ipv4-addr" && t != "ipv6-addr" {
                            return Err(Fail::Unsupported(format!(
                                "{} = '{t}' cannot be expressed (only addresses can)",
                                c.path
                            )));
                        }
                        let side = if prop.starts_with("src") { SRC } else { DST };
                        k.ref_types[side] = Some(t.to_string());
                    }
                    "src_port" | "dst_port" => {
                        need_eq(c, false)?;
                        let port = match c.values.as_slice() {
                            [Literal::Int(n)] => u16::try_from(*n).ok(),
                            [Literal::Str(s)] => s.trim().parse::<u16>().ok(),
                            _ => None,
                        }
                        .ok_or_else(|| {
                            Fail::Invalid(format!(
                                "{} = {} is not a port 0-65535",
                                c.path,
                                c.values.first().map(|v| v.to_string()).unwrap_or_default()
                            ))
                        })?;
                        let side = if prop.starts_with("src") { SRC } else { DST };
                        set_once(&mut k.ports[side], port, "ports")?;
                    }
                    p if p.starts_with("protocols[") && p.ends_with(']') => {
                        need_eq(c, false)?;
                        let name = string_value(c)?.to_ascii_lowercase();
                        match name.as_str() {
                            "tcp" => set_once(&mut k.proto, Proto::Tcp, "transport protocols")?,
                            "udp" => set_once(&mut k.proto, Proto::Udp, "transport protocols")?,
                            // The network layer follows from the address.
                            "ip" | "ipv4" | "ipv6" => {}
                            other => {
                                return Err(Fail::Unsupported(format!(
                                    "protocol '{other}' cannot be expressed (only tcp and udp ports can)"
                                )));
                            }
                        }
                    }
                    _ => {
                        return Err(Fail::Unsupported(format!("cannot express '{}'", c.path)));
                    }
                }
            }
            "url" if prop == "value" => {
                need_eq(c, false)?;
                k.url = Some(string_value(c)?.to_string());
            }
            _ => return Err(Fail::Unsupported(format!("cannot express '{}'", c.path))),
        }
    }
    if let Some(url) = &k.url {
        if terms.len() > 1 {
            return Err(Fail::Unsupported(
                "url:value AND-ed with other comparisons cannot be expressed".to_string(),
            ));
        }
        return url_target(url, url_ip_hosts).map(|t| vec![t]);
    }
    if let Some((_, net)) = k.plain {
        if k.traffic {
            return Err(Fail::Unsupported(
                "an address object AND-ed with network-traffic in one observation: their relation is not stated".to_string(),
            ));
        }
        return Ok(vec![Target { net, port: None }]);
    }
    // network-traffic
    let (side, net) = match k.refs {
        [Some(_), Some(_)] => {
            return Err(Fail::Unsupported(
                "both src_ref and dst_ref: an entry matches one remote address".to_string(),
            ));
        }
        [Some(n), None] => (SRC, n),
        [None, Some(n)] => (DST, n),
        [None, None] => {
            return Err(Fail::Unsupported(
                "network-traffic without src_ref.value or dst_ref.value: a port alone would match every source".to_string(),
            ));
        }
    };
    for (i, t) in k.ref_types.iter().enumerate() {
        if let Some(t) = t
            && t != family(&net)
        {
            return Err(Fail::Invalid(format!(
                "network-traffic:{}_ref.type is '{t}' but {}_ref.value is {net}",
                SIDES[i], SIDES[side]
            )));
        }
    }
    let port = match k.ports {
        [Some(_), Some(_)] => {
            return Err(Fail::Unsupported(
                "both src_port and dst_port: an entry matches one port".to_string(),
            ));
        }
        [Some(p), None] => Some((SRC, p)),
        [None, Some(p)] => Some((DST, p)),
        [None, None] => None,
    };
    let Some((port_side, port)) = port else {
        if let Some(p) = k.proto {
            return Err(Fail::Unsupported(format!(
                "protocol {} without a port cannot be expressed",
                p.name()
            )));
        }
        return Ok(vec![Target { net, port: None }]);
    };
    // The referenced address is the remote end. Its own port is the source
    // port of packets from it; the other end's port is their destination.
    let side = if port_side == side {
        Side::Src
    } else {
        Side::Dst
    };
    let protos = match k.proto {
        Some(p) => vec![p],
        None => vec![Proto::Tcp, Proto::Udp],
    };
    Ok(protos
        .into_iter()
        .map(|proto| Target {
            net,
            port: Some(PortMatch { proto, port, side }),
        })
        .collect())
}

/// `scheme://[user@]host[:port]/...` with an IP-literal host.
fn url_target(url: &str, enabled: bool) -> Result<Target, Fail> {
    let unsupported =
        |why: String| Fail::Unsupported(format!("url:value cannot be expressed ({why})"));
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(unsupported("not an absolute URL".to_string()));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        match v6.split_once(']') {
            Some((h, p)) => (h, p.strip_prefix(':')),
            None => (hostport, None),
        }
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    let Ok(addr) = host.parse::<IpAddr>() else {
        return Err(unsupported(format!(
            "host '{host}' is a name, not an address"
        )));
    };
    let port = match port.filter(|p| !p.is_empty()) {
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| Fail::Invalid(format!("url:value has an invalid port '{p}'")))?,
        None => match scheme.to_ascii_lowercase().as_str() {
            "http" | "ws" => 80,
            "https" | "wss" => 443,
            "ftp" => 21,
            other => return Err(unsupported(format!("no default port for scheme '{other}'"))),
        },
    };
    let shown = match addr {
        IpAddr::V4(a) => format!("{a}:{port}"),
        IpAddr::V6(a) => format!("[{a}]:{port}"),
    };
    if !enabled {
        return Err(unsupported(format!(
            "its host is an IP literal; enable url_ip_hosts to block tcp {shown}"
        )));
    }
    Ok(Target {
        net: IpNet::from(addr),
        port: Some(PortMatch {
            proto: Proto::Tcp,
            port,
            side: Side::Src,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(pattern: &str) -> Result<Vec<String>, Fail> {
        let e = parse(pattern).unwrap_or_else(|err| panic!("{pattern}: {err}"));
        translate(&e, false).map(|v| {
            v.targets
                .into_iter()
                .map(|t| {
                    crate::entry::Entry::new(t.net, t.port, crate::entry::Action::Drop).to_string()
                })
                .collect()
        })
    }

    fn unsupported(pattern: &str) -> String {
        match targets(pattern) {
            Err(Fail::Unsupported(r)) => r,
            other => panic!("{pattern}: {other:?}"),
        }
    }

    fn invalid(pattern: &str) -> String {
        match targets(pattern) {
            Err(Fail::Invalid(r)) => r,
            other => panic!("{pattern}: {other:?}"),
        }
    }

    #[test]
    fn lexing_paths_and_literals() {
        let e = parse("[file:hashes.'SHA-256' = 'a\\'b\\\\c' AND x-foo:bar[*].baz[0] = 7 AND file:size >= -1.5]")
            .unwrap();
        let ObsExpr::Obs(CmpExpr::And(v)) = e else {
            panic!("{e:?}")
        };
        let CmpExpr::Cmp(c) = &v[0] else { panic!() };
        assert_eq!(c.path.to_string(), "file:hashes.'SHA-256'");
        assert_eq!(c.values, vec![Literal::Str("a'b\\c".to_string())]);
        let CmpExpr::Cmp(c) = &v[1] else { panic!() };
        assert_eq!(c.path.prop, "bar[*].baz[0]");
        let CmpExpr::Cmp(c) = &v[2] else { panic!() };
        assert_eq!((c.op, &c.values[0]), (Op::Ge, &Literal::Float(-1.5)));
        assert!(parse("[a:b = t'2020-01-01T00:00:00Z'] WITHIN 5 SECONDS").is_ok());
        assert!(parse("[a:b = h'ff'] REPEATS 5 TIMES START t'2020-01-01T00:00:00Z' STOP t'2021-01-01T00:00:00Z'").is_ok());
        assert!(parse("[a:b IN ('x', 'y') OR NOT-THING]").is_err());
        assert!(
            parse("[a:b NOT LIKE 'x%'] FOLLOWEDBY ([a:c MATCHES '^x'] OR [EXISTS a:d])").is_ok()
        );
    }

    #[test]
    fn syntax_errors() {
        let err = |p: &str| parse(p).unwrap_err();
        assert_eq!(
            err("[ipv4-addr:value = '1.2.3.4'"),
            "expected ']', found the end"
        );
        assert_eq!(
            err("[ipv4-addr:value = '1.2.3.4]"),
            "unterminated string starting at offset 19"
        );
        assert_eq!(
            err("ipv4-addr:value = '1.2.3.4'"),
            "expected '[' or '(', found 'ipv4-addr:value'"
        );
        assert_eq!(
            err("[ipv4-addr:value '1.2.3.4']"),
            "expected an operator after 'ipv4-addr:value', found '1.2.3.4'"
        );
        assert_eq!(
            err("[ipv4-addr:value = '1.2.3.4'] ]"),
            "unexpected ']' after the pattern"
        );
        assert_eq!(
            err("[ipv4-addr:value = @]"),
            "unexpected character '@' at offset 19"
        );
        assert_eq!(
            err("[ipv4-addr: = 'x']"),
            "expected a property name after 'ipv4-addr:' at offset 11"
        );
        assert_eq!(err(""), "expected '[' or '(', found the end");
    }

    #[test]
    fn addresses() {
        assert_eq!(
            targets("[ipv4-addr:value = '198.51.100.1']").unwrap(),
            ["198.51.100.1"]
        );
        assert_eq!(
            targets("[ ipv4-addr:value = '10.0.0.0' ]").unwrap(),
            ["10.0.0.0"]
        );
        assert_eq!(
            targets("[ipv4-addr:value = '223.166.0.0/15']").unwrap(),
            ["223.166.0.0/15"]
        );
        assert_eq!(
            targets("[ipv4-addr:value ISSUBSET '198.51.100.0/24']").unwrap(),
            ["198.51.100.0/24"]
        );
        assert_eq!(
            targets("[ipv6-addr:value = '2001:db8::/32']").unwrap(),
            ["2001:db8::/32"]
        );
        assert_eq!(
            targets("[ipv4-addr:value = '198.51.100.1' OR ipv4-addr:value = '203.0.113.33' OR ipv6-addr:value = '2001:db8::1']").unwrap(),
            ["198.51.100.1", "203.0.113.33", "2001:db8::1"]
        );
        assert_eq!(
            targets("[ipv4-addr:value = '198.51.100.1'] OR [ipv4-addr:value = '198.51.100.2']")
                .unwrap(),
            ["198.51.100.1", "198.51.100.2"]
        );
        assert_eq!(
            targets("[ipv4-addr:value IN ('198.51.100.1', '198.51.100.2')]").unwrap(),
            ["198.51.100.1", "198.51.100.2"]
        );
        assert_eq!(
            targets("([ipv4-addr:value = '198.51.100.1'] OR ([ipv4-addr:value = '198.51.100.2']))")
                .unwrap(),
            ["198.51.100.1", "198.51.100.2"]
        );
        assert_eq!(
            targets("[ipv4-addr:value = '198.51.100.1' AND ipv4-addr:value = '198.51.100.1']")
                .unwrap(),
            ["198.51.100.1"]
        );
    }

    #[test]
    fn network_traffic_mapping() {
        // A source that sent traffic, optionally from a port: its packets.
        assert_eq!(
            targets("[network-traffic:src_ref.type = 'ipv4-addr' AND network-traffic:src_ref.value = '1.2.3.4']").unwrap(),
            ["1.2.3.4"]
        );
        assert_eq!(
            targets("[network-traffic:src_ref.value = '1.2.3.4' AND network-traffic:src_port = '1234' AND network-traffic:protocols[*] = 'tcp']").unwrap(),
            ["tcp 1.2.3.4:1234"]
        );
        // A destination the victim connected to (C2): replies come from it,
        // from that port.
        assert_eq!(
            targets("[network-traffic:dst_ref.type = 'ipv4-addr' AND network-traffic:dst_ref.value = '5.6.7.8' AND network-traffic:dst_port = '5678']").unwrap(),
            ["tcp 5.6.7.8:5678", "udp 5.6.7.8:5678"]
        );
        // An attacker hitting our port 22.
        assert_eq!(
            targets("[network-traffic:src_ref.value = '198.51.100.0/24' AND network-traffic:dst_port = 22 AND network-traffic:protocols[0] = 'TCP']").unwrap(),
            ["tcp 198.51.100.0/24:22 dst"]
        );
        // Our host connected from local port 4444 to a remote: the
        // remote's replies go to 4444.
        assert_eq!(
            targets("[network-traffic:dst_ref.value = '2001:db8::1' AND network-traffic:src_port = 4444 AND network-traffic:protocols[*] = 'udp' AND network-traffic:protocols[*] = 'ipv6']").unwrap(),
            ["udp [2001:db8::1]:4444 dst"]
        );
    }

    #[test]
    fn unsupported_patterns() {
        assert_eq!(
            unsupported("[domain-name:value = 'circl.lu']"),
            "cannot express 'domain-name:value'"
        );
        assert_eq!(
            unsupported(
                "[domain-name:value = 'circl.lu' AND domain-name:resolves_to_refs[*].value = '149.13.33.14']"
            ),
            "cannot express 'domain-name:value'"
        );
        assert_eq!(
            unsupported("[file:hashes.'SHA-256' = 'ab']"),
            "cannot express 'file:hashes.'SHA-256''"
        );
        assert_eq!(
            unsupported("[network-traffic:dst_port = '8443']"),
            "network-traffic without src_ref.value or dst_ref.value: a port alone would match every source"
        );
        assert_eq!(
            unsupported("[domain-name:value = 'circl.lu' AND network-traffic:dst_port = '8443']"),
            "cannot express 'domain-name:value'"
        );
        assert_eq!(
            unsupported("[ipv4-addr:value = '1.2.3.4'] AND [ipv4-addr:value = '5.6.7.8']"),
            "observation expressions joined by AND need several observations; a per-packet filter cannot express that"
        );
        assert!(
            unsupported("[ipv4-addr:value = '1.2.3.4'] FOLLOWEDBY [ipv4-addr:value = '5.6.7.8']")
                .starts_with("FOLLOWEDBY")
        );
        assert_eq!(
            unsupported("[ipv4-addr:value = '1.2.3.4'] WITHIN 10 SECONDS"),
            "qualifier WITHIN 10 SECONDS cannot be expressed"
        );
        assert_eq!(
            unsupported("[ipv4-addr:value != '1.2.3.4']"),
            "negated comparison on 'ipv4-addr:value' cannot be expressed"
        );
        assert_eq!(
            unsupported("[ipv4-addr:value NOT = '1.2.3.4']"),
            "negated comparison on 'ipv4-addr:value' cannot be expressed"
        );
        assert_eq!(
            unsupported("[ipv4-addr:value LIKE '1.2.%']"),
            "operator LIKE on 'ipv4-addr:value' cannot be expressed"
        );
        assert_eq!(
            unsupported("[ipv4-addr:value = '1.2.3.4' AND ipv4-addr:value = '1.2.3.5']"),
            "two different addresses AND-ed in one observation"
        );
        assert_eq!(
            unsupported("[ipv4-addr:value = '1.2.3.4' AND network-traffic:dst_port = 80]"),
            "an address object AND-ed with network-traffic in one observation: their relation is not stated"
        );
        assert_eq!(
            unsupported(
                "[network-traffic:src_ref.value = '1.2.3.4' AND network-traffic:dst_ref.value = '5.6.7.8']"
            ),
            "both src_ref and dst_ref: an entry matches one remote address"
        );
        assert_eq!(
            unsupported(
                "[network-traffic:src_ref.value = '1.2.3.4' AND network-traffic:src_port = 1 AND network-traffic:dst_port = 2]"
            ),
            "both src_port and dst_port: an entry matches one port"
        );
        assert_eq!(
            unsupported(
                "[network-traffic:src_ref.value = '1.2.3.4' AND network-traffic:protocols[*] = 'icmp']"
            ),
            "protocol 'icmp' cannot be expressed (only tcp and udp ports can)"
        );
        assert_eq!(
            unsupported(
                "[network-traffic:src_ref.value = '1.2.3.4' AND network-traffic:protocols[*] = 'tcp']"
            ),
            "protocol tcp without a port cannot be expressed"
        );
        assert_eq!(
            unsupported(
                "[network-traffic:src_ref.type = 'domain-name' AND network-traffic:src_ref.value = 'x.org']"
            ),
            "network-traffic:src_ref.type = 'domain-name' cannot be expressed (only addresses can)"
        );
        assert_eq!(
            unsupported("[network-traffic:extensions.'http-request-ext'.request_method = 'POST']"),
            "cannot express 'network-traffic:extensions.'http-request-ext'.request_method'"
        );
        // Every alternative of an OR inexpressible: the first reason.
        assert_eq!(
            unsupported("[domain-name:value = 'x.org' OR url:value = 'http://x.org/']"),
            "cannot express 'domain-name:value'"
        );
    }

    fn partial(pattern: &str) -> (Vec<String>, Vec<String>) {
        let t = translate(&parse(pattern).unwrap(), false)
            .unwrap_or_else(|e| panic!("{pattern}: {e:?}"));
        let shown = t
            .targets
            .into_iter()
            .map(|t| {
                crate::entry::Entry::new(t.net, t.port, crate::entry::Action::Drop).to_string()
            })
            .collect();
        (shown, t.dropped)
    }

    #[test]
    fn or_keeps_its_expressible_alternatives() {
        // Inside one observation (the common MISP/OpenCTI export).
        assert_eq!(
            partial("[domain-name:value = 'x.example' OR ipv4-addr:value = '198.51.100.7']"),
            (
                vec!["198.51.100.7".to_string()],
                vec!["cannot express 'domain-name:value'".to_string()]
            )
        );
        // Between observations, with a nested OR and an IN.
        assert_eq!(
            partial(
                "[url:value = 'http://x.org/'] OR ([ipv4-addr:value IN ('198.51.100.1', '198.51.100.2')] OR [file:name = 'a'])"
            )
            .0,
            ["198.51.100.1", "198.51.100.2"]
        );
        assert_eq!(
            partial("[ipv4-addr:value = '1.2.3.4'] OR [url:value = 'http://x.org/']").1,
            ["url:value cannot be expressed (host 'x.org' is a name, not an address)"]
        );
        // A whole observation under a qualifier, AND or FOLLOWEDBY is an
        // alternative that is dropped, never narrowed.
        assert_eq!(
            partial(
                "[ipv4-addr:value = '1.2.3.4'] OR ([ipv4-addr:value = '5.6.7.8'] WITHIN 10 SECONDS) OR ([ipv4-addr:value = '9.9.9.9'] FOLLOWEDBY [ipv4-addr:value = '8.8.8.8']) OR ([ipv4-addr:value = '7.7.7.7'] AND [ipv4-addr:value = '6.6.6.6'])"
            ),
            (
                vec!["1.2.3.4".to_string()],
                vec![
                    "qualifier WITHIN 10 SECONDS cannot be expressed".to_string(),
                    "FOLLOWEDBY needs an ordered sequence of observations; a per-packet filter cannot express that".to_string(),
                    "observation expressions joined by AND need several observations; a per-packet filter cannot express that".to_string(),
                ]
            )
        );
        // Nothing narrows through AND: an OR under an AND is whole or
        // nothing, as is an address AND-ed with a domain.
        assert_eq!(
            unsupported(
                "[(network-traffic:src_ref.value = '1.2.3.4' OR domain-name:value = 'x.org') AND network-traffic:dst_port = 22]"
            ),
            "cannot express 'domain-name:value'"
        );
        assert_eq!(
            unsupported("[ipv4-addr:value = '1.2.3.4' AND domain-name:value = 'x.org']"),
            "cannot express 'domain-name:value'"
        );
        assert_eq!(
            unsupported(
                "([ipv4-addr:value = '1.2.3.4'] OR [domain-name:value = 'x.org']) WITHIN 5 SECONDS"
            ),
            "qualifier WITHIN 5 SECONDS cannot be expressed"
        );
        assert_eq!(
            unsupported("([ipv4-addr:value = '1.2.3.4'] OR [domain-name:value = 'x.org']) FOLLOWEDBY [ipv4-addr:value = '5.6.7.8']")
                .split(';')
                .next(),
            Some("FOLLOWEDBY needs an ordered sequence of observations")
        );
        // An invalid alternative still rejects the pattern.
        assert_eq!(
            invalid("[domain-name:value = 'x.org' OR ipv4-addr:value = '1.2.3.4/33']"),
            "ipv4-addr:value: prefix length 33 exceeds 32"
        );
        // Fully expressible: nothing dropped.
        assert!(
            partial("[ipv4-addr:value = '1.2.3.4' OR ipv6-addr:value = '2001:db8::1']")
                .1
                .is_empty()
        );
    }

    #[test]
    fn invalid_patterns() {
        assert_eq!(
            invalid("[ipv4-addr:value = '1.2.3.4/33']"),
            "ipv4-addr:value: prefix length 33 exceeds 32"
        );
        assert_eq!(
            invalid("[ipv4-addr:value = 'example']"),
            "ipv4-addr:value: invalid address 'example'"
        );
        assert_eq!(
            invalid("[ipv4-addr:value = '2001:db8::1']"),
            "ipv4-addr:value holds an IPv6 value '2001:db8::1'"
        );
        assert_eq!(
            invalid("[ipv4-addr:value = 7]"),
            "ipv4-addr:value compared with 7, expected a string"
        );
        assert_eq!(
            invalid(
                "[network-traffic:src_ref.value = '1.2.3.4' AND network-traffic:src_port = 70000]"
            ),
            "network-traffic:src_port = 70000 is not a port 0-65535"
        );
        assert_eq!(
            invalid(
                "[network-traffic:dst_ref.type = 'ipv6-addr' AND network-traffic:dst_ref.value = '5.6.7.8']"
            ),
            "network-traffic:dst_ref.type is 'ipv6-addr' but dst_ref.value is 5.6.7.8/32"
        );
    }

    #[test]
    fn urls() {
        let with = |p: &str| {
            translate(&parse(p).unwrap(), true).map(|v| {
                v.targets
                    .into_iter()
                    .map(|t| {
                        crate::entry::Entry::new(t.net, t.port, crate::entry::Action::Drop)
                            .to_string()
                    })
                    .collect::<Vec<_>>()
            })
        };
        assert_eq!(
            unsupported("[url:value = 'https://158.220.80.167:2967/']"),
            "url:value cannot be expressed (its host is an IP literal; enable url_ip_hosts to block tcp 158.220.80.167:2967)"
        );
        assert_eq!(
            with("[url:value = 'https://158.220.80.167:2967/']").unwrap(),
            ["tcp 158.220.80.167:2967"]
        );
        assert_eq!(
            with("[url:value = 'http://u:p@198.51.100.1/x?y']").unwrap(),
            ["tcp 198.51.100.1:80"]
        );
        assert_eq!(
            with("[url:value = 'https://[2001:db8::1]/']").unwrap(),
            ["tcp [2001:db8::1]:443"]
        );
        assert_eq!(
            with("[url:value = 'https://gloverstech.com/tJWz9/']"),
            Err(Fail::Unsupported(
                "url:value cannot be expressed (host 'gloverstech.com' is a name, not an address)"
                    .to_string()
            ))
        );
        assert_eq!(
            with("[url:value = 'gopher://198.51.100.1/']"),
            Err(Fail::Unsupported(
                "url:value cannot be expressed (no default port for scheme 'gopher')".to_string()
            ))
        );
        assert_eq!(
            with("[url:value = 'http://198.51.100.1:99999/']"),
            Err(Fail::Invalid(
                "url:value has an invalid port '99999'".to_string()
            ))
        );
    }
}
