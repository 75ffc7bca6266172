//! The results of a run as a markdown table, and its place in docs/PERFORMANCE.md.

use std::fmt::Write as _;

/// The section of a run with the appliance's default durability (fsync).
pub const SECTION: &str = "https";
/// The section of a run with `ledger.durability = none` (the network path without the WAL).
pub const SECTION_DURABILITY_NONE: &str = "https-durability-none";
/// The section of `--ledger-backends`: the appliance with the embedded ledger and with
/// TigerBeetle clusters.
pub const SECTION_LEDGER_BACKENDS: &str = "https-ledger-backends";

/// One load run's figures, as `https load` printed them.
#[derive(Clone, Debug, PartialEq)]
pub struct LoadResult {
    pub requests: u64,
    pub ok: u64,
    pub errors: u64,
    pub status_503: u64,
    pub ok_per_s: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub ledger_check: String,
    pub first_error: Option<String>,
}

impl LoadResult {
    /// The figures of the table from a whole `https load` result.
    pub fn from_run(r: &crate::results::RunResult) -> LoadResult {
        LoadResult {
            requests: r.totals.requests,
            ok: r.totals.ok,
            errors: r.totals.errors,
            status_503: r.status_503(),
            ok_per_s: r.totals.ok_per_s,
            p50_us: r.latency_us.p50,
            p99_us: r.latency_us.p99,
            p999_us: r.latency_us.p999,
            ledger_check: r.ledger_check.clone(),
            first_error: r.first_error.clone(),
        }
    }
}

/// One line of the table: a server, a kind of load, and what came of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Row {
    pub server: String,
    pub run: String,
    pub conns: usize,
    pub outcome: Result<LoadResult, String>,
    /// Server CPU time (all its threads and direct children) per answered request.
    pub cpu_us_per_request: Option<f64>,
}

/// What was learnt about a server apart from the load runs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ServerNotes {
    pub server: String,
    /// From spawn to ready (readyz 200, or the port accepting).
    pub ready_ms: Option<f64>,
    pub lines: Vec<String>,
    pub failure: Option<String>,
}

pub fn render(header: &str, rows: &[Row], notes: &[ServerNotes]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{header}\n");
    out.push_str("| server | run | conns | requests | ok/s | p50 µs | p99 µs | p99.9 µs | errors (503) | server CPU µs/req | ledger check |\n");
    out.push_str("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|\n");
    for row in rows {
        match &row.outcome {
            Ok(r) => {
                let cpu = row.cpu_us_per_request.map(|c| format!("{c:.0}")).unwrap_or_else(|| "-".to_owned());
                let _ = writeln!(
                    out,
                    "| {} | {} | {} | {} | {:.0} | {} | {} | {} | {} ({}) | {} | {} |",
                    row.server, row.run, row.conns, r.requests, r.ok_per_s, r.p50_us, r.p99_us, r.p999_us, r.errors,
                    r.status_503, cpu, r.ledger_check
                );
            }
            Err(e) => {
                let _ = writeln!(out, "| {} | {} | {} | failed: {} | | | | | | | |", row.server, row.run, row.conns, one_line(e));
            }
        }
    }
    let errors: Vec<String> = rows
        .iter()
        .filter_map(|r| {
            let first = r.outcome.as_ref().ok()?.first_error.as_ref()?;
            Some(format!("- {} / {} / {} conns: first error: {}", r.server, r.run, r.conns, one_line(first)))
        })
        .collect();
    if !errors.is_empty() {
        out.push('\n');
        for e in errors {
            let _ = writeln!(out, "{e}");
        }
    }
    out.push('\n');
    for n in notes {
        let ready = n.ready_ms.map(|ms| format!("ready {ms:.0} ms after start")).unwrap_or_else(|| "not ready".to_owned());
        let _ = write!(out, "- **{}**: {ready}", n.server);
        if let Some(f) = &n.failure {
            let _ = write!(out, "; failed: {}", one_line(f));
        }
        for l in &n.lines {
            let _ = write!(out, "; {l}");
        }
        out.push('\n');
    }
    out
}

/// What makes a run untrustworthy: a phase that failed or saw errors, a ledger check that did
/// not pass, a server that failed. One line each; empty when all is well.
pub fn problems(rows: &[Row], notes: &[ServerNotes]) -> Vec<String> {
    let mut out = Vec::new();
    for row in rows {
        let what = format!("{} / {} / {} conns", row.server, row.run, row.conns);
        match &row.outcome {
            Err(e) => out.push(format!("{what}: failed: {}", one_line(e))),
            Ok(r) => {
                if r.errors > 0 {
                    out.push(format!("{what}: {} errors", r.errors));
                }
                if r.ledger_check != "ok" && r.ledger_check != "skipped" {
                    out.push(format!("{what}: ledger check: {}", r.ledger_check));
                }
            }
        }
    }
    for n in notes {
        if let Some(f) = &n.failure {
            out.push(format!("{}: {}", n.server, one_line(f)));
        }
    }
    out
}

/// A message fit for one table cell: first line, no pipes, bounded.
fn one_line(s: &str) -> String {
    let first = s.lines().next().unwrap_or("").replace('|', "/");
    if first.chars().count() > 160 {
        first.chars().take(160).collect::<String>() + "…"
    } else {
        first
    }
}

/// `doc` with the text between the markers `<!-- name:begin -->` and `<!-- name:end -->`
/// replaced by `section` (the markers are added at the end when absent).
pub fn splice(doc: &str, name: &str, section: &str) -> String {
    let begin = format!("<!-- {name}:begin -->");
    let end = format!("<!-- {name}:end -->");
    let body = format!("{begin}\n{}\n{end}", section.trim_end());
    match (doc.find(&begin), doc.find(&end)) {
        (Some(b), Some(e)) if b < e => format!("{}{}{}", &doc[..b], body, &doc[e + end.len()..]),
        _ => {
            let sep = if doc.is_empty() || doc.ends_with("\n\n") {
                ""
            } else if doc.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            format!("{doc}{sep}{body}\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line() -> LoadResult {
        LoadResult {
            requests: 1000,
            ok: 998,
            errors: 2,
            status_503: 2,
            ok_per_s: 1996.0,
            p50_us: 400,
            p99_us: 2000,
            p999_us: 5000,
            ledger_check: "ok".into(),
            first_error: Some("503 busy".into()),
        }
    }

    #[test]
    fn takes_the_table_figures_from_a_load_result() {
        let mut full = crate::results::tests::sample("pantera", 1996.0, 2000);
        full.totals.requests = 1000;
        full.totals.ok = 998;
        full.totals.errors = 2;
        full.errors.insert("status_503".into(), 2);
        full.first_error = Some("503 busy".into());
        full.latency_us.p50 = 400;
        full.latency_us.p999 = 5000;
        assert_eq!(LoadResult::from_run(&full), line());
    }

    #[test]
    fn renders_rows_failures_and_notes() {
        let ok = line();
        let rows = vec![
            Row { server: "pantera".into(), run: "keep-alive".into(), conns: 16, outcome: Ok(ok), cpu_us_per_request: Some(41.6) },
            Row { server: "nginx".into(), run: "keep-alive".into(), conns: 1, outcome: Err("no | route\nmore".into()), cpu_us_per_request: None },
        ];
        let notes = vec![ServerNotes { server: "pantera".into(), ready_ms: Some(812.4), lines: vec!["3 batches".into()], failure: None }];
        let md = render("### run", &rows, &notes);
        assert!(md.contains("| pantera | keep-alive | 16 | 1000 | 1996 | 400 | 2000 | 5000 | 2 (2) | 42 | ok |"), "{md}");
        assert!(md.contains("| nginx | keep-alive | 1 | failed: no / route |"), "{md}");
        assert!(md.contains("first error: 503 busy"), "{md}");
        assert!(md.contains("- **pantera**: ready 812 ms after start; 3 batches"), "{md}");
    }

    #[test]
    fn problems_name_failures_errors_and_bad_ledger_checks() {
        let ok = line();
        let clean = LoadResult { errors: 0, status_503: 0, first_error: None, ..ok.clone() };
        let row = |outcome| Row { server: "s".into(), run: "r".into(), conns: 1, outcome, cpu_us_per_request: None };
        assert!(problems(&[row(Ok(clean.clone()))], &[]).is_empty());
        let skipped = LoadResult { ledger_check: "skipped".into(), ..clean.clone() };
        assert!(problems(&[row(Ok(skipped))], &[]).is_empty());
        let lost = LoadResult { ledger_check: "mismatch: credits_posted 9, created replies 10".into(), ..clean };
        let failed = ServerNotes { server: "nginx".into(), failure: Some("not ready".into()), ..ServerNotes::default() };
        let p = problems(&[row(Ok(ok)), row(Ok(lost)), row(Err("no result".into()))], &[failed]);
        assert_eq!(p, vec![
            "s / r / 1 conns: 2 errors".to_owned(),
            "s / r / 1 conns: ledger check: mismatch: credits_posted 9, created replies 10".to_owned(),
            "s / r / 1 conns: failed: no result".to_owned(),
            "nginx: not ready".to_owned(),
        ]);
    }

    #[test]
    fn splices_between_the_markers_and_only_there() {
        let (b, e) = ("<!-- https:begin -->", "<!-- https:end -->");
        let (nb, ne) = ("<!-- https-durability-none:begin -->", "<!-- https-durability-none:end -->");
        let doc = format!("# P\n\nintro\n\n{b}\nold table\n{e}\n\n{nb}\nother\n{ne}\n## Notes\nkept\n");
        let new = splice(&doc, SECTION, "new table\n");
        assert_eq!(new, format!("# P\n\nintro\n\n{b}\nnew table\n{e}\n\n{nb}\nother\n{ne}\n## Notes\nkept\n"));
        // Idempotent on its own output.
        assert_eq!(splice(&new, SECTION, "new table"), new);
        // The other section is its own.
        let both = splice(&new, SECTION_DURABILITY_NONE, "none table");
        assert_eq!(both, format!("# P\n\nintro\n\n{b}\nnew table\n{e}\n\n{nb}\nnone table\n{ne}\n## Notes\nkept\n"));
        // Absent markers: appended.
        assert_eq!(splice("# P\n", SECTION, "t"), format!("# P\n\n{b}\nt\n{e}\n"));
        assert_eq!(splice("", SECTION, "t"), format!("{b}\nt\n{e}\n"));
    }
}
