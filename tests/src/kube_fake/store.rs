//! The fake's object store and the verbs over it: what the API server does to an object on
//! get, list, create, server-side apply, patch, replace and delete, with resourceVersion,
//! generation, uid, creationTimestamp and field managers kept as the real one keeps them.
use super::patch::{
    at, changed_paths, fields_v1, json_patch, leaf_paths, merge_patch, remove_path, selects, FieldPath,
};
use super::resource::{kind_of, plural_of, ApiError, ApiResult, Key};
use super::{Calls, Fault, RequestRecord};
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// Who wrote which fields: one entry per (manager, operation, subresource), as in
/// `metadata.managedFields`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct OwnerKey {
    pub manager: String,
    pub apply: bool,
    pub status: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Owner {
    pub fields: BTreeSet<FieldPath>,
    pub time: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub obj: Value,
    pub owners: BTreeMap<OwnerKey, Owner>,
}

pub(crate) struct State {
    pub objects: BTreeMap<Key, Stored>,
    pub rv: u64,
    pub calls: Calls,
    pub requests: Vec<RequestRecord>,
    pub faults: Vec<Fault>,
    pub latency: Duration,
    pub stuck: BTreeSet<String>,
    pub ready: bool,
    /// Objects changed since the controller last looked (and the namespaces they are in).
    pub dirty: BTreeSet<Key>,
}

pub(crate) fn now() -> String {
    chrono::DateTime::<chrono::Utc>::from(std::time::SystemTime::now())
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Everything of an object but its metadata and status: what `metadata.generation` counts.
fn body_of(obj: &Value) -> Map<String, Value> {
    let mut m = obj.as_object().cloned().unwrap_or_default();
    for k in ["metadata", "status", "apiVersion", "kind"] {
        m.remove(k);
    }
    m
}

/// Metadata the server owns; a client's value is ignored (resourceVersion is checked first).
const SERVER_META: &[&str] =
    &["uid", "creationTimestamp", "generation", "resourceVersion", "managedFields", "deletionTimestamp", "selfLink"];

fn meta(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj["metadata"].is_object() {
        obj["metadata"] = json!({});
    }
    obj["metadata"].as_object_mut().expect("made an object above")
}

/// Fields nobody owns: identity and server-owned metadata.
fn is_tracked(p: &FieldPath) -> bool {
    match p.as_slice() {
        [k] if k == "apiVersion" || k == "kind" => false,
        [m, k, ..] if m == "metadata" => !(k == "name" || k == "namespace" || SERVER_META.contains(&k.as_str())),
        _ => true,
    }
}

pub(crate) fn finalizers(obj: &Value) -> bool {
    obj["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty())
}

pub(crate) fn deleting(obj: &Value) -> bool {
    obj["metadata"].get("deletionTimestamp").is_some_and(|t| !t.is_null())
}

impl State {
    pub(crate) fn new() -> State {
        State {
            objects: BTreeMap::new(),
            rv: 0,
            calls: Calls::default(),
            requests: Vec::new(),
            faults: Vec::new(),
            latency: Duration::ZERO,
            stuck: BTreeSet::new(),
            ready: true,
            dirty: BTreeSet::new(),
        }
    }

    pub(crate) fn get(&self, key: &Key) -> ApiResult<Value> {
        self.objects.get(key).map(|s| s.obj.clone()).ok_or_else(|| ApiError::not_found(key))
    }

    /// LIST: `ns` None lists every namespace (or the cluster-scoped objects).
    pub(crate) fn list(&self, gv: &str, plural: &str, ns: Option<&str>, selector: Option<&str>) -> Value {
        let items: Vec<Value> = self
            .objects
            .iter()
            .filter(|(k, _)| k.gv == gv && k.plural == plural && ns.is_none_or(|ns| k.ns == ns))
            .filter(|(_, s)| selector.is_none_or(|sel| selects(sel, s.obj["metadata"]["labels"].as_object())))
            .map(|(_, s)| s.obj.clone())
            .collect();
        json!({"kind": format!("{}List", kind_of(plural)), "apiVersion": gv,
               "metadata": {"resourceVersion": self.rv.to_string()}, "items": items})
    }

    /// The body names the same object as the URL (apiVersion and kind are required for apply).
    fn check_body(key: &Key, body: &Value, typed: bool) -> ApiResult<()> {
        if !body.is_object() {
            return Err(ApiError::bad_request("the body is not a JSON object"));
        }
        match body["apiVersion"].as_str() {
            Some(v) if v != key.gv => {
                return Err(ApiError::bad_request(format!("apiVersion {v} does not match the URL's {}", key.gv)))
            }
            None if typed => return Err(ApiError::bad_request("apiVersion must be set")),
            _ => {}
        }
        match body["kind"].as_str() {
            Some(kind) if plural_of(kind) != key.plural => {
                return Err(ApiError::bad_request(format!("kind {kind} does not match the URL's {}", key.plural)))
            }
            None if typed => return Err(ApiError::bad_request("kind must be set")),
            _ => {}
        }
        match body["metadata"]["name"].as_str() {
            Some(n) if n != key.name => Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                key.name
            ))),
            _ => match body["metadata"]["namespace"].as_str() {
                Some(ns) if !ns.is_empty() && ns != key.ns => Err(ApiError::bad_request(format!(
                    "the namespace of the object ({ns}) does not match the namespace on the URL ({})",
                    key.ns
                ))),
                _ => Ok(()),
            },
        }
    }

    /// New objects need an existing namespace that is not terminating.
    fn check_namespace_open(&self, key: &Key) -> ApiResult<()> {
        if key.ns.is_empty() {
            return Ok(());
        }
        match self.objects.get(&Key::namespace(&key.ns)) {
            None => Err(ApiError::new(404, "NotFound", format!("namespaces \"{}\" not found", key.ns))),
            Some(ns) if deleting(&ns.obj) => Err(ApiError::new(
                403,
                "Forbidden",
                format!(
                    "{} \"{}\" is forbidden: unable to create new content in namespace {} because it is being terminated",
                    key.resource(),
                    key.name,
                    key.ns
                ),
            )),
            Some(_) => Ok(()),
        }
    }

    /// A client's body: server-owned metadata dropped; a resourceVersion it names must be current.
    fn client_body(&self, key: &Key, mut body: Value) -> ApiResult<Value> {
        let m = meta(&mut body);
        let rv = m.remove("resourceVersion");
        for k in SERVER_META {
            m.remove(*k);
        }
        if let Some(rv) = rv.filter(|v| !v.is_null()) {
            let current = self.objects.get(key).map(|s| s.obj["metadata"]["resourceVersion"].clone());
            if current.as_ref() != Some(&rv) {
                return Err(if current.is_none() { ApiError::not_found(key) } else { ApiError::conflict(key) });
            }
        }
        Ok(body)
    }

    fn skeleton(key: &Key) -> Value {
        let mut obj = json!({"apiVersion": key.gv, "kind": kind_of(&key.plural), "metadata": {"name": key.name}});
        if !key.ns.is_empty() {
            obj["metadata"]["namespace"] = json!(key.ns);
        }
        obj
    }

    /// The main resource ignores status; the status subresource changes only status.
    fn scope(old: Option<&Value>, mut new: Value, status: bool) -> Value {
        let keep = |v: &mut Value, from: Option<&Value>, k: &str| match from.and_then(|o| o.get(k)) {
            Some(x) => v[k] = x.clone(),
            None => drop(v.as_object_mut().and_then(|m| m.remove(k))),
        };
        match (status, old) {
            (false, _) => keep(&mut new, old, "status"),
            (true, Some(o)) => {
                let mut out = o.clone();
                keep(&mut out, Some(&new), "status");
                new = out;
            }
            (true, None) => {}
        }
        // Clients never set deletion.
        let dt = old.and_then(|o| o["metadata"].get("deletionTimestamp")).cloned();
        match dt {
            Some(t) => drop(meta(&mut new).insert("deletionTimestamp".into(), t)),
            None => drop(meta(&mut new).remove("deletionTimestamp")),
        }
        new
    }

    /// POST: 409 AlreadyExists when present.
    pub(crate) fn create(
        &mut self,
        gv: &str,
        plural: &str,
        ns: Option<&str>,
        body: Value,
        manager: &str,
    ) -> ApiResult<Value> {
        let mut body = body;
        if body["metadata"]["name"].as_str().is_none() {
            if let Some(prefix) = body["metadata"]["generateName"].as_str() {
                let suffix: String = uuid::Uuid::new_v4().simple().to_string().chars().take(5).collect();
                body["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
            }
        }
        let name =
            body["metadata"]["name"].as_str().ok_or_else(|| ApiError::bad_request("metadata.name is required"))?;
        let key = Key::new(gv, plural, ns, name);
        Self::check_body(&key, &body, false)?;
        if self.objects.contains_key(&key) {
            return Err(ApiError::new(
                409,
                "AlreadyExists",
                format!("{} \"{}\" already exists", key.resource(), key.name),
            ));
        }
        self.check_namespace_open(&key)?;
        let body = self.client_body(&key, body)?;
        let mut obj = Self::skeleton(&key);
        merge_patch(&mut obj, &Self::scope(None, body, false));
        Ok(self.update(&key, obj, manager, false))
    }

    /// Server-side apply (`application/apply-patch+yaml`), creating when missing. A simplified
    /// field ownership: each manager owns the leaf fields it applied (lists whole); re-applying
    /// without a field it applied before removes that field unless another manager also owns it;
    /// without `force`, a field another manager owns with a different value is a 409 Conflict.
    /// Maps merge recursively, everything else replaces.
    pub(crate) fn apply(
        &mut self,
        key: &Key,
        body: Value,
        manager: &str,
        force: bool,
        status: bool,
    ) -> ApiResult<(bool, Value)> {
        Self::check_body(key, &body, true)?;
        if body["metadata"].get("managedFields").is_some_and(|m| !m.is_null()) {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
        let cfg = self.client_body(key, body)?;
        let old = self.objects.get(key).cloned();
        if old.is_none() {
            if status {
                return Err(ApiError::not_found(key));
            }
            self.check_namespace_open(key)?;
        }
        let cfg = match cfg {
            Value::Object(mut m) if !status => {
                m.remove("status");
                Value::Object(m)
            }
            cfg => json!({"status": cfg.get("status").cloned().unwrap_or(json!({}))}),
        };
        let mut obj = old.as_ref().map_or_else(|| Self::skeleton(key), |s| s.obj.clone());
        let mut owners = old.map(|s| s.owners).unwrap_or_default();
        let me = OwnerKey { manager: manager.into(), apply: true, status };
        let mine: BTreeSet<FieldPath> = leaf_paths(&cfg).into_iter().filter(is_tracked).collect();
        if !force {
            let conflicts: Vec<String> = owners
                .iter()
                .filter(|(k, _)| **k != me)
                .flat_map(|(k, o)| o.fields.intersection(&mine).map(move |p| (k, p)))
                .filter(|(_, p)| at(&obj, p) != at(&cfg, p))
                .map(|(k, p)| format!("conflict with \"{}\": .{}", k.manager, p.join(".")))
                .collect();
            if !conflicts.is_empty() {
                return Err(ApiError::new(
                    409,
                    "Conflict",
                    format!("Apply failed with {} conflicts: {}", conflicts.len(), conflicts.join("; ")),
                ));
            }
        }
        let before = owners.get(&me).map(|o| o.fields.clone()).unwrap_or_default();
        for p in before.difference(&mine) {
            if !owners.iter().any(|(k, o)| *k != me && o.fields.contains(p)) {
                remove_path(&mut obj, p);
            }
        }
        if force {
            for o in owners.values_mut() {
                o.fields.retain(|p| !mine.contains(p));
            }
        }
        let created = obj["metadata"].get("uid").is_none();
        merge_patch(&mut obj, &cfg);
        let time = owners.get(&me).map(|o| o.time.clone()).unwrap_or_default();
        owners.insert(me.clone(), Owner { fields: mine, time });
        Ok((created, self.commit(key, obj, owners, Some(&me))))
    }

    /// PATCH with a merge patch or a JSON patch (`json` true); 404 when missing.
    pub(crate) fn patch(
        &mut self,
        key: &Key,
        patch: &Value,
        json: bool,
        manager: &str,
        status: bool,
    ) -> ApiResult<Value> {
        let old = self.get(key)?;
        let new = if json {
            json_patch(&old, patch).map_err(|e| ApiError::new(422, "Invalid", e))?
        } else {
            let mut new = old.clone();
            merge_patch(&mut new, patch);
            new
        };
        Self::check_body(key, &new, true)?;
        let new = self.client_body(key, new)?;
        let new = Self::scope(Some(&old), new, status);
        Ok(self.update(key, new, manager, status))
    }

    /// PUT: replace the object; a resourceVersion in the body must be current.
    pub(crate) fn replace(&mut self, key: &Key, body: Value, manager: &str, status: bool) -> ApiResult<Value> {
        let old = self.get(key)?;
        Self::check_body(key, &body, false)?;
        let mut new = self.client_body(key, body)?;
        for k in ["apiVersion", "kind"] {
            new[k] = old[k].clone();
        }
        let m = meta(&mut new);
        m.insert("name".into(), json!(key.name));
        if !key.ns.is_empty() {
            m.insert("namespace".into(), json!(key.ns));
        }
        let new = Self::scope(Some(&old), new, status);
        Ok(self.update(key, new, manager, status))
    }

    /// Store `new` as an update by `manager`, who takes ownership of the fields it changed.
    pub(crate) fn update(&mut self, key: &Key, new: Value, manager: &str, status: bool) -> Value {
        let mut owners = self.objects.get(key).map(|s| s.owners.clone()).unwrap_or_default();
        let old = self.objects.get(key).map_or(Value::Null, |s| s.obj.clone());
        let (set, gone) = changed_paths(&old, &new);
        let set: BTreeSet<FieldPath> = set.into_iter().filter(is_tracked).collect();
        for o in owners.values_mut() {
            o.fields.retain(|p| !set.contains(p) && !gone.contains(p));
        }
        let me = OwnerKey { manager: manager.into(), apply: false, status };
        let entry = owners.entry(me.clone()).or_insert(Owner { fields: BTreeSet::new(), time: String::new() });
        entry.fields.extend(set);
        self.commit(key, new, owners, Some(&me))
    }

    /// Keep an object: server metadata, generation (bumped when anything but metadata and status
    /// changed), managedFields, and a new resourceVersion unless nothing changed. An object being
    /// deleted whose last finalizer went is removed (namespaces: by the controller).
    fn commit(
        &mut self,
        key: &Key,
        mut obj: Value,
        mut owners: BTreeMap<OwnerKey, Owner>,
        writer: Option<&OwnerKey>,
    ) -> Value {
        let old = self.objects.get(key);
        let t = now();
        {
            let m = meta(&mut obj);
            match old {
                Some(old) => {
                    for k in ["uid", "creationTimestamp", "generation", "resourceVersion"] {
                        if let Some(v) = old.obj["metadata"].get(k) {
                            m.insert(k.into(), v.clone());
                        }
                    }
                }
                None => {
                    m.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
                    m.insert("creationTimestamp".into(), json!(t));
                    m.insert("generation".into(), json!(1));
                }
            }
        }
        if old.is_none() && key.is_namespace() && obj["status"]["phase"].is_null() {
            obj["status"] = json!({"phase": "Active"});
        }
        let differs = |a: &Value, b: &Value| {
            let strip = |v: &Value| {
                let mut v = v.clone();
                meta(&mut v).remove("managedFields");
                v
            };
            strip(a) != strip(b)
        };
        if let Some(old) = old {
            if body_of(&old.obj) != body_of(&obj) {
                let g = old.obj["metadata"]["generation"].as_i64().unwrap_or(1);
                meta(&mut obj).insert("generation".into(), json!(g + 1));
            }
        }
        let changed = old.is_none_or(|o| differs(&o.obj, &obj));
        if let Some(o) = writer.and_then(|w| owners.get_mut(w)).filter(|o| changed || o.time.is_empty()) {
            o.time = t.clone();
        }
        owners.retain(|_, o| !o.fields.is_empty());
        let managed: Vec<Value> = owners
            .iter()
            .map(|(k, o)| {
                let mut e = json!({"manager": k.manager, "operation": if k.apply { "Apply" } else { "Update" },
                    "apiVersion": key.gv, "time": o.time, "fieldsType": "FieldsV1", "fieldsV1": fields_v1(&o.fields)});
                if k.status {
                    e["subresource"] = json!("status");
                }
                e
            })
            .collect();
        if managed.is_empty() {
            meta(&mut obj).remove("managedFields");
        } else {
            meta(&mut obj).insert("managedFields".into(), json!(managed));
        }
        if let Some(old) = old {
            if old.obj == obj {
                return obj;
            }
        }
        self.rv += 1;
        self.touch(key);
        meta(&mut obj).insert("resourceVersion".into(), json!(self.rv.to_string()));
        if deleting(&obj) && !finalizers(&obj) && !key.is_namespace() {
            self.objects.remove(key);
        } else {
            self.objects.insert(key.clone(), Stored { obj: obj.clone(), owners });
        }
        obj
    }

    /// DELETE: (HTTP status, the object). Removed at once (200) unless it has finalizers or is a
    /// namespace: then deletionTimestamp is set (202) and the object stays until its finalizers
    /// are gone (a namespace: until the controller emptied it).
    pub(crate) fn delete(&mut self, key: &Key) -> ApiResult<(u16, Value)> {
        let obj = self.get(key)?;
        if !key.is_namespace() && !finalizers(&obj) {
            self.remove(key);
            return Ok((200, obj));
        }
        Ok((202, self.mark_deleted(key)))
    }

    /// Set deletionTimestamp (and a namespace's Terminating phase) once.
    pub(crate) fn mark_deleted(&mut self, key: &Key) -> Value {
        let Some(stored) = self.objects.get(key) else { return Value::Null };
        if deleting(&stored.obj) {
            return stored.obj.clone();
        }
        let mut obj = stored.obj.clone();
        meta(&mut obj).insert("deletionTimestamp".into(), json!(now()));
        if key.is_namespace() {
            obj["status"]["phase"] = json!("Terminating");
        }
        let owners = stored.owners.clone();
        self.commit(key, obj, owners, None)
    }

    /// Remove outright (the namespace controller's last step).
    pub(crate) fn remove(&mut self, key: &Key) {
        if self.objects.remove(key).is_some() {
            self.rv += 1;
            self.touch(key);
        }
    }

    /// For the controller: this object changed, and so did what its namespace holds.
    fn touch(&mut self, key: &Key) {
        self.dirty.insert(key.clone());
        if !key.ns.is_empty() {
            self.dirty.insert(Key::namespace(&key.ns));
        }
    }

    /// For the controller: look at everything again (its settings changed).
    pub(crate) fn touch_all(&mut self) {
        self.dirty = self.objects.keys().cloned().collect();
    }

    pub(crate) fn keys(&self, gv: &str, plural: &str) -> Vec<Key> {
        self.objects.keys().filter(|k| k.gv == gv && k.plural == plural).cloned().collect()
    }

    pub(crate) fn namespace_open(&self, ns: &str) -> bool {
        self.objects.get(&Key::namespace(ns)).is_some_and(|s| !deleting(&s.obj))
    }

    pub(crate) fn in_namespace(&self, ns: &str) -> Vec<Key> {
        let from = Key::new("", "", Some(ns), "");
        self.objects.range(from..).map(|(k, _)| k).take_while(|k| k.ns == ns).cloned().collect()
    }
}
