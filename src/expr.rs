//! CEL expressions (the `cel` crate): compiled once when the config loads, evaluated against
//! rows (filters, expression columns), batches (HTTP sink requests) and responses (success
//! rules).
//!
//! Values cross into CEL by kind: strings stay strings, JSON numbers become `int` (when they
//! are whole and fit) or `double`, booleans `bool`, null `null`, arrays parsed JSON lists.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, LazyLock};

use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};

use crate::row::{Kind, Row};

/// The environment every expression compiles and runs in: the standard library plus the
/// strings extension (`upperAscii`, `replace`, `split`, `join`, `format`, …).
static ENV: LazyLock<Arc<Env>> = LazyLock::new(|| {
    let mut env = Env::stdlib();
    // The extension only declares fresh names in a fresh environment: it cannot conflict.
    env.add_extension(cel::extensions::strings)
        .expect("the strings extension declares into a fresh environment");
    Arc::new(env)
});

/// A compiled CEL expression with its source text. Cheap to clone.
#[derive(Clone)]
pub struct Expr {
    source: Arc<str>,
    program: Arc<Program>,
}

/// Why an expression could not be evaluated, or did not give the type asked for.
#[derive(Debug, Clone, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Execution(#[from] cel::ExecutionError),
    #[error("gave {got}, not {want}")]
    Type { got: String, want: &'static str },
    #[error("element {index} of the list is {got}, not a map")]
    NotARow { index: usize, got: String },
}

impl Expr {
    /// Compiles `source`. `variables` are the names it may use; a reference to any other
    /// top-level name that no macro binds (`rows.map(r, …)`) is reported here, at load.
    pub fn compile(source: &str, variables: &[&str]) -> Result<Expr, String> {
        let program = ENV
            .compile(source)
            .map_err(|e| format!("not a CEL expression: {}", e.to_string().trim()))?;
        let refs = program.references();
        let unknown: Vec<&str> = refs
            .variables()
            .into_iter()
            .filter(|v| !variables.contains(v) && !binds(source, v))
            .collect();
        if let Some(v) = unknown.first() {
            return Err(format!(
                "uses \"{v}\", which is not defined here (use {})",
                variables.join(", ")
            ));
        }
        Ok(Expr {
            source: source.into(),
            program: Arc::new(program),
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }

    /// Evaluates with the given variables.
    pub fn eval(&self, vars: &[(&str, &Value)]) -> Result<Value, EvalError> {
        let mut ctx = Context::with_env(ENV.clone());
        for (name, value) in vars {
            ctx.add_variable_from_value(*name, (*value).clone());
        }
        Ok(self.program.execute(&ctx)?)
    }

    /// Evaluates to a `bool`.
    pub fn eval_bool(&self, vars: &[(&str, &Value)]) -> Result<bool, EvalError> {
        match self.eval(vars)? {
            Value::Bool(b) => Ok(b),
            other => Err(type_error(&other, "a bool")),
        }
    }

    /// Evaluates to text: strings as they are, numbers and bools written out, null empty.
    pub fn eval_text(&self, vars: &[(&str, &Value)]) -> Result<String, EvalError> {
        let v = self.eval(vars)?;
        text_of(&v).ok_or_else(|| type_error(&v, "a string, number, bool or null"))
    }

    /// Evaluates a pipeline's `rows` expression over a request's `body`, with the helpers
    /// `parseJson`, `toMap` and `merge`: a list of maps, each a row as a JSON object whose
    /// keys are in name order (CEL maps keep none).
    pub fn eval_rows(
        &self,
        body: &Value,
    ) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, EvalError> {
        let mut ctx = Context::with_env(ENV.clone());
        ctx.add_variable_from_value("body", body.clone());
        add_rows_helpers(&mut ctx);
        let v = self.program.execute(&ctx)?;
        let Value::List(items) = &v else {
            return Err(type_error(&v, "a list of maps"));
        };
        let mut rows = Vec::with_capacity(items.len());
        for (index, item) in items.iter().enumerate() {
            let Value::Map(_) = item else {
                return Err(EvalError::NotARow {
                    index,
                    got: item.type_of().to_string(),
                });
            };
            let Ok(serde_json::Value::Object(object)) = item.json() else {
                return Err(EvalError::NotARow {
                    index,
                    got: "a map JSON cannot hold".to_owned(),
                });
            };
            let mut sorted: Vec<(String, serde_json::Value)> = object.into_iter().collect();
            sorted.sort_by(|a, b| a.0.cmp(&b.0));
            rows.push(sorted.into_iter().collect());
        }
        Ok(rows)
    }

    /// Evaluates to JSON.
    pub fn eval_json(&self, vars: &[(&str, &Value)]) -> Result<serde_json::Value, EvalError> {
        let v = self.eval(vars)?;
        v.json()
            .map_err(|_| type_error(&v, "something JSON can hold"))
    }
}

/// `parseJson(text)`: the JSON in a string (seed 001's `signal`) as a value.
/// `toMap(list, keyField, valueField)`: a list of maps turned into one map, each element's
/// `keyField` a key and its `valueField` the value (a pivot of `attributes`).
/// `merge(a, b)`: the entries of both maps, `b`'s winning.
fn add_rows_helpers(ctx: &mut Context) {
    use cel::ExecutionError;
    ctx.add_function(
        "parseJson",
        |text: Arc<String>| -> Result<Value, ExecutionError> {
            serde_json::from_str::<serde_json::Value>(&text)
                .map(json_value)
                .map_err(|e| ExecutionError::function_error("parseJson", format!("not JSON: {e}")))
        },
    )
    .expect("parseJson is no standard name");
    ctx.add_function(
        "toMap",
        |list: Arc<Vec<Value>>,
         key_field: Arc<String>,
         value_field: Arc<String>|
         -> Result<Value, ExecutionError> {
            let fail = |m: String| ExecutionError::function_error("toMap", m);
            let mut map: HashMap<Key, Value> = HashMap::new();
            for (i, item) in list.iter().enumerate() {
                let Value::Map(m) = item else {
                    return Err(fail(format!(
                        "element {i} is {}, not a map",
                        item.type_of()
                    )));
                };
                let key = m
                    .map
                    .get(&Key::from(key_field.as_str()))
                    .and_then(|k| text_of(k).filter(|t| !t.is_empty()))
                    .ok_or_else(|| fail(format!("element {i} has no text in \"{key_field}\"")))?;
                let value = m
                    .map
                    .get(&Key::from(value_field.as_str()))
                    .cloned()
                    .unwrap_or(Value::Null);
                map.insert(Key::from(key), value);
            }
            Ok(Value::Map(Map { map: Arc::new(map) }))
        },
    )
    .expect("toMap is no standard name");
    ctx.add_function(
        "merge",
        |a: Value, b: Value| -> Result<Value, ExecutionError> {
            match (a, b) {
                (Value::Map(a), Value::Map(b)) => {
                    let mut map: HashMap<Key, Value> = (*a.map).clone();
                    map.extend(b.map.iter().map(|(k, v)| (k.clone(), v.clone())));
                    Ok(Value::Map(Map { map: Arc::new(map) }))
                }
                (a, b) => Err(ExecutionError::function_error(
                    "merge",
                    format!("takes two maps, not {} and {}", a.type_of(), b.type_of()),
                )),
            }
        },
    )
    .expect("merge is no standard name");
}

/// True when `name` is bound by a comprehension macro in `source` (`.map(name, …)`,
/// `.filter(name, …)`, `.exists(name, …)`, …), so it is not a free variable.
fn binds(source: &str, name: &str) -> bool {
    ["map", "filter", "all", "exists", "exists_one"]
        .iter()
        .any(|m| {
            let compact: String = source.chars().filter(|c| !c.is_whitespace()).collect();
            compact.contains(&format!(".{m}({name},"))
        })
}

fn type_error(v: &Value, want: &'static str) -> EvalError {
    EvalError::Type {
        got: v.type_of().to_string(),
        want,
    }
}

/// The text of a scalar value, as it goes into a CSV cell or a URL.
pub fn text_of(v: &Value) -> Option<String> {
    Some(match v {
        Value::String(s) => s.to_string(),
        Value::Int(i) => i.to_string(),
        Value::UInt(u) => u.to_string(),
        Value::Float(f) => f.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        _ => return None,
    })
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Expr({:?})", self.source)
    }
}

impl fmt::Display for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

impl PartialEq for Expr {
    fn eq(&self, other: &Expr) -> bool {
        self.source == other.source
    }
}

impl Eq for Expr {}

/// A row as a CEL map of field name → value.
pub fn row_value(row: &Row) -> Value {
    let mut map: HashMap<Key, Value> = HashMap::new();
    for f in row.fields() {
        let v = match f.kind {
            Kind::String => Value::String(Arc::new(f.text.to_owned())),
            Kind::Bool => Value::Bool(f.text == "true"),
            Kind::Null => Value::Null,
            Kind::Number => number(f.text),
            Kind::Json => serde_json::from_str::<serde_json::Value>(f.text)
                .map(json_value)
                .unwrap_or_else(|_| Value::String(Arc::new(f.text.to_owned()))),
        };
        map.insert(Key::from(f.name), v);
    }
    Value::Map(Map { map: Arc::new(map) })
}

/// A JSON number's text as `int` when it is whole and fits, else `double`.
fn number(text: &str) -> Value {
    if let Ok(i) = text.parse::<i64>() {
        return Value::Int(i);
    }
    text.parse::<f64>()
        .map(Value::Float)
        .unwrap_or_else(|_| Value::String(Arc::new(text.to_owned())))
}

/// JSON as a CEL value.
pub fn json_value(v: serde_json::Value) -> Value {
    match v {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => number(&n.to_string()),
        serde_json::Value::String(s) => Value::String(Arc::new(s)),
        serde_json::Value::Array(a) => {
            Value::List(Arc::new(a.into_iter().map(json_value).collect()))
        }
        serde_json::Value::Object(o) => {
            let map: HashMap<Key, Value> = o
                .into_iter()
                .map(|(k, v)| (Key::from(k), json_value(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// A map with string keys, for `pipeline`, `response` and headers.
pub fn map_value<'a>(entries: impl IntoIterator<Item = (&'a str, Value)>) -> Value {
    let map: HashMap<Key, Value> = entries
        .into_iter()
        .map(|(k, v)| (Key::from(k), v))
        .collect();
    Value::Map(Map { map: Arc::new(map) })
}

/// The `pipeline` variable: `{name}`.
pub fn pipeline_value(name: &str) -> Value {
    map_value([("name", Value::from(name))])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(json: &str) -> Row {
        crate::ingest::parse::json(json.as_bytes())
            .unwrap()
            .remove(0)
    }

    #[test]
    fn row_values_keep_their_json_types() {
        let r = row_value(&row(
            r#"{"s":"007","i":42,"f":1.5,"b":true,"n":null,"a":[1,"x"],"o":{"p":2}}"#,
        ));
        let e = Expr::compile(
            "row.s == '007' && row.i == 42 && row.f == 1.5 && row.b && row.n == null \
             && row.a[0] == 1 && row.a[1] == 'x' && row['o.p'] == 2",
            &["row"],
        )
        .unwrap();
        assert!(e.eval_bool(&[("row", &r)]).unwrap());
    }

    #[test]
    fn strings_extension_and_text_results() {
        let r = row_value(&row(r#"{"code":"ab","d":"12.03.2021","n":3}"#));
        let e = Expr::compile(
            "row.code.upperAscii() + '-' + row.d.split('.')[2] + '-' + string(row.n)",
            &["row"],
        )
        .unwrap();
        assert_eq!(e.eval_text(&[("row", &r)]).unwrap(), "AB-2021-3");
    }

    #[test]
    fn syntax_errors_and_unknown_names_are_reported_at_compile() {
        assert!(
            Expr::compile("row.a ==", &["row"])
                .unwrap_err()
                .starts_with("not a CEL expression")
        );
        let e = Expr::compile("rwo.a == 1", &["row"]).unwrap_err();
        assert!(e.contains("\"rwo\""), "{e}");
        assert!(Expr::compile("rows.map(r, r.a)", &["rows"]).is_ok());
    }

    #[test]
    fn rows_helpers_pivot_seed_001_signals_into_one_row_each() {
        let body = json_value(serde_json::json!({"content": [
            {"signal": "{\"id\":\"a8\",\"attributes\":[{\"attributeId\":\"ATTRIBUTE_1\",\"value\":null},{\"attributeId\":\"ATTRIBUTE_2\",\"value\":7}]}"},
            {"signal": "{\"id\":\"8c\",\"attributes\":[{\"attributeId\":\"ATTRIBUTE_1\",\"value\":\"D1\"}]}"}
        ]}));
        let e = Expr::compile(
            "body.content.map(e, parseJson(e.signal)).map(s, merge({'signalId': s.id}, toMap(s.attributes, 'attributeId', 'value')))",
            &["body"],
        )
        .unwrap();
        let rows = e.eval_rows(&body).unwrap();
        assert_eq!(
            serde_json::Value::Array(rows.into_iter().map(serde_json::Value::Object).collect()),
            serde_json::json!([
                {"ATTRIBUTE_1": null, "ATTRIBUTE_2": 7, "signalId": "a8"},
                {"ATTRIBUTE_1": "D1", "signalId": "8c"}
            ])
        );
    }

    #[test]
    fn a_rows_result_that_is_no_list_of_maps_and_a_bad_helper_call_are_named() {
        let body = json_value(serde_json::json!({"value": [1], "s": "{"}));
        let e = Expr::compile("body.value", &["body"]).unwrap();
        assert_eq!(
            e.eval_rows(&body).unwrap_err().to_string(),
            "element 0 of the list is int, not a map"
        );
        let e = Expr::compile("body", &["body"]).unwrap();
        assert!(
            e.eval_rows(&body)
                .unwrap_err()
                .to_string()
                .contains("not a list of maps")
        );
        let e = Expr::compile("[parseJson(body.s)]", &["body"]).unwrap();
        let message = e.eval_rows(&body).unwrap_err().to_string();
        assert!(
            message.contains("parseJson") && message.contains("not JSON"),
            "{message}"
        );
        let e = Expr::compile("[merge(body, 1)]", &["body"]).unwrap();
        let message = e.eval_rows(&body).unwrap_err().to_string();
        assert!(message.contains("takes two maps"), "{message}");
    }

    #[test]
    fn a_non_bool_filter_result_is_a_type_error() {
        let e = Expr::compile("'x'", &[]).unwrap();
        assert!(matches!(e.eval_bool(&[]), Err(EvalError::Type { .. })));
    }
}
