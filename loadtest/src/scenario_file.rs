//! Scenario files: TOML whose `scenario` names the subcommand and whose
//! other keys are its flags (`video_kbps = 800` is `--video-kbps 800`), so
//! a file and a command line can never mean different things.

/// The command-line arguments (after the program name) a file stands for.
pub fn args(text: &str) -> Result<Vec<String>, String> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| e.to_string())?;
    let scenario = table
        .get("scenario")
        .and_then(|v| v.as_str())
        .ok_or("`scenario = \"room\"` (or calls, churn, baseline) is required")?;
    let mut args = vec![scenario.to_string()];
    for (key, value) in table.iter().filter(|(k, _)| *k != "scenario") {
        let flag = format!("--{}", key.replace('_', "-"));
        match value {
            toml::Value::Boolean(true) => args.push(flag),
            toml::Value::Boolean(false) => {}
            toml::Value::String(s) => args.extend([flag, s.clone()]),
            toml::Value::Integer(_) | toml::Value::Float(_) => {
                args.extend([flag, value.to_string()])
            }
            other => return Err(format!("{key}: unsupported value {other}")),
        }
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_flags() {
        let text = "scenario = \"calls\"\ncalls = 20\ndecline_share = 0.25\ninject_unexpected = true\nurl = \"http://127.0.0.1:7880\"\n";
        assert_eq!(
            args(text).unwrap(),
            [
                "calls",
                "--calls",
                "20",
                "--decline-share",
                "0.25",
                "--inject-unexpected",
                "--url",
                "http://127.0.0.1:7880"
            ]
        );
        assert!(args("rooms = 2").is_err());
        assert!(args("scenario = \"room\"\nrooms = [1]").is_err());
    }
}
