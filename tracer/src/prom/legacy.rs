//! Transitional: the metrics of a report still built as JSON, read back by key. Each
//! detector moves to its typed report and [`super::Families`]' typed methods; this
//! module goes when the last one has.
use serde_json::Value;

use super::{Families, Kind, Metric, Num, Sample};

impl Num {
    /// A JSON number or boolean (1/0); None for anything else (null: not known).
    pub fn of(v: &Value) -> Option<Num> {
        match v {
            Value::Bool(b) => Some(Num::Int(*b as i64)),
            Value::Number(n) => n
                .as_i64()
                .map(Num::Int)
                .or_else(|| n.as_f64().map(Num::Float)),
            _ => None,
        }
    }
}

impl Families {
    /// The histogram `m` from a latency object of the report: its `count`, `sum_s`
    /// and `buckets` (`[{"le_s", "count"}]`, cumulative, at `m.buckets`; see
    /// `output::Buckets`). A histogram with no samples has its zero buckets, as a
    /// counter that counted nothing is 0. Nothing when the object has no buckets (not
    /// measured), or buckets other than the described ones.
    pub fn histogram(&mut self, m: &'static Metric, labels: &[(&str, &str)], obj: &Value) {
        debug_assert!(m.kind == Kind::Histogram, "{}: not a histogram", m.name);
        let (Kind::Histogram, Some(count), Some(sum), Some(list)) = (
            m.kind,
            obj["count"].as_u64(),
            obj["sum_s"].as_f64(),
            obj["buckets"].as_array(),
        ) else {
            return;
        };
        // A bound read back from JSON may differ from the described one in its last bit.
        let same_bounds = list.len() == m.buckets.len()
            && list.iter().zip(m.buckets).all(|(b, &le)| {
                b["le_s"]
                    .as_f64()
                    .is_some_and(|x| (x - le).abs() <= le * 1e-9)
            });
        let cumulative: Vec<u64> = list.iter().map_while(|b| b["count"].as_u64()).collect();
        let consistent = cumulative.len() == list.len()
            && cumulative.windows(2).all(|w| w[0] <= w[1])
            && cumulative.last().is_none_or(|&c| c <= count);
        debug_assert!(
            same_bounds && consistent,
            "{}: the report's buckets {list:?} (count {count}) are not the described {:?}",
            m.name,
            m.buckets
        );
        if same_bounds && consistent {
            self.push(
                m,
                labels,
                Sample::Histogram {
                    sum,
                    count,
                    cumulative,
                },
            );
        }
    }

    /// A sample from `obj[key]` when it is a number or boolean; nothing when the field
    /// is missing or null (not known).
    pub fn field(&mut self, m: &'static Metric, labels: &[(&str, &str)], obj: &Value, key: &str) {
        self.field_per(m, labels, obj, key, 1.0)
    }

    /// As [`Families::field`], the value divided by `per` (to base units).
    pub fn field_per(
        &mut self,
        m: &'static Metric,
        labels: &[(&str, &str)],
        obj: &Value,
        key: &str,
        per: f64,
    ) {
        if let Some(v) = Num::of(&obj[key]) {
            self.sample(m, labels, v.per(per));
        }
    }

    /// A sample of `m` from a report row: `row[key]` (divided by `per`) labelled with
    /// the row's fields of the labels' names (a row lists a filesystem by `mount`,
    /// `device` and `fstype`, a process by `pid` and `comm`). Nothing when `row[key]`
    /// is missing or null.
    pub fn row(&mut self, m: &'static Metric, row: &Value, key: &str, per: f64) {
        if let Some(v) = Num::of(&row[key]) {
            self.row_value(m, row, v.per(per));
        }
    }

    /// As [`Families::row`], with the value given.
    pub fn row_value(&mut self, m: &'static Metric, row: &Value, v: Num) {
        let values: Vec<String> = m
            .labels
            .iter()
            .map(|l| match (*l, &row[*l]) {
                (_, Value::String(s)) => s.clone(),
                // A process's container (container.rs), "" (no label) when it has none.
                ("container_id", _) => container_id(&row["container"]),
                ("pod_uid", _) => s(&row["container"], "pod_uid").to_string(),
                ("qos", _) => s(&row["container"], "qos").to_string(),
                // Names from the runtime's API (container/names.rs), when it gave them.
                ("container", _) => s(&row["container"], "name").to_string(),
                ("pod", _) => s(&row["container"], "pod").to_string(),
                ("namespace", _) => s(&row["container"], "namespace").to_string(),
                (_, Value::Null) => String::new(),
                (_, other) => other.to_string(),
            })
            .collect();
        let labels: Vec<(&str, &str)> = m
            .labels
            .iter()
            .zip(&values)
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        self.sample(m, &labels, v);
    }
}

/// Rows of `list` (an array of objects in the report), at most `n`.
pub fn rows<'a>(r: &'a Value, list: &str, n: usize) -> impl Iterator<Item = &'a Value> {
    r[list].as_array().into_iter().flatten().take(n)
}

/// `runtime://id` of a row's `container` object, "" when there is none.
fn container_id(c: &Value) -> String {
    match (c["runtime"].as_str(), c["id"].as_str()) {
        (Some(r), Some(id)) => format!("{r}://{id}"),
        _ => String::new(),
    }
}

/// A string field of a row ("" when missing).
pub fn s<'a>(row: &'a Value, key: &str) -> &'a str {
    row[key].as_str().unwrap_or("")
}

/// The rows of `list` with the largest `by`, at most `n`: the bounded top-N that
/// per-process or per-path series are limited to (ties keep the report's order).
pub fn top<'a>(r: &'a Value, list: &str, by: &str, n: usize) -> Vec<&'a Value> {
    top_of(rows(r, list, usize::MAX), by, n)
}

/// As [`top`], of any rows.
pub fn top_of<'a>(rows: impl Iterator<Item = &'a Value>, by: &str, n: usize) -> Vec<&'a Value> {
    let mut v: Vec<&Value> = rows.collect();
    let f = |x: &Value| x[by].as_f64().unwrap_or(0.0);
    v.sort_by(|a, b| f(b).total_cmp(&f(a)));
    v.truncate(n);
    v
}

/// A report's level word as a number: ok 0, warn 1, crit 2.
pub fn severity(level: &Value) -> Option<i64> {
    match level.as_str()? {
        "ok" => Some(0),
        "warn" => Some(1),
        "crit" => Some(2),
        _ => None,
    }
}


/// A report still built as JSON and text (a detector not yet typed), with the
/// detector's JSON-reading metrics.
pub struct Report {
    pub json: Value,
    pub text: String,
}

impl Report {
    pub fn legacy(self, collect: fn(&Value, &mut Families)) -> Box<dyn crate::report::Body> {
        Box::new(Legacy {
            json: self.json,
            text: self.text,
            collect,
        })
    }
}

struct Legacy {
    json: Value,
    text: String,
    collect: fn(&Value, &mut Families),
}

impl serde::Serialize for Legacy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.json.serialize(s)
    }
}

impl crate::report::Body for Legacy {
    fn text(&self) -> String {
        self.text.clone()
    }
    fn collect(&self, out: &mut Families) {
        (self.collect)(&self.json, out)
    }
    fn state_evicted(&self) -> Vec<(&'static str, u64)> {
        let Some(states) = self.json["state_evicted"].as_object() else {
            return Vec::new();
        };
        states
            .iter()
            .filter_map(|(k, v)| Some((&*String::leak(k.clone()), v.as_u64()?)))
            .collect()
    }
}
