//! Canonical JSON: compact, with object keys sorted at every level (as `gen.py` computes it
//! with Python's `sort_keys=True`).
//!
//! This is a format other parties recompute byte for byte: record digests (`gen.py --digest`,
//! `verify`'s buckets) and the signed bodies of revocations hash or sign exactly this text, so
//! changing it breaks digests and every existing signature. Pure: no I/O.
//!
//! | value  | text                                                      |
//! |--------|-----------------------------------------------------------|
//! | object | `{` `"key":value` sorted by key (byte order), `,`-joined `}` |
//! | array  | `[` values in order, `,`-joined `]`                         |
//! | other  | serde_json's compact form (strings keep non-ASCII as UTF-8) |

use serde_json::Value;

/// Compact JSON with object keys sorted at every level (Python's `sort_keys=True`).
pub fn canonical_json(v: &Value) -> String {
    let mut out = String::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(x, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn canonical_json_sorts_keys_and_keeps_unicode() {
        let v = json!({"b": 1, "a": {"z": [1, {"y": 2, "x": "Müller"}]}, "c": 1.5});
        assert_eq!(
            canonical_json(&v),
            r#"{"a":{"z":[1,{"x":"Müller","y":2}]},"b":1,"c":1.5}"#
        );
    }
}
