//! `docs/cli.md` is the command-line reference rendered from the clap definitions
//! (`textual_inversion::cli::Cli`): every subcommand's description and usage, and each argument
//! with its names, aliases, value name, default, possible values and help. This test renders it
//! again and fails when the file differs; `UPDATE_DOCS=1` rewrites the file instead.
use clap::{Arg, ArgAction, Command};
use std::fmt::Write;
use std::path::PathBuf;

fn cli_md() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md")
}

/// Text on one line, safe inside a table cell: `|` escaped, and `<`/`>` outside code spans
/// written as entities (GitHub would take `<cat-toy>` for an HTML tag and drop it).
fn cell(s: &str) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    let mut out = String::new();
    let mut in_code = false;
    for c in one_line.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
    out
}

/// A sentence: clap's derive drops the final period of one-line doc comments.
fn sentence(s: &str) -> String {
    let s = cell(s);
    match s.chars().last() {
        None => s,
        Some('.' | '!' | '?' | ':') => s,
        Some(_) => s + ".",
    }
}

fn help_text(arg: &Arg) -> String {
    arg.get_long_help().or(arg.get_help()).map(|h| sentence(&h.to_string())).unwrap_or_default()
}

/// Flags (present or not, or counted): clap's implicit `false`/`0` default says nothing.
fn is_flag(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse | ArgAction::Count)
}

fn is_builtin(arg: &Arg) -> bool {
    matches!(arg.get_id().as_str(), "help" | "version")
}

fn takes_value(arg: &Arg) -> bool {
    arg.get_num_args().map(|n| n.takes_values()).unwrap_or_else(|| arg.get_action().takes_values())
}

fn value_names(arg: &Arg) -> String {
    match arg.get_value_names() {
        Some(names) => names.iter().map(|n| format!("<{n}>")).collect::<Vec<_>>().join(" "),
        None => format!("<{}>", arg.get_id().as_str().to_uppercase()),
    }
}

/// The first column: how the argument is written on the command line.
fn names(arg: &Arg) -> String {
    if arg.is_positional() {
        let dots = if matches!(arg.get_action(), ArgAction::Append) { "..." } else { "" };
        return format!("`{}{dots}`", value_names(arg));
    }
    let mut out = Vec::new();
    if let Some(s) = arg.get_short() {
        out.push(format!("`-{s}`"));
    }
    if let Some(l) = arg.get_long() {
        out.push(format!("`--{l}`"));
    }
    out.join(", ")
}

fn row(arg: &Arg) -> String {
    let value = if arg.is_positional() {
        String::new()
    } else if takes_value(arg) {
        format!("`{}`", value_names(arg))
    } else {
        String::new()
    };
    let defaults: Vec<String> = if is_flag(arg) { &[][..] } else { arg.get_default_values() }.iter().map(|v| format!("`{}`", v.to_string_lossy())).collect();
    let mut notes = Vec::new();
    if arg.is_required_set() {
        notes.push("Required.".to_string());
    }
    let says_repeatable = help_text(arg).to_lowercase().contains("repeatable");
    if matches!(arg.get_action(), ArgAction::Append) && !arg.is_positional() && !says_repeatable {
        notes.push("Repeatable.".to_string());
    }
    if matches!(arg.get_action(), ArgAction::Count) {
        notes.push("Repeatable (counts).".to_string());
    }
    let mut aliases: Vec<String> = arg.get_all_short_aliases().unwrap_or_default().iter().map(|a| format!("`-{a}`")).collect();
    aliases.extend(arg.get_all_aliases().unwrap_or_default().iter().map(|a| format!("`--{a}`")));
    if !aliases.is_empty() {
        notes.push(format!("Also {}.", aliases.join(", ")));
    }
    let possible: Vec<_> = arg.get_possible_values().into_iter().filter(|p| !p.is_hide_set()).collect();
    let with_help = possible.iter().any(|p| p.get_help().is_some());
    let choices = if possible.is_empty() {
        String::new()
    } else if with_help {
        let items: Vec<String> = possible
            .iter()
            .map(|p| match p.get_help() {
                Some(h) => format!("`{}`: {}", p.get_name(), cell(h.to_string().trim_end_matches('.'))),
                None => format!("`{}`", p.get_name()),
            })
            .collect();
        format!("Values: {}.", items.join("; "))
    } else {
        let items: Vec<String> = possible.iter().map(|p| format!("`{}`", p.get_name())).collect();
        format!("Values: {}.", items.join(", "))
    };
    let description = [help_text(arg), choices, notes.join(" ")].into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ");
    format!("| {} | {} | {} | {} |\n", names(arg), value, defaults.join(", "), description)
}

fn table(out: &mut String, args: &[&Arg]) {
    out.push_str("| Argument | Value | Default | Description |\n|---|---|---|---|\n");
    for arg in args {
        out.push_str(&row(arg));
    }
}

fn about(cmd: &Command) -> String {
    cmd.get_long_about().or(cmd.get_about()).map(|a| a.to_string().trim().to_string()).unwrap_or_default()
}

/// The whole of `docs/cli.md`, from the clap definitions alone (no terminal width, no
/// environment): the same text on every machine.
fn render() -> String {
    let mut root = textual_inversion::cli::command();
    root.build();
    let name = root.get_name().to_string();
    let mut out = String::new();
    out.push_str("<!-- Generated from the clap definitions (src/cli/) by tests/docs_cli_reference.rs: do not edit by hand.\n");
    out.push_str("     To refresh it: UPDATE_DOCS=1 scripts/cargo.sh test --release --test docs_cli_reference -->\n");
    out.push_str("# Command-line reference\n\n");
    writeln!(out, "{}\n", about(&root)).unwrap();
    out.push_str("Every option is also accepted in the other spelling listed under *Also* (the training script's ");
    out.push_str("`snake_case` names and their `kebab-case` forms). Every command takes `-h`/`--help` and `-V`/`--version`.\n\n");
    out.push_str("| Command | What it does |\n|---|---|\n");
    let subs: Vec<&Command> = root.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help").collect();
    for sub in &subs {
        let title = format!("{name} {}", sub.get_name());
        writeln!(out, "| [`{}`](#{}) | {} |", sub.get_name(), slug(&title), sentence(&sub.get_about().map(|a| a.to_string()).unwrap_or_default())).unwrap();
    }
    out.push_str("\n## Global options\n\n");
    let globals: Vec<&Arg> = root.get_arguments().filter(|a| !is_builtin(a) && !a.is_hide_set()).collect();
    table(&mut out, &globals);
    for sub in subs {
        writeln!(out, "\n## {name} {}\n", sub.get_name()).unwrap();
        writeln!(out, "{}\n", sentence(&about(sub))).unwrap();
        let aliases = sub.get_all_aliases().collect::<Vec<_>>();
        if !aliases.is_empty() {
            writeln!(out, "Also: {}.\n", aliases.iter().map(|a| format!("`{a}`")).collect::<Vec<_>>().join(", ")).unwrap();
        }
        let usage = sub.clone().render_usage().to_string();
        writeln!(out, "```text\n{}\n```\n", usage.trim_end()).unwrap();
        let args: Vec<&Arg> = sub.get_arguments().filter(|a| !is_builtin(a) && !a.is_hide_set() && !a.is_global_set()).collect();
        table(&mut out, &args);
    }
    out
}

/// GitHub's heading anchor for plain text.
fn slug(heading: &str) -> String {
    heading.to_lowercase().chars().filter(|c| c.is_alphanumeric() || *c == '-' || *c == '_' || *c == ' ').map(|c| if c == ' ' { '-' } else { c }).collect()
}

#[test]
fn cli_reference_is_current() {
    let rendered = render();
    let path = cli_md();
    if std::env::var_os("UPDATE_DOCS").is_some_and(|v| !v.is_empty() && v != "0") {
        std::fs::write(&path, &rendered).unwrap();
        eprintln!("wrote {}", path.display());
        return;
    }
    let current = std::fs::read_to_string(&path).unwrap_or_default();
    if current != rendered {
        let line = current.lines().zip(rendered.lines()).position(|(a, b)| a != b).unwrap_or_else(|| current.lines().count().min(rendered.lines().count()));
        let show = |text: &str| text.lines().nth(line).unwrap_or("(end of file)").to_string();
        panic!(
            "docs/cli.md is stale: the clap definitions changed (first difference at line {}:\n  file:     {}\n  rendered: {}\n). \
             Rerun with UPDATE_DOCS=1 to rewrite it: UPDATE_DOCS=1 scripts/cargo.sh test --release --test docs_cli_reference",
            line + 1,
            show(&current),
            show(&rendered)
        );
    }
}

#[test]
fn the_reference_names_every_long_option() {
    // The renderer itself: nothing clap knows is left out of the page.
    let rendered = render();
    let mut root = textual_inversion::cli::command();
    root.build();
    for sub in root.get_subcommands() {
        assert!(rendered.contains(&format!("## textual-inversion {}\n", sub.get_name())) || sub.get_name() == "help", "{}", sub.get_name());
        for arg in sub.get_arguments().filter(|a| !is_builtin(a) && !a.is_hide_set()) {
            if let Some(long) = arg.get_long() {
                assert!(rendered.contains(&format!("`--{long}`")), "{} --{long}", sub.get_name());
            }
            for alias in arg.get_all_aliases().unwrap_or_default() {
                assert!(rendered.contains(&format!("`--{alias}`")), "{} --{alias}", sub.get_name());
            }
        }
    }
    assert_eq!(render(), rendered, "the renderer is deterministic");
}
