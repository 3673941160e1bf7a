//! The parts of an OCI image config (`config.Entrypoint`, `Cmd`, `Env`, `WorkingDir`, `User`)
//! that shape a container's process.

use serde::Deserialize;

use crate::error::{Error, Result};

/// What the image asks for; every field may be absent (or `null`, as Docker writes it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ImageDefaults {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: String,
    pub user: String,
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    config: Option<RunConfig>,
}

#[derive(Deserialize, Default)]
struct RunConfig {
    #[serde(rename = "Entrypoint", default)]
    entrypoint: Option<Vec<String>>,
    #[serde(rename = "Cmd", default)]
    cmd: Option<Vec<String>>,
    #[serde(rename = "Env", default)]
    env: Option<Vec<String>>,
    #[serde(rename = "WorkingDir", default)]
    working_dir: Option<String>,
    #[serde(rename = "User", default)]
    user: Option<String>,
}

/// Parses the image config JSON; empty input is an image without a config.
pub fn parse(image_config: &[u8]) -> Result<ImageDefaults> {
    if image_config.iter().all(u8::is_ascii_whitespace) {
        return Ok(ImageDefaults::default());
    }
    let bad = |e: &dyn std::fmt::Display| {
        Error::invalid(format!("image config: not a valid OCI image config: {e}"))
    };
    // serde would also take a JSON array for a struct.
    let first = image_config.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(bad(&"not a JSON object"));
    }
    let file: ConfigFile = serde_json::from_slice(image_config).map_err(|e| bad(&e))?;
    let c = file.config.unwrap_or_default();
    Ok(ImageDefaults {
        entrypoint: c.entrypoint.unwrap_or_default(),
        cmd: c.cmd.unwrap_or_default(),
        env: c.env.unwrap_or_default(),
        working_dir: c.working_dir.unwrap_or_default(),
        user: c.user.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_and_partial_configs() {
        let full = br#"{"architecture":"amd64","os":"linux","config":{
            "Entrypoint":["/init"],"Cmd":["serve","--port","80"],"Env":["A=1"],
            "WorkingDir":"/srv","User":"www","Labels":{"x":"y"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let d = parse(full).unwrap();
        assert_eq!(d.entrypoint, ["/init"]);
        assert_eq!(d.cmd, ["serve", "--port", "80"]);
        assert_eq!(d.env, ["A=1"]);
        assert_eq!(d.working_dir, "/srv");
        assert_eq!(d.user, "www");

        let nulls = br#"{"config":{"Entrypoint":null,"Cmd":["sh"],"Env":null}}"#;
        let d = parse(nulls).unwrap();
        assert!(d.entrypoint.is_empty());
        assert_eq!(d.cmd, ["sh"]);

        assert_eq!(
            parse(br#"{"os":"linux"}"#).unwrap(),
            ImageDefaults::default()
        );
        assert_eq!(
            parse(br#"{"config":null}"#).unwrap(),
            ImageDefaults::default()
        );
        assert_eq!(parse(b"").unwrap(), ImageDefaults::default());
    }

    #[test]
    fn garbage_is_invalid() {
        for bad in [&b"{"[..], b"[]", br#"{"config":{"Cmd":"sh"}}"#] {
            let err = parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{err}");
        }
    }
}
