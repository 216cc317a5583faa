//! Which values of a table must be unique across its records: the unique fields of
//! `fieldsync.toml` and the import keys every laptop of the deployment learnt from the
//! replicated system table `fs_import_keys`.
//!
//! An `import --key F[,G]` records `(table, [F, G])` there (one record per table and key, its id
//! derived from both, so two laptops recording the same key make one record). A record put on
//! one laptop and the same person imported with `--key` on another otherwise become two
//! records with one key, silently: with the key known everywhere, the second of them to reach a
//! laptop logs a name clash there (rule 7 of the merge rules), as a configured unique field does.
//!
//! Key values are compared as text, as the import derives ids from them (`34` and `"34"` are
//! one key); a key of one field is indexed under that field with its text as a JSON string, a
//! key of several under `F,G` with a JSON array of their texts. A configured unique field keeps
//! its own rule (JSON values) and wins over a one-field import key on the same field.
//!
//! | `fs_import_keys` record | value                                                   |
//! |-------------------------|---------------------------------------------------------|
//! | id                      | UUID v5 of [`KEYS_NAMESPACE`], `table 0x00 JSON array of the fields` |
//! | field `table`           | the table the key belongs to (text)                     |
//! | field `key`             | the key's fields, in the import's order (array of text) |

use crate::model::RecordState;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

/// Namespace of the ids of `fs_import_keys` records.
pub const KEYS_NAMESPACE: Uuid = Uuid::from_u128(0x3f1c_8e27_b0d4_4a69_9e12_64c5_d7a8_0b53);

/// The id of the `fs_import_keys` record of `table`'s key `fields`.
pub fn import_key_id(table: &str, fields: &[String]) -> Uuid {
    let mut name = table.as_bytes().to_vec();
    name.push(0);
    name.extend(serde_json::to_vec(fields).unwrap_or_default());
    Uuid::new_v5(&KEYS_NAMESPACE, &name)
}

/// The fields of the `fs_import_keys` record of `table`'s key `fields`.
pub fn import_key_fields(table: &str, fields: &[String]) -> crate::model::Fields {
    let mut m = crate::model::Fields::new();
    m.insert("table".into(), json!(table));
    m.insert("key".into(), json!(fields));
    m
}

/// The table and key fields a live `fs_import_keys` record names (`None` for anything else).
pub(crate) fn parse_import_key(state: &RecordState) -> Option<(String, Vec<String>)> {
    if !state.is_alive() {
        return None;
    }
    let table = state.value("table")?.as_str()?.to_string();
    let key: Vec<String> = state
        .value("key")?
        .as_array()?
        .iter()
        .map(|v| v.as_str().map(str::to_string))
        .collect::<Option<_>>()?;
    (!key.is_empty() && key.iter().all(|k| !k.is_empty())).then_some((table, key))
}

/// Table → its import keys, as the replicated table holds them.
pub(crate) type ImportKeys = BTreeMap<String, Vec<Vec<String>>>;

/// One rule of uniqueness of a table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct UniqueKey {
    /// The name in the unique index and in a name clash: the field, or `F,G`.
    pub(crate) name: String,
    /// The fields.
    pub(crate) fields: Vec<String>,
    /// Compared as text (an import key) rather than as JSON values (a configured field).
    pub(crate) text: bool,
}

impl UniqueKey {
    /// A configured unique field.
    pub(crate) fn configured(field: &str) -> UniqueKey {
        UniqueKey {
            name: field.to_string(),
            fields: vec![field.to_string()],
            text: false,
        }
    }

    /// An import key.
    pub(crate) fn import(fields: &[String]) -> UniqueKey {
        UniqueKey {
            name: fields.join(","),
            fields: fields.to_vec(),
            text: true,
        }
    }

    /// The record's value of this key (`None`: the record has none, so nothing to clash).
    pub(crate) fn value_of(&self, state: &RecordState) -> Option<Value> {
        self.value_in(|f| state.value(f))
    }

    /// [`Self::value_of`] for values read by `get` (an import row's fields).
    pub(crate) fn value_in<'a>(&self, get: impl Fn(&str) -> Option<&'a Value>) -> Option<Value> {
        if !self.text {
            return get(&self.fields[0]).filter(|v| !v.is_null()).cloned();
        }
        let texts: Vec<String> = self
            .fields
            .iter()
            .map(|f| get(f).and_then(key_text))
            .collect::<Option<_>>()?;
        Some(match <[String; 1]>::try_from(texts) {
            Ok([one]) => Value::String(one),
            Err(many) => json!(many),
        })
    }
}

/// A key value as text, as `import --key` reads it (text as is, numbers and booleans as JSON);
/// `None` for what cannot be a key.
pub(crate) fn key_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(_) | Value::Bool(_) => Some(v.to_string()),
        _ => None,
    }
}

/// Whether a record still holds the value `value` a name clash on `name` was logged for:
/// compared as the clash's rule compares (a key of several fields holds an array of texts; a
/// text value also matches a number or boolean written as that text, as import keys compare).
pub(crate) fn still_holds(state: &RecordState, name: &str, value: &Value) -> bool {
    if !state.is_alive() {
        return false;
    }
    if state.value(name) == Some(value) {
        return true;
    }
    match value {
        Value::String(s) => state.value(name).and_then(key_text).as_deref() == Some(s),
        Value::Array(texts) if name.contains(',') => {
            let fields: Vec<&str> = name.split(',').collect();
            fields.len() == texts.len()
                && fields.iter().zip(texts).all(|(f, t)| {
                    t.as_str().is_some()
                        && state.value(f).and_then(key_text).as_deref() == t.as_str()
                })
        }
        _ => false,
    }
}

/// The write behind a record's value of the name-clash field `name`: the field's own, or for an
/// import key of several fields (`F,G`) their texts as an array, stamped by the latest of their
/// writes (who wrote the key last, as a person reading the clash needs it).
pub fn clash_write(state: &RecordState, name: &str) -> Option<crate::model::FieldState> {
    if let Some(f) = state.fields.get(name) {
        return Some(f.clone());
    }
    if !name.contains(',') {
        return None;
    }
    let parts: Vec<&crate::model::FieldState> = name
        .split(',')
        .map(|f| state.fields.get(f))
        .collect::<Option<_>>()?;
    let texts: Option<Vec<String>> = parts
        .iter()
        .map(|p| p.value.as_ref().and_then(key_text))
        .collect();
    Some(crate::model::FieldState {
        value: texts.map(|t| json!(t)),
        stamp: parts.iter().map(|p| p.stamp).max()?,
    })
}

/// The table's rules: its configured unique fields, then its import keys (a one-field key on a
/// configured field left out: the field's rule is already there).
pub(crate) fn rules<'a>(
    configured: impl Iterator<Item = &'a String>,
    keys: Option<&Vec<Vec<String>>>,
) -> Vec<UniqueKey> {
    let mut out: Vec<UniqueKey> = configured.map(|f| UniqueKey::configured(f)).collect();
    for k in keys.into_iter().flatten() {
        if k.len() == 1 && out.iter().any(|u| !u.text && u.name == k[0]) {
            continue;
        }
        out.push(UniqueKey::import(k));
    }
    out
}

impl super::Store {
    /// The unique rules of `table` as stored now: configured fields and import keys.
    pub(crate) fn unique_rules(&self, table: &str) -> Result<Vec<UniqueKey>, super::StoreError> {
        let configured = self.config().unique_fields(table);
        if table.starts_with(crate::model::SYSTEM_PREFIX) {
            return Ok(rules(configured, None));
        }
        let keys: Vec<Vec<String>> = self
            .import_keys()?
            .into_iter()
            .filter(|(t, _)| t == table)
            .map(|(_, k)| k)
            .collect();
        Ok(rules(configured, Some(&keys)))
    }

    /// The records of `table` whose import key (any of the table's, see
    /// [`Store::unique_rules`]) has the value `text` — `A-1`, or `A-1,2024` for a key of two
    /// fields — found through the unique index whoever wrote them (an import, or a `put` at a
    /// gate). Usually one; two while a name clash on that value is open. In id order.
    pub fn ids_by_import_key(
        &self,
        table: &str,
        text: &str,
    ) -> Result<Vec<Uuid>, super::StoreError> {
        let mut out = Vec::new();
        for rule in self.unique_rules(table)?.into_iter().filter(|r| r.text) {
            let value = match rule.fields.len() {
                1 => Value::String(text.trim().to_string()),
                n => {
                    let parts: Vec<String> =
                        text.split(',').map(|p| p.trim().to_string()).collect();
                    if parts.len() != n {
                        continue;
                    }
                    json!(parts)
                }
            };
            for id in self.unique_holders(table, &rule.name, &value)? {
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// The records the unique index lists under `value` of the rule `name` (a field, or `F,G`)
    /// of `table`, in id order: usually one; two while a name clash on it is open.
    pub(crate) fn unique_holders(
        &self,
        table: &str,
        name: &str,
        value: &Value,
    ) -> Result<Vec<Uuid>, super::StoreError> {
        let prefix = super::keys::unique_value(table, name, &value.to_string());
        self.tree()
            .scan_prefix(&prefix)
            .map(|kv| {
                Uuid::from_slice(&kv?.0[prefix.len()..])
                    .map_err(|e| super::StoreError::Decode(e.to_string()))
            })
            .collect()
    }

    /// Records that `table` is imported by `key`, deployment-wide (a no-op once recorded).
    /// Returns true if it was not recorded before (a new key: the import says so).
    pub fn record_import_key(
        &self,
        table: &str,
        key: &[String],
    ) -> Result<bool, super::StoreError> {
        if self.import_key_recorded(table, key)? {
            return Ok(false);
        }
        self.write_system(&[super::LocalOp {
            table: crate::model::IMPORT_KEYS_TABLE.to_string(),
            id: import_key_id(table, key),
            edit: crate::merge::Edit::Put(import_key_fields(table, key)),
        }])?;
        Ok(true)
    }

    /// Drops `key` as an import key of `table`, deployment-wide: its `fs_import_keys` record is
    /// deleted like any record, so the delete reaches every laptop by sync and each stops
    /// keeping the key unique (the write path removes its index, `forget_import_key`). Returns
    /// false if it was not a key of the table here.
    pub fn drop_import_key(&self, table: &str, key: &[String]) -> Result<bool, super::StoreError> {
        if !self.import_key_recorded(table, key)? {
            return Ok(false);
        }
        self.write_system(&[super::LocalOp {
            table: crate::model::IMPORT_KEYS_TABLE.to_string(),
            id: import_key_id(table, key),
            edit: crate::merge::Edit::Delete,
        }])?;
        Ok(true)
    }

    /// Every live import key here: (table, fields), in table order.
    pub fn import_keys(&self) -> Result<Vec<(String, Vec<String>)>, super::StoreError> {
        let mut out = Vec::new();
        for r in self.scan_table(crate::model::IMPORT_KEYS_TABLE) {
            if let Some(k) = parse_import_key(&r?.1.state) {
                if !out.contains(&k) {
                    out.push(k);
                }
            }
        }
        out.sort();
        Ok(out)
    }

    /// Whether `key` (its fields in order) is already an import key of `table` here, live.
    pub fn import_key_recorded(
        &self,
        table: &str,
        key: &[String],
    ) -> Result<bool, super::StoreError> {
        let held = self
            .get(crate::model::IMPORT_KEYS_TABLE, &import_key_id(table, key))?
            .and_then(|r| parse_import_key(&r.state));
        Ok(held.is_some_and(|(t, k)| t == table && k == key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::Hlc;
    use crate::model::FieldState;

    fn state(fields: &[(&str, Value)]) -> RecordState {
        let mut s = RecordState::default();
        let at = Hlc {
            ts: 1,
            node: Uuid::nil(),
        };
        for (k, v) in fields {
            s.fields.insert(
                k.to_string(),
                FieldState {
                    value: Some(v.clone()),
                    stamp: at,
                },
            );
        }
        s.vv.insert(Uuid::nil(), 1);
        s
    }

    #[test]
    fn import_keys_compare_as_text_and_configured_fields_as_json() {
        let s = state(&[("case", json!(34)), ("district", json!("North"))]);
        assert_eq!(
            UniqueKey::import(&["case".into()]).value_of(&s),
            Some(json!("34"))
        );
        assert_eq!(UniqueKey::configured("case").value_of(&s), Some(json!(34)));
        let two = UniqueKey::import(&["case".into(), "district".into()]);
        assert_eq!(two.name, "case,district");
        assert_eq!(two.value_of(&s), Some(json!(["34", "North"])));
        assert!(still_holds(&s, "case,district", &json!(["34", "North"])));
        assert!(still_holds(&s, "case", &json!("34")));
        assert!(!still_holds(&s, "case", &json!("35")));
        // A record without every key field has no key value.
        let one = state(&[("case", json!("C-1"))]);
        assert_eq!(two.value_of(&one), None);
    }

    #[test]
    fn a_configured_field_wins_over_a_one_field_key_on_it() {
        let configured = ["case".to_string()];
        let keys = vec![
            vec!["case".to_string()],
            vec!["name".into(), "district".into()],
        ];
        let r = rules(configured.iter(), Some(&keys));
        assert_eq!(r.len(), 2);
        assert!(!r[0].text);
        assert_eq!(r[1].name, "name,district");
    }

    #[test]
    fn key_records_round_trip_and_ids_are_per_table_and_key() {
        let k = vec!["case_number".to_string()];
        assert_eq!(import_key_id("person", &k), import_key_id("person", &k));
        assert_ne!(import_key_id("person", &k), import_key_id("tent", &k));
        let fields = import_key_fields("person", &k);
        let s = state(
            &fields
                .iter()
                .map(|(f, v)| (f.as_str(), v.clone()))
                .collect::<Vec<_>>(),
        );
        assert_eq!(parse_import_key(&s), Some(("person".to_string(), k)));
    }
}
