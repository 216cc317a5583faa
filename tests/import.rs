//! Bringing existing lists in, as a coordinator would: the real binary on temporary data
//! directories, CSV/JSONL/xlsx/ods files written by the tests themselves, and a real sync
//! between two laptops that imported the same list.

mod common;

use common::Instance;
use serde_json::{json, Value};
use std::io::Write;
use std::path::{Path, PathBuf};

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// A registry export of `n` people without an id column, keyed by `case_number`.
fn registry_csv(n: usize, status_of: impl Fn(usize) -> &'static str) -> String {
    let mut s = String::from("case_number,name,age,status\n");
    for i in 0..n {
        s.push_str(&format!(
            "C-{i:04},Person {i},{},{}\n",
            20 + i % 60,
            status_of(i)
        ));
    }
    s
}

/// Exported records (JSONL) as values, in id order.
fn export(inst: &Instance, table: &str) -> Vec<Value> {
    inst.ok(&["export", table]).lines()
}

/// The record whose `field` is `value`.
fn find(records: &[Value], field: &str, value: &str) -> Value {
    records
        .iter()
        .find(|r| r["fields"][field] == value)
        .unwrap_or_else(|| panic!("no record with {field} = {value}: {records:?}"))
        .clone()
}

#[test]
fn keyed_import_twice_is_a_no_op_and_a_changed_row_is_an_edit_with_history() {
    let a = Instance::new();
    let file = a.file("registry.csv", registry_csv(50, |_| "missing"));
    let first = a
        .ok(&["import", "person", path_str(&file), "--key", "case_number"])
        .json();
    assert_eq!(
        first,
        json!({"table": "person", "records": 50, "inserted": 50, "updated": 0,
               "unchanged": 0, "deleted_kept": 0, "changes": [], "kept_edited": 0,
               "kept": [], "kept_rows": 0, "new_key": ["case_number"], "key_clashes": 0, "mixed_types": []})
    );
    let before = a.snapshot();
    let second = a
        .ok(&["import", "person", path_str(&file), "--key", "case_number"])
        .json();
    assert_eq!(
        (
            &second["records"],
            &second["inserted"],
            &second["updated"],
            &second["unchanged"]
        ),
        (&json!(50), &json!(0), &json!(0), &json!(50))
    );
    assert_eq!(second["new_key"], Value::Null, "the key was one already");
    // The fingerprint includes the key record: said, with the digest of the records alone (an
    // export imported elsewhere matches that one, not this).
    let said = a.ok(&["digest", "--human"]).stdout;
    assert!(
        said.contains("(and 1 import key, fieldsync's own)")
            && said.contains(
                "fieldsync's own records are in it too; `fieldsync digest person` compares the \
                 records of those tables alone."
            ),
        "{said}"
    );
    assert_eq!(a.snapshot(), before, "an unchanged import writes nothing");
    // Another key would bind every laptop too: the import says so before it is made one.
    let said = a
        .ok(&[
            "import",
            "person",
            path_str(&file),
            "--key",
            "name",
            "--dry-run",
            "--human",
        ])
        .stdout;
    assert!(
        said.contains(
            "Importing would make name the import key of person on every laptop of the \
             deployment"
        ),
        "{said}"
    );
    assert_eq!(a.digest(&["person"]).0, 50);

    // In the field, someone adds a note to C-0003 and deletes C-0004.
    let records = export(&a, "person");
    let c3 = find(&records, "case_number", "C-0003")["id"]
        .as_str()
        .unwrap()
        .to_string();
    let c4 = find(&records, "case_number", "C-0004")["id"]
        .as_str()
        .unwrap()
        .to_string();
    // The coordinator names records by their case number, as the registry does.
    a.ok(&[
        "patch",
        "person",
        "C-0003",
        r#"{"notes":"seen at the river"}"#,
    ]);
    let said = a.ok(&["delete", "person", "C-0004", "--human"]).stdout;
    assert_eq!(said, format!("Deleted person C-0004 (id {c4}).\n"));
    assert_eq!(
        a.ok(&["get", "person", "C-0003"]).json()["id"],
        c3.as_str(),
        "a key value names the record imported under it"
    );
    a.run(&["get", "person", "C-9999"]).fails(
        1,
        &["person has no record with the id or import key \"C-9999\""],
    );

    // The registry's next export: C-0003 found, C-0004 too, C-0050 new.
    let changed = registry_csv(51, |i| if i == 3 || i == 4 { "found" } else { "missing" });
    let file2 = a.file("registry2.csv", changed);
    // What a re-import overwrites is said: first as a dry run, which writes nothing.
    let before = a.snapshot();
    let import2 = |extra: &[&str]| {
        let mut args = vec!["import", "person", path_str(&file2), "--key", "case_number"];
        args.extend_from_slice(extra);
        a.ok(&args)
    };
    let dry = import2(&["--dry-run"]).json();
    let changes = json!([{"record": c3, "key": "C-0003", "field": "status",
                          "old": "missing", "new": "found"}]);
    assert_eq!(
        dry,
        json!({"table": "person", "records": 51, "inserted": 1, "updated": 1,
               "unchanged": 48, "deleted_kept": 1, "changes": changes, "kept_edited": 0,
               "kept": [], "kept_rows": 0, "new_key": null, "key_clashes": 0, "mixed_types": [], "dry_run": true})
    );
    assert_eq!(a.snapshot(), before, "a dry run writes nothing");
    let said = import2(&["--dry-run", "--human"]).stdout;
    assert!(
        said.starts_with("Dry run, nothing written: importing 51 rows into person would make 1 new, 1 changed, 48 already as in the file")
            && said.contains("  C-0003: status \"missing\" → \"found\"\n"),
        "{said}"
    );
    // A field the record did not have is "(empty)" before, not JSON's null (trial 8, 16).
    let aged = a.file("aged.csv", "case_number,district\nC-0003,Jos South\n");
    let said = a
        .ok(&[
            "import",
            "person",
            path_str(&aged),
            "--key",
            "case_number",
            "--dry-run",
            "--human",
        ])
        .stdout;
    assert!(
        said.contains("  C-0003: district (empty) → \"Jos South\"\n"),
        "{said}"
    );
    let third = import2(&[]).json();
    assert_eq!(
        third,
        json!({"table": "person", "records": 51, "inserted": 1, "updated": 1,
               "unchanged": 48, "deleted_kept": 1, "changes": changes, "kept_edited": 0,
               "kept": [], "kept_rows": 0, "new_key": null, "key_clashes": 0, "mixed_types": []})
    );
    let rec = a.ok(&["get", "person", &c3]).json();
    assert_eq!(
        rec["fields"],
        json!({"case_number": "C-0003", "name": "Person 3", "age": 23, "status": "found",
               "notes": "seen at the river"}),
        "the file's columns are set, a field added in the field is kept"
    );
    let history = a.ok(&["history", "person", "C-0003"]).lines();
    assert_eq!(history, a.ok(&["history", "person", &c3]).lines());
    let kinds: Vec<&Value> = history.iter().map(|h| &h["kind"]).collect();
    assert_eq!(
        kinds,
        [&json!("create"), &json!("update"), &json!("update")]
    );
    assert_eq!(
        history[2]["changes"],
        json!([{"field": "status", "old": "missing", "new": "found"}])
    );
    a.run(&["get", "person", &c4]).fails(1, &["deleted"]);
    assert_eq!(
        a.digest(&["person"]).0,
        50,
        "50 live: 51 rows, one deleted here"
    );
}

#[test]
fn a_file_without_ids_needs_a_key_or_new_ids() {
    let a = Instance::new();
    a.put("person", r#"{"name":"existing"}"#);
    let before = a.snapshot();
    let csv = a.file("people.csv", "name,age\nAnn,3\nBo,4\n");
    a.run(&["import", "person", path_str(&csv)]).fails(
        2,
        &[
            "no id column",
            "--key FIELD",
            "--new-ids",
            "every row a new record",
        ],
    );
    let jsonl = a.file("people.jsonl", "{\"name\":\"Ann\"}\n");
    a.run(&["import", "person", path_str(&jsonl)])
        .fails(2, &["line 1", "--key FIELD", "--new-ids"]);
    a.run(&["import", "person", path_str(&csv), "--key", "phone"])
        .fails(2, &["\"phone\"", "not a column", "\"name\", \"age\""]);
    assert_eq!(a.snapshot(), before, "nothing written by a refused import");

    // --new-ids says it explicitly: every row is a new record, every time.
    for _ in 0..2 {
        let r = a
            .ok(&["import", "person", path_str(&csv), "--new-ids"])
            .json();
        assert_eq!(r["inserted"], 2);
    }
    assert_eq!(a.digest(&["person"]).0, 5);
    // A key new to the table that its records already share: the import says how many values
    // become name clashes (each one, on every laptop), and how to undo a wrong key.
    let cy = a.file("cy.csv", "name,age\nCy,5\n");
    let dry = a
        .ok(&[
            "import",
            "person",
            path_str(&cy),
            "--key",
            "name",
            "--dry-run",
        ])
        .json();
    assert_eq!(
        (&dry["new_key"], &dry["key_clashes"]),
        (&json!(["name"]), &json!(2)),
        "{dry}"
    );
    let said = a
        .ok(&[
            "import",
            "person",
            path_str(&cy),
            "--key",
            "name",
            "--dry-run",
            "--human",
        ])
        .stdout;
    assert!(
        said.contains(
            "2 values of name were already shared by several records of person: each would be a \
             name clash on every laptop"
        ) && said.contains("the key is wrong: drop it as above"),
        "{said}"
    );
    // A table imported by a key: its key is named when a file comes without --key.
    let keyed = a.file("keyed.csv", "case,name\nK-1,Kim\n");
    a.ok(&["import", "person", path_str(&keyed), "--key", "case"]);
    a.run(&["import", "person", path_str(&keyed)]).fails(
        2,
        &["person is imported by the key case, a column of this file too: add --key case"],
    );
    // A header and no rows: nothing imported, and no key made from it.
    let header_only = a.file("header.csv", "code,name\n");
    let r = a
        .ok(&["import", "shelter", path_str(&header_only), "--key", "code"])
        .json();
    assert_eq!(
        (&r["records"], &r["new_key"]),
        (&json!(0), &Value::Null),
        "{r}"
    );
    let said = a
        .ok(&[
            "import",
            "shelter",
            path_str(&header_only),
            "--key",
            "code",
            "--human",
        ])
        .stdout;
    assert!(said.contains("The file holds no rows"), "{said}");
    // A new table named like an existing one is most likely a typo: said (a newcomer's).
    let said = a
        .ok(&[
            "import",
            "peson",
            path_str(&csv),
            "--new-ids",
            "--dry-run",
            "--human",
        ])
        .stdout;
    assert!(
        said.contains("peson is a new table on this laptop: did you mean person?"),
        "{said}"
    );
    let said = a
        .ok(&[
            "import",
            "person",
            path_str(&csv),
            "--new-ids",
            "--dry-run",
            "--human",
        ])
        .stdout;
    assert!(!said.contains("new table"), "{said}");
}

#[test]
fn csv_dialects_semicolons_tabs_capital_extensions_bom_crlf_and_quoted_newlines() {
    let a = Instance::new();
    let semi = a.file("semi.csv", "name;age;status\nAnn;3;missing\n");
    a.ok(&["import", "person", path_str(&semi), "--key", "name"]);
    let upper = a.file("people.CSV", "name,age,status\nBo,4,found\n");
    a.ok(&["import", "person", path_str(&upper), "--key", "name"]);
    let tsv = a.file("people.tsv", "name\tage\tstatus\nCy\t5\tmissing\n");
    a.ok(&["import", "person", path_str(&tsv), "--key", "name"]);
    // A header without the delimiter in it needs --delimiter.
    let given = a.file("given.csv", "name|age|status\nDi|6|found\n");
    a.ok(&[
        "import",
        "person",
        path_str(&given),
        "--key",
        "name",
        "--delimiter",
        "|",
    ]);
    // Excel's "CSV UTF-8": a byte order mark, CRLF, a quoted cell with a line break in it.
    let excel = a.file(
        "excel.csv",
        "\u{feff}name,age,status,notes\r\nEd,7,missing,\"line one\r\nline two, with comma\"\r\n",
    );
    a.ok(&["import", "person", path_str(&excel), "--key", "name"]);

    let records = export(&a, "person");
    assert_eq!(records.len(), 5);
    let fields = |name: &str| find(&records, "name", name)["fields"].clone();
    assert_eq!(
        fields("Ann"),
        json!({"name": "Ann", "age": 3, "status": "missing"})
    );
    assert_eq!(
        fields("Bo"),
        json!({"name": "Bo", "age": 4, "status": "found"})
    );
    assert_eq!(
        fields("Cy"),
        json!({"name": "Cy", "age": 5, "status": "missing"})
    );
    assert_eq!(
        fields("Di"),
        json!({"name": "Di", "age": 6, "status": "found"})
    );
    assert_eq!(
        fields("Ed"),
        json!({"name": "Ed", "age": 7, "status": "missing",
               "notes": "line one\r\nline two, with comma"})
    );
}

#[test]
fn types_dates_stay_as_written_text_columns_and_inexact_numbers() {
    let a = Instance::new();
    let big = "123456789012345678901234567890";
    let csv = a.file(
        "types.csv",
        format!(
            "case,postcode,phone,born,amount,ok,tags,big,quoted\n\
             A-1,01234,12345,2026-03-01,1.50,true,\"[1,2]\",{big},\"\"\"34\"\"\"\n"
        ),
    );
    a.ok(&[
        "import",
        "person",
        path_str(&csv),
        "--key",
        "case",
        "--text",
        "phone",
    ]);
    assert_eq!(
        export(&a, "person")[0]["fields"],
        json!({"case": "A-1", "postcode": "01234", "phone": "12345", "born": "2026-03-01",
               "amount": 1.5, "ok": true, "tags": [1, 2], "big": big, "quoted": "34"})
    );
    // A column read half as numbers and half as text is said (postcodes with and without a
    // leading zero, a decimal comma from a European spreadsheet); not for a --text column.
    let mixed = a.file(
        "shelters.csv",
        "name;postcode;weight\nNorth;75001;80\nSouth;01000;70,5\nEast;75002;75\n",
    );
    let dry = |extra: &[&str]| {
        let mut args = vec![
            "import",
            "shelter",
            path_str(&mixed),
            "--key",
            "name",
            "--dry-run",
        ];
        args.extend_from_slice(extra);
        a.ok(&args)
    };
    assert_eq!(
        dry(&[]).json()["mixed_types"],
        json!([{"field": "postcode", "numbers": 2, "texts": 1, "decimal_commas": 0},
               {"field": "weight", "numbers": 2, "texts": 1, "decimal_commas": 1}])
    );
    assert_eq!(
        dry(&["--text", "postcode"]).json()["mixed_types"],
        json!([{"field": "weight", "numbers": 2, "texts": 1, "decimal_commas": 1}])
    );
    let said = dry(&["--human"]).stdout;
    assert!(
        said.contains("Read as numbers in some rows and as text in others: postcode (2 as numbers, 1 as text)")
            && said.contains("with `--text postcode`"),
        "{said}"
    );
    // JSONL states its types, so a number that would change is refused, naming the field.
    let before = a.snapshot();
    let jsonl = a.file(
        "big.jsonl",
        format!("{{\"case\":\"A-2\",\"n\":1}}\n{{\"case\":\"A-3\",\"registry_no\":{big}}}\n"),
    );
    a.run(&["import", "person", path_str(&jsonl), "--key", "case"])
        .fails(2, &["line 2", "\"registry_no\"", big, "quotes"]);
    assert_eq!(a.snapshot(), before);
}

#[test]
fn bad_input_names_the_line_and_column_and_imports_nothing() {
    let a = Instance::new();
    a.put("person", r#"{"name":"existing"}"#);
    let before = a.snapshot();
    let cases: Vec<(PathBuf, Vec<&str>, Vec<&str>)> = vec![
        (
            a.file("ragged.csv", "case,name\nA-1,Ann\nA-2\n"),
            vec!["--key", "case"],
            vec!["line 3", "1 cells", "header has 2", "delimiter"],
        ),
        (
            a.file(
                "badid.csv",
                "name,id\nAnn,6f1c2b7e-3d4a-4e5f-8a9b-0c1d2e3f4a5b\nBo,nope\n",
            ),
            vec![],
            vec!["line 3, column 2 (id)", "\"nope\"", "UUID"],
        ),
        (
            a.file("nokey.csv", "case,name\nA-1,Ann\n,Bo\n"),
            vec!["--key", "case"],
            vec!["line 3, column 1 (case)", "key is empty"],
        ),
        (
            a.file("dup.csv", "case,name\nA-1,Ann\nA-2,Bo\nA-1,Ann again\n"),
            vec!["--key", "case"],
            vec!["line 4", "line 2", "case = \"A-1\""],
        ),
        (
            a.file(
                "dup2.csv",
                "case,district,name\nA-1,5,Ann\nA-1,6,Bo\nA-1,5,Cy\n",
            ),
            vec!["--key", "case,district"],
            vec!["line 4", "line 2", "case = \"A-1\", district = \"5\""],
        ),
        (
            // Larger than one chunk (1,000 rows): the repeat is found across staged chunks.
            a.file(
                "dup-far.csv",
                format!(
                    "{}C-0001,again,1,found\n",
                    registry_csv(1500, |_| "missing")
                ),
            ),
            vec!["--key", "case_number"],
            vec!["line 1502 repeats line 3", "case_number"],
        ),
        (
            a.file("latin1.csv", b"case,name\nA-1,M\xfcller\n"),
            vec!["--key", "case"],
            vec!["line 2, column 2 (name)", "UTF-8"],
        ),
        (
            a.file("bad.jsonl", "{\"case\":\"A-1\"}\n{\"case\":\n"),
            vec!["--key", "case"],
            vec!["line 2", "malformed JSON"],
        ),
        // A newcomer's try (session 14): lines as an editor numbers them after CRLF line ends
        // (what a spreadsheet program saves), not one short.
        (
            a.file("dup-crlf.csv", "case;name\r\nA-1;x\r\nA-2;y\r\nA-1;z\r\n"),
            vec!["--key", "case"],
            vec!["line 4 repeats line 2"],
        ),
        (
            a.file("ragged-crlf.csv", "case,name\r\nA-1,Ann\r\nA-2,Bo,x\r\n"),
            vec!["--key", "case"],
            vec!["line 3: the CSV row has 3 cells"],
        ),
        // A quote never closed swallowed the rows after it, exit 0.
        (
            a.file("unclosed.csv", "case;name\r\nA-1;\"unclosed\r\nA-2;y\r\n"),
            vec!["--key", "case"],
            vec!["line 2, column 2 (name)", "never closed"],
        ),
        // A misspelt --text left its column to the type rules, silently.
        (
            a.file("phones.csv", "case,phone\nA-1,0044123\n"),
            vec!["--key", "case", "--text", "phnoe"],
            vec![
                "the --text field \"phnoe\" is not a column",
                "\"case\", \"phone\"",
            ],
        ),
        (
            a.file("phones.jsonl", "{\"case\":\"A-1\",\"phone\":44123}\n"),
            vec!["--key", "case", "--text", "phnoe"],
            vec!["\"phnoe\" is in no line", "\"case\", \"phone\""],
        ),
        // "case, name" splits into "case" and " name".
        (
            a.file("two.csv", "case,name\nA-1,Ann\n"),
            vec!["--key", "case, name"],
            vec![
                "\" name\" is not a column",
                "did you mean \"name\"",
                "no space",
            ],
        ),
        (
            a.file("twice.csv", "case,name\nA-1,Ann\n"),
            vec!["--key", "case,case"],
            vec!["--key names \"case\" twice"],
        ),
        // Excel's "Unicode Text" (UTF-16), saved as .txt (read as JSONL) or .csv.
        (
            a.file("unicode.txt", b"\xFF\xFEc\x00a\x00s\x00e\x00"),
            vec!["--key", "case"],
            vec!["the file is UTF-16 text", "CSV UTF-8"],
        ),
        (
            a.file("unicode.csv", b"\xFF\xFEc\x00a\x00s\x00e\x00"),
            vec!["--key", "case"],
            vec!["the file is UTF-16 text", "CSV UTF-8"],
        ),
        // A registry's own numbering in a column named id (a newcomer's: no way in).
        (
            a.file("own-ids.csv", "id,name\n1,Ann\n"),
            vec![],
            vec![
                "line 2, column 1 (id)",
                "rename the column",
                "--key registry_id",
            ],
        ),
        (
            a.file("own-ids2.csv", "id,name\n1,Ann\n"),
            vec!["--key", "id"],
            vec!["--key id", "rename the column", "--key registry_id"],
        ),
        (
            a.file("own-ids.jsonl", "{\"id\":1,\"name\":\"Ann\"}\n"),
            vec![],
            vec!["line 1", "\"id\" is a number", "--key registry_id"],
        ),
        (
            a.file("comma.csv", "case,name\nA-1,Ann\n"),
            vec!["--key", "case,"],
            vec!["has an empty field name (a comma too many?)"],
        ),
        (
            a.file("misspelt.jsonl", "{\"case\":\"A-1\",\"name\":\"Ann\"}\n"),
            vec!["--key", "case_numbr"],
            vec![
                "line 1",
                "no such field",
                "\"case\", \"name\"",
                "spelling of --key",
            ],
        ),
        (
            a.file("typo.csv", "case_number,name\nA-1,Ann\n"),
            vec!["--key", "case_nuber"],
            vec!["did you mean \"case_number\"?"],
        ),
        (
            a.file("empty.csv", ""),
            vec!["--key", "case"],
            vec!["the file is empty"],
        ),
        (
            a.file("renamed.ods", "case;name\r\nA-1;Ann\r\n"),
            vec!["--key", "case"],
            vec!["renamed.ods: not a .ods spreadsheet", "rename it to .csv"],
        ),
        (
            a.file("one-column.csv", "case;name\nA-1;Ann\n"),
            vec!["--key", "case", "--delimiter", ","],
            vec!["\"case\" is not a column", "--delimiter sets it"],
        ),
    ];
    // An .ods is read whole: one too large for that is refused before it is read (a sparse
    // file: nothing of it is parsed).
    let huge = a.file("huge.ods", "");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len(17 << 20)
        .unwrap();
    let mut cases = cases;
    cases.push((
        huge,
        vec!["--key", "case"],
        vec!["17 MB", "up to 16 MB", ".xlsx"],
    ));
    // A folder named instead of a file.
    let folder = a.scratch("lists");
    std::fs::create_dir_all(&folder).unwrap();
    cases.push((
        folder,
        vec!["--key", "case"],
        vec!["lists is a folder, not a file", "lists/people.csv"],
    ));
    for (file, opts, words) in &cases {
        let mut args = vec!["import", "person", path_str(file)];
        args.extend(opts);
        a.run(&args).fails(2, words);
    }
    assert_eq!(
        a.snapshot(),
        before,
        "nothing written by any refused import"
    );
}

/// The people of the spreadsheet tests, as CSV.
const PEOPLE_CSV: &str = "case,name,age,registered,verified,phone\n\
    A-1,Ann,34,2026-03-01,true,0044123\n\
    A-2,Bo Müller,7,2026-03-02,false,+1 555 0100\n\
    B-1,Cy,81,,true,\n";

/// The same people as spreadsheet cells: (text, number, date (y, m, d), bool).
enum Cell {
    Text(&'static str),
    Num(f64),
    Date(u16, u8, u8),
    Bool(bool),
    Empty,
}

fn people_cells() -> Vec<Vec<Cell>> {
    use Cell::*;
    vec![
        vec![
            Text("case"),
            Text("name"),
            Text("age"),
            Text("registered"),
            Text("verified"),
            Text("phone"),
        ],
        vec![
            Text("A-1"),
            Text("Ann"),
            Num(34.0),
            Date(2026, 3, 1),
            Bool(true),
            Text("0044123"),
        ],
        vec![
            Text("A-2"),
            Text("Bo Müller"),
            Num(7.0),
            Date(2026, 3, 2),
            Bool(false),
            Text("+1 555 0100"),
        ],
        vec![Text("B-1"), Text("Cy"), Num(81.0), Empty, Bool(true), Empty],
    ]
}

fn write_xlsx(path: &Path) {
    use rust_xlsxwriter::{ExcelDateTime, Format, Workbook};
    let mut wb = Workbook::new();
    // The data is on the second sheet, so --sheet is needed.
    let notes = wb.add_worksheet();
    notes.set_name("Notes").unwrap();
    notes
        .write_string(0, 0, "exported from the registry")
        .unwrap();
    let ws = wb.add_worksheet();
    ws.set_name("People").unwrap();
    let date = Format::new().set_num_format("dd/mm/yyyy");
    for (r, row) in people_cells().iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            let (r, c) = (r as u32, c as u16);
            match cell {
                Cell::Text(s) => ws.write_string(r, c, *s).map(|_| ()),
                Cell::Num(n) => ws.write_number(r, c, *n).map(|_| ()),
                Cell::Bool(b) => ws.write_boolean(r, c, *b).map(|_| ()),
                Cell::Date(y, m, d) => {
                    let dt = ExcelDateTime::from_ymd(*y, *m, *d).unwrap();
                    ws.write_datetime_with_format(r, c, &dt, &date).map(|_| ())
                }
                Cell::Empty => Ok(()),
            }
            .unwrap();
        }
    }
    wb.save(path).unwrap();
}

/// A minimal OpenDocument spreadsheet, written as the format defines it: a zip whose first
/// entry is the uncompressed `mimetype`, a manifest, and `content.xml` with the table.
fn write_ods(path: &Path) {
    let mut rows = String::new();
    for row in people_cells() {
        rows.push_str("<table:table-row>");
        for cell in row {
            rows.push_str(&match cell {
                Cell::Text(s) => format!(
                    "<table:table-cell office:value-type=\"string\"><text:p>{s}</text:p></table:table-cell>"
                ),
                Cell::Num(n) => format!(
                    "<table:table-cell office:value-type=\"float\" office:value=\"{n}\"><text:p>{n}</text:p></table:table-cell>"
                ),
                Cell::Date(y, m, d) => format!(
                    "<table:table-cell office:value-type=\"date\" office:date-value=\"{y:04}-{m:02}-{d:02}\"><text:p>{d:02}/{m:02}/{y}</text:p></table:table-cell>"
                ),
                Cell::Bool(b) => format!(
                    "<table:table-cell office:value-type=\"boolean\" office:boolean-value=\"{b}\"><text:p>{}</text:p></table:table-cell>",
                    if b { "TRUE" } else { "FALSE" }
                ),
                Cell::Empty => "<table:table-cell/>".to_string(),
            });
        }
        rows.push_str("</table:table-row>");
    }
    let content = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
         <office:document-content \
         xmlns:office=\"urn:oasis:names:tc:opendocument:xmlns:office:1.0\" \
         xmlns:table=\"urn:oasis:names:tc:opendocument:xmlns:table:1.0\" \
         xmlns:text=\"urn:oasis:names:tc:opendocument:xmlns:text:1.0\" office:version=\"1.2\">\
         <office:body><office:spreadsheet><table:table table:name=\"People\">{rows}\
         </table:table></office:spreadsheet></office:body></office:document-content>"
    );
    let manifest = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
        <manifest:manifest xmlns:manifest=\"urn:oasis:names:tc:opendocument:xmlns:manifest:1.0\" manifest:version=\"1.2\">\
        <manifest:file-entry manifest:full-path=\"/\" manifest:media-type=\"application/vnd.oasis.opendocument.spreadsheet\"/>\
        <manifest:file-entry manifest:full-path=\"content.xml\" manifest:media-type=\"text/xml\"/>\
        </manifest:manifest>";
    let mut z = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let stored =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, body) in [
        ("mimetype", "application/vnd.oasis.opendocument.spreadsheet"),
        ("META-INF/manifest.xml", manifest),
        ("content.xml", content.as_str()),
    ] {
        z.start_file(name, stored).unwrap();
        z.write_all(body.as_bytes()).unwrap();
    }
    z.finish().unwrap();
}

#[test]
fn xlsx_and_ods_import_as_the_same_records_as_csv() {
    let from_csv = Instance::new();
    let csv = from_csv.file("people.csv", PEOPLE_CSV);
    from_csv.ok(&["import", "person", path_str(&csv), "--key", "case"]);
    let expected = export(&from_csv, "person");
    assert_eq!(
        find(&expected, "case", "A-1")["fields"],
        json!({"case": "A-1", "name": "Ann", "age": 34, "registered": "2026-03-01",
               "verified": true, "phone": "0044123"})
    );

    let x = Instance::new();
    let xlsx = x.scratch("People.XLSX");
    write_xlsx(&xlsx);
    // The first sheet has no "case" column: the key check names the columns it does have.
    x.run(&["import", "person", path_str(&xlsx), "--key", "case"])
        .fails(2, &["\"case\"", "not a column"]);
    x.run(&[
        "import",
        "person",
        path_str(&xlsx),
        "--key",
        "case",
        "--sheet",
        "Nope",
    ])
    .fails(2, &["no sheet \"Nope\"", "\"Notes\", \"People\""]);
    let r = x
        .ok(&[
            "import",
            "person",
            path_str(&xlsx),
            "--key",
            "case",
            "--sheet",
            "People",
        ])
        .json();
    assert_eq!(r["inserted"], 3);
    assert_eq!(
        export(&x, "person"),
        expected,
        "xlsx gives the CSV's records"
    );
    let again = x
        .ok(&[
            "import",
            "person",
            path_str(&xlsx),
            "--key",
            "case",
            "--sheet",
            "People",
        ])
        .json();
    assert_eq!(again["unchanged"], 3);

    let o = Instance::new();
    let ods = o.scratch("people.ods");
    write_ods(&ods);
    o.ok(&["import", "person", path_str(&ods), "--key", "case"]);
    assert_eq!(
        export(&o, "person"),
        expected,
        "ods gives the CSV's records"
    );
}

#[test]
fn the_same_keyed_row_imported_on_two_laptops_is_one_record_after_sync() {
    use common::agent::{self, Agent};
    let tmp = tempfile::tempdir().unwrap();
    // Both laptops join the deployment first: derived ids depend on it.
    let [a, b]: [_; 2] = agent::members(tmp.path(), &["a", "b"]).try_into().unwrap();
    let list = tmp.path().join("registry.csv");
    std::fs::write(&list, "case,name,status\nA-1,Ann,missing\nA-2,Bo,missing\n").unwrap();
    let list_b = tmp.path().join("registry-b.csv");
    std::fs::write(&list_b, "case,name,status\nA-1,Ann,missing\nA-3,Cy,found\n").unwrap();
    let import = |dir: &Path, file: &Path| {
        agent::run(dir, &["import", "person", path_str(file), "--key", "case"])
            .ok()
            .json()
    };
    assert_eq!(import(&a, &list)["inserted"], 2);
    assert_eq!(import(&b, &list_b)["inserted"], 2);

    let agent_b = Agent::start(&b);
    agent::sync(&a, agent_b.addr());
    agent::assert_same(&a, &b, agent_b.addr());
    let records = common::parse_lines(&agent::export(&a, "person"));
    assert_eq!(records.len(), 3, "A-1 once, A-2, A-3: {records:?}");
    let ann: Vec<&Value> = records
        .iter()
        .filter(|r| r["fields"]["case"] == "A-1")
        .collect();
    assert_eq!(ann.len(), 1);
    assert_eq!(
        common::parse_lines(&agent::export(&b, "person")),
        records,
        "the same ids on both"
    );
    assert!(
        agent::run(&a, &["conflicts"]).ok().lines().is_empty(),
        "identical rows are no conflict"
    );
}

#[test]
fn a_record_is_reached_by_the_values_of_a_two_field_key_in_the_key_order() {
    let a = Instance::new();
    let csv = a.file(
        "camps.csv",
        "case,district,name\nA-1,North,Ann\nA-1,South,Bo\n",
    );
    a.ok(&["import", "person", path_str(&csv), "--key", "case,district"]);
    assert_eq!(
        a.ok(&["get", "person", "A-1,South"]).json()["fields"]["name"],
        "Bo"
    );
    assert_eq!(
        a.ok(&["get", "person", "A-1, North"]).json()["fields"]["name"],
        "Ann"
    );
    a.run(&["get", "person", "North,A-1"])
        .fails(1, &["no record with the id or import key"]);
}

/// A record written in the field (`put`, the API, the console) before the registry arrives has
/// the registry's key under an id of its own: a keyed import updates that record rather than
/// adding a second one with the same key (a trial found two FR-050 records, one found alive and
/// one missing), and a deleted one stays deleted. Two such records for one key refuse the
/// import, naming both, and nothing is written; the first keyed import already logged them as
/// a name clash (the key is unique from then on), and a third is refused.
#[test]
fn a_keyed_import_updates_records_written_in_the_field_with_that_key() {
    let a = Instance::new();
    // Two records already carry FR-070 before any import: which one a row means is not guessed.
    let one = a.put("person", r#"{"case_number":"FR-070","name":"One"}"#);
    let two = a.put("person", r#"{"case_number":"FR-070","name":"Two"}"#);
    let field = a.put(
        "person",
        r#"{"case_number":"FR-050","name":"Ama","found_at":"North school"}"#,
    );
    let gone = a.put("person", r#"{"case_number":"FR-060","name":"Kofi"}"#);
    a.ok(&["delete", "person", &gone]);
    let file = a.file(
        "late.csv",
        "case_number,name,status\nFR-050,Ama Mensah,missing\nFR-060,Kofi,missing\nFR-061,Esi,missing\n",
    );
    let summary = a
        .ok(&["import", "person", path_str(&file), "--key", "case_number"])
        .json();
    assert_eq!(
        summary,
        json!({"table": "person", "records": 3, "inserted": 1, "updated": 1,
               "unchanged": 0, "deleted_kept": 1, "changes": [
                   {"record": field, "key": "FR-050", "field": "name", "old": "Ama",
                    "new": "Ama Mensah"},
                   {"record": field, "key": "FR-050", "field": "status", "old": null,
                    "new": "missing"}],
               "kept_edited": 0, "kept": [], "kept_rows": 0, "new_key": ["case_number"],
               "key_clashes": 1, "mixed_types": []})
    );
    let all = a
        .ok(&["list", "person", "--include-deleted", "--json"])
        .lines();
    let listed: Vec<&Value> = all
        .iter()
        .filter(|r| r["fields"]["case_number"] != "FR-070")
        .collect();
    assert_eq!(listed.len(), 3, "one record per case number: {all:?}");
    let ama = a.ok(&["get", "person", &field]).json();
    assert_eq!(ama["fields"]["name"], "Ama Mensah", "{ama}");
    assert_eq!(ama["fields"]["found_at"], "North school", "{ama}");
    assert_eq!(
        a.run(&["get", "person", &gone]).code,
        1,
        "the deleted record stays deleted"
    );

    // The import made case_number the table's key: the two FR-070 records are a name clash.
    let clash: Vec<Value> = a
        .ok(&["conflicts"])
        .lines()
        .into_iter()
        .filter(|c| c["type"] == "name_clash" && c["value"] == "FR-070")
        .collect();
    assert_eq!(clash.len(), 1, "{clash:?}");
    let mut pair = [
        clash[0]["record"].as_str().unwrap(),
        clash[0]["other_record"].as_str().unwrap(),
    ];
    pair.sort();
    let mut expected = [one.as_str(), two.as_str()];
    expected.sort();
    assert_eq!(pair, expected);
    a.run(&[
        "put",
        "person",
        r#"{"case_number":"FR-050","name":"Third"}"#,
    ])
    .fails(2, &["FR-050", "already used by record", &field]);
    let before = a.snapshot();
    let file = a.file("dup.csv", "case_number,name\nFR-070,Registry\n");
    a.run(&["import", "person", path_str(&file), "--key", "case_number"])
        .fails(
            2,
            &[
                "line 2",
                "2 records of person already have this key",
                &one,
                &two,
            ],
        );
    assert_eq!(a.snapshot(), before, "nothing was written");
}

/// A re-import does not undo what was corrected in the field (trial 8, finding 3): a field
/// whose value in the file is one it held before an edit changed it — on this laptop or on
/// another, met by sync — keeps the edit, and the summary says so; a value the file really
/// changed is written; `--overwrite` writes the file's values anyway. The same for a JSONL
/// file with ids (rows replace the fields): a field added in the field stays.
#[test]
fn a_re_import_keeps_fields_edited_since_the_list_had_them() {
    use common::agent::{self, Agent};
    let tmp = tempfile::tempdir().unwrap();
    let [a, b]: [_; 2] = agent::members(tmp.path(), &["a", "b"]).try_into().unwrap();
    let list = tmp.path().join("registry.csv");
    std::fs::write(
        &list,
        "case,name,age,status\nA-1,Ann,30,missing\nA-2,Bo,41,missing\nA-3,Cy,52,missing\n",
    )
    .unwrap();
    let import = |file: &Path, extra: &[&str]| {
        let mut args = vec!["import", "person", path_str(file), "--key", "case"];
        args.extend_from_slice(extra);
        agent::run(&a, &args).ok()
    };
    assert_eq!(import(&list, &[]).json()["inserted"], 3);
    let agent_b = Agent::start(&b);
    agent::sync(&a, agent_b.addr());
    // On laptopB, Bo is found; the change reaches the coordinator's laptop.
    agent::run(
        &b,
        &["patch", "person", "A-2", r#"{"status":"found alive"}"#],
    )
    .ok();
    agent::sync(&a, agent_b.addr());
    let bo = agent::run(&a, &["get", "person", "A-2"]).ok().json();
    let bo_id = bo["id"].as_str().unwrap().to_string();

    // The same list again: Bo's status was "missing" before laptopB changed it.
    let again = import(&list, &[]).json();
    assert_eq!(
        again,
        json!({"table": "person", "records": 3, "inserted": 0, "updated": 0, "unchanged": 2,
               "deleted_kept": 0, "kept_edited": 1, "kept_rows": 1, "changes": [],
               "new_key": null, "key_clashes": 0, "mixed_types": [],
               "kept": [{"record": bo_id, "key": "A-2", "field": "status",
                         "file": "missing", "kept": "found alive"}]})
    );
    let status = |dir: &Path| {
        agent::run(dir, &["get", "person", "A-2"]).ok().json()["fields"]["status"].clone()
    };
    assert_eq!(status(&a), "found alive");

    // The corrected list: Ann's age changed, Bo still "missing" in it.
    let corrected = tmp.path().join("registry2.csv");
    std::fs::write(
        &corrected,
        "case,name,age,status\nA-1,Ann,31,missing\nA-2,Bo,41,missing\nA-3,Cy,52,missing\n",
    )
    .unwrap();
    let said = import(&corrected, &["--dry-run", "--human"]).stdout;
    assert!(
        said.contains(
            "1 changed, 1 already as in the file, 1 row left as it is to keep corrections \
             made since (below)"
        ) && said.contains("Kept 1 field edited since the file's value")
            && said.contains("  A-2: status kept \"found alive\" (the file has \"missing\")\n")
            && said.contains("  A-1: age 30 → 31\n"),
        "{said}"
    );
    let done = import(&corrected, &[]).json();
    assert_eq!(
        (
            &done["updated"],
            &done["unchanged"],
            &done["kept_edited"],
            &done["kept_rows"]
        ),
        (&json!(1), &json!(1), &json!(1), &json!(1))
    );
    agent::sync(&a, agent_b.addr());
    assert_eq!(status(&b), "found alive", "laptopB's edit stands on both");
    assert_eq!(
        agent::run(&b, &["get", "person", "A-1"]).ok().json()["fields"]["age"],
        31
    );

    // --overwrite: the coordinator means the list's value.
    let forced = import(&corrected, &["--overwrite"]).json();
    assert_eq!(
        (&forced["updated"], &forced["kept_edited"]),
        (&json!(1), &json!(0))
    );
    assert_eq!(status(&a), "missing");
    drop(agent_b);

    // JSONL with ids replaces the fields: a note added since is kept, not removed.
    let c = Instance::new();
    let id = "8d3c8f4e-5d1b-4a4e-9a51-0c2f7f9e1a01";
    let jsonl = c.file(
        "people.jsonl",
        format!("{{\"id\":\"{id}\",\"fields\":{{\"name\":\"Dee\",\"status\":\"missing\"}}}}\n"),
    );
    c.ok(&["import", "person", path_str(&jsonl)]);
    c.ok(&["patch", "person", id, r#"{"notes":"at the school"}"#]);
    let again = c.ok(&["import", "person", path_str(&jsonl)]).json();
    assert_eq!(
        (
            &again["unchanged"],
            &again["kept_rows"],
            &again["kept"][0]["field"],
            &again["kept"][0]["file"]
        ),
        (&json!(0), &json!(1), &json!("notes"), &Value::Null)
    );
    assert_eq!(
        c.ok(&["get", "person", id]).json()["fields"]["notes"],
        "at the school"
    );
}

/// A CSV export for a spreadsheet program in a decimal-comma locale: `--delimiter ';'` and a
/// byte order mark (Excel reads a CSV without one in the legacy code page: `Chloé` as
/// `ChloÃ©`, a newcomer's), and it imports back into the same records.
#[test]
fn a_csv_export_for_excel_has_semicolons_and_a_bom_and_imports_back() {
    let a = Instance::new();
    let file = a.file(
        "people.csv",
        "case;name;weight;postcode\nC-1;Chloé;70,5;75001\nC-2;Zoë \"Z\";80;01000\n",
    );
    a.ok(&[
        "import",
        "person",
        path_str(&file),
        "--key",
        "case",
        "--text",
        "postcode",
    ]);
    let out = a.ok(&[
        "export",
        "person",
        "--format",
        "csv",
        "--delimiter",
        ";",
        "--bom",
    ]);
    let text = out.stdout.clone();
    assert!(text.starts_with('\u{feff}'), "{text:?}");
    let lines: Vec<&str> = text.trim_start_matches('\u{feff}').lines().collect();
    assert_eq!(lines[0], "id;case;name;postcode;weight", "{text}");
    // The text 75001 is written JSON-quoted, so it reads back as text, not a number.
    let ends = |tail: &str| lines.iter().any(|l| l.ends_with(tail));
    assert!(ends(";C-1;Chloé;\"\"\"75001\"\"\";70,5"), "{text}");
    assert!(ends(";C-2;\"Zoë \"\"Z\"\"\";01000;80"), "{text}");
    // Back into another laptop: the same records, ids and values, with or without --text (it
    // stored the quote marks of "75001" once, a newcomer's).
    for text_opt in [&[][..], &["--text", "postcode"]] {
        let b = Instance::new();
        let back = b.file("back.csv", &text);
        let mut args = vec!["import", "person", path_str(&back)];
        args.extend_from_slice(text_opt);
        b.ok(&args);
        assert_eq!(b.digest(&["person"]), a.digest(&["person"]), "{text_opt:?}");
    }
    // JSONL has no delimiter: said, not ignored.
    a.run(&["export", "person", "--delimiter", ";"])
        .fails(2, &["--delimiter and --bom are for CSV", "--format csv"]);
}
