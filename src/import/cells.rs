//! Type rules for imported values, shared by every format.
//!
//! A text cell (CSV, or a spreadsheet's text cell read as CSV would be) becomes:
//! - a number, if it is a JSON number whose value survives exactly (`34`, `-2.5`, `1.50` → 1.5);
//!   a number that would change (a 30-digit integer, 20 significant digits) stays text as written,
//!   and so does one in exponent form or a negative zero (`12E4`, `1e3`, `-0`: in a field
//!   team's sheet those are codes, and as numbers they would read back as 120000.0, 1000.0, -0.0);
//! - `true`/`false`, a JSON array or object (unless it holds a number that would change);
//! - the string inside a JSON-quoted cell (`"34"` → the string 34, so exports round-trip);
//! - otherwise the text exactly as written (dates, `007`, `+44 20 7946 0000`, `null`).
//!
//! Columns named with `--text` are always text as written, except that a JSON-quoted cell is
//! still the text inside its quotes (an export writes a text that looks like a number so, and
//! `--text` on it stored the quote marks).

use serde_json::{Number, Value};

/// The value of a text cell under the rules above (`text`: the column is `--text`).
pub(crate) fn text_cell(raw: &str, text: bool) -> Value {
    if text {
        if raw.len() >= 2 && raw.starts_with('"') && raw.ends_with('"') {
            if let Ok(Value::String(inner)) = serde_json::from_str::<Value>(raw) {
                return Value::String(inner);
            }
        }
        return Value::String(raw.to_string());
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Number(n))
            if raw.contains(['e', 'E']) || (raw.starts_with('-') && n.as_f64() == Some(0.0)) =>
        {
            Value::String(raw.to_string())
        }
        Ok(v @ (Value::Number(_) | Value::Array(_) | Value::Object(_))) => {
            if first_inexact_number(raw).is_none() {
                v
            } else {
                Value::String(raw.to_string())
            }
        }
        Ok(v @ (Value::Bool(_) | Value::String(_))) => v,
        _ => Value::String(raw.to_string()),
    }
}

/// A value as text, for `--text` columns of typed input (JSONL, spreadsheet number cells).
pub(crate) fn as_text(v: &Value) -> Value {
    match v {
        Value::String(_) | Value::Null => v.clone(),
        other => Value::String(crate::formats::canonical_json(other)),
    }
}

/// An inexact number found in JSON text: the key it belongs to (if any) and the number as written.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Inexact {
    /// The most recent object key before the number.
    pub(crate) key: Option<String>,
    /// The number as written.
    pub(crate) number: String,
}

/// Scans JSON text for a number token whose value would not survive parsing into a JSON
/// number (an `f64` or a 64-bit integer), e.g. `123456789012345678901234567890`.
pub(crate) fn first_inexact_number(json: &str) -> Option<Inexact> {
    let b = json.as_bytes();
    let mut i = 0;
    let mut last_string: Option<(usize, usize)> = None;
    let mut key: Option<(usize, usize)> = None;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                last_string = Some((start, i.min(b.len())));
                i += 1;
            }
            b':' => {
                key = last_string;
                i += 1;
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E')
                {
                    i += 1;
                }
                let tok = &json[start..i];
                if !exact(tok) {
                    return Some(Inexact {
                        key: key.map(|(s, e)| json[s..e].to_string()),
                        number: tok.to_string(),
                    });
                }
            }
            _ => i += 1,
        }
    }
    None
}

/// True when the number written as `tok` keeps its value as a JSON number.
fn exact(tok: &str) -> bool {
    let Ok(n) = tok.parse::<Number>() else {
        // Past f64's range (`1e400`: infinite) it is a number that cannot be stored; anything
        // else is not a number at all, which serde_json reports when parsing the whole text.
        return tok.parse::<f64>().map_or(true, f64::is_finite);
    };
    if n.is_i64() || n.is_u64() {
        return true;
    }
    decimal(tok).is_some() && decimal(tok) == decimal(&n.to_string())
}

/// A decimal number as (negative, significant digits, exponent): `-1.50e1` → (true, "15", 0).
fn decimal(s: &str) -> Option<(bool, String, i64)> {
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (mant, exp) = match s.find(['e', 'E']) {
        Some(p) => (&s[..p], s[p + 1..].parse::<i64>().ok()?),
        None => (s, 0),
    };
    let (int, frac) = mant.split_once('.').unwrap_or((mant, ""));
    let mut digits: String = format!("{int}{frac}");
    let mut exp = exp.checked_sub(frac.len() as i64)?;
    let lead = digits.len() - digits.trim_start_matches('0').len();
    digits.drain(..lead);
    while digits.ends_with('0') {
        digits.pop();
        exp += 1;
    }
    if digits.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((neg, digits, exp))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn text_cells_keep_types_only_when_exact() {
        assert_eq!(text_cell("34", false), json!(34));
        assert_eq!(text_cell("-2.5", false), json!(-2.5));
        assert_eq!(text_cell("1.50", false), json!(1.5));
        assert_eq!(text_cell("0.1", false), json!(0.1));
        assert_eq!(text_cell("true", false), json!(true));
        assert_eq!(text_cell("[1, 2]", false), json!([1, 2]));
        assert_eq!(text_cell("\"34\"", false), json!("34"));
        // Past f64's range: kept as written (text), and named as inexact in JSON text.
        assert_eq!(text_cell("1e400", false), json!("1e400"));
        assert_eq!(
            first_inexact_number("{\"n\":1e400}").map(|b| (b.key, b.number)),
            Some((Some("n".to_string()), "1e400".to_string()))
        );
        // --text: as written, but a JSON-quoted cell (an export's) is still its text.
        assert_eq!(text_cell("\"75001\"", true), json!("75001"));
        assert_eq!(text_cell("75001", true), json!("75001"));
        assert_eq!(text_cell("\"a\" b", true), json!("\"a\" b"));
        assert_eq!(text_cell("\"", true), json!("\""));
        // Codes a field sheet holds (newcomer trial 8, finding 12): not 120000.0, 1000.0, -0.0.
        for code in ["12E4", "1e3", "-0", "-0.0", "2.5e-3"] {
            assert_eq!(text_cell(code, false), json!(code), "{code}");
        }
        assert_eq!(text_cell("0", false), json!(0));
        let big = "123456789012345678901234567890";
        assert_eq!(text_cell(big, false), json!(big));
        assert_eq!(
            text_cell("3.14159265358979323846", false),
            json!("3.14159265358979323846")
        );
        assert_eq!(
            text_cell(&format!("[{big}]"), false),
            json!(format!("[{big}]"))
        );
        assert_eq!(
            text_cell("18446744073709551615", false),
            json!(18446744073709551615u64)
        );
        for t in ["007", "2026-03-01", "+44 20", "null", "Ann", "1,5"] {
            assert_eq!(text_cell(t, false), json!(t), "{t}");
        }
        assert_eq!(text_cell("0049", true), json!("0049"));
        assert_eq!(text_cell("34", true), json!("34"));
    }

    #[test]
    fn inexact_numbers_name_their_key() {
        let f = first_inexact_number(
            r#"{"a":"1e999 \"x\"","n":{"big":123456789012345678901234567890}}"#,
        )
        .unwrap();
        assert_eq!(f.key.as_deref(), Some("big"));
        assert_eq!(f.number, "123456789012345678901234567890");
        assert_eq!(
            first_inexact_number(r#"{"a":1.5,"b":-3e2,"c":[0.1,12]}"#),
            None
        );
    }
}
