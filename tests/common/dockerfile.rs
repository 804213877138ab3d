//! A small Dockerfile reader for the container tests: instructions with continuation lines
//! joined, grouped into build stages, with `ARG` defaults substituted.
use std::collections::HashMap;

pub const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

#[derive(Debug, Clone)]
pub struct Instruction {
    pub keyword: String,
    pub args: String,
    pub line: usize,
}

#[derive(Debug)]
pub struct Stage {
    pub base: String,
    pub name: Option<String>,
    pub instructions: Vec<Instruction>,
}

impl Stage {
    pub fn all(&self, keyword: &str) -> impl Iterator<Item = &Instruction> {
        let keyword = keyword.to_string();
        self.instructions.iter().filter(move |i| i.keyword == keyword)
    }

    pub fn last(&self, keyword: &str) -> Option<&Instruction> {
        self.all(keyword).last()
    }
}

#[derive(Debug)]
pub struct Dockerfile {
    /// Instructions before the first `FROM` (global `ARG`s).
    pub preamble: Vec<Instruction>,
    pub stages: Vec<Stage>,
}

impl Dockerfile {
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut instructions = Vec::new();
        let mut pending: Option<(usize, String)> = None;
        for (index, raw) in text.lines().enumerate() {
            let trimmed = raw.trim();
            if pending.is_none() && (trimmed.is_empty() || trimmed.starts_with('#')) {
                continue;
            }
            if pending.is_some() && trimmed.starts_with('#') {
                continue; // comments inside a continued instruction are dropped, as Docker does
            }
            let (start, mut joined) = pending.take().unwrap_or((index + 1, String::new()));
            match trimmed.strip_suffix('\\') {
                Some(part) => {
                    joined.push_str(part);
                    joined.push(' ');
                    pending = Some((start, joined));
                }
                None => {
                    joined.push_str(trimmed);
                    instructions.push(split(start, &joined)?);
                }
            }
        }
        if let Some((line, _)) = pending {
            return Err(format!("line {line}: the file ends inside a continued instruction"));
        }
        let mut preamble = Vec::new();
        let mut stages: Vec<Stage> = Vec::new();
        let mut globals: HashMap<String, String> = HashMap::new();
        for instruction in instructions {
            if instruction.keyword == "FROM" {
                let words: Vec<&str> = instruction.args.split_whitespace().collect();
                let (base, name) = match words.as_slice() {
                    [base] => (*base, None),
                    [base, as_word, name] if as_word.eq_ignore_ascii_case("as") => (*base, Some(name.to_string())),
                    _ => {
                        return Err(format!(
                            "line {}: FROM {:?} is not `image [AS name]`",
                            instruction.line, instruction.args
                        ))
                    }
                };
                stages.push(Stage { base: substitute(base, &globals), name, instructions: Vec::new() });
            } else if let Some(stage) = stages.last_mut() {
                stage.instructions.push(instruction);
            } else {
                if instruction.keyword != "ARG" {
                    return Err(format!("line {}: only ARG may come before the first FROM", instruction.line));
                }
                if let Some((name, value)) = instruction.args.split_once('=') {
                    globals.insert(name.trim().to_string(), value.trim().to_string());
                }
                preamble.push(instruction);
            }
        }
        Ok(Self { preamble, stages })
    }

    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name.as_deref() == Some(name))
    }

    pub fn runtime(&self) -> &Stage {
        self.stages.last().expect("at least one stage")
    }
}

fn split(line: usize, joined: &str) -> Result<Instruction, String> {
    let (keyword, args) = joined.split_once(char::is_whitespace).unwrap_or((joined, ""));
    let keyword = keyword.to_ascii_uppercase();
    if !INSTRUCTIONS.contains(&keyword.as_str()) {
        return Err(format!("line {line}: unknown instruction {keyword}"));
    }
    Ok(Instruction { keyword, args: args.split_whitespace().collect::<Vec<_>>().join(" "), line })
}

/// `${NAME}` and `$NAME` replaced by the global `ARG` defaults.
fn substitute(text: &str, vars: &HashMap<String, String>) -> String {
    let mut out = text.to_string();
    for (name, value) in vars {
        out = out.replace(&format!("${{{name}}}"), value).replace(&format!("${name}"), value);
    }
    out
}

/// An exec-form argument list (`["a", "b"]`), or `None` for the shell form.
pub fn exec_form(args: &str) -> Option<Vec<String>> {
    serde_json::from_str(args).ok()
}

/// `COPY [--from=stage] [--chown=..] src... dest` as (from, sources, dest).
pub fn copy_parts(args: &str) -> (Option<String>, Vec<String>, String) {
    let mut from = None;
    let mut words: Vec<String> = Vec::new();
    for word in args.split_whitespace() {
        match word.strip_prefix("--from=") {
            Some(stage) => from = Some(stage.to_string()),
            None if word.starts_with("--") => {}
            None => words.push(word.to_string()),
        }
    }
    let dest = words.pop().unwrap_or_default();
    (from, words, dest)
}
