//! `docs/image-schema.json`, the JSON Schema of `crest inspect --json`,
//! is generated from the model types: the committed file must be what
//! they generate now.  After a model change, regenerate it with
//! `CREST_BLESS_SCHEMA=1 cargo test -p crest --test schema` and commit it.

use std::collections::BTreeSet;

const SCHEMA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/image-schema.json");
const GOLDEN_V3: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden/v3.img");

#[test]
fn the_committed_schema_is_the_generated_one() {
    let now = crest::codec::inspect::json_schema();
    if std::env::var_os("CREST_BLESS_SCHEMA").is_some() {
        std::fs::write(SCHEMA, &now).unwrap();
    }
    let committed = std::fs::read_to_string(SCHEMA).unwrap_or_default();
    assert!(
        committed == now,
        "docs/image-schema.json is not what the model types generate: regenerate it with \
         CREST_BLESS_SCHEMA=1 cargo test -p crest --test schema"
    );
}

fn keys(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                out.insert(k.clone());
                keys(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| keys(x, out)),
        _ => {}
    }
}

fn schema_names(v: &serde_json::Value, out: &mut BTreeSet<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, x) in m {
                if k == "properties" {
                    if let Some(p) = x.as_object() {
                        out.extend(p.keys().cloned());
                    }
                }
                // Externally tagged enum variants are required keys.
                if k == "required" {
                    if let Some(r) = x.as_array() {
                        out.extend(r.iter().filter_map(|s| s.as_str().map(String::from)));
                    }
                }
                schema_names(x, out);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|x| schema_names(x, out)),
        _ => {}
    }
}

/// Every key of the inspect document of the golden image (which has every
/// object kind and a value in every field) is named by the schema.
#[test]
fn the_schema_names_every_key_of_an_inspection() {
    let image = std::fs::read(GOLDEN_V3).unwrap();
    let ins = crest::codec::inspect::inspect(&image[..]).unwrap();
    let doc = serde_json::to_value(&ins).unwrap();
    let mut used = BTreeSet::new();
    keys(&doc, &mut used);
    let schema: serde_json::Value =
        serde_json::from_str(&crest::codec::inspect::json_schema()).unwrap();
    let mut named = BTreeSet::new();
    schema_names(&schema, &mut named);
    // Keys of the `pages` map are data ("0:5555...").
    let missing: Vec<&String> = used
        .iter()
        .filter(|k| !named.contains(*k) && !k.contains(':'))
        .collect();
    assert!(
        missing.is_empty(),
        "keys the schema does not name: {missing:?}"
    );
    assert!(named.contains("xsave") && named.contains("PtyMaster"));
}
