//! [`ServiceName`]: the value of `X-Service-Name`, checked once, where it is made.

use std::fmt;
use std::str::FromStr;

use http::HeaderValue;

use crate::headers;

/// A name for `X-Service-Name`: 1 to 64 letters, digits, `-`, `_` or `.`, the only names a
/// server reads (others it ignores, so sending one would be silently useless).
///
/// ```
/// use tower_lifeline::propagation::ServiceName;
///
/// let name = ServiceName::new("checkout").unwrap();
/// assert_eq!(name.as_str(), "checkout");
/// assert!(ServiceName::new("has space").is_err());
/// let name: ServiceName = "billing".parse().unwrap();
/// assert_eq!(name.to_string(), "billing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ServiceName(HeaderValue);

impl ServiceName {
    /// `name`, if a server would read it.
    pub fn new(name: &str) -> Result<Self, InvalidServiceName> {
        // Checked here without the wire parser, which logs what it ignores: this name is the
        // program's own, and the error says what is wrong with it.
        if !headers::is_service_name(name.as_bytes()) {
            return Err(InvalidServiceName(name.to_owned()));
        }
        HeaderValue::from_str(name)
            .map(ServiceName)
            .map_err(|_| InvalidServiceName(name.to_owned()))
    }

    /// A literal name, as `HeaderValue::from_static` takes one (not `const`: the check is not).
    ///
    /// # Panics
    ///
    /// If `name` is not a valid service name: a literal is the program's own text, so this
    /// fails the first time that code runs, in its tests. Use [`new`](Self::new) for names from
    /// configuration.
    pub fn from_static(name: &'static str) -> Self {
        match Self::new(name) {
            Ok(name) => name,
            Err(err) => panic!("{err}"),
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        // Checked ASCII when made.
        self.0.to_str().unwrap_or_default()
    }

    pub(super) fn into_header_value(self) -> HeaderValue {
        self.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ServiceName {
    type Err = InvalidServiceName;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Self::new(name)
    }
}

impl TryFrom<&str> for ServiceName {
    type Error = InvalidServiceName;

    fn try_from(name: &str) -> Result<Self, Self::Error> {
        Self::new(name)
    }
}

impl TryFrom<String> for ServiceName {
    type Error = InvalidServiceName;

    fn try_from(name: String) -> Result<Self, Self::Error> {
        Self::new(&name)
    }
}

/// A service name that cannot be sent: empty, longer than 64 bytes, or with characters other
/// than letters, digits, `-`, `_`, `.` (the receiving server would ignore it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidServiceName(String);

impl fmt::Display for InvalidServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid service name {:?}: use 1 to 64 letters, digits, '-', '_' or '.'",
            self.0
        )
    }
}

impl std::error::Error for InvalidServiceName {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_a_server_would_ignore_are_refused_where_they_are_made() {
        for bad in ["", "has space", "naïve", &"x".repeat(65)] {
            assert_eq!(
                ServiceName::new(bad),
                Err(InvalidServiceName(bad.to_owned()))
            );
        }
        assert_eq!(
            ServiceName::new(&"x".repeat(64)).unwrap().as_str().len(),
            64
        );
    }

    #[test]
    #[should_panic(expected = "invalid service name")]
    fn a_bad_literal_panics_the_first_time_it_runs() {
        let _ = ServiceName::from_static("has space");
    }
}
