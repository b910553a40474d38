//! The figures of a run: a human table and one machine-readable `BENCH {...}` line each.

use serde_json::json;

/// One measured figure and, when it has one, its target.
pub struct Figure {
    /// Stable identifier, e.g. `unary_cost_ratio`.
    pub name: &'static str,
    /// The measured value.
    pub value: f64,
    /// Unit for the table, e.g. `x`, `µs`, `KiB`.
    pub unit: &'static str,
    /// The target as text (`<=2.5`), or `None` for an informational figure.
    pub target: Option<Target>,
}

/// A bound the figure must respect.
#[derive(Clone, Copy)]
pub enum Target {
    /// The value must be at most this.
    AtMost(f64),
    /// The value must be below this.
    Below(f64),
    /// The value must be at least this.
    AtLeast(f64),
}

impl Target {
    fn met(self, value: f64) -> bool {
        match self {
            Target::AtMost(bound) => value <= bound,
            Target::Below(bound) => value < bound,
            Target::AtLeast(bound) => value >= bound,
        }
    }

    fn text(self) -> String {
        match self {
            Target::AtMost(bound) => format!("<={bound}"),
            Target::Below(bound) => format!("<{bound}"),
            Target::AtLeast(bound) => format!(">={bound}"),
        }
    }
}

impl Figure {
    /// A figure with a target.
    pub fn target(name: &'static str, value: f64, unit: &'static str, target: Target) -> Self {
        Self { name, value, unit, target: Some(target) }
    }

    /// A figure reported for context, with no target.
    pub fn info(name: &'static str, value: f64, unit: &'static str) -> Self {
        Self { name, value, unit, target: None }
    }

    fn met(&self) -> Option<bool> {
        self.target.map(|t| t.met(self.value))
    }
}

/// Prints the table, then one `BENCH` line per figure (the lines CI and scripts read).
pub fn print(figures: &[Figure]) {
    println!();
    println!("{:<42} {:>12} {:<6} {:>10} {:>5}", "figure", "value", "unit", "target", "met");
    println!("{}", "-".repeat(79));
    for figure in figures {
        let target = figure.target.map_or_else(|| "-".to_owned(), Target::text);
        let met = match figure.met() {
            Some(true) => "yes",
            Some(false) => "NO",
            None => "-",
        };
        println!("{:<42} {:>12.3} {:<6} {:>10} {:>5}", figure.name, figure.value, figure.unit, target, met);
    }
    println!();
    for figure in figures {
        let mut line = json!({"figure": figure.name, "value": round(figure.value), "unit": figure.unit});
        if let (Some(target), Some(met)) = (figure.target, figure.met()) {
            line["target"] = json!(target.text());
            line["met"] = json!(met);
        }
        println!("BENCH {line}");
    }
}

/// Three decimals are plenty and keep the lines readable.
fn round(value: f64) -> f64 {
    (value * 1000.0).round() / 1000.0
}

/// The `q`-quantile (0..=1) of `samples` by nearest rank; `samples` need not be sorted.
pub fn quantile(samples: &mut [f64], q: f64) -> f64 {
    if samples.is_empty() {
        return f64::NAN;
    }
    samples.sort_by(f64::total_cmp);
    let rank = ((q * samples.len() as f64).ceil() as usize).clamp(1, samples.len());
    samples[rank - 1]
}

/// The median of `values`.
pub fn median(values: &[f64]) -> f64 {
    quantile(&mut values.to_vec(), 0.5)
}
