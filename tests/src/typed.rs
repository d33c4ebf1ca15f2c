//! Reports read back into the tracer's own report types, strictly: a JSON line must
//! hold every field of its type and no other, so a field the tracer renamed or dropped
//! fails the test that reads it, and no assertion can pass on a key that is gone.
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;
pub use tracer::report::{Envelope, Header};

use crate::{Finished, Tracer};

/// `v` as the report type `B` (with its header): every key of `v` is a field of the
/// type and every field of the type is in `v` (the typed report is written back and
/// compared with `v`).
pub fn typed<B: Serialize + DeserializeOwned>(v: &Value) -> Envelope<B> {
    strict(v)
}

/// `v` as the type `T`, strictly: as [`typed`], for what is not a detector's report
/// (`tracer doctor --json`).
pub fn strict<T: Serialize + DeserializeOwned>(v: &Value) -> T {
    let r: T = serde_json::from_value(v.clone()).unwrap_or_else(|e| {
        panic!(
            "the JSON does not read as {}: {e}\n{v}",
            std::any::type_name::<T>()
        )
    });
    let back = serde_json::to_value(&r).expect("a typed report serializes");
    if &back != v {
        panic!(
            "the JSON's keys are not those of {}:\n{}",
            std::any::type_name::<T>(),
            diff(v, &back, "")
        );
    }
    r
}

/// Where two JSON values differ: keys on one side only, and values that differ.
fn diff(a: &Value, b: &Value, at: &str) -> String {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let mut out = String::new();
            for (k, v) in x {
                match y.get(k) {
                    None => out += &format!("  {at}.{k}: in the report, not in the type\n"),
                    Some(w) => out += &diff(v, w, &format!("{at}.{k}")),
                }
            }
            for k in y.keys().filter(|k| !x.contains_key(*k)) {
                out += &format!("  {at}.{k}: in the type, not in the report\n");
            }
            out
        }
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => (x.iter().zip(y))
            .enumerate()
            .map(|(i, (v, w))| diff(v, w, &format!("{at}[{i}]")))
            .collect(),
        _ if a == b => String::new(),
        _ => format!("  {at}: {a} in the report, {b} written back\n"),
    }
}

impl Finished {
    /// Every JSON report, as the report type `B`.
    pub fn reports_as<B: Serialize + DeserializeOwned>(&self) -> Vec<Envelope<B>> {
        self.reports().iter().map(typed).collect()
    }

    /// The final report, as the report type `B`.
    pub fn final_as<B: Serialize + DeserializeOwned>(&self) -> Envelope<B> {
        typed(&self.final_report())
    }
}

impl Tracer {
    /// [`Tracer::report_where`] on the typed report.
    pub fn report_as_where<B: Serialize + DeserializeOwned>(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Envelope<B>) -> bool,
    ) -> Envelope<B> {
        typed(&self.report_where(timeout, |v| pred(&typed(v))))
    }
}
