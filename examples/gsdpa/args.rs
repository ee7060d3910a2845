//! Hand-written flag parsing: `--name value`, `--name=value` and `--switch`, each at most once.

use std::collections::HashMap;

/// Parsed flags of one subcommand.
#[derive(Debug, Default)]
pub struct Flags {
    values: HashMap<String, String>,
    switches: Vec<String>,
}

impl Flags {
    /// Parses `args` accepting only the listed flags. Errors are one-line messages.
    pub fn parse(
        args: &[String],
        value_flags: &[&str],
        switch_flags: &[&str],
    ) -> Result<Flags, String> {
        let mut flags = Flags::default();
        let mut iter = args.iter();
        while let Some(arg) = iter.next() {
            let Some(body) = arg.strip_prefix("--") else {
                return Err(format!("unexpected argument '{arg}' (flags start with --)"));
            };
            let (name, inline_value) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            if value_flags.contains(&name) {
                let value = match inline_value {
                    Some(v) => v,
                    None => iter
                        .next()
                        .cloned()
                        .ok_or_else(|| format!("--{name} needs a value"))?,
                };
                if flags.values.insert(name.to_string(), value).is_some() {
                    return Err(format!("--{name} is given twice"));
                }
            } else if switch_flags.contains(&name) {
                if inline_value.is_some() {
                    return Err(format!("--{name} takes no value"));
                }
                if flags.switches.iter().any(|s| s == name) {
                    return Err(format!("--{name} is given twice"));
                }
                flags.switches.push(name.to_string());
            } else {
                return Err(format!("unknown flag --{name}"));
            }
        }
        Ok(flags)
    }

    pub fn value(&self, name: &str) -> Option<&str> {
        self.values.get(name).map(String::as_str)
    }

    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.value(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    pub fn switch(&self, name: &str) -> bool {
        self.switches.iter().any(|s| s == name)
    }

    /// Parses a value with `FromStr`, naming the flag on error.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str) -> Result<Option<T>, String> {
        self.value(name)
            .map(|v| {
                v.trim()
                    .parse::<T>()
                    .map_err(|_| format!("--{name}: cannot parse '{v}'"))
            })
            .transpose()
    }
}

/// Parses a comma-separated list of i32 (`0,5,12`).
pub fn parse_i32_list(flag: &str, text: &str) -> Result<Vec<i32>, String> {
    text.split(',')
        .map(|s| {
            s.trim()
                .parse::<i32>()
                .map_err(|_| format!("--{flag}: '{s}' is not an integer"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_values_and_switches() {
        let f = Flags::parse(
            &strings(&["--q", "a.npy", "--causal", "--scale=0.5"]),
            &["q", "scale"],
            &["causal"],
        )
        .unwrap();
        assert_eq!(f.value("q"), Some("a.npy"));
        assert!(f.switch("causal"));
        assert_eq!(f.parsed::<f32>("scale").unwrap(), Some(0.5));
        assert!(Flags::parse(&strings(&["--x"]), &["q"], &[])
            .unwrap_err()
            .contains("unknown"));
        assert!(Flags::parse(&strings(&["--q"]), &["q"], &[])
            .unwrap_err()
            .contains("needs a value"));
        assert!(
            Flags::parse(&strings(&["--q", "a", "--q", "b"]), &["q"], &[])
                .unwrap_err()
                .contains("twice")
        );
        assert!(Flags::parse(&strings(&["stray"]), &["q"], &[]).is_err());
        assert_eq!(parse_i32_list("c", "0, 5,12").unwrap(), vec![0, 5, 12]);
        assert!(parse_i32_list("c", "0,x").is_err());
    }
}
