//! The reference documentation is complete: every error reason, metric, flag and emulator channel
//! the code defines is documented, and the top-level help names every command.

use std::{path::Path, process::Command};

fn read(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The string values of `pub const NAME: &str = "value";` lines in `source` that satisfy `keep`.
fn string_constants(source: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    source
        .lines()
        .filter_map(|line| line.trim().strip_prefix("pub const ")?.split_once(": &str = \""))
        .filter_map(|(_, rest)| rest.split_once('"').map(|(value, _)| value.to_owned()))
        .filter(|value| keep(value))
        .collect()
}

fn undocumented<'a>(names: &'a [String], document: &str) -> Vec<&'a String> {
    names.iter().filter(|name| !document.contains(&format!("`{name}`"))).collect()
}

#[test]
fn every_error_reason_is_in_docs_errors() {
    let status = read("src/contract/status.rs");
    let reasons = &status[status.find("pub mod reason").expect("the reason module")..];
    let reasons = &reasons[..reasons.find("\n}").expect("its end")];
    let reasons = string_constants(reasons, |_| true);
    assert!(reasons.len() > 30, "{reasons:?}");
    let missing = undocumented(&reasons, &read("docs/errors.md"));
    assert!(missing.is_empty(), "reasons missing from docs/errors.md: {missing:?}");
}

#[test]
fn every_metric_is_in_docs_metrics() {
    let metrics: Vec<String> = ["src/telemetry/metrics.rs", "src/fleet/connection.rs"]
        .iter()
        .flat_map(|path| string_constants(&read(path), |value| value.starts_with("stream_export_")))
        .collect();
    assert!(metrics.len() >= 9, "{metrics:?}");
    let missing = undocumented(&metrics, &read("docs/metrics.md"));
    assert!(missing.is_empty(), "metrics missing from docs/metrics.md: {missing:?}");
}

fn help(args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_stream-export")).args(args).output().expect("the binary runs");
    assert!(output.status.success(), "{args:?}: {output:?}");
    String::from_utf8(output.stdout).expect("UTF-8 help")
}

#[test]
fn every_serve_flag_is_in_docs_flags() {
    let flags: Vec<String> = help(&["serve", "--help"])
        .lines()
        .filter_map(|line| {
            // An option's own line starts with it (`-h, --help`, `--listen <LISTEN>`); prose does not.
            let mut words = line.trim_start().split([' ', ',', '=']).filter(|word| !word.is_empty());
            let first = words.next()?;
            let flag = if first.len() == 2 && first.starts_with('-') { words.next()? } else { first };
            (flag.starts_with("--") && flag != "--help").then(|| flag.to_owned())
        })
        .collect();
    assert!(flags.len() > 40, "{flags:?}");
    let missing = undocumented(&flags, &read("docs/flags.md"));
    assert!(missing.is_empty(), "flags missing from docs/flags.md: {missing:?}");
}

#[test]
fn the_top_level_help_names_every_task_command() {
    let help = help(&["--help"]);
    let task = help.lines().find(|line| line.trim_start().starts_with("task ")).expect("a task line");
    for command in ["get", "watch", "list"] {
        assert!(task.contains(command), "`task {command}` missing from: {task}");
    }
}

#[test]
fn the_quick_start_lists_every_channel_of_the_emulator() {
    let data = read("src/emulator/data.rs");
    let channels: Vec<String> = data
        .lines()
        .filter_map(|line| {
            let spec = line.trim().strip_prefix("ChannelSpec { kind: \"")?;
            let (kind, rest) = spec.split_once('"')?;
            let id = rest.strip_prefix(", id: \"")?.split_once('"')?.0;
            Some(format!("{kind}:{id}"))
        })
        .collect();
    assert!(channels.len() >= 11, "{channels:?}");
    let readme = read("README.md");
    let quick_start = &readme[readme.find("## Quick start").expect("a Quick start")..];
    let quick_start = &quick_start[..quick_start[3..].find("\n## ").map_or(quick_start.len(), |end| end + 3)];
    let missing = undocumented(&channels, quick_start);
    assert!(missing.is_empty(), "channels missing from the Quick start: {missing:?}");
}
