//! The JSON document operations the fake's verbs are made of: RFC 7386 merge patch, RFC 6902
//! JSON patch, and the field paths server-side apply tracks ownership with.
use serde_json::{Map, Value};

/// A field path: map keys from the root. Lists are atomic (owned and replaced whole), as with
/// `x-kubernetes-list-type: atomic`; the fake knows no list merge keys.
pub(crate) type FieldPath = Vec<String>;

/// RFC 7386: maps merge key by key, `null` removes, everything else replaces.
pub(crate) fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

/// RFC 6902: add, remove, replace, test, move, copy. All or nothing.
pub(crate) fn json_patch(doc: &Value, ops: &Value) -> Result<Value, String> {
    let ops = ops.as_array().ok_or("a JSON patch is an array of operations")?;
    let mut out = doc.clone();
    for op in ops {
        let kind = op["op"].as_str().ok_or("a JSON patch operation without \"op\"")?;
        let path = op["path"].as_str().ok_or("a JSON patch operation without \"path\"")?;
        let value = || op.get("value").cloned().ok_or(format!("{kind} {path}: no \"value\""));
        let from = || op["from"].as_str().ok_or(format!("{kind} {path}: no \"from\""));
        match kind {
            "add" => add(&mut out, path, value()?)?,
            "remove" => drop(remove(&mut out, path)?),
            "replace" => {
                remove(&mut out, path)?;
                add(&mut out, path, value()?)?;
            }
            "test" => {
                if out.pointer(path) != Some(&value()?) {
                    return Err(format!("test {path}: the value differs"));
                }
            }
            "move" => {
                let v = remove(&mut out, from()?)?;
                add(&mut out, path, v)?;
            }
            "copy" => {
                let v = out.pointer(from()?).cloned().ok_or(format!("copy from {}: no such path", from()?))?;
                add(&mut out, path, v)?;
            }
            other => return Err(format!("unknown JSON patch operation {other:?}")),
        }
    }
    Ok(out)
}

fn split_pointer(path: &str) -> Result<(&str, String), String> {
    let (parent, last) = path.rsplit_once('/').ok_or(format!("{path:?} is not a JSON pointer"))?;
    Ok((parent, last.replace("~1", "/").replace("~0", "~")))
}

fn add(doc: &mut Value, path: &str, value: Value) -> Result<(), String> {
    if path.is_empty() {
        *doc = value;
        return Ok(());
    }
    let (parent, last) = split_pointer(path)?;
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => {
            m.insert(last, value);
        }
        Some(Value::Array(a)) => {
            let i = if last == "-" { a.len() } else { last.parse().map_err(|_| format!("add {path}: bad index"))? };
            if i > a.len() {
                return Err(format!("add {path}: index out of range"));
            }
            a.insert(i, value);
        }
        _ => return Err(format!("add {path}: the parent does not exist")),
    }
    Ok(())
}

fn remove(doc: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, last) = split_pointer(path)?;
    let missing = || format!("{path}: no such path");
    match doc.pointer_mut(parent) {
        Some(Value::Object(m)) => m.remove(&last).ok_or_else(missing),
        Some(Value::Array(a)) => match last.parse::<usize>() {
            Ok(i) if i < a.len() => Ok(a.remove(i)),
            _ => Err(missing()),
        },
        _ => Err(missing()),
    }
}

/// The leaf fields of a document: paths to every value that is not a non-empty map (`null`s
/// are not fields).
pub(crate) fn leaf_paths(v: &Value) -> Vec<FieldPath> {
    fn walk(v: &Value, prefix: &mut FieldPath, out: &mut Vec<FieldPath>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    prefix.push(k.clone());
                    walk(child, prefix, out);
                    prefix.pop();
                }
            }
            Value::Null => {}
            _ => out.push(prefix.clone()),
        }
    }
    let mut out = Vec::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

pub(crate) fn at<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    path.iter().try_fold(v, |v, k| v.as_object()?.get(k))
}

/// Remove the field at `path`; maps left empty stay (as an applied `labels: {}` would).
pub(crate) fn remove_path(v: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else { return };
    let mut cur = v;
    for k in parent {
        match cur.as_object_mut().and_then(|m| m.get_mut(k)) {
            Some(next) => cur = next,
            None => return,
        }
    }
    if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Fields whose value differs between `old` and `new` (added or changed: `.0`; gone: `.1`).
pub(crate) fn changed_paths(old: &Value, new: &Value) -> (Vec<FieldPath>, Vec<FieldPath>) {
    let set = leaf_paths(new).into_iter().filter(|p| at(old, p) != at(new, p)).collect();
    let gone = leaf_paths(old).into_iter().filter(|p| at(new, p).is_none()).collect();
    (set, gone)
}

/// `fieldsV1` as the API server writes it: `{"f:spec": {"f:replicas": {}}}`.
pub(crate) fn fields_v1<'a>(paths: impl IntoIterator<Item = &'a FieldPath>) -> Value {
    let mut root = Value::Object(Map::new());
    for p in paths {
        let mut cur = &mut root;
        for k in p {
            cur = cur
                .as_object_mut()
                .expect("only maps are built here")
                .entry(format!("f:{k}"))
                .or_insert(Value::Object(Map::new()));
        }
    }
    root
}

/// Does `selector` (equality `a=b`, `a==b`, `a!=b`, existence `a`, `!a`, sets `a in (x,y)`,
/// `a notin (x,y)`) select an object with these labels?
pub(crate) fn selects(selector: &str, labels: Option<&Map<String, Value>>) -> bool {
    let label = |k: &str| labels.and_then(|l| l.get(k.trim())).and_then(Value::as_str);
    let set = |s: &str| -> Vec<String> {
        s.trim().trim_start_matches('(').trim_end_matches(')').split(',').map(|x| x.trim().to_owned()).collect()
    };
    split_terms(selector).into_iter().map(str::trim).filter(|t| !t.is_empty()).all(|term| {
        if let Some((k, vs)) = term.split_once(" notin ") {
            label(k).is_none_or(|v| !set(vs).iter().any(|x| x == v))
        } else if let Some((k, vs)) = term.split_once(" in ") {
            label(k).is_some_and(|v| set(vs).iter().any(|x| x == v))
        } else if let Some((k, v)) = term.split_once("!=") {
            label(k) != Some(v.trim())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            label(k) == Some(v.trim())
        } else if let Some(k) = term.strip_prefix('!') {
            label(k).is_none()
        } else {
            label(term).is_some()
        }
    })
}

/// Split on the commas between terms, not those inside `in (...)` sets.
fn split_terms(s: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

/// Decode one `application/x-www-form-urlencoded` component.
pub(crate) fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(x) => {
                        out.push(x);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
