//! A container process's command line, environment and working directory: the image's
//! values, the caller's overrides on top, each checked before it reaches the runtime.

use crate::error::{Error, Result};

use super::image::ImageDefaults;

/// The PATH a process gets when neither the image nor the caller sets one.
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Entrypoint + cmd, with Docker's override rules: a new entrypoint drops the image's cmd
/// unless a command is given too; an empty list clears.
pub fn args(
    image: &ImageDefaults,
    entrypoint: Option<&[String]>,
    command: Option<&[String]>,
) -> Result<Vec<String>> {
    let (entrypoint, cmd) = match (entrypoint, command) {
        (Some(e), Some(c)) => (e, c),
        (Some(e), None) => (e, &[][..]),
        (None, Some(c)) => (&image.entrypoint[..], c),
        (None, None) => (&image.entrypoint[..], &image.cmd[..]),
    };
    let args: Vec<String> = entrypoint.iter().chain(cmd).cloned().collect();
    if args.is_empty() {
        return Err(Error::invalid(
            "no command: the image has neither entrypoint nor cmd, give one",
        ));
    }
    check_args(&args)?;
    Ok(args)
}

/// An executable name is required and no argument can carry a NUL (execve would cut it).
pub fn check_args(args: &[String]) -> Result<()> {
    match args.first() {
        None => return Err(Error::invalid("args: empty, give the command to run")),
        Some(a) if a.is_empty() => {
            return Err(Error::invalid(
                "args: the first argument (the program) is empty",
            ))
        }
        Some(_) => {}
    }
    if let Some(bad) = args.iter().find(|a| a.contains('\0')) {
        return Err(Error::invalid(format!(
            "argument {bad:?}: contains a NUL byte"
        )));
    }
    Ok(())
}

/// A process environment: `KEY=VALUE` entries in order, one per key.
#[derive(Debug, Default, Clone)]
pub struct Env {
    entries: Vec<String>,
}

impl Env {
    /// Adds `entries` in order, each replacing an earlier entry with the same key. `origin`
    /// names where they come from in errors ("image config Env", "env").
    pub fn merge(&mut self, entries: &[String], origin: &str) -> Result<()> {
        for entry in entries {
            let key = check_entry(entry, origin)?;
            self.set_entry(key, entry.clone());
        }
        Ok(())
    }

    /// Sets `key` unless it is already set.
    pub fn set_default(&mut self, key: &str, value: &str) {
        if !self.has(key) {
            self.entries.push(format!("{key}={value}"));
        }
    }

    pub fn set(&mut self, key: &str, value: &str) {
        self.set_entry(key, format!("{key}={value}"));
    }

    pub fn has(&self, key: &str) -> bool {
        self.position(key).is_some()
    }

    pub fn into_vec(self) -> Vec<String> {
        self.entries
    }

    fn set_entry(&mut self, key: &str, entry: String) {
        match self.position(key) {
            Some(i) => self.entries[i] = entry,
            None => self.entries.push(entry),
        }
    }

    fn position(&self, key: &str) -> Option<usize> {
        self.entries
            .iter()
            .position(|e| e.split_once('=').is_some_and(|(k, _)| k == key))
    }
}

/// Checks one `KEY=VALUE` entry and returns its key.
pub fn check_entry<'a>(entry: &'a str, origin: &str) -> Result<&'a str> {
    if entry.contains('\0') {
        return Err(Error::invalid(format!(
            "{origin}: entry {entry:?}: contains a NUL byte"
        )));
    }
    match entry.split_once('=') {
        Some((key, _)) if !key.is_empty() => Ok(key),
        _ => Err(Error::invalid(format!(
            "{origin}: entry {entry:?}: want KEY=VALUE with a non-empty KEY"
        ))),
    }
}

/// A working directory must be absolute: the runtime resolves it inside the root filesystem.
pub fn check_cwd(cwd: &str, origin: &str) -> Result<()> {
    if cwd.contains('\0') {
        return Err(Error::invalid(format!(
            "{origin} {cwd:?}: contains a NUL byte"
        )));
    }
    if !cwd.starts_with('/') {
        return Err(Error::invalid(format!(
            "{origin} {cwd:?}: must be an absolute path"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageDefaults {
        ImageDefaults {
            entrypoint: v(entrypoint),
            cmd: v(cmd),
            ..Default::default()
        }
    }

    #[test]
    fn override_rules() {
        let img = image(&["/entry", "-x"], &["serve"]);
        assert_eq!(
            args(&img, None, None).unwrap(),
            v(&["/entry", "-x", "serve"])
        );
        // A command replaces only the cmd.
        let c = v(&["run", "fast"]);
        assert_eq!(
            args(&img, None, Some(&c)).unwrap(),
            v(&["/entry", "-x", "run", "fast"])
        );
        // A new entrypoint drops the image's cmd...
        let e = v(&["/bin/sh", "-c"]);
        assert_eq!(args(&img, Some(&e), None).unwrap(), v(&["/bin/sh", "-c"]));
        // ...unless a command is given too.
        let c = v(&["echo hi"]);
        assert_eq!(
            args(&img, Some(&e), Some(&c)).unwrap(),
            v(&["/bin/sh", "-c", "echo hi"])
        );
        // An empty entrypoint clears it; the command stands alone.
        let c = v(&["/bin/true"]);
        assert_eq!(args(&img, Some(&[]), Some(&c)).unwrap(), v(&["/bin/true"]));
        // An empty command clears the image's cmd.
        assert_eq!(args(&img, None, Some(&[])).unwrap(), v(&["/entry", "-x"]));
        // Only a cmd in the image.
        assert_eq!(args(&image(&[], &["sh"]), None, None).unwrap(), v(&["sh"]));
    }

    #[test]
    fn no_command_is_invalid() {
        let err = args(&image(&[], &[]), None, None).unwrap_err();
        assert_eq!(
            err.to_string(),
            "no command: the image has neither entrypoint nor cmd, give one"
        );
        let img = image(&["/entry"], &["x"]);
        assert!(args(&img, Some(&[]), Some(&[])).is_err());
        assert!(args(&img, Some(&v(&[""])), None).is_err());
        assert!(args(&img, None, Some(&v(&["a\0b"]))).is_err());
    }

    #[test]
    fn env_merge() {
        let mut env = Env::default();
        env.merge(&v(&["A=1", "B=2", "A=3"]), "image").unwrap();
        env.merge(&v(&["B=", "C=x=y"]), "env").unwrap();
        env.set_default("PATH", DEFAULT_PATH);
        env.set_default("A", "ignored");
        assert_eq!(
            env.into_vec(),
            v(&["A=3", "B=", "C=x=y", &format!("PATH={DEFAULT_PATH}")])
        );
    }

    #[test]
    fn bad_env_entries() {
        for bad in ["NOVALUE", "=x", "", "A=b\0c"] {
            let err = Env::default().merge(&v(&[bad]), "env").unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)), "{bad:?}");
            assert!(err.to_string().starts_with("env: entry"), "{err}");
        }
    }

    #[test]
    fn cwd_must_be_absolute() {
        assert!(check_cwd("/srv/app", "working_dir").is_ok());
        assert!(check_cwd("srv", "working_dir").is_err());
        assert!(check_cwd("", "working_dir").is_err());
        assert!(check_cwd("/a\0", "working_dir").is_err());
    }
}
